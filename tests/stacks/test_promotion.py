"""The promotion identity (issue 15 item 3: "the deploy identity of the target may read the source's
versions, nothing more"): a stack that receives models gets a role only its deploy identity may assume,
allowed to read the received models' folders in the source stack's store (found through a
StackReference) and to read/write the same folders in its own store; nothing else, nowhere else."""

from __future__ import annotations

import json

import pytest
import yaml

from components.config import ConfigError
from components.lib.promotion_iam import promoter_policy
from tests.conftest import ROOT, STACKS
from tools import mock_engine

ROLE = "aws:iam/role:Role"
POLICY = "aws:iam/rolePolicy:RolePolicy"
CI = {"githubRepo": "acme/mlplatform", "githubOidcProvider": "arn:aws:iam::123456789012:oidc-provider/token.actions.githubusercontent.com"}


def received(stack: str) -> dict[str, str]:
    cfg = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]
    models = cfg.get("mlplatform:models") or {}
    return {m: e["source"]["stack"] for m, e in models.items() if (e or {}).get("source")}


def account(stack: str) -> str:
    return yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]["mlplatform:cluster"]["accountId"]


def eks(stack: str) -> bool:
    return yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]["mlplatform:cluster"]["kind"] == "eks"


RECEIVERS = [s for s in STACKS if eks(s) and received(s)]


def _result(stack, results):
    if stack not in results:
        results[stack] = mock_engine.run(stack)
    return results[stack]


def test_the_stacks_that_receive_models_are_staging_and_prod():
    assert RECEIVERS == ["prod", "staging"]  # what the parametrized tests below cover


def promoter(result):
    roles = [r for r in result.of_type(ROLE) if r.inputs.get("name", "").endswith("-model-promoter")]
    policies = [p for p in result.of_type(POLICY) if p.name.endswith("-model-promoter-policy")]
    return roles, policies


def own_bucket_arn(result) -> str:
    return "arn:aws:s3:::" + result.raw_outputs["modelStore"].removeprefix("s3://")


def test_a_promoter_exactly_where_models_are_received(result, stack):
    roles, policies = promoter(result)
    if eks(stack) and received(stack):
        assert [r.inputs["name"] for r in roles] == [f"mlplatform-{stack}-model-promoter"] and len(policies) == 1
        assert result.outputs["promotionRole"] == f"arn:aws:iam::{mock_engine.ACCOUNT}:role/mlplatform-{stack}-model-promoter"
    else:  # dev trains; local has no IAM (MinIO credentials)
        assert roles == [] and policies == [] and result.outputs.get("promotionRole") is None
    # the configured account (the provider is pinned to it), not whatever credentials ran the update
    assert result.outputs.get("awsAccountId") == (account(stack) if eks(stack) else None)


@pytest.mark.parametrize("receiver", RECEIVERS)
def test_the_policy_reads_the_source_models_and_writes_only_their_own_folders(receiver, _results):
    stack, result = receiver, _result(receiver, _results)
    _, (policy,) = promoter(result)
    doc = json.loads(policy.inputs["policy"])
    own = own_bucket_arn(result)
    sources = {f"arn:aws:s3:::{mock_engine.reference_bucket(src)}" for src in received(stack).values()}
    (src,) = sources  # staging from dev, prod from staging: one source each
    (src_stack,) = set(received(stack).values())
    models = sorted(received(stack))
    prefixes = [f"models/{m}/" for m in models]
    via_s3 = {"StringLike": {"kms:ViaService": "s3.*.amazonaws.com"}}
    assert doc["Statement"] == [
        {
            "Sid": "ListSource0",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": src,
            "Condition": {"StringLike": {"s3:prefix": [f"{p}*" for p in prefixes]}},
        },
        {"Sid": "ReadSource0", "Effect": "Allow", "Action": ["s3:GetObject"], "Resource": [f"{src}/{p}*" for p in prefixes]},
        {
            "Sid": "ListOwn",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": own,
            "Condition": {"StringLike": {"s3:prefix": [f"{p}*" for p in prefixes]}},
        },
        {
            "Sid": "ReadWriteOwn",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject"],
            "Resource": [f"{own}/{p}*" for p in prefixes],
        },
        # the stores' own keys, through S3 only: decrypt the source's, use its own
        {
            "Sid": "DecryptSources",
            "Effect": "Allow",
            "Action": ["kms:Decrypt"],
            "Resource": [f"arn:aws:kms:*:{account(src_stack)}:key/*"],
            "Condition": via_s3,
        },
        {
            "Sid": "OwnKey",
            "Effect": "Allow",
            "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
            "Resource": [f"arn:aws:kms:*:{account(stack)}:key/*"],
            "Condition": via_s3,
        },
    ]
    # What the moto evaluation (tests/training/test_promotion_iam.py) runs is this very function's output.
    assert policy.inputs["policy"] == promoter_policy(own, {src: models}, {src: account(src_stack)}, account(stack))
    # Invariants, stated once more on their own: no wildcard action, no write to the source, two buckets only.
    s3_statements = [s for s in doc["Statement"] if not s["Sid"].endswith(("Sources", "OwnKey"))]
    actions = [a for s in s3_statements for a in s["Action"]]
    assert all("*" not in a for a in actions) and set(actions) == {"s3:ListBucket", "s3:GetObject", "s3:PutObject"}
    resources = [r for s in s3_statements for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])]
    assert {r.split("/", 1)[0] for r in resources} == {src, own} and src != own
    assert all(
        "PutObject" not in a for s in doc["Statement"] if s["Resource"] == src or str(s["Resource"]).startswith(src) for a in s["Action"]
    )


