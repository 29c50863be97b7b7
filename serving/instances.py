"""Request instances built from a model's serving signature, for callers that have no data of the
model's own: the smoke test (ops/smoke.py) and the canary warm-up (serving/warmup.py). Pure (numpy
only): the server never imports it, and ops/ may import serving/, never the reverse."""

from __future__ import annotations

from typing import Any

import numpy as np

from serving.codec import DTYPES

_TFS_TO_V2 = {tfs: v2 for tfs, v2 in DTYPES.values()}


def example(datatype: str, dims: list[int], rng: np.random.Generator | None = None) -> np.ndarray:
    """One instance of an input in the signature's shape (a free dimension is 1). Without ``rng``:
    zeros (an empty string, False). With it, floats are uniform in [0, 1) so instances differ and a
    classifier spreads them over its classes; integers, strings and booleans stay 0 / "" / False (the
    one value every integer input accepts: an index, a count, a token id)."""
    shape = [1 if d < 0 else d for d in dims]
    if datatype == "BYTES":
        return np.full(shape, "", dtype=object)
    if datatype.startswith("FP") and rng is not None:
        return rng.random(shape).round(4)
    return np.zeros(shape, dtype=bool if datatype == "BOOL" else np.float64 if datatype.startswith("FP") else np.int64)


def inputs_from_tfs_metadata(doc: dict[str, Any], signature: str = "serving_default") -> list[dict[str, Any]]:
    """The inputs of ``GET /v1/models/{name}/metadata`` (TF Serving's document) as Open Inference
    Protocol tensor specs ``{"name", "datatype", "shape"}``, of ``signature`` (else the only one)."""
    sigs = doc["metadata"]["signature_def"]["signature_def"]
    if signature not in sigs:
        if len(sigs) != 1:
            raise ValueError(f"no signature {signature!r} among {sorted(sigs)}")
        signature = next(iter(sigs))
    out = []
    for name, t in sorted(sigs[signature]["inputs"].items()):
        if t["dtype"] not in _TFS_TO_V2:
            raise ValueError(f"input {name}: dtype {t['dtype']} not supported")
        shape = [int(d["size"]) for d in t["tensor_shape"]["dim"]]
        out.append({"name": name, "datatype": _TFS_TO_V2[t["dtype"]], "shape": shape})
    return out


def instances(inputs: list[dict[str, Any]], count: int, seed: int = 0) -> list[Any]:
    """``count`` instances in TF Serving's row format: a bare value for a single input, else one
    ``{name: value}`` per instance. The same ``seed`` gives the same instances (both sides of a canary
    get the same requests, so their predicted-class mixes are comparable)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        row = {i["name"]: example(i["datatype"], list(i["shape"][1:]), rng).tolist() for i in inputs}
        rows.append(row if len(inputs) > 1 else row[inputs[0]["name"]])
    return rows
