"""The pipeline's thin YAML/Groovy only calls make targets that exist; its scripts behave."""

from __future__ import annotations

import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from ops import train_wait
from tests.conftest import ROOT
from tools import notify, pr_comment

TARGETS = set(re.findall(r"^([a-z][a-z0-9-]*):", (ROOT / "Makefile").read_text(), re.M))
PIPELINES = [
    ROOT / "Jenkinsfile",
    *sorted((ROOT / "ci").glob("*.Jenkinsfile")),
    ROOT / ".gitlab-ci.yml",
    *sorted((ROOT / ".github" / "workflows").glob("*.yml")),
]
WORKFLOWS = {p.name: yaml.safe_load(p.read_text()) for p in sorted((ROOT / ".github" / "workflows").glob("*.yml"))}


class GitLabLoader(yaml.SafeLoader):
    """YAML with GitLab's !reference tag (kept as ("!reference", [job, key]))."""


GitLabLoader.add_constructor("!reference", lambda loader, node: ("!reference", loader.construct_sequence(node)))


def gitlab_ci() -> dict:
    return yaml.load((ROOT / ".gitlab-ci.yml").read_text(), Loader=GitLabLoader)  # noqa: S506 (a SafeLoader subclass)


@pytest.mark.parametrize("path", PIPELINES, ids=[p.name for p in PIPELINES])
def test_pipelines_call_only_existing_make_targets(path):
    # commands only (sh '...' in Groovy, run: / script lines in YAML), not prose in comments
    used = set(re.findall(r"""(?:sh ['"]|run: |^\s*- )make ((?:[a-z][a-z0-9-]* ?)+)""", path.read_text(), re.M))
    targets = {t for group in used for t in group.split() if "=" not in t}
    assert targets, f"{path.name} calls no make target"
    assert targets <= TARGETS, f"{path.name}: unknown targets {targets - TARGETS}"


def test_gitlab_ci_parses_and_stops_environments():
    doc = gitlab_ci()
    up, down = doc["ephemeral:up"], doc["ephemeral:destroy"]
    assert up["environment"]["on_stop"] == "ephemeral:destroy" and up["environment"]["auto_stop_in"]
    assert down["environment"]["action"] == "stop" and down["environment"]["name"] == up["environment"]["name"]
    assert set(doc["stages"]) >= {job["stage"] for name, job in doc.items() if isinstance(job, dict) and "stage" in job}


def test_jenkinsfile_stages_in_order():
    text = (ROOT / "Jenkinsfile").read_text()
    order = [m for m in re.findall(r"stage\('([^']+)'\)", text)]
    # the PR's own pipeline ends at the comment: its ephemeral stack is ci/ephemeral.Jenkinsfile's, from main
    assert order == ["Checks", "Set up", "Lint + tests", "Policy", "PR preview", "PR comment"]
    ephemeral = (ROOT / "ci" / "ephemeral.Jenkinsfile").read_text()
    assert re.findall(r"stage\('([^']+)'\)", ephemeral) == ["Check the request", "Ephemeral stack"]
    # destroyed whatever the smoke test says, once the stack was started
    assert re.search(r"finally \{\s*ephemeralCredentials \{ sh 'make ephemeral-destroy", ephemeral)
    deploy = (ROOT / "ci" / "deploy.Jenkinsfile").read_text()
    order = [m for m in re.findall(r"stage\('([^']+)'\)", deploy)]
    # prod's credentials never live on the staging cluster's Jenkins (issue 24, H2): prod deploys only
    # from its own OIDC identity (GitHub environment `prod` / GitLab `deploy:prod`), behind its reviewers
    assert order == ["Lint + tests", "Deploy dev", "Deploy staging"]
    assert "aws-prod" not in deploy and "pulumi-passphrase-prod" not in deploy


def test_every_deploy_promotes_through_a_canary_before_the_smoke_test():
    """Issue 15 item 5: each environment's deploy runs the delivery step (ops/deliver.py) after the
    training gate and before the smoke test; on Jenkins an aborted canary fails the build and its
    failure notification carries the analysis result."""
    texts = {
        "ci/deploy.Jenkinsfile": (ROOT / "ci" / "deploy.Jenkinsfile").read_text().split("def deployTo", 1)[1],
        ".github/workflows/deploy.yml": (ROOT / ".github" / "workflows" / "deploy.yml").read_text(),
        ".gitlab-ci.yml": (ROOT / ".gitlab-ci.yml").read_text().split("\n.deploy:", 1)[1],
    }
    for path, text in texts.items():
        steps = [text.index(f"make {t}") for t in ("pin", "up-ci", "train-wait", "deliver", "smoke")]
        assert steps == sorted(steps), path
    jenkins = texts["ci/deploy.Jenkinsfile"]
    assert "returnStatus: true" in jenkins and "error(currentBuild.description)" in jenkins
    assert "currentBuild.description" in jenkins.split("failure {")[1]  # the notification says why


