"""The vLLM canary's pure parts (components/lib/llm_canary.py): the one-pod strategy on every pool size,
Argo's own replica arithmetic deciding it (rollout_specs.effective_weight, a port of
approximateWeightedCanaryStableReplicaCounts), conditions that are inconclusive without data, the
golden Job and its objects, and the config rules that refuse a canary that cannot run."""

from __future__ import annotations

import copy
import json
import subprocess
from types import SimpleNamespace

import pytest
import yaml

from components.config import CanaryConfig
from components.config.validation import problems
from components.lib import llm_canary, rollout_specs, vllm_buckets
from tests import promql
from tests.conftest import ROOT
from tools import manifests, reference

PROD = yaml.safe_load((ROOT / "stacks" / "Pulumi.prod.yaml").read_text())["config"]


@pytest.mark.parametrize("short", [False, True], ids=["room-for-one-more", "pool-at-its-max"])
def test_exactly_one_canary_pod_for_every_replica_count(short):
    """Surge: one canary pod beside every stable one. Short pool: the same below the maximum (the pool
    still has a GPU), and at the maximum one stable pod gives its GPU to the canary."""
    for top in range(1 if not short else 2, llm_canary.MAX_SHORT_REPLICAS + 1):
        held = top if short else top + 1
        assert llm_canary.gpu_short(top, held) is short
        for r in range(1, top + 1):
            expected = (1, r - 1) if short and r == top else (1, r)
            assert llm_canary.canary_split(r, top, short) == expected, (top, r)


def test_the_short_pool_bound_is_where_whole_percents_run_out():
    """MAX_SHORT_REPLICAS is the first maximum for which no whole-percent weight gives one canary pod at
    the maximum and a surge below it (brute force over every weight, Argo's arithmetic)."""

    def works(top: int) -> bool:
        return any(
            all(rollout_specs.effective_weight(r, w, max_surge=1)[:2] == ((1, r - 1) if r == top else (1, r)) for r in range(1, top + 1))
            for w in range(1, 100)
        )

    assert all(works(m) for m in range(2, llm_canary.MAX_SHORT_REPLICAS + 1))
    assert not works(llm_canary.MAX_SHORT_REPLICAS + 1)


def test_a_short_pool_needs_two_to_eleven_replicas():
    assert "no stable replica would be left" in llm_canary.short_pool_problem(1, True)
    assert "whole-percent" in llm_canary.short_pool_problem(12, True)
    assert llm_canary.short_pool_problem(1, False) is None
    with pytest.raises(ValueError):
        llm_canary.one_pod_weight(1, True)


def test_strategy_is_a_basic_canary_analysed_from_the_pause():
    """The background analysis starts at the pause, i.e. once the setWeight step made the canary pod
    available: started with the rollout it would measure a canary still provisioning its GPU node."""
    s = llm_canary.strategy("chat", "llm-chat", CanaryConfig(stepSeconds=120), max_replicas=2, pool_replicas=2)["canary"]
    assert "trafficRouting" not in s and (s["maxSurge"], s["maxUnavailable"]) == (1, 1)
    assert s["steps"] == [{"setWeight": 50}, {"pause": {"duration": "120s"}}]
    assert s["analysis"]["startingStep"] == 1
    assert s["analysis"]["templates"] == [{"templateName": "llm-chat-canary"}]
    assert {a["valueFrom"]["podTemplateHashValue"] for a in s["analysis"]["args"]} == {"Latest", "Stable"}
    roomy = llm_canary.strategy("chat", "llm-chat", CanaryConfig(), max_replicas=1, pool_replicas=2)["canary"]
    assert roomy["maxUnavailable"] == 0 and roomy["steps"][0] == {"setWeight": 50}


