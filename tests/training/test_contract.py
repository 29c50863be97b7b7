"""The training contract's pure parts: the cluster spec from a pod's index, the environment, the gate,
the scaling recipe, and the entrypoint runner."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training import cluster, contract

ROOT = Path(__file__).resolve().parents[2]


def test_tf_config_addresses_every_pod_of_the_indexed_job():
    cfg = cluster.tf_config(1, 3, job="train-abc", service="train-abc-workers")
    assert cfg == {
        "cluster": {
            "worker": [
                "train-abc-0.train-abc-workers:2222",
                "train-abc-1.train-abc-workers:2222",
                "train-abc-2.train-abc-workers:2222",
            ]
        },
        "task": {"type": "worker", "index": 1},
    }


def test_every_worker_derives_the_same_cluster():
    specs = [cluster.tf_config(i, 4, job="j", service="s") for i in range(4)]
    assert all(s["cluster"] == specs[0]["cluster"] for s in specs)
    assert [s["task"]["index"] for s in specs] == [0, 1, 2, 3]


def test_loopback_cluster_gives_each_worker_its_own_port():
    env = {
        "TRAIN_WORKERS": "2",
        "JOB_COMPLETION_INDEX": "1",
        "TRAIN_WORKER_HOST": "127.0.0.1",
        "TRAIN_WORKER_PORT": "23000",
        "TRAIN_WORKER_PORT_STEP": "1",
    }
    c = cluster.from_env(env)
    assert c.workers == 2 and c.index == 1 and not c.is_chief
    assert c.tf_config["cluster"]["worker"] == ["127.0.0.1:23000", "127.0.0.1:23001"]


def test_kubernetes_env_and_index_override():
    env = {"TRAIN_WORKERS": "2", "JOB_COMPLETION_INDEX": "1", "TRAIN_WORKER_INDEX": "0", "JOB_NAME": "train-x", "TRAIN_WORKER_SERVICE": "w"}
    c = cluster.from_env(env)
    assert c.is_chief and c.tf_config["cluster"]["worker"][1] == "train-x-1.w:2222"


def test_single_worker_has_no_tf_config():
    assert cluster.from_env({}) == cluster.Cluster(1, 0, None)
    assert cluster.from_env({"TRAIN_WORKERS": "1", "JOB_COMPLETION_INDEX": "0"}).tf_config is None


BAD_CLUSTERS = [
    ({"TRAIN_WORKERS": "two"}, "TRAIN_WORKERS must be an integer, got 'two'"),
    ({"TRAIN_WORKERS": "0"}, "TRAIN_WORKERS must be >= 1, got 0"),
    ({"TRAIN_WORKERS": "2", "JOB_COMPLETION_INDEX": "2", "JOB_NAME": "j", "TRAIN_WORKER_SERVICE": "s"}, "worker index 2 out of range"),
    ({"TRAIN_WORKERS": "2", "TRAIN_WORKER_SERVICE": "s"}, "JOB_NAME is required"),
    ({"TRAIN_WORKERS": "2", "JOB_NAME": "j"}, "TRAIN_WORKER_SERVICE is required"),
    (
        {"TRAIN_WORKERS": "2", "JOB_NAME": "j", "TRAIN_WORKER_SERVICE": "s", "TRAIN_WORKER_PORT": "x"},
        "TRAIN_WORKER_PORT must be an integer",
    ),
]


@pytest.mark.parametrize("env,message", BAD_CLUSTERS, ids=[m for _, m in BAD_CLUSTERS])
def test_bad_cluster_env_names_the_variable(env, message):
    with pytest.raises(cluster.ClusterError, match=message.replace("(", r"\(")):
        cluster.from_env(env)


def test_export_sets_and_clears_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    c = cluster.from_env({"TRAIN_WORKERS": "2", "JOB_NAME": "j", "TRAIN_WORKER_SERVICE": "s"})
    cluster.export(c)
    assert json.loads(os.environ["TF_CONFIG"])["task"] == {"type": "worker", "index": 0}
    cluster.export(cluster.from_env({}))
    assert "TF_CONFIG" not in os.environ


@pytest.mark.parametrize("replicas", [1, 2, 4, 8])
def test_scaling_recipe(replicas):
    batch, lr = contract.scaled(256, 1.2e-2, replicas)
    assert batch == 256 * replicas
    assert lr == pytest.approx(1.2e-2 * math.sqrt(replicas))


def test_gate_both_directions():
    up = contract.Gate("test_r2", 0.4, label="test R^2")
    assert up.passes(0.4) and not up.passes(0.39)
    assert up.failure(0.3) == "quality gate failed: test R^2 0.3000 < required 0.4000; nothing published"
    down = contract.Gate("test_mae", 50.0, higher_is_better=False)
    assert down.passes(49) and not down.passes(51)
    assert "test_mae 51.0000 > allowed 50.0000" in down.failure(51)


def test_run_from_env_reads_the_contract(tmp_path):
    env = {
        "TRAIN_MODEL_NAME": "fraud",
        "TRAIN_OUTPUT": f"file://{tmp_path}",
        "TRAIN_DATA": "s3://bucket/data.csv",
        "TRAIN_CHECKPOINT_DIR": str(tmp_path / "ckpt"),
        "TRAIN_EPOCHS": "7",
        "TRAIN_BATCH_SIZE": "64",
        "TRAIN_LEARNING_RATE": "0.01",
        "TRAIN_SEED": "3",
        "TRAIN_PARAMS": '{"hidden": 32}',
        "TRAIN_GATE_MIN": "0.8",
        "TRAIN_PUSHGATEWAY": "pushgateway:9091",
        "TRAIN_RUN_ID": "r1",
    }
    run = contract.Run.from_env("default-name", gate=contract.Gate("auc", 0.5), env=env)
    assert (run.model_name, run.output, run.data, run.pushgateway, run.run_id) == (
        "fraud",
        f"file://{tmp_path}",
        "s3://bucket/data.csv",
        "pushgateway:9091",
        "r1",
    )
    assert (run.epochs, run.batch_size, run.base_learning_rate, run.seed) == (7, 64, 0.01, 3)
    assert run.params == {"hidden": 32} and run.gate.threshold == 0.8 and run.gate.metric == "auc"
    assert run.checkpoint.uri == str(tmp_path / "ckpt") and run.checkpoint.writer


def test_run_from_env_defaults_are_the_codes():
    run = contract.Run.from_env("m", gate=contract.Gate("auc", 0.9), epochs=3, batch_size=16, learning_rate=0.5, env={})
    assert (run.epochs, run.batch_size, run.base_learning_rate, run.gate.threshold, run.checkpoint) == (3, 16, 0.5, 0.9, None)


def test_only_the_chief_writes_checkpoints():
    env = {"TRAIN_CHECKPOINT_DIR": "/x", "TRAIN_WORKERS": "2", "JOB_COMPLETION_INDEX": "1", "JOB_NAME": "j", "TRAIN_WORKER_SERVICE": "s"}
    run = contract.Run.from_env("m", gate=contract.Gate("auc", 0.9), env=env)
    assert not run.is_chief and not run.checkpoint.writer


BAD_ENV = [
    ({"TRAIN_PARAMS": "[1]"}, "TRAIN_PARAMS must be a JSON object, got list"),
    ({"TRAIN_PARAMS": "{"}, "TRAIN_PARAMS must be a JSON object:"),
    ({"TRAIN_EPOCHS": "0"}, "TRAIN_EPOCHS must be > 0, got 0"),
    ({"TRAIN_BATCH_SIZE": "x"}, "TRAIN_BATCH_SIZE must be an integer, got 'x'"),
    ({"TRAIN_GATE_MIN": "high"}, "TRAIN_GATE_MIN must be a number, got 'high'"),
]


@pytest.mark.parametrize("env,message", BAD_ENV, ids=[m for _, m in BAD_ENV])
def test_bad_contract_env_names_the_variable(env, message):
    with pytest.raises(contract.ContractError, match=message.replace("[", r"\[")):
        contract.Run.from_env("m", gate=contract.Gate("auc", 0.9), env=env)


def _runner(env, *args):
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env},
    )


def test_runner_defaults_to_the_mnist_trainer():
    proc = _runner({"TRAIN_ENTRYPOINT": ""}, "--help")
    assert proc.returncode == 0 and "--min-accuracy" in proc.stdout and "python -m training.train" in proc.stdout


@pytest.mark.parametrize("entry,message", [("models/nope/train.py", "no such file"), ("nope.train", "no such module")])
def test_runner_refuses_a_missing_entrypoint(entry, message):
    proc = _runner({"TRAIN_ENTRYPOINT": entry})
    assert proc.returncode == 2
    assert f"TRAIN_ENTRYPOINT={entry}: {message}" in proc.stderr


def test_signature_breaks_follow_the_servers_rule():
    """The same rule as the model server's hot-swap check (serving/codec.py incompatibilities)."""
    from training.contract import signature_breaks

    old = {"serving_default": {"inputs": {"image": ("float32", (None, 28, 28, 1))}, "outputs": {"output_0": ("float32", (None, 10))}}}

    def new(inputs=None, outputs=None):
        sig = old["serving_default"]
        return {"serving_default": {"inputs": inputs or sig["inputs"], "outputs": outputs or sig["outputs"]}}

    assert signature_breaks(old, old) == []
    assert signature_breaks(old, new(inputs={"image": ("float32", (None, None, None, 1))})) == []  # fixed -> any size: clients still fit
    assert signature_breaks(old, new(inputs={"keras_tensor_55": ("float32", (None, 28, 28, 1))})) == [
        "serving_default: inputs ['image'] became ['keras_tensor_55']"
    ]
    assert signature_breaks(old, new(inputs={"image": ("float16", (None, 28, 28, 1))})) == [
        "serving_default: input 'image' dtype float32 became float16"
    ]
    assert signature_breaks(old, new(outputs={"output_0": ("float32", (None, 3))})) == [
        "serving_default: output 'output_0' shape [None, 10] became [None, 3]"
    ]
    assert signature_breaks(old, {}) == ["signature 'serving_default' is gone"]


