"""A person's first hour with the trainers (issue 27): store URIs mean what they say, a store that
cannot take the model is refused before any epoch, the diabetes example parses its flags like the
platform's trainer, progress and the gate's verdict read at a glance. Fast: no TensorFlow here."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from serving import model as serving_model
from training import contract, gate, storage
from training.progress import Progress, duration

ROOT = Path(__file__).resolve().parents[2]

URIS = [
    ("file://./artifacts", ("file", "", "./artifacts")),
    ("file://../up/store", ("file", "", "../up/store")),
    ("file:///abs/store", ("file", "", "/abs/store")),
    ("file://localhost/abs/store", ("file", "", "/abs/store")),
    ("./artifacts", ("file", "", "./artifacts")),
    ("/abs/store", ("file", "", "/abs/store")),
    ("s3://bucket/root", ("s3", "bucket", "root")),
]
BAD = [
    ("file://host/x", "a file URI names no host ('host')"),
    ("file://", "no path"),
    ("s3:///root", "an s3 URI needs a bucket"),
    ("gs://bucket/x", "unsupported"),
]


@pytest.mark.parametrize("uri,want", URIS, ids=[u for u, _ in URIS])
def test_a_relative_file_uri_is_a_relative_path_for_trainer_and_server_alike(uri, want):
    assert storage.parse(uri) == want
    assert serving_model._split(uri) == want  # the server repeats the rules (it ships without training/)


@pytest.mark.parametrize("uri,message", BAD, ids=[u for u, _ in BAD])
def test_a_malformed_uri_is_refused_by_both(uri, message):
    with pytest.raises(storage.BadURI, match=re.escape(message)):
        storage.parse(uri)
    with pytest.raises(ValueError, match=re.escape(message)):
        serving_model._split(uri)


def test_a_relative_store_is_written_where_it_says(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage.write_bytes("file://./artifacts/models/m/LATEST", b"v1")
    assert (tmp_path / "artifacts/models/m/LATEST").read_bytes() == b"v1"
    assert storage.display("file://./artifacts") == str(tmp_path / "artifacts")


def test_a_store_under_a_file_is_not_writable_and_nothing_is_created(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(storage.BadURI, match="is a file, not a folder"):
        storage.check_writable(f"file://{tmp_path}/afile/store")
    storage.check_writable(f"file://{tmp_path}/new/store")  # a missing store is fine: publish creates it ...
    assert not (tmp_path / "new").exists()  # ... and the check creates nothing


def test_the_store_setting_names_in_order():
    assert contract.default_store({}) == "file://./artifacts"
    assert contract.default_store({"MLPLATFORM_MODEL_STORE": "/c"}) == "/c"
    assert contract.default_store({"TRAIN_OUTPUT": "/b", "MLPLATFORM_MODEL_STORE": "/c"}) == "/b"
    assert contract.default_store({"MLPLATFORM_STORE": "/a", "TRAIN_OUTPUT": "/b"}) == "/a"
    run = contract.Run.from_env("m", gate=contract.Gate("acc", 0.5), env={"MLPLATFORM_STORE": "s3://b/r"})
    assert run.output == "s3://b/r"
    with pytest.raises(contract.ContractError, match=re.escape("store: 'file://h/x': a file URI names no host")):
        contract.Run.from_env("m", gate=contract.Gate("acc", 0.5), env={"MLPLATFORM_STORE": "file://h/x"})


def _py(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


def test_the_trainer_refuses_an_unwritable_store_before_any_epoch(tmp_path):
    (tmp_path / "afile").write_text("x")
    proc = _py("-m", "training.train", "--store", f"{tmp_path}/afile/store", "--data", str(tmp_path / "unused.npz"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines == [
        f"--store: store {tmp_path}/afile/store ({tmp_path}/afile/store): {tmp_path}/afile is a file, not a folder"
    ]
    assert "epoch" not in proc.stdout


def test_the_trainer_still_takes_output_as_an_alias_of_store():
    from training import train

    assert train.parser().parse_args(["--output", "/x"]).store == "/x"
    assert train.parser().parse_args(["--store", "/y"]).store == "/y"
    assert train.parser().parse_args(["--allow-signature-change"]).allow_signature_change is True
    assert train.parser().parse_args(["--allow-signature-change", "0"]).allow_signature_change is False


def test_the_diabetes_example_help_trains_nothing_and_unknown_flags_are_refused(tmp_path):
    proc = _py("models/diabetes/train.py", "--help", env={"MLPLATFORM_STORE": str(tmp_path)})
    assert proc.returncode == 0 and "--epochs" in proc.stdout and "--min-r2" in proc.stdout and "TRAIN_EPOCHS" in proc.stdout
    assert list(tmp_path.iterdir()) == []  # nothing published
    proc = _py("models/diabetes/train.py", "--epochs", "3", "--bogus-flag", env={"MLPLATFORM_STORE": str(tmp_path)})
    assert proc.returncode == 2 and "unrecognized arguments: --bogus-flag" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_diabetes_flags_become_its_contract_variables():
    import importlib.util

    spec = importlib.util.spec_from_file_location("diabetes_train", ROOT / "models/diabetes/train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    env = module.environment(
        ["--store", "file://./s", "--epochs", "3", "--min-r2", "0.3", "--hidden", "8", "--allow-signature-change"],
        {"TRAIN_PARAMS": '{"test_fraction": 0.25}', "TRAIN_EPOCHS": "100"},
    )
    assert env["MLPLATFORM_STORE"] == "file://./s" and env["TRAIN_EPOCHS"] == "3" and env["TRAIN_GATE_MIN"] == "0.3"
    assert json.loads(env["TRAIN_PARAMS"]) == {"test_fraction": 0.25, "hidden": 8} and env["TRAIN_ALLOW_SIGNATURE_CHANGE"] == "1"
    assert module.environment([], {"TRAIN_EPOCHS": "7"}) == {"TRAIN_EPOCHS": "7"}  # no flag: the environment as it is


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_plain_output_is_one_line_per_epoch_with_validation_metrics_and_the_run_eta():
    out, clock = io.StringIO(), Clock()
    p = Progress(4, stream=out, tty=False, clock=clock)
    for epoch in range(2):
        p.begin_epoch(epoch, 100)
        for step in range(1, 101):
            clock.now += 0.3
            p.step(step, {"loss": 0.5})
        p.end_epoch({"loss": 0.25, "accuracy": 0.9, "val_loss": 0.3, "val_accuracy": 0.88})
    lines = out.getvalue().splitlines()
    assert lines == [
        "epoch 1/4 30.0s accuracy 0.9000 loss 0.2500 val_accuracy 0.8800 val_loss 0.3000 | run ETA 1:30",
        "epoch 2/4 30.0s accuracy 0.9000 loss 0.2500 val_accuracy 0.8800 val_loss 0.3000 | run ETA 1:00",
    ]
    assert "\r" not in out.getvalue()  # no redrawn line in a log


def test_a_terminal_gets_a_bar_with_the_epoch_eta_redrawn_in_place():
    out, clock = io.StringIO(), Clock()
    p = Progress(10, initial_epoch=2, stream=out, tty=True, clock=clock)  # a resumed run: epoch 3 of 10
    p.begin_epoch(2, 200)
    clock.now = 10.0
    p.step(50, {"loss": 0.4})
    assert out.getvalue() == "\repoch 3/10 [======>                 ] 50/200 loss 0.4000 ETA 0:30\x1b[K"
    clock.now = 10.1
    p.step(51, {"loss": 0.4})  # within the redraw interval: not drawn again
    assert out.getvalue().count("\r") == 1
    clock.now = 20.0
    p.step(208, {"loss": 0.35})  # steps_per_execution: the last call reports a step past the end
    assert out.getvalue().endswith("\repoch 3/10 [========================] 200/200 loss 0.3500 ETA 0:00\x1b[K")
    clock.now = 40.0
    line = p.end_epoch({"loss": 0.3})
    assert line == "epoch 3/10 40.0s loss 0.3000 | run ETA 4:40" and out.getvalue().endswith("\r\x1b[K" + line + "\n")
    assert duration(3725) == "1:02:05"


def test_the_gate_line_says_passed_or_failed_first():
    failed = gate.judge("test_accuracy", 0.7732, 0.9842, note="absolute threshold failed")
    assert failed.line().startswith("gate FAILED (test_accuracy 0.7732 < required 0.9842): test_accuracy 0.7732 < 0.9842 (absolute)")
    passed = gate.judge("test_accuracy", 0.99, 0.9842, champion_version="v1", champion_value=0.991, note="")
    assert passed.line().startswith("gate PASSED: test_accuracy 0.9900 >= 0.9842 (absolute); champion v1 0.9910")
    lower = gate.judge("test_loss", 0.6, 0.5, higher_is_better=False)
    assert lower.line().startswith("gate FAILED (test_loss 0.6000 > required 0.5000): test_loss 0.6000 > 0.5000")
