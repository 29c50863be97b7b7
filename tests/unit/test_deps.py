"""tools.deps, the dependency step of `make test`/`.ci/run`, against fake apt-get, sudo and id on a
PATH that holds nothing else but the few shell tools it needs (every call is recorded)."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tools import deps

# The binaries each package provides, as the probes in tools.deps look for them.
PROVIDES = {
    "make": ["make"],
    "prometheus": ["promtool", "prometheus"],
    "prometheus-alertmanager": ["amtool"],
    "prometheus-pushgateway": ["prometheus-pushgateway"],
    "nodejs": ["node"],
    "npm": ["npm"],
    "wrk": ["wrk"],
    "git": ["git"],
    "docker.io": ["docker", "dockerd"],
    "debootstrap": ["debootstrap"],
    "default-jre-headless": ["java"],
    "libnuma1": ["lib:libnuma.so.1"],  # a shared library: a file in the loader's directories, not a command
}

FAKE_APT = f"""#!{sys.executable}
import json, os, subprocess, sys
from pathlib import Path
args = sys.argv[1:]
entry = {{"cmd": "apt-get", "args": args, "env": os.environ.get("DEBIAN_FRONTEND")}}
policy = os.environ["MLPLATFORM_POLICY_RC_D"]
if args[:1] == ["install"]:
    # what Debian's maintainer scripts would do: ask policy-rc.d whether to start the daemon
    entry["policy_rc_d"] = subprocess.run([policy, "prometheus", "start"]).returncode if os.access(policy, os.X_OK) else None
    provides = json.loads(os.environ["FAKE_PROVIDES"])
    for pkg in (a for a in args[1:] if not a.startswith("-")):
        for b in provides[pkg]:
            p = Path(os.environ["MLPLATFORM_LIB_DIRS"]) / b[4:] if b.startswith("lib:") else Path(os.environ["FAKE_HAVE"]) / b
            p.write_text("#!/bin/sh\\n")
            p.chmod(0o755)
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(entry) + "\\n")
sys.exit(int(os.environ.get("FAKE_APT_RC", "0")))
"""
FAKE_SUDO = f"""#!{sys.executable}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps({{"cmd": "sudo", "args": " ".join(args)}}) + "\\n")
if args[:1] == ["-n"]:
    args = args[1:]
    if os.environ.get("FAKE_SUDO") != "ok":
        sys.exit(1)
