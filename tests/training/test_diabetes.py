"""The second example model (models/diabetes): a tabular regression with two named inputs of
different dtypes, trained through the contract's entrypoint runner -> gate -> publish."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.training.test_metrics import pushgateway  # noqa: F401 (the real Pushgateway fixture)
from training import artifacts

ROOT = Path(__file__).resolve().parents[2]
ENTRY = "models/diabetes/train.py"


def _module():
    spec = importlib.util.spec_from_file_location("diabetes_train", ROOT / ENTRY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _serve_and_predict(store: str, body: dict) -> dict:
    import socket
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving",
            "--model",
            f"diabetes=file://{store}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--metrics-port",
            "0",
        ],
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while True:
            assert server.poll() is None, server.communicate()[0][-3000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models/diabetes", timeout=2)  # noqa: S310 (loopback)
                break
            except OSError:
                assert time.time() < deadline, "the server did not become ready in 120 s"
                time.sleep(0.5)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/diabetes:predict", data=json.dumps(body).encode())
        with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 (loopback)
            return json.loads(r.read())
    finally:
        server.terminate()
        server.wait(60)


def run(env: dict[str, str]):
    """As the TrainingJob runs it: ``python -m training`` with the model's TRAIN_ENTRYPOINT."""
    return subprocess.run(
        [sys.executable, "-m", "training"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TRAIN_ENTRYPOINT": ENTRY, **env},
    )


def _pushed_its_metrics(gateway):
    """The contract pushed the run's metrics to the (real) Pushgateway, labelled with the model."""
    from training import metrics

    body = urllib.request.urlopen(f"http://{gateway}/metrics", timeout=5).read().decode()
    series = {line.split("{")[0]: line for line in body.splitlines() if 'model="diabetes"' in line}
    assert series[metrics.GATE_PASSED].endswith(" 1") and series[metrics.EPOCHS].endswith(" 40")
    assert metrics.LAST_SUCCESS in series and metrics.DURATION_SECONDS in series
    # ... and this (only) worker's throughput, in its own group (issue 16: per-worker figures).
    assert 'worker="0"' in series[metrics.EXAMPLES_PER_SECOND] and float(series[metrics.EXAMPLES_PER_SECOND].rsplit(" ", 1)[1]) > 0
    assert float(series[metrics.STEP_SECONDS].rsplit(" ", 1)[1]) > 0


def _gated_model_matches_its_figures(store, version, meta):
    """The serving signature (named inputs of different dtypes, a named output), and the published
    SavedModel is the gated model: its predictions on the held-out patients give the recorded R^2."""
    import tensorflow as tf

    sig = tf.saved_model.load(f"{store}/models/diabetes/{version}/saved_model").signatures["serving_default"]
    inputs = sig.structured_input_signature[1]
    assert {k: (v.dtype, v.shape.as_list()) for k, v in inputs.items()} == {
        "features": (tf.float32, [None, 9]),
        "sex": (tf.int64, [None]),
    }
    assert list(sig.structured_outputs) == ["progression"]

    m = _module()
    features, sex, target, _, _ = m.load(None)
    order = np.random.default_rng(m.SPLIT_SEED).permutation(len(target))
    test, train = order[: meta["data"]["test"]], order[meta["data"]["test"] :]
    pred = sig(features=tf.constant(features[test]), sex=tf.constant(sex[test]))["progression"].numpy().astype(np.float64)
    truth = target[test].astype(np.float64)
    r2 = 1 - ((truth - pred) ** 2).sum() / ((truth - target[train].mean()) ** 2).sum()
    assert r2 == pytest.approx(meta["metrics"]["test_r2"], abs=1e-4)

    return pred, features, sex, test


def test_trains_passes_its_gate_and_publishes_a_multi_input_model(tmp_path, pushgateway):  # noqa: F811 (the fixture)
    store = str(tmp_path / "store")
    env = {
        "TRAIN_OUTPUT": store,
        "TRAIN_EPOCHS": "40",
        "TRAIN_RUN_ID": "t1",
        "TRAIN_PARAMS": '{"hidden": 16}',
        "TRAIN_PUSHGATEWAY": pushgateway,
    }
    proc = run(env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    version = artifacts.latest(store, "diabetes")
    assert version and re.fullmatch(r"\d{8}T\d{6}Z-t1-[0-9a-f]{12}", version), version  # time, run, random part
    meta = artifacts.read_metadata(store, "diabetes", version)
    assert {k: meta["gate"][k] for k in ("metric", "threshold", "higher_is_better", "passed")} == {
        "metric": "test_r2",
        "threshold": 0.4,
        "higher_is_better": True,
        "passed": True,
    }
    assert meta["metrics"]["test_r2"] >= 0.4 and meta["metrics"]["test_mae"] > 0
    assert meta["params"]["epochs"] == 40 and meta["params"]["hidden"] == 16
    assert meta["data"]["train"] + meta["data"]["test"] == 442 and "load_diabetes" in meta["data"]["uri"]
    assert len(meta["history"]["loss"]) == 40

    _pushed_its_metrics(pushgateway)
    pred, features, sex, test = _gated_model_matches_its_figures(store, version, meta)

    # Served by the platform's server (python -m serving) from the store, rows keyed by input name,
    # answering what the signature answers in-process.
    rows = [{"features": features[i].tolist(), "sex": int(sex[i])} for i in test[:5]]
    served = _serve_and_predict(store, {"instances": rows})
    assert served["model_version"] == version
    assert served["predictions"] == pytest.approx(pred[:5].tolist(), rel=1e-5)


@pytest.mark.slow
def test_a_retrain_is_gated_against_the_champion(tmp_path):
    """The second run re-evaluates the serving champion (the first run's model.keras) on the same
    patients with the model's own evaluator: the same recipe and seed give the same figure, so it
    passes, and both figures are in the metadata."""
    store = str(tmp_path / "store")
    env = {"TRAIN_OUTPUT": store, "TRAIN_EPOCHS": "20", "TRAIN_GATE_MIN": "0.1"}
    first = run({**env, "TRAIN_RUN_ID": "a"})
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    second = run({**env, "TRAIN_RUN_ID": "b"})
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    meta = artifacts.read_metadata(store, "diabetes", artifacts.latest(store, "diabetes"))
    assert re.search(r"-b-[0-9a-f]{12}$", meta["version"]) and re.search(r"-a-[0-9a-f]{12}$", meta["gate"]["champion_version"])
    assert meta["gate"]["champion_value"] == pytest.approx(meta["metrics"]["test_r2"], abs=1e-4)
    assert meta["gate"]["margin"] == 0.02


def test_gate_failure_publishes_nothing(tmp_path):
    store = tmp_path / "store"
    proc = run({"TRAIN_OUTPUT": str(store), "TRAIN_EPOCHS": "1"})
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "quality gate failed: test R^2" in proc.stderr and "< required 0.4000; nothing published" in proc.stderr
    assert not store.exists()


BAD = [
    ("age,sex,bmi\n1,2,3\n", "header must be 'age,sex,bmi,bp,s1,s2,s3,s4,s5,s6,target'"),
    (
        "age,sex,bmi,bp,s1,s2,s3,s4,s5,s6,target\n" + "50,3,30,90,150,90,40,4,4.5,90,100\n" * 60,
        "column 'sex' must hold the category codes 1 or 2",
    ),
    ("age,sex,bmi,bp,s1,s2,s3,s4,s5,s6,target\n" + "50,1,30,90,150,90,40,4,4.5,90,100\n" * 10, "10 rows is too few"),
    ("age,sex,bmi,bp,s1,s2,s3,s4,s5,s6,target\n50,1,x,90,150,90,40,4,4.5,90,100\n", "not a numeric CSV"),
]


@pytest.mark.parametrize("csv,message", BAD, ids=["header", "category", "rows", "numeric"])
def test_bad_data_exits_2_with_the_reason(tmp_path, csv, message):
    path = tmp_path / "d.csv"
    path.write_text(csv)
    proc = run({"TRAIN_OUTPUT": str(tmp_path / "store"), "TRAIN_DATA": f"file://{path}"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr


def test_csv_data_location_is_read(tmp_path):
    """TRAIN_DATA: the same table as a CSV in the store loads to the bundled arrays."""
    m = _module()
    features, sex, target, _, digest = m.load(None)
    table = np.column_stack([features[:, :1], sex, features[:, 1:], target])
    path = tmp_path / "diabetes.csv"
    np.savetxt(path, table, delimiter=",", header=",".join((*m.COLUMNS, "target")), comments="", fmt="%.6g")
    f2, s2, t2, source, _ = m.load(str(path))
    assert source == str(path) and np.allclose(f2, features, rtol=1e-5) and (s2 == sex).all() and np.allclose(t2, target)
    assert json.dumps(f2.dtype.name) == '"float32"' and s2.dtype == np.int64
