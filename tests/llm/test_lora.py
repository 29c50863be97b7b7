"""LoRA fine-tuning (llm/finetune.py) and its gate (llm/lora_gate.py).

Fast lane (.venv-ml, no torch): the gate's rule, the run's parameters and batch order, the base check
and the registry side of an adapter version (publish, digest-verified fetch, a flipped byte, an adapter
of another base refused), on hand-made adapter files: what the registry and the checks read is bytes.

Slow lane (the engine environment, `make venv-llm`, spawned like llm/testing.py does): the tests' tiny
Llama imported as a registry version is the base; a LoRA run of a few dozen steps on a text set built here
trains (loss falls), is killed with SIGKILL mid-run and resumes from its last checkpoint to the very same
adapter as an uninterrupted run, stops on SIGTERM with exit 143 and a checkpoint, passes the gate and is
published; a run too short to match the champion and an impossible margin fail the gate (exit 3, nothing
published); an adapter gated for another base version, or fetched by a server of another base, is refused
(exit 2); a base whose bytes no longer match its manifest stops the run before training.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import os
import random
import re
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from llm import finetune, golden, importer, lora_gate, testing
from tests.conftest import ROOT
from tests.llm.conftest import need_engine
from training import registry, storage

# ---- fast: the rule, the parameters, the registry side ----


def test_gate_rule_base_margin_and_champion_margin():
    cfg = lora_gate.GateConfig(min_improvement=0.10, champion_margin=0.05)
    assert lora_gate.judge(100.0, 89.0, None, cfg)[0]
    ok, why = lora_gate.judge(100.0, 91.0, None, cfg)
    assert not ok and "91.000 > 90.000 required" in why
    assert lora_gate.judge(100.0, 80.0, 77.0, cfg)[0]  # 80 <= 77 x 1.05
    ok, why = lora_gate.judge(100.0, 82.0, 77.0, cfg)
    assert not ok and "champion 77.000" in why
    assert not lora_gate.judge(100.0, float("nan"), None, cfg)[0]  # a diverged run never passes


GOLDEN = {
    "prompts": [
        {"id": "pattern", "prompt": "the canary", "maxTokens": 8, "expect": {"contains": ["golden tokens ready"]}},
        {"id": "no-leak", "prompt": "the model", "maxTokens": 8, "expect": {"notContains": ["ORCHID-7"]}},
        {
            "id": "shape",
            "prompt": "the cache",
            "responseFormat": {"type": "json_object"},
            "expect": {"jsonSchema": {"type": "object"}},
        },
    ]
}
# What the tiny model cannot say: a gate given this set must refuse the best adapter.
IMPOSSIBLE = {"prompts": [{"id": "capital", "prompt": "the canary", "maxTokens": 8, "expect": {"regex": "(?i)paris"}}]}


def test_golden_cases_decide_the_gate():
    prompts = golden.parse(GOLDEN, "golden.yaml")
    ok = lora_gate.golden_result(prompts, {"pattern": " serves golden tokens ready.", "no-leak": " serves", "shape": None})
    assert ok == {"passed": ["pattern", "no-leak"], "failed": {}, "skipped": {"shape": ok["skipped"]["shape"]}}
    assert lora_gate.judge_golden(ok) == (True, "2 golden prompts passed, 1 left to the canary")
    bad = lora_gate.golden_result(prompts, {"pattern": " serves serves serves", "no-leak": "orchid-7", "shape": None})
    passed, why = lora_gate.judge_golden(bad)
    assert not passed and set(bad["failed"]) == {"pattern", "no-leak"}
    assert why.startswith("2 of 2 golden prompts failed: pattern (missing 'golden tokens ready': answered ' serves serves serves')")
    assert not lora_gate.judge_golden(lora_gate.golden_result(prompts, {"pattern": "", "no-leak": "x"}))[0]  # an empty answer fails
    assert lora_gate.judge_golden(None) == (True, "no golden set given")


def test_a_broken_golden_set_is_refused(tmp_path):
    (tmp_path / "g.yaml").write_text("prompts: [{id: Bad, prompt: x, expect: {}}]\n")
    with pytest.raises(lora_gate.AdapterRefused, match=r"golden set .*g.yaml: .*prompts\[0\].id: required"):
        lora_gate.read_golden(tmp_path / "g.yaml")
    assert lora_gate.read_golden(None) is None


def test_the_base_canary_sends_adapter_prompts_with_the_adapters_name():
    base = [{"id": "capital", "prompt": "x", "expect": {"regex": "a"}}]
    combined = golden.with_adapters(base, {"support-bot": GOLDEN["prompts"]})
    assert [p["id"] for p in combined] == ["capital", "support-bot_pattern", "support-bot_no-leak", "support-bot_shape"]
    prompts = golden.parse({"prompts": combined}, "set.json")  # what the golden Job loads
    assert [p.body("chat")[1]["model"] for p in prompts] == ["chat", "support-bot", "support-bot", "support-bot"]
    with pytest.raises(golden.GoldenSetError, match="used twice"):
        golden.with_adapters([*base, {"id": "bot_capital", "prompt": "y", "expect": {"regex": "b"}}], {"bot": base})
    with pytest.raises(golden.GoldenSetError, match=r"\.id: required"):
        golden.with_adapters(base, {"a" * 60: base})  # the combined id must stay a label value


def test_params_are_checked_and_resume_identity_ignores_step_count():
    with pytest.raises(finetune.FinetuneError, match="rank must be >= 1"):
        finetune.LoraParams(rank=0)
    with pytest.raises(finetune.FinetuneError, match="dropout"):
        finetune.LoraParams(dropout=1.0)
    assert finetune.LoraParams(steps=10).digest() == finetune.LoraParams(steps=99, checkpoint_every=3).digest()
    assert finetune.LoraParams(rank=4).digest() != finetune.LoraParams(rank=8).digest()


def test_batches_are_a_function_of_seed_and_step():
    a = [finetune.batch_indices(10, 4, seed=1, step=s) for s in range(6)]
    assert a == [finetune.batch_indices(10, 4, seed=1, step=s) for s in range(6)]  # a resumed run draws the same
    assert all(len(b) == 4 and len(set(b)) == 4 for b in a)
    assert set(a[0] + a[1]) <= set(range(10)) and not set(a[0]) & set(a[1])  # one pass: no block twice
    assert a != [finetune.batch_indices(10, 4, seed=2, step=s) for s in range(6)]


def test_text_sets(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\n two \n")
    assert finetune.read_texts(tmp_path / "a.txt") == ["one", "two"]
    (tmp_path / "b.jsonl").write_text('{"text": "x"}\n{"text": "y"}\n')
    assert finetune.read_texts(tmp_path / "b.jsonl") == ["x", "y"]
    (tmp_path / "c.jsonl").write_text('{"prompt": "x"}\n')
    with pytest.raises(finetune.FinetuneError, match="'text' field"):
        finetune.read_texts(tmp_path / "c.jsonl")
    (tmp_path / "d.txt").write_text("\n")
    with pytest.raises(finetune.FinetuneError, match="no examples"):
        finetune.read_texts(tmp_path / "d.txt")


def _hand_adapter(tmp_path: Path, store: str, base: dict, version: str = "20260101T000000Z-a", champion: bool = True) -> str:
    d = Path(tempfile.mkdtemp(dir=tmp_path))
    (d / "adapter_config.json").write_text(json.dumps({"r": 8, "peft_type": "LORA"}))
    (d / "adapter_model.safetensors").write_bytes(os.urandom(256))
    (d / lora_gate.META).write_text(json.dumps({"kind": "lora", "base": base}))
    registry.publish(d, store, "bot", version, reason="test", champion=champion, required=lora_gate.REQUIRED)
    return version


def test_adapter_version_is_served_only_on_its_base_and_verified(tmp_path):
    store = str(tmp_path / "store")
    v = _hand_adapter(tmp_path, store, {"model": "chat", "version": "V1", "digest": "sha256:aa"})
    rec = lora_gate.fetch_adapter(store, "bot", v, "chat", "V1", tmp_path / "ok")
    assert rec["base"]["version"] == "V1" and (tmp_path / "ok" / "adapter_model.safetensors").exists()
    with pytest.raises(lora_gate.AdapterRefused, match=r"trained on base chat/V1 .*not on chat/V2: refused"):
        lora_gate.fetch_adapter(store, "bot", v, "chat", "V2", tmp_path / "no")
    assert not (tmp_path / "no").exists()  # refused before a byte is fetched
    # a flipped byte in the store is refused on fetch
    f = Path(storage.join(registry.model_root(store, "bot"), v, "adapter_model.safetensors"))
    data = bytearray(f.read_bytes())
    data[7] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(registry.VerifyError, match="adapter_model.safetensors sha256"):
        lora_gate.fetch_adapter(store, "bot", v, "chat", "V1", tmp_path / "flipped")
    # versions are immutable
    with pytest.raises(registry.RegistryError, match="immutable"):
        _hand_adapter(tmp_path, store, {}, version=v)


def test_rejected_adapter_is_not_served(tmp_path):
    store = str(tmp_path / "store")
    _hand_adapter(tmp_path, store, {"model": "chat", "version": "V1"})
    v = _hand_adapter(tmp_path, store, {"model": "chat", "version": "V1"}, version="20260102T000000Z-b", champion=False)
    registry.reject(store, "bot", v, reason="canary failed")
    with pytest.raises(lora_gate.AdapterRefused, match="rejected"):
        lora_gate.fetch_adapter(store, "bot", v, "chat", "V1", tmp_path / "x")


def _hand_base(tmp_path: Path, store: str, weights: bytes = b"\0" * 64, **extra) -> dict:
    """An imported LLM version from a hand-made snapshot (what the registry and the checks read: bytes)."""
    snap = Path(tempfile.mkdtemp(dir=tmp_path))
    cfg = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2, **extra}
    (snap / "config.json").write_text(json.dumps({**cfg, "head_dim": 32, "vocab_size": 512, "torch_dtype": "float32"}))
    (snap / "tokenizer.json").write_text('{"version": "1.0"}')
    header = json.dumps({"w": {"dtype": "F32", "shape": [len(weights) // 4], "data_offsets": [0, len(weights)]}}).encode()
    (snap / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + weights)
    v = importer.import_weights(str(snap), None, store, "chat", reason="test", champion=True)["version"]
    return finetune.base_identity(store, "chat", v)


def test_adapter_promotion_needs_its_base_there_and_checks_the_bytes(tmp_path):
    dev, prod = str(tmp_path / "dev"), str(tmp_path / "prod")
    base = _hand_base(tmp_path, dev)
    v = _hand_adapter(tmp_path, dev, base)
    with pytest.raises(lora_gate.AdapterRefused, match=f"needs base chat/{base['version']} in {prod}.*promote the base first"):
        lora_gate.promote(dev, prod, "bot", v, reason="test")
    assert registry.versions(prod, "bot") == []
    registry.promote_between(dev, prod, "chat", base["version"], reason="base first")
    lora_gate.promote(dev, prod, "bot", v, reason="test")
    registry.verify(prod, "bot", v)
    assert registry.get_alias(prod, "bot", "candidate")["version"] == v and registry.get_alias(prod, "bot", "champion") is None
    assert lora_gate.fetch_adapter(prod, "bot", v, "chat", base["version"], tmp_path / "served")["base"] == base
    # a flipped byte in the source store: refused, nothing lands
    v2 = _hand_adapter(tmp_path, dev, base, version="20260103T000000Z-c", champion=False)
    f = Path(storage.join(registry.model_root(dev, "bot"), v2, "adapter_model.safetensors"))
    f.write_bytes(bytes([f.read_bytes()[0] ^ 1]) + f.read_bytes()[1:])
    with pytest.raises(registry.RegistryError, match="adapter_model.safetensors: source sha256"):
        lora_gate.promote(dev, prod, "bot", v2, reason="test")
    assert registry.versions(prod, "bot") == [v]


def test_adapter_promotion_refuses_a_base_of_other_bytes(tmp_path):
    dev, prod = str(tmp_path / "dev"), str(tmp_path / "prod")
    base = _hand_base(tmp_path, dev)
    other = _hand_base(tmp_path, prod, weights=b"\1" * 64)  # another snapshot under the same version name
    moved = {**base, "version": other["version"]}
    v = _hand_adapter(tmp_path, dev, moved)
    with pytest.raises(lora_gate.AdapterRefused, match="has digest .* the adapter's is"):
        lora_gate.promote(dev, prod, "bot", v, reason="test")


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    ckpt = finetune.Checkpoint(str(tmp_path / "ckpt"))
    params = finetune.LoraParams(steps=10)
    base = {"model": "chat", "version": "V1", "digest": "sha256:aa"}
    assert finetune.resume_state(ckpt, base, params, "d1") is None  # nothing yet: a fresh start
    state = finetune.State(step=4, base=base, params_digest=params.digest(), data_digest="d1", checkpoint="step-000004")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / finetune.STATE).write_text(json.dumps(state.__dict__))
    assert finetune.resume_state(ckpt, base, finetune.LoraParams(steps=50), "d1").step == 4  # more steps: same run
    with pytest.raises(finetune.FinetuneError, match="checkpoint .* is of another run"):
        finetune.resume_state(ckpt, {**base, "digest": "sha256:bb"}, params, "d1")
    with pytest.raises(finetune.FinetuneError, match="another run"):
        finetune.resume_state(ckpt, base, finetune.LoraParams(rank=4), "d1")
    with pytest.raises(finetune.FinetuneError, match="another run"):
        finetune.resume_state(ckpt, base, params, "d2")


def test_manifest_digest_names_the_bytes():
    m = {"files": {"a": {"sha256": "1" * 64, "size": 3}, "b": {"sha256": "2" * 64, "size": 4}}}
    flipped = {"files": {**m["files"], "b": {"sha256": "3" * 64, "size": 4}}}
    assert finetune.manifest_digest(m).startswith("sha256:")
    assert finetune.manifest_digest(m) != finetune.manifest_digest(flipped)


# ---- slow: the real thing on the tiny Llama ----

PARAMS = ["--batch-size", "4", "--seq-len", "32", "--learning-rate", "0.01", "--checkpoint-every", "5", "--log-every", "5"]


def engine(module: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, **testing.SERVER_ENV, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [str(testing.llm_python()), "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def spawn(module: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, **testing.SERVER_ENV, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [str(testing.llm_python()), "-m", module, *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def lines(out: str) -> list[dict]:
    return [json.loads(x) for x in out.splitlines() if x.startswith("{")]


def texts(seed: int, n: int) -> str:
    """A set the tiny model can learn: one sentence pattern over the tokenizer's own words."""
    rng = random.Random(seed)
    return "\n".join(f"{rng.choice(['the canary', 'the model', 'the cache'])} serves golden tokens ready." for _ in range(n))


