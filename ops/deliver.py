"""Deliver one model to one stack: the pipeline's promotion + canary step (README "Model delivery").

    python -m ops.deliver --stack prod [--model mnist] [--timeout 3600]   (default: every model of the stack)

Both runtimes take the same path: a TF model's SavedModel versions and a vLLM model's weights
(``runtime: vllm``: imported by the stack's import Job, components/models/llm_import.py)
are registry versions, promoted byte for byte, pinned with ``serving.version``, and judged by their
Rollout's analysis (``model-server-<name>``: components/lib/rollout_specs.py; ``llm-<name>``:
components/lib/llm_canary.py - vLLM's 5xx and 4xx ratios, mean TTFT and inter-token latency against the stable pods,
and the model's golden prompts).

1. Which version: a stack that receives the model (``models.<name>.source.stack`` in its stack file)
   takes the source stack's champion and copies it into its own store, byte for byte, digests checked
   on arrival, as its *candidate* (``ops.models promote --from --to --candidate``); a stack that
   trains first adopts what its runs published (their roles may not move an alias: ``registry.adopt``,
   the newest gated, unrejected version newer than the champion becomes the candidate; the champion
   where no canary judges) and takes its candidate. The source is read and the copy
   written with the stack's promotion role (stack output ``promotionRole``, components/services/model_promoter.py:
   read on the received models' folders of the source store, read/write on the same folders of its
   own), assumed with STS for this step only; everything else runs with the deploy identity.
2. Pin it: ``pulumi config set models.<name>.serving.version`` and ``pulumi up``: the pod template
   changes, Argo Rollouts starts the canary and its analysis (components/services/argo_rollouts.py).
3. Wait for the Rollout and read its analysis (the AnalysisRun the Rollout names, Argo Rollouts
   v1.9 status.canary.currentBackgroundAnalysisRunStatus), and decide on evidence only:
   - Healthy with the new pods stable -> the version becomes the stack's champion (exit 0);
   - the AnalysisRun *Failed* on a judging metric (errors, client errors, p99, class mix; Argo aborted,
     traffic is already back on the stable pods) -> the version is marked rejected in the stack's
     store, the pin goes back to the champion (``pulumi up`` again), the failed metrics are printed,
     exit 1 (REJECTED): the pipeline fails, its notification carries this output;
   - anything else is *not judged*: the run Inconclusive (too little traffic: the rollout paused), in
     Error (a query failed), failed only on its warm-up Job, the rollout aborted by hand or Degraded
     (canary pods never ready: ProgressDeadlineExceeded), or the timeout -> the version stays the
     candidate (nothing is recorded against it), the pin goes back to the champion, the reason is
     printed, exit 3 (NOT_JUDGED): the pipeline says "not judged", not "bad model", and the next run
     tries again.

A version that already served as this stack's champion (``registry.served_as_champion``) is a
rollback, not a new model: the emergency path. It gets no canary: the registry rolls back to it
(``registry.rollback``: the version left is rejected, audited, and the candidate moves off it), the
pin moves, and the Rollout is promoted in full (``status.promoteFull``, what ``kubectl argo rollouts
promote --full`` sets: every remaining step and the analysis skipped). ``make rollback`` runs
``ops.models rollback`` then ``--rollback`` here, which promotes the store's champion in full.

**LoRA adapters** (``adapterOf: <base>``, docs/lora.md) take the same path with three differences:
their versions are promoted with ``lora_gate.promote`` (the target store must hold the adapter's base
version with the same digest); a version is delivered only where the stack serves the base version it
was trained on (the base's champion; otherwise refused before a byte is copied, one line:
``support-bot/<v> was trained on chat/<b1>; staging serves chat/<b2>``, exit 1); and the pin
(``models.<adapter>.serving.version``) changes the *base's* pod template, so the base's Rollout
(``llm-<base>``) canaries it and its analysis judges it - vLLM's metrics on the pods that serve base +
new adapter, and the adapter's golden prompts, sent with ``model: <adapter>`` (llm/golden.py
``with_adapters``). Even an adapter's first version is canaried (the base's stable pods are there to
compare with); if it fails, its pin is removed. Adapters are delivered after every base.

A rejected version is never delivered again; a version that is already the champion is only pinned
(an idempotent ``pulumi up``). Exit codes: 0 delivered (or nothing new); 1 rejected by a failed
analysis, or a refused copy; 2 usage or config error; 3 not judged (see above).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from components.lib import llm_canary
from components.lib.network import SERVING_NAMESPACE
from components.lib.rollout_specs import JUDGING_METRICS as TF_JUDGING_METRICS
from components.lib.rollout_specs import VERSION_ANNOTATION

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = SERVING_NAMESPACE
# The metrics whose failure rejects a version, both runtimes' (the golden Job and the TF warm-up only
# bring data: their failure is "not judged").
JUDGING_METRICS = (*TF_JUDGING_METRICS, *(m for m in llm_canary.JUDGING_METRICS if m not in TF_JUDGING_METRICS))

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
    return [m for m, runtime in runtimes(stack, stacks_dir).items() if runtime == "tensorflow"]


def delivered_models(stack: str, stacks_dir: Path = ROOT / "stacks") -> list[str]:
    """Every model the pipeline delivers: both runtimes go through the same registry and canary; LoRA
    adapters after every base (an adapter is checked against the base version its stack serves)."""
    return sorted(runtimes(stack, stacks_dir), key=lambda m: adapter_of(stack, m, stacks_dir) is not None)


def adapter_of(stack: str, model: str, stacks_dir: Path = ROOT / "stacks") -> str | None:
    """The base a LoRA adapter entry names (``adapterOf``, docs/lora.md), None for any other model."""
    models = yaml.safe_load((stacks_dir / f"Pulumi.{stack}.yaml").read_text())["config"].get("mlplatform:models") or {}
    return (models.get(model) or {}).get("adapterOf")


def rollout_of(stack: str, model: str, stacks_dir: Path = ROOT / "stacks") -> str:
    """The Rollout whose canary judges ``model``'s versions: its own, or for a LoRA adapter its base's
    (the adapter's version is part of the base's pod template: its canary pods serve base + new adapter)."""
    base = adapter_of(stack, model, stacks_dir)
    return rollout_name(base, "vllm") if base else rollout_name(model, runtimes(stack, stacks_dir).get(model, "tensorflow"))


def version_key(model: str, obj: str | None) -> str:
    """The pod-template annotation that says which version of ``model`` Rollout ``obj`` serves: the
    model's own (rollout_specs.VERSION_ANNOTATION), or on another model's Rollout (an adapter on its
    base's) the adapter's (lora_gate.version_annotation)."""
    if obj is None or obj in (rollout_name(model), rollout_name(model, "vllm")):
        return VERSION_ANNOTATION
    from llm import lora_gate

    return lora_gate.version_annotation(model)


def runtimes(stack: str, stacks_dir: Path = ROOT / "stacks") -> dict[str, str]:
    """Every model of the stack file -> its runtime (``tensorflow`` or ``vllm``)."""
    models = yaml.safe_load((stacks_dir / f"Pulumi.{stack}.yaml").read_text())["config"].get("mlplatform:models") or {}
    return {m: (e or {}).get("runtime", "tensorflow") for m, e in models.items()}


def _check_llm_pin(stack: str, model: str, store: str, version: str, stacks_dir: Path) -> None:
    """For a vLLM model whose weights come from Hugging Face: ``version`` in ``store`` was imported from
    this stack's ``llm.source`` at its ``llm.revision`` (llm/importer.py check_pin; ImportRefused, a
    RegistryError, otherwise: exit 1, a refused copy). TF models and s3:// weights: nothing to check."""
    entry = (yaml.safe_load((stacks_dir / f"Pulumi.{stack}.yaml").read_text())["config"].get("mlplatform:models") or {})[model] or {}
    llm = entry.get("llm") or {}
    if entry.get("runtime") != "vllm" or entry.get("adapterOf") or str(llm.get("source", "")).startswith("s3://"):
        return  # an adapter has no weights of its own to pin: check_adapter_base
    from llm import importer

    importer.check_pin(store, model, version, llm["source"], llm.get("revision"))


