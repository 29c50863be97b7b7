"""ModelService on every stack: safe rollouts, restricted load balancer, autoscaling, isolation."""

from __future__ import annotations

import json

import yaml

from components.model_service import DRAIN_SECONDS, GRACEFUL_SHUTDOWN_SECONDS, LABELS, NLB_ANNOTATIONS, PORT, PORT_NAME
from tests.conftest import ROOT


def cfg(stack):
    return yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]


def one(result, type_, name="model-server"):
    (r,) = [r for r in result.of_type(type_) if r.raw["metadata"]["name"] == name]
    return r


def test_rollout_never_drops_capacity(result):
    dep = one(result, "kubernetes:apps/v1:Deployment")
    spec = dep.raw["spec"]
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= DRAIN_SECONDS + GRACEFUL_SHUTDOWN_SECONDS
    c = pod["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {t["topologyKey"] for t in pod["topologySpreadConstraints"]} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    assert "spec.replicas" in dep.ignore_changes  # the HPA owns replicas: no fight, no perpetual diff


def test_container_locked_down_and_sized(result, stack):
    c = one(result, "kubernetes:apps/v1:Deployment").raw["spec"]["template"]["spec"]["containers"][0]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True and c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    want = cfg(stack)["mlplatform:serving"].get("resources")
    if want:
        assert c["resources"] == want
    env = {e["name"]: e.get("value") for e in c["env"]}
    serving = cfg(stack)["mlplatform:serving"]
    assert env["SERVING_MAX_BATCH_SIZE"] == str(serving.get("maxBatchSize", 64))
    assert env["SERVING_MODEL_URI"].startswith("s3://")


def test_load_balancer_restricted_as_configured(result, stack):
    svc = one(result, "kubernetes:core/v1:Service")
    spec = svc.raw["spec"]
    assert spec["type"] == "LoadBalancer"
    assert spec["ports"] == [{"name": PORT_NAME, "port": 80, "targetPort": PORT_NAME, "protocol": "TCP"}]
    assert spec["selector"] == LABELS
    assert spec.get("loadBalancerSourceRanges", []) == cfg(stack)["mlplatform:serving"].get("allowedCidrs", [])
    eks = cfg(stack)["mlplatform:cluster"]["kind"] == "eks"
    assert (svc.raw["metadata"].get("annotations") or {}) == (NLB_ANNOTATIONS if eks else {})


def test_hpa_and_pdb(result, stack):
    hpa = one(result, "kubernetes:autoscaling/v2:HorizontalPodAutoscaler").raw["spec"]
    serving = cfg(stack)["mlplatform:serving"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (serving["minReplicas"], serving["maxReplicas"])
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "model-server"}
    pdb = one(result, "kubernetes:policy/v1:PodDisruptionBudget").raw["spec"]
    assert pdb == {"maxUnavailable": 1, "selector": {"matchLabels": LABELS}}


def test_network_policy_opens_only_the_service_port(result):
    spec = one(result, "kubernetes:networking.k8s.io/v1:NetworkPolicy").raw["spec"]
    assert spec["podSelector"] == {"matchLabels": LABELS}
    assert spec["ingress"] == [{"ports": [{"protocol": "TCP", "port": PORT}]}]


def test_store_access_is_read_only(result, stack):
    sa = one(result, "kubernetes:core/v1:ServiceAccount")
    assert sa.raw["automountServiceAccountToken"] is False
    if cfg(stack)["mlplatform:cluster"]["kind"] != "eks":
        return
    assert sa.raw["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    policy = json.loads(result.one("aws:iam/rolePolicy:RolePolicy", "mlplatform-serving-store-policy").inputs["policy"])
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    assert actions == {"s3:ListBucket", "s3:GetObject"}


def test_service_url_exported(result):
    url = result.raw_outputs["serviceUrl"]
    assert url.startswith("http://") and url.endswith("/v1/models/mnist")
