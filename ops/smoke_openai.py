"""Smoke test of an OpenAI-compatible model endpoint (a vLLM model of the stack):

    python -m ops.smoke_openai BASE_URL [--model NAME] [--max-latency 30] [--wait 600]

BASE_URL is the model's OpenAI base URL (``http://<gateway>/llm/<model>/v1``; a URL without the
trailing ``/v1`` gets it). Waits until ``GET /models`` answers (a model scaled to zero or still
loading its weights takes minutes), checks the model is listed, sends one short chat completion and
checks the answer's shape (OpenAI's chat.completion object: an assistant message with text, a finish
reason, token usage) and that it came back within --max-latency seconds. ``OPENAI_API_KEY``, when
set, is sent as the bearer token. Exit 0 ok, 1 failed (with the reason), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

PROMPT = "Reply with one word: ready"
FINISH_REASONS = {"stop", "length"}


def base_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else f"{url}/v1"


def _request(url: str, body: dict | None, api_key: str | None, timeout: float) -> Any:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        # vLLM's own --api-key reads the bearer token; the entry point's key check (an LLM route with
        # serving.apiKey, components/services/gateway.py API_KEY_HEADER) reads x-api-key.
        headers["Authorization"] = f"Bearer {api_key}"
        headers["x-api-key"] = api_key
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310 - URL given by the operator
    with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310
        return json.loads(r.read())


def check_chat_completion(answer: Any, model: str) -> str | None:
    """What is wrong with ``answer`` as an OpenAI chat.completion for ``model`` (None: nothing)."""
    if not isinstance(answer, dict):
        return f"answer is not a JSON object: {str(answer)[:80]}"
    if answer.get("object") != "chat.completion":
        return f"object is {answer.get('object')!r}, not 'chat.completion'"
    if answer.get("model") != model:
        return f"answered by model {answer.get('model')!r}, not {model!r}"
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices:
        return "no choices in the answer"
    first = choices[0]
    message = first.get("message") if isinstance(first, dict) else None
    if not isinstance(message, dict) or message.get("role") != "assistant":
        return f"choices[0].message is not an assistant message: {str(message)[:80]}"
    content = message.get("content")
    if not isinstance(content, str) or not content.strip():
        return "choices[0].message.content is empty"
    if first.get("finish_reason") not in FINISH_REASONS:
        return f"finish_reason is {first.get('finish_reason')!r}, not one of {sorted(FINISH_REASONS)}"
    usage = answer.get("usage")
    if not isinstance(usage, dict) or not isinstance(usage.get("completion_tokens"), int) or usage["completion_tokens"] < 1:
        return f"usage.completion_tokens missing or < 1: {usage!r}"
    return None


def smoke_openai(
    url: str, model: str | None = None, max_latency_s: float = 30, wait_s: float = 600, api_key: str | None = None
) -> tuple[bool, str]:
    base = base_url(url)
    deadline, pause = time.time() + wait_s, 0.1
    while True:  # scaled to zero, loading weights, or a fresh load balancer: not an answer yet
        try:
            models = _request(f"{base}/models", None, api_key, timeout=10)
            break
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403, 404):
                return False, f"{base}/models: HTTP {exc.code} {exc.reason}"
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError, json.JSONDecodeError) as exc:
            last = str(exc)
        if time.time() > deadline:
            return False, f"{base}: no answer for {wait_s:.0f}s ({last})"
        time.sleep(pause)
        pause = min(5.0, pause * 2)
    ids = [m.get("id") for m in models.get("data", [])] if isinstance(models, dict) else []
    if not ids:
        return False, f"{base}/models lists no model"
    model = model or ids[0]
    if model not in ids:
        return False, f"model {model!r} not served here (served: {', '.join(map(str, ids))})"
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 16, "temperature": 0}
    start = time.perf_counter()
    try:
        answer = _request(f"{base}/chat/completions", body, api_key, timeout=max(max_latency_s * 2, 10))
    except urllib.error.HTTPError as exc:
        return False, f"chat completion: HTTP {exc.code} {exc.read()[:200].decode(errors='replace')}"
    except (urllib.error.URLError, OSError, json.JSONDecodeError) as exc:
        return False, f"chat completion failed: {exc}"
    latency = time.perf_counter() - start
    problem = check_chat_completion(answer, model)
    if problem:
        return False, f"{model}: {problem}"
    if latency > max_latency_s:
        return False, f"{model}: chat completion took {latency:.2f}s (limit {max_latency_s:g}s)"
    tokens = answer["usage"]["completion_tokens"]
    return True, f"{model}: chat completion in {latency:.2f}s, {tokens} tokens, finish_reason {answer['choices'][0]['finish_reason']}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ops.smoke_openai", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("url")
    p.add_argument("--model", help="served model name (default: the first /v1/models lists)")
    p.add_argument("--max-latency", type=float, default=30, help="seconds one short chat completion may take")
    p.add_argument("--wait", type=float, default=600, help="seconds to wait for the endpoint to answer")
    args = p.parse_args(argv)
    ok, message = smoke_openai(args.url, args.model, args.max_latency, args.wait, os.environ.get("OPENAI_API_KEY"))
    print(("smoke ok: " if ok else "smoke FAILED: ") + message)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
