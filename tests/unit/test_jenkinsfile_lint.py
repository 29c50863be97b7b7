"""The Jenkinsfiles parse and pass npm-groovy-lint (CodeNarc on the machine's Java), offline."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow
LINT = ROOT / "tools" / "actionlint" / "node_modules" / ".bin" / "npm-groovy-lint"


def lint(*files):
    if not LINT.exists() or shutil.which("java") is None:
        pytest.fail("npm-groovy-lint or java missing: run `make lint` (installs tools/actionlint/node_modules) on a machine with a JRE")
    # --noserver: no CodeNarc server is left running after the test
    return subprocess.run(
        [str(LINT), "--noserver", "--failon", "error", "--output", "txt", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


def test_jenkinsfiles_have_no_errors():
    files = [ROOT / "Jenkinsfile", *sorted((ROOT / "ci").glob("*.Jenkinsfile"))]
    assert len(files) >= 3  # the PR pipeline, the deploy pipeline, the reaper
    proc = lint(*files)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_lint_catches_a_broken_jenkinsfile(tmp_path):
    bad = tmp_path / "Jenkinsfile"
    bad.write_text((ROOT / "Jenkinsfile").read_text().replace("stages {", "stages {{", 1))
    assert lint(bad).returncode != 0
