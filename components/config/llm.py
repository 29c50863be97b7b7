"""Stack config of a model served by vLLM (``runtime: vllm``): its ``llm`` section and that section's rules,
validated with the rest of the stack config (components/config/schema.py holds it as ``ModelConfig.llm``,
components/config/rules.py runs ``llm_rules``). No Pulumi.

Every vLLM option here maps to a ``vllm serve`` flag of the pinned version (``VLLM_VERSION``); tests/unit/test_llm_service.py checks each rendered flag against the list derived
from vLLM 0.33.0's own argument parser (../shared/reference/vllm/0.33.0/serve-flags.txt).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

# The vLLM release the runtime pins (image tag) and every flag/metric name is checked against.
VLLM_VERSION = "0.33.0"

# A Hugging Face repo id ("org/name"), or weights in an S3 prefix (the stack's model store).
HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
S3_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?$")
CRON_FIELD = re.compile(r"^[0-9*,/-]+$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
# Stacks that serve users pin the weights' revision; prod pins a commit (a branch or tag can move).
PINNED_ENVIRONMENTS = ("staging", "prod")


class _Strict(BaseModel):
    # Same conventions as components/config/schema.py: camelCase keys, unknown keys rejected, immutable.
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)


class AwakeSchedule(_Strict):
    """When a non-prod GPU model runs; outside this window it scales to zero (KEDA cron trigger)."""

    timezone: str = Field(default="UTC", description="IANA time zone of `start`/`end`, e.g. `Europe/Paris`")
    start: str = Field(default="0 8 * * 1-5", description="5-field cron: when the model wakes up")
    end: str = Field(default="0 20 * * 1-5", description="5-field cron: when it goes back to zero replicas")
    replicas: int = Field(default=1, ge=1, le=100, description="replicas while awake (the queue trigger may add more)")

    @field_validator("start", "end")
    @classmethod
    def _cron(cls, v: str) -> str:
        parts = v.split()
        if len(parts) != 5 or not all(CRON_FIELD.match(p) for p in parts):
            raise ValueError(f"must be a 5-field cron expression like '0 8 * * 1-5' (got {v!r})")
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"must be an IANA time zone like 'Europe/Paris' (got {v!r})") from None
        return v


class LlmResources(_Strict):
    cpu: str = Field(default="3", pattern=r"^[0-9]+(\.[0-9]+)?m?$", description="CPU request")
    memory: str = Field(default="10Gi", pattern=r"^[0-9]+(Mi|Gi)$", description="memory request (weights are staged through RAM)")
    memory_limit: str = Field(default="13Gi", pattern=r"^[0-9]+(Mi|Gi)$", description="memory limit, including `/dev/shm` (2 GiB per GPU)")


# An API client's name: a key of the Secret the gateway reads the keys from, and the value of the
# client-id header its rate limit counts by.
CLIENT_ID = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


class LlmRateLimit(_Strict):
    """Requests per client the entry point admits before answering 429 (Envoy Gateway's local rate
    limit: counted by each Envoy replica, so the stack admits up to this times its proxy replicas)."""

    requests: int = Field(default=60, ge=1, le=1_000_000, description="requests per `unit` per API client (per route without keys)")
    unit: Literal["Second", "Minute", "Hour"] = Field(default="Minute", description="the rate limit's interval")


class LlmConfig(_Strict):
    """One open-weights model on vLLM. Defaults fit a 1-GPU 24 GB node (g5/g6.xlarge)."""

    source: str = Field(
        description="Hugging Face id (`Qwen/Qwen2.5-7B-Instruct`: imported into the store as a registry version where the stack imports, "
        "served from that version) or `s3://<store bucket>/models/<name>/...` with raw weights (streamed by vLLM)"
    )
    revision: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._/-]{1,100}$", description="Hugging Face branch, tag or commit to pin")
    served_model_name: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$", description="the `model` clients send; unset: the catalogue name"
    )
    pool: str | None = Field(default=None, description="GPU pool to run on; unset: the first whose nodes have `gpus` GPUs")
    gpus: int = Field(default=1, ge=1, le=8, description="GPUs per replica; > 1 is tensor parallelism, within one node of the pool")
    max_model_len: int = Field(
        default=4096, ge=256, le=1_048_576, description="context length (prompt + output tokens), vLLM `--max-model-len`"
    )
    # vLLM's MaxLoRARanks (vllm/config/lora.py, read in the 0.32.0 install): the values --max-lora-rank accepts.
    max_lora_rank: Literal[1, 8, 16, 32, 64, 128, 256, 320, 512] = Field(
        default=16,
        description="vLLM `--max-lora-rank`: the largest rank of this model's LoRA adapters (entries with `adapterOf` it); "
        "vLLM sizes its adapter buffers by it (llm/fit.py counts them)",
    )
    gpu_memory_utilization: float = Field(default=0.9, gt=0.1, le=0.98, description="share of GPU memory for weights + KV cache")
    max_num_seqs: int | None = Field(default=None, ge=1, le=4096, description="concurrent sequences per replica; unset: vLLM's default")
    dtype: Literal["auto", "half", "float16", "bfloat16", "float32"] = Field(default="auto", description="weights/activations dtype")
    # A subset of vLLM 0.33.0's QuantizationMethods (vllm/model_executor/layers/quantization/__init__.py).
    quantization: Literal["awq", "awq_marlin", "gptq", "gptq_marlin", "fp8", "compressed-tensors"] | None = Field(
        default=None, description="quantization of a quantized checkpoint; unset: from the model's config"
    )
    enable_prefix_caching: bool = Field(default=True, description="reuse the KV cache of shared prompt prefixes")
    enforce_eager: bool = Field(default=False, description="skip CUDA-graph capture: faster start, slower decode")
    replicas: int = Field(default=1, ge=0, le=100, description="replicas at creation (KEDA owns the count afterwards)")
    min_replicas: int = Field(default=1, ge=0, le=100, description="KEDA lower bound; 0 only with `awake`")
    max_replicas: int = Field(default=2, ge=1, le=100, description="KEDA upper bound; must fit the pool's GPUs at its max")
    waiting_per_replica: int = Field(default=4, ge=1, le=10_000, description="KEDA target: requests waiting per replica")
    awake: AwakeSchedule | None = Field(default=None, description="non-prod: the model runs only in this window, zero replicas outside")
    cache_gi_b: int = Field(default=50, ge=5, le=16384, alias="cacheGiB", description="per-replica volume caching the weights (GiB)")
    startup_seconds: int = Field(
        default=1800, ge=60, le=7200, description="allowance for download + load + CUDA graphs before liveness counts"
    )
    resources: LlmResources = Field(default=LlmResources(), description="container CPU/memory (GPUs: `gpus`)")
    api_clients: list[str] = Field(
        default=["default"],
        min_length=1,
        max_length=50,
        description="with `serving.apiKey`: one generated key per client (stack output `llmApiKeys`, a secret), each rate-limited apart",
    )
    rate_limit: LlmRateLimit = Field(default=LlmRateLimit(), description="requests admitted per API client (per route without keys)")

    @field_validator("api_clients")
    @classmethod
    def _clients(cls, v: list[str]) -> list[str]:
        for c in v:
            if not re.match(CLIENT_ID, c):
                raise ValueError(f"client names are lowercase letters, digits and '-' (got {c!r})")
        if len(set(v)) != len(v):
            raise ValueError("client names must be unique")
        return v

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        if not (HF_ID.match(v) or S3_URI.match(v)):
            raise ValueError(f"must be a Hugging Face id like 'Qwen/Qwen2.5-1.5B-Instruct' or an s3:// prefix (got {v!r})")
        return v

    @property
    def from_store(self) -> bool:
        return self.source.startswith("s3://")


def llm_rules(llm: LlmConfig, key: str, pools: list[Any], has_gpus: bool, environment: str, adapters: int = 0) -> Iterator[tuple[str, str]]:
    """Cross-field rules; ``pools`` are config.GpuPool (``name``, ``gpus_per_node``); ``adapters``: the
    stack's LoRA adapters of this model (its vLLM's ``--max-loras``). Yields (key path, what is expected).
    No GPU request is accepted that no node of the stack can satisfy."""
    if not has_gpus:
        yield f"{key}.runtime", "a vllm model needs GPUs: add a gpuPools entry (EKS) or set cluster.hasGpus"
        return
    if llm.min_replicas > llm.max_replicas:
        yield f"{key}.llm.minReplicas", f"must be <= maxReplicas (got {llm.min_replicas} > {llm.max_replicas})"
    if not llm.min_replicas <= llm.replicas <= llm.max_replicas:
        yield f"{key}.llm.replicas", f"must be between minReplicas and maxReplicas (got {llm.replicas})"
    model = key.removeprefix("models.")
    if llm.from_store and f"/models/{model}/" not in llm.source + "/":
        # The model's IAM role reads only its own prefix of the store (components/services/artifact_store.py).
        yield f"{key}.llm.source", f"weights in the model store go under models/{model}/ (e.g. s3://<store bucket>/models/{model}/weights/)"
    yield from llm_schedule_rules(llm, key, environment)
    yield from llm_revision_rules(llm, key, environment)
    if pools:
        yield from llm_pool_rules(llm, key, pools, adapters)
    elif llm.pool is not None:
        yield f"{key}.llm.pool", "no gpuPools on this stack (cluster.hasGpus): leave pool unset"


def llm_schedule_rules(llm: LlmConfig, key: str, environment: str) -> Iterator[tuple[str, str]]:
    """When the model runs: at zero replicas only a schedule wakes it; prod never sleeps."""
    if llm.min_replicas == 0 and llm.awake is None:
        # At zero replicas there is no vLLM to report its queue: nothing but a schedule wakes it.
        yield f"{key}.llm.minReplicas", "0 needs an awake schedule (llm.awake), or the model never starts again"
    if environment == "prod" and llm.awake is not None:
        yield f"{key}.llm.awake", "prod models do not sleep: remove the schedule"
    if environment == "prod" and llm.min_replicas < 2:
        # The PDB allows one pod down at a time (maxUnavailable 1): with one replica a node drain
        # (an upgrade, the autoscaler) takes the only vLLM, and a new one needs minutes to load.
        yield f"{key}.llm.minReplicas", "prod needs >= 2 replicas: a node drain takes one at a time (PDB maxUnavailable 1)"


def llm_revision_rules(llm: LlmConfig, key: str, environment: str) -> Iterator[tuple[str, str]]:
    """The weights a user-facing stack serves are a pinned revision: what the import recorded
    (llm/importer.py) and what promotion checks a version against."""
    if llm.from_store or environment not in PINNED_ENVIRONMENTS:
        return
    if llm.revision is None:
        yield (
            f"{key}.llm.revision",
            f"required on {environment}: pin the Hugging Face revision the weights are imported at (prod: a 40-hex commit)",
        )
    elif environment == "prod" and not COMMIT.match(llm.revision):
        yield f"{key}.llm.revision", f"prod pins a 40-hex commit hash, not a branch or tag that can move (got {llm.revision!r})"


def llm_fit_rules(llm: LlmConfig, key: str, pool: Any, adapters: int = 0) -> Iterator[tuple[str, str]]:
    """Weights + KV cache (+ the LoRA buffers where it serves ``adapters``) fit one replica's GPUs
    (llm/fit.py), where a committed card (llm/cards/) knows the model's shape; otherwise the import
    checks weights + KV cache from the snapshot's own config.json."""
    from components.config import capacity
    from llm import fit

    shape = None if llm.from_store else fit.card_shape(llm.source)
    mib = capacity.pool_gpu_memory_mib(pool)
    if shape is None or mib == 0:
        return
    seqs = llm.max_num_seqs or 1
    lora = fit.lora_buffer_bytes(fit.card(llm.source)["config"], llm.max_lora_rank, adapters, llm.gpus) if adapters else 0
    result = fit.check(shape, llm.max_model_len, seqs, mib, llm.gpu_memory_utilization, llm.gpus, lora)
    if result.fits:
        return
    hints = fit.suggestions(
        shape, llm.max_model_len, seqs, mib, llm.gpu_memory_utilization, llm.gpus, pool.gpus_per_node, capacity.gpu_catalogue(), lora
    )
    yield (
        f"{key}.llm",
        f"{llm.source} does not fit GPU pool {pool.name!r} ({llm.gpus} x {mib / 1024:.1f} GiB x gpuMemoryUtilization "
        f"{llm.gpu_memory_utilization:g}): {result.numbers()} ({llm.max_model_len} tokens x {seqs} sequences); "
        f"would fit: {'; or '.join(hints) or 'nothing in the instance catalogue'}",
    )


