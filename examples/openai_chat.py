"""Chat with an LLM route (vLLM's OpenAI-compatible API behind the stack's entry point) with the
official OpenAI client (`pip install openai`).

    python examples/openai_chat.py --base-url http://GATEWAY/v1 --model chat "Say hello in five words"

--base-url is the model's URL from `pulumi stack output models` (it ends in /v1); --model is the served
model name (the catalogue entry's name). The API key: --api-key or $OPENAI_API_KEY (the stack's
`serving.apiKey` for that model; "EMPTY" where the route has none).
"""

from __future__ import annotations

import argparse
import os
import sys


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", required=True, help="the model's OpenAI-compatible base URL, ending in /v1")
    p.add_argument("--model", required=True, help="the served model name")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "EMPTY"))
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("prompt")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.base_url.rstrip("/").endswith("/v1"):
        print(f"--base-url {args.base_url}: an OpenAI-compatible base URL ends in /v1", file=sys.stderr)
        return 2
    from openai import OpenAI  # imported here: --help works without the package

    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    reply = client.chat.completions.create(
        model=args.model, messages=[{"role": "user", "content": args.prompt}], max_tokens=args.max_tokens
    )
    print(reply.choices[0].message.content)
    return 0


if __name__ == "__main__":
    sys.exit(main())
