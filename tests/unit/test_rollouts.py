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
from tests import promql
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


def prometheus_metrics(tpl):
    return [m for m in tpl["spec"]["metrics"] if "prometheus" in m["provider"]]


def test_every_arg_a_query_uses_is_declared_and_the_rollout_passes_the_rest():
    ro, tpl = rendered()
    declared = {a["name"]: a for a in tpl["spec"]["args"]}
    for m in prometheus_metrics(tpl):
        used = set(re.findall(r"\{\{args\.([\w-]+)\}\}", m["provider"]["prometheus"]["query"]))
        assert used == set(declared), (m["name"], used)
    passed = {a["name"]: a["valueFrom"]["podTemplateHashValue"] for a in ro["spec"]["strategy"]["canary"]["analysis"]["args"]}
    assert passed == {rollout_specs.ARG_CANARY: "Latest", rollout_specs.ARG_STABLE: "Stable"}
    assert {n for n, a in declared.items() if "value" not in a} == set(passed)
    # Canary and stable series are told apart by the pod-template-hash target label only.
    for m in prometheus_metrics(tpl):
        q = m["provider"]["prometheus"]["query"]
        assert f'{rollout_specs.POD_HASH_TARGET_LABEL}="{{{{args.{rollout_specs.ARG_CANARY}}}}}"' in q
        assert f'{rollout_specs.POD_HASH_TARGET_LABEL}="{{{{args.{rollout_specs.ARG_STABLE}}}}}"' in q
        # Warm-up traffic is data: no query filters it out, but the class mix judges user traffic only.
        if m["name"] == rollout_specs.METRIC_CLASSES:
            assert 'traffic!="warmup"' in q and q.count("traffic") == 1
        else:
            assert "traffic" not in q, m["name"]


def test_thresholds_come_from_config():
    canary = CanaryConfig(
        max_error_ratio_increase=0.02, max_client_error_ratio_increase=0.1, max_p99_ratio=2, max_class_psi=0.3, window_seconds=60
    )
    _, tpl = rendered(canary)
    has = "len(result) > 0 && !isNaN(result[0])"
    conditions = {m["name"]: (m["successCondition"], m["failureCondition"]) for m in prometheus_metrics(tpl)}
    assert conditions == {
        rollout_specs.METRIC_ERRORS: (f"{has} && result[0] <= 0.02", f"{has} && result[0] > 0.02"),
        rollout_specs.METRIC_CLIENT_ERRORS: (f"{has} && result[0] <= 0.1", f"{has} && result[0] > 0.1"),
        rollout_specs.METRIC_LATENCY: (f"{has} && result[0] <= 2", f"{has} && result[0] > 2"),
        rollout_specs.METRIC_CLASSES: (f"{has} && result[0] <= 0.3 && result[0] >= 0", f"{has} && result[0] > 0.3"),
    }
    assert all("[60s]" in m["provider"]["prometheus"]["query"] for m in prometheus_metrics(tpl))
    assert all(">= 50)" in m["provider"]["prometheus"]["query"] for m in prometheus_metrics(tpl))  # minRequests' default


@pytest.mark.parametrize("name", rollout_specs.JUDGING_METRICS)
@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ([], "Inconclusive"),  # too little data: the query is empty (never an Error: result[0] is not reached)
        ([float("nan")], "Inconclusive"),
        ([0.05], "Successful"),
        ([5.0], "Failed"),
    ],
)
def test_every_condition_judges_only_a_number(name, result, expected):
    """Argo's rules (utils/evaluate) as the emulator applies them, on each rendered metric."""
    _, tpl = rendered(CanaryConfig(max_error_ratio_increase=0.1, max_client_error_ratio_increase=0.1, max_p99_ratio=1.5, max_class_psi=0.2))
    (metric,) = [m for m in tpl["spec"]["metrics"] if m["name"] == name]
    assert argo.measurement_phase(metric, result) == expected


def test_a_run_without_data_pauses_and_never_fails_or_errors():
    """Measurements that are all Inconclusive (a quiet stack): the run ends Inconclusive -> the
    rollout pauses, after inconclusiveLimit + 1 of them, never before one window's worth."""
    canary = CanaryConfig(window_seconds=120, interval_seconds=30)
    _, tpl = rendered(canary)
    assert rollout_specs.inconclusive_limit(canary) == 4
    analysis = argo.Analysis(tpl, {rollout_specs.ARG_CANARY: "c", rollout_specs.ARG_STABLE: "s"}, "http://unused")
    for n in range(1, 6):
        for m in prometheus_metrics(tpl):
            analysis.results[m["name"]].phases.append(argo.measurement_phase(m, []))
        assert analysis.phase(terminating=False) == ("Running" if n <= 4 else "Inconclusive"), n
    assert analysis.rollout_decision(terminating=False) == "pause"
    phases = analysis.metric_phases(terminating=False)
    assert phases[rollout_specs.METRIC_ERRORS] == "Inconclusive" and "Failed" not in phases.values() and "Error" not in phases.values()


