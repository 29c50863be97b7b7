"""The analysed canary of a vLLM model (``runtime: vllm``): its Argo Rollouts strategy, its
AnalysisTemplate (vLLM's own metrics + the model's golden prompts) and the golden Job. Pure (no Pulumi,
no pydantic): the tests run the very template the program renders against real vLLM servers and a real
Prometheus (tests/llm/test_canary.py, with tests/monitoring/argo_analysis.py). The TF model server's
canary is components/lib/rollout_specs.py; what both share (conditions that are inconclusive without
data, the pod-template-hash labels, the args) comes from there.

**GPU-short pools: a replica-ratio canary of exactly one pod.** A GPU replica cannot be conjured: the
TF canary's traffic routing keeps every stable pod and adds canary pods (Argo Rollouts v1.9.0
utils/replicaset/canary.go ``CalculateReplicaCountsForTrafficRoutedCanary``: the stable ReplicaSet
stays at spec.replicas; ``dynamicStableScale`` shrinks it only *after* traffic left it, i.e. after the
canary pod runs), so on a pool at its maximum the canary pod would stay Pending. The basic canary
(no ``trafficRouting``) is the one Argo path that takes a stable pod away *first*:
``CalculateReplicaCountsForBasicCanary`` scales the stable ReplicaSet down toward its desired count
within ``maxUnavailable`` in the same reconcile that adds the canary within ``maxSurge``. So:

* ``maxSurge: 1`` always: where the pool has a free GPU (fewer replicas than it holds) the canary is
  *added* beside every stable replica;
* ``maxUnavailable: 1`` where the pool cannot hold ``maxReplicas + 1`` replicas (``gpu_short``), else 0;
* one ``setWeight`` step with the weight ``one_pod_weight`` picks, then a pause: for every replica
  count R the desired split (``approximateWeightedCanaryStableReplicaCounts``, ported as
  rollout_specs.effective_weight) is one canary pod beside R stable pods while R is below the pool's
  limit (surge: capacity never drops), and one canary pod beside R - 1 stable pods at the limit: the
  controller deletes one stable pod and its GPU goes to the Pending canary (capacity R - 1 + 1 for the
  canary's length). tests/unit/test_llm_canary.py checks both for every R.

Traffic then reaches the canary as the Service spreads it over pods (one pod of R or R + 1); the same
golden prompts reach both sides from the golden Job, so the latency comparison has data on a quiet
stack. The route's Service selects every pod of the model; the controller points ``-canary`` and
``-stable`` (selector + ``rollouts-pod-template-hash``) at one side each, for the golden Job.

**What judges the version** (each only with data: ``rollout_specs.judged`` - an empty or NaN result is
Inconclusive, never Failed):

* ``error-ratio``: the canary's share of 5xx answers on the OpenAI completion routes minus the stable
  side's (``http_requests_total{handler, status}``, prometheus-fastapi-instrumentator's counter that
  vLLM attaches in vllm/entrypoints/serve/instrumentator/metrics.py; statuses grouped ``2xx``...);
* ``client-error-ratio``: the same for 4xx answers (a canary refusing requests the stable side
  answers);
* ``ttft-p95``: the canary's p95 time to first token over the stable side's
  (``vllm:time_to_first_token_seconds``), the stable one floored (``p95_ratio_query``: its resolution on
  the platform's buckets, components/lib/vllm_buckets.py);
* ``itl-p95``: the same for the inter-token latency (``vllm:inter_token_latency_seconds``);
* ``golden``: the canary's share of failed golden answers in the window (llm/golden.py), judged only
  once every golden prompt was answered by the canary in the window (``golden_query``: why windowed).

Every Prometheus metric waits until both sides answered ``minRequests`` completion requests in the
window *and* had answered a fifth as many before it (``with_data``: the warm-up, never judged); the
golden Job (a ``job`` metric) brings that traffic where users do not.

**The first window waits for the warm-up.** The run starts at the pause, when the canary pod has
just become available and has served nothing; the golden Job starts with the run. A first
measurement whose window holds the canary's first requests (a fresh engine's first batches, the
Job's own start) judges a cold canary against a warm stable side: on the real vLLM it read one good
canary Inconclusive and made a one-slot canary look slow only in that window. So a window is judged
only once each side had answered ``warm_requests`` (a fifth of ``minRequests``, 10 by default; a
fresh engine's cold requests are its first few) completions *before the window started* (the counter
``offset`` by the window: a restarted pod is cold again), and the first measurement is scheduled for
when that is expected: ``initialDelay`` = window + the time the golden Job needs for ``minRequests``
at ``warmupRate`` (``initial_delay_seconds``, 25 s by default): a fifth of it for the warm-up
requests, the rest for the Job's pod to start and a scrape interval (15 s) to see the counter. A Job
later than that only makes the first measurements Inconclusive, within ``inconclusiveLimit``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.lib.keda_specs import PROMETHEUS_URL
from components.lib.rollout_specs import (
    API_VERSION,
    ARG_CANARY,
    ARG_MODEL,
    ARG_NAMESPACE,
    ARG_STABLE,
    POD_HASH_TARGET_LABEL,
    effective_weight,
    inconclusive_limit,
    judged,
    warmup_seconds,
)

if TYPE_CHECKING:
    from components.config import CanaryConfig

ARG_SERVICE = "service"  # the Service the ServiceMonitor scrapes: Prometheus' `service` target label

METRIC_ERRORS = "error-ratio"
METRIC_CLIENT_ERRORS = "client-error-ratio"
METRIC_TTFT = "ttft-p95"
METRIC_ITL = "itl-p95"
METRIC_GOLDEN = "golden"
METRIC_GOLDEN_JOB = "golden-traffic"
# What judges the version; the golden Job only brings data (ops/deliver.py rejects only on these).
JUDGING_METRICS = (METRIC_ERRORS, METRIC_CLIENT_ERRORS, METRIC_TTFT, METRIC_ITL, METRIC_GOLDEN)

# The OpenAI routes whose answers are judged (prometheus-fastapi-instrumentator's `handler` label is
# the route's path template).
COMPLETION_HANDLERS = "/v1/chat/completions|/v1/completions"
GOLDEN_METRIC = "mlplatform_llm_golden_answers_total"  # llm/golden.py METRIC
GOLDEN_APP = "llm-golden"
GOLDEN_PORT = 9102
GOLDEN_PORT_NAME = "metrics"
GOLDEN_UID = 10001  # the serving image's user (serving/Dockerfile), whose Python runs the Job
GOLDEN_DIR = "/golden"
# Floors of the stable side's p95s: below them a ratio measures noise (a few ms on an idle GPU). Both
# on a doubling chain of the buckets (vllm_buckets): floor x 1.25, 1.5, 2, 3 are bucket bounds.
TTFT_FLOOR_S = 0.05
ITL_FLOOR_S = 0.00625


def golden_path(root: Path, model: str) -> Path:
    """The golden set committed with a vLLM model's catalogue entry (llm/golden.py reads it)."""
    return root / "models" / model / "golden.yaml"


