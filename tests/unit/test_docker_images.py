"""Real Docker engine: build both Dockerfiles on a locally made base (no registry can be pulled from),
then run the images as they run in the cluster: non-root, read-only root filesystem, /tmp writable."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from tests.conftest import ROOT, unavailable
from tools import docker_base

pytestmark = pytest.mark.slow
BASE = "mlplatform-base:bookworm"


def docker(*args, timeout=1800, check=True):
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check)


@pytest.fixture(scope="module")
def engine():
    if shutil.which("docker") is None:
        pytest.fail("docker not installed: apt-get install docker.io (.ci/run does)")
    started = None
    if docker("info", check=False).returncode != 0:
        if shutil.which("dockerd") is None:
            pytest.fail("no Docker engine running and no dockerd to start")
        log = ROOT / "build" / "dockerd.log"
        log.parent.mkdir(exist_ok=True)
        for extra in ([], ["--storage-driver", "vfs"]):  # overlay2 first; vfs where overlayfs is unavailable
            with log.open("w") as out:
                started = subprocess.Popen(["dockerd", *extra], stdout=out, stderr=subprocess.STDOUT)
            for _ in range(60):
                if docker("info", check=False).returncode == 0 or started.poll() is not None:
                    break
                time.sleep(1)
            if started.poll() is None and docker("info", check=False).returncode == 0:
                break
            started.terminate()
            started.wait(30)
        else:
            # An environment limit (no cgroups/overlay/privileges for a daemon), not a product fault.
            last = (log.read_text().strip().splitlines() or ["(no output)"])[-1]
            unavailable(f"a Docker engine cannot run on this machine: dockerd did not start with overlay2 or vfs; it said: {last[-300:]}")
    yield
    if started:
        started.terminate()
        started.wait(60)


@pytest.fixture(scope="module")
def base(engine):
    return docker_base.build(BASE, ROOT / "build" / "rootfs")


@pytest.fixture(scope="module", params=["serving", "training"])
def image(request, base):
    tag = f"mlplatform-{request.param}:test"
    proc = docker("build", "--build-arg", f"BASE_IMAGE={base}", "-t", tag, str(ROOT / request.param), check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return request.param, tag


def run(tag, *args, entrypoint=None):
    cmd = ["run", "--rm", "--read-only", "--tmpfs", "/tmp", "--network", "none"]
    if entrypoint:
        cmd += ["--entrypoint", entrypoint]
    return docker(*cmd, tag, *args, check=False, timeout=300)


def test_runs_as_non_root(image):
    _, tag = image
    assert docker("inspect", "--format", "{{.Config.User}}", tag).stdout.strip() == "10001"


def test_cli_works_on_a_read_only_root(image):
    name, tag = image
    proc = run(tag, "--help")
    assert proc.returncode == 0, proc.stderr
    assert ("--model-uri" if name == "serving" else "--min-accuracy") in proc.stdout


def test_dependencies_import_on_a_read_only_root(image):
    name, tag = image
    modules = "tensorflow, uvicorn, orjson, prometheus_client, boto3" if name == "serving" else "boto3, prometheus_client, matplotlib"
    proc = run(tag, "-c", f"import {modules}; print('ok')", entrypoint="python")
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
