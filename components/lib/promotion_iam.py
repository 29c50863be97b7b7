"""The promotion's IAM documents, pure (no Pulumi import): the program renders them
(components/services/model_promoter.py, components/services/artifact_store.py) and the tests evaluate the
same functions' output: on moto's IAM (tests/training/test_promotion_iam.py, in .venv-ml, which has no
Pulumi) and with the policy evaluator for what moto does not model (bucket and key policies, other
accounts, boundaries: tools/iam_eval.py, tests/stacks/test_environment_isolation.py).

What a promotion does (ops/deliver.py -> training/registry.promote_between), key by key:
- source store, ``models/<name>/``: GET ``aliases/champion.json``, ``<version>/MANIFEST.json`` and every
  file the manifest lists. Nothing else, and no write.
- own store, ``models/<name>/``: GET and PUT the version's files and manifest (PUT, then read back:
  digests checked as they land), ``aliases/candidate.json``, ``audit/candidate/<generation>.json``,
  ``rejected/<version>.json`` (read), and LIST ``<version>/`` (``verify`` compares the listing with the
  manifest). No DELETE anywhere: the registry never deletes (versions are immutable).
``s3:ListBucket`` is granted on each bucket only for ``s3:prefix`` under those model folders.

One AWS account per environment (docs/security.md): the source store is in another account. A
cross-account read needs both sides (IAM "Cross-account policy evaluation logic"): this role's policy
(``promoter_policy``) and the source's bucket policy (``store_bucket_policy``, naming the receiver's
promoter role for its models' folders); the objects are encrypted with the source store's
customer-managed key, whose key policy (``store_key_policy``) lets that role decrypt through S3 only
(an ``aws/s3`` key could not be used from another account at all). The source's bucket and account come
from the receiving stack's reviewed config (``models.<name>.source``), never from shared state.
"""

from __future__ import annotations

import json

from components.lib.iam import STACK_TAG

ROLE_NAME = "mlplatform-{stack}-model-promoter"
READ = ["s3:GetObject"]
READ_WRITE = ["s3:GetObject", "s3:PutObject"]
VIA_S3 = {"StringLike": {"kms:ViaService": "s3.*.amazonaws.com"}}


def role_name(stack: str) -> str:
    return ROLE_NAME.format(stack=stack)


def role_arn(account: str, stack: str) -> str:
    return f"arn:aws:iam::{account}:role/{role_name(stack)}"


def bucket_arn(store_uri: str) -> str:
    """``arn:aws:s3:::<bucket>`` of an ``s3://<bucket>`` store; ValueError for anything else."""
    if not store_uri.startswith("s3://") or not store_uri[5:] or "/" in store_uri[5:].rstrip("/"):
        raise ValueError(f"not an S3 bucket root: {store_uri!r}")
    return f"arn:aws:s3:::{store_uri[5:].rstrip('/')}"


def _prefixes(models: list[str]) -> list[str]:
    # The trailing slash matters: "models/mnist/" does not cover "models/mnist-v2/".
    return [f"models/{m}/" for m in sorted(models)]


def _keys(accounts: list[str]) -> list[str]:
    return [f"arn:aws:kms:*:{a}:key/*" for a in sorted(set(accounts))]


def promoter_policy(
    own_bucket_arn: str, sources: dict[str, list[str]], source_accounts: dict[str, str] | None = None, own_account: str | None = None
) -> str:
    """``sources``: source bucket ARN -> the models received from it. Read on those models' folders in
    each source bucket; read + write on the same folders of this stack's own bucket. Nothing else.
    ``source_accounts`` (bucket ARN -> account) and ``own_account``: the stores' customer-managed keys,
    used through S3 only: decrypt in the sources' accounts, encrypt/decrypt in its own."""
    statements: list[dict] = []
    own_models: list[str] = []
    for i, (src_arn, models) in enumerate(sorted(sources.items())):
        if src_arn == own_bucket_arn:
            raise ValueError(f"a stack cannot promote from its own store ({src_arn})")
        prefixes = _prefixes(models)
        own_models += models
        statements += [
            {
                "Sid": f"ListSource{i}",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": src_arn,
                "Condition": {"StringLike": {"s3:prefix": [f"{p}*" for p in prefixes]}},
            },
            {"Sid": f"ReadSource{i}", "Effect": "Allow", "Action": READ, "Resource": [f"{src_arn}/{p}*" for p in prefixes]},
        ]
    prefixes = _prefixes(sorted(set(own_models)))
    statements += [
        {
            "Sid": "ListOwn",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": own_bucket_arn,
            "Condition": {"StringLike": {"s3:prefix": [f"{p}*" for p in prefixes]}},
        },
        {"Sid": "ReadWriteOwn", "Effect": "Allow", "Action": READ_WRITE, "Resource": [f"{own_bucket_arn}/{p}*" for p in prefixes]},
    ]
    if source_accounts:
        statements.append(
            {
                "Sid": "DecryptSources",
                "Effect": "Allow",
                "Action": ["kms:Decrypt"],
                "Resource": _keys(list(source_accounts.values())),
                "Condition": VIA_S3,
            }
        )
    if own_account:
        statements.append(
            {
                "Sid": "OwnKey",
                "Effect": "Allow",
                "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
                "Resource": _keys([own_account]),
                "Condition": VIA_S3,
            }
        )
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, sort_keys=True)


def promoter_trust_policy(principal_arn: str) -> str:
    """Only ``principal_arn`` may assume the role: the stack's CI deploy role, or (a stack without
    one, deployed by Jenkins' per-environment identity) the account root, which delegates to IAM
    policies of this account only."""
    return json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": principal_arn}, "Action": "sts:AssumeRole"}]},
        sort_keys=True,
    )


