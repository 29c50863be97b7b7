"""Issue 24 review M2: the change's own pipeline file (a PR's Jenkinsfile, an MR's .gitlab-ci.yml, a PR's
copy of a workflow) cannot remove the approval of a credentialed ephemeral deploy. On every forge the
credentialed path is defined on the default branch, and the credential is bound to that definition by
something outside the change: Jenkins' folder-scoped credentials and job matrix, the OIDC trust of the
ephemeral role (GitLab: the default branch's subject; GitHub: environments admitting main only).
Each forge's part ends with a planted hostile edit of the change's file that changes nothing."""

from __future__ import annotations

import re

import pytest
import yaml

from components.cluster.ci_deploy_role import ephemeral_trust_policy, trust_policy
from components.config import CiConfig
from components.services import jenkins
from tests.conftest import ROOT
from tests.unit.test_pipeline import gitlab_ci
from tools import iam_eval

APPROVERS = ["acme*release-managers", "alice"]
CLOUD = {c.id for creds in jenkins.FOLDER_CREDENTIALS.values() for c in creds if c.id.startswith(("aws-", "pulumi-"))}


# ---- Jenkins: which script a job runs, and which credentials it can name ----


def _dsl() -> str:
    return yaml.safe_load(jenkins.jobs_jcasc("https://github.com/acme/mlplatform.git", "main", True, APPROVERS))["jobs"][0]["script"]


def _blocks(script: str, kind: str) -> dict[str, str]:
    """name -> body of each top-level ``kind('name') { ... }`` of the job-dsl script."""
    found = {}
    for m in re.finditer(rf"^{kind}\('([^']+)'\) \{{\n(.*?)\n\}}$", script, re.M | re.S):
        found[m[1]] = m[2]
    return found


def _folder_credentials(script: str) -> dict[str, set[str]]:
    return {name: set(re.findall(r"id\('([^']+)'\)", body)) for name, body in _blocks(script, "folder").items()}


def _visible(job: str, folders: dict[str, set[str]]) -> set[str]:
    """Credentials a build of ``job`` can name: its ancestor folders' stores (credentials plugin's folder
    store; nothing is in the global store: test_ci_trust.py)."""
    parts = job.split("/")
    return set().union(*(folders.get("/".join(parts[:i]), set()) for i in range(1, len(parts))))


def _script_source(body: str) -> tuple[str, str]:
    """(ref, path) the job's pipeline script is read from. A multibranch project's branch jobs read
    the change's own file."""
    if "branchSources" in body:
        return ("the change's own head", re.search(r"scriptPath\('([^']+)'\)", body)[1])
    assert "cpsScm" in body and "lightweight(true)" in body, body
    return (re.search(r"branch\('([^']+)'\)", body)[1], re.search(r"scriptPath\('([^']+)'\)", body)[1])


def _jobs(script: str) -> dict[str, str]:
    jobs = {**_blocks(script, "pipelineJob"), **_blocks(script, "multibranchPipelineJob")}
    # a multibranch project's builds are its branch jobs (preview/mlplatform/PR-12), in its folder
    return {**jobs, **{f"{n}/PR-12": b for n, b in _blocks(script, "multibranchPipelineJob").items()}}


def test_jenkins_every_job_that_can_name_a_cloud_credential_runs_mains_script():
    script = _dsl()
    folders, jobs = _folder_credentials(script), _jobs(script)
    assert CLOUD and set(folders) == {"preview", "ephemeral", "deploy"}
    credentialed = {job for job in jobs if _visible(job, folders) & CLOUD}
    assert credentialed == {"ephemeral/pr-stack", "ephemeral/reap-ephemeral-stacks", "deploy/main"}
    for job in credentialed:
        ref, path = _script_source(jobs[job])
        assert ref == "refs/heads/main" and path.startswith("ci/"), (job, ref, path)
    # the change's own Jenkinsfile runs only where no cloud credential can be named
    pr_builds = {job for job in jobs if _script_source(jobs[job])[0] == "the change's own head"}
    assert pr_builds == {"preview/mlplatform", "preview/mlplatform/PR-12"}
    assert all(_visible(job, folders) <= {"github", "github-comment"} for job in pr_builds)
    assert "folderCredentialsProperty" not in jobs["preview/mlplatform"]  # no store of its own either


