"""The vLLM runtime's pure parts: every `vllm serve` flag exists in the pinned vLLM, the rendered
objects are valid (Kubernetes strict, Gateway API and KEDA CRD schemas with unknown fields rejected),
GPU placement and /dev/shm, and the config rules that refuse GPU requests no node can satisfy."""

from __future__ import annotations

import pytest

from components.cluster.gpu_pools import GPU_TOLERATION, POOL_LABEL
from components.config import CanaryConfig, GpuPool
from components.config.llm import AwakeSchedule, LlmConfig, choose_pool, llm_rules
from components.models import llm_import, llm_service
from tests.conftest import unavailable
from tools import manifests, reference

SMALL = GpuPool(name="gpu-spot", instanceTypes=["g5.xlarge", "g6.xlarge"], max=2)
BIG = GpuPool(name="gpu-big", instanceTypes=["g5.12xlarge"], capacityType="ON_DEMAND", max=2)
# Every option on, so every flag the program can emit is rendered.
FULL = LlmConfig(
    source="Qwen/Qwen2.5-7B-Instruct",
    revision="main",
    servedModelName="qwen-7b",
    gpus=4,
    maxModelLen=8192,
    maxNumSeqs=64,
    quantization="awq",
    enablePrefixCaching=False,
    enforceEager=True,
)
STORE = LlmConfig(source="s3://mlplatform-dev-models/models/qwen/weights/")


def need_reference():
    if reference.reference_dir() is None:
        unavailable("../shared/reference not present (user checkout): vLLM flags, CRD schemas")


def serve_flags() -> set[str]:
    need_reference()
    path = reference.reference_dir() / "vllm" / llm_service.VLLM_VERSION / "serve-flags.txt"
    if not path.exists():
        unavailable(f"{path} missing: no flag list for vLLM {llm_service.VLLM_VERSION}")
    return set(path.read_text().split())


def args_of(llm: LlmConfig) -> list[str]:
    """What the pod runs: a registry version's folder, or raw s3:// weights streamed."""
    return llm_service.vllm_args("m", llm, None if llm.from_store else llm_import.model_path("m", "v1"))


@pytest.mark.parametrize("llm", [FULL, STORE, LlmConfig(source="org/m")], ids=["all-options", "from-store", "defaults"])
def test_every_flag_exists_in_the_pinned_vllm(llm):
    need_reference()
    used = set(llm_service.flags(args_of(llm)))
    assert used and used - serve_flags() == set()


def test_flag_check_catches_a_removed_flag():
    need_reference()
    assert "--swap-space" not in serve_flags()  # removed before 0.33.0: rendering it would crash vLLM


def test_image_pinned_to_the_checked_version():
    assert llm_service.VLLM_IMAGE.endswith(f":v{llm_service.VLLM_VERSION}")


def weights(llm=FULL, version=None):
    if llm.from_store:
        return None
    return llm_import.served_weights("m", llm, llm_service.weights_version(version), "s3://store", [], "llm-code-abc")


def sts(llm=FULL, pool="gpu-big", version=None):
    """The vLLM pods as a Deployment of the Rollout's pod template: Kubernetes' own strict schema
    checks the template (the Rollout itself is checked against its CRD below)."""
    spec = llm_service.rollout_spec("m", llm, CanaryConfig(), pool, 2, [], "gp3-zonal", version, weights(llm, version))
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "llm-m", "namespace": "ml-serving"},
        "spec": {k: v for k, v in spec.items() if k != "strategy"},
    }


def test_pod_template_valid_for_kubernetes_and_the_rollout_for_its_crd():
    for llm in (FULL, STORE):
        assert manifests.validate(sts(llm), "1.33") == []
    need_reference()
    spec = llm_service.rollout_spec("m", FULL, CanaryConfig(), "gpu-big", 2, [], "gp3-zonal", None, weights())
    ro = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "metadata": {"name": "llm-m", "namespace": "ml-serving"}, "spec": spec}
    assert manifests.validate(ro, "1.33") == []


