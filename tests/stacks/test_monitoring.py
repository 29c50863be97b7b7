"""Monitoring on every stack: chart values, selection of our objects, CRD ordering, ServiceMonitor wiring."""

from __future__ import annotations

import pytest

from components.cluster.cluster import STORAGE_CLASS
from components.lib import helm
from components.services.monitoring import NODE_EXPORTER_NAMESPACE, ZONE_KEY
from monitoring import spec
from tests.conftest import trains, unavailable
from tools import reference


def kps(result):
    (r,) = [r for r in result.of_type("kubernetes:helm.sh/v3:Release") if r.inputs["chart"] == "kube-prometheus-stack"]
    return r


def crs(result, kind):
    return [r for r in result.of_type("kubernetes:apiextensions.k8s.io:CustomResource") if r.raw["kind"] == kind] or [
        r for r in result.records if r.type == f"kubernetes:monitoring.coreos.com/v1:{kind}"
    ]


def test_alertmanager_enabled_and_routes_by_severity(result):
    am = kps(result).raw["values"]["alertmanager"]
    assert am["enabled"] is True
    routes = {tuple(r["matchers"]): r["receiver"] for r in am["config"]["route"]["routes"]}
    assert routes[('severity = "critical"',)] == "critical" and routes[('severity = "warning"',)] == "warning"
    assert am["config"]["inhibit_rules"]


def test_our_rules_and_monitors_are_selected(result):
    prom = kps(result).raw["values"]["prometheus"]["prometheusSpec"]
    rules = crs(result, "PrometheusRule")
    monitors = crs(result, "ServiceMonitor")
    assert rules and monitors
    for r in rules:
        assert spec.selects(prom, "rule", r.raw["metadata"].get("labels", {})), r.urn
    for m in monitors:
        assert spec.selects(prom, "serviceMonitor", m.raw["metadata"].get("labels", {})), m.urn


def test_chart_defaults_would_ignore_our_objects(result):
    """The trap the values above avoid: with the chart's defaults our objects are not selected."""
    (rule, *_) = crs(result, "PrometheusRule")
    assert not spec.selects({}, "rule", rule.raw["metadata"].get("labels", {}))


def test_custom_resources_wait_for_their_crds(result):
    release = kps(result).urn
    for kind in ("PrometheusRule", "ServiceMonitor"):
        for r in crs(result, kind):
            assert release in r.depends_on, f"{r.urn} does not depend on the release that installs its CRD"


def test_servicemonitor_matches_service_labels_and_port_name(result):
    services = {(s.raw["metadata"]["namespace"], s.raw["metadata"]["name"]): s.raw for s in result.of_type("kubernetes:core/v1:Service")}
    for m in crs(result, "ServiceMonitor"):
        sel = m.raw["spec"]["selector"]["matchLabels"]
        namespaces = m.raw["spec"]["namespaceSelector"]["matchNames"]
        targets = [s for (ns, _), s in services.items() if ns in namespaces and sel.items() <= s["metadata"].get("labels", {}).items()]
        assert targets, f"{m.urn}: selector {sel} matches no Service"
        port_names = {p.get("name") for s in targets for p in s["spec"]["ports"]}
        for ep in m.raw["spec"]["endpoints"]:
            assert ep["port"] in port_names, f"{m.urn}: port {ep['port']!r} not among {port_names}"


def test_every_rule_group_deployed(result):
    deployed = {g["name"] for r in crs(result, "PrometheusRule") for g in r.raw["spec"]["groups"]}
    expected = {g["name"] for groups in spec.rule_groups().values() for g in groups} | {"mlplatform-thresholds"}
    assert deployed == expected


def test_thresholds_follow_the_stack_config(result):
    (t,) = [r for r in crs(result, "PrometheusRule") if r.raw["metadata"]["name"] == "mlplatform-thresholds"]
    exprs = {x["record"]: x["expr"] for x in t.raw["spec"]["groups"][0]["rules"]}
    assert exprs["mlplatform:serving_latency_slo_seconds"].startswith("vector(")


def test_no_secret_in_helm_values(result):
    values = kps(result).raw["values"]
    assert values["grafana"]["admin"]["existingSecret"] == "grafana-admin"
    assert "adminPassword" not in values["grafana"]
    text = str(values)
    assert not any(s in text for s in result.sensitive)


