"""Exact canary weights at the entry point (issue 15 item 4, "with few replicas a replica-ratio canary is
coarse"): each model's Rollout sets its weight on the model's HTTPRoute through Argo Rollouts' Gateway
API plugin (components/lib/rollout_specs.py, components/services/gateway.py, components/models/model_service.py). Checked here:
the replica-ratio weights a stack would get without it (a port of Argo's own rounding, against Argo's
own test cases), the weights and pods the routed canary gets, the rendered Rollout / HTTPRoute / Services
/ RBAC on every stack (against the reference CRD schemas and chart values), the plugin's pin, and that
Pulumi leaves the weights to the controller (ignore_changes on exactly them)."""

from __future__ import annotations

import re

import pytest

from components.config import CanaryConfig
from components.lib import rollout_specs
from components.models import model_service
from components.services import argo_rollouts, gateway
from tests.conftest import unavailable
from tests.stacks.test_rollouts import monitored, of_kind, stack_config, tf_models
from tools import manifests, mock_engine, reference

# Argo Rollouts v1.9.0 utils/replicaset/canary_test.go, TestApproximateWeightedCanaryStableReplicaCounts
# (replicas, weight, maxSurge -> canary, stable): the port must agree with the controller's own cases.
ARGO_CASES = [
    (1, 1, 0, 0, 1),
    (1, 49, 0, 0, 1),
    (1, 50, 0, 1, 0),
    (1, 1, 1, 1, 1),
    (1, 99, 1, 1, 1),
    (1, 100, 1, 1, 0),
    (2, 1, 0, 1, 1),
    (2, 99, 0, 1, 1),
    (2, 1, 1, 1, 2),
    (2, 50, 1, 1, 1),
    (2, 99, 1, 2, 1),
    (2, 100, 1, 2, 0),
    (3, 10, 0, 1, 2),
    (3, 49, 0, 1, 2),
    (3, 50, 0, 2, 1),
    (3, 10, 1, 1, 3),
    (3, 25, 1, 1, 3),
    (3, 33, 1, 1, 2),
    (3, 34, 1, 1, 2),
    (3, 49, 1, 2, 2),
    (3, 50, 1, 2, 2),
    (10, 14, 0, 1, 9),
    (10, 15, 0, 2, 8),
    (10, 1, 1, 1, 10),
    (10, 18, 1, 2, 9),
    (10, 23, 1, 2, 8),
    (10, 24, 1, 3, 8),
    (10, 99, 1, 10, 1),
]


@pytest.mark.parametrize(("replicas", "weight", "surge", "canary", "stable"), ARGO_CASES)
def test_replica_ratio_rounding_is_argo_rollouts_own(replicas, weight, surge, canary, stable):
    assert rollout_specs.effective_weight(replicas, weight, surge)[:2] == (canary, stable)


def ranges(replicas):
    """{canary share of requests (rounded %): (first weight, last weight)} of a replica-ratio canary."""
    out: dict[int, tuple[int, int]] = {}
    for w in range(1, 100):
        share = round(rollout_specs.effective_weight(replicas, w)[2])
        lo, _ = out.get(share, (w, w))
        out[share] = (lo, w)
    return out


def test_what_two_and_three_replicas_really_get_without_a_router():
    """The README's table (Model delivery): the steps a replica-ratio canary turns 1..99 % into."""
    assert ranges(1) == {50: (1, 99)}
    assert ranges(2) == {33: (1, 41), 50: (42, 58), 67: (59, 99)}
    assert ranges(3) == {25: (1, 29), 33: (30, 41), 50: (42, 58), 67: (59, 70), 75: (71, 99)}


def test_routed_weights_are_exact_and_no_canary_pod_is_busier_than_a_stable_one():
    for replicas in range(1, 21):
        for weight in range(1, 100):
            canary, stable, share = rollout_specs.routed_replicas(replicas, weight)
            assert share == weight and stable == replicas and 1 <= canary <= replicas
            if weight <= 50:  # up to 50 % enough canary pods fit in spec.replicas
                assert weight / canary <= (100 - weight) / stable + 1e-9, (replicas, weight)
    # The stacks' replica counts and the default steps (25, 50).
    assert [rollout_specs.routed_replicas(2, w) for w in (25, 50)] == [(1, 2, 25.0), (2, 2, 50.0)]
    assert [rollout_specs.routed_replicas(3, w) for w in (25, 50)] == [(2, 3, 25.0), (3, 3, 50.0)]
    assert [rollout_specs.routed_replicas(1, w) for w in (25, 50)] == [(1, 1, 25.0), (1, 1, 50.0)]
    with pytest.raises(ValueError):
        rollout_specs.canary_scale(100)


