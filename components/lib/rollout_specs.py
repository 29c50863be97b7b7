"""Argo Rollouts: a new model version reaches traffic only through a canary that is analysed against
the stable pods on live traffic, and is aborted (traffic back to stable, no manual step) when it is
worse. Argo Rollouts is the engine of record (argoproj/argo-rollouts v1.9.0, chart argo-rollouts
2.41.0); this module renders its chart values, the model service's Rollout strategy and the
AnalysisTemplate, all validated in the tests against ../shared/reference/ (chart values, CRD schemas).
It imports no Pulumi, so the TensorFlow venv's canary test (tests/monitoring/test_e2e_canary.py)
runs the very template the program renders; components/services/argo_rollouts.py installs the
controller and turns the model's Deployment spec into a Rollout.

Canary vs stable pods. Argo Rollouts labels every pod with ``rollouts-pod-template-hash`` (the hash of
its ReplicaSet's pod template). The ServiceMonitor copies that pod label onto every scraped series
(``podTargetLabels``; prometheus-operator writes it as ``rollouts_pod_template_hash``), and the
AnalysisTemplate takes the two hashes as args (``valueFrom.podTemplateHashValue: Latest|Stable``), so
each query compares exactly the canary's pods with the stable ones, whatever version each serves.

Weights. Every model is reached through the stack's entry point (Envoy Gateway, components/services/gateway.py),
so the canary is *traffic-routed*: Argo Rollouts' Gateway API traffic-router plugin
(argoproj-labs/rollouts-plugin-trafficrouter-gatewayapi) rewrites the weights of the model's HTTPRoute,
whose two backendRefs are the stable and the canary Service; Envoy splits requests by those weights, so
a step of 25 % sends 25 % of requests to the canary whatever the replica count (``routed_replicas``).
Without a traffic router (``strategy(..., routing=None)``) the canary is a replica ratio: the Service
spreads requests over pods, so the canary's share is its share of pods, which Argo Rollouts rounds to
whole pods (``effective_weight``: with 2 replicas a step of 25 % is 1 canary pod beside 2 stable ones,
33 %; with 3 replicas 34 % is still 1:2, 33 %).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from components.lib.keda_specs import PROMETHEUS_URL
from components.lib.network import egress_except_metadata

if TYPE_CHECKING:  # only annotations name it: the config (pydantic) is not in the TensorFlow venv
    from components.config import CanaryConfig

API_VERSION = "argoproj.io/v1alpha1"
VERSION = "v1.9.0"  # the chart's appVersion (a test checks)
NAMESPACE = "argo-rollouts"
RELEASE = "argo-rollouts"
CONTROLLER_METRICS_PORT = 8090
CONTROLLER_HEALTH_PORT = 8080
# The pod label Argo Rollouts sets, and the target label Prometheus gets from it (prometheus-operator
# replaces every character outside [a-zA-Z0-9_] in a podTargetLabels name with "_").
POD_HASH_LABEL = "rollouts-pod-template-hash"
POD_HASH_TARGET_LABEL = "rollouts_pod_template_hash"
# The served version, on the pod template: a new version is a new template, i.e. a rollout.
VERSION_ANNOTATION = "mlplatform.io/model-version"

ARG_CANARY = "canary-hash"
ARG_STABLE = "stable-hash"
ARG_MODEL = "model"
ARG_NAMESPACE = "namespace"

# Below this share a class is treated as this share in the PSI: a class one side never predicts
# would otherwise make ln(c/s) infinite. 0.001 caps one missing class's term at about 7 * its share.
PSI_FLOOR = 0.001

METRIC_ERRORS = "error-ratio"
METRIC_CLIENT_ERRORS = "client-error-ratio"
METRIC_LATENCY = "latency-p99"
METRIC_CLASSES = "class-mix"
METRIC_WARMUP = "warmup"
# The metrics that judge the version; the warm-up metric only brings their data (ops/deliver.py
# rejects a version only on one of these).
JUDGING_METRICS = (METRIC_ERRORS, METRIC_CLIENT_ERRORS, METRIC_LATENCY, METRIC_CLASSES)

# The Gateway API traffic-router plugin (argoproj-labs/rollouts-plugin-trafficrouter-gatewayapi).
# v0.15.0 is its newest release (tag v0.15.0 = commit 96c63fd7, RELEASE_NOTES.md). Compatible with
# controller v1.9.0: it speaks the traffic-router RPC of Argo Rollouts v1.6.6 (its go.mod), and that
# interface is unchanged up to v1.9.0 (argoproj/argo-rollouts rollout/trafficrouting/plugin/rpc/rpc.go,
# v1.6.6..v1.9.0: only interface{} -> any; same handshake cookie). Installed as the docs say
# (docs/installation.md "Installing the plugin via HTTP(S)"): the controller downloads `location` at
# start into the chart's plugin-bin emptyDir (chart 2.41.0 templates/controller/deployment.yaml), with
# the controller's egress to 443 (network_policy below). `name` must be the plugin's own
# (pkg/plugin/plugin.go PluginName): it keys spec.strategy.canary.trafficRouting.plugins.
PLUGIN_NAME = "argoproj-labs/gatewayAPI"
PLUGIN_VERSION = "v0.15.0"
PLUGIN_URL = (
    "https://github.com/argoproj-labs/rollouts-plugin-trafficrouter-gatewayapi/releases/download/"
    f"{PLUGIN_VERSION}/gatewayapi-plugin-linux-amd64"
)
# SHA-256 of that binary: the controller refuses a download that does not match (argo-rollouts v1.9.0
# utils/plugin/downloader.go, checkShaOfPlugin; the chart passes the item through verbatim,
# templates/controller/configmap.yaml), so a release asset replaced upstream never runs with the
# controller's rights. Upstream publishes no checksum file and this machine cannot reach github.com:
# the value is the one another public deployment pins for this exact URL (a Nix/nixidy Argo Rollouts
# module, "Tamper-evident pin"), not hashed here. A wrong value fails closed (the controller refuses
# the plugin, canaries do not start). Check it once with `curl -sL PLUGIN_URL | sha256sum`; on a
# version bump, set the new digest with it (components/services/argo_rollouts.py refuses a non-local
# stack without one).
PLUGIN_SHA256: str | None = "24816da0e613836b3f180a2b50f6199431668c72d7f4adeef09284bffc6582a1"
# The controller's service account (chart values serviceAccount.name, set explicitly below), which the
# plugin runs as: the per-route Roles bind it.
CONTROLLER_SERVICE_ACCOUNT = "argo-rollouts"
# After an abort traffic leaves the canary at once (weight 0); its pods go this long after, once every
# Envoy has the new weights. 0 would mean *never* with a traffic router (argo-rollouts v1.9.0
# utils/defaults/defaults.go GetAbortScaleDownDelaySecondsOrDefault; docs/features/specification.md).
ABORT_SCALE_DOWN_DELAY_SECONDS = 30
# Argo Rollouts' basic-canary surge (strategy below); effective_weight models it.
MAX_SURGE = 1


@dataclass(frozen=True)
class TrafficRouting:
    """Where the canary's weight is set: the model's HTTPRoute at the entry point, whose backendRefs are
    the stable and the canary Service (same namespace as the Rollout)."""

    stable_service: str
    canary_service: str
    http_route: str
    namespace: str


def template_name(model: str) -> str:
    return f"model-server-{model}-canary"


def effective_weight(replicas: int, weight: int, max_surge: int = MAX_SURGE) -> tuple[int, int, float]:
    """(canary pods, stable pods, canary share of traffic in percent) of a replica-ratio canary step
    (no traffic router), as Argo Rollouts v1.9.0 scales it: utils/replicaset/canary.go,
    approximateWeightedCanaryStableReplicaCounts, ported line by line. Of the candidate counts (ceil
    and floor of replicas * weight, over ``replicas`` and, with a surge, ``replicas + 1`` pods) it takes
    the one closest to the weight; a weight of 1..99 never gets 0 pods on either side (from 2 pods on);
    on a tie (x.5) only the larger canary count is a candidate."""
    if not 0 <= weight <= 100:
        raise ValueError(f"weight {weight} not in 0..100")
    if replicas == 0:
        return 0, 0, 0.0
    exact = replicas * weight / 100
    ceil, floor = math.ceil(exact), math.floor(exact)

    def tied(total: int) -> bool:  # floorCeilingTied, with Go's operation order
        return math.modf(total * (weight / 100))[0] == 0.5

    zero_allowed = weight in (0, 100) or (replicas == 1 and max_surge == 0)
    options: list[tuple[int, int]] = []
    if ceil < replicas or zero_allowed:
        options.append((ceil, replicas))
    if not tied(replicas) and (floor != 0 or zero_allowed):
        options.append((floor, replicas))
    if max_surge > 0:
        options.append((ceil, replicas + 1))
        if not tied(replicas + 1) and (floor != 0 or zero_allowed):
            options.append((floor, replicas + 1))
    if not options:
        return 0, replicas, 0.0
    # The first of the closest (Go's loop replaces only on a strictly smaller delta).
    canary, total = min(options, key=lambda o: abs(100 * o[0] / o[1] - weight))
    return canary, total - canary, 100 * canary / total


def canary_scale(weight: int) -> int:
    """``setCanaryScale.weight`` (percent of spec.replicas) for a traffic-routed step of ``weight``: enough
    canary pods that none carries more requests than a stable pod, c >= R * w / (100 - w), capped at
    100 % (a weight above 50 % would need more canary pods than replicas). Argo's default (canary pods =
    ceil(R * w / 100), the stable side left at R) would put 50 % of the requests on 1 canary pod beside 2
    stable pods at 25 % each for R = 2: twice the load per pod, which the p99 comparison would blame on
    the version."""
    if not 0 < weight < 100:
        raise ValueError(f"weight {weight} not in 1..99")
    return min(100, math.ceil(100 * weight / (100 - weight)))


def routed_replicas(replicas: int, weight: int) -> tuple[int, int, float]:
    """(canary pods, stable pods, canary share of requests in percent) of a traffic-routed step: the
    share is the step's weight exactly; the canary runs ceil(R * canary_scale(w) / 100) pods (Argo v1.9.0
    utils/replicaset/canary.go, trafficWeightToReplicas) and the stable ReplicaSet stays at R (no
    dynamicStableScale), so an abort moves every request back to warm pods in one route update."""
    return math.ceil(replicas * canary_scale(weight) / 100), replicas, float(weight)


def strategy(model: str, canary: CanaryConfig, routing: TrafficRouting | None = None) -> dict[str, Any]:
    """``spec.strategy`` of the model's Rollout: a background analysis from the first step that aborts
    the rollout as soon as it fails, then each weight followed by a pause. With ``routing`` the weight
    is set on the HTTPRoute (exact), and each step first scales the canary (``canary_scale``)."""
    pause = {"pause": {"duration": f"{canary.step_seconds}s"}}
    steps: list[dict[str, Any]] = []
    for weight in canary.steps:
        if routing is not None:
            steps.append({"setCanaryScale": {"weight": canary_scale(weight)}})
        steps += [{"setWeight": weight}, pause]
    spec: dict[str, Any] = {
        # Never below the desired capacity: a canary pod is added before a stable one goes.
        "maxUnavailable": 0,
        "maxSurge": MAX_SURGE,
        "analysis": {
            "templates": [{"templateName": template_name(model)}],
            "args": [
                {"name": ARG_CANARY, "valueFrom": {"podTemplateHashValue": "Latest"}},
                {"name": ARG_STABLE, "valueFrom": {"podTemplateHashValue": "Stable"}},
            ],
        },
        "steps": steps,
    }
    if routing is None:
        # Replica ratio: a failed analysis scales the canary down at once.
        spec["abortScaleDownDelaySeconds"] = 0
    else:
        spec.update(
            {
                # The controller points each Service at its ReplicaSet (rollouts-pod-template-hash in the
                # selector); the plugin sets the route's weights (docs: features/traffic-management/index.md).
                "canaryService": routing.canary_service,
                "stableService": routing.stable_service,
                "trafficRouting": {
                    "plugins": {
                        # rollouts-plugin-trafficrouter-gatewayapi pkg/plugin/types.go GatewayAPITrafficRouting.
                        # No in-progress label on the route (it is for GitOps tools to skip the route
                        # during a canary, docs/quick-start.md): the plugin then changes only the
                        # weights, which the route's Pulumi ignore_changes covers (gateway.weight_paths).
                        PLUGIN_NAME: {"httpRoute": routing.http_route, "namespace": routing.namespace, "disableInProgressLabel": True},
                    }
                },
                "abortScaleDownDelaySeconds": ABORT_SCALE_DOWN_DELAY_SECONDS,
            }
        )
    return {"canary": spec}


def route_role_rules(http_route: str) -> list[dict[str, Any]]:
    """What the plugin does to one model's HTTPRoute, and nothing more: it reads the route by name and
    writes it back with new weights (get + update, retried on conflict: pkg/plugin/httproute.go; no
    list/watch without route selectors, no patch, no ConfigMap: docs/installation.md
    "Permissions"). The Services it needs are the controller's already (chart ClusterRole)."""
    return [
        {
            "apiGroups": ["gateway.networking.k8s.io"],
            "resources": ["httproutes"],
            "resourceNames": [http_route],
            "verbs": ["get", "update"],
        }
    ]