def canaries(stack: str, stacks_dir: Path = ROOT / "stacks") -> bool:
    """Whether a canary judges the stack's new versions (Argo Rollouts comes with monitoring): where
    none does, the adopted version is the champion at once, as a training run's was before."""
    config = yaml.safe_load((stacks_dir / f"Pulumi.{stack}.yaml").read_text())["config"]
    return (config.get("mlplatform:monitoring") or {}).get("enabled", True)


def rollout_name(model: str, runtime: str = "tensorflow") -> str:
    """The model's Rollout: ``model-server-<m>`` (components/models/model_service.py) or ``llm-<m>``
    (components/models/llm_service.py)."""
    return f"llm-{model}" if runtime == "vllm" else f"model-server-{model}"


def source_stack(stack: str, model: str, stacks_dir: Path = ROOT / "stacks") -> str | None:
    models = yaml.safe_load((stacks_dir / f"Pulumi.{stack}.yaml").read_text())["config"].get("mlplatform:models") or {}
    if model not in models:
        raise DeliveryError(f"stacks/Pulumi.{stack}.yaml: no model {model!r} in mlplatform:models")
    return ((models[model] or {}).get("source") or {}).get("stack")


def store_of(stack: str, sh: Runner) -> str:
    return sh(["pulumi", "stack", "output", "modelStore", "--stack", stack]).strip()


def source_store(stack: str, model: str, src_stack: str, sh: Runner, stacks_dir: Path = ROOT / "stacks") -> str:
    """The source store as this stack's reviewed file names it (``models.<name>.source.bucket``, issue 24
    item 3: never another stack's state, which another account's deploy identity may not even read);
    a file from before that key falls back to the source stack's output."""
    models = yaml.safe_load((stacks_dir / f"Pulumi.{stack}.yaml").read_text())["config"].get("mlplatform:models") or {}
    bucket = (((models.get(model) or {}).get("source")) or {}).get("bucket")
    return f"s3://{bucket}" if bucket else store_of(src_stack, sh)


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


# ``serving.version: champion``: explicitly unpinned (components/models/model.py UNPINNED). Removing the key
# would not do: on EKS an ``up`` without a pin renders the version the last ``up`` recorded.
UNPINNED = "champion"


