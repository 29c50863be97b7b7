"""ops/smoke_openai against a local process speaking the OpenAI protocol.

That process (tests/unit/openai_standin.py) is a STAND-IN for vLLM, not vLLM: no GPU can run vLLM
here. What this proves: the client finds the model through /v1/models, sends a well-formed chat
completion, checks the answer's shape and latency, waits for an endpoint that is not up yet, and
fails with a reason on a wrong shape, a wrong model, a slow answer or a refused request. What it does
NOT prove: that vLLM 0.33.0 answers exactly these shapes (they follow OpenAI's API reference, which
vLLM implements in vllm/entrypoints/openai/chat_completion/), that the model produces sensible text,
or anything about latency on a GPU.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest

from ops import smoke_openai
from tests.conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StandIn:
    def __init__(self, *args: str, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.unit.openai_standin", "--port", str(self.port), *args],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def standin():
    started = []

    def start(*args: str, **kw) -> StandIn:
        s = StandIn(*args, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def test_healthy_model_passes(standin):
    s = standin("--model", "qwen")
    ok, message = smoke_openai.smoke_openai(s.url, wait_s=20)
    assert ok, message
    assert message.startswith("qwen: chat completion in ") and "2 tokens, finish_reason stop" in message


def test_base_url_without_v1_and_named_model(standin):
    s = standin("--model", "qwen")
    ok, message = smoke_openai.smoke_openai(s.url.removesuffix("/v1"), model="qwen", wait_s=20)
    assert ok, message


@pytest.mark.parametrize(
    "mode,expected",
    [
        ("broken", "choices[0].message is not an assistant message"),
        ("wrong-model", "answered by model 'someone-else', not 'qwen'"),
        ("unauthorized", "HTTP 401"),
    ],
)
def test_bad_answers_fail_with_the_reason(standin, mode, expected):
    s = standin("--model", "qwen", "--mode", mode)
    ok, message = smoke_openai.smoke_openai(s.url, wait_s=20)
    assert not ok and expected in message, message


def test_unknown_model_fails(standin):
    s = standin("--model", "qwen")
    ok, message = smoke_openai.smoke_openai(s.url, model="llama", wait_s=20)
    assert not ok and "model 'llama' not served here (served: qwen)" in message


def test_slow_answer_fails_on_latency(standin):
    s = standin("--model", "qwen", "--mode", "slow", "--delay", "0.6")
    ok, message = smoke_openai.smoke_openai(s.url, max_latency_s=0.2, wait_s=20)
    assert not ok and "(limit 0.2s)" in message, message


def test_waits_for_an_endpoint_that_comes_up_later(standin):
    port = free_port()
    # the endpoint appears 0.5 s after the smoke test starts (a model waking from zero)
    timer = threading.Timer(0.5, lambda: standin("--model", "qwen", port=port))
    timer.start()
    t0 = time.time()
    ok, message = smoke_openai.smoke_openai(f"http://127.0.0.1:{port}/v1", wait_s=20)
    timer.join()
    assert ok, message
    assert time.time() - t0 >= 0.5


def test_unreachable_gives_up_after_wait():
    ok, message = smoke_openai.smoke_openai(f"http://127.0.0.1:{free_port()}/v1", wait_s=0.3)
    assert not ok and "no answer for 0s" in message


def test_shape_check_on_a_real_vllm_style_answer():
    # field names as vLLM's ChatCompletionResponse serialises them (vllm/entrypoints/openai/chat_completion/protocol.py)
    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "qwen",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ready", "tool_calls": []}, "finish_reason": "stop", "logprobs": None}
        ],
        "usage": {"prompt_tokens": 10, "total_tokens": 11, "completion_tokens": 1},
    }
    assert smoke_openai.check_chat_completion(answer, "qwen") is None
    answer["choices"][0]["message"]["content"] = ""
    assert smoke_openai.check_chat_completion(answer, "qwen") == "choices[0].message.content is empty"


def test_the_key_goes_in_both_headers_the_gateway_and_vllm_read():
    """An LLM route with serving.apiKey is checked by the entry point in x-api-key (components/services/
    gateway.py API_KEY_HEADER); vLLM's own --api-key reads the bearer token. The smoke sends both."""
    import http.server
    import json as _json
    import threading

    from components.services import gateway
    from ops import smoke_openai

    seen = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            seen.update({k.lower(): v for k, v in self.headers.items()})
            body = _json.dumps({"object": "list", "data": []}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        smoke_openai._request(f"http://127.0.0.1:{server.server_port}/v1/models", None, "k3y", timeout=5)
    finally:
        server.shutdown()
    assert seen[gateway.API_KEY_HEADER] == "k3y" and seen["authorization"] == "Bearer k3y"
