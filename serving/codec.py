"""Request decoding and response encoding against a model's signature (no TensorFlow here).

This module is imported by the parser worker process too (large bodies are decoded there, off the
event loop), so it depends only on numpy and orjson, and everything it takes and returns pickles.

Formats (https://www.tensorflow.org/tfx/serving/api_rest and the Open Inference Protocol,
https://github.com/kserve/open-inference-protocol/blob/main/specification/protocol/inference_rest.md):

* TF-Serving row format: ``{"instances": [v, ...]}`` (one input) or ``{"instances": [{name: v}, ...]}``;
  answered ``{"predictions": [...]}`` (an object per row when the signature has several outputs).
* TF-Serving columnar format: ``{"inputs": v}`` or ``{"inputs": {name: v}}``; answered ``{"outputs": ...}``.
* Open Inference Protocol v2: ``{"inputs": [{"name", "shape", "datatype", "data"}]}`` -> ``{"outputs": [...]}``.

Strings follow TF-Serving's JSON rules: a JSON string is its UTF-8 bytes, ``{"b64": "..."}`` is binary.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass

import numpy as np
import orjson

from serving.errors import BadRequest, NotFound

DEFAULT_SIGNATURE = "serving_default"

# numpy dtype name -> (TF DataType enum name, Open Inference Protocol datatype)
DTYPES = {
    "float16": ("DT_HALF", "FP16"),
    "float32": ("DT_FLOAT", "FP32"),
    "float64": ("DT_DOUBLE", "FP64"),
    "int8": ("DT_INT8", "INT8"),
    "int16": ("DT_INT16", "INT16"),
    "int32": ("DT_INT32", "INT32"),
    "int64": ("DT_INT64", "INT64"),
    "uint8": ("DT_UINT8", "UINT8"),
    "uint16": ("DT_UINT16", "UINT16"),
    "uint32": ("DT_UINT32", "UINT32"),
    "uint64": ("DT_UINT64", "UINT64"),
    "bool": ("DT_BOOL", "BOOL"),
    "string": ("DT_STRING", "BYTES"),
}
V2_TO_DTYPE = {v2: name for name, (_, v2) in DTYPES.items()}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # a key of DTYPES
    shape: tuple[int | None, ...]  # None: any size; the first dimension is the batch when batched

    def shape_text(self) -> str:
        return "[" + ", ".join("-1" if d is None else str(d) for d in self.shape) + "]"

    def describe(self) -> str:
        return f"{self.dtype} with shape {self.shape_text()}"


@dataclass(frozen=True)
class SignatureSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def batched(self) -> bool:
        """Every input and output has a leading dimension of any size: requests can be merged."""
        return all(t.shape and t.shape[0] is None for t in (*self.inputs, *self.outputs))

    def input(self, name: str) -> TensorSpec:
        for t in self.inputs:
            if t.name == name:
                return t
        raise BadRequest(f"signature {self.name!r} has no input {name!r}; its inputs are {self.input_names()}")

    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]


def incompatibilities(old: SignatureSpec, new: SignatureSpec) -> list[str]:
    """Why clients of ``old`` would break on ``new`` (empty: a safe hot swap)."""
    problems = []
    for kind, a, b in (("input", old.inputs, new.inputs), ("output", old.outputs, new.outputs)):
        bmap = {t.name: t for t in b}
        if {t.name for t in a} != set(bmap):
            problems.append(f"{kind}s {sorted(t.name for t in a)} became {sorted(bmap)}")
            continue
        for t in a:
            n = bmap[t.name]
            if n.dtype != t.dtype:
                problems.append(f"{kind} {t.name!r} dtype {t.dtype} became {n.dtype}")
            elif len(n.shape) != len(t.shape) or any(nd is not None and nd != od for od, nd in zip(t.shape, n.shape, strict=False)):
                problems.append(f"{kind} {t.name!r} shape {t.shape_text()} became {n.shape_text()}")
    return problems


# ---- value -> array ----


def _strings(value, where: str) -> np.ndarray:
    def conv(v):
        if isinstance(v, list):
            return [conv(x) for x in v]
        if isinstance(v, str):
            return v.encode()
        if isinstance(v, dict) and v.keys() == {"b64"} and isinstance(v["b64"], str):
            try:
                return base64.b64decode(v["b64"], validate=True)
            except (binascii.Error, ValueError):
                raise BadRequest(f"{where}: invalid base64 in {{'b64': ...}}") from None
        raise BadRequest(f'{where}: expected strings (or {{"b64": "..."}} for binary), got {type(v).__name__}')

    converted = conv(value)
    try:
        arr = np.array(converted, dtype=object)
    except ValueError:
        raise BadRequest(f"{where}: ragged: all rows must have the same length") from None
    if arr.dtype != object or any(not isinstance(x, bytes) for x in arr.reshape(-1)[:1]):
        raise BadRequest(f"{where}: ragged: all rows must have the same length")
    _check_rectangular(converted, arr.shape, where)
    return arr


def _check_rectangular(value, shape, where) -> None:
    # np.array(dtype=object) silently builds arrays of lists from ragged input; walk it once.
    def walk(v, depth):
        if depth == len(shape):
            if isinstance(v, list):
                raise BadRequest(f"{where}: ragged: all rows must have the same length")
            return
        if not isinstance(v, list) or len(v) != shape[depth]:
            raise BadRequest(f"{where}: ragged: all rows must have the same length")
        for x in v:
            walk(x, depth + 1)

    walk(value, 0)


def to_array(value, spec: TensorSpec, where: str, batched: bool) -> np.ndarray:
    """A JSON value -> an array of ``spec``'s dtype and rank, or BadRequest naming what was expected."""
    arr = _strings(value, where) if spec.dtype == "string" else _numbers(value, spec, where)
    return _fit_shape(arr, spec, where, batched)