def template_name(model: str) -> str:
    return f"llm-{model}-canary"


def canary_service(obj: str) -> str:
    return f"{obj}-canary"


def stable_service(obj: str) -> str:
    return f"{obj}-stable"


# ---------------------------------------------------------------- the strategy


def gpu_short(max_replicas: int, pool_replicas: int | None) -> bool:
    """True when the pool cannot hold one more replica than the model's maximum: the canary must take
    a stable replica's GPU at that maximum. ``pool_replicas`` None (an existing cluster with GPUs,
    whose capacity the config does not know and its owner scales): the canary is added (surge)."""
    return pool_replicas is not None and max_replicas + 1 > pool_replicas


# Argo's weights are whole percents: from 12 replicas on no integer weight is closer to 1/M than to
# 1/(M+1) while giving one canary pod (tests/unit/test_llm_canary.py finds the bound by brute force).
MAX_SHORT_REPLICAS = 11


def short_pool_problem(max_replicas: int, short: bool) -> str | None:
    """Why a one-pod canary cannot work on this pool (None: it can); the config rules say it in one line."""
    if not short:
        return None
    if max_replicas < 2:
        return "the GPU pool cannot hold maxReplicas + 1 replicas and maxReplicas is 1: no stable replica would be left during a canary (raise the pool's max or maxReplicas to 2)"
    if max_replicas > MAX_SHORT_REPLICAS:
        return (
            f"the GPU pool cannot hold maxReplicas + 1 replicas and maxReplicas {max_replicas} > {MAX_SHORT_REPLICAS}: "
            "Argo Rollouts' whole-percent weights cannot make a one-pod canary there (give the pool room for one more replica)"
        )
    return None


