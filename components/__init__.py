"""mlplatform components: one ComponentResource per module, composed by platform.Platform."""
