"""PromQL evaluated by the real Prometheus engine: ``promtool test rules`` over input series, the one
way every test here checks a rendered query, rule or panel without a running server."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not installed: apt-get install prometheus (.ci/run does)")
    return path


def run_tests(tmp_path: Path, tests: list[dict], rules: list[dict] | None = None, interval: str = "15s") -> subprocess.CompletedProcess:
    """``promtool test rules`` on ``tests`` (each: interval, input_series, promql_expr_test), with
    ``rules`` (recording/alerting rules of one group) loaded; the completed process (0: every expected
    sample matched)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": rules}] if rules else []}))
    doc = {"rule_files": ["rules.yaml"], "evaluation_interval": interval, "tests": tests}
    (tmp_path / "t.test.yaml").write_text(yaml.safe_dump(doc, width=100000))
    return subprocess.run([promtool(), "test", "rules", "t.test.yaml"], cwd=tmp_path, capture_output=True, text=True)
