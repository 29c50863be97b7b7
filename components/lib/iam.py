"""Pure IAM policy builders (JSON documents), testable without the engine."""

from __future__ import annotations

import json


def _doc(*statements: dict) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)}, sort_keys=True)


def service_trust_policy(service: str) -> str:
    """Trust policy letting an AWS service (e.g. ec2.amazonaws.com) assume the role."""
    return _doc({"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"})


def irsa_trust_policy(oidc_provider_arn: str, oidc_provider_url: str, namespace: str, service_account: str) -> str:
    """IRSA trust: only ``namespace/service_account`` of this cluster's OIDC issuer may assume the role."""
    issuer = oidc_provider_url.removeprefix("https://")
    return _doc(
        {
            "Effect": "Allow",
            "Principal": {"Federated": oidc_provider_arn},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {
                "StringEquals": {
                    f"{issuer}:sub": f"system:serviceaccount:{namespace}:{service_account}",
                    f"{issuer}:aud": "sts.amazonaws.com",
                }
            },
        }
    )


def cluster_autoscaler_policy(cluster_name: str) -> str:
    """Least privilege for cluster-autoscaler: read anything, but scale/terminate only ASGs tagged as
    owned by this cluster (the tag every GpuNodePool ASG carries)."""
    return _doc(
        {
            "Sid": "Describe",
            "Effect": "Allow",
            "Action": [
                "autoscaling:DescribeAutoScalingGroups",
                "autoscaling:DescribeAutoScalingInstances",
                "autoscaling:DescribeLaunchConfigurations",
                "autoscaling:DescribeScalingActivities",
                "autoscaling:DescribeTags",
                "ec2:DescribeImages",
                "ec2:DescribeInstanceTypes",
                "ec2:DescribeLaunchTemplateVersions",
                "ec2:GetInstanceTypesFromInstanceRequirements",
                "eks:DescribeNodegroup",
            ],
            "Resource": "*",
        },
        {
            "Sid": "ScaleOwnedGroups",
            "Effect": "Allow",
            "Action": ["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"],
            "Resource": "*",
            "Condition": {"StringEquals": {f"aws:ResourceTag/k8s.io/cluster-autoscaler/{cluster_name}": "owned"}},
        },
    )


def s3_bucket_policy(bucket_arn: str, write: bool, prefixes: list[str] | None = None, read_all: bool = False) -> str:
    """Access to one bucket only: read (list + get) and, when ``write``, put/delete objects.

    ``prefixes`` (e.g. ``models/mnist/``) confine it to those key prefixes: one model's role cannot
    read or overwrite another model's versions. ``read_all`` keeps reads bucket-wide (a training
    run's data may live anywhere in it) while writes stay under ``prefixes``.
    """
    actions = ["s3:GetObject"] + (["s3:PutObject", "s3:DeleteObject"] if write else [])
    if not prefixes:
        return _doc(
            {"Sid": "List", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": bucket_arn},
            {"Sid": "Objects", "Effect": "Allow", "Action": actions, "Resource": f"{bucket_arn}/*"},
        )
    scoped = [f"{bucket_arn}/{p}*" for p in prefixes]
    listing: dict = {"Sid": "List", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": bucket_arn}
    if not read_all:
        listing["Condition"] = {"StringLike": {"s3:prefix": [f"{p}*" for p in prefixes]}}
    statements = [
        listing,
        {"Sid": "Read", "Effect": "Allow", "Action": ["s3:GetObject"], "Resource": [f"{bucket_arn}/*"] if read_all else scoped},
    ]
    if write:
        statements.append({"Sid": "Write", "Effect": "Allow", "Action": ["s3:PutObject", "s3:DeleteObject"], "Resource": scoped})
    return _doc(*statements)
