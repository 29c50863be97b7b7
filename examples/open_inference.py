"""Ask a model over the Open Inference Protocol (KServe v2 / Triton's HTTP API), with httpx.

    python examples/open_inference.py [--url http://127.0.0.1:8501] [--model mnist] [--payload examples/mnist-infer-v2.json]

Reads the model's metadata (`GET /v2/models/NAME`: input names, shapes, datatypes), sends the payload to
`POST /v2/models/NAME/infer` and prints the predicted class per row. The payload is the protocol's own
tensor form: flat `data`, row-major, with its `shape` and `datatype` (MNIST: FP32 pixels in [0, 1]).
Any Open Inference Protocol client works the same way (e.g. tritonclient.http).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent


def infer(client: httpx.Client, model: str, payload: dict) -> dict:
    meta = client.get(f"/v2/models/{model}")
    meta.raise_for_status()
    names = {t["name"] for t in meta.json()["inputs"]}
    sent = {t["name"] for t in payload["inputs"]}
    if sent != names:
        raise SystemExit(f"the payload's inputs {sorted(sent)} are not the model's {sorted(names)}")
    resp = client.post(f"/v2/models/{model}/infer", json=payload)
    if resp.status_code >= 400:
        raise SystemExit(f"{resp.status_code}: {resp.text}")
    return resp.json()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8501")
    p.add_argument("--model", default="mnist")
    p.add_argument("--payload", type=Path, default=HERE / "mnist-infer-v2.json")
    p.add_argument("--api-key", default=os.environ.get("MLPLATFORM_API_KEY"))
    args = p.parse_args(argv)
    headers = {"X-API-Key": args.api_key} if args.api_key else {}  # the header the entry point checks (serving.apiKey)
    with httpx.Client(base_url=args.url.rstrip("/"), headers=headers, timeout=30) as client:
        out = infer(client, args.model, json.loads(args.payload.read_text()))
    tensor = out["outputs"][0]
    rows, width = tensor["shape"][0], tensor["shape"][-1]
    for i in range(rows):
        scores = tensor["data"][i * width : (i + 1) * width]
        best = max(range(width), key=scores.__getitem__)
        print(f"row {i}: class {best} (p={scores[best]:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
