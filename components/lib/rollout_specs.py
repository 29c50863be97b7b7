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
METRIC_LATENCY = "latency-p99"
METRIC_CLASSES = "class-mix"

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
# templates/controller/configmap.yaml). Upstream publishes no checksum file (its release workflow
# uploads the bare binaries) and this machine cannot reach github.com to hash the asset, so it is not
# recorded yet (the plugin is pinned by release tag only): `curl -sL PLUGIN_URL | sha256sum` and set it
# here; chart_values then passes it to the controller.
PLUGIN_SHA256: str | None = None
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
    """The series of one side (canary or stable) of one model's rollout; ``{{args.x}}`` is Argo's syntax."""
    return f'model="{{{{args.{ARG_MODEL}}}}}",namespace="{{{{args.{ARG_NAMESPACE}}}}}",{POD_HASH_TARGET_LABEL}="{{{{args.{arg}}}}}"{extra}'


def error_ratio_query(window: str) -> str:
    """Canary 5xx ratio minus the stable pods' (4xx are the clients' errors, not the version's)."""

    def ratio(arg: str) -> str:
        failed, predict = _sel(arg, ',route="predict",code=~"5.."'), _sel(arg, ',route="predict"')
        errors = f"sum(rate(mlplatform_serving_requests_total{{{failed}}}[{window}]))"
        total = f"sum(rate(mlplatform_serving_requests_total{{{predict}}}[{window}]))"
        # No 5xx series at all is a ratio of 0, not "no data".
        return f"((({errors}) or vector(0)) / {total})"

    return f"{ratio(ARG_CANARY)} - {ratio(ARG_STABLE)}"


def latency_query(window: str, floor_s: float) -> str:
    """Canary p99 over the stable pods' p99 (the latter at least ``floor_s``)."""

    def p99(arg: str) -> str:
        return f"histogram_quantile(0.99, sum by (le) (rate(mlplatform_serving_request_duration_seconds_bucket{{{_sel(arg)}}}[{window}])))"

    return f"{p99(ARG_CANARY)} / clamp_min({p99(ARG_STABLE)}, {floor_s:g})"


def class_psi_query(window: str, min_samples: int) -> str:
    """Population stability index of the canary's predicted-class mix against the stable pods':
    sum over classes of (c - s) * ln(c / s), c and s the shares of each class in the window. A class
    only one side predicts counts with share 0 on the other (floored at PSI_FLOOR). With fewer than
    ``min_samples`` canary predictions in the window the mix is noise (PSI of two samples of one
    distribution is about (classes - 1) * (1/n_canary + 1/n_stable)): the query answers -1 then, which
    the conditions leave inconclusive."""

    def counts(arg: str) -> str:
        return f"sum by (class) (rate(mlplatform_serving_predicted_class_total{{{_sel(arg)}}}[{window}]))"

    def share(arg: str, other: str) -> str:
        mine = f"({counts(arg)} / ignoring (class) group_left sum({counts(arg)}))"
        return f"clamp_min({mine} or ({counts(other)} * 0), {PSI_FLOOR:g})"

    c, s = share(ARG_CANARY, ARG_STABLE), share(ARG_STABLE, ARG_CANARY)
    psi = f"sum(({c} - {s}) * ln({c} / {s}))"
    samples = f"sum(increase(mlplatform_serving_predicted_class_total{{{_sel(ARG_CANARY)}}}[{window}]))"
    return f"({psi} and on () ({samples} >= {min_samples})) or on () vector(-1)"


def analysis_template(model: str, namespace: str, canary: CanaryConfig, prometheus_url: str = PROMETHEUS_URL) -> dict[str, Any]:
    """The AnalysisTemplate: three Prometheus metrics, each a number compared with a bound from the
    stack config. Errors and latency have only a successCondition: a measurement that is not a success
    (NaN included) is a failure (Argo Rollouts utils/evaluate), and an empty result is an error, never
    a pass. The class mix also has a failureCondition, so "too few samples" is inconclusive."""
    window = f"{canary.window_seconds}s"
    common = {
        "interval": f"{canary.interval_seconds}s",
        # Let the canary take traffic for one window before judging it.
        "initialDelay": f"{canary.window_seconds}s",
        "failureLimit": canary.failure_limit,
    }

    def metric(name: str, query: str, condition: str, failure: str | None = None) -> dict[str, Any]:
        return {
            "name": name,
            **common,
            "successCondition": condition,
            **({"failureCondition": failure, "inconclusiveLimit": canary.failure_limit} if failure else {}),
            "provider": {"prometheus": {"address": prometheus_url, "query": query, "timeout": 20}},
        }

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
            "metrics": [
                metric(METRIC_ERRORS, error_ratio_query(window), f"result[0] <= {canary.max_error_ratio_increase:g}"),
                metric(METRIC_LATENCY, latency_query(window, canary.p99_floor_ms / 1000), f"result[0] <= {canary.max_p99_ratio:g}"),
                # Too few canary predictions (-1) is neither: inconclusive, the rollout pauses for a person.
                metric(
                    METRIC_CLASSES,
                    class_psi_query(window, canary.min_class_samples),
                    f"result[0] >= 0 && result[0] <= {canary.max_class_psi:g}",
                    f"result[0] > {canary.max_class_psi:g}",
                ),
            ],
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
