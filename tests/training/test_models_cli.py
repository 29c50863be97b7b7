"""`python -m ops.models`: list/show/promote/rollback/verify on S3 (moto, in process) and on the
local store (a real subprocess), with one-line errors and distinct exit codes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ops import models
from training import artifacts, registry, storage

ROOT = Path(__file__).resolve().parents[2]


def _publish(tmp_path, root, version, accuracy=0.99):
    d = tmp_path / f"src-{version}"
    (d / "saved_model").mkdir(parents=True)
    (d / "saved_model" / "saved_model.pb").write_bytes(b"pb" + version.encode())
    (d / "model.keras").write_bytes(b"k" + version.encode())
    (d / "metadata.json").write_text(
        json.dumps({"version": version, "metrics": {"test_accuracy": accuracy}, "gate": {"metric": "test_accuracy"}})
    )
    registry.publish(d, root, "mnist", version, reason="trained")


def cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "ops.models", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_the_cli_end_to_end_on_the_local_store(tmp_path):
    store = f"file://{tmp_path}/store"
    for i, acc in ((1, 0.991), (2, 0.993)):
        _publish(tmp_path, store, f"2026010{i}T000000Z-run{i}", acc)
    out = cli("--store", store, "list")
    assert out.returncode == 0, out.stderr
    header, *lines = out.stdout.splitlines()
    assert header.split("\t") == ["MODEL", "VERSION", "TAGS", "GATE", "CREATED", "BY", "REJECTED"]
    rows = [line.split("\t") for line in lines]
    assert [r[:4] for r in rows] == [
        ["mnist", "20260101T000000Z-run1", "previous", "test_accuracy=0.9910"],
        ["mnist", "20260102T000000Z-run2", "candidate,champion,LATEST", "test_accuracy=0.9930"],
    ]
    out = cli("--store", store, "rollback", "--model", "mnist", "--reason", "p99 doubled", env={"MLPLATFORM_ACTOR": "alice"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        "mnist:champion rolled back 20260102T000000Z-run2 -> 20260101T000000Z-run1 (LATEST follows); "
        "20260102T000000Z-run2 rejected, never delivered again"
    )
    assert artifacts.latest(store, "mnist") == "20260101T000000Z-run1"
    shown = json.loads(cli("--store", store, "show", "--model", "mnist").stdout)
    # the candidate left the version rolled back from too: the next pipeline run has nothing to canary
    assert shown["version"] == "20260101T000000Z-run1" and shown["aliases"] == ["candidate", "champion"]
    last = [r for r in shown["history"] if r["alias"] == "champion"][-1]
    assert last["by"] == "alice" and last["reason"] == "rollback from 20260102T000000Z-run2: p99 doubled"
    assert set(shown["manifest"]["files"]) == {"metadata.json", "model.keras", "saved_model/saved_model.pb"}
    # forward again: a new version (the one rolled back from is rejected for good)
    out = cli("--store", store, "promote", "--model", "mnist", "20260102T000000Z-run2", "--reason", "fixed")
    assert out.returncode == models.EXIT_ERROR and "was rejected (rolled back: p99 doubled, by alice at " in out.stderr
    _publish(tmp_path, store, "20260103T000000Z-run3")
    assert artifacts.latest(store, "mnist") == "20260103T000000Z-run3"
    assert cli("--store", store, "verify", "--model", "mnist", "--all").returncode == 0


def test_errors_are_one_line_with_distinct_exit_codes(tmp_path):
    store = f"file://{tmp_path}/store"
    _publish(tmp_path, store, "20260102T000000Z-new")
    _publish(tmp_path, store, "20260101T000000Z-old")  # published late: stays a non-champion version
    cases = [
        (("promote", "--model", "mnist", "20260101T000000Z-old", "--reason", "x"), 1, "stays at 20260102T000000Z-new"),
        (("promote", "--model", "mnist", "nope", "--reason", "x"), 1, "no such complete version"),
        (("rollback", "--model", "mnist", "--reason", "x"), 1, "no previous version recorded"),
        (("show", "--model", "mnist", "previous"), 1, "alias previous is not set"),
    ]
    for args, code, text in cases:
        out = cli("--store", store, *args)
        assert out.returncode == code and text in out.stderr and out.stderr.count("\n") == 1, (args, out.stderr)
        assert "Traceback" not in out.stderr
    out = cli("rollback", "--model", "mnist", "--reason", "x", env={"MLPLATFORM_MODEL_STORE": "", "MLPLATFORM_STORE": ""})
    assert out.returncode == 2 and out.stderr.strip().startswith("models: error: no store: pass --store, set MLPLATFORM_STORE")
    storage.write_bytes(storage.join(registry.model_root(store, "mnist"), "20260101T000000Z-old", "model.keras"), b"evil")
    out = cli("--store", store, "verify", "--model", "mnist", "--all")
    assert out.returncode == 4
    assert "mnist/20260101T000000Z-old: model.keras sha256" in out.stderr and "verify failed: 1 of 2 version(s)" in out.stderr


def test_promotion_between_stores_and_conflict_exit_code_on_s3(tmp_path, s3_bucket, capsys, monkeypatch):
    import boto3

    boto3.client("s3").create_bucket(Bucket="prod")
    staging, prod = f"s3://{s3_bucket}/staging", "s3://prod/store"
    _publish(tmp_path, staging, "20260101T000000Z-a")
    assert models.main(["promote", "--from", staging, "--to", prod, "--model", "mnist", "--reason", "canary passed"]) == 0
    assert "copied to s3://prod/store (digests verified) and is its champion (was unset)" in capsys.readouterr().out
    assert artifacts.latest(prod, "mnist") == "20260101T000000Z-a"
    # a concurrent promoter got in between our read and our write: exit 3, nothing changed by us
    _publish(tmp_path, prod, "20260102T000000Z-b")
    real = registry._read_alias

    def stale(root, name, alias):
        doc, token = real(root, name, alias)
        if alias == "champion":
            storage.write_bytes(registry._alias_uri(root, name, "champion"), json.dumps({**doc, "generation": 99, "by": "bob"}).encode())
        return doc, token

    _publish(tmp_path, staging, "20260103T000000Z-c")
    monkeypatch.setattr(registry, "_read_alias", stale)
    code = models.main(["promote", "--from", staging, "--to", prod, "--model", "mnist", "--reason", "x"])
    err = capsys.readouterr().err
    assert code == 3 and err.startswith("models: conflict: mnist:champion was moved concurrently") and "by bob" in err


@pytest.mark.parametrize("argv", [["promote", "--from", "s3://a", "--model", "mnist", "--reason", "x"]])
def test_half_a_promotion_between_stores_is_refused(argv, capsys):
    assert models.main(argv) == 1
    assert capsys.readouterr().err.strip() == "models: error: promotion between stores needs both --from and --to"


# Scripted CLIs for `make rollback`: `pulumi` answers the stack outputs and records the pin and the up;
# `kubectl` answers the Rollout (Healthy on whatever the last `pulumi config set` pinned, once the
# full promotion was patched) and records the patch.
FAKE_PULUMI = """#!/usr/bin/env python3
import json, os, sys
from pathlib import Path
d = Path(os.environ["FAKE_DIR"]); a = sys.argv[1:]
with open(d / "calls.jsonl", "a") as f:
    f.write(json.dumps(["pulumi", *a]) + "\\n")
