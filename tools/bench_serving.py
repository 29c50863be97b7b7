"""Serving benchmark: a naive server vs ours vs the in-process limit, same load, same machine.

    .venv-ml/bin/python -m tools.bench_serving [--duration 15] [--connections 64]

Trains the seed model for one epoch (or uses --model-dir), then measures with the same load generator
(wrk, a separate C process; single-image :predict requests, 64 keep-alive connections, fixed duration):
(a) Flask + model.predict per request (tools/naive_server.py), (b) our server (python -m serving),
(c) the in-process limit: batched model calls of 64 images, no HTTP. The load generator's own ceiling
is measured against a trivial endpoint (/healthz) of our server; ours is also measured with 64 images
per JSON request and with single images as Open Inference Protocol binary tensors. The last line is
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LUA = """
wrk.method = "POST"
local f = io.open("{body}", "rb"); wrk.body = f:read("*all"); f:close()
wrk.headers["Content-Type"] = "{content_type}"
{extra}
"""


def lua(path: Path, body: Path, content_type: str = "application/json", headers: dict | None = None) -> Path:
    extra = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in (headers or {}).items())
    path.write_text(LUA.format(body=body, content_type=content_type, extra=extra))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)  # noqa: S310 - our own loopback http:// URL
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} not ready")


def wrk(url: str, duration: int, connections: int, script: Path | None) -> dict:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "10s"]
    if script:
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout

    def ms(label: str) -> float:
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": ms("50"),
        "p99_ms": ms("99"),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(1).strip() if errors else "",
    }


def in_process_limit(model_dir: Path, seconds: float = 5.0, batch: int = 64) -> float:
    import numpy as np

    from serving import model as m

    loaded = m.load("bench", str(model_dir), warmup_batch_sizes=(batch,))
    x = np.random.default_rng(0).random((batch, 28, 28, 1), dtype=np.float32)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        loaded(x)
        n += batch
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/mnist.npz")
    p.add_argument("--model-dir", type=Path, help="a model version directory (default: train the seed model 1 epoch)")
    p.add_argument("--duration", type=int, default=15)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--no-naive", action="store_true", help="skip the naive server (it takes the full duration to say ~20 req/s)")
    p.add_argument("--workers", type=int, default=2, help="also measure ours with this many server processes (0: skip)")
    args = p.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    model_dir = args.model_dir
    if model_dir is None:
        print("training the seed model (1 epoch) ...", flush=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "training.train",
                "--data",
                args.data,
                "--arch",
                "seed",
                "--epochs",
                "1",
                "--min-accuracy",
                "0.9",
                "--output",
                f"file://{tmp}/store",
                "--run-id",
                "bench",
            ],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        version = (tmp / "store/models/mnist/LATEST").read_text().strip()
        model_dir = tmp / "store/models/mnist" / version

    import numpy as np

    with np.load(args.data) as d:
        images = (d["x_test"][:64] / 255.0).round(4)  # float64: short JSON numbers, as clients send them
    body = tmp / "body.json"
    body.write_text(json.dumps({"instances": [images[0].tolist()]}))
    script = lua(tmp / "post.lua", body)
    (tmp / "batch64.json").write_text(json.dumps({"instances": images.tolist()}))
    batch_script = lua(tmp / "batch64.lua", tmp / "batch64.json")

    import tensorflow as tf

    cpu = next((x.split(":", 1)[1].strip() for x in open("/proc/cpuinfo") if x.startswith("model name")), platform.processor())
    print(
        f"machine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, TensorFlow {tf.__version__}; "
        f"load: wrk -t2 -c{args.connections} -d{args.duration}s, single-image requests ({body.stat().st_size} bytes)",
        flush=True,
    )

    results = {}
    servers = [
        ("naive", [sys.executable, "-m", "tools.naive_server", str(model_dir)]),
        (
            "ours",
            [
                sys.executable,
                "-m",
                "serving",
                "--model-uri",
                str(model_dir),
                "--host",
                "127.0.0.1",
                "--poll-seconds",
                "0",
                "--log-level",
                "warning",
                "--metrics-port",
                str(free_port()),
            ],
        ),
    ]
    for name, cmd in servers[1:] if args.no_naive else servers:
        port = free_port()
        full = cmd + ([str(port)] if name == "naive" else ["--port", str(port)])
        proc = subprocess.Popen(full, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(f"http://127.0.0.1:{port}/healthz" if name == "naive" else f"http://127.0.0.1:{port}/readyz")
            url = f"http://127.0.0.1:{port}/v1/models/mnist:predict"
            wrk(url, 3, args.connections, script)  # warm-up
            results[name] = wrk(url, args.duration, args.connections, script)
            if name == "ours":
                results["ceiling"] = wrk(f"http://127.0.0.1:{port}/healthz", args.duration, args.connections, None)
                results["batch64"] = wrk(url, args.duration, args.connections, batch_script)
                binary_script = _binary_script(tmp, f"http://127.0.0.1:{port}", images[:1])
                results["binary"] = wrk(f"http://127.0.0.1:{port}/v2/models/mnist/infer", args.duration, args.connections, binary_script)
        finally:
            proc.terminate()
            proc.wait(60)
        r = results[name]
        print(
            f"({'a' if name == 'naive' else 'b'}) {name:5s}: {r['rps']:9.1f} req/s  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  non-2xx {r['non_2xx']}  {r['socket_errors']}",
            flush=True,
        )
    if args.workers > 1:
        port = free_port()
        cmd = [*servers[1][1], "--port", str(port), "--workers", str(args.workers)]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(f"http://127.0.0.1:{port}/readyz")
            url = f"http://127.0.0.1:{port}/v1/models/mnist:predict"
            wrk(url, 3, args.connections, script)
            results["workers"] = wrk(url, args.duration, args.connections, script)
        finally:
            proc.terminate()
            proc.wait(60)
    for key, what in [
        ("workers", f"JSON, 1 image, {args.workers} server processes (the load generator shares these cores)"),
        ("batch64", "JSON, 64 images per request"),
        ("binary", "Open Inference Protocol binary tensors, 1 image"),
    ]:
        if key not in results:
            continue
        r = results[key]
        n = 64 if key == "batch64" else 1
        print(
            f"    ours, {what}: {r['rps']:.1f} req/s = {r['rps'] * n:.0f} images/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, non-2xx {r['non_2xx']}"
        )
    c = results["ceiling"]
    print(f"load generator ceiling (same server, trivial /healthz): {c['rps']:.1f} req/s, p99 {c['p99_ms']:.2f} ms", flush=True)
    limit = in_process_limit(model_dir)
    print(f"(c) in-process limit: {limit:.0f} images/s (batches of 64, no HTTP)")
    naive, ours = results.get("naive", {"rps": 0.0}), results["ours"]
    out = {
        "naive_rps": round(naive["rps"], 1),
        "ours_rps": round(ours["rps"], 1),
        "ours_p50_ms": round(ours["p50_ms"], 2),
        "ours_p99_ms": round(ours["p99_ms"], 2),
        "limit_images_per_s": round(limit),
        "ratio_vs_naive": round(ours["rps"] / naive["rps"], 1) if naive["rps"] else None,
        "fraction_of_limit": round(ours["rps"] / limit, 3),
        "batch64_images_per_s": round(results["batch64"]["rps"] * 64),
        "binary_rps": round(results["binary"]["rps"], 1),
        "binary_p99_ms": round(results["binary"]["p99_ms"], 2),
        "ceiling_rps": round(c["rps"], 1),
        "workers": args.workers,
        "workers_rps": round(results["workers"]["rps"], 1) if "workers" in results else None,
    }
    print(
        f"ratio vs naive {out['ratio_vs_naive']}x (target >= 200x), p99 {out['ours_p99_ms']} ms (target <= 25), "
        f"{out['fraction_of_limit']:.1%} of the in-process limit (target >= 10%)"
    )
    print(json.dumps(out))
    shutil.rmtree(tmp, ignore_errors=True)


def _binary_script(tmp: Path, base: str, image) -> Path:
    """A v2 infer request with the image as raw little-endian float32 after the JSON header."""
    with urllib.request.urlopen(f"{base}/v2/models/mnist", timeout=10) as r:  # noqa: S310 - our own loopback URL
        name = json.loads(r.read())["inputs"][0]["name"]
    head = json.dumps(
        {"inputs": [{"name": name, "shape": [1, 28, 28, 1], "datatype": "FP32", "parameters": {"binary_data_size": image.size * 4}}]}
    ).encode()
    (tmp / "binary.bin").write_bytes(head + image.astype("<f4").tobytes())  # float32: the model's own dtype
    return lua(tmp / "binary.lua", tmp / "binary.bin", "application/octet-stream", {"Inference-Header-Content-Length": len(head)})


if __name__ == "__main__":
    main()