def test_jenkins_only_approvers_can_start_the_pr_stack():
    body = _jobs(_dsl())["ephemeral/pr-stack"]
    matrix = re.search(r"authorizationMatrix \{(.*)\}", body)[1]
    assert "inheritanceStrategy { inheriting() }" in matrix
    granted = re.findall(r"(user|group) \{ name\('([^']+)'\); permissions\((\[[^\]]*\])\) \}", matrix)
    assert {(kind, name): yaml.safe_load(perms) for kind, name, perms in granted} == {
        ("group", "acme*release-managers"): ["Job/Build", "Job/Cancel"],
        ("user", "alice"): ["Job/Build", "Job/Cancel"],
    }
    assert "stringParam('PR'" in body and "stringParam('COMMIT'" in body
    # a job's matrix counts only under the project matrix; globally nobody but an administrator builds,
    # and builds (every PR's included) run as a user that may build nothing
    from tests.unit.test_ci_trust import JENKINS_ON, validate, with_jenkins

    cfg = validate(with_jenkins("staging", **JENKINS_ON), "x").jenkins
    strategy = yaml.safe_load(jenkins.security_jcasc(cfg, True))["jenkins"]["authorizationStrategy"]
    assert list(strategy) == ["projectMatrix"]
    for entry in strategy["projectMatrix"]["entries"]:
        ((kind, e),) = entry.items()
        assert "Job/Build" not in e["permissions"], e
    assert {e["user"]["name"] for e in strategy["projectMatrix"]["entries"] if "user" in e} >= {jenkins.BUILD_USER}


def _code(path: str) -> str:
    return "\n".join(re.split(r"(?<!:)//", line)[0] for line in (ROOT / path).read_text().splitlines())


def test_jenkins_pr_stack_deploys_exactly_the_reviewed_commit_installed_first():
    text = _code("ci/ephemeral.Jenkinsfile")
    check = text.index("stage('Check the request')")
    assert "agent" not in text[check : text.index("stage('Ephemeral stack')")]  # checked before any pod
    assert "params.PR ==~ /[1-9][0-9]{0,6}/" in text and "params.COMMIT ==~ /[0-9a-f]{40}/" in text
    assert "branches: [[name: params.COMMIT]]" in text and 'refspec: "+refs/pull/${params.PR}/head:' in text
    # the reviewed commit must BE the PR's head (attack review: an ancestor could be a commit a later push reverted)
    head = 'test "$(git rev-parse refs/remotes/origin/pr-head)" = "$COMMIT"'
    order = [text.index(s) for s in ("checkout([", head, "make venv-lock", "ephemeralCredentials {")]
    assert order == sorted(order) and "is-ancestor" not in text
    assert 'currentBuild.description = "PR ${params.PR} at ${params.COMMIT}"' in text  # what the approver started
    # shell lines take the parameters from the environment, never pasted into Groovy strings
    assert all("${" not in line for line in re.findall(r"sh '([^']*)'", text)) and 'sh "' not in text
    used = set(re.findall(r"credentialsId: '([a-z0-9-]+)'", text))
    assert used == {"github", "aws-ephemeral", "pulumi-ephemeral"} <= _folder_credentials(_dsl())["ephemeral"]


