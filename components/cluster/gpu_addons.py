"""GpuAddons: NVIDIA device plugin (advertises nvidia.com/gpu) and DCGM exporter (GPU metrics),
scheduled only on GPU nodes and tolerating the GPU taint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi

from components.cluster.gpu_pools import GPU_PRESENT_LABEL, GPU_TOLERATION, POOL_LABEL
from components.lib import helm

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


# Explicit, so that the policy pack judges what runs (not an unseen chart default). The plugin stays
# uid 0 (it owns its socket in the kubelet's root-owned device-plugins directory) but holds no
# capability and cannot escalate: the chart's own default outside CPU-manager compatibility mode.
DEVICE_PLUGIN_SECURITY = {"privileged": False, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
RUNTIME_DEFAULT_SECCOMP = {"seccompProfile": {"type": "RuntimeDefault"}}

# DCGM counters: the default set (DCGM_FI_DEV_*, what our rules and dashboards read) needs neither
# root nor SYS_ADMIN; the profiling set (DCGM_FI_PROF_*) needs both (the chart's values.yaml says so).
DCGM_COUNTERS = "/etc/dcgm-exporter/default-counters.csv"
DCGM_PROFILING_COUNTERS = "/etc/dcgm-exporter/dcp-metrics-included.csv"
DCGM_UID = 1000


def device_plugin_values() -> dict[str, Any]:
    return {
        "affinity": GPU_NODE_AFFINITY,
        "tolerations": [GPU_TOLERATION],
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "200m", "memory": "128Mi"}},
        "securityContext": DEVICE_PLUGIN_SECURITY,
        "podSecurityContext": RUNTIME_DEFAULT_SECCOMP,
        # GPU feature discovery (and the NFD subchart it pulls in) stay off: our pools carry the labels.
        "gfd": {"enabled": False},
    }


def dcgm_values(service_monitor: bool, profiling_metrics: bool = False) -> dict[str, Any]:
    """Non-root, no capabilities, unless the stack asks for profiling metrics. Every key is explicit:
    Helm merges maps with the chart's default (root, SYS_ADMIN), so an omitted ``add`` would keep it."""
    if profiling_metrics:
        security = {
            "runAsNonRoot": False,
            "runAsUser": 0,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]},
        }
    else:
        security = {
            "runAsNonRoot": True,
            "runAsUser": DCGM_UID,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"], "add": []},
        }
    return {
        "affinity": GPU_NODE_AFFINITY,
        "tolerations": [GPU_TOLERATION],
        "serviceMonitor": {"enabled": service_monitor, "interval": "15s"},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "300m", "memory": "512Mi"}},
        "arguments": ["-f", DCGM_PROFILING_COUNTERS if profiling_metrics else DCGM_COUNTERS],
        "securityContext": security,
        "podSecurityContext": RUNTIME_DEFAULT_SECCOMP,
    }


@dataclass
class GpuAddonsArgs:
    namespace: str = "kube-system"
    # The kube-prometheus-stack release (it installs the ServiceMonitor CRD), when monitoring is on.
    monitoring_release: pulumi.Resource | None = None
    profiling_metrics: bool = False  # monitoring.gpuProfilingMetrics


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
            dcgm_values(service_monitor=mon is not None, profiling_metrics=args.profiling_metrics),
            # Its ServiceMonitor needs the CRD the monitoring release installs.
            pulumi.ResourceOptions(parent=self, depends_on=[mon] if mon else []),
        )
        self.register_outputs({})
