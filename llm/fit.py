"""Does a model fit the GPUs of one replica? Weights + KV cache against GPU memory x gpuMemoryUtilization.
Standard library only: the config rules (components/config/llm.py, at preview), the importer (at import,
from the snapshot's own config.json) and the tests share it.

The shape comes from a Hugging Face ``config.json`` (dense decoder families: Llama, Mistral, Qwen2):

* KV cache per token = layers x KV heads x head dim x 2 (K and V) x KV dtype bytes (the model's dtype;
  vLLM's ``--kv-cache-dtype auto``);
* weights = the bytes of the ``*.safetensors`` files when known (the import records them), else the
  parameter count computed from the shape x dtype bytes; a quantized checkpoint (``quantization_config``
  with ``bits``/``group_size``, AWQ/GPTQ) counts its linear layers at ``bits`` plus one fp16 scale and
  one packed zero point per group, and its embeddings at 16 bits;
* what one replica needs: weights + KV for ``max_model_len`` tokens x ``seqs`` sequences, where
  ``seqs`` is ``maxNumSeqs`` when the stack sets it (the concurrency it promises at full context) and 1
  otherwise: vLLM refuses to start when the KV cache cannot hold one sequence of ``--max-model-len``
  (vllm/v1/core/kv_cache_utils.py, check_enough_kv_cache_memory) and admits further sequences only as
  blocks free up;
* what a replica has: per GPU, its memory x ``gpuMemoryUtilization`` less ``OVERHEAD_GIB`` (the
  activation peak of vLLM's profiling run, CUDA graphs and the CUDA context, which vLLM takes from the
  same budget; an estimate, about 1 GiB for 7-8B models at the default batch), times the
  tensor-parallel GPUs (weights and KV heads are split across them).

Memory figures are GiB (2**30 bytes). Mixture-of-experts configs are not estimated from the shape (their
weights are the recorded bytes of an import or nothing).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

GIB = 2**30
OVERHEAD_GIB = 1.0
DTYPE_BYTES = {"float32": 4, "float16": 2, "half": 2, "bfloat16": 2, "float": 4}
TP_SIZES = (1, 2, 4, 8)


@dataclass(frozen=True)
class ModelShape:
    layers: int
    kv_heads: int
    head_dim: int
    dtype: str  # the KV cache's (and unquantized weights') dtype
    params: int
    weights_bytes: int
    quant_bits: int | None = None

    @property
    def kv_bytes_per_token(self) -> int:
        return self.layers * self.kv_heads * self.head_dim * 2 * DTYPE_BYTES[self.dtype]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelShape:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _dtype(config: dict) -> str:
    dt = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    return dt if dt in DTYPE_BYTES else "bfloat16"


def param_counts(config: dict) -> tuple[int, int]:
    """(linear-layer parameters, other parameters: embeddings, norms, biases) of a dense decoder."""
    h, layers = config["hidden_size"], config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    hd = config.get("head_dim") or h // heads
    inter, vocab = config["intermediate_size"], config["vocab_size"]
    q, k = heads * hd, kv * hd
    linear = layers * (h * q + 2 * h * k + q * h + 3 * h * inter)
    # Qwen2 has q/k/v biases (config has no attention_bias key); Llama/Mistral none unless the key says so.
    bias = config.get("attention_bias", config.get("model_type") == "qwen2")
    other = vocab * h * (1 if config.get("tie_word_embeddings") else 2) + layers * (2 * h + ((q + 2 * k) if bias else 0)) + h
    return linear, other


def weights_estimate(config: dict) -> tuple[int, int, int | None]:
    """(parameters, weight bytes, quantization bits or None) from the shape alone."""
    if config.get("num_local_experts") or config.get("num_experts"):
        raise ValueError("a mixture-of-experts config: its weights are not estimated from the shape; import it to record them")
    linear, other = param_counts(config)
    q = config.get("quantization_config") or {}
    bits = q.get("bits") or q.get("w_bit")
    if bits:
        group = q.get("group_size") or q.get("q_group_size") or 128
        per_param = bits / 8 + 2 / group + bits / 8 / group
        return linear + other, math.ceil(linear * per_param + other * 2), int(bits)
    return linear + other, (linear + other) * DTYPE_BYTES[_dtype(config)], None


def shape_of(config: dict, weights_bytes: int | None = None) -> ModelShape:
    """The shape of a Hugging Face ``config.json``; ``weights_bytes`` (the safetensors on disk) wins over the estimate."""
    heads = config["num_attention_heads"]
    if weights_bytes is None:
        params, estimate, bits = weights_estimate(config)
    else:
        params, estimate, bits = _params_or_zero(config), weights_bytes, _bits(config)
    return ModelShape(
        layers=config["num_hidden_layers"],
        kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or config["hidden_size"] // heads,
        dtype=_dtype(config),
        params=params,
        weights_bytes=estimate,
        quant_bits=bits,
    )


def _params_or_zero(config: dict) -> int:
    try:
        return sum(param_counts(config))
    except KeyError:
        return 0


def _bits(config: dict) -> int | None:
    q = config.get("quantization_config") or {}
    b = q.get("bits") or q.get("w_bit")
    return int(b) if b else None


@dataclass(frozen=True)
class Fit:
    fits: bool
    need_gib: float
    have_gib: float
    weights_gib: float
    kv_gib: float
    max_tokens: int  # the largest max_model_len that fits with the same sequences (0: not even the weights)
    lora_gib: float = 0.0  # vLLM's LoRA buffers (--enable-lora), all GPUs of the replica

    def numbers(self) -> str:
        lora = f" + LoRA buffers {self.lora_gib:.2f} GiB" if self.lora_gib else ""
        return f"weights {self.weights_gib:.1f} GiB + KV cache {self.kv_gib:.1f} GiB{lora} = {self.need_gib:.1f} GiB > {self.have_gib:.1f} GiB usable"


def usable_gib(gpu_mib: int, utilization: float, gpus: int) -> float:
    return max(0.0, gpu_mib / 1024 * utilization - OVERHEAD_GIB) * gpus


def check(shape: ModelShape, max_model_len: int, seqs: int, gpu_mib: int, utilization: float, gpus: int, lora_bytes: int = 0) -> Fit:
    """``lora_bytes``: the LoRA buffers per GPU (``lora_buffer_bytes``) where the replica serves adapters."""
    weights = shape.weights_bytes / GIB
    kv = shape.kv_bytes_per_token * max_model_len * seqs / GIB
    lora = lora_bytes * gpus / GIB
    have = usable_gib(gpu_mib, utilization, gpus)
    room = (have - weights - lora) * GIB
    max_tokens = max(0, int(room // (shape.kv_bytes_per_token * seqs))) if room > 0 else 0
    return Fit(weights + kv + lora <= have, weights + kv + lora, have, weights, kv, max_tokens, lora)


def lora_buffer_bytes(config: dict, max_rank: int, max_loras: int, tp: int = 1) -> int:
    """GPU memory vLLM preallocates per GPU for ``--enable-lora`` (what the fit check adds to weights +
    KV cache): every linear layer gets stacked A (``max_loras x slices x max_rank x input``) and B
    (``max_loras x slices x output x max_rank``) buffers in the model's dtype (vllm/lora/layers/
    base_linear.py ``create_lora_weights``, read in the 0.32.0 install); column-parallel layers (q/k/v,
    gate/up) split their output across ``tp`` GPUs, row-parallel ones (o, down) their input. Independent
    of the adapters' own ranks: the buffers are sized by ``--max-lora-rank`` and ``--max-loras``."""
    h, inter = config["hidden_size"], config["intermediate_size"]
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    hd = config.get("head_dim") or h // heads
    a = 3 * h + heads * hd // tp + 2 * h + inter // tp  # A: qkv (3 slices), o, gate_up (2 slices), down
    b = (heads * hd + 2 * kv * hd) // tp + h + 2 * inter // tp + h  # B: qkv, o, gate_up, down
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    return config["num_hidden_layers"] * max_loras * max_rank * (a + b) * DTYPE_BYTES.get(dtype, 2)


