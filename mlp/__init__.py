"""mlp: the one command line for everything a person runs on the platform (see `mlp --help`)."""
