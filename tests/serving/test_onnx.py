"""ONNX models in the same server (issue 28 item 1), on real graphs made here (tests/serving/onnx_models.py):
the signature read from the graph, every protocol form compared value by value with ONNX Runtime called
in process, the malformed-request cases, batching along the dynamic batch dimension and none without
it, hot swap with the compatibility check (a SavedModel replaced by an ONNX version included), the
manifest check, processes per pod and drain."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import urllib.request
from pathlib import Path

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from serving import metrics as m
from serving import model as model_lib
from serving import runtime_onnx
from serving.app import ModelServer, ServerSettings
from tests.serving import onnx_models as om
from tests.serving.conftest import ServerProcess, run
from tests.serving.test_models import Client, binary_request, bytes_elements, split_binary
from training import registry

RNG = np.random.default_rng(5)
IMAGES = RNG.random((3, 28, 28, 1), dtype=np.float32).round(3)
TAB = {
    "age": np.array([[25.0], [61.5], [44.0]], np.float32),
    "income": np.array([[0.2], [0.9], [0.5]], np.float32),
    "city": np.array([["paris"], ["oslo"], ["rome"]], dtype=object),
    "rooms": np.array([[1], [4], [2]], np.int64),
}


@pytest.fixture(scope="module")
def graphs() -> dict[str, bytes]:
    return {"cnn": om.torch_cnn_bytes(), "tabular": om.sklearn_pipeline_bytes(), "fixed": om.torch_fixed_bytes()}


@pytest.fixture(scope="module")
def onnx_store(tmp_path_factory, graphs) -> Path:
    """A registry store with the three ONNX models, each published as training publishes."""
    base = tmp_path_factory.mktemp("onnx")
    root = base / "store"
    for name, graph in graphs.items():
        registry.publish(om.version_dir(base / f"build-{name}", graph), f"file://{root}", name, "v1", reason="test")
    return root


@pytest.fixture(scope="module")
def client(onnx_store):
    c = Client({name: f"file://{onnx_store}" for name in ("cnn", "tabular", "fixed")})
    yield c
    c.close()


def close(got, want):
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64), rtol=1e-6, atol=1e-7)


def test_the_publisher_records_the_format_and_the_manifest_covers_the_graph(onnx_store, graphs):
    vdir = onnx_store / "models" / "cnn" / "v1"
    assert json.loads((vdir / "metadata.json").read_text())["format"] == "onnx"
    manifest = json.loads((vdir / registry.MANIFEST).read_text())
    assert set(manifest["files"]) == {"metadata.json", "model.onnx"}
    registry.verify(f"file://{onnx_store}", "cnn", "v1")


def test_the_signature_is_read_from_the_graph(client):
    cnn = client.request("GET", "/v2/models/cnn").json()
    assert cnn == {
        "name": "cnn",
        "versions": ["v1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, 28, 28, 1]}],
        "outputs": [{"name": "output_0", "datatype": "FP32", "shape": [-1, 10]}],
        "parameters": {"format": "onnx", "max_batch_size": 64},
    }
    tab = client.request("GET", "/v2/models/tabular").json()
    assert [(t["name"], t["datatype"], t["shape"]) for t in tab["inputs"]] == [
        ("age", "FP32", [-1, 1]),
        ("income", "FP32", [-1, 1]),
        ("city", "BYTES", [-1, 1]),
        ("rooms", "INT64", [-1, 1]),
    ]
    assert [(t["name"], t["datatype"], t["shape"]) for t in tab["outputs"]] == [
        ("label", "INT64", [-1]),
        ("probabilities", "FP32", [-1, 2]),
    ]
    fixed = client.request("GET", "/v2/models/fixed").json()
    assert fixed["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [1, 4]}]
    assert fixed["parameters"] == {"format": "onnx", "max_batch_size": 0}  # no dynamic batch dimension: unbatched
    v1 = client.request("GET", "/v1/models/tabular/metadata").json()["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert {k: t["dtype"] for k, t in v1["inputs"].items()} == {
        "age": "DT_FLOAT",
        "income": "DT_FLOAT",
        "city": "DT_STRING",
        "rooms": "DT_INT64",
    }


def test_the_cnn_answers_every_protocol_form_as_onnx_runtime_does(client, graphs):
    want = om.reference(graphs["cnn"], {"images": IMAGES})["output_0"]
    rows = client.request("POST", "/v1/models/cnn:predict", json={"instances": IMAGES.tolist()}).json()
    close(rows["predictions"], want)
    named = client.request("POST", "/v1/models/cnn:predict", json={"instances": [{"images": x} for x in IMAGES.tolist()]}).json()
    close(named["predictions"], want)
    columns = client.request("POST", "/v1/models/cnn:predict", json={"inputs": {"images": IMAGES.tolist()}}).json()
    close(columns["outputs"], want)
    v2 = client.request(
        "POST",
        "/v2/models/cnn/infer",
        json={"inputs": [{"name": "images", "shape": [3, 28, 28, 1], "datatype": "FP32", "data": IMAGES.ravel().tolist()}]},
    ).json()
    assert v2["model_version"] == "v1" and v2["outputs"][0]["shape"] == [3, 10]
    close(np.reshape(v2["outputs"][0]["data"], (3, 10)), want)
    body, headers = binary_request(
        {"inputs": [{"name": "images", "shape": [3, 28, 28, 1], "datatype": "FP32", "parameters": {"binary_data_size": IMAGES.nbytes}}]},
        IMAGES.astype("<f4").tobytes(),
        outputs=[{"name": "output_0", "parameters": {"binary_data": True}}],
    )
    r = client.request("POST", "/v2/models/cnn/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    _, raw = split_binary(r)
    np.testing.assert_array_equal(np.frombuffer(raw["output_0"], "<f4").reshape(3, 10), want)  # bit for bit


def test_the_scikit_learn_pipeline_answers_every_protocol_form_as_onnx_runtime_does(client, graphs):
    want = om.reference(graphs["tabular"], TAB)
    instances = [{k: v[i].tolist() for k, v in TAB.items()} for i in range(3)]
    rows = client.request("POST", "/v1/models/tabular:predict", json={"instances": instances})
    assert rows.status_code == 200, rows.text
    preds = rows.json()["predictions"]
    assert [p["label"] for p in preds] == want["label"].tolist()
    close([p["probabilities"] for p in preds], want["probabilities"])
    columns = client.request("POST", "/v1/models/tabular:predict", json={"inputs": {k: v.tolist() for k, v in TAB.items()}}).json()
    assert columns["outputs"]["label"] == want["label"].tolist()
    close(columns["outputs"]["probabilities"], want["probabilities"])
    datatypes = {"age": "FP32", "income": "FP32", "city": "BYTES", "rooms": "INT64"}
    v2 = client.request(
        "POST",
        "/v2/models/tabular/infer",
        json={"inputs": [{"name": k, "shape": [3, 1], "datatype": datatypes[k], "data": v.ravel().tolist()} for k, v in TAB.items()]},
    ).json()
    outs = {o["name"]: o for o in v2["outputs"]}
    assert outs["label"]["datatype"] == "INT64" and outs["label"]["data"] == want["label"].tolist()
    close(np.reshape(outs["probabilities"]["data"], (3, 2)), want["probabilities"])
    cities = [c.encode() for c in TAB["city"].ravel()]
    raws = {
        "age": TAB["age"].astype("<f4").tobytes(),
        "income": TAB["income"].astype("<f4").tobytes(),
        "city": bytes_elements(cities),
        "rooms": TAB["rooms"].astype("<i8").tobytes(),
    }
    header = {
        "inputs": [{"name": k, "shape": [3, 1], "datatype": datatypes[k], "parameters": {"binary_data_size": len(raws[k])}} for k in TAB],
        "parameters": {"binary_data_output": True},
    }
    r = client.request(
        "POST", "/v2/models/tabular/infer", content=binary_request(header, *raws.values())[0], headers=binary_request(header)[1]
    )
    assert r.status_code == 200, r.text
    _, raw = split_binary(r)
    assert np.frombuffer(raw["label"], "<i8").tolist() == want["label"].tolist()
    np.testing.assert_array_equal(np.frombuffer(raw["probabilities"], "<f4").reshape(3, 2), want["probabilities"])


def test_a_fixed_batch_model_takes_its_one_row(client, graphs):
    x = np.array([[0.5, -1.0, 2.0, 0.25]], np.float32)
    want = om.reference(graphs["fixed"], {"x": x})["y"]
    close(client.request("POST", "/v1/models/fixed:predict", json={"instances": x.tolist()}).json()["predictions"], want)
    v2 = client.request(
        "POST", "/v2/models/fixed/infer", json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": x.ravel().tolist()}]}
    )
    close(np.reshape(v2.json()["outputs"][0]["data"], (1, 3)), want)


ROW = {"age": [30.0], "income": [0.5], "city": ["oslo"], "rooms": [2]}
MALFORMED = [
    ("cnn", "v1", {"instances": [np.zeros((28, 28)).tolist()]}, "got shape [1, 28, 28] (add the trailing dimension"),
    ("cnn", "v1", {"instances": [[[["a"]] * 28] * 28]}, "expected float32 numbers, got strings"),
    ("cnn", "v1", {"instances": [np.zeros((28, 28, 1)).tolist()] * 65}, "65 instances exceed the limit of 64"),
    ("cnn", "v1", {"instances": [np.zeros((28, 27, 1)).tolist()]}, "(dimension 2 must be 28)"),
    ("cnn", "v1", {"instances": [np.zeros((28, 28, 1)).tolist(), np.zeros((28, 20, 1)).tolist()]}, "ragged"),
    ("tabular", "v1", {"instances": [{**ROW, "rooms": [2.5]}]}, "input 'rooms': expected int64 integers, got floats"),
    ("tabular", "v1", {"instances": [{k: v for k, v in ROW.items() if k != "rooms"}]}, "missing inputs ['rooms']"),
    ("tabular", "v1", {"instances": [{**ROW, "city": [7]}]}, "input 'city': expected strings"),
    ("tabular", "v1", {"instances": [{**ROW, "zip": [1]}]}, "unknown inputs ['zip']"),
    ("fixed", "v1", {"instances": [[0.0] * 4, [1.0] * 4]}, "(dimension 0 must be 1)"),
    (
        "cnn",
        "v2",
        {"inputs": [{"name": "images", "shape": [1, 28, 28, 1], "datatype": "FP64", "data": [0.0] * 784}]},
        "does not match the signature's FP32",
    ),
    (
        "cnn",
        "v2",
        {"inputs": [{"name": "images", "shape": [1, 28, 28, 1], "datatype": "FP32", "data": [0.0] * 783}]},
        "783 data elements do not fill",
    ),
    (
        "cnn",
        "v2",
        {"inputs": [{"name": "images", "shape": [1, 28, 28, 1], "datatype": "FP32", "data": [0.0] * 784}], "outputs": [{"name": "nope"}]},
        "unknown output 'nope'",
    ),
    ("tabular", "v2", {"inputs": [{"name": "age", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}, "missing inputs"),
]


@pytest.mark.parametrize("model,api,body,reason", MALFORMED, ids=[f"{m_}-{a}-{r[:30]}" for m_, a, _, r in MALFORMED])
def test_malformed_requests_are_400_with_the_reason(client, model, api, body, reason):
    path = f"/v1/models/{model}:predict" if api == "v1" else f"/v2/models/{model}/infer"
    r = client.request("POST", path, content=orjson.dumps(body))
    assert r.status_code == 400, (r.status_code, r.text)
    assert reason in r.json()["error"], r.json()["error"]


def test_malformed_binary_tensor_is_400(client):
    body, headers = binary_request(
        {"inputs": [{"name": "images", "shape": [1, 28, 28, 1], "datatype": "FP32", "parameters": {"binary_data_size": 12}}]}, b"\0" * 12
    )
    r = client.request("POST", "/v2/models/cnn/infer", content=body, headers=headers)
    assert r.status_code == 400 and "12 binary bytes do not fill shape [1, 28, 28, 1]" in r.json()["error"]


def test_requests_batch_along_the_dynamic_dimension_and_never_without_one(client, graphs):
    reg = client.server.registry

    def calls(model):
        return reg.get_sample_value(m.BATCH_SIZE + "_count", {"model": model}) or 0

    before = {k: calls(k) for k in ("cnn", "fixed")}
    x = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)

    async def burst():
        cnn = [client.http.post("/v1/models/cnn:predict", json={"instances": IMAGES[i % 3 : i % 3 + 1].tolist()}) for i in range(24)]
        fixed = [client.http.post("/v1/models/fixed:predict", json={"instances": x.tolist()}) for _ in range(24)]
        return await asyncio.gather(*cnn, *fixed)

    rs = client.call(burst())
    assert all(r.status_code == 200 for r in rs), {r.status_code for r in rs}
    want = om.reference(graphs["cnn"], {"images": IMAGES})["output_0"]
    for i, r in enumerate(rs[:24]):
        close(r.json()["predictions"], want[i % 3 : i % 3 + 1])  # each answer its own row, merged or not
    close(rs[24].json()["predictions"], om.reference(graphs["fixed"], {"x": x})["y"])
    assert calls("cnn") - before["cnn"] < 24  # merged into fewer calls of ONNX Runtime
    assert calls("fixed") - before["fixed"] == 24  # one call per request: the graph has no batch dimension
    assert reg.get_sample_value(m.MODEL_INFO, {"model": "cnn", "version": "v1"}) == 1
    assert reg.get_sample_value(m.REQUESTS, {"model": "fixed", "route": "predict", "code": "200", "traffic": "user"}) >= 24


def _savedmodel_dir(path: Path) -> Path:
    """A TensorFlow SavedModel with the MNIST contract as its only signature (Keras' export adds a
    second, ``serve``, which an ONNX graph does not have: a swap would break that signature's clients)."""
    import tensorflow as tf

    class Dense(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.random.stateless_normal((784, 10), seed=(1, 2)))

        @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32, name="images")])
        def serve(self, images):
            return {"output_0": tf.nn.softmax(tf.reshape(images, (-1, 784)) @ self.w)}

    module = Dense()
    tf.saved_model.save(module, str(path / "saved_model"), signatures={"serving_default": module.serve})
    (path / "model.keras").write_bytes(b"")  # the savedmodel format's files (training/registry.py FORMATS)
    (path / "metadata.json").write_text(json.dumps({"version": "v1"}))
    return path


