"""Argo Rollouts objects (components/lib/rollout_specs.py, components/services/argo_rollouts.py): the model
service's Rollout, its AnalysisTemplate and the chart values, validated against Argo Rollouts v1.9.0's
CRD schemas and chart 2.41.0's values; the weights a replica-ratio canary really gets; and the analysis
emulation the e2e test decides with."""

from __future__ import annotations

import re

import pytest
import yaml

from components.config import CanaryConfig, ServingConfig
from components.lib import helm, rollout_specs
from components.models import model_service
from components.services import argo_rollouts
from tests.conftest import unavailable
from tests.monitoring import argo_analysis as argo
from tools import manifests, reference


def need_reference():
    if reference.reference_dir() is None:
        unavailable("../shared/reference not present (user checkout): Argo Rollouts CRD schemas and chart values")


def rendered(canary: CanaryConfig | None = None):
    cfg = ServingConfig(canary=canary or CanaryConfig())
    spec = model_service.deployment_spec("mnist", "img@sha256:" + "0" * 64, cfg, "s3://bucket", [])
    ro = argo_rollouts.rollout("model-server-mnist", "ml-serving", model_service.labels("mnist"), spec, "mnist", cfg.canary)
    return ro, rollout_specs.analysis_template("mnist", "ml-serving", cfg.canary)


def test_rollout_and_analysis_template_valid_against_the_crds():
    need_reference()
    for obj in rendered():
        assert reference.crd_schema(obj["kind"]) is not None, f"no reference schema for {obj['kind']}"
        assert manifests.validate(obj, "1.33") == [], obj["kind"]


def test_schema_check_is_strict():
    need_reference()
    ro, tpl = rendered()
    ro["spec"]["strategy"]["canary"]["stepz"] = []
    tpl["spec"]["metrics"][0]["sucessCondition"] = "true"
    assert manifests.validate(ro, "1.33") != [] and manifests.validate(tpl, "1.33") != []


def test_chart_values_exist_in_the_chart_and_the_image_is_its_app_version():
    need_reference()
    version = helm.CHARTS["argo-rollouts"][0]
    defaults = reference.chart_values("argo-rollouts", version)
    assert defaults is not None, f"no reference values for argo-rollouts {version}"
    for monitoring in (True, False):
        assert reference.unknown_value_keys(rollout_specs.chart_values(monitoring), defaults, "argo-rollouts") == []
    chart = yaml.safe_load((reference.reference_dir() / "charts" / "argo-rollouts" / version / "Chart.yaml").read_text())
    assert rollout_specs.chart_values(False)["controller"]["image"]["tag"] == chart["appVersion"] == rollout_specs.VERSION
    # Every provider the chart would grant RBAC for is switched off (the Gateway API plugin gets a Role per route instead).
    assert set(rollout_specs.chart_values(False)["providerRBAC"]["providers"]) == set(defaults["providerRBAC"]["providers"])