def test_routed_strategy_from_config_and_replica_ratio_without_a_router():
    routing = rollout_specs.TrafficRouting("model-server-m", "model-server-m-canary", "model-server-m", "ml-serving")
    canary = rollout_specs.strategy("m", CanaryConfig(steps=[10, 40, 80], step_seconds=60), routing)["canary"]
    pause = {"pause": {"duration": "60s"}}
    assert canary["steps"] == [
        {"setCanaryScale": {"weight": 12}},
        {"setWeight": 10},
        pause,
        {"setCanaryScale": {"weight": 67}},
        {"setWeight": 40},
        pause,
        {"setCanaryScale": {"weight": 100}},
        {"setWeight": 80},
        pause,
    ]
    assert (canary["stableService"], canary["canaryService"]) == ("model-server-m", "model-server-m-canary")
    assert canary["trafficRouting"] == {
        "plugins": {rollout_specs.PLUGIN_NAME: {"httpRoute": "model-server-m", "namespace": "ml-serving", "disableInProgressLabel": True}}
    }
    # With a router 0 would leave an aborted canary's pods running for ever.
    assert canary["abortScaleDownDelaySeconds"] > 0 and "dynamicStableScale" not in canary
    plain = rollout_specs.strategy("m", CanaryConfig(steps=[10, 40]))["canary"]
    assert [s for s in plain["steps"] if "setCanaryScale" in s] == [] and "trafficRouting" not in plain


def rollout_stacks(stack):
    """Every stack file today monitors and serves TF models, so every stack must have routed
    Rollouts: a stack that stops doing so fails here rather than skipping the checks below (the
    stack without Rollouts is test_without_monitoring_a_model_is_a_deployment_behind_one_backend)."""
    assert monitored(stack) and tf_models(stack), f"{stack}: expected monitoring and TF models (Argo Rollouts)"


def named(result, kind):
    return {r.raw["metadata"]["name"]: r for r in of_kind(result, kind)}


def test_each_rollout_sets_exact_weights_on_its_route(result, stack):
    rollout_stacks(stack)
    ros, routes, services = named(result, "Rollout"), named(result, "HTTPRoute"), named(result, "Service")
    monitors = named(result, "ServiceMonitor")
    models = stack_config(stack)["mlplatform:models"]
    for model in tf_models(stack):
        name, canary_name = model_service.object_name(model), model_service.canary_service_name(model)
        ro, route = ros[name], routes[name]
        canary = ro.raw["spec"]["strategy"]["canary"]
        assert (canary["stableService"], canary["canaryService"]) == (name, canary_name)
        cfg = canary["trafficRouting"]["plugins"][rollout_specs.PLUGIN_NAME]
        assert cfg["httpRoute"] == route.raw["metadata"]["name"] and cfg["namespace"] == route.raw["metadata"]["namespace"]
        assert cfg["namespace"] == ro.raw["metadata"]["namespace"]
        # The weights of the stack file's steps, each after its canary scale.
        steps = CanaryConfig(**((models[model].get("serving") or {}).get("canary") or {})).steps
        assert [s["setWeight"] for s in canary["steps"] if "setWeight" in s] == steps
        scales = [s["setCanaryScale"]["weight"] for s in canary["steps"] if "setCanaryScale" in s]
        assert scales == [rollout_specs.canary_scale(w) for w in steps]
        # Stable 100, canary 0 in the one rule; both Services select the model's pods on the API port
        # (the controller narrows each to its ReplicaSet's hash); neither is the metrics Service.
        (rule,) = route.raw["spec"]["rules"]
        assert [(b["name"], b["port"], b["weight"]) for b in rule["backendRefs"]] == [
            (name, model_service.PORT, 100),
            (canary_name, model_service.PORT, 0),
        ]
        for svc in (services[name], services[canary_name]):
            assert svc.raw["spec"]["selector"] == model_service.labels(model)
            assert svc.raw["spec"]["ports"] == [
                {"name": model_service.PORT_NAME, "port": model_service.PORT, "targetPort": model_service.PORT_NAME, "protocol": "TCP"}
            ]
        monitor_sel = monitors[name].raw["spec"]["selector"]["matchLabels"]
        assert not monitor_sel.items() <= (services[canary_name].raw["metadata"].get("labels") or {}).items()
        # The Rollout's first step finds its Services, route and the right to change the route.
        binding = named(result, "RoleBinding")[name + model_service.ROUTE_ROLE_SUFFIX]
        for dep in (services[name], services[canary_name], route, binding):
            assert dep.urn in ro.depends_on, (stack, model, dep.name)