def four_bit(shape: ModelShape, config_linear_share: float = 0.85) -> int:
    """Weight bytes of a 4-bit (AWQ/GPTQ, group 128) version of an unquantized model: linear layers are
    ~85 % of a 7-70B dense decoder's parameters (computed by ``param_counts`` for the families in
    tests/llm/test_fit.py)."""
    linear = shape.params * config_linear_share
    return int(linear * (0.5 + 2 / 128 + 0.5 / 128) + (shape.params - linear) * 2)


def suggestions(
    shape: ModelShape,
    max_model_len: int,
    seqs: int,
    gpu_mib: int,
    utilization: float,
    gpus: int,
    gpus_per_node: int,
    catalogue: dict[str, tuple[int, int]],
    lora_bytes: int = 0,
) -> list[str]:
    """What would fit, most local change first: fewer tokens, 4-bit weights, more GPUs of this node,
    another instance type (``catalogue``: type -> (GPU MiB, GPUs per node); the fewest GPUs, then the
    smallest GPU, then the smallest node)."""
    out: list[str] = []
    f = check(shape, max_model_len, seqs, gpu_mib, utilization, gpus, lora_bytes)
    if f.max_tokens >= 256:
        out.append(
            f"maxModelLen <= {f.max_tokens}" + (f" (or maxNumSeqs {max(1, f.max_tokens * seqs // max_model_len)})" if seqs > 1 else "")
        )
    if shape.quant_bits is None:
        q = ModelShape(**{**shape.to_dict(), "weights_bytes": four_bit(shape), "quant_bits": 4})
        if check(q, max_model_len, seqs, gpu_mib, utilization, gpus, lora_bytes).fits:
            out.append("a 4-bit AWQ/GPTQ checkpoint of the model (quantization: awq_marlin)")
    more = next(
        (n for n in TP_SIZES if gpus < n <= gpus_per_node and check(shape, max_model_len, seqs, gpu_mib, utilization, n, lora_bytes).fits),
        None,
    )
    if more:
        out.append(f"gpus: {more} (tensor parallelism on this node)")
    fitting = [
        (n, mib, per_node, itype)
        for itype, (mib, per_node) in catalogue.items()
        for n in TP_SIZES
        if n <= per_node and check(shape, max_model_len, seqs, mib, utilization, n, lora_bytes).fits
    ]
    if fitting:
        n, mib, _, itype = min(fitting)
        out.append(f"a pool of {itype} ({mib / 1024:.0f} GiB GPUs) with gpus: {n}")
    return out


