"""The runtimes behind the server: all that the protocol, validation and batching code sees of a model.

A runtime turns a model directory into named signatures: a ``SignatureSpec`` (input/output names,
element types, shapes with ``None`` for a dynamic dimension; serving/codec.py validates requests
against it) and a function from named numpy arrays to named numpy arrays (serving/batcher.py calls
it with merged batches). Two implement it:

* ``savedmodel`` (serving/runtime_tf.py): a TensorFlow SavedModel's serving signatures, or a Keras
  ``model.keras``;
* ``onnx`` (serving/runtime_onnx.py): ``model.onnx`` in ONNX Runtime, its one signature read from
  the graph.

Which one a version needs is recorded by its publisher: ``"format"`` in the version's
``metadata.json`` (training/registry.py writes it; a version published before the field existed
is a SavedModel). A directory without metadata (a developer's model folder) is recognised by its
files. The runtime is imported only when a model of its format loads: a TensorFlow-only server
never imports ONNX Runtime, and an ONNX-only one never pays TensorFlow's start-up.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.codec import SignatureSpec

SAVEDMODEL, ONNX = "savedmodel", "onnx"
# The Open Inference Protocol's model metadata names the platform (Triton's names for the two).
PLATFORMS = {SAVEDMODEL: "tensorflow_savedmodel", ONNX: "onnxruntime_onnx"}
ONNX_FILE = "model.onnx"


class FormatError(ValueError):
    """A version whose format this server cannot serve (the message says which and why)."""


@dataclass
class Signature:
    spec: SignatureSpec
    fn: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]  # named arrays in, every named output out

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.fn(inputs)


def format_of(local: Path) -> str:
    """The version's format: its metadata's ``format``, else what its files are."""
    try:
        meta = json.loads((local / "metadata.json").read_text())
    except (OSError, ValueError):
        meta = None
    declared = meta.get("format") if isinstance(meta, dict) else None
    if declared is not None:
        if declared not in PLATFORMS:
            raise FormatError(f"metadata.json: format {declared!r} is not one this server runs ({', '.join(PLATFORMS)})")
        return declared
    has_savedmodel = (local / "saved_model").is_dir() or (local / "saved_model.pb").exists() or (local / "model.keras").exists()
    return ONNX if (local / ONNX_FILE).exists() and not has_savedmodel else SAVEDMODEL


def load_signatures(local: Path, fmt: str) -> dict[str, Signature]:
    """The model in ``local`` as signatures, by the runtime of ``fmt`` (raises serving.model.ModelLoadError)."""
    if fmt == ONNX:
        from serving import runtime_onnx

        return runtime_onnx.load_signatures(local)
    from serving import runtime_tf

    return runtime_tf.load_signatures(local)
