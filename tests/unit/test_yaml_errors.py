"""A YAML syntax error in a stack file (the most common mistake: indentation) is one line naming
file:line:column, not PyYAML's traceback (issue 27)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

GOOD = (ROOT / "stacks" / "Pulumi.dev.yaml").read_text()


def _synth(tmp_path, text):
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    (stacks / "Pulumi.broken.yaml").write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "tools.synth", "--stack", "broken", "--out", str(tmp_path / "out")],
        cwd=ROOT,
        env={**os.environ, "MLPLATFORM_STACKS_DIR": str(stacks)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _line_of(text, needle):
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize(
    "old, new, needle",
    [
        ("    kind: eks\n", "      kind: eks\n", "region: eu-west-1"),  # one key indented too far
        ("  mlplatform:kubernetesVersion:", "\tmlplatform:kubernetesVersion:", "mlplatform:kubernetesVersion"),  # a tab
    ],
)
def test_a_yaml_syntax_error_is_one_line_with_file_line_column(tmp_path, old, new, needle):
    assert old in GOOD
    broken = GOOD.replace(old, new, 1)
    proc = _synth(tmp_path, broken)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"stacks/Pulumi.broken.yaml:{_line_of(broken, needle)}:"), line
    assert "invalid YAML: " in line and "Traceback" not in proc.stderr