def test_allow_signature_change_from_the_contract_variable():
    Run, Gate, ContractError = contract.Run, contract.Gate, contract.ContractError
    run = Run.from_env("m", gate=Gate("acc", 0.5), env={"TRAIN_ALLOW_SIGNATURE_CHANGE": "1"})
    assert run.allow_signature_change is True
    assert Run.from_env("m", gate=Gate("acc", 0.5), env={}).allow_signature_change is False
    with pytest.raises(ContractError, match="TRAIN_ALLOW_SIGNATURE_CHANGE must be 1 or 0"):
        Run.from_env("m", gate=Gate("acc", 0.5), env={"TRAIN_ALLOW_SIGNATURE_CHANGE": "maybe"})


def test_a_platform_jobs_checkpoint_dir_must_be_keyed_by_its_uid(tmp_path):
    """A Job's checkpoint directory ends with its UID (components/models/training_job.py): one that does
    not, or a UID the pod could not read (no label: an empty value), would be a directory an earlier
    run could have guessed and filled; refused before any training. A local run names its own."""
    uid = "0f6c1d2e-7a4b-4c3d-9e8f-1a2b3c4d5e6f"
    env = {"TRAIN_OUTPUT": f"file://{tmp_path}", "TRAIN_CHECKPOINT_DIR": f"{tmp_path}/ckpt/mnist/{uid}", "JOB_UID": uid}
    assert contract.Run.from_env("m", gate=contract.Gate("auc", 0.5), env=env).checkpoint.uri.endswith(uid)
    for bad in ({"JOB_UID": ""}, {"TRAIN_CHECKPOINT_DIR": f"{tmp_path}/ckpt/mnist/train-mnist-28999999"}):
        with pytest.raises(contract.ContractError, match="not keyed by this Job's UID"):
            contract.Run.from_env("m", gate=contract.Gate("auc", 0.5), env={**env, **bad})
    local = {"TRAIN_OUTPUT": f"file://{tmp_path}", "TRAIN_CHECKPOINT_DIR": str(tmp_path / "mine")}
    assert contract.Run.from_env("m", gate=contract.Gate("auc", 0.5), env=local).checkpoint.uri == str(tmp_path / "mine")
