"""The fine-tuning Job's two command lines (components/models/lora_job.py), exactly as the Job renders them,
run in the engine environment on the tests' tiny Llama: ``llm.finetune`` on the base's version, then
``llm.lora_gate gate``, which publishes the adapter as a version naming that base. Only the pod's paths
(``/data``, ``/scratch/run``, ``$(JOB_NAME)``) are mapped to a temporary folder; a flag the CLIs do not
know, or a value they refuse, fails here before any cluster runs it."""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest

from components.config.llm import LlmConfig
from components.config.lora import LoraTrainingConfig
from components.models import lora_job
from llm import importer, lora_gate, testing
from tests.conftest import ROOT
from tests.llm.conftest import need_engine
from training import registry

# Here, in the program's environment (the Job is rendered with Pulumi); the engine runs in .venv-llm, spawned.


def texts(seed: int, n: int) -> str:
    rng = random.Random(seed)
    return "\n".join(f"{rng.choice(['the canary', 'the model', 'the cache'])} serves golden tokens ready." for _ in range(n))


def in_pod(args: list[str], tmp: Path) -> list[str]:
    """The pod's paths mapped to ``tmp`` (the Job's volumes), nothing else changed."""
    mapped = {lora_job.DATA_DIR + "/": str(tmp / "data") + "/", lora_job.RUN_DIR: str(tmp / "run")}
    out = []
    for a in args:
        prefix = next((p for p in mapped if a.startswith(p)), None)
        a = mapped[prefix] + a[len(prefix) :] if prefix else a
        out.append(a.replace("$(JOB_UID)", "0f6c2a8e-uid"))
    return out


def engine(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, **testing.SERVER_ENV, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(testing.llm_python()), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)


@pytest.mark.slow
def test_the_jobs_commands_train_gate_and_publish_on_the_bases_version(tmp_path):
    need_engine()
    tiny_model = testing.build_with_engine(tmp_path / "tiny-llama", seed=0)  # as tests/llm/conftest.py builds it
    store = str(tmp_path / "store")
    base_version = importer.import_weights(str(tiny_model), None, store, "chat", reason="test", champion=True)["version"]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "data-train.txt").write_text(texts(1, 240))
    (tmp_path / "data" / "heldout-heldout.txt").write_text(texts(2, 60))
    params = {"steps": 40, "batchSize": 4, "seqLen": 32, "learningRate": 0.01, "rank": 8, "alpha": 16}
    cfg = LoraTrainingConfig.model_validate(
        {"kind": "lora", "data": "models/support-bot/train.txt", "heldout": "models/support-bot/heldout.txt", "params": params}
    )
    run = lora_job.Run(adapter="bot", base="chat", base_version=base_version, config=cfg, base_llm=LlmConfig(source="org/m"))

    finetune = engine(in_pod(lora_job.finetune_args("bot", "chat", base_version, cfg, store), tmp_path))
    assert finetune.returncode == 0, finetune.stderr[-3000:]
    assert (tmp_path / "store" / "checkpoints" / "bot" / "0f6c2a8e-uid" / "state.json").is_file()  # where a retry resumes

    gate = engine(in_pod(lora_job.gate_args("bot", "chat", base_version, cfg, store, run.publish_as, golden=False), tmp_path))
    assert gate.returncode == 0, gate.stderr[-3000:]
    version = json.loads(gate.stdout.strip().splitlines()[-1])["published"]
    record = lora_gate.adapter_record(store, "bot", version)
    assert (record["base"]["model"], record["base"]["version"]) == ("chat", base_version)
    # the Job publishes a version only (its role may not move an alias: issue 24 item 8); the pipeline
    # adopts it as the candidate, which the canary then judges
    assert registry.get_alias(store, "bot", "candidate") is None
    assert registry.adopt(store, "bot", champion=False, reason="pipeline")["version"] == version
    assert registry.get_alias(store, "bot", "candidate")["version"] == version