def pin(stack: str, model: str, version: str | None, sh: Runner, also: dict[str, str | None] | None = None) -> None:
    """``serving.version`` set to ``version`` (None: explicitly unpinned - an adapter that never had a
    champion on this stack goes back to not being served), and to each of ``also`` (adapters that move
    with their base), then one ``pulumi up``: one pod template change, one canary."""
    for name, v in {model: version, **(also or {})}.items():
        sh(["pulumi", "config", "set", "--path", f"mlplatform:models.{name}.serving.version", v or UNPINNED, "--stack", stack])
    sh(["pulumi", "up", "--yes", "--non-interactive", "--stack", stack, "--policy-pack", "policy"])


def rollout_state(model: str, sh: Runner, obj: str | None = None) -> dict:
    return json.loads(sh(["kubectl", "-n", NAMESPACE, "get", "rollout", obj or rollout_name(model), "-o", "json"]))


def current_run(model: str, rollout: dict, sh: Runner) -> dict | None:
    """The AnalysisRun of the Rollout's current canary (its background analysis), or None yet."""
    ref = ((rollout.get("status") or {}).get("canary") or {}).get("currentBackgroundAnalysisRunStatus") or {}
    if not ref.get("name"):
        return None
    return json.loads(sh(["kubectl", "-n", NAMESPACE, "get", "analysisrun", ref["name"], "-o", "json"]))


def _metrics(run: dict, phases: tuple[str, ...]) -> list[dict]:
    return [m for m in (run.get("status") or {}).get("metricResults", []) if m.get("phase") in phases]


def describe(metrics: list[dict]) -> str:
    """``name Phase (last value V)`` per metric: what the pipeline log and the rejection record say."""
    parts = []
    for m in metrics:
        last = (m.get("measurements") or [{}])[-1]
        parts.append(f"{m['name']} {m['phase']} (last value {last.get('value', last.get('message', '?'))})")
    return "; ".join(parts)


# Outcomes of one canary.
HEALTHY, FAILED, NOT_JUDGED = "Healthy", "Failed", "NotJudged"
# Exit codes (the module docstring; Makefile `deliver` and the CI files read 3 as "not judged").
DELIVERED, REJECTED, USAGE, NOT_JUDGED_EXIT = 0, 1, 2, 3
# The controller's abort message when a metric failed (rollout/analysis.go, v1.9): the fallback
# evidence when the AnalysisRun itself cannot be read.
_ABORT_FAILED = re.compile(r'Metric "([\w-]+)" assessed Failed')


def unmeasured(run: dict | None, measured: tuple[str, ...]) -> list[str]:
    """The metrics of ``measured`` that the run defines (its spec; all of them without one) and that
    have no Successful measurement: what a rollout that turned Healthy never judged."""
    if run is None:
        return list(measured)
    defined = {m["name"] for m in (run.get("spec") or {}).get("metrics", [])} or set(measured)
    results = {m["name"]: m for m in (run.get("status") or {}).get("metricResults", [])}

    def succeeded(m: dict) -> bool:
        return int(m.get("successful") or 0) > 0 or any(x.get("phase") == "Successful" for x in m.get("measurements") or [])

    return [n for n in measured if n in defined and not succeeded(results.get(n, {}))]


def judge(
    rollout: dict, run: dict | None, version: str, measured: tuple[str, ...] = (), key: str = VERSION_ANNOTATION
) -> tuple[str, str] | None:
    """The canary's outcome from the Rollout and its AnalysisRun, or None while it is still going.
    FAILED only on evidence: a judging metric (rollout_specs.JUDGING_METRICS) Failed. HEALTHY, where
    ``measured`` names metrics (a vLLM canary: llm_canary.JUDGING_METRICS), only once each of them
    that the run defines had a Successful measurement: the pause can end (``stepSeconds``) before the
    analysis measured anything - a canary whose analysis only saw Inconclusive data was never judged,
    and must not become the champion. ``key``: the annotation naming the version (version_key)."""
    status = rollout.get("status") or {}
    # Right after `pulumi up` changes the template the status still describes the previous generation
    # (Pulumi does not await a custom resource), and it stays so while the controller is down: trust it
    # only once the controller has observed this generation, as Argo's own client does
    # (utils/rollout/rolloututil.go GetRolloutPhase, isGenerationObserved, v1.9.0).
    generation = (rollout.get("metadata") or {}).get("generation")
    if generation is not None and str(status.get("observedGeneration")) != str(generation):
        return None
    annotations = rollout["spec"]["template"]["metadata"].get("annotations") or {}
    phase, message = status.get("phase"), status.get("message", "")
    if annotations.get(key) == version and phase == "Healthy" and status.get("stableRS") == status.get("currentPodHash"):
        if missing := unmeasured(run, measured):
            return (
                NOT_JUDGED,
                f"the rollout completed but the analysis never measured {', '.join(missing)} Successful "
                "(stepSeconds shorter than the analysis needs, or no data): not a verdict on the model",
            )
        return HEALTHY, message
    run_phase = ((run or {}).get("status") or {}).get("phase")
    if run_phase == "Failed":
        failed = _metrics(run, ("Failed",))
        if judging := [m for m in failed if m["name"] in JUDGING_METRICS]:
            return FAILED, describe(judging)
        return (
            NOT_JUDGED,
            f"the analysis failed only on {describe(failed) or 'no metric'}: its warm-up could not run, not a verdict on the model",
        )
    if run_phase == "Error":
        return (
            NOT_JUDGED,
            f"the analysis ended in Error ({describe(_metrics(run, ('Error',)))}): a query failed, not a verdict on the model",
        )
    pauses = {c.get("reason") for c in status.get("pauseConditions") or []}
    if run_phase == "Inconclusive" or "InconclusiveAnalysisRun" in pauses:
        return NOT_JUDGED, f"the analysis is inconclusive ({describe(_metrics(run or {}, ('Inconclusive',)))}): too little traffic to judge"
    if status.get("abort") and (m := _ABORT_FAILED.search(message)) and m.group(1) in JUDGING_METRICS and run is None:
        return FAILED, message
    if status.get("abort"):
        return NOT_JUDGED, f"the rollout was aborted without a failed analysis: {message}"
    if phase == "Degraded":
        return NOT_JUDGED, f"the rollout is Degraded without a failed analysis (canary pods never ready?): {message}"
    return None