def test_the_class_mix_alone_never_pauses_a_canary():
    """Without user traffic the class mix is inconclusive at every measurement of the canary, and
    the run is decided by the other metrics (promoted when they pass)."""
    canary = CanaryConfig(window_seconds=120, interval_seconds=30)
    _, tpl = rendered(canary)
    analysis = argo.Analysis(tpl, {rollout_specs.ARG_CANARY: "c", rollout_specs.ARG_STABLE: "s"}, "http://unused")
    measurements = rollout_specs.warmup_seconds(canary) // canary.interval_seconds
    for _ in range(measurements):
        for m in prometheus_metrics(tpl):
            value = [] if m["name"] == rollout_specs.METRIC_CLASSES else [0.0]
            analysis.results[m["name"]].phases.append(argo.measurement_phase(m, value))
        assert analysis.phase(terminating=False) == "Running"
    assert analysis.rollout_decision(terminating=True) == "promote"


def test_min_requests_and_warmup_rate_are_validated():
    with pytest.raises(ValueError, match="below minRequests 500"):
        CanaryConfig(min_requests=500, warmup_rate=2, window_seconds=120)
    assert CanaryConfig(min_requests=500, warmup_rate=0).min_requests == 500  # no warm-up: the stack's own traffic
    with pytest.raises(ValueError):
        CanaryConfig(min_requests=0)


def warmup_template(api_key: bool = False):
    cfg = CanaryConfig(steps=[25, 50], step_seconds=300, window_seconds=120, interval_seconds=60, warmup_rate=3)
    w = rollout_specs.Warmup(
        "img@sha256:" + "1" * 64, "http://stable:8501", "http://canary:8501", "model-server-mnist-api-keys" if api_key else None
    )
    return cfg, rollout_specs.analysis_template("mnist", "ml-serving", cfg, warmup=w)


def test_the_warmup_job_runs_the_serving_image_restricted_for_the_whole_canary():
    cfg, tpl = warmup_template()
    (job,) = [m for m in tpl["spec"]["metrics"] if "job" in m["provider"]]
    assert job["name"] == rollout_specs.METRIC_WARMUP and set(job) == {"name", "provider"}  # one measurement, from the start
    spec = job["provider"]["job"]["spec"]
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "img@sha256:" + "1" * 64 and c["command"] == ["python", "-m", "serving.warmup"]
    seconds = 120 + 2 * 300 + 2 * 60 + 120
    assert c["args"] == [
        "--canary",
        "http://canary:8501",
        "--stable",
        "http://stable:8501",
        "--model",
        "mnist",
        "--rate",
        "3",
        "--duration",
        str(seconds),
    ]
    assert spec["activeDeadlineSeconds"] > seconds and pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False and pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert set(c["resources"]["limits"]) == {"cpu", "memory"}
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    # The pods carry the labels the server's NetworkPolicy admits.
    assert spec["template"]["metadata"]["labels"] == rollout_specs.warmup_labels("mnist")
    _, keyed = warmup_template(api_key=True)
    env = keyed["spec"]["metrics"][0]["provider"]["job"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "WARMUP_API_KEY", "valueFrom": {"secretKeyRef": {"name": "model-server-mnist-api-keys", "key": "keys"}}} in env


def test_template_with_the_warmup_job_is_valid_against_the_crd():
    need_reference()
    _, tpl = warmup_template(api_key=True)
    assert manifests.validate(tpl, "1.33") == []


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
    ("expr", "result", "expected"),
    [
        ("len(result) > 0 && result[0] < 1", [], False),  # && short-circuits: result[0] is never read
        ("len(result) == 0 || result[0] < 1", [], True),
        ("!isNaN(result[0]) && result[0] < 1", [float("nan")], False),
        ("isNaN(result[0])", [float("nan")], True),
    ],
)
def test_len_isnan_and_short_circuit(expr, result, expected):
    assert argo.condition(expr, result) is expected