def _sel(arg: str, extra: str = "") -> str:
    """The series of one side (canary or stable) of one model's rollout; ``{{args.x}}`` is Argo's syntax.
    No ``traffic`` label filter: the warm-up's requests (traffic="warmup", serving/warmup.py) are the
    analysis' data on a quiet stack, and real requests, where there are some, count beside them."""
    return f'model="{{{{args.{ARG_MODEL}}}}}",namespace="{{{{args.{ARG_NAMESPACE}}}}}",{POD_HASH_TARGET_LABEL}="{{{{args.{arg}}}}}"{extra}'


def requests_query(arg: str, window: str) -> str:
    """Predict requests one side answered in the window (any code: a 5xx storm is data too)."""
    predict = _sel(arg, ',route="predict"')
    return f"sum(increase(mlplatform_serving_requests_total{{{predict}}}[{window}]))"


def with_data(query: str, window: str, min_requests: int) -> str:
    """``query``'s value only while *both* sides answered at least ``min_requests`` predict requests in
    the window; otherwise an empty vector. No series at all (a side never scraped), flat counters (no
    request in the window) and a trickle below the minimum all give the same empty result, which the
    conditions (``judged``) treat as neither success nor failure: the measurement is Inconclusive."""
    enough = " and on () ".join(f"({requests_query(arg, window)} >= {min_requests})" for arg in (ARG_CANARY, ARG_STABLE))
    return f"({query}) and on () {enough}"


