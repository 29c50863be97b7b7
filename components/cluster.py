"""Cluster: an EKS cluster (pulumi-eks, in its own VPC) or an existing cluster from a kubeconfig.

Either way it exposes ``provider``, the ``kubernetes.Provider`` every Kubernetes resource uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws
import pulumi_awsx as awsx
import pulumi_eks as eks
import pulumi_kubernetes as k8s

from components import aws_iam
from components.config import ClusterConfig

CONTROL_PLANE_LOGS = ["api", "audit", "authenticator", "controllerManager", "scheduler"]
NODE_POLICIES = {
    "worker": "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
    "cni": "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy",
    "ecr": "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly",
}


@dataclass
class ClusterArgs:
    cluster_name: str
    config: ClusterConfig
    kubernetes_version: str
    high_availability_nat: bool = False
    tags: dict[str, str] = field(default_factory=dict)


class Cluster(pulumi.ComponentResource):
    provider: k8s.Provider
    kubeconfig: pulumi.Output[str] | None
    name: str
    oidc_provider_arn: pulumi.Output[str] | None = None
    oidc_provider_url: pulumi.Output[str] | None = None
    node_role_arn: pulumi.Output[str] | None = None
    private_subnet_ids: pulumi.Output[list[str]] | None = None
    eks: eks.Cluster | None = None

    def __init__(self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlplatform:cluster:Cluster", name, None, opts)
        self.name = args.cluster_name
        if args.config.kind == "eks":
            self._eks(name, args)
        else:
            # The provider reads the kubeconfig file itself (KUBECONFIG / ~/.kube/config when unset):
            # passing the path, not its contents, keeps the provider's inputs identical on every
            # machine and every run, so no perpetual provider diff.
            self.kubeconfig = None
            self.provider = k8s.Provider(
                f"{name}-k8s",
                k8s.ProviderArgs(kubeconfig=args.config.kubeconfig, context=args.config.context),
                opts=pulumi.ResourceOptions(parent=self),
            )
        self.register_outputs({"name": self.name, "kubeconfig": self.kubeconfig})

    def _eks(self, name: str, args: ClusterArgs) -> None:
        c, child = args.config, pulumi.ResourceOptions(parent=self)
        vpc = awsx.ec2.Vpc(
            f"{name}-vpc",
            awsx.ec2.VpcArgs(
                cidr_block=c.vpc_cidr,
                number_of_availability_zones=c.availability_zones,
                enable_dns_hostnames=True,
                nat_gateways=awsx.ec2.NatGatewayConfigurationArgs(
                    strategy=awsx.ec2.NatGatewayStrategy.ONE_PER_AZ if args.high_availability_nat else awsx.ec2.NatGatewayStrategy.SINGLE
                ),
                # Nodes live in private subnets only; the role tags tell the AWS load balancer
                # controller / in-tree provider where public and internal LBs go.
                subnet_specs=[
                    awsx.ec2.SubnetSpecArgs(type=awsx.ec2.SubnetType.PRIVATE, tags={"kubernetes.io/role/internal-elb": "1"}),
                    awsx.ec2.SubnetSpecArgs(type=awsx.ec2.SubnetType.PUBLIC, tags={"kubernetes.io/role/elb": "1"}),
                ],
                tags=args.tags,
            ),
            opts=child,
        )
        node_role = aws.iam.Role(
            f"{name}-node-role",
            aws.iam.RoleArgs(assume_role_policy=aws_iam.service_trust_policy("ec2.amazonaws.com"), tags=args.tags),
            opts=child,
        )
        for role, arn in NODE_POLICIES.items():
            aws.iam.RolePolicyAttachment(
                f"{name}-node-{role}",
                aws.iam.RolePolicyAttachmentArgs(role=node_role.name, policy_arn=arn),
                opts=child,
            )
        self.eks = eks.Cluster(
            f"{name}-eks",
            eks.ClusterArgs(
                name=args.cluster_name,
                version=args.kubernetes_version,
                vpc_id=vpc.vpc_id,
                private_subnet_ids=vpc.private_subnet_ids,
                public_subnet_ids=vpc.public_subnet_ids,
                node_associate_public_ip_address=False,
                skip_default_node_group=True,
                create_oidc_provider=True,
                authentication_mode=eks.AuthenticationMode.API,
                instance_roles=[node_role],
                endpoint_private_access=True,
                endpoint_public_access=True,
                public_access_cidrs=c.endpoint_public_access_cidrs or None,
                enabled_cluster_log_types=CONTROL_PLANE_LOGS,
                tags=args.tags,
            ),
            opts=child,
        )
        s = c.system_nodes
        aws.eks.NodeGroup(
            f"{name}-system",
            aws.eks.NodeGroupArgs(
                cluster_name=args.cluster_name,
                node_group_name="system",
                node_role_arn=node_role.arn,
                subnet_ids=vpc.private_subnet_ids,
                instance_types=[s.instance_type],
                capacity_type="ON_DEMAND",
                ami_type="AL2023_x86_64_STANDARD",
                scaling_config=aws.eks.NodeGroupScalingConfigArgs(min_size=s.min, desired_size=s.desired, max_size=s.max),
                update_config=aws.eks.NodeGroupUpdateConfigArgs(max_unavailable=1),
                labels={"mlplatform.io/node-role": "system"},
                tags=args.tags,
            ),
            # desiredSize belongs to the autoscaler after creation; re-applying it would fight it.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.eks], ignore_changes=["scalingConfig.desiredSize"]),
        )
        self.oidc_provider_arn = self.eks.oidc_provider_arn
        self.oidc_provider_url = self.eks.oidc_provider_url
        self.node_role_arn = node_role.arn
        self.private_subnet_ids = vpc.private_subnet_ids
        # pulumi-eks renders an exec-based kubeconfig (aws eks get-token) with no credentials or
        # profile baked in, so it is stable across runs and machines (pulumi-eks #764/#207 were
        # profile/env leaking into it). It still grants cluster access: always a secret.
        self.kubeconfig = pulumi.Output.secret(self.eks.kubeconfig_json)
        self.provider = k8s.Provider(
            f"{name}-k8s",
            k8s.ProviderArgs(kubeconfig=self.kubeconfig),
            opts=pulumi.ResourceOptions(parent=self),
        )
