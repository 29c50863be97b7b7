"""ModelService on every stack, for every model of its catalogue: safe rollouts, reachable only
through the entry point, metrics on their own port, autoscaling, isolation."""

from __future__ import annotations

import json

import pytest
import yaml

from components.config import ServingConfig, serving_processes
from components.lib import rollout_specs
from components.models.model_service import (
    API_KEYS_FILE,
    DRAIN_SECONDS,
    GRACEFUL_SHUTDOWN_SECONDS,
    METRICS_PORT,
    METRICS_PORT_NAME,
    PORT,
    PORT_NAME,
    labels,
    object_name,
)
from components.services import gateway
from tests.conftest import ROOT
from tools import mock_engine


def cfg(stack):
    return yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]


def models(stack):
    """TF model name -> its serving config as written in the stack file (no defaults filled in);
    vllm models are tests/stacks/test_llm_service.py's."""
    entries = cfg(stack)["mlplatform:models"].items()
    return {name: entry.get("serving", {}) for name, entry in entries if entry.get("runtime", "tensorflow") == "tensorflow"}


def one(result, type_, name):
    (r,) = [r for r in result.of_type(type_) if r.raw["metadata"]["name"] == name]
    return r


def workload(result, name):
    """The model's pods: a Rollout where Argo Rollouts runs the canary (stacks with monitoring), else a Deployment."""
    (r,) = [
        r
        for r in result.of_type("kubernetes:argoproj.io/v1alpha1:Rollout") + result.of_type("kubernetes:apps/v1:Deployment")
        if r.raw["metadata"]["name"] == name
    ]
    return r


def container(result, model):
    return workload(result, object_name(model)).raw["spec"]["template"]["spec"]["containers"][0]


