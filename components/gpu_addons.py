"""GpuAddons: NVIDIA device plugin (advertises nvidia.com/gpu) and DCGM exporter (GPU metrics),
scheduled only on GPU nodes and tolerating the GPU taint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi

from components import helm
from components.gpu_node_pool import GPU_PRESENT_LABEL, GPU_TOLERATION, POOL_LABEL

# Nodes of our GPU pools carry both labels; on an existing cluster, label GPU nodes
# nvidia.com/gpu.present=true (the label NVIDIA's own tooling uses).
GPU_NODE_AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": GPU_PRESENT_LABEL, "operator": "In", "values": ["true"]}]},
                {"matchExpressions": [{"key": POOL_LABEL, "operator": "Exists"}]},
            ]
        }
    }
}


def device_plugin_values() -> dict[str, Any]:
    return {
        "affinity": GPU_NODE_AFFINITY,
        "tolerations": [GPU_TOLERATION],
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "200m", "memory": "128Mi"}},
        # GPU feature discovery (and the NFD subchart it pulls in) stay off: our pools carry the labels.
        "gfd": {"enabled": False},
    }


def dcgm_values(service_monitor: bool) -> dict[str, Any]:
    return {
        "affinity": GPU_NODE_AFFINITY,
        "tolerations": [GPU_TOLERATION],
        "serviceMonitor": {"enabled": service_monitor, "interval": "15s"},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "300m", "memory": "512Mi"}},
    }


@dataclass
class GpuAddonsArgs:
    namespace: str = "kube-system"
    # The kube-prometheus-stack release (it installs the ServiceMonitor CRD), when monitoring is on.
    monitoring_release: pulumi.Resource | None = None


class GpuAddons(pulumi.ComponentResource):
    def __init__(self, name: str, args: GpuAddonsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlplatform:gpu_addons:GpuAddons", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.device_plugin = helm.release(f"{name}-device-plugin", "nvidia-device-plugin", args.namespace, device_plugin_values(), child)
        mon = args.monitoring_release
        self.dcgm = helm.release(
            f"{name}-dcgm",
            "dcgm-exporter",
            args.namespace,
            dcgm_values(service_monitor=mon is not None),
            # Its ServiceMonitor needs the CRD the monitoring release installs.
            pulumi.ResourceOptions(parent=self, depends_on=[mon] if mon else []),
        )
        self.register_outputs({})
