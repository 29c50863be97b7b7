"""An LLM's config rules of issue 25: pinned revisions where users are served, and the fit of weights +
KV cache on the pool's GPUs at preview (llm/fit.py with the committed cards in llm/cards/), one line
each, naming the stack file, the model and the numbers."""

from __future__ import annotations

import copy

import pytest
import yaml

from components.config import ConfigError, capacity, validate
from tests.conftest import ROOT
from tests.llm.test_fit import NODES

# The program reads the stack file's keys without their "mlplatform:" namespace.
PROD = {k.removeprefix("mlplatform:"): v for k, v in yaml.safe_load((ROOT / "stacks" / "Pulumi.prod.yaml").read_text())["config"].items()}
STACK_FILE = "stacks/Pulumi.prod.yaml"


def prod_chat(**llm) -> dict:
    """The prod stack with its chat model's llm section changed (None removes a key)."""
    cfg = copy.deepcopy(PROD)
    # without chat's LoRA adapters: these tests are about chat's own section (an adapter's rules and its
    # LoRA buffers in the fit: tests/unit/test_lora_config.py)
    cfg["models"] = {m: e for m, e in cfg["models"].items() if not (e or {}).get("adapterOf")}
    section = cfg["models"]["chat"]["llm"]
    for k, v in llm.items():
        if v is None:
            section.pop(k, None)
        else:
            section[k] = v
    return cfg


def one_error(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate(raw, STACK_FILE)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_prod_as_committed_is_valid():
    validate(PROD, STACK_FILE)


def test_prod_needs_a_pinned_revision():
    message = one_error(prod_chat(revision=None))
    assert message.startswith(f"{STACK_FILE}: mlplatform:models.chat.llm.revision: required on prod"), message


def test_prod_receives_its_llm_weights_and_never_imports_them():
    """Prod never talks to Hugging Face: its vLLM model's versions arrive by promotion (``source``)."""
    cfg = prod_chat()
    del cfg["models"]["chat"]["source"]
    message = one_error(cfg)
    assert message.startswith(f"{STACK_FILE}: mlplatform:models.chat.source: prod never downloads from Hugging Face"), message


def test_prod_pins_a_commit_not_a_branch():
    message = one_error(prod_chat(revision="main"))
    assert "prod pins a 40-hex commit hash, not a branch or tag that can move (got 'main')" in message


def test_a_model_that_cannot_fit_fails_at_preview_with_numbers_and_what_fits():
    """Llama-3.1-70B (131.4 GiB of bf16 weights) on prod's g5.2xlarge pool (one A10G)."""
    message = one_error(prod_chat(source="meta-llama/Llama-3.1-70B-Instruct", quantization=None))
    assert message.startswith(
        f"{STACK_FILE}: mlplatform:models.chat.llm: meta-llama/Llama-3.1-70B-Instruct does not fit GPU pool 'gpu-ondemand'"
    )
    assert "weights 131.4 GiB + KV cache 2.5 GiB = 133.9 GiB > 19.2 GiB usable (8192 tokens x 1 sequences)" in message
    assert "would fit: a pool of p5.48xlarge (80 GiB GPUs) with gpus: 2" in message


def test_too_many_tokens_suggests_the_context_that_fits():
    message = one_error(prod_chat(source="meta-llama/Llama-3.1-8B-Instruct", quantization=None, maxModelLen=131072))
    # 14.96 GiB of weights leave 4.28 GiB for 128 KiB per token; 4-bit weights would still not hold 16 GiB of KV.
    assert "would fit: maxModelLen <= 35077; or a pool of p4d.24xlarge (40 GiB GPUs) with gpus: 1" in message, message


def test_max_num_seqs_counts_full_contexts():
    """maxNumSeqs is the concurrency the stack promises at full context: 64 x 8192 tokens of the AWQ model's KV do not fit."""
    message = one_error(prod_chat(maxNumSeqs=64))
    assert "(8192 tokens x 64 sequences)" in message and "or maxNumSeqs" in message


def test_unknown_models_are_checked_at_import_instead():
    validate(prod_chat(source="someorg/some-model-without-card"), STACK_FILE)


def test_every_gpu_family_has_its_memory_and_the_fit_tests_use_the_catalogue():
    families = {t.split(".")[0] for t in capacity.GPU_COUNT}
    assert families <= set(capacity.GPU_MEMORY_MIB)
    for node, (mib, per_node) in NODES.items():
        assert capacity.gpu_catalogue()[node] == (mib, per_node)


def test_a_mixed_pool_is_checked_against_its_smallest_gpu():
    class Pool:
        instance_types = ["g5.xlarge", "g6.xlarge", "g4dn.xlarge"]

    assert capacity.pool_gpu_memory_mib(Pool()) == 15360


STAGING = {
    k.removeprefix("mlplatform:"): v for k, v in yaml.safe_load((ROOT / "stacks" / "Pulumi.staging.yaml").read_text())["config"].items()
}


@pytest.mark.parametrize("env", ["staging", "prod"])
def test_a_public_llm_route_needs_api_keys_on_staging_and_prod(env):
    """Issue 24 item 10: the OpenAI routes of staging/prod are not open to anyone in the CIDRs."""
    cfg = copy.deepcopy(PROD if env == "prod" else STAGING)
    stack_file = f"stacks/Pulumi.{env}.yaml"
    validate(copy.deepcopy(cfg), stack_file)  # as committed: keys on
    cfg["models"]["chat"]["serving"].pop("apiKey")
    with pytest.raises(ConfigError) as info:
        validate(copy.deepcopy(cfg), stack_file)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{stack_file}: mlplatform:models.chat.serving.apiKey: required on {env}"), message
    if env == "staging":  # an internal entry point (inside the VPC) may go without
        cfg["gateway"] = {**cfg.get("gateway", {}), "internal": True, "tls": None}
        cfg["gateway"].pop("tls")
        validate(cfg, stack_file)


def test_prod_llm_keeps_two_replicas_through_a_node_drain():
    """Issue 24 (Low): one replica and a PDB of maxUnavailable 1 let a drain stop prod's only vLLM."""
    message = one_error(prod_chat(minReplicas=1, replicas=1))
    assert message.startswith(f"{STACK_FILE}: mlplatform:models.chat.llm.minReplicas: prod needs >= 2 replicas"), message