HOSTILE_STAGE = """
    stage('Ephemeral stack, no approval') {
      agent { kubernetes { inheritFrom 'builder'; defaultContainer 'python' } }
      steps {
        withCredentials([
          usernamePassword(credentialsId: 'aws-ephemeral', usernameVariable: 'AWS_ACCESS_KEY_ID', passwordVariable: 'AWS_SECRET_ACCESS_KEY'),
          usernamePassword(credentialsId: 'pulumi-ephemeral', usernameVariable: 'PULUMI_USER', passwordVariable: 'PULUMI_CONFIG_PASSPHRASE'),
        ]) { sh 'make ephemeral-up PR=$CHANGE_ID' }
      }
    }
"""


def test_jenkins_a_hostile_jenkinsfile_changes_nothing_on_the_credentialed_path():
    """Planted: a PR's Jenkinsfile binds the ephemeral credentials around its own code with no approval,
    and the PR's copy of ci/ephemeral.Jenkinsfile drops its checks. Its build (a branch job of
    preview/mlplatform) can resolve none of those ids, and the job that holds them reads main's script."""
    pr_file = (ROOT / "Jenkinsfile").read_text()
    hostile = pr_file[: pr_file.rindex("  }\n}")] + HOSTILE_STAGE + "  }\n}\n"
    bound = set(re.findall(r"credentialsId: '([a-z0-9-]+)'", hostile))
    folders, jobs = _folder_credentials(_dsl()), _jobs(_dsl())
    assert bound - _visible("preview/mlplatform/PR-12", folders) == {"aws-ephemeral", "pulumi-ephemeral"}  # not found: the build fails
    # the credentialed job's definition names main and a fixed path: no ref of the change reaches it
    pr_stack = jobs["ephemeral/pr-stack"]
    assert _script_source(pr_stack) == ("refs/heads/main", "ci/ephemeral.Jenkinsfile")
    assert "CHANGE_" not in pr_stack and "refs/pull" not in pr_stack and "branchSources" not in pr_stack


# ---- GitLab: the review role trusts the default branch's pipelines only ----

GITLAB = "arn:aws:iam::111122223333:oidc-provider/gitlab.example.com"
GITHUB = "arn:aws:iam::111122223333:oidc-provider/token.actions.githubusercontent.com"
CI = CiConfig(github_repo="acme/mlplatform", github_oidc_provider=GITHUB, gitlab_project="acme/ml/platform", gitlab_oidc_provider=GITLAB)


def _assumable(policy: dict, provider: str, claims: dict[str, str]) -> bool:
    """AssumeRoleWithWebIdentity with a token of ``claims`` (sub, aud) from ``provider``: an Allow whose
    conditions hold (tools/iam_eval.py's condition logic; trust policies here have no Deny)."""
    issuer = provider.split(":oidc-provider/", 1)[1]
    ctx = {f"{issuer}:{k}": v for k, v in claims.items()}
    return any(
        s["Effect"] == "Allow"
        and s["Action"] == "sts:AssumeRoleWithWebIdentity"
        and s["Principal"] == {"Federated": provider}
        and iam_eval._conditions_hold(s["Condition"], ctx)
        for s in policy["Statement"]
    )


def _gitlab_sub(ref: str) -> str:
    return f"project_path:acme/ml/platform:ref_type:branch:ref:{ref}"


