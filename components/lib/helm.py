"""Pinned Helm charts and the one way this project installs them (helm.v3.Release).

helm.v3.Release is a plain custom resource: its values are visible to previews, policies and tests
(helm.v4.Chart is a remote component whose children a mock never sees).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

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


# How each chart's CRDs get to the cluster AND are upgraded with the chart. Helm installs a chart's
# crds/ directory on first install only and never upgrades or deletes it (Helm docs, "Custom Resource
# Definitions": "There is no support at this time for upgrading or deleting CRDs using Helm"), so a
# chart bump that changes a CRD leaves the old schema behind. Per chart, the chart's own mechanism
# (checked against the pinned values in ../shared/reference/charts/ by tests/stacks/test_chart_crds.py):
#   templated:     the chart renders its CRDs from templates/ (Helm upgrades them like any object);
#                  ``requires`` is the switch that keeps them there (the chart's default or our values).
#   upgrade-job:   the chart's own pre-upgrade hook Job applies its CRDs (server-side, force).
#   separate-chart: the CRDs come from the project's CRD chart, rendered and applied server-side by
#                  Pulumi (= `helm template | kubectl apply --server-side`, as the project documents);
#                  the main chart is installed with skip_crds and its own CRD switch off.
#   none:          the chart has no CRDs (with our values).
@dataclass(frozen=True)
class CrdPolicy:
    how: Literal["templated", "upgrade-job", "separate-chart", "none"]
    why: str
    values: dict[str, Any] = field(default_factory=dict)  # merged into the release's values
    requires: dict[str, Any] = field(default_factory=dict)  # must hold in the effective values (defaults + ours)
    crd_chart: tuple[str, str, dict[str, Any]] | None = None  # separate-chart: (chart ref, version, values)


CRDS: dict[str, CrdPolicy] = {
    "argo-rollouts": CrdPolicy(
        "templated",
        "argo-helm charts/argo-rollouts templates/crds/, gated by installCRDs (on by default: 'Install and upgrade CRDs')",
        requires={"installCRDs": True, "keepCRDs": True},
    ),
    "keda": CrdPolicy(
        "templated",
        "kedacore/charts keda templates/crds/, gated by crds.install (keda_specs sets it)",
        requires={"crds": {"install": True}},
    ),
    "kueue": CrdPolicy("templated", "kubernetes-sigs/kueue charts/kueue/templates/crd/ (always rendered)"),
    "kube-prometheus-stack": CrdPolicy(
        "upgrade-job",
        "its CRDs are the `crds` subchart's crds/ directory; crds.upgradeJob (values.yaml: 'mitigates the limitation of "
        "helm not being able to upgrade CRDs') applies them from a pre-install/pre-upgrade hook Job, forceConflicts on",
        # busybox's default tag is `latest`: pinned (the copy step of the Job).
        {"crds": {"enabled": True, "upgradeJob": {"enabled": True, "forceConflicts": True, "image": {"busybox": {"tag": "1.37.0"}}}}},
    ),
    "gateway-helm": CrdPolicy(
        "separate-chart",
        "gateway-helm's CRDs are its `crds` subchart's crds/ directory; Envoy Gateway publishes gateway-crds-helm for "
        "managing them separately (its README: `helm template ... | kubectl apply --server-side`, the main chart with --skip-crds)",
        {"crds": {"enabled": False}},
        # The Gateway API channel gateway-helm's bundled CRDs use (experimental), so nothing is dropped.
        crd_chart=(
            "oci://docker.io/envoyproxy/gateway-crds-helm",
            "1.9.0",
            {"crds": {"gatewayAPI": {"enabled": True, "channel": "experimental"}, "envoyGateway": {"enabled": True}}},
        ),
    ),
    "cluster-autoscaler": CrdPolicy("none", "no CRDs"),
    "nvidia-device-plugin": CrdPolicy("none", "no CRDs of its own; NFD's (a subchart) only with gfd/nfd on, which are off"),
    "dcgm-exporter": CrdPolicy("none", "no CRDs"),
    "prometheus-pushgateway": CrdPolicy("none", "no CRDs (its ServiceMonitor uses kube-prometheus-stack's)"),
    "jenkins": CrdPolicy("none", "no CRDs"),
}


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, nested dicts key by key (``extra`` wins)."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def crd_chart(name: str, chart: str, opts: pulumi.ResourceOptions) -> pulumi.Resource | None:
    """The separate CRD chart of ``chart`` (CrdPolicy separate-chart), or None. Rendered by Pulumi and
    applied with server-side apply (the provider's default), ``patchForce`` so that the CRDs an earlier
    install of the main chart left (field manager `helm`) are adopted instead of conflicting."""
    policy = CRDS[chart]
    if policy.crd_chart is None:
        return None
    ref, version, values = policy.crd_chart

    def force(args: pulumi.ResourceTransformArgs) -> pulumi.ResourceTransformResult | None:
        if args.type_ != "kubernetes:apiextensions.k8s.io/v1:CustomResourceDefinition":
            return None
        props = dict(args.props)
        meta = dict(props.get("metadata") or {})
        meta["annotations"] = {**(meta.get("annotations") or {}), "pulumi.com/patchForce": "true"}
        props["metadata"] = meta
        return pulumi.ResourceTransformResult(props, args.opts)

    return k8s.helm.v4.Chart(
        f"{name}-crds",
        k8s.helm.v4.ChartArgs(chart=ref, version=version, values=values, skip_await=False),
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(transforms=[force])),
    )


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
    # The chart's CRDs are upgraded with it (CRDS): its switch in the values, or a separate CRD chart first.
    values = merged(values, CRDS[chart].values)
    crds = crd_chart(name, chart, opts)
    if crds is not None:
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[crds]))
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
            skip_crds=crds is not None,
        ),
        opts=opts,
    )