def one_pod_weight(max_replicas: int, short: bool) -> int:
    """The setWeight that gives exactly one canary pod for every replica count 1..max_replicas (module
    docstring): beside all R stable pods (surge), and at R = max_replicas on a short pool beside R - 1.
    Surge: a weight at most 100/(M+1) makes (1 canary, R+1 pods) the closest split for every R <= M.
    Short: 100/M makes (1, M) the closest at R = M and (1, R + 1) below it."""
    if problem := short_pool_problem(max_replicas, short):
        raise ValueError(problem)
    return max(1, math.floor(100 / (max_replicas if short else max_replicas + 1)))


def canary_split(replicas: int, max_replicas: int, short: bool) -> tuple[int, int]:
    """(canary pods, stable pods) Argo Rollouts aims for at ``replicas`` with this strategy."""
    canary, stable, _ = effective_weight(replicas, one_pod_weight(max_replicas, short), max_surge=1)
    return canary, stable


# What one measurement may take beyond its interval (the queries' timeout is 20 s, and a scrape).
ANALYSIS_MARGIN_S = 30


def warm_requests(canary: CanaryConfig) -> int:
    """Completions each side must have answered before a window may be judged (module docstring)."""
    return math.ceil(canary.min_requests / 5)


def warm_seconds(canary: CanaryConfig) -> int:
    """How long the golden Job takes to bring each side ``minRequests`` completions at ``warmupRate``
    (0 without the Job: the stack's own traffic warms the canary, at a rate the config does not know)."""
    return math.ceil(canary.min_requests / canary.warmup_rate) if canary.warmup_rate > 0 else 0


def initial_delay_seconds(canary: CanaryConfig) -> int:
    """The first measurement: a warm-up (``warm_seconds``), then a full window of warm traffic."""
    return warm_seconds(canary) + canary.window_seconds


def min_step_seconds(canary: CanaryConfig) -> int:
    """The shortest pause in which the analysis either judges every metric or turns Inconclusive:
    its first measurement after ``initialDelay`` (warm-up + window), then up to ``inconclusiveLimit``
    Inconclusive ones tolerated, one more, and a margin. A shorter pause ends with the run still
    Running on no data: Argo completes the rollout unjudged (ops/deliver.py then says "not judged")."""
    return initial_delay_seconds(canary) + (inconclusive_limit(canary) + 1) * canary.interval_seconds + ANALYSIS_MARGIN_S


def step_problem(canary: CanaryConfig) -> str | None:
    """Why the pause is too short for the analysis (None: it is not); the config rules say it."""
    least = min_step_seconds(canary)
    if canary.step_seconds > least:
        return None
    return (
        f"{canary.step_seconds} too short for the analysis: it must exceed minRequests / warmupRate + windowSeconds + "
        f"(inconclusive limit + 1) x intervalSeconds + {ANALYSIS_MARGIN_S} = {least} "
        "(raise stepSeconds or warmupRate, or lower windowSeconds/intervalSeconds/minRequests)"
    )


# The pause step's index in ``strategy``'s steps: the background analysis starts there.
ANALYSIS_STARTING_STEP = 1
# Beyond the startup probe's allowance: a GPU node's provisioning (Karpenter: minutes), the multi-GB
# vLLM image's pull and the weights' init container (node-local cache filled from the store).
STARTUP_MARGIN_S = 600


