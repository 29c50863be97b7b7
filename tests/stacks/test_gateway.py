"""The entry point on every stack: Envoy Gateway installed by the program, one Gateway, one HTTPRoute
per model (both REST protocols to that model's Service), allowedCidrs enforced at the entry point."""

from __future__ import annotations

import re

import yaml

from components.config import GatewayConfig
from components.models.model_service import PORT, canary_service_name, object_name
from components.services import gateway
from tests.conftest import ROOT, unavailable
from tools import manifests, mock_engine, reference


def cfg(stack):
    return yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]


def tf_models(stack):
    """The catalogue's TensorFlow models (vLLM models route through their own component, h8's tests)."""
    return {n: e for n, e in cfg(stack)["mlplatform:models"].items() if e.get("runtime", "tensorflow") == "tensorflow"}


def of_kind(result, kind):
    return [r for r in result.k8s_objects() if r.raw.get("kind") == kind]


def routes(result):
    return {r.raw["metadata"]["name"]: r.raw for r in of_kind(result, "HTTPRoute")}


def envoy_matches(route: dict, path: str) -> bool:
    """Does ``path`` match one of the route's matches, as Envoy evaluates them: a RegularExpression
    against the whole path (RE2 full match), a PathPrefix element by element."""
    for rule in route["spec"]["rules"]:
        for m in rule["matches"]:
            kind, value = m["path"]["type"], m["path"]["value"]
            if kind == "RegularExpression" and re.fullmatch(value, path):
                return True
            if kind == "PathPrefix" and (path == value or path.startswith(value.rstrip("/") + "/")):
                return True
    return False


def test_envoy_gateway_installed_and_pinned(result):
    (release,) = [r for r in result.of_type("kubernetes:helm.sh/v3:Release") if r.inputs["chart"].endswith("/gateway-helm")]
    assert release.inputs["chart"] == "oci://docker.io/envoyproxy/gateway-helm" and release.inputs["version"] == "1.9.0"
    assert release.inputs["namespace"] == "envoy-gateway-system"
    (cls,) = of_kind(result, "GatewayClass")
    assert cls.raw["spec"]["controllerName"] == gateway.CONTROLLER_NAME
    assert release.urn in cls.depends_on or any(release.urn in r.depends_on for r in of_kind(result, "EnvoyProxy"))


def test_one_gateway_and_a_route_per_model(result, stack):
    (gw,) = of_kind(result, "Gateway")
    assert gw.raw["metadata"]["namespace"] == "envoy-gateway-system"
    # The models' listener is the first; with TLS a second, on 80, only redirects (tests/stacks/test_entry_tls.py).
    listener = gw.raw["spec"]["listeners"][0]
    assert [ln["name"] for ln in gw.raw["spec"]["listeners"]] == (["https", "http"] if listener["protocol"] == "HTTPS" else ["http"])
    assert listener["allowedRoutes"]["namespaces"]["selector"]["matchLabels"] == {"kubernetes.io/metadata.name": "ml-serving"}
    found = {n: r for n, r in routes(result).items() if n != gateway.REDIRECT_ROUTE}
    # Every model of the catalogue, whatever its runtime, has a route at this Gateway (a LoRA adapter is
    # reached through its base's: clients name it in the OpenAI `model` field, docs/lora.md).
    for model in (m for m, e in cfg(stack)["mlplatform:models"].items() if not (e or {}).get("adapterOf")):
        attached = [
            r for r in found.values() if model in r["metadata"]["name"] and r["spec"]["parentRefs"][0]["name"] == gateway.GATEWAY_NAME
        ]
        assert attached, model
    for model in tf_models(stack):
        route = found[object_name(model)]
        (parent,) = route["spec"]["parentRefs"]
        assert (parent["name"], parent["namespace"], parent["sectionName"]) == (
            gateway.GATEWAY_NAME,
            "envoy-gateway-system",
            listener["name"],
        )
        backends = [b for r in route["spec"]["rules"] for b in r["backendRefs"]]
        if object_name(model) in {r.raw["metadata"]["name"] for r in of_kind(result, "Rollout")}:
            # Argo Rollouts' canary: stable 100, canary 0, moved by its plugin (tests/stacks/test_traffic_routing.py).
            assert backends == [
                {"kind": "Service", "name": object_name(model), "port": PORT, "weight": 100},
                {"kind": "Service", "name": canary_service_name(model), "port": PORT, "weight": 0},
            ]
        else:
            assert backends == [{"kind": "Service", "name": object_name(model), "port": PORT}]