def llm_pool_rules(llm: LlmConfig, key: str, pools: list[Any], adapters: int = 0) -> Iterator[tuple[str, str]]:
    """Where the model runs: a named pool exists, a replica's GPUs fit one node, its max replicas fit the pool."""
    names = [p.name for p in pools]
    if llm.pool is not None and llm.pool not in names:
        yield f"{key}.llm.pool", f"no GPU pool named {llm.pool!r} (pools: {', '.join(names)})"
        return
    chosen = choose_pool(llm, pools)
    if chosen is None:
        counts = {p.name: p.gpus_per_node for p in pools if llm.pool in (None, p.name)}
        yield (
            f"{key}.llm.gpus",
            f"{llm.gpus} GPUs per replica fit no node of the GPU pools {counts} (tensor parallelism stays within one node)",
        )
    elif llm.max_replicas * llm.gpus > chosen.max * chosen.gpus_per_node:
        capacity = chosen.max * chosen.gpus_per_node
        yield (
            f"{key}.llm.maxReplicas",
            f"{llm.max_replicas} replicas x {llm.gpus} GPUs exceed GPU pool {chosen.name!r} ({capacity} GPUs at its max): they could never schedule",
        )
    if chosen is not None:
        yield from llm_fit_rules(llm, key, chosen, adapters)


def choose_pool(llm: LlmConfig, pools: list[Any]) -> Any | None:
    """The pool a model runs on: the named one, else the first with enough GPUs per node."""
    for p in pools:
        if llm.pool in (None, p.name) and p.gpus_per_node >= llm.gpus:
            return p
    return None
