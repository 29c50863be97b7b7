"""Cluster: an EKS cluster (pulumi-eks, in its own VPC) or an existing cluster from a kubeconfig.

Either way it exposes ``provider``, the ``kubernetes.Provider`` every Kubernetes resource uses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws
import pulumi_awsx as awsx
import pulumi_eks as eks
import pulumi_kubernetes as k8s

from components.config import ClusterConfig, ConfigError, stack_file
from components.config.schema import EKS_ACCESS_POLICIES, documentation_cidrs
from components.lib import iam

CONTROL_PLANE_LOGS = ["api", "audit", "authenticator", "controllerManager", "scheduler"]
# The node role carries no CNI policy: the VPC CNI (aws-node) gets it through IRSA instead, so a pod
# that reached the node's credentials could not rewire pod networking.
NODE_POLICIES = {
    "worker": "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
    "ecr": "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly",
}
# EKS add-ons that act on AWS APIs, each with its own IRSA role: name -> (namespace, service account,
# managed policy). vpc-cni assigns pod IPs; aws-ebs-csi-driver provisions the volumes Prometheus and
# Alertmanager claim (without it a PersistentVolumeClaim stays Pending on EKS >= 1.23).
IRSA_ADDONS: dict[str, tuple[str, str, str]] = {
    "vpc-cni": ("kube-system", "aws-node", "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy"),
    "aws-ebs-csi-driver": ("kube-system", "ebs-csi-controller-sa", "arn:aws:iam::aws:policy/service-role/AmazonEBSCSIDriverPolicy"),
}
# Add-on configuration values (the add-on's JSON schema, `aws eks describe-addon-configuration`).
# The VPC CNI enforces NetworkPolicies only with its network policy agent on, which is off by default
# (Amazon VPC CNI >= 1.14, "enableNetworkPolicy": "true"; EKS user guide, "Restrict pod traffic with
# Kubernetes network policies"): without it every NetworkPolicy of the stack is decorative.
# policy/rules.py (network-policies-enforced) fails a stack whose vpc-cni lacks it.
ADDON_CONFIGURATION: dict[str, dict[str, str]] = {"vpc-cni": {"enableNetworkPolicy": "true"}}
# IMDSv2 only, and a response hop limit of 1: the token reply cannot cross the extra hop into a pod's
# network namespace, so pods (host-network ones aside) cannot read the node role's credentials.
METADATA_HOP_LIMIT = 1
# Zone-aware storage: a volume is created in the zone of the pod that first claims it (not in a
# zone picked before scheduling), so replicas spread over zones each get a volume in their own zone.
STORAGE_CLASS = "gp3-zonal"
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"


@dataclass
class ClusterArgs:
    cluster_name: str
    config: ClusterConfig
    kubernetes_version: str
    high_availability_nat: bool = False
    tags: dict[str, str] = field(default_factory=dict)


def launch_template(name: str, tags: dict[str, str], opts: pulumi.ResourceOptions, disk_gib: int = 20) -> aws.ec2.LaunchTemplate:
    """The launch template every node group uses (instead of EKS's default one, whose hop limit is 2):
    IMDSv2 required, hop limit 1, an encrypted gp3 root volume. It names no AMI or instance type, so
    the node group's amiType/instanceTypes still choose them."""
    return aws.ec2.LaunchTemplate(
        name,
        aws.ec2.LaunchTemplateArgs(
            metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
                http_endpoint="enabled",
                http_tokens="required",
                http_put_response_hop_limit=METADATA_HOP_LIMIT,
                instance_metadata_tags="disabled",
            ),
            block_device_mappings=[
                aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                    device_name="/dev/xvda",  # the root device of the AL2023 EKS AMIs
                    ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                        volume_size=disk_gib, volume_type="gp3", encrypted="true", delete_on_termination="true"
                    ),
                )
            ],
            update_default_version=True,
            tags=tags,
        ),
        opts=opts,
    )


