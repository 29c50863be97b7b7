"""The server verifies what it loads (issue 23 item 5): a version's manifest digests and its rejection
mark before it serves, its name from the store's path, and no fetched key outside its folder.

Versions are written by the real registry (training/registry.py) into a local store; the server runs
as a real process (python -m serving) and is judged by its API and its /metrics."""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from serving import integrity
from serving import model as model_lib
from tests.serving.conftest import ServerProcess, make_model_dir
from tests.serving.test_process import metric, post
from training import registry


def _publish(root: Path, build: Path, version: str, champion: bool = True, claims: str | None = None) -> Path:
    src = root.parent / f"src-{version}"
    shutil.copytree(build, src)
    (src / "metadata.json").write_text(json.dumps({"version": claims or version}))
    registry.publish(src, f"file://{root}", "mnist", version, reason="test", champion=champion)
    return root / "models" / "mnist" / version


@pytest.fixture(scope="module")
def bad_store(tmp_path_factory):
    """v1 good; v2 the champion, its weights altered after publishing; v3 published then rejected;
    v4 a copy without its manifest; v5 whose manifest claims a file outside the version; v6 a good
    version whose metadata.json claims another version's name."""
    base = tmp_path_factory.mktemp("bad")
    build = make_model_dir(base / "build", "x", seed=1)
    root = base / "store"
    _publish(root, build, "v1")
    v2 = _publish(root, build, "v2")
    weights = v2 / "saved_model" / "variables" / "variables.data-00000-of-00001"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    _publish(root, build, "v3", champion=False)
    registry.reject(f"file://{root}", "mnist", "v3", reason="failed canary (test)")
    v4 = root / "models" / "mnist" / "v4"
    shutil.copytree(root / "models" / "mnist" / "v1", v4)
    (v4 / registry.MANIFEST).unlink()
    v5 = root / "models" / "mnist" / "v5"
    shutil.copytree(root / "models" / "mnist" / "v1", v5)
    manifest = json.loads((v5 / registry.MANIFEST).read_text())
    manifest["files"]["../v1/metadata.json"] = manifest["files"]["metadata.json"]
    (v5 / registry.MANIFEST).write_text(json.dumps(manifest))
    _publish(root, build, "v6", champion=False, claims="v1")
    assert (root / "models" / "mnist" / "LATEST").read_text().strip() == "v2"
    return root, {v: str(root / "models" / "mnist" / v) for v in ("v2", "v3", "v4", "v5", "v6")}


