"""Environments that cannot reach each other (issue 24 item 3), proven on the documents the program renders.

The documented topology is one AWS account per environment (``cluster.accountId``); where a user keeps
them in one account, the deploy roles are bounded and the stores refuse other stacks' principals. Each
promise is evaluated with tools/iam_eval.py (the AWS evaluation logic for identity, boundary, bucket and
key policies, which moto does not model), on the exact documents the stacks render (asserted first).
"""

from __future__ import annotations

import json

import pytest
import yaml

from components.config.schema import CI_DEPLOY_ENVIRONMENTS
from components.lib import iam, promotion_iam
from tests.conftest import ROOT
from tools import mock_engine
from tools.iam_eval import Principal, Request, allowed

GITHUB = "arn:aws:iam::{}:oidc-provider/token.actions.githubusercontent.com"
ONE = "111111111111"  # the single shared account of the "one account" scenario
TAG = iam.STACK_TAG
ENVS = list(CI_DEPLOY_ENVIRONMENTS)
S3 = {"kms:ViaService": "s3.eu-west-1.amazonaws.com"}


def stack_cfg(stack: str) -> dict:
    return yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]


def account(stack: str) -> str:
    return stack_cfg(stack)["mlplatform:cluster"]["accountId"]


@pytest.fixture(scope="module")
def prod_ci():
    return mock_engine.run(
        "prod", overrides={"mlplatform:ci": {"githubRepo": "acme/mlplatform", "githubOidcProvider": GITHUB.format(account("prod"))}}
    )


def deployer(stack: str, acct: str = ONE) -> Principal:
    return Principal(
        arn=f"arn:aws:iam::{acct}:role/mlplatform-{stack}-ci-deploy",
        policies=[iam.deploy_policy()],
        boundary=iam.deploy_boundary_policy(stack, ENVS),
        tags={TAG: stack},
    )


def bucket(stack: str) -> str:
    return f"arn:aws:s3:::mlplatform-{stack}-store"


# --- the topology, as the stack files write it --------------------------------------------------


def test_each_environment_has_its_own_account_and_every_promotion_is_granted_on_both_sides():
    accounts = {s: account(s) for s in ENVS}
    assert len(set(accounts.values())) == 3, accounts
    for target in ENVS:
        for model, entry in (stack_cfg(target).get("mlplatform:models") or {}).items():
            src = (entry or {}).get("source")
            if not src:
                continue
            # the target names the source's account and bucket itself; the source names the target's account
            assert src["account"] == accounts[src["stack"]], (target, model)
            assert src["bucket"] == mock_engine.reference_bucket(src["stack"]), (target, model)
            receivers = stack_cfg(src["stack"])["mlplatform:models"][model].get("receivers", [])
            assert {"stack": target, "account": accounts[target]} in receivers, (target, model, receivers)


def test_the_provider_refuses_any_other_account(prod_ci):
    (provider,) = prod_ci.of_type("pulumi:providers:aws")
    assert provider.inputs["allowedAccountIds"] == json.dumps([account("prod")]) or provider.inputs["allowedAccountIds"] == [
        account("prod")
    ]


# --- what the stacks render ---------------------------------------------------------------------


def test_the_deploy_role_is_bounded_not_an_administrator(prod_ci):
    (role,) = [r for r in prod_ci.of_type("aws:iam/role:Role") if r.inputs.get("name") == "mlplatform-prod-ci-deploy"]
    (boundary,) = prod_ci.of_type("aws:iam/policy:Policy")
    assert boundary.inputs["name"] == "mlplatform-prod-deploy-boundary"
    assert boundary.inputs["policy"] == iam.deploy_boundary_policy("prod", ENVS)
    assert role.inputs["permissionsBoundary"].endswith(":policy/mlplatform-prod-deploy-boundary")
    attached = [
        a.inputs["policyArn"]
        for a in prod_ci.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
        if "ci-deploy" in str(a.inputs["role"])
    ]
    assert attached == []  # no AdministratorAccess
    (inline,) = [p for p in prod_ci.of_type("aws:iam/rolePolicy:RolePolicy") if p.name.endswith("-ci-deploy-deploy")]
    assert inline.inputs["policy"] == iam.deploy_policy()


