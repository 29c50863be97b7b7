"""The promotion role's policy evaluated for real, on moto's IAM (issue 15 item 3: least privilege).

The role is created with the documents the program renders (components/lib/promotion_iam.py; the stack
tests assert the rendered RolePolicy is exactly that function's output for staging and prod), the deploy
identity assumes it the way ``ops/deliver.py`` does (STS AssumeRole, ``deliver.as_role``), and a
promotion of ``mnist`` runs through the registry with those credentials. What the role may not do is
then tried, and must be AccessDenied.

moto's limits, stated: it evaluates actions, resources and the trust policy's principal, and ignores
``StringLike`` conditions, so the ``s3:prefix`` condition on ListBucket is not exercised here (the stack
tests pin it); reads and writes of objects are.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.lib.promotion_iam import promoter_policy, promoter_trust_policy
from ops import deliver
from training import registry

boto3 = pytest.importorskip("boto3")
moto = pytest.importorskip("moto")
from moto.core.authorization import enable_iam_authentication  # noqa: E402

V1 = "20260101T000000Z-run1"
SRC, DST, OTHER = "staging-models", "prod-models", "unrelated-bucket"
ADMIN = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})


def _version(tmp_path: Path, name: str, passed: bool | None = None) -> Path:
    d = tmp_path / name
    (d / "saved_model").mkdir(parents=True)
    (d / "saved_model" / "saved_model.pb").write_bytes(b"pb")
    (d / "model.keras").write_bytes(b"keras")
    (d / "metadata.json").write_text("{}" if passed is None else json.dumps({"gate": {"passed": passed}}))
    return d


def _user(iam, name: str) -> tuple[str, boto3.Session]:
    arn = iam.create_user(UserName=name)["User"]["Arn"]
    iam.put_user_policy(UserName=name, PolicyName="admin", PolicyDocument=ADMIN)  # a deploy identity: admin
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return arn, boto3.Session(aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"], region_name="us-east-1")


@pytest.fixture
def world(monkeypatch, tmp_path):
    from moto import mock_aws

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    with mock_aws():
        s3, iam = boto3.client("s3"), boto3.client("iam")
        for b in (SRC, DST, OTHER):
            s3.create_bucket(Bucket=b)
        registry.publish(_version(tmp_path, "mnist"), f"s3://{SRC}", "mnist", V1, reason="validated in staging")
        registry.publish(_version(tmp_path, "fraud"), f"s3://{SRC}", "fraud", V1, reason="another model")
        s3.put_object(Bucket=OTHER, Key="models/mnist/secret", Body=b"x")
        deployer, deployer_session = _user(iam, "prod-deployer")
        _, intruder_session = _user(iam, "someone-else")  # admin too, but not the trusted principal
        role = iam.create_role(RoleName="mlplatform-prod-model-promoter", AssumeRolePolicyDocument=promoter_trust_policy(deployer))["Role"]
        policy = promoter_policy(f"arn:aws:s3:::{DST}", {f"arn:aws:s3:::{SRC}": ["mnist"]})
        iam.put_role_policy(RoleName=role["RoleName"], PolicyName="promote-models", PolicyDocument=policy)
        with enable_iam_authentication():
            yield {"role": role["Arn"], "deployer": deployer_session, "intruder": intruder_session}


def _denied(fn) -> None:
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as err:
        fn()
    assert err.value.response["Error"]["Code"] in ("AccessDenied", "403"), err.value.response["Error"]


def test_the_promoter_copies_mnist_and_can_do_nothing_else(world, monkeypatch):
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", world["deployer"])
    with deliver.as_role(world["role"], "deliver-prod-mnist"):
        doc = registry.promote_between(f"s3://{SRC}", f"s3://{DST}", "mnist", V1, reason="pipeline", champion=False)
        assert doc["alias"] == "candidate" and doc["version"] == V1
        registry.verify(f"s3://{DST}", "mnist", V1)
        who = boto3.client("sts").get_caller_identity()["Arn"]
        assert ":assumed-role/mlplatform-prod-model-promoter/deliver-prod-mnist" in who
        s3 = boto3.client("s3")
        _denied(lambda: s3.get_object(Bucket=SRC, Key=f"models/fraud/{V1}/model.keras"))  # another model of the source
        _denied(lambda: s3.put_object(Bucket=SRC, Key="models/mnist/aliases/champion.json", Body=b"{}"))  # writing the source
        _denied(lambda: s3.get_object(Bucket=OTHER, Key="models/mnist/secret"))  # any other bucket
        _denied(lambda: s3.put_object(Bucket=DST, Key="models/fraud/x", Body=b"x"))  # its own store outside the model
        _denied(lambda: s3.delete_object(Bucket=DST, Key=f"models/mnist/{V1}/model.keras"))  # no delete, anywhere
        _denied(lambda: boto3.client("iam").list_roles())  # no other service
    # Back to the deploy identity afterwards.
    assert boto3.client("sts").get_caller_identity()["Arn"].endswith(":user/prod-deployer")


def test_only_the_trusted_deploy_identity_may_assume_it(world, monkeypatch):
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", world["intruder"])
    with pytest.raises(Exception, match="AccessDenied|not authorized"):
        with deliver.as_role(world["role"], "deliver-prod-mnist"):
            pass


def test_the_training_role_publishes_versions_only_and_the_pipeline_adopts_them(monkeypatch, tmp_path):
    """Issue 24 item 8: ``models/`` is the registry; the training role, evaluated on moto's IAM with the
    document the program renders (iam.s3_bucket_policy), publishes a version (files and manifest) and
    prunes its checkpoints, and cannot move an alias or LATEST, write an audit record or a rejection,
    nor delete anything there. Planted: a run that tries to move the champion itself is refused, and
    nothing moved; the pipeline's identity then adopts the version (registry.adopt), LATEST following."""
    from moto import mock_aws

    from components.lib.iam import s3_bucket_policy

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket=DST)
        iam = boto3.client("iam")
        iam.create_user(UserName="train-mnist")
        policy = s3_bucket_policy(f"arn:aws:s3:::{DST}", write=True, prefixes=["models/mnist/", "checkpoints/mnist/"], read_all=True)
        # moto puts no S3 header condition key (s3:if-none-match) in its request context, so the
        # create-only guard would refuse every write here; that one statement is evaluated with
        # tools/iam_eval.py instead (tests/unit/test_training_store_iam.py).
        doc = json.loads(policy)
        doc["Statement"] = [st for st in doc["Statement"] if st.get("Sid") != "CreateOnly"]
        assert len(doc["Statement"]) == len(json.loads(policy)["Statement"]) - 1
        iam.put_user_policy(UserName="train-mnist", PolicyName="store", PolicyDocument=json.dumps(doc))
        key = iam.create_access_key(UserName="train-mnist")["AccessKey"]
        session = boto3.Session(aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"], region_name="us-east-1")
        pipeline = boto3.DEFAULT_SESSION
        monkeypatch.setattr(boto3, "DEFAULT_SESSION", session)
        root, v2 = f"s3://{DST}", "20260102T000000Z-run2"
        with enable_iam_authentication():
            out = registry.publish(_version(tmp_path, "mnist", passed=True), root, "mnist", V1, reason="trained", adopt=False)
            assert out.note == "published as a version only: the pipeline adopts it"
            # planted: a run that moves the champion itself (registry.publish's default) is refused
            _denied(lambda: registry.publish(_version(tmp_path, "mnist-2", passed=True), root, "mnist", v2, reason="trained"))
            s3 = boto3.client("s3")
            s3.put_object(Bucket=DST, Key="checkpoints/mnist/run1/epoch-1", Body=b"c")
            s3.delete_object(Bucket=DST, Key="checkpoints/mnist/run1/epoch-1")  # pruning its own checkpoints
            for key_ in (f"models/mnist/{V1}/model.keras", "models/mnist/aliases/champion.json", "models/mnist/LATEST"):
                _denied(lambda k=key_: s3.delete_object(Bucket=DST, Key=k))
            for key_ in (
                "aliases/champion.json",
                "aliases/candidate.json",
                "LATEST",
                "audit/champion/0000000001.json",
                f"rejected/{V1}.json",
            ):
                _denied(lambda k=key_: s3.put_object(Bucket=DST, Key=f"models/mnist/{k}", Body=b"{}"))
            _denied(lambda: s3.put_object(Bucket=DST, Key="models/fraud/LATEST", Body=b"x"))  # another model
        monkeypatch.setattr(boto3, "DEFAULT_SESSION", pipeline)  # the pipeline's (deploy) identity
        assert registry.versions(root, "mnist") == [V1, v2]  # both versions published ...
        assert registry.aliases(root, "mnist") == {} and registry.latest(root, "mnist") is None  # ... no pointer moved
        adopted = registry.adopt(root, "mnist", champion=True, reason="pipeline: adopted")
        assert adopted["version"] == v2 and adopted["moved"] == ["candidate", "champion"]
        assert registry.latest(root, "mnist") == v2


def _object_requests(bucket: str) -> list[tuple[str, str]]:
    keys = [
        f"models/mnist/{V1}/model.keras",
        f"models/mnist/{V1}/MANIFEST.json",
        "models/mnist/aliases/champion.json",
        "models/mnist/LATEST",
        "models/mnist/audit/champion/0000000001.json",
        f"models/mnist/rejected/{V1}.json",
        "models/mnist-v2/LATEST",  # a name sharing the prefix
        "models/fraud/LATEST",
        "checkpoints/mnist/run1/epoch-1",
        "data/mnist.npz",
    ]
    actions = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    return [(a, f"arn:aws:s3:::{bucket}/{k}") for a in actions for k in keys]


def test_the_policy_evaluator_agrees_with_moto_on_every_object_request():
    """tools/iam_eval.py proves what moto cannot model (boundaries, bucket and key policies, other
    accounts); where both apply, identity policies on object actions (no condition involved), their
    verdicts must be the same, request by request, on the documents the program renders."""
    from moto.iam.access_control import IAMPolicy, PermissionResult

    from components.lib.iam import s3_bucket_policy
    from tools.iam_eval import Principal, Request, allowed

    def without_conditions(doc: str) -> str:  # moto has no request context for them (module docstring)
        d = json.loads(doc)
        d["Statement"] = [s for s in d["Statement"] if "Condition" not in s]
        return json.dumps(d)

    docs = {
        "training": s3_bucket_policy(f"arn:aws:s3:::{DST}", write=True, prefixes=["models/mnist/", "checkpoints/mnist/"], read_all=True),
        "serving": s3_bucket_policy(f"arn:aws:s3:::{DST}", write=False, prefixes=["models/mnist/"]),
        "promoter": promoter_policy(f"arn:aws:s3:::{DST}", {f"arn:aws:s3:::{SRC}": ["mnist"]}),
    }
    compared, verdicts = 0, set()
    for name, doc in docs.items():
        doc = without_conditions(doc)
        for bucket in (SRC, DST, OTHER):
            for action, resource in _object_requests(bucket):
                by_moto = IAMPolicy(doc).is_action_permitted(action, resource) == PermissionResult.PERMITTED
                ours = allowed(Principal("arn:aws:iam::123456789012:role/r", [doc]), Request(action, resource, "123456789012"))
                assert ours == by_moto, (name, action, resource, ours, by_moto)
                compared, verdicts = compared + 1, verdicts | {(name, ours)}
    assert compared == 3 * 3 * 30
    assert verdicts == {(n, v) for n in docs for v in (True, False)}  # each document both allows and refuses
