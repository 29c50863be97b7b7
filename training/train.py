"""Train the MNIST CNN, gate it on held-out accuracy, publish a versioned model: the MNIST model's
use of the training contract (training/contract.py), with a CLI on top.

Every flag can also be set by an environment variable (TRAIN_<FLAG>, e.g. TRAIN_EPOCHS=12), which is
how the Kubernetes Job configures it; the store (``--store``, formerly ``--output``) comes from the
first of MLPLATFORM_STORE, TRAIN_OUTPUT, MLPLATFORM_MODEL_STORE that is set, and is checked writable
before any training. Progress: a bar with the epoch's ETA on a terminal, one line per epoch (training
and held-out metrics, the run's ETA) anywhere; the training curve's path once published. Exit codes:
0 published; 2 bad arguments or data; 3 quality gate failed (nothing published); 75 a peer worker was lost (multi-worker: retry, it resumes);
143 stopped by SIGTERM (resumable from the checkpoint).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
from pathlib import Path

from training import cluster as clusters
from training import contract, storage
from training.contract import EXIT_GATE, EXIT_OK, EXIT_PREEMPTED, EXIT_USAGE

__all__ = ["EXIT_GATE", "EXIT_OK", "EXIT_PREEMPTED", "EXIT_USAGE", "main", "parser"]
MODEL_NAME = "mnist"
log = logging.getLogger("training")


def _bool(text) -> bool:
    if isinstance(text, bool):
        return text
    if text.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if text.strip().lower() in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _store_flag(p: argparse.ArgumentParser) -> None:
    """``--store`` (``--output``, its old name, still works): the platform's one store setting."""
    p.add_argument(
        "--store",
        "--output",
        dest="store",
        default=contract.default_store(),
        help="artifact store root (path, file:// or s3://): models go to <store>/models/<name>/<version>/ "
        f"[env {' / '.join(contract.STORE_ENV)}; default: %(default)s]",
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)

    def flag(name: str, **kw):
        env = "TRAIN_" + name.lstrip("-").upper().replace("-", "_")
        default = os.environ.get(env, kw.pop("default", None))
        kw["help"] = f"{kw['help']} [env {env}; default: %(default)s]"
        p.add_argument(name, default=default, **kw)

    flag("--data", help="MNIST mnist.npz (Keras layout): path, file:// or s3://; unset: Keras' download")
    _store_flag(p)
    flag("--arch", default="strong", choices=["seed", "strong"], help="seed: the reference CNN; strong: the default, more accurate")
    flag("--epochs", type=int, default=10, help="training epochs")
    flag("--batch-size", type=int, help="minibatch size (default: 128 seed, 256 strong)")
    flag("--learning-rate", type=float, help="peak learning rate (default: 1e-3 seed, 1.2e-2 strong after a warm-up)")
    flag(
        "--min-accuracy",
        type=float,
        default=os.environ.get("TRAIN_GATE_MIN", 0.9842),
        help="quality gate: minimum held-out test accuracy to publish",
    )
    flag(
        "--precision",
        default="auto",
        choices=["auto", "float32", "mixed_bfloat16", "mixed_float16"],
        help="math precision; auto: fp16 on GPU, bf16 on CPUs with native bf16, else float32",
    )
    flag(
        "--publish-as",
        default="champion",
        choices=["candidate", "champion"],
        help="candidate: the version only, no alias moved (the pipeline adopts it, a canary decides: ops/deliver.py); champion: it serves at once",
    )
    flag(
        "--champion-margin",
        type=float,
        default=0.002,
        help="quality gate: how much lower than the serving champion's accuracy (re-evaluated on the same test data) a candidate may be",
    )
    flag(
        "--allow-signature-change",
        type=_bool,
        nargs="?",
        const=True,  # a flag; "--allow-signature-change true|false" (the old form) still parses
        default=False,
        help="publish even when the serving signature (input/output names, dtypes, shapes) breaks the champion's",
    )
    flag("--seed", type=int, default=42, help="random seed (weights, shuffling): same seed + data + code -> same model")
    flag("--checkpoint-dir", help="where to checkpoint each epoch (path or s3://); a restart resumes from the last complete epoch")
    flag("--pushgateway", help="Prometheus Pushgateway URL (host:port) for training metrics")
    flag("--model-name", default=MODEL_NAME, help="name of the model in the store")
    flag("--run-id", help="identifies this run in the version name (default: the Job's name or a random id)")
    flag("--cpu-devices", type=int, help="split the CPU into N logical devices and train data-parallel over them (no GPUs)")
    flag("--limit-train", type=int, help="use only the first N training images (smoke tests)")
    flag("--limit-test", type=int, help="use only the first N test images (smoke tests)")
    return p


