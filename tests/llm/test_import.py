"""LLM weights as registry versions (llm/importer.py, llm/fetch.py) on real local stores:
import -> digest-verified version -> promotion to another store -> node-local cache filled and verified
-> the real vLLM loads the promoted bytes and answers; a flipped byte is refused before vLLM starts.

The fast tests use a hand-made snapshot (a real safetensors file, config.json, tokenizer files): what the
registry and the checks see is the same as for a real model. The slow test uses the tiny Llama built by
the engine's own libraries and starts vLLM on the fetched copy.
"""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys

import pytest

from llm import fetch, importer
from llm.testing import VllmServer
from ops.smoke_openai import smoke_openai
from serving import integrity
from tests.conftest import ROOT
from training import registry, storage

TINY_CONFIG = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "vocab_size": 512,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
}


def safetensors_bytes(n: int = 16) -> bytes:
    """A valid safetensors file: little-endian header length, JSON header, ``n`` float32 values."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}).encode()
    return struct.pack("<Q", len(header)) + header + struct.pack(f"<{n}f", *range(n))


def make_snapshot(path, weights: bytes | None = None, pickle: bool = False, config: dict | None = None):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config or TINY_CONFIG))
    (path / "tokenizer.json").write_text('{"version": "1.0"}')
    (path / "tokenizer_config.json").write_text('{"eos_token": "</s>"}')
    (path / "README.md").write_text("not served")  # not taken
    (path / "modeling_evil.py").write_text("import os")  # repository code: never taken
    if pickle:
        (path / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    else:
        (path / "model.safetensors").write_bytes(weights or safetensors_bytes())
    return path


@pytest.fixture
def stores(tmp_path):
    return str(tmp_path / "dev-store"), str(tmp_path / "prod-store")


def test_import_makes_a_verified_candidate_with_the_shape(tmp_path, stores):
    dev, _ = stores
    snap = make_snapshot(tmp_path / "snap")
    out = importer.import_weights(str(snap), "main", dev, "chat", reason="first import")
    v = out["version"]
    assert out["created"] and out["commit"] == importer.tree_digest(snap)
    registry.verify(dev, "chat", v)  # every file with its manifest digest, nothing extra
    files = set(registry.read_manifest(dev, "chat", v)["files"])
    assert files == {"config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors", importer.META}
    rec = importer.record(dev, "chat", v)
    assert rec["shape"] | {"params": 0} == {
        "layers": 2,
        "kv_heads": 2,
        "head_dim": 32,
        "dtype": "float32",
        "params": 0,
        "weights_bytes": len(safetensors_bytes()),
        "quant_bits": None,
    }
    # The import Job moves no alias (its role may not: issue 24 item 8); the pipeline adopts the version.
    assert registry.aliases(dev, "chat") == {}
    assert registry.adopt(dev, "chat", champion=False, reason="pipeline: adopted on dev")["version"] == v
    assert registry.get_alias(dev, "chat", "candidate")["version"] == v
    assert registry.get_alias(dev, "chat", "champion") is None  # the canary decides


def test_same_commit_imports_once(tmp_path, stores):
    dev, _ = stores
    snap = make_snapshot(tmp_path / "snap")
    first = importer.import_weights(str(snap), "main", dev, "chat", reason="r")
    again = importer.import_weights(str(snap), "main", dev, "chat", reason="r")
    assert not again["created"] and again["version"] == first["version"]
    assert registry.versions(dev, "chat") == [first["version"]]


def test_pickled_weights_are_refused_and_nothing_is_written(tmp_path, stores):
    dev, _ = stores
    with pytest.raises(importer.ImportRefused, match=r"no \*\.safetensors weights .*pickled"):
        importer.import_weights(str(make_snapshot(tmp_path / "snap", pickle=True)), "main", dev, "chat", reason="r")
    assert registry.versions(dev, "chat") == []


def test_a_model_that_does_not_fit_is_refused_at_import(tmp_path, stores):
    dev, _ = stores
    snap = make_snapshot(tmp_path / "snap")
    # 1 GiB GPU x 0.9 leaves nothing once vLLM's overhead is kept free.
    target = importer.FitTarget(gpu_mib=1024, gpus=1, utilization=0.9, max_model_len=4096)
    with pytest.raises(importer.ImportRefused, match=r"does not fit 1 x 1.0 GiB GPU\(s\) x 0.9: weights .* GiB usable"):
        importer.import_weights(str(snap), "main", dev, "chat", reason="r", target=target)
    assert registry.versions(dev, "chat") == []


# An 8B-like shape (32 layers, 8 KV heads of 128, fp16): 4096 tokens of KV cache are 0.5 GiB; vLLM's
# buffers for 4 adapters of rank <= 64 are 1.1 GiB (llm/fit.py lora_buffer_bytes). The weights file is tiny.
LORA_BASE = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 512,
    "torch_dtype": "float16",
}


def test_a_model_that_fits_only_without_its_adapters_buffers_is_refused_at_import(tmp_path, stores, capsys):
    """The Job passes the LoRA rank and count its base's vLLM serves (components/models/llm_import.py):
    a 2 GiB GPU x 0.9 less vLLM's overhead leaves 0.8 GiB, room for the KV cache but not the buffers."""
    dev, _ = stores
    snap = make_snapshot(tmp_path / "snap", config=LORA_BASE)
    cli = ["import", "--store", dev, "--model", "chat", "--source", str(snap), "--gpu-mib", "2048", "--max-model-len", "4096"]
    assert importer.main([*cli, "--max-lora-rank", "64", "--max-loras", "4"]) == 2
    err = capsys.readouterr().err
    assert "REFUSED" in err and "KV cache 0.5 GiB + LoRA buffers 1.10 GiB = 1.6 GiB > 0.8 GiB usable" in err, err
    assert "(4096 tokens x 1 sequences, 4 LoRA adapters of rank <= 64)" in err and err.rstrip().endswith("nothing imported"), err
    assert registry.versions(dev, "chat") == []
    assert importer.main(cli) == 0  # the same GPU without adapters: imported
    assert len(registry.versions(dev, "chat")) == 1