# ---- GitHub/GitLab: OIDC to a per-environment role, no AWS keys ----


def test_no_long_lived_aws_keys_in_any_pipeline():
    for path in PIPELINES:
        text = path.read_text()
        assert "AWS_ACCESS_KEY_ID }}" not in text and "secrets.AWS_SECRET_ACCESS_KEY" not in text, path.name
        assert "AWS_SECRET_ACCESS_KEY:" not in text, path.name


def _jobs_assuming_roles():
    for name, doc in WORKFLOWS.items():
        for job_name, job in doc["jobs"].items():
            steps = job.get("steps", [])
            if any(str(s.get("uses", "")).startswith("aws-actions/configure-aws-credentials@") for s in steps):
                yield name, job_name, job, next(s for s in steps if str(s.get("uses", "")).startswith("aws-actions/"))


def test_github_jobs_assume_their_environments_role_by_oidc():
    found = list(_jobs_assuming_roles())
    assert {(n, j) for n, j, *_ in found} == {
        ("deploy.yml", "deploy"),
        ("ephemeral.yml", "up"),
        ("ephemeral.yml", "destroy"),
        ("ephemeral.yml", "reap"),
    }
    for name, job_name, job, step in found:
        # `up` also reads the PR (its head must be the approved commit): nothing that writes
        extra = {"pull-requests": "read"} if (name, job_name) == ("ephemeral.yml", "up") else {}
        assert job["permissions"] == {"contents": "read", "id-token": "write", **extra}, (name, job_name)
        assert job["environment"], (name, job_name)  # the role trusts repo:OWNER/NAME:environment:<env> only
        assert step["with"]["role-to-assume"] == "${{ secrets.AWS_DEPLOY_ROLE_ARN }}"
    # the PR's stack: the preview environment (main only, required reviewers), never a deploy one; the
    # destroy on close and the reaper (default branch's code only) their own environment, main only, no reviewers
    jobs = WORKFLOWS["ephemeral.yml"]["jobs"]
    assert {j: jobs[j]["environment"] for j in ("up", "destroy", "reap")} == {
        "up": "preview",
        "destroy": "preview-reaper",
        "reap": "preview-reaper",
    }
    # id-token is granted nowhere else
    for name, doc in WORKFLOWS.items():
        assert "id-token" not in (doc.get("permissions") or {}), name


def test_github_deploys_each_environment_in_its_own_environment_from_main_only():
    ci = WORKFLOWS["ci.yml"]["jobs"]
    chain = [(j, ci[j]["with"]["stack"], ci[j].get("needs")) for j in ("deploy-dev", "deploy-staging", "deploy-prod")]
    assert chain == [("deploy-dev", "dev", "test"), ("deploy-staging", "staging", "deploy-dev"), ("deploy-prod", "prod", "deploy-staging")]
    assert all(ci[j]["uses"] == "./.github/workflows/deploy.yml" for j, *_ in chain)
    assert ci["deploy-dev"]["if"] == "github.event_name == 'push' && github.ref == 'refs/heads/main'"
    deploy = WORKFLOWS["deploy.yml"]["jobs"]["deploy"]
    assert deploy["environment"] == "${{ inputs.stack }}"
    # PR jobs of ci.yml carry no stack credentials at all
    assert "secrets.PULUMI" not in yaml.safe_dump(ci["preview"]) and "aws-actions" not in yaml.safe_dump(ci["preview"])