def test_rollout_never_drops_capacity(result, stack):
    for model in models(stack):
        dep = workload(result, object_name(model))
        spec = dep.raw["spec"]
        strategy = spec["strategy"]["canary"] if "canary" in spec["strategy"] else spec["strategy"]["rollingUpdate"]
        assert strategy["maxUnavailable"] == 0
        pod = spec["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] >= DRAIN_SECONDS + GRACEFUL_SHUTDOWN_SECONDS
        c = pod["containers"][0]
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["failureThreshold"] >= 3  # one slow answer must not drop a healthy replica
        assert "spec.replicas" in dep.ignore_changes  # the HPA owns replicas: no fight, no perpetual diff


def test_replicas_spread_over_zones_strictly_in_prod(result, stack):
    for model in models(stack):
        pod = workload(result, object_name(model)).raw["spec"]["template"]["spec"]
        spread = {t["topologyKey"]: t["whenUnsatisfiable"] for t in pod["topologySpreadConstraints"]}
        assert spread == {
            "topology.kubernetes.io/zone": "DoNotSchedule" if cfg(stack)["mlplatform:environment"] == "prod" else "ScheduleAnyway",
            "kubernetes.io/hostname": "ScheduleAnyway",
        }


def test_container_locked_down_and_sized(result, stack):
    for model, serving in models(stack).items():
        c = container(result, model)
        assert c["securityContext"]["readOnlyRootFilesystem"] is True and c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        # Configured resources, or the documented defaults: checked on every stack, not only where set.
        want = serving.get("resources") or ServingConfig().resources.model_dump()
        assert c["resources"] == want
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["SERVING_MAX_BATCH_SIZE"] == str(serving.get("maxBatchSize", 64))
        assert env["SERVING_MODEL_URI"].startswith("s3://")
        assert env["SERVING_MODEL_NAME"] == model


def test_api_only_through_the_entry_point(result, stack):
    """The model's Service is ClusterIP with the API port only; its metrics port has its own Service."""
    for model in models(stack):
        spec = one(result, "kubernetes:core/v1:Service", object_name(model)).raw["spec"]
        assert spec["type"] == "ClusterIP" and spec["selector"] == labels(model)
        assert spec["ports"] == [{"name": PORT_NAME, "port": PORT, "targetPort": PORT_NAME, "protocol": "TCP"}]
        metrics = one(result, "kubernetes:core/v1:Service", f"{object_name(model)}-metrics").raw["spec"]
        assert metrics["type"] == "ClusterIP"
        assert metrics["ports"] == [{"name": METRICS_PORT_NAME, "port": METRICS_PORT, "targetPort": METRICS_PORT_NAME, "protocol": "TCP"}]
        c = container(result, model)
        assert {p["name"]: p["containerPort"] for p in c["ports"]} == {PORT_NAME: PORT, METRICS_PORT_NAME: METRICS_PORT}
        assert {e["name"]: e.get("value") for e in c["env"]}["SERVING_METRICS_PORT"] == str(METRICS_PORT)


def test_service_monitor_scrapes_the_metrics_service_only(result, stack):
    services = result.of_type("kubernetes:core/v1:Service")
    for model in models(stack):
        sm = one(result, "kubernetes:monitoring.coreos.com/v1:ServiceMonitor", object_name(model)).raw["spec"]
        selected = [
            s.raw["metadata"]["name"]
            for s in services
            if sm["selector"]["matchLabels"].items() <= (s.raw["metadata"].get("labels") or {}).items()
        ]
        assert selected == [f"{object_name(model)}-metrics"]
        assert [e["port"] for e in sm["endpoints"]] == [METRICS_PORT_NAME]


def test_scaled_on_its_queue_and_pdb(result, stack):
    """KEDA scales each server on its own queue (components/lib/keda_specs.py), not on CPU; the query is
    evaluated for real in tests/monitoring/test_e2e_keda.py."""
    assert result.of_type("kubernetes:autoscaling/v2:HorizontalPodAutoscaler") == []
    for model, serving in models(stack).items():
        (so,) = [r for r in result.k8s_objects() if r.raw["kind"] == "ScaledObject" and r.raw["metadata"]["name"] == object_name(model)]
        spec = so.raw["spec"]
        assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (serving["minReplicas"], serving["maxReplicas"])
        # What runs the pods: the Rollout (components/services/argo_rollouts.py), never a Deployment beside it.
        assert spec["scaleTargetRef"] == {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": object_name(model)}
        (trigger,) = spec["triggers"]
        query = trigger["metadata"]["query"]
        assert "mlplatform_serving_queue_depth" in query and f'mlplatform_io_model="{model}"' in query, query
        # one full batch per server process (processes: auto = the CPU limit, rounded up)
        processes = serving_processes(ServingConfig.model_validate(serving))
        assert trigger["metadata"]["threshold"] == str(serving.get("maxBatchSize", 64) * processes)
        pdb = one(result, "kubernetes:policy/v1:PodDisruptionBudget", object_name(model)).raw["spec"]
        assert pdb == {"maxUnavailable": 1, "selector": {"matchLabels": labels(model)}}


def test_network_policy_admits_the_gateway_and_prometheus_only(result, stack):
    for model in models(stack):
        spec = one(result, "kubernetes:networking.k8s.io/v1:NetworkPolicy", object_name(model)).raw["spec"]
        assert spec["podSelector"] == {"matchLabels": labels(model)}
        by_port: dict[int, list] = {}
        for r in spec["ingress"]:
            by_port.setdefault(r["ports"][0]["port"], []).extend(r["from"])
        assert by_port.keys() == {PORT, METRICS_PORT}
        assert by_port[PORT] == [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "envoy-gateway-system"}},
                "podSelector": {"matchLabels": gateway.PROXY_LABELS},
            },
            # the canary's warm-up Job (every stack runs its models under Argo Rollouts)
            {"podSelector": {"matchLabels": rollout_specs.warmup_labels(model)}},
        ]
        assert by_port[METRICS_PORT] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]