def wait(
    model: str, version: str, sh: Runner, timeout_s: float, poll_s: float = 10, obj: str | None = None, measured: tuple[str, ...] = ()
) -> tuple[str, str]:
    """(HEALTHY | FAILED | NOT_JUDGED, why) once the canary is decided, or NOT_JUDGED at the timeout.
    Once the rollout completes the controller no longer names its run (the status is reset), so the
    last run seen is read again by name for its final measurements (``judge``'s ``measured``)."""
    deadline = time.monotonic() + timeout_s
    seen: dict | None = None
    while True:
        ro = rollout_state(model, sh, obj)
        run = current_run(model, ro, sh)
        if run is not None:
            seen = run
        elif seen is not None and measured:
            with contextlib.suppress(subprocess.CalledProcessError, ValueError):
                seen = json.loads(sh(["kubectl", "-n", NAMESPACE, "get", "analysisrun", seen["metadata"]["name"], "-o", "json"]))
            run = seen
        if (verdict := judge(ro, run, version, measured, version_key(model, obj))) is not None:
            return verdict
        if time.monotonic() >= deadline:
            status = ro.get("status") or {}
            return NOT_JUDGED, f"timed out after {timeout_s:.0f}s (phase {status.get('phase')}: {status.get('message', '')})"
        time.sleep(poll_s)


def promote_full(model: str, sh: Runner, obj: str | None = None) -> None:
    """Skip every remaining step and the analysis: what ``kubectl argo rollouts promote --full`` does
    (argo-rollouts v1.9 pkg/kubectl-argo-rollouts/cmd/promote/promote.go: a merge patch of
    ``status.promoteFull: true`` on the status subresource; the controller then scales the new
    ReplicaSet to full and makes it stable). Plain kubectl: the pipeline needs no plugin."""
    patch = json.dumps({"status": {"promoteFull": True}})
    sh(["kubectl", "-n", NAMESPACE, "patch", "rollout", obj or rollout_name(model), "--subresource=status", "--type=merge", "-p", patch])


def full_promotion(
    stack: str, model: str, version: str, sh: Runner, timeout_s: float, poll_s: float, obj: str | None = None, also: Follow | None = None
) -> int:
    """The emergency path: pin ``version`` (bytes that already served as champion here) and promote
    the Rollout in full, no canary; wait until it is stable. ``also``: a base's adapters going back with it."""
    pin(stack, model, version, sh, also={a: to for a, (to, _) in (also or {}).items()})
    if (judge(rollout_state(model, sh, obj), None, version, key=version_key(model, obj)) or ("",))[0] != HEALTHY:
        promote_full(model, sh, obj)
    outcome, message = wait(model, version, sh, timeout_s, poll_s, obj)
    if outcome != HEALTHY:
        print(f"{model}: full promotion of {version} on {stack} did not finish: {message}", file=sys.stderr)
        return REJECTED
    print(f"{model}: {stack} serves {version} (full promotion, no canary)")
    return DELIVERED


@dataclass(frozen=True)
class _Source:
    """The stack a received model comes from: its store, read (and copied from) as ``role``."""

    stack: str
    store: str
    role: str | None  # this stack's promotion role (None: the deploy identity)
    session: str


def _source_of(stack: str, model: str, sh: Runner, stacks_dir: Path) -> _Source | None:
    """Where a received model comes from (None: this stack's own runs publish it)."""
    src_stack = source_stack(stack, model, stacks_dir)
    if not src_stack:
        return None
    return _Source(src_stack, source_store(stack, model, src_stack, sh, stacks_dir), promotion_role(stack, sh), f"deliver-{stack}-{model}")


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

    base = adapter_of(stack, model, stacks_dir)
    obj = rollout_of(stack, model, stacks_dir)
    store = store_of(stack, sh)
    source = _source_of(stack, model, sh, stacks_dir)
    if source is None:  # this stack's own runs published versions only: the pipeline adopts them (issue 24 item 8)
        registry.adopt(store, model, champion=not canaries(stack, stacks_dir), reason=f"pipeline: adopted on {stack}")
    version = _incoming(stack, model, store, source, promoter)
    if version is None:
        return 0
    current = registry.get_alias(store, model, "champion")
    current_version = current["version"] if current else None
    if base:
        done, current_version = _adapter_precheck(stack, model, base, version, current_version, store, source, promoter, stacks_dir, sh)
        if done:
            return DELIVERED
    if _settled(stack, model, store, version, current_version, sh):
        return DELIVERED
    if current_version is not None and registry.served_as_champion(store, model, version):
        if base:
            check_adapter_base(stack, model, base, version, store, source, promoter)
        return _roll_back_to(stack, model, store, version, current_version, sh, timeout_s, poll_s, obj, stacks_dir)
    follow: Follow = {}
    if base:
        check_adapter_base(stack, model, base, version, store, source, promoter)
    else:
        follow = adapters_to_follow(stack, model, version, store, source, promoter, stacks_dir)
    if source:
        _copy(stack, model, version, store, source, promoter, stacks_dir, adapter=base is not None)
        _copy_followers(stack, follow, store, source, promoter, stacks_dir)
    if current_version is None and not base:
        # The stack's first version: there are no stable pods to compare with (Argo rolls a first
        # revision out at full scale, without steps). It becomes the champion, then the pin follows.
        registry.move(store, model, "champion", version, reason=f"pipeline: first version on {stack} (no stable to canary against)")
        pin(stack, model, version, sh)
        print(f"{model}: {version} is {stack}'s first version: champion, served without a canary")
        return DELIVERED
    return _canary(stack, model, store, version, current_version, sh, timeout_s, poll_s, obj, follow)