def test_gitlab_jobs_assume_roles_by_oidc_per_environment():
    doc = gitlab_ci()
    assert "id_tokens" not in doc[".aws-oidc"]  # each job asks for its own environment's audience
    assume = "\n".join(doc[".assume-role"]["script"])
    assert 'AWS_ROLE_ARN="$AWS_DEPLOY_ROLE_ARN"' in assume and "AWS_WEB_IDENTITY_TOKEN_FILE=" in assume

    def resolved(job: dict) -> dict:
        parent = job.get("extends")
        return {**resolved(doc[parent]), **job} if parent else job

    jobs = {k: resolved(v) for k, v in doc.items() if not k.startswith(".") and isinstance(v, dict) and "script" in resolved(v)}
    needs_aws = {k for k, j in jobs.items() if re.search(r"make (up-ci|ephemeral-|reap)", str(j["script"]))}
    with_token = {k for k, j in jobs.items() if "id_tokens" in j}
    assert needs_aws == with_token == {"ephemeral:up", "ephemeral:destroy", "deploy:dev", "deploy:staging", "deploy:prod"}
    # the role is assumed before any step that needs it, after the install (issue 24: install first)
    for k in with_token:
        script = jobs[k]["script"]
        at = script.index(("!reference", [".assume-role", "script"]))
        # before it: the install, and (ephemeral:up) the checkout of the reviewed commit
        assert all(str(line).startswith(("make venv", "git ", 'test "$(git rev-parse ')) for line in script[:at]), (k, script)
        assert all(re.search(r"make (up-ci|ephemeral-|reap|pin|train-wait|deliver|smoke)", str(line)) is None for line in script[:at]), k
    deploy = doc[".deploy"]
    assert deploy["extends"] == ".aws-oidc"
    for env in ("dev", "staging", "prod"):
        job = doc[f"deploy:{env}"]
        assert job["environment"]["name"] == env and job["resource_group"] == env
        assert job["rules"][0]["if"] == "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH && $EPHEMERAL_MR == null && $PREVIEW_MR == null"
    assert doc["deploy:prod"]["rules"][0]["when"] == "manual" and doc["deploy:prod"]["needs"] == ["deploy:staging"]
    for name in ("ephemeral:up", "ephemeral:destroy"):
        assert doc[name]["extends"] == ".aws-oidc" and doc[name]["environment"]["name"].startswith("review/")
    assert "preview" in jobs and "id_tokens" not in jobs["preview"]  # the MR preview gets no AWS token


def _job(state):
    return {"status": {"conditions": [{"type": state, "status": "True"}]}}


@pytest.fixture
def kube(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{ROOT / 'tests' / 'unit' / 'fake_kubectl'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_KUBE_DIR", str(tmp_path))
    (tmp_path / "running.json").write_text(json.dumps({"status": {"active": 1}}))
    return tmp_path


def test_train_wait_success(kube):
    (kube / "job.json").write_text(json.dumps(_job("Complete")))
    assert train_wait.wait("train-abc", "ml-training", timeout_s=30, poll_s=0) == 0
    calls = [json.loads(x) for x in (kube / "calls.jsonl").read_text().splitlines()]
    assert calls[0] == ["-n", "ml-training", "get", "job", "train-abc", "-o", "json"] and len(calls) == 2


def test_train_wait_reports_the_quality_gate(kube, capsys):
    (kube / "job.json").write_text(json.dumps(_job("Failed")))
    (kube / "pods.json").write_text(
        json.dumps({"items": [{"status": {"containerStatuses": [{"state": {"terminated": {"exitCode": 3}}}]}}]})
    )
    assert train_wait.wait("train-abc", "ml-training", timeout_s=30, poll_s=0) == 3
    assert "quality gate failed" in capsys.readouterr().err


def test_train_wait_other_failure(kube):
    (kube / "job.json").write_text(json.dumps(_job("Failed")))
    (kube / "pods.json").write_text(
        json.dumps({"items": [{"status": {"containerStatuses": [{"state": {"terminated": {"exitCode": 137}}}]}}]})
    )
    assert train_wait.wait("train-abc", "ml-training", timeout_s=30, poll_s=0) == 1


def test_train_wait_waits_for_every_trained_model(kube, capsys):
    """`make train-wait` hands over the stack's models output: every model that trains here is
    waited for (a received or LLM model has no trainingJob), and the worst outcome is the exit code."""
    (kube / "job.json").write_text(json.dumps(_job("Complete")))
    models = {"mnist": {"trainingJob": "train-mnist-1"}, "diabetes": {"trainingJob": "train-diabetes-2"}, "chat": {"trainingJob": None}}
    assert train_wait.main(["--models", json.dumps(models), "--poll", "0"]) == 0
    calls = [json.loads(x) for x in (kube / "calls.jsonl").read_text().splitlines()]
    assert list(dict.fromkeys(c[4] for c in calls if c[2:4] == ["get", "job"])) == ["train-mnist-1", "train-diabetes-2"]
    (kube / "job.json").write_text(json.dumps(_job("Failed")))
    (kube / "pods.json").write_text(
        json.dumps({"items": [{"status": {"containerStatuses": [{"state": {"terminated": {"exitCode": 3}}}]}}]})
    )
    assert train_wait.main(["--models", json.dumps(models), "--poll", "0"]) == 3
    assert train_wait.main(["--models", json.dumps({"chat": {"trainingJob": None}})]) == 0  # nothing trains here
    assert train_wait.main(["--models", "[1, 2]"]) == 2


class Forge:
    """A tiny GitHub/GitLab API: stores comments, records requests; the token is the account ME."""

    ME = "preview-bot"

    def __init__(self):
        self.comments: list[dict] = []
        self.requests: list[tuple[str, str, dict]] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def _reply(self, doc):
                body = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                outer.requests.append(("GET", self.path, dict(self.headers)))
                self._reply({"login": Forge.ME, "username": Forge.ME} if self.path == "/user" else outer.comments)

            def _write(self):
                doc = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.command, self.path, dict(self.headers)))
                if self.command == "POST":
                    me = {"login": Forge.ME, "username": Forge.ME}
                    outer.comments.append({"id": len(outer.comments) + 1, "body": doc["body"], "user": me, "author": me})
                else:
                    cid = int(self.path.rsplit("/", 1)[1])
                    next(c for c in outer.comments if c["id"] == cid)["body"] = doc["body"]
                self._reply({})

            do_POST = do_PATCH = do_PUT = _write

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.mark.parametrize("forge", ["github", "gitlab"])
def test_pr_comment_created_then_updated(forge):
    api = Forge()
    try:
        assert pr_comment.post("first", forge, "org/repo", 12, "tok", api=api.url) == "created"
        assert pr_comment.post("second", forge, "org/repo", 12, "tok", api=api.url) == "updated"
    finally:
        api.server.shutdown()
    assert len(api.comments) == 1 and api.comments[0]["body"].endswith("second")
    method, path, headers = api.requests[-1]
    if forge == "github":
        assert (method, path) == ("PATCH", "/repos/org/repo/issues/comments/1") and headers["Authorization"] == "Bearer tok"
    else:
        assert (method, path) == ("PUT", "/projects/org%2Frepo/merge_requests/12/notes/1") and headers["Private-Token"] == "tok"