def code_ratio_change_query(window: str, codes: str) -> str:
    """The canary's share of predict requests answered with ``codes`` (a regex: ``5..``, ``4..``) minus
    the stable pods' share, on the same window."""

    def ratio(arg: str) -> str:
        matched, predict = _sel(arg, f',route="predict",code=~"{codes}"'), _sel(arg, ',route="predict"')
        hits = f"sum(rate(mlplatform_serving_requests_total{{{matched}}}[{window}]))"
        total = f"sum(rate(mlplatform_serving_requests_total{{{predict}}}[{window}]))"
        # No series with these codes at all is a ratio of 0, not "no data".
        return f"((({hits}) or vector(0)) / {total})"

    return f"{ratio(ARG_CANARY)} - {ratio(ARG_STABLE)}"


def error_ratio_query(window: str) -> str:
    """Canary 5xx ratio minus the stable pods' (the version's own failures)."""
    return code_ratio_change_query(window, "5..")


def client_error_ratio_query(window: str) -> str:
    """Canary 4xx ratio minus the stable pods': the same clients sending the same requests get 400s
    from the canary only when its contract (input names, dtypes, shapes) broke the stable one's."""
    return code_ratio_change_query(window, "4..")


def latency_query(window: str, floor_s: float) -> str:
    """Canary p99 over the stable pods' p99 (the latter at least ``floor_s``)."""

    def p99(arg: str) -> str:
        return f"histogram_quantile(0.99, sum by (le) (rate(mlplatform_serving_request_duration_seconds_bucket{{{_sel(arg)}}}[{window}])))"

    return f"{p99(ARG_CANARY)} / clamp_min({p99(ARG_STABLE)}, {floor_s:g})"