if a[:3] == ["stack", "output", "modelStore"]:
    print(os.environ["FAKE_STORE"])
elif a[:3] == ["stack", "output", "kubeconfig"]:
    print("null")
elif a[:2] == ["config", "set"]:
    (d / "pinned").write_text(a[4])
elif a[:1] != ["up"]:
    sys.exit(f"unexpected pulumi {a}")
"""
FAKE_KUBECTL = """#!/usr/bin/env python3
import json, os, sys
from pathlib import Path
d = Path(os.environ["FAKE_DIR"]); a = sys.argv[1:]
with open(d / "calls.jsonl", "a") as f:
    f.write(json.dumps(["kubectl", *a]) + "\\n")
if "patch" in a:
    (d / "promoted").write_text("1")
elif "get" in a and "rollout" in a:
    pinned, done = (d / "pinned").read_text(), (d / "promoted").exists()
    status = {"observedGeneration": "2", "phase": "Healthy" if done else "Paused", "stableRS": "s", "currentPodHash": "s" if done else "c"}
    meta = {"annotations": {"mlplatform.io/model-version": pinned}}
    print(json.dumps({"metadata": {"generation": 2}, "spec": {"template": {"metadata": meta}}, "status": status}))
else:
    sys.exit(f"unexpected kubectl {a}")