def _copy_followers(stack: str, follow: Follow, store: str, source: _Source, promoter: Promoter, stacks_dir: Path) -> None:
    """The adapter versions that move with a base, copied after it (the copy checks the base is here)."""
    for adapter, (new, _) in follow.items():
        if new:
            _copy(stack, adapter, new, store, source, promoter, stacks_dir, adapter=True)


def _adapter_precheck(
    stack: str,
    model: str,
    base: str,
    version: str,
    champion: str | None,
    store: str,
    source: _Source | None,
    promoter: Promoter,
    stacks_dir: Path,
    sh: Runner,
) -> tuple[bool, str | None]:
    """What an adapter's delivery does before anything moves, where its base moved (returns: done?, the
    version to go back to). A champion trained on another base version than the one served (its base
    moved on without it: ``adapters_to_follow``) can serve no more: nothing to go back to, and when it
    is also what is delivered, it is unpinned and that is all (nothing retrained on the base served yet).
    An incoming version trained on another base version than the one served is held, not refused, where
    that base version was rejected here or this stack trains the adapter (its next run trains on the
    base served): the stack keeps what it serves, the run stays green."""
    from training import registry

    stale = champion is not None and not on_served_base(store, model, champion, base)
    if stale:
        print(f"{model}: champion {champion} was trained on {base}/{trained_base(store, model, champion)}, not the {base} served")
    trained = (_adapter_record(model, version, store, source, promoter).get("base") or {}).get("version")
    served = (registry.get_alias(store, base, "champion") or {}).get("version")
    if served is None or trained == served:
        return False, None if stale else champion
    if not (trains_here(_entries(stack, stacks_dir).get(model)) or version == champion or _rejected(store, base, trained)):
        return False, None if stale else champion  # refused by check_adapter_base, one line
    why = "rejected here" if _rejected(store, base, trained) else f"not the {base}/{served} {stack} serves"
    print(
        f"{model}: {version} was trained on {base}/{trained} ({why}): not delivered; "
        + (
            f"not served until a version trained on {base}/{served} is (the adapter's fine-tuning Job trains on it)"
            if stale
            else f"{stack} keeps {champion or 'no version of ' + model}"
        )
    )
    if stale:
        pin(stack, model, None, sh)
    return True, None


def _rejected(store: str, model: str, version: str | None) -> bool:
    from training import registry

    return version is not None and registry.rejection(store, model, version) is not None


def _adapter_record(model: str, version: str, store: str, source: _Source | None, promoter: Promoter) -> dict:
    """An adapter version's record, read where the version is: the source store (as the promotion role) or this one."""
    from llm import lora_gate

    if source is not None:
        with promoter(source.role, source.session):
            return lora_gate.adapter_record(source.store, model, version)
    return lora_gate.adapter_record(store, model, version)


def _copy(
    stack: str, model: str, version: str, store: str, source: _Source, promoter: Promoter, stacks_dir: Path, *, adapter: bool
) -> None:
    """The received version into this stack's store as its candidate, byte for byte (each file checked
    as read and as landed: a flipped byte is refused and nothing lands), as the promotion role."""
    from training import registry

    reason = f"pipeline: promote from {source.stack} for a canary"
    with promoter(source.role, source.session):
        if adapter:
            from llm import lora_gate

            # Only where this store holds the adapter's base version with the same digest.
            lora_gate.promote(source.store, store, model, version, reason=reason)
        else:
            # An LLM version must be what this stack pins (source, revision) before a byte is copied:
            # the weights init container would refuse it anyway, after a GPU node was paid for.
            _check_llm_pin(stack, model, source.store, version, stacks_dir)
            registry.promote_between(source.store, store, model, version, reason=reason, champion=False)
    print(f"{model}: {version} copied from {source.stack} to {stack} (digests verified), candidate there")


def check_adapter_base(stack: str, model: str, base: str, version: str, store: str, source: _Source | None, promoter: Promoter) -> None:
    """A LoRA adapter version only fits the exact base weights it was trained on: it is delivered only
    where ``stack`` serves that base version (the base's champion in its store, what ``up`` pins),
    checked before a byte is copied; otherwise AdapterRefused, one line (exit 1, a refused copy). Its
    record is read where the version is: the source store (as the promotion role) or this one."""
    from llm import lora_gate
    from training import registry

    b = _adapter_record(model, version, store, source, promoter).get("base") or {}
    trained = f"{b.get('model')}/{b.get('version')}"
    served = registry.get_alias(store, base, "champion")
    if served is None:
        raise lora_gate.AdapterRefused(
            f"{model}/{version} was trained on {trained}; {stack} serves no version of {base} yet: deliver {base} first"
        )
    if (b.get("model"), b.get("version")) != (base, served["version"]):
        raise lora_gate.AdapterRefused(f"{model}/{version} was trained on {trained}; {stack} serves {base}/{served['version']}")


