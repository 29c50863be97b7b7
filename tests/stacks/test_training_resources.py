"""`models.<name>.training.resources` (issue 27): a training worker's requests and limits are a stack
setting (a laptop's kind stack can ask for less than 1 CPU / 4Gi), checked against the queue's quota and
against their own limits before any resource exists."""

from __future__ import annotations

import copy

import pytest
import yaml

from components.config import ConfigError, TrainingConfig
from tests.conftest import ROOT
from tools import mock_engine

LOCAL = yaml.safe_load((ROOT / "stacks" / "Pulumi.local.yaml").read_text())["config"]


def _local_with(training: dict, **top) -> dict:
    cfg = copy.deepcopy(LOCAL)
    cfg["mlplatform:models"]["mnist"].setdefault("training", {}).update(training)
    cfg.update(top)
    return cfg


def _mnist_job_resources(result) -> dict:
    (job,) = [r.raw for r in result.of_type("kubernetes:batch/v1:Job") if r.raw["metadata"]["labels"].get("mlplatform.io/model") == "mnist"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container["resources"]


def test_the_default_is_one_cpu_and_4gi_requested():
    assert TrainingConfig().resources.model_dump() == {
        "requests": {"cpu": "1", "memory": "4Gi"},
        "limits": {"cpu": "4", "memory": "8Gi"},
    }


def test_the_stack_setting_reaches_the_training_pod():
    small = {"requests": {"cpu": "500m", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "3Gi"}}
    assert _mnist_job_resources(mock_engine.run("local")) == TrainingConfig().resources.model_dump()
    assert _mnist_job_resources(mock_engine.run("local", overrides=_local_with({"resources": small}))) == small


@pytest.mark.parametrize(
    "training, top, key, expect",
    [
        (
            {"resources": {"requests": {"cpu": "3", "memory": "4Gi"}, "limits": {"cpu": "2", "memory": "8Gi"}}},
            {},
            "training.resources.requests.cpu",
            "3 is more than the limit (2)",
        ),
        (
            {"resources": {"requests": {"cpu": "1", "memory": "9Gi"}}},
            {},
            "training.resources.requests.memory",
            "9Gi is more than the limit (8Gi)",
        ),
        (
            {"resources": {"requests": {"cpu": "1", "memory": "4Gi"}}, "workers": 3},
            {"mlplatform:queue": {"memory": "8Gi"}},
            "training.workers",
            "3 workers request 12288Mi of memory, more than queue.memory (8Gi): it would wait forever",
        ),
    ],
    ids=["cpu-over-limit", "memory-over-limit", "memory-over-queue"],
)
def test_resources_beyond_their_limits_or_the_queue_are_one_line(training, top, key, expect):
    with pytest.raises(ConfigError) as info:
        mock_engine.run("local", overrides=_local_with(training, **top))
    message = str(info.value)
    assert f"stacks/Pulumi.local.yaml: mlplatform:models.mnist.{key}: {expect}" in message, message
    assert message.count("\n") == 0 or all(line.startswith("stacks/Pulumi.local.yaml: ") for line in message.splitlines())


def test_resources_do_not_rename_the_run():
    """A run's name hashes what changes what it produces: resources do not (adding the key renamed,
    so reran, no stack's Job)."""
    from components.models.training_job import run_name

    small = {"requests": {"cpu": "500m", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "3Gi"}}
    assert run_name("mnist", "img:1", TrainingConfig(resources=small)) == run_name("mnist", "img:1", TrainingConfig())
    assert run_name("mnist", "img:1", TrainingConfig(epochs=3)) != run_name("mnist", "img:1", TrainingConfig())
