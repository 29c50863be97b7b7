"""Data-parallel scaling benchmark: training throughput (examples/s) with 1 worker vs N workers.

    .venv-ml/bin/python -m bench.scaling [--data data/mnist.npz] [--workers 2] [--arch strong]

Each worker is its own process, configured exactly as a Kubernetes Indexed Job's pod is
(TRAIN_WORKERS, JOB_COMPLETION_INDEX; loopback addresses instead of the headless Service's names),
and trains through the training contract (training.contract: MultiWorkerMirroredStrategy, the
recipe's per-worker batch, so the global batch grows with the workers). Throughput is counted by
the chief over the timed epochs only (the first epoch, with tracing and the collectives' set-up, is
excluded): global examples / wall seconds. Scaling efficiency = throughput(N) / (N x throughput(1)).

Read the figures for what they are: N processes on the same CPUs. On this project's shared 2-core
machine the workers compete for the same cores and talk over loopback gRPC, so efficiency well
below 1 is expected here; the figure that matters on a cluster is per-node GPUs with NCCL/RDMA.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from training.cluster import free_loopback_port

ROOT = Path(__file__).resolve().parent.parent


def worker(args: argparse.Namespace) -> None:
    """One worker: train ``--epochs`` epochs over ``--examples`` images, print the chief's timing."""
    import keras
    import tensorflow as tf

    from training import contract, data
    from training.model import DEFAULT_BATCH_SIZE, DEFAULT_LEARNING_RATE, build, train_dataset

    run = contract.Run(
        "bench",
        gate=contract.Gate("test_accuracy", 0.0),
        output="file:///dev/null",
        epochs=args.epochs,
        batch_size=DEFAULT_BATCH_SIZE[args.arch],
        learning_rate=DEFAULT_LEARNING_RATE[args.arch],
        seed=1,
        variant=args.arch,
    )
    strategy = run.strategy
    keras.utils.set_random_seed(1)
    m = data.load(args.data).subset(args.examples, 1)
    steps = -(-len(m.x_train) // run.global_batch_size)
    with strategy.scope():
        model, _ = run.restore(lambda: build(args.arch, steps, args.epochs, run.learning_rate, "float32", 8 if run.replicas == 1 else 1))
    ds = train_dataset(m.x_train, m.y_train, run.global_batch_size, 1)
    if run.replicas > 1:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        ds = ds.with_options(options)
    times: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t)

    model.fit(ds, epochs=args.epochs, verbose=0, callbacks=[Clock()])
    if run.is_chief:
        timed = times[1:]
        print(
            "RESULT "
            + json.dumps(
                {
                    "workers": run.cluster.workers,
                    "replicas": run.replicas,
                    "global_batch": run.global_batch_size,
                    "examples_per_second": len(m.x_train) * len(timed) / sum(timed),
                    "epoch_seconds": [round(t, 2) for t in times],
                }
            ),
            flush=True,
        )


def measure(workers: int, args: argparse.Namespace) -> dict:
    port = free_loopback_port(workers)
    procs = []
    for i in range(workers):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TRAIN_WORKERS": str(workers), "JOB_COMPLETION_INDEX": str(i)}
        env |= {"TRAIN_WORKER_HOST": "127.0.0.1", "TRAIN_WORKER_PORT": str(port), "TRAIN_WORKER_PORT_STEP": "1"}
        cmd = [sys.executable, "-m", "bench.scaling", "--worker", "--data", args.data, "--arch", args.arch]
        cmd += ["--epochs", str(args.epochs), "--examples", str(args.examples)]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
    outs = [p.communicate(timeout=1800)[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a worker failed: exit codes {[p.returncode for p in procs]}")
    line = next(line for line in outs[0].splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/mnist.npz")
    parser.add_argument("--workers", type=int, default=2, help="N for the comparison with 1 worker")
    parser.add_argument("--arch", default="strong", choices=["seed", "strong"])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is not timed")
    parser.add_argument("--examples", type=int, default=15000, help="training images per epoch (a subset keeps it short)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    print(f"machine: {cpu}, {os.cpu_count()} cores (shared), Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"CPU ONLY, all workers on this one machine: {args.arch} arch, {args.examples} images/epoch, {args.epochs - 1} timed epochs")
    one = measure(1, args)
    print(f"1 worker : {one['examples_per_second']:.0f} examples/s (global batch {one['global_batch']}, epochs {one['epoch_seconds']} s)")
    many = measure(args.workers, args)
    print(
        f"{args.workers} workers: {many['examples_per_second']:.0f} examples/s "
        f"(global batch {many['global_batch']}, epochs {many['epoch_seconds']} s)"
    )
    efficiency = many["examples_per_second"] / (args.workers * one["examples_per_second"])
    print(f"scaling efficiency: {efficiency:.2f} (1.0 = linear; CPU processes sharing {os.cpu_count()} cores)")
    print(
        json.dumps(
            {
                "label": f"CPU, {args.workers} worker processes sharing one {os.cpu_count()}-core machine",
                "workers": args.workers,
                "one_worker_examples_per_second": round(one["examples_per_second"], 1),
                "n_workers_examples_per_second": round(many["examples_per_second"], 1),
                "scaling_efficiency": round(efficiency, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
