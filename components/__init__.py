"""mlplatform's Pulumi components, in the order a stack is built (platform.Platform composes them):
config/ (the validated stack config), lib/ (pure builders), cluster/ (phase 1), services/ (phase 2),
models/ (phase 3). Each module of cluster/, services/ and models/ holds one ComponentResource, except
models/route.py: the route + SecurityPolicy pair both model runtimes attach inside their own component."""
