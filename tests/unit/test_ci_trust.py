"""CI/CD trust model (issue 13 items 1, 2, 6): one Jenkins, per-environment credentials that only the
main-branch deploy job can reach, PR builds with ephemeral credentials only, OIDC in GitHub/GitLab."""

from __future__ import annotations

import functools
import json
import os
import re
import stat
import subprocess
import sys

import pytest
import yaml

from components.config import JENKINS_ENVIRONMENT, ConfigError, validate
from components.services import jenkins
from tests.conftest import ROOT

DEPLOY_IDS = {c.id for c in jenkins.FOLDER_CREDENTIALS[jenkins.DEPLOY_FOLDER]} - {jenkins.GITHUB.id}
PREVIEW_IDS = {c.id for c in jenkins.FOLDER_CREDENTIALS[jenkins.PREVIEW_FOLDER]}


def stack_raw(stack: str) -> dict:
    doc = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]
    return {k.removeprefix("mlplatform:"): v for k, v in doc.items()}


def with_jenkins(stack: str, **jenkins_cfg) -> dict:
    raw = stack_raw(stack)
    raw["jenkins"] = jenkins_cfg
    return raw


JENKINS_ON = {
    "enabled": True,
    "repoUrl": "https://github.com/acme/mlplatform.git",
    "prodApprovers": ["release-managers"],
    "admins": ["acme*platform-admins"],
    "githubOauthClientId": "Ov23liExampleClientId",
    "agentImage": "222222222222.dkr.ecr.eu-west-1.amazonaws.com/mlplatform-ci/toolbox:ctx-0123456789abcdef",
}


# ---- config: one controller, safe job-dsl inputs, an approver for prod ----


def test_exactly_one_stack_file_runs_jenkins_and_it_is_the_designated_one():
    on = []
    for path in sorted((ROOT / "stacks").glob("Pulumi.*.yaml")):
        raw = {k.removeprefix("mlplatform:"): v for k, v in yaml.safe_load(path.read_text())["config"].items()}
        if validate(raw, path.name).jenkins.enabled:
            on.append(raw["environment"])
    assert on == [JENKINS_ENVIRONMENT]


@pytest.mark.parametrize("name", ["dev", "prod", "local"])
def test_jenkins_refused_on_any_other_stack_in_one_line(name):
    with pytest.raises(ConfigError) as info:
        validate(with_jenkins(name, **JENKINS_ON), f"stacks/Pulumi.{name}.yaml")
    lines = [ln for ln in str(info.value).splitlines() if "jenkins" in ln]
    assert len(lines) == 1 and lines[0].startswith(f"stacks/Pulumi.{name}.yaml: mlplatform:jenkins.enabled: "), str(info.value)
    assert JENKINS_ENVIRONMENT in lines[0]


def test_jenkins_is_off_unless_a_stack_turns_it_on():
    raw = stack_raw("dev")
    raw.pop("jenkins", None)
    assert validate(raw, "stacks/Pulumi.dev.yaml").jenkins.enabled is False


@pytest.mark.parametrize(
    "key, value",
    [
        ("repoUrl", "https://github.com/acme/ml'); Jenkins.instance.doSafeExit(null); //"),
        ("repoUrl", "https://github.com/acme/${jenkins-admin}.git"),
        ("repoUrl", "git@github.com:acme/mlplatform.git"),
        ("repoUrl", "https://gitlab.com/acme/mlplatform.git"),
        ("branch", "main'); evil(); //"),
        ("branch", "feature/../main"),
        ("branch", "-main"),
        ("branch", "ma${x}in"),
        ("branch", "main\nx"),
    ],
)
def test_job_dsl_inputs_are_validated(key, value):
    with pytest.raises(ConfigError, match=rf"stacks/Pulumi.staging.yaml: mlplatform:jenkins.{key}: "):
        validate(with_jenkins("staging", **{**JENKINS_ON, key: value}), "stacks/Pulumi.staging.yaml")


def test_good_job_dsl_inputs_pass():
    cfg = validate(with_jenkins("staging", **{**JENKINS_ON, "branch": "release/v1.2_x"}), "x").jenkins
    assert (cfg.repo_url, cfg.branch) == ("https://github.com/acme/mlplatform.git", "release/v1.2_x")


