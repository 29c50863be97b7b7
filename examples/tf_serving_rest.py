"""Ask a model over the TF-Serving REST API (what the platform's server and TensorFlow Serving speak).

    python examples/tf_serving_rest.py [--url http://127.0.0.1:8501] [--model mnist] [--payload examples/mnist-predict.json]

Prints the predicted class of each instance. MNIST pixels are floats in [0, 1] (0-255 values give
saturated, wrong answers), one image as 28 rows of 28 one-value lists (the model's input [-1, 28, 28, 1]).
Stdlib only. With an API key (a stack's `serving.apiKey`): --api-key KEY or $MLPLATFORM_API_KEY.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent


def predict(url: str, model: str, payload: dict, api_key: str | None = None) -> list:
    # X-API-Key: the header the entry point checks (serving.apiKey); the server accepts it too.
    headers = {"Content-Type": "application/json", **({"X-API-Key": api_key} if api_key else {})}
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{url}: not an http(s) URL")
    request = urllib.request.Request(f"{url}/v1/models/{model}:predict", data=json.dumps(payload).encode(), headers=headers)  # noqa: S310 (http(s), checked above)
    with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310
        return json.load(resp)["predictions"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8501")
    p.add_argument("--model", default="mnist")
    p.add_argument("--payload", type=Path, default=HERE / "mnist-predict.json")
    p.add_argument("--api-key", default=os.environ.get("MLPLATFORM_API_KEY"))
    args = p.parse_args(argv)
    try:
        predictions = predict(args.url.rstrip("/"), args.model, json.loads(args.payload.read_text()), args.api_key)
    except urllib.error.HTTPError as exc:  # the server's 4xx says why, in one JSON line
        print(f"{exc.code}: {exc.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    for i, scores in enumerate(predictions):
        best = max(range(len(scores)), key=scores.__getitem__)
        print(f"instance {i}: class {best} (p={scores[best]:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
