"""A LoRA adapter's catalogue entry (issue 26, components/config/lora.py): ``adapterOf`` an LLM entry of the
stack and ``training: {kind: lora}``; each mistake is refused before any resource exists, in one line
naming the stack file and the key. And the fit check counts the adapters' vLLM buffers (llm/fit.py)."""

from __future__ import annotations

import copy

import pytest
import yaml

from components.config import ConfigError, validate
from components.config.lora import LoraTrainingConfig
from llm import fit
from tests.conftest import ROOT

STACK_FILE = "stacks/Pulumi.dev.yaml"
DEV = {k.removeprefix("mlplatform:"): v for k, v in yaml.safe_load((ROOT / STACK_FILE).read_text())["config"].items()}
PREFIX = f"{STACK_FILE}: mlplatform:"


def dev(**entries) -> dict:
    """The dev stack with catalogue entries replaced (None removes one)."""
    cfg = copy.deepcopy(DEV)
    for name, entry in entries.items():
        if entry is None:
            cfg["models"].pop(name)
        else:
            cfg["models"][name] = entry
    return cfg


def bot(**changes) -> dict:
    """dev's support-bot entry with top-level keys changed (None removes one)."""
    entry = copy.deepcopy(DEV["models"]["support-bot"])
    for k, v in changes.items():
        if v is None:
            entry.pop(k, None)
        else:
            entry[k] = v
    return entry


def lora_training(**changes) -> dict:
    return {**copy.deepcopy(DEV["models"]["support-bot"]["training"]), **changes}


