"""Smoke test of a deployed model service:  python -m ops.smoke URL [--images 200] [--min-accuracy 0.95]

An OpenAI-compatible model (a vLLM model's base URL, ending in /v1, or --openai) is handed to
ops/smoke_openai.py: one short chat completion, its shape and latency.

URL is the service URL (http://host or the stack's `serviceUrl` output). Checks the model status is
AVAILABLE, then, for a 28x28 image model (MNIST), predicts real MNIST test images (data/mnist.npz) and
requires the accuracy to reach --min-accuracy; any other model gets instances built from its serving
signature and must answer each with finite values on both protocols. Where the service requires an API key, pass it with --api-key or SMOKE_API_KEY.
`--stack NAME` smokes every model of a deployed stack (its `models` output, through the Pulumi CLI).
Exit 0 ok, 1 failed (with the reason), 2 usage, 5 no Pulumi CLI or no such deployed stack (one line).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from serving.instances import example  # the builder the canary warm-up shares


def key_header(api_key: str | None) -> dict[str, str]:
    """The key where the model's routes ask for one (``serving.apiKey``), in the header the entry point
    checks (components/services/gateway.py API_KEY_HEADER, for every runtime; our server reads it too):
    on every request, status and metadata included, which the entry point guards as well."""
    return {"X-API-Key": api_key} if api_key else {}


def _get(url: str, timeout: float = 10, api_key: str | None = None):
    req = urllib.request.Request(url, headers=key_header(api_key))  # noqa: S310 - http(s) URL given by the operator
    with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310
        return json.loads(r.read())


def _post(url: str, body: dict, timeout: float = 30, api_key: str | None = None):
    headers = {"Content-Type": "application/json", **key_header(api_key)}
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)  # noqa: S310 - URL given by the operator
    with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310
        return json.loads(r.read())


def base_url(url: str) -> str:
    url = url.rstrip("/")
    return url.split("/v1/models/")[0]


def smoke(
    url: str, data: Path, images: int, min_accuracy: float, model: str = "mnist", wait_s: float = 300, api_key: str | None = None
) -> tuple[bool, str]:
    base = base_url(url)
    deadline = time.time() + wait_s
    while True:  # a fresh LoadBalancer takes a while to answer
        try:
            status = _get(f"{base}/v1/models/{model}", api_key=api_key)
            break
        except (urllib.error.URLError, OSError) as exc:
            if time.time() > deadline:
                return False, f"{base}: unreachable for {wait_s:.0f}s ({exc})"
            time.sleep(5)
    state = status["model_version_status"][0]
    if state["state"] != "AVAILABLE":
        return False, f"model {model} is {state['state']}: {state['status']}"
    try:
        meta = _get(f"{base}/v2/models/{model}", api_key=api_key)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return False, f"{base}/v2/models/{model}: no metadata ({exc})"
    if not is_image_model(meta):
        return smoke_signature(base, model, state["version"], meta, api_key)
    with np.load(data) as d:
        x, y = d["x_test"][:images] / 255.0, d["y_test"][:images]
    correct, first = 0, None
    for i in range(0, len(x), 32):
        try:
            batch = x[i : i + 32].reshape(-1, *meta["inputs"][0]["shape"][1:])  # the signature's rank: 28x28x1 for Keras'
            preds = _post(f"{base}/v1/models/{model}:predict", {"instances": batch.round(4).tolist()}, api_key=api_key)["predictions"]
        except urllib.error.HTTPError as exc:
            return False, f"predict answered {exc.code}: {exc.read()[:200].decode(errors='replace')}"
        first = preds if first is None else first
        correct += int((np.argmax(preds, axis=1) == y[i : i + 32]).sum())
    accuracy = correct / len(x)
    ok = accuracy >= min_accuracy
    message = f"version {state['version']}: accuracy {accuracy:.4f} on {len(x)} test images (required {min_accuracy:.4f})"
    problem = _binary_disagrees(base, model, x[: min(8, len(x))].round(4), np.asarray(first)[:8], api_key)
    if problem:
        return False, f"{message}; binary tensor path: {problem}"
    return ok, message + "; binary tensor path agrees"


def is_image_model(meta: dict) -> bool:
    """A 28x28 image classifier (MNIST's contract): smoke-tested for accuracy on real test images."""
    inputs = meta.get("inputs") or []
    return len(inputs) == 1 and inputs[0]["datatype"].startswith("FP") and list(inputs[0]["shape"][1:3]) == [28, 28]


def _finite(value) -> bool:
    """Every number in a (nested) answer is finite; strings and booleans pass as they are."""
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


def smoke_signature(base: str, model: str, version: str, meta: dict, api_key: str | None) -> tuple[bool, str]:
    """A model with no labelled data here (anything but MNIST): two instances built from its serving
    signature must each get a finite prediction, in TF-Serving's row format and the Open Inference
    Protocol alike. It proves the model loads, its contract is what the server says, and it answers."""
    inputs = meta.get("inputs") or []
    if not inputs:
        return False, f"model {model}: metadata lists no inputs"
    examples = {i["name"]: example(i["datatype"], list(i["shape"][1:])) for i in inputs}
    row = {n: v.tolist() for n, v in examples.items()}
    instances = [row, row] if len(inputs) > 1 else [row[inputs[0]["name"]]] * 2
    try:
        preds = _post(f"{base}/v1/models/{model}:predict", {"instances": instances}, api_key=api_key)["predictions"]
        v2 = [
            {"name": i["name"], "datatype": i["datatype"], "shape": [2, *examples[i["name"]].shape], "data": [row[i["name"]]] * 2}
            for i in inputs
        ]
        outputs = _post(f"{base}/v2/models/{model}/infer", {"inputs": v2}, api_key=api_key)["outputs"]
    except urllib.error.HTTPError as exc:
        return False, f"predict answered {exc.code}: {exc.read()[:200].decode(errors='replace')}"
    except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
        return False, f"predict failed ({exc})"
    if len(preds) != 2:
        return False, f"/v1 answered {len(preds)} predictions for 2 instances"
    if not _finite(preds) or not all(o["shape"][0] == 2 and _finite(o["data"]) for o in outputs):
        return False, "the model answered non-finite values (or not one per instance)"
    names = ", ".join(f"{i['name']} {i['datatype']}{list(i['shape'])}" for i in inputs)
    return True, f"version {version}: 2 instances built from its signature ({names}) answered on /v1 and /v2"


def _binary_disagrees(base: str, model: str, x: np.ndarray, json_preds: np.ndarray, api_key: str | None) -> str | None:
    """The same images as Open Inference Protocol binary tensors must get the JSON path's answers."""
    try:
        meta = _get(f"{base}/v2/models/{model}", api_key=api_key)
        name, shape = meta["inputs"][0]["name"], [len(x), *meta["inputs"][0]["shape"][1:]]
        raw = x.astype("<f4").tobytes()
        head = json.dumps(
            {"inputs": [{"name": name, "shape": shape, "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}}]}
        ).encode()
        headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head)), **key_header(api_key)}
        req = urllib.request.Request(f"{base}/v2/models/{model}/infer", data=head + raw, headers=headers)  # noqa: S310 - operator's URL
        with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310
            out = json.loads(r.read())["outputs"][0]
    except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
        return f"request failed ({exc})"
    got = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
    if got.shape != json_preds.shape or not np.allclose(got, json_preds, rtol=1e-4, atol=1e-5):
        return "answers differ from the JSON path"
    return None


def is_openai(url: str) -> bool:
    """An OpenAI base URL (``.../v1``), not a TF-Serving model URL (``.../v1/models/<name>``)."""
    return url.rstrip("/").endswith("/v1")


def smoke_models(models: dict, data: Path, images: int, min_accuracy: float, wait_s: float, api_keys: dict | None = None) -> int:
    """Every model of a stack (its ``models`` output: name -> {url, runtime, ...}), each by its runtime;
    exit status 1 when any fails. ``api_keys``: the stack's ``apiKeys`` output (model -> client -> key,
    every runtime), the key a route with ``serving.apiKey`` asks for at the entry point, the first
    client's, where ``OPENAI_API_KEY`` (LLM) / ``SMOKE_API_KEY`` (TF) is unset."""
    from ops import smoke_openai

    failed = 0
    for name, m in models.items():
        url = m["url"]
        generated = next(iter(((api_keys or {}).get(name) or {}).values()), None)
        if m.get("runtime") == "vllm" or is_openai(url):
            key = os.environ.get("OPENAI_API_KEY") or generated
            ok, message = smoke_openai.smoke_openai(url, wait_s=wait_s, api_key=key)
        else:
            key = os.environ.get("SMOKE_API_KEY") or generated
            ok, message = smoke(url, data, images, min_accuracy, model=name, wait_s=wait_s, api_key=key)
        print(f"{name}: " + ("smoke ok: " if ok else "smoke FAILED: ") + message)
        failed += not ok
    return 1 if failed else 0


def stack_models(stack: str) -> str | None:
    """``pulumi stack output models --json`` of ``stack``; None after one line on stderr saying why."""
    import shutil
    import subprocess

    pulumi = shutil.which("pulumi")
    if pulumi is None:
        print(
            f"smoke: the Pulumi CLI is not on PATH (it reads stack {stack}'s `models` output): install it from https://www.pulumi.com/docs/install/",
            file=sys.stderr,
        )
        return None
    proc = subprocess.run([pulumi, "stack", "output", "models", "--json", "--stack", stack], capture_output=True, text=True)
    if proc.returncode != 0 or proc.stdout.strip() in ("", "null"):
        why = (proc.stderr.strip().splitlines() or ["no `models` output"])[-1]
        print(f"smoke: stack {stack}: no `models` output ({why}); is it deployed?", file=sys.stderr)
        return None
    return proc.stdout


def stack_api_keys(stack: str) -> dict:
    """The stack's ``apiKeys`` output (every runtime; ``llmApiKeys`` on a stack deployed before it
    existed): a secret, read with --show-secrets and kept in this process, never on a command line;
    {} where the stack has none or the CLI cannot read it."""
    import shutil
    import subprocess

    pulumi = shutil.which("pulumi")
    if pulumi is None:
        return {}
    for output in ("apiKeys", "llmApiKeys"):
        cmd = [pulumi, "stack", "output", output, "--json", "--show-secrets", "--stack", stack]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        try:
            keys = json.loads(proc.stdout) if proc.returncode == 0 else None
        except json.JSONDecodeError:
            keys = None
        if isinstance(keys, dict):
            return keys
    return {}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    api_keys: dict = {}
    if argv[:1] == ["--stack"] and len(argv) >= 2:  # make smoke / mlp smoke --stack NAME: every model of the stack
        models = stack_models(argv[1])
        if models is None:
            return 5
        api_keys = stack_api_keys(argv[1])
        argv = ["--models", models, *argv[2:]]
    if "--models" in argv:  # the stack's `models` output (JSON): every model, TF and LLM
        p = argparse.ArgumentParser(prog="python -m ops.smoke --models JSON")
        p.add_argument("--models", required=True, help="`pulumi stack output models --json`")
        p.add_argument("--data", type=Path, default=Path("data/mnist.npz"))
        p.add_argument("--images", type=int, default=200)
        p.add_argument("--min-accuracy", type=float, default=0.95)
        p.add_argument("--wait", type=float, default=600)
        args = p.parse_args(argv)
        try:
            models = json.loads(args.models)
        except json.JSONDecodeError as exc:
            print(f"smoke: --models is not the stack's `models` output as JSON ({exc})", file=sys.stderr)
            return 2
        return smoke_models(models, args.data, args.images, args.min_accuracy, args.wait, api_keys)
    if "--openai" in argv or any(is_openai(a) for a in argv if not a.startswith("-")):
        from ops import smoke_openai

        return smoke_openai.main([a for a in argv if a != "--openai"])
    p = argparse.ArgumentParser(prog="python -m ops.smoke", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url")
    p.add_argument("--data", type=Path, default=Path("data/mnist.npz"))
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--min-accuracy", type=float, default=0.95)
    p.add_argument("--wait", type=float, default=300, help="seconds to wait for the endpoint to answer")
    p.add_argument("--model", default="mnist", help="the model's name in the API")
    p.add_argument("--api-key", default=os.environ.get("SMOKE_API_KEY"), help="API key for the predict route [env SMOKE_API_KEY]")
    args = p.parse_args(argv)
    ok, message = smoke(args.url, args.data, args.images, args.min_accuracy, model=args.model, wait_s=args.wait, api_key=args.api_key)
    print(("smoke ok: " if ok else "smoke FAILED: ") + message)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
