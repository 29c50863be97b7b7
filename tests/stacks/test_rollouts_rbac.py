"""The Argo Rollouts controller's rights (issue 24 item 6): the chart's ClusterRole, which reads every
Secret of the cluster, is replaced by the program's, which reads none outside the controller's own
namespace; the Gateway API plugin still reaches exactly each model's route (per-route Roles)."""

from __future__ import annotations

import pytest

from components.lib.rollout_specs import CONTROLLER_SERVICE_ACCOUNT, NAMESPACE
from components.services import argo_rollouts
from policy import rules
from tools import mock_engine


@pytest.fixture(scope="module")
def dev():
    return mock_engine.run("dev")


def _of_kind(result, kind):
    return [r for r in result.k8s_objects() if r.inputs.get("kind") == kind]


def test_the_chart_makes_no_cluster_role_and_ours_reads_no_secret(dev):
    (release,) = [r for r in dev.of_type("kubernetes:helm.sh/v3:Release") if r.inputs["chart"] == "argo-rollouts"]
    assert release.raw["values"]["controller"]["createClusterRole"] is False
    (role,) = [r for r in _of_kind(dev, "ClusterRole") if r.inputs["metadata"]["name"] == argo_rollouts.CLUSTER_ROLE]
    resources = {res for rule in role.raw["rules"] for res in rule["resources"]}
    assert "secrets" not in resources and "*" not in resources
    assert rules.rbac_least_privilege(rules.Res(role.type, role.raw)) == []
    # what the canary needs is still there: Rollouts, AnalysisRuns cluster-wide; ReplicaSets, Services
    # and the warm-up Job written in ml-serving only (a Role there), read everywhere (the informers)
    verbs = {(res, v) for rule in role.raw["rules"] for res in rule["resources"] for v in rule["verbs"]}
    assert {("rollouts", "update"), ("analysisruns", "create"), ("replicasets", "watch"), ("jobs", "watch")} <= verbs
    assert not {(res, v) for res, v in verbs if res in ("replicasets", "jobs", "services", "pods")} - {
        (res, v) for res in ("replicasets", "jobs", "services", "pods") for v in ("get", "list", "watch")
    }
    (serving,) = [r for r in _of_kind(dev, "Role") if r.inputs["metadata"]["name"] == argo_rollouts.SERVING_ROLE]
    assert serving.inputs["metadata"]["namespace"] == "ml-serving"
    written = {(res, v) for rule in serving.raw["rules"] for res in rule["resources"] for v in rule["verbs"]}
    assert {("replicasets", "create"), ("services", "patch"), ("jobs", "create")} <= written
    (binding,) = [r for r in _of_kind(dev, "RoleBinding") if r.inputs["metadata"]["name"] == argo_rollouts.SERVING_ROLE]
    assert binding.inputs["metadata"]["namespace"] == "ml-serving"
    assert binding.inputs["subjects"] == [{"kind": "ServiceAccount", "name": CONTROLLER_SERVICE_ACCOUNT, "namespace": NAMESPACE}]
    assert not {v for res, v in verbs if res == "ingresses"} - {"get", "list", "watch"}  # no Ingress routing here
    (binding,) = [b for b in _of_kind(dev, "ClusterRoleBinding") if b.raw["roleRef"]["name"] == argo_rollouts.CLUSTER_ROLE]
    assert binding.raw["subjects"] == [{"kind": "ServiceAccount", "name": CONTROLLER_SERVICE_ACCOUNT, "namespace": NAMESPACE}]
    # the release waits for its rights
    assert binding.urn in release.depends_on


def test_secrets_only_in_the_controllers_own_namespace(dev):
    (role,) = [r for r in _of_kind(dev, "Role") if r.inputs["metadata"]["name"] == "argo-rollouts-own-secrets"]
    assert role.raw["metadata"]["namespace"] == NAMESPACE and role.raw["rules"] == argo_rollouts.SECRET_RULES
    (binding,) = [b for b in _of_kind(dev, "RoleBinding") if b.raw["metadata"]["name"] == "argo-rollouts-own-secrets"]
    assert binding.raw["metadata"]["namespace"] == NAMESPACE


def test_the_plugin_keeps_exactly_each_routes_rights(dev):
    """The Gateway API plugin runs as the controller: get/update on each model's HTTPRoute by name."""
    route_roles = [r for r in _of_kind(dev, "Role") if any(rule.get("resources") == ["httproutes"] for rule in r.raw["rules"])]
    assert route_roles
    for r in route_roles:
        (rule,) = r.raw["rules"]
        assert rule["verbs"] == ["get", "update"] and len(rule["resourceNames"]) == 1


def test_planted_cluster_wide_secret_read_is_caught():
    """The pack sees what it missed before: the chart's own ClusterRole back on, or a ClusterRole of ours reading Secrets."""
    chart = rules.Res("kubernetes:helm.sh/v3:Release", {"chart": "argo-rollouts", "values": {"controller": {}}})
    assert rules.chart_rbac_no_cluster_secret_read(chart) == [
        "chart argo-rollouts reads every Secret of the cluster: set controller.createClusterRole: false"
    ]
    planted = {
        "kind": "ClusterRole",
        "rules": [*argo_rollouts.CONTROLLER_RULES, {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}],
    }
    assert rules.rbac_least_privilege(rules.Res("kubernetes:rbac.authorization.k8s.io/v1:ClusterRole", planted)) == [
        f"rule {len(argo_rollouts.CONTROLLER_RULES)} reads Secrets in every namespace"
    ]
    # a named Secret in a ClusterRole is that name in every namespace (jenkins-ci-credentials included)
    named = {
        "kind": "ClusterRole",
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["jenkins-ci-credentials"], "verbs": ["get"]}],
    }
    assert rules.rbac_least_privilege(rules.Res("kubernetes:rbac.authorization.k8s.io/v1:ClusterRole", named)) == [
        "rule 0 reads Secrets in every namespace"
    ]
    # a namespaced Role reading its own namespace's Secrets is not
    assert (
        rules.rbac_least_privilege(
            rules.Res("kubernetes:rbac.authorization.k8s.io/v1:Role", {"kind": "Role", "rules": argo_rollouts.SECRET_RULES})
        )
        == []
    )


@pytest.mark.parametrize(
    "rule",
    [
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create"]},
        {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["create", "delete"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]},
        {"apiGroups": ["*"], "resources": ["*"], "verbs": ["create"]},
    ],
)
def test_planted_cluster_wide_workload_creation_is_caught(rule):
    """Creating a ReplicaSet or a Job in any namespace mounts any Secret of the cluster: the chart's
    controller rules put back cluster-wide are caught; the same rules in ml-serving's Role are not."""
    planted = {"kind": "ClusterRole", "rules": [*argo_rollouts.CONTROLLER_RULES, rule]}
    found = rules.rbac_least_privilege(rules.Res("kubernetes:rbac.authorization.k8s.io/v1:ClusterRole", planted))
    assert f"rule {len(argo_rollouts.CONTROLLER_RULES)} creates workloads in every namespace (a pod may mount any Secret there)" in found
    role = {"kind": "Role", "rules": argo_rollouts.SERVING_RULES}
    assert rules.rbac_least_privilege(rules.Res("kubernetes:rbac.authorization.k8s.io/v1:Role", role)) == []