# ---- model cards: the shape of a catalogue source, committed (llm/cards/<org>--<name>.json) ----

CARDS = Path(__file__).resolve().parent / "cards"


def card(source: str) -> dict | None:
    """The committed card of a Hugging Face id (its published config.json fields), or None."""
    path = CARDS / f"{source.replace('/', '--')}.json"
    return json.loads(path.read_text()) if "/" in source and path.is_file() else None


def card_shape(source: str) -> ModelShape | None:
    c = card(source)
    return shape_of(c["config"]) if c else None


# ---- a LoRA fine-tuning run on one GPU (llm/finetune.py): its peak memory ----

# The CUDA context, cuBLAS workspaces and the caching allocator's fragmentation: outside the tensors
# the terms below count. An estimate (the context alone is ~0.3-0.5 GiB on an A10G/L4/H100), stated.
TRAIN_OVERHEAD_GIB = 1.5
HALF = 2  # bytes of a bf16/fp16 value: the frozen base and the activations (llm/finetune.py load_model)
FP32 = 4


def linear_shapes(config: dict) -> dict[str, tuple[int, int]]:
    """(in, out) features of a dense decoder layer's linear modules, by their transformers name
    (Llama/Mistral/Qwen2: the names LoRA's ``targetModules`` use)."""
    h, inter = config["hidden_size"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    hd = config.get("head_dim") or h // heads
    q, kv = heads * hd, (config.get("num_key_value_heads") or heads) * hd
    return {
        "q_proj": (h, q),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (q, h),
        "gate_proj": (h, inter),
        "up_proj": (h, inter),
        "down_proj": (inter, h),
    }


def lora_param_count(config: dict, rank: int, target_modules: list[str] | tuple[str, ...]) -> int:
    """LoRA's trainable parameters: A (rank x in) + B (out x rank) on every target module of every
    layer (a name the model does not have adds nothing: PEFT refuses it at the run's start)."""
    shapes = linear_shapes(config)
    return config["num_hidden_layers"] * rank * sum(i + o for m, (i, o) in shapes.items() if m in target_modules)


@dataclass(frozen=True)
class TrainingMemory:
    """A LoRA run's peak GPU memory, by term (bytes); ``lora_training_memory`` says what each is."""

    weights: int
    lora: int
    checkpoints: int
    layer: int
    logits: int
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.lora + self.checkpoints + self.layer + self.logits + self.overhead

    def numbers(self) -> str:
        g = [x / GIB for x in (self.weights, self.lora, self.checkpoints + self.layer, self.logits, self.overhead, self.total)]
        return (
            f"weights {g[0]:.1f} + LoRA, gradients and Adam {g[1]:.2f} + activations {g[2]:.1f} + logits and loss {g[3]:.1f} "
            f"+ overhead {g[4]:.1f} = {g[5]:.1f} GiB"
        )


def lora_training_memory(
    config: dict, batch_size: int, seq_len: int, rank: int, target_modules: list[str] | tuple[str, ...]
) -> TrainingMemory:
    """Peak GPU memory of llm/finetune.py's run on one GPU, from the base's ``config.json`` (a card's) and
    the run's parameters; ``T`` = batch_size x seq_len tokens a step:

    * **frozen weights**: the parameter count (``param_counts``) x 2 bytes: the run loads the base in
      bf16 (fp16 on a GPU without bf16), never in the checkpoint's float32 (llm/finetune.py load_model);
      a quantized checkpoint is refused for training (components/config/lora.py), not estimated;
    * **LoRA, its gradients and AdamW's two moments**: 4 fp32 values a trainable parameter (16 bytes):
      PEFT keeps the adapter in float32 on a half-precision base (peft 0.21.2
      ``get_peft_model(autocast_adapter_dtype=True)``, tuners_utils.py ``cast_adapter_dtype``), and
      torch's AdamW keeps ``exp_avg`` and ``exp_avg_sq`` like the parameter;
    * **activations, with gradient checkpointing** (transformers checkpoints each decoder layer): every
      layer's input is kept, ``layers x hidden x T x 2`` bytes; and one layer at a time is recomputed
      in the backward pass with its autograd activations: per token, in bf16, the two RMSNorm outputs
      (2 x hidden), q/k/v and their rotary copies, the attention output (SDPA/flash: no T x T matrix),
      gate, up, SiLU(gate) and their product (4 x intermediate); in fp32, the two RMSNorms' upcast inputs
      (Qwen2/Llama RMSNorm computes in float32) and each LoRA target's input (PEFT casts ``x`` to the
      adapter's float32 before ``lora_A``: lora/layer.py ``Linear.forward``); plus the gradients of the
      three MLP intermediates (bf16) while that layer back-propagates;
    * **logits and loss**: ``T x vocab x (2 + 4 + 4)`` bytes: the bf16 logits of the last hidden state,
      their float32 upcast (transformers' ``ForCausalLMLoss`` calls ``logits.float()``) and
      cross-entropy's float32 log-softmax, which its backward turns into the logits' gradient (same size);
      no other full-vocabulary tensor is kept (the loop keeps only ``.loss``);
    * **overhead**: ``TRAIN_OVERHEAD_GIB`` (CUDA context, cuBLAS workspaces, allocator fragmentation).

    Checked against the Qwen-7B LoRA profile its authors published (tests/llm/test_fit.py), not measured
    here (no GPU on this machine).
    """
    h, vocab, layers = config["hidden_size"], config["vocab_size"], config["num_hidden_layers"]
    shapes = linear_shapes(config)
    tokens = batch_size * seq_len
    q, kv, inter = shapes["q_proj"][1], shapes["k_proj"][1], shapes["gate_proj"][1]
    half = 2 * h + (q + 2 * kv) + (q + kv) + q + 4 * inter
    fp32 = 2 * h + sum(i for m, (i, _) in shapes.items() if m in target_modules)
    per_token = HALF * half + FP32 * fp32 + HALF * 3 * inter
    return TrainingMemory(
        weights=sum(param_counts(config)) * HALF,
        lora=lora_param_count(config, rank, target_modules) * 4 * FP32,
        checkpoints=layers * h * tokens * HALF,
        layer=per_token * tokens,
        logits=tokens * vocab * (HALF + FP32 + FP32),
        overhead=int(TRAIN_OVERHEAD_GIB * GIB),
    )