def _status(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _refused(url: str, model: str, reason: str) -> float:
    try:
        return metric(url, "mlplatform_serving_versions_refused_total", f'{{model="{model}",reason="{reason}"}}') or 0.0
    except OSError:  # the metrics port is not up yet
        return 0.0


def test_tampered_unmanifested_rejected_and_escaping_versions_never_serve(bad_store):
    root, dirs = bad_store
    s = ServerProcess(
        "",
        "--model",
        f"mnist={root}",  # the store root: LATEST names the tampered v2, the server falls back to v1
        "--model",
        f"tampered={dirs['v2']}",  # pinned, as a Rollout pins the served version
        "--model",
        f"rejected={dirs['v3']}",
        "--model",
        f"bare={dirs['v4']}",
        "--model",
        f"escaping={dirs['v5']}",
        "--model",
        f"renamed={dirs['v6']}",
        "--poll-seconds",
        "0.5",
    )
    try:
        expected = {"tampered": "digest", "rejected": "rejected", "bare": "manifest", "escaping": "manifest", "mnist": "digest"}
        deadline = time.time() + 120

        def settled() -> bool:
            try:
                served = _status(s.url + "/readyz")[1]["models"]
            except OSError:
                return False
            return (
                served["mnist"] == "v1"
                and served["renamed"] is not None
                and all(_refused(s.metrics_url, m, r) for m, r in expected.items())
            )

        while time.time() < deadline and not settled():
            assert s.proc.poll() is None, s.stop()
            time.sleep(0.3)
        for model, reason in expected.items():
            assert _refused(s.metrics_url, model, reason) == 1, (model, reason)
        _, ready = _status(s.url + "/readyz")
        assert ready["models"]["mnist"] == "v1"  # fell back past the tampered champion
        assert ready["models"]["renamed"] == "v6"  # the store's path names it, not its metadata.json
        for model in ("tampered", "rejected", "bare", "escaping"):
            assert ready["models"][model] is None, ready
            assert _status(f"{s.url}/v1/models/{model}")[0] == 503
        assert post(s.url)[1]["model_version"] == "v1"
        # the champion is refused and an older version serves: visible, with the version and why
        assert metric(s.metrics_url, "mlplatform_serving_champion_served", '{model="mnist"}') == 0
        assert metric(s.metrics_url, "mlplatform_serving_refused_version_info", '{model="mnist",reason="digest",version="v2"}') == 1
        assert metric(s.metrics_url, "mlplatform_serving_champion_served", '{model="renamed"}') == 1
        # refused for good: polled again and again, each counted once
        time.sleep(1.5)
        assert _refused(s.metrics_url, "tampered", "digest") == 1
        assert not (root / "models" / "v1").exists()  # nothing was written outside a fetch folder
    finally:
        out = s.stop()
    assert "v2" in out and "does not match its manifest digest" in out


def test_the_server_check_agrees_with_the_registry(bad_store, tmp_path):
    """serving/integrity.py repeats training/registry.py's rules (the serving image has no training
    package): on the same versions both accept v1 and refuse the tampered v2."""
    root, dirs = bad_store

    def fetched(version: str) -> Path:  # what the server checks: its own copy of the version
        return model_lib.fetch_dir(f"{root}/models/mnist/{version}", Path(tmp_path / version))

    registry.verify(f"file://{root}", "mnist", "v1")
    integrity.verify_dir(fetched("v1"), "v1")
    with pytest.raises(registry.VerifyError):
        registry.verify(f"file://{root}", "mnist", "v2")
    with pytest.raises(integrity.Unverified, match="variables.data"):
        integrity.verify_dir(fetched("v2"), "v2")
    # a file added beside the manifest's: not part of the version, for the registry and the server alike
    shutil.copytree(root / "models" / "mnist" / "v1", root / "models" / "mnist" / "v7")
    (root / "models" / "mnist" / "v7" / "saved_model" / "evil.py").write_text("print('hi')")
    manifest = json.loads((root / "models" / "mnist" / "v7" / registry.MANIFEST).read_text())
    manifest["version"] = "v7"
    (root / "models" / "mnist" / "v7" / registry.MANIFEST).write_text(json.dumps(manifest))
    # the registry: a key its manifest does not list is not part of the version (a warning, issue 24 item 8)
    assert registry.verify(f"file://{root}", "mnist", "v7") == ["saved_model/evil.py"]
    integrity.verify_dir(fetched("v7"), "v7")  # fetched without it (the manifest's keys only)
    assert not (tmp_path / "v7" / "saved_model" / "evil.py").exists()
    # a folder that does hold a file its manifest does not list is still refused (what loads is what was listed)
    (tmp_path / "v7" / "saved_model" / "evil.py").write_text("print('hi')")
    with pytest.raises(integrity.Unverified, match="evil.py not in the manifest"):
        integrity.verify_dir(tmp_path / "v7", "v7")


@pytest.mark.parametrize("key", ["../escape", "a/../../escape", "/etc/passwd", "a//b", "./a", "a\\..\\b"])
def test_unsafe_keys_are_refused(key, tmp_path):
    with pytest.raises(integrity.UnsafeKey):
        integrity.safe_join(tmp_path, key)


def test_a_symlink_out_of_the_destination_is_refused(tmp_path):
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (dest / "link").symlink_to(outside)
    with pytest.raises(integrity.UnsafeKey, match="outside"):
        integrity.safe_join(dest, "link/file")


def test_s3_fetch_refuses_traversal_keys_and_writes_nothing(tmp_path, monkeypatch):
    """An S3 key is any string: ``models/mnist/v9/../../../x`` lists under the version's prefix. The
    server's directory fetch refuses the whole version before writing a byte."""
    from moto import mock_aws

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        import boto3

        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="models")
        s3.put_object(Bucket="models", Key="root/models/mnist/v9/metadata.json", Body=b"{}")
        s3.put_object(Bucket="models", Key="root/models/mnist/v9/../../../../escaped.txt", Body=b"pwned")
        dest = tmp_path / "a" / "b" / "c" / "dest"
        dest.mkdir(parents=True)
        with pytest.raises(model_lib.ModelLoadError) as info:
            model_lib.fetch_dir("s3://models/root/models/mnist/v9", dest)
    assert info.value.reason == "unsafe_key" and not info.value.transient
    assert list(tmp_path.rglob("*.txt")) == [] and list(tmp_path.rglob("metadata.json")) == []


def test_a_key_added_to_a_complete_version_is_left_behind_by_the_server(tmp_path):
    """A workload may create a new key in a published version's folder (create-only, issue 24 item 8):
    the server fetches the manifest's files only, so a rollback to that version still serves."""
    import shutil as _shutil

    from training import registry as _registry

    src = tmp_path / "v"
    (src / "saved_model").mkdir(parents=True)
    (src / "saved_model" / "saved_model.pb").write_bytes(b"graph")
    (src / "model.keras").write_bytes(b"keras")
    (src / "metadata.json").write_text("{}")
    root = f"file://{tmp_path / 'store'}"
    _registry.add_version(src, root, "m", "20260101T000000Z-a-0123456789ab")
    folder = tmp_path / "store" / "models" / "m" / "20260101T000000Z-a-0123456789ab"
    (folder / "zz").write_text("planted")
    (folder / "saved_model" / "evil.py").write_text("print('hi')")
    got = model_lib.fetch_dir(f"{root.removeprefix('file://')}/models/m/20260101T000000Z-a-0123456789ab", tmp_path / "fetched")
    assert not (got / "zz").exists() and not (got / "saved_model" / "evil.py").exists()
    integrity.verify_dir(got, "v")  # exactly the manifest's files
    # a listed file changed is still refused
    (folder / "model.keras").write_bytes(b"other")
    _shutil.rmtree(tmp_path / "fetched2", ignore_errors=True)
    with pytest.raises(integrity.Unverified, match="model.keras does not match"):
        integrity.verify_dir(
            model_lib.fetch_dir(f"{root.removeprefix('file://')}/models/m/20260101T000000Z-a-0123456789ab", tmp_path / "fetched2"), "v"
        )