def resolve(value, path):
    """The value at a Pulumi property path (``a.b[0].c``) in ``value``; KeyError/IndexError if absent."""
    for key, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path):
        value = value[int(index)] if index else value[key]
    return value


def test_pulumi_leaves_the_weights_to_the_controller(result, stack):
    """ignore_changes on exactly the two weights (and nothing else of the route): Pulumi then keeps the
    weights the plugin wrote instead of the program's 100/0, and still updates the rest of the route."""
    rollout_stacks(stack)
    routes = named(result, "HTTPRoute")
    for model in tf_models(stack):
        route = routes[model_service.object_name(model)]
        paths = ["spec.rules[0].backendRefs[0].weight", "spec.rules[0].backendRefs[1].weight"]
        assert sorted(route.ignore_changes) == paths
        # The paths name the weights, as the engine resolves them against the route's inputs.
        assert [resolve({"spec": route.raw["spec"]}, p) for p in paths] == [100, 0]
    # Without a Rollout (a Deployment) the route has one backend, no weight, nothing ignored.
    plain = gateway.http_route_spec("m", "gw", "http", "model-server-m", 8501)
    assert gateway.weight_paths(plain) == [] and "weight" not in plain["rules"][0]["backendRefs"][0]


def test_controller_may_get_and_update_only_each_models_route(result, stack):
    rollout_stacks(stack)
    roles, bindings = named(result, "Role"), named(result, "RoleBinding")
    values = rollout_specs.chart_values(monitoring=monitored(stack))
    sa = values["serviceAccount"]["name"]
    assert sa == rollout_specs.CONTROLLER_SERVICE_ACCOUNT
    granted = []
    for model in tf_models(stack):
        name = model_service.object_name(model) + model_service.ROUTE_ROLE_SUFFIX
        role, binding = roles[name].raw, bindings[name].raw
        assert (
            role["metadata"]["namespace"]
            == binding["metadata"]["namespace"]
            == named(result, "HTTPRoute")[model_service.object_name(model)].raw["metadata"]["namespace"]
        )
        assert role["rules"] == [
            {
                "apiGroups": ["gateway.networking.k8s.io"],
                "resources": ["httproutes"],
                "resourceNames": [model_service.object_name(model)],
                "verbs": ["get", "update"],
            }
        ]
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": rollout_specs.NAMESPACE}]
        granted.append(name)
    # Nothing cluster-wide on routes from the program, and none from the chart (all provider RBAC off).
    for kind in ("ClusterRole", "Role"):
        for r in of_kind(result, kind):
            if r.raw["metadata"]["name"] not in granted:
                assert all("httproutes" not in (rule.get("resources") or []) for rule in r.raw.get("rules") or []), r.name
    assert values["providerRBAC"]["enabled"] is True and not any(values["providerRBAC"]["providers"].values())


def test_route_rollout_services_and_rbac_valid_against_the_schemas(result, stack):
    rollout_stacks(stack)
    if reference.reference_dir() is None:
        unavailable("../shared/reference not present (user checkout): Rollout and HTTPRoute CRD schemas")
    for kind in ("Rollout", "HTTPRoute"):
        assert reference.crd_schema(kind) is not None, f"no reference schema for {kind}"
    for kind in ("Rollout", "HTTPRoute", "Service", "Role", "RoleBinding"):
        for r in of_kind(result, kind):
            if r.raw["metadata"]["name"].startswith(model_service.APP):
                assert manifests.validate(r.raw, "1.33") == [], (stack, kind, r.raw["metadata"]["name"], manifests.validate(r.raw, "1.33"))


def test_schema_rejects_a_misspelt_routing_field():
    if reference.reference_dir() is None:
        unavailable("../shared/reference not present (user checkout): Rollout CRD schema")
    spec = model_service.deployment_spec("m", "img@sha256:" + "0" * 64, model_service.ServingConfig(), "s3://b", [])
    routing = rollout_specs.TrafficRouting("model-server-m", "model-server-m-canary", "model-server-m", "ml-serving")
    ro = argo_rollouts.rollout("model-server-m", "ml-serving", model_service.labels("m"), spec, "m", CanaryConfig(), routing)
    assert manifests.validate(ro, "1.33") == []
    ro["spec"]["strategy"]["canary"]["steps"][0]["setCanaryScale"]["weigth"] = 10
    assert manifests.validate(ro, "1.33") != []
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r"},
        "spec": gateway.http_route_spec("m", "gw", "http", "model-server-m", 8501, "model-server-m-canary"),
    }
    assert manifests.validate(route, "1.33") == []
    route["spec"]["rules"][0]["backendRefs"][1]["weight"] = -1  # the CRD bounds weights to 0..1000000
    assert manifests.validate(route, "1.33") != []


