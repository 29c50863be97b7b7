"""The scikit-learn example (models/breast_cancer), in-process on the data scikit-learn ships: it
trains, gates (threshold, then the champion) and publishes an ONNX version that ONNX Runtime loads
and that answers as the Pipeline does; a failed gate publishes nothing; the flags are the
platform trainer's (``--help`` trains nothing, unknown flags refused)."""

from __future__ import annotations

import importlib.util
import json
import threading

import numpy as np
import pytest

from tests.conftest import ROOT
from training import contract, registry

pytest.importorskip("skl2onnx")


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("breast_cancer_train", ROOT / "models" / "breast_cancer" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_trains_nothing_and_unknown_flags_are_refused(example, capsys):
    with pytest.raises(SystemExit) as ok:
        example.environment(["--help"])
    assert ok.value.code == 0 and "--min-roc-auc" in capsys.readouterr().out
    with pytest.raises(SystemExit) as bad:
        example.environment(["--epochs", "3"])  # one fit: no epochs to set
    assert bad.value.code == 2 and "unrecognized arguments: --epochs" in capsys.readouterr().err
    env = example.environment(
        ["--store", "file:///s", "--c", "0.5", "--min-roc-auc", "0.9"], base={"TRAIN_PARAMS": '{"test_fraction": 0.3}'}
    )
    assert json.loads(env["TRAIN_PARAMS"]) == {"test_fraction": 0.3, "c": 0.5}
    assert (env["MLPLATFORM_STORE"], env["TRAIN_GATE_MIN"]) == ("file:///s", "0.9")


def test_trains_gates_and_publishes_onnx_that_onnx_runtime_serves_as_the_pipeline(example, tmp_path, capsys):
    import onnxruntime as ort

    store = f"file://{tmp_path}/store"
    assert example.main(["--store", store, "--run-id", "first"]) == contract.EXIT_OK
    (version,) = registry.versions(store, "breast-cancer")
    vdir = tmp_path / "store" / "models" / "breast-cancer" / version
    meta = json.loads((vdir / "metadata.json").read_text())
    assert meta["format"] == "onnx" and meta["native"]["framework"] == "scikit-learn"
    assert meta["gate"]["metric"] == "test_roc_auc" and meta["metrics"]["test_roc_auc"] >= 0.97
    assert meta["onnx"]["checked_inputs"] == meta["data"]["test"] == 143 and meta["onnx"]["max_abs_diff"] <= 1e-4
    registry.verify(store, "breast-cancer", version)

    session = ort.InferenceSession(str(vdir / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type, i.shape) for i in session.get_inputs()] == [("features", "tensor(float)", ["batch", 30])]
    assert [o.name for o in session.get_outputs()] == ["label", "probabilities"]
    import joblib

    pipeline = joblib.load(vdir / "model.joblib")  # our own file, digest-checked by verify() above
    x, y, _, _ = example.load(None)
    label, probs = session.run(None, {"features": x[:50]})
    assert np.array_equal(label, pipeline.predict(x[:50]))
    np.testing.assert_allclose(probs, pipeline.predict_proba(x[:50]), atol=1e-5)

    # the second run is gated against the champion (re-scored from its ONNX graph on the same patients)
    assert example.main(["--store", store, "--run-id", "second"]) == contract.EXIT_OK
    second = json.loads((tmp_path / "store/models/breast-cancer" / registry.latest(store, "breast-cancer") / "metadata.json").read_text())
    assert second["gate"]["champion_version"] == version
    assert second["gate"]["champion_value"] == pytest.approx(meta["metrics"]["test_roc_auc"], abs=1e-6)


def test_a_failed_gate_publishes_nothing_and_says_why_in_one_line(example, tmp_path, capsys):
    store = f"file://{tmp_path}/store"
    assert example.main(["--store", store, "--min-roc-auc", "0.9999"]) == contract.EXIT_GATE
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[-1]] and err[-1].startswith("quality gate failed: test ROC AUC 0.99") and err[-1].endswith("nothing published")
    assert registry.versions(store, "breast-cancer") == []


def test_bad_data_is_exit_2_with_the_reason(example, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,target\n1,2,0\n")
    assert example.main(["--store", f"file://{tmp_path}/store", "--data", str(bad)]) == contract.EXIT_USAGE
    assert "header must be the 30 columns mean_radius" in capsys.readouterr().err


def _post(url: str, body: dict) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_the_published_version_is_served_by_the_model_server_as_the_pipeline_answers(example, tmp_path):
    """train -> gate -> publish -> serve: the real server (python -m serving) picks ONNX Runtime from
    the version's metadata and answers both protocols as the fitted Pipeline does."""
    import urllib.request

    import joblib

    from serving import warmup
    from tests.serving.conftest import ServerProcess

    store = f"file://{tmp_path}/store"
    assert example.main(["--store", store]) == contract.EXIT_OK
    version = registry.latest(store, "breast-cancer")
    pipeline = joblib.load(tmp_path / "store" / "models" / "breast-cancer" / version / "model.joblib")
    x, _, _, _ = example.load(None)
    rows = x[100:103]
    server = ServerProcess(store, "--model-name", "breast-cancer")
    try:
        server.wait_ready()
        meta = json.loads(urllib.request.urlopen(f"{server.url}/v2/models/breast-cancer", timeout=30).read())
        assert meta["platform"] == "onnxruntime_onnx" and meta["versions"] == [version]
        status, v1 = _post(f"{server.url}/v1/models/breast-cancer:predict", {"instances": [{"features": r.tolist()} for r in rows]})
        assert status == 200 and v1["model_version"] == version
        assert [p["label"] for p in v1["predictions"]] == pipeline.predict(rows).tolist()
        np.testing.assert_allclose([p["probabilities"] for p in v1["predictions"]], pipeline.predict_proba(rows), atol=1e-5)
        tensor = {"name": "features", "shape": [3, 30], "datatype": "FP32", "data": rows.ravel().tolist()}
        status, v2 = _post(f"{server.url}/v2/models/breast-cancer/infer", {"inputs": [tensor]})
        outputs = {o["name"]: o for o in v2["outputs"]}
        assert status == 200 and outputs["label"]["data"] == pipeline.predict(rows).tolist()
        np.testing.assert_allclose(np.reshape(outputs["probabilities"]["data"], (3, 2)), pipeline.predict_proba(rows), atol=1e-5)
        status, bad = _post(f"{server.url}/v1/models/breast-cancer:predict", {"instances": [{"features": rows[0][:29].tolist()}]})
        assert status == 400 and "features" in json.dumps(bad)
        # the canary's warm-up (serving/warmup.py, run by the analysis) builds its rows from this signature
        sent = warmup.run(server.url, server.url, "breast-cancer", 10, 1.5, None, threading.Event())
        assert sent["inputs"] == ["features"] and set(sent["codes"]["canary"]) == {"200"} and sent["codes"]["canary"]["200"] >= 5
    finally:
        server.stop()