def test_every_role_the_program_makes_carries_the_boundary(prod_ci):
    """The boundary forbids creating a role without it: the program must never try."""
    roles = prod_ci.of_type("aws:iam/role:Role")
    assert len(roles) >= 5
    unbounded = [r.urn for r in roles if not str(r.inputs.get("permissionsBoundary", "")).endswith("/mlplatform-prod-deploy-boundary")]
    assert unbounded == []


@pytest.mark.parametrize("env", ENVS)
def test_the_store_renders_its_bucket_and_key_policies(env):
    stack = env
    res = mock_engine.run(stack)
    own = "arn:aws:s3:::" + res.raw_outputs["modelStore"].removeprefix("s3://")
    receivers: dict[str, list[str]] = {}  # receiving promoter role -> every model it receives from here
    for m, e in sorted(stack_cfg(stack)["mlplatform:models"].items()):
        for r in (e or {}).get("receivers", []):
            receivers.setdefault(promotion_iam.role_arn(r["account"], r["stack"]), []).append(m)
    (policy,) = res.of_type("aws:s3/bucketPolicy:BucketPolicy")
    (sse,) = res.of_type("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")
    key_arn = sse.inputs["rules"][0]["applyServerSideEncryptionByDefault"]["kmsMasterKeyId"]
    assert policy.inputs["policy"] == promotion_iam.store_bucket_policy(own, stack, receivers, key_arn)
    (key,) = res.of_type("aws:kms/key:Key")
    assert key.inputs["policy"] == promotion_iam.store_key_policy(account(stack), sorted(receivers))
    assert key.inputs["enableKeyRotation"] is True
    (sse,) = res.of_type("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")
    assert sse.inputs["rules"][0]["applyServerSideEncryptionByDefault"]["kmsMasterKeyId"].startswith("arn:aws:kms:")
    # every workload role of the store may use the key, through S3 only
    for p in res.of_type("aws:iam/rolePolicy:RolePolicy"):
        if p.name.endswith("-store-policy"):
            (stmt,) = [s for s in json.loads(p.inputs["policy"])["Statement"] if s["Sid"] == "StoreKey"]
            assert stmt["Resource"].startswith("arn:aws:kms:") and stmt["Condition"] == {
                "StringLike": {"kms:ViaService": "s3.*.amazonaws.com"}
            }


# --- one account: dev's deploy identity cannot touch prod -----------------------------------------


def _prod_bucket_request(action: str, key: str | None = "models/mnist/v1/model.keras") -> Request:
    res = bucket("prod") + (f"/{key}" if key else "")
    return Request(action, res, ONE, resource_policy=promotion_iam.store_bucket_policy(bucket("prod"), "prod", {}))


@pytest.mark.parametrize(
    "action, key",
    [
        ("s3:GetObject", "models/mnist/v1/model.keras"),
        ("s3:PutObject", "models/mnist/aliases/champion.json"),
        ("s3:DeleteObject", "models/mnist/v1/model.keras"),
        ("s3:PutBucketPolicy", None),
        ("s3:DeleteBucketPolicy", None),
        ("s3:DeleteBucket", None),
        ("s3:PutEncryptionConfiguration", None),
    ],
)
def test_dev_deploy_cannot_touch_prods_bucket(action, key):
    assert not allowed(deployer("dev"), _prod_bucket_request(action, key))
    # ... nor can anything dev's deploy made (every role it makes carries its tag and boundary)
    workload = Principal(
        f"arn:aws:iam::{ONE}:role/mlplatform-train-role-abc", [iam.deploy_policy()], iam.deploy_boundary_policy("dev", ENVS), {TAG: "dev"}
    )
    assert not allowed(workload, _prod_bucket_request(action, key))


def test_control_dev_deploy_works_on_its_own_bucket_and_prod_on_prods():
    own = Request(
        "s3:PutObject", bucket("dev") + "/models/mnist/x", ONE, resource_policy=promotion_iam.store_bucket_policy(bucket("dev"), "dev", {})
    )
    assert allowed(deployer("dev"), own)
    assert allowed(deployer("prod"), _prod_bucket_request("s3:PutBucketPolicy", None))


