"""Policy gpu-serving-sleeps-off-prod: outside prod, a GPU model server must be able to scale to zero
(a KEDA ScaledObject with minReplicaCount 0 or an awake-window cron trigger)."""

from __future__ import annotations

from components.config import CanaryConfig
from components.config.llm import AwakeSchedule, LlmConfig
from components.models import llm_import, llm_service
from policy.rules import STACK_RULES, Res, gpu_serving_sleeps_off_prod


def namespace(env):
    return Res(
        "kubernetes:core/v1:Namespace",
        {"kind": "Namespace", "metadata": {"name": "ml-serving", "labels": {"mlplatform.io/environment": env}}},
        "urn:ns",
    )


def server(llm):
    # served from its registry version, as every vLLM pod is (components/models/llm_import.py)
    weights = llm_import.served_weights("qwen", llm, "@champion", "s3://store", [], "llm-fetch-code")
    spec = llm_service.rollout_spec("qwen", llm, CanaryConfig(), "gpu-spot", 2, weights=weights)
    props = {"kind": "Rollout", "metadata": {"name": "llm-qwen", "namespace": "ml-serving"}, "spec": spec}
    return Res("kubernetes:argoproj.io/v1alpha1:Rollout", props, "urn:ro")


def scaler(llm):
    props = {
        "kind": "ScaledObject",
        "metadata": {"name": "llm-qwen", "namespace": "ml-serving"},
        "spec": llm_service.scaled_object_spec("qwen", llm, "ml-serving"),
    }
    return Res("kubernetes:keda.sh/v1alpha1:ScaledObject", props, "urn:so")


ALWAYS_ON = LlmConfig(source="o/m", minReplicas=1, replicas=1)
SLEEPY = LlmConfig(source="o/m", awake=AwakeSchedule(timezone="Europe/Paris"), minReplicas=0, replicas=0)


def test_registered():
    assert STACK_RULES["gpu-serving-sleeps-off-prod"][0] is gpu_serving_sleeps_off_prod


def test_dev_gpu_server_always_on_is_refused():
    (violation,) = gpu_serving_sleeps_off_prod([namespace("dev"), server(ALWAYS_ON), scaler(ALWAYS_ON)])
    assert violation == (
        "urn:ro",
        "GPU serving Rollout 'llm-qwen' outside prod keeps 1 replicas day and night: set minReplicas 0 or an awake schedule",
    )


def test_dev_gpu_server_without_scaler_is_refused():
    (violation,) = gpu_serving_sleeps_off_prod([namespace("dev"), server(SLEEPY)])
    assert "has no KEDA ScaledObject" in violation[1]


def test_awake_schedule_passes():
    assert gpu_serving_sleeps_off_prod([namespace("dev"), server(SLEEPY), scaler(SLEEPY)]) == []


def test_min_zero_without_cron_passes():
    so = scaler(ALWAYS_ON)
    so.props["spec"]["minReplicaCount"] = 0
    assert gpu_serving_sleeps_off_prod([namespace("staging"), server(ALWAYS_ON), so]) == []
    del so.props["spec"]["minReplicaCount"]  # KEDA's default is 0
    assert gpu_serving_sleeps_off_prod([namespace("staging"), server(ALWAYS_ON), so]) == []


def test_prod_may_stay_awake():
    assert gpu_serving_sleeps_off_prod([namespace("prod"), server(ALWAYS_ON), scaler(ALWAYS_ON)]) == []


def test_cpu_servers_are_not_concerned():
    props = {
        "kind": "Deployment",
        "metadata": {"name": "model-server", "namespace": "ml-serving"},
        "spec": {"template": {"spec": {"containers": [{"name": "s", "resources": {"limits": {"cpu": "2"}}}]}}},
    }
    assert gpu_serving_sleeps_off_prod([namespace("dev"), Res("kubernetes:apps/v1:Deployment", props, "urn:d")]) == []


def test_scaler_must_target_the_same_object():
    so = scaler(SLEEPY)
    so.props["spec"]["scaleTargetRef"] = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llm-qwen"}
    assert gpu_serving_sleeps_off_prod([namespace("dev"), server(SLEEPY), so]) != []
