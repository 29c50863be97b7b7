"""Find, load, check and warm up a model version; its contract comes from its serving signatures.

A model URI is either the artifact store root the training job publishes to (we follow
``<root>/models/<name>/LATEST``) or a model directory (``saved_model/`` and/or ``model.keras``, or a
SavedModel directory itself; or ``model.onnx``). Local paths, file:// and s3:// are accepted. The
runtime that serves a version (TensorFlow or ONNX Runtime) follows its format (serving/runtime.py).

Failures come in two kinds. *Transient* ones (the version is not there yet, the store does not
answer) are retried with backoff. A version that is there but fails its checks (does not load, has
no usable signature, breaks the served signature, outputs non-finite values on warm-up) is refused
for the life of the process.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from serving import integrity, runtime
from serving.codec import DEFAULT_SIGNATURE, SignatureSpec, TensorSpec
from serving.runtime import Signature

log = logging.getLogger(__name__)


class ModelLoadError(Exception):
    """A version that cannot be served now; ``reason`` is a bounded metric label; ``transient`` errors are retried."""

    def __init__(self, reason: str, message: str, transient: bool = False):
        super().__init__(message)
        self.reason = reason
        self.transient = transient


# ---- storage (read side of training/storage.py: serving ships without the training package) ----


def _s3():
    import boto3

    return boto3.client("s3")


def _split(uri: str) -> tuple[str, str, str]:
    """(scheme, bucket, key); ("file", "", path) for a path or file:// URI. training/storage.py
    ``parse``'s rules: a relative file URI is a relative path (``file://./artifacts`` is
    ``./artifacts``; urlparse reads the ``.`` as a host); a file URI naming a host, an s3 URI without
    a bucket, an empty path or another scheme is refused (ValueError, the line to show)."""
    u = urlparse(uri)
    if u.scheme == "s3":
        if not u.netloc:
            raise ValueError(f"{uri!r}: an s3 URI needs a bucket: s3://BUCKET/PREFIX")
        return "s3", u.netloc, u.path.strip("/")
    if u.scheme == "":
        if not uri:
            raise ValueError("empty model URI: give a path, file:// or s3:// URI")
        return "file", "", uri.rstrip("/") or "/"
    if u.scheme != "file":
        raise ValueError(f"unsupported model URI {uri!r}: use a path, file:// or s3://")
    if u.netloc in (".", ".."):
        path = u.netloc + u.path
    elif u.netloc in ("", "localhost"):
        path = u.path
    else:
        raise ValueError(f"{uri!r}: a file URI names no host ({u.netloc!r}): use file:///absolute/path or file://./relative/path")
    if not path:
        raise ValueError(f"{uri!r}: no path: use file:///absolute/path or file://./relative/path")
    return "file", "", path.rstrip("/") or "/"


def check_uri(uri: str) -> None:
    """Refuse at start (ValueError, one line) a URI that cannot name a model: malformed, or a local
    path that does not exist (a typo would otherwise be retried for ever as "not available yet").
    A store that exists but has no version yet is waited for: the first training run publishes it."""
    scheme, _, key = _split(uri)
    if scheme == "file" and not Path(key).exists():
        raise ValueError(f"{uri}: no such file or directory ({Path(key).absolute()})")


def read_text(uri: str) -> str | None:
    scheme, bucket, key = _split(uri)
    if scheme == "s3":
        s3 = _s3()
        try:
            return s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode().strip()
        except s3.exceptions.NoSuchKey:
            return None
    path = Path(key)
    return path.read_text().strip() if path.is_file() else None


def list_versions(model_root: str) -> list[str]:
    """Version names under ``<root>/models/<name>/``, newest first (names sort by time)."""
    scheme, bucket, key = _split(model_root)
    if scheme == "file":
        p = Path(key)
        names = [c.name for c in p.iterdir() if c.is_dir()] if p.is_dir() else []
    else:
        names = []
        for page in _s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key + "/", Delimiter="/"):
            names += [c["Prefix"][len(key) + 1 :].rstrip("/") for c in page.get("CommonPrefixes", [])]
    return sorted(names, reverse=True)


def fetch_dir(uri: str, dest: Path) -> Path:
    """A copy of the model files of ``uri`` in ``dest`` (an empty folder), local or remote alike, so
    what is verified is exactly what loads. Every key is checked (``integrity.safe_join``) before the
    first byte is written: one that is absolute, has a ``..`` part or lands outside ``dest`` refuses
    the whole version (reason "unsafe_key")."""
    scheme, bucket, key = _split(uri)
    try:
        if scheme == "file":
            src = Path(key)
            if not src.is_dir():
                raise ModelLoadError("download", f"{uri}: no such directory", transient=True)
            # Dot-files in a local store are its own, not objects (lock files, writes in progress):
            # skipped as training/storage.py list_names skips them.
            names = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file() and not p.name.startswith("."))
            targets = _targets(uri, dest, _listed_only(uri, names, lambda rel: (src / rel).read_bytes()))
            for rel, target in targets.items():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / rel, target)
        else:
            s3, prefix = _s3(), key + "/"
            keys = [
                obj["Key"]
                for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
                for obj in page.get("Contents", [])
                if not obj["Key"].endswith("/")  # "folder" markers some tools create: no bytes
            ]
            names = [k[len(prefix) :] for k in keys]
            read = lambda rel: s3.get_object(Bucket=bucket, Key=prefix + rel)["Body"].read()  # noqa: E731
            targets = _targets(uri, dest, _listed_only(uri, names, read))
            for rel, target in targets.items():
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, prefix + rel, str(target))
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - network and store errors are worth another try
        raise ModelLoadError("download", f"{uri}: {type(exc).__name__}: {exc}", transient=True) from None
    if not targets:
        raise ModelLoadError("download", f"{uri}: no objects", transient=True)
    return dest


def _listed_only(uri: str, names: list[str], read) -> list[str]:
    """The version's files as its manifest lists them (and the manifest): a key added to a complete
    version's folder afterwards is not part of it (the registry's create-only guard lets a workload add
    one, not change one: issue 24 item 8), so it is left behind rather than refusing the version. Without
    a readable manifest, every name: ``integrity.verify_dir`` then says what is wrong."""
    if integrity.MANIFEST not in names:
        return names
    try:
        files = json.loads(read(integrity.MANIFEST))["files"]
        if not isinstance(files, dict):
            return names
    except (ValueError, KeyError, TypeError, OSError):
        return names
    if extra := sorted(set(names) - set(files) - {integrity.MANIFEST}):
        log.warning("%s: not in its manifest, not fetched: %s", uri, ", ".join(extra[:5]))
    return [n for n in names if n in files or n == integrity.MANIFEST]


def _targets(uri: str, dest: Path, names: list[str]) -> dict[str, Path]:
    """Every name's local path, all checked before anything is written."""
    try:
        return {rel: integrity.safe_join(dest, rel) for rel in names}
    except integrity.UnsafeKey as exc:
        raise ModelLoadError("unsafe_key", f"{uri}: {exc}; nothing fetched") from None


