"""ops/deliver.py for vLLM models (issue 25 item 3): the same registry, pin and canary path as a TF
model, on the model's own Rollout (``llm-<name>``), judged by the vLLM analysis' metrics; the golden
Job only brings data, so its failure is "not judged", never a rejection."""

from __future__ import annotations

from components.lib import llm_canary
from ops import deliver
from tests.conftest import ROOT


def rollout(version: str, phase: str = "Progressing", abort: bool = False, message: str = "") -> dict:
    return {
        "metadata": {"generation": 2},
        "spec": {"template": {"metadata": {"annotations": {"mlplatform.io/model-version": version}}}},
        "status": {"observedGeneration": 2, "phase": phase, "abort": abort, "message": message, "stableRS": "a", "currentPodHash": "b"},
    }


def run(phase: str, metrics: dict[str, str]) -> dict:
    results = [{"name": n, "phase": p, "measurements": [{"phase": p, "value": "[0.4]"}]} for n, p in metrics.items()]
    return {"status": {"phase": phase, "metricResults": results}}


def test_every_model_of_the_stack_is_delivered_each_on_its_own_rollout():
    assert deliver.runtimes("prod", ROOT / "stacks")["chat"] == "vllm"
    assert "chat" in deliver.delivered_models("prod", ROOT / "stacks") and "chat" not in deliver.tf_models("prod", ROOT / "stacks")
    assert deliver.rollout_name("chat", "vllm") == "llm-chat" and deliver.rollout_name("mnist") == "model-server-mnist"


def test_a_failed_golden_or_latency_metric_rejects_the_version():
    for metric in llm_canary.JUDGING_METRICS:
        outcome, why = deliver.judge(
            rollout("v2", "Degraded", abort=True), run("Failed", {metric: "Failed", "golden-traffic": "Successful"}), "v2"
        )
        assert outcome == deliver.FAILED and metric in why, (metric, why)


def test_a_golden_job_that_could_not_run_is_not_a_verdict():
    outcome, why = deliver.judge(
        rollout("v2", "Degraded", abort=True), run("Failed", {"golden-traffic": "Failed", "golden": "Successful"}), "v2"
    )
    assert outcome == deliver.NOT_JUDGED and "not a verdict" in why


def test_too_few_golden_answers_pause_as_not_judged():
    outcome, why = deliver.judge(rollout("v2", "Paused"), run("Inconclusive", {"golden": "Inconclusive", "ttft-p95": "Successful"}), "v2")
    assert outcome == deliver.NOT_JUDGED and "inconclusive" in why


def test_the_pin_kubectl_and_promotion_name_the_llm_rollout():
    calls = []

    def sh(cmd):
        calls.append(cmd)
        return '{"status": {}, "spec": {"template": {"metadata": {}}}}'

    deliver.promote_full("chat", sh, deliver.rollout_name("chat", "vllm"))
    deliver.rollout_state("chat", sh, "llm-chat")
    assert [c[5] for c in calls] == ["llm-chat", "llm-chat"]


def test_an_llm_version_is_promoted_only_if_it_is_what_the_stack_pins(tmp_path):
    """prod pins chat's source and commit: a staging version imported at another commit is refused
    before a byte is copied (a RegistryError: deliver exits 1, a refused copy); the pinned one passes."""
    import json

    import pytest
    import yaml

    from llm import importer
    from training import registry

    stacks = ROOT / "stacks"
    chat = yaml.safe_load((stacks / "Pulumi.prod.yaml").read_text())["config"]["mlplatform:models"]["chat"]["llm"]
    store = f"file://{tmp_path / 'staging-store'}"
    for version, commit in (("v-pinned", chat["revision"]), ("v-other", "0" * 40)):
        folder = tmp_path / version
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        (folder / importer.META).write_text(json.dumps({"source": chat["source"], "revision": commit, "commit": commit}))
        registry.publish(folder, store, "chat", version, reason="imported (test)", required=importer.REQUIRED)
    deliver._check_llm_pin("prod", "chat", store, "v-pinned", stacks)
    with pytest.raises(registry.RegistryError, match="the stack pins"):
        deliver._check_llm_pin("prod", "chat", store, "v-other", stacks)
    deliver._check_llm_pin("prod", "mnist", store, "anything", stacks)  # a TF model: nothing to check
