"""Serving benchmark: our server against the server before the change and the in-process limit, same
load, same machine, one run.

    .venv-ml/bin/python -m bench.serving [--duration 15] [--rounds 2] [--workers 2] [--baseline REV] [--naive]

Trains the seed model for one epoch (or uses --model-dir), then drives every server with the same load
generator (wrk, a separate C process; 64 keep-alive connections, fixed duration):
- single-image JSON :predict, interleaved round by round (medians reported): the server at the
  baseline revision (git archive of its serving/, default: before issue 18), ours with one process,
  ours with --workers processes. Each figure comes with the server's CPU time per request (all its
  processes), which a shared machine disturbs far less than req/s;
- ours with 64 images per JSON request, and single images as Open Inference Protocol binary tensors;
- the load generator's ceiling: a trivial endpoint (/healthz) of our server;
- overload: --overload-connections against a queue of --overload-queue instances (429s beyond it),
  beside /healthz at as many connections (the floor the event loop and wrk set there);
- the in-process limit: batched model calls of 64 images, no HTTP;
- with --naive, Flask + model.predict per request (bench/naive_server.py).
On a 2-core machine the load generator shares the cores with the server: N processes then compete
with wrk for the second core, so the N-process figure is a lower bound of what a pod with N cores
does. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PREDICT = "/v1/models/mnist:predict"
# The server before issue 18 ("Serving throughput") changed it: the baseline of its 2x target.
BASELINE_REV = "6b3ba17"
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its descendants (the server's workers and parse pool)."""
    pids, todo, total = [], [pid], 0.0
    while todo:
        p = todo.pop()
        pids.append(p)
        for f in Path(f"/proc/{p}/task").glob("*/children"):
            todo += [int(c) for c in f.read_text().split()]
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def baseline_tree(rev: str, tmp: Path) -> Path:
    """The server package as it was at ``rev`` (git archive), to run beside ours on the same machine."""
    out = tmp / f"baseline-{rev}"
    out.mkdir()
    archive = subprocess.run(["git", "archive", rev, "serving"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


class Server:
    """``python -m serving`` from ``cwd`` (ours, or a baseline revision's tree) on a free port."""

    def __init__(self, cwd: Path, model_dir: Path, workers: int = 1, extra: tuple[str, ...] = ()):
        self.port = free_port()
        cmd = [sys.executable, "-m", "serving", "--model-uri", str(model_dir), "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--poll-seconds", "0", "--log-level", "warning", "--metrics-port", str(free_port()), *extra]
        if workers > 1:
            cmd += ["--workers", str(workers)]
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        wait_ready(f"{self.base}/readyz")
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(60)

    def measure(self, path: str, duration: int, connections: int, script: Path | None, warmup: int = 3) -> dict:
        """wrk's figures plus the server's CPU time per request (all its processes), which load on a
        shared machine disturbs far less than req/s."""
        wrk(self.base + path, warmup, connections, script)
        before = cpu_seconds(self.proc.pid)
        r = wrk(self.base + path, duration, connections, script)
        r["cpu_us_per_req"] = (cpu_seconds(self.proc.pid) - before) / max(1.0, r["rps"] * duration) * 1e6
        return r


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/mnist.npz")
    p.add_argument("--model-dir", type=Path, help="a model version directory (default: train the seed model 1 epoch)")
    p.add_argument("--duration", type=int, default=15)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2, help="rounds of the single-image comparison (medians are reported)")
    p.add_argument(
        "--baseline",
        default=BASELINE_REV,
        help=f"git revision whose serving/ is the server before the change (default {BASELINE_REV}: before issue 18); '' to skip",
    )
    p.add_argument("--naive", action="store_true", help="also measure the naive Flask server (~20 req/s: takes the full duration)")
    p.add_argument("--workers", type=int, default=2, help="ours with this many server processes as well (0: skip)")
    p.add_argument("--overload-connections", type=int, default=256, help="connections of the overload run")
    p.add_argument("--overload-queue", type=int, default=16, help="--max-queue of the server in the overload run")
    return p


def main() -> None:
    args = _parser().parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    model_dir = args.model_dir or train_seed_model(args.data, tmp)

    import numpy as np

    with np.load(args.data) as d:
        images = (d["x_test"][:64] / 255.0).round(4)  # float64: short JSON numbers, as clients send them
    body = tmp / "body.json"
    body.write_text(json.dumps({"instances": [images[0].tolist()]}))
    script = lua(tmp / "post.lua", body)
    _print_machine(args, body)
    med = _compare(args, model_dir, tmp, script)
    runs = _single_runs(args, model_dir, tmp, images, script)
    runs["naive"] = _naive(args, model_dir, script) if args.naive else None
    limit = in_process_limit(model_dir)
    _print_summary(args, med, runs, limit)
    out = _result(args, med, runs, limit)
    print(json.dumps(out))
    shutil.rmtree(tmp, ignore_errors=True)


def _print_machine(args: argparse.Namespace, body: Path) -> None:
    import tensorflow as tf

    cpu = next((x.split(":", 1)[1].strip() for x in open("/proc/cpuinfo") if x.startswith("model name")), platform.processor())
    print(
        f"machine: {cpu}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}, Python {platform.python_version()}, "
        f"TensorFlow {tf.__version__}; load: wrk -t2 -c{args.connections} -d{args.duration}s (the load generator shares "
        f"these cores), single-image requests ({body.stat().st_size} bytes)",
        flush=True,
    )


def _compare(args: argparse.Namespace, model_dir: Path, tmp: Path, script: Path) -> dict[str, dict[str, float]]:
    """The single-image comparison, interleaved round by round so that drift in the machine's speed
    hits every server alike: the baseline revision, ours with one process, ours with N. Medians per server."""
    contenders: list[tuple[str, Path, int]] = []
    if args.baseline:
        contenders.append((f"baseline {args.baseline}, 1 process", baseline_tree(args.baseline, tmp), 1))
    contenders.append(("ours, 1 process", ROOT, 1))
    if args.workers > 1:
        contenders.append((f"ours, {args.workers} processes", ROOT, args.workers))
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in contenders}
    for i in range(args.rounds):
        for name, cwd, workers in contenders:
            with Server(cwd, model_dir, workers) as server:
                r = server.measure(PREDICT, args.duration, args.connections, script)
            runs[name].append(r)
            print(
                f"round {i + 1} {name:32s} {r['rps']:9.1f} req/s  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  "
                f"{r['cpu_us_per_req']:.0f} us CPU/req  non-2xx {r['non_2xx']} {r['socket_errors']}",
                flush=True,
            )
    return {
        name: {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req")} for name, rs in runs.items()
    }


def _single_runs(args: argparse.Namespace, model_dir: Path, tmp: Path, images, script: Path) -> dict[str, dict]:
    """Ours, once each: 64 images per JSON request, binary tensors, the load generator's ceiling, overload."""
    (tmp / "batch64.json").write_text(json.dumps({"instances": images.tolist()}))
    batch_script = lua(tmp / "batch64.lua", tmp / "batch64.json")
    with Server(ROOT, model_dir) as server:
        runs = {
            "batch64": server.measure(PREDICT, args.duration, args.connections, batch_script),
            "binary": server.measure(
                "/v2/models/mnist/infer", args.duration, args.connections, _binary_script(tmp, server.base, images[:1])
            ),
            "ceiling": server.measure("/healthz", args.duration, args.connections, None),
        }
    # Overload: more requests in flight than the queue holds. Beyond the queue a request is answered
    # 429 at once, so the wait in the queue is bounded; /healthz at the same connection count is the
    # floor that the event loop and the load generator set with that many connections.
    with Server(ROOT, model_dir, extra=("--max-queue", str(args.overload_queue))) as server:
        runs["overload"] = server.measure(PREDICT, args.duration, args.overload_connections, script)
        runs["overload_floor"] = server.measure("/healthz", args.duration, args.overload_connections, None)
    return runs


def _naive(args: argparse.Namespace, model_dir: Path, script: Path) -> dict:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.naive_server", str(model_dir), str(port)], cwd=ROOT)
    try:
        wait_ready(f"http://127.0.0.1:{port}/healthz")
        return wrk(f"http://127.0.0.1:{port}{PREDICT}", args.duration, args.connections, script)
    finally:
        proc.terminate()
        proc.wait(60)


def _print_summary(args: argparse.Namespace, med: dict[str, dict[str, float]], runs: dict[str, dict], limit: float) -> None:
    print(f"\nmedians of {args.rounds} rounds, single-image JSON:")
    for name, m in med.items():
        print(
            f"  {name:32s} {m['rps']:9.1f} req/s  p50 {m['p50_ms']:.2f} ms  p99 {m['p99_ms']:.2f} ms  {m['cpu_us_per_req']:.0f} us CPU/req"
        )
    for what, r, n in [("JSON, 64 images per request", runs["batch64"], 64), ("OIP binary tensors, 1 image", runs["binary"], 1)]:
        print(f"  ours, 1 process, {what}: {r['rps']:.1f} req/s = {r['rps'] * n:.0f} images/s, p99 {r['p99_ms']:.2f} ms")
    ceiling, overload, overload_floor = runs["ceiling"], runs["overload"], runs["overload_floor"]
    print(f"  load generator ceiling (trivial /healthz): {ceiling['rps']:.1f} req/s, p99 {ceiling['p99_ms']:.2f} ms")
    print(
        f"  overload, {args.overload_connections} connections, --max-queue {args.overload_queue}: {overload['rps']:.1f} req/s, "
        f"p99 {overload['p99_ms']:.2f} ms, non-2xx (429) {overload['non_2xx']} {overload['socket_errors']}; "
        f"/healthz at {args.overload_connections} connections: p99 {overload_floor['p99_ms']:.2f} ms"
    )
    if runs["naive"]:
        print(f"  naive Flask + model.predict: {runs['naive']['rps']:.1f} req/s")
    print(f"  in-process limit: {limit:.0f} images/s (batches of 64, no HTTP)")


def _result(args: argparse.Namespace, med: dict[str, dict[str, float]], runs: dict[str, dict], limit: float) -> dict:
    """The run's figures as one JSON object, with the verdict against the targets printed before it."""
    best_name = max((n for n in med if n.startswith("ours")), key=lambda n: med[n]["rps"])
    best, naive = med[best_name], runs["naive"]
    out = {
        "ours_rps": round(best["rps"], 1),
        "ours_config": best_name,
        "ours_p99_ms": round(best["p99_ms"], 2),
        "ours_1_process_rps": round(med["ours, 1 process"]["rps"], 1),
        "cpu_us_per_req": {name: round(m["cpu_us_per_req"]) for name, m in med.items()},
        "limit_images_per_s": round(limit),
        "fraction_of_limit": round(best["rps"] / limit, 3),
        "batch64_images_per_s": round(runs["batch64"]["rps"] * 64),
        "binary_rps": round(runs["binary"]["rps"], 1),
        "binary_p99_ms": round(runs["binary"]["p99_ms"], 2),
        "ceiling_rps": round(runs["ceiling"]["rps"], 1),
        "overload_p99_ms": round(runs["overload"]["p99_ms"], 2),
        "overload_non_2xx": runs["overload"]["non_2xx"],
        "overload_healthz_p99_ms": round(runs["overload_floor"]["p99_ms"], 2),
        "naive_rps": round(naive["rps"], 1) if naive else None,
        "rounds": args.rounds,
    }
    if args.baseline:
        base = next(iter(med.values()))
        out["baseline"] = args.baseline
        out["baseline_rps"] = round(base["rps"], 1)
        out["baseline_p99_ms"] = round(base["p99_ms"], 2)
        out["ratio_vs_baseline"] = round(best["rps"] / base["rps"], 2)
        print(f"\n{best_name}: {out['ratio_vs_baseline']}x the baseline's req/s (target >= 2x), ", end="")
    print(f"p99 {out['ours_p99_ms']} ms (target <= 25), {out['fraction_of_limit']:.1%} of the in-process limit (target >= 10%)")
    return out


def train_seed_model(data: str, tmp: Path) -> Path:
    print("training the seed model (1 epoch) ...", flush=True)
    cmd = [sys.executable, "-m", "training.train", "--data", data, "--arch", "seed", "--epochs", "1", "--min-accuracy", "0.9"]
    cmd += ["--output", f"file://{tmp}/store", "--run-id", "bench"]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    version = (tmp / "store/models/mnist/LATEST").read_text().strip()
    return tmp / "store/models/mnist" / version


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
