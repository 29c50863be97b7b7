"""KEDA on every stack: installed where models and Prometheus are, every ScaledObject waits for it and
queries the stack's Prometheus, and the NetworkPolicies on both sides let that query through."""

from __future__ import annotations

import yaml

from components.lib import keda_specs
from monitoring import spec
from tests.conftest import ROOT


def stack_cfg(stack):
    return yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]


def scalers(result):
    return [r for r in result.k8s_objects() if r.raw["kind"] == "ScaledObject"]


def policy(result, namespace, name):
    (r,) = [
        r
        for r in result.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")
        if r.raw["metadata"]["namespace"] == namespace and r.raw["metadata"]["name"] == name
    ]
    return r.raw["spec"]


def test_keda_where_models_scale_on_prometheus(result, stack):
    cfg = stack_cfg(stack)
    releases = [r for r in result.of_type("kubernetes:helm.sh/v3:Release") if r.inputs["chart"] == "keda"]
    monitored = cfg.get("mlplatform:monitoring", {}).get("enabled", True) and bool(cfg.get("mlplatform:models"))
    assert len(releases) == int(monitored)
    # one per served model; a LoRA adapter has none (its base's vLLM serves it: docs/lora.md)
    served = [m for m, e in cfg["mlplatform:models"].items() if not (e or {}).get("adapterOf")]
    assert len(scalers(result)) == (len(served) if monitored else 0)
    for so in scalers(result):
        assert releases[0].urn in so.depends_on, f"{so.urn} does not wait for the chart that installs its CRD"


def test_scalers_query_this_stacks_prometheus(result):
    url = f"http://{spec.RELEASE}-prometheus.monitoring.svc.cluster.local:9090"
    assert keda_specs.PROMETHEUS_URL == url
    for so in scalers(result):
        (prom,) = [t for t in so.raw["spec"]["triggers"] if t["type"] == "prometheus"]
        assert prom["metadata"]["serverAddress"] == url, so.urn


def test_network_policies_let_keda_query_prometheus(result):
    if not scalers(result):
        return
    egress = policy(result, keda_specs.NAMESPACE, "keda")["egress"]
    to_prometheus = [
        rule
        for rule in egress
        if {"protocol": "TCP", "port": 9090} in rule.get("ports", [])
        and {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}} in rule.get("to", [])
    ]
    assert to_prometheus, "KEDA's namespace may not reach Prometheus"
    ingress = policy(result, "monitoring", "monitoring")["ingress"]
    admitted = [
        rule
        for rule in ingress
        if {"protocol": "TCP", "port": 9090} in rule.get("ports", [])
        and {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": keda_specs.NAMESPACE}}} in rule.get("from", [])
    ]
    assert admitted, "the monitoring namespace does not admit KEDA's queries on 9090"
