"""The pipeline adopts what a stack's own runs published (issue 24 item 8): a training Job or CronJob
adds a version only (its role may not move an alias), and ``deliver``'s first step on a stack that
trains makes the newest gated, unrejected version the candidate (the canary then decides), or, on a
stack without canaries, the champion (LATEST following). Real local stores; pulumi and kubectl scripted
(tests/unit/test_deliver.py's Cluster)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ops import deliver
from tests.unit.test_deliver import V1, V2, Cluster, stacks  # noqa: F401 (stacks: the fixture)
from training import registry

V3, V4 = "20260103T000000Z-nightly3", "20260104T000000Z-nightly4"


def job_publishes(tmp_path: Path, root: str, version: str, passed: bool) -> None:
    """What the training Job does: the version and its gate verdict, no alias."""
    d = tmp_path / f"job-{version}"
    (d / "saved_model").mkdir(parents=True)
    (d / "saved_model" / "saved_model.pb").write_bytes(b"pb" + version.encode())
    (d / "model.keras").write_bytes(b"k" + version.encode())
    (d / "metadata.json").write_text(json.dumps({"version": version, "gate": {"metric": "test_accuracy", "passed": passed}}))
    registry.publish(d, root, "mnist", version, reason="trained", adopt=False)


def test_deliver_adopts_the_runs_gated_version_then_canaries_it(tmp_path, stacks, capsys):  # noqa: F811
    d, stores = stacks
    job_publishes(tmp_path, stores["staging"], V3, passed=True)  # a scheduled run no pipeline watched
    job_publishes(tmp_path, stores["staging"], V4, passed=False)  # a forged or stray version: no passing gate
    assert registry.get_alias(stores["staging"], "mnist", "candidate")["version"] == V2  # the runs moved nothing
    cluster = Cluster(stores, "Healthy", serving=V2)
    assert deliver.deliver("staging", "mnist", cluster, timeout_s=5, poll_s=0, stacks_dir=d) == deliver.DELIVERED
    assert cluster.pins == [V3]  # the canary ran on the adopted version
    cand = registry.get_alias(stores["staging"], "mnist", "candidate")
    assert cand["version"] == V3 and cand["reason"] == "pipeline: adopted on staging"
    assert registry.get_alias(stores["staging"], "mnist", "champion")["version"] == V3  # the passed canary moved it
    assert registry.latest(stores["staging"], "mnist") == V3


def test_without_canaries_the_adopted_version_is_the_champion_at_once(tmp_path, stacks):  # noqa: F811
    d, stores = stacks
    cfg = yaml.safe_load((d / "Pulumi.staging.yaml").read_text())
    cfg["config"]["mlplatform:monitoring"] = {"enabled": False}
    (d / "Pulumi.staging.yaml").write_text(yaml.safe_dump(cfg))
    assert not deliver.canaries("staging", d) and deliver.canaries("prod", d)
    job_publishes(tmp_path, stores["staging"], V3, passed=True)
    cluster = Cluster(stores, "Failed", serving=V2)  # a canary would fail: none runs
    assert deliver.deliver("staging", "mnist", cluster, timeout_s=5, poll_s=0, stacks_dir=d) == deliver.DELIVERED
    assert registry.get_alias(stores["staging"], "mnist", "champion")["version"] == V3
    assert registry.latest(stores["staging"], "mnist") == V3 and cluster.pins == [V3]


def test_a_stack_that_receives_adopts_nothing_of_its_own(tmp_path, stacks):  # noqa: F811
    """Prod trains nothing: a version that appeared in its store is not adopted, staging's champion is copied."""
    d, stores = stacks
    job_publishes(tmp_path, stores["prod"], V3, passed=True)
    cluster = Cluster(stores, "Healthy", serving=V1)
    assert deliver.deliver("prod", "mnist", cluster, timeout_s=5, poll_s=0, stacks_dir=d) == deliver.DELIVERED
    assert cluster.pins == [V2] and registry.get_alias(stores["prod"], "mnist", "champion")["version"] == V2