CLUSTER = f"arn:aws:eks:eu-west-1:{ONE}:cluster/mlplatform-prod"


@pytest.mark.parametrize(
    "action, resource, tags",
    [
        ("eks:DeleteCluster", CLUSTER, {TAG: "prod"}),
        ("eks:CreateAccessEntry", CLUSTER, {}),  # by name, even where a tag did not propagate
        ("eks:AssociateAccessPolicy", f"arn:aws:eks:eu-west-1:{ONE}:access-entry/mlplatform-prod/role/{ONE}/x/abc", {}),
        ("eks:UpdateNodegroupConfig", f"arn:aws:eks:eu-west-1:{ONE}:nodegroup/mlplatform-prod/gpu/abc", {}),
        ("iam:PutRolePolicy", f"arn:aws:iam::{ONE}:role/mlplatform-prod-model-promoter", {}),
        ("iam:UpdateAssumeRolePolicy", f"arn:aws:iam::{ONE}:role/mlplatform-prod-ci-deploy", {TAG: "prod"}),
        ("iam:AttachRolePolicy", f"arn:aws:iam::{ONE}:role/mlplatform-mnist-serving-store-role-1a2b", {TAG: "prod"}),
        ("sts:AssumeRole", f"arn:aws:iam::{ONE}:role/mlplatform-prod-model-promoter", {TAG: "prod"}),
        ("iam:PassRole", f"arn:aws:iam::{ONE}:role/mlplatform-cluster-node-role-9f8e", {TAG: "prod"}),
        ("ec2:TerminateInstances", f"arn:aws:ec2:eu-west-1:{ONE}:instance/i-0abc", {TAG: "prod"}),
        ("kms:ScheduleKeyDeletion", f"arn:aws:kms:eu-west-1:{ONE}:key/prod-store", {TAG: "prod"}),
    ],
)
def test_dev_deploy_cannot_touch_prods_cluster_roles_or_keys(action, resource, tags):
    policy = promotion_iam.store_key_policy(ONE, []) if action.startswith("kms:") else None

    def bounded(stack):  # a role's policies are changed with its boundary in the request context (IAM)
        return {"iam:PermissionsBoundary": f"arn:aws:iam::{ONE}:policy/{iam.deploy_boundary_name(stack)}"} if ":role/" in resource else {}

    assert not allowed(deployer("dev"), Request(action, resource, ONE, resource_policy=policy, resource_tags=tags, context=bounded("prod")))
    # control: the same request on dev's own things is allowed
    own = resource.replace("mlplatform-prod", "mlplatform-dev").replace("prod-store", "dev-store")
    own_tags = {TAG: "dev"} if tags or ":role/" in own else {}  # only a role tagged dev is dev's
    assert allowed(deployer("dev"), Request(action, own, ONE, resource_policy=policy, resource_tags=own_tags, context=bounded("dev")))


BOUNDARY = f"arn:aws:iam::{ONE}:policy/mlplatform-dev-deploy-boundary"