def test_dashboards_carry_the_sidecar_label(result):
    maps = [c for c in result.of_type("kubernetes:core/v1:ConfigMap") if c.raw["metadata"]["name"].startswith("dashboard-")]
    assert len(maps) == len(spec.dashboards())
    sidecar = kps(result).raw["values"]["grafana"]["sidecar"]["dashboards"]
    for c in maps:
        assert c.raw["metadata"]["labels"][sidecar["label"]] == sidecar["labelValue"]


def test_training_pushes_to_the_pushgateway(result):
    if not trains(result.stack):
        pytest.skip(f"{result.stack} trains nothing (its models come from another stack)")
    jobs = [j for j in result.of_type("kubernetes:batch/v1:Job") if j.raw["metadata"]["name"].startswith("train-")]
    assert jobs
    for job in jobs:  # every model's run (an LLM's import Job pushes nothing)
        env = {e["name"]: e.get("value") for e in job.raw["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["TRAIN_PUSHGATEWAY"].startswith("pushgateway-prometheus-pushgateway.monitoring.svc"), job.urn


def test_sidecar_label_is_the_charts_own(result):
    """The label the dashboards carry is the one the Grafana sidecar watches by the chart's default
    (the check used to be skipped silently when the reference data was missing)."""
    defaults = reference.chart_values("kube-prometheus-stack", helm.CHARTS["kube-prometheus-stack"][0])
    if defaults is None:
        unavailable("../shared/reference not present: the chart's default sidecar label is unknown")
    sidecar = kps(result).raw["values"]["grafana"]["sidecar"]["dashboards"]
    assert defaults["grafana"]["sidecar"]["dashboards"]["label"] == sidecar["label"]


def test_prod_monitoring_is_an_ha_set_spread_over_zones(result, stack):
    """Issue 13 item 11: prod Prometheus 2 (an HA pair) and Alertmanager 3, one per zone, each replica
    with its own volume in its zone; the other stacks keep one of each."""
    values = kps(result).raw["values"]
    prom, am = values["prometheus"]["prometheusSpec"], values["alertmanager"]["alertmanagerSpec"]
    want = (2, 3) if stack == "prod" else (1, 1)
    assert (prom["replicas"], am["replicas"]) == want
    for spec_, pdb in ((prom, values["prometheus"]["podDisruptionBudget"]), (am, values["alertmanager"]["podDisruptionBudget"])):
        if spec_["replicas"] > 1:
            assert spec_["podAntiAffinity"] == "hard" and spec_["podAntiAffinityTopologyKey"] == ZONE_KEY
            assert pdb["enabled"] is True and pdb["minAvailable"] < spec_["replicas"]
        else:
            assert "podAntiAffinity" not in spec_ and pdb["enabled"] is False
    # Zone-aware storage: per-replica claims on a WaitForFirstConsumer class (EKS), so each volume is
    # created in the zone its replica was scheduled to.
    eks = bool(result.of_type("eks:index:Cluster"))
    for claim in (prom["storageSpec"], am["storage"]):
        assert claim["volumeClaimTemplate"]["spec"].get("storageClassName") == (STORAGE_CLASS if eks else None)
    if eks:
        (sc,) = [r for r in result.of_type("kubernetes:storage.k8s.io/v1:StorageClass") if r.raw["metadata"]["name"] == STORAGE_CLASS]
        assert sc.raw["volumeBindingMode"] == "WaitForFirstConsumer" and sc.raw["provisioner"] == "ebs.csi.aws.com"


def test_node_exporter_alone_in_a_privileged_namespace(result):
    """Issue 13 item 5: `monitoring` was privileged only for node-exporter."""
    levels = {
        r.raw["metadata"]["name"]: r.raw["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
        for r in result.of_type("kubernetes:core/v1:Namespace")
    }
    assert levels["monitoring"] == "restricted"
    assert levels[NODE_EXPORTER_NAMESPACE] == "privileged"
    assert kps(result).raw["values"]["prometheus-node-exporter"]["namespaceOverride"] == NODE_EXPORTER_NAMESPACE
