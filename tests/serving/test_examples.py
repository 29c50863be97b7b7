"""examples/: the request payloads and the clients a user copies, against the real server process
(the MNIST CNN the platform trains, exported as training does)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from tests.serving.conftest import ROOT, ServerProcess, make_cnn_dir

EXAMPLES = ROOT / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One real server for the module (it serves the CNN as `mnist`, the clients' default)."""
    process = ServerProcess(str(make_cnn_dir(tmp_path_factory.mktemp("cnn"))))
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def test_the_payloads_are_real_mnist_digits_as_floats_in_0_1():
    rows = np.array(json.loads((EXAMPLES / "mnist-predict.json").read_text())["instances"])
    assert rows.shape == (2, 28, 28, 1) and 0.0 <= rows.min() and rows.max() <= 1.0 and rows.max() > 0.9
    with np.load(ROOT / "data" / "mnist.npz") as d:
        assert np.allclose(rows[..., 0], d["x_test"][:2] / 255.0, atol=5e-4)  # test images 0 and 1 (a 7 and a 2)
    (tensor,) = json.loads((EXAMPLES / "mnist-infer-v2.json").read_text())["inputs"]
    assert tensor["shape"] == [2, 28, 28, 1] and tensor["datatype"] == "FP32"
    assert np.allclose(np.array(tensor["data"]).reshape(tensor["shape"]), rows)  # the same two images


def test_tf_serving_rest_client_against_the_server(server, capsys):
    assert _load("tf_serving_rest").main(["--url", server.url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == ["instance 0", "instance 1"], out


def test_open_inference_client_against_the_server(server, capsys):
    assert _load("open_inference").main(["--url", server.url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == ["row 0", "row 1"], out


def test_a_refused_request_is_the_servers_reason_in_one_line(server, tmp_path, capsys):
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps({"instances": [[[0] * 28] * 28]}))  # the wrong rank
    assert _load("tf_serving_rest").main(["--url", server.url, "--payload", str(raw)]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("400: ") and "shape" in line


def test_the_openai_example_checks_its_arguments(capsys):
    chat = _load("openai_chat")
    with pytest.raises(SystemExit) as exc:
        chat.parser().parse_args(["hello"])  # --base-url and --model are required
    assert exc.value.code == 2
    assert chat.main(["--base-url", "http://gateway.example", "--model", "chat", "hi"]) == 2
    assert "ends in /v1" in capsys.readouterr().err
