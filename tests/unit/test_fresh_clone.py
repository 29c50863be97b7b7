"""The README's promise, checked as a newcomer meets it: a fresh clone on a Debian 12 machine that has
git, make and Python 3.11 and none of the packages the tests use, then `make test`, nothing else.

The machine is a throwaway container on the debootstrap base (`python -m tools.docker_base`), root,
host network (it reaches the same package registries as this machine). It clones this repository's
HEAD, so it checks what is committed."""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest

from tests.conftest import ROOT
from tests.unit.test_docker_images import BASE, docker, engine  # noqa: F401 (engine: the fixture, started once here)
from tools import docker_base

pytestmark = pytest.mark.slow

SCRIPT = r"""
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends git make >/dev/null   # the newcomer's machine: git, make, Python 3.11
for tool in promtool amtool prometheus-pushgateway node npm; do
  if command -v $tool >/dev/null; then echo "precondition broken: $tool is already installed"; exit 3; fi
done
git clone -q /origin /home/newcomer/mlplatform
cd /home/newcomer/mlplatform
start=$(date +%s)
make test
echo "FRESH-CLONE make test: $(( $(date +%s) - start )) s"
"""


def test_fresh_clone_make_test_passes(engine, tmp_path):  # noqa: F811 (the imported fixture)
    base = docker_base.build(BASE, ROOT / "build" / "rootfs")
    name = f"mlplatform-fresh-clone-{uuid.uuid4().hex[:8]}"
    proxies = [f"--env={k}" for k in os.environ if k.lower() in ("http_proxy", "https_proxy", "no_proxy", "pip_index_url")]
    # Cold by default (a machine that has never seen the project); MLPLATFORM_FRESH_CLONE_CACHE=DIR keeps
    # pip's and npm's caches there between runs, to time a warm run too.
    cache = os.environ.get("MLPLATFORM_FRESH_CLONE_CACHE")
    caches = ["-v", f"{cache}/pip:/root/.cache/pip", "-v", f"{cache}/npm:/root/.npm"] if cache else []
    cmd = [
        "docker",
        "run",
        "--rm",
        "--name",
        name,
        "--network",
        "host",
        "-v",
        f"{ROOT}:/origin:ro",
        *proxies,
        *caches,
        "-e",
        "GIT_CONFIG_COUNT=1",
        "-e",
        "GIT_CONFIG_KEY_0=safe.directory",
        "-e",
        "GIT_CONFIG_VALUE_0=*",
        base,
        "bash",
        "-c",
        SCRIPT,
    ]
    t0 = time.monotonic()
    log = tmp_path / "fresh-clone.log"
    try:
        with log.open("w") as out:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=3600)
    except subprocess.TimeoutExpired:
        docker("rm", "-f", name, check=False)  # ours, by its unique name
        raise
    text = log.read_text()
    print(f"fresh clone + make test in a new container: {time.monotonic() - t0:.0f} s (log {log})")
    assert proc.returncode == 0, text[-6000:]
    # the dependency step installed the packages, and both fast lanes ran and passed
    assert "tools/deps: installing prometheus prometheus-alertmanager prometheus-pushgateway nodejs npm" in text, text[-3000:]
    assert text.count(" passed") >= 2 and "FRESH-CLONE make test:" in text, text[-3000:]
