"""The base's vLLM pod template with its LoRA adapters (components/models/llm_service.py, adapter parts),
without the engine: which adapters are served, the fetch each one gets, and vLLM's flags, each in the
pinned vLLM's flag list (../shared/reference/vllm/0.33.0/serve-flags.txt)."""

from __future__ import annotations

from components.config.llm import LlmConfig
from components.models import llm_import, llm_service
from llm import lora_gate
from tests.unit.test_llm_service import serve_flags

LLM = LlmConfig(source="Qwen/Qwen2.5-7B-Instruct-AWQ", revision="b" * 40, maxLoraRank=32)
STORE = "s3://store"


def weights(version: str = "v7") -> llm_import.WeightsMount:
    return llm_import.served_weights("chat", LLM, version, STORE, [], "llm-code-x")


def args(version: str | None, adapters: dict[str, str | None]) -> llm_service.LlmServiceArgs:
    return llm_service.LlmServiceArgs(
        model="chat", namespace="ml", config=LLM, store=None, pool_name=None, version=version, adapters=adapters
    )  # type: ignore[arg-type]


def test_only_adapters_with_a_version_on_a_pinned_base_are_served():
    assert llm_service.served_adapters("v7", {"b": "a2", "a": "a1", "c": None}) == {"a": "a1", "b": "a2"}
    # an unpinned base resolves its champion at start: which base an adapter must fit is not known here
    assert llm_service.served_adapters(None, {"a": "a1"}) == {}
    assert llm_service.adapter_mount("chat", LLM, args(None, {"a": "a1"}), STORE, weights("@champion")) is None
    assert llm_service.adapter_mount("chat", LLM, args("v7", {"a": None}), STORE, weights()) is None


def test_each_adapter_is_fetched_for_the_pods_base_version_and_served_by_name():
    mount = llm_service.adapter_mount("chat", LLM, args("v7", {"bot": "a1", "faq": "f3", "later": None}), STORE, weights())
    assert [c["name"] for c in mount.init_containers] == ["adapter-bot", "adapter-faq"]
    bot = mount.init_containers[0]["command"]
    assert bot == [
        "python3", "-m", "llm.lora_gate", "fetch", "--store", STORE, "--adapter", "bot", "--version", "a1",
        "--base", "chat", "--base-version", "v7", "--dest", "/cache/adapters/bot/a1",
    ]  # fmt: skip
    assert mount.args == [
        "--enable-lora", "--max-lora-rank", "32", "--max-loras", "3",  # every adapter of the base on the stack
        "--lora-modules", "bot=/cache/adapters/bot/a1", "faq=/cache/adapters/faq/f3",
    ]  # fmt: skip
    assert mount.annotations == {lora_gate.version_annotation("bot"): "a1", lora_gate.version_annotation("faq"): "f3"}


def test_the_pod_template_carries_them_and_every_flag_is_vllms():
    mount = llm_service.adapter_mount("chat", LLM, args("v7", {"bot": "a1"}), STORE, weights())
    pod = llm_service.pod_template("chat", LLM, "gpu", [], None, "v7", weights(), mount)
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["weights", "adapter-bot"]
    assert pod["metadata"]["annotations"][lora_gate.version_annotation("bot")] == "a1"
    (vllm,) = pod["spec"]["containers"]
    assert vllm["args"][-len(mount.args) :] == mount.args
    assert [f for f in llm_service.flags(vllm["args"]) if f not in serve_flags()] == []
    # without adapters the template is what it was: no LoRA flag, no extra init container
    plain = llm_service.pod_template("chat", LLM, "gpu", [], None, "v7", weights())
    assert "--enable-lora" not in plain["spec"]["containers"][0]["args"] and len(plain["spec"]["initContainers"]) == 1