def progress_deadline_seconds(pod_template: dict[str, Any]) -> int:
    """``spec.progressDeadlineSeconds`` of the vLLM Rollout: at least what its containers' startup
    probes allow (period x failureThreshold) plus ``STARTUP_MARGIN_S``. Argo's default (600 s) would
    mark a canary that is still loading its weights Degraded (ProgressDeadlineExceeded) long before
    its startup probe gives up; with ``startupSeconds`` 1800 this is 2400 s."""
    probes = [c["startupProbe"] for c in pod_template["spec"]["containers"] if "startupProbe" in c]
    allowance = max((p.get("periodSeconds", 10) * p.get("failureThreshold", 3) for p in probes), default=0)
    return allowance + STARTUP_MARGIN_S


def strategy(model: str, obj: str, canary: CanaryConfig, max_replicas: int, pool_replicas: int | None) -> dict[str, Any]:
    """``spec.strategy`` of the vLLM Rollout: a basic canary of one pod, then a pause of ``stepSeconds``
    analysed in the background (a failed metric aborts at once); then the full rollout.

    The analysis starts at the pause (``startingStep``, ``ANALYSIS_STARTING_STEP``), not with the
    rollout: Argo creates a background run as soon as the new pod hash is set
    (rollout/analysis.go ``reconcileBackgroundAnalysisRun``), when the canary pod is not even
    scheduled - a GPU node to provision, weights to fetch, minutes of load - so its measurements would
    be Inconclusive for lack of canary data and the run Inconclusive before the canary could serve.
    The setWeight step completes only once the canary pod is available, so from the pause on both
    sides serve."""
    short = gpu_short(max_replicas, pool_replicas)
    return {
        "canary": {
            "canaryService": canary_service(obj),
            "stableService": stable_service(obj),
            "maxSurge": 1,
            # Short pool: the controller may delete one stable pod first, whose GPU the canary takes.
            "maxUnavailable": 1 if short else 0,
            "analysis": {
                "startingStep": ANALYSIS_STARTING_STEP,
                "templates": [{"templateName": template_name(model)}],
                "args": [
                    {"name": ARG_CANARY, "valueFrom": {"podTemplateHashValue": "Latest"}},
                    {"name": ARG_STABLE, "valueFrom": {"podTemplateHashValue": "Stable"}},
                ],
            },
            "steps": [{"setWeight": one_pod_weight(max_replicas, short)}, {"pause": {"duration": f"{canary.step_seconds}s"}}],
        }
    }


# ---------------------------------------------------------------- the queries


def _sel(arg: str, extra: str = "") -> str:
    """One side's series of one vLLM model, as its ServiceMonitor labels them."""
    return (
        f'namespace="{{{{args.{ARG_NAMESPACE}}}}}",service="{{{{args.{ARG_SERVICE}}}}}",{POD_HASH_TARGET_LABEL}="{{{{args.{arg}}}}}"{extra}'
    )


def _completions(arg: str, extra: str = "") -> str:
    return _sel(arg, f',handler=~"{COMPLETION_HANDLERS}"{extra}')


def requests_query(arg: str, window: str) -> str:
    """Completion requests one side answered in the window (any status)."""
    return f"sum(increase(http_requests_total{{{_completions(arg)}}}[{window}]))"


def served_before_query(arg: str, window: str) -> str:
    """Completion requests one side had answered when the window started (its pods' counters then)."""
    return f"sum(http_requests_total{{{_completions(arg)}}} offset {window})"


def with_data(query: str, window: str, min_requests: int, warm: int) -> str:
    """``query`` only while both sides answered ``min_requests`` completion requests in the window and
    had answered ``warm`` before it (their warm-up: module docstring)."""
    gates = [
        f"({requests_query(arg, window)} >= {min_requests}) and on () ({served_before_query(arg, window)} >= {warm})"
        for arg in (ARG_CANARY, ARG_STABLE)
    ]
    return f"({query}) and on () " + " and on () ".join(gates)


# The instrumentator groups statuses (should_group_status_codes, its default): "2xx", "4xx", "5xx".
FIVE_XX = ',status="5xx"'
FOUR_XX = ',status="4xx"'


def status_ratio_change_query(window: str, status: str) -> str:
    """The canary's share of completion answers with ``status`` (``FIVE_XX``, ``FOUR_XX``) minus the
    stable side's; no series with that status at all is a share of 0, not "no data"."""

    def ratio(arg: str) -> str:
        hits = f"sum(rate(http_requests_total{{{_completions(arg, status)}}}[{window}]))"
        total = f"sum(rate(http_requests_total{{{_completions(arg)}}}[{window}]))"
        return f"((({hits}) or vector(0)) / {total})"

    return f"{ratio(ARG_CANARY)} - {ratio(ARG_STABLE)}"


