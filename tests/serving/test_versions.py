"""Which version a server loads (issue 13 item 9): transient misses are retried with backoff, a new
pod falls back to the newest version that loads, and only versions that fail their checks are refused."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest
from prometheus_client import CollectorRegistry

from serving import metrics as m
from serving.app import ModelServer, ServerSettings
from tests.serving.conftest import make_model_dir, run
from training import registry


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    base = tmp_path_factory.mktemp("builds")
    return {
        "good1": make_model_dir(base / "good1", "x", seed=1),
        "good2": make_model_dir(base / "good2", "x", seed=2),
        "three_classes": make_model_dir(base / "three", "x", seed=3, kind="wrong-output"),
    }


def put(root, version, build=None, corrupt=False, latest=True):
    """A version in the store's layout with a manifest the real registry wrote (of the files as they
    are, a corrupt model included: a version whose digests match but that does not load)."""
    vdir = root / "models" / "mnist" / version
    if build is not None:
        shutil.copytree(build, vdir)
    if corrupt:
        shutil.rmtree(vdir / "saved_model")
        (vdir / "model.keras").write_bytes(b"PK\x03\x04 truncated")
    if build is not None:
        (vdir / registry.MANIFEST).write_text(json.dumps(registry.manifest_of(vdir, "mnist", version)))
    if latest:
        (root / "models" / "mnist").mkdir(parents=True, exist_ok=True)
        (root / "models" / "mnist" / "LATEST").write_text(version)


def server(root, **kw) -> ModelServer:
    kw.setdefault("retry_base_s", 0.05)
    return ModelServer(ServerSettings(models={"mnist": f"file://{root}"}, poll_seconds=0, parse_workers=0, **kw), CollectorRegistry())


def failures(s: ModelServer, reason: str) -> float:
    return s.registry.get_sample_value(m.MODEL_LOAD_FAILURES, {"model": "mnist", "reason": reason})


def test_a_version_missing_once_is_loaded_when_it_appears(tmp_path, builds):
    root = tmp_path / "store"
    put(root, "v1", builds["good1"])
    s = server(root)
    mnist = s.models["mnist"]

    async def go():
        assert await mnist.refresh() and mnist.model.version == "v1"
        put(root, "v2")  # the pointer moved before the files are visible (eventual consistency, a half-synced mirror)
        assert not await mnist.refresh()
        assert mnist.model.version == "v1" and "v2" not in mnist.refused
        await asyncio.sleep(0.06)
        assert not await mnist.refresh()  # still missing: retried after the backoff, still not refused
        attempts = mnist._retry["v2"][0]
        put(root, "v2", builds["good2"])
        await asyncio.sleep(0.05 * 2**attempts + 0.01)
        assert await mnist.refresh()
        return attempts

    attempts = run(go())
    assert attempts == 2
    assert mnist.model.version == "v2" and mnist.refused == {}
    assert failures(s, "download") == 2


def test_backoff_grows_and_is_capped(tmp_path, builds):
    root = tmp_path / "store"
    put(root, "v1", builds["good1"])
    put(root, "v2")
    s = server(root, retry_base_s=1.0, retry_max_s=4.0)
    mnist = s.models["mnist"]

    async def go():
        await mnist.refresh()  # v2 missing, falls back to v1
        delays = []
        for _ in range(5):
            mnist._retry["v2"] = (mnist._retry["v2"][0], 0.0)  # pretend the wait is over
            before = asyncio.get_running_loop().time()
            await mnist.refresh()
            delays.append(round(mnist._retry["v2"][1] - before))
        return delays

    assert run(go()) == [2, 4, 4, 4, 4]


def test_new_pod_falls_back_to_the_newest_version_that_loads(tmp_path, builds):
    root = tmp_path / "store"
    put(root, "v1", builds["good1"])
    put(root, "v2", builds["good2"])
    put(root, "v3", builds["good1"], corrupt=True)
    (root / "models" / "mnist" / "v9").mkdir()  # newer than the pointer: an upload in progress, never a candidate
    put(root, "v4")  # LATEST names a version that is not there
    s = server(root)
    mnist = s.models["mnist"]
    assert run(mnist.refresh())
    assert mnist.model.version == "v2" and s.ready
    assert mnist.refused == {"v3": "load"} and "v4" in mnist._retry and "v9" not in mnist._retry
    assert failures(s, "load") == 1 and failures(s, "download") == 1
    # once v4 lands, the pointer's version replaces the fallback
    put(root, "v4", builds["good1"])
    mnist._retry["v4"] = (1, 0.0)
    assert run(mnist.refresh()) and mnist.model.version == "v4"


def test_only_a_version_that_fails_its_checks_is_refused(tmp_path, builds):
    root = tmp_path / "store"
    put(root, "v1", builds["good1"])
    s = server(root)
    mnist = s.models["mnist"]
    run(mnist.refresh())
    put(root, "v2", builds["good1"], corrupt=True)
    assert not run(mnist.refresh())
    assert mnist.refused == {"v2": "load"}
    assert not run(mnist.refresh())  # refused: not loaded again
    assert failures(s, "load") == 1


def test_breaking_signature_change_is_refused_unless_allowed(tmp_path, builds):
    root = tmp_path / "store"
    put(root, "v1", builds["good1"])
    put(root, "v2", builds["three_classes"], latest=False)
    strict, lenient = server(root), server(root, allow_signature_change=True)
    for s in (strict, lenient):
        run(s.models["mnist"].refresh())
    put(root, "v2")
    assert not run(strict.models["mnist"].refresh())
    assert strict.models["mnist"].model.version == "v1" and strict.models["mnist"].refused == {"v2": "incompatible"}
    assert failures(strict, "incompatible") == 1
    assert run(lenient.models["mnist"].refresh()) and lenient.models["mnist"].model.version == "v2"
