"""Two limits around dev's LoRA adapter ``support-bot`` (``adapterOf: chat``, docs/lora.md), rendered under mocks:

* the base's import Job runs its fit check with the LoRA buffers its vLLM will hold: the same
  ``--max-lora-rank``/``--max-loras`` as chat's pods (components/models/llm_service.py ``lora_limits``),
  and none where the base has no adapter (llm/importer.py refuses what fits only without them:
  tests/llm/test_import.py);
* the fine-tuning Job's role reads only what the run reads (components/models/lora_job.py
  ``read_prefixes``): its base's versions, its own adapter's folder and its checkpoints; judged by
  evaluating requests (tools/iam_eval.py), as the registry-writers-guarded tests do, not by the text.
"""

from __future__ import annotations

import copy
import json

import pytest

from components.models import llm_import
from policy import rules
from tests.stacks.test_lora import MODELS, chat_pod, objects, pinned_models
from tools import iam_eval, mock_engine

ACCOUNT = "000000000000"


@pytest.fixture(scope="module")
def pinned():
    return mock_engine.run("dev", overrides=pinned_models())


def import_command(result) -> list[str]:
    (job,) = [j for n, j in objects(result, "Job").items() if n.startswith(llm_import.object_name("chat") + "-")]
    return job.raw["spec"]["template"]["spec"]["containers"][0]["command"]


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_the_bases_import_counts_the_lora_buffers_its_pods_hold(pinned):
    cmd, (vllm,) = import_command(pinned), chat_pod(pinned)["spec"]["containers"]
    assert "--gpu-mib" in cmd  # the fit check runs (against the pool's GPU)
    for name in ("--max-lora-rank", "--max-loras"):
        assert flag(cmd, name) == flag(vllm["args"], name), name
    assert flag(cmd, "--max-loras") == str(sum(1 for m in MODELS.values() if m.get("adapterOf") == "chat"))  # every adapter of chat


def test_a_base_without_adapters_imports_without_lora_buffers():
    models = {n: m for n, m in copy.deepcopy(MODELS).items() if m.get("adapterOf") != "chat"}
    cmd = import_command(mock_engine.run("dev", overrides={"mlplatform:models": models}))
    assert "--gpu-mib" in cmd and "--max-lora-rank" not in cmd and "--max-loras" not in cmd


# ---- the fine-tuning Job's reads ----


def lora_policy(result) -> rules.Res:
    (policy,) = [r for r in result.of_type("aws:iam/rolePolicy:RolePolicy") if "-support-bot-lora-store" in r.name]
    doc = policy.inputs["policy"]
    return rules.Res(policy.type, {"policy": doc if isinstance(doc, str) else json.dumps(doc)}, name=policy.name)


def bucket_arn(policy: rules.Res) -> str:
    return next(s for s in json.loads(policy.props["policy"])["Statement"] if s.get("Sid") == "List")["Resource"]


def can(policy: rules.Res, action: str, resource: str, **context: str) -> bool:
    principal = iam_eval.Principal(f"arn:aws:iam::{ACCOUNT}:role/lora", [policy.props["policy"]])
    return iam_eval.allowed(principal, iam_eval.Request(action, resource, ACCOUNT, context=dict(context)))


# What the run reads (llm/finetune.py, llm/lora_gate.py) and what it must not.
NEEDED = [
    "models/chat/20261201T000000Z-base7/model.safetensors",  # the base version it trains on
    "models/chat/20261201T000000Z-base7/MANIFEST.json",
    "models/chat/rejected/20261201T000000Z-base7.json",  # a rejected base is not trained on
    "models/support-bot/aliases/champion.json",  # the champion adapter the gate compares with
    "models/support-bot/20261101T000000Z-old/adapter_model.safetensors",
    "models/support-bot/train.jsonl",  # an s3:// data set: the adapter's own prefix
    "checkpoints/support-bot/uid-1/state.json",  # resume
]
FOREIGN = [
    "models/mnist/v1/model.keras",  # another model's versions
    "models/chat-other/v1/model.safetensors",  # a model whose name starts with the base's
    "models/support-bot-2/aliases/champion.json",  # ... or with the adapter's
    "checkpoints/other-bot/uid-1/state.json",  # another adapter's checkpoints
    "checkpoints/mnist/uid-1/ckpt.index",
    "checkpoints/chat/uid-1/state.json",
    "data/train.csv",
    "secret.txt",
]


def reads_beyond(policy: rules.Res) -> list[str]:
    """The foreign keys (objects, and listings of their folders) the document lets its role read."""
    bucket = bucket_arn(policy)
    out = [k for k in FOREIGN if can(policy, "s3:GetObject", f"{bucket}/{k}")]
    listings = ["", "models/", "checkpoints/", *(k.rsplit("/", 2)[0] + "/" for k in FOREIGN if "/" in k)]
    return out + [f"list {p!r}" for p in listings if can(policy, "s3:ListBucket", bucket, **{"s3:prefix": p})]


def test_the_fine_tuning_job_reads_its_base_its_adapter_and_its_checkpoints(pinned):
    policy = lora_policy(pinned)
    bucket = bucket_arn(policy)
    assert [k for k in NEEDED if not can(policy, "s3:GetObject", f"{bucket}/{k}")] == []
    for prefix in ("models/chat/", "models/support-bot/", "checkpoints/support-bot/uid-1/"):
        assert can(policy, "s3:ListBucket", bucket, **{"s3:prefix": prefix}), prefix  # registry.versions, resume
    assert reads_beyond(policy) == []
    # it writes only as before: the adapter's folder (create-only, registry guards) and its checkpoints
    assert not can(policy, "s3:PutObject", f"{bucket}/models/chat/v9/f", **{"s3:if-none-match": "*"})
    assert can(policy, "s3:PutObject", f"{bucket}/models/support-bot/v9/f", **{"s3:if-none-match": "*"})
    assert can(policy, "s3:PutObject", f"{bucket}/checkpoints/support-bot/uid-1/state.json")
    assert rules.RESOURCE_RULES["registry-writers-guarded"][0](policy) == []


@pytest.mark.parametrize(
    "planted",
    [
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "{bucket}/*"},
        {"Effect": "Allow", "Action": "s3:Get*", "Resource": "{bucket}/models/*"},
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "{bucket}/checkpoints/*"},
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "{bucket}/models/chat*"},
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "{bucket}"},
    ],
    ids=["bucket", "models", "checkpoints", "base-name-prefix", "listing"],
)
def test_a_planted_wildcard_read_is_caught(pinned, planted):
    policy = lora_policy(pinned)
    doc = json.loads(policy.props["policy"])
    doc["Statement"].append(json.loads(json.dumps(planted).replace("{bucket}", bucket_arn(policy))))
    assert reads_beyond(rules.Res(policy.type, {"policy": json.dumps(doc)}, name=policy.name))