@pytest.mark.parametrize(
    "action, resource, context, ok",
    [
        ("iam:CreateRole", f"arn:aws:iam::{ONE}:role/escape", {}, False),  # an unbounded role to escape through
        ("iam:CreateRole", f"arn:aws:iam::{ONE}:role/escape", {"iam:PermissionsBoundary": BOUNDARY.replace("dev", "prod")}, False),
        (
            "iam:CreateRole",
            f"arn:aws:iam::{ONE}:role/mlplatform-x",
            {"iam:PermissionsBoundary": BOUNDARY, f"aws:RequestTag/{TAG}": "dev"},
            True,
        ),
        # bounded but untagged: a principal no store could tell apart (the shared-account escape)
        ("iam:CreateRole", f"arn:aws:iam::{ONE}:role/helper", {"iam:PermissionsBoundary": BOUNDARY}, False),
        (
            "iam:PutRolePermissionsBoundary",
            f"arn:aws:iam::{ONE}:role/x",
            {"iam:PermissionsBoundary": f"arn:aws:iam::{ONE}:policy/open"},
            False,
        ),
        ("iam:DeleteRolePermissionsBoundary", f"arn:aws:iam::{ONE}:role/mlplatform-dev-ci-deploy", {}, False),
        ("iam:CreatePolicyVersion", BOUNDARY, {}, False),
        ("iam:CreateUser", f"arn:aws:iam::{ONE}:user/backdoor", {}, False),
        ("iam:CreateAccessKey", f"arn:aws:iam::{ONE}:user/ci", {}, False),
        ("ec2:CreateTags", f"arn:aws:ec2:eu-west-1:{ONE}:vpc/vpc-1", {f"aws:RequestTag/{TAG}": "prod"}, False),
        ("ec2:CreateTags", f"arn:aws:ec2:eu-west-1:{ONE}:vpc/vpc-1", {f"aws:RequestTag/{TAG}": "dev"}, True),
    ],
)
def test_dev_deploy_cannot_leave_its_boundary(action, resource, context, ok):
    assert allowed(deployer("dev"), Request(action, resource, ONE, context=context)) is ok


# --- promotion across accounts: the bucket policy and the key grant are the only way in -------------

STAGING, PROD = account("staging"), account("prod")
SRC = bucket("staging")
PROMOTER = promotion_iam.role_arn(PROD, "prod")
OBJECT = f"{SRC}/models/mnist/v1/model.keras"


def promoter(acct_src: str = STAGING, acct_own: str = PROD) -> Principal:
    doc = promotion_iam.promoter_policy(bucket("prod"), {SRC: ["mnist"]}, {SRC: acct_src}, acct_own)
    return Principal(promotion_iam.role_arn(acct_own, "prod"), [doc], iam.deploy_boundary_policy("prod", ENVS), {TAG: "prod"})


def _source(receivers: dict[str, list[str]] | None = None, stack: str = "staging"):
    receivers = {PROMOTER: ["mnist"]} if receivers is None else receivers
    return promotion_iam.store_bucket_policy(SRC, stack, receivers), promotion_iam.store_key_policy(STAGING, sorted(receivers))


def test_prods_promoter_reads_stagings_bytes_through_bucket_policy_and_key_grant():
    bucket_policy, key_policy = _source()
    assert allowed(promoter(), Request("s3:GetObject", OBJECT, STAGING, resource_policy=bucket_policy))
    assert allowed(
        promoter(), Request("s3:ListBucket", SRC, STAGING, resource_policy=bucket_policy, context={"s3:prefix": "models/mnist/v1/"})
    )
    key = f"arn:aws:kms:eu-west-1:{STAGING}:key/staging-store"
    assert allowed(promoter(), Request("kms:Decrypt", key, STAGING, resource_policy=key_policy, context=S3))


@pytest.mark.parametrize(
    "what, request_, receivers",
    [
        ("no bucket grant", Request("s3:GetObject", OBJECT, STAGING), {}),
        ("another model", Request("s3:GetObject", f"{SRC}/models/fraud/v1/model.keras", STAGING), None),
        ("another folder", Request("s3:ListBucket", SRC, STAGING, context={"s3:prefix": "models/fraud/"}), None),
        ("a write", Request("s3:PutObject", f"{SRC}/models/mnist/aliases/champion.json", STAGING), None),
        ("a delete", Request("s3:DeleteObject", OBJECT, STAGING), None),
        ("no key grant", Request("kms:Decrypt", f"arn:aws:kms:eu-west-1:{STAGING}:key/k", STAGING, context=S3), {}),
        ("the key outside S3", Request("kms:Decrypt", f"arn:aws:kms:eu-west-1:{STAGING}:key/k", STAGING), None),
    ],
)
def test_prods_promoter_gets_nothing_else_from_staging(what, request_, receivers):
    bucket_policy, key_policy = _source(receivers)
    request_.resource_policy = key_policy if request_.action.startswith("kms:") else bucket_policy
    assert not allowed(promoter(), request_), what


