"""``python -m training [args...]``: run the model's training entrypoint (the image's ENTRYPOINT).

``TRAIN_ENTRYPOINT`` names it: a module (``training.train``, the MNIST trainer and the default) or a
``.py`` file (``/app/model/train.py`` in a model's own image, ``models/diabetes/train.py`` in a
checkout). The arguments are passed on; the entrypoint's exit status is the process's.
"""

from __future__ import annotations

import importlib.util
import os
import runpy
import sys

DEFAULT_ENTRYPOINT = "training.train"


def main(argv: list[str] | None = None) -> int:
    entry = os.environ.get("TRAIN_ENTRYPOINT") or DEFAULT_ENTRYPOINT
    argv = sys.argv[1:] if argv is None else argv
    if entry.endswith(".py"):
        if not os.path.isfile(entry):
            print(f"TRAIN_ENTRYPOINT={entry}: no such file", file=sys.stderr)
            return 2
        # A script imports its siblings as it would when run as `python train.py`.
        sys.path.insert(0, os.path.dirname(os.path.abspath(entry)))
        sys.argv = [entry, *argv]
        runpy.run_path(entry, run_name="__main__")
        return 0
    try:
        found = importlib.util.find_spec(entry) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        print(f"TRAIN_ENTRYPOINT={entry}: no such module", file=sys.stderr)
        return 2
    sys.argv = [entry, *argv]
    runpy.run_module(entry, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
