"""Pure network and namespace facts every part shares (no Pulumi import: the workload venv's operator
commands, e.g. ops/deliver.py, read the serving namespace from here too).

The platform's namespaces, and the NetworkPolicy rules that more than one component writes."""

from __future__ import annotations

from typing import Any

SERVING_NAMESPACE = "ml-serving"
NODE_EXPORTER_NAMESPACE = "node-exporter"

# role -> (namespace, Pod Security level). Only two namespaces are `privileged`, each for one workload
# that no stricter level admits (policy.rules.PRIVILEGED_NAMESPACES holds the reasons):
# node-exporter (host network/PID, /proc and /sys) and the image builds (rootless BuildKit:
# Unconfined seccomp/AppArmor, setuid newuidmap; jenkins.BUILDKITD_SECURITY).
NAMESPACES: dict[str, tuple[str, str]] = {
    "serving": (SERVING_NAMESPACE, "restricted"),
    "training": ("ml-training", "restricted"),
    # Envoy Gateway: its controller, the Gateway and the Envoy proxies (non-root, no capabilities).
    "gateway": ("envoy-gateway-system", "restricted"),
    "monitoring": ("monitoring", "restricted"),
    # Kueue's controller (non-root, read-only root, no capabilities: the chart's defaults).
    "queue": ("kueue-system", "restricted"),
    "node-exporter": (NODE_EXPORTER_NAMESPACE, "privileged"),
    "jenkins": ("jenkins", "baseline"),
    # Image builds: isolated from everything else (default-deny, no Secrets, no service account token).
    "builds": ("jenkins-builds", "privileged"),
}


# The EC2 instance metadata service: it hands out the node role's credentials to whoever asks.
METADATA_CIDR = "169.254.169.254/32"


def egress_except_metadata(*ports: int) -> dict[str, Any]:
    """The one NetworkPolicy egress rule for "out of the cluster, but never the metadata service":
    every IPv4 address except 169.254.169.254, on ``ports`` (TCP; none given: every port). Together
    with IMDSv2 hop limit 1 on the nodes, this keeps pods from the node role's credentials.
    ``policy.rules.no_metadata_egress`` refuses any other egress rule that could reach it."""
    rule: dict[str, Any] = {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": [METADATA_CIDR]}}]}
    if ports:
        rule["ports"] = [{"protocol": "TCP", "port": p} for p in ports]
    return rule


# Every pod of the cluster, in any namespace (peers by selector never match the metadata service).
IN_CLUSTER = {"to": [{"namespaceSelector": {}}]}