def test_progress_deadline_covers_the_startup_probe():
    """Argo's default progressDeadlineSeconds (600 s) would degrade a canary still loading its weights."""
    pod = {"spec": {"containers": [{"name": "vllm", "startupProbe": {"periodSeconds": 10, "failureThreshold": 180}}, {"name": "x"}]}}
    assert llm_canary.progress_deadline_seconds(pod) == 1800 + llm_canary.STARTUP_MARGIN_S == 2400


def test_the_strategy_is_valid_against_the_rollout_crd():
    if reference.reference_dir() is None:
        pytest.skip("../shared/reference not present: no Rollout schema")
    rollout = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": "llm-chat"},
        "spec": {
            "progressDeadlineSeconds": 2400,
            "selector": {"matchLabels": {"app": "x"}},
            "template": {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "x", "image": "x"}]}},
            "strategy": llm_canary.strategy("chat", "llm-chat", CanaryConfig(), 2, 2),
        },
    }
    assert manifests.validate(rollout, "1.33") == []
    rollout["spec"]["strategy"]["canary"]["analysis"]["startingStepX"] = 1
    assert manifests.validate(rollout, "1.33") != []


def template(golden=True, **canary):
    g = llm_canary.Golden("serving:1", "llm-chat-golden", "http://s:8000", "http://c:8000", "chat", 5) if golden else None
    return llm_canary.analysis_template("chat", "ml-serving", "llm-chat", CanaryConfig(**canary), golden=g)


def test_template_valid_against_the_crd():
    if reference.reference_dir() is None:
        pytest.skip("../shared/reference not present: no AnalysisTemplate schema")
    assert manifests.validate(template(), "1.33") == []


def test_every_judging_condition_is_inconclusive_without_data():
    """The rule of the TF canary: an empty or NaN result is neither success nor failure."""
    from tests.monitoring import argo_analysis as argo

    for m in template()["spec"]["metrics"]:
        if "prometheus" not in m["provider"]:
            continue
        for empty in ([], [float("nan")]):
            assert argo.measurement_phase(m, empty) == "Inconclusive", m["name"]
        assert argo.measurement_phase(m, [1000.0]) == "Failed", m["name"]
        assert argo.measurement_phase(m, [0.0]) == "Successful", m["name"]


def test_queries_name_only_metrics_vllm_0_33_exposes():
    if reference.reference_dir() is None:
        pytest.skip("../shared/reference not present: no vLLM metric list")
    names = set((reference.reference_dir() / "vllm" / "0.33.0" / "metrics.txt").read_text().split())
    for query in (
        llm_canary.p95_ratio_query("vllm:time_to_first_token_seconds", "60s", 0.05),
        llm_canary.p95_ratio_query("vllm:inter_token_latency_seconds", "60s", 0.005),
    ):
        for part in query.split("rate(")[1:]:
            family = part.split("{")[0].removesuffix("_bucket")
            assert family in names, family


def test_golden_metric_waits_for_every_prompt_and_the_job_only_where_it_runs():
    metrics = {m["name"]: m for m in template()["spec"]["metrics"]}
    assert (
        "count(" in metrics["golden"]["provider"]["prometheus"]["query"] and ">= 5" in metrics["golden"]["provider"]["prometheus"]["query"]
    )
    assert list(metrics)[0] == llm_canary.METRIC_GOLDEN_JOB  # the traffic starts with the run
    # no Job (warmupRate 0): no golden metric either (it would never have data, a pause by construction)
    quiet = {m["name"] for m in template(warmupRate=0, minRequests=1)["spec"]["metrics"]}
    assert quiet == {"error-ratio", "client-error-ratio", "ttft-p95", "itl-p95"}
    assert {m["name"] for m in template(golden=False)["spec"]["metrics"]} == {"error-ratio", "client-error-ratio", "ttft-p95", "itl-p95"}