def test_routes_cover_both_protocols_and_only_their_model():
    route = {"spec": gateway.http_route_spec("fraud", "gw", "http", "model-server-fraud", PORT)}
    for path in (
        "/v1/models/fraud",
        "/v1/models/fraud:predict",
        "/v1/models/fraud/metadata",
        "/v1/models/fraud/versions/3:predict",
        "/v2/models/fraud",
        "/v2/models/fraud/infer",
        "/v2/models/fraud/ready",
    ):
        assert envoy_matches(route, path), path
    for path in ("/v1/models/fraudx:predict", "/v1/models/frau:predict", "/v2/models/fraud2/infer", "/metrics", "/v1/models/mnist:predict"):
        assert not envoy_matches(route, path), path


def test_gateway_api_objects_validate_against_the_crds(result, stack):
    for kind in ("Gateway", "GatewayClass", "HTTPRoute"):
        if reference.crd_schema(kind) is None:
            unavailable(f"no {kind} CRD schema in ../shared/reference (user checkout)")
        objs = of_kind(result, kind)
        assert objs, kind
        for r in objs:
            assert manifests.validate(r.inputs, cfg(stack)["mlplatform:kubernetesVersion"]) == [], r.urn
    # ... and the schema is strict: a typo fails (additionalProperties false, as for the other CRDs)
    bad = {**routes(result)["model-server-mnist"]}
    bad["spec"] = {**bad["spec"], "parentRef": bad["spec"]["parentRefs"]}
    assert manifests.validate(bad, "1.33")


def test_allowed_cidrs_at_the_entry_point(result, stack):
    # a LoRA adapter has no route of its own: not one of the entry point's sources (components/platform.py)
    catalogue = {m: e for m, e in cfg(stack)["mlplatform:models"].items() if not (e or {}).get("adapterOf")}
    policies = {p.raw["spec"]["targetRefs"][0]["name"]: p.raw for p in of_kind(result, "SecurityPolicy")}
    for model, entry in tf_models(stack).items():
        cidrs = entry.get("serving", {}).get("allowedCidrs", [])
        if not cidrs:
            assert object_name(model) not in policies
            continue
        auth = policies[object_name(model)]["spec"]["authorization"]
        assert auth["defaultAction"] == "Deny"
        assert auth["rules"] == [{"name": "allowed-cidrs", "action": "Allow", "principal": {"clientCIDRs": cidrs}}]
    (lb,) = [s for s in result.of_type("kubernetes:core/v1:Service") if s.raw["metadata"]["name"] == gateway.ENTRY_SERVICE]
    all_cidrs = [c for e in catalogue.values() for c in e.get("serving", {}).get("allowedCidrs", [])]
    restricted = all(e.get("serving", {}).get("allowedCidrs") for e in catalogue.values())
    assert lb.raw["spec"]["selector"] == gateway.proxy_selector("envoy-gateway-system")
    if cfg(stack)["mlplatform:cluster"]["kind"] != "eks":
        # kind has no load-balancer implementation: a ClusterIP reached by port-forward (issue 29 item 4)
        assert lb.raw["spec"]["type"] == "ClusterIP" and "externalTrafficPolicy" not in lb.raw["spec"]
        return
    assert lb.raw["spec"]["type"] == "LoadBalancer"
    assert lb.raw["spec"].get("loadBalancerSourceRanges", []) == (sorted(set(all_cidrs)) if restricted else [])
    assert lb.raw["spec"]["externalTrafficPolicy"] == "Local"  # Envoy sees the client address the policies check


