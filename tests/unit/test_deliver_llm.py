"""ops/deliver.py for vLLM models (issue 25 item 3): the same registry, pin and canary path as a TF
model, on the model's own Rollout (``llm-<name>``), judged by the vLLM analysis' metrics; the golden
Job only brings data, so its failure is "not judged", never a rejection."""

from __future__ import annotations

import json

from components.lib import llm_canary
from ops import deliver
from tests.conftest import ROOT


def rollout(version: str, phase: str = "Progressing", abort: bool = False, message: str = "") -> dict:
    return {
        "metadata": {"generation": 2},
        "spec": {"template": {"metadata": {"annotations": {"mlplatform.io/model-version": version}}}},
        "status": {"observedGeneration": 2, "phase": phase, "abort": abort, "message": message, "stableRS": "a", "currentPodHash": "b"},
    }


def run(phase: str, metrics: dict[str, str], name: str = "llm-chat-b-1") -> dict:
    results = [{"name": n, "phase": p, "measurements": [{"phase": p, "value": "[0.4]"}]} for n, p in metrics.items()]
    spec = {"metrics": [{"name": n} for n in (*llm_canary.JUDGING_METRICS, llm_canary.METRIC_GOLDEN_JOB)]}
    return {"metadata": {"name": name}, "spec": spec, "status": {"phase": phase, "metricResults": results}}


def healthy(version: str) -> dict:
    ro = rollout(version, "Healthy")
    ro["status"]["stableRS"] = ro["status"]["currentPodHash"] = "b"
    return ro


ALL_PASSED = dict.fromkeys(llm_canary.JUDGING_METRICS, "Successful")


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
    outcome, why = deliver.judge(
        rollout("v2", "Paused"), run("Inconclusive", {"golden": "Inconclusive", llm_canary.METRIC_TTFT: "Successful"}), "v2"
    )
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


def test_a_completed_rollout_is_healthy_only_if_every_judging_metric_was_measured():
    """The pause can end before the analysis measured anything (stepSeconds too short, no data):
    Argo then completes the rollout, Healthy. Without a Successful measurement of every judging metric
    the run defines, that is not a verdict: never the champion."""
    measured = llm_canary.JUDGING_METRICS
    assert deliver.judge(healthy("v2"), run("Successful", ALL_PASSED), "v2", measured)[0] == deliver.HEALTHY
    never = dict.fromkeys(llm_canary.JUDGING_METRICS, "Inconclusive")
    outcome, why = deliver.judge(healthy("v2"), run("Running", never), "v2", measured)
    assert outcome == deliver.NOT_JUDGED and llm_canary.METRIC_GOLDEN in why and "never measured" in why
    one_missing = {**ALL_PASSED, llm_canary.METRIC_ITL: "Inconclusive"}
    outcome, why = deliver.judge(healthy("v2"), run("Running", one_missing), "v2", measured)
    assert outcome == deliver.NOT_JUDGED and llm_canary.METRIC_ITL in why and llm_canary.METRIC_TTFT not in why
    # a metric the template does not render (golden without its Job) is not required
    no_golden = run("Running", {**ALL_PASSED, llm_canary.METRIC_GOLDEN: "Inconclusive"})
    no_golden["spec"]["metrics"] = [m for m in no_golden["spec"]["metrics"] if m["name"] != llm_canary.METRIC_GOLDEN]
    assert deliver.judge(healthy("v2"), no_golden, "v2", measured)[0] == deliver.HEALTHY
    assert deliver.judge(healthy("v2"), None, "v2", measured)[0] == deliver.NOT_JUDGED
    # the emergency path (no analysis) requires nothing
    assert deliver.judge(healthy("v2"), None, "v2")[0] == deliver.HEALTHY


def test_wait_reads_the_last_run_again_once_the_rollout_no_longer_names_it():
    progressing = rollout("v2", "Paused")
    progressing["status"]["canary"] = {"currentBackgroundAnalysisRunStatus": {"name": "llm-chat-b-1"}}
    states = iter([progressing, healthy("v2")])
    runs = {"first": run("Running", dict.fromkeys(llm_canary.JUDGING_METRICS, "Inconclusive")), "final": run("Successful", ALL_PASSED)}
    reads = []

    def sh(cmd):
        if cmd[4] == "rollout":
            return json.dumps(next(states))
        reads.append(cmd[5])
        return json.dumps(runs["first"] if len(reads) == 1 else runs["final"])

    outcome, _ = deliver.wait("chat", "v2", sh, timeout_s=60, poll_s=0, obj="llm-chat", measured=llm_canary.JUDGING_METRICS)
    assert outcome == deliver.HEALTHY and reads == ["llm-chat-b-1", "llm-chat-b-1"]
    states = iter([progressing, healthy("v2")])
    runs["final"] = runs["first"]
    reads.clear()
    outcome, why = deliver.wait("chat", "v2", sh, timeout_s=60, poll_s=0, obj="llm-chat", measured=llm_canary.JUDGING_METRICS)
    assert outcome == deliver.NOT_JUDGED and "never measured" in why


def test_no_canary_on_a_rollout_scaled_to_zero(capsys):
    """spec.replicas 0 (asleep outside its awake window): no canary pod, no stable side, nothing to
    measure. deliver says so, pins nothing and keeps the champion."""
    calls = []

    def sh(cmd):
        calls.append(cmd)
        return json.dumps({"spec": {"replicas": 0, "template": {"metadata": {}}}, "status": {}})

    code = deliver._canary("dev", "chat", "s3://store", "v2", "v1", sh, 60, 0, "llm-chat")
    assert code == deliver.NOT_JUDGED_EXIT
    assert all(c[0] == "kubectl" for c in calls), calls  # no `pulumi config set` / `pulumi up`
    assert "spec.replicas 0" in capsys.readouterr().err
