"""Adoption (issue 24 item 8): a workload publishes versions only, and the pipeline's identity adopts
them (training/registry.py ``adopt``, run by ops/deliver.py before it reads the candidate): the newest
version newer than the champion whose gate passed on record, that is not rejected, whose files match
its manifest and whose name is a time not in the future becomes the candidate (or, where no canary
judges, the champion, LATEST following). On the local store and on S3 (moto)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ops import models
from training import registry, storage

ROOT_DIR = Path(__file__).resolve().parents[2]
V1, V2, V3, V4 = (f"2026010{i}T000000Z-run{i}" for i in range(1, 5))


@pytest.fixture(params=["s3", "file"])
def root(request, tmp_path):
    if request.param == "s3":
        return f"s3://{request.getfixturevalue('s3_bucket')}/store"
    return f"file://{tmp_path}/store"


def _publish(tmp_path: Path, root: str, version: str, gate: dict | None = None) -> None:
    """What a training Job does: the version only (``adopt=False``), its gate verdict in its metadata."""
    d = tmp_path / f"src-{version}"
    (d / "saved_model").mkdir(parents=True)
    (d / "saved_model" / "saved_model.pb").write_bytes(f"pb-{version}".encode())
    (d / "model.keras").write_bytes(f"k-{version}".encode())
    (d / "metadata.json").write_text(json.dumps({"format": "savedmodel"}))
    if gate is not None:
        (d / "metadata.json").write_text(json.dumps({"format": "savedmodel", "gate": gate}))
    out = registry.publish(d, root, "mnist", version, reason="trained", adopt=False)
    assert not out.champion


PASSED = {"metric": "test_accuracy", "passed": True}


def _aliases(root: str) -> dict[str, str]:
    return {a: d["version"] for a, d in registry.aliases(root, "mnist").items()}


def test_a_published_version_moves_nothing_until_the_pipeline_adopts_it(tmp_path, root):
    _publish(tmp_path, root, V1, PASSED)
    assert _aliases(root) == {} and registry.latest(root, "mnist") is None
    out = registry.adopt(root, "mnist", champion=True, reason="pipeline: adopted on dev")
    assert out == {"version": V1, "moved": ["candidate", "champion"], "skipped": {}}
    assert _aliases(root) == {"candidate": V1, "champion": V1} and registry.latest(root, "mnist") == V1
    assert registry.get_alias(root, "mnist", "champion")["reason"] == "pipeline: adopted on dev"
    assert registry.adopt(root, "mnist", champion=True, reason="again") is None  # nothing newer: nothing moves


def test_on_a_stack_with_canaries_only_the_candidate_moves(tmp_path, root):
    _publish(tmp_path, root, V1, PASSED)
    registry.adopt(root, "mnist", champion=True, reason="first")
    _publish(tmp_path, root, V2, PASSED)
    out = registry.adopt(root, "mnist", champion=False, reason="pipeline: candidate for the canary")
    assert out["version"] == V2 and out["moved"] == ["candidate"]
    assert _aliases(root) == {"candidate": V2, "champion": V1} and registry.latest(root, "mnist") == V1


def test_runs_no_pipeline_watched_are_adopted_by_the_next_one_newest_first(tmp_path, root):
    """Scheduled (CronJob) runs publish with no pipeline waiting: the next pipeline run adopts the
    newest version that qualifies; each one that does not is skipped with its reason."""
    _publish(tmp_path, root, V1, PASSED)
    registry.adopt(root, "mnist", champion=True, reason="first")
    _publish(tmp_path, root, V2, PASSED)
    _publish(tmp_path, root, V3, PASSED)
    _publish(tmp_path, root, V4, {"metric": "test_accuracy", "passed": False})
    registry.reject(root, "mnist", V3, reason="bad model found later")
    out = registry.adopt(root, "mnist", champion=False, reason="pipeline")
    assert out["version"] == V2
    assert set(out["skipped"]) == {V3, V4}
    assert out["skipped"][V3].startswith("rejected (bad model found later")
    assert "gate.passed is False" in out["skipped"][V4]


@pytest.mark.parametrize(
    "version, gate, why",
    [
        (V2, None, "gate.passed is None"),  # metadata without a gate
        (V2, {"metric": "auc"}, "gate.passed is None"),  # a run that never called gate_passes
        ("99991231T235959Z-forged", PASSED, "in the future"),  # would stop every later version
        ("zzz-forged", PASSED, "not a time-sorted version name"),
    ],
)
def test_a_version_without_a_passing_gate_or_with_a_forged_name_is_not_adopted(tmp_path, root, version, gate, why):
    _publish(tmp_path, root, V1, PASSED)
    registry.adopt(root, "mnist", champion=True, reason="first")
    _publish(tmp_path, root, version, gate)
    out = registry.adopt(root, "mnist", champion=True, reason="pipeline")
    assert out["version"] is None and why in out["skipped"][version]
    assert _aliases(root) == {"candidate": V1, "champion": V1} and registry.latest(root, "mnist") == V1


def _stamp(t: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t))


def test_a_version_named_after_its_completion_is_never_adopted(tmp_path, root, monkeypatch):
    """The review's time bomb: a hostile run names its version an hour ahead with a forged gate record.
    Skipped now as "in the future", it must also be skipped once that hour has passed (the hostile run
    long gone): its manifest, whose time the store sets, says when it was really completed."""
    now = time.time()
    old, bomb, legit = _stamp(now - 7200) + "-legit0", _stamp(now + 3600) + "-evil", _stamp(now) + "-legit1"
    _publish(tmp_path, root, old, PASSED)
    registry.adopt(root, "mnist", champion=True, reason="first")
    _publish(tmp_path, root, bomb, PASSED)
    _publish(tmp_path, root, legit, PASSED)
    out = registry.adopt(root, "mnist", champion=True, reason="pipeline")
    assert out["version"] == legit and "in the future" in out["skipped"][bomb]
    monkeypatch.setattr(time, "time", lambda: now + 7200)  # two hours later
    out = registry.adopt(root, "mnist", champion=True, reason="pipeline, later")
    assert out["version"] is None and "a name after its completion is refused" in out["skipped"][bomb]
    assert _aliases(root) == {"candidate": legit, "champion": legit, "previous": old} and registry.latest(root, "mnist") == legit


def test_a_malformed_version_or_manifest_is_skipped_not_fatal(tmp_path, root):
    """One bad entry (a name ``_VERSION_RE`` refuses, a manifest that is not one) must not stop adoption,
    nor the delivery of every model after it (ops/deliver.py)."""
    _publish(tmp_path, root, V1, PASSED)
    base = registry.model_root(root, "mnist")
    bad_name = _stamp(time.time() - 60) + "-a b"
    storage.write_if(storage.join(base, bad_name, registry.MANIFEST), b"{}", None)
    bad_manifest = _stamp(time.time() - 30) + "-list"
    storage.write_if(storage.join(base, bad_manifest, "metadata.json"), json.dumps({"gate": PASSED}).encode(), None)
    storage.write_if(storage.join(base, bad_manifest, registry.MANIFEST), json.dumps({"files": ["metadata.json"]}).encode(), None)
    out = registry.adopt(root, "mnist", champion=False, reason="pipeline")
    assert out["version"] == V1 and set(out["skipped"]) == {bad_name, bad_manifest}
    assert "not a valid version name" in out["skipped"][bad_name] and "lists no files" in out["skipped"][bad_manifest]
    assert _aliases(root) == {"candidate": V1}


def test_a_version_whose_files_changed_is_not_adopted(tmp_path, root):
    _publish(tmp_path, root, V1, PASSED)
    _publish(tmp_path, root, V2, PASSED)
    storage.write_bytes(storage.join(registry.model_root(root, "mnist"), V2, "model.keras"), b"swapped")
    out = registry.adopt(root, "mnist", champion=True, reason="pipeline")
    assert out["version"] == V1 and "model.keras sha256" in out["skipped"][V2]  # the newest intact one
    assert _aliases(root) == {"candidate": V1, "champion": V1}


def test_only_versions_newer_than_the_champion_are_considered(tmp_path, root):
    _publish(tmp_path, root, V1, PASSED)
    _publish(tmp_path, root, V2, PASSED)
    registry.move(root, "mnist", "champion", V2, reason="by hand")
    assert registry.adopt(root, "mnist", champion=False, reason="pipeline") is None  # V1 is older: forward only
    assert _aliases(root) == {"champion": V2}


def test_a_lora_gate_record_and_imported_weights_count(tmp_path, root):
    """An adapter records its gate in lora-adapter.json; imported LLM weights have no quality gate (their
    canary and golden prompts judge them) and are adopted on their llm-version.json."""
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_model.safetensors").write_bytes(b"w")
    (lora / "lora-adapter.json").write_text(json.dumps({"kind": "lora", "gate": {"passed": True}}))
    registry.publish(lora, root, "mnist", V1, reason="lora gate", required=("lora-adapter.json",), adopt=False)
    assert registry.gate_record(root, "mnist", V1) is None
    d = tmp_path / "llm"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "llm-version.json").write_text(json.dumps({"source": "org/model", "commit": "abc"}))
    registry.publish(d, root, "mnist", V2, reason="import", required=("config.json", "llm-version.json"), adopt=False)
    assert registry.adopt(root, "mnist", champion=False, reason="pipeline")["version"] == V2
    (d / "llm-version.json").unlink()  # neither a gate nor an import record: not adopted
    registry.publish(d, root, "mnist", V3, reason="?", required=("config.json",), adopt=False)
    assert registry.adopt(root, "mnist", champion=False, reason="pipeline")["skipped"] == {
        V3: "no gate record (metadata.json or lora-adapter.json)"
    }


def test_a_concurrent_move_is_a_conflict_and_nothing_changes(tmp_path, root, monkeypatch):
    _publish(tmp_path, root, V1, PASSED)
    _publish(tmp_path, root, V2, PASSED)
    real = registry.aliases

    def stale(r, name):  # the pipeline read the aliases, then someone moved the candidate to V1
        seen = real(r, name)
        registry.move(r, name, "candidate", V1, reason="someone else")
        return seen

    monkeypatch.setattr(registry, "aliases", stale)
    with pytest.raises(registry.AliasConflict):
        registry.adopt(root, "mnist", champion=False, reason="pipeline")
    monkeypatch.setattr(registry, "aliases", real)
    assert _aliases(root) == {"candidate": V1}


def test_cli_adopt(tmp_path):
    root = f"file://{tmp_path}/store"
    _publish(tmp_path, root, V1, PASSED)
    assert models.main(["--store", root, "adopt", "--model", "mnist", "--reason", "nightly"]) == models.EXIT_OK
    assert _aliases(root) == {"candidate": V1}
    _publish(tmp_path, root, V2, PASSED)
    out = subprocess.run(
        [sys.executable, "-m", "ops.models", "--store", root, "adopt", "--model", "mnist", "--champion", "--reason", "dev"],
        cwd=ROOT_DIR,
        capture_output=True,
        text=True,
    )
    assert out.returncode == models.EXIT_OK, out.stderr
    assert out.stdout.strip() == f"mnist: adopted {V2} as candidate, champion (LATEST follows)"
    assert _aliases(root) == {"candidate": V2, "champion": V2} and registry.latest(root, "mnist") == V2
    out = subprocess.run(
        [sys.executable, "-m", "ops.models", "--store", root, "adopt", "--model", "mnist", "--reason", "again"],
        cwd=ROOT_DIR,
        capture_output=True,
        text=True,
    )
    assert out.returncode == models.EXIT_OK and out.stdout.strip() == "mnist: nothing to adopt (no version newer than the champion)"