def class_psi_query(window: str, min_samples: int) -> str:
    """Population stability index of the canary's predicted-class mix against the stable pods':
    sum over classes of (c - s) * ln(c / s), c and s the shares of each class in the window. A class
    only one side predicts counts with share 0 on the other (floored at PSI_FLOOR).

    Judged on *user* traffic only: the server counts the classes of user requests only (warm-up rows are
    left out even inside a shared batch: serving/batcher.py), and the query is empty unless the canary
    answered at least ``min_samples`` predict requests (2xx) that are not warm-up (``traffic!="warmup"``; a
    series without the label counts as user traffic). The warm-up's instances are built from the signature, not drawn
    from the model's data: two good versions may classify them differently (measured: two MNIST
    versions trained on disjoint images put 15 and 16 of 16 uniform-noise instances in the same
    class, PSI 0.26, above the default bound), so a class mix over them is no evidence about the
    version. Below ``min_samples`` the mix is noise anyway (PSI of two samples of one distribution is
    about (classes - 1) * (1/n_canary + 1/n_stable)). An empty result is Inconclusive, and this
    metric's inconclusiveLimit covers the whole canary (``analysis_template``): on a quiet stack it
    never pauses the rollout, it only records that the class mix was not judged."""

    def counts(arg: str) -> str:
        return f"sum by (class) (rate(mlplatform_serving_predicted_class_total{{{_sel(arg)}}}[{window}]))"

    def share(arg: str, other: str) -> str:
        mine = f"({counts(arg)} / ignoring (class) group_left sum({counts(arg)}))"
        return f"clamp_min({mine} or ({counts(other)} * 0), {PSI_FLOOR:g})"

    c, s = share(ARG_CANARY, ARG_STABLE), share(ARG_STABLE, ARG_CANARY)
    psi = f"sum(({c} - {s}) * ln({c} / {s}))"
    users = _sel(ARG_CANARY, ',route="predict",code=~"2..",traffic!="warmup"')  # answered: each one predicted
    return f"{psi} and on () (sum(increase(mlplatform_serving_requests_total{{{users}}}[{window}])) >= {min_samples})"


