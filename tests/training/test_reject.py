"""A failed canary rejects its version (issue 15 item 4): the mark is written once, the aliases stay
where they were, and the rejected version can never become champion or candidate again - so the next
pipeline run (which pins the champion) does not retry it. Promotion between stores can stop at the
candidate, leaving the champion to the target's canary.

Issue 23: a rollback rejects the version it leaves and moves the candidate off it, and a second one
goes further back; rejecting the champion rolls it back (or refuses, saying how); a version rejected
at the source is never copied to another store. On the local store and on S3 (moto)."""

from __future__ import annotations

import pytest

from ops import models
from tests.training.test_models_cli import _publish, cli
from training import registry, storage

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
    """TRAIN_PUBLISH_AS=candidate (set on every training Job and CronJob): scheduled retraining publishes
    a version and moves no alias (its role may not: issue 24 item 8); the pipeline adopts it as the
    candidate (registry.adopt, ops/deliver.py), and only a passed canary makes it the champion."""
    from training import contract

    env = {"TRAIN_OUTPUT": store, "TRAIN_MODEL_NAME": "mnist", "TRAIN_PUBLISH_AS": "candidate", "TRAIN_RUN_ID": "nightly-3"}
    run = contract.Run.from_env("mnist", gate=contract.Gate("auc", 0.5), env=env)

    def write(d):
        (d / "saved_model").mkdir()
        (d / "saved_model" / "saved_model.pb").write_bytes(b"pb-nightly")
        (d / "model.keras").write_bytes(b"k-nightly")

    before = registry.aliases(store, "mnist")
    assert run.gate_passes({"auc": 0.9})
    run.publish(write, {"auc": 0.9})
    assert registry.aliases(store, "mnist") == before  # the run moved nothing
    (new,) = [v for v in registry.versions(store, "mnist") if "nightly-3" in v]
    assert registry.adopt(store, "mnist", champion=False, reason="pipeline: candidate for the canary")["version"] == new
    aliases = registry.aliases(store, "mnist")
    assert aliases["champion"]["version"] == V1 and registry.latest(store, "mnist") == V1
    assert aliases["candidate"]["version"] == new
    with pytest.raises(contract.ContractError, match="TRAIN_PUBLISH_AS must be 'candidate' or 'champion'"):
        contract.Run.from_env("mnist", gate=contract.Gate("auc", 0.5), env={"TRAIN_PUBLISH_AS": "prod"})


# ---- issue 23 items 4 and 8: rollbacks stick, rejections are visible and final ----

V3 = "20260103T000000Z-run3"


@pytest.fixture(params=["s3", "file"])
def chain(request, tmp_path):
    """A store whose champion went V1 -> V2 -> V3 (each published by training: candidate, champion)."""
    if request.param == "s3":
        root = f"s3://{request.getfixturevalue('s3_bucket')}/store"
    else:
        root = f"file://{tmp_path}/store"
    for version in (V1, V2, V3):
        _publish(tmp_path, root, version)
    return root


def _champion(root):
    return registry.get_alias(root, "mnist", "champion")["version"]


def test_a_rollback_rejects_the_version_it_leaves_audits_it_and_moves_the_candidate(chain, monkeypatch):
    monkeypatch.setenv("MLPLATFORM_ACTOR", "alice")
    doc = registry.rollback(chain, "mnist", reason="p99 doubled")
    assert (doc["from"], doc["version"]) == (V3, V2) and _champion(chain) == V2 and registry.latest(chain, "mnist") == V2
    mark = registry.rejection(chain, "mnist", V3)
    assert mark["reason"] == "rolled back: p99 doubled" and mark["by"] == "alice" and mark["at"] > 1.7e9
    assert registry.rejections(chain, "mnist") == {V3: mark}
    cand = registry.get_alias(chain, "mnist", "candidate")
    assert cand["version"] == V2 and cand["from"] == V3 and cand["by"] == "alice"
    moves = [r for r in registry.history(chain, "mnist") if r["alias"] in ("champion", "candidate")]
    assert [(r["alias"], r["from"], r["version"], r["reason"]) for r in moves[-2:]] == [
        ("champion", V3, V2, f"rollback from {V3}: p99 doubled"),
        ("candidate", V3, V2, f"rollback from {V3}: p99 doubled"),
    ]
    # the next pipeline run finds nothing new to canary, and nothing can bring V3 back
    with pytest.raises(registry.Rejected, match=f"{V3} was rejected \\(rolled back: p99 doubled, by alice at "):
        registry.move(chain, "mnist", "champion", V3, reason="retry")


def test_a_second_rollback_goes_further_back_never_forward(chain):
    registry.rollback(chain, "mnist", reason="first")
    assert registry.get_alias(chain, "mnist", "previous")["version"] == V3  # what the champion replaced: not a target
    doc = registry.rollback(chain, "mnist", reason="second")
    assert (doc["from"], doc["version"]) == (V2, V1) and _champion(chain) == V1
    assert set(registry.rejections(chain, "mnist")) == {V2, V3}
    assert registry.get_alias(chain, "mnist", "candidate")["version"] == V1
    with pytest.raises(registry.RegistryError, match=f"no previous version recorded to roll back to from {V1} .*name one with --to"):
        registry.rollback(chain, "mnist", reason="third")
    assert _champion(chain) == V1 and registry.rejection(chain, "mnist", V1) is None  # a refused rollback changes nothing


