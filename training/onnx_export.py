"""ONNX exports of models that are not TensorFlow, checked against the native model before they are published.

ONNX is the exchange format the model server runs for every framework but TensorFlow
(serving/runtime_onnx.py, ONNX Runtime). A framework's exporter is a compiler: an operator it
lowers differently, a layer left in training mode, a dynamic dimension it fixed to the example's
size all give a graph that loads fine and answers something else. So an export is not published on
trust: :func:`check_equal` runs the exported graph in ONNX Runtime and the native model on the same
held-out inputs and refuses the export (:class:`ExportMismatch`, one line) when any output differs
by more than the stated tolerance.

- PyTorch: :func:`export_torch`, ``torch.onnx.export`` with a dynamic batch dimension on every input
  and output, so the server batches requests along it (serving/batcher.py). The TorchScript-based
  exporter (``dynamo=False``): the torch.export-based one, the default since PyTorch 2.9, needs the
  ``onnxscript`` package, one more dependency for the same graph on the plain CNNs and MLPs this
  platform's examples are; pass ``dynamo=True`` with onnxscript installed for models only it handles.
- scikit-learn: :func:`export_sklearn`, skl2onnx's ``to_onnx`` with ZipMap off (a classifier's
  probabilities as one float tensor, not a sequence of maps that JSON cannot carry; the server
  refuses graphs with non-tensor outputs).

The tolerance (``TOLERANCE``, 1e-4 absolute) is float32 round-off across two engines' kernels
(convolutions and matrix products summed in another order): measured 1e-6 on the MNIST CNN, 1e-7
on the breast-cancer pipeline's probabilities; a real export fault (a wrong layer, a missing
softmax, a mis-ordered input) is off by 1e-2 or more.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

TOLERANCE = 1e-4
OPSET = 17  # ONNX Runtime 1.31 runs opsets up to 23; 17 is the newest both exporters here emit by default
BATCH = "batch"  # the name of the dynamic leading dimension


class ExportMismatch(ValueError):
    """The exported graph answers differently from the native model; the message is one line."""


def _session(onnx_bytes: bytes):
    import onnxruntime as ort

    return ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])


def run_onnx(onnx_bytes: bytes | Any, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{output name: array} of the graph (bytes, or an InferenceSession) on ``inputs``, in ONNX Runtime."""
    session = _session(onnx_bytes) if isinstance(onnx_bytes, bytes) else onnx_bytes
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(inputs)), strict=True))


def check_equal(
    onnx_bytes: bytes,
    native: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]],
    inputs: Mapping[str, np.ndarray],
    tolerance: float = TOLERANCE,
) -> float:
    """The largest absolute difference between the graph's outputs and ``native(inputs)``'s (same
    output names); ExportMismatch when it exceeds ``tolerance``, an output is missing, or a shape
    differs. Integer outputs (class labels) must match exactly."""
    got = run_onnx(onnx_bytes, inputs)
    want = {k: np.asarray(v) for k, v in native(inputs).items()}
    n = len(next(iter(inputs.values())))
    if set(got) != set(want):
        raise ExportMismatch(f"ONNX export check: outputs {sorted(got)} differ from the native model's {sorted(want)}; nothing published")
    worst = 0.0
    for name in sorted(want):
        a, b = np.asarray(got[name]), want[name]
        if a.shape != b.shape:
            raise ExportMismatch(f"ONNX export check: output {name!r} has shape {a.shape}, the native model's {b.shape}; nothing published")
        diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
        if not np.isfinite(diff):
            diff = float("inf")
        limit = 0.0 if np.issubdtype(b.dtype, np.integer) else tolerance
        if diff > limit:
            raise ExportMismatch(
                f"ONNX export check: output {name!r} differs from the native model by {diff:.3g} (> tolerance {limit:g}) "
                f"on {n} held-out inputs; nothing published"
            )
        worst = max(worst, diff)
    return worst


def export_torch(model, example: Mapping[str, np.ndarray], output_names: list[str], opset: int = OPSET) -> bytes:
    """``model`` (a torch.nn.Module taking the inputs positionally, in ``example``'s order) as ONNX
    bytes, every input's and output's first dimension dynamic (``batch``). The model is put in eval
    mode (dropout and batch norm as at inference)."""
    import warnings

    import torch

    model.eval()
    names = list(example)
    args = tuple(torch.from_numpy(np.asarray(example[k])) for k in names)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # "You are using the legacy TorchScript-based ONNX export": chosen on purpose (module docstring).
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            args,
            buf,
            input_names=names,
            output_names=output_names,
            dynamic_axes={k: {0: BATCH} for k in (*names, *output_names)},
            opset_version=opset,
            dynamo=False,
        )
    return buf.getvalue()


def torch_native(model, output_names: list[str]) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
    """``inputs -> {output name: array}`` of a torch module in eval mode, for :func:`check_equal`."""
    import torch

    def call(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        model.eval()
        with torch.no_grad():
            out = model(*(torch.from_numpy(np.asarray(v)) for v in inputs.values()))
        outs = out if isinstance(out, tuple | list) else (out,)
        return {k: o.detach().cpu().numpy() for k, o in zip(output_names, outs, strict=True)}

    return call


def export_sklearn(estimator, example: Mapping[str, np.ndarray], opset: int = OPSET) -> bytes:
    """A fitted scikit-learn estimator or Pipeline as ONNX bytes (skl2onnx), its inputs named and
    typed after ``example`` with a dynamic batch dimension; classifiers without ZipMap (the
    probabilities are one (n, classes) float tensor)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import guess_data_type

    if len(example) != 1:
        raise ValueError("export_sklearn takes one input array (a Pipeline's X); use skl2onnx's initial_types for several")
    name, x = next(iter(example.items()))
    x = np.asarray(x)
    # Named after the model's input (to_onnx would call it "X"), any number of rows.
    ((_, kind),) = guess_data_type(x[:1])
    kind.shape = [None, *x.shape[1:]]
    model = to_onnx(estimator, initial_types=[(name, kind)], target_opset=opset, options={"zipmap": False})
    for dim in (v.type.tensor_type.shape.dim[0] for v in (*model.graph.input, *model.graph.output)):
        dim.ClearField("dim_value")
        dim.dim_param = BATCH
    return model.SerializeToString()


def sklearn_native(estimator) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
    """``inputs -> {"label", "probabilities"}`` of a fitted scikit-learn classifier, named as
    skl2onnx names a classifier's outputs, for :func:`check_equal`."""

    def call(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = np.asarray(next(iter(inputs.values())))
        return {"label": estimator.predict(x).astype(np.int64), "probabilities": estimator.predict_proba(x).astype(np.float32)}

    return call


def signature(onnx_bytes: bytes) -> dict[str, dict[str, dict[str, tuple]]]:
    """The graph's serving signature in training/contract.py's form (``{"serving_default": {"inputs"|
    "outputs": {name: (dtype, shape)}}}``, None for a dynamic dimension), read from the graph alone,
    as the server reads it (serving/runtime_onnx.py), so contract.signature_breaks compares versions."""
    import onnx
    from onnx import helper

    graph = onnx.load_model_from_string(onnx_bytes).graph
    initializers = {i.name for i in graph.initializer}

    def tensors(values) -> dict[str, tuple]:
        out = {}
        for v in values:
            if v.name in initializers or not v.type.HasField("tensor_type"):
                continue
            t = v.type.tensor_type
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)).name
            shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim) if t.HasField("shape") else None
            out[v.name] = (dtype, shape)
        return out

    return {"serving_default": {"inputs": tensors(graph.input), "outputs": tensors(graph.output)}}
