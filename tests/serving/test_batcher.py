"""The per-model batcher with a stand-in model (timing and grouping rules; real models are in test_models.py)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from serving.batcher import Batcher
from serving.codec import SignatureSpec, TensorSpec
from serving.metrics import ServingMetrics
from tests.serving.conftest import run


class Sig:
    def __init__(self, spec, fn):
        self.spec, self.fn = spec, fn

    def __call__(self, inputs):
        return self.fn(inputs)


def model_with(delay_s: float = 0.0, fixed_batch: bool = False):
    """A stand-in model whose one signature sums each row; records the batch shapes it is called with."""
    calls = []
    batch = 1 if fixed_batch else None
    spec = SignatureSpec("serving_default", (TensorSpec("x", "float32", (batch, None)),), (TensorSpec("y", "float32", (batch,)),))

    def call(inputs):
        calls.append(inputs["x"].shape)
        time.sleep(delay_s)
        return {"y": inputs["x"].sum(axis=1)}

    return SimpleNamespace(version="v1", signatures={"serving_default": Sig(spec, call)}), calls


def batcher(model, **kw) -> Batcher:
    metrics = ServingMetrics(CollectorRegistry(), 64, ["m"])
    return Batcher(lambda: model, kw.get("max_batch", 64), kw.get("wait_s", 0.02), kw.get("queue", 1024), metrics, "m")


def test_timeout_answers_without_waiting_for_the_model_and_the_batch_still_completes():
    model, calls = model_with(delay_s=0.3)

    async def go():
        b = batcher(model)
        await b.start()
        start = time.perf_counter()
        with pytest.raises(TimeoutError):
            await b.submit("serving_default", {"x": np.ones((1, 3), np.float32)}, 1, timeout_s=0.05)
        waited = time.perf_counter() - start
        ok = await b.submit("serving_default", {"x": np.ones((2, 3), np.float32)}, 2, timeout_s=5)
        await b.stop()
        return waited, ok

    waited, (out, version) = run(go())
    assert waited < 0.25  # the client is answered at its deadline, not when the model returns
    assert version == "v1" and out["y"].tolist() == [3.0, 3.0]
    assert calls[0] == (1, 3)


def test_requests_merge_only_with_the_same_per_instance_shape():
    model, calls = model_with()

    async def go():
        b = batcher(model, wait_s=0.05)
        await b.start()
        xs = [np.ones((1, 3), np.float32), np.ones((2, 3), np.float32), np.ones((1, 5), np.float32), np.ones((1, 3), np.float32)]
        outs = await asyncio.gather(*[b.submit("serving_default", {"x": x}, len(x)) for x in xs])
        await b.stop()
        return outs

    outs = run(go())
    assert [o[0]["y"].tolist() for o in outs] == [[3.0], [3.0, 3.0], [5.0], [3.0]]
    assert sorted(calls) == [(1, 5), (4, 3)] or sorted(calls) == [(1, 3), (1, 5), (3, 3)], calls


def test_a_signature_without_a_batch_dimension_is_called_per_request():
    model, calls = model_with(fixed_batch=True)

    async def go():
        b = batcher(model, wait_s=0.05)
        await b.start()
        await asyncio.gather(*[b.submit("serving_default", {"x": np.ones((1, 3), np.float32)}, 1) for _ in range(4)])
        await b.stop()

    run(go())
    assert calls == [(1, 3)] * 4


def test_with_no_wait_a_request_already_received_joins_the_batch_after_one_turn_of_the_loop():
    """wait 0 (the default) batches what is queued, but first lets the event loop turn once: a request
    whose task was scheduled after the batcher woke still gets into this batch (without the turn, two
    model calls)."""
    model, calls = model_with()

    async def go():
        b = batcher(model, wait_s=0)
        await b.start()
        first = asyncio.ensure_future(b.submit("serving_default", {"x": np.ones((1, 3), np.float32)}, 1))
        await asyncio.sleep(0)  # first submits: the batcher is woken (scheduled after us)
        second = asyncio.ensure_future(b.submit("serving_default", {"x": np.ones((1, 3), np.float32)}, 1))  # after the batcher
        results = await asyncio.gather(first, second)
        await b.stop()
        return results

    results = run(go())
    assert calls == [(2, 3)]
    assert [r[0]["y"].tolist() for r in results] == [[3.0], [3.0]]


def test_with_no_wait_the_batcher_does_not_wait_for_requests_that_are_not_there():
    model, calls = model_with()

    async def go():
        b = batcher(model, wait_s=0)
        await b.start()
        start = time.perf_counter()
        await b.submit("serving_default", {"x": np.ones((1, 3), np.float32)}, 1)
        took = time.perf_counter() - start
        await b.stop()
        return took

    assert run(go()) < 0.015  # wait 0.02 would have held the lone request for 20 ms
    assert calls == [(1, 3)]


def test_the_class_mix_is_counted_once_per_batch_for_every_request_in_it():
    """The predicted-class counter (the canary's quality signal) counts per batch, all instances."""
    spec = SignatureSpec("serving_default", (TensorSpec("x", "float32", (None, 3)),), (TensorSpec("p", "float32", (None, 3)),))
    model = SimpleNamespace(version="v7", signatures={"serving_default": Sig(spec, lambda inputs: {"p": inputs["x"]})})
    registry = CollectorRegistry()
    b = Batcher(lambda: model, 64, 0.02, 1024, ServingMetrics(registry, 64, ["m"]), "m")

    async def go():
        await b.start()
        rows = [np.eye(3, dtype=np.float32)[[k]] for k in (0, 2, 2)]
        await asyncio.gather(*(b.submit("serving_default", {"x": r}, 1) for r in rows))
        await b.stop()

    run(go())
    count = lambda c: registry.get_sample_value("mlplatform_serving_predicted_class_total", {"model": "m", "version": "v7", "class": c})  # noqa: E731
    assert (count("0"), count("1"), count("2")) == (1.0, None, 2.0)


def test_the_class_mix_leaves_out_warm_up_requests_even_inside_a_shared_batch():
    """Found by the attack review: the canary's warm-up instances (noise built from the signature) made two
    good versions' class mixes differ (PSI 0.26 > 0.2, or 2.07 on a binary model): only user requests count,
    also when they share a batch with warm-up ones; a batch of warm-up alone counts nothing."""
    spec = SignatureSpec("serving_default", (TensorSpec("x", "float32", (None, 3)),), (TensorSpec("p", "float32", (None, 3)),))
    model = SimpleNamespace(version="v7", signatures={"serving_default": Sig(spec, lambda inputs: {"p": inputs["x"]})})
    registry = CollectorRegistry()
    b = Batcher(lambda: model, 64, 0.02, 1024, ServingMetrics(registry, 64, ["m"]), "m")
    eye = np.eye(3, dtype=np.float32)

    async def go():
        await b.start()
        # user: classes 0 and 2; warm-up: class 1 twice (one of them a 2-instance request)
        mixed = [(eye[[0]], False), (eye[[1, 1]], True), (eye[[2]], False)]
        answers = await asyncio.gather(*(b.submit("serving_default", {"x": r}, len(r), warmup=w) for r, w in mixed))
        await b.submit("serving_default", {"x": eye[[1]]}, 1, warmup=True)
        await b.stop()
        return answers

    answers = run(go())
    assert [a["p"].argmax(axis=1).tolist() for a, _ in answers] == [[0], [1, 1], [2]]  # every request answered
    count = lambda c: registry.get_sample_value("mlplatform_serving_predicted_class_total", {"model": "m", "version": "v7", "class": c})  # noqa: E731
    assert (count("0"), count("1"), count("2")) == (1.0, None, 1.0)


def test_fast_models_run_inline_when_asked_and_slow_ones_in_the_inference_thread():
    """inline_below_s (a process that is one of several in its pod): a model whose full batch was
    timed fast at load runs in the event loop's thread; a slower one, or one not timed, in the
    inference thread."""
    import threading

    def threads_used(batch_seconds: float) -> list[str]:
        spec = SignatureSpec("serving_default", (TensorSpec("x", "float32", (None, 3)),), (TensorSpec("y", "float32", (None,)),))
        seen = []

        def call(inputs):
            seen.append(threading.current_thread().name)
            return {"y": inputs["x"].sum(axis=1)}

        model = SimpleNamespace(version="v1", signatures={"serving_default": Sig(spec, call)}, max_batch_seconds=batch_seconds)
        b = Batcher(lambda: model, 64, 0.0, 1024, ServingMetrics(CollectorRegistry(), 64, ["m"]), "m", inline_below_s=0.005)

        async def go():
            await b.start()
            for _ in range(4):
                out, _ = await b.submit("serving_default", {"x": np.ones((1, 3), np.float32)}, 1)
                assert out["y"].tolist() == [3.0]
            await b.stop()

        run(go())
        return seen

    assert threads_used(0.001) == [threading.main_thread().name] * 4
    for slow in (0.02, float("inf")):
        assert all(t.startswith("inference-m") for t in threads_used(slow)), slow