def test_gitlab_review_role_is_asked_for_only_in_default_branch_pipelines():
    doc = gitlab_ci()
    review = {
        k
        for k, v in doc.items()
        if isinstance(v, dict) and v.get("id_tokens", {}).get("AWS_ID_TOKEN", {}).get("aud") == "mlplatform-preview"
    }
    assert review == {"ephemeral:up", "ephemeral:destroy"}
    for name in review:
        for rule in doc[name]["rules"]:
            assert rule["if"].startswith("$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH && "), (name, rule)
            assert "merge_request" not in rule["if"] and "EPHEMERAL_MR" in rule["if"], (name, rule)
    # up waits for a person (the approval without Premium's protected environments)
    assert [r.get("when") for r in doc["ephemeral:up"]["rules"]] == ["manual"]
    # up deploys exactly the reviewed commit of that MR: fetched, checked to BE its head, checked out
    script = doc["ephemeral:up"]["script"]
    steps = [
        "refs/merge-requests/$EPHEMERAL_MR/head",
        'test "$(git rev-parse refs/remotes/origin/mr-head)" = "$EPHEMERAL_SHA"',
        'checkout --quiet --detach "$EPHEMERAL_SHA"',
    ]
    assert "is-ancestor" not in str(script)
    at = [next(i for i, line in enumerate(script) if s in str(line)) for s in steps]
    assert at == sorted(at) and at[-1] < script.index(("!reference", [".assume-role", "script"]))
    # destroy runs the default branch's code: no MR checkout
    assert not any("merge-requests" in str(line) or "checkout" in str(line) for line in doc["ephemeral:destroy"]["script"])
    # no other job runs in such a pipeline (a maintainer's run of main with EPHEMERAL_MR deploys nothing else)
    for name in ("test", "deploy:dev", "deploy:staging", "deploy:prod"):
        assert all("$EPHEMERAL_MR == null" in r["if"] for r in doc[name]["rules"]), name


def test_gitlab_a_hostile_mr_pipeline_gets_no_role():
    """Planted: the MR's .gitlab-ci.yml runs ephemeral:up in its own pipeline, no manual step, no checks,
    asking for every audience there is. Its tokens name the MR's branch, which no role trusts; the
    same job in a pipeline of main (which only who may merge there can run) is trusted."""
    hostile = gitlab_ci()
    hostile["ephemeral:up"]["rules"] = [{"if": '$CI_PIPELINE_SOURCE == "merge_request_event"'}]
    hostile["ephemeral:up"]["script"] = [
        "make venv",
        ("!reference", [".assume-role", "script"]),
        "make ephemeral-up PR=$CI_MERGE_REQUEST_IID",
    ]
    audiences = {"mlplatform-preview", "mlplatform-dev", "mlplatform-staging", "mlplatform-prod"}
    roles = {"preview": ephemeral_trust_policy(CI), **{env: trust_policy(CI, env) for env in ("dev", "staging", "prod")}}
    for branch in ("feature/x", "main-fix", "refs/heads/main"):
        for aud in audiences:
            claims = {"sub": _gitlab_sub(branch), "aud": aud}
            assert not any(_assumable(policy, GITLAB, claims) for policy in roles.values()), (branch, aud)
    assert _assumable(roles["preview"], GITLAB, {"sub": _gitlab_sub("main"), "aud": "mlplatform-preview"})
    # and main's token for the review audience is the review role's only: no deploy role takes it
    assert not any(
        _assumable(roles[e], GITLAB, {"sub": _gitlab_sub("main"), "aud": "mlplatform-preview"}) for e in ("dev", "staging", "prod")
    )


# ---- GitHub: environments that admit main only, a role that trusts only them ----

DEFAULT_BRANCH_DEFINITION = {"workflow_dispatch", "pull_request_target", "schedule", "workflow_run"}


def _workflows() -> dict[str, dict]:
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted((ROOT / ".github" / "workflows").glob("*.yml"))}


def _events(doc: dict) -> set[str]:
    on = doc.get("on", doc.get(True))
    return set(on) if isinstance(on, dict) else set([on] if isinstance(on, str) else on)


def test_github_ephemeral_environments_only_in_workflows_main_defines():
    """`preview` and `preview-reaper` (the ephemeral role's only subjects) appear only in a workflow whose
    events run the default branch's file; no `pull_request` or `push` workflow names them."""
    users = {
        (n, j): job["environment"]
        for n, d in _workflows().items()
        for j, job in d["jobs"].items()
        if job.get("environment") in ("preview", "preview-reaper")
    }
    assert users == {
        ("ephemeral.yml", "up"): "preview",
        ("ephemeral.yml", "destroy"): "preview-reaper",
        ("ephemeral.yml", "reap"): "preview-reaper",
    }
    assert _events(_workflows()["ephemeral.yml"]) <= DEFAULT_BRANCH_DEFINITION
    subjects = {
        s["Condition"]["StringEquals"]["token.actions.githubusercontent.com:sub"]
        for s in ephemeral_trust_policy(CI)["Statement"]
        if s["Principal"]["Federated"] == GITHUB
    }
    assert subjects == {"repo:acme/mlplatform:environment:preview", "repo:acme/mlplatform:environment:preview-reaper"}