def test_hot_swap_from_a_savedmodel_to_onnx_and_an_incompatible_graph_is_refused(tmp_path):
    root = tmp_path / "store"
    uri = f"file://{root}"
    registry.publish(_savedmodel_dir(tmp_path / "tf"), uri, "mnist", "v1", reason="test")
    onnx2, onnx3 = om.torch_cnn_bytes(seed=2), om.torch_cnn_bytes(seed=3, classes=3)
    s = ModelServer(ServerSettings(models={"mnist": uri}, poll_seconds=0, parse_workers=0), CollectorRegistry())
    served = s.models["mnist"]

    async def go():
        assert await served.refresh() and served.model.format == "savedmodel"
        registry.publish(om.version_dir(tmp_path / "o2", onnx2), uri, "mnist", "v2", reason="test")
        assert await served.refresh()  # the same signature (images [-1,28,28,1] -> output_0 [-1,10]): swapped
        got = served.model.format, served.model.version, served.model(IMAGES)
        registry.publish(om.version_dir(tmp_path / "o3", onnx3), uri, "mnist", "v3", reason="test")
        refused = await served.refresh()
        return got, refused

    (fmt, version, y), refused = run(go())
    assert (fmt, version) == ("onnx", "v2")
    np.testing.assert_array_equal(y, om.reference(onnx2, {"images": IMAGES})["output_0"])
    assert refused is False and served.model.version == "v2" and served.refused == {"v3": "incompatible"}
    assert s.registry.get_sample_value(m.MODEL_LOAD_FAILURES, {"model": "mnist", "reason": "incompatible"}) == 1


