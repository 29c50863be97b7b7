"""API conformance, validation and metrics, against a tiny real Keras model, in process."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from serving import metrics as m
from serving.app import ModelServer, ServerSettings
from tests.serving.conftest import run

IMAGE = np.linspace(0, 1, 784, dtype=np.float32).reshape(28, 28, 1)  # the signature's rank: [-1, 28, 28, 1]


async def with_client(store, fn, **settings_kw):
    models = settings_kw.pop("models", None) or {"mnist": str(store)}
    settings_kw.setdefault("parse_workers", 0)
    server = ModelServer(ServerSettings(models=models, poll_seconds=0, **settings_kw), registry=CollectorRegistry())
    await server.startup()
    try:
        for _ in range(1200):
            if server.ready:
                break
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=server), base_url="http://test") as client:
            return await fn(client, server)
    finally:
        await server.shutdown()


def call(store, method, path, **kw):
    async def fn(client, server):
        return await client.request(method, path, **kw), server

    return run(with_client(store, fn))


def test_model_status(store):
    r, _ = call(store, "GET", "/v1/models/mnist")
    assert r.status_code == 200
    assert r.json() == {
        "model_version_status": [{"version": "v1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]
    }


@pytest.mark.parametrize(
    "body",
    [
        {"instances": [IMAGE.tolist()]},
        {"inputs": [IMAGE.tolist()]},
        {"inputs": {"images": [IMAGE.tolist()]}},
    ],
    ids=["instances-28x28x1", "inputs-list", "inputs-named"],
)
def test_predict_formats(store, body):
    r, server = call(store, "POST", "/v1/models/mnist:predict", json=body)
    assert r.status_code == 200, r.text
    # TF-Serving answers the row format with "predictions", the columnar format with "outputs"
    preds = np.array(r.json()["predictions" if "instances" in body else "outputs"])
    assert preds.shape == (1, 10)
    expected = server.model(IMAGE[None])
    np.testing.assert_allclose(preds, expected, rtol=1e-5)
    assert abs(preds.sum() - 1) < 1e-4


def test_batch_request_keeps_order(store):
    images = np.stack([IMAGE, 1 - IMAGE, IMAGE * 0.5])

    async def fn(client, server):
        r = await client.post("/v1/models/mnist:predict", json={"instances": images.tolist()})
        return r, server.model(images)

    r, expected = run(with_client(store, fn))
    np.testing.assert_allclose(np.array(r.json()["predictions"]), expected, rtol=1e-5)


def test_concurrent_requests_are_batched(store):
    async def fn(client, server):
        rs = await asyncio.gather(*[client.post("/v1/models/mnist:predict", json={"instances": [IMAGE.tolist()]}) for _ in range(32)])
        return rs, server

    rs, server = run(with_client(store, fn, batch_timeout_ms=50))
    assert all(r.status_code == 200 for r in rs)
    reg = server.registry
    calls = reg.get_sample_value(m.BATCH_SIZE + "_count", {"model": "mnist"})
    assert reg.get_sample_value(m.BATCH_SIZE + "_sum", {"model": "mnist"}) == 32
    assert calls < 32  # merged into fewer model calls than requests


def test_health_and_readiness(store):
    async def fn(client, server):
        ok = (await client.get("/healthz")).status_code, (await client.get("/readyz")).status_code
        server.draining = True
        return ok, (await client.get("/readyz")).status_code

    (health, ready), draining = run(with_client(store, fn))
    assert (health, ready, draining) == (200, 200, 503)


def test_metrics_exact(store):
    async def fn(client, server):
        await client.post("/v1/models/mnist:predict", json={"instances": [IMAGE.tolist(), IMAGE.tolist()]})
        await client.post("/v1/models/mnist:predict", json={"instances": "nope"})
        await client.get("/v1/models/mnist")
        await client.post("/v1/models/other:predict", json={"instances": [1]})
        on_api_port = await client.get("/metrics")
        return server.registry, on_api_port

    reg, on_api_port = run(with_client(store, fn))
    mnist, user = {"model": "mnist"}, {"traffic": "user"}
    assert reg.get_sample_value(m.REQUESTS, {**mnist, "route": "predict", "code": "200", **user}) == 1
    assert reg.get_sample_value(m.REQUESTS, {**mnist, "route": "predict", "code": "400", **user}) == 1
    assert reg.get_sample_value(m.REQUESTS, {**mnist, "route": "status", "code": "200", **user}) == 1
    # a request for a model this server does not serve is counted without inventing a label value
    assert reg.get_sample_value(m.REQUESTS, {"model": "", "route": "predict", "code": "404", **user}) == 1
    assert reg.get_sample_value(m.REQUEST_SECONDS + "_count", {**mnist, **user}) == 2
    assert reg.get_sample_value(m.BATCH_SIZE + "_sum", mnist) == 2
    assert reg.get_sample_value(m.INFERENCE_SECONDS + "_count", mnist) >= 1
    assert reg.get_sample_value(m.QUEUE_DEPTH, mnist) == 0
    assert reg.get_sample_value(m.QUEUE_CAPACITY, mnist) == 1024
    assert reg.get_sample_value(m.MODEL_INFO, {"model": "mnist", "version": "v1"}) == 1
    assert reg.get_sample_value(m.MODEL_READY, mnist) == 1
    assert reg.get_sample_value(m.MODEL_LOAD_FAILURES, {**mnist, "reason": "load"}) == 0
    # /metrics lives on the metrics port only (issue 13 item 4): the API port answers 404
    assert on_api_port.status_code == 404 and "metrics port" in on_api_port.json()["error"]


BIG = [[[0.0] * 28] * 28] * 65
MALFORMED = [
    ("not json", b"{", "not valid JSON"),
    ("json array", b"[1,2]", "JSON object"),
    ("json string", b'"hi"', "JSON object"),
    ("no instances", b'{"foo": 1}', "unknown keys ['foo']"),
    ("both keys", orjson.dumps({"instances": [IMAGE.tolist()], "inputs": [IMAGE.tolist()]}), "exactly one of"),
    ("instances not a list", b'{"instances": "x"}', "non-empty list"),
    ("empty instances", b'{"instances": []}', "non-empty list"),
    ("scalar instance", b'{"instances": [1]}', "expected float32 with shape [-1, 28, 28, 1], got shape [1]"),
    ("wrong width", orjson.dumps({"instances": [[[[0.0]] * 27] * 28]}), "got shape [1, 28, 27, 1] (dimension 2 must be 28)"),
    # the rank is the signature's, as on /v2: a 28x28 image for a 28x28x1 input is refused, saying how
    ("28x28 without the channel", orjson.dumps({"instances": [[[0.0] * 28] * 28]}), "got shape [1, 28, 28] (add the trailing dimension"),
    ("3 channels", orjson.dumps({"instances": [[[[0.0] * 3] * 28] * 28]}), "(dimension 3 must be 1)"),
    ("ragged rows", orjson.dumps({"instances": [[[0.0] * 28] * 27 + [[0.0] * 5]]}), "ragged"),
    ("ragged batch", orjson.dumps({"instances": [IMAGE.tolist(), [[0.0] * 28] * 20]}), "ragged"),
    ("strings", orjson.dumps({"instances": [[["a"] * 28] * 28]}), "expected float32 numbers, got strings"),
    ("booleans", orjson.dumps({"instances": [[[True] * 28] * 28]}), "expected float32 numbers, got booleans"),
    ("nulls", orjson.dumps({"instances": [[[None] * 28] * 28]}), "expected float32 numbers"),
    ("too many instances", orjson.dumps({"instances": BIG}), "65 instances exceed the limit of 64"),
    ("inputs with two names", orjson.dumps({"inputs": {"a": [IMAGE.tolist()], "b": [IMAGE.tolist()]}}), "unknown inputs ['a', 'b']"),
    ("wrong input name", orjson.dumps({"inputs": {"wrong_name": [IMAGE.tolist()]}}), "unknown inputs ['wrong_name']"),
    ("wrong name in a row", orjson.dumps({"instances": [{"wrong_name": IMAGE.tolist()}]}), "unknown inputs ['wrong_name']"),
    ("unknown signature", orjson.dumps({"signature_name": "nope", "instances": [IMAGE.tolist()]}), "unknown signature_name 'nope'"),
    ("huge exponent", b'{"instances": [[[1e999]]]}', "not valid JSON"),
    ("float32 overflow", orjson.dumps({"instances": [[[1e300] * 28] * 28]}), "out of range for float32"),
]


@pytest.mark.parametrize("what,body,reason", MALFORMED, ids=[x[0] for x in MALFORMED])
def test_malformed_request_is_400_with_reason(store, what, body, reason):
    r, _ = call(store, "POST", "/v1/models/mnist:predict", content=body)
    assert r.status_code == 400, (what, r.status_code, r.text)
    assert reason in r.json()["error"]


def test_oversized_body_is_413(store):
    async def fn(client, server):
        return await client.post("/v1/models/mnist:predict", content=b" " * 2048)

    r = run(with_client(store, fn, max_body_bytes=1024))
    assert r.status_code == 413 and "exceeds the limit of 1024 bytes" in r.json()["error"]


@pytest.mark.parametrize(
    "method,path,code",
    [
        ("GET", "/v1/models/mnist:predict", 405),
        ("GET", "/v1/models/other", 404),
        ("POST", "/v1/models/other:predict", 404),
        ("GET", "/nope", 404),
    ],
)
def test_wrong_route(store, method, path, code):
    r, _ = call(store, method, path)
    assert r.status_code == code and "error" in r.json()


JSON = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**70), 2**70) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=30)
        | st.dictionaries(
            st.sampled_from(["instances", "inputs", "x", "signature_name", "name", "shape", "datatype", "data", "b64"]), inner, max_size=4
        )
    ),
    max_leaves=60,
)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(bodies=st.lists(st.one_of(JSON.map(lambda d: json.dumps(d).encode()), st.binary(max_size=300)), min_size=40, max_size=40))
def test_fuzzed_bodies_never_5xx(store, bodies):
    # 160 bodies, 40 per server start: loading a model costs more than the requests
    async def fn(client, server):
        return [await client.post(path, content=body) for body in bodies for path in ("/v1/models/mnist:predict", "/v2/models/mnist/infer")]

    for body, r in zip([b for b in bodies for _ in range(2)], run(with_client(store, fn)), strict=True):
        assert r.status_code < 500, (body[:200], r.status_code, r.text)


def test_warmup_traffic_is_counted_apart_and_the_label_stays_bounded(store):
    """Requests marked ``X-Mlplatform-Traffic: warmup`` (a canary's in-cluster traffic) count under
    traffic="warmup"; every other request, whatever its header says, under traffic="user"."""

    async def fn(client, server):
        body = {"instances": [IMAGE.tolist()]}
        await client.post("/v1/models/mnist:predict", json=body, headers={"X-Mlplatform-Traffic": "warmup"})
        await client.post("/v2/models/mnist/infer", json={"inputs": "nope"}, headers={"x-mlplatform-traffic": "WarmUp"})
        await client.get("/v1/models/mnist/metadata", headers={"X-Mlplatform-Traffic": "warmup"})
        await client.post("/v1/models/mnist:predict", json=body, headers={"X-Mlplatform-Traffic": "a-new-label-value"})
        await client.post("/v1/models/mnist:predict", json=body)
        return server.registry

    reg = run(with_client(store, fn))

    def requests(route, code, traffic):
        return reg.get_sample_value(m.REQUESTS, {"model": "mnist", "route": route, "code": code, "traffic": traffic})

    assert requests("predict", "200", "warmup") == 1 and requests("predict", "200", "user") == 2
    assert requests("predict", "400", "warmup") == 1 and requests("metadata", "200", "warmup") == 1
    assert reg.get_sample_value(m.REQUEST_SECONDS + "_count", {"model": "mnist", "traffic": "warmup"}) == 2
    assert reg.get_sample_value(m.REQUEST_SECONDS + "_count", {"model": "mnist", "traffic": "user"}) == 2
    values = {s.labels["traffic"] for metric in reg.collect() if metric.name == m.REQUESTS.removesuffix("_total") for s in metric.samples}
    assert values == {"user", "warmup"}


def test_model_from_s3(tmp_path, monkeypatch):
    from moto import mock_aws

    from tests.serving.conftest import make_model_dir
    from training import artifacts

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        import boto3

        boto3.client("s3").create_bucket(Bucket="models")
        artifacts.publish(make_model_dir(tmp_path / "v7", "v7"), "s3://models/root", "mnist", "v7")

        async def fn(client, server):
            return await client.post("/v1/models/mnist:predict", json={"instances": [IMAGE.tolist()]})

        r = run(with_client("s3://models/root", fn))
    assert r.status_code == 200 and r.json()["model_version"] == "v7"


def test_large_bodies_are_decoded_by_the_parse_worker_which_is_replaced_when_it_dies(store):
    import os
    import signal

    batch = {"instances": [IMAGE.tolist()] * 8}  # ~100 KB: above the 16 KiB offload threshold set here

    async def fn(client, server):
        first = await client.post("/v1/models/mnist:predict", json=batch)
        (pid,) = list(server._pool._processes)
        os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.2)
        died = await client.post("/v1/models/mnist:predict", json=batch)
        again = await client.post("/v1/models/mnist:predict", json=batch)
        bad = await client.post("/v1/models/mnist:predict", json={"instances": [[[[0.5]] * 27] * 28] * 8})
        return first, died, again, bad, pid, list(server._pool._processes)

    first, died, again, bad, pid, now = run(with_client(store, fn, parse_workers=1, offload_body_bytes=16 * 1024))
    assert first.status_code == 200 and len(first.json()["predictions"]) == 8
    assert died.status_code == 503 and "parse worker restarted" in died.json()["error"]
    assert again.status_code == 200 and now and pid not in now
    # validation errors cross the process boundary as 400s with their reason
    assert bad.status_code == 400 and "dimension 2 must be 28" in bad.json()["error"]