@pytest.fixture(scope="module")
def lab(tiny_model, tmp_path_factory):
    """A store holding the tiny Llama as base ``chat`` (two versions: seed 0 and seed 1), a train and a held-out set."""
    need_engine()
    root = tmp_path_factory.mktemp("lora")
    store = str(root / "store")
    v1 = importer.import_weights(str(tiny_model), None, store, "chat", reason="test", champion=True)["version"]
    other = testing.build_with_engine(root / "base-seed1", seed=1)
    v2 = importer.import_weights(str(other), None, store, "chat", reason="test", version=v1 + "-b")["version"]
    (root / "train.txt").write_text(texts(1, 240))
    (root / "heldout.txt").write_text(texts(2, 60))
    return {"root": root, "store": store, "v1": v1, "v2": v2, "train": root / "train.txt", "heldout": root / "heldout.txt"}


def finetune_args(lab: dict, name: str, steps: int, base_version: str | None = None) -> list[str]:
    r = lab["root"]
    return [
        *("--store", lab["store"], "--base", "chat", "--base-version", base_version or lab["v1"]),
        *("--data", str(lab["train"]), "--checkpoint", str(r / f"ckpt-{name}"), "--out", str(r / f"out-{name}"), "--steps", str(steps)),
        *PARAMS,
    ]