def test_load_balancer_scheme(result, stack):
    (lb,) = [s for s in result.of_type("kubernetes:core/v1:Service") if s.raw["metadata"]["name"] == gateway.ENTRY_SERVICE]
    annotations = lb.raw["metadata"].get("annotations") or {}
    c = cfg(stack)
    if c["mlplatform:cluster"]["kind"] != "eks":
        assert annotations == {}
        return
    internal = c.get("mlplatform:gateway", {}).get("internal", False)
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-type"] == "nlb"
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-scheme"] == ("internal" if internal else "internet-facing")
    # what EKS's in-tree service controller reads (the scheme annotation is the LB Controller's only)
    assert annotations.get("service.beta.kubernetes.io/aws-load-balancer-internal") == ("true" if internal else None)


def test_internal_entry_point_on_eks_is_internal_for_the_in_tree_controller():
    res = mock_engine.run("dev", overrides={"mlplatform:gateway": {"internal": True}})
    (lb,) = [s for s in res.of_type("kubernetes:core/v1:Service") if s.raw["metadata"]["name"] == gateway.ENTRY_SERVICE]
    assert lb.raw["metadata"]["annotations"]["service.beta.kubernetes.io/aws-load-balancer-internal"] == "true"


def test_prod_runs_two_envoys(result, stack):
    (proxy,) = of_kind(result, "EnvoyProxy")
    kube = proxy.raw["spec"]["provider"]["kubernetes"]
    assert kube["envoyDeployment"]["replicas"] == (2 if cfg(stack)["mlplatform:environment"] == "prod" else 1)
    assert kube["envoyService"] == {"type": "ClusterIP"}  # the load balancer is ours (ENTRY_SERVICE)
    assert kube["envoyPDB"] == {"maxUnavailable": 1}
    # two Envoys go to two zones where they can (issue 24, Low)
    spread = kube["envoyDeployment"].get("pod", {}).get("topologySpreadConstraints", [])
    if kube["envoyDeployment"]["replicas"] > 1:
        (c,) = spread
        assert c["topologyKey"] == "topology.kubernetes.io/zone" and c["labelSelector"]["matchLabels"] == gateway.proxy_selector(
            proxy.raw["metadata"]["namespace"]
        )
    else:
        assert spread == []
    if reference.crd_schema("EnvoyProxy") is not None:
        assert manifests.validate(proxy.inputs, "1.33") == []


def test_tls_where_a_certificate_is_configured():
    tls = {"certificateSecret": "entry-tls", "hostname": "models.example.com"}
    res = mock_engine.run("dev", overrides={"mlplatform:gateway": {"tls": tls}})
    (gw,) = of_kind(res, "Gateway")
    listener, redirect = gw.raw["spec"]["listeners"]
    assert listener["protocol"] == "HTTPS" and listener["port"] == 443 and listener["hostname"] == "models.example.com"
    assert listener["tls"] == {"mode": "Terminate", "certificateRefs": [{"kind": "Secret", "name": "entry-tls"}]}
    assert (redirect["protocol"], redirect["port"], redirect["allowedRoutes"]) == ("HTTP", 80, {"namespaces": {"from": "Same"}})
    (lb,) = [s for s in res.of_type("kubernetes:core/v1:Service") if s.raw["metadata"]["name"] == gateway.ENTRY_SERVICE]
    assert lb.raw["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": 10443, "protocol": "TCP"},
        {"name": "http", "port": 80, "targetPort": 10080, "protocol": "TCP"},
    ]
    model_routes = [r for r in of_kind(res, "HTTPRoute") if r.raw["metadata"]["name"] != gateway.REDIRECT_ROUTE]
    assert model_routes and all(r.raw["spec"]["parentRefs"][0]["sectionName"] == "https" for r in model_routes)
    assert res.raw_outputs["models"]["mnist"]["url"] == "https://models.example.com/v1/models/mnist"
    if reference.crd_schema("Gateway") is not None:
        assert manifests.validate(gw.inputs, "1.33") == []


