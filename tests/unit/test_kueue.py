"""Kueue objects rendered from the GPU pools: quotas, flavors, priorities, chart values - each object
validated against Kueue v0.19.2's CRD schema (unknown fields rejected)."""

from __future__ import annotations

import pytest
import yaml

from components.config import GpuPool
from components.lib import helm
from components.services import kueue
from tests.conftest import unavailable
from tools import manifests, reference

SPOT = GpuPool(name="gpu-spot", instanceTypes=["g5.xlarge", "g6.xlarge"], capacityType="SPOT", max=3)
BIG = GpuPool(name="gpu-big", instanceTypes=["g5.12xlarge"], capacityType="ON_DEMAND", max=2)


def need_reference():
    if reference.reference_dir() is None:
        unavailable("../shared/reference not present (user checkout): Kueue CRD schemas and chart values")


def objects(pools):
    quota = kueue.QueueQuota()
    return [
        *kueue.resource_flavors(pools),
        *kueue.priority_classes(),
        kueue.cluster_queue(kueue.CLUSTER_QUEUE, "ml-training", pools, quota),
        kueue.local_queue("ml-training", kueue.CLUSTER_QUEUE),
    ]


@pytest.mark.parametrize("pools", [[], [SPOT], [SPOT, BIG]], ids=["cpu-only", "one-pool", "two-pools"])
def test_every_object_valid_against_the_kueue_crds(pools):
    need_reference()
    for obj in objects(pools):
        assert obj["kind"] in manifests.CRD_KINDS
        assert reference.crd_schema(obj["kind"]) is not None, f"no reference schema for {obj['kind']}"
        assert manifests.validate(obj, "1.33") == [], (obj["kind"], obj["metadata"]["name"])


def test_schema_check_is_strict():
    need_reference()
    bad = kueue.cluster_queue(kueue.CLUSTER_QUEUE, "ml-training", [SPOT], kueue.QueueQuota())
    bad["spec"]["preemption"]["withinClusterQueu"] = "Never"  # a typo must not pass
    assert manifests.validate(bad, "1.33") != []


def test_gpu_quota_is_the_pools_capacity():
    # 3 nodes x 1 GPU, 2 nodes x 4 GPUs
    assert kueue.gpu_quotas([SPOT, BIG]) == {"gpu-gpu-spot": 3, "gpu-gpu-big": 8}


def test_a_configured_lower_quota_fills_the_preferred_pool_first():
    assert kueue.gpu_quotas([SPOT, BIG], quota=5) == {"gpu-gpu-spot": 3, "gpu-gpu-big": 2}
    assert kueue.gpu_quotas([SPOT, BIG], quota=2) == {"gpu-gpu-spot": 2, "gpu-gpu-big": 0}


def test_llm_serving_gpus_are_kept_out_of_the_training_quota():
    # an LLM that may hold 2 GPUs of the spot pool at its max replicas
    assert kueue.gpu_quotas([SPOT, BIG], reserved={"gpu-spot": 2}) == {"gpu-gpu-spot": 1, "gpu-gpu-big": 8}
    assert kueue.gpu_quotas([SPOT], reserved={"gpu-spot": 5}) == {"gpu-gpu-spot": 0}