def check_not_rejected(uri: str) -> None:
    """A version in a registry's layout (``.../models/<name>/<version>``) with a rejection mark
    (``models/<name>/rejected/<version>.json``) never serves: checked before anything is downloaded."""
    found = integrity.store_version(_split(uri)[2])
    if found is None:
        return
    version = found[1]
    model_root = uri.rstrip("/").rsplit("/", 1)[0]
    try:
        mark = read_text(f"{model_root}/rejected/{version}.json")
    except Exception as exc:  # noqa: BLE001 - cannot tell whether it is rejected: not now, try again
        raise ModelLoadError("download", f"{uri}: rejection mark unreadable: {type(exc).__name__}: {exc}", transient=True) from None
    if mark is not None:
        raise ModelLoadError("rejected", f"{uri}: rejected in the registry: {_rejection_text(mark)}")


def check_manifest(uri: str, local: Path) -> None:
    """A version in a registry's layout may serve only when its fetched files are exactly its
    manifest's. Other directories (a developer's model folder) have no manifest and load as they are."""
    if integrity.store_version(_split(uri)[2]) is None:
        return
    try:
        integrity.verify_dir(local, uri)
    except integrity.Unverified as exc:
        raise ModelLoadError(exc.reason, str(exc)) from None


def _rejection_text(mark: str) -> str:
    try:
        doc = json.loads(mark)
        return f"{doc.get('reason')}, by {doc.get('by')}"
    except (ValueError, AttributeError):
        return "unreadable record"


@dataclass
class Source:
    """Where a model's versions come from: a store root (follows LATEST) or one directory."""

    uri: str
    name: str

    @property
    def model_root(self) -> str:
        return f"{self.uri.rstrip('/')}/models/{self.name}"

    def candidates(self) -> list[tuple[str, str]]:
        """(version, uri) to try, best first: LATEST, then older versions newest first (a fallback for
        a pointer that names a missing, broken, unverified or rejected version). Versions newer than
        LATEST may still be uploading (publish writes LATEST last), so they are never candidates; the
        registry's own folders (aliases/, audit/, rejected/) never are."""
        latest = read_text(f"{self.model_root}/LATEST")
        versions = [v for v in list_versions(self.model_root) if v not in integrity.RESERVED]
        if latest is None and not versions:
            return [_single(self.uri)]
        out = [(latest, f"{self.model_root}/{latest}")] if latest else []
        out += [(v, f"{self.model_root}/{v}") for v in versions if v != latest and (latest is None or v < latest)]
        return out


