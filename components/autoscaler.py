"""ClusterAutoscaler: the cluster-autoscaler chart with an IRSA role scoped to this cluster's groups."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components import aws_iam, helm

SERVICE_ACCOUNT = "cluster-autoscaler"


@dataclass
class ClusterAutoscalerArgs:
    cluster_name: str
    region: str
    oidc_provider_arn: pulumi.Input[str]
    oidc_provider_url: pulumi.Input[str]
    namespace: str = "kube-system"


def autoscaler_values(cluster_name: str, region: str, role_arn: pulumi.Input[str]) -> dict:
    return {
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
                    lambda a: aws_iam.irsa_trust_policy(a[0], a[1], args.namespace, SERVICE_ACCOUNT)
                )
            ),
            opts=child,
        )
        aws.iam.RolePolicy(
            f"{name}-policy",
            aws.iam.RolePolicyArgs(role=role.id, policy=aws_iam.cluster_autoscaler_policy(args.cluster_name)),
            opts=child,
        )
        self.role_arn = role.arn
        self.release = helm.release(
            f"{name}-chart", "cluster-autoscaler", args.namespace, autoscaler_values(args.cluster_name, args.region, role.arn), child
        )
        self.register_outputs({"role_arn": self.role_arn})
