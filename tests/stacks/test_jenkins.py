"""Jenkins as code on the one stack that enables it (the others must register none of it)."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from components.platform import NAMESPACES
from components.services import jenkins
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


def test_jcasc_defines_pr_ephemeral_deploy_and_reaper_jobs(stack, result):
    jobs = yaml.safe_load(release(stack, result)["controller"]["JCasC"]["configScripts"]["mlplatform-jobs"])
    script = jobs["jobs"][0]["script"]
    assert "multibranchPipelineJob('preview/mlplatform')" in script and "scriptPath('Jenkinsfile')" in script
    assert "pipelineJob('deploy/main')" in script and "scriptPath('ci/deploy.Jenkinsfile')" in script
    assert "pipelineJob('ephemeral/reap-ephemeral-stacks')" in script and "cron { spec('H * * * *') }" in script
    assert "pipelineJob('ephemeral/pr-stack')" in script and "scriptPath('ci/ephemeral.Jenkinsfile')" in script
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
    assert secret.inputs["stringData"]["aws-staging-secret-access-key"] == "[secret]"
    assert not [k for k in secret.raw["stringData"] if "prod" in k]  # no prod credential on staging's cluster
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
    # The CI toolbox the stack names (jenkins.agentImage): pulumi, kubectl, the AWS CLI, buildx (tests/unit/test_toolbox.py).
    assert "/toolbox:ctx-" in python["spec"]["containers"][0]["image"]


def test_build_namespace_isolated(stack, result):
    release(stack, result)
    ns = [n for n in result.of_type("kubernetes:core/v1:Namespace") if n.inputs["metadata"]["name"] == BUILD_NAMESPACE]
    # `privileged` only for rootless BuildKit's Unconfined seccomp/AppArmor (jenkins.BUILDKITD_SECURITY);
    # the policy pack holds the pod itself to everything else.
    assert ns and ns[0].inputs["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    (builds,) = [p for p in result.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy") if p.inputs["metadata"]["name"] == "builds"]
    assert builds.inputs["spec"]["policyTypes"] == ["Egress"] and "ingress" not in builds.inputs["spec"]


def test_rbac_is_namespaced_and_small(stack, result):
    values = release(stack, result)
    # No cluster-wide rights for anything Jenkins runs (the controller, its agents); other services'
    # ClusterRoleBindings (the Argo Rollouts controller's own, issue 24 item 6) are tested with them.
    jenkins_ns = {
        BUILD_NAMESPACE,
        *(r.inputs.get("namespace") for r in result.of_type("kubernetes:helm.sh/v3:Release") if r.inputs["chart"] == "jenkins"),
    }
    bindings = result.of_type("kubernetes:rbac.authorization.k8s.io/v1:ClusterRoleBinding")
    assert not [b.urn for b in bindings if {s.get("namespace") for s in b.inputs.get("subjects") or []} & jenkins_ns]
    assert values["rbac"] == {"create": True, "readSecrets": False}
    for role in result.of_type("kubernetes:rbac.authorization.k8s.io/v1:Role"):
        if role.inputs["metadata"].get("namespace") not in jenkins_ns:
            continue
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


def _security(stack, result) -> dict:
    values = release(stack, result)["controller"]["JCasC"]["configScripts"]
    return yaml.safe_load(values["mlplatform-security"])["jenkins"]


def test_sign_in_with_github_and_a_matrix_where_approvers_do_not_administer(stack, result):
    """Issue 24 item 5: the chart's local admin and "logged-in users can do anything" are replaced;
    Administer passes any `input`, so no prod approver holds it."""
    sec = _security(stack, result)
    realm = sec["securityRealm"]["github"]
    assert realm["clientID"] == "Ov23liExampleClientId" and realm["githubWebUri"] == "https://github.com"
    assert realm["clientSecret"] == ""  # as filed: no jenkinsCredentials, so nobody can sign in (fail closed)
    entries = sec["authorizationStrategy"]["projectMatrix"]["entries"]
    perms = {(kind, e["name"]): set(e["permissions"]) for entry in entries for kind, e in entry.items()}
    assert perms == {
        ("group", "mlplatform*platform-admins"): {"Overall/Administer"},
        ("group", "mlplatform"): {"Overall/Read", "Job/Read"},  # the repository's organisation (a GitHub org is a realm group too)
        ("group", "mlplatform*release-managers"): {"Overall/Read", "Job/Read"},
        # every build's identity (authorize-project): reads, and uses its own folder's credentials
        ("user", jenkins.BUILD_USER): {"Overall/Read", "Job/Read", "Credentials/UseItem"},
    }
    approvers = {"mlplatform*release-managers"}
    assert not any("Overall/Administer" in p for (_, name), p in perms.items() if name in approvers)
    assert all(name != "anonymous" and name != "authenticated" for _, name in perms)
    # ... and the approvers the deploy's input names are exactly these (MLPLATFORM_PROD_APPROVERS)
    env = yaml.safe_load(release(stack, result)["controller"]["JCasC"]["configScripts"]["mlplatform-env"])
    (approver_env,) = [e for e in env["jenkins"]["globalNodeProperties"][0]["envVars"]["env"] if e["key"] == "MLPLATFORM_PROD_APPROVERS"]
    assert approver_env["value"] == "mlplatform*release-managers"
    # the chart's own realm and strategy are not used (its JCasC skips them when a config script defines them)
    assert "loggedInUsersCanDoAnything" not in json.dumps(release(stack, result))


def test_builds_run_as_a_bounded_user_not_as_system(stack, result):
    """Issue 24 item 5: without authorize-project every build runs as SYSTEM, which may start
    deploy/main from a PR's Jenkinsfile; here the queue authenticates each build as BUILD_USER,
    which can build nothing, configure nothing and administer nothing."""
    values = release(stack, result)
    doc = yaml.safe_load(values["controller"]["JCasC"]["configScripts"]["mlplatform-security"])
    assert doc["security"]["queueItemAuthenticator"]["authenticators"] == [
        {"global": {"strategy": {"specificUsersAuthorizationStrategy": {"userid": jenkins.BUILD_USER}}}}
    ]
    # a GitHub login has no underscore: nobody can sign in through the realm as the build user
    assert "_" in jenkins.BUILD_USER
    entries = doc["jenkins"]["authorizationStrategy"]["projectMatrix"]["entries"]
    (granted,) = [e["user"]["permissions"] for e in entries if e.get("user", {}).get("name") == jenkins.BUILD_USER]
    assert not {p for p in granted if p.split("/")[1] in ("Build", "Configure", "Administer", "Create", "Delete")}
    # Credentials/UseItem is a real, enabled permission only with the credentials plugin's property
    assert jenkins.USE_ITEM_PROPERTY in values["controller"]["javaOpts"].split()
    # the user has a record (else authorize-project falls back to anonymous and every build fails)
    assert values["controller"]["initScripts"] == {
        "mlplatform-build-user": f"hudson.model.User.getById('{jenkins.BUILD_USER}', true).save()\n"
    }
    assert "authorize-project" in dict(p.split(":", 1) for p in PLUGINS)


def test_the_oauth_secret_comes_from_the_credentials_secret(stack, result):
    from tools import mock_engine

    release(stack, result)
    creds = json.dumps({k: f"value-of-{k}" for k in CREDENTIAL_KEYS})
    on = mock_engine.run(stack, overrides={"mlplatform:jenkinsCredentials": creds})
    (rel,) = [r for r in on.of_type("kubernetes:helm.sh/v3:Release") if r.inputs["chart"] == "jenkins"]
    sec = yaml.safe_load(rel.raw["values"]["controller"]["JCasC"]["configScripts"]["mlplatform-security"])["jenkins"]
    assert (
        sec["securityRealm"]["github"]["clientSecret"]
        == "${file:/run/secrets/additional/jenkins-ci-credentials-github-oauth-client-secret}"
    )


def test_pr_comments_use_a_comment_only_credential_separate_from_the_scan_token():
    """Issue 24 item 11: the PR-comment stage binds `github-comment`, never the scan/clone `github` token."""
    preview = {c.id for c in jenkins.FOLDER_CREDENTIALS[jenkins.PREVIEW_FOLDER]}
    assert {"github", "github-comment"} <= preview and jenkins.GITHUB_COMMENT.secret_key != jenkins.GITHUB.secret_key
    text = (ROOT / "Jenkinsfile").read_text()
    bound = re.findall(r"credentialsId: '([a-z-]+)', usernameVariable: 'GITHUB_USER'", text)
    assert bound == ["github-comment"]
    comment_stage = text[text.index("stage('PR comment')") :]
    assert "credentialsId: 'github-comment'" in comment_stage and "make pr-comment" in comment_stage


@pytest.mark.parametrize(
    "change, key",
    [
        ({"admins": []}, "jenkins.admins: required"),
        ({"githubOauthClientId": None}, "jenkins.githubOauthClientId: required"),
        ({"admins": ["mlplatform*release-managers"]}, "jenkins.admins: mlplatform*release-managers also approve prod"),
    ],
)
def test_jenkins_sign_in_config_refused_in_one_line(change, key):
    from components.config import ConfigError
    from tools import mock_engine

    cfg = {**json.loads(mock_engine.stack_config("staging")[0]["mlplatform:jenkins"]), **change}
    cfg = {k: v for k, v in cfg.items() if v is not None}
    with pytest.raises(ConfigError) as err:
        mock_engine.run("staging", overrides={"mlplatform:jenkins": cfg})
    assert f"stacks/Pulumi.staging.yaml: mlplatform:{key}" in str(err.value)


def test_plugins_include_the_realm_and_the_matrix_pinned():
    pins = dict(p.split(":", 1) for p in PLUGINS)
    assert {"github-oauth", "matrix-auth"} <= set(pins) and all(v and v != "latest" for v in pins.values())