def test_gpu_placement_and_limits():
    pod = sts()["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {POOL_LABEL: "gpu-big"} and GPU_TOLERATION in pod["tolerations"]
    c = pod["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 4 == c["resources"]["requests"]["nvidia.com/gpu"]
    args = c["args"]
    assert args[args.index("--tensor-parallel-size") + 1] == "4"


def test_shm_is_memory_backed_and_sized_per_gpu():
    pod = sts()["spec"]["template"]["spec"]
    (shm,) = [v for v in pod["volumes"] if v["name"] == "shm"]
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert {"name": "shm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]


def test_probes_on_health_with_a_startup_allowance():
    c = sts()["spec"]["template"]["spec"]["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    allowance = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
    assert allowance >= FULL.startup_seconds


def test_weights_cached_on_each_pods_own_ephemeral_volume():
    spec = sts()["spec"]
    (cache,) = [v for v in spec["template"]["spec"]["volumes"] if v["name"] == "cache"]
    claim = cache["ephemeral"]["volumeClaimTemplate"]
    assert claim["spec"]["storageClassName"] == "gp3-zonal" and claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    env = {e["name"]: e.get("value") for e in spec["template"]["spec"]["containers"][0]["env"]}
    assert env["HF_HOME"].startswith(llm_service.CACHE_DIR + "/")
    assert env["VLLM_CACHE_ROOT"].startswith(llm_service.CACHE_DIR + "/")


def test_runs_as_a_non_root_uid_that_needs_no_passwd_entry():
    pod = sts()["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == llm_service.UID
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["USER"] and env["HOME"] == "/tmp"  # getpass.getuser() and ~ without /etc/passwd


@pytest.mark.parametrize("version", [None, "20261207T000000Z-aaaaaaaaaaaa"], ids=["unpinned", "pinned"])
def test_a_serving_pod_never_reaches_hugging_face(version):
    """A Hugging Face model is served from its registry version: the ``weights`` init container
    fetches and verifies it (pinned, or the store's champion at start), vLLM reads that folder offline,
    with no token, no --revision, no streamer; the served version is on the pod template."""
    pod = sts(version=version)["spec"]["template"]
    (init,) = pod["spec"]["initContainers"]
    assert init["command"][init["command"].index("--version") + 1] == (version or "@champion")
    (c,) = pod["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert "HF_TOKEN" not in env and env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    assert len(c["env"]) == len(env), "a variable set twice"
    assert c["args"][0] == llm_import.model_path("m", version or "@champion")
    assert "--revision" not in c["args"] and "--load-format" not in c["args"]
    assert pod["metadata"]["annotations"]["mlplatform.io/model-version"] == (version or "champion")
    with pytest.raises(ValueError, match="never downloaded"):
        llm_service.vllm_args("m", FULL)


def test_no_service_links_and_no_vllm_named_service():
    # a Service called "vllm" would inject VLLM_PORT=tcp://..., which vLLM refuses (vllm/envs.py)
    assert sts()["spec"]["template"]["spec"]["enableServiceLinks"] is False
    assert llm_service.object_name("vllm") != "vllm"


def test_store_weights_streamed_from_s3():
    args = llm_service.vllm_args("m", STORE)
    assert args[0] == STORE.source and args[args.index("--load-format") + 1] == "runai_streamer"


def test_http_route_exposes_only_the_openai_routes():
    need_reference()
    spec = llm_service.http_route_spec("qwen", {"name": "mlplatform", "namespace": "gateway"})
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "llm-qwen"}, "spec": spec}
    assert manifests.validate(route, "1.33") == []
    paths = {r["matches"][0]["path"]["value"]: r["filters"][0]["urlRewrite"]["path"]["replacePrefixMatch"] for r in spec["rules"]}
    assert paths == {f"/llm/qwen{p}": p for p in llm_service.OPENAI_ROUTES}
    assert all(r["backendRefs"] == [{"name": "llm-qwen", "port": 8000}] for r in spec["rules"])


def test_scaled_object_targets_the_rollout_on_waiting_requests():
    need_reference()
    llm = LlmConfig(source="org/m", minReplicas=1, maxReplicas=3, waitingPerReplica=8, awake=AwakeSchedule())
    spec = llm_service.scaled_object_spec("qwen", llm, "ml-serving")
    so = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "llm-qwen"}, "spec": spec}
    assert manifests.validate(so, "1.33") == []
    assert spec["scaleTargetRef"] == {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": "llm-qwen"}
    prom = spec["triggers"][0]["metadata"]
    assert prom["threshold"] == "8" and 'model_name="qwen"' in prom["query"]
    assert spec["minReplicaCount"] == 0  # the awake window lets it sleep


def test_queue_metric_is_a_vllm_metric():
    need_reference()
    names = set((reference.reference_dir() / "vllm" / llm_service.VLLM_VERSION / "metrics.txt").read_text().split())
    assert "vllm:num_requests_waiting" in names


def errors(llm, pools=(SMALL,), has_gpus=True, env="dev"):
    return dict(llm_rules(llm, "models.qwen", list(pools), has_gpus, env))


def test_tensor_parallel_must_fit_one_node():
    assert "models.qwen.llm.gpus" in errors(LlmConfig(source="o/m", gpus=4))
    assert errors(LlmConfig(source="o/m", gpus=4), pools=(SMALL, BIG)) == {}
    assert choose_pool(LlmConfig(source="o/m", gpus=4), [SMALL, BIG]).name == "gpu-big"


def test_no_gpu_request_without_gpus():
    assert "models.qwen.runtime" in errors(LlmConfig(source="o/m"), pools=(), has_gpus=False)


def test_replicas_bounded_by_pool_capacity():
    msg = errors(LlmConfig(source="o/m", maxReplicas=3))["models.qwen.llm.maxReplicas"]
    assert "could never schedule" in msg


def test_prod_never_sleeps():
    bad = errors(LlmConfig(source="o/m", awake=AwakeSchedule(), minReplicas=0, replicas=0), env="prod")
    assert {"models.qwen.llm.awake", "models.qwen.llm.minReplicas"} <= set(bad)


def test_zero_replicas_need_a_schedule_to_wake_up():
    assert "never starts again" in errors(LlmConfig(source="o/m", minReplicas=0, replicas=0))["models.qwen.llm.minReplicas"]
    assert errors(LlmConfig(source="o/m", minReplicas=0, replicas=0, awake=AwakeSchedule())) == {}


def test_store_weights_under_the_models_prefix():
    # the model's IAM role reads only models/<name>/ of the store
    assert "models.qwen.llm.source" in errors(LlmConfig(source="s3://bucket/llm/qwen/"))
    assert "models.qwen.llm.source" not in errors(LlmConfig(source="s3://bucket/models/qwen/weights/"))
    assert "models.qwen.llm.source" in errors(LlmConfig(source="s3://bucket/models/qwen-v2/"))  # a look-alike prefix


def test_unknown_pool_named():
    assert "no GPU pool named 'gpu-x'" in errors(LlmConfig(source="o/m", pool="gpu-x"))["models.qwen.llm.pool"]


@pytest.mark.parametrize(
    "bad",
    [{"source": "not a model"}, {"source": "o/m", "awake": {"start": "8am"}}, {"source": "o/m", "awake": {"timezone": "Mars/Base"}}],
)
def test_bad_values_refused(bad):
    with pytest.raises(ValueError):
        LlmConfig.model_validate(bad)


def test_network_policy_admits_only_the_given_peers():
    proxies = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "envoy-gateway-system"}}}
    spec = llm_service.network_policy_spec("qwen", [proxies])
    port = [{"protocol": "TCP", "port": llm_service.PORT}]
    # the given peers, and the model's own golden Job (its canary analysis' traffic)
    golden = {
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/name": "llm-golden",
                "app.kubernetes.io/part-of": "mlplatform",
                "mlplatform.io/model": "qwen",
            }
        }
    }
    assert spec["ingress"] == [{"from": [proxies], "ports": port}, {"from": [golden], "ports": port}]
    assert llm_service.network_policy_spec("qwen")["ingress"] == [{"ports": [{"protocol": "TCP", "port": llm_service.PORT}]}]
    # Hugging Face / S3 over HTTPS, never the instance metadata service
    assert {"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]} in [
        p["ipBlock"] for r in spec["egress"] for p in r.get("to", []) if "ipBlock" in p
    ]


