"""Find, load, check and warm up a model version.

``--model-uri`` is either the artifact store root the training job publishes to (we follow
``<root>/models/<name>/LATEST``) or a model directory (``model.keras`` and/or ``saved_model/``).
Local paths, file:// and s3:// are accepted.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

log = logging.getLogger(__name__)
INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10


class ModelLoadError(Exception):
    """A version that cannot be served; ``reason`` is a bounded metric label."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


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


def fetch_dir(uri: str, dest: Path) -> Path:
    """A local directory with the model files of ``uri`` (downloaded when remote)."""
    scheme, bucket, key = _split(uri)
    if scheme == "file":
        if not Path(key).is_dir():
            raise ModelLoadError("download", f"{uri}: no such directory")
        return Path(key)
    s3 = _s3()
    prefix = key + "/"
    found = False
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            found = True
            target = dest / obj["Key"][len(prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, obj["Key"], str(target))
    if not found:
        raise ModelLoadError("download", f"{uri}: no objects")
    return dest


def resolve(model_uri: str, name: str) -> tuple[str, str]:
    """(version, uri of that version's directory). A store root follows LATEST; a model directory
    is served as is (its version is metadata.json's, else the directory name)."""
    base = model_uri.rstrip("/")
    latest = read_text(f"{base}/models/{name}/LATEST")
    if latest:
        return latest, f"{base}/models/{name}/{latest}"
    meta = read_text(f"{base}/metadata.json")
    if meta:
        import json

        try:
            return str(json.loads(meta).get("version") or Path(_split(base)[2]).name), base
        except ValueError:
            pass
    return Path(_split(base)[2]).name or "unversioned", base


# ---- the loaded model ----


@dataclass
class LoadedModel:
    version: str
    predict: object  # callable: float32 array (n, 28, 28, 1) -> float32 array (n, 10)
    source: str

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.predict(x)


def load(version: str, uri: str, warmup_batch_sizes: tuple[int, ...] = (1, 64)) -> LoadedModel:
    """Load ``uri``, check it is an MNIST classifier, compile and warm it up (first calls are slow)."""
    import tensorflow as tf

    tmp = Path(tempfile.mkdtemp(prefix="model-"))
    try:
        local = fetch_dir(uri, tmp)
        predict = _compile(local)
        for n in warmup_batch_sizes:
            x = np.random.default_rng(0).random((n, *INPUT_SHAPE), dtype=np.float32)
            try:
                y = predict(x)
            except (tf.errors.OpError, ValueError, TypeError) as exc:
                raise ModelLoadError("incompatible", f"{uri}: model rejects a ({n}, 28, 28, 1) float32 batch: {exc}") from None
            if y.shape != (n, NUM_CLASSES):
                raise ModelLoadError("incompatible", f"{uri}: expected output shape ({n}, {NUM_CLASSES}), got {y.shape}")
            if not np.all(np.isfinite(y)):
                raise ModelLoadError("warmup", f"{uri}: model outputs non-finite values")
        return LoadedModel(version=version, predict=predict, source=uri)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _compile(local: Path):
    """A graph-compiled predict function with a fixed input signature (no retracing per batch size)."""
    import tensorflow as tf

    signature = [tf.TensorSpec([None, *INPUT_SHAPE], tf.float32)]
    keras_file = local / "model.keras"
    saved = local / "saved_model" if (local / "saved_model").is_dir() else local
    try:
        if keras_file.exists():
            import keras

            model = keras.models.load_model(keras_file, compile=False)
            fn = tf.function(lambda x: model(x, training=False), input_signature=signature, reduce_retracing=True)
        elif (saved / "saved_model.pb").exists():
            loaded = tf.saved_model.load(str(saved))
            serve = getattr(loaded, "serve", None) or loaded.signatures["serving_default"]

            def call(x, _serve=serve):
                out = _serve(x)
                return next(iter(out.values())) if isinstance(out, dict) else out

            fn = tf.function(call, input_signature=signature)
        else:
            raise ModelLoadError("load", f"{local}: neither model.keras nor saved_model/saved_model.pb")
        fn.get_concrete_function()
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to deserialize means this version is unusable
        raise ModelLoadError("load", f"{local}: cannot load model: {type(exc).__name__}: {exc}") from None

    def predict(x: np.ndarray) -> np.ndarray:
        return fn(tf.constant(x)).numpy()

    return predict


def configure_threads() -> None:
    """TF uses its own pools; keep them small so the HTTP event loop keeps a core (env overrides)."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(int(os.environ.get("SERVING_TF_THREADS", "1")))
    tf.config.threading.set_inter_op_parallelism_threads(1)
