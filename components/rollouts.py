"""Argo Rollouts: a new model version reaches traffic only through a canary that is analysed against
the stable pods on live traffic, and is aborted (traffic back to stable, no manual step) when it is
worse. Argo Rollouts is the engine of record (argoproj/argo-rollouts v1.9.0, chart argo-rollouts
2.41.0); this module renders its chart values, the model service's Rollout strategy and the
AnalysisTemplate, all validated in the tests against ../shared/reference/ (chart values, CRD schemas).

Canary vs stable pods. Argo Rollouts labels every pod with ``rollouts-pod-template-hash`` (the hash of
its ReplicaSet's pod template). The ServiceMonitor copies that pod label onto every scraped series
(``podTargetLabels``; prometheus-operator writes it as ``rollouts_pod_template_hash``), and the
AnalysisTemplate takes the two hashes as args (``valueFrom.podTemplateHashValue: Latest|Stable``), so
each query compares exactly the canary's pods with the stable ones, whatever version each serves.

Weights. This is a replica-ratio canary (no ``trafficRouting``): the Service spreads requests over
pods, so the canary's share is its share of pods. Argo Rollouts rounds both sides *up*
(utils/replicaset/canary.go: canary = ceil(R*w/100), stable = ceil(R*(1-w/100))), so
``effective_weight`` is what a step really gives; e.g. with 2 replicas every weight below 50 % is
1 canary pod next to 2 stable ones (33 %), with 3 replicas 1..33 % is 25 %. Exact weights need the
Gateway API traffic-router plugin at the entry point (README "Model delivery": not done here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi._types as pulumi_types
import pulumi_kubernetes as k8s

from components import helm
from components.config import CanaryConfig
from components.namespaces import egress_except_metadata, operator_namespace
from components.scaling import PROMETHEUS_URL

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


def template_name(model: str) -> str:
    return f"model-server-{model}-canary"


def effective_weight(replicas: int, weight: int) -> tuple[int, int, float]:
    """(canary pods, stable pods, canary share of traffic in percent) of a replica-ratio canary step,
    as Argo Rollouts scales it (both counts rounded up, so a step may run one pod above ``replicas``)."""
    if not 0 <= weight <= 100:
        raise ValueError(f"weight {weight} not in 0..100")
    canary = math.ceil(replicas * weight / 100)
    stable = math.ceil(replicas * (1 - weight / 100))
    return canary, stable, 100 * canary / (canary + stable) if canary + stable else 0.0


def strategy(model: str, canary: CanaryConfig) -> dict[str, Any]:
    """``spec.strategy`` of the model's Rollout: a background analysis from the first step that aborts
    the rollout as soon as it fails, then each weight followed by a pause."""
    steps: list[dict[str, Any]] = []
    for weight in canary.steps:
        steps += [{"setWeight": weight}, {"pause": {"duration": f"{canary.step_seconds}s"}}]
    return {
        "canary": {
            # Never below the desired capacity: a canary pod is added before a stable one goes.
            "maxUnavailable": 0,
            "maxSurge": 1,
            "analysis": {
                "templates": [{"templateName": template_name(model)}],
                "args": [
                    {"name": ARG_CANARY, "valueFrom": {"podTemplateHashValue": "Latest"}},
                    {"name": ARG_STABLE, "valueFrom": {"podTemplateHashValue": "Stable"}},
                ],
            },
            "steps": steps,
            # A failed analysis scales the canary down at once, not after the default 30 s.
            "abortScaleDownDelaySeconds": 0,
        }
    }


def plain(value: Any) -> Any:
    """``value`` with every typed Pulumi input (e.g. ``SecurityContextArgs``) turned into the plain
    camelCase dict Kubernetes reads: a custom resource's spec is sent as given, and the CRD schema
    (and the tests) need the plain form."""
    if pulumi_types.is_input_type(type(value)):
        return plain(pulumi_types.input_type_to_dict(value))
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def rollout(
    name: str, namespace: str, labels: dict[str, str], deployment_spec: dict[str, Any], model: str, canary: CanaryConfig
) -> dict[str, Any]:
    """The Rollout that replaces the model's Deployment: the same pod template, selector, replicas and
    history, with the canary strategy instead of RollingUpdate."""
    spec = {k: plain(v) for k, v in deployment_spec.items() if k != "strategy"}
    return {
        "apiVersion": API_VERSION,
        "kind": "Rollout",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {**spec, "strategy": strategy(model, canary)},
    }


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
        # The UI is a write path to every rollout; kubectl argo rollouts and the pipeline are enough.
        "dashboard": {"enabled": False},
        # Only the providers this platform uses: the controller may not touch other meshes' objects.
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


@dataclass
class ArgoRolloutsArgs:
    environment: str
    prometheus_namespace: str = "monitoring"
    # The kube-prometheus-stack release (the ServiceMonitor CRD), when monitoring is on.
    monitoring_release: pulumi.Resource | None = None


class ArgoRollouts(pulumi.ComponentResource):
    """The controller (chart argo-rollouts, pinned in components/helm.py, CRDs included) in its own
    restricted, default-deny namespace. Rollouts and AnalysisTemplates wait for ``release``."""

    release: k8s.helm.v3.Release

    def __init__(self, name: str, args: ArgoRolloutsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlplatform:rollouts:ArgoRollouts", name, None, opts)
        after_ns = operator_namespace(self, name, NAMESPACE, args.environment, "argo-rollouts", network_policy(args.prometheus_namespace))
        mon = args.monitoring_release
        if mon is not None:
            k8s.networking.v1.NetworkPolicy(
                f"{name}-prometheus-ingress",
                metadata=k8s.meta.v1.ObjectMetaArgs(name="argo-rollouts-analysis", namespace=args.prometheus_namespace),
                spec=prometheus_ingress_policy(),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[mon]),
            )
        self.release = helm.release(
            f"{name}-release",
            "argo-rollouts",
            NAMESPACE,
            chart_values(monitoring=mon is not None),
            pulumi.ResourceOptions.merge(after_ns, pulumi.ResourceOptions(depends_on=[mon] if mon else [])),
            release_name=RELEASE,
        )
        self.register_outputs({})
