"""`make reference` (tools/reference.py fetch): a user's checkout gets the pinned upstream files the
tests read, each checked against its SHA-256, and the CRDs' JSON Schemas derived from them."""

from __future__ import annotations

import hashlib
import json

import pytest
import yaml

from tests.conftest import unavailable
from tools import reference

CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {
        "group": "example.com",
        "names": {"kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"mode": {"type": "string", "pattern": "^(?i)a$"}}}},
            }
        ],
    },
}


def _pins(tmp_path, sha=None):
    src = tmp_path / "upstream" / "widget.crd.yaml"
    src.parent.mkdir(exist_ok=True)
    src.write_text(yaml.safe_dump(CRD))
    pins = {
        "fetched": [{"path": "crds/widget.crd.yaml", "url": src.as_uri(), "sha256": sha or hashlib.sha256(src.read_bytes()).hexdigest()}],
        "derived": [{"path": "crds/widget.json", "from": "crds/widget.crd.yaml", "version": "v1"}],
        "rewrites": {"crds/widget.json": {"^(?i)a$": "^[aA]$"}},
    }
    path = tmp_path / "pins.json"
    path.write_text(json.dumps(pins))
    return path


def test_fetch_checks_digests_and_derives_the_schemas(tmp_path, capsys):
    dest, pins = tmp_path / "ref", _pins(tmp_path)
    assert reference.main(["fetch", "--dest", str(dest), "--pins", str(pins)]) == 0
    assert "1 downloaded, 0 already current" in capsys.readouterr().out
    schema = json.loads((dest / "crds" / "widget.json").read_text())
    assert schema["title"] == "Widget (example.com/v1)" and schema["properties"]["mode"]["pattern"] == "^[aA]$"
    assert reference.main(["fetch", "--dest", str(dest), "--pins", str(pins)]) == 0  # again: nothing downloaded
    assert "0 downloaded, 1 already current" in capsys.readouterr().out


def test_a_file_whose_digest_differs_is_refused_in_one_line(tmp_path, capsys):
    dest = tmp_path / "ref"
    assert reference.main(["fetch", "--dest", str(dest), "--pins", str(_pins(tmp_path, sha="0" * 64))]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("reference: file://") and line.endswith(f"is not the pinned {'0' * 64}; not installed")
    assert not (dest / "crds" / "widget.crd.yaml").exists()


def test_the_pins_reproduce_the_shared_reference():
    """Every pinned digest is that of the file in ../shared/reference, and every derived schema equals
    the shared one: a user's `make reference` gives the tests the same data as CI."""
    shared = reference.ROOT.parent / "shared" / "reference"
    if not shared.is_dir():
        unavailable("../shared/reference not present: nothing to compare the pins with")
    pins = json.loads(reference.PINS.read_text())
    for pin in pins["fetched"]:
        assert hashlib.sha256((shared / pin["path"]).read_bytes()).hexdigest() == pin["sha256"], pin["path"]
        assert pin["url"].startswith("https://raw.githubusercontent.com/"), pin["url"]
    for der in pins["derived"]:
        ours = reference.derive_schema((shared / der["from"]).read_text(), der["version"], pins["rewrites"].get(der["path"]))
        theirs = json.loads((shared / der["path"]).read_text())
        ours.pop("$comment"), theirs.pop("$comment")
        assert ours == theirs, der["path"]
    listed = {p["path"] for p in pins["fetched"]} | {d["path"] for d in pins["derived"]}
    on_disk = {
        str(f.relative_to(shared)) for f in shared.rglob("*") if f.is_file() and f.relative_to(shared).parts[0] in ("charts", "crds")
    }
    assert on_disk <= listed, sorted(on_disk - listed)


@pytest.mark.parametrize("env, expected", [("{tmp}", "{tmp}"), ("{tmp}/absent", None)])
def test_mlplatform_reference_overrides_the_location(tmp_path, monkeypatch, env, expected):
    monkeypatch.setenv("MLPLATFORM_REFERENCE", env.format(tmp=tmp_path))
    assert reference.reference_dir() == (expected and tmp_path)