def test_cluster_queue_covers_what_training_pods_request():
    cq = kueue.cluster_queue(kueue.CLUSTER_QUEUE, "ml-training", [SPOT, BIG], kueue.QueueQuota(cpu="16", memory="64Gi"))
    groups = cq["spec"]["resourceGroups"]
    # A pod's cpu, memory and GPUs are all admitted against a quota (an uncovered resource is inadmissible).
    assert [g["coveredResources"] for g in groups] == [["cpu", "memory"], ["nvidia.com/gpu"]]
    assert [f["name"] for f in groups[1]["flavors"]] == ["gpu-gpu-spot", "gpu-gpu-big"]  # preference order = config order
    assert cq["spec"]["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "ml-training"}}
    assert cq["spec"]["preemption"]["withinClusterQueue"] == "LowerPriority"


def test_cpu_only_stack_queues_cpu_runs():
    (group,) = kueue.cluster_queue(kueue.CLUSTER_QUEUE, "ml-training", [], kueue.QueueQuota())["spec"]["resourceGroups"]
    assert group["coveredResources"] == ["cpu", "memory"]


def test_flavors_place_runs_on_their_pool_and_require_the_gpu_toleration():
    by_name = {f["metadata"]["name"]: f for f in kueue.resource_flavors([SPOT, BIG])}
    spot, big = by_name["gpu-gpu-spot"]["spec"], by_name["gpu-gpu-big"]["spec"]
    assert spot["nodeLabels"] == {"mlplatform.io/gpu-pool": "gpu-spot", "eks.amazonaws.com/capacityType": "SPOT"}
    assert big["nodeLabels"]["eks.amazonaws.com/capacityType"] == "ON_DEMAND"
    assert spot["nodeTaints"] == [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}]
    assert by_name["default"]["spec"] == {}


def test_scheduled_retraining_yields_to_pipeline_runs():
    value = {p["metadata"]["name"]: p["value"] for p in kueue.priority_classes()}
    assert value["pipeline"] > value["experiment"] > value["scheduled"]


def test_job_labels_name_the_queue_and_a_known_priority():
    assert kueue.job_labels("scheduled") == {"kueue.x-k8s.io/queue-name": "training", "kueue.x-k8s.io/priority-class": "scheduled"}
    with pytest.raises(ValueError, match="unknown priority class"):
        kueue.job_labels("urgent")


def test_chart_values_exist_in_the_chart():
    need_reference()
    version = helm.CHARTS["kueue"][0]
    defaults = reference.chart_values("kueue", version)
    assert defaults is not None, f"no reference values for kueue {version}"
    assert reference.unknown_value_keys(kueue.chart_values(monitoring=True), defaults, "kueue") == []


def test_manager_config_keys_are_kueues():
    """Our Configuration replaces the chart's default: every top-level key we set must be one the
    chart's default configuration sets or documents (commented out), so a typo cannot pass."""
    need_reference()
    default_text = reference.chart_values("kueue", helm.CHARTS["kueue"][0])["managerConfig"]["controllerManagerConfigYaml"]
    ours = yaml.safe_load(kueue.chart_values(monitoring=False)["managerConfig"]["controllerManagerConfigYaml"])
    documented = {line.strip().lstrip("#").split(":")[0] for line in default_text.splitlines() if not line.startswith(" ")}
    assert set(ours) <= documented, set(ours) - documented
    default = yaml.safe_load(default_text)
    assert ours["apiVersion"] == default["apiVersion"] and ours["kind"] == default["kind"]
    # Every framework we enable is one the default lists.
    assert set(ours["integrations"]["frameworks"]) <= set(default["integrations"]["frameworks"])
    assert "batch/job" in ours["integrations"]["frameworks"]
    # waitForPodsReady's keys as the default documents them (its commented-out block).
    lines = default_text.splitlines()
    start = lines.index("#waitForPodsReady:")
    block = []
    for line in lines[start + 1 :]:
        if not line.startswith("#  "):
            break
        block.append(line.removeprefix("#").strip().split(":")[0])
    assert set(ours["waitForPodsReady"]) <= set(block), set(ours["waitForPodsReady"]) - set(block)
    assert set(ours["waitForPodsReady"]["requeuingStrategy"]) <= set(block)


def test_release_image_pinned_to_the_chart_app_version():
    need_reference()
    chart = yaml.safe_load((reference.reference_dir() / "charts" / "kueue" / helm.CHARTS["kueue"][0] / "Chart.yaml").read_text())
    image = kueue.chart_values(monitoring=False)["controllerManager"]["manager"]["image"]
    assert image["tag"] == chart["appVersion"] == kueue.VERSION