def check_api_allowlist(config: ClusterConfig) -> None:
    """``cluster.endpointPublicAccessCidrs`` inside a documentation network (the stack files' examples)
    admits nobody to the EKS API: the cluster would be created (~15 min) and every Kubernetes object
    after it would fail. An engine-run ``up`` stops here before anything is created; a preview, and
    the offline synth under mocks, only warn (so the examples still render)."""
    found = documentation_cidrs(list(config.endpoint_public_access_cidrs))
    if not found:
        return
    key = "cluster.endpointPublicAccessCidrs"
    message = f"{', '.join(found)} is a documentation range (RFC 5737) that admits nobody: set your office/CI egress CIDRs"
    if pulumi.runtime.is_dry_run() or _offline():
        pulumi.log.warn(f"{stack_file(pulumi.get_stack())}: mlplatform:{key}: {message}")
        return
    raise ConfigError(stack_file(pulumi.get_stack()), key, message)


def _offline() -> bool:
    """Under Pulumi's mocks (tools/mock_engine.py, the unit tests): no engine, nothing is created."""
    from pulumi.runtime import mocks, settings

    return isinstance(settings.get_monitor(), mocks.MockMonitor)


def node_group_launch_template(lt: aws.ec2.LaunchTemplate) -> aws.eks.NodeGroupLaunchTemplateArgs:
    # A version number, not "$Latest": EKS stores the number and "$Latest" would diff on every preview.
    return aws.eks.NodeGroupLaunchTemplateArgs(id=lt.id, version=lt.latest_version.apply(str))


