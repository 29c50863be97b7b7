"""What the server checks before a version may serve: its keys, its manifest digests, its rejection mark.

The registry's layout and manifest format are defined in training/registry.py (``manifest_of``,
``verify``, ``rejected/<version>.json``); the serving image ships without the training package, so the
read side of those rules is repeated here, small and dependency-free (hashlib, json, pathlib). Keep the
two in step: tests/serving/test_integrity.py checks this module against versions the real registry wrote.

* ``safe_key``/``safe_join``: copied from training/storage.py (same rules, same messages): an object
  key from a bucket listing or a manifest is whatever the store's writers put there; one that is
  absolute, has a ``..``/``.``/empty part, or resolves outside the destination is refused before
  anything is written.
* ``verify_dir``: every file the manifest lists is present with its SHA-256 and size, every manifest
  key is safe, and nothing else is in the directory (an added file is as suspect as a changed one).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST = "MANIFEST.json"
# Subfolders of models/<name>/ that are the registry's bookkeeping, never versions (training/registry.py).
RESERVED = frozenset({"aliases", "audit", "rejected"})


class UnsafeKey(ValueError):
    """An object key that would land outside the local folder it is fetched into."""


class Unverified(Exception):
    """A version whose bytes are not what its manifest says; ``reason`` is a bounded metric label
    ("manifest": none, unreadable or with an unsafe key; "digest": a file missing, changed or added)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def safe_key(key: str) -> str:
    """``key`` if it is a relative, '/'-separated name with no ``..``, ``.`` or empty part; else UnsafeKey."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or "\0" in key or any(p in ("", ".", "..") for p in parts):
        raise UnsafeKey(f"key {key!r} refused: only relative names without '..', '.', empty parts, '\\' or NUL may be fetched")
    return key


def safe_join(dest: Path, key: str) -> Path:
    """``dest / key``, refused (UnsafeKey) when ``key`` is unsafe or resolves outside ``dest``
    (e.g. through a symlink already in ``dest``). Creates nothing."""
    target = Path(dest) / safe_key(key)
    base = Path(dest).resolve()
    if not target.resolve().is_relative_to(base):
        raise UnsafeKey(f"key {key!r} refused: it resolves to {target.resolve()}, outside {base}")
    return target


def store_version(path: str) -> tuple[str, str] | None:
    """(model root, version) when ``path`` (a URI's path or key) is a version in a registry's layout,
    ``.../models/<name>/<version>``: such a directory must carry a manifest and may be rejected. None
    for any other directory (a developer's model folder), which has neither."""
    parts = path.rstrip("/").split("/")
    if len(parts) >= 3 and parts[-3] == "models" and parts[-1] and parts[-1] not in RESERVED:
        return "/".join(parts[:-1]), parts[-1]
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_dir(local: Path, where: str) -> None:
    """``local`` holds exactly the files of its MANIFEST.json, each with its digest and size. Raises Unverified."""
    try:
        manifest = json.loads((local / MANIFEST).read_text())
        files = manifest["files"]
        if not isinstance(files, dict) or not files:
            raise ValueError("no files listed")
    except FileNotFoundError:
        raise Unverified("manifest", f"{where}: no {MANIFEST}: not a complete registry version") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise Unverified("manifest", f"{where}: {MANIFEST} unreadable: {exc}") from None
    problems = []
    for rel, want in files.items():
        try:
            path = safe_join(local, rel)
        except UnsafeKey as exc:
            raise Unverified("manifest", f"{where}: manifest {exc}") from None
        if not path.is_file():
            problems.append(f"{rel} missing")
        elif not isinstance(want, dict) or path.stat().st_size != want.get("size") or _sha256(path) != want.get("sha256"):
            problems.append(f"{rel} does not match its manifest digest")
    present = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    problems += [f"{rel} not in the manifest" for rel in sorted(present - set(files) - {MANIFEST})]
    if problems:
        raise Unverified("digest", f"{where}: {'; '.join(problems)}")
