"""The PyTorch example (models/mnist_torch) on real MNIST as the cluster runs it, every worker its own
process: two workers on loopback (gloo, rendezvous from the pod index as TensorFlow's cluster spec)
reach the gate and only the chief publishes; a killed worker makes the other exit 75 and the retried
run resumes from the checkpoint; a SIGTERM on one worker stops both at the same step (143) and the
rerun resumes; one pod with two devices runs one process each (the launcher). Slow: each run
starts PyTorch in several processes and trains for tens of seconds on 2 shared cores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from training import cluster as clusters
from training import registry

pytestmark = pytest.mark.slow
SCRIPT = ROOT / "models" / "mnist_torch" / "train.py"


def start(tmp_path: Path, data: Path, index: int, workers: int, port: int, *extra: str, env: dict | None = None) -> subprocess.Popen:
    e = {**os.environ, "TRAIN_RUN_ID": f"run{index}", **(env or {})}
    if workers > 1:
        e |= {
            "TRAIN_WORKERS": str(workers),
            "TRAIN_WORKER_INDEX": str(index),
            "TRAIN_WORKER_HOST": "127.0.0.1",
            "TRAIN_WORKER_PORT": str(port),
            "TRAIN_WORKER_PORT_STEP": "1",
        }
    args = ["--data", str(data), "--store", f"file://{tmp_path}/store", "--checkpoint-dir", str(tmp_path / "ck"), "--min-accuracy", "0.5"]
    log = open(tmp_path / f"worker{index}.log", "a")  # noqa: SIM115 - the process writes it; closed with the test's tmp dir
    return subprocess.Popen([sys.executable, str(SCRIPT), *args, *extra], env=e, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)


def pair(tmp_path, data, *extra, port=None) -> list[subprocess.Popen]:
    port = port or clusters.free_loopback_port(2)
    return [start(tmp_path, data, i, 2, port, *extra) for i in range(2)]


def logs(tmp_path, index) -> str:
    return (tmp_path / f"worker{index}.log").read_text()


def wait_all(procs, timeout=600) -> list[int]:
    return [p.wait(timeout) for p in procs]


def checkpointed(tmp_path) -> int:
    try:
        return json.loads((tmp_path / "ck" / "state.json").read_text())["epoch"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def wait_checkpoint(tmp_path, procs, epoch=1, timeout=600) -> None:
    deadline = time.monotonic() + timeout
    while checkpointed(tmp_path) < epoch:
        assert time.monotonic() < deadline, "no checkpoint in time"
        assert all(p.poll() is None for p in procs), [p.poll() for p in procs]
        time.sleep(0.05)


def published(tmp_path) -> list[dict]:
    root = f"file://{tmp_path}/store"
    return [
        registry.read_manifest(root, "mnist-torch", v)
        | {"meta": json.loads((tmp_path / "store/models/mnist-torch" / v / "metadata.json").read_text())}
        for v in registry.versions(root, "mnist-torch")
    ]


def test_two_workers_on_loopback_reach_the_gate_and_only_the_chief_publishes(tmp_path, small_mnist):
    procs = pair(tmp_path, small_mnist, "--epochs", "2")
    assert wait_all(procs) == [0, 0], logs(tmp_path, 0)[-3000:] + logs(tmp_path, 1)[-3000:]
    (version,) = published(tmp_path)
    meta = version["meta"]
    assert meta["format"] == "onnx" and set(version["files"]) >= {"model.onnx", "model.pt", "metadata.json"}
    assert meta["distribution"] == {"workers": 2, "replicas": 2, "global_batch_size": 128, "learning_rate": pytest.approx(0.002 * 2**0.5)}
    assert meta["gate"]["passed"] and meta["metrics"]["test_accuracy"] >= 0.5 and meta["onnx"]["max_abs_diff"] <= 1e-4
    assert "rank 1 of 2" in logs(tmp_path, 1) and "worker 1: the chief publishes" in logs(tmp_path, 1)
    # the replicas stayed in sync: both evaluated the same model
    lines = [next(line for line in logs(tmp_path, i).splitlines() if "held out: accuracy" in line).split("training: ")[1] for i in range(2)]
    assert lines[0] == lines[1]


def test_a_killed_worker_fails_the_other_with_75_and_the_retry_resumes_from_the_checkpoint(tmp_path, small_mnist):
    procs = pair(tmp_path, small_mnist, "--epochs", "4")
    wait_checkpoint(tmp_path, procs)
    procs[1].kill()
    assert procs[0].wait(400) == 75, logs(tmp_path, 0)[-3000:]
    done = checkpointed(tmp_path)
    assert 1 <= done < 4 and "a peer process was lost" in logs(tmp_path, 0)
    assert wait_all(pair(tmp_path, small_mnist, "--epochs", "4")) == [0, 0], logs(tmp_path, 0)[-3000:]
    assert f"after epoch {done}" in logs(tmp_path, 0).split("a peer process was lost")[1]
    (version,) = published(tmp_path)
    assert len(version["meta"]["history"]["loss"]) == 4  # the resumed run kept the first epochs' history


def test_sigterm_on_one_worker_stops_both_at_the_same_step_and_the_rerun_resumes(tmp_path, small_mnist):
    procs = pair(tmp_path, small_mnist, "--epochs", "4")
    wait_checkpoint(tmp_path, procs)
    procs[1].send_signal(signal.SIGTERM)
    assert wait_all(procs, 400) == [143, 143], logs(tmp_path, 0)[-3000:]
    done = checkpointed(tmp_path)
    assert (tmp_path / "ck" / f"epoch-{done:04d}.pt").is_file() and published(tmp_path) == []
    assert wait_all(pair(tmp_path, small_mnist, "--epochs", "4")) == [0, 0]
    assert f"resuming from {tmp_path / 'ck'} after epoch {done}" in logs(tmp_path, 0)


def test_one_pod_with_two_devices_runs_one_process_each(tmp_path, small_mnist):
    proc = start(
        tmp_path,
        small_mnist,
        0,
        1,
        0,
        "--epochs",
        "1",
        "--cpu-devices",
        "2",
        env={"TRAIN_WORKER_PORT": str(clusters.free_loopback_port(1))},
    )
    assert proc.wait(600) == 0, logs(tmp_path, 0)[-3000:]
    out = logs(tmp_path, 0)
    assert "launching 2 processes" in out and "rank 0 of 2" in out and "rank 1 of 2" in out
    (version,) = published(tmp_path)
    assert version["meta"]["distribution"]["replicas"] == 2
