"""The model registry on S3 (moto) and the local file store: immutable versions with manifests, aliases
moved by compare-and-swap, a complete audit log, forward-only automated moves, promotion between stores.
No training: versions are small directories with the files a model version has."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from pathlib import Path

import pytest

from training import artifacts, registry, storage


def _version_dir(tmp_path, i):
    d = tmp_path / f"src-v{i}"
    (d / "saved_model").mkdir(parents=True)
    (d / "saved_model" / "saved_model.pb").write_bytes(b"pb" * 1000 + bytes([i % 256]))
    (d / "model.keras").write_bytes(b"k" * 5000 + bytes([i % 256]))
    (d / "metadata.json").write_text(json.dumps({"version": f"v{i:04d}"}))
    return d


def v(i):
    return f"v{i:04d}"


@pytest.fixture(params=["s3", "file"])
def root(request, tmp_path):
    if request.param == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        return f"s3://{bucket}/store"
    return f"file://{tmp_path}/store"


def _add(tmp_path, root, *ids):
    for i in ids:
        registry.add_version(_version_dir(tmp_path, i), root, "mnist", v(i))


def test_publish_writes_a_manifest_moves_aliases_and_latest(tmp_path, root, monkeypatch):
    monkeypatch.setenv("MLPLATFORM_ACTOR", "pipeline/main#7")
    d = _version_dir(tmp_path, 1)
    out = registry.publish(d, root, "mnist", v(1), reason="nightly retrain")
    assert out.champion and out.uri.endswith("/models/mnist/v0001")
    manifest = registry.read_manifest(root, "mnist", v(1))
    assert set(manifest["files"]) == {"metadata.json", "model.keras", "saved_model/saved_model.pb"}
    assert manifest["files"]["model.keras"] == {"sha256": hashlib.sha256((d / "model.keras").read_bytes()).hexdigest(), "size": 5001}
    registry.verify(root, "mnist", v(1))
    assert registry.versions(root, "mnist") == [v(1)]
    assert {a: doc["version"] for a, doc in registry.aliases(root, "mnist").items()} == {"champion": v(1), "candidate": v(1)}
    assert artifacts.latest(root, "mnist") == v(1)  # what the model server follows today
    champ = registry.get_alias(root, "mnist", "champion")
    assert champ["by"] == "pipeline/main#7" and champ["reason"] == "nightly retrain" and champ["from"] is None


def test_versions_are_immutable(tmp_path, root):
    _add(tmp_path, root, 1)
    with pytest.raises(registry.RegistryError, match="already exists: versions are immutable"):
        registry.add_version(_version_dir(tmp_path, 2), root, "mnist", v(1))
    registry.verify(root, "mnist", v(1))  # the first upload is untouched


@pytest.mark.parametrize("tamper", ["modify", "delete"])
def test_a_tampered_version_fails_verify_and_cannot_be_aliased(tmp_path, root, tamper):
    _add(tmp_path, root, 1)
    target = storage.join(registry.model_root(root, "mnist"), v(1), "model.keras")
    if tamper == "modify":
        storage.write_bytes(target, b"k" * 4999 + b"X" + b"\x01")
    elif tamper == "delete":
        scheme, bucket, key = storage.parse(target)
        if scheme == "s3":
            storage._s3().delete_object(Bucket=bucket, Key=key)
        else:
            Path(key).unlink()
    want = {"modify": "model.keras sha256", "delete": "model.keras missing"}[tamper]
    with pytest.raises(registry.VerifyError, match=want):
        registry.verify(root, "mnist", v(1))
    with pytest.raises(registry.VerifyError):
        registry.move(root, "mnist", "champion", v(1), reason="try")
    assert registry.get_alias(root, "mnist", "champion") is None


def test_a_key_planted_beside_a_version_is_not_part_of_it_and_blocks_no_rollback(tmp_path, root, caplog):
    """Issue 24 item 8 review: a role that may create keys (a training Job's) can add one to any complete
    version's folder. It is not part of the version: verify names it as a warning, a rollback to that
    version still works, and neither fetch nor a copy to another store carries it."""
    _add(tmp_path, root, 1, 2)
    registry.move(root, "mnist", "champion", v(1), reason="first")
    registry.move(root, "mnist", "champion", v(2), reason="second")
    storage.write_if(storage.join(registry.model_root(root, "mnist"), v(1), "zz"), b"x", None)
    with caplog.at_level("WARNING", logger="training.registry"):
        assert registry.verify(root, "mnist", v(1)) == ["zz"]
    assert "not in the manifest" in caplog.text
    assert registry.rollback(root, "mnist", to=v(1), reason="incident")["version"] == v(1)
    assert registry.get_alias(root, "mnist", "champion")["version"] == v(1) and artifacts.latest(root, "mnist") == v(1)
    assert not (registry.fetch(root, "mnist", v(1), tmp_path / "got") / "zz").exists()
    other = f"file://{tmp_path}/other"
    registry.copy_version(root, other, "mnist", v(1))
    assert "zz" not in storage.list_names(storage.join(registry.model_root(other, "mnist"), v(1)))
    # every listed file stays strict: one altered beside the planted key still fails
    storage.write_bytes(storage.join(registry.model_root(root, "mnist"), v(1), "model.keras"), b"swapped")
    with pytest.raises(registry.VerifyError, match="model.keras sha256"):
        registry.verify(root, "mnist", v(1))


def test_new_version_names_sort_by_time_and_cannot_be_guessed():
    """A Job's name and the second it publishes in can be guessed; a name made of only those let a run
    plant a key in the next run's version folder before it exists (its publish then collides)."""
    a, b = (
        artifacts.new_version("train-mnist-4f3a9c2b1d", now=1_800_000_000),
        artifacts.new_version("train-mnist-4f3a9c2b1d", now=1_800_000_000),
    )
    assert a != b and a.startswith("20270115T080000Z-train-mnist-") and b.startswith("20270115T080000Z-")
    assert artifacts.new_version("r", now=1_800_000_000) < artifacts.new_version("r", now=1_800_000_001)
    assert all(registry._VERSION_RE.match(x) for x in (a, b))


def test_an_interrupted_upload_is_not_a_version_and_cannot_be_aliased(tmp_path, root, monkeypatch):
    _add(tmp_path, root, 1)
    registry.move(root, "mnist", "champion", v(1), reason="first")
    real, calls = storage.write_if, []

    def dying(uri, data, token):  # the uploader dies after its second file (each a conditional create)
        calls.append(uri)
        if len(calls) > 2:
            raise ConnectionError("pod evicted")
        real(uri, data, token)

    monkeypatch.setattr(storage, "write_if", dying)
    with pytest.raises(ConnectionError):
        registry.publish(_version_dir(tmp_path, 2), root, "mnist", v(2), reason="run")
    monkeypatch.setattr(storage, "write_if", real)
    assert registry.versions(root, "mnist") == [v(1)]
    with pytest.raises(registry.RegistryError, match="no such complete version"):
        registry.move(root, "mnist", "champion", v(2), reason="try")
    assert registry.get_alias(root, "mnist", "champion")["version"] == v(1)
    assert artifacts.latest(root, "mnist") == v(1)


def _atomic_moto_puts(root, monkeypatch):
    """moto checks If-Match and stores in two Python steps (S3 does both atomically): serialise the
    conditional PUTs so moto behaves like S3. Each writer still holds the token it read earlier."""
    if not root.startswith("s3://"):
        return  # the local store's flock is the real thing
    lock, real_write = threading.Lock(), storage.write_if

    def atomic_write(*a):
        with lock:
            return real_write(*a)

    monkeypatch.setattr(storage, "write_if", atomic_write)


def test_concurrent_promotions_one_wins_the_other_gets_a_conflict(tmp_path, root, monkeypatch):
    """Both promoters read the champion before either writes (a barrier forces the overlap)."""
    _add(tmp_path, root, 1, 2, 3)
    registry.move(root, "mnist", "champion", v(1), reason="first")
    barrier, waited = threading.Barrier(2, timeout=30), threading.local()
    real_read = registry._read_alias

    def read_then_wait(r, name, alias):
        out = real_read(r, name, alias)
        if alias == "champion" and threading.current_thread() is not threading.main_thread() and not getattr(waited, "done", False):
            waited.done = True
            barrier.wait()
        return out

    monkeypatch.setattr(registry, "_read_alias", read_then_wait)
    _atomic_moto_puts(root, monkeypatch)
    results = {}

    def promote(i):
        try:
            results[i] = registry.move(root, "mnist", "champion", v(i), reason=f"promote {i}")
        except registry.RegistryError as exc:
            results[i] = exc

    threads = [threading.Thread(target=promote, args=(i,)) for i in (2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [i for i, r in results.items() if isinstance(r, dict)]
    lost = [r for r in results.values() if isinstance(r, registry.AliasConflict)]
    assert len(won) == 1 and len(lost) == 1, results
    assert "was moved concurrently" in str(lost[0]) and "nothing changed" in str(lost[0]) and "\n" not in str(lost[0])
    monkeypatch.setattr(registry, "_read_alias", real_read)
    champ = registry.get_alias(root, "mnist", "champion")
    assert champ["version"] == v(won[0]) and champ["generation"] == 2
    assert artifacts.latest(root, "mnist") == v(won[0])
    assert registry.get_alias(root, "mnist", "previous")["version"] == v(1)
    assert [(r["generation"], r["version"]) for r in registry.history(root, "mnist", "champion")] == [(1, v(1)), (2, v(won[0]))]


def test_racing_promotions_converge_latest_and_previous_on_the_champion(tmp_path):
    """Six promoters at once on the local store (real flock, no serialisation by the test)."""
    root = f"file://{tmp_path}/store"
    _add(tmp_path, root, *range(1, 7))
    errors = []

    def promote(i):
        try:
            registry.move(root, "mnist", "champion", v(i), reason="race")
        except registry.AliasConflict as exc:
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(i,)) for i in range(1, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    champ = registry.get_alias(root, "mnist", "champion")
    assert artifacts.latest(root, "mnist") == champ["version"]
    assert champ["generation"] == 6 - len(errors)
    if champ["from"]:
        assert registry.get_alias(root, "mnist", "previous")["version"] == champ["from"]
    gens = [r["generation"] for r in registry.history(root, "mnist", "champion")]
    assert gens == list(range(1, champ["generation"] + 1))  # every successful move recorded, once


def test_audit_records_every_move_completely(tmp_path, root, monkeypatch):
    _add(tmp_path, root, 1, 2, 3)
    monkeypatch.setenv("MLPLATFORM_ACTOR", "jenkins/main#12")
    registry.move(root, "mnist", "champion", v(1), reason="first")
    registry.move(root, "mnist", "champion", v(2), reason="better", forward_only=True)
    monkeypatch.setenv("MLPLATFORM_ACTOR", "alice")
    registry.rollback(root, "mnist", reason="p99 doubled")
    # a writer that dies between its alias write and its audit write: the next move records it
    real_record = registry._record
    monkeypatch.setattr(registry, "_record", lambda *a: (_ for _ in ()).throw(ConnectionError("killed")))
    with pytest.raises(ConnectionError):
        registry.move(root, "mnist", "candidate", v(3), reason="crashes before its record")
    monkeypatch.setattr(registry, "_record", real_record)
    assert [r["version"] for r in registry.history(root, "mnist", "candidate")] == [v(3)]  # still visible
    registry.move(root, "mnist", "candidate", v(1), reason="next")  # not v(2): the rollback rejected it
    audit_names = storage.list_names(storage.join(registry.model_root(root, "mnist"), "audit"))
    assert "candidate/0000000001.json" in audit_names and "candidate/0000000002.json" in audit_names

    moves = [(r["alias"], r["from"], r["version"], r["by"]) for r in registry.history(root, "mnist") if r["alias"] == "champion"]
    assert moves == [
        ("champion", None, v(1), "jenkins/main#12"),
        ("champion", v(1), v(2), "jenkins/main#12"),
        ("champion", v(2), v(1), "alice"),
    ]
    for r in registry.history(root, "mnist"):
        assert set(r) == {"alias", "version", "generation", "from", "at", "by", "reason"}
        assert r["at"] > 1.7e9 and r["by"] and r["reason"]
    rb = registry.history(root, "mnist", "champion")[-1]
    assert rb["reason"] == f"rollback from {v(2)}: p99 doubled"
    assert registry.get_alias(root, "mnist", "previous")["version"] == v(2)
    assert artifacts.latest(root, "mnist") == v(1)


def test_a_move_needs_a_reason_and_a_known_alias(tmp_path, root):
    _add(tmp_path, root, 1)
    with pytest.raises(registry.RegistryError, match="a reason is required"):
        registry.move(root, "mnist", "champion", v(1), reason=" ")
    with pytest.raises(registry.RegistryError, match="unknown alias 'prod'"):
        registry.move(root, "mnist", "prod", v(1), reason="x")


def test_expected_value_is_checked(tmp_path, root):
    _add(tmp_path, root, 1, 2)
    registry.move(root, "mnist", "champion", v(1), reason="first")
    with pytest.raises(registry.AliasConflict, match="is v0001, not v0002 as expected"):
        registry.move(root, "mnist", "champion", v(2), reason="x", expect=v(2))


# ---- issue 13 item 10: the pointer only moves forward ----


def test_an_older_run_publishing_late_does_not_move_the_pointer_back(tmp_path, root):
    artifacts.publish(_version_dir(tmp_path, 2), root, "mnist", "20260102T000000Z-new")
    artifacts.publish(_version_dir(tmp_path, 1), root, "mnist", "20260101T000000Z-old")  # an old run finishing late
    assert artifacts.latest(root, "mnist") == "20260102T000000Z-new"
    assert registry.get_alias(root, "mnist", "champion")["version"] == "20260102T000000Z-new"
    assert registry.versions(root, "mnist") == ["20260101T000000Z-old", "20260102T000000Z-new"]  # kept, not served


def test_latest_written_by_older_code_is_respected(tmp_path, root):
    """A store whose LATEST was written directly (before the registry) is not moved back either."""
    storage.write_bytes(storage.join(registry.model_root(root, "mnist"), "LATEST"), b"20260105T000000Z-legacy")
    out = registry.publish(_version_dir(tmp_path, 1), root, "mnist", "20260101T000000Z-old", reason="run")
    assert not out.champion and "stays at 20260105T000000Z-legacy" in out.note
    assert artifacts.latest(root, "mnist") == "20260105T000000Z-legacy"


# ---- issue 15 item 3: promotion copies the exact artifact between stores ----


@pytest.fixture
def two_stores(tmp_path, s3_bucket):
    import boto3

    boto3.client("s3").create_bucket(Bucket="prod-models")
    return f"s3://{s3_bucket}/staging", "s3://prod-models/store"


def test_promotion_copies_the_exact_bytes_and_verifies_them(tmp_path, two_stores):
    src, dst = two_stores
    registry.publish(_version_dir(tmp_path, 1), src, "mnist", v(1), reason="trained in staging")
    registry.publish(_version_dir(tmp_path, 2), src, "mnist", v(2), reason="trained in staging")
    doc = registry.promote_between(src, dst, "mnist", reason="canary passed")
    assert doc["version"] == v(2) and artifacts.latest(dst, "mnist") == v(2)
    for rel in registry.read_manifest(src, "mnist", v(2))["files"]:
        a = storage.read_bytes(storage.join(registry.model_root(src, "mnist"), v(2), rel))
        b = storage.read_bytes(storage.join(registry.model_root(dst, "mnist"), v(2), rel))
        assert a == b
    assert registry.read_manifest(dst, "mnist", v(2))["copied_from"].endswith("/staging/models/mnist/v0002")
    assert registry.versions(dst, "mnist") == [v(2)]  # only what was promoted travels
    registry.promote_between(src, dst, "mnist", reason="again")  # idempotent: the same version again is not a move
    assert registry.get_alias(dst, "mnist", "champion")["generation"] == 1


@pytest.mark.parametrize("where", ["in-transit", "at-source"])
def test_a_corrupted_copy_is_refused_and_the_target_keeps_its_champion(tmp_path, two_stores, monkeypatch, where):
    src, dst = two_stores
    registry.publish(_version_dir(tmp_path, 1), src, "mnist", v(1), reason="r")
    registry.promote_between(src, dst, "mnist", reason="r")
    registry.publish(_version_dir(tmp_path, 2), src, "mnist", v(2), reason="r")
    if where == "at-source":
        storage.write_bytes(storage.join(registry.model_root(src, "mnist"), v(2), "model.keras"), b"tampered")
    real = storage.write_bytes
    if where == "in-transit":

        def flip(uri, data):
            if uri.startswith(dst) and uri.endswith("model.keras"):
                data = data[:-1] + bytes([data[-1] ^ 1])
            real(uri, data)

        monkeypatch.setattr(storage, "write_bytes", flip)
    with pytest.raises(registry.VerifyError, match="refused: 1 problem.*model.keras"):
        registry.promote_between(src, dst, "mnist", reason="r")
    monkeypatch.setattr(storage, "write_bytes", real)
    assert registry.get_alias(dst, "mnist", "champion")["version"] == v(1)
    assert artifacts.latest(dst, "mnist") == v(1)
    assert registry.versions(dst, "mnist") == [v(1)]  # the bad copy is not a version there


# ---- issue 23 item 5: no key lands outside the folder it is fetched into ----

TRAVERSAL_KEYS = ["../x", "/etc/x", "a/../../x"]


@pytest.mark.parametrize("key", ["model.keras", "saved_model/variables/variables.index", "a.b/c-d_e"])
def test_safe_join_keeps_ordinary_keys_inside(tmp_path, key):
    assert storage.safe_join(tmp_path, key) == tmp_path / key
    assert not (tmp_path / key).exists()  # pure: creates nothing


@pytest.mark.parametrize("key", [*TRAVERSAL_KEYS, "", "a//b", "./a", "a/.", "..", "a\\..\\..\\x", "a\0b"])
def test_safe_join_refuses_keys_that_could_leave_the_folder(tmp_path, key):
    with pytest.raises(storage.UnsafeKey, match=re.escape(repr(key))):
        storage.safe_join(tmp_path, key)


def test_safe_join_refuses_a_key_that_resolves_outside_through_a_symlink(tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(storage.UnsafeKey, match="'link/x' refused: it resolves to .*outside"):
        storage.safe_join(tmp_path / "dest", "link/x")


def _with_manifest_key(root, key):
    """Version v0001 whose manifest also lists ``key`` (as a writer to the store could make it)."""
    manifest = registry.read_manifest(root, "mnist", v(1))
    manifest["files"][key] = {"sha256": hashlib.sha256(b"evil").hexdigest(), "size": 4}
    storage.write_bytes(storage.join(registry.model_root(root, "mnist"), v(1), registry.MANIFEST), json.dumps(manifest).encode())


@pytest.mark.parametrize("key", TRAVERSAL_KEYS)
def test_fetch_refuses_a_manifest_key_outside_the_version_and_writes_nothing(tmp_path, root, key):
    _add(tmp_path, root, 1)
    if root.startswith("s3://"):  # S3 keeps such a key literally: the object can really be there
        scheme, bucket, prefix = storage.parse(storage.join(registry.model_root(root, "mnist"), v(1)))
        storage._s3().put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=b"evil")
    _with_manifest_key(root, key)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(registry.RegistryError, match=re.escape(repr(key))):
        registry.fetch(root, "mnist", v(1), out / "dest")
    assert list(out.rglob("*")) == []  # not one file, not even dest
    with pytest.raises(registry.VerifyError, match=re.escape(repr(key))):
        registry.verify(root, "mnist", v(1))
    target = f"file://{tmp_path}/target"
    with pytest.raises(registry.VerifyError, match=re.escape(repr(key))):
        registry.copy_version(root, target, "mnist", v(1))
    assert storage.list_names(target) == []  # nothing copied, in the version's folder or beside it


def test_fetch_refuses_a_destination_whose_symlink_leads_outside(tmp_path):
    root = f"file://{tmp_path}/store"
    _add(tmp_path, root, 1)
    outside, dest = tmp_path / "outside", tmp_path / "dest"
    outside.mkdir()
    dest.mkdir()
    (dest / "saved_model").symlink_to(outside)
    with pytest.raises(registry.RegistryError, match="'saved_model/saved_model.pb' refused: it resolves to .*nothing fetched"):
        registry.fetch(root, "mnist", v(1), dest)
    assert list(outside.iterdir()) == [] and [p.name for p in dest.iterdir()] == ["saved_model"]
    assert registry.fetch(root, "mnist", v(1), tmp_path / "clean") == tmp_path / "clean"  # an ordinary fetch still works
    assert (tmp_path / "clean" / "saved_model" / "saved_model.pb").read_bytes() == (
        tmp_path / "src-v1" / "saved_model" / "saved_model.pb"
    ).read_bytes()


def test_download_dir_refuses_a_listed_key_outside_the_folder(tmp_path, s3_bucket):
    s3 = storage._s3()
    s3.put_object(Bucket=s3_bucket, Key="store/dir/ok.txt", Body=b"ok")
    s3.put_object(Bucket=s3_bucket, Key="store/dir/../../escaped.txt", Body=b"evil")
    with pytest.raises(storage.UnsafeKey, match=re.escape("'../../escaped.txt'")):
        storage.download_dir(f"s3://{s3_bucket}/store/dir", tmp_path / "a" / "b")
    assert list(tmp_path.rglob("*")) == []
    s3.delete_object(Bucket=s3_bucket, Key="store/dir/../../escaped.txt")
    assert storage.download_dir(f"s3://{s3_bucket}/store/dir", tmp_path / "a" / "b") == ["ok.txt"]
    assert (tmp_path / "a" / "b" / "ok.txt").read_bytes() == b"ok"
