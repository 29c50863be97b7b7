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


def test_a_tf_model_gets_its_key_from_the_stack_output(monkeypatch):
    """With serving.apiKey the entry point asks TF routes for a key too: it comes from the stack's
    apiKeys output (the first client's) unless SMOKE_API_KEY is set."""
    used = []
    monkeypatch.setattr(smoke, "smoke", lambda url, data, images, acc, model, wait_s, api_key: (used.append(api_key), (True, "ok"))[1])
    monkeypatch.delenv("SMOKE_API_KEY", raising=False)
    models = {"mnist": {"runtime": "tensorflow", "url": "http://gw/v1/models/mnist"}}
    keys = {"mnist": {"app": "first", "batch": "second"}}
    assert smoke.smoke_models(models, None, 0, 0.0, 0.1, keys) == 0
    monkeypatch.setenv("SMOKE_API_KEY", "from-env")
    assert smoke.smoke_models(models, None, 0, 0.0, 0.1, keys) == 0
    monkeypatch.delenv("SMOKE_API_KEY")
    assert smoke.smoke_models(models, None, 0, 0.0, 0.1, {}) == 0
    assert used == ["first", "from-env", None]


class KeyedEntry:
    """A stand-in for the entry point's apiKeyAuth (Envoy is not run here): every request, status and
    metadata included, needs ``key`` in x-api-key (401 otherwise) and is then passed, key kept
    (sanitize off for TF routes), to the real server behind it."""

    def __init__(self, upstream: str, key: str):
        import http.server
        import threading
        import urllib.error
        import urllib.request

        entry = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _forward(self):
                entry.seen.append((self.command, self.path, self.headers.get("x-api-key")))
                if self.headers.get("x-api-key") != key:
                    self.send_response(401)
                    self.end_headers()
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
                req = urllib.request.Request(upstream + self.path, data=body, headers=headers, method=self.command)
                try:
                    with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - the test's own server
                        status, payload = r.status, r.read()
                except urllib.error.HTTPError as exc:
                    status, payload = exc.code, exc.read()
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _forward

        self.seen: list[tuple[str, str, str | None]] = []
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()


def test_smoke_sends_the_key_on_every_request_status_and_metadata_included(store, server_factory, small_mnist, tmp_path):
    """The entry point guards the whole TF route (status, metadata, predict, binary infer) where
    serving.apiKey is on: smoke passes through it only if each of its requests carries the key; the
    server behind checks the same key again on predict."""
    keys = tmp_path / "keys"
    keys.write_text("k-app\nk-batch\n")
    server = server_factory(str(store), "--api-keys-file", str(keys))
    entry = KeyedEntry(server.url, "k-app")
    try:
        ok, message = smoke.smoke(f"{entry.url}/v1/models/mnist", small_mnist, images=32, min_accuracy=0.0, wait_s=0)
        assert not ok and "401" in message, message  # no key: the entry point refuses the status route
        entry.seen.clear()
        ok, message = smoke.smoke(f"{entry.url}/v1/models/mnist", small_mnist, images=32, min_accuracy=0.0, wait_s=5, api_key="k-app")
        assert ok, message
    finally:
        entry.stop()
    assert [s for s in entry.seen if s[2] != "k-app"] == []  # every request carried the key
    paths = {p for _, p, _ in entry.seen}
    assert {"/v1/models/mnist", "/v2/models/mnist", "/v1/models/mnist:predict", "/v2/models/mnist/infer"} <= paths