class Cluster(pulumi.ComponentResource):
    provider: k8s.Provider
    kubeconfig: pulumi.Output[str] | None
    name: str
    oidc_provider_arn: pulumi.Output[str] | None = None
    oidc_provider_url: pulumi.Output[str] | None = None
    node_role_arn: pulumi.Output[str] | None = None
    private_subnet_ids: pulumi.Output[list[str]] | None = None
    eks: eks.Cluster | None = None
    # The StorageClass stateful workloads claim (None: the existing cluster's default).
    storage_class: str | None = None

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
        """The VPC, the node role, the control plane, the add-ons and system nodes, the provider and the StorageClass."""
        check_api_allowlist(args.config)
        child = pulumi.ResourceOptions(parent=self)
        vpc = self._vpc(name, args, child)
        node_role = self._node_role(name, args, child)
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
                # EKS's own aws-node, adopted below by the vpc-cni add-on with its IRSA role (that role
                # needs this cluster's OIDC provider, so it cannot be passed in here).
                use_default_vpc_cni=True,
                endpoint_private_access=True,
                endpoint_public_access=True,
                public_access_cidrs=args.config.endpoint_public_access_cidrs or None,
                enabled_cluster_log_types=CONTROL_PLANE_LOGS,
                tags=args.tags,
            ),
            opts=child,
        )
        self.addons = self._addons_and_system_nodes(name, args, vpc, node_role, child)
        self.access_entries = self._access_entries(name, args)
        self.oidc_provider_arn = self.eks.oidc_provider_arn
        self.oidc_provider_url = self.eks.oidc_provider_url
        self.node_role_arn = node_role.arn
        self.private_subnet_ids = vpc.private_subnet_ids
        # pulumi-eks renders an exec-based kubeconfig (aws eks get-token) with no credentials or
        # profile baked in, so it is stable across runs and machines (pulumi-eks #764/#207 were
        # profile/env leaking into it). It still grants cluster access: always a secret.
        self.kubeconfig = pulumi.Output.secret(self.eks.kubeconfig_json)
        # Every Kubernetes object goes through this provider, so it waits (on create) for what they
        # all need and outlives it (on destroy, reverse dependency order): the system nodes their
        # pods run on (through the EBS add-on, which waits for them) and the EBS CSI driver that
        # deletes their volumes. Without it, add-on charts start their 600 s waits before a node
        # exists, and destroy removes the nodes and the driver first, leaking every PVC's volume.
        self.provider = k8s.Provider(
            f"{name}-k8s",
            k8s.ProviderArgs(kubeconfig=self.kubeconfig),
            # ... and the access entries of the principals that deploy it: on create, nothing starts
            # before whoever runs the next `up` can read it back; on destroy, the objects go first.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*self.addons.values(), *self.access_entries]),
        )
        self._storage_class(name)

    def _vpc(self, name: str, args: ClusterArgs, child: pulumi.ResourceOptions) -> awsx.ec2.Vpc:
        c = args.config
        return awsx.ec2.Vpc(
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

    def _node_role(self, name: str, args: ClusterArgs, child: pulumi.ResourceOptions) -> aws.iam.Role:
        """The nodes' instance role, with NODE_POLICIES only."""
        node_role = aws.iam.Role(
            f"{name}-node-role",
            aws.iam.RoleArgs(assume_role_policy=iam.service_trust_policy("ec2.amazonaws.com"), tags=args.tags),
            opts=child,
        )
        for role, arn in NODE_POLICIES.items():
            aws.iam.RolePolicyAttachment(
                f"{name}-node-{role}",
                aws.iam.RolePolicyAttachmentArgs(role=node_role.name, policy_arn=arn),
                opts=child,
            )
        return node_role

    def _addons_and_system_nodes(
        self, name: str, args: ClusterArgs, vpc: awsx.ec2.Vpc, node_role: aws.iam.Role, child: pulumi.ResourceOptions
    ) -> dict[str, aws.eks.Addon]:
        """The IRSA add-ons and the system node group, in the order they can start: vpc-cni, the nodes,
        the EBS CSI driver."""
        addons = {
            addon: self._irsa_addon(name, addon, namespace, sa, policy, args)
            for addon, (namespace, sa, policy) in IRSA_ADDONS.items()
            if addon == "vpc-cni"
        }
        s = args.config.system_nodes
        system = aws.eks.NodeGroup(
            f"{name}-system",
            aws.eks.NodeGroupArgs(
                cluster_name=args.cluster_name,
                node_group_name="system",
                node_role_arn=node_role.arn,
                subnet_ids=vpc.private_subnet_ids,
                instance_types=[s.instance_type],
                capacity_type="ON_DEMAND",
                ami_type="AL2023_x86_64_STANDARD",
                launch_template=node_group_launch_template(launch_template(f"{name}-system-lt", args.tags, child)),
                scaling_config=aws.eks.NodeGroupScalingConfigArgs(min_size=s.min, desired_size=s.desired, max_size=s.max),
                update_config=aws.eks.NodeGroupUpdateConfigArgs(max_unavailable=1),
                labels={"mlplatform.io/node-role": "system"},
                tags=args.tags,
            ),
            # desiredSize belongs to the autoscaler after creation; re-applying it would fight it.
            # Nodes join only once aws-node runs with its own role (the node role has no CNI policy).
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[self.eks, addons["vpc-cni"]], ignore_changes=["scalingConfig.desiredSize"]
            ),
        )
        # The EBS CSI controller is a Deployment: it needs nodes to become ACTIVE.
        namespace, sa, policy = IRSA_ADDONS["aws-ebs-csi-driver"]
        addons["aws-ebs-csi-driver"] = self._irsa_addon(name, "aws-ebs-csi-driver", namespace, sa, policy, args, after=[system])
        return addons

    def _access_entries(self, name: str, args: ClusterArgs) -> list[pulumi.Resource]:
        """An access entry and a cluster-wide access policy per ``cluster.accessEntries`` principal.
        With authenticationMode API nothing else admits them (no aws-auth ConfigMap): without one, a
        stack deployed by a person, then Jenkins, then GitHub gets ``Unauthorized`` from the second on."""
        if self.eks is None:  # an invariant: called from _eks only
            raise RuntimeError(f"{name}: access entries need an EKS cluster")
        done: list[pulumi.Resource] = []
        for j, entry in enumerate(args.config.access_entries):
            opts = pulumi.ResourceOptions(parent=self, depends_on=[self.eks])
            created = aws.eks.AccessEntry(
                f"{name}-access-{j}",
                aws.eks.AccessEntryArgs(cluster_name=args.cluster_name, principal_arn=entry.principal_arn, tags=args.tags),
                opts=opts,
            )
            done.append(
                aws.eks.AccessPolicyAssociation(
                    f"{name}-access-{j}-policy",
                    aws.eks.AccessPolicyAssociationArgs(
                        cluster_name=args.cluster_name,
                        principal_arn=created.principal_arn,
                        policy_arn=EKS_ACCESS_POLICIES[entry.policy],
                        access_scope=aws.eks.AccessPolicyAssociationAccessScopeArgs(type="cluster"),
                    ),
                    opts=pulumi.ResourceOptions(parent=self, depends_on=[created]),
                )
            )
        return done

    def _storage_class(self, name: str) -> None:
        k8s.storage.v1.StorageClass(
            f"{name}-storage-class",
            # The default: EKS >= 1.30 creates no default class (not even gp2's annotation), so a claim
            # without a class (a chart's, a user's Job) would stay Pending forever.
            metadata=k8s.meta.v1.ObjectMetaArgs(name=STORAGE_CLASS, annotations={DEFAULT_CLASS_ANNOTATION: "true"}),
            provisioner="ebs.csi.aws.com",
            parameters={"type": "gp3", "encrypted": "true"},
            volume_binding_mode="WaitForFirstConsumer",
            allow_volume_expansion=True,
            reclaim_policy="Delete",
            # Nothing in AWS stands behind a StorageClass: a destroy lets it go with the cluster instead
            # of calling the API (which a CI role whose access entry is already gone could not).
            opts=pulumi.ResourceOptions(
                parent=self, provider=self.provider, depends_on=[self.addons["aws-ebs-csi-driver"]], deleted_with=self.eks
            ),
        )
        self.storage_class = STORAGE_CLASS

    def _irsa_addon(
        self, name: str, addon: str, namespace: str, sa: str, policy_arn: str, args: ClusterArgs, after: list[pulumi.Resource] | None = None
    ) -> aws.eks.Addon:
        """An EKS add-on whose service account assumes its own role (IRSA), not the node role."""
        if self.eks is None:  # an invariant, not a config error: add-ons exist only on EKS clusters
            raise RuntimeError(f"{name}: the {addon} add-on needs an EKS cluster (cluster.kind: eks)")
        child = pulumi.ResourceOptions(parent=self)
        role = aws.iam.Role(
            f"{name}-{addon}-role",
            aws.iam.RoleArgs(
                assume_role_policy=pulumi.Output.all(self.eks.oidc_provider_arn, self.eks.oidc_provider_url).apply(
                    lambda a: iam.irsa_trust_policy(a[0], a[1], namespace, sa)
                ),
                tags=args.tags,
            ),
            opts=child,
        )
        attachment = aws.iam.RolePolicyAttachment(
            f"{name}-{addon}-policy", aws.iam.RolePolicyAttachmentArgs(role=role.name, policy_arn=policy_arn), opts=child
        )
        return aws.eks.Addon(
            f"{name}-{addon}",
            aws.eks.AddonArgs(
                cluster_name=args.cluster_name,
                addon_name=addon,
                service_account_role_arn=role.arn,
                configuration_values=json.dumps(ADDON_CONFIGURATION[addon]) if addon in ADDON_CONFIGURATION else None,
                # Adopt what EKS installed at creation (aws-node) instead of failing on it.
                resolve_conflicts_on_create="OVERWRITE",
                resolve_conflicts_on_update="OVERWRITE",
                tags=args.tags,
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.eks, attachment, *(after or [])]),
        )
