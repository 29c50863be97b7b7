"""The registry guards of a publishing workload's store policy (issue 24 item 8), evaluated with
tools/iam_eval.py on the document components/lib/iam.py renders: the training role creates a version's
files and manifest only if they do not exist (S3 conditional writes, ``s3:if-none-match``; moto has no
such key) and writes no alias, audit record, LATEST or rejection (the pipeline adopts its versions:
training/registry.py ``adopt``); everything a training run does stays allowed."""

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
        (f"models/mnist/{V1}/model.keras", CREATE_ONLY),  # a version's files, each created once
        (f"models/mnist/{V1}/saved_model/saved_model.pb", CREATE_ONLY),
        (f"models/mnist/{V1}/MANIFEST.json", CREATE_ONLY),  # its manifest, created once (training/registry.py)
        ("checkpoints/mnist/run-1/epoch-1", {}),  # checkpoints are the run's own: overwritten, pruned
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
        (f"models/mnist/{V1}/model.keras", {}, "a version's file replaced (no If-None-Match)"),
        ("models/mnist/aliases/champion.json", {"s3:if-match": '"etag"'}, "the champion moved"),
        ("models/mnist/aliases/champion.json", CREATE_ONLY, "a first champion set"),
        ("models/mnist/aliases/candidate.json", {"s3:if-match": '"etag"'}, "the candidate moved"),
        ("models/mnist/aliases/previous.json", {}, "previous moved"),
        ("models/mnist/LATEST", {"s3:if-match": '"etag"'}, "LATEST moved"),
        ("models/mnist/LATEST", CREATE_ONLY, "a first LATEST written"),
        ("models/mnist/audit/champion/0000000007.json", CREATE_ONLY, "an audit record forged"),
        ("models/fraud/aliases/champion.json", {}, "another model"),
    ],
)
def test_the_training_role_cannot_rewrite_a_version_or_a_verdict(key, context, why):
    assert not allowed(training(), put(key, context)), why


def test_control_without_the_guards_the_same_writes_pass():
    """The guard statements are what refuses them (the document without them allows each)."""
    doc = json.loads(training().policies[0])
    doc["Statement"] = [s for s in doc["Statement"] if s.get("Sid") not in ("NoPointers", "NoRejections", "CreateOnly")]
    open_role = Principal(training().arn, [json.dumps(doc)])
    assert allowed(open_role, put(f"models/mnist/{V1}/MANIFEST.json"))
    assert allowed(open_role, put(f"models/mnist/{V1}/model.keras"))
    assert allowed(open_role, put(f"models/mnist/rejected/{V1}.json"))
    for key in ("aliases/champion.json", "LATEST", "audit/champion/0000000007.json"):
        assert allowed(open_role, put(f"models/mnist/{key}", CREATE_ONLY)), key


def test_the_llm_import_role_gets_the_same_guards():
    """The LLM import Job's role (components/models/llm_import.py: write under its model's folder only)."""
    doc = s3_bucket_policy(BUCKET, write=True, prefixes=["models/qwen/"])
    importer = Principal(f"arn:aws:iam::{ACCOUNT}:role/mlplatform-qwen-import-store-role", [doc])
    assert allowed(importer, put(f"models/qwen/{V1}/model-00001-of-00002.safetensors", CREATE_ONLY))
    assert allowed(importer, put(f"models/qwen/{V1}/MANIFEST.json", CREATE_ONLY))
    for key in ("aliases/candidate.json", "aliases/champion.json", "LATEST", "audit/candidate/0000000002.json"):
        assert not allowed(importer, put(f"models/qwen/{key}", CREATE_ONLY)), key
    assert not allowed(importer, Request("s3:DeleteObject", f"{BUCKET}/models/qwen/{V1}/config.json", ACCOUNT))


def test_readers_get_no_write_statements_at_all():
    doc = json.loads(s3_bucket_policy(BUCKET, write=False, prefixes=["models/mnist/"]))
    assert {s["Sid"] for s in doc["Statement"]} == {"List", "Read"}