@pytest.mark.parametrize("expr", ["result[0] <= 0.2 and true", "isInf(result[0])", "result[0] + 1 > 2", "result[0.5] > 1"])
def test_conditions_outside_the_subset_fail_loudly(expr):
    with pytest.raises(argo.Unsupported):
        argo.condition(expr, [1.0])


def test_runtime_errors_are_measurement_errors():
    for expr, result in [("result[0] > 1", []), ("len(result) > 0", 1.0), ("isNaN(result)", [1.0])]:
        with pytest.raises(argo.MeasurementError):
            argo.condition(expr, result)


def test_measurement_and_metric_phases_follow_argo():
    only_ok = {"successCondition": "result[0] <= 1"}
    assert argo.measurement_phase(only_ok, [2.0]) == "Failed"
    assert argo.measurement_phase(only_ok, []) == "Error"  # empty vector: index out of range
    both = {"successCondition": "result[0] < 1", "failureCondition": "result[0] > 2"}
    assert argo.measurement_phase(both, [1.5]) == "Inconclusive"
    assert argo.measurement_phase({"failureCondition": "result[0] > 2"}, [1.0]) == "Successful"
    every = {"interval": "5s"}  # measured until the run ends (no count: EffectiveCount is none)
    r = argo.MetricResult("m", phases=["Successful", "Failed"])
    assert r.assess({**every, "failureLimit": 1}, terminating=False) == "Running"
    assert r.assess({**every, "failureLimit": 1}, terminating=True) == "Successful"
    r.phases.append("Failed")
    assert r.assess({**every, "failureLimit": 1}, terminating=False) == "Failed"
    errors = argo.MetricResult("m", phases=["Error"] * 4)
    assert errors.assess(every, terminating=False) == "Running"
    errors.phases.append("Error")
    assert errors.assess(every, terminating=False) == "Error"
    # No interval and no count: one measurement (the warm-up Job's metric).
    assert argo.MetricResult("m", phases=[]).assess({}, terminating=False) == "Running"
    assert argo.MetricResult("m", phases=["Successful"]).assess({}, terminating=False) == "Successful"
    assert argo.MetricResult("m", phases=["Failed"]).assess({}, terminating=False) == "Failed"


def test_rendered_template_args_substitute_completely():
    _, tpl = rendered()
    analysis = argo.Analysis(tpl, {rollout_specs.ARG_CANARY: "abc", rollout_specs.ARG_STABLE: "def"}, "http://unused")
    for q in analysis.queries().values():
        assert "{{" not in q and 'rollouts_pod_template_hash="abc"' in q and 'model="mnist"' in q
    with pytest.raises(argo.MeasurementError, match="canary-hash"):
        argo.Analysis(tpl, {rollout_specs.ARG_STABLE: "def"}, "http://unused")


# ---- the rendered queries on promtool (a real PromQL engine): data or nothing ----

PROM_CANARY = CanaryConfig(
    window_seconds=60, interval_seconds=30, min_requests=20, min_class_samples=20, warmup_rate=1, max_error_ratio_increase=0.05
)
LABELS = 'model="mnist",namespace="ml-serving"'


def _requests(side: str, code: str, per_step: int) -> dict:
    """A predict counter of one side and code, rising ``per_step`` every 15 s (0: flat at 100)."""
    values = f"0+{per_step}x40" if per_step else "100x40"
    return {
        "series": f'mlplatform_serving_requests_total{{{LABELS},rollouts_pod_template_hash="{side}",route="predict",code="{code}"}}',
        "values": values,
    }


def _latency(side: str, seconds_bucket: str, per_step: int) -> list[dict]:
    """Every request of ``side`` in the bucket ending at ``seconds_bucket``."""
    out = []
    for le in ("0.05", "0.1", "0.5", "+Inf"):
        n = per_step if float(le) >= float(seconds_bucket) else 0
        values = f"0+{n}x40" if per_step else "100x40"
        out.append(
            {
                "series": f'mlplatform_serving_request_duration_seconds_bucket{{{LABELS},rollouts_pod_template_hash="{side}",le="{le}"}}',
                "values": values,
            }
        )
    return out


def _classes(side: str, mix: dict[str, int]) -> list[dict]:
    return [
        {
            "series": f'mlplatform_serving_predicted_class_total{{{LABELS},rollouts_pod_template_hash="{side}",class="{c}"}}',
            "values": f"0+{n}x40" if n else "100x40",
        }
        for c, n in mix.items()
    ]