def _curve_png(history: dict[str, list[float]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key in ((ax1, "loss"), (ax2, "accuracy")):
        for name, label in ((key, "training"), (f"val_{key}", "held-out")):
            values = history.get(name, [])
            if values:
                ax.plot(range(1, len(values) + 1), values, marker="o", label=label)
        ax.set(title=key, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _contract_run(args: argparse.Namespace, precision: str, cluster: clusters.Cluster) -> contract.Run:
    """The MNIST run on the training contract, from this CLI's flags (the Job sets them as TRAIN_*)."""
    return contract.Run(
        args.model_name,
        gate=contract.Gate("test_accuracy", args.min_accuracy, label="test accuracy", champion_margin=args.champion_margin),
        publish_champion=args.publish_as == "champion",
        allow_signature_change=bool(args.allow_signature_change),
        output=args.store,
        data=args.data,
        checkpoint_dir=args.checkpoint_dir,
        pushgateway=args.pushgateway,
        run_id=args.run_id,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        params={"min_accuracy": args.min_accuracy, "precision": precision},
        variant=args.arch,
        cluster=cluster,
        cpu_devices=args.cpu_devices,
    )


def _publish(run: contract.Run, model, args: argparse.Namespace, mnist, state: contract.RunState, results: dict[str, float]) -> None:
    from training.model import for_inference

    def write(out: Path) -> None:
        served = for_inference(model, args.arch)
        served.export(str(out / "saved_model"), verbose=False)
        served.save(out / "model.keras")
        (out / "training_curve.png").write_bytes(_curve_png(state.history))

    run.publish(
        write,
        results,
        {
            "arch": args.arch,
            "data": {"uri": args.data or "keras:mnist.npz", "sha256": mnist.sha256, "train": len(mnist.x_train), "test": len(mnist.x_test)},
            "history": state.history,
            "input": {"shape": [28, 28, 1], "dtype": "float32", "range": [0.0, 1.0]},
        },
    )


def run(args: argparse.Namespace) -> int:
    from training import data, gate
    from training.model import DEFAULT_BATCH_SIZE, DEFAULT_LEARNING_RATE, build, eval_dataset, resolve_precision, train_dataset

    args.batch_size = args.batch_size or DEFAULT_BATCH_SIZE[args.arch]
    args.learning_rate = args.learning_rate or DEFAULT_LEARNING_RATE[args.arch]
    # The seed arch stays the seed's float32 recipe unless a precision is asked for explicitly.
    precision = "float32" if args.arch == "seed" and args.precision == "auto" else resolve_precision(args.precision)
    try:
        cluster = clusters.from_env()
    except clusters.ClusterError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    run = _contract_run(args, precision, cluster)
    strategy = run.strategy  # before any tensor: fixes the device layout
    run.seed_everything()
    try:
        mnist = data.load(args.data)
    except data.DataError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    if args.limit_train or args.limit_test:
        mnist = mnist.subset(args.limit_train or len(mnist.x_train), args.limit_test or len(mnist.x_test))
    log.info("data: %d train / %d test images (sha256 %s)", len(mnist.x_train), len(mnist.x_test), mnist.sha256[:12])
    log.info("precision: %s; global batch %d, peak learning rate %g", precision, run.global_batch_size, run.learning_rate)

    steps = -(-len(mnist.x_train) // run.global_batch_size)
    with strategy.scope():
        model, state = run.restore(lambda: build(args.arch, steps, args.epochs, run.learning_rate, precision, run.steps_per_execution))
    test = run.shard(eval_dataset(mnist.x_test, mnist.y_test))
    # val_* per epoch: the held-out test images, for the person watching only (nothing is tuned or
    # stopped on them; the gate evaluates the final model once, below).
    stopped = run.train(model, train_dataset(mnist.x_train, mnist.y_train, run.global_batch_size, args.seed), state, validation_data=test)
    if stopped is not None:
        return stopped
    try:
        loss, accuracy = model.evaluate(test, verbose=0)
    except Exception as exc:
        if run.lost_peer(exc):
            log.error("a peer worker was lost during evaluation (%s): exiting for a restart", type(exc).__name__)
            return contract.EXIT_PEER_LOST
        raise
    results = {"test_accuracy": float(accuracy), "test_loss": float(loss)}
    if not run.gate_passes(results, evaluate=gate.keras_classifier_evaluator(test)):
        return EXIT_GATE
    try:
        _publish(run, model, args, mnist, state, results)
    except contract.SignatureBreak as exc:
        print(f"contract: {exc}", file=sys.stderr)
        return EXIT_GATE
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = parser().parse_args(argv)
    if not 0 <= args.champion_margin < 1:
        print(f"--champion-margin must be in [0, 1), got {args.champion_margin}", file=sys.stderr)
        return EXIT_USAGE
    if not 0 < args.min_accuracy <= 1:
        print(f"--min-accuracy must be in (0, 1], got {args.min_accuracy}", file=sys.stderr)
        return EXIT_USAGE
    for name in ("epochs", "batch_size", "learning_rate"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            print(f"--{name.replace('_', '-')} must be > 0, got {value}", file=sys.stderr)
            return EXIT_USAGE
    try:
        storage.check_writable(args.store)
    except storage.BadURI as exc:
        print(f"--store: {exc}", file=sys.stderr)
        return EXIT_USAGE
    contract.Stop.install()
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
