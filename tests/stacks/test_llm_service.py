"""The vLLM runtime on every stack that configures an LLM model (dev, staging, prod): an Argo Rollout
with the one-pod canary its pool allows and the analysis that judges it (vLLM's metrics, the golden
prompts), GPU placement that a pool can satisfy, probes, /dev/shm, a per-pod weights volume filled
with the registry version by the ``weights`` init container (never Hugging Face), the import Job only
where the stack imports (dev; the Hugging Face token only there, as a secret), KEDA scaling the
Rollout (asleep outside prod), the OpenAI routes on the stack's Gateway, and schema-valid objects."""

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
    # LoRA adapters (adapterOf) are served by their base's Rollout: tests/stacks/test_lora.py
    return {name: m for name, m in models.items() if (m or {}).get("runtime") == "vllm" and not m.get("adapterOf")}


LLM_STACKS = [s for s in STACKS if llm_models(s)]


def test_dev_staging_and_prod_serve_an_llm_received_along_the_chain():
    """One chain (docs/llm.md): dev imports, staging receives from dev, prod from staging, all at the
    same pinned source and revision (the promotion and the init container check that pin)."""
    assert {"dev", "staging", "prod"} <= set(LLM_STACKS)
    chat = {s: stack_doc(s)["mlplatform:models"]["chat"] for s in ("dev", "staging", "prod")}
    assert "source" not in chat["dev"]
    assert chat["staging"]["source"]["stack"] == "dev" and chat["prod"]["source"]["stack"] == "staging"
    pins = {(c["llm"]["source"], c["llm"]["revision"]) for c in chat.values()}
    assert len(pins) == 1, pins


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
    sets = objects(result, "Rollout")
    assert not objects(result, "StatefulSet"), f"{llm_stack}: a StatefulSet left (vLLM is a Rollout)"
    for name, model in llm_models(llm_stack).items():
        obj = llm_service.object_name(name)
        assert obj in sets, f"{llm_stack}: no Rollout {obj} for model {name}"
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
        # the registry version the weights init container verified, never the Hugging Face id
        assert c["args"][0].startswith("/cache/models/") and llm["source"] not in c["args"], sts.urn