def test_prod_approvers_required_and_well_formed():
    with pytest.raises(ConfigError, match=r"mlplatform:jenkins.prodApprovers: required"):
        validate(with_jenkins("staging", enabled=True, repoUrl=JENKINS_ON["repoUrl"]), "x")
    with pytest.raises(ConfigError, match=r"mlplatform:jenkins.prodApprovers\[0\]"):
        validate(with_jenkins("staging", **{**JENKINS_ON, "prodApprovers": ["a,b"]}), "x")


def test_groovy_literals_refuse_what_validation_would_refuse():
    assert jenkins._q("https://github.com/a/b.git") == "'https://github.com/a/b.git'"
    for bad in ("a'b", "a\\b", "${x}", "a\nb"):
        with pytest.raises(ValueError):
            jenkins._q(bad)


# ---- Jenkins jobs: who sees which credentials ----


def _dsl(with_credentials=True) -> str:
    return yaml.safe_load(jenkins.jobs_jcasc("https://github.com/acme/mlplatform.git", "main", with_credentials, ["release-managers"]))[
        "jobs"
    ][0]["script"]


def _folder_block(script: str, folder: str) -> str:
    start = script.index(f"folder('{folder}')")
    end = script.index("\n}\n", start)
    return script[start:end]


def test_deploy_credentials_live_only_in_the_deploy_folder():
    script = _dsl()
    ids = lambda block: set(re.findall(r"id\('([^']+)'\)", block))  # noqa: E731
    deploy, preview = ids(_folder_block(script, "deploy")), ids(_folder_block(script, "preview"))
    ephemeral = ids(_folder_block(script, "ephemeral"))
    assert {f"aws-{e}" for e in ("dev", "staging")} | {f"pulumi-{e}" for e in ("dev", "staging")} <= deploy
    # prod's credentials never live on the staging cluster Jenkins runs on (issue 24 review H2)
    assert not {i for i in deploy | preview | ephemeral if "prod" in i}
    # the folder of the PR builds holds no cloud credential (review M2: tests/unit/test_ci_fixed_definitions.py)
    assert preview == {"github", "github-comment"}
    assert ephemeral == {"aws-ephemeral", "pulumi-ephemeral", "github"}
    # nothing is defined outside a folder (the root store would be visible to every job)
    assert "credentials:" not in jenkins.env_jcasc("https://github.com/acme/mlplatform.git", ["x"])
    assert script.count("folderCredentialsProperty") == 3


def test_credential_values_come_base64_from_the_mounted_secret():
    script = _dsl()
    values = re.findall(r"(?:username|password)\((new String[^\n]*)\)", script)
    assert values and all(v.startswith("new String('${base64:${file:/run/secrets/additional/jenkins-ci-credentials-") for v in values)
    keys = set(re.findall(r"jenkins-ci-credentials-([a-z0-9-]+)\}\}", script))
    assert keys == set(jenkins.CREDENTIAL_KEYS) - {jenkins.OAUTH_SECRET_KEY}  # the OAuth secret is the controller's (security_jcasc)
    # the only JCasC interpolations are those reads: repo, branch and descriptions cannot add any
    assert script.count("${") == 2 * len(values)
    assert "folderCredentialsProperty" not in _dsl(with_credentials=False)


def test_deploy_job_builds_main_only_from_the_trusted_pipeline():
    script = _dsl()
    deploy = script[script.index("pipelineJob('deploy/main')") :] + "\n"
    deploy = deploy[: deploy.index("\n}\n")]
    assert "branch('refs/heads/main')" in deploy and "scriptPath('ci/deploy.Jenkinsfile')" in deploy
    assert "multibranch" not in deploy.lower()


def test_pr_job_discovers_pull_requests_from_github():
    script = _dsl()
    pr = script[script.index("multibranchPipelineJob('preview/mlplatform')") :]
    assert "github {" in pr and "repoOwner('acme')" in pr and "repository('mlplatform')" in pr
    assert "gitHubPullRequestDiscovery" in pr and "ForkPullRequestDiscoveryTrait$TrustPermission" in pr
    assert "scriptPath('Jenkinsfile')" in pr


