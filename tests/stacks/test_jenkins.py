"""Jenkins as code on the one stack that enables it (the others must register none of it)."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from components.platform import NAMESPACES
from components.services.jenkins import ADMIN_SECRET, CREDENTIAL_KEYS, CREDENTIALS_SECRET, PLUGINS
from tests.conftest import ROOT

BUILD_NAMESPACE = NAMESPACES["builds"][0]


def jenkins_enabled(stack: str) -> bool:
    config = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]
    return config.get("mlplatform:jenkins", {}).get("enabled", False)


def release(stack, result):
    """The Jenkins release's values; skips only where the stack file turns Jenkins off, and fails
    where it is on but no release was registered."""
    found = [r for r in result.of_type("kubernetes:helm.sh/v3:Release") if r.inputs["chart"] == "jenkins"]
    if not jenkins_enabled(stack):
        assert not found, "jenkins.enabled is false but a Jenkins release was registered"
        pytest.skip("jenkins.enabled is false in this stack file")
    assert len(found) == 1, f"jenkins is enabled on {stack} but {len(found)} Jenkins releases were registered"
    return found[0].raw["values"]


def jenkins_parts(res):
    metas = [r.inputs.get("metadata") or {} for r in res.k8s_objects()]
    releases = [r for r in res.of_type("kubernetes:helm.sh/v3:Release") if r.inputs["chart"] == "jenkins"]
    return releases + [m for m in metas if BUILD_NAMESPACE in (m.get("name"), m.get("namespace"))]


def test_jenkins_only_where_enabled(stack, result):
    assert bool(jenkins_parts(result)) == jenkins_enabled(stack)


def test_disabled_jenkins_registers_nothing(stack, result):
    from tools import mock_engine

    release(stack, result)  # skips where the stack file has Jenkins off (test above)
    assert jenkins_parts(result)  # the stack as filed has them, so the check below can fail
    off = mock_engine.run(stack, overrides={"mlplatform:jenkins": {"enabled": False}})
    assert jenkins_parts(off) == []


def test_admin_password_from_a_secret_not_values(stack, result):
    values = release(stack, result)
    admin = values["controller"]["admin"]
    assert admin == {
        "createSecret": False,
        "existingSecret": ADMIN_SECRET,
        "userKey": "jenkins-admin-user",
        "passwordKey": "jenkins-admin-password",
    }
    (secret,) = [s for s in result.of_type("kubernetes:core/v1:Secret") if s.inputs["metadata"]["name"] == ADMIN_SECRET]
    assert secret.inputs["stringData"]["jenkins-admin-password"] == "[secret]"


def test_plugins_pinned(stack, result):
    values = release(stack, result)
    assert values["controller"]["installPlugins"] == PLUGINS
    assert all(re.fullmatch(r"[a-z0-9-]+:[0-9][\w.]*", p) for p in PLUGINS)
    assert values["controller"]["installLatestPlugins"] is False


def test_jcasc_defines_pr_deploy_and_reaper_jobs(stack, result):
    jobs = yaml.safe_load(release(stack, result)["controller"]["JCasC"]["configScripts"]["mlplatform-jobs"])
    script = jobs["jobs"][0]["script"]
    assert "multibranchPipelineJob('preview/mlplatform')" in script and "scriptPath('Jenkinsfile')" in script
    assert "pipelineJob('deploy/main')" in script and "scriptPath('ci/deploy.Jenkinsfile')" in script
    assert "pipelineJob('preview/reap-ephemeral-stacks')" in script and "cron { spec('H * * * *') }" in script
    assert "repositoryUrl('https://github.com/mlplatform/mlplatform')" in script


def test_agents_only_in_the_build_namespace(stack, result):
    """The chart grants the controller pod rights in agent.namespace only: every pod a pipeline can
    start (its own pod templates included) lands where there are no Secrets and no RBAC."""
    values = release(stack, result)
    assert values["agent"]["namespace"] == BUILD_NAMESPACE
    for text in values["agent"]["podTemplates"].values():
        (template,) = yaml.safe_load(text)
        assert template["namespace"] == BUILD_NAMESPACE
        assert yaml.safe_load(template["yaml"])["spec"]["automountServiceAccountToken"] is False
    assert values["serviceAccountAgent"]["automountServiceAccountToken"] is False
    secrets = [s for s in result.of_type("kubernetes:core/v1:Secret") if s.inputs["metadata"].get("namespace") == BUILD_NAMESPACE]
    assert secrets == []
    # no Role of ours gives the agents' service account anything
    for b in result.of_type("kubernetes:rbac.authorization.k8s.io/v1:RoleBinding"):
        assert all(sub["name"] != "jenkins-agent" for sub in b.inputs["subjects"]), b.urn


def test_ci_credentials_from_secret_config(stack, result):
    from tools import mock_engine

    values = release(stack, result)
    # as filed (no jenkinsCredentials): no Secret, no mount, folders without credentials (fail closed)
    assert "additionalExistingSecrets" not in values["controller"]
    assert not [s for s in result.of_type("kubernetes:core/v1:Secret") if s.inputs["metadata"]["name"] == CREDENTIALS_SECRET]
    creds = json.dumps({k: f"value-of-{k}" for k in CREDENTIAL_KEYS})
    on = mock_engine.run(stack, overrides={"mlplatform:jenkinsCredentials": creds})
    (secret,) = [s for s in on.of_type("kubernetes:core/v1:Secret") if s.inputs["metadata"]["name"] == CREDENTIALS_SECRET]
    assert secret.inputs["metadata"]["namespace"] == "jenkins" and set(secret.raw["stringData"]) == set(CREDENTIAL_KEYS)
    assert secret.inputs["stringData"]["aws-prod-secret-access-key"] == "[secret]"
    (rel,) = [r for r in on.of_type("kubernetes:helm.sh/v3:Release") if r.inputs["chart"] == "jenkins"]
    mounted = {m["keyName"] for m in rel.raw["values"]["controller"]["additionalExistingSecrets"]}
    assert mounted == set(CREDENTIAL_KEYS)
    assert "value-of-" not in json.dumps(rel.raw["values"])


def test_kubernetes_cloud_pod_templates(stack, result):
    templates = release(stack, result)["agent"]["podTemplates"]
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


def test_build_namespace_isolated(stack, result):
    release(stack, result)
    ns = [n for n in result.of_type("kubernetes:core/v1:Namespace") if n.inputs["metadata"]["name"] == BUILD_NAMESPACE]
    # `privileged` only for rootless BuildKit's Unconfined seccomp/AppArmor (jenkins.BUILDKITD_SECURITY);
    # the policy pack holds the pod itself to everything else.
    assert ns and ns[0].inputs["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    (builds,) = [p for p in result.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy") if p.inputs["metadata"]["name"] == "builds"]
    assert builds.inputs["spec"]["policyTypes"] == ["Egress"] and "ingress" not in builds.inputs["spec"]


def test_rbac_is_namespaced_and_small(stack, result):
    release(stack, result)
    assert result.of_type("kubernetes:rbac.authorization.k8s.io/v1:ClusterRoleBinding") == []
    for role in result.of_type("kubernetes:rbac.authorization.k8s.io/v1:Role"):
        for rule in role.inputs["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], role.urn
            assert "secrets" not in rule["resources"], role.urn


def test_exposure_follows_config(stack, result):
    values = release(stack, result)["controller"]
    assert values["serviceType"] in ("ClusterIP", "LoadBalancer")
    if values["serviceType"] == "LoadBalancer":
        assert values["loadBalancerSourceRanges"]


def test_build_pods_admission_policy_enforced(stack, result):
    release(stack, result)
    (policy,) = result.of_type("kubernetes:admissionregistration.k8s.io/v1:ValidatingAdmissionPolicy")
    (binding,) = result.of_type("kubernetes:admissionregistration.k8s.io/v1:ValidatingAdmissionPolicyBinding")
    spec = policy.inputs["spec"]
    assert spec["failurePolicy"] == "Fail"
    assert spec["matchConstraints"]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": BUILD_NAMESPACE}
    assert binding.inputs["spec"] == {"policyName": policy.inputs["metadata"]["name"], "validationActions": ["Deny"]}