def error_ratio_query(window: str) -> str:
    """The canary's 5xx share of completion answers minus the stable side's."""
    return status_ratio_change_query(window, FIVE_XX)


def client_error_ratio_query(window: str) -> str:
    """The canary's 4xx share minus the stable side's: the same clients sending the same requests get
    400s from the canary only when it broke their contract (a chat template, a context length, a
    served model name, a tool-call parser that the stable version accepted) - as the TF canary's."""
    return status_ratio_change_query(window, FOUR_XX)


def p95_ratio_query(histogram: str, window: str, floor_s: float) -> str:
    """The canary's p95 of ``histogram`` (a vLLM histogram, without ``_bucket``) over the stable side's,
    the latter at least ``floor_s``.

    Resolution: ``histogram_quantile`` interpolates inside a bucket. On vLLM's default buckets
    (time to first token ...0.1, 0.25...) a 2x regression could read 1.0 and a 10% one 2.4; every pod
    now runs with components/lib/vllm_buckets.py's (``--custom-histogram-buckets``): steps of at most
    x1.33 on chains closed under doubling, so a 2x slower canary reads exactly 2.0, 1.5x reads
    1.27-1.65, 1.25x at most 1.5 and 1.1x at most 1.31 (tests/unit/test_vllm_buckets.py). What is left:
    a change near the threshold (1.25x-1.65x against 1.5) may fall either side, and a p95 from few
    requests is noisy (``minRequests``). Means (``_sum/_count``) are exact but a cold canary's first
    slow requests dominate them (they rejected the good canary on the real vLLM, ratios 5.8-41), so
    they are not used."""

    def p95(arg: str) -> str:
        return f"histogram_quantile(0.95, sum by (le) (rate({histogram}_bucket{{{_sel(arg)}}}[{window}])))"

    return f"{p95(ARG_CANARY)} / clamp_min({p95(ARG_STABLE)}, {floor_s:g})"


def golden_query(prompts: int, window: str) -> str:
    """The canary's failed share of its golden answers in the window, only once each of the ``prompts``
    golden prompts was answered (pass or fail) in the window: before that, empty (inconclusive). An
    answer with an error status (4xx, 5xx) is a failure (llm/golden.py); only no answer at all
    (connection refused, timeout: the Service, not the version) is an ``error``, which the error
    ratios do not see either - so a canary that answers nothing stays inconclusive, never passes.

    Windowed, not since the Job started: the golden Job reaches "the canary" through the canary
    Service, which the controller points at the new ReplicaSet only once it is available
    (argo-rollouts rollout/service.go ``reconcileStableAndCanaryService`` / ``ensureSVCTargets``);
    until then that Service still selects the previous canary's pods - today's stable ones - so the
    first answers may be the stable version's. A window after the switch, every answer counted is the
    canary's (the pause step only starts once the canary pod is available)."""
    sel = f'namespace="{{{{args.{ARG_NAMESPACE}}}}}",model="{{{{args.{ARG_MODEL}}}}}",{POD_HASH_TARGET_LABEL}="{{{{args.{ARG_CANARY}}}}}"'

    def answers(results: str, by: str = "") -> str:
        return f'sum{by} (increase({GOLDEN_METRIC}{{{sel},result=~"{results}"}}[{window}]))'

    # The worst served model's share (the base's, each LoRA adapter's: label ``served``, llm/golden.py):
    # one adapter's failed prompts are judged against its own set, not diluted by its base's.
    ratio = f"max({answers('fail', ' by (served)')} / {answers('pass|fail', ' by (served)')})"
    return f"{ratio} and on () (count({answers('pass|fail', ' by (prompt)')} > 0) >= {prompts})"


# ---------------------------------------------------------------- the golden Job


@dataclass(frozen=True)
class Golden:
    """The golden Job's inputs: the image whose Python runs llm/golden.py (the serving image), the
    ConfigMap holding the script and the set (``golden_config_map``), the two Services' base URLs,
    the served model name, and the number of prompts (the golden metric's minimum)."""

    image: str
    config_map: str
    stable_url: str
    canary_url: str
    served_name: str
    prompts: int