def test_a_rollback_to_a_rejected_version_is_refused_and_changes_nothing(chain):
    registry.reject(chain, "mnist", V1, reason="bad data")
    before = registry.aliases(chain, "mnist")
    with pytest.raises(registry.Rejected, match=f"{V1} was rejected \\(bad data, .*cannot roll back to it; nothing changed"):
        registry.rollback(chain, "mnist", to=V1, reason="x")
    assert registry.aliases(chain, "mnist") == before and registry.rejection(chain, "mnist", V3) is None


def test_an_interrupted_rollback_finishes_when_run_again(chain, monkeypatch):
    """The rejection is written before the champion moves: a rollback that dies in between is run
    again and goes where the first one was going, not one version further back."""
    real_move = registry.move

    def dies(root, name, alias, *a, **kw):
        raise ConnectionError("pod evicted")

    monkeypatch.setattr(registry, "move", dies)
    with pytest.raises(ConnectionError):
        registry.rollback(chain, "mnist", reason="p99")
    monkeypatch.setattr(registry, "move", real_move)
    assert _champion(chain) == V3 and registry.rejection(chain, "mnist", V3)["reason"] == "rolled back: p99"
    assert registry.rollback(chain, "mnist", reason="p99")["version"] == V2


def test_served_as_champion_comes_from_the_audit_history(chain, tmp_path):
    registry.rollback(chain, "mnist", reason="x")
    assert registry.champions(chain, "mnist") == [V1, V2, V3, V2]
    assert all(registry.served_as_champion(chain, "mnist", v) for v in (V1, V2, V3))
    registry.add_version(tmp_path / f"src-{V3}", chain, "mnist", "20260104T000000Z-never")
    assert not registry.served_as_champion(chain, "mnist", "20260104T000000Z-never")


def test_rejecting_the_champion_rolls_back_to_the_previous_good_version(chain):
    registry.reject(chain, "mnist", V2, reason="leaks PII")
    mark = registry.reject(chain, "mnist", V3, reason="wrong labels")
    assert mark["reason"] == "wrong labels" and _champion(chain) == V1  # V2 is rejected: skipped
    assert registry.latest(chain, "mnist") == V1 and registry.get_alias(chain, "mnist", "candidate")["version"] == V1
    assert registry.history(chain, "mnist", "champion")[-1]["reason"] == f"rollback from {V3}: wrong labels"


def test_rejecting_the_champion_with_no_good_version_left_is_refused_saying_how(chain):
    registry.reject(chain, "mnist", V1, reason="a")
    registry.reject(chain, "mnist", V2, reason="b")
    with pytest.raises(
        registry.RegistryError,
        match=f"{V3} is the champion and no earlier champion .*nothing changed; name one: python -m ops.models rollback",
    ):
        registry.reject(chain, "mnist", V3, reason="c")
    assert _champion(chain) == V3 and registry.rejection(chain, "mnist", V3) is None


def test_a_version_rejected_at_the_source_cannot_be_promoted_to_another_store(chain, tmp_path):
    target = f"file://{tmp_path}/prod"
    registry.reject(chain, "mnist", V2, reason="canary aborted on staging")
    for call in (
        lambda: registry.promote_between(chain, target, "mnist", V2, reason="to prod"),
        lambda: registry.promote_between(chain, target, "mnist", V2, reason="to prod", champion=False),
        lambda: registry.copy_version(chain, target, "mnist", V2),
    ):
        with pytest.raises(
            registry.Rejected, match=f"{V2} was rejected in {chain} \\(canary aborted on staging, by .*not promoted to {target}"
        ):
            call()
    assert storage.list_names(target) == []
    registry.rollback(chain, "mnist", reason="x")  # V3 -> V1 (V2 is rejected): V3 is rejected too
    with pytest.raises(registry.Rejected, match=f"{V3} was rejected in"):
        registry.promote_between(chain, target, "mnist", V3, reason="to prod")
    assert registry.promote_between(chain, target, "mnist", reason="to prod")["version"] == V1  # the champion (V1) travels


def test_cli_a_version_rejected_at_the_source_is_refused_in_one_line(store, tmp_path):
    registry.reject(store, "mnist", V2, reason="canary aborted")
    out = cli("promote", "--from", store, "--to", f"file://{tmp_path}/prod", "--model", "mnist", V2, "--reason", "x")
    assert out.returncode == models.EXIT_ERROR and len(out.stderr.strip().splitlines()) == 1
    assert out.stderr.startswith(f"models: error: mnist/{V2} was rejected in {store} (canary aborted, by ")
    assert storage.list_names(f"file://{tmp_path}/prod") == []
