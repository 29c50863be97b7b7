"""A stand-in for vLLM's OpenAI-compatible server, for testing ops/smoke_openai.py.

    python -m tests.unit.openai_standin --port P --model NAME [--mode ok|broken|wrong-model|slow|unauthorized]

It speaks the same HTTP routes and JSON shapes as vLLM's ``/v1/models`` and ``/v1/chat/completions``
(field names as in OpenAI's API reference) and answers with canned text. It is NOT vLLM: it loads no
model, generates nothing, does not stream, batch, or measure anything real.
"""

from __future__ import annotations

import argparse
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", default="qwen")
    p.add_argument("--mode", default="ok", choices=["ok", "broken", "wrong-model", "slow", "unauthorized"])
    p.add_argument("--delay", type=float, default=1.5)
    args = p.parse_args()

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if args.mode == "unauthorized":
                return self._send(401, {"error": "Unauthorized"})
            if self.path == "/v1/models":
                return self._send(200, {"object": "list", "data": [{"id": args.model, "object": "model", "owned_by": "vllm"}]})
            self._send(404, {"detail": "Not Found"})

        def do_POST(self):
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != "/v1/chat/completions":
                return self._send(404, {"detail": "Not Found"})
            if req.get("model") != args.model:
                return self._send(404, {"error": {"message": f"The model `{req.get('model')}` does not exist.", "code": 404}})
            if args.mode == "slow":
                time.sleep(args.delay)
            message = {"role": "assistant", "content": "ready"}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            if args.mode == "broken":
                choice = {"index": 0, "text": "ready", "finish_reason": "stop"}  # a completions-style choice
            answer = {
                "id": "chatcmpl-standin",
                "object": "chat.completion",
                "created": 0,
                "model": "someone-else" if args.mode == "wrong-model" else args.model,
                "choices": [choice],
                "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14},
            }
            self._send(200, answer)

        def log_message(self, *a):
            pass

    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
