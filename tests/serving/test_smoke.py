"""ops.smoke against the real server (a tiny random model: its accuracy is chance level)."""

from __future__ import annotations

import pytest

from ops import smoke


def test_smoke_passes_and_fails_on_accuracy(store, server_factory, small_mnist):
    s = server_factory(str(store))
    ok, message = smoke.smoke(f"{s.url}/v1/models/mnist", small_mnist, images=64, min_accuracy=0.0, wait_s=5)
    assert ok and message.startswith("version v1: accuracy") and "on 64 test images" in message
    assert message.endswith("binary tensor path agrees")
    ok, message = smoke.smoke(s.url, small_mnist, images=64, min_accuracy=0.99, wait_s=5)
    assert not ok and "(required 0.9900)" in message


@pytest.mark.slow  # a server start of its own; the keys themselves are tested in process (test_auth.py)
def test_smoke_with_api_key(store, server_factory, small_mnist, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("s3cret\n")
    s = server_factory(str(store), "--api-keys-file", str(keys))
    ok, message = smoke.smoke(s.url, small_mnist, images=32, min_accuracy=0.0, wait_s=5)
    assert not ok and "predict answered 401" in message and "missing API key" in message
    ok, message = smoke.smoke(s.url, small_mnist, images=32, min_accuracy=0.0, wait_s=5, api_key="s3cret")
    assert ok, message


def test_smoke_unreachable(small_mnist):
    ok, message = smoke.smoke("http://127.0.0.1:9", small_mnist, images=8, min_accuracy=0.5, wait_s=0)
    assert not ok and "unreachable" in message


@pytest.mark.parametrize("model", ["tabular", "text"])
def test_smoke_of_a_model_that_is_not_mnist_uses_its_signature(model_dirs, server_factory, small_mnist, model):
    """The diabetes-like multi-input model and a string model: no labelled data here, so instances are
    built from the signature and must be answered on both protocols (MNIST images would be a 400)."""
    s = server_factory("", "--model", f"{model}={model_dirs[model]}")
    ok, message = smoke.smoke(f"{s.url}/v1/models/{model}", small_mnist, images=8, min_accuracy=0.99, model=model, wait_s=5)
    assert ok, message
    assert "built from its signature" in message and "answered on /v1 and /v2" in message


def test_which_models_get_the_accuracy_check_and_what_counts_as_an_answer():
    image = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 28, 28, 1]}]}
    tabular = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 9]}, {"name": "sex", "datatype": "INT64", "shape": [-1]}]}
    assert smoke.is_image_model(image) and not smoke.is_image_model(tabular)
    assert smoke._finite([{"a": [0.5, 1.0], "b": 2}, {"a": [0.1, 0.2], "b": 3}]) and smoke._finite([["text", True]])
    assert not smoke._finite([{"a": [float("nan")]}]) and not smoke._finite([[1.0, float("inf")]])
