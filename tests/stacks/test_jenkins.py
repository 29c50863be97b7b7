"""Jenkins as code on every stack that enables it."""

from __future__ import annotations

import re

import pytest
import yaml

from components.jenkins import ADMIN_SECRET, BUILD_NAMESPACE, PLUGINS


def release(result):
    found = [r for r in result.of_type("kubernetes:helm.sh/v3:Release") if r.inputs["chart"] == "jenkins"]
    if not found:
        pytest.skip("jenkins disabled on this stack")
    return found[0].raw["values"]


def test_admin_password_from_a_secret_not_values(result):
    values = release(result)
    admin = values["controller"]["admin"]
    assert admin == {
        "createSecret": False,
        "existingSecret": ADMIN_SECRET,
        "userKey": "jenkins-admin-user",
        "passwordKey": "jenkins-admin-password",
    }
    (secret,) = [s for s in result.of_type("kubernetes:core/v1:Secret") if s.inputs["metadata"]["name"] == ADMIN_SECRET]
    assert secret.inputs["stringData"]["jenkins-admin-password"] == "[secret]"


def test_plugins_pinned(result):
    values = release(result)
    assert values["controller"]["installPlugins"] == PLUGINS
    assert all(re.fullmatch(r"[a-z0-9-]+:[0-9][\w.]*", p) for p in PLUGINS)
    assert values["controller"]["installLatestPlugins"] is False


def test_jcasc_defines_pipeline_and_reaper(result):
    jobs = yaml.safe_load(release(result)["controller"]["JCasC"]["configScripts"]["mlplatform-jobs"])
    script = jobs["jobs"][0]["script"]
    assert "multibranchPipelineJob('mlplatform')" in script and "scriptPath('Jenkinsfile')" in script
    assert "pipelineJob('reap-ephemeral-stacks')" in script and "cron { spec('H * * * *') }" in script
    assert "remote('https://github.com/mlplatform/mlplatform.git')" in script


def test_kubernetes_cloud_pod_templates(result):
    templates = release(result)["agent"]["podTemplates"]
    assert set(templates) == {"python", "builder"}
    builder = yaml.safe_load(templates["builder"])[0]
    assert builder["namespace"] == BUILD_NAMESPACE
    pod = yaml.safe_load(builder["yaml"])
    for c in pod["spec"]["containers"]:
        sc = c["securityContext"]
        assert not sc.get("privileged") and sc["runAsNonRoot"] is True, c["name"]
    assert "--oci-worker-no-process-sandbox" in next(c for c in pod["spec"]["containers"] if c["name"] == "buildkitd")["args"]
    python = yaml.safe_load(yaml.safe_load(templates["python"])[0]["yaml"])
    assert python["spec"]["containers"][0]["image"].startswith("pulumi/pulumi-python")


def test_build_namespace_isolated(result):
    release(result)
    ns = [n for n in result.of_type("kubernetes:core/v1:Namespace") if n.inputs["metadata"]["name"] == BUILD_NAMESPACE]
    assert ns and ns[0].inputs["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "baseline"
    (builds,) = [p for p in result.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy") if p.inputs["metadata"]["name"] == "builds"]
    assert builds.inputs["spec"]["policyTypes"] == ["Egress"] and "ingress" not in builds.inputs["spec"]


def test_rbac_is_namespaced_and_small(result):
    release(result)
    assert result.of_type("kubernetes:rbac.authorization.k8s.io/v1:ClusterRoleBinding") == []
    for role in result.of_type("kubernetes:rbac.authorization.k8s.io/v1:Role"):
        for rule in role.inputs["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], role.urn
            assert "secrets" not in rule["resources"], role.urn


def test_exposure_follows_config(result, stack):
    values = release(result)["controller"]
    assert values["serviceType"] in ("ClusterIP", "LoadBalancer")
    if values["serviceType"] == "LoadBalancer":
        assert values["loadBalancerSourceRanges"]
