"""ops.ephemeral against a fake `pulumi` on PATH (the Automation API shells out to it), plus the TTL logic."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
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


def test_destroy_always_removes_the_stack(fake_pulumi, monkeypatch):
    calls, state = fake_pulumi
    state({"pr-7": {}})
    monkeypatch.setenv("FAKE_PULUMI_FAIL", "destroy")
    with pytest.raises(Exception, match="destroy failed"):
        ephemeral.destroy(7)
    made = calls()
    assert any(c[0] == "destroy" for c in made)
    assert ["stack", "rm", "--yes", "--force", "pr-7"] in [c[: len(c)] for c in made]


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