os.execvp(args[0], args)
"""
FAKE_ID = """#!/bin/sh
echo "{\\"cmd\\": \\"id\\", \\"args\\": \\"$*\\"}" >> "$FAKE_LOG"
echo "$FAKE_UID"
"""


def _exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


class Machine:
    """A PATH with fakes: ``have`` holds the tools already installed, ``fake`` apt-get/sudo/id."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.have, self.fake, self.sys, self.lib = tmp / "have", tmp / "fake", tmp / "sys", tmp / "lib"
        for d in (self.have, self.fake, self.sys, self.lib):
            d.mkdir()
        # The plain tools the step and the fakes call; nothing that could satisfy a probe.
        for tool in ("sh", "env", "rm", "chmod", "true", "printf"):
            if real := shutil.which(tool):
                (self.sys / tool).symlink_to(real)
        self.log = tmp / "calls.jsonl"
        self.policy = tmp / "policy-rc.d"

    def add(self, *names: str) -> None:
        for n in names:
            _exe(self.lib / n[4:] if n.startswith("lib:") else self.have / n, "#!/bin/sh\n")

    def install_fakes(self, *which: str) -> None:
        texts = {"apt-get": FAKE_APT, "sudo": FAKE_SUDO, "id": FAKE_ID}
        for name in which:
            _exe(self.fake / name, texts[name])

    def run(self, *args: str, uid="0", sudo="ok", extra_env=None):
        env = {
            "PATH": f"{self.have}:{self.fake}:{self.sys}",
            "FAKE_LOG": str(self.log),
            "FAKE_HAVE": str(self.have),
            "FAKE_PROVIDES": json.dumps(PROVIDES),
            "FAKE_UID": uid,
            "FAKE_SUDO": sudo,
            "MLPLATFORM_POLICY_RC_D": str(self.policy),
            "MLPLATFORM_LIB_DIRS": str(self.lib),  # none of the machine's libraries count
            "PYTHONPATH": str(ROOT),
            **(extra_env or {}),
        }
        return subprocess.run(
            [sys.executable, "-m", "tools.deps", *args], cwd=ROOT, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL
        )

    def calls(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []


@pytest.fixture
def machine(tmp_path):
    m = Machine(tmp_path)
    m.install_fakes("apt-get", "sudo", "id")
    return m


def all_binaries(lane="fast"):
    return [b for pkg in deps.LANES[lane] if pkg in PROVIDES for b in PROVIDES[pkg]]


def test_all_present_runs_nothing_and_is_fast(machine):
    machine.add(*all_binaries("slow"))
    t0 = time.monotonic()
    for lane in ("fast", "slow"):
        proc = machine.run("--lane", lane)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == proc.stderr == ""
    assert machine.calls() == []  # not even `id`
    assert time.monotonic() - t0 < 2  # two runs, each well under a second


def test_root_installs_only_what_is_missing_without_starting_daemons(machine):
    machine.add(*(b for b in all_binaries() if b not in ("promtool", "prometheus", "amtool")))
    proc = machine.run()
    assert proc.returncode == 0, proc.stderr
    calls = machine.calls()
    assert [c["cmd"] for c in calls] == ["id", "apt-get", "apt-get"]  # no sudo as root
    update, install = calls[1], calls[2]
    assert update["args"] == ["update", "-qq"]
    assert install["args"][-2:] == ["prometheus", "prometheus-alertmanager"]
    assert "--no-install-recommends" in install["args"]
    assert install["env"] == "noninteractive"
    assert install["policy_rc_d"] == 101  # the packages' daemons were not started
    assert not machine.policy.exists()  # and our policy-rc.d is gone again
    assert (machine.have / "promtool").exists()


def test_an_existing_policy_rc_d_is_left_alone(machine):
    machine.add(*(b for b in all_binaries() if b != "npm"))
    _exe(machine.policy, "#!/bin/sh\nexit 0\n")
    assert machine.run().returncode == 0
    assert machine.calls()[-1]["policy_rc_d"] == 0
    assert machine.policy.read_text() == "#!/bin/sh\nexit 0\n"


def test_with_sudo_it_installs_through_sudo(machine):
    machine.add(*(b for b in all_binaries() if b != "prometheus-pushgateway"))
    proc = machine.run(uid="1000", sudo="ok")
    assert proc.returncode == 0, proc.stderr
    sudo = [c["args"] for c in machine.calls() if c["cmd"] == "sudo"]
    assert sudo[0] == "-n true"
    assert any(a.startswith("env DEBIAN_FRONTEND=noninteractive apt-get install") and a.endswith("prometheus-pushgateway") for a in sudo)
    apt = [c for c in machine.calls() if c["cmd"] == "apt-get"]
    assert [c["args"][0] for c in apt] == ["update", "install"]


def test_no_root_no_sudo_one_line_and_nothing_installed(machine):
    machine.add(*(b for b in all_binaries() if b not in ("node", "npm")))
    proc = machine.run(uid="1000", sudo="no")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines == ["tools/deps: missing nodejs, npm; install them with: sudo apt-get install -y --no-install-recommends nodejs npm"]
    assert not [c for c in machine.calls() if c["cmd"] == "apt-get"]


def test_not_debian_names_the_packages(machine):
    (machine.fake / "apt-get").unlink()
    machine.add(*(b for b in all_binaries() if b != "amtool"))
    proc = machine.run(uid="1000")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "tools/deps: missing prometheus-alertmanager (Debian package names); install them with your system's package manager"
    ]
    assert machine.calls() == []


def test_failed_apt_is_one_line(machine):
    machine.add(*(b for b in all_binaries() if b != "node"))
    proc = machine.run(extra_env={"FAKE_APT_RC": "100"})
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("tools/deps: `apt-get update -qq` failed (exit 100); install by hand:")
    assert not machine.policy.exists()


def test_slow_lane_adds_docker_debootstrap_jre_git_wrk(machine):
    machine.add(*all_binaries("fast"))
    proc = machine.run("--lane", "slow")
    assert proc.returncode == 0, proc.stderr
    install = machine.calls()[-1]["args"]
    assert sorted(a for a in install if not a.startswith("-") and a != "install") == sorted(
        ["git", "docker.io", "debootstrap", "default-jre-headless", "wrk", "libnuma1"]
    )
    assert (machine.lib / "libnuma.so.1").exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make runs this check")
def test_make_test_stops_before_any_test(machine, tmp_path):
    """`make test` runs the step first: missing tools and no way to install them -> its one line, no lint, no pytest."""
    machine.add(*(b for b in all_binaries() if b not in ("promtool", "prometheus", "make")))
    (machine.sys / "make").symlink_to(shutil.which("make"))
    env = {
        "PATH": f"{machine.have}:{machine.fake}:{machine.sys}",
        "FAKE_LOG": str(machine.log),
        "FAKE_UID": "1000",
        "FAKE_SUDO": "no",
        "HOME": str(tmp_path),
    }
    # VENV points into tmp so that a regression here could never touch the real environment.
    proc = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "test",
            f"PYTHON={sys.executable}",
            f"VENV={tmp_path / 'venv'}",
            f"VENV_ML={tmp_path / 'venv-ml'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode != 0
    assert "tools/deps: missing prometheus; install them with: sudo apt-get install -y --no-install-recommends prometheus" in proc.stderr
    assert "pytest" not in proc.stdout + proc.stderr and "ruff" not in proc.stdout + proc.stderr
    assert not (tmp_path / "venv").exists()


def test_ci_run_uses_the_step_and_kills_nothing_by_name():
    text = (ROOT / ".ci" / "run").read_text()
    assert "tools.deps --lane slow" in text
    assert "apt-get" not in text and "pkill" not in text and "killall" not in text
    assert "make test\n" in text and "make test-slow\n" in text
