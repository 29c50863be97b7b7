"""The model-agnostic server (issue 14 item 3): four real SavedModels served by one process; every
request format compared value by value with calling the signature in process; every malformed case a
400 naming the input and what was expected; batching per model without mixing models."""

from __future__ import annotations

import asyncio
import base64
import threading

import httpx
import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from serving import metrics as m
from serving.app import ModelServer, ServerSettings

RNG = np.random.default_rng(11)
IMAGES = RNG.random((3, 28, 28, 1), dtype=np.float32).round(3)
FEATURES = RNG.normal(size=(3, 4)).astype(np.float32).round(3)
CATEGORY = np.array([0, 4, 2], dtype=np.int64)
TEXT = [b"the cat sat", "héllo wörld".encode(), b"\xff\xfebinary"]


class Client:
    """One in-process server for the module, on an event loop in a thread; requests from the tests."""

    def __init__(self, models: dict[str, str]):
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.server = ModelServer(
            ServerSettings(models=models, poll_seconds=0, parse_workers=0, batch_timeout_ms=20), registry=CollectorRegistry()
        )
        self.call(self._start())

    async def _start(self):
        await self.server.startup()
        for _ in range(2400):
            if self.server.ready:
                break
            await asyncio.sleep(0.05)
        assert self.server.ready, "models did not load"
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.server), base_url="http://test")

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(300)

    def request(self, method, path, **kw) -> httpx.Response:
        return self.call(self.http.request(method, path, **kw))

    def close(self):
        self.call(self.server.shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture(scope="module")
def client(model_dirs):
    c = Client({name: str(path) for name, path in model_dirs.items()})
    yield c
    c.close()


@pytest.fixture(scope="module")
def reference(model_dirs):
    """The serving_default signature of each SavedModel, called in process: the values to match."""
    import tensorflow as tf

    loaded = {name: tf.saved_model.load(str(path / "saved_model")) for name, path in model_dirs.items()}

    def call(name: str, **inputs) -> dict[str, np.ndarray]:
        sig = loaded[name].signatures["serving_default"]
        return {k: v.numpy() for k, v in sig(**{k: tf.constant(v) for k, v in inputs.items()}).items()}

    return call


def input_name(client, model: str) -> str:
    return client.server.models[model].model.default.spec.inputs[0].name


def output_name(client, model: str) -> str:
    return client.server.models[model].model.default.spec.outputs[0].name


def close(a, b):
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), rtol=1e-5, atol=1e-6)


def b64(x: bytes) -> dict:
    return {"b64": base64.b64encode(x).decode()}


# ---- every format, value by value ----


@pytest.mark.parametrize("model", ["mnist", "cnn"])
def test_image_models_every_format(client, reference, model):
    name, out = input_name(client, model), output_name(client, model)
    want = reference(model, **{name: IMAGES})[out]
    path = f"/v1/models/{model}:predict"
    rows = client.request("POST", path, json={"instances": IMAGES.tolist()})
    rows_named = client.request("POST", path, json={"instances": [{name: x} for x in IMAGES.tolist()]})
    cols = client.request("POST", path, json={"inputs": IMAGES.tolist()})
    cols_named = client.request("POST", path, json={"inputs": {name: IMAGES.tolist()}})
    for r in (rows, rows_named):
        assert r.status_code == 200, r.text
        close(r.json()["predictions"], want)
    for r in (cols, cols_named):
        assert r.status_code == 200, r.text
        close(r.json()["outputs"], want)
    v2 = client.request(
        "POST",
        f"/v2/models/{model}/infer",
        json={"id": "r1", "inputs": [{"name": name, "shape": list(IMAGES.shape), "datatype": "FP32", "data": IMAGES.reshape(-1).tolist()}]},
    )
    assert v2.status_code == 200, v2.text
    doc = v2.json()
    assert doc["id"] == "r1" and doc["model_name"] == model
    (o,) = doc["outputs"]
    assert o["name"] == out and o["datatype"] == "FP32" and o["shape"] == list(want.shape)
    close(np.array(o["data"]).reshape(o["shape"]), want)


