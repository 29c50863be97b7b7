"""ModelPromoter: the least-privilege identity the pipeline copies received models with (README "Model delivery").

A stack that receives models (``models.<name>.source.stack``) gets one role,
``mlplatform-<stack>-model-promoter``. Only this stack's CI deploy role may assume it (a stack without
one, deployed by Jenkins' per-environment identity, trusts its own account, i.e. whoever IAM lets call
sts:AssumeRole on it there). It may read the received models' folders (``models/<name>/``) of each
source stack's store and read/write the same folders of this stack's store, nothing else
(components/lib/promotion_iam.py lists the keys). ``ops/deliver.py`` assumes it for the copy; ``pulumi
up`` and kubectl keep the deploy identity.

The source store's bucket and account come from this stack's reviewed config
(``models.<name>.source.{account,bucket}``), never from shared state; a StackReference to the source
stack (``<organization>/<project>/<source>``) is only a cross-check: when it reports another store or
account, the update fails in one line naming the key. The source is normally in another AWS account
(one per environment, docs/security.md): the read works because the source stack's bucket policy and
store key name this role (its ``models.<name>.receivers``), which a test checks across the stack files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from components.config import ConfigError
from components.config.schema import ModelSource
from components.lib.promotion_iam import bucket_arn, promoter_policy, promoter_trust_policy, role_name

# The stack outputs a source stack must have (__main__.py exports them).
STORE_OUTPUT = "modelStore"
ACCOUNT_OUTPUT = "awsAccountId"


def stack_reference_name(stack: str) -> str:
    """This project's ``stack`` in this stack's organization (DIY backends: ``organization``)."""
    return f"{pulumi.get_organization() or 'organization'}/{pulumi.get_project()}/{stack}"


def account_id(provider: pulumi.ProviderResource | None, parent: pulumi.Resource, configured: str | None = None) -> pulumi.Output[str]:
    """The AWS account the stack deploys into: ``cluster.accountId`` (the provider is pinned to it), else
    its provider's credentials."""
    if configured:
        return pulumi.Output.from_input(configured)
    return aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(parent=parent, provider=provider)).account_id


@dataclass
class ModelPromoterArgs:
    stack: str
    stack_file: str  # stacks/Pulumi.<stack>.yaml, for one-line errors
    received: dict[str, ModelSource]  # model -> where it comes from (stack, account, bucket)
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
            by_source.setdefault(src.stack, []).append(model)
        sources = {}
        for src_stack, models in sorted(by_source.items()):
            ref = pulumi.StackReference(f"{name}-{src_stack}", stack_reference_name(src_stack), opts=child)
            src = args.received[models[0]]
            key = f"models.{models[0]}.source"
            sources[src_stack] = pulumi.Output.all(ref.get_output(STORE_OUTPUT), ref.get_output(ACCOUNT_OUTPUT)).apply(
                lambda a, src=src, models=models, key=key: (self._cross_check(args.stack_file, key, src, *a), src.account, models)
            )
        policy = pulumi.Output.all(args.own_bucket_arn, args.account_id, *sources.values()).apply(
            lambda a: promoter_policy(a[0], {arn: m for arn, _, m in a[2:]}, {arn: acct for arn, acct, _ in a[2:] if acct}, a[1])
        )
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
    def _cross_check(stack_file: str, key: str, src: ModelSource, store: str | None, src_account: str | None) -> str:
        """The source's bucket ARN, from the config; the source stack's outputs must agree with it."""
        if not src.bucket:  # config rules require it on EKS stacks; kept for a kubeconfig stack's mistake
            raise ConfigError(stack_file, f"{key}.bucket", "required: the source store's bucket")
        arn = f"arn:aws:s3:::{src.bucket}"
        if store:
            try:
                reported = bucket_arn(store)
            except ValueError:
                raise ConfigError(
                    stack_file, f"{key}.stack", f"stack {src.stack!r} keeps its models in {store}, not an S3 bucket: cannot promote from it"
                ) from None
            if reported != arn:
                raise ConfigError(
                    stack_file,
                    f"{key}.bucket",
                    f"stack {src.stack!r} reports its store is {store}, this file says s3://{src.bucket}: which is it?",
                )
        if src_account and src.account and src_account != src.account:
            raise ConfigError(
                stack_file,
                f"{key}.account",
                f"stack {src.stack!r} reports AWS account {src_account}, this file says {src.account}: which is it?",
            )
        return arn
