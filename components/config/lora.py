"""Stack config of a LoRA adapter (issue 26, docs/lora.md): a catalogue entry with ``adapterOf: <LLM
entry>`` and, where the stack fine-tunes it, ``training: {kind: lora, ...}``; the section's models and
its rules (one line each, naming the key), run with the rest of the stack config
(components/config/rules.py ``model_rules``). No Pulumi.

``training`` is a tagged union on ``kind``: absent is a TF/ONNX training run (``TrainingConfig``),
``lora`` this section. pydantic puts the branch's tag in an error's location (``training.lora.params``);
``TRAINING_BRANCHES`` lets components/config/validation.py take it out of the key path it reports.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

S3_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[^\s]+$")
REPO_FILE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)+$")
# The committed data files travel to the Job in one ConfigMap (components/models/lora_job.py): below
# Kubernetes' 1 MiB object limit, with room for the keys. Larger sets: s3:// in the stack's store.
MAX_COMMITTED_DATA_BYTES = 900 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)


class LoraParams(_Strict):
    """The run's hyperparameters: llm/finetune.py's flags (``LoraParams``)."""

    steps: int = Field(default=200, ge=1, le=1_000_000, description="optimizer steps (a change starts a new run)")
    batch_size: int = Field(default=8, ge=1, le=4096, description="sequences per step")
    seq_len: int = Field(default=512, ge=8, le=131_072, description="tokens per training sequence (the data is cut into blocks of it)")
    learning_rate: float = Field(default=2e-4, gt=0, le=1, description="AdamW learning rate")
    rank: int = Field(default=8, ge=1, le=512, description="LoRA rank r; at most the base's `llm.maxLoraRank`")
    alpha: int = Field(default=16, ge=1, le=4096, description="LoRA alpha (the update is scaled by alpha / rank)")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="LoRA dropout")
    target_modules: list[str] = Field(
        default=["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        description="the base's linear layers that get an adapter (module names of the transformers model)",
    )

    @field_validator("target_modules")
    @classmethod
    def _modules(cls, v: list[str]) -> list[str]:
        for m in v:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_.]*$", m):
                raise ValueError(f"module names are Python identifiers like 'q_proj' (got {m!r})")
        return v


class LoraGate(_Strict):
    """The evaluation gate (llm/lora_gate.py): held-out perplexity against the base and the champion."""

    min_improvement: float = Field(
        default=0.05, ge=0, lt=1, description="the adapter's held-out perplexity must be this much lower than the base's alone"
    )
    champion_margin: float = Field(
        default=0.02, ge=0, lt=1, description="and at most this much higher than the champion adapter's (same base version)"
    )


class LoraTrainingConfig(_Strict):
    """A LoRA fine-tuning run of an adapter entry (``adapterOf``): a queued GPU Job
    (components/models/lora_job.py) that trains on the base's served version and publishes a version
    only when the gate passes."""

    kind: Literal["lora"] = Field(description="`lora`: fine-tune this adapter (absent: a TF/ONNX training run)")
    data: str = Field(
        description="training set: a file committed with the model (`models/<name>/train.txt`; one example a line, or `.jsonl` "
        "with `text`) or `s3://<store bucket>/models/<name>/...`"
    )
    heldout: str = Field(
        description="held-out set the gate measures perplexity on: a file committed with the model (`models/<name>/heldout.txt`)"
    )
    gpus: int = Field(default=1, ge=1, le=8, description="GPUs of the run (one pod); must fit one node of a GPU pool")
    params: LoraParams = Field(default=LoraParams(), description="hyperparameters (llm/finetune.py)")
    gate: LoraGate = Field(default=LoraGate(), description="evaluation gate (llm/lora_gate.py)")
    active_deadline_seconds: int = Field(default=6 * 3600, ge=600, le=7 * 86400, description="hard time limit per run")

    @field_validator("data", "heldout")
    @classmethod
    def _where(cls, v: str, info: Any) -> str:
        if S3_URI.match(v) and info.field_name == "data":
            return v
        data = info.field_name == "data"
        if not REPO_FILE.match(v) or ".." in v.split("/"):
            example, also = ("train", " or an s3:// URI") if data else ("heldout", " (the gate's set is reviewed with the model)")
            raise ValueError(f"must be a file committed in the project, like 'models/support-bot/{example}.txt'{also} (got {v!r})")
        if not _project_file(v).is_file():
            raise ValueError(
                f"{v} not found in the project (commit it with the model" + (", or use an s3:// URI in the store)" if data else ")")
            )
        return v

    def committed(self) -> dict[str, str]:
        """The repo files of the run ({'data'|'heldout': path}): mounted into the Job from a ConfigMap."""
        return {k: getattr(self, k) for k in ("data", "heldout") if not getattr(self, k).startswith("s3://")}


# ``training``'s branches by tag (the tag pydantic reports in an error's location).
TRAINING_LORA = "lora"
TRAINING_TF = "tensorflow"


def training_tag(value: Any) -> str:
    """The branch of ``training``: any ``kind`` key is the LoRA section (whose ``kind`` must then be
    ``lora``: a wrong value is reported there, not as an unknown key of a TF run)."""
    if isinstance(value, dict):
        return TRAINING_LORA if "kind" in value else TRAINING_TF
    return TRAINING_LORA if isinstance(value, LoraTrainingConfig) else TRAINING_TF


# ---- rules ----

Problems = Iterator[tuple[str, str]]


def adapter_base_rules(models: dict[str, Any], key: str, model: Any) -> Problems:
    """``adapterOf`` names a servable base: a ``runtime: vllm`` entry of this stack, not an adapter,
    whose weights are a pinned Hugging Face revision (a registry version the adapter is trained on)."""
    base_name = model.adapter_of
    if model.runtime != "vllm":
        yield f"{key}.adapterOf", f"only for runtime 'vllm' (a LoRA adapter of an LLM entry; this model's runtime is {model.runtime!r})"
        return
    if model.llm is not None:
        yield (
            f"{key}.llm",
            f"an adapter is served by its base's vLLM with the base's llm settings (models.{base_name}.llm): remove this section",
        )
    base = models.get(base_name)
    if base is None:
        names = ", ".join(n for n, m in models.items() if m.runtime == "vllm" and m.adapter_of is None) or "none"
        yield f"{key}.adapterOf", f"no model {base_name!r} on this stack (vllm models: {names})"
    elif base.adapter_of is not None:
        yield f"{key}.adapterOf", f"{base_name!r} is itself an adapter (of {base.adapter_of!r}): name the LLM entry it adapts"
    elif base.runtime != "vllm":
        yield f"{key}.adapterOf", f"{base_name!r} is a {base.runtime} model: an adapter's base is a `runtime: vllm` entry"
    elif base.llm is None:
        return  # the base's own error says its llm section is missing; nothing to add here
    elif base.llm.from_store or base.llm.revision is None:
        yield (
            f"{key}.adapterOf",
            f"base {base_name!r} has no pinned revision (models.{base_name}.llm.revision): an adapter is trained on the exact "
            "registry version of a pinned Hugging Face import",
        )


def adapter_serving_rules(key: str, model: Any) -> Problems:
    """An adapter has no server or route of its own: only the version its base serves is its own."""
    for field in sorted(model.serving.model_fields_set - {"version"}):
        alias = type(model.serving).model_fields[field].alias or field
        yield f"{key}.serving.{alias}", f"an adapter is served by its base's vLLM and route: set it on models.{model.adapter_of}.serving"


def lora_training_rules(cfg: Any, key: str, model: Any) -> Problems:
    """A fine-tuning run this stack does: on an adapter, not on prod, a rank the base's vLLM serves,
    GPUs that fit a node and the queue (``lora_gpu_rules``), an unquantized base and a run that fits one GPU
    (``lora_base_rules``), data in the adapter's own prefix of the store."""
    t = model.training
    name = key.removeprefix("models.")
    if model.adapter_of is None:
        yield f"{key}.training.kind", "lora fine-tunes an adapter: set adapterOf (the LLM entry of this stack it adapts)"
        return
    base = cfg.models.get(model.adapter_of)
    if cfg.environment == "prod":
        yield f"{key}.source", "prod never trains: receive the adapter from the stack that validated it (e.g. source: {stack: staging})"
    if base is not None and base.llm is not None and t.params.rank > base.llm.max_lora_rank:
        yield (
            f"{key}.training.params.rank",
            f"{t.params.rank} is more than the base's llm.maxLoraRank ({base.llm.max_lora_rank}, vLLM --max-lora-rank of "
            f"models.{model.adapter_of}): lower the rank or raise maxLoraRank",
        )
    yield from lora_gpu_rules(cfg, key, t.gpus)
    if base is not None and base.llm is not None and not base.llm.from_store:
        yield from lora_base_rules(cfg, key, model.adapter_of, base.llm, t)
    for field in ("data", "heldout"):
        uri = getattr(t, field)
        if uri.startswith("s3://") and f"/models/{name}/" not in uri:
            yield (
                f"{key}.training.{field}",
                f"the run reads only the adapter's own prefix of the store: s3://<store bucket>/models/{name}/...",
            )
    size = sum(_project_file(p).stat().st_size for p in t.committed().values())
    if size > MAX_COMMITTED_DATA_BYTES:
        yield (
            f"{key}.training.data",
            f"the committed data and held-out sets hold {size} bytes, more than {MAX_COMMITTED_DATA_BYTES} (one ConfigMap): put them in the store (s3://)",
        )


