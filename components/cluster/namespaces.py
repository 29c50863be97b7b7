"""PlatformNamespace: a namespace with Pod Security Admission labels and a default-deny NetworkPolicy.

Everything a workload may talk to is then opened explicitly by the component that owns it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import pulumi
import pulumi_kubernetes as k8s

PodSecurity = Literal["restricted", "baseline", "privileged"]


@dataclass
class PlatformNamespaceArgs:
    namespace: str
    environment: str = ""
    pod_security: PodSecurity = "restricted"


class PlatformNamespace(pulumi.ComponentResource):
    name: str

    def __init__(self, name: str, args: PlatformNamespaceArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlplatform:namespaces:PlatformNamespace", name, None, opts)
        self.name = args.namespace
        child = pulumi.ResourceOptions(parent=self)
        labels = {
            "app.kubernetes.io/part-of": "mlplatform",
            # Policies (prod-only rules) read the environment from here.
            "mlplatform.io/environment": args.environment,
            "pod-security.kubernetes.io/enforce": args.pod_security,
            # Warn/audit at `restricted` everywhere so drift towards privilege is visible.
            "pod-security.kubernetes.io/warn": "restricted",
            "pod-security.kubernetes.io/audit": "restricted",
        }
        self.namespace = k8s.core.v1.Namespace(
            f"{name}-ns",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=args.namespace, labels=labels),
            opts=child,
        )
        ns_opts = pulumi.ResourceOptions(parent=self, depends_on=[self.namespace])
        k8s.networking.v1.NetworkPolicy(
            f"{name}-default-deny",
            metadata=k8s.meta.v1.ObjectMetaArgs(name="default-deny", namespace=args.namespace),
            spec=k8s.networking.v1.NetworkPolicySpecArgs(pod_selector={}, policy_types=["Ingress", "Egress"]),
            opts=ns_opts,
        )
        k8s.networking.v1.NetworkPolicy(
            f"{name}-allow-dns",
            metadata=k8s.meta.v1.ObjectMetaArgs(name="allow-dns", namespace=args.namespace),
            spec=k8s.networking.v1.NetworkPolicySpecArgs(
                pod_selector={},
                policy_types=["Egress"],
                egress=[
                    k8s.networking.v1.NetworkPolicyEgressRuleArgs(
                        to=[
                            k8s.networking.v1.NetworkPolicyPeerArgs(
                                namespace_selector={"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                                pod_selector={"matchLabels": {"k8s-app": "kube-dns"}},
                            )
                        ],
                        ports=[
                            k8s.networking.v1.NetworkPolicyPortArgs(protocol="UDP", port=53),
                            k8s.networking.v1.NetworkPolicyPortArgs(protocol="TCP", port=53),
                        ],
                    )
                ],
            ),
            opts=ns_opts,
        )
        self.register_outputs({"name": self.name})


def operator_namespace(
    parent: pulumi.Resource, name: str, namespace: str, environment: str, policy_name: str, policy_spec: dict[str, Any]
) -> pulumi.ResourceOptions:
    """An operator's own `restricted`, default-deny namespace and the one NetworkPolicy that opens
    what the operator needs; returns the options for what goes into it (it waits for both)."""
    ns = PlatformNamespace(
        f"{name}-ns",
        PlatformNamespaceArgs(namespace=namespace, environment=environment, pod_security="restricted"),
        opts=pulumi.ResourceOptions(parent=parent),
    )
    after_ns = pulumi.ResourceOptions(parent=parent, depends_on=[ns])
    k8s.networking.v1.NetworkPolicy(
        f"{name}-netpol", metadata=k8s.meta.v1.ObjectMetaArgs(name=policy_name, namespace=namespace), spec=policy_spec, opts=after_ns
    )
    return after_ns
