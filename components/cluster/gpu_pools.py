"""GpuNodePool: an EKS managed node group of GPU instances that scales to zero when idle.

cluster-autoscaler can only scale a group up from zero if it knows what a node *would* look like:
the ``k8s.io/cluster-autoscaler/node-template/*`` tags on the group's Auto Scaling group tell it the
labels, the taint and the GPU count. EKS does not copy node-group tags to the ASG, so they are set
on the ASG itself (``aws.autoscaling.Tag``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from components.cluster.cluster import launch_template, node_group_launch_template
from components.config import GpuPool

GPU_TAINT_KEY = "nvidia.com/gpu"
GPU_RESOURCE = "nvidia.com/gpu"
POOL_LABEL = "mlplatform.io/gpu-pool"
GPU_PRESENT_LABEL = "nvidia.com/gpu.present"
NVIDIA_AMI = "AL2023_x86_64_NVIDIA"

# The taint as Kubernetes spells it (for tolerations) and as the EKS API spells it.
GPU_TOLERATION = {"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}


def node_labels(pool: GpuPool) -> dict[str, str]:
    return {POOL_LABEL: pool.name, GPU_PRESENT_LABEL: "true"}


def autoscaler_tags(cluster_name: str, pool: GpuPool) -> dict[str, str]:
    """The ASG tags cluster-autoscaler needs to discover the group and scale it from zero."""
    prefix = "k8s.io/cluster-autoscaler/node-template"
    tags = {
        "k8s.io/cluster-autoscaler/enabled": "true",
        f"k8s.io/cluster-autoscaler/{cluster_name}": "owned",
        f"{prefix}/taint/{GPU_TAINT_KEY}": "true:NoSchedule",
        f"{prefix}/resources/{GPU_RESOURCE}": str(pool.gpus_per_node),
        f"{prefix}/resources/ephemeral-storage": f"{pool.disk_gi_b}G",
        f"{prefix}/label/eks.amazonaws.com/capacityType": pool.capacity_type,
    }
    tags.update({f"{prefix}/label/{k}": v for k, v in node_labels(pool).items()})
    return dict(sorted(tags.items()))


@dataclass
class GpuNodePoolArgs:
    pool: GpuPool
    cluster_name: str
    node_role_arn: pulumi.Input[str]
    subnet_ids: pulumi.Input[list[str]]
    tags: dict[str, str] = field(default_factory=dict)


class GpuNodePool(pulumi.ComponentResource):
    node_group: aws.eks.NodeGroup
    asg_name: pulumi.Output[str]

    def __init__(self, name: str, args: GpuNodePoolArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlplatform:gpu_node_pool:GpuNodePool", name, None, opts)
        p = args.pool
        scaler_tags = autoscaler_tags(args.cluster_name, p)
        # The disk size lives in the launch template (EKS refuses diskSize next to one).
        lt = launch_template(f"{name}-lt", args.tags, pulumi.ResourceOptions(parent=self), disk_gib=p.disk_gi_b)
        self.node_group = aws.eks.NodeGroup(
            f"{name}-ng",
            aws.eks.NodeGroupArgs(
                cluster_name=args.cluster_name,
                node_group_name=p.name,
                node_role_arn=args.node_role_arn,
                subnet_ids=args.subnet_ids,
                ami_type=NVIDIA_AMI,
                instance_types=p.instance_types,
                capacity_type=p.capacity_type,
                launch_template=node_group_launch_template(lt),
                scaling_config=aws.eks.NodeGroupScalingConfigArgs(min_size=p.min, desired_size=p.desired, max_size=p.max),
                update_config=aws.eks.NodeGroupUpdateConfigArgs(max_unavailable=1),
                labels=node_labels(p),
                taints=[aws.eks.NodeGroupTaintArgs(key=GPU_TAINT_KEY, value="true", effect="NO_SCHEDULE")],
                tags={**args.tags, **scaler_tags},
            ),
            # After creation the autoscaler owns desiredSize; `up` re-applying it would undo scaling.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["scalingConfig.desiredSize"]),
        )
        self.asg_name = self.node_group.resources.apply(lambda r: r[0].autoscaling_groups[0].name)
        for key, value in scaler_tags.items():
            slug = re.sub(r"[^a-z0-9]+", "-", key.removeprefix("k8s.io/cluster-autoscaler/").lower()).strip("-")
            aws.autoscaling.Tag(
                f"{name}-tag-{slug}",
                aws.autoscaling.TagArgs(
                    autoscaling_group_name=self.asg_name,
                    tag=aws.autoscaling.TagTagArgs(key=key, value=value, propagate_at_launch=False),
                ),
                opts=pulumi.ResourceOptions(parent=self),
            )
        self.register_outputs({"asg_name": self.asg_name})