def test_multi_input_model_every_format(client, reference):
    want = reference("tabular", features=FEATURES, category=CATEGORY)
    path = "/v1/models/tabular:predict"
    rows = client.request(
        "POST", path, json={"instances": [{"features": f, "category": int(c)} for f, c in zip(FEATURES.tolist(), CATEGORY, strict=True)]}
    )
    assert rows.status_code == 200, rows.text
    preds = rows.json()["predictions"]
    assert [sorted(p) for p in preds] == [["probabilities", "score"]] * 3  # an object per row: several outputs
    close([p["probabilities"] for p in preds], want["probabilities"])
    close([p["score"] for p in preds], want["score"])
    cols = client.request("POST", path, json={"inputs": {"features": FEATURES.tolist(), "category": CATEGORY.tolist()}})
    assert cols.status_code == 200, cols.text
    outs = cols.json()["outputs"]
    close(outs["probabilities"], want["probabilities"])
    close(outs["score"], want["score"])
    v2 = client.request(
        "POST",
        "/v2/models/tabular/infer",
        json={
            "inputs": [
                {"name": "features", "shape": [3, 4], "datatype": "FP32", "data": FEATURES.tolist()},  # nested data is accepted too
                {"name": "category", "shape": [3], "datatype": "INT64", "data": CATEGORY.tolist()},
            ],
            "outputs": [{"name": "score"}],
        },
    )
    assert v2.status_code == 200, v2.text
    (o,) = v2.json()["outputs"]
    assert o["name"] == "score" and o["datatype"] == "FP32" and o["shape"] == [3]
    close(o["data"], want["score"])


def test_string_model_every_format(client, reference):
    want = reference("text", text=np.array(TEXT, dtype=object))
    as_json = [TEXT[0].decode(), TEXT[1].decode(), b64(TEXT[2])]  # text as JSON strings, binary as {"b64"}
    rows = client.request("POST", "/v1/models/text:predict", json={"instances": as_json})
    assert rows.status_code == 200, rows.text
    preds = rows.json()["predictions"]
    close([p["probs"] for p in preds], want["probs"])
    assert [p["tokens"] for p in preds] == want["tokens"].tolist()
    # an output whose name ends in _bytes is always base64, as TF-Serving does
    assert [base64.b64decode(p["upper_bytes"]["b64"]) for p in preds] == list(want["upper_bytes"])
    cols = client.request("POST", "/v1/models/text:predict", json={"inputs": {"text": as_json}})
    assert cols.status_code == 200, cols.text
    close(cols.json()["outputs"]["probs"], want["probs"])
    v2 = client.request(
        "POST",
        "/v2/models/text/infer",
        json={"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": [TEXT[0].decode(), TEXT[1].decode()]}]},
    )
    assert v2.status_code == 200, v2.text
    outs = {o["name"]: o for o in v2.json()["outputs"]}
    assert outs["tokens"]["datatype"] == "INT64" and outs["upper_bytes"]["datatype"] == "BYTES"
    close(np.array(outs["probs"]["data"]).reshape(2, 2), want["probs"][:2])
    assert outs["upper_bytes"]["data"] == [x.decode() for x in want["upper_bytes"][:2]]


# ---- metadata, status, versions ----