def test_credentials_secret_names_missing_keys_not_values():
    good = {k: "v" for k in jenkins.CREDENTIAL_KEYS}
    assert jenkins.credentials_data(json.dumps(good)) == good
    with pytest.raises(ValueError, match=r"missing keys \['aws-staging-access-key-id'\]") as info:
        jenkins.credentials_data(json.dumps({k: v for k, v in good.items() if k != "aws-staging-access-key-id"} | {"x": "hunter2"}))
    assert "hunter2" not in str(info.value) and "unknown keys ['x']" in str(info.value)
    # a prod credential is refused by name: it has no place on this cluster
    with pytest.raises(ValueError, match=r"unknown keys \['aws-prod-secret-access-key'\]"):
        jenkins.credentials_data(json.dumps(good | {"aws-prod-secret-access-key": "v"}))
    with pytest.raises(ValueError, match="JSON object"):
        jenkins.credentials_data("[1]")


# ---- pipelines: the PR Jenkinsfile cannot deploy; the deploy one binds one environment per stage ----


def _groovy(path: str) -> str:
    # code only: comments may name what they explain (a URL's "://" is not a comment)
    return "\n".join(re.split(r"(?<!:)//", line)[0] for line in (ROOT / path).read_text().splitlines())


def test_pr_jenkinsfile_reaches_no_deploy_credential_and_deploys_nothing():
    text = _groovy("Jenkinsfile")
    used = set(re.findall(r"credentials(?:Id)?\W+'?([a-z0-9-]+)'", text))
    assert used and used <= PREVIEW_IDS, used
    assert not re.search(r"aws-(dev|staging|prod)|pulumi-(dev|staging|prod)|up-ci|train-wait", text)
    # dev is named only by the offline synth diff (no credentials)
    assert [ln.strip() for ln in text.splitlines() if re.search(r"STACK=(dev|staging|prod)\b", ln)] == [
        'sh "make preview-diff STACK=dev BASE_REF=origin/${env.CHANGE_TARGET}"'
    ]


def test_deploy_jenkinsfile_binds_each_environment_only_in_its_stage():
    text = _groovy("ci/deploy.Jenkinsfile")
    for env in ("dev", "staging"):
        assert f"deployTo('{env}')" in text
    # credentials ids are built from the stack the stage deploys, nothing else
    assert re.findall(r"credentialsId: \"([^\"]+)\"", text) == ["aws-${stack}", "pulumi-${stack}"]
    order = re.findall(r"stage\('([^']+)'\)", text)
    assert order.index("Deploy dev") < order.index("Deploy staging")
    # no prod stage: prod deploys from prod's own OIDC identity (GitHub environment / GitLab job), never
    # with a credential held on the staging cluster
    assert "prod" not in text


def test_prod_approvers_reach_the_input_from_config():
    cfg = validate(stack_raw(JENKINS_ENVIRONMENT), "x").jenkins
    env = yaml.safe_load(jenkins.env_jcasc(cfg.repo_url, list(cfg.prod_approvers)))["jenkins"]["globalNodeProperties"][0]["envVars"]["env"]
    assert {"key": "MLPLATFORM_PROD_APPROVERS", "value": ",".join(cfg.prod_approvers)} in env and cfg.prod_approvers


# ---- train-wait looks in the stack's own cluster ----


