"""ClusterAutoscaler: the cluster-autoscaler chart with an IRSA role scoped to this cluster's groups."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from components.lib import helm, iam

SERVICE_ACCOUNT = "cluster-autoscaler"
IMAGE = "registry.k8s.io/autoscaling/cluster-autoscaler"
# cluster-autoscaler is built and tested against one Kubernetes minor and "should be run with the
# matching version" (kubernetes/autoscaler FAQ); the chart's default image follows the newest minor
# (v1.35.0 in chart 9.59.0), so each cluster minor gets its own release: the latest patch published
# (kubernetes/autoscaler releases cluster-autoscaler-1.33.6 and -1.34.5, 2026-07-23).
IMAGE_TAGS: dict[str, str] = {
    "1.32": "v1.32.3",
    "1.33": "v1.33.6",
    "1.34": "v1.34.5",
    "1.35": "v1.35.0",
}


@dataclass
class ClusterAutoscalerArgs:
    cluster_name: str
    region: str
    oidc_provider_arn: pulumi.Input[str]
    oidc_provider_url: pulumi.Input[str]
    kubernetes_version: str  # the cluster's minor ("1.33"): picks the matching autoscaler release
    namespace: str = "kube-system"
    tags: dict[str, str] = field(default_factory=dict)  # the stack's tags: its role is a principal of this stack


def autoscaler_values(cluster_name: str, region: str, role_arn: pulumi.Input[str], kubernetes_version: str) -> dict:
    if kubernetes_version not in IMAGE_TAGS:  # config validation refuses it first (config.rules)
        raise ValueError(f"no cluster-autoscaler release known for Kubernetes {kubernetes_version} (known: {', '.join(IMAGE_TAGS)})")
    return {
        "image": {"repository": IMAGE, "tag": IMAGE_TAGS[kubernetes_version]},
        "cloudProvider": "aws",
        "awsRegion": region,
        # Auto-discovery by the two tags every GpuNodePool ASG carries.
        "autoDiscovery": {"clusterName": cluster_name},
        "rbac": {"serviceAccount": {"create": True, "name": SERVICE_ACCOUNT, "annotations": {"eks.amazonaws.com/role-arn": role_arn}}},
        "extraArgs": {
            "balance-similar-node-groups": True,
            "skip-nodes-with-system-pods": False,
            "expander": "least-waste",
            # Idle GPU nodes are expensive: give them back quickly.
            "scale-down-unneeded-time": "5m",
            "scale-down-delay-after-add": "5m",
        },
        "resources": {"requests": {"cpu": "100m", "memory": "300Mi"}, "limits": {"cpu": "500m", "memory": "600Mi"}},
        "securityContext": {"runAsNonRoot": True, "runAsUser": 65534, "runAsGroup": 65534, "seccompProfile": {"type": "RuntimeDefault"}},
        "containerSecurityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}},
    }


class ClusterAutoscaler(pulumi.ComponentResource):
    role_arn: pulumi.Output[str]

    def __init__(self, name: str, args: ClusterAutoscalerArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlplatform:autoscaler:ClusterAutoscaler", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        role = aws.iam.Role(
            f"{name}-role",
            aws.iam.RoleArgs(
                assume_role_policy=pulumi.Output.all(args.oidc_provider_arn, args.oidc_provider_url).apply(
                    lambda a: iam.irsa_trust_policy(a[0], a[1], args.namespace, SERVICE_ACCOUNT)
                ),
                tags=args.tags,
            ),
            opts=child,
        )
        aws.iam.RolePolicy(
            f"{name}-policy",
            aws.iam.RolePolicyArgs(role=role.id, policy=iam.cluster_autoscaler_policy(args.cluster_name)),
            opts=child,
        )
        self.role_arn = role.arn
        self.release = helm.release(
            f"{name}-chart",
            "cluster-autoscaler",
            args.namespace,
            autoscaler_values(args.cluster_name, args.region, role.arn, args.kubernetes_version),
            child,
        )
        self.register_outputs({"role_arn": self.role_arn})
