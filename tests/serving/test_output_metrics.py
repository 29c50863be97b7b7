"""The model-quality signal: the server counts what each served version predicts (issue 15 item 4)."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry

from serving import metrics as m
from tests.serving.conftest import run
from tests.serving.test_api import IMAGE, with_client


def fresh() -> tuple[m.ServingMetrics, CollectorRegistry]:
    reg = CollectorRegistry()
    return m.ServingMetrics(reg, 64, ["mnist"]), reg


def counts(reg: CollectorRegistry, model: str, version: str) -> dict[str, float]:
    out = {}
    for fam in reg.collect():
        if fam.name + "_total" == m.PREDICTED_CLASS:
            for s in fam.samples:
                if s.name == m.PREDICTED_CLASS and s.labels["model"] == model and s.labels["version"] == version:
                    out[s.labels["class"]] = s.value
    return out


def test_predict_counts_each_instance_by_its_argmax_under_the_served_version(store):
    rng = np.random.default_rng(0)
    images = np.clip(IMAGE[None] * rng.uniform(0, 2, (16, 1, 1, 1)) + rng.normal(0, 0.3, (16, 28, 28, 1)), 0, 1).astype(np.float32)

    async def fn(client, server):
        r1 = await client.post("/v1/models/mnist:predict", json={"instances": images[:10].tolist()})
        r2 = await client.post(
            "/v2/models/mnist/infer",
            json={"inputs": [{"name": "images", "shape": [6, 28, 28, 1], "datatype": "FP32", "data": images[10:].ravel().tolist()}]},
        )
        return r1, r2, server

    r1, r2, server = run(with_client(store, fn))
    assert r1.status_code == 200 and r2.status_code == 200, (r1.text, r2.text)
    expected: dict[str, float] = {}
    for c in server.model(images).argmax(axis=1).tolist():
        expected[str(c)] = expected.get(str(c), 0) + 1
    assert counts(server.registry, "mnist", "v1") == expected
    assert sum(expected.values()) == 16


def test_a_refused_request_counts_nothing(store):
    async def fn(client, server):
        return await client.post("/v1/models/mnist:predict", json={"instances": [[1, 2, 3]]}), server

    r, server = run(with_client(store, fn))
    assert r.status_code == 400
    assert counts(server.registry, "mnist", "v1") == {}


def test_class_labels_are_bounded():
    metrics, reg = fresh()
    scores = np.zeros((5, 100), np.float32)
    for row, c in enumerate([0, 30, 31, 99, 30]):
        scores[row, c] = 1
    metrics.observe_outputs("mnist", "v1", {"scores": scores})
    assert counts(reg, "mnist", "v1") == {"0": 1, "30": 2, m.OTHER_CLASS: 2}
    # Integer class ids (a model that answers the class itself); a negative id is not a class.
    metrics.observe_outputs("mnist", "v1", {"ids": np.array([2, 2, -1, 500], np.int64)})
    assert counts(reg, "mnist", "v1") == {"0": 1, "2": 2, "30": 2, m.OTHER_CLASS: 4}


def test_the_first_output_by_name_decides_and_regression_outputs_go_to_the_histogram():
    assert m.output_kind({"score": np.zeros(3), "probabilities": np.zeros((3, 4), np.float32)}) == ("probabilities", "class")
    assert m.output_kind({"y": np.zeros((3, 1), np.float32)}) == ("y", "value")
    assert m.output_kind({"text": np.array([b"a"], dtype=object)}) is None
    metrics, reg = fresh()
    metrics.observe_outputs("diabetes", "v3", {"y": np.array([[150.0], [-0.05], [2000.0], [np.nan]], np.float32)})
    buckets = {
        s.labels["le"]: s.value
        for fam in reg.collect()
        for s in fam.samples
        if s.name == m.OUTPUT_VALUE + "_bucket" and s.labels["version"] == "v3"
    }
    assert buckets["-0.1"] == 0 and buckets["0.0"] == 1 and buckets["250.0"] == 2 and buckets["1000.0"] == 2 and buckets["+Inf"] == 3
    assert counts(reg, "diabetes", "v3") == {}


def test_a_replaced_version_leaves_no_series():
    metrics, reg = fresh()
    metrics.observe_outputs("mnist", "v1", {"p": np.eye(3, dtype=np.float32)})
    metrics.observe_outputs("mnist", "v2", {"p": np.eye(3, dtype=np.float32)})
    metrics.observe_outputs("fashion", "v1", {"p": np.eye(3, dtype=np.float32)})
    metrics.forget_version("mnist", "v1")
    assert counts(reg, "mnist", "v1") == {}
    assert counts(reg, "mnist", "v2") == {"0": 1, "1": 1, "2": 1}
    assert counts(reg, "fashion", "v1") == {"0": 1, "1": 1, "2": 1}
    metrics.forget_version("mnist", "v9")  # never served: nothing to drop, no error
