"""bench/serving.py runs end to end: a baseline revision's server, ours with 1 and 2 processes (the
SavedModel and its ONNX export), batch-64, binary and ceiling runs under wrk, and one JSON result line
(slow: several server starts)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT, unavailable
from tests.serving.conftest import make_cnn_dir

pytestmark = pytest.mark.slow


def test_bench_compares_the_baseline_revision_ours_and_the_limit_in_one_run(tmp_path):
    if shutil.which("wrk") is None:
        unavailable("wrk not installed (python -m tools.deps --lane slow)")
    if not (ROOT / "data/mnist.npz").exists():
        unavailable("data/mnist.npz missing (make data)")
    model_dir = make_cnn_dir(tmp_path / "v1")
    (model_dir / "metadata.json").write_text(json.dumps({"version": "v1"}))
    # HEAD as the baseline: any clone has it (a shallow clone may lack the default's revision).
    # 4 s, not 1: a 64-image request under 64 connections waits ~2.8 s in the queue on 2 cores, so a 1 s
    # window after the warm-up can complete no request at all (batch64 read 0 req/s)
    cmd = [sys.executable, "-m", "bench.serving", "--model-dir", str(model_dir), "--duration", "4", "--rounds", "1"]
    cmd += ["--baseline", "HEAD", "--workers", "2"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["baseline"] == "HEAD" and result["baseline_rps"] > 0 and result["ours_rps"] > 0
    assert result["ratio_vs_baseline"] == round(result["ours_rps"] / result["baseline_rps"], 2)
    ours = {"ours, 1 process", "ours, 2 processes"}
    assert set(result["cpu_us_per_req"]) == {"baseline HEAD, 1 process", *ours, *(f"{n}, ONNX" for n in ours)}
    assert all(v > 0 for v in result["cpu_us_per_req"].values())
    assert result["limit_images_per_s"] > 0 and result["binary_rps"] > 0 and result["batch64_images_per_s"] > 0
    assert result["ceiling_rps"] > result["ours_1_process_rps"]  # /healthz costs less than a predict
    assert result["overload_non_2xx"] > 0  # 256 connections against a queue of 16: the excess is answered 429
    assert result["overload_healthz_p99_ms"] > 0
    assert lines[0].startswith("machine: ") and "load average" in lines[0]
    rounds = [line for line in lines if line.startswith("round 1 ")]
    assert len(rounds) == 5 and all(re.search(r"non-2xx 0\b", line) for line in rounds), out.stdout
    # ONNX against the SavedModel of the same CNN, in the same run: medians, ratios, its own limit
    onnx = result["onnx"]
    assert set(onnx["ratios_vs_savedmodel"]) == {"1 process", "2 processes"} and onnx["limit_images_per_s"] > 0
    assert all(r["rps"] > 0 and r["cpu_us_per_req"] > 0 for r in onnx["ratios_vs_savedmodel"].values())
    assert "max |TF - ONNX| on 64 images" in out.stdout