def served_adapters(stack: str, base: str, store: str, stacks_dir: Path = ROOT / "stacks") -> dict[str, str]:
    """The adapters of ``base`` this stack serves -> their version: the pin in the stack file (what
    ``pulumi config set`` wrote), else the champion (what the last ``up`` recorded); ``champion``: none."""
    from training import registry

    models = yaml.safe_load((stacks_dir / f"Pulumi.{stack}.yaml").read_text())["config"].get("mlplatform:models") or {}
    served = {}
    for name, entry in sorted(models.items()):
        if (entry or {}).get("adapterOf") != base:
            continue
        pinned = (entry.get("serving") or {}).get("version")
        version = pinned or (registry.get_alias(store, name, "champion") or {}).get("version")
        if version and version != UNPINNED:
            served[name] = version
    return served


# adapter -> (the version it serves with the base's new version, None: not served until retrained on
# it; the version it serves now)
Follow = dict[str, tuple[str | None, str]]


def _entries(stack: str, stacks_dir: Path) -> dict:
    return yaml.safe_load((stacks_dir / f"Pulumi.{stack}.yaml").read_text())["config"].get("mlplatform:models") or {}


def trained_base(store: str, adapter: str, version: str) -> str | None:
    """The base version an adapter version was trained on (its lora-adapter.json)."""
    from llm import lora_gate

    return (lora_gate.adapter_record(store, adapter, version).get("base") or {}).get("version")


def trains_here(entry: dict | None) -> bool:
    """Whether a stack file's adapter entry is fine-tuned on that stack (not received from another)."""
    entry = entry or {}
    return "source" not in entry and (entry.get("training") or {}).get("kind") == "lora"


def on_served_base(store: str, adapter: str, version: str, base: str) -> bool:
    """Whether ``adapter``/``version`` was trained on the base version this store's champion names."""
    from training import registry

    served = registry.get_alias(store, base, "champion")
    return served is not None and trained_base(store, adapter, version) == served["version"]


def adapters_to_follow(
    stack: str, model: str, version: str, store: str, source: _Source | None, promoter: Promoter, stacks_dir: Path
) -> Follow:
    """A new base version must not strand the adapters the base's pods serve: their fetch refuses an
    adapter of another base version, so the canary pods would never start. Each such adapter moves with
    the base, in the same canary: one this stack trains stops being served (its Job, keyed by the base
    version served, retrains it on the new one at the next ``up``; then it is delivered); one received
    from the base's source stack becomes that stack's champion of it when that was trained on this very
    base version. Anything else is refused before anything moves, in one line saying the way through."""
    from llm import lora_gate

    entries = _entries(stack, stacks_dir)
    follow: Follow = {}
    for adapter, served in served_adapters(stack, model, store, stacks_dir).items():
        trained = trained_base(store, adapter, served)
        if trained == version:
            continue
        entry = entries.get(adapter) or {}
        if trains_here(entry):
            follow[adapter] = (None, served)
            continue
        same_source = source is not None and entry.get("source") == entries[model].get("source")
        if same_source and (new := _trained_on(adapter, model, version, store, source, promoter)):
            follow[adapter] = (new, served)
            continue
        way = (
            f"deliver {adapter} on {source.stack} first (it moves with {model} there), or unpin it here"
            if same_source
            else f"unpin it in stacks/Pulumi.{stack}.yaml (models.{adapter}.serving.version: {UNPINNED}) and deliver {model} again"
        )
        raise lora_gate.AdapterRefused(f"{model}/{version}: {stack} serves {adapter}/{served}, trained on {model}/{trained}; {way}")
    return follow


def adapters_back_to(stack: str, base: str, version: str, store: str, stacks_dir: Path) -> Follow:
    """Rolling ``base`` back to ``version``: each served adapter trained on another base version goes
    back to its latest earlier champion trained on ``version`` (not rejected), or with none stops being
    served (the emergency path has no refusal: the base goes back either way)."""
    from training import registry

    follow: Follow = {}
    for adapter, served in served_adapters(stack, base, store, stacks_dir).items():
        if trained_base(store, adapter, served) == version:
            continue
        earlier = [v for v in reversed(registry.champions(store, adapter)) if v != served and not registry.rejection(store, adapter, v)]
        follow[adapter] = (next((v for v in earlier if trained_base(store, adapter, v) == version), None), served)
    return follow


def _trained_on(adapter: str, model: str, version: str, store: str, source: _Source, promoter: Promoter) -> str | None:
    """The source stack's champion of ``adapter`` when it was trained on ``model``/``version`` and was
    not rejected on this stack; None otherwise."""
    from llm import lora_gate
    from training import registry

    with promoter(source.role, source.session):
        champ = registry.get_alias(source.store, adapter, "champion")
        record = lora_gate.adapter_record(source.store, adapter, champ["version"]) if champ else {}
    b = record.get("base") or {}
    if champ is None or (b.get("model"), b.get("version")) != (model, version):
        return None
    return None if registry.rejection(store, adapter, champ["version"]) else champ["version"]


