"""Deliver one model to one stack: the pipeline's promotion + canary step (README "Model delivery").

    python -m ops.deliver --stack prod [--model mnist] [--timeout 3600]   (default: every TF model of the stack)

1. Which version: a stack that receives the model (``models.<name>.source.stack`` in its stack file)
   takes the source stack's champion and copies it into its own store, byte for byte, digests checked
   on arrival, as its *candidate* (``ops.models promote --from --to --candidate``); a stack that
   trains takes its own candidate (what its training run published). The source is read and the copy
   written with the stack's promotion role (stack output ``promotionRole``, components/services/model_promoter.py:
   read on the received models' folders of the source store, read/write on the same folders of its
   own), assumed with STS for this step only; everything else runs with the deploy identity.
2. Pin it: ``pulumi config set models.<name>.serving.version`` and ``pulumi up``: the pod template
   changes, Argo Rollouts starts the canary and its analysis (components/services/argo_rollouts.py).
3. Wait for the Rollout: Healthy with the new pods stable -> the version becomes the stack's champion.
   Degraded (the analysis failed, Argo aborted: traffic is already back on the stable pods) -> the
   version is marked rejected in the stack's store, the pin goes back to the champion (``pulumi up``
   again, so the desired state is what serves), the analysis result is printed, exit 1: the pipeline
   fails, and its failure notification carries this output.

A rejected version is never delivered again; a version that is already the champion is only pinned
(an idempotent ``pulumi up``). Exit codes: 0 delivered (or nothing new); 1 canary aborted or timed
out; 2 usage or config error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from components.lib.network import SERVING_NAMESPACE

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = SERVING_NAMESPACE

Runner = Callable[[list[str]], str]
# (role ARN or None, session name) -> a context in which the S3 store calls run as that role
Promoter = Callable[[str | None, str], contextlib.AbstractContextManager]


def run(cmd: list[str]) -> str:
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise DeliveryError(f"{' '.join(cmd[:4])} ... failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    return out.stdout


class DeliveryError(Exception):
    pass


def tf_models(stack: str, stacks_dir: Path = ROOT / "stacks") -> list[str]:
    models = yaml.safe_load((stacks_dir / f"Pulumi.{stack}.yaml").read_text())["config"].get("mlplatform:models") or {}
    return [m for m, e in models.items() if (e or {}).get("runtime", "tensorflow") == "tensorflow"]


def source_stack(stack: str, model: str, stacks_dir: Path = ROOT / "stacks") -> str | None:
    models = yaml.safe_load((stacks_dir / f"Pulumi.{stack}.yaml").read_text())["config"].get("mlplatform:models") or {}
    if model not in models:
        raise DeliveryError(f"stacks/Pulumi.{stack}.yaml: no model {model!r} in mlplatform:models")
    return ((models[model] or {}).get("source") or {}).get("stack")


def store_of(stack: str, sh: Runner) -> str:
    return sh(["pulumi", "stack", "output", "modelStore", "--stack", stack]).strip()


def promotion_role(stack: str, sh: Runner) -> str | None:
    """The stack's promotion role (None where the stack has none: no IAM, e.g. the local stack's MinIO)."""
    try:
        out = sh(["pulumi", "stack", "output", "promotionRole", "--stack", stack]).strip()
    except DeliveryError as exc:
        raise DeliveryError(f"{stack} has no promotionRole output ({exc}): run `make up-ci STACK={stack}` first") from None
    return None if out in ("", "null") else out


def assume_role(role_arn: str, session: str) -> dict:
    """Temporary credentials of ``role_arn`` (STS AssumeRole with the current, deploy, identity), one hour."""
    import boto3

    return boto3.client("sts").assume_role(RoleArn=role_arn, RoleSessionName=session[:64], DurationSeconds=3600)["Credentials"]


@contextlib.contextmanager
def as_role(role_arn: str | None, session: str, assume: Callable[[str, str], dict] = assume_role):
    """Every boto3 client made inside (training.storage makes one per call) uses ``role_arn``'s
    credentials; the deploy identity's session is back afterwards. No role: nothing changes."""
    if role_arn is None:
        yield
        return
    import boto3

    creds = assume(role_arn, session)
    previous = boto3.DEFAULT_SESSION
    region = (previous or boto3.Session()).region_name
    boto3.DEFAULT_SESSION = boto3.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
        region_name=region,
    )
    try:
        yield
    finally:
        boto3.DEFAULT_SESSION = previous


