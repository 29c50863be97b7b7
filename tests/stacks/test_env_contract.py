"""The environment contract between the components and the workloads: every SERVING_*/TRAIN_*
variable a stack gives a container is one the workload's own parser reads, with a value it accepts
(serving defaults live in ServingConfig, the server's flags and its settings: this keeps them joined)."""

from __future__ import annotations

from components.config import ServingConfig, TrainingConfig
from components.models.model_service import server_env
from components.models.training_job import train_env
from tests.conftest import trains


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def serving_envs(result):
    return [
        _env(c)
        for d in result.of_type("kubernetes:apps/v1:Deployment") + result.of_type("kubernetes:argoproj.io/v1alpha1:Rollout")
        if d.raw["metadata"]["name"].startswith("model-server-")
        for c in d.raw["spec"]["template"]["spec"]["containers"]
    ]


def training_envs(result):
    # training runs only (train-<model>-<hash>); an LLM's import Job (import-<model>-...) runs llm/importer.py
    jobs = [j for j in result.of_type("kubernetes:batch/v1:Job") if j.raw["metadata"]["name"].startswith("train-")]
    return [_env(c) for j in jobs for c in j.raw["spec"]["template"]["spec"]["containers"]]


def check_serving(env: dict[str, str]) -> None:
    from serving import cli

    ours = {k: v for k, v in env.items() if k.startswith("SERVING_")}
    accepted = set(cli.parser({}).get_default("env_names"))
    assert sorted(set(ours) - accepted) == [], f"the server reads none of these: {sorted(set(ours) - accepted)}"
    args = cli.parser(ours).parse_args([])  # a value the server cannot convert fails here (argparse exits)
    for name, value in ours.items():
        dest = name.removeprefix("SERVING_").lower()
        if getattr(args, dest, None) is not None:
            parsed = getattr(args, dest)
            assert parsed == type(parsed)(value), name  # read as given, not replaced by a default


def training_accepted() -> set[str]:
    """TRAIN_<FLAG> of the MNIST trainer (the default entrypoint) and every TRAIN_* the contract
    library reads for user code (training/contract.py, training/cluster.py, training/__main__.py)."""
    import re
    from pathlib import Path

    from training.train import parser

    flags = {"TRAIN_" + a.dest.upper() for a in parser()._actions if a.option_strings and a.dest != "help"}
    root = Path(__file__).resolve().parents[2] / "training"
    library = {m for f in ("contract.py", "cluster.py", "__main__.py") for m in re.findall(r'"(TRAIN_[A-Z_]+)"', (root / f).read_text())}
    return flags | library


def check_training(env: dict[str, str], monkeypatch) -> None:
    from training import train

    ours = {k: v for k, v in env.items() if k.startswith("TRAIN_")}
    unknown = sorted(set(ours) - training_accepted())
    assert unknown == [], f"the trainer reads none of these: {unknown}"
    for k, v in ours.items():
        monkeypatch.setenv(k, v)
    args = train.parser().parse_args([])  # choices (arch) and types (epochs, accuracy) are checked here
    assert args.model_name == env["TRAIN_MODEL_NAME"] and str(args.epochs) == env["TRAIN_EPOCHS"]


def test_serving_env_on_every_stack_is_read_by_the_server(result):
    envs = serving_envs(result)
    assert envs
    for env in envs:
        check_serving(env)


def test_every_serving_option_is_read_by_the_server():
    """Including the ones no stack sets today (the API-key file)."""
    cfg = ServingConfig(apiKey=True, maxBatchSize=8, batchTimeoutMs=1.5, maxQueue=10, processes=3)
    env = {e["name"]: e["value"] for e in server_env("fraud", cfg, "s3://bucket")}
    assert "SERVING_API_KEYS_FILE" in env and env["SERVING_METRICS_PORT"] == "9091" and env["SERVING_WORKERS"] == "3"
    check_serving(env)
    auto = {e["name"]: e["value"] for e in server_env("fraud", ServingConfig(processes="auto"), "s3://bucket")}
    assert auto["SERVING_WORKERS"] == "auto"
    check_serving(auto)
    default = {e["name"]: e["value"] for e in server_env("fraud", ServingConfig(), "s3://bucket")}
    assert default["SERVING_WORKERS"] == "auto"  # the default: one process per CPU of the limit
    assert "SERVING_WORKERS" not in {e["name"] for e in server_env("fraud", ServingConfig(processes=1), "s3://bucket")}


def test_training_env_on_every_stack_is_read_by_the_trainer(result, monkeypatch):
    envs = training_envs(result)
    if not trains(result.stack):  # prod receives its models: no training pod
        assert envs == []
        return
    assert envs
    for env in envs:
        check_training(env, monkeypatch)


def test_every_training_option_is_read_by_the_trainer(monkeypatch):
    cfg = TrainingConfig(batchSize=64, championMargin=0.01, dataUri="s3://bucket/mnist.npz", epochs=2)
    env = {e["name"]: e["value"] for e in train_env("mnist", cfg, "s3://bucket", "pushgateway:9091") if "value" in e}
    assert {"TRAIN_BATCH_SIZE", "TRAIN_CHAMPION_MARGIN", "TRAIN_DATA", "TRAIN_PUSHGATEWAY"} <= env.keys()
    check_training(env, monkeypatch)


def test_an_unknown_variable_is_caught(monkeypatch):
    """The check is not vacuous: a variable no parser reads fails it."""
    import pytest

    with pytest.raises(AssertionError, match="SERVING_MAX_BATCH"):
        check_serving({"SERVING_MAX_BATCH": "8"})
    with pytest.raises(AssertionError, match="TRAIN_EPOCH"):
        check_training({"TRAIN_EPOCH": "3", "TRAIN_MODEL_NAME": "m", "TRAIN_EPOCHS": "3"}, monkeypatch)