def lora_gpu_rules(cfg: Any, key: str, gpus: int) -> Problems:
    """The run's pod fits one node of the GPU pools, and the GPUs training may hold (the pools at their
    max less what LLM serving keeps, and ``queue.gpuQuota``): else it would wait in the queue forever
    (the TF runs' rule, components/config/rules.py ``training_fit_rules``)."""
    from components.config.capacity import GPU_COUNT, training_gpu_capacity

    pools = cfg.gpu_pools
    if not pools or not all(it in GPU_COUNT for p in pools for it in p.instance_types):
        return
    largest = max(p.gpus_per_node for p in pools)
    if gpus > largest:
        yield f"{key}.training.gpus", f"the run's GPUs must fit one node: the largest GPU pool instance has {largest} (got gpus={gpus})"
    elif gpus > (capacity := training_gpu_capacity(cfg, gpus)):
        yield (
            f"{key}.training.gpus",
            f"{gpus} GPUs, more than training may hold on the pools that fit the run ({capacity}, after LLM serving)",
        )
    elif cfg.queue.gpu_quota is not None and gpus > cfg.queue.gpu_quota:
        yield f"{key}.training.gpus", f"{gpus} GPUs, more than queue.gpuQuota ({cfg.queue.gpu_quota}): it would wait forever"