def _roll_back_to(
    stack: str,
    model: str,
    store: str,
    version: str,
    current: str,
    sh: Runner,
    timeout_s: float,
    poll_s: float,
    obj: str | None = None,
    stacks_dir: Path = ROOT / "stacks",
) -> int:
    """``version`` already served as champion here (e.g. the source stack rolled back to it): the
    emergency path. The registry rolls back first (``current`` rejected, audited, candidate moved
    off it: the record says what the cluster is about to do), then a full promotion, no canary."""
    from training import registry

    registry.rollback(store, model, to=version, reason=f"pipeline: {version} already served as {stack}'s champion: rollback from {current}")
    print(f"{model}: {version} already served as {stack}'s champion: rollback from {current} (rejected), full promotion, no canary")
    return _base_back_with_adapters(stack, model, store, version, sh, timeout_s, poll_s, obj, stacks_dir)


def _base_back_with_adapters(
    stack: str, model: str, store: str, version: str, sh: Runner, timeout_s: float, poll_s: float, obj: str | None, stacks_dir: Path
) -> int:
    """The full promotion of a model's rolled-back ``version``; for an LLM base, its served adapters go
    back with it (``adapters_back_to``: registry first, then one pin for all)."""
    from training import registry

    also = {} if adapter_of(stack, model, stacks_dir) else adapters_back_to(stack, model, version, store, stacks_dir)
    for adapter, (to, served) in also.items():
        if to:
            registry.rollback(store, adapter, to=to, reason=f"pipeline: rolled back with {model}/{version} on {stack}")
            print(f"{adapter}: back to {to} with {model}/{version} ({served} rejected)")
        else:
            print(f"{adapter}: no earlier version trained on {model}/{version}: not served until retrained on it", file=sys.stderr)
    return full_promotion(stack, model, version, sh, timeout_s, poll_s, obj, also)


def roll_back(
    stack: str, model: str, sh: Runner = run, timeout_s: float = 3600, poll_s: float = 10, stacks_dir: Path = ROOT / "stacks"
) -> int:
    """``make rollback``, after ``ops.models rollback`` moved the store's champion back: serve that
    champion at once (full promotion, no canary: the emergency path), a base with its adapters."""
    from training import registry

    store = store_of(stack, sh)
    champ = registry.get_alias(store, model, "champion")
    if champ is None:
        raise DeliveryError(f"{model}: no champion in {stack}'s store: nothing to roll back to")
    if (base := adapter_of(stack, model, stacks_dir)) and not on_served_base(store, model, champ["version"], base):
        # ops.models rollback picks a version on the served base (adapter_rollback_target); a champion moved by hand may not be
        raise DeliveryError(
            f"{model}: champion {champ['version']} was trained on {base}/{trained_base(store, model, champ['version'])}, not the {base} "
            f"{stack} serves: its pods would refuse it; nothing pinned"
        )
    return _base_back_with_adapters(
        stack, model, store, champ["version"], sh, timeout_s, poll_s, rollout_of(stack, model, stacks_dir), stacks_dir
    )


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


def _asleep(stack: str, model: str, version: str, keeps: str, sh: Runner, obj: str | None) -> bool:
    """Scaled to zero (asleep outside its awake window, or KEDA at minReplicas 0): no canary pod would
    run and no stable side serve, so the analysis could never measure; the pin stays (a line says so)."""
    if (rollout_state(model, sh, obj).get("spec") or {}).get("replicas", 1) != 0:
        return False
    print(
        f"{model}: no canary of {version} on {stack}: its Rollout has spec.replicas 0 (scaled to zero), nothing to compare; "
        f"{version} stays the candidate, {stack} keeps {keeps}; run again while it serves",
        file=sys.stderr,
    )
    return True