# How Argo Rollouts v1.9 turns one query result into a measurement (utils/evaluate/evaluate.go
# EvaluateResult and EvalCondition, metricproviders/prometheus/prometheus.go processResponse;
# cited from the source as read before, not re-verified here):
# - a vector result is ``result``, a []float64 of its sample values (empty for an empty vector);
# - with both a successCondition and a failureCondition: failure true -> Failed, else success true
#   -> Successful, else (both false) -> Inconclusive; an evaluation error -> the measurement is Error;
# - ``result[0]`` of an empty vector is an expr runtime error (index out of range) -> Error, and more
#   than consecutiveErrorLimit (default 4) consecutive Errors make the metric, hence the run, Error,
#   which aborts the rollout like a failure (analysis/analysis.go assessMetricFailureInconclusiveOrError);
# - every comparison with NaN is false (Go and expr alike), and ``isNaN`` is one of the functions
#   Argo adds to the expr environment (with asInt, asFloat, isInf, isNil, default).
# So each condition starts with ``len(result) > 0 && !isNaN(result[0])``: expr's ``&&`` short-circuits,
# so an empty result is never indexed (no Error), and an empty or NaN result makes *both* conditions
# false: Inconclusive, never Failed, never Error. Only a number judges.
HAS_VALUE = "len(result) > 0 && !isNaN(result[0])"


def judged(bound: float, lower: float | None = None) -> tuple[str, str]:
    """(successCondition, failureCondition) for "the value is at most ``bound``" (and at least
    ``lower``): both false on an empty or NaN result."""
    ok = f"{HAS_VALUE} && result[0] <= {bound:g}" + (f" && result[0] >= {lower:g}" if lower is not None else "")
    return ok, f"{HAS_VALUE} && result[0] > {bound:g}"


def inconclusive_limit(canary: CanaryConfig) -> int:
    """Inconclusive measurements a metric tolerates before the run is Inconclusive (the rollout pauses:
    a person, or ``deliver``'s timeout, decides). One window's worth of measurements: data that is
    late by less than a window (canary pods still loading, a scrape missed) is not a pause; a stack
    where data never comes pauses after about two windows instead of running the steps unjudged."""
    return max(1, math.ceil(canary.window_seconds / canary.interval_seconds))


@dataclass(frozen=True)
class Warmup:
    """Where the warm-up Job (serving/warmup.py, run by the analysis' ``job`` metric) sends requests:
    the canary and the stable Service of the model (the controller points each at its ReplicaSet),
    with the serving image; ``api_key_secret``: the Secret holding the model's API keys, if any."""

    image: str
    stable_url: str
    canary_url: str
    api_key_secret: str | None = None


WARMUP_APP = "model-warmup"
WARMUP_UID = 10001  # the serving image's user (serving/Dockerfile)


def warmup_labels(model: str) -> dict[str, str]:
    """The warm-up pods' labels: the model server's NetworkPolicy admits exactly these."""
    return {"app.kubernetes.io/name": WARMUP_APP, "app.kubernetes.io/part-of": "mlplatform", "mlplatform.io/model": model}


