"""Ephemeral PR stacks with the Pulumi Automation API.

    python -m ops.ephemeral up --pr 12        # stack pr-12 from the dev config, environment ephemeral, expiry tag
    python -m ops.ephemeral destroy --pr 12   # destroy its resources, then always remove the stack
    python -m ops.ephemeral reap              # destroy + remove every pr-* stack past its expiry

The expiry (``mlplatform:expires-at`` stack tag, UTC ISO-8601) is now + ``ephemeral.ttlHours`` from the
dev config. A stack without a readable expiry counts as expired: nothing ephemeral lives forever.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
TAG = "mlplatform:expires-at"
PREFIX = "pr-"


class CliMissing(RuntimeError):
    pass


def stack_name(pr: int) -> str:
    if pr <= 0:
        raise ValueError(f"--pr must be a positive pull request number, got {pr}")
    return f"{PREFIX}{pr}"


def ephemeral_config(dev: dict[str, Any]) -> dict[str, Any]:
    """The dev stack's config made ephemeral: cheaper and disposable."""
    cfg = dict(dev)
    cfg["mlplatform:environment"] = "ephemeral"
    # One CI per organisation is enough; a PR stack needs none, nor scheduled retraining.
    cfg["mlplatform:jenkins"] = {**cfg.get("mlplatform:jenkins", {}), "enabled": False}
    cfg["mlplatform:models"] = {
        name: {**entry, "training": {k: v for k, v in (entry.get("training") or {}).items() if k != "schedule"}}
        for name, entry in (cfg.get("mlplatform:models") or {}).items()
    }
    cfg["mlplatform:gpuPools"] = [{**p, "min": 0, "desired": 0, "max": min(p.get("max", 1), 1)} for p in cfg.get("mlplatform:gpuPools", [])]
    # No LLMs: one would hold the pool's only GPU node (and download its weights) for every PR, and
    # leave none for training. Their objects are checked by the preview, synth and tests instead.
    cfg["mlplatform:models"] = {name: entry for name, entry in cfg["mlplatform:models"].items() if entry.get("runtime") != "vllm"}
    return cfg


def ttl_hours(dev: dict[str, Any]) -> float:
    return float((dev.get("mlplatform:ephemeral") or {}).get("ttlHours", 24))


def expires_at(now: dt.datetime, hours: float) -> str:
    return (now + dt.timedelta(hours=hours)).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expired(tags: dict[str, str], now: dt.datetime) -> bool:
    value = tags.get(TAG)
    if not value:
        return True
    try:
        when = dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return True
    return when <= now


def _auto():
    if shutil.which("pulumi") is None:
        raise CliMissing("the Pulumi CLI is not on PATH: install it (https://www.pulumi.com/docs/install/) or run in the CI agent image")
    from pulumi import automation as auto

    return auto


def _stacks() -> Path:
    """The stack files' folder (Pulumi.yaml stackConfigDir). Tests point MLPLATFORM_STACKS_DIR at a
    temporary copy so that no PR stack file appears in stacks/ while parallel test workers read it."""
    return Path(os.environ.get("MLPLATFORM_STACKS_DIR") or ROOT / "stacks")


def _dev_config() -> dict[str, Any]:
    return yaml.safe_load((_stacks() / "Pulumi.dev.yaml").read_text())["config"]


def up(pr: int, now: dt.datetime | None = None) -> str:
    auto = _auto()
    name = stack_name(pr)
    dev = _dev_config()
    cfg = ephemeral_config(dev)
    cfg.pop("mlplatform:ephemeral", None)
    (_stacks() / f"Pulumi.{name}.yaml").write_text(yaml.safe_dump({"config": cfg}, sort_keys=False))
    stack = auto.create_or_select_stack(stack_name=name, work_dir=str(ROOT))
    stack.workspace.set_tag(name, TAG, expires_at(now or dt.datetime.now(dt.UTC), ttl_hours(dev)))
    stack.up(on_output=print)
    return name


def destroy(pr: int) -> None:
    _destroy(stack_name(pr))


def _destroy(name: str) -> None:
    auto = _auto()
    stack = auto.select_stack(stack_name=name, work_dir=str(ROOT))
    try:
        stack.destroy(on_output=print)
    finally:
        # Always remove the stack, even if destroy failed part-way: a left-over stack with no
        # owner is how orphaned clusters keep billing. (`--force` keeps going with what is left.)
        stack.workspace.remove_stack(name, force=True)
        (_stacks() / f"Pulumi.{name}.yaml").unlink(missing_ok=True)


def reap(now: dt.datetime | None = None) -> list[str]:
    auto = _auto()
    now = now or dt.datetime.now(dt.UTC)
    ws = auto.LocalWorkspace(work_dir=str(ROOT))
    reaped = []
    for summary in ws.list_stacks():
        name = summary.name.split("/")[-1]
        if not name.startswith(PREFIX):
            continue
        if expired(ws.list_tags(name), now):
            print(f"reaping {name} (expired)")
            _destroy(name)
            reaped.append(name)
    return reaped


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ops.ephemeral", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for cmd in ("up", "destroy"):
        sub.add_parser(cmd).add_argument("--pr", type=int, required=True, help="pull request number")
    sub.add_parser("reap")
    args = p.parse_args(argv)
    try:
        if args.command == "up":
            print(f"stack {up(args.pr)} is up")
        elif args.command == "destroy":
            destroy(args.pr)
            print(f"stack {stack_name(args.pr)} destroyed and removed")
        else:
            print(f"reaped: {', '.join(reap()) or 'nothing'}")
    except (CliMissing, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
