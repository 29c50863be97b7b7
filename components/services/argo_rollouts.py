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
from components.lib import helm, rollout_specs
from components.lib.network import SERVING_NAMESPACE
from components.lib.rollout_specs import (
    API_VERSION,
    CONTROLLER_SERVICE_ACCOUNT,
    NAMESPACE,
    PLUGIN_URL,
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


def plugin_pin_problem(environment: str, sha256: str | None) -> str | None:
    """One line when the traffic-router plugin, which runs with the controller's rights, would be
    fetched unverified: refused everywhere but the local stack (issue 24 item 7)."""
    if environment == "local" or (sha256 and len(sha256) == 64 and all(c in "0123456789abcdef" for c in sha256)):
        return None
    return (
        f"components/lib/rollout_specs.py: PLUGIN_SHA256: the Argo Rollouts Gateway API plugin is not pinned by digest ({sha256!r}); "
        f"set it to the output of `curl -sL {PLUGIN_URL} | sha256sum` (64 lowercase hex digits)"
    )


# The controller's cluster-wide rules: argo-rollouts chart 2.41.0 templates/_helpers.tpl
# "argo-rollouts.controller.roleRules" (argoproj/argo-helm tag argo-rollouts-2.41.0), providers off as
# in chart_values, minus what this platform never uses (issue 24 item 6):
# - Secrets: the chart reads every Secret of the cluster "to run analysis templates which reference
#   secrets"; ours reference none (Prometheus and job metrics; the warm-up Job's API key is resolved by
#   the kubelet for the Job's pod, not by the controller). Its own namespace's Secrets (the
#   notifications secret) stay readable through a Role there (``SECRET_RULES``).
# - Ingress writes: canaries are routed by the Gateway API plugin (per-route Roles, route_role_rules),
#   never by an Ingress; the informer keeps its read.
# Everything else as the chart has it: the informers list and watch each kind at start.
# - Writes that make pods (ReplicaSets, the analysis/warm-up Jobs) and the other writes on serving
#   objects (Services, Deployments, pod labels, evictions) only in ``SERVING_NAMESPACE``, where every
#   Rollout lives: a Role there (``SERVING_RULES``). Cluster-wide, creating a ReplicaSet or a Job in any
#   namespace would mount any Secret of the cluster (policy rbac-least-privilege). The chart's
#   ``controller.namespaced`` mode (values.yaml: "`false` runs controller in namespaced mode") would
#   also narrow the informers, but watches the controller's own namespace, not ml-serving.
# Everything else as the chart has it: the informers list and watch each kind at start, cluster-wide.
READ = ["get", "list", "watch"]
CONTROLLER_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": ["argoproj.io"],
        "resources": ["rollouts", "rollouts/status", "rollouts/finalizers"],
        "verbs": ["get", "list", "watch", "update", "patch"],
    },
    {
        "apiGroups": ["argoproj.io"],
        "resources": ["analysisruns", "analysisruns/finalizers", "experiments", "experiments/finalizers"],
        "verbs": ["create", "get", "list", "watch", "update", "patch", "delete"],
    },
    {"apiGroups": ["argoproj.io"], "resources": ["analysistemplates", "clusteranalysistemplates"], "verbs": READ},
    {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": READ},
    {"apiGroups": ["", "apps"], "resources": ["deployments", "podtemplates"], "verbs": READ},
    {"apiGroups": [""], "resources": ["services"], "verbs": READ},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create", "get", "update"]},
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": READ},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "update", "patch"]},
    {"apiGroups": ["networking.k8s.io", "extensions"], "resources": ["ingresses"], "verbs": READ},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": READ},
]
# The controller's writes on what runs the models, in SERVING_NAMESPACE only.
SERVING_RULES: list[dict[str, Any]] = [
    {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["create", "update", "patch", "delete"]},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "update", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["services"], "verbs": ["patch", "create", "delete"]},
    {"apiGroups": ["", "apps"], "resources": ["deployments"], "verbs": ["update"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["update"]},
    {"apiGroups": [""], "resources": ["pods/eviction"], "verbs": ["create"]},
]
SERVING_ROLE = "argo-rollouts-serving"
SECRET_RULES: list[dict[str, Any]] = [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]}]
CLUSTER_ROLE = "argo-rollouts-controller-mlplatform"