def _single(uri: str) -> tuple[str, str]:
    """One directory: its version is its name in the store's path (``.../models/<name>/<version>``),
    never what the version's own metadata.json claims (the version's writer controls that file)."""
    base = uri.rstrip("/")
    return Path(_split(base)[2]).name or "unversioned", base


# ---- the loaded model ----


@dataclass
class LoadedModel:
    version: str
    source: str
    signatures: dict[str, Signature] = field(default_factory=dict)
    # Seconds one full batch takes (the slowest signature, measured at load after its warm-up):
    # whether a batch may run inline in the event loop (serving/batcher.py). Unknown: never.
    max_batch_seconds: float = float("inf")
    format: str = runtime.SAVEDMODEL  # which runtime serves it (serving/runtime.py)

    @property
    def platform(self) -> str:
        return runtime.PLATFORMS[self.format]

    @property
    def specs(self) -> dict[str, SignatureSpec]:
        return {k: s.spec for k, s in self.signatures.items()}

    @property
    def default(self) -> Signature:
        return self.signatures[DEFAULT_SIGNATURE]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The default signature on its single input, first output (for tools and tests)."""
        sig = self.default
        return sig({sig.spec.inputs[0].name: x})[sig.spec.outputs[0].name]


def _sample(spec: TensorSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    shape = tuple(n if i == 0 and d is None else (d if d is not None else 1) for i, d in enumerate(spec.shape))
    if spec.dtype == "string":
        return np.full(shape, b"warm up", dtype=object)
    if spec.dtype == "bool":
        return np.zeros(shape, dtype=bool)
    dt = np.dtype(spec.dtype)
    if dt.kind == "f":
        return rng.random(shape).astype(dt)
    return np.zeros(shape, dtype=dt)


def load(version: str, uri: str, warmup_batch_sizes: tuple[int, ...] = (1, 64)) -> LoadedModel:
    """Load ``uri`` in the runtime its format needs (serving/runtime.py), read its signatures, call
    each on sample batches (first calls are slow) and check the outputs."""
    tmp = Path(tempfile.mkdtemp(prefix="model-"))
    try:
        check_not_rejected(uri)
        local = fetch_dir(uri, tmp)
        check_manifest(uri, local)
        try:
            fmt = runtime.format_of(local)
        except runtime.FormatError as exc:
            raise ModelLoadError("incompatible", f"{uri}: {exc}") from None
        signatures = runtime.load_signatures(local, fmt)
        max_batch_seconds = max(_warm_up(sig, warmup_batch_sizes if sig.spec.batched else (1,), uri) for sig in signatures.values())
        return LoadedModel(version=version, source=uri, signatures=signatures, max_batch_seconds=max_batch_seconds, format=fmt)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _warm_up(sig: Signature, sizes: tuple[int, ...], uri: str) -> float:
    """Call ``sig`` on a sample batch of each size, check its outputs; the seconds the largest batch
    takes once warm (best of 3)."""
    rng = np.random.default_rng(0)
    for n in sizes:
        x = {t.name: _sample(t, n, rng) for t in sig.spec.inputs}
        try:
            y = sig(x)
        except Exception as exc:  # noqa: BLE001 - a model that fails on well-formed input is broken
            raise ModelLoadError("warmup", f"{uri}: signature {sig.spec.name!r} fails on a sample batch of {n}: {exc}") from None
        for t in sig.spec.outputs:
            arr = y[t.name]
            if sig.spec.batched and (arr.ndim == 0 or len(arr) != n):
                raise ModelLoadError("incompatible", f"{uri}: output {t.name!r} does not have one row per instance")
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                raise ModelLoadError("warmup", f"{uri}: output {t.name!r} is not finite on a sample batch")
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        sig(x)
        runs.append(time.perf_counter() - start)
    return min(runs)


def configure_threads(workers: int = 1, onnx_threads: int = 0) -> None:
    """The runtimes' thread pools for this process, one of ``workers`` in its pod. ONNX Runtime's
    here (serving/runtime_onnx.py); TensorFlow's are set before its first model loads
    (serving/runtime_tf.py), so a server of ONNX models never imports TensorFlow."""
    from serving import runtime_onnx

    runtime_onnx.configure(workers, onnx_threads)