def test_only_the_named_promoter_of_prod_account_reads_staging():
    bucket_policy, key_policy = _source()
    admin = Principal(f"arn:aws:iam::{PROD}:role/admin", [iam.deploy_policy()])  # an administrator of prod's account
    assert not allowed(admin, Request("s3:GetObject", OBJECT, STAGING, resource_policy=bucket_policy))
    assert not allowed(
        admin, Request("kms:Decrypt", f"arn:aws:kms:eu-west-1:{STAGING}:key/k", STAGING, resource_policy=key_policy, context=S3)
    )
    # the grant names prod's role in prod's account: the same role name in dev's account gets nothing
    impostor = promoter(acct_own=account("dev"))
    assert not allowed(impostor, Request("s3:GetObject", OBJECT, STAGING, resource_policy=bucket_policy))


def test_in_one_account_the_receiver_reads_and_nothing_more():
    """Where staging and prod share an account, prod's promoter (tagged prod) is the one prod identity
    staging's store lets in, and only for reads."""
    bucket_policy, _ = promotion_iam.store_bucket_policy(SRC, "staging", {promotion_iam.role_arn(ONE, "prod"): ["mnist"]}), None
    same = promoter(acct_src=ONE, acct_own=ONE)
    assert allowed(same, Request("s3:GetObject", OBJECT, ONE, resource_policy=bucket_policy))
    assert not allowed(same, Request("s3:PutObject", f"{SRC}/models/mnist/x", ONE, resource_policy=bucket_policy))
    assert not allowed(same, Request("s3:PutBucketPolicy", SRC, ONE, resource_policy=bucket_policy))
    assert not allowed(deployer("prod"), Request("s3:GetObject", OBJECT, ONE, resource_policy=bucket_policy))


# --- one account: no principal of no stack (untagged), no write under another key -----------------

UNTAGGED = f"arn:aws:iam::{ONE}:role/helper"


@pytest.mark.parametrize(
    "action, resource, tags, context",
    [
        ("iam:UntagRole", f"arn:aws:iam::{ONE}:role/mlplatform-dev-ci-deploy", {TAG: "dev"}, {"aws:TagKeys": [TAG]}),
        (
            "iam:TagRole",
            f"arn:aws:iam::{ONE}:role/mlplatform-dev-ci-deploy",
            {TAG: "dev"},
            {"aws:TagKeys": [TAG], f"aws:RequestTag/{TAG}": "dev"},
        ),
        ("iam:TagRole", UNTAGGED, {}, {"aws:TagKeys": [TAG], f"aws:RequestTag/{TAG}": "dev"}),  # adopting a role
        ("sts:AssumeRole", UNTAGGED, {}, {}),
        ("iam:UpdateAssumeRolePolicy", UNTAGGED, {}, {}),
        ("iam:DeleteRolePolicy", UNTAGGED, {}, {"iam:PermissionsBoundary": BOUNDARY}),
        ("iam:DeleteRole", UNTAGGED, {}, {}),
        ("iam:PassRole", UNTAGGED, {}, {}),
        # a session tag overrides the role's tag of the same key: passing stack=prod is refused
        ("sts:TagSession", f"arn:aws:iam::{ONE}:role/mlplatform-train-role-abc", {TAG: "dev"}, {f"aws:RequestTag/{TAG}": "prod"}),
    ],
)
def test_dev_deploy_cannot_untag_itself_or_use_an_untagged_role(action, resource, tags, context):
    assert not allowed(deployer("dev"), Request(action, resource, ONE, resource_tags=tags, context=context))


def test_control_dev_deploy_manages_its_own_tagged_roles():
    mine = f"arn:aws:iam::{ONE}:role/mlplatform-train-role-abc"
    for action in ("sts:AssumeRole", "iam:UpdateAssumeRolePolicy", "iam:DeleteRole", "iam:PassRole"):
        assert allowed(deployer("dev"), Request(action, mine, ONE, resource_tags={TAG: "dev"}))
    assert allowed(deployer("dev"), Request("iam:TagRole", mine, ONE, resource_tags={TAG: "dev"}, context={"aws:TagKeys": ["team"]}))


