"""The latency buckets every vLLM pod exposes (components/lib/vllm_buckets.py): the flag exists in the
pinned vLLM and every stack with an LLM renders it; every threshold the platform compares a vLLM
histogram with (alert rules, dashboards, canary queries, the promtool fixtures that stand for vLLM) is
one of its bounds; and the resolution the canary's p95 ratios get from them, computed with a port of
Prometheus' ``histogram_quantile`` that real Prometheus (promtool) confirms on the same inputs."""

from __future__ import annotations

import json
import math
import re
from statistics import NormalDist

import pytest
import yaml

from components.config import CanaryConfig, validate
from components.lib import llm_canary, vllm_buckets
from components.models import llm_import, llm_service
from monitoring import spec
from tests import promql
from tests.conftest import ROOT, unavailable
from tools import reference

# vLLM 0.32/0.33's defaults (vllm/v1/metrics/buckets.py), to show what the flag fixes
DEFAULT_TTFT = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
DENSE = {"time_to_first_token": (0.0125, 19.2), "inter_token_latency": (0.003125, 2.4), "request_latency": (0.25, 96.0)}


def llm_stacks() -> dict[str, list[str]]:
    """stack -> the rendered ``vllm serve`` args of each of its vLLM models."""
    out = {}
    for path in sorted((ROOT / "stacks").glob("Pulumi.*.yaml")):
        raw = {k.removeprefix("mlplatform:"): v for k, v in yaml.safe_load(path.read_text())["config"].items()}
        cfg = validate(raw, path.name)
        for name, model in cfg.models.items():
            if model.runtime == "vllm" and model.llm is not None:  # not a LoRA adapter entry (served by its base)
                path_ = None if model.llm.from_store else llm_import.model_path(name, "v1")
                out[f"{path.name}:{name}"] = llm_service.vllm_args(name, model.llm, path_)
    return out


def test_every_stack_with_an_llm_renders_the_buckets_and_the_pinned_vllm_has_the_flag():
    stacks = llm_stacks()
    assert stacks, "no stack serves an LLM: nothing checked"
    for where, args in stacks.items():
        assert vllm_buckets.rendered(args) == {f: list(b) for f, b in vllm_buckets.BUCKETS.items()}, where
    ref = reference.reference_dir()
    if ref is None:
        unavailable("../shared/reference not present: no vLLM flag list")
    flags = set((ref / "vllm" / llm_service.VLLM_VERSION / "serve-flags.txt").read_text().split())
    assert vllm_buckets.FLAG in flags
    names = set((ref / "vllm" / llm_service.VLLM_VERSION / "metrics.txt").read_text().split())
    assert set(vllm_buckets.FAMILY_OF) <= names


def test_the_flag_is_valid_for_vllms_validator():
    """What vllm/config/observability.py accepts: known families, non-empty, positive, finite,
    strictly increasing (it refuses to start otherwise)."""
    families = json.loads(vllm_buckets.flag_value())
    assert set(families) <= {"request_latency", "time_to_first_token", "inter_token_latency"}
    for name, bounds in families.items():
        assert bounds and all(math.isfinite(b) and b > 0 for b in bounds), name
        assert all(a < b for a, b in zip(bounds, bounds[1:], strict=False)), name


def _exprs() -> dict[str, str]:
    """Every PromQL expression the platform runs on vLLM histograms, by where it comes from."""
    out = {f"rule {r.get('alert') or r.get('record')}": r["expr"] for g in spec.rule_groups()["llm"] for r in g["rules"]}
    dash = json.loads((spec.DASHBOARDS_DIR / "llm.json").read_text())
    out |= {f"dashboard {p['title']} #{i}": t["expr"] for p in dash["panels"] for i, t in enumerate(p.get("targets", []))}
    canary = llm_canary.analysis_template("chat", "ml-serving", "llm-chat", CanaryConfig())
    out |= {f"canary {m['name']}": m["provider"]["prometheus"]["query"] for m in canary["spec"]["metrics"] if "prometheus" in m["provider"]}
    fixtures = yaml.safe_load((spec.HERE / "tests" / "llm.test.yaml").read_text())
    out |= {f"promtool fixture {s['series']}": s["series"] for t in fixtures["tests"] for s in t.get("input_series", [])}
    return out


