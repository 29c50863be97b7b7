"""The synth contract: resources.json + manifests, secrets redacted, byte-identical across runs."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from tests.conftest import ROOT


def _synth(stack, out):
    proc = subprocess.run(
        [sys.executable, "-m", "tools.synth", "--stack", stack, "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def _tree(path):
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_synth_twice_is_byte_identical(stack, tmp_path):
    _synth(stack, tmp_path / "a")
    _synth(stack, tmp_path / "b")
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert a.keys() == b.keys()
    diff = [name for name in a if a[name] != b[name]]
    assert diff == [], f"perpetual diff in {diff}"


def test_synth_contract(stack, tmp_path):
    _synth(stack, tmp_path)
    resources = json.loads((tmp_path / "resources.json").read_text())
    assert resources and all(set(r) == {"type", "name", "urn", "parent", "aliases", "inputs"} for r in resources)
    manifests = sorted((tmp_path / "manifests").glob("*.yaml"))
    k8s = [r for r in resources if r["type"].startswith("kubernetes:") and "helm.sh" not in r["type"]]
    assert len(manifests) == len(k8s)
    for m in manifests:
        obj = yaml.safe_load(m.read_text())
        assert obj["apiVersion"] and obj["kind"] and obj["metadata"]["name"], m.name


def test_no_secret_in_clear(stack, tmp_path, result):
    """No secret the program was handed (passwords, tokens, kubeconfig) appears in the synth output."""
    _synth(stack, tmp_path)
    text = "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())
    leaked = [s[:12] + "..." for s in result.sensitive if s in text]
    assert leaked == []


def test_secrets_were_handed_out(stack, result):
    """The check above is not vacuous on EKS stacks: the mocks did hand out secrets."""
    if stack != "local":
        assert result.sensitive