@pytest.mark.parametrize("action", ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:PutBucketPolicy"])
def test_an_untagged_principal_gets_nothing_from_a_store(action):
    """Whatever its own policies (an administrator role made outside the program, no boundary)."""
    admin = Principal(UNTAGGED, [iam.deploy_policy()])
    key = None if action == "s3:PutBucketPolicy" else "models/mnist/aliases/champion.json"
    assert not allowed(admin, _prod_bucket_request(action, key))
    # a role carrying prod's tag is prod's: allowed
    assert allowed(Principal(UNTAGGED, [iam.deploy_policy()], tags={TAG: "prod"}), _prod_bucket_request(action, key))


def test_a_bucket_tag_is_no_condition():
    """S3 general purpose buckets have ABAC off by default: the evaluator gives a bucket's tags to no
    condition, whatever the caller passes (an IAM role's tags, by contrast, are seen)."""
    deny_tagged = iam.deploy_boundary_policy("dev", ENVS)
    req = Request("s3:PutObject", bucket("prod") + "/x", ONE, resource_tags={TAG: "prod"})
    assert allowed(Principal(UNTAGGED, [iam.deploy_policy()], deny_tagged), req)
    role = Request("iam:DeleteRole", f"arn:aws:iam::{ONE}:role/r", ONE, resource_tags={TAG: "prod"})
    assert not allowed(Principal(UNTAGGED, [iam.deploy_policy()], deny_tagged), role)


KEY = f"arn:aws:kms:eu-west-1:{ONE}:key/prod-store"
SSE, SSE_KEY = "s3:x-amz-server-side-encryption", "s3:x-amz-server-side-encryption-aws-kms-key-id"


@pytest.mark.parametrize(
    "headers, ok",
    [
        ({}, True),  # the bucket default: the store's key
        ({SSE: "aws:kms", SSE_KEY: KEY}, True),
        ({SSE: "AES256"}, False),  # SSE-S3: past the key policy
        ({SSE: "aws:kms"}, False),  # the account's aws/s3 key
        ({SSE: "aws:kms", SSE_KEY: KEY.replace("prod-store", "other")}, False),
        ({"s3:x-amz-server-side-encryption-customer-algorithm": "AES256"}, False),  # SSE-C
    ],
)
def test_objects_are_written_under_the_stores_key_only(headers, ok):
    policy = promotion_iam.store_bucket_policy(bucket("prod"), "prod", {}, KEY)
    req = Request("s3:PutObject", bucket("prod") + "/models/mnist/v2/model.keras", ONE, resource_policy=policy, context=headers)
    assert allowed(deployer("prod"), req) is ok


def test_the_store_renders_the_key_in_its_bucket_policy(prod_ci):
    (policy,) = prod_ci.of_type("aws:s3/bucketPolicy:BucketPolicy")
    doc = json.loads(policy.inputs["policy"])
    (only_key,) = [s for s in doc["Statement"] if s["Sid"] == "OnlyStoreKey"]
    assert only_key["Condition"]["StringNotEquals"][SSE_KEY].startswith("arn:aws:kms:")
    assert {s["Sid"] for s in doc["Statement"]} >= {"OnlyThisStack", "OnlyStoreKey", "OnlyStoreKeyAlgorithm", "NoCustomerKeys"}


@pytest.mark.parametrize("env", ENVS)
def test_every_aws_resource_carries_the_stack_tag(env):
    """The provider's default tags reach every AWS resource, those a component forgets (the
    autoscaler's role, the served-version SSM parameters) included; every role, a principal the
    stores and the boundary tell apart by its tag, carries it in its own inputs too."""
    res = mock_engine.run(env)
    (provider,) = res.of_type("pulumi:providers:aws")
    assert json.loads(provider.inputs["defaultTags"])["tags"][TAG] == env
    for r in res.records:
        if r.custom and r.type.startswith("aws:"):
            assert r.provider.startswith(provider.urn), (r.type, r.name, r.provider)
    untagged = [r.name for r in res.of_type("aws:iam/role:Role") if (r.inputs.get("tags") or {}).get(TAG) != env]
    assert untagged == []
