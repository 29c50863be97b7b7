"""Alert rules and dashboards: promtool check + unit tests for every rule, annotations, runbooks,
and every PromQL metric name is one our code or the named exporters really emit."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from monitoring import spec
from tests.conftest import ROOT

TESTS_DIR = ROOT / "monitoring" / "tests"
ALERTS = [(stem, r) for stem, groups in spec.rule_groups().items() for g in groups for r in g["rules"] if "alert" in r]


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not installed: apt-get install prometheus (.ci/run does)")
    return path


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory) -> Path:
    """Plain Prometheus rule files (the PrometheusRule specs) + default thresholds, + the tests."""
    d = tmp_path_factory.mktemp("rules")
    for stem, groups in spec.rule_groups().items():
        (d / f"{stem}.yaml").write_text(yaml.safe_dump({"groups": groups}))
    (d / "thresholds.yaml").write_text(yaml.safe_dump({"groups": [spec.threshold_rules()]}))
    for t in TESTS_DIR.glob("*.test.yaml"):
        (d / t.name).write_text(yaml.safe_dump(with_runbook_urls(yaml.safe_load(t.read_text()))))
    return d


def with_runbook_urls(tests: dict) -> dict:
    """The expected annotations of every firing alert plus the runbook link, in the one pattern
    spec.runbook_url applies to every rule (so the test files carry no copies of it either)."""
    for case in tests["tests"]:
        for a in case.get("alert_rule_test", []):
            for exp in a.get("exp_alerts") or []:
                exp.setdefault("exp_annotations", {})["runbook_url"] = spec.runbook_url(a["alertname"])
    return tests


def test_promtool_check_rules(rules_dir):
    files = sorted(str(p) for p in rules_dir.glob("*.yaml") if not p.name.endswith(".test.yaml"))
    proc = subprocess.run([promtool(), "check", "rules", *files], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("test_file", sorted(p.name for p in TESTS_DIR.glob("*.test.yaml")))
def test_promtool_unit_tests(rules_dir, test_file):
    proc = subprocess.run([promtool(), "test", "rules", test_file], cwd=rules_dir, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_firing_and_a_quiet_case():
    tested_firing, tested_quiet = set(), set()
    for t in TESTS_DIR.glob("*.test.yaml"):
        for case in yaml.safe_load(t.read_text())["tests"]:
            for a in case.get("alert_rule_test", []):
                (tested_firing if a["exp_alerts"] else tested_quiet).add(a["alertname"])
                # series given to a firing case that do not appear in exp_alerts are the quiet case
                if a["exp_alerts"] and len(case["input_series"]) > len(a["exp_alerts"]):
                    tested_quiet.add(a["alertname"])
    names = {r["alert"] for _, r in ALERTS}
    assert names - tested_firing == set(), "alerts without a firing test"
    assert names - tested_quiet == set(), "alerts without a not-firing test"


@pytest.mark.parametrize("stem,rule", ALERTS, ids=[r["alert"] for _, r in ALERTS])
def test_alert_is_actionable(stem, rule):
    assert rule["annotations"]["runbook_url"] == spec.runbook_url(rule["alert"]), "one pattern for every runbook link"
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    for key in ("summary", "description", "runbook_url"):
        assert rule["annotations"].get(key), f"{rule['alert']}: no {key}"
    anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    assert f"## {rule['alert']}" in runbooks and anchor == rule["alert"].lower(), f"no runbook section for {rule['alert']}"


@functools.cache
def vllm_exposed() -> set[str] | None:
    """vLLM's series names as scraped: the registered names of the pinned vLLM (the list derived from
    vllm/v1/metrics/loggers.py and two helpers, ../shared/reference/vllm/<version>/metrics.tsv) with
    prometheus_client's exposition suffixes: counters ``_total`` (not doubled), histograms
    ``_bucket``/``_sum``/``_count``, gauges as they are. None when the reference is absent."""
    from components.config.llm import VLLM_VERSION
    from tools import reference

    ref = reference.reference_dir()
    path = ref / "vllm" / VLLM_VERSION / "metrics.tsv" if ref else None
    if path is None or not path.exists():
        return None
    names: set[str] = set()
    for line in path.read_text().splitlines()[1:]:
        name, kind = line.split("\t")[:2]
        if kind == "counter":
            names.add(name if name.endswith("_total") else f"{name}_total")
        elif kind == "histogram":
            names |= {f"{name}_{s}" for s in ("bucket", "sum", "count")}
        else:
            names.add(name)
    return names


# Metric names our code emits, and those of the exporters the rules and dashboards rely on.
def _emitted() -> set[str]:
    names: set[str] = set()
    for path in ("serving/metrics.py", "training/metrics.py", "llm/finetune.py"):  # finetune: the LoRA run's pushed gauges
        names |= set(re.findall(r'"(mlplatform_[a-z_]+)"', (ROOT / path).read_text()))
    hist = {n for n in names if n.endswith(("_seconds", "_size")) and "timestamp" not in n}
    names |= {f"{n}_{s}" for n in hist for s in ("bucket", "sum", "count")}
    # DCGM exporter default counters (dcgm-exporter etc/default-counters.csv field names)
    names |= {
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_FB_USED",
        "DCGM_FI_DEV_FB_FREE",
        "DCGM_FI_DEV_GPU_TEMP",
        "DCGM_FI_DEV_XID_ERRORS",
        "DCGM_FI_DEV_POWER_USAGE",
    }
    # kube-state-metrics, Prometheus itself
    names |= {
        "kube_job_status_failed",
        "kube_deployment_status_replicas_available",
        "kube_deployment_spec_replicas",
        "kube_pod_container_status_restarts_total",
        "up",
    }
    # Kueue (kubernetes-sigs/kueue site/content/en/docs/reference/metrics.md, v0.19)
    names |= {"kueue_pending_workloads", "kueue_admitted_workloads_total"}
    names |= {"kube_pod_status_ready", "kube_statefulset_status_replicas_ready"}  # kube-state-metrics
    names |= {"kube_job_created", "kube_cronjob_created"}  # kube-state-metrics docs/metrics/workload (STABLE)
    # kube-state-metrics docs/metrics/workload job-metrics.md and pod-metrics.md (STABLE): the LLM weights' alerts
    names |= {"kube_job_failed", "kube_pod_init_container_status_restarts_total"}
    # vLLM's HTTP counter (prometheus-fastapi-instrumentator, attached by vllm/entrypoints/serve/instrumentator/metrics.py)
    # and the golden Job's counts (llm/golden.py): the LLM dashboard's canary panels
    names |= {"http_requests_total", "mlplatform_llm_golden_answers_total"}
    # Argo Rollouts controller (argoproj/argo-rollouts controller/metrics/prommetrics.go, v1.9)
    names |= {"rollout_info", "rollout_info_replicas_available", "rollout_info_replicas_desired", "analysis_run_info"}
    names |= vllm_exposed() or set()
    # our recording rules
    names |= {r["record"] for r in spec.threshold_rules()["rules"]}
    return names


FUNCS = {
    "sum",
    "rate",
    "increase",
    "max",
    "min",
    "avg",
    "count",
    "by",
    "on",
    "histogram_quantile",
    "label_replace",
    "scalar",
    "absent",
    "vector",
    "time",
    "or",
    "and",
    "unless",
    "avg_over_time",
    "max_over_time",
    "offset",
    "le",
    "bool",
    "group_left",
    "ignoring",
    "without",
}


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r'"[^"]*"', "", expr)  # string arguments (label_replace): never metric names
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\boffset\s+\d+[smhdwy]", "", expr)
    expr = re.sub(r"\([^()]*?\)", lambda m: m.group(0) if re.search(r"[a-zA-Z_:]", m.group(0)) else "", expr)
    tokens = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    by_labels = set(re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr))
    labels = {x.strip() for group in by_labels for x in group.split(",")}
    return {t for t in tokens if t not in FUNCS and t not in labels}


def _exprs():
    for _, r in ALERTS:
        yield f"rule {r['alert']}", r["expr"]
    for stem, body in spec.dashboards().items():
        import json

        for p in json.loads(body)["panels"]:
            for t in p["targets"]:
                yield f"dashboard {stem} / {p['title']}", t["expr"]


@pytest.mark.parametrize("where,expr", list(_exprs()), ids=[w for w, _ in _exprs()])
def test_promql_uses_real_metric_names(where, expr):
    if "vllm:" in expr and vllm_exposed() is None:
        from tests.conftest import unavailable

        unavailable("../shared/reference/vllm not present: no vLLM metric list to check against")
    unknown = metric_names(expr) - _emitted()
    assert unknown == set(), f"{where}: {unknown} is emitted by nothing we run"


def test_metric_name_extraction_catches_typos():
    assert metric_names('sum by (code) (rate(mlplatform_serving_requsts_total{route="predict"}[1m]))') == {
        "mlplatform_serving_requsts_total"
    }


def test_vllm_names_are_the_exposed_ones():
    exposed = vllm_exposed()
    if exposed is None:
        from tests.conftest import unavailable

        unavailable("../shared/reference/vllm not present")
    # a counter is scraped as <name>_total, a histogram as <name>_bucket/_sum/_count: the registered
    # names themselves are no series, so a rule using them would silently match nothing
    assert {"vllm:num_preemptions_total", "vllm:time_to_first_token_seconds_bucket", "vllm:num_requests_waiting"} <= exposed
    assert {"vllm:num_preemptions", "vllm:time_to_first_token_seconds"} & exposed == set()
    assert "vllm:estimated_flops_per_gpu_total_total" not in exposed
    assert metric_names("rate(vllm:num_preemptions[5m])") - _emitted() == {"vllm:num_preemptions"}


def test_dashboards_are_grafana_json():
    import json

    boards = spec.dashboards()
    assert set(boards) == {"model-service", "training", "gpus", "llm"}
    for stem, body in boards.items():
        d = json.loads(body)
        assert d["uid"].startswith("mlplatform-") and d["panels"], stem
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), f"{stem}: duplicate panel ids"


@pytest.mark.parametrize("slack,smtp", [(False, False), (True, True)])
def test_alertmanager_config_is_valid(tmp_path, slack, smtp):
    from types import SimpleNamespace

    amtool = shutil.which("amtool") or shutil.which("prometheus-alertmanager-amtool")
    if amtool is None:
        pytest.fail("amtool not installed: apt-get install prometheus-alertmanager (.ci/run does)")
    alerting = SimpleNamespace(
        webhook_url="https://hooks.example.com/x",
        slack_channel="#a",
        email_to="a@example.com",
        smtp_smarthost="smtp:587",
        smtp_from="am@example.com",
    )
    (tmp_path / "am.yaml").write_text(yaml.safe_dump(spec.alertmanager_config(alerting, slack, smtp)))
    proc = subprocess.run([amtool, "check-config", str(tmp_path / "am.yaml")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_runbook_links_are_set_in_one_place():
    """No rule or test file hand-copies a runbook URL (33 did); a stack's alerting.runbooksUrl moves them all."""
    copies = [p.name for p in sorted((ROOT / "monitoring").rglob("*.yaml")) if "runbook_url" in p.read_text()]
    assert copies == []
    moved = spec.rule_groups("https://git.example.com/ops/ml/-/blob/main/docs/runbooks.md")
    urls = {r["annotations"]["runbook_url"] for gs in moved.values() for g in gs for r in g["rules"] if "alert" in r}
    assert urls and all(u.startswith("https://git.example.com/ops/ml/-/blob/main/docs/runbooks.md#") for u in urls)