def warmup_seconds(canary: CanaryConfig) -> int:
    """How long the warm-up sends: the whole canary (the first window, every step's pause) and a
    margin for the canary pods to start, so the last measurements still have a full window of data.
    Argo ends the Job earlier when the rollout completes (the run is terminated)."""
    return canary.window_seconds + len(canary.steps) * canary.step_seconds + 2 * canary.interval_seconds + 120


def warmup_job(model: str, canary: CanaryConfig, warmup: Warmup) -> dict[str, Any]:
    """The ``job`` metric provider's Job (Argo Rollouts v1.9 metricproviders/job: the controller creates
    it in the run's namespace, owned by the AnalysisRun; Job Complete -> measurement Successful, Job
    Failed -> Failed). Pod Security `restricted`: non-root, read-only root, no capabilities, no service
    account token (it talks to the model's Services only), bounded resources."""
    args = ["--canary", warmup.canary_url, "--stable", warmup.stable_url, "--model", model]
    args += ["--rate", f"{canary.warmup_rate:g}", "--duration", str(warmup_seconds(canary))]
    env = [{"name": "HOME", "value": "/tmp"}]
    if warmup.api_key_secret:
        ref = {"name": warmup.api_key_secret, "key": "keys"}
        env.append({"name": "WARMUP_API_KEY", "valueFrom": {"secretKeyRef": ref}})
    container = {
        "name": "warmup",
        "image": warmup.image,
        "command": ["python", "-m", "serving.warmup"],
        "args": args,
        "env": env,
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    pod = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WARMUP_UID,
            "runAsGroup": WARMUP_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
    }
    return {
        "metadata": {"labels": warmup_labels(model)},
        "spec": {
            # One retry (an evicted pod): the warm-up exits 0 whatever the servers answer, so a
            # failed Job means it could not run at all (serving/warmup.py).
            "backoffLimit": 1,
            "activeDeadlineSeconds": warmup_seconds(canary) + 600,
            "template": {"metadata": {"labels": warmup_labels(model)}, "spec": pod},
        },
    }


def warmup_network_policy(model: str, server_labels: dict[str, str], port: int) -> dict[str, Any]:
    """The warm-up pods may reach the model's server pods on the API port, nothing else (DNS comes
    from the namespace's default-deny policy); the server's own policy admits them (model_service)."""
    return {
        "podSelector": {"matchLabels": warmup_labels(model)},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [],
        "egress": [{"to": [{"podSelector": {"matchLabels": server_labels}}], "ports": [{"protocol": "TCP", "port": port}]}],
    }


def judging_metrics(canary: CanaryConfig, prometheus_url: str) -> list[dict[str, Any]]:
    """The four Prometheus metrics that judge the version (JUDGING_METRICS), each judged only with
    data (``with_data``, ``judged``)."""
    window = f"{canary.window_seconds}s"
    common = {
        "interval": f"{canary.interval_seconds}s",
        # Let the canary take traffic for one window before judging it.
        "initialDelay": f"{canary.window_seconds}s",
        "failureLimit": canary.failure_limit,
        "inconclusiveLimit": inconclusive_limit(canary),
        # Errors now come only from the query itself (Prometheus unreachable): Argo's default, explicit.
        "consecutiveErrorLimit": 4,
    }

    def metric(name: str, query: str, bound: float, lower: float | None = None, **extra: Any) -> dict[str, Any]:
        ok, failed = judged(bound, lower)
        gated = with_data(query, window, canary.min_requests)
        return {
            "name": name,
            **common,
            **extra,
            "successCondition": ok,
            "failureCondition": failed,
            "provider": {"prometheus": {"address": prometheus_url, "query": gated, "timeout": 20}},
        }

    metrics = [
        metric(METRIC_ERRORS, error_ratio_query(window), canary.max_error_ratio_increase),
        metric(METRIC_CLIENT_ERRORS, client_error_ratio_query(window), canary.max_client_error_ratio_increase),
        metric(METRIC_LATENCY, latency_query(window, canary.p99_floor_ms / 1000), canary.max_p99_ratio),
        # Judged on user traffic only (class_psi_query): inconclusive for as many measurements as the
        # canary takes, so a quiet stack's canary is decided by the other metrics, not paused by this one.
        metric(
            METRIC_CLASSES,
            class_psi_query(window, canary.min_class_samples),
            canary.max_class_psi,
            lower=0,
            inconclusiveLimit=math.ceil(warmup_seconds(canary) / canary.interval_seconds) + 1,
        ),
    ]
    return metrics