def test_golden_job_is_restricted_and_takes_the_hashes_from_the_run():
    job = {m["name"]: m for m in template()["spec"]["metrics"]}[llm_canary.METRIC_GOLDEN_JOB]["provider"]["job"]
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["automountServiceAccountToken"] is False and pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True and c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["args"][c["args"].index("--canary-hash") + 1] == "{{args.canary-hash}}"
    assert c["args"][c["args"].index("--stable-hash") + 1] == "{{args.stable-hash}}"
    assert job["spec"]["template"]["metadata"]["labels"] == llm_canary.golden_labels("chat")


def test_config_map_renders_the_same_bytes_for_the_same_set():
    prompts = yaml.safe_load((ROOT / "models" / "chat" / "golden.yaml").read_text())["prompts"]
    a = llm_canary.golden_config_map_data("print(1)", prompts)
    b = llm_canary.golden_config_map_data("print(1)", copy.deepcopy(prompts))
    assert a == b and json.loads(a["set.json"])["prompts"][0]["id"] == "capital"


# ---------------------------------------------------------------- config rules


def prod_problems(mutate) -> list[tuple[str, str]]:
    raw = copy.deepcopy(PROD)
    mutate(raw)
    return problems({k.removeprefix("mlplatform:"): v for k, v in raw.items()})[1]


def test_prod_chat_canary_fits_its_pool_as_committed():
    assert prod_problems(lambda raw: None) == []


def test_a_one_replica_model_on_a_full_pool_is_refused_in_one_line():
    def one_gpu_pool(raw):
        raw["mlplatform:gpuPools"][1]["max"] = 1
        raw["mlplatform:models"]["chat"]["llm"].update(maxReplicas=1, minReplicas=1, replicas=1)

    found = prod_problems(one_gpu_pool)
    assert [k for k, m in found if "no stable replica would be left" in m and "holds 1" in m] == ["models.chat.llm.maxReplicas"], found


def test_a_pause_shorter_than_the_analysis_needs_is_refused_in_one_line():
    """stepSeconds <= warm-up + window + (inconclusiveLimit + 1) x interval + margin: the pause could
    end with every metric still unmeasured and Argo would complete the rollout unjudged."""
    assert llm_canary.min_step_seconds(CanaryConfig()) == 50 // 2 + 120 + 3 * 60 + 30 < CanaryConfig().step_seconds  # 355

    def short_pause(raw):
        raw["mlplatform:models"]["chat"].setdefault("serving", {})["canary"] = {"stepSeconds": 300}

    found = prod_problems(short_pause)
    assert [k for k, m in found if "too short for the analysis" in m and "= 355" in m] == ["models.chat.serving.canary.stepSeconds"], found

    def longer_window(raw):
        raw["mlplatform:models"]["chat"].setdefault("serving", {})["canary"] = {"stepSeconds": 400, "windowSeconds": 240}

    assert [k for k, _ in prod_problems(longer_window)] == ["models.chat.serving.canary.stepSeconds"]


def test_a_vllm_model_without_a_golden_set_is_refused():
    def renamed(raw):
        models = raw["mlplatform:models"]
        models["nogolden"] = models.pop("chat")

    found = prod_problems(renamed)
    assert (
        "models.nogolden",
        "models/nogolden/golden.yaml missing: a vllm model's canary checks its golden prompts (docs/llm.md)",
    ) in found


def test_the_canary_settings_are_allowed_on_a_vllm_model():
    def tuned(raw):
        raw["mlplatform:models"]["chat"].setdefault("serving", {})["canary"] = {"maxTtftP95Ratio": 2, "maxGoldenFailureRatio": 0}

    assert prod_problems(tuned) == []