def _policy(kind: str, spec: dict) -> dict:
    return {
        "apiVersion": "gateway.envoyproxy.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "llm-qwen", "namespace": "ml-serving"},
        "spec": spec,
    }


def test_api_keys_and_cidrs_in_one_security_policy_valid_against_the_crd():
    """Issue 24 item 10: the LLM route's keys are checked by the gateway (apiKeyAuth), in the same
    SecurityPolicy as its CIDRs (Envoy Gateway applies one per route); the key never reaches vLLM."""
    from components.services import gateway

    need_reference()
    spec = gateway.security_policy_spec("llm-qwen", ["203.0.113.0/24"], "llm-qwen-api-keys")
    assert manifests.validate(_policy("SecurityPolicy", spec), "1.33") == []
    assert spec["authorization"]["rules"][0]["principal"] == {"clientCIDRs": ["203.0.113.0/24"]}
    auth = spec["apiKeyAuth"]
    assert auth["credentialRefs"] == [{"group": "", "kind": "Secret", "name": "llm-qwen-api-keys"}]
    assert auth["extractFrom"] == [{"headers": [gateway.API_KEY_HEADER]}]
    assert auth["sanitize"] is True and auth["forwardClientIDHeader"] == gateway.CLIENT_ID_HEADER
    # keys without CIDRs (an internal entry point): the policy has no authorization section
    keys_only = gateway.security_policy_spec("llm-qwen", [], "llm-qwen-api-keys")
    assert "authorization" not in keys_only and manifests.validate(_policy("SecurityPolicy", keys_only), "1.33") == []
    # the schema is strict: a misspelt field fails
    bad = {**spec, "apiKeyAuth": {**auth, "forwardClientIdHeader": "x"}}
    assert manifests.validate(_policy("SecurityPolicy", bad), "1.33")


