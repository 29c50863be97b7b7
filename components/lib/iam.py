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


REGISTRY_PREFIX = "models/"


def _key_statement(key_arn: str | None, write: bool) -> list[dict]:
    """The store's customer-managed key (components/services/artifact_store.py): S3 asks KMS for a data
    key on a write and decrypts one on a read, with the caller's permissions; only through S3."""
    if not key_arn:
        return []
    actions = ["kms:Decrypt"] + (["kms:GenerateDataKey"] if write else [])
    return [
        {
            "Sid": "StoreKey",
            "Effect": "Allow",
            "Action": actions,
            "Resource": key_arn,
            "Condition": {"StringLike": {"kms:ViaService": "s3.*.amazonaws.com"}},
        }
    ]


def s3_bucket_policy(
    bucket_arn: str,
    write: bool,
    prefixes: list[str] | None = None,
    read_all: bool = False,
    key_arn: str | None = None,
    read_prefixes: list[str] | None = None,
) -> str:
    """Access to one bucket only: read (list + get) and, when ``write``, put/delete objects.

    ``prefixes`` (e.g. ``models/mnist/``) confine it to those key prefixes: one model's role cannot
    read or overwrite another model's versions. ``read_prefixes`` are read (listed and got) beside
    them, never written (a LoRA run reads its base's versions: components/models/lora_job.py).
    ``read_all`` keeps reads bucket-wide instead (a TF training run's data may live anywhere in it)
    while writes stay under ``prefixes``. ``key_arn``: the store's KMS key, which S3 uses with the
    caller's rights.
    """
    actions = ["s3:GetObject"] + (["s3:PutObject", "s3:DeleteObject"] if write else [])
    key = _key_statement(key_arn, write)
    if not prefixes:
        return _doc(
            {"Sid": "List", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": bucket_arn},
            {"Sid": "Objects", "Effect": "Allow", "Action": actions, "Resource": f"{bucket_arn}/*"},
            *key,
        )
    scoped = [f"{bucket_arn}/{p}*" for p in prefixes]
    readable = [*prefixes, *(p for p in read_prefixes or [] if p not in prefixes)]
    listing: dict = {"Sid": "List", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": bucket_arn}
    if not read_all:
        listing["Condition"] = {"StringLike": {"s3:prefix": [f"{p}*" for p in readable]}}
    reads = [f"{bucket_arn}/*"] if read_all else [f"{bucket_arn}/{p}*" for p in readable]
    statements = [listing, {"Sid": "Read", "Effect": "Allow", "Action": ["s3:GetObject"], "Resource": reads}]
    if write:
        statements.append({"Sid": "Write", "Effect": "Allow", "Action": ["s3:PutObject"], "Resource": scoped})
        # ``models/`` is the registry: versions are immutable and nobody deletes there (training/registry.py
        # never does; issue 24 item 8). Elsewhere (checkpoints) a run may prune what it wrote.
        prunable = [f"{bucket_arn}/{p}*" for p in prefixes if not p.startswith(REGISTRY_PREFIX)]
        if prunable:
            statements.append({"Sid": "Prune", "Effect": "Allow", "Action": ["s3:DeleteObject"], "Resource": prunable})
        statements += _registry_guards(bucket_arn, [p for p in prefixes if p.startswith(REGISTRY_PREFIX)])
    return _doc(*statements, *key)


def _registry_guards(bucket_arn: str, registry: list[str]) -> list[dict]:
    """What a workload that publishes versions (training, the LLM import) may not do in the registry,
    whatever else it may write there (issue 24 item 8): it adds new versions, nothing else.
    - ``aliases/``, ``audit/``, ``LATEST``: which version serves, and the record of who moved it, are
      the pipeline's (training/registry.py ``adopt``, ops/deliver.py, with the deploy identity): no
      workload moves the champion or the candidate, nor writes or forges an audit record;
    - ``rejected/``: a rejection is the pipeline's verdict (ops/deliver.py, ops/models.py), written once;
      no workload writes one, so none can overwrite one with garbage either;
    - every other key (a version's files and its ``MANIFEST.json``) only as a conditional create
      (``If-None-Match: *``, which training/registry.py ``add_version`` always sends; S3 "Enforce
      conditional writes", condition key ``s3:if-none-match``): nothing that exists is replaced, so a
      complete version stays the bytes it was (and nobody deletes in ``models/``: s3_bucket_policy)."""
    if not registry:
        return []
    return [
        {
            "Sid": "NoPointers",
            "Effect": "Deny",
            "Action": ["s3:PutObject"],
            "Resource": [f"{bucket_arn}/{p}{key}" for p in registry for key in ("aliases/*", "audit/*", "LATEST")],
        },
        {
            "Sid": "NoRejections",
            "Effect": "Deny",
            "Action": ["s3:PutObject"],
            "Resource": [f"{bucket_arn}/{p}rejected/*" for p in registry],
        },
        {
            "Sid": "CreateOnly",
            "Effect": "Deny",
            "Action": ["s3:PutObject"],
            "Resource": [f"{bucket_arn}/{p}*" for p in registry],
            "Condition": {"Null": {"s3:if-none-match": "true"}},
        },
    ]


# Every resource the program tags carries its stack (components/platform.py ``tags``): the deploy
# boundary and the stores' bucket policies tell environments apart by it where they share an account.
STACK_TAG = "mlplatform.io/stack"
USER_ACTIONS = [
    "iam:CreateUser",
    "iam:CreateAccessKey",
    "iam:CreateLoginProfile",
    "iam:UpdateLoginProfile",
    "iam:AttachUserPolicy",
    "iam:PutUserPolicy",
    "iam:AddUserToGroup",
    "iam:AttachGroupPolicy",
    "iam:PutGroupPolicy",
]
ROLE_POLICY_ACTIONS = ["iam:CreateRole", "iam:PutRolePermissionsBoundary", "iam:AttachRolePolicy", "iam:PutRolePolicy"]
# What one may do to an existing role, or as it: allowed only on a role tagged with this very stack.
# (``iam:PermissionsBoundary`` is not in the request context of most of these, e.g. UpdateAssumeRolePolicy
# and DeleteRole: IAM Service Authorization Reference, so the role's tag is what tells.)
ROLE_USE_ACTIONS = [
    "iam:UpdateAssumeRolePolicy",
    "iam:DeleteRole",
    "iam:PutRolePolicy",
    "iam:DeleteRolePolicy",
    "iam:AttachRolePolicy",
    "iam:DetachRolePolicy",
    "iam:PutRolePermissionsBoundary",
    "iam:UpdateRole",
    "iam:UpdateRoleDescription",
    "iam:UntagRole",
    "iam:PassRole",
    "iam:AddRoleToInstanceProfile",
    "iam:RemoveRoleFromInstanceProfile",
    "sts:AssumeRole",
    "sts:TagSession",
]


def deploy_boundary_name(stack: str) -> str:
    return f"mlplatform-{stack}-deploy-boundary"


def tagged_other(key: str, stack: str) -> dict:
    """Condition: ``key`` (a tag condition key) is present and names another stack. Both parts are
    needed: a negated operator is true when the key is missing (untagged resources stay usable)."""
    return {"Null": {key: "false"}, "StringNotEquals": {key: stack}}


def _own_roles_only(stack: str) -> list[dict]:
    """Roles: created with this stack's tag, used only when they carry it, the tag never changed."""
    return [
        {
            # A new role carries this stack's tag (absent included: an untagged role would be a
            # principal that no store's bucket policy can tell apart)...
            "Sid": "NewRolesTagged",
            "Effect": "Deny",
            "Action": "iam:CreateRole",
            "Resource": "*",
            "Condition": {"StringNotEquals": {f"aws:RequestTag/{STACK_TAG}": stack}},
        },
        {
            # ...and only a role tagged with this stack is changed, deleted, passed or assumed (a role
            # another stack made, an untagged one an administrator made: neither is this stack's).
            "Sid": "OnlyOwnRoles",
            "Effect": "Deny",
            "Action": ROLE_USE_ACTIONS,
            "Resource": "arn:aws:iam::*:role/*",
            "Condition": {"StringNotEquals": {f"aws:ResourceTag/{STACK_TAG}": stack}},
        },
        {
            # The stack tag is set when a role is created, never after: not removed (untagging the
            # deploy role would make it a principal of no stack), not changed, not added to a role
            # someone else made (adopting an untagged administrator role, then rewriting its trust).
            "Sid": "StackTagStays",
            "Effect": "Deny",
            "Action": ["iam:UntagRole", "iam:TagRole"],
            "Resource": "*",
            "Condition": {"ForAnyValue:StringEquals": {"aws:TagKeys": [STACK_TAG]}},
        },
    ]


def deploy_boundary_policy(stack: str, others: list[str]) -> str:
    """The permission boundary of ``stack``'s CI deploy role (components/cluster/ci_deploy_role.py):
    everything in its account except what belongs to the ``others`` stacks, and no way out of the
    boundary. What it means where environments share an account (docs/security.md):
    - resources tagged with another stack, or named for it (its EKS cluster ``mlplatform-<other>``
      and what hangs under it, its named roles ``mlplatform-<other>-*``): no action at all;
    - no tag that names another stack on a request (no resource made or re-tagged into another's);
    - roles it creates, or whose policies it changes, carry this very boundary (no unbounded role to
      escape through), the boundary is never removed, and no deploy boundary's document changes
      (an administrator's ``pulumi up`` changes it); no IAM users or access keys (no long-lived key).
    """
    own = f"arn:aws:iam::*:policy/{deploy_boundary_name(stack)}"
    others = sorted(o for o in others if o != stack)
    statements = [
        {"Sid": "Deploy", "Effect": "Allow", "Action": "*", "Resource": "*"},
        {
            "Sid": "NotOtherStacksResources",
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*",
            "Condition": tagged_other(f"aws:ResourceTag/{STACK_TAG}", stack),
        },
        {
            "Sid": "NotTaggedAsOtherStack",
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*",
            "Condition": tagged_other(f"aws:RequestTag/{STACK_TAG}", stack),
        },
        *_own_roles_only(stack),
        {
            "Sid": "NewRolesBounded",
            "Effect": "Deny",
            "Action": ROLE_POLICY_ACTIONS,
            "Resource": "*",
            "Condition": {"ArnNotLike": {"iam:PermissionsBoundary": own}},
        },
        {"Sid": "BoundaryStays", "Effect": "Deny", "Action": ["iam:DeleteRolePermissionsBoundary"], "Resource": "*"},
        {
            "Sid": "BoundariesFixed",
            "Effect": "Deny",
            "Action": ["iam:CreatePolicyVersion", "iam:DeletePolicy", "iam:DeletePolicyVersion", "iam:SetDefaultPolicyVersion"],
            "Resource": "arn:aws:iam::*:policy/mlplatform-*-deploy-boundary",
        },
        {"Sid": "NoLongLivedIdentities", "Effect": "Deny", "Action": USER_ACTIONS, "Resource": "*"},
    ]
    if others:
        clusters = [a for o in others for a in (f"arn:aws:eks:*:*:cluster/mlplatform-{o}", f"arn:aws:eks:*:*:*/mlplatform-{o}/*")]
        statements.append({"Sid": "NotOtherClusters", "Effect": "Deny", "Action": "eks:*", "Resource": clusters})
        roles = [f"arn:aws:iam::*:role/mlplatform-{o}-*" for o in others]
        statements.append({"Sid": "NotOtherStacksRoles", "Effect": "Deny", "Action": ["iam:*", "sts:*"], "Resource": roles})
    return _doc(*statements)


def deploy_policy() -> str:
    """The deploy role's own policy: ``pulumi up`` creates VPCs, clusters, roles, buckets and keys, so
    it is broad; the permission boundary (``deploy_boundary_policy``) is what bounds it."""
    return _doc({"Sid": "DeployWithinBoundary", "Effect": "Allow", "Action": "*", "Resource": "*"})