def _receiver_reads(bucket: str, receivers: dict[str, list[str]]) -> list[dict]:
    """Each receiver's role may list and read its models' folders (store_bucket_policy)."""
    statements: list[dict] = []
    for i, (role, models) in enumerate(sorted(receivers.items())):
        account = role.split(":")[4]
        who = {"AWS": f"arn:aws:iam::{account}:root"}
        only = {"ArnEquals": {"aws:PrincipalArn": role}}
        prefixes = _prefixes(models)
        statements += [
            {
                "Sid": f"ReceiverList{i}",
                "Effect": "Allow",
                "Principal": who,
                "Action": "s3:ListBucket",
                "Resource": bucket,
                "Condition": {**only, "StringLike": {"s3:prefix": [f"{p}*" for p in prefixes]}},
            },
            {
                "Sid": f"ReceiverRead{i}",
                "Effect": "Allow",
                "Principal": who,
                "Action": "s3:GetObject",
                "Resource": [f"{bucket}/{p}*" for p in prefixes],
                "Condition": only,
            },
        ]
    return statements


def store_bucket_policy(bucket: str, stack: str, receivers: dict[str, list[str]], key_arn: str | None = None) -> str:
    """The store's bucket policy. ``receivers``: a receiving stack's promoter role ARN -> the models it
    receives from this store. ``key_arn``: the store's customer-managed key.
    - each receiver's role may list and read its models' folders, nothing else (the grant another
      account needs; the Principal is that account, the role is named in the condition, so the policy
      is valid before the receiving stack has made its role);
    - every other principal not tagged with this stack (``mlplatform.io/stack``), untagged ones
      included, may do nothing here: where environments share an account, another stack's deploy role
      and every role it made, and any role made outside the program. The bucket's own tag cannot do
      this (S3 general purpose buckets have ABAC off: a bucket tag is in no condition), so the
      principal's tag is the test. An administrator of this stack's account manages the store through
      a role carrying its stack tag (the account's root user can still delete a bucket policy that
      locks everyone out);
    - with ``key_arn``: no object is written under any other encryption than that key (an explicit
      SSE-S3 or ``aws/s3`` or another key's header; SSE-C), so every version stays readable by exactly
      the key policy's principals. A PUT without encryption headers gets the bucket default, this key.
    """
    statements = _receiver_reads(bucket, receivers)
    # A negated operator is true when the key is absent: an untagged principal is "not this stack".
    not_ours = {"StringNotEquals": {f"aws:PrincipalTag/{STACK_TAG}": stack}}
    deny_others = {"Sid": "OnlyThisStack", "Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": [bucket, f"{bucket}/*"]}
    if receivers:
        deny_others["Condition"] = {**not_ours, "ArnNotEquals": {"aws:PrincipalArn": sorted(receivers)}}
        statements.append(deny_others)
        statements.append(
            {
                "Sid": "ReceiversOnlyRead",
                "Effect": "Deny",
                "Principal": "*",
                "NotAction": ["s3:GetObject", "s3:ListBucket"],
                "Resource": [bucket, f"{bucket}/*"],
                "Condition": {"ArnEquals": {"aws:PrincipalArn": sorted(receivers)}},
            }
        )
    else:
        deny_others["Condition"] = not_ours
        statements.append(deny_others)
    if key_arn:
        statements += _only_key(bucket, key_arn)
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, sort_keys=True)


SSE = "s3:x-amz-server-side-encryption"
SSE_KEY = "s3:x-amz-server-side-encryption-aws-kms-key-id"


def _only_key(bucket: str, key_arn: str) -> list[dict]:
    """PutObject (CopyObject is one too) under the store's key or the bucket default (also that key):
    an encryption header that names anything else is refused. ``aws:kms`` without a key id would use
    the account's ``aws/s3`` key, so it is refused too (S3 User Guide, "Specifying server-side
    encryption with AWS KMS"; the condition keys are those of the request headers)."""
    objects = f"{bucket}/*"
    return [
        {
            "Sid": "OnlyStoreKeyAlgorithm",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:PutObject",
            "Resource": objects,
            "Condition": {"Null": {SSE: "false"}, "StringNotEquals": {SSE: "aws:kms"}},
        },
        {
            "Sid": "OnlyStoreKeyNamed",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:PutObject",
            "Resource": objects,
            "Condition": {"Null": {SSE: "false", SSE_KEY: "true"}},
        },
        {
            "Sid": "OnlyStoreKey",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:PutObject",
            "Resource": objects,
            "Condition": {"Null": {SSE_KEY: "false"}, "StringNotEquals": {SSE_KEY: key_arn}},
        },
        {
            "Sid": "NoCustomerKeys",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:PutObject",
            "Resource": objects,
            "Condition": {"Null": {"s3:x-amz-server-side-encryption-customer-algorithm": "false"}},
        },
    ]


def store_key_policy(account: str, receivers: list[str]) -> str:
    """The store key's policy: this account's IAM policies decide for its principals (the AWS default
    statement); each receiver's promoter role (``receivers``, role ARNs) may decrypt, through S3 only."""
    statements: list[dict] = [
        {
            "Sid": "AccountIamPolicies",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
            "Action": "kms:*",
            "Resource": "*",
        }
    ]
    for i, role in enumerate(sorted(receivers)):
        statements.append(
            {
                "Sid": f"ReceiverDecrypt{i}",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{role.split(':')[4]}:root"},
                "Action": "kms:Decrypt",
                "Resource": "*",
                "Condition": {**VIA_S3, "ArnEquals": {"aws:PrincipalArn": role}},
            }
        )
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, sort_keys=True)