def _numbers(value, spec: TensorSpec, where: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (ValueError, OverflowError):
        raise BadRequest(f"{where}: ragged: all rows must have the same length (expected {spec.describe()})") from None
    want = np.dtype(spec.dtype)
    _check_kind(arr, want, spec, where)
    if arr.dtype != want:
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow becomes inf: refused just below
            arr = arr.astype(want)
    if want.kind == "f" and arr.size and not np.isfinite(arr).all():
        raise BadRequest(f"{where}: values out of range for {spec.dtype}")
    return arr


def _check_kind(arr: np.ndarray, want: np.dtype, spec: TensorSpec, where: str) -> None:
    """The JSON values suit ``want``: booleans for bool, integers within its range for an integer
    dtype, any numbers for a float dtype."""
    kind = arr.dtype.kind
    if kind == "O":
        raise BadRequest(f"{where}: expected {spec.dtype} numbers, got mixed or out-of-range values")
    if want.kind == "b":
        if kind != "b":
            raise BadRequest(f"{where}: expected bool (true/false), got {_kind_name(kind)}")
    elif want.kind in "iu":
        if kind not in "iu":
            raise BadRequest(f"{where}: expected {spec.dtype} integers, got {_kind_name(kind)}")
        info = np.iinfo(want)
        if arr.size and (int(arr.min()) < info.min or int(arr.max()) > info.max):
            raise BadRequest(f"{where}: values out of range for {spec.dtype} [{info.min}, {info.max}]")
    elif kind not in "iuf":  # float
        raise BadRequest(f"{where}: expected {spec.dtype} numbers, got {_kind_name(kind)}")


def _fit_shape(arr: np.ndarray, spec: TensorSpec, where: str, batched: bool) -> np.ndarray:
    # The rank must be the signature's, as /v2 requires it: no trailing dimension of size 1 is
    # guessed (a 28x28 image for a 28x28x1 input is refused, with how to send it).
    rank = len(spec.shape)
    if arr.ndim != rank:
        got = "a scalar" if arr.ndim == 0 else f"shape {list(arr.shape)}"
        hint = " (add the trailing dimension of size 1: each value as [v])" if arr.ndim == rank - 1 and spec.shape[-1] == 1 else ""
        raise BadRequest(f"{where}: expected {spec.describe()}, got {got}{hint}")
    for i, (want_dim, got_dim) in enumerate(zip(spec.shape, arr.shape, strict=True)):
        if want_dim is not None and want_dim != got_dim:
            raise BadRequest(f"{where}: expected {spec.describe()}, got shape {list(arr.shape)} (dimension {i} must be {want_dim})")
    if batched and arr.shape[0] == 0:
        raise BadRequest(f"{where}: empty batch")
    return arr


def _kind_name(kind: str) -> str:
    return {"b": "booleans", "U": "strings", "S": "strings", "f": "floats", "i": "integers", "u": "integers"}.get(kind, "other values")


def _loads(body: bytes):
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None


# ---- TF-Serving REST ----


@dataclass
class Decoded:
    signature: str
    inputs: dict[str, np.ndarray]
    n: int  # rows (the batch size)
    row_format: bool = True
    outputs: tuple[str, ...] = ()  # v2: the outputs asked for (empty: all)
    request_id: str | None = None
    binary_outputs: frozenset[str] | bool = frozenset()  # v2 binary extension: these (True: all) as raw bytes


def parse_tfs(body: bytes, signatures: dict[str, SignatureSpec], max_batch: int) -> Decoded:
    """A TF-Serving :predict body -> arrays per input name, validated against the signature."""
    doc = _tfs_doc(body)
    sig_name = doc.get("signature_name", DEFAULT_SIGNATURE)
    sig = _signature(sig_name, signatures)
    row_format = "instances" in doc
    columns = _tfs_rows(doc["instances"], sig, max_batch) if row_format else _tfs_columns(doc["inputs"], sig, max_batch)
    inputs = {name: to_array(v, sig.input(name), f"input {name!r}", sig.batched) for name, v in columns.items()}
    n = _batch_size(inputs, sig)
    return Decoded(sig_name, inputs, n, row_format)


def _tfs_doc(body: bytes) -> dict:
    doc = _loads(body)
    if not isinstance(doc, dict):
        raise BadRequest('body must be a JSON object with "instances" (row format) or "inputs" (columnar format)')
    unknown = doc.keys() - {"instances", "inputs", "signature_name"}
    if unknown:
        raise BadRequest(f'unknown keys {sorted(unknown)}: expected exactly one of "instances" or "inputs" and optional "signature_name"')
    if len({"instances", "inputs"} & doc.keys()) != 1:
        raise BadRequest('body must have exactly one of "instances" (row format) or "inputs" (columnar format)')
    return doc


def _signature(name, signatures: dict[str, SignatureSpec]) -> SignatureSpec:
    if not isinstance(name, str) or name not in signatures:
        raise BadRequest(f"unknown signature_name {name!r}: this model has {sorted(signatures)}")
    return signatures[name]


def _tfs_rows(rows, sig: SignatureSpec, max_batch: int) -> dict[str, list]:
    """Row format ("instances") -> one column (a list of values) per input name."""
    names = sig.input_names()
    if not isinstance(rows, list) or not rows:
        raise BadRequest('"instances" must be a non-empty list (one entry per instance)')
    if sig.batched and len(rows) > max_batch:
        raise BadRequest(f"{len(rows)} instances exceed the limit of {max_batch} per request: split the batch")
    if all(isinstance(r, dict) and not (r.keys() == {"b64"}) for r in rows):
        return _named_rows(rows, sig, names)
    if any(isinstance(r, dict) and not (r.keys() == {"b64"}) for r in rows):
        raise BadRequest('"instances" must be all objects keyed by input name or all values, not a mix')
    if len(names) == 1:
        return {names[0]: rows}
    raise BadRequest(f"signature {sig.name!r} has several inputs {names}: each instance must be an object keyed by input name")


def _named_rows(rows: list[dict], sig: SignatureSpec, names: list[str]) -> dict[str, list]:
    for i, r in enumerate(rows):
        if r.keys() != set(names):
            missing, extra = sorted(set(names) - r.keys()), sorted(r.keys() - set(names))
            raise BadRequest(
                f"instance {i}: "
                + "; ".join(filter(None, [missing and f"missing inputs {missing}", extra and f"unknown inputs {extra}"]))
                + f" (signature {sig.name!r} takes {names})"
            )
    return {name: [r[name] for r in rows] for name in names}


def _tfs_columns(data, sig: SignatureSpec, max_batch: int) -> dict:
    """Columnar format ("inputs") -> the value per input name."""
    names = sig.input_names()
    if isinstance(data, dict) and not (data.keys() == {"b64"}):
        missing, extra = sorted(set(names) - data.keys()), sorted(data.keys() - set(names))
        if extra:
            raise BadRequest(f"unknown inputs {extra}: signature {sig.name!r} takes {names}")
        if missing:
            raise BadRequest(f"missing inputs {missing}: signature {sig.name!r} takes {names}")
    elif len(names) == 1:
        data = {names[0]: data}
    else:
        raise BadRequest(f'signature {sig.name!r} has several inputs {names}: "inputs" must be an object keyed by input name')
    for name, v in data.items():
        if sig.batched and isinstance(v, list) and len(v) > max_batch:
            raise BadRequest(f"input {name!r}: {len(v)} instances exceed the limit of {max_batch} per request: split the batch")
    return data


def _batch_size(inputs: dict[str, np.ndarray], sig: SignatureSpec) -> int:
    if not sig.batched:
        return 1
    sizes = {name: len(a) for name, a in inputs.items()}
    if len(set(sizes.values())) > 1:
        raise BadRequest(f"inputs have different batch sizes {sizes}: every input needs one entry per instance")
    return next(iter(sizes.values()))


def _jsonable(arr: np.ndarray, name: str):
    if arr.dtype == object:  # strings: TF-Serving answers UTF-8 text, binary (or *_bytes outputs) as {"b64"}
        flat = [_string_out(x, name) for x in arr.reshape(-1)]
        return np.array(flat, dtype=object).reshape(arr.shape).tolist() if arr.ndim else flat[0]
    return arr


def _string_out(x: bytes, name: str):
    if not name.endswith("_bytes"):
        try:
            return x.decode()
        except UnicodeDecodeError:
            pass
    return {"b64": base64.b64encode(x).decode()}


def encode_tfs(outputs: dict[str, np.ndarray], row_format: bool, version: str) -> bytes:
    names = list(outputs)
    if not row_format:
        doc = {"outputs": _jsonable(outputs[names[0]], names[0]) if len(names) == 1 else {k: _jsonable(v, k) for k, v in outputs.items()}}
    elif len(names) == 1:
        doc = {"predictions": _jsonable(outputs[names[0]], names[0])}
    else:
        cols = {k: _jsonable(v, k) for k, v in outputs.items()}
        n = len(next(iter(outputs.values())))
        doc = {"predictions": [{k: c[i] for k, c in cols.items()} for i in range(n)]}
    doc["model_version"] = version
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


# ---- Open Inference Protocol v2 ----


def parse_v2(body: bytes, signatures: dict[str, SignatureSpec], max_batch: int, header_length: int | None = None) -> Decoded:
    """An Open Inference Protocol infer body. With ``header_length`` (the Inference-Header-Content-Length
    header of the binary tensor data extension) the JSON is the first ``header_length`` bytes and inputs
    with ``parameters.binary_data_size`` take their data, in order, from the bytes after it."""
    body, binary = _split_binary(body, header_length)
    doc = _loads(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise BadRequest('body must be a JSON object with "inputs": [{"name", "shape", "datatype", "data"}, ...]')
    params = doc.get("parameters") or {}
    sig_name = params.get("signature_name", DEFAULT_SIGNATURE) if isinstance(params, dict) else DEFAULT_SIGNATURE
    sig = _signature(sig_name, signatures)
    inputs = _v2_inputs(doc["inputs"], sig, max_batch, binary, header_length)
    wanted, binary_out = _v2_outputs(doc, params, sig)
    rid = doc.get("id")
    return Decoded(
        sig_name,
        inputs,
        _batch_size(inputs, sig),
        row_format=False,
        outputs=wanted,
        request_id=rid if isinstance(rid, str) else None,
        binary_outputs=binary_out or frozenset(),
    )


def _split_binary(body: bytes, header_length: int | None) -> tuple[bytes, memoryview | bytes]:
    """(the JSON header, the binary tensor data after it)."""
    if header_length is None:
        return body, b""
    if not 0 <= header_length <= len(body):
        raise BadRequest(f"Inference-Header-Content-Length {header_length} is outside the body of {len(body)} bytes")
    return body[:header_length], memoryview(body)[header_length:]


def _v2_inputs(
    entries: list, sig: SignatureSpec, max_batch: int, binary: memoryview | bytes, header_length: int | None
) -> dict[str, np.ndarray]:
    """Every input of the signature, each from its entry's JSON data or from the next
    ``binary_data_size`` bytes of ``binary``; every binary byte belongs to an input."""
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, t in enumerate(entries):
        name, shape, datatype, data, size = _v2_fields(i, t)
        spec, where = _v2_spec(name, shape, datatype, sig, inputs, max_batch)
        if size is not None:
            arr = _from_binary(_binary_slice(binary, offset, size, header_length, where), spec.dtype, shape, where)
            offset += size
        else:
            arr = _from_json_data(data, spec, shape, where)
        inputs[name] = _check(arr, spec, where)
        if sig.batched and arr.shape[0] == 0:
            raise BadRequest(f"{where}: empty batch")
    names = sig.input_names()
    missing = sorted(set(names) - inputs.keys())
    if missing:
        raise BadRequest(f"missing inputs {missing}: signature {sig.name!r} takes {names}")
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes after the JSON header belong to no input's binary_data_size")
    return inputs


def _v2_fields(i: int, t) -> tuple:
    """inputs[i]'s (name, shape, datatype, data, binary_data_size or None)."""
    tparams = t.get("parameters") if isinstance(t, dict) else None
    size = tparams.get("binary_data_size") if isinstance(tparams, dict) else None
    if not isinstance(t, dict) or not {"name", "shape", "datatype"} <= t.keys() or ("data" not in t and size is None):
        raise BadRequest(f"inputs[{i}] must be an object with name, shape, datatype and data (or parameters.binary_data_size)")
    if not isinstance(t["name"], str):
        raise BadRequest(f"inputs[{i}].name must be a string")
    return t["name"], t["shape"], t["datatype"], t.get("data"), size


def _v2_spec(name: str, shape, datatype, sig: SignatureSpec, seen: dict, max_batch: int) -> tuple[TensorSpec, str]:
    """(the signature's input ``name``, the error prefix for it), once the entry's datatype and shape fit it."""
    if name in seen:
        raise BadRequest(f"input {name!r} given twice")
    spec = sig.input(name)
    where = f"input {name!r}"
    want_v2 = DTYPES[spec.dtype][1]
    if datatype != want_v2:
        raise BadRequest(f"{where}: datatype {datatype!r} does not match the signature's {want_v2}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise BadRequest(f"{where}: shape must be a list of non-negative integers")
    if sig.batched and shape and shape[0] > max_batch:
        raise BadRequest(f"{where}: {shape[0]} instances exceed the limit of {max_batch} per request: split the batch")
    # The declared shape against the signature before any data is decoded: it bounds the element
    # count every decoding loop runs to (the decoded array is checked again, _check).
    _check_shape(shape, spec, where)
    return spec, where


def _binary_slice(binary: memoryview | bytes, offset: int, size, header_length: int | None, where: str) -> memoryview | bytes:
    if header_length is None:
        raise BadRequest(f"{where}: binary_data_size without an Inference-Header-Content-Length header")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
        raise BadRequest(f"{where}: binary_data_size {size!r} does not fit the {len(binary) - offset} binary bytes left")
    return binary[offset : offset + size]


def _from_json_data(data, spec: TensorSpec, shape: list[int], where: str) -> np.ndarray:
    """An entry's "data" (flat or nested, row-major) as an array of ``shape``."""
    if not isinstance(data, list):
        data = [data]
    flat = _flatten(data, where)
    if len(flat) != math.prod(shape):
        raise BadRequest(f"{where}: {len(flat)} data elements do not fill shape {shape}")
    return to_array(flat, TensorSpec(spec.name, spec.dtype, (None,)), where, batched=False).reshape(shape)


def _v2_outputs(doc: dict, params, sig: SignatureSpec) -> tuple[tuple[str, ...], frozenset[str] | bool]:
    """(the outputs asked for, empty: all; the outputs to send as binary, True: all)."""
    binary_out: frozenset[str] | bool = isinstance(params, dict) and params.get("binary_data_output") is True
    outputs = doc.get("outputs")
    if outputs is None:
        return (), binary_out
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs):
        raise BadRequest('"outputs" must be a list of {"name": ...}')
    out_names = [o.name for o in sig.outputs]
    wanted = tuple(o["name"] for o in outputs)
    for o in wanted:
        if o not in out_names:
            raise BadRequest(f"unknown output {o!r}: signature {sig.name!r} has outputs {out_names}")
    if binary_out is False:
        binary_out = frozenset(
            o["name"] for o in outputs if isinstance(o.get("parameters"), dict) and o["parameters"].get("binary_data") is True
        )
    return wanted, binary_out


def _from_binary(raw: memoryview, dtype: str, shape: list[int], where: str) -> np.ndarray:
    """Little-endian, row-major tensor bytes; BYTES elements as a 4-byte little-endian length + bytes;
    BOOL as one byte 0 or 1 (the binary tensor data extension)."""
    count = math.prod(shape)
    if dtype == "string":
        return _bytes_elements(bytes(raw), count, shape, where)
    item = np.dtype(dtype).itemsize
    if len(raw) != count * item:
        raise BadRequest(f"{where}: {len(raw)} binary bytes do not fill shape {shape} of {dtype} ({count * item} bytes)")
    if dtype == "bool":
        arr = np.frombuffer(raw, np.uint8)
        if arr.size and arr.max() > 1:
            raise BadRequest(f"{where}: BOOL elements must be bytes 0 or 1")
        return arr.astype(bool).reshape(shape)
    return np.frombuffer(raw, np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(shape)


def _bytes_elements(raw: bytes, count: int, shape: list[int], where: str) -> np.ndarray:
    """BYTES elements (4-byte little-endian length + bytes each) as an object array of ``shape``.
    Every element takes at least 4 bytes, so a declared count the body cannot hold is refused before
    any loop; the common case, elements of one length (fixed-size records, images), is split by numpy
    without parsing lengths one by one; the general case loops at most ``count`` times."""
    if count * 4 > len(raw):
        raise BadRequest(f"{where}: {len(raw)} binary bytes cannot hold the {count} BYTES elements of shape {shape}")
    if count == 0:
        if raw:
            raise BadRequest(f"{where}: {len(raw)} bytes after the 0 BYTES elements of shape {shape}")
        return np.empty(shape, dtype=object)
    first = int.from_bytes(raw[:4], "little")
    if len(raw) == count * (4 + first):
        rows = np.frombuffer(raw, np.uint8).reshape(count, 4 + first)
        if (rows[:, :4].copy().view("<u4").ravel() == first).all():
            out = np.empty(count, dtype=object)
            out[:] = [r.tobytes() for r in rows[:, 4:]]
            return out.reshape(shape)
    items, pos, end = [], 0, len(raw)
    for _ in range(count):
        if pos + 4 > end:
            raise BadRequest(f"{where}: BYTES element length cut off at byte {pos}")
        n = int.from_bytes(raw[pos : pos + 4], "little")
        pos += 4
        if pos + n > end:
            raise BadRequest(f"{where}: BYTES element of {n} bytes runs past the binary data")
        items.append(raw[pos : pos + n])
        pos += n
    if pos != end:
        raise BadRequest(f"{where}: {end - pos} bytes after the {count} BYTES elements of shape {shape}")
    out = np.empty(count, dtype=object)
    out[:] = items
    return out.reshape(shape)


def _check(arr: np.ndarray, spec: TensorSpec, where: str) -> np.ndarray:
    _check_shape(list(arr.shape), spec, where)
    return arr


def _check_shape(shape: list[int], spec: TensorSpec, where: str) -> None:
    if len(shape) != len(spec.shape):
        raise BadRequest(f"{where}: expected {spec.describe()}, got shape {list(shape)}")
    for i, (w, g) in enumerate(zip(spec.shape, shape, strict=True)):
        if w is not None and w != g:
            raise BadRequest(f"{where}: expected {spec.describe()}, got shape {list(shape)} (dimension {i} must be {w})")


def _flatten(data: list, where: str) -> list:
    if not any(isinstance(x, list) for x in data):
        return data
    out: list = []
    stack = [iter(data)]
    while stack:
        for x in stack[-1]:
            if isinstance(x, list):
                stack.append(iter(x))
                break
            out.append(x)
        else:
            stack.pop()
    return out


def encode_v2(
    model: str, version: str, outputs: dict[str, np.ndarray], request_id: str | None, binary: frozenset[str] | bool = frozenset()
) -> tuple[bytes, int | None]:
    """(body, JSON header length or None). Outputs named in ``binary`` (True: all) go as raw bytes after
    the JSON, announced by ``parameters.binary_data_size``; the caller sends Inference-Header-Content-Length."""
    outs, tail = [], []
    for name, arr in outputs.items():
        dtype = "string" if arr.dtype == object else arr.dtype.name
        out = {"name": name, "datatype": DTYPES[dtype][1], "shape": list(arr.shape)}
        if binary is True or name in binary:
            raw = _to_binary(arr)
            out["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            out["data"] = [x.decode(errors="replace") for x in arr.reshape(-1)] if arr.dtype == object else arr.reshape(-1)
        outs.append(out)
    doc = {"model_name": model, "model_version": version, "outputs": outs}
    if request_id is not None:
        doc["id"] = request_id
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not tail:
        return head, None
    return head + b"".join(tail), len(head)


def _to_binary(arr: np.ndarray) -> bytes:
    if arr.dtype == object:
        return b"".join(len(x).to_bytes(4, "little") + x for x in arr.reshape(-1))
    if arr.dtype == bool:
        return arr.astype(np.uint8).tobytes()
    return np.ascontiguousarray(arr, arr.dtype.newbyteorder("<")).tobytes()


# ---- metadata documents ----


def tfs_metadata(model: str, version: str, signatures: dict[str, SignatureSpec]) -> dict:
    def tensors(ts):
        return {
            t.name: {
                "dtype": DTYPES[t.dtype][0],
                "tensor_shape": {"dim": [{"size": str(-1 if d is None else d), "name": ""} for d in t.shape], "unknown_rank": False},
                "name": t.name,
            }
            for t in ts
        }

    return {
        "model_spec": {"name": model, "signature_name": "", "version": version},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    s.name: {"inputs": tensors(s.inputs), "outputs": tensors(s.outputs), "method_name": "tensorflow/serving/predict"}
                    for s in signatures.values()
                }
            }
        },
    }


def v2_metadata(
    model: str, version: str, sig: SignatureSpec, platform: str = "tensorflow_savedmodel", fmt: str = "savedmodel", max_batch: int = 0
) -> dict:
    """The Open Inference Protocol's model metadata; ``parameters`` adds the version's format and,
    as Triton's model configuration does, ``max_batch_size``: 0 when the model has no dynamic batch
    dimension (each request is one model call), else the most instances merged into one call."""

    def tensors(ts):
        return [{"name": t.name, "datatype": DTYPES[t.dtype][1], "shape": [-1 if d is None else d for d in t.shape]} for t in ts]

    return {
        "name": model,
        "versions": [version],
        "platform": platform,
        "inputs": tensors(sig.inputs),
        "outputs": tensors(sig.outputs),
        "parameters": {"format": fmt, "max_batch_size": max_batch if sig.batched else 0},
    }


def select_signature(signatures: dict[str, SignatureSpec], name: str) -> SignatureSpec:
    if name not in signatures:
        raise NotFound(f"unknown signature {name!r}: this model has {sorted(signatures)}")
    return signatures[name]
