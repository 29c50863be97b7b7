"""Build-time check of the LoRA image (llm/lora-image/Dockerfile): the packages installed with ``--no-deps``
have every dependency they declare in the image, at a version they accept. ``pip check`` would judge the
whole base image (vLLM's own pins included); this judges only what the image adds.

    python3 check_requires.py peft   # exit 1, naming each unmet requirement
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, requires, version

from packaging.requirements import Requirement


def unmet(dist: str) -> list[str]:
    """``dist``'s unmet requirements (those of its extras left out), one line each."""
    try:
        lines = requires(dist) or []
    except PackageNotFoundError:
        return [f"{dist}: not installed"]
    out = []
    for line in lines:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            have = version(req.name)
        except PackageNotFoundError:
            out.append(f"{dist} needs {req}: not installed")
            continue
        if not req.specifier.contains(have, prereleases=True):
            out.append(f"{dist} needs {req}: {have} installed")
    return out


def main(dists: list[str]) -> int:
    problems = [p for d in dists for p in unmet(d)]
    for p in problems:
        print(f"check_requires: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
