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
- with --naive, Flask + model.predict per request (bench/naive_server.py);
- ONNX against TensorFlow (issue 28): the same CNN converted by tf2onnx (the converter of record for
  TensorFlow; checked equal to the SavedModel on 64 images before any load), served by the same server
  through ONNX Runtime, in the same interleaved rounds (1 and --workers processes) and its own
  in-process limit; reported as medians and ratios to the SavedModel's figures (--no-onnx: skip).
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
    x = np.random.default_rng(0).random((batch, 28, 28, 1), dtype=np.float32)  # the MNIST CNN's input, either runtime
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
        # ours picks the runtime (TensorFlow or ONNX Runtime) from what the folder holds (serving/runtime.py)
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
    p.add_argument(
        "--onnx", action=argparse.BooleanOptionalAction, default=True, help="also the same CNN as ONNX (tf2onnx) in ONNX Runtime"
    )
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
        # float64: short JSON numbers, as clients send them; 28x28x1: the signature's rank
        images = (d["x_test"][:64] / 255.0).round(4)[..., None]
    body = tmp / "body.json"
    body.write_text(json.dumps({"instances": [images[0].tolist()]}))
    script = lua(tmp / "post.lua", body)
    _print_machine(args, body)
    onnx_dir = export_onnx(model_dir, tmp / "onnx-v1", images) if args.onnx else None
    med = _compare(args, model_dir, tmp, script, onnx_dir)
    runs = _single_runs(args, model_dir, tmp, images, script)
    runs["naive"] = _naive(args, model_dir, script) if args.naive else None
    limit = in_process_limit(model_dir)
    runs["onnx_limit"] = in_process_limit(onnx_dir) if onnx_dir else None
    _print_summary(args, med, runs, limit)
    out = _result(args, med, runs, limit)
    print(json.dumps(out))
    shutil.rmtree(tmp, ignore_errors=True)


def _print_machine(args: argparse.Namespace, body: Path) -> None:
    import tensorflow as tf

    cpu = next((x.split(":", 1)[1].strip() for x in open("/proc/cpuinfo") if x.startswith("model name")), platform.processor())
    try:
        import onnxruntime

        ort = f", ONNX Runtime {onnxruntime.__version__}"
    except ImportError:
        ort = ""
    print(
        f"machine: {cpu}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}, Python {platform.python_version()}, "
        f"TensorFlow {tf.__version__}{ort}; load: wrk -t2 -c{args.connections} -d{args.duration}s (the load generator shares "
        f"these cores), single-image requests ({body.stat().st_size} bytes)",
        flush=True,
    )


def _compare(args: argparse.Namespace, model_dir: Path, tmp: Path, script: Path, onnx_dir: Path | None) -> dict[str, dict[str, float]]:
    """The single-image comparison, interleaved round by round so that drift in the machine's speed
    hits every server alike: the baseline revision, ours with one process, ours with N, and the
    same with the ONNX export. Medians per server."""
    contenders: list[tuple[str, Path, int, Path]] = []
    if args.baseline:
        contenders.append((f"baseline {args.baseline}, 1 process", baseline_tree(args.baseline, tmp), 1, model_dir))
    for label, folder in (("", model_dir), (", ONNX", onnx_dir)):
        if folder is None:
            continue
        contenders.append((f"ours, 1 process{label}", ROOT, 1, folder))
        if args.workers > 1:
            contenders.append((f"ours, {args.workers} processes{label}", ROOT, args.workers, folder))
    runs: dict[str, list[dict]] = {name: [] for name, _, _, _ in contenders}
    for i in range(args.rounds):
        for name, cwd, workers, folder in contenders:
            with Server(cwd, folder, workers) as server:
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
    if runs["onnx_limit"]:
        print(f"  in-process limit, ONNX Runtime: {runs['onnx_limit']:.0f} images/s ({runs['onnx_limit'] / limit:.2f}x TensorFlow's)")
        for name, ratios in _onnx_ratios(med).items():
            print(
                f"  ONNX / SavedModel, {name}: {ratios['rps']:.2f}x req/s, {ratios['p99_ms']:.2f}x p99, {ratios['cpu_us_per_req']:.2f}x CPU per request"
            )


def _result(args: argparse.Namespace, med: dict[str, dict[str, float]], runs: dict[str, dict], limit: float) -> dict:
    """The run's figures as one JSON object, with the verdict against the targets printed before it."""
    # the targets against the baseline are the SavedModel's (the baseline serves only that); ONNX has its own block
    best_name = max((n for n in med if n.startswith("ours") and not n.endswith("ONNX")), key=lambda n: med[n]["rps"])
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
    if runs["onnx_limit"]:
        out["onnx"] = {
            "medians": {n: {k: round(v, 2) for k, v in m.items()} for n, m in med.items() if n.endswith("ONNX")},
            "ratios_vs_savedmodel": _onnx_ratios(med),
            "limit_images_per_s": round(runs["onnx_limit"]),
            "limit_ratio_vs_savedmodel": round(runs["onnx_limit"] / limit, 2),
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


def _onnx_ratios(med: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """ONNX's median over the SavedModel's, per process count and figure (req/s > 1: ONNX faster;
    p99 and CPU per request < 1: ONNX better)."""
    return {
        name.removeprefix("ours, "): {k: round(med[f"{name}, ONNX"][k] / med[name][k], 2) for k in ("rps", "p99_ms", "cpu_us_per_req")}
        for name in med
        if name.startswith("ours") and f"{name}, ONNX" in med
    }


def export_onnx(model_dir: Path, out: Path, images) -> Path:
    """The SavedModel of ``model_dir`` as ``out/model.onnx`` by tf2onnx (its serving_default
    signature: same input and output names), checked against TensorFlow on ``images`` first."""
    import numpy as np

    out.mkdir(parents=True)
    cmd = [sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(model_dir / "saved_model"), "--signature_def", "serving_default"]
    subprocess.run([*cmd, "--opset", "17", "--output", str(out / "model.onnx")], cwd=ROOT, check=True, capture_output=True)
    (out / "metadata.json").write_text(json.dumps({"version": "onnx-v1", "format": "onnx", "converted_from": str(model_dir)}))
    from serving import model as m

    x = images.astype(np.float32)
    tf_y, onnx_y = m.load("tf", str(model_dir), (64,))(x), m.load("onnx", str(out), (64,))(x)
    diff = float(np.abs(tf_y - onnx_y).max())
    print(f"onnx: tf2onnx export of {model_dir.name}: max |TF - ONNX| on {len(x)} images = {diff:.2e}", flush=True)
    if diff > 1e-4:
        raise SystemExit(f"the ONNX export differs from the SavedModel by {diff} (> 1e-4): not the same model, not comparable")
    return out


def train_seed_model(data: str, tmp: Path) -> Path:
    print("training the seed model (1 epoch) ...", flush=True)
    cmd = [sys.executable, "-m", "training.train", "--data", data, "--arch", "seed", "--epochs", "1", "--min-accuracy", "0.9"]
    cmd += ["--store", f"file://{tmp}/store", "--run-id", "bench"]
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
