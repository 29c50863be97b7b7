"""`python -m mlp`: the same as the `mlp` console script. Under an interpreter without click (the
system python) it says where mlp runs instead of raising ModuleNotFoundError."""

import sys

try:
    import click  # noqa: F401 (only checked for)
except ImportError:
    print("mlp runs in the project's .venv: create it with `make venv`, then run .venv/bin/mlp", file=sys.stderr)
    sys.exit(5)

from mlp.cli import main  # noqa: E402 (after the check above)

main()