"""


def test_make_rollback(tmp_path):
    """`make rollback MODEL=... STACK=...` reads the stack's modelStore output, rolls the registry back
    there, then serves that champion at once: pinned, one `pulumi up`, the Rollout promoted in full (no
    canary). The stack's CLIs are scripted stand-ins on PATH; the store and the registry are real."""
    store = f"file://{tmp_path}/store"
    _publish(tmp_path, store, "20260101T000000Z-a")
    _publish(tmp_path, store, "20260102T000000Z-b")
    bin_dir, fake = tmp_path / "bin", tmp_path / "fake"
    bin_dir.mkdir()
    fake.mkdir()
    for name, text in (("pulumi", FAKE_PULUMI), ("kubectl", FAKE_KUBECTL)):
        (bin_dir / name).write_text(f"#!{sys.executable}\n" + text.split("\n", 1)[1])
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "MLPLATFORM_ACTOR": "carol", "FAKE_DIR": str(fake), "FAKE_STORE": store}
    make = [
        "make",
        "--no-print-directory",
        "-o",
        ".venv-ml/.installed",
        "rollback",
        "MODEL=mnist",
        "STACK=staging",
    ]  # never reinstall the venv
    refused = subprocess.run(make, cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode != 0 and "REASON is required" in refused.stdout
    done = subprocess.run([*make, "REASON=canary failed"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert artifacts.latest(store, "mnist") == "20260101T000000Z-a"
    last = registry.history(store, "mnist", "champion")[-1]
    assert last["by"] == "carol" and last["reason"] == "rollback from 20260102T000000Z-b: canary failed"
    calls = [json.loads(line) for line in (fake / "calls.jsonl").read_text().splitlines()]
    assert [
        "pulumi",
        "config",
        "set",
        "--path",
        "mlplatform:models.mnist.serving.version",
        "20260101T000000Z-a",
        "--stack",
        "staging",
    ] in calls
    assert sum(c[:2] == ["pulumi", "up"] for c in calls) == 1
    assert sum("patch" in c for c in calls) == 1  # promoted in full, no canary step


def test_list_and_show_show_a_rejected_version_and_why(tmp_path):
    store = f"file://{tmp_path}/store"
    for i in (1, 2, 3):
        _publish(tmp_path, store, f"2026010{i}T000000Z-run{i}")
    out = cli(
        "--store", store, "reject", "--model", "mnist", "20260102T000000Z-run2", "--reason", "PSI 0.38", env={"MLPLATFORM_ACTOR": "bob"}
    )
    assert (
        out.returncode == 0
        and out.stdout.strip() == "mnist/20260102T000000Z-run2 rejected (PSI 0.38); champion stays 20260103T000000Z-run3"
    )
    mark = registry.rejection(store, "mnist", "20260102T000000Z-run2")
    at = registry.when(mark["at"])
    rows = {r[1]: r for r in (line.split("\t") for line in cli("--store", store, "list", "--no-header").stdout.splitlines())}
    assert rows["20260102T000000Z-run2"][2] == "previous,rejected"
    assert rows["20260102T000000Z-run2"][6] == f"rejected: PSI 0.38, by bob at {at}"
    assert rows["20260101T000000Z-run1"][6] == "-" and rows["20260103T000000Z-run3"][6] == "-"
    shown = json.loads(cli("--store", store, "show", "--model", "mnist", "20260102T000000Z-run2").stdout)
    assert shown["rejected"] == {"version": "20260102T000000Z-run2", "reason": "PSI 0.38", "by": "bob", "at": at}
    assert json.loads(cli("--store", store, "show", "--model", "mnist").stdout)["rejected"] is None


def test_cli_rejecting_the_champion_rolls_back_or_refuses_saying_how(tmp_path):
    store = f"file://{tmp_path}/store"
    for i in (1, 2):
        _publish(tmp_path, store, f"2026010{i}T000000Z-run{i}")
    out = cli("--store", store, "reject", "--model", "mnist", "20260102T000000Z-run2", "--reason", "wrong labels")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        "mnist/20260102T000000Z-run2 rejected (wrong labels); it was the champion: rolled back to 20260101T000000Z-run1 (LATEST follows)"
    )
    assert artifacts.latest(store, "mnist") == "20260101T000000Z-run1"
    out = cli("--store", store, "reject", "--model", "mnist", "20260101T000000Z-run1", "--reason", "also bad")
    assert out.returncode == models.EXIT_ERROR and len(out.stderr.strip().splitlines()) == 1
    assert "is the champion and no earlier champion is left" in out.stderr and "--to VERSION" in out.stderr
    assert artifacts.latest(store, "mnist") == "20260101T000000Z-run1"
    assert registry.rejection(store, "mnist", "20260101T000000Z-run1") is None


def test_help_documents_the_exit_codes():
    out = cli("--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    for code in ("0 done", "1 refused or failed", "2 usage", "3 conflict", "4 verification failed"):
        assert code in text
    assert "rollback` rejects the version it leaves" in text


ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def test_show_prints_iso_times_and_the_store_comes_from_mlplatform_store(tmp_path):
    """Every record time in `show` is UTC ISO 8601 (not epoch seconds); $MLPLATFORM_STORE, the one
    store setting every `mlp` subcommand honours, is the default store, a plain local path included."""
    store = str(tmp_path / "store")  # a path, not a URI: a local store is accepted as is
    for i in (1, 2):
        _publish(tmp_path, store, f"2026010{i}T000000Z-run{i}")
    out = cli("show", "--model", "mnist", env={"MLPLATFORM_STORE": store, "MLPLATFORM_MODEL_STORE": ""})
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert ISO.match(shown["manifest"]["created_at"]), shown["manifest"]["created_at"]
    assert shown["history"] and all(ISO.match(r["at"]) for r in shown["history"])


def test_rollback_twice_goes_further_back_never_forward(tmp_path):
    store = f"file://{tmp_path}/store"
    for i in (1, 2, 3):
        _publish(tmp_path, store, f"2026010{i}T000000Z-run{i}")
    first = cli("--store", store, "rollback", "--model", "mnist", "--reason", "bad")
    assert first.returncode == 0, first.stderr
    assert artifacts.latest(store, "mnist") == "20260102T000000Z-run2"
    second = cli("--store", store, "rollback", "--model", "mnist", "--reason", "also bad")
    assert second.returncode == 0, second.stderr
    assert artifacts.latest(store, "mnist") == "20260101T000000Z-run1"  # not back to run3 (rejected)
    third = cli("--store", store, "rollback", "--model", "mnist", "--reason", "nothing left")
    assert third.returncode == models.EXIT_ERROR and artifacts.latest(store, "mnist") == "20260101T000000Z-run1"


def _without_pulumi() -> str:
    return os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if not (p and os.path.exists(os.path.join(p, "pulumi"))))


def test_make_rollback_takes_a_local_store(tmp_path):
    """`make rollback STORE=<path>`: the registry of a local store, no stack and no Pulumi CLI needed
    (a laptop server follows the store's LATEST)."""
    store = str(tmp_path / "store")
    for i in (1, 2):
        _publish(tmp_path, store, f"2026010{i}T000000Z-run{i}")
    proc = subprocess.run(
        ["make", "-s", "--no-print-directory", "-o", ".venv-ml/.installed", "rollback", f"STORE={store}", "REASON=bad canary"],
        cwd=ROOT,
        env={**os.environ, "PATH": _without_pulumi()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rolled back 20260102T000000Z-run2 -> 20260101T000000Z-run1" in proc.stdout
    assert artifacts.latest(store, "mnist") == "20260101T000000Z-run1"


def test_make_smoke_without_pulumi_is_one_line():
    proc = subprocess.run(
        ["make", "-s", "--no-print-directory", "-o", ".venv-ml/.installed", "-o", "data/mnist.npz", "-o", "data", "smoke", "STACK=dev"],
        cwd=ROOT,
        env={**os.environ, "PATH": _without_pulumi()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("make")]
    assert len(lines) == 1 and lines[0].startswith("smoke: the Pulumi CLI is not on PATH"), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_version_as_a_flag_or_a_positional_is_the_same(tmp_path):
    store = f"file://{tmp_path}/store"
    for i in (1, 2):
        _publish(tmp_path, store, f"2026010{i}T000000Z-run{i}")
    by_flag = cli("--store", store, "show", "--model", "mnist", "--version", "20260101T000000Z-run1")
    by_position = cli("--store", store, "show", "--model", "mnist", "20260101T000000Z-run1")
    assert by_flag.returncode == 0 and json.loads(by_flag.stdout) == json.loads(by_position.stdout)
    both = cli("--store", store, "show", "--model", "mnist", "20260101T000000Z-run1", "--version", "20260102T000000Z-run2")
    assert both.returncode == 2 and "give the version once" in both.stderr


def test_mlp_models_reads_the_stacks_store_output(tmp_path):
    """`mlp models --stack dev list`: the store is the stack's `modelStore` output (a scripted `pulumi`
    on PATH answers it), with no --store and no MLPLATFORM_STORE."""
    store = str(tmp_path / "store")
    _publish(tmp_path, store, "20260101T000000Z-run1")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    pulumi = bin_dir / "pulumi"
    pulumi.write_text(
        f"#!{sys.executable}\nimport sys\nassert sys.argv[1:] == ['stack', 'output', 'modelStore', '--stack', 'dev'], sys.argv\nprint({store!r})\n"
    )
    pulumi.chmod(0o755)
    environ = {k: v for k, v in os.environ.items() if k not in ("MLPLATFORM_STORE", "MLPLATFORM_MODEL_STORE")}
    environ["PATH"] = f"{bin_dir}{os.pathsep}{environ['PATH']}"
    proc = subprocess.run(
        [sys.executable, "-m", "mlp", "models", "--stack", "dev", "list", "--no-header"],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\t")[:2] == ["mnist", "20260101T000000Z-run1"]


def test_list_of_an_empty_or_mistyped_store_says_so(tmp_path):
    out = cli("--store", str(tmp_path / "no-such-store"), "list")
    assert out.returncode == models.EXIT_ERROR and out.stdout == ""
    assert out.stderr.strip() == f"models: error: no models in {tmp_path / 'no-such-store'} (nothing under models/): is that the store?"