def test_plugin_installed_from_the_chart_values_pinned_to_a_release():
    if reference.reference_dir() is None:
        unavailable("../shared/reference not present (user checkout): argo-rollouts chart values")
    from components.lib import helm

    version = helm.CHARTS["argo-rollouts"][0]
    defaults = reference.chart_values("argo-rollouts", version)
    assert defaults is not None, f"no reference values for argo-rollouts {version}: the pin and the reference disagree"
    values = rollout_specs.chart_values(monitoring=True)
    assert reference.unknown_value_keys(values, defaults, "argo-rollouts") == []
    # The chart's own list (empty by default), rendered verbatim into argo-rollouts-config.
    assert defaults["controller"]["trafficRouterPlugins"] == [] and "name" in defaults["serviceAccount"]
    (plugin,) = values["controller"]["trafficRouterPlugins"]
    assert plugin["name"] == rollout_specs.PLUGIN_NAME == "argoproj-labs/gatewayAPI"
    assert re.fullmatch(r"v\d+\.\d+\.\d+", rollout_specs.PLUGIN_VERSION)
    assert plugin["location"] == (
        "https://github.com/argoproj-labs/rollouts-plugin-trafficrouter-gatewayapi/releases/download/"
        f"{rollout_specs.PLUGIN_VERSION}/gatewayapi-plugin-linux-amd64"
    )
    assert set(plugin) == {"name", "location", "sha256"}
    # The controller verifies the download against the pinned digest (issue 24 item 7).
    assert re.fullmatch(r"[0-9a-f]{64}", plugin["sha256"]) and plugin["sha256"] == rollout_specs.PLUGIN_SHA256


@pytest.mark.parametrize(
    "environment, sha, refused",
    [
        ("prod", None, True),
        ("dev", "", True),
        ("staging", "24816DA0", True),  # not a digest
        ("local", None, False),  # the local stack may run an unpinned plugin (a developer's cluster)
        ("prod", "a" * 64, False),
    ],
)
def test_an_unpinned_plugin_is_refused_outside_the_local_stack(environment, sha, refused):
    from components.services.argo_rollouts import plugin_pin_problem

    problem = plugin_pin_problem(environment, sha)
    assert (problem is not None) is refused
    if problem:
        assert "\n" not in problem and problem.startswith("components/lib/rollout_specs.py: PLUGIN_SHA256: ") and "sha256sum" in problem


def test_without_monitoring_a_model_is_a_deployment_behind_one_backend():
    """No Prometheus, nothing to analyse a canary with: no Rollout, no canary Service, no Role for the
    controller, and the route has the stable Service as its only backend (no weights to manage)."""
    catalogue = stack_config("dev")["mlplatform:models"]
    tf_only = {m: catalogue[m] for m in tf_models("dev")}  # vLLM models need Prometheus (config refuses them without)
    res = mock_engine.run("dev", overrides={"mlplatform:monitoring": {"enabled": False}, "mlplatform:models": tf_only})
    assert named(res, "Rollout") == {}
    deployments = named(res, "Deployment")
    routes, services, roles = named(res, "HTTPRoute"), named(res, "Service"), named(res, "Role")
    for model in tf_models("dev"):
        name = model_service.object_name(model)
        assert name in deployments
        assert model_service.canary_service_name(model) not in services
        assert [r["name"] for r in routes[name].raw["spec"]["rules"][0]["backendRefs"]] == [name]
        assert f"{name}-rollouts" not in roles  # the controller's Role on the route (present with Rollouts)
        # No model before the first up's training publishes one: following the champion, the Deployment
        # is not awaited (it would time out on every first up); a pinned version is awaited.
        pinned = catalogue[model].get("serving", {}).get("version")
        annotations = deployments[name].raw["metadata"].get("annotations") or {}
        assert (annotations.get("pulumi.com/skipAwait") == "true") == (pinned is None), name


def test_without_monitoring_a_pinned_version_is_awaited():
    """The other branch: a pinned version already exists in the store, so its Deployment is awaited."""
    catalogue = stack_config("dev")["mlplatform:models"]
    model = tf_models("dev")[0]
    entry = {**catalogue[model], "serving": {**catalogue[model].get("serving", {}), "version": "20260101T000000Z-run1"}}
    res = mock_engine.run("dev", overrides={"mlplatform:monitoring": {"enabled": False}, "mlplatform:models": {model: entry}})
    deployment = named(res, "Deployment")[model_service.object_name(model)]
    assert "pulumi.com/skipAwait" not in (deployment.raw["metadata"].get("annotations") or {})
