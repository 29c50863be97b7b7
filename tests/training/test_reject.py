"""A failed canary rejects its version (issue 15 item 4): the mark is written once, the aliases stay
where they were, and the rejected version can never become champion or candidate again - so the next
pipeline run (which pins the champion) does not retry it. Promotion between stores can stop at the
candidate, leaving the champion to the target's canary."""

from __future__ import annotations

import pytest

from ops import models
from tests.training.test_models_cli import _publish, cli
from training import registry

V1, V2 = "20260101T000000Z-run1", "20260102T000000Z-run2"


@pytest.fixture
def store(tmp_path):
    root = f"file://{tmp_path}/store"
    _publish(tmp_path, root, V1)  # V1: champion
    _publish(tmp_path, f"file://{tmp_path}/elsewhere", V2)  # V2's files, added below as a version only
    registry.add_version(tmp_path / f"src-{V2}", root, "mnist", V2)
    return root


def test_a_rejected_version_never_becomes_champion_or_candidate(store):
    before = registry.aliases(store, "mnist")
    doc = registry.reject(store, "mnist", V2, reason="canary: class-mix PSI 0.38 > 0.2")
    assert doc["version"] == V2 and registry.rejection(store, "mnist", V2)["reason"] == "canary: class-mix PSI 0.38 > 0.2"
    assert registry.aliases(store, "mnist") == before  # nothing moved
    for alias in ("champion", "candidate"):
        with pytest.raises(registry.RegistryError, match=f"was rejected .*cannot become {alias}; nothing changed"):
            registry.move(store, "mnist", alias, V2, reason="retry")
    assert registry.aliases(store, "mnist") == before
    # The first record stands; rejecting again changes nothing.
    assert registry.reject(store, "mnist", V2, reason="again")["reason"] == "canary: class-mix PSI 0.38 > 0.2"


def test_rejecting_needs_a_reason_and_an_existing_version(store):
    with pytest.raises(registry.RegistryError, match="reason is required"):
        registry.reject(store, "mnist", V1, reason=" ")
    with pytest.raises(registry.RegistryError):
        registry.reject(store, "mnist", "v404", reason="x")


def test_promotion_between_stores_can_stop_at_the_candidate(tmp_path, store):
    target = f"file://{tmp_path}/prod"
    doc = registry.promote_between(store, target, "mnist", V1, reason="to prod", champion=False)
    assert doc["alias"] == "candidate" and doc["version"] == V1
    assert registry.get_alias(target, "mnist", "champion") is None  # the canary decides


def test_cli_reject_then_promote_is_refused_in_one_line(store):
    out = cli("--store", store, "reject", "--model", "mnist", V2, "--reason", "canary aborted: latency-p99 9.95 > 1.5")
    assert out.returncode == models.EXIT_OK, out.stderr
    assert out.stdout.strip() == f"mnist/{V2} rejected (canary aborted: latency-p99 9.95 > 1.5); champion stays {V1}"
    out = cli("--store", store, "promote", "--model", "mnist", V2, "--reason", "retry")
    assert out.returncode == models.EXIT_ERROR
    assert len(out.stderr.strip().splitlines()) == 1 and "was rejected" in out.stderr
    assert registry.get_alias(store, "mnist", "champion")["version"] == V1


def test_a_run_told_to_publish_a_candidate_never_moves_the_champion(store):
    """TRAIN_PUBLISH_AS=candidate (set on every training Job and CronJob of a stack with canaries):
    scheduled retraining produces a candidate; only a passed canary makes it the champion."""
    from training import contract

    env = {"TRAIN_OUTPUT": store, "TRAIN_MODEL_NAME": "mnist", "TRAIN_PUBLISH_AS": "candidate", "TRAIN_RUN_ID": "nightly-3"}
    run = contract.Run.from_env("mnist", gate=contract.Gate("auc", 0.5), env=env)

    def write(d):
        (d / "saved_model").mkdir()
        (d / "saved_model" / "saved_model.pb").write_bytes(b"pb-nightly")
        (d / "model.keras").write_bytes(b"k-nightly")

    run.publish(write, {"auc": 0.9})
    aliases = registry.aliases(store, "mnist")
    assert aliases["champion"]["version"] == V1 and registry.latest(store, "mnist") == V1
    assert aliases["candidate"]["version"] not in (V1, V2) and "nightly-3" in aliases["candidate"]["version"]
    with pytest.raises(contract.ContractError, match="TRAIN_PUBLISH_AS must be 'candidate' or 'champion'"):
        contract.Run.from_env("mnist", gate=contract.Gate("auc", 0.5), env={"TRAIN_PUBLISH_AS": "prod"})