def quantization_of(llm: Any) -> str | None:
    """The quantization of an LLM entry's weights: its ``llm.quantization``, else its committed card's
    ``quantization_config`` (llm/fit.py reads the same card); None for an unquantized checkpoint."""
    from llm import fit

    if llm.quantization is not None:
        return llm.quantization
    card = fit.card(llm.source)
    q = (card or {}).get("config", {}).get("quantization_config")
    if not q:
        return None
    bits = fit.shape_of(card["config"]).quant_bits
    return str(q.get("quant_method", "quantized")) + (f" {bits}-bit" if bits else "")


def lora_base_rules(cfg: Any, key: str, base_name: str, llm: Any, t: LoraTrainingConfig) -> Problems:
    """The run trains on an unquantized base (the LoRA image loads it with transformers + PEFT: no AWQ/GPTQ
    kernels, and an adapter is served on the very weights it was trained on), and its peak GPU memory
    (llm/fit.py ``lora_training_memory``, from the base's card) fits one GPU of every pool it may land on."""
    from components.config import capacity
    from llm import fit

    if (quant := quantization_of(llm)) is not None:
        yield (
            f"{key}.adapterOf",
            f"base {base_name!r} is a quantized checkpoint ({llm.source}, {quant}): LoRA trains on an unquantized base "
            f"(transformers + PEFT in the LoRA image, no {quant.split()[0]} kernels): serve the unquantized model on "
            f"models.{base_name}.llm.source, or this adapter cannot be trained here (remove its training)",
        )
        return
    card = fit.card(llm.source)
    pools = [p for p in cfg.gpu_pools if p.gpus_per_node >= t.gpus and all(it in capacity.GPU_COUNT for it in p.instance_types)]
    if card is None or not pools:
        return
    pool = min(pools, key=capacity.pool_gpu_memory_mib)
    have = capacity.pool_gpu_memory_mib(pool) * 2**20
    p = t.params
    need = fit.lora_training_memory(card["config"], p.batch_size, p.seq_len, p.rank, p.target_modules)
    if need.total <= have:
        return
    fits = [b for b in range(p.batch_size - 1, 0, -1) if _run_bytes(card, p, b) <= have]
    hint = f"batchSize {fits[0]} fits" if fits else "not even batchSize 1 fits: lower seqLen"
    yield (
        f"{key}.training.params",
        f"the run on {llm.source} needs ~{need.total / fit.GIB:.1f} GiB of GPU memory, more than one GPU of pool {pool.name!r} "
        f"({have / fit.GIB:.1f} GiB): {need.numbers()} (batchSize {p.batch_size} x seqLen {p.seq_len}): lower batchSize or seqLen ({hint})",
    )


def _run_bytes(card: dict, p: LoraParams, batch_size: int) -> int:
    from llm import fit

    return fit.lora_training_memory(card["config"], batch_size, p.seq_len, p.rank, p.target_modules).total


def _project_file(rel: str) -> Any:
    from components.config.schema import PROJECT_ROOT

    return PROJECT_ROOT / rel