def test_a_rule_file_cannot_bring_its_own_runbook_link(tmp_path, monkeypatch):
    rule = {"alert": "X", "expr": "vector(1)", "annotations": {"runbook_url": "https://elsewhere/#x"}}
    (tmp_path / "x.yaml").write_text(yaml.safe_dump({"spec": {"groups": [{"name": "g", "rules": [rule]}]}}))
    monkeypatch.setattr(spec, "RULES_DIR", tmp_path)
    with pytest.raises(ValueError, match="x.yaml: X sets runbook_url itself"):
        spec.rule_groups()


# Repository paths the comments of rule and test files point at (upstream paths such as vLLM's are
# not under these prefixes).
REPO_PREFIXES = ("components/", "monitoring/", "tests/", "tools/", "serving/", "training/", "docs/", "policy/")


def test_comments_point_at_files_that_exist():
    """Comments in monitoring/**/*.yaml named tests/monitoring/test_rules.py and
    components/services/monitoring.py:threshold_rules after both had moved."""
    stale = []
    for path in sorted((ROOT / "monitoring").rglob("*.yaml")):
        for line in path.read_text().splitlines():
            if not line.lstrip().startswith("#"):
                continue
            for ref in re.findall(r"[\w./-]+\.(?:py|yaml|md|json)", line):
                if ref.startswith(REPO_PREFIXES) and not (ROOT / ref).exists():
                    stale.append(f"{path.relative_to(ROOT)}: {ref}")
            for module, func in re.findall(r"([\w/]+\.py): (\w+)", line):
                if module.startswith(REPO_PREFIXES) and (ROOT / module).exists() and f"def {func}(" not in (ROOT / module).read_text():
                    stale.append(f"{path.relative_to(ROOT)}: {module}: {func}")
    assert stale == []