def test_the_first_window_waits_for_the_warm_up():
    """A window is judged only once each side had answered a fifth of minRequests before it (the
    offset counter), and the first measurement comes when the golden Job should have sent minRequests."""
    canary = CanaryConfig()  # minRequests 50, warmupRate 2/s, window 120 s
    assert llm_canary.warm_requests(canary) == 10 and llm_canary.initial_delay_seconds(canary) == 25 + 120
    assert llm_canary.initial_delay_seconds(CanaryConfig(warmupRate=0, minRequests=1)) == 120  # no Job: users' traffic
    for m in template()["spec"]["metrics"]:
        if m["name"] in (llm_canary.METRIC_ERRORS, llm_canary.METRIC_TTFT):
            q = m["provider"]["prometheus"]["query"]
            assert m["initialDelay"] == "145s"
            for arg in (llm_canary.ARG_CANARY, llm_canary.ARG_STABLE):
                assert f"({llm_canary.served_before_query(arg, '120s')} >= 10)" in q, q


def test_warmup_rate_is_per_side():
    """The golden Job sends ``warmupRate`` requests per second to each side for the canary's length."""
    canary = SimpleNamespace(**CanaryConfig(warmupRate=3).model_dump())
    job = llm_canary.golden_job("chat", canary, llm_canary.Golden("i", "cm", "http://s", "http://c", "chat", 5))
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--rate") + 1] == "3"
    assert int(args[args.index("--duration") + 1]) == rollout_specs.warmup_seconds(canary)


# ---------------------------------------------------------------- the rendered queries on promtool

_LABELS = 'namespace="ml-serving",service="llm-chat",rollouts_pod_template_hash="{h}"'
# the bounds every vLLM pod exposes (vllm_buckets), around tens of ms
ITL_BUCKETS = tuple(vllm_buckets.le(b) for b in vllm_buckets.BUCKETS["inter_token_latency"] if 0.01 <= b <= 0.1)
TTFT_BUCKETS = tuple(vllm_buckets.le(b) for b in vllm_buckets.BUCKETS["time_to_first_token"] if 0.04 <= b <= 0.5)
PROMPTS = ("a", "b", "c")


def _counter(per_step: float, steps: int = 40, start: int = 0) -> str:
    """A counter growing ``per_step`` per 15 s scrape, its series present from step ``start`` on."""
    return (f"_x{start} " if start else "") + f"0+{per_step:g}x{steps - start}"


def _histogram(name: str, side: str, edges: tuple[str, ...], seconds: float, per_step: int, start: int = 0) -> list[dict]:
    """``per_step`` observations of ``seconds`` each per scrape, as vLLM exposes them."""
    labels = _LABELS.format(h=side)

    def c(n: float) -> str:
        return _counter(n, start=start)

    out = [{"series": f'{name}_bucket{{{labels},le="{le}"}}', "values": c(per_step if seconds <= float(le) else 0)} for le in edges]
    out.append({"series": f'{name}_bucket{{{labels},le="+Inf"}}', "values": c(per_step)})
    out.append({"series": f"{name}_sum{{{labels}}}", "values": c(per_step * seconds)})
    out.append({"series": f"{name}_count{{{labels}}}", "values": c(per_step)})
    return out


def _vllm_side(side: str, itl: float, ttft: float, status: str = "2xx", golden: str = "pass", start: int = 0) -> list[dict]:
    """One side's series; ``start``: the scrape from which its pod exists (a freshly started canary)."""
    labels = _LABELS.format(h=side)
    served = status == "2xx"
    handler = f'http_requests_total{{{labels},handler="/v1/chat/completions",status="{status}"}}'
    series = [{"series": handler, "values": _counter(30, start=start)}]
    series += _histogram("vllm:inter_token_latency_seconds", side, ITL_BUCKETS, itl, 300 if served else 0, start)
    series += _histogram("vllm:time_to_first_token_seconds", side, TTFT_BUCKETS, ttft, 30 if served else 0, start)
    gold = 'mlplatform_llm_golden_answers_total{{namespace="ml-serving",model="chat",rollouts_pod_template_hash="{h}",prompt="{p}",result="{r}"}}'
    series += [
        {"series": gold.format(h=side, p=p, r=r), "values": _counter(1 if r == golden else 0, start=start)}
        for p in PROMPTS
        for r in ("pass", "fail", "error")
    ]
    return series