def test_a_second_import_of_the_same_commit_downloads_nothing_and_still_checks_the_fit(tmp_path, stores, monkeypatch, capsys):
    """An import Job re-runs when its name changes (new LoRA limits, a new image) at the same commit: the
    version is found from the resolved commit before any download, and the fit is checked against its
    recorded shape and stored config.json: 15 GB are not fetched to find what the store holds."""
    dev, _ = stores
    snap = make_snapshot(tmp_path / "snap", config=LORA_BASE)
    cli = ["import", "--store", dev, "--model", "chat", "--source", str(snap), "--gpu-mib", "2048", "--max-model-len", "4096"]
    assert importer.main(cli) == 0
    (v,) = registry.versions(dev, "chat")

    def no_download(*_):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(importer, "snapshot", no_download)
    assert importer.main(cli) == 0 and registry.versions(dev, "chat") == [v]
    capsys.readouterr()
    assert importer.main([*cli, "--max-lora-rank", "64", "--max-loras", "4"]) == 2
    err = capsys.readouterr().err
    assert "LoRA buffers 1.10 GiB" in err and f"(version {v}, already imported)" in err, err
    assert registry.versions(dev, "chat") == [v]


def test_a_folder_that_changes_while_it_is_read_is_not_imported(tmp_path, stores, monkeypatch):
    dev, _ = stores
    snap = make_snapshot(tmp_path / "snap")
    real = importer.tree_digest
    digests = iter([real(snap), "0" * 64])
    monkeypatch.setattr(importer, "tree_digest", lambda folder: next(digests))
    with pytest.raises(importer.ImportRefused, match="changed while it was read: nothing imported"):
        importer.import_weights(str(snap), "main", dev, "chat", reason="r")
    assert registry.versions(dev, "chat") == []