def test_a_changed_graph_fails_its_manifest_digest(tmp_path, graphs):
    uri = f"file://{tmp_path}/store"
    registry.publish(om.version_dir(tmp_path / "b", graphs["fixed"]), uri, "fixed", "v1", reason="test")
    graph = tmp_path / "store/models/fixed/v1/model.onnx"
    graph.write_bytes(graph.read_bytes()[:-1] + b"\0")
    with pytest.raises(model_lib.ModelLoadError, match="model.onnx does not match its manifest digest") as exc:
        model_lib.load("v1", f"{uri}/models/fixed/v1")
    assert exc.value.reason == "digest"


def test_session_threads_times_processes_is_the_cpu_limit():
    from serving.workers import cpu_limit

    try:
        runtime_onnx.configure(workers=2)
        assert runtime_onnx.session_options().intra_op_num_threads == max(1, cpu_limit() // 2)
        runtime_onnx.configure(workers=1, threads=3)  # --onnx-threads overrides
        assert runtime_onnx.session_options().intra_op_num_threads == 3
    finally:
        runtime_onnx.configure(workers=1)
    assert runtime_onnx.providers()[-1] == "CPUExecutionProvider"  # the fallback for every node CUDA does not run


def test_an_onnx_model_loads_without_tensorflow(onnx_store):
    import subprocess

    code = (
        "import sys; from serving import model; m = model.load('v1', sys.argv[1]); "
        "assert m.format == 'onnx' and 'tensorflow' not in sys.modules, sorted(k for k in sys.modules if 'tensorflow' in k)[:3]"
    )
    subprocess.run(
        [sys.executable, "-c", code, f"{onnx_store}/models/cnn/v1"], cwd=Path(__file__).resolve().parents[2], check=True, timeout=120
    )


def test_two_processes_serve_an_onnx_model_and_drain(onnx_store):
    s = ServerProcess("", "--store", f"file://{onnx_store}", "--model", "cnn", "--workers", "2", "--drain-seconds", "2")
    try:
        s.wait_ready()
        body = json.dumps({"instances": IMAGES[:1].tolist()}).encode()
        req = urllib.request.Request(f"{s.url}/v1/models/cnn:predict", data=body)
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - loopback
            assert r.status == 200 and len(json.loads(r.read())["predictions"][0]) == 10
        s.proc.send_signal(signal.SIGTERM)
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - loopback: still served while draining
            assert r.status == 200
        assert s.proc.wait(60) == 0
    finally:
        s.stop()
