"""ModelPromoter: the least-privilege identity the pipeline copies received models with (README "Model delivery").

A stack that receives models (``models.<name>.source.stack``) gets one role,
``mlplatform-<stack>-model-promoter``. Only this stack's CI deploy role may assume it (a stack without
one, deployed by Jenkins' per-environment identity, trusts its own account, i.e. whoever IAM lets call
sts:AssumeRole on it there). It may read the received models' folders (``models/<name>/``) of each
source stack's store and read/write the same folders of this stack's store, nothing else
(components/lib/promotion_iam.py lists the keys). ``ops/deliver.py`` assumes it for the copy; ``pulumi
up`` and kubectl keep the deploy identity.

The source store's bucket comes from a StackReference to the source stack
(``<organization>/<project>/<source>``, this stack's own organization and project: the stacks share
one backend, as ``pulumi stack output modelStore --stack <source>`` in the delivery step already
assumes). Promotion is same-account only (the stores' ``aws/s3`` key cannot be used from another
account): a source stack that reports another account fails the update in one line, here rather than
at the first copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from components.config import ConfigError
from components.lib.promotion_iam import bucket_arn, promoter_policy, promoter_trust_policy, role_name

# The stack outputs a source stack must have (__main__.py exports them).
STORE_OUTPUT = "modelStore"
ACCOUNT_OUTPUT = "awsAccountId"


def stack_reference_name(stack: str) -> str:
    """This project's ``stack`` in this stack's organization (DIY backends: ``organization``)."""
    return f"{pulumi.get_organization() or 'organization'}/{pulumi.get_project()}/{stack}"


def account_id(provider: pulumi.ProviderResource | None, parent: pulumi.Resource) -> pulumi.Output[str]:
    """The AWS account the stack deploys into (its provider's credentials)."""
    return aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(parent=parent, provider=provider)).account_id


@dataclass
class ModelPromoterArgs:
    stack: str
    stack_file: str  # stacks/Pulumi.<stack>.yaml, for one-line errors
    received: dict[str, str]  # model -> source stack
    own_bucket_arn: pulumi.Input[str]
    account_id: pulumi.Input[str]
    deploy_role_arn: pulumi.Input[str] | None = None  # the stack's CI deploy role; None: the account root
    tags: dict[str, str] = field(default_factory=dict)


class ModelPromoter(pulumi.ComponentResource):
    role_arn: pulumi.Output[str]

    def __init__(self, name: str, args: ModelPromoterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlplatform:promotion:ModelPromoter", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        by_source: dict[str, list[str]] = {}
        for model, src in sorted(args.received.items()):
            by_source.setdefault(src, []).append(model)
        # source bucket ARN -> models, once every source stack has answered (and is in our account)
        sources: list[pulumi.Output] = []
        for src, models in sorted(by_source.items()):
            ref = pulumi.StackReference(f"{name}-{src}", stack_reference_name(src), opts=child)
            key = f"models.{models[0]}.source.stack"
            sources.append(
                pulumi.Output.all(ref.get_output(STORE_OUTPUT), ref.get_output(ACCOUNT_OUTPUT), args.account_id).apply(
                    lambda a, src=src, models=models, key=key: (self._source_arn(args.stack_file, key, src, *a), models)
                )
            )
        policy = pulumi.Output.all(args.own_bucket_arn, *sources).apply(lambda a: promoter_policy(a[0], {arn: m for arn, m in a[1:]}))
        principal = args.deploy_role_arn or pulumi.Output.concat("arn:aws:iam::", args.account_id, ":root")
        role = aws.iam.Role(
            name,
            aws.iam.RoleArgs(
                name=role_name(args.stack),
                # Live state: the text names the path this role was created under (today ops/deliver.py);
                # changing it would update every receiving stack's role for nothing.
                description=f"Copies received models into {args.stack}'s store (tools/deliver.py); read-only on the sources",
                assume_role_policy=pulumi.Output.from_input(principal).apply(promoter_trust_policy),
                max_session_duration=3600,
                tags=args.tags,
            ),
            opts=child,
        )
        aws.iam.RolePolicy(f"{name}-policy", aws.iam.RolePolicyArgs(role=role.id, name="promote-models", policy=policy), opts=child)
        self.role_arn = role.arn
        self.register_outputs({"role_arn": role.arn})

    @staticmethod
    def _source_arn(stack_file: str, key: str, src: str, store: str | None, src_account: str | None, account: str) -> str:
        if not store:
            raise ConfigError(stack_file, key, f"stack {src!r} has no {STORE_OUTPUT} output: deploy it first (pulumi up --stack {src})")
        try:
            arn = bucket_arn(store)
        except ValueError:
            raise ConfigError(
                stack_file, key, f"stack {src!r} keeps its models in {store}, not an S3 bucket: cannot promote from it"
            ) from None
        if src_account and src_account != account:
            raise ConfigError(
                stack_file,
                key,
                f"stack {src!r} is in AWS account {src_account}, this stack in {account}: promotion between accounts is not supported "
                "(the stores' aws/s3 KMS key cannot be used from another account)",
            )
        return arn
