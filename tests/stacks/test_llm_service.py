"""The vLLM runtime on every stack that configures an LLM model (dev and prod): GPU placement that a
pool can satisfy, probes, /dev/shm, the Hugging Face token only as a secret, KEDA scaling that may
sleep outside prod, the OpenAI routes on the stack's Gateway, and schema-valid objects."""

from __future__ import annotations

import pytest
import yaml

from components.cluster.gpu_pools import GPU_TOLERATION, POOL_LABEL
from components.config import GPU_COUNT
from components.models import llm_service
from policy import rules
from tests.conftest import ROOT, STACKS
from tools import manifests


def stack_doc(stack: str) -> dict:
    return yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]


def llm_models(stack: str) -> dict[str, dict]:
    models = stack_doc(stack).get("mlplatform:models") or {}
    return {name: m for name, m in models.items() if (m or {}).get("runtime") == "vllm"}


LLM_STACKS = [s for s in STACKS if llm_models(s)]


def test_dev_and_prod_serve_an_llm():
    assert {"dev", "prod"} <= set(LLM_STACKS)


@pytest.fixture(params=LLM_STACKS)
def llm_stack(request):
    return request.param


@pytest.fixture
def res(llm_stack, _results):
    from tools import mock_engine

    if llm_stack not in _results:
        _results[llm_stack] = mock_engine.run(llm_stack)
    return _results[llm_stack]


def objects(result, kind: str) -> dict[str, dict]:
    out = {}
    for r in result.k8s_objects():
        if r.raw.get("kind") == kind:
            out[r.raw["metadata"]["name"]] = r
    return out


def each_llm(llm_stack, result):
    sets = objects(result, "StatefulSet")
    for name, model in llm_models(llm_stack).items():
        obj = llm_service.object_name(name)
        assert obj in sets, f"{llm_stack}: no StatefulSet {obj} for model {name}"
        yield name, model["llm"], sets[obj]