def _side(side: str, ok: int, errors: int = 0, client: int = 0, bucket: str = "0.05", mix: dict[str, int] | None = None) -> list[dict]:
    series = [_requests(side, "200", ok)]
    series += [_requests(side, "500", errors)] if errors else []
    series += [_requests(side, "400", client)] if client else []
    return series + _latency(side, bucket, ok + errors + client) + _classes(side, mix or {"0": ok // 2, "1": ok - ok // 2})


GOOD = _side("s", 10)
# scenario -> (input series, {metric: expected value of `query > bool bound` at 5m: None = empty vector})
SCENARIOS = {
    "no series at all": ([{"series": 'up{job="other"}', "values": "1x40"}], dict.fromkeys(rollout_specs.JUDGING_METRICS)),
    "flat counters (no request in the window)": (_side("c", 0) + _side("s", 0), dict.fromkeys(rollout_specs.JUDGING_METRICS)),
    # 2 per 15 s = 8 per minute < minRequests 20, even with every one of them a 500, slow and one class
    "canary below the minimum": (_side("c", 0, errors=2, bucket="0.5", mix={"9": 2}) + GOOD, dict.fromkeys(rollout_specs.JUDGING_METRICS)),
    "stable below the minimum": (_side("c", 10) + _side("s", 2), dict.fromkeys(rollout_specs.JUDGING_METRICS)),
    "good canary": (_side("c", 10) + GOOD, dict.fromkeys(rollout_specs.JUDGING_METRICS, 0)),
    "5xx canary": (_side("c", 10, errors=10) + GOOD, {**dict.fromkeys(rollout_specs.JUDGING_METRICS, 0), rollout_specs.METRIC_ERRORS: 1}),
    # 8 of 10 requests refused: too few predictions left for the class mix (empty), the 4xx change fails.
    "400 storm (a broken contract)": (
        _side("c", 2, client=8) + GOOD,
        {**dict.fromkeys(rollout_specs.JUDGING_METRICS, 0), rollout_specs.METRIC_CLIENT_ERRORS: 1, rollout_specs.METRIC_CLASSES: None},
    ),
    "slow canary": (
        _side("c", 10, bucket="0.5") + GOOD,
        {**dict.fromkeys(rollout_specs.JUDGING_METRICS, 0), rollout_specs.METRIC_LATENCY: 1},
    ),
    # A quiet stack: every request is warm-up traffic. The class mix is not judged on it (empty), the rest is.
    "warm-up traffic only": (
        [{**x, "series": x["series"].replace('route="predict"', 'route="predict",traffic="warmup"')} for x in _side("c", 10) + GOOD],
        {**dict.fromkeys(rollout_specs.JUDGING_METRICS, 0), rollout_specs.METRIC_CLASSES: None},
    ),
    "other class mix": (
        _side("c", 10, mix={"0": 1, "7": 9}) + GOOD,
        {**dict.fromkeys(rollout_specs.JUDGING_METRICS, 0), rollout_specs.METRIC_CLASSES: 1},
    ),
}


def bounds(canary: CanaryConfig) -> dict[str, float]:
    return {
        rollout_specs.METRIC_ERRORS: canary.max_error_ratio_increase,
        rollout_specs.METRIC_CLIENT_ERRORS: canary.max_client_error_ratio_increase,
        rollout_specs.METRIC_LATENCY: canary.max_p99_ratio,
        rollout_specs.METRIC_CLASSES: canary.max_class_psi,
    }


def test_rendered_queries_on_promtool_judge_only_with_data(tmp_path):
    """`promtool test rules` evaluates each rendered query (args substituted as the AnalysisRun does)
    at 5 min over each scenario: empty (-> Inconclusive) without enough data on both sides, else
    above its bound (1, Failed) exactly where the canary is bad."""
    _, tpl = rendered(PROM_CANARY)
    args = argo.resolve_args(tpl, {rollout_specs.ARG_CANARY: "c", rollout_specs.ARG_STABLE: "s"})
    queries = {m["name"]: argo.substitute(m["provider"]["prometheus"]["query"], args) for m in prometheus_metrics(tpl)}
    tests = []
    for name, (series, expected) in SCENARIOS.items():
        exprs = [
            {
                "expr": f"({queries[metric]}) > bool {bounds(PROM_CANARY)[metric]:g}",
                "eval_time": "5m",
                "exp_samples": [] if value is None else [{"labels": "{}", "value": value}],
            }
            for metric, value in expected.items()
        ]
        tests.append({"name": name, "interval": "15s", "input_series": series, "promql_expr_test": exprs})
    proc = promql.run_tests(tmp_path, tests)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