def _canary(
    stack: str,
    model: str,
    store: str,
    version: str,
    current_version: str | None,
    sh: Runner,
    timeout_s: float,
    poll_s: float,
    obj: str | None = None,
    follow: Follow | None = None,
) -> int:
    """Pin ``version``, wait for the Rollout's analysed canary, and record its outcome: champion
    (DELIVERED); rejected on a failed analysis (REJECTED); anything else leaves it the candidate
    (NOT_JUDGED). Unless it became champion, the pin goes back to ``current_version`` (None: an
    adapter's first version on this stack, canaried on its base's pods: the pin is removed).
    ``follow``: adapters that move with this base version (``adapters_to_follow``), pinned in the same
    ``up`` and judged by the same canary (their golden prompts are among its measurements): passed, they
    are champions with it; failed, the pair is rejected (the canary cannot say which of them failed,
    and a rejected pair leaves the stack on what it served, the next runs settled)."""
    from training import registry

    follow = follow or {}
    keeps = current_version or f"no version of {model}"

    if _asleep(stack, model, version, keeps, sh, obj):
        return NOT_JUDGED_EXIT
    moved = {a: new for a, (new, _) in follow.items() if new}
    with_adapters = "".join(
        f", with {a}/{new}" if new else f", without {a} (retrained on it by the next up)" for a, (new, _) in follow.items()
    )
    print(f"{model}: canary of {version}{with_adapters} on {stack} (stable: {keeps})")
    pin(stack, model, version, sh, also={a: new for a, (new, _) in follow.items()})
    measured = llm_canary.JUDGING_METRICS if obj == rollout_name(model, "vllm") else ()
    outcome, message = wait(model, version, sh, timeout_s, poll_s, obj, measured)
    if outcome == HEALTHY:
        for a, new in moved.items():  # the adapters first: a base champion never names stale adapters
            registry.move(store, a, "champion", new, reason=f"pipeline: canary passed on {stack} with {model}/{version}", forward_only=True)
        registry.move(store, model, "champion", version, reason=f"pipeline: canary passed on {stack}", forward_only=True)
        print(f"{model}: canary passed on {stack}: {version}{with_adapters} is the champion (was {keeps})")
        return DELIVERED
    # The desired state back on what serves (Argo returns to the stable ReplicaSet without steps).
    pin(stack, model, current_version, sh, also={a: served for a, (_, served) in follow.items()})
    if outcome == FAILED:
        reason = f"canary failed its analysis on {stack}: {message}"
        registry.reject(store, model, version, reason=reason)
        for a, new in moved.items():
            registry.reject(store, a, new, reason=f"{reason} (judged with {model}/{version})")
        print(f"{model}: {reason}; {version} rejected, {stack} stays on {keeps}", file=sys.stderr)
        return REJECTED
    print(
        f"{model}: canary of {version} on {stack} NOT JUDGED: {message}; {version} stays the candidate (not rejected), "
        f"{stack} stays on {keeps}; the next run tries again",
        file=sys.stderr,
    )
    return NOT_JUDGED_EXIT


def pin_champions(stack: str, sh: Runner = run, stacks_dir: Path = ROOT / "stacks") -> None:
    """Before ``pulumi up``: pin every model (TF and vLLM) to the stack's current champion, so an up for another
    change (a new image, a config edit) keeps serving what serves now instead of un-pinning it (the
    stack files in git carry no version: the store's champion is the record). A stack with no store
    or no champion yet stays unpinned (its first version is delivered by this step afterwards)."""
    from training import registry

    try:
        store = store_of(stack, sh)
    except DeliveryError:
        print(f"{stack}: no modelStore output yet (first up): nothing to pin")
        return
    entries = _entries(stack, stacks_dir)
    for model in delivered_models(stack, stacks_dir):
        if ((entries.get(model) or {}).get("serving") or {}).get("version") == UNPINNED:
            print(f"{model}: unpinned in stacks/Pulumi.{stack}.yaml (serving.version: {UNPINNED}): left unpinned")
            continue
        champ = registry.get_alias(store, model, "champion") if store else None
        if not champ:
            continue
        version, base = champ["version"], adapter_of(stack, model, stacks_dir)
        if base and not on_served_base(store, model, version, base):
            # its base moved on (a base delivered without it): the pods' fetch would refuse it
            print(
                f"{model}: champion {version} was trained on {base}/{trained_base(store, model, version)}, not the {base} served: unpinned"
            )
            version = UNPINNED
        sh(["pulumi", "config", "set", "--path", f"mlplatform:models.{model}.serving.version", version, "--stack", stack])
        if version != UNPINNED:
            print(f"{model}: pinned to {stack}'s champion {version}")


def committed_unpins(stack: str, root: Path = ROOT) -> set[str]:
    """The models a person took off in the committed stack file (``serving.version: champion``): read
    from git's HEAD, not the working copy, where this run's own ``pulumi config set`` (``make pin``, a
    canary's pins) also write ``champion`` for an adapter left behind by its base. No git: the file."""
    rel = f"stacks/Pulumi.{stack}.yaml"
    try:
        text = subprocess.run(["git", "-C", str(root), "show", f"HEAD:{rel}"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        text = (root / rel).read_text()
    models = (yaml.safe_load(text) or {}).get("config", {}).get("mlplatform:models") or {}
    return {name for name, entry in models.items() if ((entry or {}).get("serving") or {}).get("version") == UNPINNED}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ops.deliver", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stack", required=True)
    p.add_argument("--model", help="one model (default: every model in the stack file, TF and vLLM)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the canary to finish")
    p.add_argument("--pin-champions", action="store_true", help="only pin every model to the stack's champion (before pulumi up)")
    p.add_argument("--rollback", action="store_true", help="serve --model's champion at once, no canary (after `ops.models rollback`)")
    args = p.parse_args(argv)
    from training import registry

    if args.pin_champions:
        pin_champions(args.stack)
        return 0
    if args.rollback and not args.model:
        p.error("--rollback needs --model")
    try:
        if args.rollback:
            return roll_back(args.stack, args.model, timeout_s=args.timeout)
        # One model after the other: each canary is analysed alone; the first failure fails the step.
        held = committed_unpins(args.stack)
        for model in [args.model] if args.model else delivered_models(args.stack):
            if model in held:
                print(f"{model}: serving.version: {UNPINNED} in the committed stacks/Pulumi.{args.stack}.yaml: not served, not delivered")
                continue
            if code := deliver(args.stack, model, timeout_s=args.timeout):
                return code
        return DELIVERED
    except DeliveryError as exc:
        print(f"deliver: {exc}", file=sys.stderr)
        return USAGE
    except registry.RegistryError as exc:  # a refused copy (digests), a conflict: nothing was promoted
        print(f"deliver: {exc}", file=sys.stderr)
        return REJECTED


if __name__ == "__main__":
    sys.exit(main())