def analysis_template(
    model: str, namespace: str, canary: CanaryConfig, prometheus_url: str = PROMETHEUS_URL, warmup: Warmup | None = None
) -> dict[str, Any]:
    """The AnalysisTemplate: four Prometheus metrics, each a number compared with a bound from the
    stack config, judged only with data (``with_data``, ``judged``); and, with ``warmup``, a ``job``
    metric that brings the data on a quiet stack: the same run, so Argo starts it with the analysis
    and ends it with the rollout (no step of its own to order or to clean up)."""
    metrics = judging_metrics(canary, prometheus_url)
    if warmup is not None and canary.warmup_rate > 0:
        # No interval and no count: one measurement (Argo's EffectiveCount is 1), running as long as
        # the Job does. No initialDelay: the traffic starts with the run, the judging metrics wait a window.
        metrics.insert(0, {"name": METRIC_WARMUP, "provider": {"job": warmup_job(model, canary, warmup)}})
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
            ],
            "metrics": metrics,
        },
    }


def chart_values(monitoring: bool) -> dict[str, Any]:
    return {
        "controller": {
            "image": {"tag": VERSION},
            # Exact canary weights at the entry point (the module docstring); pinned by release tag
            # (and by checksum once PLUGIN_SHA256 is recorded).
            "trafficRouterPlugins": [{"name": PLUGIN_NAME, "location": PLUGIN_URL, **({"sha256": PLUGIN_SHA256} if PLUGIN_SHA256 else {})}],
            # Two controllers with leader election (the chart's default): a node drain does not stop
            # a rollout half way.
            "replicas": 2,
            "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
            "metrics": {
                "enabled": monitoring,
                "serviceMonitor": {
                    "enabled": monitoring,
                    # The controller's series carry the rollout's namespace in `namespace`; Prometheus
                    # renames it exported_namespace (it clashes with the target's). Put it back, so the
                    # delivery alerts name the model's namespace (monitoring/rules/delivery.yaml).
                    "metricRelabelings": [
                        {"sourceLabels": ["exported_namespace"], "regex": "(.+)", "targetLabel": "namespace", "action": "replace"},
                        {"regex": "exported_namespace", "action": "labeldrop"},
                    ],
                },
            },
            "pdb": {"enabled": True, "maxUnavailable": 1},
        },
        # Named, not derived from the release name: each model's route Role binds it.
        "serviceAccount": {"name": CONTROLLER_SERVICE_ACCOUNT},
        # The UI is a write path to every rollout; kubectl argo rollouts and the pipeline are enough.
        "dashboard": {"enabled": False},
        # No provider RBAC from the chart: the controller may not touch other meshes' objects. Its
        # gatewayAPI rules would grant update on every route of five kinds in every namespace, and
        # create/update on every ConfigMap (chart 2.41.0 templates/_helpers.tpl); each model's
        # ModelService grants get/update on its own HTTPRoute instead (route_role_rules).
        "providerRBAC": {
            "enabled": True,
            "providers": {
                p: False
                for p in (
                    "istio",
                    "smi",
                    "ambassador",
                    "awsLoadBalancerController",
                    "awsAppMesh",
                    "traefik",
                    "apisix",
                    "contour",
                    "glooPlatform",
                    "gatewayAPI",
                )
            },
        },
    }


def network_policy(prometheus_namespace: str) -> dict[str, Any]:
    """The controller: the API server, Prometheus (analysis queries); Prometheus scrapes it."""
    return {
        "podSelector": {},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [
            {
                "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": prometheus_namespace}}}],
                "ports": [{"protocol": "TCP", "port": CONTROLLER_METRICS_PORT}],
            }
        ],
        "egress": [
            egress_except_metadata(443, 6443),
            {
                "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": prometheus_namespace}}}],
                "ports": [{"protocol": "TCP", "port": 9090}],
            },
        ],
    }


def prometheus_ingress_policy() -> dict[str, Any]:
    """In the monitoring namespace: the controller may query Prometheus (policies add up)."""
    return {
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        "policyTypes": ["Ingress"],
        "ingress": [
            {
                "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}}}],
                "ports": [{"protocol": "TCP", "port": 9090}],
            }
        ],
    }