def test_probes_shm_and_weights_volume(llm_stack, res):
    for _, llm, sts in each_llm(llm_stack, res):
        spec = sts.raw["spec"]
        pod = spec["template"]["spec"]
        c = pod["containers"][0]
        assert {c[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")} == {"/health"}
        assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= llm.get("startupSeconds", 1800)
        (shm,) = [v for v in pod["volumes"] if v["name"] == "shm"]
        assert shm["emptyDir"]["medium"] == "Memory"
        # each pod's own weights volume: a generic ephemeral PVC of the cluster's class
        (cache,) = [v for v in pod["volumes"] if v["name"] == "cache"]
        claim = cache["ephemeral"]["volumeClaimTemplate"]["spec"]
        assert claim["resources"]["requests"]["storage"] == f"{llm.get('cacheGiB', 50)}Gi", sts.urn
        assert claim["storageClassName"], sts.urn
        assert {"name": "cache", "mountPath": llm_service.CACHE_DIR} in c["volumeMounts"]
        assert "spec.replicas" in sts.ignore_changes  # KEDA owns replicas


def test_hugging_face_only_in_the_import_job_where_the_stack_imports(llm_stack):
    """With the token set (pulumi config set --secret mlplatform:hfToken ...): on a stack that imports
    (dev) it reaches the import Job only, through a Secret; a stack that receives the model (staging,
    prod) renders no import Job and no token at all. No vLLM pod ever has the token, a Hugging Face id
    as its model, or --revision: it serves the registry version its init container verified."""
    from components.models import llm_import
    from tools import mock_engine

    result = mock_engine.run(llm_stack, overrides={"mlplatform:hfToken": {"secure": "v1:x"}})
    secrets, jobs = objects(result, "Secret"), objects(result, "Job")
    for name, _, ro in each_llm(llm_stack, result):
        model = llm_models(llm_stack)[name]
        pod = ro.raw["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert "HF_TOKEN" not in {e["name"] for e in c["env"]} and "--revision" not in c["args"], ro.urn
        assert c["args"][0].startswith(llm_import.MODELS_DIR + "/") and [i["name"] for i in pod["initContainers"]] == ["weights"]
        imports = [j for n, j in jobs.items() if n.startswith(f"{llm_import.object_name(name)}-")]
        token = secrets.get(f"{llm_import.object_name(name)}-hf-token")
        if "source" in model:  # received: never Hugging Face
            assert imports == [] and token is None, (llm_stack, name)
            assert not [s for s in secrets if "hf-token" in s], llm_stack
            continue
        (job,) = imports
        assert token is not None and token.inputs["stringData"] == {"token": "[secret]"}, llm_stack
        env = {e["name"]: e for e in job.raw["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == token.raw["metadata"]["name"] and "value" not in env["HF_TOKEN"]
        assert job.raw["metadata"]["namespace"] != ro.raw["metadata"]["namespace"]  # the training namespace, queued
        assert job.raw["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] and job.raw["spec"]["suspend"] is True
    text = str([r.inputs for r in result.records])
    assert not any(s in text for s in result.sensitive)


def test_scaled_on_waiting_requests_and_sleeps_outside_prod(llm_stack, res):
    env = stack_doc(llm_stack)["mlplatform:environment"]
    scalers = objects(res, "ScaledObject")
    for name, llm, sts in each_llm(llm_stack, res):
        so = scalers[llm_service.object_name(name)]
        spec = so.raw["spec"]
        assert spec["scaleTargetRef"] == {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": sts.raw["metadata"]["name"]}
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
    kinds = ("Rollout", "AnalysisTemplate", "ScaledObject", "HTTPRoute", "NetworkPolicy", "PodDisruptionBudget", "Service")
    for kind in (*kinds, "ServiceMonitor", "PodMonitor", "ConfigMap"):
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


def test_vllm_pods_read_only_their_models_versions(llm_stack, res):
    """The pods' role reads ``models/<model>/`` of the stack's store (the weights init container) and
    writes nothing."""
    import json

    accounts = objects(res, "ServiceAccount")
    for name, _, ro in each_llm(llm_stack, res):
        sa = accounts[ro.raw["spec"]["template"]["spec"]["serviceAccountName"]]
        assert "eks.amazonaws.com/role-arn" in (sa.raw["metadata"].get("annotations") or {}), sa.urn
        policies = [r for r in res.of_type("aws:iam/rolePolicy:RolePolicy") if f"-{name}-llm" in r.name]
        assert policies, f"{llm_stack}: no policy for {name}'s vLLM role"
        for pol in policies:
            doc = pol.inputs["policy"]
            doc = json.loads(doc) if isinstance(doc, str) else doc
            actions = {
                a
                for st in doc["Statement"]
                if st["Effect"] == "Allow"
                for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])
            }
            assert not {a for a in actions if a.startswith("s3:Put") or a.startswith("s3:Delete")}, (pol.urn, actions)
            assert f"models/{name}/" in json.dumps(doc), pol.urn


# ---------------------------------------------------------------- the analysed canary (issue 25 item 3)


def pool_replicas(llm_stack: str, llm: dict) -> int:
    """How many replicas of ``llm`` the pool it runs on holds at its max (the stack file's numbers)."""
    pools = stack_doc(llm_stack).get("mlplatform:gpuPools", [])
    pool = next(p for p in pools if llm.get("pool") in (None, p["name"]))
    return pool["max"] * (GPU_COUNT[pool["instanceTypes"][0]] // llm.get("gpus", 1))


def test_one_canary_pod_added_or_taking_a_stable_gpu_where_the_pool_is_full(llm_stack, res):
    """Prod's chat may run 2 replicas on a 2-GPU pool: at 2 the canary takes one stable replica's GPU
    (maxUnavailable 1); dev's runs 1 on a 2-GPU pool: the canary is added (maxUnavailable 0). Either
    way the weight gives exactly one canary pod (components/lib/llm_canary.py)."""
    from components.lib import llm_canary

    for name, llm, ro in each_llm(llm_stack, res):
        canary = ro.raw["spec"]["strategy"]["canary"]
        top, held = llm.get("maxReplicas", 2), pool_replicas(llm_stack, llm)
        assert canary["maxSurge"] == 1 and canary["maxUnavailable"] == (1 if top + 1 > held else 0), (ro.urn, top, held)
        assert "trafficRouting" not in canary, ro.urn  # a routed canary never frees a stable GPU first
        (weight,) = [s["setWeight"] for s in canary["steps"] if "setWeight" in s]
        for r in range(1, top + 1):
            c, s, _ = llm_canary.effective_weight(r, weight, max_surge=canary["maxSurge"])
            assert (c, s) == (1, r - 1 if (top + 1 > held and r == top) else r), (ro.urn, r, c, s)
        obj = llm_service.object_name(name)
        assert (canary["canaryService"], canary["stableService"]) == (f"{obj}-canary", f"{obj}-stable")
        assert canary["analysis"]["templates"] == [{"templateName": llm_canary.template_name(name)}]
        # The analysis starts at the pause after the setWeight step (the canary pod available), and a
        # canary still within its startup probe's allowance is not Degraded.
        assert "setWeight" in canary["steps"][canary["analysis"]["startingStep"] - 1], ro.urn
        assert "pause" in canary["steps"][canary["analysis"]["startingStep"]], ro.urn
        (vllm,) = [c for c in ro.raw["spec"]["template"]["spec"]["containers"] if c["name"] == "vllm"]
        probe = vllm["startupProbe"]
        assert ro.raw["spec"]["progressDeadlineSeconds"] > probe["periodSeconds"] * probe["failureThreshold"], ro.urn


def test_the_analysis_judges_vllm_metrics_and_the_golden_prompts(llm_stack, res):
    from components.lib import llm_canary
    from llm import golden

    templates, maps = objects(res, "AnalysisTemplate"), objects(res, "ConfigMap")
    pools = stack_doc(llm_stack).get("mlplatform:gpuPools", [])
    for name, llm, ro in each_llm(llm_stack, res):
        t = templates[llm_canary.template_name(name)]
        assert t.raw["metadata"]["namespace"] == ro.raw["metadata"]["namespace"]
        metrics = {m["name"]: m for m in t.raw["spec"]["metrics"]}
        # Latencies judge only on a pool of one instance type (else they compare GPUs, not versions).
        pool = next(p for p in pools if llm.get("pool") in (None, p["name"]))
        latency = {llm_canary.METRIC_TTFT, llm_canary.METRIC_ITL}
        expected = set(llm_canary.JUDGING_METRICS) - (set() if len(set(pool["instanceTypes"])) == 1 else latency)
        assert set(metrics) == {*expected, llm_canary.METRIC_GOLDEN_JOB}, (t.urn, pool["instanceTypes"])
        queries = " ".join(m["provider"]["prometheus"]["query"] for m in metrics.values() if "prometheus" in m["provider"])
        families = ["http_requests_total"]
        if latency <= set(metrics):
            families += ["vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_bucket"]
        for family in families:
            assert family in queries, (t.urn, family)
        # the golden Job runs the committed runner on the committed set, from its ConfigMap
        job = metrics[llm_canary.METRIC_GOLDEN_JOB]["provider"]["job"]
        (volume,) = [v for v in job["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
        data = maps[volume["configMap"]["name"]].raw["data"]
        assert data["golden.py"] == (ROOT / "llm" / "golden.py").read_text()
        committed = golden.load(ROOT / "models" / name / "golden.yaml")
        assert [p.id for p in golden.parse(yaml.safe_load(data["set.json"]), "rendered")] == [p.id for p in committed]
        assert f">= {len(committed)}" in metrics[llm_canary.METRIC_GOLDEN]["provider"]["prometheus"]["query"]
        assert t.urn in ro.depends_on, f"{ro.urn} does not wait for its AnalysisTemplate"


def test_vllm_series_carry_the_side_and_the_version_and_are_scraped_once(llm_stack, res):
    monitors, services = objects(res, "ServiceMonitor"), objects(res, "Service")
    for name, _, ro in each_llm(llm_stack, res):
        obj = llm_service.object_name(name)
        spec = monitors[obj].raw["spec"]
        assert spec["podTargetLabels"] == ["rollouts-pod-template-hash", llm_service.VERSION_LABEL]
        selected = [
            s for s in services.values() if spec["selector"]["matchLabels"].items() <= (s.raw["metadata"].get("labels") or {}).items()
        ]
        assert [s.raw["metadata"]["name"] for s in selected] == [obj], "each vLLM pod scraped through one Service only"
        template = ro.raw["spec"]["template"]["metadata"]
        assert template["labels"][llm_service.VERSION_LABEL] == template["annotations"]["mlplatform.io/model-version"]


def test_golden_pods_reach_the_vllm_pods_and_prometheus_reaches_them(llm_stack, res):
    from components.lib import llm_canary

    policies = objects(res, "NetworkPolicy")
    for name, _, _ in each_llm(llm_stack, res):
        obj = llm_service.object_name(name)
        golden_peer = {"podSelector": {"matchLabels": llm_canary.golden_labels(name)}}
        assert any(golden_peer in rule.get("from", []) for rule in policies[obj].raw["spec"]["ingress"])
        own = policies[f"{obj}-golden"].raw["spec"]
        assert own["egress"] == [
            {"to": [{"podSelector": {"matchLabels": llm_service.labels(name)}}], "ports": [{"protocol": "TCP", "port": llm_service.PORT}]}
        ]
        assert objects(res, "PodMonitor")[f"{obj}-golden"].raw["spec"]["selector"]["matchLabels"] == llm_canary.golden_labels(name)


def test_a_pinned_version_is_loaded_verified_from_the_store(llm_stack):
    """``serving.version`` set (what ``deliver`` pins): the ``weights`` init container fetches and
    verifies that version (components/models/llm_import.py), vLLM serves the verified folder offline
    with no token, and the version is on the pod template (a new one is a canary)."""
    import copy

    from components.models import llm_import
    from tools import mock_engine

    models = copy.deepcopy(stack_doc(llm_stack)["mlplatform:models"])
    for name in llm_models(llm_stack):
        models[name].setdefault("serving", {})["version"] = "v7"
    result = mock_engine.run(llm_stack, overrides={"mlplatform:models": models, "mlplatform:hfToken": {"secure": "v1:x"}})
    for name, _, ro in each_llm(llm_stack, result):
        pod = ro.raw["spec"]["template"]["spec"]
        (init,) = pod["initContainers"]
        assert init["name"] == "weights" and "llm.fetch" in init["command"] and "v7" in init["command"], ro.urn
        (c,) = pod["containers"]
        assert c["args"][0] == llm_import.model_path(name, "v7") and "--revision" not in c["args"], c["args"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert "HF_TOKEN" not in env and env.get("HF_HUB_OFFLINE") == "1", env
        (code,) = [v for v in pod["volumes"] if v["name"] == llm_import.CODE_VOLUME]
        # the code ConfigMap in the pods' own namespace (the import Job's copy lives in the training one)
        assert any(
            m.raw["metadata"]["name"] == code["configMap"]["name"] and m.raw["metadata"]["namespace"] == ro.raw["metadata"]["namespace"]
            for m in result.k8s_objects()
            if m.raw.get("kind") == "ConfigMap"
        ), ro.urn
        assert ro.raw["spec"]["template"]["metadata"]["annotations"]["mlplatform.io/model-version"] == "v7"
        sa = objects(result, "ServiceAccount")[pod["serviceAccountName"]]
        assert "eks.amazonaws.com/role-arn" in (sa.raw["metadata"].get("annotations") or {}) or llm_stack == "local", sa.urn
    from tools import convergence

    assert convergence.check(result.records) == []  # the pinned stack converges too (issue 29's rules)


def test_llm_route_keys_and_rate_limit_at_the_gateway(llm_stack, res):
    """Issue 24 item 10: where ``serving.apiKey`` is on (staging, prod) the route's SecurityPolicy
    requires one of the generated keys (a Secret of Pulumi secrets, one per llm.apiClients entry, an
    output as a secret) on every OpenAI route, /v1/models included; every LLM route has a local rate
    limit, per client with keys, per route without. All valid against the pinned CRD schemas."""
    from components.services import gateway

    version = stack_doc(llm_stack)["mlplatform:kubernetesVersion"]
    policies, limits = objects(res, "SecurityPolicy"), objects(res, "BackendTrafficPolicy")
    for name, llm, _ in each_llm(llm_stack, res):
        obj, model = llm_service.object_name(name), llm_models(llm_stack)[name]
        keyed = bool(model.get("serving", {}).get("apiKey"))
        clients = llm.get("apiClients", ["default"])
        rate = {"requests": 60, "unit": "Minute", **llm.get("rateLimit", {})}
        limit = limits[obj]
        assert manifests.validate(limit.inputs, version) == [], limit.urn
        assert limit.raw["spec"]["targetRefs"] == [{"group": gateway.GATEWAY_API, "kind": "HTTPRoute", "name": obj}]
        rules = limit.raw["spec"]["rateLimit"]["local"]["rules"]
        assert all(r["limit"] == rate for r in rules)
        if not keyed:
            assert llm_stack == "dev", f"{llm_stack}: an LLM route without keys"
            assert obj not in policies or "apiKeyAuth" not in policies[obj].raw["spec"]
            assert [r.get("clientSelectors") for r in rules] == [None]
            continue
        policy = policies[obj]
        assert manifests.validate(policy.inputs, version) == [], policy.urn
        assert policy.raw["spec"]["targetRefs"] == [{"group": gateway.GATEWAY_API, "kind": "HTTPRoute", "name": obj}]
        (ref,) = policy.raw["spec"]["apiKeyAuth"]["credentialRefs"]
        secret = objects(res, "Secret")[ref["name"]]
        assert secret.raw["metadata"]["namespace"] == policy.raw["metadata"]["namespace"]  # no cross-namespace reference
        assert secret.inputs["stringData"] == "[secret]" or set(secret.inputs["stringData"].values()) == {"[secret]"}
        assert sorted(secret.raw["stringData"]) == sorted(clients)
        assert all(len(k) == 40 and k in res.sensitive for k in secret.raw["stringData"].values())
        assert [r["clientSelectors"][0]["headers"][0]["value"] for r in rules] == clients
        # A separate secret output: inside `models` it would make that whole output secret (make smoke reads it).
        assert "apiKeys" not in res.raw_outputs["models"][name]
        assert sorted(res.raw_outputs["llmApiKeys"][name]) == sorted(clients)
        assert res.outputs["llmApiKeys"] == "[secret]" or set(res.outputs["llmApiKeys"][name].values()) == {"[secret]"}


def test_only_prometheus_pods_of_monitoring_reach_vllm(llm_stack, res):
    """Issue 24 item 2 (review): vLLM serves /metrics on its API port (8000), so what may scrape it
    may also call the API: of the monitoring namespace only Prometheus' pods, not Grafana's (its
    users' queries and plugins), Alertmanager or the exporters."""
    from tests.stacks.test_network_isolation import Pod, network, pods

    net = network(res)
    prometheus = Pod("monitoring", {"app.kubernetes.io/name": "prometheus", "prometheus": "monitoring-prometheus"}, name="prometheus")
    others = [Pod("monitoring", {"app.kubernetes.io/name": n}, name=n) for n in ("grafana", "alertmanager", "prometheus-pushgateway")]
    for name, _, _ in each_llm(llm_stack, res):
        (vllm,) = [p for p in pods(res) if p.name == llm_service.object_name(name) and p.namespace == "ml-serving"]
        assert net.allowed(prometheus, vllm, llm_service.PORT), f"{llm_stack}: Prometheus cannot scrape {vllm.name}"
        reached = [o.name for o in others if net.allowed(o, vllm, llm_service.PORT)]
        assert reached == [], f"{llm_stack}: {reached} reach {vllm.name}:{llm_service.PORT}"
