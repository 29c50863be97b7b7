"""ops.smoke (the pipeline's smoke step) hands an OpenAI base URL to ops/smoke_openai.py. Runs in
the ML venv (ops/smoke.py imports numpy); the OpenAI side is the stand-in for vLLM of
tests/unit/test_smoke_openai.py (see there what that does and does not prove)."""

from __future__ import annotations

from ops import smoke, smoke_openai
from tests.unit.test_smoke_openai import StandIn


def test_openai_urls_go_to_the_openai_smoke_test(capsys):
    s = StandIn("--model", "qwen")
    try:
        assert smoke.main([s.url, "--wait", "20"]) == 0  # a base URL ending in /v1
        assert capsys.readouterr().out.startswith("smoke ok: qwen: chat completion in ")
        assert smoke.main(["--openai", s.url.removesuffix("/v1"), "--model", "llama", "--wait", "20"]) == 1
        assert "model 'llama' not served here" in capsys.readouterr().out
    finally:
        s.stop()
    assert not smoke.is_openai("http://lb/v1/models/mnist") and smoke.is_openai("http://gw/llm/qwen/v1/")


def test_every_model_of_a_stack_by_its_runtime(capsys):
    """The pipeline's `make smoke` passes the stack's `models` output: each model gets its own test."""
    import json

    s = StandIn("--model", "chat")
    models = {
        "chat": {"runtime": "vllm", "url": s.url},
        "mnist": {"runtime": "tensorflow", "url": "http://127.0.0.1:9/v1/models/mnist"},  # nothing listens: fails
    }
    try:
        assert smoke_openai.smoke_openai(s.url, wait_s=20)[0]  # the stand-in is up
        assert smoke.main(["--models", json.dumps(models), "--wait", "0.2"]) == 1
    finally:
        s.stop()
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("chat: smoke ok: chat: chat completion in ")
    assert out[1].startswith("mnist: smoke FAILED: ") and "unreachable" in out[1]


def test_an_llm_gets_its_key_from_the_stack_output(monkeypatch, capsys):
    """`make smoke` on staging/prod (keys at the entry point): the LLM's key comes from the stack's
    llmApiKeys output unless OPENAI_API_KEY is set; a TF model is untouched by it."""
    used = []
    monkeypatch.setattr(smoke_openai, "smoke_openai", lambda url, wait_s, api_key: (used.append(api_key), (True, "ok"))[1])
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    models = {"chat": {"runtime": "vllm", "url": "http://gw/llm/chat/v1"}}
    assert smoke.smoke_models(models, None, 0, 0.0, 0.1, {"chat": {"default": "from-output"}}) == 0
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    assert smoke.smoke_models(models, None, 0, 0.0, 0.1, {"chat": {"default": "from-output"}}) == 0
    monkeypatch.delenv("OPENAI_API_KEY")
    assert smoke.smoke_models(models, None, 0, 0.0, 0.1, {}) == 0
    assert used == ["from-output", "from-env", None]
