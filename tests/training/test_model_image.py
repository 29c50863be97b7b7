"""A model's own image, for real: the platform training image (training/Dockerfile) on the locally
made base, then models/diabetes built with training/model.Dockerfile FROM it, run as the cluster runs it (non-root, read-only
root, no network). The base has no TensorFlow (the real one is tensorflow/tensorflow's GPU image,
which cannot be pulled here), so this checks the image's wiring: the runner finds the model's
entrypoint, the contract answers bad data with exit 2 and the reason, and the model's own
dependency reads its bundled data set offline."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import ROOT
from tests.unit.test_docker_images import engine  # noqa: F401 (the fixture: a running engine, started here if need be)
from tools import docker_base

pytestmark = pytest.mark.slow
BASE = "mlplatform-base:bookworm"


def docker(*args, timeout=1800):
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def model_image(engine):  # noqa: F811 (the imported fixture)
    base = docker_base.build(BASE, ROOT / "build" / "rootfs")
    platform = docker("build", "--build-arg", f"BASE_IMAGE={base}", "-t", "mlplatform-training:model-test", str(ROOT / "training"))
    assert platform.returncode == 0, platform.stderr[-3000:]
    model = docker(
        "build",
        "--build-arg",
        "BASE_IMAGE=mlplatform-training:model-test",
        "-t",
        "mlplatform-diabetes:test",
        # as components/services/images.py builds a model folder without a Dockerfile of its own
        "-f",
        str(ROOT / "training" / "model.Dockerfile"),
        str(ROOT / "models" / "diabetes"),
    )
    assert model.returncode == 0, model.stderr[-3000:]
    return "mlplatform-diabetes:test"


def run(image, *args, env=(), entrypoint=None):
    cmd = ["run", "--rm", "--read-only", "--tmpfs", "/tmp", "--network", "none"]
    for e in env:
        cmd += ["-e", e]
    if entrypoint:
        cmd += ["--entrypoint", entrypoint]
    return docker(*cmd, image, *args, timeout=300)


def test_runs_the_models_entrypoint_non_root(model_image):
    inspect = docker("inspect", "--format", "{{.Config.User}} {{json .Config.Env}}", model_image)
    assert inspect.stdout.startswith("10001 ") and "TRAIN_ENTRYPOINT=/app/model/train.py" in inspect.stdout
    # as a platform Job runs it: the Job names the store (TRAIN_OUTPUT); here a writable tmpfs
    proc = run(model_image, env=["TRAIN_DATA=/data/missing.csv", "TRAIN_OUTPUT=file:///tmp/artifacts"])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "/data/missing.csv: no such file" in proc.stderr


def test_an_unwritable_store_is_refused_before_training(model_image):
    """No store named on a read-only root: the default (./artifacts under /app) cannot be written, and
    the run says so in one line with exit 2 before it reads data or trains (issue 27: a run must not
    train for minutes to fail at publish)."""
    proc = run(model_image, env=["TRAIN_DATA=/data/missing.csv"])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not writable" in lines[0] and "file://./artifacts" in lines[0], proc.stderr


def test_bundled_data_set_loads_offline(model_image):
    proc = run(
        model_image,
        "-c",
        "from sklearn.datasets import load_diabetes; x, y = load_diabetes(scaled=False, return_X_y=True); print(x.shape, y.shape)",
        entrypoint="python",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "(442, 10) (442,)"
