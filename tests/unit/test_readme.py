"""The README as a front door (issue 27): a first prediction within 40 lines, every command it shows is
one that exists, and every relative link (README and docs/) reaches a file."""

from __future__ import annotations

import re

from click.testing import CliRunner

from mlp import cli as mlp_cli
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_a_first_prediction_within_40_lines():
    lines = README.splitlines()
    first = next(i for i, line in enumerate(lines, 1) if line.startswith("curl ") and ":predict" in line)
    assert first <= 40, f"the first prediction is on line {first}"
    payload = re.search(r"-d @(\S+)", lines[first - 1]).group(1)
    assert (ROOT / payload).is_file(), payload
    for word in ("floats in [0, 1]", "/healthz", "/readyz", "--epochs 1"):
        assert word in README, word


def test_every_mlp_command_shown_exists():
    shown = set(re.findall(r"\bmlp ([a-z][a-z-]+)", README))
    known = set(mlp_cli.cli.commands)
    assert shown and shown <= known, sorted(shown - known)
    # these hand --help to their module (and may re-execute into .venv-ml): tests/unit/test_cli.py checks them
    delegating = {"train", "serve", "models", "deliver", "smoke", "local-up", "ephemeral"}
    for command in sorted(shown - delegating):
        assert CliRunner().invoke(mlp_cli.cli, [command, "--help"]).exit_code == 0, command


def test_every_make_target_shown_exists():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", makefile, re.MULTILINE))
    shown = {t for t in re.findall(r"`make ([a-z][a-z0-9-]*)", README)}
    assert shown and shown <= targets, sorted(shown - targets)


def test_relative_links_reach_files():
    broken = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "CONTRIBUTING.md"]:
        for target in re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert broken == []


def test_preview_diff_names_a_base_ref_it_cannot_check_out(tmp_path):
    """`mlp preview-diff` / `make preview-diff` with a ref that does not exist: one line, exit 2."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "tools.preview_diff", "--stack", "local", "--base-ref", "no-such-ref-4f1c"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "preview-diff: cannot check out no-such-ref-4f1c (fetch it first, or pass --base-ref)"


def test_license_contributing_changelog_and_ignored_outputs():
    """LICENSE is Apache-2.0; CONTRIBUTING and CHANGELOG exist; the default local store (./artifacts) is
    ignored by git; a test run's kubeconfigs of fake stacks go to a temporary folder, not build/."""
    import os
    import subprocess

    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0, January 2004" in (ROOT / "LICENSE").read_text()
    assert (ROOT / "CONTRIBUTING.md").is_file() and (ROOT / "CHANGELOG.md").read_text().startswith("# Changelog")
    ignored = subprocess.run(["git", "check-ignore", "-q", "artifacts/models/mnist/LATEST"], cwd=ROOT, check=False)
    assert ignored.returncode == 0, "artifacts/ is not ignored"
    kubeconfigs = os.environ.get("KUBECONFIG_DIR", "")
    assert kubeconfigs and not kubeconfigs.startswith(str(ROOT)), kubeconfigs
