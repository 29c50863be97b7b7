"""mlplatform's Pulumi components, in the order a stack is built (platform.Platform composes them):
config/ (the validated stack config), lib/ (pure builders), cluster/ (phase 1), services/ (phase 2),
models/ (phase 3). One ComponentResource per module in cluster/, services/ and models/."""