STABLE = _vllm_side("s", itl=0.024, ttft=0.095)
# metric -> 1 (above its bound: Failed), 0 (within: Successful), None (empty: Inconclusive), absent: not asserted
LLM_SCENARIOS = {
    # A canary clearly slower on both latencies (2x, across bucket edges): rejected on both.
    "2x slower": (
        _vllm_side("c", itl=0.05, ttft=0.2) + STABLE,
        {llm_canary.METRIC_ITL: 1, llm_canary.METRIC_TTFT: 1, llm_canary.METRIC_ERRORS: 0, llm_canary.METRIC_GOLDEN: 0},
    ),
    # The same speed: every judging metric passes.
    "same speed": (_vllm_side("c", itl=0.024, ttft=0.095) + STABLE, dict.fromkeys(llm_canary.JUDGING_METRICS, 0)),
    # Every completion and every golden prompt answered 400: rejected on the 4xx ratio and on golden.
    "4xx on everything": (
        _vllm_side("c", itl=0.024, ttft=0.095, status="4xx", golden="fail") + STABLE,
        {llm_canary.METRIC_CLIENT_ERRORS: 1, llm_canary.METRIC_ERRORS: 0, llm_canary.METRIC_GOLDEN: 1},
    ),
    "5xx on everything": (
        _vllm_side("c", itl=0.024, ttft=0.095, status="5xx", golden="fail") + STABLE,
        {llm_canary.METRIC_ERRORS: 1, llm_canary.METRIC_CLIENT_ERRORS: 0, llm_canary.METRIC_GOLDEN: 1},
    ),
    # The golden Job reached nothing: no answer is no verdict.
    "golden answers only errors": (_vllm_side("c", itl=0.024, ttft=0.095, golden="error") + STABLE, {llm_canary.METRIC_GOLDEN: None}),
    "no canary traffic": (STABLE, {m: None for m in llm_canary.JUDGING_METRICS}),
    # A canary whose pod started 1 min before the measurement (scrape 28 of 32): plenty of requests in
    # the 2 min window, 2x slower, but none served before the window - its cold start is not judged.
    "canary still warming up": (
        _vllm_side("c", itl=0.05, ttft=0.2, start=28) + STABLE,
        {m: None for m in (llm_canary.METRIC_ITL, llm_canary.METRIC_TTFT, llm_canary.METRIC_ERRORS, llm_canary.METRIC_CLIENT_ERRORS)},
    ),
}


def test_rendered_queries_on_promtool_judge_latencies_statuses_and_golden(tmp_path):
    """`promtool test rules` evaluates each rendered query (args substituted as the AnalysisRun does)
    over each scenario: a canary as fast passes, one 2x slower fails on both latencies, a 4xx canary
    fails, no data is empty (Inconclusive)."""

    from tests.monitoring import argo_analysis as argo

    canary = CanaryConfig(windowSeconds=120, minRequests=10)
    tpl = llm_canary.analysis_template(
        "chat", "ml-serving", "llm-chat", canary, golden=llm_canary.Golden("i", "m", "http://s", "http://c", "chat", len(PROMPTS))
    )
    args = argo.resolve_args(tpl, {llm_canary.ARG_CANARY: "c", llm_canary.ARG_STABLE: "s"})
    metrics = {m["name"]: m for m in tpl["spec"]["metrics"] if "prometheus" in m["provider"]}
    assert set(metrics) == set(llm_canary.JUDGING_METRICS)
    bound = {
        llm_canary.METRIC_ERRORS: canary.max_error_ratio_increase,
        llm_canary.METRIC_CLIENT_ERRORS: canary.max_client_error_ratio_increase,
        llm_canary.METRIC_TTFT: canary.max_ttft_p95_ratio,
        llm_canary.METRIC_ITL: canary.max_itl_p95_ratio,
        llm_canary.METRIC_GOLDEN: canary.max_golden_failure_ratio,
    }
    tests = []
    for name, (series, expected) in LLM_SCENARIOS.items():
        exprs = [
            {
                "expr": f"({argo.substitute(metrics[metric]['provider']['prometheus']['query'], args)}) > bool {bound[metric]:g}",
                "eval_time": "8m",
                "exp_samples": [] if value is None else [{"labels": "{}", "value": value}],
            }
            for metric, value in expected.items()
        ]
        tests.append({"name": name, "interval": "15s", "input_series": series, "promql_expr_test": exprs})
    proc = promql.run_tests(tmp_path, tests)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