def test_gpu_placement_on_a_pool_that_fits(llm_stack, res):
    pools = {p["name"]: p for p in stack_doc(llm_stack).get("mlplatform:gpuPools", [])}
    for _, llm, sts in each_llm(llm_stack, res):
        pod = sts.raw["spec"]["template"]["spec"]
        gpus = llm.get("gpus", 1)
        (c,) = pod["containers"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == gpus, sts.urn
        assert GPU_TOLERATION in pod["tolerations"], sts.urn
        pool = pools[pod["nodeSelector"][POOL_LABEL]]
        # no GPU request that no node of the pool could satisfy (tensor parallelism stays in one node)
        assert GPU_COUNT[pool["instanceTypes"][0]] >= gpus, (sts.urn, pool["name"])
        assert c["image"] == llm_service.VLLM_IMAGE
        assert c["args"][0] == llm["source"]


def test_probes_shm_and_weights_volume(llm_stack, res):
    for _, llm, sts in each_llm(llm_stack, res):
        spec = sts.raw["spec"]
        pod = spec["template"]["spec"]
        c = pod["containers"][0]
        assert {c[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")} == {"/health"}
        assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= llm.get("startupSeconds", 1800)
        (shm,) = [v for v in pod["volumes"] if v["name"] == "shm"]
        assert shm["emptyDir"]["medium"] == "Memory"
        assert spec["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == f"{llm.get('cacheGiB', 50)}Gi"
        assert spec["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Retain"
        assert "spec.replicas" in sts.ignore_changes  # KEDA owns replicas


def test_hf_token_only_as_a_secret(llm_stack):
    """With the token set (pulumi config set --secret mlplatform:hfToken ...), it reaches the pod only
    through a Secret, and never appears in clear in any resource."""
    from tools import mock_engine

    result = mock_engine.run(llm_stack, overrides={"mlplatform:hfToken": {"secure": "v1:x"}})
    secrets = objects(result, "Secret")
    for name, _, sts in each_llm(llm_stack, result):
        secret = secrets[f"{llm_service.object_name(name)}-hf-token"]
        assert secret.inputs["stringData"] == {"token": "[secret]"}, secret.urn
        env = {e["name"]: e for e in sts.raw["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == secret.raw["metadata"]["name"]
        assert "value" not in env["HF_TOKEN"]
    text = str([r.inputs for r in result.records])
    assert not any(s in text for s in result.sensitive)


def test_scaled_on_waiting_requests_and_sleeps_outside_prod(llm_stack, res):
    env = stack_doc(llm_stack)["mlplatform:environment"]
    scalers = objects(res, "ScaledObject")
    for name, llm, sts in each_llm(llm_stack, res):
        so = scalers[llm_service.object_name(name)]
        spec = so.raw["spec"]
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": sts.raw["metadata"]["name"]}
        assert "vllm:num_requests_waiting" in spec["triggers"][0]["metadata"]["query"]
        assert spec["maxReplicaCount"] == llm.get("maxReplicas", 2)
        if env != "prod":
            assert spec["minReplicaCount"] == 0 and [t["type"] for t in spec["triggers"]] == ["prometheus", "cron"], so.urn
        else:
            assert spec["minReplicaCount"] >= 1 and len(spec["triggers"]) == 1, so.urn


def test_keda_installed_before_scaled_objects(llm_stack, res):
    (keda,) = [r for r in res.of_type("kubernetes:helm.sh/v3:Release") if r.inputs["chart"].endswith("keda")]
    for so in objects(res, "ScaledObject").values():
        assert keda.urn in so.depends_on, f"{so.urn} does not wait for the chart that installs its CRD"


def test_openai_routes_on_the_stack_gateway(llm_stack, res):
    gateways = objects(res, "Gateway")
    routes = objects(res, "HTTPRoute")
    for name, _, _ in each_llm(llm_stack, res):
        route = routes[llm_service.object_name(name)].raw["spec"]
        (parent,) = route["parentRefs"]
        assert parent["name"] in gateways, f"route of {name} attached to {parent['name']}, not the stack's Gateway"
        prefixes = {r["matches"][0]["path"]["value"] for r in route["rules"]}
        assert prefixes == {f"/llm/{name}{p}" for p in llm_service.OPENAI_ROUTES}


def test_llm_objects_schema_valid(llm_stack, res):
    version = stack_doc(llm_stack)["mlplatform:kubernetesVersion"]
    for kind in ("StatefulSet", "ScaledObject", "HTTPRoute", "NetworkPolicy", "PodDisruptionBudget", "Service", "ServiceMonitor"):
        for r in objects(res, kind).values():
            if r.raw["metadata"]["name"].startswith("llm-"):
                assert manifests.validate(r.inputs, version) == [], r.urn


def test_policies_pass(llm_stack, res):
    resources = [rules.Res(type=r.type, props=r.inputs, urn=r.urn, parent=r.parent or "") for r in res.records]
    assert rules.gpu_serving_sleeps_off_prod(resources) == []
    for _, _, sts in each_llm(llm_stack, res):
        res_ = rules.Res(type=sts.type, props=sts.inputs, urn=sts.urn)
        for rule_name, (rule, _) in rules.RESOURCE_RULES.items():
            assert rule(res_) == [], (rule_name, sts.urn)


def test_hugging_face_models_get_no_cloud_credentials(llm_stack, res):
    accounts = objects(res, "ServiceAccount")
    for name, llm, sts in each_llm(llm_stack, res):
        if llm["source"].startswith("s3://"):
            continue
        sa = accounts[sts.raw["spec"]["template"]["spec"]["serviceAccountName"]]
        assert "eks.amazonaws.com/role-arn" not in (sa.raw["metadata"].get("annotations") or {}), sa.urn
        assert sa.raw["automountServiceAccountToken"] is False
        assert not [r for r in res.of_type("aws:iam/role:Role") if f"-{name}-llm" in r.name], f"an IAM role for {name}"
