"""The registry guards of a publishing workload's store policy (issue 24 item 8), evaluated with
tools/iam_eval.py on the document components/lib/iam.py renders: the training role creates a version's
manifest only if it does not exist (S3 conditional writes, ``s3:if-none-match``; moto has no such key)
and writes no rejection; everything a training run does stays allowed."""

from __future__ import annotations

import json

import pytest

from components.lib.iam import s3_bucket_policy
from tools.iam_eval import Principal, Request, allowed

ACCOUNT = "111111111111"
BUCKET = "arn:aws:s3:::mlplatform-dev-store"
V1 = "20260101T000000Z-abc1234"
CREATE_ONLY = {"s3:if-none-match": "*"}


def training() -> Principal:
    doc = s3_bucket_policy(BUCKET, write=True, prefixes=["models/mnist/", "checkpoints/mnist/"], read_all=True)
    return Principal(f"arn:aws:iam::{ACCOUNT}:role/mlplatform-mnist-training-store-role", [doc])


def put(key: str, context: dict | None = None) -> Request:
    return Request("s3:PutObject", f"{BUCKET}/{key}", ACCOUNT, context=context or {})


@pytest.mark.parametrize(
    "key, context",
    [
        (f"models/mnist/{V1}/model.keras", {}),  # a version's files
        (f"models/mnist/{V1}/MANIFEST.json", CREATE_ONLY),  # its manifest, created once (training/registry.py)
        ("models/mnist/aliases/candidate.json", {"s3:if-match": '"etag"'}),  # the candidate alias it moves
        ("checkpoints/mnist/run-1/epoch-1", {}),
    ],
)
def test_what_a_training_run_writes_stays_allowed(key, context):
    assert allowed(training(), put(key, context))


@pytest.mark.parametrize(
    "key, context, why",
    [
        (f"models/mnist/{V1}/MANIFEST.json", {}, "an existing version's manifest replaced (no If-None-Match)"),
        (f"models/mnist/{V1}/MANIFEST.json", {"s3:if-match": '"etag"'}, "a manifest overwritten by compare-and-swap"),
        (f"models/mnist/rejected/{V1}.json", {}, "a rejection overwritten"),
        (f"models/mnist/rejected/{V1}.json", CREATE_ONLY, "a rejection written"),
        ("models/fraud/aliases/champion.json", {}, "another model"),
    ],
)
def test_the_training_role_cannot_rewrite_a_version_or_a_verdict(key, context, why):
    assert not allowed(training(), put(key, context)), why


def test_control_without_the_guards_the_same_writes_pass():
    """The two statements are what refuses them (the document without them allows both)."""
    doc = json.loads(training().policies[0])
    doc["Statement"] = [s for s in doc["Statement"] if s.get("Sid") not in ("NoRejections", "ManifestCreateOnly")]
    open_role = Principal(training().arn, [json.dumps(doc)])
    assert allowed(open_role, put(f"models/mnist/{V1}/MANIFEST.json"))
    assert allowed(open_role, put(f"models/mnist/rejected/{V1}.json"))


def test_readers_get_no_write_statements_at_all():
    doc = json.loads(s3_bucket_policy(BUCKET, write=False, prefixes=["models/mnist/"]))
    assert {s["Sid"] for s in doc["Statement"]} == {"List", "Read"}
