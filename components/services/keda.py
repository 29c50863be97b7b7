"""KEDA for the stack: the chart (pinned in components/lib/helm.py) in its own restricted, default-deny
namespace, and the ScaledObject resource. What is scaled on, and how, is components/lib/keda_specs.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.cluster.namespaces import operator_namespace
from components.lib import helm, keda_specs


@dataclass
class KedaArgs:
    environment: str
    prometheus_namespace: str = "monitoring"


class Keda(pulumi.ComponentResource):
    """The KEDA operator, metrics API server and webhooks (chart keda, pinned in components/lib/helm.py)
    in their own restricted, default-deny namespace."""

    release: k8s.helm.v3.Release

    def __init__(self, name: str, args: KedaArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlplatform:autoscaling:Keda", name, None, opts)
        ns = keda_specs.NAMESPACE
        after_ns = operator_namespace(self, name, ns, args.environment, "keda", keda_specs.keda_network_policy(args.prometheus_namespace))
        self.release = helm.release(f"{name}-release", "keda", ns, keda_specs.keda_values(), after_ns, release_name=keda_specs.RELEASE)
        self.register_outputs({})


def scaled_object(
    name: str,
    object_name: str,
    namespace: pulumi.Input[str],
    labels: dict[str, str],
    spec: dict[str, Any],
    keda: Keda | None,
    opts: pulumi.ResourceOptions,
) -> k8s.apiextensions.CustomResource:
    """The ScaledObject resource; it waits for the KEDA release, which installs its CRD."""
    depends = [keda.release] if keda is not None else []
    return k8s.apiextensions.CustomResource(
        name,
        api_version=keda_specs.API_VERSION,
        kind="ScaledObject",
        metadata=k8s.meta.v1.ObjectMetaArgs(name=object_name, namespace=namespace, labels=labels),
        spec=spec,
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=depends)),
    )
