"""ops.ephemeral against a fake `pulumi` on PATH (the Automation API shells out to it), plus the TTL logic
and the teardown that never orphans (issue 23 item 6): retried destroys, no `stack rm` after a failed one."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import types
from pathlib import Path

import pytest
import yaml

from ops import ephemeral

FAKE = Path(__file__).parent / "fake_bin"
NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def fake_pulumi(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{FAKE}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_PULUMI_LOG", str(tmp_path / "calls.jsonl"))
    monkeypatch.setenv("FAKE_PULUMI_STATE", str(tmp_path / "state.json"))
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "test")
    # PR stack files go to a copy of stacks/, never into the folder parallel test workers read.
    stacks = tmp_path / "stacks"
    shutil.copytree(ephemeral.ROOT / "stacks", stacks)
    monkeypatch.setenv("MLPLATFORM_STACKS_DIR", str(stacks))

    def calls():
        return [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]

    def state(stacks):
        (tmp_path / "state.json").write_text(json.dumps({"stacks": stacks}))

    yield calls, state


def test_ttl_logic():
    assert ephemeral.expires_at(NOW, 24) == "2026-11-27T12:00:00Z"
    assert not ephemeral.expired({ephemeral.TAG: "2026-11-27T12:00:00Z"}, NOW)
    assert ephemeral.expired({ephemeral.TAG: "2026-11-26T11:59:59Z"}, NOW)
    assert ephemeral.expired({}, NOW)  # no expiry: reaped
    assert ephemeral.expired({ephemeral.TAG: "tomorrow"}, NOW)  # unreadable: reaped


def test_ephemeral_config_from_dev():
    dev = yaml.safe_load((ephemeral.ROOT / "stacks" / "Pulumi.dev.yaml").read_text())["config"]
    cfg = ephemeral.ephemeral_config(dev)
    assert cfg["mlplatform:environment"] == "ephemeral"
    assert cfg["mlplatform:jenkins"]["enabled"] is False
    assert all(p["min"] == 0 and p["max"] <= 1 for p in cfg["mlplatform:gpuPools"])
    assert cfg["mlplatform:cluster"] == dev["mlplatform:cluster"]
    # no LLM on a PR stack: it would take the one GPU node from training (and cost a node per PR)
    assert any(m.get("runtime") == "vllm" for m in dev["mlplatform:models"].values())
    assert not any(m.get("runtime") == "vllm" for m in cfg["mlplatform:models"].values())


def test_ephemeral_config_drops_the_ci_deploy_role():
    """The documented `ci` deploy role, turned on in dev, must not break every PR stack: validation
    refuses it on an ephemeral stack, so the copy drops it."""
    from components.config import ConfigError, validate

    dev = yaml.safe_load((ephemeral.ROOT / "stacks" / "Pulumi.dev.yaml").read_text())["config"]
    dev["mlplatform:ci"] = {
        "githubRepo": "acme/mlplatform",
        "githubOidcProvider": "arn:aws:iam::123456789012:oidc-provider/token.actions.githubusercontent.com",
    }
    assert (
        validate({k.removeprefix("mlplatform:"): v for k, v in dev.items()}, "stacks/Pulumi.dev.yaml").ci.github_repo == "acme/mlplatform"
    )
    with pytest.raises(ConfigError, match="ci"):
        validate(
            {k.removeprefix("mlplatform:"): v for k, v in {**dev, "mlplatform:environment": "ephemeral"}.items()}, "stacks/Pulumi.pr-1.yaml"
        )
    cfg = ephemeral.ephemeral_config(dev)
    assert "mlplatform:ci" not in cfg and "mlplatform:ci" in dev  # the dev config itself is untouched
    validate({k.removeprefix("mlplatform:"): v for k, v in cfg.items()}, "stacks/Pulumi.pr-1.yaml")


def test_ephemeral_config_is_a_valid_stack_config_without_schedules():
    """A PR stack renders (no pre-catalogue `training` key slipped in) and retrains nothing on a schedule."""
    from components.config import validate

    dev = yaml.safe_load((ephemeral.ROOT / "stacks" / "Pulumi.dev.yaml").read_text())["config"]
    dev["mlplatform:models"]["mnist"]["training"]["schedule"] = "0 3 * * 1"
    cfg = ephemeral.ephemeral_config(dev)
    parsed = validate({k.removeprefix("mlplatform:"): v for k, v in cfg.items()}, "stacks/Pulumi.pr-1.yaml")
    assert parsed.models.keys() == {n for n, m in dev["mlplatform:models"].items() if m.get("runtime") != "vllm"}
    assert all(m.training.schedule is None for m in parsed.models.values())


def test_up_creates_tags_and_deploys(fake_pulumi):
    calls, _ = fake_pulumi
    assert ephemeral.up(12, now=NOW) == "pr-12"
    made = calls()
    assert ["stack", "tag", "set", ephemeral.TAG, "2026-11-28T12:00:00Z", "--stack", "pr-12"] in made  # dev ttlHours: 48
    up = next(c for c in made if c[0] == "up")
    assert "--yes" in up and "pr-12" in up
    cfg = yaml.safe_load((Path(os.environ["MLPLATFORM_STACKS_DIR"]) / "Pulumi.pr-12.yaml").read_text())["config"]
    assert cfg["mlplatform:environment"] == "ephemeral"


# ---- issue 23 item 6: teardown never orphans ----

VPC = {"urn": "urn:pulumi:pr-7::mlplatform::aws:ec2/vpc:Vpc::pr-7-vpc", "type": "aws:ec2/vpc:Vpc"}
NAT = {"urn": "urn:pulumi:pr-7::mlplatform::aws:ec2/natGateway:NatGateway::pr-7-nat", "type": "aws:ec2/natGateway:NatGateway"}
STACK = {"urn": "urn:pulumi:pr-7::mlplatform::pulumi:pulumi:Stack::mlplatform-pr-7", "type": "pulumi:pulumi:Stack"}
PROVIDER = {"urn": "urn:pulumi:pr-7::mlplatform::pulumi:providers:aws::default", "type": "pulumi:providers:aws"}


@pytest.fixture
def pr7(fake_pulumi, monkeypatch):
    """Stack pr-7 with a VPC and a NAT gateway in its state and its stack file; backoff recorded, not slept."""
    calls, _ = fake_pulumi
    state_file = Path(os.environ["FAKE_PULUMI_STATE"])
    state_file.write_text(
        json.dumps({"stacks": {"pr-7": {ephemeral.TAG: "2026-11-27T12:00:00Z"}}, "resources": {"pr-7": [STACK, PROVIDER, VPC, NAT]}})
    )
    stack_file = Path(os.environ["MLPLATFORM_STACKS_DIR"]) / "Pulumi.pr-7.yaml"
    stack_file.write_text("config: {}\n")
    sleeps = []
    monkeypatch.setattr(ephemeral, "time", types.SimpleNamespace(sleep=sleeps.append))
    monkeypatch.setenv("FAKE_PULUMI_FAIL", "destroy")
    return calls, lambda: json.loads(state_file.read_text()), stack_file, sleeps


def test_a_failed_destroy_is_refreshed_and_retried_then_the_stack_removed_once(pr7, monkeypatch):
    calls, state, stack_file, sleeps = pr7
    monkeypatch.setenv("FAKE_PULUMI_FAIL_TIMES", "2")
    assert ephemeral.main(["destroy", "--pr", "7"]) == 0
    made = [c[:2] if c[0] == "stack" else c[:1] for c in calls() if c[0] in ("destroy", "refresh") or c[:2] == ["stack", "rm"]]
    assert made == [["destroy"], ["refresh"], ["destroy"], ["refresh"], ["destroy"], ["stack", "rm"]]
    assert ["stack", "rm", "--yes", "pr-7"] in calls()  # once, and without --force
    assert sleeps == [ephemeral.BACKOFF_S, 2 * ephemeral.BACKOFF_S]
    assert "pr-7" not in state()["stacks"] and not stack_file.exists()


def test_a_destroy_that_keeps_failing_keeps_the_stack_tagged_and_fails_listing_what_is_left(pr7, capsys):
    calls, state, stack_file, sleeps = pr7
    assert ephemeral.main(["destroy", "--pr", "7"]) == 1
    assert [c[0] for c in calls()].count("destroy") == ephemeral.DESTROY_ATTEMPTS
    assert not any(c[:2] == ["stack", "rm"] for c in calls())
    assert ephemeral.FAILED_TAG in state()["stacks"]["pr-7"] and stack_file.exists()  # reap can find it, and has its config
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(
        f"error: destroy of pr-7 failed {ephemeral.DESTROY_ATTEMPTS} times (last: error: destroy failed: deleting EC2 VPC"
    )
    assert err.endswith("2 resource(s) left: aws:ec2/vpc:Vpc pr-7-vpc; aws:ec2/natGateway:NatGateway pr-7-nat")
    assert "`python -m ops.ephemeral reap` retries it" in err


def test_reap_retries_a_stack_whose_destroy_failed_before_the_expiry(pr7, monkeypatch):
    calls, state, _, _ = pr7
    with pytest.raises(ephemeral.DestroyFailed):
        ephemeral.destroy(7)
    assert not ephemeral.expired(state()["stacks"]["pr-7"], NOW)  # not expired: only the tag makes it due
    monkeypatch.delenv("FAKE_PULUMI_FAIL")  # the load balancer's interfaces are gone now
    assert ephemeral.reap(now=NOW) == ["pr-7"]
    assert "pr-7" not in state()["stacks"] and ["stack", "rm", "--yes", "pr-7"] in calls()


def test_reap_reaps_the_others_and_fails_naming_the_stack_it_could_not_destroy(fake_pulumi, monkeypatch, capsys):
    calls, set_state = fake_pulumi
    set_state({"pr-1": {}, "pr-3": {}})
    monkeypatch.setattr(ephemeral, "time", types.SimpleNamespace(sleep=lambda s: None))
    monkeypatch.setenv("FAKE_PULUMI_FAIL", "destroy")
    monkeypatch.setenv("FAKE_PULUMI_FAIL_STACK", "pr-1")
    assert ephemeral.main(["reap"]) == 1
    err = capsys.readouterr().err
    assert "reap: destroy failed for pr-1 (kept, tagged mlplatform:destroy-failed; reaped: pr-3)" in err
    removed = [c[-1] for c in calls() if c[:2] == ["stack", "rm"]]
    assert removed == ["pr-3"]


def test_reap_destroys_only_expired_pr_stacks(fake_pulumi):
    calls, state = fake_pulumi
    state({"pr-1": {ephemeral.TAG: "2026-11-26T11:00:00Z"}, "pr-2": {ephemeral.TAG: "2026-11-27T11:00:00Z"}, "pr-3": {}, "dev": {}})
    assert ephemeral.reap(now=NOW) == ["pr-1", "pr-3"]
    destroyed = [c for c in calls() if c[0] == "destroy"]
    assert len(destroyed) == 2 and all("pr-2" not in c and "dev" not in c for c in destroyed)


def test_missing_cli_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert ephemeral.main(["up", "--pr", "3"]) == 2
    assert "the Pulumi CLI is not on PATH" in capsys.readouterr().err
