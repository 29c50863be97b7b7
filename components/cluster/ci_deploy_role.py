"""CiDeployRole: the role GitHub Actions / GitLab CI assume to deploy this stack (README "CI/CD").

No long-lived key: a job trades its OIDC token (AssumeRoleWithWebIdentity) for this role, and the trust
policy admits exactly one subject per forge, this environment's:
- GitHub: ``repo:OWNER/NAME:environment:<stack>``, the subject GitHub issues to a job that runs in the
  GitHub environment of that name (whose branch policy and reviewers gate it);
- GitLab: ``project_path:GROUP/NAME:ref_type:branch:ref:<deployBranch>`` (protected branch) AND the
  audience ``mlplatform-<stack>`` (``gitlab_audience``). GitLab's subject names the branch, never the
  environment, so every deploy job of main carries the same one; AWS conditions an OIDC role only on
  ``aud`` and ``sub`` (IAM "Available keys for AWS web identity federation"), so the environment is
  told by the audience each job asks for (``id_tokens: aud`` in .gitlab-ci.yml): the token of
  ``deploy:dev`` (unapproved, on every push) cannot be traded for staging's or prod's role. Each
  audience must be a client ID of the GitLab OIDC provider in IAM.
What it may do: ``pulumi up`` creates VPCs, clusters, IAM roles, buckets and keys, so its own policy
is broad, and a permission boundary (``mlplatform-<stack>-deploy-boundary``, components/lib/iam.py
``deploy_boundary_policy``) bounds it: nothing tagged with or named for another stack, no role
without this boundary (every role the program creates gets it: ``bound_roles``) or without this
stack's tag (the AWS provider's default tags), no role changed, passed or assumed unless tagged with
this stack, the stack tag never removed or re-set on a role, no boundary
removed or rewritten, no IAM user or key. The documented topology is one AWS account per
environment (``cluster.accountId``; the provider refuses any other account), where the account is
the wall and the boundary a second one; where environments share an account the boundary, the
stores' bucket policies and the stack tags are the wall (docs/security.md says what they cover).
Changing a boundary's document is an administrator's ``pulumi up`` (the role cannot rewrite it).
It is also an admin of this stack's cluster (an EKS access entry), so ``make train-wait`` works
with the stack's kubeconfig output whoever bootstrapped the cluster.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.config import GITHUB_ISSUER, CiConfig
from components.config.schema import CI_DEPLOY_ENVIRONMENTS
from components.lib.iam import deploy_boundary_name, deploy_boundary_policy, deploy_policy

CLUSTER_ADMIN = "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"
AUDIENCE = "sts.amazonaws.com"


def gitlab_audience(stack: str) -> str:
    """The ``aud`` a GitLab job asks for to deploy ``stack`` (.gitlab-ci.yml, per job)."""
    return f"mlplatform-{stack}"


def trust_policy(config: CiConfig, stack: str) -> dict:
    """One statement per configured forge, exact ``aud`` and ``sub`` (StringEquals, no wildcard)."""

    def statement(provider_arn: str, subject: str, audience: str = AUDIENCE) -> dict:
        issuer = provider_arn.split(":oidc-provider/", 1)[1]
        return {
            "Effect": "Allow",
            "Principal": {"Federated": provider_arn},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {"StringEquals": {f"{issuer}:aud": audience, f"{issuer}:sub": subject}},
        }

    statements = []
    if config.github_repo and config.github_oidc_provider:
        assert config.github_oidc_provider.endswith(f"/{GITHUB_ISSUER}")  # config validation says so in one line
        statements.append(statement(config.github_oidc_provider, f"repo:{config.github_repo}:environment:{stack}"))
    if config.gitlab_project and config.gitlab_oidc_provider:
        subject = f"project_path:{config.gitlab_project}:ref_type:branch:ref:{config.deploy_branch}"
        statements.append(statement(config.gitlab_oidc_provider, subject, gitlab_audience(stack)))
    return {"Version": "2012-10-17", "Statement": statements}


def ephemeral_trust_policy(config: CiConfig) -> dict:
    """The trust of the ephemeral stacks' role, which the program does not make (a sandbox account's:
    docs/cicd.md; paste this document). It admits what runs from the default branch's pipeline files
    only (issue 24 review M2): GitHub's environments ``preview`` (reviewers) and ``preview-reaper``, both
    admitting ``main`` only by their branch policy, and GitLab's default-branch subject with the
    audience only the ephemeral jobs ask for. No PR or MR pipeline's token carries either."""
    doc = trust_policy(config, "preview")
    reaper = trust_policy(config, "preview-reaper")["Statement"]
    doc["Statement"] += [s for s in reaper if s["Principal"]["Federated"].endswith(f"/{GITHUB_ISSUER}")]
    return doc