def pin(stack: str, model: str, version: str, sh: Runner) -> None:
    sh(["pulumi", "config", "set", "--path", f"mlplatform:models.{model}.serving.version", version, "--stack", stack])
    sh(["pulumi", "up", "--yes", "--non-interactive", "--stack", stack, "--policy-pack", "policy"])


def rollout_state(model: str, sh: Runner) -> dict:
    return json.loads(sh(["kubectl", "-n", NAMESPACE, "get", "rollout", f"model-server-{model}", "-o", "json"]))


def analysis_summary(model: str, sh: Runner) -> str:
    """The failed metrics of the model's AnalysisRuns, with their last measured values."""
    runs = json.loads(sh(["kubectl", "-n", NAMESPACE, "get", "analysisrun", "-o", "json"])).get("items", [])
    parts = []
    for r in runs:
        if not r["metadata"]["name"].startswith(f"model-server-{model}-"):
            continue
        for m in (r.get("status") or {}).get("metricResults", []):
            if m.get("phase") in ("Failed", "Error", "Inconclusive"):
                last = (m.get("measurements") or [{}])[-1].get("value", "?")
                parts.append(f"{m['name']} {m['phase']} (last value {last})")
    return "; ".join(parts) or "no failed metric found in the AnalysisRuns"


def wait(model: str, version: str, sh: Runner, timeout_s: float, poll_s: float = 10) -> tuple[str, str]:
    """('Healthy'|'Degraded'|'Timeout', message) once the Rollout serves ``version`` from its stable pods or aborted."""
    deadline = time.monotonic() + timeout_s
    while True:
        ro = rollout_state(model, sh)
        status = ro.get("status") or {}
        annotations = ro["spec"]["template"]["metadata"].get("annotations") or {}
        served_template = annotations.get("mlplatform.io/model-version") == version
        phase = status.get("phase")
        if status.get("abort") or phase == "Degraded":
            return "Degraded", status.get("message", "")
        if served_template and phase == "Healthy" and status.get("stableRS") == status.get("currentPodHash"):
            return "Healthy", status.get("message", "")
        if time.monotonic() >= deadline:
            return "Timeout", f"phase {phase}: {status.get('message', '')}"
        time.sleep(poll_s)


@dataclass(frozen=True)
class _Source:
    """The stack a received model comes from: its store, read (and copied from) as ``role``."""

    stack: str
    store: str
    role: str | None  # this stack's promotion role (None: the deploy identity)
    session: str


def deliver(
    stack: str,
    model: str,
    sh: Runner = run,
    timeout_s: float = 3600,
    poll_s: float = 10,
    stacks_dir: Path = ROOT / "stacks",
    promoter: Promoter = as_role,
) -> int:
    from training import registry

    src_stack = source_stack(stack, model, stacks_dir)
    store = store_of(stack, sh)
    source = _Source(src_stack, store_of(src_stack, sh), promotion_role(stack, sh), f"deliver-{stack}-{model}") if src_stack else None
    version = _incoming(stack, model, store, source, promoter)
    if version is None:
        return 0
    current = registry.get_alias(store, model, "champion")
    current_version = current["version"] if current else None
    if _settled(stack, model, store, version, current_version, sh):
        return 0
    if source:
        with promoter(source.role, source.session):
            registry.promote_between(
                source.store, store, model, version, reason=f"pipeline: promote from {source.stack} for a canary", champion=False
            )
        print(f"{model}: {version} copied from {source.stack} to {stack} (digests verified), candidate there")
    if current_version is None:
        # The stack's first version: there are no stable pods to compare with (Argo rolls a first
        # revision out at full scale, without steps). It becomes the champion, then the pin follows.
        registry.move(store, model, "champion", version, reason=f"pipeline: first version on {stack} (no stable to canary against)")
        pin(stack, model, version, sh)
        print(f"{model}: {version} is {stack}'s first version: champion, served without a canary")
        return 0
    return _canary(stack, model, store, version, current_version, sh, timeout_s, poll_s)


