"""Ephemeral PR stacks with the Pulumi Automation API.

    python -m ops.ephemeral up --pr 12        # stack pr-12 from the dev config, environment ephemeral, expiry tag
    python -m ops.ephemeral destroy --pr 12   # destroy its resources; remove the stack only once that succeeded
    python -m ops.ephemeral reap              # the same for every pr-* stack past its expiry or left by a failed destroy

The expiry (``mlplatform:expires-at`` stack tag, UTC ISO-8601) is now + ``ephemeral.ttlHours`` from the
dev config. A stack without a readable expiry counts as expired: nothing ephemeral lives forever.

A destroy that fails (the known case: a load balancer's network interfaces still hold the VPC) is
retried: refresh, then destroy again, up to DESTROY_ATTEMPTS times with backoff. If it still fails,
the stack is kept - its state is the only record of what still bills - and tagged
``mlplatform:destroy-failed`` (so ``reap`` retries it whatever its expiry), and the command fails
listing the resources left. ``stack rm`` (without ``--force``) runs only after a destroy that succeeded.

Exit codes: 0 done; 1 a destroy failed after every attempt (the stack is kept, tagged; stderr lists
what is left); 2 usage, or no Pulumi CLI.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
TAG = "mlplatform:expires-at"
FAILED_TAG = "mlplatform:destroy-failed"
PREFIX = "pr-"
DESTROY_ATTEMPTS = 3
BACKOFF_S = 30.0  # before attempt n+1: BACKOFF_S * 2**(n-1); cloud dependencies (ENIs, NAT) take minutes to let go


class CliMissing(RuntimeError):
    pass


class DestroyFailed(RuntimeError):
    """A destroy failed after every attempt; its stack is kept (tagged) with ``left`` still in its state."""

    def __init__(self, message: str, left: list[str]):
        self.left = left
        shown = "; ".join(left[:20]) + (f"; ... ({len(left) - 20} more)" if len(left) > 20 else "")
        super().__init__(f"{message}; {len(left)} resource(s) left: {shown or 'unknown (state unreadable)'}")


def stack_name(pr: int) -> str:
    if pr <= 0:
        raise ValueError(f"--pr must be a positive pull request number, got {pr}")
    return f"{PREFIX}{pr}"


def ephemeral_config(dev: dict[str, Any]) -> dict[str, Any]:
    """The dev stack's config made ephemeral: cheaper and disposable."""
    cfg = dict(dev)
    cfg["mlplatform:environment"] = "ephemeral"
    # Deploy roles are per environment, in the accounts of dev/staging/prod (validation refuses one on
    # an ephemeral stack): a PR stack deploys with the sandbox account's role instead.
    cfg.pop("mlplatform:ci", None)
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


def due(tags: dict[str, str], now: dt.datetime) -> bool:
    """Whether ``reap`` destroys the stack: expired, or a destroy of it failed before."""
    return FAILED_TAG in tags or expired(tags, now)


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
    """Destroy the stack's resources (retried: refresh, then destroy again), then remove the stack;
    after the last failed attempt, keep and tag the stack and raise DestroyFailed."""
    auto = _auto()
    stack = auto.select_stack(stack_name=name, work_dir=str(ROOT))
    error = ""
    for attempt in range(1, DESTROY_ATTEMPTS + 1):
        try:
            if attempt > 1:
                # What the failed attempt did delete, and what drifted, is read back before trying again.
                stack.refresh(on_output=print)
            stack.destroy(on_output=print)
            break
        except auto.CommandError as exc:
            error = _last_line(exc)
            print(f"{name}: destroy attempt {attempt}/{DESTROY_ATTEMPTS} failed: {error}", file=sys.stderr)
            if attempt < DESTROY_ATTEMPTS:
                time.sleep(BACKOFF_S * 2 ** (attempt - 1))
    else:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            stack.workspace.set_tag(name, FAILED_TAG, f"{stamp} after {DESTROY_ATTEMPTS} attempts")
        except auto.CommandError as exc:  # the stack is kept all the same; reap finds it once it expires
            print(f"{name}: could not tag it {FAILED_TAG}: {_last_line(exc)}", file=sys.stderr)
        raise DestroyFailed(
            f"destroy of {name} failed {DESTROY_ATTEMPTS} times (last: {error}); the stack is kept, tagged {FAILED_TAG} "
            "(`python -m ops.ephemeral reap` retries it)",
            _left(stack),
        )
    # No --force: after a destroy that succeeded the state is empty, and if it were not, `stack rm`
    # refusing is what keeps the leftovers findable.
    stack.workspace.remove_stack(name)
    (_stacks() / f"Pulumi.{name}.yaml").unlink(missing_ok=True)


def _last_line(exc: Exception) -> str:
    """The CLI's last error line from a CommandError (whose text is ``code: ... stdout: ... stderr: ...``)."""
    lines = [line.strip().removeprefix("stderr:").strip() for line in str(exc).splitlines() if line.strip()]
    return next((line for line in reversed(lines) if "error" in line.lower()), lines[-1] if lines else type(exc).__name__)


def _left(stack) -> list[str]:
    """``type name`` of every resource still in the stack's state (the stack and providers aside)."""
    try:
        resources = (stack.export_stack().deployment or {}).get("resources") or []
    except Exception as exc:  # noqa: BLE001 - the failure report must still go out
        print(f"{stack.name}: could not read its state: {exc}", file=sys.stderr)
        return []
    return [
        f"{r['type']} {r['urn'].rsplit('::', 1)[-1]}"
        for r in resources
        if r.get("type") != "pulumi:pulumi:Stack" and not r.get("type", "").startswith("pulumi:providers:")
    ]


def reap(now: dt.datetime | None = None) -> list[str]:
    """Destroy and remove every PR stack that is due (``due``); a stack whose destroy fails again
    stays, the others are still reaped, and DestroyFailed names every one that failed."""
    auto = _auto()
    now = now or dt.datetime.now(dt.UTC)
    ws = auto.LocalWorkspace(work_dir=str(ROOT))
    reaped, failed = [], []
    for summary in ws.list_stacks():
        name = summary.name.split("/")[-1]
        if not name.startswith(PREFIX):
            continue
        tags = ws.list_tags(name)
        if due(tags, now):
            print(f"reaping {name} ({'a destroy failed before' if FAILED_TAG in tags else 'expired'})")
            try:
                _destroy(name)
            except DestroyFailed as exc:
                print(f"error: {exc}", file=sys.stderr)
                failed.append((name, exc.left))
                continue
            reaped.append(name)
    if failed:
        names = ", ".join(name for name, _ in failed)
        raise DestroyFailed(
            f"reap: destroy failed for {names} (kept, tagged {FAILED_TAG}; reaped: {', '.join(reaped) or 'nothing'})",
            [f"{name}: {r}" for name, left in failed for r in left],
        )
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
    except DestroyFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
