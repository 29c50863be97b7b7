"""Train the MNIST CNN, gate it on held-out accuracy, publish a versioned model.

Every flag can also be set by an environment variable (TRAIN_<FLAG>, e.g. TRAIN_EPOCHS=12), which is
how the Kubernetes Job configures it. Exit codes: 0 published; 2 bad arguments or data;
3 quality gate failed (nothing published); 143 stopped by SIGTERM (resumable from the checkpoint).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

EXIT_OK, EXIT_USAGE, EXIT_GATE, EXIT_PREEMPTED = 0, 2, 3, 143
MODEL_NAME = "mnist"
log = logging.getLogger("training")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)

    def flag(name: str, **kw):
        env = "TRAIN_" + name.lstrip("-").upper().replace("-", "_")
        default = os.environ.get(env, kw.pop("default", None))
        kw["help"] = f"{kw['help']} [env {env}; default: %(default)s]"
        p.add_argument(name, default=default, **kw)

    flag("--data", help="MNIST mnist.npz (Keras layout): path, file:// or s3://; unset: Keras' download")
    flag("--output", default="file://./artifacts", help="artifact store root: models go to <output>/models/<name>/<version>/")
    flag("--arch", default="strong", choices=["seed", "strong"], help="seed: the reference CNN; strong: the default, more accurate")
    flag("--epochs", type=int, default=10, help="training epochs")
    flag("--batch-size", type=int, help="minibatch size (default: 128 seed, 256 strong)")
    flag("--learning-rate", type=float, help="peak learning rate (default: 1e-3 seed, 1.2e-2 strong after a warm-up)")
    flag("--min-accuracy", type=float, default=0.9842, help="quality gate: minimum held-out test accuracy to publish")
    flag(
        "--precision",
        default="auto",
        choices=["auto", "float32", "mixed_bfloat16", "mixed_float16"],
        help="math precision; auto: fp16 on GPU, bf16 on CPUs with native bf16, else float32",
    )
    flag("--seed", type=int, default=42, help="random seed (weights, shuffling): same seed + data + code -> same model")
    flag("--checkpoint-dir", help="where to checkpoint each epoch (path or s3://); a restart resumes from the last complete epoch")
    flag("--pushgateway", help="Prometheus Pushgateway URL (host:port) for training metrics")
    flag("--model-name", default=MODEL_NAME, help="name of the model in the store")
    flag("--run-id", help="identifies this run in the version name (default: the Job's name or a random id)")
    flag("--limit-train", type=int, help="use only the first N training images (smoke tests)")
    flag("--limit-test", type=int, help="use only the first N test images (smoke tests)")
    return p


@dataclass
class RunState:
    """What a checkpoint records next to the model file."""

    epoch: int = 0  # epochs completed
    history: dict[str, list[float]] = field(default_factory=dict)
    checkpoint: str = ""


class Stop:
    """SIGTERM (spot reclaim, node drain, rollout) asks training to stop at the next batch boundary."""

    requested = False

    @classmethod
    def install(cls) -> None:
        def handler(signum, _frame):
            log.warning("received signal %s: stopping after the current batch (the last complete epoch is checkpointed)", signum)
            cls.requested = True

        signal.signal(signal.SIGTERM, handler)


def _callbacks(args, state: RunState, metrics, checkpoint):
    import keras

    class EpochEnd(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            if Stop.requested:
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            from training.metrics import EPOCH_SECONDS, EPOCHS

            if Stop.requested:
                return  # a partial epoch: not a checkpoint
            for k, v in (logs or {}).items():
                state.history.setdefault(k, []).append(float(v))
            state.epoch = epoch + 1
            metrics.set(EPOCH_SECONDS, time.perf_counter() - self.start)
            metrics.set(EPOCHS, state.epoch)
            if checkpoint:
                checkpoint.save(self.model, state)
            metrics.push(args.pushgateway)

    return [EpochEnd()]


class Checkpoint:
    """``epoch-NNNN.keras`` (weights + optimizer state) then ``state.json`` naming it: the state file
    is written last, so it always names a complete model file."""

    def __init__(self, uri: str):
        self.uri = uri

    def load(self):
        import keras

        from training import storage

        try:
            raw = json.loads(storage.read_text(storage.join(self.uri, "state.json")))
        except FileNotFoundError:
            return None, RunState()
        state = RunState(**raw)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.keras"
            path.write_bytes(storage.read_bytes(storage.join(self.uri, state.checkpoint)))
            model = keras.models.load_model(path)
        return model, state

    def save(self, model, state: RunState) -> None:
        from training import storage

        name = f"epoch-{state.epoch:04d}.keras"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            model.save(path)
            storage.write_bytes(storage.join(self.uri, name), path.read_bytes())
        state.checkpoint = name
        storage.write_bytes(storage.join(self.uri, "state.json"), json.dumps(state.__dict__).encode())
        log.info("checkpoint: epoch %d -> %s", state.epoch, storage.join(self.uri, name))


def _curve_png(history: dict[str, list[float]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    epochs = range(1, len(history.get("loss", [])) + 1)
    ax1.plot(epochs, history.get("loss", []), marker="o")
    ax1.set(title="training loss", xlabel="epoch")
    ax2.plot(epochs, history.get("accuracy", []), marker="o")
    ax2.set(title="training accuracy", xlabel="epoch")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def run(args: argparse.Namespace) -> int:
    started = time.time()
    import keras
    import tensorflow as tf

    from training import artifacts, data
    from training.metrics import ACCURACY, DURATION_SECONDS, GATE_PASSED, LAST_RUN, LAST_SUCCESS, LOSS, TrainingMetrics
    from training.model import (
        DEFAULT_BATCH_SIZE,
        DEFAULT_LEARNING_RATE,
        build,
        eval_dataset,
        for_inference,
        resolve_precision,
        train_dataset,
    )

    args.batch_size = args.batch_size or DEFAULT_BATCH_SIZE[args.arch]
    args.learning_rate = args.learning_rate or DEFAULT_LEARNING_RATE[args.arch]
    keras.utils.set_random_seed(args.seed)
    tf.config.experimental.enable_op_determinism()
    metrics = TrainingMetrics(args.model_name, args.arch)
    try:
        mnist = data.load(args.data)
    except data.DataError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    if args.limit_train or args.limit_test:
        mnist = mnist.subset(args.limit_train or len(mnist.x_train), args.limit_test or len(mnist.x_test))
    log.info("data: %d train / %d test images (sha256 %s)", len(mnist.x_train), len(mnist.x_test), mnist.sha256[:12])

    steps = -(-len(mnist.x_train) // args.batch_size)
    checkpoint = Checkpoint(args.checkpoint_dir) if args.checkpoint_dir else None
    # The seed arch stays the seed's float32 recipe unless a precision is asked for explicitly.
    precision = "float32" if args.arch == "seed" and args.precision == "auto" else resolve_precision(args.precision)
    log.info("precision: %s", precision)
    keras.mixed_precision.set_global_policy(precision)
    model, state = checkpoint.load() if checkpoint else (None, RunState())
    if model is None:
        model = build(args.arch, steps, args.epochs, args.learning_rate, precision)
    else:
        log.info("resuming from %s after epoch %d", args.checkpoint_dir, state.epoch)

    if state.epoch < args.epochs:
        model.fit(
            train_dataset(mnist.x_train, mnist.y_train, args.batch_size, args.seed),
            epochs=args.epochs,
            initial_epoch=state.epoch,
            verbose=2,
            callbacks=_callbacks(args, state, metrics, checkpoint),
        )
    if Stop.requested:
        log.warning("stopped by SIGTERM after %d complete epochs; a restart resumes from the checkpoint", state.epoch)
        return EXIT_PREEMPTED

    loss, accuracy = model.evaluate(eval_dataset(mnist.x_test, mnist.y_test), verbose=0)
    metrics.set(ACCURACY, accuracy)
    metrics.set(LOSS, loss)
    metrics.set(LAST_RUN, time.time())
    log.info("test accuracy %.4f, loss %.4f (gate: >= %.4f)", accuracy, loss, args.min_accuracy)
    if accuracy < args.min_accuracy:
        metrics.set(GATE_PASSED, 0)
        metrics.set(DURATION_SECONDS, time.time() - started)
        metrics.push(args.pushgateway)
        print(f"quality gate failed: test accuracy {accuracy:.4f} < required {args.min_accuracy:.4f}; nothing published", file=sys.stderr)
        return EXIT_GATE

    run_id = args.run_id or os.environ.get("JOB_NAME") or uuid.uuid4().hex
    version = artifacts.new_version(run_id)
    model = for_inference(model, args.arch)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        model.export(str(out / "saved_model"), verbose=False)
        model.save(out / "model.keras")
        (out / "training_curve.png").write_bytes(_curve_png(state.history))
        metadata = {
            "model": args.model_name,
            "version": version,
            "arch": args.arch,
            "metrics": {"test_accuracy": accuracy, "test_loss": loss},
            "params": {k: getattr(args, k) for k in ("epochs", "batch_size", "learning_rate", "seed", "min_accuracy")}
            | {"precision": precision},
            "data": {"uri": args.data or "keras:mnist.npz", "sha256": mnist.sha256, "train": len(mnist.x_train), "test": len(mnist.x_test)},
            "history": state.history,
            "code_version": os.environ.get("MLPLATFORM_CODE_VERSION", "unknown"),
            "input": {"shape": [28, 28, 1], "dtype": "float32", "range": [0.0, 1.0]},
            "started_at": started,
            "finished_at": time.time(),
        }
        (out / "metadata.json").write_text(json.dumps(metadata, indent=2, sort_keys=True))
        uri = artifacts.publish(out, args.output, args.model_name, version)
    metrics.set(GATE_PASSED, 1)
    metrics.set(LAST_SUCCESS, time.time())
    metrics.set(DURATION_SECONDS, time.time() - started)
    metrics.push(args.pushgateway)
    log.info("published %s (accuracy %.4f)", uri, accuracy)
    print(json.dumps({"published": uri, "version": version, "test_accuracy": accuracy}))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = parser().parse_args(argv)
    if not 0 < args.min_accuracy <= 1:
        print(f"--min-accuracy must be in (0, 1], got {args.min_accuracy}", file=sys.stderr)
        return EXIT_USAGE
    for name in ("epochs", "batch_size", "learning_rate"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            print(f"--{name.replace('_', '-')} must be > 0, got {value}", file=sys.stderr)
            return EXIT_USAGE
    Stop.install()
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