def golden_labels(model: str) -> dict[str, str]:
    """The golden pods' labels: the vLLM pods' NetworkPolicy admits them, the PodMonitor scrapes them."""
    return {"app.kubernetes.io/name": GOLDEN_APP, "app.kubernetes.io/part-of": "mlplatform", "mlplatform.io/model": model}


def golden_config_map_data(script: str, golden_set: list[dict[str, Any]] | dict[str, Any]) -> dict[str, str]:
    """The ConfigMap's data: the runner (llm/golden.py's source) and the set as JSON (the Job's Python
    needs no YAML parser). Sorted keys: the same set renders the same bytes (no perpetual diff)."""
    doc = golden_set if isinstance(golden_set, dict) else {"prompts": golden_set}
    return {"golden.py": script, "set.json": json.dumps(doc, sort_keys=True, indent=1)}


def golden_job(model: str, canary: CanaryConfig, golden: Golden) -> dict[str, Any]:
    """The ``job`` metric's Job: llm/golden.py ``canary`` against both Services for the canary's length
    (rollout_specs.warmup_seconds), counts on its metrics port. Pod Security ``restricted``."""
    args = [
        f"{GOLDEN_DIR}/golden.py",
        "canary",
        *("--canary", golden.canary_url, "--stable", golden.stable_url),
        *("--canary-hash", f"{{{{args.{ARG_CANARY}}}}}", "--stable-hash", f"{{{{args.{ARG_STABLE}}}}}"),
        *("--model", golden.served_name, "--label-model", model),
        *("--set", f"{GOLDEN_DIR}/set.json"),
        *("--rate", f"{canary.warmup_rate:g}", "--duration", str(warmup_seconds(canary))),
        *("--metrics-port", str(GOLDEN_PORT)),
    ]
    container = {
        "name": "golden",
        "image": golden.image,
        "command": ["python"],
        "args": args,
        "env": [{"name": "HOME", "value": "/tmp"}, {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}],
        "ports": [{"name": GOLDEN_PORT_NAME, "containerPort": GOLDEN_PORT}],
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "golden", "mountPath": GOLDEN_DIR, "readOnly": True}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    pod = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": GOLDEN_UID,
            "runAsGroup": GOLDEN_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "golden", "configMap": {"name": golden.config_map}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        ],
    }
    return {
        "metadata": {"labels": golden_labels(model)},
        "spec": {
            # Exits 0 whatever the answers (the Prometheus metric judges): a failed Job could not run.
            "backoffLimit": 1,
            "activeDeadlineSeconds": warmup_seconds(canary) + 600,
            "template": {"metadata": {"labels": golden_labels(model)}, "spec": pod},
        },
    }


def golden_network_policy(model: str, server_labels: dict[str, str], port: int, prometheus_namespace: str) -> dict[str, Any]:
    """Golden pods: out to the model's vLLM pods on the API port only; in from Prometheus on the metrics port."""
    return {
        "podSelector": {"matchLabels": golden_labels(model)},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [
            {
                "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": prometheus_namespace}}}],
                "ports": [{"protocol": "TCP", "port": GOLDEN_PORT}],
            }
        ],
        "egress": [{"to": [{"podSelector": {"matchLabels": server_labels}}], "ports": [{"protocol": "TCP", "port": port}]}],
    }


def golden_pod_monitor(model: str, namespace: str) -> dict[str, Any]:
    """The PodMonitor spec that scrapes the golden pods (their counts are the golden metric's data)."""
    return {
        "selector": {"matchLabels": golden_labels(model)},
        "namespaceSelector": {"matchNames": [namespace]},
        "podMetricsEndpoints": [{"port": GOLDEN_PORT_NAME, "path": "/metrics", "interval": "10s", "scrapeTimeout": "5s"}],
    }


# ---------------------------------------------------------------- the template