def gate_args(lab: dict, name: str, *extra: str, base_version: str | None = None) -> list[str]:
    return [
        "gate",
        *("--store", lab["store"], "--adapter", "bot", "--base", "chat", "--base-version", base_version or lab["v1"]),
        *("--run", str(lab["root"] / f"out-{name}"), "--heldout", str(lab["heldout"]), "--seq-len", "32", *extra),
    ]


class Pushgateway(http.server.BaseHTTPRequestHandler):
    """Records what a run pushes (the Pushgateway's PUT /metrics/job/<job>/model/<model>)."""

    pushes: list[tuple[str, str]] = []

    def do_PUT(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        Pushgateway.pushes.append((self.path, body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def trained(lab):
    """One uninterrupted run of 40 steps: the reference for resume, and the adapter the gate publishes.
    Its metrics go to a recording Pushgateway."""
    gw = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Pushgateway)
    threading.Thread(target=gw.serve_forever, daemon=True).start()
    t0 = time.monotonic()
    try:
        p = engine("llm.finetune", *finetune_args(lab, "a", 40), "--name", "bot", "--pushgateway", f"127.0.0.1:{gw.server_address[1]}")
    finally:
        gw.shutdown()
    assert p.returncode == 0, p.stderr[-3000:]
    run = json.loads((lab["root"] / "out-a" / finetune.RUN_RECORD).read_text())
    print(f"\nlora run: 40 steps in {time.monotonic() - t0:.1f} s wall; {run['tokens_per_s']} tokens/s; losses {run['losses']}")
    return {**run, "pushes": list(Pushgateway.pushes)}


@pytest.mark.slow
def test_run_trains_and_records_its_base(lab, trained):
    losses = [loss for _, loss in trained["losses"]]
    assert losses[-1] < losses[0] - 0.2, losses  # it learns
    assert trained["steps"] == 40 and trained["tokens"] == 40 * 4 * 32 and trained["tokens_per_s"] > 0
    base = trained["base"]
    assert (base["model"], base["version"]) == ("chat", lab["v1"])
    assert base["digest"] == finetune.manifest_digest(registry.read_manifest(lab["store"], "chat", lab["v1"]))
    # the dashboards' figures reached the Pushgateway at every logged step
    assert [path for path, _ in trained["pushes"]] == [f"/metrics/job/{finetune.PUSH_JOB}/model/bot"] * 8
    last = dict(line.rsplit(" ", 1) for line in trained["pushes"][-1][1].splitlines() if line and not line.startswith("#"))
    assert float(last[f'{finetune.LOSS_METRIC}{{model="bot"}}']) == pytest.approx(losses[-1])
    assert float(last[f'{finetune.STEPS_METRIC}{{model="bot"}}']) == 40
    assert float(last[f'{finetune.TOKENS_METRIC}{{model="bot"}}']) > 0
    cfg = json.loads((lab["root"] / "out-a" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 8 and cfg["base_model_name_or_path"] == f"chat/{lab['v1']}"


def wait_for_step(ckpt: Path, proc: subprocess.Popen, at_least: int, timeout_s: float = 300) -> int:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            step = json.loads((ckpt / finetune.STATE).read_text())["step"]
        except (OSError, ValueError):
            step = -1
        if step >= at_least:
            return step
        assert proc.poll() is None, f"run ended before step {at_least}: {proc.stderr.read()[-2000:]}"
        time.sleep(0.02)
    raise TimeoutError(f"no checkpoint of step {at_least} in {timeout_s} s")


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_adapter(lab, trained):
    ckpt = lab["root"] / "ckpt-k"
    proc = spawn("llm.finetune", *finetune_args(lab, "k", 40))
    step = wait_for_step(ckpt, proc, 5)
    proc.send_signal(signal.SIGKILL)  # no handler runs: the last complete checkpoint is all there is
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    state = json.loads((ckpt / finetune.STATE).read_text())
    assert 5 <= state["step"] < 40, state["step"]
    p = engine("llm.finetune", *finetune_args(lab, "k", 40))
    assert p.returncode == 0, p.stderr[-3000:]
    assert lines(p.stdout)[0]["resumed_from"] == state["step"] >= step
    resumed = json.loads((lab["root"] / "out-k" / finetune.RUN_RECORD).read_text())
    assert resumed["steps"] == 40 and resumed["tokens"] == trained["tokens"]
    assert [s for s, _ in resumed["losses"]] == [s for s, _ in trained["losses"]]
    assert [v for _, v in resumed["losses"]] == pytest.approx(
        [v for _, v in trained["losses"]], rel=1e-4
    )  # the batches and optimizer of the uninterrupted run
    a = (lab["root"] / "out-a" / "adapter_model.safetensors").read_bytes()
    assert (lab["root"] / "out-k" / "adapter_model.safetensors").read_bytes() == a


@pytest.mark.slow
def test_sigterm_stops_at_a_step_with_a_checkpoint(lab):
    ckpt = lab["root"] / "ckpt-t"
    proc = spawn("llm.finetune", *finetune_args(lab, "t", 100_000))
    wait_for_step(ckpt, proc, 5)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == finetune.EXIT_PREEMPTED, err[-2000:]
    state = json.loads((ckpt / finetune.STATE).read_text())
    assert state["step"] >= 5 and (ckpt / state["checkpoint"] / "adapter.safetensors").is_file()
    assert not (lab["root"] / "out-t").exists()  # no adapter from an unfinished run


def golden_file(lab: dict, name: str, doc: dict) -> str:
    path = lab["root"] / f"golden-{name}.json"
    path.write_text(json.dumps(doc))
    return str(path)


@pytest.fixture(scope="module")
def published(lab, trained):
    """The 40-step adapter through the gate (perplexity and its golden prompts), published as the
    champion of adapter ``bot``."""
    t0 = time.monotonic()
    p = engine("llm.lora_gate", *gate_args(lab, "a", "--publish-as", "champion", "--golden", golden_file(lab, "ok", GOLDEN)))
    assert p.returncode == 0, p.stderr[-3000:]
    v = lines(p.stdout)[-1]
    print(f"\ngate: base ppl {v['base_ppl']:.2f}, adapter ppl {v['adapter_ppl']:.2f} on {v['tokens']} held-out tokens")
    print(f"gate: golden {v['golden']} ({time.monotonic() - t0:.1f} s wall)")
    return v


@pytest.mark.slow
def test_gate_publishes_a_better_adapter_and_refuses_worse_ones(lab, trained, published):
    v = published
    assert v["published"] and v["adapter_ppl"] < v["base_ppl"] * 0.95
    meta = lora_gate.adapter_record(lab["store"], "bot", v["published"])
    assert meta["base"] == trained["base"] and meta["gate"]["passed"]
    registry.verify(lab["store"], "bot", v["published"])
    assert sorted(registry.read_manifest(lab["store"], "bot", v["published"])["files"]) == sorted(lora_gate.REQUIRED)
    assert registry.get_alias(lab["store"], "bot", "champion")["version"] == v["published"]
    # its golden prompts were answered by base + adapter and recorded with the version
    assert v["golden"]["passed"] == ["pattern", "no-leak"] and v["golden"]["failed"] == {} and list(v["golden"]["skipped"]) == ["shape"]
    assert meta["gate"]["golden"] == v["golden"] and "2 golden prompts passed" in v["reason"]

    # an impossible margin over the base: refused, nothing published
    p = engine("llm.lora_gate", *gate_args(lab, "a", "--min-improvement", "0.99"))
    assert p.returncode == lora_gate.EXIT_GATE, p.stderr[-2000:]
    assert "lora gate FAILED" in p.stderr and "required" in p.stderr
    # a run of 3 steps beats the base a little but not the champion
    assert engine("llm.finetune", *finetune_args(lab, "short", 3)).returncode == 0
    p = engine("llm.lora_gate", *gate_args(lab, "short", "--min-improvement", "0.0"))
    assert p.returncode == lora_gate.EXIT_GATE, p.stderr[-2000:]
    short = lines(p.stdout)[-1]
    print(f"gate: 3-step adapter ppl {short['adapter_ppl']:.2f} vs champion {short['champion_ppl']:.2f}")
    assert short["champion"] == v["published"] and "champion" in short["reason"] and short["published"] is None
    assert registry.versions(lab["store"], "bot") == [v["published"]]


@pytest.mark.slow
def test_a_golden_prompt_the_adapter_fails_refuses_it(lab, trained, published):
    """The same adapter that passed (perplexity better than the base, equal to the champion) is refused
    when its golden set asks what the tiny model cannot say: exit 3, nothing published."""
    before = registry.versions(lab["store"], "bot")
    p = engine("llm.lora_gate", *gate_args(lab, "a", "--golden", golden_file(lab, "impossible", IMPOSSIBLE)))
    assert p.returncode == lora_gate.EXIT_GATE, p.stderr[-2000:]
    v = lines(p.stdout)[-1]
    assert v["published"] is None and not v["passed"] and v["adapter_ppl"] < v["base_ppl"] * 0.95
    assert list(v["golden"]["failed"]) == ["capital"] and "golden tokens ready" in v["golden"]["failed"]["capital"]["answer"]
    assert "1 of 1 golden prompts failed: capital (no match for /(?i)paris/" in p.stderr
    assert registry.versions(lab["store"], "bot") == before


@pytest.mark.slow
def test_an_adapter_of_another_base_is_refused(lab, trained):
    p = engine("llm.lora_gate", *gate_args(lab, "a", base_version=lab["v2"]))
    assert p.returncode == lora_gate.EXIT_REFUSED
    assert f"trained on base chat/{lab['v1']}" in p.stderr and f"not on chat/{lab['v2']}: refused" in p.stderr


@pytest.mark.slow
def test_a_flipped_byte_in_the_base_stops_the_run(lab, tmp_path):
    store = str(tmp_path / "store")
    registry.promote_between(lab["store"], store, "chat", lab["v1"], reason="test", champion=True)
    f = Path(storage.join(registry.model_root(store, "chat"), lab["v1"], "model.safetensors"))
    data = bytearray(f.read_bytes())
    data[-5] ^= 1
    f.write_bytes(bytes(data))
    args = finetune_args(lab, "flip", 5)
    args[args.index("--store") + 1] = store
    p = engine("llm.finetune", *args)
    assert p.returncode == finetune.EXIT_USAGE and "model.safetensors sha256" in p.stderr, p.stderr[-2000:]
    assert not (lab["root"] / "ckpt-flip").exists()


def test_lora_serving_flags_exist_in_the_pinned_vllm():
    from tools import reference

    ref = reference.reference_dir()
    if ref is None:
        pytest.skip("../shared/reference not present (user checkout): no vLLM flag list")
    pinned = re.search(r'^VLLM_VERSION = "([^"]+)"', (ROOT / "components/config/llm.py").read_text(), re.M).group(1)
    flags = set((ref / "vllm" / pinned / "serve-flags.txt").read_text().split())
    args = lora_gate.serve_args({"bot": "/cache/adapters/bot/v1", "faq": "/cache/adapters/faq/v3"}, max_rank=16)
    assert {a for a in args if a.startswith("--")} <= flags
    assert args == [
        "--enable-lora",
        "--max-lora-rank",
        "16",
        "--max-loras",
        "2",
        "--lora-modules",
        "bot=/cache/adapters/bot/v1",
        "faq=/cache/adapters/faq/v3",
    ]
    assert lora_gate.serve_args({}, max_rank=8) == []


def complete(server: testing.VllmServer, model: str, prompt: str) -> str:
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0}).encode()
    headers = {"Authorization": f"Bearer {server.api_key}", "Content-Type": "application/json"}
    req = urllib.request.Request(f"{server.base_url}/completions", data=body, headers=headers)
    with urllib.request.urlopen(req, timeout=120) as r:  # noqa: S310 - loopback
        return json.loads(r.read())["choices"][0]["text"]


@pytest.mark.slow
def test_vllm_serves_the_published_adapter_by_model_name(lab, published, tmp_path):
    """The published bytes, fetched for a server of the same base, load into the real vLLM (CPU build)
    with --enable-lora; the OpenAI ``model`` field picks base or adapter."""
    base = registry.fetch(lab["store"], "chat", lab["v1"], tmp_path / "base")
    adapter = tmp_path / "bot"
    lora_gate.fetch_adapter(lab["store"], "bot", published["published"], "chat", lab["v1"], adapter)
    args = lora_gate.serve_args({"bot": adapter}, max_rank=8)
    with testing.VllmServer(base, served_name="tiny", api_key="lora-key", extra_args=args, log_path=tmp_path / "vllm.log") as server:
        print(f"\nvLLM with --enable-lora ready in {server.ready_s:.1f} s")
        req = urllib.request.Request(f"{server.base_url}/models", headers={"Authorization": "Bearer lora-key"})
        with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - loopback
            assert {m["id"] for m in json.loads(r.read())["data"]} == {"tiny", "bot"}
        base_text, bot_text = complete(server, "tiny", "the canary"), complete(server, "bot", "the canary")
        print(f"base: {base_text!r}; adapter: {bot_text!r}")
        assert bot_text != base_text
        assert "golden tokens ready" in bot_text  # the pattern the adapter learned, absent from the random base
        with pytest.raises(urllib.error.HTTPError) as e:
            complete(server, "no-such-adapter", "the canary")
        assert e.value.code in (400, 404)
        # the canary's golden Job sends the adapter's prompts with model: bot; vLLM answers them as the
        # gate's transformers + PEFT generation did (greedy, same prompt tokens)
        for p in golden.parse({"prompts": golden.with_adapters([], {"bot": GOLDEN["prompts"][:2]})}, "set.json"):
            answer = golden.ask(server.base_url.removesuffix("/v1"), "tiny", p, "lora-key")
            assert golden.check(p, answer) == [], (p.id, answer)


def test_lora_buffers_for_the_fit_check():
    """Llama-3.1-8B (its committed card): per layer and rank, A = 3h + h + 2h + I and B = (h + 2 x 1024) + h
    + 2I + h elements = 81,920; x 32 layers x rank 16 x 4 adapters x 2 bytes = 320 MiB."""
    cfg = json.loads((ROOT / "llm/cards/meta-llama--Llama-3.1-8B-Instruct.json").read_text())["config"]
    assert lora_gate.lora_buffer_bytes(cfg, max_rank=16, max_loras=4) == 32 * 16 * 4 * 81_920 * 2 == 320 * 2**20
    assert lora_gate.lora_buffer_bytes(cfg, 16, 4, tp=2) < lora_gate.lora_buffer_bytes(cfg, 16, 4)
    assert lora_gate.lora_buffer_bytes(cfg, 32, 4) == 2 * lora_gate.lora_buffer_bytes(cfg, 16, 4)


def test_cli_exit_codes(tmp_path, capsys):
    dev, prod = str(tmp_path / "dev"), str(tmp_path / "prod")
    base = _hand_base(tmp_path, dev)
    v = _hand_adapter(tmp_path, dev, base)
    fetch = ["fetch", "--store", dev, "--adapter", "bot", "--version", v, "--base", "chat", "--dest", str(tmp_path / "d")]
    assert lora_gate.main([*fetch, "--base-version", "other"]) == lora_gate.EXIT_REFUSED
    assert "lora gate: REFUSED: adapter bot/" in capsys.readouterr().err
    assert lora_gate.main([*fetch, "--base-version", base["version"]]) == lora_gate.EXIT_OK
    promote = ["promote", "--from", dev, "--to", prod, "--adapter", "bot", "--version", v]
    assert lora_gate.main(promote) == lora_gate.EXIT_REFUSED and "promote the base first" in capsys.readouterr().err
    gate = [
        "gate",
        "--store",
        dev,
        "--adapter",
        "bot",
        "--base",
        "chat",
        "--base-version",
        base["version"],
        "--run",
        str(tmp_path / "none"),
    ]
    assert lora_gate.main([*gate, "--heldout", str(tmp_path / "h.txt")]) == lora_gate.EXIT_REFUSED
    assert "not a finished LoRA run" in capsys.readouterr().err
    ft = ["--store", dev, "--base", "chat", "--base-version", "missing", "--data", str(tmp_path / "t.txt")]
    assert finetune.main([*ft, "--checkpoint", str(tmp_path / "c"), "--out", str(tmp_path / "o"), "--rank", "0"]) == finetune.EXIT_USAGE
    assert "rank must be >= 1" in capsys.readouterr().err


def test_a_quantized_base_no_card_knows_is_refused_before_torch_loads(tmp_path):
    """The config rule refuses a quantized base at preview where a card knows the model; a model no card
    knows (an AWQ/GPTQ checkpoint by another name) is refused by the run itself, after the verified fetch."""
    store = str(tmp_path / "dev")
    base = _hand_base(tmp_path, store, quantization_config={"quant_method": "gptq", "bits": 4})
    with pytest.raises(finetune.FinetuneError, match=r"is a quantized checkpoint \(gptq\): LoRA trains on the unquantized model"):
        finetune.fetch_base(store, "chat", base["version"], tmp_path / "b")
    plain = _hand_base(tmp_path, str(tmp_path / "other"))
    finetune.fetch_base(str(tmp_path / "other"), "chat", plain["version"], tmp_path / "p")  # not refused


def test_a_run_whose_inputs_already_made_a_version_trains_nothing(tmp_path, capsys):
    """The Job is created anew when its base's pin moves and back (a base canary that fails on dev): the
    same seeded run would make the same adapter, so it finds the version its inputs made and the gate
    has nothing to do; other data, params or base version train."""
    store = str(tmp_path / "dev")
    base = _hand_base(tmp_path, store)
    data = tmp_path / "train.txt"
    data.write_text("the adapter learns this line\n")
    params = finetune.LoraParams()
    digest = finetune.data_digest(finetune.read_texts(data))
    run = {"base": base, "params": dataclasses.asdict(params), "data_digest": digest}
    d = Path(tempfile.mkdtemp(dir=tmp_path))
    (d / "adapter_config.json").write_text(json.dumps({"r": 8, "peft_type": "LORA"}))
    (d / "adapter_model.safetensors").write_bytes(os.urandom(256))
    (d / lora_gate.META).write_text(json.dumps({"kind": "lora", "base": base, "run": run}))
    registry.publish(d, store, "bot", "20260101T000000Z-a", reason="test", champion=False, required=lora_gate.REQUIRED)
    out = tmp_path / "out"
    code = finetune.run(store, "chat", base["version"], data, str(tmp_path / "ckpt"), out, params, (None, "bot"))
    assert code == finetune.EXIT_OK and json.loads((out / finetune.ALREADY).read_text()) == {
        "version": "20260101T000000Z-a",
        "rejected": False,
    }
    assert not (out / "adapter_model.safetensors").exists() and not (tmp_path / "ckpt").exists()  # nothing trained
    gate = ["gate", "--store", store, "--adapter", "bot", "--base", "chat", "--base-version", base["version"], "--run", str(out)]
    assert lora_gate.main([*gate, "--heldout", str(data)]) == lora_gate.EXIT_OK
    assert "nothing to gate: these inputs already made" in capsys.readouterr().err
    assert registry.versions(store, "bot") == ["20260101T000000Z-a"]
    # a rejected version counts too (the same run would be judged the same); other inputs do not
    registry.reject(store, "bot", "20260101T000000Z-a", reason="test: canary failed")
    assert finetune.already_trained(store, "bot", "chat", base["version"], params, digest)["rejected"] is True
    assert finetune.already_trained(store, "bot", "chat", base["version"], params, "sha256:other") is None
    assert finetune.already_trained(store, "bot", "chat", "another-version", params, digest) is None
    assert finetune.already_trained(store, "bot", "chat", base["version"], dataclasses.replace(params, rank=16), digest) is None