def test_latencies_judge_only_on_a_pool_of_one_instance_type():
    """On a pool of several instance types the canary may run on another GPU than the stable pods:
    the latency ratios would compare GPUs, not versions, so they are not rendered there."""
    assert llm_canary.latency_judged(("g5.2xlarge",)) and llm_canary.latency_judged(())
    assert not llm_canary.latency_judged(("g5.xlarge", "g6.xlarge"))
    mixed = llm_canary.analysis_template("chat", "ml-serving", "llm-chat", CanaryConfig(), judge_latency=False)
    assert {m["name"] for m in mixed["spec"]["metrics"]} == {llm_canary.METRIC_ERRORS, llm_canary.METRIC_CLIENT_ERRORS}
    one = llm_canary.analysis_template("chat", "ml-serving", "llm-chat", CanaryConfig())
    assert {llm_canary.METRIC_TTFT, llm_canary.METRIC_ITL} <= {m["name"] for m in one["spec"]["metrics"]}


def _golden_ratio_reads(tmp_path, answers: dict[tuple[str, str], str], value: float) -> subprocess.CompletedProcess:
    """Whether golden_query over the canary's answers reads ``value`` at 2m, by the real engine
    (``promtool test rules``): ``answers`` (served, prompt) -> "pass"/"fail", one answer every 15 s."""
    query = llm_canary.golden_query(len(answers), "1m")
    for name, arg in {rollout_specs.ARG_NAMESPACE: "ml-serving", rollout_specs.ARG_MODEL: "chat", rollout_specs.ARG_CANARY: "c1"}.items():
        query = query.replace(f"{{{{args.{name}}}}}", arg)
    series = []
    for (served, prompt), result in answers.items():
        for r in ("pass", "fail"):
            labels = f'namespace="ml-serving",model="chat",served="{served}",rollouts_pod_template_hash="c1",prompt="{prompt}",result="{r}"'
            series.append({"series": f"{llm_canary.GOLDEN_METRIC}{{{labels}}}", "values": "0+1x8" if r == result else "0x8"})
    test = {"expr": "golden_ratio", "eval_time": "2m", "exp_samples": [{"labels": "golden_ratio", "value": value}]}
    return promql.run_tests(
        tmp_path, [{"interval": "15s", "input_series": series, "promql_expr_test": [test]}], [{"record": "golden_ratio", "expr": query}]
    )


def test_an_adapters_failed_golden_prompt_is_not_diluted_by_its_bases(tmp_path):
    """20 base prompts pass and the adapter's one prompt fails: the worst served model's share (1.0) is
    judged, not the share over all 21 (0.048, under the default maxGoldenFailureRatio 0.05)."""
    answers = {("chat", f"p{i}"): "pass" for i in range(20)}
    ok = _golden_ratio_reads(tmp_path / "base", answers, 0.0)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    answers[("support-bot", "support-bot_p0")] = "fail"
    assert 1.0 > CanaryConfig().max_golden_failure_ratio
    judged = _golden_ratio_reads(tmp_path / "adapter", answers, 1.0)
    assert judged.returncode == 0, judged.stdout + judged.stderr
    diluted = _golden_ratio_reads(tmp_path / "diluted", answers, 1 / 21)  # what the query read before
    assert diluted.returncode != 0
