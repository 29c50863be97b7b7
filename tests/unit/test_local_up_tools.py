"""`make up STACK=local` (ops/local_up.py), issue 27: the pinned kind/Pulumi already on PATH are used
without a download, `--use-current-context` deploys into the current kube context (no kind cluster),
and Docker's CPUs/memory are stated against what the stack needs. Same scripted machine as
tests/unit/test_local_up.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ops import local_up
from tests.conftest import ROOT
from tests.unit.test_local_up import COMMON, FAKE_KIND, FAKE_PULUMI, Laptop, _exe, _tarball

UNEXPECTED = 'done("unexpected\\n", 2)'


def _with(fake: str, branch: str) -> str:
    """A fake CLI with one more scripted answer, tried before its 'unexpected' fallback."""
    head, _, _ = fake.rpartition(UNEXPECTED)
    return head + branch + "\n" + UNEXPECTED + "\n"


def _versioned(fake: str, version_line: str) -> str:
    return _with(fake, f'if args[:1] == ["version"]:\n    done({version_line!r} + "\\n")')


@pytest.fixture
def lap(tmp_path):
    machine = Laptop(tmp_path)
    yield machine
    machine.server.close()


def _up(lap: Laptop, *extra: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PULUMI_")}
    environ.update({"PATH": f"{lap.bin}:{os.environ['PATH']}", "FAKE_STATE": str(lap.state), "FAKE_LOG": str(lap.log)})
    cmd = [sys.executable, "-m", "ops.local_up", "up", *extra, "--root", str(lap.project), "--pins", str(lap.pins)]
    cmd += ["--registry-port", str(lap.port)]
    return subprocess.run(cmd, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60)


def test_the_pinned_versions_on_path_are_used_without_a_download(lap):
    _exe(lap.bin / "kind", _versioned(FAKE_KIND, f"kind {local_up.KIND} go1.24.2 linux/amd64"))
    _exe(lap.bin / "pulumi", _versioned(FAKE_PULUMI, f"v{local_up.PULUMI}"))
    proc = _up(lap)
    assert proc.returncode == 0, proc.stderr
    assert lap.server.requests == []  # nothing downloaded
    assert f"kind {local_up.KIND}: {lap.bin / 'kind'} (on PATH, the pinned version: no download)" in proc.stdout
    assert not (lap.project / ".tools" / f"pulumi-{local_up.PULUMI}").exists()


def test_another_version_on_path_is_not_used(lap):
    _exe(lap.bin / "kind", _versioned(FAKE_KIND, "kind v0.20.0 go1.20 linux/amd64"))
    proc = _up(lap)
    assert proc.returncode == 0, proc.stderr
    assert "/kind" in lap.server.requests  # the pinned one was downloaded and checked instead


def test_use_current_context_creates_no_cluster_and_records_the_context(lap):
    _exe(lap.bin / "kubectl", COMMON + 'done("minikube\\n") if args[:2] == ["config", "current-context"] else done("", 2)\n')
    pulumi = _with(FAKE_PULUMI, 'if args[:2] == ["config", "set"]:\n    done()')
    (lap.assets / "pulumi.tar.gz").write_bytes(_tarball({"pulumi/pulumi": pulumi}))
    lap.write_pins()
    proc = _up(lap, "--use-current-context")
    assert proc.returncode == 0, proc.stderr
    assert "/kind" not in lap.server.requests and lap.calls("kind") == []  # no kind at all
    assert ["config", "set", "--path", "mlplatform:cluster.context", "minikube", "--stack", "local"] in [
        c["args"] for c in lap.calls("pulumi")
    ]
    assert "the current context minikube" in proc.stdout


@pytest.mark.parametrize(
    "info, short",
    [("8 16777216000", False), ("4 8589934592", False), ("2 4294967296", True), ("27.0", None)],
)
def test_docker_resources_are_stated_against_the_needs(info, short):
    line = local_up.resources_note(info)
    assert f">= {local_up.NEEDS_CPUS} CPUs" in line and f"{local_up.NEEDS_GIB} GiB" in line
    if short is not None:
        assert ("pods may stay Pending" in line) is short, line
