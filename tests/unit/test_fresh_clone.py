"""The README's promise, checked as a newcomer meets it: a fresh clone on a Debian 12 machine that has
git, make and Python 3.11 and none of the packages the tests use, then `make test`; then the README's
quick start, its commands as written (``quick_start``: the serving command in the background, as "in
another shell" says), down to the curl that must answer a 7 and a 2.

The machine is a throwaway container on the debootstrap base (`python -m tools.docker_base`), root,
host network (it reaches the same package registries as this machine). It clones this repository's
HEAD, so it checks what is committed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid

import pytest

from tests.conftest import ROOT
from tests.unit.test_docker_images import BASE, docker, engine  # noqa: F401 (engine: the fixture, started once here)
from tools import docker_base

SCRIPT = r"""
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends git make curl >/dev/null   # the newcomer's machine: git, make, curl, Python 3.11
for tool in promtool amtool prometheus-pushgateway node npm; do
  if command -v $tool >/dev/null; then echo "precondition broken: $tool is already installed"; exit 3; fi
done
git clone -q /origin /home/newcomer/mlplatform
cd /home/newcomer/mlplatform
start=$(date +%s)
make test
echo "FRESH-CLONE make test: $(( $(date +%s) - start )) s"
"""


ANSWER = "QUICK-START ANSWER: "


def quick_start(readme: str) -> str:
    """The README's quick start block as a script: each command as written; the one that serves runs in
    the background (the README runs it "in another shell") and the next line waits for its /readyz; the
    curl's answer is printed after ``ANSWER``."""
    block = re.search(r"## Quick start\n.*?```bash\n(.*?)```", readme, re.S)
    assert block, "README.md: no ```bash block under '## Quick start'"
    out = []
    for line in block.group(1).splitlines():
        command = line.split("  #")[0].strip()
        if " serve " in command:
            port = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            assert port, f"the serving line names no http://127.0.0.1:PORT: {line}"
            out += [
                f"{command} > quick-start-serve.log 2>&1 &",
                f"for i in $(seq 120); do curl -sf http://127.0.0.1:{port.group(1)}/readyz >/dev/null && break; sleep 1; done",
            ]
        elif command.startswith("curl "):
            out.append(f'echo "{ANSWER}$({command})"')
        elif command:
            out.append(command)
    return "\n".join(out) + "\n"


def answered_digits(log: str) -> list[int]:
    """The digits the quick start's curl answered (argmax of each row of probabilities)."""
    line = next((x for x in log.splitlines() if x.startswith(ANSWER)), None)
    assert line, "the quick start printed no answer"
    rows = json.loads(line.removeprefix(ANSWER))["predictions"]
    return [max(range(len(r)), key=r.__getitem__) for r in rows]


def test_the_quick_start_becomes_a_script_of_its_own_commands():
    readme = (ROOT / "README.md").read_text()
    script = quick_start(readme)
    lines = script.splitlines()
    assert lines[0] == "make venv" and any(x.startswith(".venv/bin/mlp train ") for x in lines)
    serve = next(i for i, x in enumerate(lines) if " serve " in x)
    assert lines[serve].endswith(" > quick-start-serve.log 2>&1 &") and "/readyz" in lines[serve + 1]
    assert lines[-1].startswith(f'echo "{ANSWER}$(curl -s -d @examples/mnist-predict.json ')
    assert answered_digits(f"x\n{ANSWER}" + json.dumps({"predictions": [[0.0] * 7 + [0.9, 0.1, 0.0], [0.1, 0.1, 0.8] + [0.0] * 7]})) == [
        7,
        2,
    ]


@pytest.mark.slow
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
        SCRIPT
        + "qs=$(date +%s)\n"
        + quick_start((ROOT / "README.md").read_text())
        + 'echo "FRESH-CLONE quick start: $(( $(date +%s) - qs )) s"\n',
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
    # then the quick start as written: trained, gated, served, and the two payload images read as a 7 and a 2
    assert "gate PASSED" in text, text[-3000:]
    assert answered_digits(text) == [7, 2], text[-3000:]