def _incoming(stack: str, model: str, store: str, source: _Source | None, promoter: Promoter) -> str | None:
    """The version to deliver: the source stack's champion for a received model, else this stack's
    own candidate; None (and a line saying so) when there is none."""
    from training import registry

    if source is None:
        cand = registry.get_alias(store, model, "candidate")
        if cand is None:
            print(f"{model}: no candidate in {stack}'s store: nothing to deliver")
            return None
        return cand["version"]
    print(f"{model}: reading {source.stack}'s store as {source.role or 'the deploy identity (no promotion role on this stack)'}")
    with promoter(source.role, source.session):
        champ = registry.get_alias(source.store, model, "champion")
    if champ is None:
        print(f"{model}: {source.stack} has no champion yet: nothing to deliver to {stack}")
        return None
    return champ["version"]


def _settled(stack: str, model: str, store: str, version: str, current_version: str | None, sh: Runner) -> bool:
    """True when ``version`` needs no canary: rejected here before (the champion stays pinned) or
    already the champion (pinned again, an idempotent up)."""
    from training import registry

    if (mark := registry.rejection(store, model, version)) is not None:
        print(f"{model}: {version} was rejected in {stack} ({mark['reason']}): not retried; {stack} keeps {current_version}")
        if current_version:
            pin(stack, model, current_version, sh)
        return True
    if version == current_version:
        print(f"{model}: {stack} already serves {version}: pinning it (no canary)")
        pin(stack, model, version, sh)
        return True
    return False


def _canary(stack: str, model: str, store: str, version: str, current_version: str, sh: Runner, timeout_s: float, poll_s: float) -> int:
    """Pin ``version``, wait for the Rollout's analysed canary, and record its outcome: champion (0),
    or rejected with the pin back on ``current_version`` (1)."""
    from training import registry

    print(f"{model}: canary of {version} on {stack} (stable: {current_version})")
    pin(stack, model, version, sh)
    outcome, message = wait(model, version, sh, timeout_s, poll_s)
    if outcome == "Healthy":
        registry.move(store, model, "champion", version, reason=f"pipeline: canary passed on {stack}", forward_only=True)
        print(f"{model}: canary passed on {stack}: {version} is the champion (was {current_version or 'unset'})")
        return 0
    result = analysis_summary(model, sh) if outcome == "Degraded" else message
    reason = f"canary {'aborted' if outcome == 'Degraded' else 'timed out'} on {stack}: {result}"
    registry.reject(store, model, version, reason=reason)
    if current_version:
        pin(stack, model, current_version, sh)
    print(f"{model}: {reason}; {version} rejected, {stack} stays on {current_version or 'nothing'}", file=sys.stderr)
    return 1


def pin_champions(stack: str, sh: Runner = run, stacks_dir: Path = ROOT / "stacks") -> None:
    """Before ``pulumi up``: pin every TF model to the stack's current champion, so an up for another
    change (a new image, a config edit) keeps serving what serves now instead of un-pinning it (the
    stack files in git carry no version: the store's champion is the record). A stack with no store
    or no champion yet stays unpinned (its first version is delivered by this step afterwards)."""
    from training import registry

    try:
        store = store_of(stack, sh)
    except DeliveryError:
        print(f"{stack}: no modelStore output yet (first up): nothing to pin")
        return
    for model in tf_models(stack, stacks_dir):
        champ = registry.get_alias(store, model, "champion") if store else None
        if champ:
            sh(["pulumi", "config", "set", "--path", f"mlplatform:models.{model}.serving.version", champ["version"], "--stack", stack])
            print(f"{model}: pinned to {stack}'s champion {champ['version']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ops.deliver", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stack", required=True)
    p.add_argument("--model", help="one model (default: every TF model in the stack file)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the canary to finish")
    p.add_argument("--pin-champions", action="store_true", help="only pin every model to the stack's champion (before pulumi up)")
    args = p.parse_args(argv)
    from training import registry

    if args.pin_champions:
        pin_champions(args.stack)
        return 0
    try:
        # One model after the other: each canary is analysed alone; the first failure fails the step.
        for model in [args.model] if args.model else tf_models(args.stack):
            if code := deliver(args.stack, model, timeout_s=args.timeout):
                return code
        return 0
    except DeliveryError as exc:
        print(f"deliver: {exc}", file=sys.stderr)
        return 2
    except registry.RegistryError as exc:  # a refused copy (digests), a conflict: nothing was promoted
        print(f"deliver: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
