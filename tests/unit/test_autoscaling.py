"""KEDA: ScaledObjects valid against KEDA v2.20.2's CRD schema (unknown fields rejected), trigger
metadata keys that KEDA's scalers really read, chart values that exist in the pinned chart, and the
replica formula the real-Prometheus test relies on."""

from __future__ import annotations

import pytest

from components.lib import helm, keda_specs
from tests.conftest import unavailable
from tools import manifests, reference

TARGET = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llm-qwen"}
NIGHTS = keda_specs.SleepSchedule(timezone="Europe/Paris", start="0 8 * * 1-5", end="0 20 * * 1-5", replicas=1)

# The metadata keys KEDA v2.20.2 parses (the `keda:"name=..."` struct tags of prometheusMetadata in
# pkg/scalers/prometheus_scaler.go and cronMetadata in pkg/scalers/cron_scaler.go, tag v2.20.2 =
# commit 68a5b5028f35b22d50597c69819ab32c4e92f21a). An unknown key is silently ignored by KEDA, so a
# typo here would be a trigger that does not do what it says.
PROMETHEUS_KEYS = {
    *("serverAddress", "query", "queryParameters", "threshold", "activationThreshold", "namespace"),
    *("customHeaders", "ignoreNullValues", "unsafeSsl", "awsRegion", "timeout", "identityOwner"),
}
CRON_KEYS = {"start", "end", "timezone", "desiredReplicas"}


def need_reference():
    if reference.reference_dir() is None:
        unavailable("../shared/reference not present (user checkout): KEDA CRD schema and chart values")


def obj(spec):
    return {
        "apiVersion": keda_specs.API_VERSION,
        "kind": "ScaledObject",
        "metadata": {"name": "x", "namespace": "ml-serving"},
        "spec": spec,
    }


@pytest.mark.parametrize("schedule", [None, NIGHTS], ids=["always-on", "sleeps"])
def test_scaled_object_valid_against_keda_crd(schedule):
    need_reference()
    spec = keda_specs.scaled_object_spec(TARGET, 1, 4, keda_specs.vllm_queue_query("ml-serving", "qwen"), 4, schedule)
    assert "ScaledObject" in manifests.CRD_KINDS and reference.crd_schema("ScaledObject") is not None
    assert manifests.validate(obj(spec), "1.33") == []


def test_schema_check_is_strict():
    need_reference()
    spec = keda_specs.scaled_object_spec(TARGET, 1, 4, "sum(x)", 4)
    spec["minReplicas"] = 1  # the HPA's spelling, not KEDA's
    assert manifests.validate(obj(spec), "1.33") != []


def test_trigger_metadata_keys_are_read_by_keda():
    spec = keda_specs.scaled_object_spec(TARGET, 1, 4, "sum(x)", 4, NIGHTS)
    prom, cron = spec["triggers"]
    assert prom["type"] == "prometheus" and set(prom["metadata"]) <= PROMETHEUS_KEYS
    assert cron["type"] == "cron" and set(cron["metadata"]) == CRON_KEYS
    # KEDA reads every metadata value as a string
    assert all(isinstance(v, str) for t in spec["triggers"] for v in t["metadata"].values())


def test_a_schedule_lets_the_model_sleep():
    awake = keda_specs.scaled_object_spec(TARGET, 1, 4, "sum(x)", 4)
    asleep = keda_specs.scaled_object_spec(TARGET, 1, 4, "sum(x)", 4, NIGHTS)
    assert awake["minReplicaCount"] == 1 and [t["type"] for t in awake["triggers"]] == ["prometheus"]
    assert asleep["minReplicaCount"] == 0 and asleep["triggers"][1]["metadata"]["desiredReplicas"] == "1"


def test_bounds_checked():
    with pytest.raises(ValueError, match="min <= max"):
        keda_specs.scaled_object_spec(TARGET, 5, 2, "sum(x)", 4)


def test_queries_select_one_model_and_return_one_series():
    q = keda_specs.vllm_queue_query("ml-serving", "qwen")
    assert q == 'sum(vllm:num_requests_waiting{namespace="ml-serving", model_name="qwen"})'
    q = keda_specs.tf_queue_query("ml-serving", "model-server", {keda_specs.target_label("mlplatform.io/model"): "mnist"})
    assert (
        q
        == 'sum(avg_over_time(mlplatform_serving_queue_depth{namespace="ml-serving", job="model-server", mlplatform_io_model="mnist"}[30s]))'
    )


@pytest.mark.parametrize(
    "value,want",
    [(0, 1), (3.9, 1), (4, 1), (4.1, 2), (12, 3), (100, 6)],
)
def test_desired_replicas_is_ceil_of_value_over_threshold_clamped(value, want):
    assert keda_specs.desired_replicas(value, 4, 1, 6) == want


def test_keda_chart_pinned_and_values_exist():
    need_reference()
    version, _ = helm.CHARTS["keda"]
    defaults = reference.chart_values("keda", version)
    assert defaults is not None, f"keda {version} not in the reference charts"
    assert reference.unknown_value_keys(keda_specs.keda_values(), defaults, "keda") == []
    assert reference.unknown_value_keys({"resources": {"operatr": {}}}, defaults, "keda") == ["resources.operatr"]


def test_keda_network_policy_opens_only_keda_ports():
    pol = keda_specs.keda_network_policy("monitoring")
    ports = {p["port"] for rule in pol["ingress"] for p in rule["ports"]}
    assert ports == {keda_specs.METRICS_API_PORT, keda_specs.WEBHOOK_PORT, keda_specs.OPERATOR_GRPC_PORT}
    assert (
        manifests.validate(
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "keda", "namespace": "keda"}, "spec": pol},
            "1.33",
        )
        == []
    )