def test_promotion_copies_the_bytes_when_the_pin_matches(tmp_path, stores):
    dev, prod = stores
    snap = make_snapshot(tmp_path / "snap")
    v = importer.import_weights(str(snap), "main", dev, "chat", reason="r")["version"]
    commit = importer.record(dev, "chat", v)["commit"]
    with pytest.raises(importer.ImportRefused, match="the stack pins 'f{40}'"):
        importer.promote(dev, prod, "chat", v, source=str(snap), revision="f" * 40, reason="r")
    assert registry.versions(prod, "chat") == []
    importer.promote(dev, prod, "chat", v, source=str(snap), revision=commit, reason="to prod")
    registry.verify(prod, "chat", v)
    src, dst = registry.model_root(dev, "chat"), registry.model_root(prod, "chat")
    for rel in registry.read_manifest(dev, "chat", v)["files"]:
        assert storage.read_bytes(storage.join(dst, v, rel)) == storage.read_bytes(storage.join(src, v, rel))
    assert registry.get_alias(prod, "chat", "candidate")["version"] == v


def test_fetch_fills_verifies_and_heals_the_local_cache(tmp_path, stores):
    dev, _ = stores
    v = importer.import_weights(str(make_snapshot(tmp_path / "snap")), "main", dev, "chat", reason="r")["version"]
    cache = tmp_path / "cache"
    dest, done = fetch.ensure(dev, "chat", v, cache)
    assert done == "filled" and (dest / "model.safetensors").read_bytes() == safetensors_bytes()
    integrity.verify_dir(dest, "cache")
    assert fetch.ensure(dev, "chat", v, cache)[1] == "verified"
    weights = dest / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # a flipped byte on the node's disk
    weights.write_bytes(bytes(data))
    assert fetch.ensure(dev, "chat", v, cache)[1] == "refilled"
    assert weights.read_bytes() == safetensors_bytes()