def test_plain_http_without_a_certificate():
    spec = gateway.gateway_spec(GatewayConfig(), "ml-serving")
    assert [(ln["protocol"], ln["port"]) for ln in spec["listeners"]] == [("HTTP", 80)]


def test_two_models_share_nothing_but_the_gateway():
    """A second catalogue entry gets its own Deployment, Services, route, policy, ServiceMonitor,
    HPA, PDB, training Job and store prefix; the Gateway and the load balancer stay one."""
    catalogue = cfg("dev")["mlplatform:models"]
    fraud = {
        "training": {"gpus": 0, "epochs": 3},
        "serving": {"replicas": 1, "minReplicas": 1, "maxReplicas": 2, "allowedCidrs": ["198.51.100.0/24"]},
    }
    res = mock_engine.run("dev", overrides={"mlplatform:models": {**catalogue, "fraud": fraud}})
    assert len(of_kind(res, "Gateway")) == 1
    assert len([s for s in res.of_type("kubernetes:core/v1:Service") if s.raw["metadata"]["name"] == gateway.ENTRY_SERVICE]) == 1
    tf = sorted(m for m, e in {**catalogue, "fraud": fraud}.items() if e.get("runtime", "tensorflow") == "tensorflow")
    assert {"fraud", "mnist"} <= set(tf)
    for kind in ("Rollout", "HTTPRoute", "SecurityPolicy", "ServiceMonitor", "PodDisruptionBudget"):
        names = sorted(r.raw["metadata"]["name"] for r in of_kind(res, kind) if r.raw["metadata"]["name"].startswith("model-server-"))
        assert names == [f"model-server-{m}" for m in tf], (kind, names)
    services = sorted(r.raw["metadata"]["name"] for r in of_kind(res, "Service") if r.raw["metadata"]["name"].startswith("model-server-"))
    # dev runs Argo Rollouts: each model has a stable (model-server-<m>) and a canary Service.
    assert services == sorted(n for m in tf for n in (f"model-server-{m}", f"model-server-{m}-canary", f"model-server-{m}-metrics"))
    jobs = [j for j in of_kind(res, "Job") if j.raw["metadata"]["name"].startswith("train-")]  # not an LLM's import-<model>-...
    prefixes = [
        next(e["value"] for e in j.raw["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] == "TRAIN_MODEL_NAME") for j in jobs
    ]
    assert sorted(prefixes) == tf  # <store>/models/<name>/: one prefix per model, none shared
    # The load balancer admits both models' networks; each route only its own.
    (lb,) = [s for s in res.of_type("kubernetes:core/v1:Service") if s.raw["metadata"]["name"] == gateway.ENTRY_SERVICE]
    assert lb.raw["spec"]["loadBalancerSourceRanges"] == ["198.51.100.0/24", "203.0.113.0/24"]
    assert {"fraud", "mnist"} <= res.raw_outputs["models"].keys()


def test_every_model_route_drops_the_warm_up_label_of_outside_requests(result, stack):
    """Found by the attack review: `X-Mlplatform-Traffic: warmup` moves a request out of the user-facing
    alerts and dashboards (serving/app.py). Only the canary's warm-up Job, inside the cluster, may set it;
    a client that sends it through the entry point must not hide a 5xx storm from ModelServerHighErrorRatio."""
    model_routes = {name: r for name, r in routes(result).items() if name.startswith("model-server-")}
    assert model_routes, stack
    for name, route in model_routes.items():
        for rule in route["spec"]["rules"]:
            removes = [
                h for f in rule.get("filters", []) if f["type"] == "RequestHeaderModifier" for h in f["requestHeaderModifier"]["remove"]
            ]
            assert gateway.TRAFFIC_HEADER in removes, f"{stack}: HTTPRoute {name}"
