"""Find, load, check and warm up a model version; its contract comes from its serving signatures.

A model URI is either the artifact store root the training job publishes to (we follow
``<root>/models/<name>/LATEST``) or a model directory (``saved_model/`` and/or ``model.keras``, or a
SavedModel directory itself). Local paths, file:// and s3:// are accepted.

Failures come in two kinds. *Transient* ones (the version is not there yet, the store does not
answer) are retried with backoff. A version that is there but fails its checks (does not load, has
no usable signature, breaks the served signature, outputs non-finite values on warm-up) is refused
for the life of the process.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from serving import integrity
from serving.codec import DEFAULT_SIGNATURE, DTYPES, SignatureSpec, TensorSpec

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
    u = urlparse(uri)
    if u.scheme == "s3":
        return "s3", u.netloc, u.path.strip("/")
    if u.scheme in ("", "file"):
        return "file", "", (u.path if u.scheme == "file" else uri).rstrip("/")
    raise ValueError(f"unsupported model URI {uri!r}: use a path, file:// or s3://")


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
            targets = _targets(uri, dest, names)
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
            targets = _targets(uri, dest, [k[len(prefix) :] for k in keys])
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
class Signature:
    spec: SignatureSpec
    fn: object  # concrete function: keyword tensors -> dict of tensors

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        out = self.fn(**{k: tf.constant(v) for k, v in inputs.items()})
        return {t.name: out[t.name].numpy() for t in self.spec.outputs}


@dataclass
class LoadedModel:
    version: str
    source: str
    signatures: dict[str, Signature] = field(default_factory=dict)
    # Seconds one full batch takes (the slowest signature, measured at load after its warm-up):
    # whether a batch may run inline in the event loop (serving/batcher.py). Unknown: never.
    max_batch_seconds: float = float("inf")

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


def _dtype_name(tf_dtype) -> str | None:
    name = "string" if tf_dtype.name == "string" else tf_dtype.name
    return name if name in DTYPES else None


def _spec_of(name: str, fn) -> SignatureSpec:
    args, kwargs = fn.structured_input_signature
    if args:
        raise ModelLoadError("incompatible", f"signature {name!r} takes positional inputs; only named inputs can be served")

    def tensor(key, ts) -> TensorSpec:
        dtype = _dtype_name(ts.dtype)
        if dtype is None:
            raise ModelLoadError("incompatible", f"signature {name!r}: {key!r} has dtype {ts.dtype.name}, which JSON cannot carry")
        if ts.shape.rank is None:
            raise ModelLoadError("incompatible", f"signature {name!r}: {key!r} has an unknown rank")
        return TensorSpec(key, dtype, tuple(ts.shape.as_list()))

    outputs = fn.structured_outputs
    if not isinstance(outputs, dict):
        raise ModelLoadError("incompatible", f"signature {name!r} does not return named outputs")
    return SignatureSpec(
        name, tuple(tensor(k, v) for k, v in sorted(kwargs.items())), tuple(tensor(k, v) for k, v in sorted(outputs.items()))
    )


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
    """Load ``uri``, read its signatures, call each on sample batches (first calls are slow) and check the outputs."""
    tmp = Path(tempfile.mkdtemp(prefix="model-"))
    try:
        check_not_rejected(uri)
        local = fetch_dir(uri, tmp)
        check_manifest(uri, local)
        signatures = _load_signatures(local)
        rng = np.random.default_rng(0)
        max_batch_seconds = 0.0
        for sig in signatures.values():
            sizes = warmup_batch_sizes if sig.spec.batched else (1,)
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
            for _ in range(3):  # the largest batch again, now warm: what one batch costs (best of 3)
                start = time.perf_counter()
                sig(x)
                runs.append(time.perf_counter() - start)
            max_batch_seconds = max(max_batch_seconds, min(runs))
        return LoadedModel(version=version, source=uri, signatures=signatures, max_batch_seconds=max_batch_seconds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_signatures(local: Path) -> dict[str, Signature]:
    import tensorflow as tf

    saved = local / "saved_model" if (local / "saved_model").is_dir() else local
    try:
        if (saved / "saved_model.pb").exists():
            loaded = tf.saved_model.load(str(saved))
            fns = dict(loaded.signatures)
            keep = loaded  # the signatures' variables live as long as the loaded object
        elif (local / "model.keras").exists():
            keep, fns = _keras_signature(local / "model.keras")
        else:
            raise ModelLoadError("load", f"{local}: neither saved_model/saved_model.pb nor model.keras")
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to deserialize means this version is unusable
        raise ModelLoadError("load", f"{local}: cannot load model: {type(exc).__name__}: {exc}") from None
    if DEFAULT_SIGNATURE not in fns:
        raise ModelLoadError("incompatible", f"{local}: no {DEFAULT_SIGNATURE!r} signature (has {sorted(fns)})")
    out = {}
    for name, fn in fns.items():
        fn._mlplatform_keep = keep  # noqa: SLF001 - keep the owner alive with the function
        out[name] = Signature(_spec_of(name, fn), fn)
    return out


def _keras_signature(path: Path):
    import keras
    import tensorflow as tf

    model = keras.models.load_model(path, compile=False)
    names = [t.name.split(":")[0] for t in model.inputs]
    specs = {n: tf.TensorSpec(t.shape, t.dtype, name=n) for n, t in zip(names, model.inputs, strict=True)}
    out_names = list(getattr(model, "output_names", None) or [f"output_{i}" for i in range(len(model.outputs))])

    @tf.function(input_signature=[specs])
    def serve(inputs):
        y = model([inputs[n] for n in names] if len(names) > 1 else inputs[names[0]], training=False)
        ys = y if isinstance(y, (list, tuple)) else [y]
        return dict(zip(out_names, ys, strict=True))

    concrete = serve.get_concrete_function()

    class Fn:
        structured_input_signature = ((), specs)
        structured_outputs = concrete.structured_outputs

        def __call__(self, **kw):
            return serve(kw)

    return model, {DEFAULT_SIGNATURE: Fn()}


def configure_threads() -> None:
    """TF uses its own pools; keep them small so the HTTP event loop keeps a core (env overrides)."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(int(os.environ.get("SERVING_TF_THREADS", "1")))
    tf.config.threading.set_inter_op_parallelism_threads(1)