def one_error(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate(raw, STACK_FILE)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_dev_as_committed_trains_support_bot_on_chat():
    cfg = validate(DEV, STACK_FILE)
    entry = cfg.models["support-bot"]
    assert entry.adapter_of == "chat" and isinstance(entry.training, LoraTrainingConfig)
    assert entry.training.params.rank <= cfg.models["chat"].llm.max_lora_rank == 16
    assert not isinstance(cfg.models["mnist"].training, LoraTrainingConfig)  # kind absent: a TF run, as before


def test_unknown_base():
    message = one_error(dev(**{"support-bot": bot(adapterOf="chatt")}))
    assert message == f"{PREFIX}models.support-bot.adapterOf: no model 'chatt' on this stack (vllm models: chat)"


def test_base_that_is_not_an_llm():
    message = one_error(dev(**{"support-bot": bot(adapterOf="mnist")}))
    assert message == f"{PREFIX}models.support-bot.adapterOf: 'mnist' is a tensorflow model: an adapter's base is a `runtime: vllm` entry"


def test_base_that_is_itself_an_adapter():
    message = one_error(dev(**{"support-bot": bot(adapterOf="support-bot")}))
    assert message == (
        f"{PREFIX}models.support-bot.adapterOf: 'support-bot' is itself an adapter (of 'support-bot'): name the LLM entry it adapts"
    )


def test_base_without_a_pinned_revision():
    chat = copy.deepcopy(DEV["models"]["chat"])
    del chat["llm"]["revision"]
    message = one_error(dev(chat=chat))
    assert message == (
        f"{PREFIX}models.support-bot.adapterOf: base 'chat' has no pinned revision (models.chat.llm.revision): an adapter is "
        "trained on the exact registry version of a pinned Hugging Face import"
    )


def test_rank_above_the_bases_max_lora_rank():
    params = {**DEV["models"]["support-bot"]["training"]["params"], "rank": 32}
    message = one_error(dev(**{"support-bot": bot(training=lora_training(params=params))}))
    assert message == (
        f"{PREFIX}models.support-bot.training.params.rank: 32 is more than the base's llm.maxLoraRank (16, vLLM --max-lora-rank of "
        "models.chat): lower the rank or raise maxLoraRank"
    )
    chat = copy.deepcopy(DEV["models"]["chat"])
    chat["llm"]["maxLoraRank"] = 32
    validate(dev(chat=chat, **{"support-bot": bot(training=lora_training(params=params))}), STACK_FILE)


def test_adapter_of_on_a_tensorflow_model():
    message = one_error(dev(**{"support-bot": bot(runtime="tensorflow")}))
    assert message == (
        f"{PREFIX}models.support-bot.adapterOf: only for runtime 'vllm' (a LoRA adapter of an LLM entry; this model's runtime is 'tensorflow')"
    )


def test_an_adapter_takes_its_bases_llm_section():
    message = one_error(dev(**{"support-bot": bot(llm={"source": "Qwen/Qwen2.5-7B-Instruct-AWQ"})}))
    assert message == (
        f"{PREFIX}models.support-bot.llm: an adapter is served by its base's vLLM with the base's llm settings (models.chat.llm): remove this section"
    )


def test_lora_training_on_a_model_that_is_not_an_adapter():
    mnist = {**copy.deepcopy(DEV["models"]["mnist"]), "training": lora_training()}
    message = one_error(dev(mnist=mnist))
    assert (
        message == f"{PREFIX}models.mnist.training.kind: lora fine-tunes an adapter: set adapterOf (the LLM entry of this stack it adapts)"
    )


def test_gpus_that_fit_no_node_of_the_pools():
    message = one_error(dev(**{"support-bot": bot(training=lora_training(gpus=2))}))
    assert message == (
        f"{PREFIX}models.support-bot.training.gpus: the run's GPUs must fit one node: the largest GPU pool instance has 1 (got gpus=2)"
    )


def test_keys_of_the_lora_section_are_reported_without_pydantics_branch_tag():
    """``training`` is a tagged union: the stack file has no ``training.lora`` key, the message must not show one."""
    params = {**DEV["models"]["support-bot"]["training"]["params"], "rnak": 8}
    message = one_error(dev(**{"support-bot": bot(training=lora_training(params=params))}))
    assert message.startswith(f"{PREFIX}models.support-bot.training.params.rnak: unknown key (did you mean 'rank'?"), message
    message = one_error(dev(**{"support-bot": bot(training=lora_training(kind="qlora"))}))
    assert message.startswith(f"{PREFIX}models.support-bot.training.kind: input should be 'lora'"), message


def test_data_in_the_store_only_under_the_adapters_prefix_and_the_heldout_set_committed():
    t = lora_training(data="s3://mlplatform-dev-store/models/chat/train.txt")
    message = one_error(dev(**{"support-bot": bot(training=t)}))
    assert message == (
        f"{PREFIX}models.support-bot.training.data: the run reads only the adapter's own prefix of the store: "
        "s3://<store bucket>/models/support-bot/..."
    )
    validate(
        dev(**{"support-bot": bot(training=lora_training(data="s3://mlplatform-dev-store/models/support-bot/train.jsonl"))}), STACK_FILE
    )
    message = one_error(dev(**{"support-bot": bot(training=lora_training(heldout="s3://mlplatform-dev-store/models/support-bot/h.txt"))}))
    assert message.startswith(f"{PREFIX}models.support-bot.training.heldout: must be a file committed in the project"), message


def test_an_adapter_has_no_server_or_route_of_its_own():
    message = one_error(dev(**{"support-bot": bot(serving={"allowedCidrs": ["203.0.113.0/24"]})}))
    assert message == (
        f"{PREFIX}models.support-bot.serving.allowedCidrs: an adapter is served by its base's vLLM and route: set it on models.chat.serving"
    )
    validate(dev(**{"support-bot": bot(serving={"version": "20261201T000000Z-abc"})}), STACK_FILE)  # what deliver pins


def test_the_fit_check_counts_the_adapters_lora_buffers():
    """Qwen2.5-7B (bf16) on dev's GPUs (A10G/L4, 19.2 GiB usable) with 20 full contexts fits alone, not with
    vLLM's LoRA buffers at --max-lora-rank 512 for one adapter (2.41 GiB, llm/fit.py lora_buffer_bytes)."""
    chat = copy.deepcopy(DEV["models"]["chat"])
    chat["llm"].update(maxNumSeqs=20, maxLoraRank=512)
    validate(dev(chat=chat, **{"support-bot": None}), STACK_FILE)
    message = one_error(dev(chat=chat))
    assert message.startswith(f"{PREFIX}models.chat.llm: Qwen/Qwen2.5-7B-Instruct does not fit GPU pool 'gpu-spot'"), message
    assert "weights 14.2 GiB + KV cache 4.4 GiB + LoRA buffers 2.41 GiB = 21.0 GiB > 19.2 GiB usable" in message


def with_chat(**llm) -> dict:
    chat = copy.deepcopy(DEV["models"]["chat"])
    chat["llm"].update(llm)
    return chat


def test_a_quantized_base_is_refused_for_training():
    """LoRA trains on an unquantized base: the LoRA image's transformers + PEFT have no AWQ/GPTQ kernels, and
    the adapter is served on the weights it was trained on. A quantized checkpoint is known by its card's
    quantization_config or by llm.quantization; still a valid base to serve an adapter trained elsewhere."""
    message = one_error(dev(chat=with_chat(source="Qwen/Qwen2.5-7B-Instruct-AWQ")))
    assert message == (
        f"{PREFIX}models.support-bot.adapterOf: base 'chat' is a quantized checkpoint (Qwen/Qwen2.5-7B-Instruct-AWQ, awq 4-bit): "
        "LoRA trains on an unquantized base (transformers + PEFT in the LoRA image, no awq kernels): serve the unquantized "
        "model on models.chat.llm.source, or this adapter cannot be trained here (remove its training)"
    )
    message = one_error(dev(chat=with_chat(source="someorg/some-7b-gptq", quantization="gptq_marlin")))  # no card: the flag says it
    assert message.startswith(
        f"{PREFIX}models.support-bot.adapterOf: base 'chat' is a quantized checkpoint (someorg/some-7b-gptq, gptq_marlin)"
    )
    received = bot(training=None, source={"stack": "staging", "account": "222222222222", "bucket": "mlplatform-staging-store-692093e"})
    validate(dev(chat=with_chat(source="Qwen/Qwen2.5-7B-Instruct-AWQ"), **{"support-bot": received}), STACK_FILE)  # served, not trained


def test_a_run_that_does_not_fit_one_gpu():
    """llm/fit.py lora_training_memory against one GPU of dev's pool (A10G 22.5 GiB): dev's batchSize 4 x 512
    tokens fit (~19.8 GiB); 8 x 512 do not (~23.8: the logits alone 5.8), and the message names the largest
    batch that fits; 32 x 8192 tokens do not fit at any batch size."""
    params = {**DEV["models"]["support-bot"]["training"]["params"], "batchSize": 8}
    message = one_error(dev(**{"support-bot": bot(training=lora_training(params=params))}))
    assert message == (
        f"{PREFIX}models.support-bot.training.params: the run on Qwen/Qwen2.5-7B-Instruct needs ~23.8 GiB of GPU memory, more "
        "than one GPU of pool 'gpu-spot' (22.5 GiB): weights 14.2 + LoRA, gradients and Adam 0.08 + activations 2.3 + logits and "
        "loss 5.8 + overhead 1.5 = 23.8 GiB (batchSize 8 x seqLen 512): lower batchSize or seqLen (batchSize 6 fits)"
    )
    params = {**params, "batchSize": 32, "seqLen": 8192}
    message = one_error(dev(**{"support-bot": bot(training=lora_training(params=params))}))
    assert message.startswith(f"{PREFIX}models.support-bot.training.params: the run on Qwen/Qwen2.5-7B-Instruct needs ~"), message
    assert message.endswith("(batchSize 32 x seqLen 8192): lower batchSize or seqLen (not even batchSize 1 fits: lower seqLen)"), message


def test_lora_buffers_per_gpu_follow_vllms_create_lora_weights():
    """Llama-3.1-8B, rank 16, 4 adapters, bf16: 320 MiB per GPU; split by tensor parallelism; linear in
    the rank and the adapter count; and fit.check adds them to weights + KV cache."""
    config = fit.card("meta-llama/Llama-3.1-8B-Instruct")["config"]
    assert fit.lora_buffer_bytes(config, 16, 4) == 320 * 2**20
    assert fit.lora_buffer_bytes(config, 16, 4, tp=2) < fit.lora_buffer_bytes(config, 16, 4)
    assert fit.lora_buffer_bytes(config, 32, 8) == 4 * fit.lora_buffer_bytes(config, 16, 4)
    shape = fit.shape_of(config)
    alone, served = fit.check(shape, 8192, 1, 24576, 0.9, 1), fit.check(shape, 8192, 1, 24576, 0.9, 1, 320 * 2**20)
    assert served.need_gib == pytest.approx(alone.need_gib + 320 / 1024) and served.lora_gib == pytest.approx(320 / 1024)
    assert served.max_tokens < alone.max_tokens


def test_a_broken_base_is_reported_as_such_not_as_an_unknown_base():
    chat = copy.deepcopy(DEV["models"]["chat"])
    chat["llm"]["maxLoraRank"] = 12  # not a rank vLLM accepts
    message = one_error(dev(chat=chat))
    assert message.startswith(f"{PREFIX}models.chat.llm.maxLoraRank: input should be 1, 8, 16, 32, 64, 128, 256, 320 or 512"), message


def test_a_run_the_queue_could_never_admit():
    """queue.gpuQuota 0: the LoRA run, like dev's GPU TF run, would wait forever (one line each)."""
    with pytest.raises(ConfigError) as info:
        validate({**copy.deepcopy(DEV), "queue": {"gpuQuota": 0}}, STACK_FILE)
    lines = str(info.value).splitlines()
    assert f"{PREFIX}models.support-bot.training.gpus: 1 GPUs, more than queue.gpuQuota (0): it would wait forever" in lines, lines
    assert all(".mnist." in line or ".support-bot." in line for line in lines), lines
