"""A LoRA fine-tuning run: a frozen base LLM from the registry, a small adapter trained on a text set.

    python -m llm.finetune --store ROOT --base NAME --base-version V --data FILE --checkpoint DIR --out DIR
                           [--steps N --batch-size N --seq-len N --learning-rate F --rank N --alpha N
                            --dropout F --target-modules a,b --seed N --checkpoint-every N]

* **The base is a registry version** (llm/importer.py: ``llm-version.json`` + SHA-256 manifest). It is
  fetched with ``registry.fetch`` (every file checked against the manifest as it lands; a flipped byte
  stops the run before a weight is loaded), a rejected version is refused, and the run records the
  base's name, version and **digest** (SHA-256 over its manifest's file list: the exact bytes) in the
  checkpoint and in the adapter it writes. The gate (llm/lora_gate.py) refuses an adapter whose base is
  not the one it is published for.
* **Libraries of record: PEFT + transformers, not TorchTune.** The adapter is what vLLM loads with
  ``--enable-lora`` (PEFT's ``adapter_config.json`` + ``adapter_model.safetensors``), the base is loaded
  by the same transformers the engine environment pins (requirements-llm.txt), and the tests' tiny Llama
  is a transformers model: one library stack from training to serving, no format conversion. TorchTune
  (Kubeflow Trainer's BuiltinTrainer) has recipes for a fixed list of model families and its own
  checkpoint format, and its maintainers stopped active development on 2025-07-15 (meta-pytorch/torchtune#2883); PEFT
  covers any ``transformers`` causal LM, including the tests' tiny one.
* **The loop is ours (a few lines of torch), not ``transformers.Trainer``**: checkpoint, resume and
  SIGTERM follow the platform's training contract (training/contract.py) exactly: a checkpoint is the
  adapter's weights, the optimizer and the RNG, then ``state.json`` naming it, written last, so a run
  killed at any instant resumes from the last complete step; SIGTERM stops at the next step boundary,
  checkpoints and exits 143. Batches are a function of (seed, step), so a resumed run sees the batches
  the uninterrupted one would have seen and ends with the same adapter.
* **Metrics**: loss and tokens/s, one JSON line per ``--log-every`` steps on stdout, all of them in
  the output's ``lora-run.json`` (the run's record, read by the gate), and pushed to the Pushgateway
  (``TRAIN_PUSHGATEWAY``) as ``mlplatform_training_lora_{loss,tokens_per_second,steps_completed}``.

Exit codes (training/contract.py): 0 trained; 2 bad data, arguments, base or checkpoint; 143 stopped by
SIGTERM (resumable).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llm import importer
from training import registry, storage

EXIT_OK, EXIT_USAGE, EXIT_PREEMPTED = 0, 2, 143
RUN_RECORD = "lora-run.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
STATE = "state.json"
PUSH_JOB = "mlplatform-training-lora"
LOSS_METRIC = "mlplatform_training_lora_loss"
TOKENS_METRIC = "mlplatform_training_lora_tokens_per_second"
STEPS_METRIC = "mlplatform_training_lora_steps_completed"
log = logging.getLogger("llm.finetune")


class FinetuneError(ValueError):
    """Bad data, arguments, base or checkpoint: the same on every retry. One line."""


@dataclass(frozen=True)
class LoraParams:
    """The run's hyperparameters (``training.params`` of the catalogue entry)."""

    steps: int = 100
    batch_size: int = 8
    seq_len: int = 64
    learning_rate: float = 2e-4  # the usual LoRA rate on a real LLM; the tests' random tiny Llama takes 1e-2
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    seed: int = 0
    checkpoint_every: int = 20
    log_every: int = 10

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "seq_len", "rank", "alpha", "checkpoint_every", "log_every"):
            if getattr(self, key) < 1:
                raise FinetuneError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not 0 <= self.dropout < 1 or self.learning_rate <= 0:
            raise FinetuneError(f"dropout must be in [0, 1) and learning_rate > 0, got {self.dropout}, {self.learning_rate}")

    def digest(self) -> str:
        """What must match for a checkpoint to be resumed (everything but the step count and logging)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("steps", "checkpoint_every", "log_every")}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class State:
    """What a checkpoint records beside the adapter and optimizer files (``state.json``, written last)."""

    step: int = 0
    tokens: int = 0
    train_seconds: float = 0.0
    losses: list[list[float]] = field(default_factory=list)  # [step, loss] every log_every steps
    checkpoint: str = ""
    base: dict = field(default_factory=dict)
    params_digest: str = ""
    data_digest: str = ""


# ---- the base, from the registry ----


def manifest_digest(manifest: dict) -> str:
    """The identity of a version's bytes: SHA-256 over its manifest's (path, sha256, size) list."""
    files = {k: [v["sha256"], v["size"]] for k, v in sorted(manifest["files"].items())}
    return "sha256:" + hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def base_identity(store: str, name: str, version: str) -> dict:
    """Name, version, digest, source and commit of an imported LLM version (RegistryError if it is not one)."""
    rec = importer.record(store, name, version)
    return {
        "model": name,
        "version": version,
        "digest": manifest_digest(registry.read_manifest(store, name, version)),
        "source": rec.get("source"),
        "commit": rec.get("commit"),
    }


def fetch_base(store: str, name: str, version: str, dest: Path) -> dict:
    """The base version into ``dest``, every file checked against its manifest; refused when rejected
    or not an imported LLM version. Returns its identity (``base_identity``)."""
    if (mark := registry.rejection(store, name, version)) is not None:
        raise FinetuneError(f"base {name}/{version} is rejected in {store} ({registry.describe_rejection(mark)}): not fine-tuned")
    ident = base_identity(store, name, version)
    registry.fetch(store, name, version, dest)
    refuse_quantized(dest, f"{name}/{version}")
    return ident


def refuse_quantized(base_dir: Path, what: str) -> None:
    """A quantized checkpoint (``quantization_config`` in its config.json: AWQ, GPTQ, ...) is not trained
    here: transformers loads it only with kernels the LoRA image lacks, and an adapter must be trained on
    the weights it serves with (the config rule refuses it at preview where a card knows the model; this
    catches a model no card knows)."""
    try:
        quant = json.loads((base_dir / "config.json").read_text()).get("quantization_config")
    except (OSError, ValueError):
        return  # transformers says what is wrong with the snapshot
    if quant:
        method = quant.get("quant_method", "?") if isinstance(quant, dict) else "?"
        raise FinetuneError(
            f"base {what} is a quantized checkpoint ({method}): LoRA trains on the unquantized model; import that one as the base"
        )


# ---- data ----


def read_texts(path: Path | str) -> list[str]:
    """A text set: ``.jsonl`` with a ``text`` field per line, else one example per non-empty line. A
    local file, or a URI of the store (``s3://...``: a set too large to commit with the model)."""
    try:
        raw = storage.read_text(str(path)) if "://" in str(path) else Path(path).read_text()
    except FileNotFoundError:
        raise FinetuneError(f"data {path}: no such file") from None
    except OSError as exc:
        raise FinetuneError(f"data {path}: {exc.strerror}") from None
    if str(path).endswith(".jsonl"):
        try:
            texts = [json.loads(line)["text"] for line in raw.splitlines() if line.strip()]
        except (ValueError, KeyError, TypeError) as exc:
            raise FinetuneError(f"data {path}: every line must be a JSON object with a 'text' field ({exc})") from None
    else:
        texts = [line.strip() for line in raw.splitlines() if line.strip()]
    if not texts:
        raise FinetuneError(f"data {path}: no examples")
    return texts


def data_digest(texts: list[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]


def blocks(tok, texts: list[str], seq_len: int):
    """The texts tokenized (each with EOS), concatenated and cut into ``seq_len`` blocks (a LongTensor)."""
    import torch

    ids: list[int] = []
    for t in texts:
        ids += tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    n = len(ids) // seq_len
    if n == 0:
        raise FinetuneError(f"the data has {len(ids)} tokens, fewer than one block of seq_len {seq_len}")
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


def batch_indices(n_blocks: int, batch_size: int, seed: int, step: int) -> list[int]:
    """The blocks of ``step``: a fresh seeded permutation per pass over the data, so a resumed run
    draws exactly the batches of an uninterrupted one."""
    import random

    per_pass = max(1, n_blocks // batch_size)
    epoch, k = divmod(step, per_pass)
    order = list(range(n_blocks))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    picked = order[k * batch_size : (k + 1) * batch_size]
    return picked if len(picked) == batch_size else (picked + order)[:batch_size]


# ---- model and checkpoint ----


def train_dtype(device: str):
    """The frozen base's dtype: float32 on the CPU (the tests' tiny Llama, bit for bit as before); on a GPU
    half precision, bfloat16 (the dtype of the platform's bases, Qwen2.5/Llama-3.1) or float16 where the
    GPU has no bf16 (a T4): a 7B in float32 is 30 GB, more than a 24 GB A10G/L4 holds."""
    import torch

    if device == "cpu":
        return torch.float32
    # including_emulation=False: torch reports bf16 "supported" on a T4 (sm75) by emulation otherwise
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def load_model(base_dir: Path, params: LoraParams, device: str | None = None):
    """The frozen base with a fresh LoRA adapter, and its tokenizer, on ``device`` (default: the GPU
    when there is one). On a GPU the base is loaded straight onto it in half precision (``train_dtype``;
    not through host RAM: the pod's memory is sized for vLLM, below a 7B's 15 GB), with gradient
    checkpointing (each decoder layer's activations recomputed in the backward pass: llm/fit.py
    ``lora_training_memory`` counts what remains) and no KV cache. The adapter's weights stay float32:
    peft 0.21.2's ``get_peft_model(autocast_adapter_dtype=True)`` (its default) upcasts bf16/fp16
    adapter weights "as this is typically required for stable training" (tuners_utils.py
    ``cast_adapter_dtype``), and LoRA's forward casts its input to them and its output back to the
    base's dtype (lora/layer.py ``Linear.forward``). No GradScaler: bf16 needs none; on an fp16 GPU the
    float32 adapter still trains, but tiny gradients may underflow (prefer a bf16 GPU). The loss is
    transformers' causal-LM loss: one float32 copy of the logits, nothing more kept."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(params.seed)
    tok = AutoTokenizer.from_pretrained(base_dir)
    if device == "cpu":
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    else:
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=train_dtype(device), device_map={"": device})
        base.config.use_cache = False
        # non-reentrant: the checkpointed layers' inputs need no grad of their own (torch's recommended mode)
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    cfg = LoraConfig(
        r=params.rank,
        lora_alpha=params.alpha,
        lora_dropout=params.dropout,
        target_modules=list(params.target_modules),
        task_type="CAUSAL_LM",
        bias="none",
    )
    return get_peft_model(base, cfg), tok


class Checkpoint:
    """``step-NNNNNN/`` (the adapter's safetensors + ``train.pt``: optimizer and RNG) then ``state.json``
    naming it, written last: a reader always finds a complete step. Local path, file:// or s3://."""

    def __init__(self, uri: str):
        self.uri = uri

    def state(self) -> State | None:
        try:
            return State(**json.loads(storage.read_text(storage.join(self.uri, STATE))))
        except FileNotFoundError:
            return None

    def save(self, model, opt, state: State) -> None:
        import torch
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        name = f"step-{state.step:06d}"
        with tempfile.TemporaryDirectory() as tmp:
            save_file(get_peft_model_state_dict(model), f"{tmp}/adapter.safetensors")
            torch.save({"optimizer": opt.state_dict(), "rng": torch.get_rng_state()}, f"{tmp}/train.pt")
            for f in ("adapter.safetensors", "train.pt"):
                storage.write_bytes(storage.join(self.uri, name, f), Path(tmp, f).read_bytes())
        state.checkpoint = name
        storage.write_bytes(storage.join(self.uri, STATE), json.dumps(asdict(state), sort_keys=True).encode())
        log.info("checkpoint: step %d -> %s", state.step, storage.join(self.uri, name))

    def restore(self, model, opt, state: State) -> None:
        import io

        import torch
        from peft import set_peft_model_state_dict
        from safetensors.torch import load

        weights = load(storage.read_bytes(storage.join(self.uri, state.checkpoint, "adapter.safetensors")))
        set_peft_model_state_dict(model, weights)
        # weights_only: tensors and plain containers, never arbitrary pickled code
        extra = torch.load(io.BytesIO(storage.read_bytes(storage.join(self.uri, state.checkpoint, "train.pt"))), weights_only=True)
        opt.load_state_dict(extra["optimizer"])
        torch.set_rng_state(extra["rng"])


def resume_state(ckpt: Checkpoint, base: dict, params: LoraParams, digest: str) -> State | None:
    """The checkpoint's state if it is this run's; a checkpoint of another base, data or parameters is refused."""
    state = ckpt.state()
    if state is None:
        return None
    theirs = (state.base.get("digest"), state.params_digest, state.data_digest)
    if theirs != (base["digest"], params.digest(), digest):
        raise FinetuneError(
            f"checkpoint {ckpt.uri} is of another run (base {state.base.get('model')}/{state.base.get('version')}, "
            f"params {state.params_digest}, data {state.data_digest}); this run: base {base['model']}/{base['version']}, "
            f"params {params.digest()}, data {digest}: use a fresh checkpoint directory"
        )
    return state


# ---- the run ----


class Stop:
    """SIGTERM (spot reclaim, preemption, node drain): stop at the next step boundary."""

    requested = False

    @classmethod
    def install(cls) -> None:
        def handler(signum, _frame):
            log.warning("received signal %s: stopping after the current step (checkpointed)", signum)
            cls.requested = True

        signal.signal(signal.SIGTERM, handler)


def push_metrics(gateway: str | None, name: str, step: int, loss: float, tps: float) -> None:
    """Loss, tokens/s and steps to the Pushgateway (``TRAIN_PUSHGATEWAY``), group {job, model}; a
    monitoring outage never fails a run (prometheus_client comes with the engine environment)."""
    if not gateway:
        return
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    reg = CollectorRegistry()
    for metric, doc, value in (
        (LOSS_METRIC, "Training loss of the LoRA run's last logged step.", loss),
        (TOKENS_METRIC, "Training tokens per second of the LoRA run so far (compute time).", tps),
        (STEPS_METRIC, "Optimizer steps completed by the LoRA run (resumed steps included).", step),
    ):
        Gauge(metric, doc, ["model"], registry=reg).labels(model=name).set(value)
    try:
        push_to_gateway(gateway, job=PUSH_JOB, grouping_key={"model": name}, registry=reg, timeout=10)
    except OSError as exc:
        log.warning("could not push metrics to %s: %s", gateway, exc)


def emit(state: State, seconds: float, gateway: str | None = None, name: str = "") -> None:
    step, loss = state.losses[-1]
    tps = state.tokens / state.train_seconds if state.train_seconds else 0.0
    print(json.dumps({"step": step, "loss": round(loss, 5), "tokens_per_s": round(tps, 1), "seconds": round(seconds, 3)}), flush=True)
    push_metrics(gateway, name, step, loss, tps)


def train_loop(model, opt, data, params: LoraParams, state: State, ckpt: Checkpoint, push: tuple[str | None, str] = (None, "")) -> bool:
    """Steps from ``state.step`` to ``params.steps``; False when stopped by SIGTERM (checkpointed)."""
    model.train()
    device = next(model.parameters()).device
    t0 = time.monotonic()
    while state.step < params.steps:
        idx = batch_indices(len(data), params.batch_size, params.seed, state.step)
        batch = data[idx].to(device)
        t = time.monotonic()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        state.step += 1
        state.tokens += batch.numel()
        state.train_seconds += time.monotonic() - t
        if state.step % params.log_every == 0 or state.step == params.steps:
            state.losses.append([state.step, float(loss.detach())])
            emit(state, time.monotonic() - t0, *push)
        if Stop.requested:
            ckpt.save(model, opt, state)
            return False
        if state.step % params.checkpoint_every == 0 and state.step < params.steps:
            ckpt.save(model, opt, state)
    return True


def write_adapter(model, out: Path, state: State, params: LoraParams, started: float) -> dict:
    """The adapter as vLLM and PEFT load it, plus the run's record (``lora-run.json``)."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    (out / "README.md").unlink(missing_ok=True)  # PEFT's model-card stub: not part of the adapter
    cfg_path = out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = f"{state.base['model']}/{state.base['version']}"  # not the run's temporary folder
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    record = {
        "base": state.base,
        "params": asdict(params),
        "data_digest": state.data_digest,
        "steps": state.step,
        "tokens": state.tokens,
        "train_seconds": round(state.train_seconds, 3),
        "tokens_per_s": round(state.tokens / state.train_seconds, 1) if state.train_seconds else None,
        "final_loss": state.losses[-1][1] if state.losses else None,
        "losses": state.losses,
        "wall_seconds": round(time.time() - started, 3),
    }
    (out / RUN_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True))
    return record


def run(
    store: str,
    base: str,
    base_version: str,
    data: Path | str,
    checkpoint: str,
    out: Path,
    params: LoraParams,
    push: tuple[str | None, str] = (None, ""),
) -> int:
    """The whole run: fetch + verify the base, resume or start, train, write the adapter. Returns an exit code.
    A run whose inputs (base version, params, data) already made a version of the adapter (``push[1]``,
    its name) trains nothing: the same seeded run again would make the same adapter (the Job is created
    anew when its base's pin moves and back, e.g. around a base canary that fails)."""
    started = time.time()
    Stop.install()
    texts = read_texts(data)
    if push[1] and (done := already_trained(store, push[1], base, base_version, params, data_digest(texts))):
        out.mkdir(parents=True, exist_ok=True)
        (out / ALREADY).write_text(json.dumps(done, sort_keys=True))
        print(json.dumps({"already_trained": done}), flush=True)
        return EXIT_OK
    with tempfile.TemporaryDirectory(prefix="lora-base-") as tmp:
        ident = fetch_base(store, base, base_version, Path(tmp))  # before torch loads: a bad base costs nothing
        import torch

        model, tok = load_model(Path(tmp), params)
        digest = data_digest(texts)
        ckpt = Checkpoint(checkpoint)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=params.learning_rate)
        state = resume_state(ckpt, ident, params, digest)
        if state is None:
            state = State(base=ident, params_digest=params.digest(), data_digest=digest)
        else:
            ckpt.restore(model, opt, state)
        print(json.dumps({"resumed_from": state.step, "base": f"{base}/{base_version}", "trainable": count_trainable(model)}), flush=True)
        if not train_loop(model, opt, blocks(tok, texts, params.seq_len), params, state, ckpt, push):
            return EXIT_PREEMPTED
        ckpt.save(model, opt, state)
        write_adapter(model, out, state, params, started)
    return EXIT_OK


ALREADY = "already-trained.json"  # in the run's output instead of an adapter: the gate has nothing to do
ADAPTER_RECORD = "lora-adapter.json"  # a published adapter version's record (llm/lora_gate.py META)


def already_trained(store: str, name: str, base: str, base_version: str, params: LoraParams, digest: str) -> dict | None:
    """The version of ``name`` a run with these inputs published before (rejected or not: the same run
    again would be judged the same), or None. Read from each version's lora-adapter.json."""
    wanted = json.loads(json.dumps(asdict(params)))  # as the record holds them (lists, not tuples)
    for version in reversed(registry.versions(store, name)):
        try:
            meta = json.loads(storage.read_text(storage.join(registry.model_root(store, name), version, ADAPTER_RECORD)))
        except (FileNotFoundError, ValueError):
            continue
        run = meta.get("run") or {}
        b = run.get("base") or {}
        same = (b.get("model"), b.get("version"), run.get("params"), run.get("data_digest")) == (base, base_version, wanted, digest)
        if same:
            rejected = registry.rejection(store, name, version) is not None
            return {"version": version, "rejected": rejected}
    return None


# What the run imports besides the platform's code: the engine environment (requirements-llm.txt).
ENGINE_MODULES = ("torch", "transformers", "peft", "safetensors")


def missing_modules(names: tuple[str, ...] = ENGINE_MODULES) -> list[str]:
    """The engine modules this Python lacks: checked before the base is fetched, so that an image
    without PEFT fails at once, not after minutes of download (and is not retried: exit 2)."""
    import importlib.util

    return [n for n in names if importlib.util.find_spec(n) is None]


def count_trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llm.finetune", description=__doc__.split("\n\n")[0])
    for flag in ("--store", "--base", "--base-version", "--checkpoint"):
        p.add_argument(flag, required=True)
    p.add_argument("--data", required=True, help="the training set: a file, or s3://... in the store")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--name", default=os.environ.get("TRAIN_MODEL_NAME", "adapter"), help="the adapter's name (metrics label)")
    p.add_argument(
        "--pushgateway", default=os.environ.get("TRAIN_PUSHGATEWAY"), help="host:port of the Pushgateway (default TRAIN_PUSHGATEWAY)"
    )
    defaults = LoraParams()
    for key, value in asdict(defaults).items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, tuple):
            p.add_argument(flag, default=",".join(value))
        else:
            p.add_argument(flag, type=type(value), default=value)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    a = _parser().parse_args(argv)
    try:
        kw = {k: getattr(a, k) for k in asdict(LoraParams())}
        kw["target_modules"] = tuple(m for m in str(kw["target_modules"]).split(",") if m)
        params = LoraParams(**kw)
        if missing := missing_modules(ENGINE_MODULES):  # before the base's download
            raise FinetuneError(f"this Python has no {', '.join(missing)} (the engine environment: requirements-llm.txt, peft==0.21.2)")
        return run(a.store, a.base, a.base_version, a.data, a.checkpoint, a.out, params, (a.pushgateway, a.name))
    except (FinetuneError, registry.RegistryError, storage.BadURI) as exc:
        print(f"lora: REFUSED: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
