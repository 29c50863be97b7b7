"""The gate against the champion (issue 15 item 2): the decision, and the champion re-evaluated from
the store (verified download) by the model's own evaluator. No TensorFlow in the fast tests: the
"models" here are small files whose evaluation is reading them; the slow test trains for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from training import gate, registry, storage
from training.contract import EXIT_GATE

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_worse_than_the_champion_beyond_the_margin_is_refused_even_above_the_threshold():
    v = gate.judge("test_accuracy", 0.990, 0.9842, margin=0.002, champion_version="v1", champion_value=0.9935)
    assert not v.passed
    assert v.reason == "test_accuracy 0.9900 is 0.0035 worse than champion v1 (0.9935), more than the margin 0.0020"
    assert "FAILED" in v.line() and "champion v1 0.9935 - margin 0.0020 = 0.9915" in v.line()


@pytest.mark.parametrize(
    "value,champion,passed",
    [(0.9920, 0.9935, True), (0.9940, 0.9935, True), (0.9914, 0.9935, False), (0.9800, None, False), (0.9850, None, True)],
)
def test_threshold_and_champion_both_apply(value, champion, passed):
    v = gate.judge("test_accuracy", value, 0.9842, margin=0.002, champion_version="v1" if champion else None, champion_value=champion)
    assert v.passed is passed, v.line()


def test_lower_is_better_metrics_compare_the_other_way():
    assert (
        gate.judge("test_loss", 0.30, 0.5, higher_is_better=False, margin=0.01, champion_version="v1", champion_value=0.25).passed is False
    )
    assert gate.judge("test_loss", 0.255, 0.5, higher_is_better=False, margin=0.01, champion_version="v1", champion_value=0.25).passed


def test_a_negative_margin_is_refused():
    with pytest.raises(ValueError, match="margin must be >= 0"):
        gate.judge("test_accuracy", 0.99, 0.98, margin=-0.1)


def _publish(tmp_path, root, version, accuracy):
    d = tmp_path / version
    (d / "saved_model").mkdir(parents=True)
    (d / "saved_model" / "saved_model.pb").write_bytes(b"pb")
    (d / "model.keras").write_text(json.dumps({"accuracy": accuracy}))
    (d / "metadata.json").write_text(json.dumps({"version": version, "metrics": {"test_accuracy": 0.5}}))
    registry.publish(d, root, "mnist", version, reason="test")


def _evaluate(model_dir):  # the stored "model" knows its accuracy on the evaluation data
    return {"test_accuracy": json.loads((model_dir / "model.keras").read_text())["accuracy"]}


@pytest.fixture(params=["s3", "file"])
def root(request, tmp_path):
    if request.param == "s3":
        return f"s3://{request.getfixturevalue('s3_bucket')}/store"
    return f"file://{tmp_path}/store"


def test_the_champion_is_re_evaluated_not_read_from_its_metadata(tmp_path, root):
    _publish(tmp_path, root, "v1", 0.9935)  # its metadata says 0.5: a stale figure must not decide
    v = gate.check("test_accuracy", 0.9900, 0.9842, root=root, name="mnist", evaluate=_evaluate, margin=0.002)
    assert not v.passed and v.champion_version == "v1" and v.champion_value == 0.9935
    ok = gate.check("test_accuracy", 0.9930, 0.9842, root=root, name="mnist", evaluate=_evaluate, margin=0.002)
    assert ok.passed and ok.metadata()["champion_value"] == 0.9935 and ok.metadata()["value"] == 0.9930


def test_no_champion_and_a_broken_champion_fall_back_to_the_threshold(tmp_path, root):
    v = gate.check("test_accuracy", 0.99, 0.9842, root=root, name="mnist", evaluate=_evaluate)
    assert v.passed and v.champion_value is None and v.note == "no champion yet"
    _publish(tmp_path, root, "v1", 0.9999)
    storage.write_bytes(storage.join(registry.model_root(root, "mnist"), "v1", "model.keras"), b'{"accuracy": 0.1}')  # tampered
    v = gate.check("test_accuracy", 0.99, 0.9842, root=root, name="mnist", evaluate=_evaluate)
    assert v.passed and v.champion_value is None and "champion v1 could not be evaluated: VerifyError" in v.note
    assert "no champion comparison (champion v1 could not be evaluated" in v.line()


def test_below_the_threshold_never_downloads_the_champion(tmp_path, root):
    _publish(tmp_path, root, "v1", 0.5)
    calls = []
    v = gate.check("test_accuracy", 0.90, 0.9842, root=root, name="mnist", evaluate=lambda d: calls.append(d) or _evaluate(d))
    assert not v.passed and calls == [] and v.reason == "test_accuracy 0.9000 < required 0.9842"


def train(*args):
    return subprocess.run(
        [sys.executable, "-m", "training.train", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


@pytest.mark.slow
def test_training_refuses_a_candidate_worse_than_the_champion(tmp_path, small_mnist):
    """Two real runs on the small sample into one store: a 3-epoch champion, then a 1-epoch seed-arch
    candidate that clears the (low) absolute threshold but is far worse than the champion."""
    store = f"file://{tmp_path}/store"
    first = train("--data", str(small_mnist), "--output", store, "--epochs", "3", "--min-accuracy", "0.3", "--run-id", "champ")
    assert first.returncode == 0, first.stderr[-2000:]
    champion = registry.get_alias(store, "mnist", "champion")["version"]
    meta = json.loads(storage.read_text(storage.join(registry.model_root(store, "mnist"), champion, "metadata.json")))
    assert meta["gate"]["note"] == "no champion yet" and meta["gate"]["champion_value"] is None
    second = train(
        "--data",
        str(small_mnist),
        "--output",
        store,
        "--epochs",
        "1",
        "--arch",
        "seed",
        "--min-accuracy",
        "0.1",
        "--champion-margin",
        "0.01",
    )
    assert second.returncode == EXIT_GATE, second.stdout[-2000:] + second.stderr[-2000:]
    assert f"worse than champion {champion}" in second.stderr and "more than the margin 0.0100; nothing published" in second.stderr
    line = next(x for x in second.stdout.splitlines() if "gate FAILED" in x)
    assert f"champion {champion} " in line and ": test_accuracy " in line  # the verdict first, both figures in the log
    assert registry.get_alias(store, "mnist", "champion")["version"] == champion
    assert registry.versions(store, "mnist") == [champion]
    # the same candidate with a margin wide enough passes, and its metadata carries both figures
    third = train(
        "--data",
        str(small_mnist),
        "--output",
        store,
        "--epochs",
        "1",
        "--arch",
        "seed",
        "--min-accuracy",
        "0.1",
        "--champion-margin",
        "0.9",
    )
    assert third.returncode == 0, third.stderr[-2000:]
    new = registry.get_alias(store, "mnist", "champion")["version"]
    meta = json.loads(storage.read_text(storage.join(registry.model_root(store, "mnist"), new, "metadata.json")))
    assert meta["gate"]["champion_version"] == champion and 0 < meta["gate"]["champion_value"] <= 1
    assert meta["gate"]["value"] == meta["metrics"]["test_accuracy"] and meta["gate"]["margin"] == 0.9
