"""Versioned model store: ``<root>/models/<name>/<version>/`` plus a ``LATEST`` pointer.

``publish`` uploads every file of a version first and writes ``LATEST`` last, so a reader that
follows ``LATEST`` only ever finds complete versions. Versions sort by time (``YYYYmmddTHHMMSSZ-<id>``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from training import storage

REQUIRED = ("metadata.json", "model.keras", "saved_model/saved_model.pb")


def model_root(root: str, name: str) -> str:
    return storage.join(root, "models", name)


def new_version(run_id: str, now: float | None = None) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + f"-{run_id[:12]}"


def publish(local_dir: Path, root: str, name: str, version: str) -> str:
    """Upload ``local_dir`` as ``version`` of model ``name``, then point LATEST at it. Returns its URI."""
    missing = [f for f in REQUIRED if not (local_dir / f).exists()]
    if missing:
        raise ValueError(f"refusing to publish an incomplete model: missing {missing} in {local_dir}")
    dest = storage.join(model_root(root, name), version)
    storage.upload_dir(local_dir, dest)
    # Written last: the pointer flips only once every file of the version is in place.
    storage.write_bytes(storage.join(model_root(root, name), "LATEST"), version.encode())
    return dest


def latest(root: str, name: str) -> str | None:
    """The version LATEST points at, or None when nothing was published yet."""
    try:
        return storage.read_text(storage.join(model_root(root, name), "LATEST")).strip()
    except FileNotFoundError:
        return None


def read_metadata(root: str, name: str, version: str) -> dict:
    return json.loads(storage.read_text(storage.join(model_root(root, name), version, "metadata.json")))