def _script(path, body):
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_train_wait_uses_the_stacks_kubeconfig_output(tmp_path):
    _script(
        tmp_path / "pulumi",
        "import sys\nargs = sys.argv[1:]\n"
        'print({\'kubeconfig\': \'{"apiVersion": "v1", "clusters": [{"name": "prod-cluster"}]}\', \'models\': \'{"mnist": {"trainingJob": "train-abc"}, "chat": {"trainingJob": null}}\'}[args[2]])\n',
    )
    _script(
        tmp_path / "kubectl",
        "import json, os, sys\n"
        f"open({str(tmp_path / 'calls.jsonl')!r}, 'a').write(json.dumps([os.environ.get('KUBECONFIG'), open(os.environ['KUBECONFIG']).read() if os.environ.get('KUBECONFIG') else None, sys.argv[1:]]) + '\\n')\n"
        "print(json.dumps({'status': {'conditions': [{'type': 'Complete', 'status': 'True'}]}}))\n",
    )
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    env.pop("KUBECONFIG", None)
    proc = subprocess.run(
        ["make", "-s", "-o", ".venv/.installed", "train-wait", "STACK=prod", f"PY={sys.executable}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    kubeconfig, content, args = json.loads((tmp_path / "calls.jsonl").read_text().splitlines()[0])
    assert kubeconfig and "prod-cluster" in content, "kubectl ran with the ambient (in-cluster) context"
    assert args[:4] == ["-n", "ml-training", "get", "job"]
    assert stat.S_IMODE(os.stat(kubeconfig).st_mode) == 0o600


# ---- the build namespace admits the agents' pods and nothing more privileged ----
# A Jenkinsfile may define its own pod template, and the build namespace is Pod Security `privileged`
# (rootless BuildKit's Unconfined profiles), so an admission policy is what keeps a PR from starting a
# privileged pod next to a deploy agent. Its CEL runs here on cel-python, against the real templates.


@functools.cache
def _policy_programs():
    import celpy

    spec = jenkins.build_pod_policy("jenkins-builds")
    env = celpy.Environment()
    compiled = lambda e: env.program(env.compile(e))  # noqa: E731
    return [(v["name"], compiled(v["expression"])) for v in spec["variables"]], [
        (v["message"], compiled(v["expression"])) for v in spec["validations"]
    ]


def _admits(pod: dict) -> list[str]:
    """The messages of the policy's validations that refuse ``pod`` (empty: admitted)."""
    import celpy

    variables, validations = _policy_programs()
    activation = celpy.json_to_cel({"object": pod})
    values = celpy.celtypes.MapType({celpy.celtypes.StringType(n): p.evaluate(activation) for n, p in variables})
    return [message for message, p in validations if not p.evaluate({**activation, "variables": values})]


def _template_pods() -> dict[str, dict]:
    pods = {}
    for name, text in jenkins.pod_templates("jenkins-builds").items():
        (template,) = yaml.safe_load(text)
        pod = yaml.safe_load(template["yaml"])
        # what the Kubernetes plugin adds: the jnlp container (restricted context, as restrictedPssSecurityContext sets)
        pod["spec"]["containers"].append(
            {
                "name": "jnlp",
                "image": "jenkins/inbound-agent:3327.v868139a_d00e0-6",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "runAsNonRoot": True,
                    "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
            }
        )
        pods[name] = {"metadata": {"name": f"{name}-abc", "namespace": "jenkins-builds"}, **pod}
    return pods


def test_admission_admits_the_agent_templates():
    pods = _template_pods()
    assert set(pods) == {"python", "builder"}
    for name, pod in pods.items():
        assert _admits(pod) == [], name


def _with(pod: dict, change) -> dict:
    pod = json.loads(json.dumps(pod))
    change(pod["spec"])
    return pod


def test_admission_refuses_unconfined_apparmor_by_annotation():
    builder = _template_pods()["builder"]
    ok = {
        **builder,
        "metadata": {**builder["metadata"], "annotations": {"container.apparmor.security.beta.kubernetes.io/buildkitd": "unconfined"}},
    }
    assert _admits(ok) == []
    bad = {
        **builder,
        "metadata": {**builder["metadata"], "annotations": {"container.apparmor.security.beta.kubernetes.io/python": "unconfined"}},
    }
    assert _admits(bad) == ["only the buildkitd container may run without AppArmor confinement"]


@pytest.mark.parametrize(
    "what, change",
    [
        ("privileged", lambda s: s["containers"][0].setdefault("securityContext", {}).update(privileged=True)),
        ("host PID", lambda s: s.update(hostPID=True)),
        ("host network", lambda s: s.update(hostNetwork=True)),
        ("hostPath", lambda s: s.setdefault("volumes", []).append({"name": "root", "hostPath": {"path": "/"}})),
        ("SYS_ADMIN", lambda s: s["containers"][0]["securityContext"].update(capabilities={"add": ["SYS_ADMIN"]})),
        ("unconfined seccomp elsewhere", lambda s: s["containers"][0]["securityContext"].update(seccompProfile={"type": "Unconfined"})),
        ("unconfined pod seccomp", lambda s: s["securityContext"].update(seccompProfile={"type": "Unconfined"})),
        ("buildkitd's name on another image", lambda s: s["containers"][1].update(image="alpine:3")),
        ("a service account with rights", lambda s: s.update(serviceAccountName="jenkins")),
        ("a host port", lambda s: s["containers"][0].update(ports=[{"containerPort": 22, "hostPort": 22}])),
        (
            "privileged init container",
            lambda s: s.update(initContainers=[{"name": "x", "image": "alpine:3", "securityContext": {"privileged": True}}]),
        ),
    ],
)
def test_admission_refuses_more_than_the_builder_needs(what, change):
    builder = _template_pods()["builder"]
    assert _admits(_with(builder, change)), f"{what} was admitted"


# ---- issue 24 item 2: PR code never runs inside a credential; forks get the offline preview only ----

# make targets that run the checked-out code (its Makefile, requirements, program, tests)
PR_CODE = re.compile(r"make (venv|test|policy|preview-diff|pr-comment|ephemeral-|smoke|data|reap)")


def _blocks(text: str, opener: str):
    """(start, body) of each ``opener ... { body }`` block of Groovy ``text`` (braces balanced; the
    ``${...}`` of GStrings balance too)."""
    for m in re.finditer(re.escape(opener), text):
        i = text.index("{", text.index("])", m.end()) if opener == "withCredentials(" else m.end())
        depth, j = 0, i
        while True:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                break
            j += 1
        yield m.start(), text[i + 1 : j]


def _stage_at(text: str, pos: int) -> str:
    return re.findall(r"stage\('([^']+)'\)", text[:pos])[-1]


def _stage_body(text: str, name: str) -> str:
    return next(body for start, body in _blocks(text, f"stage('{name}')"))


def test_jenkins_binds_no_credential_around_pr_code():
    """The PR's pipeline binds one credential, the comment-only token, in a fresh pod that runs the
    target branch's code; its ephemeral stack is another job's (ci/ephemeral.Jenkinsfile, from main)."""
    text = _groovy("Jenkinsfile")
    bindings = [(_stage_at(text, start), body) for start, body in _blocks(text, "withCredentials(")]
    assert [stage for stage, _ in bindings] == ["PR comment"]
    comment = _stage_body(text, "PR comment")
    assert "skipDefaultCheckout()" in comment and "agent {" in text[text.index("stage('PR comment')") :][:400]
    checkout = comment.index("git url:")
    assert "branch: env.CHANGE_TARGET" in comment[checkout:].splitlines()[0], "the comment runs the target branch's code"
    assert checkout < comment.index("unstash 'preview'") < comment.index("make ")
    assert "make venv" not in bindings[0][1], "installs inside a credential"


def test_jenkins_pr_pipeline_deploys_nothing_and_binds_no_cloud_credential():
    text = _groovy("Jenkinsfile")
    assert not re.search(r"aws-|pulumi-|ephemeral-(up|destroy)|make smoke|input |build job", text)
    creds = set(re.findall(r"credentialsId: '([a-z0-9-]+)'", text))
    assert creds == {"github", "github-comment"}, creds  # clone the target branch; comment with the comment-only token
    # the checks and the preview run on an agent that binds nothing
    checks = _stage_body(text, "Checks")
    assert "withCredentials" not in checks and "credentialsId" not in checks


def _workflows():
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted((ROOT / ".github" / "workflows").glob("*.yml"))}


def _on(doc) -> dict:
    on = doc.get("on", doc.get(True))  # YAML 1.1 reads a bare `on` as true
    return on if isinstance(on, dict) else {e: None for e in ([on] if isinstance(on, str) else on)}


def _runs_pr_code(job) -> bool:
    return any(str(s.get("run", "")).startswith("make ") for s in job.get("steps", []))


def test_github_pr_code_runs_without_secrets_or_a_write_token():
    for name, doc in _workflows().items():
        on = _on(doc)
        if "pull_request_target" in on:
            # runs with the base's secrets: only the default branch's code, never the PR's head
            for job in doc["jobs"].values():
                if "pull_request_target" not in str(job.get("if", "")):
                    continue
                refs = [s.get("with", {}).get("ref") for s in job["steps"] if str(s.get("uses", "")).startswith("actions/checkout@")]
                assert refs == ["${{ github.event.repository.default_branch }}"], (name, refs)
        if "pull_request" not in on:
            continue
        assert "secrets." not in yaml.safe_dump(doc.get("env") or {}), f"{name}: workflow-wide secrets reach every step"
        for job_name, job in doc["jobs"].items():
            assert not job.get("environment"), f"{name}: {job_name}: a pull_request job in an environment"
            perms = job.get("permissions") or doc.get("permissions") or {}
            assert all(v in ("read", "none") for v in perms.values()), (name, job_name, perms)
            dumped = yaml.safe_dump(job)
            assert "secrets." not in dumped and "github.token" not in dumped, (name, job_name)


def test_github_credentialed_pr_jobs_wait_for_a_reviewer_and_install_first():
    ephemeral = _workflows()["ephemeral.yml"]
    assert "pull_request" not in _on(ephemeral)  # the PR's copy of this file never runs (review M2)
    for job_name in ("up", "destroy", "reap"):
        job = ephemeral["jobs"][job_name]
        steps = job["steps"]
        venv = next(i for i, s in enumerate(steps) if str(s.get("run", "")).startswith("make venv"))
        assume = next(i for i, s in enumerate(steps) if str(s.get("uses", "")).startswith("aws-actions/"))
        assert venv < assume, job_name
        secret_steps = [i for i, s in enumerate(steps) if "secrets." in yaml.safe_dump(s) and i != assume]
        assert all(i > assume for i in secret_steps), job_name
    assert ephemeral["jobs"]["up"]["environment"] == "preview"  # required reviewers, main only (docs/cicd.md)


def test_github_comment_posted_by_a_job_that_runs_no_pr_code():
    doc = _workflows()["pr-comment.yml"]
    assert set(_on(doc)) == {"workflow_run"} and _on(doc)["workflow_run"]["workflows"] == ["ci"]
    (job,) = doc["jobs"].values()
    assert job["permissions"] == {"contents": "read", "actions": "read", "pull-requests": "write"}
    (checkout,) = [s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/checkout@")]
    assert checkout["with"]["ref"] == "${{ github.event.repository.default_branch }}"
    (download,) = [s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/download-artifact@")]
    assert download["with"]["run-id"] == "${{ github.event.workflow_run.id }}"
    check = next(s for s in job["steps"] if s.get("id") == "pr")
    assert "^[0-9]+$" in check["run"] and "HEAD_SHA" in check["env"]  # the artifact is data, checked
    # and the PR's own run writes only the artifact: no token, no comment
    preview = _workflows()["ci.yml"]["jobs"]["preview"]
    assert preview["permissions"] == {"contents": "read"}
    assert not any("pr-comment" in str(s.get("run", "")) for s in preview["steps"])


def _gitlab():
    from tests.unit.test_pipeline import gitlab_ci

    return gitlab_ci()


def test_gitlab_mr_code_runs_without_credentials_unless_a_maintainer_starts_it():
    doc = _gitlab()
    for name, job in doc.items():
        if name.startswith(".") or not isinstance(job, dict) or "script" not in job:
            continue
        mr = any("merge_request_event" in str(r.get("if", "")) for r in job.get("rules") or [])
        if not mr:
            continue
        assert "id_tokens" not in job, f"{name}: an AWS token in an MR pipeline (review M2: ephemeral pipelines run on main)"
        assert "environment" not in job, f"{name}: an MR pipeline's job in an environment (its scoped variables)"
        script = "\n".join(map(str, job["script"]))
        assert "TOKEN" not in script, name
    assert "pr-comment" not in str(doc["preview"]["script"])
    assert doc["preview"]["artifacts"]["expose_as"]  # the MR shows the preview with no token at all


def test_gitlab_comment_job_only_in_a_pipeline_on_main_and_runs_no_mr_code():
    """Attack review: a job of the MR's own YAML could claim environment mr-comment and print the token.
    The comment job exists only in a pipeline on the default branch (its YAML is main's), and the token
    is protected (docs/cicd.md), which no pipeline of an unprotected ref receives."""
    doc = _gitlab()
    job = doc["preview:comment"]
    (rule,) = job["rules"]
    assert rule["if"].startswith("$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH && $PREVIEW_MR =~ /^[1-9][0-9]*$/")
    assert "merge_request" not in rule["if"] and job["needs"] == ["preview"] and job["before_script"] == []
    assert job["environment"]["name"] == "mr-comment"
    script = "\n".join(job["script"])
    assert "GIT_STRATEGY" not in str(job.get("variables")) and "checkout" not in script and "merge-requests" not in script
    assert "make pr-comment FORGE=gitlab REPO=$CI_PROJECT_ID PR=$PREVIEW_MR" in script
    # the MR's code (the preview) runs in a job with no environment and no token
    assert "environment" not in doc["preview"] and "id_tokens" not in doc["preview"]
    # a comment pipeline deploys and tests nothing
    for name in ("test", "deploy:dev", "deploy:staging", "deploy:prod"):
        assert all("$PREVIEW_MR == null" in r["if"] for r in doc[name]["rules"]), name