def test_github_up_deploys_the_reviewed_commit_and_the_rest_runs_mains_code():
    jobs = _workflows()["ephemeral.yml"]["jobs"]
    up = jobs["up"]
    assert up["if"] == "github.event_name == 'workflow_dispatch'" and up["env"] == {"PR": "${{ inputs.pr }}", "SHA": "${{ inputs.sha }}"}
    # the approver sees the PR and the commit on the run; the commit must BE the PR's head (an ancestor
    # could be one a later push reverted), asked of GitHub, then checked on what was checked out
    assert _workflows()["ephemeral.yml"]["run-name"] == (
        "${{ github.event_name == 'workflow_dispatch' && format('ephemeral PR #{0} @ {1}', inputs.pr, inputs.sha) || github.workflow }}"
    )
    runs = [str(s.get("run", "")) for s in up["steps"]]
    check = next(i for i, r in enumerate(runs) if "^[1-9][0-9]*$" in r and "^[0-9a-f]{40}$" in r)
    head = next(
        i for i, r in enumerate(runs) if 'gh api "repos/$GITHUB_REPOSITORY/pulls/$PR" --jq .head.sha' in r and '"$head" == "$SHA"' in r
    )
    checkout = next(i for i, s in enumerate(up["steps"]) if str(s.get("uses", "")).startswith("actions/checkout@"))
    verify = next(i for i, r in enumerate(runs) if r.strip() == 'test "$(git rev-parse HEAD)" = "$SHA"')
    install = next(i for i, r in enumerate(runs) if r.startswith("make "))
    assume = next(i for i, s in enumerate(up["steps"]) if str(s.get("uses", "")).startswith("aws-actions/"))
    assert check < head < checkout < verify < install < assume and "is-ancestor" not in str(runs)
    assert up["steps"][head]["env"] == {"GH_TOKEN": "${{ github.token }}"} and up["permissions"]["pull-requests"] == "read"
    assert all("inputs." not in r for r in runs)  # inputs reach the shell as environment, never as script text
    for name in ("destroy", "reap"):
        checkouts = [s for s in jobs[name]["steps"] if str(s.get("uses", "")).startswith("actions/checkout@")]
        assert [c.get("with", {}).get("ref") for c in checkouts] in ([None], ["${{ github.event.repository.default_branch }}"]), name
        assert "inputs." not in yaml.safe_dump(jobs[name]) and "head.sha" not in yaml.safe_dump(jobs[name])


@pytest.mark.parametrize("event", ["pull_request", "push"])
def test_github_a_hostile_pr_copy_of_the_workflow_gets_no_role(event):
    """Planted: a PR's copy of ephemeral.yml runs `up` on its own event without the environment (no
    reviewers). The token then names the event, not an environment: the role refuses it. With the
    environment kept, the environment's branch policy (main only; docs/cicd.md) refuses the job
    before any token, and its reviewers are GitHub's, not the file's."""
    hostile = _workflows()["ephemeral.yml"]
    hostile["on"] = {event: None}
    del hostile["jobs"]["up"]["environment"]
    subject = "repo:acme/mlplatform:pull_request" if event == "pull_request" else "repo:acme/mlplatform:ref:refs/heads/feature-x"
    assert not _assumable(ephemeral_trust_policy(CI), GITHUB, {"sub": subject, "aud": "sts.amazonaws.com"})
    assert _assumable(ephemeral_trust_policy(CI), GITHUB, {"sub": "repo:acme/mlplatform:environment:preview", "aud": "sts.amazonaws.com"})