def test_metadata_comes_from_the_signature(client):
    meta = client.request("GET", "/v1/models/tabular/metadata").json()
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["inputs"]["features"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in sig["inputs"]["features"]["tensor_shape"]["dim"]] == ["-1", "4"]
    assert sig["inputs"]["category"]["dtype"] == "DT_INT64"
    assert sorted(sig["outputs"]) == ["probabilities", "score"]
    v2 = client.request("GET", "/v2/models/text").json()
    assert v2["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert {o["name"]: o["datatype"] for o in v2["outputs"]} == {"probs": "FP32", "tokens": "INT64", "upper_bytes": "BYTES"}
    assert client.request("GET", "/v2/models/text/ready").json() == {"name": "text", "ready": True}
    assert client.request("GET", "/v2/health/live").status_code == 200
    assert client.request("GET", "/v2/health/ready").json()["ready"] is True


def test_versions_route(client):
    version = client.server.models["mnist"].model.version
    ok = client.request("GET", f"/v1/models/mnist/versions/{version}")
    assert ok.status_code == 200 and ok.json()["model_version_status"][0]["version"] == version
    body = {"instances": IMAGES[:1].tolist()}
    assert client.request("POST", f"/v1/models/mnist/versions/{version}:predict", json=body).status_code == 200
    assert client.request("GET", f"/v2/models/mnist/versions/{version}/ready").status_code == 200
    missing = client.request("POST", "/v1/models/mnist/versions/999:predict", json=body)
    assert missing.status_code == 404 and "version '999' is not served" in missing.json()["error"]


# ---- validation: 400 naming the input and what was expected ----

TAB_OK = {"features": [0.1, 0.2, 0.3, 0.4], "category": 1}
MALFORMED = [
    ("tabular", "wrong dtype", {"instances": [{**TAB_OK, "category": 1.5}]}, "input 'category': expected int64 integers, got floats"),
    (
        "tabular",
        "strings for floats",
        {"instances": [{**TAB_OK, "features": ["a"] * 4}]},
        "input 'features': expected float32 numbers, got strings",
    ),
    ("tabular", "fixed dim", {"instances": [{**TAB_OK, "features": [0.1] * 3}]}, "input 'features': expected float32 with shape [-1, 4]"),
    (
        "tabular",
        "rank",
        {"inputs": {"features": [[[0.1] * 4]], "category": [1]}},
        "input 'features': expected float32 with shape [-1, 4], got shape [1, 1, 4]",
    ),
    ("tabular", "ragged", {"inputs": {"features": [[0.1] * 4, [0.1] * 3], "category": [1, 2]}}, "input 'features': ragged"),
    ("tabular", "missing input", {"inputs": {"features": [[0.1] * 4]}}, "missing inputs ['category']"),
    ("tabular", "missing in a row", {"instances": [{"features": [0.1] * 4}]}, "missing inputs ['category']"),
    ("tabular", "unknown input", {"inputs": {**{k: [v] for k, v in TAB_OK.items()}, "extra": [1]}}, "unknown inputs ['extra']"),
    ("tabular", "values for a multi-input model", {"instances": [[0.1] * 4]}, "must be an object keyed by input name"),
    ("tabular", "batch sizes differ", {"inputs": {"features": [[0.1] * 4] * 2, "category": [1]}}, "different batch sizes"),
    ("tabular", "int out of range", {"instances": [{**TAB_OK, "category": 2**70}]}, "input 'category'"),
    ("tabular", "unknown signature", {"signature_name": "train", "instances": [TAB_OK]}, "unknown signature_name 'train'"),
    ("text", "number for a string", {"instances": [1]}, "input 'text': expected strings"),
    ("text", "bad base64", {"instances": [{"b64": "***"}]}, "input 'text': invalid base64"),
    ("text", "rank", {"instances": [["a", "b"]]}, "input 'text': expected string with shape [-1], got shape [1, 2]"),
]


@pytest.mark.parametrize("model,what,body,reason", MALFORMED, ids=[f"{x[0]}-{x[1]}" for x in MALFORMED])
def test_malformed_tfs_is_400_with_reason(client, model, what, body, reason):
    r = client.request("POST", f"/v1/models/{model}:predict", json=body)
    assert r.status_code == 400, (what, r.status_code, r.text)
    assert reason in r.json()["error"], r.json()["error"]


def v2_input(**kw):
    return {"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4], **kw}


CAT = {"name": "category", "shape": [1], "datatype": "INT64", "data": [1]}
MALFORMED_V2 = [
    (
        "wrong datatype",
        {"inputs": [v2_input(datatype="FP64"), CAT]},
        "input 'features': datatype 'FP64' does not match the signature's FP32",
    ),
    ("data does not fill shape", {"inputs": [v2_input(shape=[2, 4]), CAT]}, "input 'features': 4 data elements do not fill shape [2, 4]"),
    ("fixed dim", {"inputs": [v2_input(shape=[2, 2]), CAT]}, "input 'features': expected float32 with shape [-1, 4], got shape [2, 2]"),
    ("unknown input", {"inputs": [v2_input(name="nope"), CAT]}, "has no input 'nope'"),
    ("missing input", {"inputs": [v2_input()]}, "missing inputs ['category']"),
    ("unknown output", {"inputs": [v2_input(), CAT], "outputs": [{"name": "nope"}]}, "unknown output 'nope'"),
    ("unknown signature", {"inputs": [v2_input(), CAT], "parameters": {"signature_name": "x"}}, "unknown signature_name 'x'"),
    ("no inputs", {"inputs": []}, '"inputs": [{"name", "shape", "datatype", "data"}'),
    ("bad shape", {"inputs": [v2_input(shape="1x4"), CAT]}, "shape must be a list"),
]


@pytest.mark.parametrize("what,body,reason", MALFORMED_V2, ids=[x[0] for x in MALFORMED_V2])
def test_malformed_v2_is_400_with_reason(client, what, body, reason):
    r = client.request("POST", "/v2/models/tabular/infer", json=body)
    assert r.status_code == 400, (what, r.status_code, r.text)
    assert reason in r.json()["error"], r.json()["error"]


# ---- two models, one process: batching never mixes them ----


def test_concurrent_requests_batch_per_model_without_mixing(client, reference):
    want_img = reference("cnn", **{input_name(client, "cnn"): IMAGES[:1]})[output_name(client, "cnn")]
    want_tab = reference("tabular", features=FEATURES[:1], category=CATEGORY[:1])
    reg = client.server.registry
    before = {k: reg.get_sample_value(m.BATCH_SIZE + "_sum", {"model": k}) or 0 for k in ("cnn", "tabular")}
    calls_before = {k: reg.get_sample_value(m.BATCH_SIZE + "_count", {"model": k}) or 0 for k in ("cnn", "tabular")}

    async def burst():
        img = {"instances": IMAGES[:1].tolist()}
        tab = {"instances": [{"features": FEATURES[0].tolist(), "category": int(CATEGORY[0])}]}
        reqs = [client.http.post("/v1/models/cnn:predict", json=img) for _ in range(24)]
        reqs += [client.http.post("/v1/models/tabular:predict", json=tab) for _ in range(24)]
        return await asyncio.gather(*reqs)

    rs = client.call(burst())
    assert all(r.status_code == 200 for r in rs)
    for r in rs[:24]:
        close(r.json()["predictions"], want_img)
    for r in rs[24:]:
        close(r.json()["predictions"][0]["score"], want_tab["score"])
    for k in ("cnn", "tabular"):
        assert reg.get_sample_value(m.BATCH_SIZE + "_sum", {"model": k}) - before[k] == 24
        assert reg.get_sample_value(m.BATCH_SIZE + "_count", {"model": k}) - calls_before[k] < 24  # merged
        assert reg.get_sample_value(m.REQUESTS, {"model": k, "route": "predict", "code": "200", "traffic": "user"}) >= 24


# ---- the binary tensor data extension (Open Inference Protocol, as Triton and KServe clients send it) ----


def binary_request(header: dict, *tensors: bytes, outputs=None) -> tuple[bytes, dict]:
    head = orjson.dumps({**header, **({"outputs": outputs} if outputs else {})})
    return head + b"".join(tensors), {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}


def split_binary(r: httpx.Response) -> tuple[dict, dict[str, bytes]]:
    import json

    n = int(r.headers["inference-header-content-length"])
    doc, raw, out, pos = json.loads(r.content[:n]), r.content[n:], {}, 0
    for o in doc["outputs"]:
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            out[o["name"]] = raw[pos : pos + size]
            pos += size
    assert pos == len(raw)
    return doc, out


def bytes_elements(arr) -> bytes:
    return b"".join(len(x).to_bytes(4, "little") + x for x in arr)


def test_binary_inputs_and_outputs_equal_the_json_path(client, reference):
    want = reference("tabular", features=FEATURES, category=CATEGORY)
    header = {
        "inputs": [
            {"name": "features", "shape": [3, 4], "datatype": "FP32", "parameters": {"binary_data_size": FEATURES.nbytes}},
            {"name": "category", "shape": [3], "datatype": "INT64", "parameters": {"binary_data_size": CATEGORY.nbytes}},
        ]
    }
    body, headers = binary_request(
        header,
        FEATURES.astype("<f4").tobytes(),
        CATEGORY.astype("<i8").tobytes(),
        outputs=[{"name": "probabilities", "parameters": {"binary_data": True}}, {"name": "score"}],
    )
    r = client.request("POST", "/v2/models/tabular/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    doc, raw = split_binary(r)
    outs = {o["name"]: o for o in doc["outputs"]}
    probs = np.frombuffer(raw["probabilities"], "<f4").reshape(outs["probabilities"]["shape"])
    close(probs, want["probabilities"])
    close(outs["score"]["data"], want["score"])  # not asked as binary: JSON
    as_json = client.request(
        "POST",
        "/v2/models/tabular/infer",
        json={
            "inputs": [
                {"name": "features", "shape": [3, 4], "datatype": "FP32", "data": FEATURES.reshape(-1).tolist()},
                {"name": "category", "shape": [3], "datatype": "INT64", "data": CATEGORY.tolist()},
            ]
        },
    ).json()
    json_probs = np.array(next(o for o in as_json["outputs"] if o["name"] == "probabilities")["data"], dtype=np.float32).reshape(3, 3)
    np.testing.assert_array_equal(probs, json_probs)  # same float32 values, bit for bit


def test_binary_strings_and_all_outputs_binary(client, reference):
    want = reference("text", text=np.array(TEXT, dtype=object))
    body, headers = binary_request(
        {
            "inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "parameters": {"binary_data_size": len(bytes_elements(TEXT))}}],
            "parameters": {"binary_data_output": True},
        },
        bytes_elements(TEXT),
    )
    r = client.request("POST", "/v2/models/text/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    _, raw = split_binary(r)
    close(np.frombuffer(raw["probs"], "<f4").reshape(3, 2), want["probs"])
    assert np.frombuffer(raw["tokens"], "<i8").tolist() == want["tokens"].tolist()
    assert raw["upper_bytes"] == bytes_elements(want["upper_bytes"])


def test_mnist_binary_equals_json(client):
    name = input_name(client, "mnist")
    body, headers = binary_request(
        {"inputs": [{"name": name, "shape": list(IMAGES.shape), "datatype": "FP32", "parameters": {"binary_data_size": IMAGES.nbytes}}]},
        IMAGES.tobytes(),
    )
    binary = client.request("POST", "/v2/models/mnist/infer", content=body, headers=headers)
    as_json = client.request("POST", "/v1/models/mnist:predict", json={"instances": IMAGES.tolist()})
    assert binary.status_code == 200, binary.text
    np.testing.assert_array_equal(
        np.array(binary.json()["outputs"][0]["data"], np.float32).reshape(3, 10), np.array(as_json.json()["predictions"], np.float32)
    )


FEAT = {"name": "features", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}
CAT_B = {"name": "category", "shape": [1], "datatype": "INT64", "parameters": {"binary_data_size": 8}}
F16, C8 = np.ones(4, "<f4").tobytes(), np.ones(1, "<i8").tobytes()
MALFORMED_BINARY = [
    ("header longer than body", lambda: (b'{"inputs": []}', {"Inference-Header-Content-Length": "999"}), "outside the body"),
    ("not an integer", lambda: (b"{}", {"Inference-Header-Content-Length": "x"}), "must be an integer"),
    ("size past the end", lambda: binary_request({"inputs": [FEAT, CAT_B]}, F16, C8[:4]), "does not fit"),
    ("trailing bytes", lambda: binary_request({"inputs": [FEAT, CAT_B]}, F16, C8, b"xx"), "2 bytes after the JSON header"),
    (
        "size does not fill shape",
        lambda: binary_request({"inputs": [{**FEAT, "parameters": {"binary_data_size": 12}}, CAT_B]}, F16[:12], C8),
        "12 binary bytes do not fill shape [1, 4]",
    ),
    (
        "binary without the header",
        lambda: (orjson.dumps({"inputs": [FEAT, CAT_B]}), {}),
        "without an Inference-Header-Content-Length",
    ),
]


@pytest.mark.parametrize("what,make,reason", MALFORMED_BINARY, ids=[x[0] for x in MALFORMED_BINARY])
def test_malformed_binary_is_400_with_reason(client, what, make, reason):
    body, headers = make()
    r = client.request("POST", "/v2/models/tabular/infer", content=body, headers=headers)
    assert r.status_code == 400, (what, r.status_code, r.text)
    assert reason in r.json()["error"], r.json()["error"]
