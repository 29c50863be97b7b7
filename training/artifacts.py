"""Versioned model store: ``<root>/models/<name>/<version>/`` plus a ``LATEST`` pointer.

``publish`` goes through the registry (training/registry.py): every file of a version first, its
manifest next (each a conditional create), then, for a run that serves at once (``champion``: a local
run), the aliases and ``LATEST`` (moved forward only, by compare-and-swap), so a reader that follows
``LATEST`` only ever finds complete versions. A run published as a candidate (every platform Job and
CronJob) adds the version only: the pipeline adopts it (``registry.adopt``, ops/deliver.py), and the
run's role may not move an alias (issue 24 item 8). Versions sort by time (``YYYYmmddTHHMMSSZ-<id>-<random>``).
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

from training import registry, storage

REQUIRED = registry.REQUIRED


def model_root(root: str, name: str) -> str:
    return storage.join(root, "models", name)


def new_version(run_id: str, now: float | None = None) -> str:
    """``YYYYmmddTHHMMSSZ-<run>-<random>``: sorts by time; the random part keeps a future name from
    being guessed (the Job's name and the second are: something planted under a guessed name would
    collide with the real run's files, issue 24 item 8)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + f"-{run_id[:12]}-{secrets.token_hex(6)}"


def publish(local_dir: Path, root: str, name: str, version: str, reason: str = "published by training", champion: bool = True) -> str:
    """Upload ``local_dir`` as ``version`` of model ``name``; with ``champion`` (a local run: no canary,
    a person's identity) also make it the candidate and the champion, which LATEST follows, forward
    only. Without, the version only (a platform Job: the pipeline adopts it). Returns its URI."""
    if not (local_dir / "metadata.json").exists():
        raise ValueError(f"refusing to publish an incomplete model: missing ['metadata.json'] in {local_dir}")
    missing = [f for f in registry.FORMATS[registry.record_format(local_dir)] if not (local_dir / f).exists()]
    if missing:
        raise ValueError(f"refusing to publish an incomplete model: missing {missing} in {local_dir}")
    return registry.publish(local_dir, root, name, version, reason=reason, champion=champion, adopt=champion).uri


def latest(root: str, name: str) -> str | None:
    """The version LATEST points at, or None when nothing was published yet."""
    try:
        return storage.read_text(storage.join(model_root(root, name), "LATEST")).strip()
    except FileNotFoundError:
        return None


def read_metadata(root: str, name: str, version: str) -> dict:
    return json.loads(storage.read_text(storage.join(model_root(root, name), version, "metadata.json")))
