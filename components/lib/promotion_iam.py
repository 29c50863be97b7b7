"""The promotion identity's IAM documents, pure (no Pulumi import): the program renders them
(components/services/model_promoter.py) and the workload tests evaluate the same functions' output for real on
moto's IAM (tests/training/test_promotion_iam.py, in .venv-ml, which has no Pulumi).

What a promotion does (ops/deliver.py -> training/registry.promote_between), key by key:
- source store, ``models/<name>/``: GET ``aliases/champion.json``, ``<version>/MANIFEST.json`` and every
  file the manifest lists. Nothing else, and no write.
- own store, ``models/<name>/``: GET and PUT the version's files and manifest (PUT, then read back:
  digests checked as they land), ``aliases/candidate.json``, ``audit/candidate/<generation>.json``,
  ``rejected/<version>.json`` (read), and LIST ``<version>/`` (``verify`` compares the listing with the
  manifest). No DELETE anywhere: the registry never deletes (versions are immutable).
``s3:ListBucket`` is granted on each bucket only for ``s3:prefix`` under those model folders.

No KMS statement: both stores encrypt with the account's AWS-managed key ``aws/s3``
(components/services/artifact_store.py, ``sse_algorithm: aws:kms`` without a key id), whose key policy lets any
principal of the account use it through S3 when IAM lets it reach the object. That same key is why
promotion is same-account only: an ``aws/s3``-encrypted object cannot be decrypted from another
account, whatever the bucket policy says (components/services/model_promoter.py checks the accounts).
"""

from __future__ import annotations

import json

ROLE_NAME = "mlplatform-{stack}-model-promoter"
READ = ["s3:GetObject"]
READ_WRITE = ["s3:GetObject", "s3:PutObject"]


def role_name(stack: str) -> str:
    return ROLE_NAME.format(stack=stack)


def bucket_arn(store_uri: str) -> str:
    """``arn:aws:s3:::<bucket>`` of an ``s3://<bucket>`` store; ValueError for anything else."""
    if not store_uri.startswith("s3://") or not store_uri[5:] or "/" in store_uri[5:].rstrip("/"):
        raise ValueError(f"not an S3 bucket root: {store_uri!r}")
    return f"arn:aws:s3:::{store_uri[5:].rstrip('/')}"


def _prefixes(models: list[str]) -> list[str]:
    # The trailing slash matters: "models/mnist/" does not cover "models/mnist-v2/".
    return [f"models/{m}/" for m in sorted(models)]


def promoter_policy(own_bucket_arn: str, sources: dict[str, list[str]]) -> str:
    """``sources``: source bucket ARN -> the models received from it. Read on those models' folders in
    each source bucket; read + write on the same folders of this stack's own bucket. Nothing else."""
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
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, sort_keys=True)


def promoter_trust_policy(principal_arn: str) -> str:
    """Only ``principal_arn`` may assume the role: the stack's CI deploy role, or (a stack without
    one, deployed by Jenkins' per-environment identity) the account root, which delegates to IAM
    policies of this account only."""
    return json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": principal_arn}, "Action": "sts:AssumeRole"}]},
        sort_keys=True,
    )