def latency_judged(instance_types: tuple[str, ...] | list[str]) -> bool:
    """Whether the latency ratios judge the version: only where every pod of the model runs on one
    instance type. A pool of several types (spot pools list several for capacity: dev g5/g6/g4dn)
    may put the canary on a g6 (L4) and the stable pods on a g5 (A10G): the ratio then compares GPUs,
    not versions, and would reject a good version or pass a slow one. Pinning the canary pod to the
    stable pods' type is not possible with one pod template (Argo's canary and stable share it), and
    pinning the whole model to one type would give up the spot pool's diversity; so on a mixed pool
    the latencies are not rendered as metrics (the LLM dashboard still shows them per version) and the
    canary is judged on its error ratios and golden prompts. An unknown pool (``()``: an existing
    cluster, its owner's nodes) is judged: its owner chose the nodes."""
    return len(set(instance_types)) <= 1


def judging_metrics(
    canary: CanaryConfig, prometheus_url: str, golden_prompts: int | None, judge_latency: bool = True
) -> list[dict[str, Any]]:
    window = f"{canary.window_seconds}s"
    common = {
        "interval": f"{canary.interval_seconds}s",
        "initialDelay": f"{initial_delay_seconds(canary)}s",
        "failureLimit": canary.failure_limit,
        "inconclusiveLimit": inconclusive_limit(canary),
        "consecutiveErrorLimit": 4,
    }

    def metric(name: str, query: str, bound: float, gated: bool = True) -> dict[str, Any]:
        ok, failed = judged(bound)
        q = with_data(query, window, canary.min_requests, warm_requests(canary)) if gated else query
        return {
            "name": name,
            **common,
            "successCondition": ok,
            "failureCondition": failed,
            "provider": {"prometheus": {"address": prometheus_url, "query": q, "timeout": 20}},
        }

    metrics = [
        metric(METRIC_ERRORS, error_ratio_query(window), canary.max_error_ratio_increase),
        metric(METRIC_CLIENT_ERRORS, client_error_ratio_query(window), canary.max_client_error_ratio_increase),
    ]
    if judge_latency:  # latency_judged: only where both sides run on the same GPUs
        metrics += [
            metric(METRIC_TTFT, p95_ratio_query("vllm:time_to_first_token_seconds", window, TTFT_FLOOR_S), canary.max_ttft_p95_ratio),
            metric(METRIC_ITL, p95_ratio_query("vllm:inter_token_latency_seconds", window, ITL_FLOOR_S), canary.max_itl_p95_ratio),
        ]
    if golden_prompts:
        # Gated on its own data (every prompt answered), not on the request counts.
        metrics.append(metric(METRIC_GOLDEN, golden_query(golden_prompts, window), canary.max_golden_failure_ratio, gated=False))
    return metrics


def analysis_template(
    model: str,
    namespace: str,
    service: str,
    canary: CanaryConfig,
    prometheus_url: str = PROMETHEUS_URL,
    golden: Golden | None = None,
    judge_latency: bool = True,
) -> dict[str, Any]:
    """The vLLM model's AnalysisTemplate: the Prometheus metrics above and, with ``golden``, the golden
    Job (a ``job`` metric: one measurement lasting as long as the Job, started with the run, ended
    with the rollout) and the golden metric that reads its counts. ``judge_latency`` False (a pool
    of several instance types, ``latency_judged``): no latency metrics."""
    # Without its Job (warmupRate 0) the golden metric would never have data: not rendered.
    runs_golden = golden is not None and canary.warmup_rate > 0
    metrics = judging_metrics(canary, prometheus_url, golden.prompts if runs_golden else None, judge_latency)
    if runs_golden:
        metrics.insert(0, {"name": METRIC_GOLDEN_JOB, "provider": {"job": golden_job(model, canary, golden)}})
    return {
        "apiVersion": API_VERSION,
        "kind": "AnalysisTemplate",
        "metadata": {
            "name": template_name(model),
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "mlplatform", "mlplatform.io/model": model},
        },
        "spec": {
            "args": [
                {"name": ARG_CANARY},
                {"name": ARG_STABLE},
                {"name": ARG_MODEL, "value": model},
                {"name": ARG_NAMESPACE, "value": namespace},
                {"name": ARG_SERVICE, "value": service},
            ],
            "metrics": metrics,
        },
    }
