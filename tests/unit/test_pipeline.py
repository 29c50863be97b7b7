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

from tests.conftest import ROOT
from tools import notify, pr_comment, train_wait

TARGETS = set(re.findall(r"^([a-z][a-z0-9-]*):", (ROOT / "Makefile").read_text(), re.M))
PIPELINES = [
    ROOT / "Jenkinsfile",
    ROOT / "ci" / "reap.Jenkinsfile",
    ROOT / ".gitlab-ci.yml",
    *sorted((ROOT / ".github" / "workflows").glob("*.yml")),
]


@pytest.mark.parametrize("path", PIPELINES, ids=[p.name for p in PIPELINES])
def test_pipelines_call_only_existing_make_targets(path):
    # commands only (sh '...' in Groovy, run: / script lines in YAML), not prose in comments
    used = set(re.findall(r"""(?:sh ['"]|run: |^\s*- )make ((?:[a-z][a-z0-9-]* ?)+)""", path.read_text(), re.M))
    targets = {t for group in used for t in group.split() if "=" not in t}
    assert targets, f"{path.name} calls no make target"
    assert targets <= TARGETS, f"{path.name}: unknown targets {targets - TARGETS}"


def test_gitlab_ci_parses_and_stops_environments():
    doc = yaml.safe_load((ROOT / ".gitlab-ci.yml").read_text())
    up, down = doc["ephemeral:up"], doc["ephemeral:destroy"]
    assert up["environment"]["on_stop"] == "ephemeral:destroy" and up["environment"]["auto_stop_in"]
    assert down["environment"]["action"] == "stop" and down["environment"]["name"] == up["environment"]["name"]
    assert set(doc["stages"]) >= {job["stage"] for name, job in doc.items() if isinstance(job, dict) and "stage" in job}


def test_jenkinsfile_stages_in_order():
    text = (ROOT / "Jenkinsfile").read_text()
    order = [m for m in re.findall(r"stage\('([^']+)'\)", text)]
    assert order == [
        "Set up",
        "Lint + tests",
        "Policy",
        "PR preview",
        "Ephemeral stack",
        "Deploy dev",
        "Train + quality gate",
        "Smoke dev",
        "Promote to staging",
        "Approve prod",
        "Deploy prod",
    ]
    assert 'post {\n        always { sh "make ephemeral-destroy' in text
    assert "input message:" in text


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


class Forge:
    """A tiny GitHub/GitLab API: stores comments, records requests."""

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
                self._reply(outer.comments)

            def _write(self):
                doc = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.command, self.path, dict(self.headers)))
                if self.command == "POST":
                    outer.comments.append({"id": len(outer.comments) + 1, "body": doc["body"]})
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


def test_jenkins_pipeline_env_names_the_github_repo():
    from components.jenkins import env_jcasc

    doc = yaml.safe_load(env_jcasc("https://github.com/acme/mlplatform.git"))
    assert doc["jenkins"]["globalNodeProperties"][0]["envVars"]["env"] == [{"key": "GITHUB_REPOSITORY", "value": "acme/mlplatform"}]
    assert Path(ROOT / "ci" / "reap.Jenkinsfile").exists()
