"""ModelService on every stack, for every model of its catalogue: safe rollouts, restricted load
balancer, autoscaling, isolation."""

from __future__ import annotations

import json

import yaml

from components.config import ServingConfig
from components.model_service import DRAIN_SECONDS, GRACEFUL_SHUTDOWN_SECONDS, NLB_ANNOTATIONS, PORT, PORT_NAME, labels, object_name
from tests.conftest import ROOT


def cfg(stack):
    return yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]


def models(stack):
    """model name -> its serving config as written in the stack file (no defaults filled in)."""
    return {name: entry.get("serving", {}) for name, entry in cfg(stack)["mlplatform:models"].items()}


def one(result, type_, name):
    (r,) = [r for r in result.of_type(type_) if r.raw["metadata"]["name"] == name]
    return r


def test_rollout_never_drops_capacity(result, stack):
    for model in models(stack):
        dep = one(result, "kubernetes:apps/v1:Deployment", object_name(model))
        spec = dep.raw["spec"]
        assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        pod = spec["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] >= DRAIN_SECONDS + GRACEFUL_SHUTDOWN_SECONDS
        c = pod["containers"][0]
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert {t["topologyKey"] for t in pod["topologySpreadConstraints"]} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
        assert "spec.replicas" in dep.ignore_changes  # the HPA owns replicas: no fight, no perpetual diff


def test_container_locked_down_and_sized(result, stack):
    for model, serving in models(stack).items():
        c = one(result, "kubernetes:apps/v1:Deployment", object_name(model)).raw["spec"]["template"]["spec"]["containers"][0]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True and c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        # Configured resources, or the documented defaults: checked on every stack, not only where set.
        want = serving.get("resources") or ServingConfig().resources.model_dump()
        assert c["resources"] == want
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["SERVING_MAX_BATCH_SIZE"] == str(serving.get("maxBatchSize", 64))
        assert env["SERVING_MODEL_URI"].startswith("s3://")
        assert env["SERVING_MODEL_NAME"] == model


def test_load_balancer_restricted_as_configured(result, stack):
    for model, serving in models(stack).items():
        svc = one(result, "kubernetes:core/v1:Service", object_name(model))
        spec = svc.raw["spec"]
        assert spec["type"] == "LoadBalancer"
        assert spec["ports"] == [{"name": PORT_NAME, "port": 80, "targetPort": PORT_NAME, "protocol": "TCP"}]
        assert spec["selector"] == labels(model)
        assert spec.get("loadBalancerSourceRanges", []) == serving.get("allowedCidrs", [])
        eks = cfg(stack)["mlplatform:cluster"]["kind"] == "eks"
        assert (svc.raw["metadata"].get("annotations") or {}) == (NLB_ANNOTATIONS if eks else {})


def test_hpa_and_pdb(result, stack):
    for model, serving in models(stack).items():
        hpa = one(result, "kubernetes:autoscaling/v2:HorizontalPodAutoscaler", object_name(model)).raw["spec"]
        assert (hpa["minReplicas"], hpa["maxReplicas"]) == (serving["minReplicas"], serving["maxReplicas"])
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": object_name(model)}
        pdb = one(result, "kubernetes:policy/v1:PodDisruptionBudget", object_name(model)).raw["spec"]
        assert pdb == {"maxUnavailable": 1, "selector": {"matchLabels": labels(model)}}


def test_network_policy_opens_only_the_service_port(result, stack):
    for model in models(stack):
        spec = one(result, "kubernetes:networking.k8s.io/v1:NetworkPolicy", object_name(model)).raw["spec"]
        assert spec["podSelector"] == {"matchLabels": labels(model)}
        assert spec["ingress"] == [{"ports": [{"protocol": "TCP", "port": PORT}]}]


def test_store_access_is_read_only(result, stack):
    for model in models(stack):
        sa = one(result, "kubernetes:core/v1:ServiceAccount", object_name(model))
        assert sa.raw["automountServiceAccountToken"] is False
        if cfg(stack)["mlplatform:cluster"]["kind"] != "eks":
            continue
        assert sa.raw["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
        policy = json.loads(result.one("aws:iam/rolePolicy:RolePolicy", f"mlplatform-{model}-serving-store-policy").inputs["policy"])
        actions = {a for s in policy["Statement"] for a in s["Action"]}
        assert actions == {"s3:ListBucket", "s3:GetObject"}


def test_service_url_exported(result, stack):
    urls = {name: m["url"] for name, m in result.raw_outputs["models"].items()}
    assert urls.keys() == models(stack).keys()
    for model, url in urls.items():
        assert url.startswith("http://") and url.endswith(f"/v1/models/{model}")
    assert result.raw_outputs["serviceUrl"] == urls[next(iter(models(stack)))]