def test_a_warm_copy_changed_with_its_manifest_is_refilled_from_the_store(tmp_path, stores):
    """Files and local MANIFEST.json altered together agree with each other, not with the store: the
    warm path compares the local manifest's SHA-256 with the store manifest's."""
    dev, _ = stores
    v = importer.import_weights(str(make_snapshot(tmp_path / "snap")), "main", dev, "chat", reason="r")["version"]
    cache = tmp_path / "cache"
    dest, _ = fetch.ensure(dev, "chat", v, cache)
    weights = dest / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    manifest = json.loads((dest / integrity.MANIFEST).read_text())
    manifest["files"]["model.safetensors"]["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    (dest / integrity.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    integrity.verify_dir(dest, "altered together")  # consistent in itself
    assert fetch.ensure(dev, "chat", v, cache)[1] == "refilled"
    assert weights.read_bytes() == safetensors_bytes()


def flip_in_store(root: str, name: str, version: str, rel: str = "model.safetensors") -> None:
    uri = storage.join(registry.model_root(root, name), version, rel)
    data = bytearray(storage.read_bytes(uri))
    data[-1] ^= 0x01
    storage.write_bytes(uri, bytes(data))


def test_a_flipped_byte_in_the_store_is_refused_and_nothing_lands(tmp_path, stores):
    dev, _ = stores
    v = importer.import_weights(str(make_snapshot(tmp_path / "snap")), "main", dev, "chat", reason="r")["version"]
    flip_in_store(dev, "chat", v)
    cache = tmp_path / "cache"
    rc = fetch.main(["--store", dev, "--model", "chat", "--version", v, "--cache", str(cache)])
    assert rc == 1
    assert not fetch.local_path(cache, "chat", v).exists()


def test_fetch_refuses_a_rejected_version_and_a_wrong_pin(tmp_path, stores, capsys):
    dev, _ = stores
    snap = make_snapshot(tmp_path / "snap")
    v = importer.import_weights(str(snap), "main", dev, "chat", reason="r")["version"]
    args = ["--store", dev, "--model", "chat", "--version", v, "--cache", str(tmp_path / "cache")]
    assert fetch.main([*args, "--source", "Qwen/Qwen2.5-7B-Instruct"]) == 1
    assert "imported from" in capsys.readouterr().err
    registry.reject(dev, "chat", v, reason="failed canary")
    assert fetch.main(args) == 1
    assert "rejected" in capsys.readouterr().err


def test_an_unpinned_pod_serves_the_champion_resolved_at_start(tmp_path, stores, capsys):
    """``--version @champion`` (a pod template before ``deliver`` pinned a version): no champion yet is
    refused (the init container retries); then the champion is filled, verified and linked at
    ``<cache>/<model>/@champion``; a new champion moves the link at the next start."""
    dev, _ = stores
    cache = tmp_path / "cache"
    args = ["--store", dev, "--model", "chat", "--version", "@champion", "--cache", str(cache)]
    assert fetch.main(args) == 1 and "no champion" in capsys.readouterr().err
    v1 = importer.import_weights(str(make_snapshot(tmp_path / "a")), "main", dev, "chat", reason="r", champion=True)["version"]
    assert fetch.main(args) == 0 and f"@champion = {v1}" in capsys.readouterr().out
    link = cache / "chat" / "@champion"
    assert link.is_symlink() and link.resolve() == fetch.local_path(cache, "chat", v1).resolve()
    assert (link / "model.safetensors").read_bytes() == safetensors_bytes()
    v2 = importer.import_weights(str(make_snapshot(tmp_path / "b", safetensors_bytes(32))), "v2", dev, "chat", reason="r")["version"]
    registry.move(dev, "chat", "champion", v2, reason="canary passed")
    assert fetch.main(args) == 0
    assert link.resolve() == fetch.local_path(cache, "chat", v2).resolve()
    assert (link / "model.safetensors").read_bytes() == safetensors_bytes(32)


def test_cli_show_lists_the_records(tmp_path, stores):
    dev, _ = stores
    importer.import_weights(str(make_snapshot(tmp_path / "snap")), "v1", dev, "chat", reason="r")
    out = subprocess.run(
        [sys.executable, "-m", "llm.importer", "show", "--store", dev, "--model", "chat"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    (rec,) = json.loads(out.stdout).values()
    assert rec["revision"] == "v1" and rec["shape"]["layers"] == 2


@pytest.mark.slow
def test_vllm_serves_the_promoted_verified_bytes(tiny_model, tmp_path):
    """The tiny Llama imported in dev, promoted to prod's store, fetched into a node-local cache and
    verified by the init container's command; vLLM starts on that folder and answers. A flipped byte
    in the promoted store: the init container's command exits 1 and vLLM is never started."""
    dev, prod = str(tmp_path / "dev"), str(tmp_path / "prod")
    rec = importer.import_weights(str(tiny_model), "main", dev, "tiny", reason="import", champion=True)
    v = rec["version"]
    importer.promote(dev, prod, "tiny", v, source=str(tiny_model), revision=rec["commit"], reason="to prod")
    cache = tmp_path / "node-cache"
    init = [sys.executable, "-m", "llm.fetch", "--store", prod, "--model", "tiny", "--version", v, "--cache", str(cache)]
    init += ["--source", str(tiny_model), "--revision", rec["commit"]]
    done = subprocess.run(init, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    with VllmServer(fetch.local_path(cache, "tiny", v), served_name="tiny", api_key="k", log_path=tmp_path / "vllm.log") as server:
        ok, message = smoke_openai(server.base_url, "tiny", wait_s=30, api_key="k")
        assert ok, message

    # The same version, one byte flipped in the store: refused before any engine starts.
    flip_in_store(prod, "tiny", v)
    fresh = tmp_path / "another-node"
    init[init.index(str(cache))] = str(fresh)
    refused = subprocess.run(init, capture_output=True, text=True, cwd=ROOT)
    assert refused.returncode == 1 and "REFUSED" in refused.stderr and "model.safetensors" in refused.stderr
    assert not fetch.local_path(fresh, "tiny", v).exists()