@pytest.mark.parametrize("forge", ["github", "gitlab"])
def test_pr_comment_never_edits_a_marked_comment_someone_else_wrote(forge):
    """Found by the attack review: a comment that quotes the marker made the preview PATCH a stranger's
    comment (403 there, so no preview at all)."""
    api = Forge()
    mallory = {"login": "mallory", "username": "mallory"}
    api.comments.append({"id": 1, "body": f"{pr_comment.MARKER}\nlooks fine to me", "user": mallory, "author": mallory})
    try:
        assert pr_comment.post("preview", forge, "org/repo", 12, "tok", api=api.url) == "created"
    finally:
        api.server.shutdown()
    assert api.comments[0]["body"].endswith("looks fine to me") and api.comments[1]["body"].endswith("preview")
    assert [m for m, *_ in api.requests].count("POST") == 1 and not {"PATCH", "PUT"} & {m for m, *_ in api.requests}


def test_pr_comment_refuses_a_preview_that_is_a_symlink(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("GITHUB_TOKEN", "tok")
    (tmp_path / "secret").write_text("token=s3cr3t")
    (tmp_path / "preview.md").symlink_to(tmp_path / "secret")
    assert pr_comment.main([str(tmp_path / "preview.md"), "--repo", "o/r", "--pr", "1"]) == 2
    assert "symbolic link" in capsys.readouterr().err


def test_pr_comment_needs_a_token(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    (tmp_path / "p.md").write_text("x")
    assert pr_comment.main([str(tmp_path / "p.md"), "--repo", "o/r", "--pr", "1"]) == 2
    assert "set GITHUB_TOKEN" in capsys.readouterr().err


def test_notify_posts_to_the_webhook(monkeypatch):
    api = Forge()
    monkeypatch.setenv("NOTIFY_WEBHOOK_URL", api.url + "/hook")
    try:
        assert notify.main(["failure", "build", "#7"]) == 0
    finally:
        api.server.shutdown()
    assert api.comments == [] and api.requests[0][:2] == ("POST", "/hook")


def test_notify_without_webhook_only_prints(monkeypatch, capsys):
    monkeypatch.delenv("NOTIFY_WEBHOOK_URL", raising=False)
    assert notify.main(["success", "ok"]) == 0
    assert "pipeline success: ok" in capsys.readouterr().out


def test_jenkins_pipeline_env_names_the_github_repo_and_prod_approvers():
    from components.services.jenkins import env_jcasc

    doc = yaml.safe_load(env_jcasc("https://github.com/acme/mlplatform.git", ["release-managers", "alice"]))
    assert doc["jenkins"]["globalNodeProperties"][0]["envVars"]["env"] == [
        {"key": "GITHUB_REPOSITORY", "value": "acme/mlplatform"},
        {"key": "MLPLATFORM_PROD_APPROVERS", "value": "release-managers,alice"},
    ]
    assert Path(ROOT / "ci" / "reap.Jenkinsfile").exists()
