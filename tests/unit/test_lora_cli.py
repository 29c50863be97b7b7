"""llm/finetune.py's command-line fixes for the cluster run (components/models/lora_job.py): the training set
may be a URI of the store (a set too large to commit), and an image without the engine (PEFT) is refused at
once, before minutes of base download, with exit 2 (the Job's podFailurePolicy does not retry it)."""

from __future__ import annotations

import json

import pytest

from llm import finetune


def test_a_training_set_from_a_store_uri(tmp_path):
    (tmp_path / "models" / "bot").mkdir(parents=True)
    (tmp_path / "models" / "bot" / "train.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in ("a b", "c d")) + "\n")
    assert finetune.read_texts(f"file://{tmp_path}/models/bot/train.jsonl") == ["a b", "c d"]
    assert finetune.read_texts(tmp_path / "models" / "bot" / "train.jsonl") == ["a b", "c d"]
    with pytest.raises(finetune.FinetuneError, match="no such file"):
        finetune.read_texts(f"file://{tmp_path}/models/bot/missing.txt")


def test_missing_engine_modules_refuse_the_run_before_any_download(tmp_path, capsys, monkeypatch):
    assert finetune.missing_modules(("json", "no_such_module_xyz")) == ["no_such_module_xyz"]
    monkeypatch.setattr(finetune, "ENGINE_MODULES", ("json", "no_such_module_xyz"))
    store = tmp_path / "store"  # empty: a fetch would fail with another message
    argv = ["--store", str(store), "--base", "chat", "--base-version", "v1", "--checkpoint", str(tmp_path / "c")]
    code = finetune.main([*argv, "--data", str(tmp_path / "d.txt"), "--out", str(tmp_path / "o")])
    assert code == finetune.EXIT_USAGE == 2
    assert "lora: REFUSED: this Python has no no_such_module_xyz" in capsys.readouterr().err
    assert not store.exists()
