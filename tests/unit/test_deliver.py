"""The pipeline's delivery step (tools/deliver.py) against real local model stores: the copy, the pin,
the decision on the Rollout's outcome, the aliases after each outcome. pulumi and kubectl are the only
stand-ins (a scripted runner: their answers are what the step reads)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tools import deliver
from training import registry

V1, V2 = "20260101T000000Z-run1", "20260102T000000Z-run2"


def publish(tmp_path: Path, root: str, version: str, champion: bool = True) -> None:
    d = tmp_path / f"src-{version}-{abs(hash(root))}"
    (d / "saved_model").mkdir(parents=True)
    (d / "saved_model" / "saved_model.pb").write_bytes(b"pb" + version.encode())
    (d / "model.keras").write_bytes(b"k" + version.encode())
    (d / "metadata.json").write_text(json.dumps({"version": version}))
    registry.publish(d, root, "mnist", version, reason="trained", champion=champion)


class Cluster:
    """Answers pulumi/kubectl as the step calls them; the Rollout ends ``outcome`` once pinned."""

    def __init__(self, stores: dict[str, str], outcome: str):
        self.stores, self.outcome, self.pins, self.ups = stores, outcome, [], 0
        self.pinned: str | None = None

    def __call__(self, cmd: list[str]) -> str:
        if cmd[:3] == ["pulumi", "stack", "output"]:
            return self.stores[cmd[-1]] + "\n"
        if cmd[:3] == ["pulumi", "config", "set"]:
            assert cmd[4] == "mlplatform:models.mnist.serving.version"
            self.pinned = cmd[5]
            self.pins.append(cmd[5])
            return ""
        if cmd[:2] == ["pulumi", "up"]:
            assert "--policy-pack" in cmd
            self.ups += 1
            return ""
        if cmd[-4:-2] == ["rollout", "model-server-mnist"]:
            degraded = self.outcome == "Degraded"
            status = {"phase": self.outcome, "message": "RolloutAborted: metric class-mix assessed Failed" if degraded else ""}
            status |= {"abort": True} if degraded else {"stableRS": "h2", "currentPodHash": "h2"}
            return json.dumps(
                {"spec": {"template": {"metadata": {"annotations": {"mlplatform.io/model-version": self.pinned}}}}, "status": status}
            )
        if cmd[-3:-2] == ["analysisrun"]:
            run = {
                "metadata": {"name": "model-server-mnist-h2-2"},
                "status": {"metricResults": [{"name": "class-mix", "phase": "Failed", "measurements": [{"value": "[0.38]"}]}]},
            }
            return json.dumps({"items": [run]})
        raise AssertionError(f"unexpected command {cmd}")


@pytest.fixture
def stacks(tmp_path):
    d = tmp_path / "stacks"
    d.mkdir()
    (d / "Pulumi.staging.yaml").write_text(yaml.safe_dump({"config": {"mlplatform:models": {"mnist": {"training": {"epochs": 3}}}}}))
    (d / "Pulumi.prod.yaml").write_text(yaml.safe_dump({"config": {"mlplatform:models": {"mnist": {"source": {"stack": "staging"}}}}}))
    stores = {"staging": f"file://{tmp_path}/staging", "prod": f"file://{tmp_path}/prod"}
    publish(tmp_path, stores["staging"], V1)
    publish(tmp_path, stores["prod"], V1)  # prod serves V1
    publish(tmp_path, stores["staging"], V2)  # staging validated V2
    return d, stores


def test_a_passing_canary_makes_the_copied_version_the_champion(stacks, capsys):
    d, stores = stacks
    cluster = Cluster(stores, "Healthy")
    assert deliver.deliver("prod", "mnist", cluster, timeout_s=5, poll_s=0, stacks_dir=d) == 0
    assert cluster.pins == [V2] and cluster.ups == 1
    assert registry.get_alias(stores["prod"], "mnist", "champion")["version"] == V2
    registry.verify(stores["prod"], "mnist", V2)  # the exact bytes staging validated
    assert registry.read_manifest(stores["prod"], "mnist", V2)["files"] == registry.read_manifest(stores["staging"], "mnist", V2)["files"]
    assert "is the champion" in capsys.readouterr().out


def test_an_aborted_canary_rejects_the_version_restores_the_pin_and_fails(stacks, capsys):
    d, stores = stacks
    cluster = Cluster(stores, "Degraded")
    assert deliver.deliver("prod", "mnist", cluster, timeout_s=5, poll_s=0, stacks_dir=d) == 1
    assert cluster.pins == [V2, V1] and cluster.ups == 2  # canary, then the desired state back on the champion
    assert registry.get_alias(stores["prod"], "mnist", "champion")["version"] == V1  # aliases where they started
    assert "class-mix Failed (last value [0.38])" in registry.rejection(stores["prod"], "mnist", V2)["reason"]
    err = capsys.readouterr().err
    assert "canary aborted on prod: class-mix Failed (last value [0.38])" in err and "stays on " + V1 in err
    # The next run does not retry it: it only re-pins the champion.
    again = Cluster(stores, "Healthy")
    assert deliver.deliver("prod", "mnist", again, timeout_s=5, poll_s=0, stacks_dir=d) == 0
    assert again.pins == [V1] and "was rejected in prod" in capsys.readouterr().out


def test_a_stack_that_trains_delivers_its_own_candidate(tmp_path, stacks):
    d, stores = stacks
    publish(tmp_path, stores["staging"], "20260103T000000Z-run3", champion=False)  # a scheduled retrain: candidate only
    assert registry.get_alias(stores["staging"], "mnist", "champion")["version"] == V2
    cluster = Cluster(stores, "Healthy")
    assert deliver.deliver("staging", "mnist", cluster, timeout_s=5, poll_s=0, stacks_dir=d) == 0
    assert cluster.pins == ["20260103T000000Z-run3"]
    assert registry.get_alias(stores["staging"], "mnist", "champion")["version"] == "20260103T000000Z-run3"


def test_nothing_new_only_pins_the_champion(stacks):
    d, stores = stacks
    registry.promote_between(stores["staging"], stores["prod"], "mnist", V2, reason="earlier run")
    cluster = Cluster(stores, "Degraded")  # would fail if a canary ran
    assert deliver.deliver("prod", "mnist", cluster, timeout_s=5, poll_s=0, stacks_dir=d) == 0
    assert cluster.pins == [V2]


def test_pin_champions_keeps_what_serves_across_an_unrelated_up(stacks):
    d, stores = stacks
    cluster = Cluster(stores, "Healthy")
    deliver.pin_champions("prod", cluster, d)
    assert cluster.pins == [V1] and cluster.ups == 0  # pinned for the coming `pulumi up`, nothing deployed here


def test_a_stacks_first_version_becomes_champion_without_a_canary(tmp_path, stacks):
    d, stores = stacks
    stores["prod"] = f"file://{tmp_path}/empty-prod"  # a new prod store: nothing served yet
    cluster = Cluster(stores, "Degraded")  # no canary may run (it would fail here)
    assert deliver.deliver("prod", "mnist", cluster, timeout_s=5, poll_s=0, stacks_dir=d) == 0
    assert cluster.pins == [V2] and registry.get_alias(stores["prod"], "mnist", "champion")["version"] == V2


def test_an_unknown_model_is_a_one_line_error(stacks):
    d, _ = stacks
    with pytest.raises(deliver.DeliveryError, match="stacks/Pulumi.prod.yaml: no model 'fraud'"):
        deliver.source_stack("prod", "fraud", d)