def deploy_boundary(name: str, stack: str, tags: dict[str, str], opts: pulumi.ResourceOptions) -> aws.iam.Policy:
    """The stack's deploy boundary, made before anything else (every role the program creates names it)."""
    return aws.iam.Policy(
        name,
        aws.iam.PolicyArgs(
            name=deploy_boundary_name(stack),
            description=f"Bounds {stack}'s deploy identity and every role it creates (docs/security.md)",
            policy=deploy_boundary_policy(stack, list(CI_DEPLOY_ENVIRONMENTS)),
            tags=tags,
        ),
        opts=opts,
    )


def bound_roles(boundary: aws.iam.Policy):
    """A stack transformation: every IAM role registered after it carries ``boundary`` (the deploy
    boundary forbids creating one without) and waits for it. Python-side: the roles a remote
    component (pulumi-eks' cluster service role) makes inside itself are not reached (docs/security.md)."""

    def transform(args: pulumi.ResourceTransformationArgs) -> pulumi.ResourceTransformationResult | None:
        if args.type_ != "aws:iam/role:Role":
            return None
        props = {**args.props, "permissions_boundary": boundary.arn}
        return pulumi.ResourceTransformationResult(
            props, pulumi.ResourceOptions.merge(args.opts, pulumi.ResourceOptions(depends_on=[boundary]))
        )

    return transform


@dataclass
class CiDeployRoleArgs:
    stack: str
    config: CiConfig
    cluster_name: str
    tags: dict[str, str]
    boundary: aws.iam.Policy | None = None  # deploy_boundary(); None: made here


class CiDeployRole(pulumi.ComponentResource):
    arn: pulumi.Output[str]

    def __init__(self, name: str, args: CiDeployRoleArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlplatform:ci:CiDeployRole", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        role_name = f"mlplatform-{args.stack}-ci-deploy"
        boundary = args.boundary or deploy_boundary(f"{name}-boundary", args.stack, args.tags, child)
        role = aws.iam.Role(
            name,
            aws.iam.RoleArgs(
                name=role_name,
                assume_role_policy=json.dumps(trust_policy(args.config, args.stack)),
                max_session_duration=4 * 3600,  # a prod deploy with training and smoke test fits
                permissions_boundary=boundary.arn,
                tags=args.tags,
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[boundary]),
        )
        # No AdministratorAccess: a broad policy of its own, bounded (issue 24 item 3).
        aws.iam.RolePolicy(f"{name}-deploy", aws.iam.RolePolicyArgs(role=role.id, name="deploy", policy=deploy_policy()), opts=child)
        entry = aws.eks.AccessEntry(
            f"{name}-cluster",
            aws.eks.AccessEntryArgs(cluster_name=args.cluster_name, principal_arn=role.arn, tags=args.tags),
            opts=child,
        )
        aws.eks.AccessPolicyAssociation(
            f"{name}-cluster-admin",
            aws.eks.AccessPolicyAssociationArgs(
                cluster_name=args.cluster_name,
                principal_arn=role.arn,
                policy_arn=CLUSTER_ADMIN,
                access_scope=aws.eks.AccessPolicyAssociationAccessScopeArgs(type="cluster"),
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[entry]),
        )
        self.arn = role.arn
        self.register_outputs({"arn": role.arn})
