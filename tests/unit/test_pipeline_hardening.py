"""Supply chain and injection in the credentialed pipeline steps (issue 24, Low): every GitHub Action
pinned by commit, and the notification's untrusted text never parsed as code (by Groovy, the shell or Make)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import ROOT


def _uses():
    for path in sorted((ROOT / ".github" / "workflows").glob("*.yml")):
        for line in path.read_text().splitlines():
            m = re.match(r"\s*(?:-\s*)?uses:\s*(\S+)", line)
            if m:
                yield path.name, m.group(1)


def test_every_action_is_pinned_by_commit():
    found = list(_uses())
    external = [(f, u) for f, u in found if not u.startswith("./")]
    assert len(external) >= 10  # checkout, setup-python, credentials, artifacts in four workflows
    unpinned = [(f, u) for f, u in external if not re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", u)]
    assert unpinned == []
    # the workflows still parse (the pin's comment is a YAML comment)
    for path in (ROOT / ".github" / "workflows").glob("*.yml"):
        yaml.safe_load(path.read_text())


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_a_hostile_notification_message_runs_nothing(tmp_path):
    """Real Make, real shell: the message goes through the environment and comes out as the same text."""
    marker = tmp_path / "pwned"
    hostile = f"deploy failed: $(shell touch {marker}) `touch {marker}` $$(touch {marker}) ' \" ;touch {marker}"
    fake = tmp_path / "python"  # prints the arguments tools.notify would get
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    out = subprocess.run(
        ["make", "-s", "notify", f"PYTHON={fake}"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "NOTIFY_STATUS": "failure", "NOTIFY_MESSAGE": hostile},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert not marker.exists(), out
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-2:] == ["failure", hostile]


def test_the_deploy_pipeline_passes_the_message_as_data():
    text = (ROOT / "ci" / "deploy.Jenkinsfile").read_text()
    body = text[text.index("def notifyWebhook") :]
    assert 'withEnv(["NOTIFY_STATUS=${status}", "NOTIFY_MESSAGE=${message}"])' in body
    sh = re.findall(r"\bsh\s+(['\"])(.*?)\1", body)
    assert sh == [("'", "make notify")]  # single-quoted: Groovy interpolates nothing into the command
