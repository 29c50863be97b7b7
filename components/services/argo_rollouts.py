"""Argo Rollouts, the controller: chart argo-rollouts (pinned in components/lib/helm.py, CRDs included)
in its own restricted, default-deny namespace, and the Rollout that replaces a model's Deployment.

What it renders (chart values, the canary strategy, the AnalysisTemplate and its queries, the network
policies) is pure and lives in components/lib/rollout_specs.py, with the why of canary vs stable pods
and of the weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi._types as pulumi_types
import pulumi_kubernetes as k8s

from components.cluster.namespaces import operator_namespace
from components.config import CanaryConfig
from components.lib import helm
from components.lib.rollout_specs import (
    API_VERSION,
    NAMESPACE,
    RELEASE,
    TrafficRouting,
    chart_values,
    network_policy,
    prometheus_ingress_policy,
    strategy,
)


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
    name: str,
    namespace: str,
    labels: dict[str, str],
    deployment_spec: dict[str, Any],
    model: str,
    canary: CanaryConfig,
    routing: TrafficRouting | None = None,
) -> dict[str, Any]:
    """The Rollout that replaces the model's Deployment: the same pod template, selector, replicas and
    history, with the canary strategy instead of RollingUpdate (traffic-routed with ``routing``)."""
    spec = {k: plain(v) for k, v in deployment_spec.items() if k != "strategy"}
    return {
        "apiVersion": API_VERSION,
        "kind": "Rollout",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {**spec, "strategy": strategy(model, canary, routing)},
    }


@dataclass
class ArgoRolloutsArgs:
    environment: str
    prometheus_namespace: str = "monitoring"
    # The kube-prometheus-stack release (the ServiceMonitor CRD), when monitoring is on.
    monitoring_release: pulumi.Resource | None = None


class ArgoRollouts(pulumi.ComponentResource):
    """The controller (chart argo-rollouts, pinned in components/lib/helm.py, CRDs included) in its own
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
