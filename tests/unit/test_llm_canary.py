"""The vLLM canary's pure parts (components/lib/llm_canary.py): the one-pod strategy on every pool size,
Argo's own replica arithmetic deciding it (rollout_specs.effective_weight, a port of
approximateWeightedCanaryStableReplicaCounts), conditions that are inconclusive without data, the
golden Job and its objects, and the config rules that refuse a canary that cannot run."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import yaml

from components.config import CanaryConfig
from components.config.validation import problems
from components.lib import llm_canary, rollout_specs
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


def test_strategy_is_a_basic_canary_analysed_from_the_start():
    s = llm_canary.strategy("chat", "llm-chat", CanaryConfig(stepSeconds=120), max_replicas=2, pool_replicas=2)["canary"]
    assert "trafficRouting" not in s and (s["maxSurge"], s["maxUnavailable"]) == (1, 1)
    assert s["steps"] == [{"setWeight": 50}, {"pause": {"duration": "120s"}}]
    assert s["analysis"]["templates"] == [{"templateName": "llm-chat-canary"}]
    assert {a["valueFrom"]["podTemplateHashValue"] for a in s["analysis"]["args"]} == {"Latest", "Stable"}
    roomy = llm_canary.strategy("chat", "llm-chat", CanaryConfig(), max_replicas=1, pool_replicas=2)["canary"]
    assert roomy["maxUnavailable"] == 0 and roomy["steps"][0] == {"setWeight": 50}


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
        family = query.split("rate(")[1].split("_bucket")[0]
        assert family in names, family


def test_golden_metric_waits_for_every_prompt_and_the_job_only_where_it_runs():
    metrics = {m["name"]: m for m in template()["spec"]["metrics"]}
    assert (
        "count(" in metrics["golden"]["provider"]["prometheus"]["query"] and ">= 5" in metrics["golden"]["provider"]["prometheus"]["query"]
    )
    assert list(metrics)[0] == llm_canary.METRIC_GOLDEN_JOB  # the traffic starts with the run
    # no Job (warmupRate 0): no golden metric either (it would never have data, a pause by construction)
    quiet = {m["name"] for m in template(warmupRate=0, minRequests=1)["spec"]["metrics"]}
    assert quiet == {"error-ratio", "ttft-p95", "itl-p95"}
    assert {m["name"] for m in template(golden=False)["spec"]["metrics"]} == {"error-ratio", "ttft-p95", "itl-p95"}


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


def test_warmup_rate_is_per_side():
    """The golden Job sends ``warmupRate`` requests per second to each side for the canary's length."""
    canary = SimpleNamespace(**CanaryConfig(warmupRate=3).model_dump())
    job = llm_canary.golden_job("chat", canary, llm_canary.Golden("i", "cm", "http://s", "http://c", "chat", 5))
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--rate") + 1] == "3"
    assert int(args[args.index("--duration") + 1]) == rollout_specs.warmup_seconds(canary)