def test_store_access_is_read_only(result, stack):
    for model in models(stack):
        sa = one(result, "kubernetes:core/v1:ServiceAccount", object_name(model))
        assert sa.raw["automountServiceAccountToken"] is False
        if cfg(stack)["mlplatform:cluster"]["kind"] != "eks":
            continue
        assert sa.raw["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
        policy = json.loads(result.one("aws:iam/rolePolicy:RolePolicy", f"mlplatform-{model}-serving-store-policy").inputs["policy"])
        actions = {a for s in policy["Statement"] for a in s["Action"]}
        # reading SSE-KMS objects needs kms:Decrypt on the store's own key (only through S3); nothing that writes
        assert actions == {"s3:ListBucket", "s3:GetObject", "kms:Decrypt"}, sa.urn
        (key,) = [s for s in policy["Statement"] if "kms:Decrypt" in s["Action"]]
        assert key["Resource"] != "*" and key["Condition"]["StringLike"]["kms:ViaService"] == "s3.*.amazonaws.com", sa.urn


def test_model_urls_exported(result, stack):
    entry = result.raw_outputs["entryPoint"]
    urls = {name: m["url"] for name, m in result.raw_outputs["models"].items() if m["runtime"] == "tensorflow"}
    assert urls.keys() == models(stack).keys()
    for model, url in urls.items():
        assert url == f"{entry}/v1/models/{model}"
    assert result.raw_outputs["serviceUrl"] == urls[next(iter(models(stack)))]


def _keyed_stack(stack: str, **serving):
    """``stack`` with its first TF model's ``serving.apiKey`` on (and ``serving`` overrides)."""
    catalogue = cfg(stack)["mlplatform:models"]
    name = next(iter(models(stack)))
    entry = dict(catalogue[name], serving=dict(catalogue[name].get("serving", {}), apiKey=True, **serving))
    return name, mock_engine.run(stack, overrides={"mlplatform:models": {**catalogue, name: entry}})


def _named(res, kind: str, name: str):
    (r,) = [r for r in res.k8s_objects() if r.raw.get("kind") == kind and r.raw["metadata"]["name"] == name]
    return r


def test_api_key_is_a_generated_secret_mounted_as_a_file(_results):
    """models.<name>.serving.apiKey: random keys, one per serving.apiClients entry, in a Secret (Pulumi
    secrets: never in clear in the synth), mounted read-only, its path in SERVING_API_KEYS_FILE (the
    server checks them too); the keys are the secret output ``apiKeys``, not inside ``models``."""
    _, res = _keyed_stack("dev", apiClients=["app", "batch"])
    secret = one(res, "kubernetes:core/v1:Secret", "model-server-mnist-api-keys")
    assert secret.inputs["stringData"] == {"keys": "[secret]"}
    keys = secret.raw["stringData"]["keys"].splitlines()
    assert len(keys) == 2 and all(len(k) == 40 and k in res.sensitive for k in keys)
    pod = workload(res, "model-server-mnist").raw["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert {e["name"]: e.get("value") for e in c["env"]}["SERVING_API_KEYS_FILE"] == API_KEYS_FILE
    mount = next(m for m in c["volumeMounts"] if m["name"] == "api-keys")
    assert mount["readOnly"] is True and API_KEYS_FILE.startswith(mount["mountPath"] + "/")
    assert next(v for v in pod["volumes"] if v["name"] == "api-keys")["secret"]["secretName"] == "model-server-mnist-api-keys"
    # The gateway's Secret holds the same keys, by client; the server's file has each once.
    gw = one(res, "kubernetes:core/v1:Secret", "model-server-mnist-client-keys")
    assert sorted(gw.raw["stringData"]) == ["app", "batch"] and sorted(gw.raw["stringData"].values()) == sorted(keys)
    assert "apiKey" not in res.raw_outputs["models"]["mnist"]
    assert sorted(res.raw_outputs["apiKeys"]["mnist"]) == ["app", "batch"]
    assert res.outputs["apiKeys"] == "[secret]" or set(res.outputs["apiKeys"]["mnist"].values()) == {"[secret]"}
    assert "mnist" not in (res.raw_outputs.get("llmApiKeys") or {})
    # ... and none of it where the key is off
    base = _results["dev"] if "dev" in _results else _results.setdefault("dev", mock_engine.run("dev"))  # the cached dev render
    assert not [r for r in base.of_type("kubernetes:core/v1:Secret") if r.raw["metadata"]["name"].startswith("model-server-")]
    assert not [
        r for r in base.k8s_objects() if r.raw.get("kind") == "BackendTrafficPolicy" and "model-server-" in r.raw["metadata"]["name"]
    ]


@pytest.mark.parametrize("keyed", ["dev", "prod"])
def test_tf_route_keys_and_rate_limit_at_the_gateway(keyed):
    """Issue 24 item 10, every runtime: with serving.apiKey the TF model's route (predict, status,
    metadata: one HTTPRoute, so one policy) admits only the generated keys at the entry point, in the
    same SecurityPolicy as its CIDRs, and each client is rate-limited apart (serving.rateLimit). The key
    stays on the request (sanitize off): the server checks it again. Valid against the pinned CRDs."""
    import re

    stack = keyed

    from components.models.model_service import gateway_keys_secret
    from tools import manifests

    name, res = _keyed_stack(stack, apiClients=["app", "batch"], rateLimit={"requests": 7, "unit": "Minute"})
    obj, version = object_name(name), cfg(stack)["mlplatform:kubernetesVersion"]
    policy, limit, route = (_named(res, k, obj) for k in ("SecurityPolicy", "BackendTrafficPolicy", "HTTPRoute"))
    for r in (policy, limit):
        assert manifests.validate(r.inputs, version) == [], r.urn
        assert r.raw["spec"]["targetRefs"] == [{"group": gateway.GATEWAY_API, "kind": "HTTPRoute", "name": obj}]
        assert r.raw["metadata"]["namespace"] == route.raw["metadata"]["namespace"]
    auth = policy.raw["spec"]["apiKeyAuth"]
    assert auth["credentialRefs"] == [{"group": "", "kind": "Secret", "name": gateway_keys_secret(name)}]
    assert auth["extractFrom"] == [{"headers": [gateway.API_KEY_HEADER]}] and auth["sanitize"] is False
    assert auth["forwardClientIDHeader"] == gateway.CLIENT_ID_HEADER
    cidrs = models(stack)[name].get("allowedCidrs")
    if cidrs:  # one policy per route: the CIDRs and the keys together
        assert policy.raw["spec"]["authorization"]["rules"][0]["principal"]["clientCIDRs"] == cidrs
    secret = _named(res, "Secret", gateway_keys_secret(name))
    assert secret.raw["metadata"]["namespace"] == policy.raw["metadata"]["namespace"]
    assert set(secret.inputs["stringData"].values()) == {"[secret]"} or secret.inputs["stringData"] == "[secret]"
    rules = limit.raw["spec"]["rateLimit"]["local"]["rules"]
    assert [r["clientSelectors"][0]["headers"][0]["value"] for r in rules] == ["app", "batch"]
    assert all(r["limit"] == {"requests": 7, "unit": "Minute"} for r in rules)
    # The status and metadata routes are this route's (so behind the same key), as predict is.
    matches = [m["path"] for rule in route.raw["spec"]["rules"] for m in rule["matches"]]
    for path in (f"/v1/models/{name}", f"/v1/models/{name}/metadata", f"/v1/models/{name}:predict", f"/v2/models/{name}"):
        assert any(re.fullmatch(m["value"], path) if m["type"] == "RegularExpression" else path.startswith(m["value"]) for m in matches), (
            path
        )


def test_tf_rate_limit_default_and_config_errors():
    """serving.rateLimit defaults to 100 requests/second per client; client names are the Secret's
    keys (DNS-label-like, unique)."""
    import pydantic

    sv = ServingConfig()
    assert (sv.rate_limit.requests, sv.rate_limit.unit, sv.api_clients) == (100, "Second", ["default"])
    for bad in ({"apiClients": ["Bad_Name"]}, {"apiClients": ["a", "a"]}, {"apiClients": []}, {"rateLimit": {"requests": 0}}):
        try:
            ServingConfig.model_validate(bad)
        except pydantic.ValidationError:
            continue
        raise AssertionError(f"accepted {bad}")


def test_alerts_select_every_model_deployment(result, stack):
    """The serving alerts find each model's Deployment by name (a rename must not silence them)."""
    import re

    rules = yaml.safe_load((ROOT / "monitoring" / "rules" / "serving.yaml").read_text())
    exprs = [r["expr"] for g in rules["spec"]["groups"] for r in g["rules"] if "deployment=" in r.get("expr", "")]
    assert exprs
    for expr in exprs:
        for op, value in re.findall(r'deployment(=~|=)"([^"]*)"', expr):
            for model in models(stack):
                name = object_name(model)
                assert re.fullmatch(value, name) if op == "=~" else value == name, (expr, name)


def test_the_queue_target_is_one_batch_per_server_process():
    """A pod's processes sum their queues (serving/workers.py): the KEDA threshold scales with them,
    and the pod's resources with them (components/config/capacity.py serving_resources_for)."""
    catalogue = mock_engine.stack_config("dev")[0]["mlplatform:models"]
    catalogue = json.loads(catalogue) if isinstance(catalogue, str) else catalogue
    mnist = {**catalogue["mnist"], "serving": {**catalogue["mnist"].get("serving", {}), "processes": 3}}
    mnist["serving"].pop("resources", None)
    res = mock_engine.run("dev", overrides={"mlplatform:models": {**catalogue, "mnist": mnist}})
    (so,) = [r for r in res.k8s_objects() if r.raw["kind"] == "ScaledObject" and r.raw["metadata"]["name"] == object_name("mnist")]
    (trigger,) = so.raw["spec"]["triggers"]
    assert trigger["metadata"]["threshold"] == str(3 * mnist["serving"].get("maxBatchSize", 64))
    (rollout,) = [r for r in res.k8s_objects() if r.raw["kind"] == "Rollout" and r.raw["metadata"]["name"] == object_name("mnist")]
    (server,) = [c for c in rollout.raw["spec"]["template"]["spec"]["containers"] if c["name"] == "model-server"]
    assert server["resources"]["limits"] == {"cpu": "3", "memory": "4096Mi"}
    assert {"name": "SERVING_WORKERS", "value": "3"} in server["env"]