def test_rate_limit_one_bucket_per_client_valid_against_the_crd():
    """A local rate limit per API client (the client name the key check forwards), or per route
    without keys; the pinned BackendTrafficPolicy schema (v1.9.0) accepts both."""
    from components.services import gateway

    need_reference()
    per_client = gateway.rate_limit_spec("llm-qwen", 30, "Minute", ["app", "batch"])
    assert manifests.validate(_policy("BackendTrafficPolicy", per_client), "1.33") == []
    rules = per_client["rateLimit"]["local"]["rules"]
    assert [r["clientSelectors"][0]["headers"] for r in rules] == [
        [{"name": gateway.CLIENT_ID_HEADER, "type": "Exact", "value": c}] for c in ("app", "batch")
    ]
    assert all(r["limit"] == {"requests": 30, "unit": "Minute"} for r in rules)
    route_wide = gateway.rate_limit_spec("llm-qwen", 60, "Minute")
    assert route_wide["rateLimit"]["local"]["rules"] == [{"limit": {"requests": 60, "unit": "Minute"}}]
    assert manifests.validate(_policy("BackendTrafficPolicy", route_wide), "1.33") == []
    bad = {**route_wide, "rateLimit": {"local": {"rules": [{"limit": {"requests": 60, "units": "Minute"}}]}}}
    assert manifests.validate(_policy("BackendTrafficPolicy", bad), "1.33")


def test_rate_limit_defaults_and_client_names():
    llm = LlmConfig(source="org/m")
    assert (llm.rate_limit.requests, llm.rate_limit.unit, llm.api_clients) == (60, "Minute", ["default"])
    for clients in (["Bad_Name"], ["a", "a"], []):
        with pytest.raises(ValueError):
            LlmConfig(source="org/m", apiClients=clients)