def controller_values(monitoring: bool) -> dict[str, Any]:
    """The chart's values (rollout_specs.chart_values) without the chart's ClusterRole: ours replaces it."""
    values = chart_values(monitoring=monitoring)
    return {**values, "controller": {**values["controller"], "createClusterRole": False}}


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
        problem = plugin_pin_problem(args.environment, rollout_specs.PLUGIN_SHA256)
        if problem:
            raise pulumi.RunError(problem)
        after_ns = operator_namespace(self, name, NAMESPACE, args.environment, "argo-rollouts", network_policy(args.prometheus_namespace))
        mon = args.monitoring_release
        if mon is not None:
            k8s.networking.v1.NetworkPolicy(
                f"{name}-prometheus-ingress",
                metadata=k8s.meta.v1.ObjectMetaArgs(name="argo-rollouts-analysis", namespace=args.prometheus_namespace),
                spec=prometheus_ingress_policy(),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[mon]),
            )
        rbac = self._rbac(name, after_ns)
        self.release = helm.release(
            f"{name}-release",
            "argo-rollouts",
            NAMESPACE,
            controller_values(monitoring=mon is not None),
            # The controller starts with its rights in place (else it crash-loops until they are).
            pulumi.ResourceOptions.merge(after_ns, pulumi.ResourceOptions(depends_on=[*rbac, *([mon] if mon else [])])),
            release_name=RELEASE,
        )
        self.register_outputs({})

    def _rbac(self, name: str, after_ns: pulumi.ResourceOptions) -> list[pulumi.Resource]:
        """CONTROLLER_RULES cluster-wide, SECRET_RULES in its own namespace, SERVING_RULES in ml-serving,
        bound to its service account."""
        subject = [{"kind": "ServiceAccount", "name": CONTROLLER_SERVICE_ACCOUNT, "namespace": NAMESPACE}]
        role = k8s.rbac.v1.ClusterRole(f"{name}-controller-role", metadata={"name": CLUSTER_ROLE}, rules=CONTROLLER_RULES, opts=after_ns)
        binding = k8s.rbac.v1.ClusterRoleBinding(
            f"{name}-controller-binding",
            metadata={"name": CLUSTER_ROLE},
            role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CLUSTER_ROLE},
            subjects=subject,
            opts=pulumi.ResourceOptions.merge(after_ns, pulumi.ResourceOptions(depends_on=[role])),
        )
        secrets = k8s.rbac.v1.Role(
            f"{name}-controller-secrets",
            metadata={"name": "argo-rollouts-own-secrets", "namespace": NAMESPACE},
            rules=SECRET_RULES,
            opts=after_ns,
        )
        secrets_binding = k8s.rbac.v1.RoleBinding(
            f"{name}-controller-secrets-binding",
            metadata={"name": "argo-rollouts-own-secrets", "namespace": NAMESPACE},
            role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "argo-rollouts-own-secrets"},
            subjects=subject,
            opts=pulumi.ResourceOptions.merge(after_ns, pulumi.ResourceOptions(depends_on=[secrets])),
        )
        serving = k8s.rbac.v1.Role(
            f"{name}-controller-serving",
            metadata={"name": SERVING_ROLE, "namespace": SERVING_NAMESPACE},
            rules=SERVING_RULES,
            opts=after_ns,
        )
        serving_binding = k8s.rbac.v1.RoleBinding(
            f"{name}-controller-serving-binding",
            metadata={"name": SERVING_ROLE, "namespace": SERVING_NAMESPACE},
            role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": SERVING_ROLE},
            subjects=subject,
            opts=pulumi.ResourceOptions.merge(after_ns, pulumi.ResourceOptions(depends_on=[serving])),
        )
        return [binding, secrets_binding, serving_binding]
