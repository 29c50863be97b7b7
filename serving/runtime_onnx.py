"""The ONNX runtime (serving/runtime.py): ``model.onnx`` in ONNX Runtime, the engine of record for ONNX
(https://onnxruntime.ai/docs/api/python/api_summary.html, onnxruntime 1.31).

The signature is the graph's: its inputs and outputs (``InferenceSession.get_inputs()`` /
``get_outputs()``) with their element types and shapes, a symbolic or missing dimension (``"batch"``,
``None``) being dynamic. One graph, one signature: ``serving_default``. A graph whose every input and
output has a dynamic leading dimension is batched like a SavedModel (serving/batcher.py merges
requests along it); one without (a fixed batch of 1, say) is called once per request, which the
model's metadata says (serving/codec.py v2_metadata). Outputs that are not tensors (scikit-learn's
ZipMap, sequences, maps) have no tensor type for JSON or the binary extension: such a graph is
refused at load with how to export it instead.

Session options, for throughput on the pod's CPUs: intra-op threads per process = the CPU limit /
the processes in the pod (``--workers``), so threads x processes = the CPU limit and no two
processes' pools fight for a core; inter-op parallelism off (sequential execution: the batcher
already keeps a core busy per process); thread spinning off (a spinning pool burns the CPU the
event loop and the other processes need between batches); all graph optimisations. The CUDA
execution provider first when this ONNX Runtime build has it (the onnxruntime-gpu wheel) and the
pod has a GPU, the CPU provider always as the fallback for the nodes CUDA does not run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from serving.codec import DEFAULT_SIGNATURE, SignatureSpec, TensorSpec
from serving.model import ModelLoadError
from serving.runtime import ONNX_FILE, Signature

log = logging.getLogger("serving")

# ONNX Runtime's type strings -> the codec's dtype names (serving/codec.py DTYPES).
TYPES = {
    "tensor(float16)": "float16",
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "string",
}
_threads = 0  # intra-op threads per session; 0: the CPU limit / the pod's processes (configure)


def configure(workers: int = 1, threads: int = 0) -> None:
    """This process is one of ``workers`` in its pod; ``threads`` > 0 overrides the per-process pool."""
    global _threads
    from serving.workers import cpu_limit

    _threads = threads if threads > 0 else max(1, cpu_limit() // max(1, workers))


def intra_op_threads() -> int:
    if _threads <= 0:
        configure(int(os.environ.get("SERVING_INTERNAL_WORKERS", "1")))
    return _threads


def session_options():
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = intra_op_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3  # errors only: its warnings (unused initialisers, ...) are for the model's author
    return so


def providers() -> list[str]:
    """CUDA first where this build has it and a GPU is visible, the CPU always (the fallback)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    gpu = "CUDAExecutionProvider" in available and os.environ.get("CUDA_VISIBLE_DEVICES", "0") not in ("", "-1")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"]


def _dims(shape) -> tuple[int | None, ...]:
    # A dimension is an int (fixed), a string (symbolic: "batch", "N") or None (unnamed): dynamic.
    return tuple(d if isinstance(d, int) and d >= 0 else None for d in shape)


def _tensor(node, kind: str) -> TensorSpec:
    dtype = TYPES.get(node.type)
    if dtype is None:
        hint = " (scikit-learn: convert with options={id(classifier): {'zipmap': False}})" if node.type.startswith(("seq", "map")) else ""
        raise ModelLoadError("incompatible", f"{kind} {node.name!r} has type {node.type}, not a tensor JSON can carry{hint}")
    if node.shape is None:
        raise ModelLoadError("incompatible", f"{kind} {node.name!r} has an unknown rank")
    return TensorSpec(node.name, dtype, _dims(node.shape))


def spec_of(session) -> SignatureSpec:
    """The graph's signature: inputs and outputs in the graph's order."""
    return SignatureSpec(
        DEFAULT_SIGNATURE,
        tuple(_tensor(i, "input") for i in session.get_inputs()),
        tuple(_tensor(o, "output") for o in session.get_outputs()),
    )


def _feed(arr: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.dtype == "string":  # the codec's strings are bytes; ONNX strings are UTF-8 text
        return np.vectorize(lambda b: b.decode("utf-8", errors="replace"), otypes=[object])(arr) if arr.size else arr.astype(object)
    return arr


def _fetched(arr, spec: TensorSpec) -> np.ndarray:
    arr = np.asarray(arr)
    if spec.dtype == "string":
        return np.vectorize(lambda s: s.encode() if isinstance(s, str) else bytes(s), otypes=[object])(arr) if arr.size else arr
    # ONNX Runtime hands int64 out as C long long ("q"), numpy's int64 is C long ("l") here: equal
    # dtypes, but their scalars are different types and orjson serialises only numpy's own.
    return arr.view(np.dtype(arr.dtype.name)) if arr.dtype.char != np.dtype(arr.dtype.name).char else arr


def load_signatures(local: Path) -> dict[str, Signature]:
    import onnxruntime as ort

    path = local / ONNX_FILE
    if not path.is_file():
        raise ModelLoadError("load", f"{local}: no {ONNX_FILE}")
    try:
        session = ort.InferenceSession(str(path), sess_options=session_options(), providers=providers())
    except Exception as exc:  # noqa: BLE001 - a graph ONNX Runtime cannot load makes the version unusable
        raise ModelLoadError("load", f"{local}: ONNX Runtime cannot load {ONNX_FILE}: {type(exc).__name__}: {exc}") from None
    spec = spec_of(session)
    log.info(
        "ONNX Runtime %s: providers %s, %d intra-op thread(s)%s",
        ort.__version__,
        session.get_providers(),
        intra_op_threads(),
        "" if spec.batched else "; no dynamic batch dimension: served unbatched",
    )
    names = [o.name for o in spec.outputs]
    inputs = {t.name: t for t in spec.inputs}

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = session.run(names, {k: _feed(v, inputs[k]) for k, v in feeds.items()})
        return {t.name: _fetched(y, t) for t, y in zip(spec.outputs, out, strict=True)}

    run._mlplatform_session = session  # noqa: SLF001 - for tests and tools: the session that serves
    return {DEFAULT_SIGNATURE: Signature(spec, run)}
