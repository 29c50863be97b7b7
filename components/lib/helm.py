"""Pinned Helm charts and the one way this project installs them (helm.v3.Release).

helm.v3.Release is a plain custom resource: its values are visible to previews, policies and tests
(helm.v4.Chart is a remote component whose children a mock never sees).
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s

# chart -> (version, repository). The versions match ../shared/reference/charts/ (a test checks).
CHARTS: dict[str, tuple[str, str]] = {
    "cluster-autoscaler": ("9.59.0", "https://kubernetes.github.io/autoscaler"),
    "nvidia-device-plugin": ("0.20.0", "https://nvidia.github.io/k8s-device-plugin"),
    "dcgm-exporter": ("4.8.2", "https://nvidia.github.io/dcgm-exporter/helm-charts"),
    "kube-prometheus-stack": ("88.5.3", "https://prometheus-community.github.io/helm-charts"),
    "prometheus-pushgateway": ("3.8.0", "https://prometheus-community.github.io/helm-charts"),
    "jenkins": ("5.9.53", "https://charts.jenkins.io"),
    # Published only as an OCI artifact (kubernetes-sigs/kueue README, "Install with Helm").
    "kueue": ("0.19.2", "oci://registry.k8s.io/kueue/charts"),
    "keda": ("2.20.2", "https://kedacore.github.io/charts"),
    "argo-rollouts": ("2.41.0", "https://argoproj.github.io/argo-helm"),
    # Envoy Gateway: OCI only (envoyproxy/gateway release workflow pushes docker.io/envoyproxy/gateway-helm).
    "gateway-helm": ("1.9.0", "oci://docker.io/envoyproxy"),
}


def chart_name(chart: str) -> str:
    """The chart's own name from a Release's ``chart`` input (an OCI reference ends with it)."""
    return chart.rsplit("/", 1)[-1]


def release(
    name: str,
    chart: str,
    namespace: pulumi.Input[str],
    values: dict[str, Any],
    opts: pulumi.ResourceOptions,
    timeout_s: int = 600,
    release_name: str | None = None,
) -> k8s.helm.v3.Release:
    version, repo = CHARTS[chart]
    # An OCI registry is not a chart repository: Helm takes the full reference as the chart name.
    oci = repo.startswith("oci://")
    return k8s.helm.v3.Release(
        name,
        k8s.helm.v3.ReleaseArgs(
            # A fixed release name (not auto-named): object names stay readable and stable.
            name=release_name or chart,
            chart=f"{repo}/{chart}" if oci else chart,
            version=version,
            repository_opts=None if oci else k8s.helm.v3.RepositoryOptsArgs(repo=repo),
            namespace=namespace,
            values=values,
            # atomic: a failed install/upgrade rolls back instead of leaving a half-applied release
            # that blocks the next `up`.
            atomic=True,
            cleanup_on_fail=True,
            timeout=timeout_s,
        ),
        opts=opts,
    )