@pytest.mark.parametrize("receiver", RECEIVERS)
def test_only_the_stacks_deploy_identity_may_assume_it(receiver, _results):
    result = _result(receiver, _results)
    (role,), _ = promoter(result)
    # No CI deploy role on this stack (Jenkins' per-environment identity deploys it): the account decides.
    assert json.loads(role.inputs["assumeRolePolicy"])["Statement"] == [
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{account(receiver)}:root"}, "Action": "sts:AssumeRole"}
    ]


def test_with_a_ci_deploy_role_only_that_role_may_assume_it():
    res = mock_engine.run("prod", overrides={"mlplatform:ci": CI})
    (role,), _ = promoter(res)
    assert json.loads(role.inputs["assumeRolePolicy"])["Statement"] == [
        {"Effect": "Allow", "Principal": {"AWS": res.outputs["ciDeployRoleArn"]}, "Action": "sts:AssumeRole"}
    ]
    assert res.outputs["ciDeployRoleArn"].endswith(":role/mlplatform-prod-ci-deploy")


def test_two_sources_each_read_for_its_own_models_only():
    models = yaml.safe_load((ROOT / "stacks" / "Pulumi.prod.yaml").read_text())["config"]["mlplatform:models"]
    dev_bucket = mock_engine.reference_bucket("dev")
    models["fraud"] = {
        "source": {"stack": "dev", "account": account("dev"), "bucket": dev_bucket},
        "serving": {"allowedCidrs": ["203.0.113.0/24"]},
    }
    res = mock_engine.run("prod", overrides={"mlplatform:models": models})
    _, (policy,) = promoter(res)
    doc = {s["Sid"]: s for s in json.loads(policy.inputs["policy"])["Statement"]}
    dev, staging = (f"arn:aws:s3:::{mock_engine.reference_bucket(s)}" for s in ("dev", "staging"))
    assert doc["ReadSource0"]["Resource"] == [f"{dev}/models/fraud/*"]
    from_staging = sorted(received("prod"))  # every model prod's file receives from staging, LLMs included
    assert "mnist" in from_staging and doc["ReadSource1"]["Resource"] == [f"{staging}/models/{m}/*" for m in from_staging]
    own = own_bucket_arn(res)
    assert doc["ReadWriteOwn"]["Resource"] == [f"{own}/models/{m}/*" for m in sorted(["fraud", *from_staging])]
    assert doc["DecryptSources"]["Resource"] == [f"arn:aws:kms:*:{account(s)}:key/*" for s in ("dev", "staging")]


def _one_line(err, key: str) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"stacks/Pulumi.staging.yaml: mlplatform:{key}: "), msg
    return msg


def test_the_source_comes_from_the_reviewed_file_and_the_source_stack_only_cross_checks_it():
    """Issue 24 items 3/11: the bucket and account are the target's config; state that disagrees fails.
    The line names the first model (by name) received from that source."""
    first = min(received("staging"))
    with pytest.raises(ConfigError) as err:
        mock_engine.run("staging", references={"dev": {"awsAccountId": "999999999999"}})
    assert "stack 'dev' reports AWS account 999999999999, this file says 111111111111" in _one_line(err, f"models.{first}.source.account")
    with pytest.raises(ConfigError) as err:
        mock_engine.run("staging", references={"dev": {"modelStore": "s3://attacker-bucket"}})
    assert "reports its store is s3://attacker-bucket" in _one_line(err, f"models.{first}.source.bucket")
    # a source that has not reported yet: the reviewed file alone decides
    res = mock_engine.run("staging", references={"dev": {"modelStore": None, "awsAccountId": None}})
    _, (policy,) = promoter(res)
    assert json.loads(policy.inputs["policy"])["Statement"][0]["Resource"] == f"arn:aws:s3:::{mock_engine.reference_bucket('dev')}"


@pytest.mark.parametrize("store", ["s3://models/some/prefix", "file:///var/models"])
def test_a_source_that_reports_a_store_that_is_not_a_bucket_is_refused(store):
    first = min(received("staging"))  # the line names the first model received from dev
    with pytest.raises(ConfigError, match=f"models.{first}.source.stack: stack 'dev' keeps its models in .*not an S3 bucket"):
        mock_engine.run("staging", references={"dev": {"modelStore": store}})


@pytest.mark.parametrize("field", ["account", "bucket"])
def test_an_eks_receiver_must_name_the_source_account_and_bucket(field):
    models = yaml.safe_load((ROOT / "stacks" / "Pulumi.staging.yaml").read_text())["config"]["mlplatform:models"]
    del models["mnist"]["source"][field]
    with pytest.raises(ConfigError) as err:
        mock_engine.run("staging", overrides={"mlplatform:models": models})
    assert f"mlplatform:models.mnist.source.{field}: required on an EKS stack" in str(err.value)
