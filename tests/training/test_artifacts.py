"""Versioned store semantics on S3 (moto) and local disk: LATEST only ever names complete versions."""

from __future__ import annotations

import threading
import time

import pytest

from training import artifacts, registry, storage


def _version_dir(tmp_path, i):
    d = tmp_path / f"v{i}"
    (d / "saved_model").mkdir(parents=True)
    (d / "saved_model" / "saved_model.pb").write_bytes(b"pb" * 1000 + bytes([i % 256]))
    (d / "model.keras").write_bytes(b"k" * 5000)
    (d / "metadata.json").write_text(f'{{"version": "v{i:04d}"}}')
    return d


def test_publish_then_latest(tmp_path, s3_bucket):
    root = f"s3://{s3_bucket}/store"
    assert artifacts.latest(root, "mnist") is None
    uri = artifacts.publish(_version_dir(tmp_path, 1), root, "mnist", "v0001")
    assert uri == f"s3://{s3_bucket}/store/models/mnist/v0001"
    assert artifacts.latest(root, "mnist") == "v0001"
    assert artifacts.read_metadata(root, "mnist", "v0001") == {"version": "v0001", "format": "savedmodel"}  # the format recorded at publish


def test_an_onnx_version_needs_its_graph_and_records_its_format(tmp_path, s3_bucket):
    d = tmp_path / "onnx"
    d.mkdir()
    (d / "metadata.json").write_text('{"version": "v0001", "format": "onnx"}')
    with pytest.raises(ValueError, match=r"missing \['model.onnx'\]"):
        artifacts.publish(d, f"s3://{s3_bucket}/store", "m", "v0001")
    (d / "model.onnx").write_bytes(b"graph")
    artifacts.publish(d, f"s3://{s3_bucket}/store", "m", "v0001")
    assert artifacts.read_metadata(f"s3://{s3_bucket}/store", "m", "v0001")["format"] == "onnx"
    (d / "metadata.json").write_text('{"format": "pickle"}')
    with pytest.raises(registry.RegistryError, match="format 'pickle'"):
        artifacts.publish(d, f"s3://{s3_bucket}/store", "m", "v0002")


def test_incomplete_model_is_refused(tmp_path, s3_bucket):
    d = _version_dir(tmp_path, 1)
    (d / "model.keras").unlink()
    with pytest.raises(ValueError, match="incomplete model"):
        artifacts.publish(d, f"s3://{s3_bucket}/store", "mnist", "v0001")
    assert artifacts.latest(f"s3://{s3_bucket}/store", "mnist") is None


@pytest.mark.parametrize("where", ["s3", "file"])
def test_reader_racing_publishes_never_sees_a_partial_version(tmp_path, s3_bucket, where):
    root = f"s3://{s3_bucket}/store" if where == "s3" else f"file://{tmp_path}/store"
    dirs = [_version_dir(tmp_path, i) for i in range(4)]
    done = threading.Event()
    seen, problems = set(), []

    def reader():
        while not done.is_set():
            version = artifacts.latest(root, "mnist")
            if version is None:
                continue
            seen.add(version)
            for f in artifacts.REQUIRED:
                if not storage.exists(storage.join(artifacts.model_root(root, "mnist"), version, f)):
                    problems.append((version, f))
            if artifacts.read_metadata(root, "mnist", version)["version"] != version:
                problems.append((version, "metadata"))
            # the registry's aliases name only complete versions whose files match their manifest
            for doc in registry.aliases(root, "mnist").values():
                try:
                    registry.verify(root, "mnist", doc["version"])
                except registry.RegistryError as exc:
                    problems.append((doc["alias"], str(exc)))
            time.sleep(0.01)  # let the publisher run: a spinning reader only starves it (GIL)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i, d in enumerate(dirs):
            artifacts.publish(d, root, "mnist", f"v{i:04d}")
            # On a loaded machine the reader may not run at all between two publishes: wait until it
            # has seen this version, so it really races the next publish (and the count below holds).
            deadline = time.time() + 10
            while f"v{i:04d}" not in seen and time.time() < deadline:
                time.sleep(0.005)
    finally:
        done.set()
        t.join()
    assert problems == []
    assert len(seen) >= 2  # the reader really raced the publisher
    assert artifacts.latest(root, "mnist") == "v0003"