@pytest.mark.parametrize("llm_stack", sorted(llm_stacks()))
def test_every_threshold_on_a_vllm_histogram_is_one_of_its_rendered_bounds(llm_stack):
    """``histogram_quantile(...) > T`` is exact only when T is a bound (then it is "more than 5% of
    requests slower than T"); an ``le="..."`` that is not a bound selects nothing at all."""
    families = vllm_buckets.rendered(llm_stacks()[llm_stack])
    checked = 0
    for where, expr in _exprs().items():
        for histogram, value in vllm_buckets.thresholds_in(expr):
            if value == "+Inf":
                continue
            bounds = vllm_buckets.bounds_of(histogram, families)
            assert float(value) in bounds[:-1], f"{where}: {histogram} {value} not one of {bounds[:-1]}"
            checked += 1
    assert checked >= 3  # the three latency alerts at least


def test_le_strings_match_what_vllm_and_prometheus_write():
    """prometheus_client writes repr(float) ("2.0"); Prometheus 3 normalizes to Go's shortest float
    with ".0" on whole numbers: the same for every bound (no exponent form)."""
    for bounds in vllm_buckets.BUCKETS.values():
        for b in bounds:
            s = vllm_buckets.le(b)
            assert "e" not in s and "." in s and float(s) == b, s


def test_the_extraction_finds_thresholds_and_le_matchers():
    expr = 'histogram_quantile(0.95, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket{a="b"}[5m]))) > 2'
    assert vllm_buckets.thresholds_in(expr) == [("vllm:time_to_first_token_seconds", "2")]
    assert vllm_buckets.thresholds_in('sum(rate(vllm:e2e_request_latency_seconds_bucket{le="5.0"}[5m]))') == [
        ("vllm:e2e_request_latency_seconds", "5.0")
    ]


# ---------------------------------------------------------------- the ladder's arithmetic


@pytest.mark.parametrize("family", sorted(DENSE))
def test_dense_part_steps_at_most_four_thirds_and_is_closed_under_doubling(family):
    lo, hi = DENSE[family]
    bounds = vllm_buckets.BUCKETS[family]
    dense = [b for b in bounds if lo <= b <= hi]
    assert dense[0] == lo and dense[-1] == hi
    assert max(b / a for a, b in zip(dense, dense[1:], strict=False)) <= 4 / 3 + 1e-9
    assert all(round(2 * b, 10) in bounds for b in dense if 2 * b <= hi)


def test_floors_and_slo_thresholds_sit_on_bounds():
    """The stable side's floors x the ratio thresholds (default 1.5, and 1.25, 2, 3) and the alert
    thresholds are bounds: against a fast stable side the canary is judged without interpolation."""
    ttft, itl = vllm_buckets.BUCKETS["time_to_first_token"], vllm_buckets.BUCKETS["inter_token_latency"]
    for ratio in (CanaryConfig().max_ttft_p95_ratio, 1.25, 2, 3):
        assert round(llm_canary.TTFT_FLOOR_S * ratio, 10) in ttft
    for ratio in (CanaryConfig().max_itl_p95_ratio, 1.25, 2, 3):
        assert round(llm_canary.ITL_FLOOR_S * ratio, 10) in itl
    assert 2.0 in ttft and 0.1 in itl and 5.0 in vllm_buckets.BUCKETS["request_latency"]