def test_steps_come_from_config_and_the_analysis_runs_from_the_first_step():
    ro, tpl = rendered(CanaryConfig(steps=[10, 40, 80], step_seconds=120))
    canary = ro["spec"]["strategy"]["canary"]
    assert canary["steps"] == [
        {"setWeight": 10},
        {"pause": {"duration": "120s"}},
        {"setWeight": 40},
        {"pause": {"duration": "120s"}},
        {"setWeight": 80},
        {"pause": {"duration": "120s"}},
    ]
    assert "startingStep" not in canary["analysis"]  # background analysis from the start
    assert canary["analysis"]["templates"] == [{"templateName": tpl["metadata"]["name"]}]
    assert canary["maxUnavailable"] == 0
    # The Deployment's pod template, selector and replicas, unchanged; no RollingUpdate strategy left.
    spec = model_service.deployment_spec("mnist", "img@sha256:" + "0" * 64, ServingConfig(), "s3://bucket", [])
    assert ro["spec"]["template"] == argo_rollouts.plain(spec["template"]) and ro["spec"]["selector"] == spec["selector"]
    assert ro["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert "rollingUpdate" not in ro["spec"]["strategy"]


def test_every_arg_a_query_uses_is_declared_and_the_rollout_passes_the_rest():
    ro, tpl = rendered()
    declared = {a["name"]: a for a in tpl["spec"]["args"]}
    for m in tpl["spec"]["metrics"]:
        used = set(re.findall(r"\{\{args\.([\w-]+)\}\}", m["provider"]["prometheus"]["query"]))
        assert used == set(declared), (m["name"], used)
    passed = {a["name"]: a["valueFrom"]["podTemplateHashValue"] for a in ro["spec"]["strategy"]["canary"]["analysis"]["args"]}
    assert passed == {rollout_specs.ARG_CANARY: "Latest", rollout_specs.ARG_STABLE: "Stable"}
    assert {n for n, a in declared.items() if "value" not in a} == set(passed)
    # Canary and stable series are told apart by the pod-template-hash target label only.
    for m in tpl["spec"]["metrics"]:
        q = m["provider"]["prometheus"]["query"]
        assert f'{rollout_specs.POD_HASH_TARGET_LABEL}="{{{{args.{rollout_specs.ARG_CANARY}}}}}"' in q
        assert f'{rollout_specs.POD_HASH_TARGET_LABEL}="{{{{args.{rollout_specs.ARG_STABLE}}}}}"' in q


def test_thresholds_come_from_config():
    _, tpl = rendered(CanaryConfig(max_error_ratio_increase=0.02, max_p99_ratio=2, max_class_psi=0.3, window_seconds=60))
    conditions = {m["name"]: m["successCondition"] for m in tpl["spec"]["metrics"]}
    assert conditions == {
        rollout_specs.METRIC_ERRORS: "result[0] <= 0.02",
        rollout_specs.METRIC_LATENCY: "result[0] <= 2",
        rollout_specs.METRIC_CLASSES: "result[0] >= 0 && result[0] <= 0.3",
    }
    (classes,) = [m for m in tpl["spec"]["metrics"] if m["name"] == rollout_specs.METRIC_CLASSES]
    assert classes["failureCondition"] == "result[0] > 0.3"
    # Too few canary predictions: the query answers -1, neither success nor failure.
    assert argo.measurement_phase(classes, [-1.0]) == "Inconclusive"
    assert argo.measurement_phase(classes, [0.31]) == "Failed" and argo.measurement_phase(classes, [0.1]) == "Successful"
    assert ">= 200)) or on () vector(-1)" in classes["provider"]["prometheus"]["query"]
    assert all("[60s]" in m["provider"]["prometheus"]["query"] for m in tpl["spec"]["metrics"])


@pytest.mark.parametrize(
    ("replicas", "weight", "expected"),
    [
        # 2 replicas: 1..41 % is 1 canary pod next to 2 stable ones; 42..58 % is 1:1; 59..99 % is 2:1
        # (Argo picks the pod split closest to the weight; all of Argo's own cases: tests/stacks/test_traffic_routing.py).
        (2, 10, (1, 2, 100 / 3)),
        (2, 25, (1, 2, 100 / 3)),
        (2, 50, (1, 1, 50.0)),
        (2, 51, (1, 1, 50.0)),
        (2, 75, (2, 1, 200 / 3)),
        # 3 replicas: 1..29 % is 25 %, 30..41 % is 33 %, 42..58 % is 50 %, 59..70 % is 67 %, 71..99 % is 75 %.
        (3, 10, (1, 3, 25.0)),
        (3, 33, (1, 2, 100 / 3)),
        (3, 34, (1, 2, 100 / 3)),
        (3, 50, (2, 2, 50.0)),
        (3, 67, (2, 1, 200 / 3)),
        (3, 75, (3, 1, 75.0)),
        (1, 25, (1, 1, 50.0)),
        (10, 25, (3, 8, 300 / 11)),
    ],
)
def test_replica_ratio_weights_as_argo_rollouts_scales_them(replicas, weight, expected):
    canary, stable, share = rollout_specs.effective_weight(replicas, weight)
    assert (canary, stable) == expected[:2] and share == pytest.approx(expected[2])


def test_canary_steps_must_increase():
    with pytest.raises(ValueError, match="canary weights must increase"):
        CanaryConfig(steps=[50, 25])


# The analysis emulation the e2e test decides with: Argo's measurement and metric rules.


@pytest.mark.parametrize(
    ("expr", "result", "expected"),
    [
        ("result[0] <= 0.2", [0.1], True),
        ("result[0] <= 0.2", [0.3], False),
        ("result[0] <= 0.2", [float("nan")], False),
        ("result[1] > 1 && result[0] < 1", [0.5, 2.0], True),
        ("!(result[0] > 1) || result[0] == 7", [7.0], True),
        ("result < 3", 2.0, True),
    ],
)
def test_condition_subset(expr, result, expected):
    assert argo.condition(expr, result) is expected


@pytest.mark.parametrize(
    "expr", ["len(result) > 0", "result[0] <= 0.2 and true", "isNaN(result[0])", "result[0] + 1 > 2", "result[0.5] > 1"]
)
def test_conditions_outside_the_subset_fail_loudly(expr):
    with pytest.raises(argo.Unsupported):
        argo.condition(expr, [1.0])


def test_measurement_and_metric_phases_follow_argo():
    only_ok = {"successCondition": "result[0] <= 1"}
    assert argo.measurement_phase(only_ok, [2.0]) == "Failed"
    assert argo.measurement_phase(only_ok, []) == "Error"  # empty vector: index out of range
    both = {"successCondition": "result[0] < 1", "failureCondition": "result[0] > 2"}
    assert argo.measurement_phase(both, [1.5]) == "Inconclusive"
    assert argo.measurement_phase({"failureCondition": "result[0] > 2"}, [1.0]) == "Successful"
    r = argo.MetricResult("m", phases=["Successful", "Failed"])
    assert r.assess({"failureLimit": 1}, terminating=False) == "Running"
    assert r.assess({"failureLimit": 1}, terminating=True) == "Successful"
    r.phases.append("Failed")
    assert r.assess({"failureLimit": 1}, terminating=False) == "Failed"
    errors = argo.MetricResult("m", phases=["Error"] * 4)
    assert errors.assess({}, terminating=False) == "Running"
    errors.phases.append("Error")
    assert errors.assess({}, terminating=False) == "Error"


def test_rendered_template_args_substitute_completely():
    _, tpl = rendered()
    analysis = argo.Analysis(tpl, {rollout_specs.ARG_CANARY: "abc", rollout_specs.ARG_STABLE: "def"}, "http://unused")
    for q in analysis.queries().values():
        assert "{{" not in q and 'rollouts_pod_template_hash="abc"' in q and 'model="mnist"' in q
    with pytest.raises(argo.MeasurementError, match="canary-hash"):
        argo.Analysis(tpl, {rollout_specs.ARG_STABLE: "def"}, "http://unused")
