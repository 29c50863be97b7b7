"""Data-parallel training for real: several logical CPU devices in one process (the multi-GPU path),
and several worker processes on loopback, each given the cluster spec that training.cluster derives
from its index (the multi-node path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training import artifacts
from training.cluster import free_loopback_port
from training.contract import EXIT_GATE, EXIT_OK, EXIT_PEER_LOST

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def test_trains_data_parallel_over_logical_cpu_devices(tmp_path, small_mnist):
    store = tmp_path / "store"
    proc = subprocess.run(
        [sys.executable, "-m", "training.train", "--data", str(small_mnist), "--output", str(store), "--epochs", "2"]
        + ["--batch-size", "64", "--min-accuracy", "0.5", "--cpu-devices", "2", "--run-id", "md"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert proc.returncode == EXIT_OK, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "devices: 2 replica(s) in sync (MirroredStrategy" in proc.stdout
    meta = artifacts.read_metadata(str(store), "mnist", artifacts.latest(str(store), "mnist"))
    # The recipe's per-device batch on each replica; the peak learning rate x sqrt(2).
    assert meta["distribution"] == {"workers": 1, "replicas": 2, "global_batch_size": 128, "learning_rate": pytest.approx(1.2e-2 * 2**0.5)}
    assert meta["params"]["batch_size"] == 64 and meta["params"]["learning_rate"] == 1.2e-2
    # The published model is today's format: a float32 SavedModel taking (n, 28, 28, 1) images.
    import tensorflow as tf

    sig = tf.saved_model.load(str(store / "models" / "mnist" / meta["version"] / "saved_model")).signatures["serving_default"]
    (spec,) = sig.structured_input_signature[1].values()
    assert spec.shape.as_list() == [None, 28, 28, 1] and spec.dtype == tf.float32
    (out,) = sig.structured_outputs.values()
    assert out.shape.as_list() == [None, 10] and out.dtype == tf.float32


# ---- several workers on loopback ----


def start_workers(workers: int, args: list[str], port: int, logs: Path) -> list[subprocess.Popen]:
    """One process per worker, configured as Kubernetes configures an Indexed Job's pods (the index
    in JOB_COMPLETION_INDEX), with loopback addresses instead of the headless Service's names."""
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(workers):
        env = {
            **ENV,
            "TRAIN_WORKERS": str(workers),
            "JOB_COMPLETION_INDEX": str(i),
            "TRAIN_WORKER_HOST": "127.0.0.1",
            "TRAIN_WORKER_PORT": str(port),
            "TRAIN_WORKER_PORT_STEP": "1",
        }
        out = open(logs / f"worker-{i}.log", "a")  # noqa: SIM115 (closed with the process)
        procs.append(
            subprocess.Popen([sys.executable, "-m", "training.train", *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        )
    return procs


def wait_all(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    deadline = time.time() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(max(1, deadline - time.time())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    return codes


def _versions(store: Path) -> list[str]:
    root = store / "models" / "mnist"
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name[:1].isdigit()) if root.exists() else []


@pytest.mark.slow
def test_two_workers_train_the_seed_model_to_the_gate(tmp_path, mnist_file):
    """2 worker processes train the seed CNN on the full real MNIST to the 98.42 % gate; only the
    chief publishes."""
    store, logs = tmp_path / "store", tmp_path / "logs"
    args = ["--data", str(mnist_file), "--output", str(store), "--arch", "seed", "--epochs", "10", "--run-id", "mw"]
    procs = start_workers(2, args, free_loopback_port(2), logs)
    codes = wait_all(procs, timeout=1200)
    out = {i: (logs / f"worker-{i}.log").read_text() for i in range(2)}
    assert codes == [EXIT_OK, EXIT_OK], {i: o[-3000:] for i, o in out.items()}
    assert "worker 1: the chief publishes" in out[1] and '"published"' not in out[1]
    assert len(_versions(store)) == 1
    meta = artifacts.read_metadata(str(store), "mnist", artifacts.latest(str(store), "mnist"))
    assert meta["distribution"]["workers"] == 2 and meta["distribution"]["replicas"] == 2
    assert meta["distribution"]["global_batch_size"] == 256
    assert meta["metrics"]["test_accuracy"] >= 0.9842


@pytest.mark.slow
def test_a_lost_worker_resumes_the_whole_run_from_the_checkpoint(tmp_path, small_mnist):
    """Kill one worker mid-run (SIGKILL, like a reclaimed spot node): the survivor's collectives
    abort and it exits 75 (retry); the restarted set resumes after the last complete epoch with its
    history, and publishes exactly once."""
    store, ckpt, logs = tmp_path / "store", tmp_path / "ckpt", tmp_path / "logs"
    epochs = 6
    args = ["--data", str(small_mnist), "--output", str(store), "--epochs", str(epochs), "--min-accuracy", "0.3"]
    args += ["--checkpoint-dir", str(ckpt), "--run-id", "resume"]
    port = free_loopback_port(2)
    procs = start_workers(2, args, port, logs)
    deadline = time.time() + 300
    while time.time() < deadline:
        state = ckpt / "state.json"
        if state.exists() and json.loads(state.read_text())["epoch"] >= 2:
            break
        assert all(p.poll() is None for p in procs), [(logs / f"worker-{i}.log").read_text()[-2000:] for i in range(2)]
        time.sleep(0.05)
    else:
        raise AssertionError("no checkpoint after 300 s")
    procs[1].kill()
    assert wait_all(procs[:1], timeout=120) == [EXIT_PEER_LOST], (logs / "worker-0.log").read_text()[-3000:]
    procs[1].wait()
    killed_at = json.loads((ckpt / "state.json").read_text())["epoch"]
    assert 2 <= killed_at < epochs and _versions(store) == []

    for i in range(2):
        (logs / f"worker-{i}.log").write_text("")
    procs = start_workers(2, args, port, logs)
    codes = wait_all(procs, timeout=600)
    out = [(logs / f"worker-{i}.log").read_text() for i in range(2)]
    assert codes == [EXIT_OK, EXIT_OK], [o[-3000:] for o in out]
    for o in out:
        assert f"resuming from {ckpt} after epoch {killed_at}" in o
        assert f"epoch {killed_at + 1}/{epochs} " in o and "epoch 1/" not in o
    assert len(_versions(store)) == 1  # the chief alone published, once
    meta = artifacts.read_metadata(str(store), "mnist", artifacts.latest(str(store), "mnist"))
    assert len(meta["history"]["loss"]) == epochs  # history carried across the restart
    assert json.loads((ckpt / "state.json").read_text())["epoch"] == epochs


@pytest.mark.slow
def test_three_workers_publish_once_and_a_failed_gate_fails_every_worker(tmp_path, small_mnist):
    """3 workers: one version, by the chief; with an unreachable gate every worker exits 3 at once
    (retrying cannot help) and nothing is published."""
    store, logs = tmp_path / "store", tmp_path / "logs"
    args = ["--data", str(small_mnist), "--output", str(store), "--epochs", "2", "--batch-size", "64", "--min-accuracy", "0.3"]
    codes = wait_all(start_workers(3, args + ["--run-id", "three"], free_loopback_port(3), logs), timeout=600)
    out = [(logs / f"worker-{i}.log").read_text() for i in range(3)]
    assert codes == [EXIT_OK] * 3, [o[-2000:] for o in out]
    assert len(_versions(store)) == 1 and all(f"worker {i}: the chief publishes" in out[i] for i in (1, 2))
    meta = artifacts.read_metadata(str(store), "mnist", artifacts.latest(str(store), "mnist"))
    assert meta["distribution"]["replicas"] == 3 and meta["distribution"]["global_batch_size"] == 192

    gated = tmp_path / "gated"
    args = ["--data", str(small_mnist), "--output", str(gated), "--epochs", "1", "--min-accuracy", "0.999"]
    codes = wait_all(start_workers(3, args, free_loopback_port(3), tmp_path / "logs-gate"), timeout=600)
    assert codes == [EXIT_GATE] * 3
    assert not gated.exists()