def histogram_quantile(q: float, bounds: tuple[float, ...], cumulative: list[float]) -> float:
    """Prometheus' bucketQuantile (promql/quantile.go) for cumulative counts at ``bounds`` + the +Inf
    count last; promtool checks this port below."""
    rank = q * cumulative[-1]
    b = next(i for i, c in enumerate(cumulative) if c >= rank)
    if b == len(bounds):
        return bounds[-1]
    start, below = (0.0, 0.0) if b == 0 else (bounds[b - 1], cumulative[b - 1])
    return start + (bounds[b] - start) * (rank - below) / (cumulative[b] - below)


def lognormal_counts(bounds: tuple[float, ...], median: float, sigma: float, n: int = 1_000_000) -> list[float]:
    cdf = NormalDist(math.log(median), sigma).cdf
    return [round(n * cdf(math.log(b))) for b in bounds] + [n]


def read_ratios(bounds: tuple[float, ...], factor: float) -> tuple[float, float]:
    """The least and largest p95 ratio ``histogram_quantile`` reads for a canary ``factor`` x slower in
    every request: log-normal latencies (sigma 0.05-0.4), p95s across 30 ms-8 s."""
    ratios = []
    for sigma in (0.05, 0.1, 0.2, 0.4):
        for i in range(200):
            median = 0.03 * (4 / 0.03) ** (i / 199)
            stable = histogram_quantile(0.95, bounds, lognormal_counts(bounds, median, sigma))
            ratios.append(histogram_quantile(0.95, bounds, lognormal_counts(bounds, median * factor, sigma)) / stable)
    return min(ratios), max(ratios)


def test_p95_ratios_resolve_1_5x_and_2x_on_the_rendered_buckets():
    """The documented resolution (vllm_buckets, llm_canary.p95_ratio_query, docs/llm.md): on the
    defaults a 2x slower canary can read 1.0 (passes a 1.5 threshold) and a 10% slower one 2.4
    (rejected); on the rendered buckets 2x reads exactly 2, 1.1x at most 1.31, 1.25x at most 1.5."""
    ttft = vllm_buckets.BUCKETS["time_to_first_token"]
    assert read_ratios(DEFAULT_TTFT, 2.0)[0] < 1.05 and read_ratios(DEFAULT_TTFT, 1.1)[1] > 2.3
    low, high = read_ratios(ttft, 2.0)
    assert low == pytest.approx(2.0, abs=1e-3) and high == pytest.approx(2.0, abs=1e-3)
    assert 1.25 < read_ratios(ttft, 1.5)[0] and read_ratios(ttft, 1.5)[1] < 1.66
    assert read_ratios(ttft, 1.25)[1] <= 1.5 + 1e-3 and read_ratios(ttft, 1.1)[1] < 1.32
    assert read_ratios(ttft, 1.0) == (1.0, 1.0)


def test_the_quantile_port_agrees_with_prometheus(tmp_path):
    bounds = vllm_buckets.BUCKETS["time_to_first_token"]
    cases = [(0.07, 0.05), (0.3, 0.2), (1.9, 0.1), (0.6, 0.4)]
    tests, exprs = [], []
    series = []
    for i, (median, sigma) in enumerate(cases):
        counts = lognormal_counts(bounds, median, sigma, n=100_000)
        les = [vllm_buckets.le(b) for b in bounds] + ["+Inf"]
        series += [{"series": f'h_bucket{{case="{i}",le="{le}"}}', "values": f"0+{c}x10"} for le, c in zip(les, counts, strict=True)]
        expected = histogram_quantile(0.95, bounds, counts)
        p95 = f'histogram_quantile(0.95, sum by (le) (rate(h_bucket{{case="{i}"}}[5m])))'
        exprs.append(
            {"expr": f"abs({p95} / {expected!r} - 1) < bool 1e-9", "eval_time": "5m", "exp_samples": [{"labels": "{}", "value": 1}]}
        )
    tests.append({"interval": "1m", "input_series": series, "promql_expr_test": exprs})
    proc = promql.run_tests(tmp_path, tests, interval="1m")
    assert proc.returncode == 0, re.sub(r"\s+", " ", proc.stdout[-4000:] + proc.stderr[-1000:])
