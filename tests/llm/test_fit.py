"""The fit check (llm/fit.py) on real model families: their published config.json numbers, committed as
model cards in llm/cards/ (source: each card's ``cited`` URL), on the GPUs of g5/g6/p4d/p5 nodes.

Hand arithmetic for the shapes (bf16 = 2 bytes; KV per token = layers x KV heads x head dim x 2 x 2):

=========================  ======  =========  ========  =========  ==============  ================
model                      layers  KV heads   head dim  params     weights (GiB)   KV/token (bytes)
=========================  ======  =========  ========  =========  ==============  ================
Llama-3.1-8B-Instruct      32      8          128       8.03 B     14.96           131,072
Mistral-7B-Instruct-v0.3   32      8          128       7.25 B     13.50           131,072
Qwen2.5-7B-Instruct        28      4          128       7.62 B     14.19           57,344
Qwen2.5-72B-Instruct       80      8          128       72.7 B     135.43          327,680
Llama-3.1-70B-Instruct     80      8          128       70.6 B     131.42          327,680
=========================  ======  =========  ========  =========  ==============  ================

Usable per GPU at gpuMemoryUtilization 0.9, less 1 GiB (llm/fit.py OVERHEAD_GIB): A10G (g5) / L4 (g6)
~22.5 GiB -> 19.24; A100-40GB (p4d) 40 GiB -> 35.0; H100-80GB (p5) 79.6 GiB -> 70.7.
"""

from __future__ import annotations

import pytest

from llm import fit

# GPU MiB and GPUs per node (components/config/capacity.py GPU_MEMORY_MIB / GPU_COUNT; that module needs
# pydantic, absent from this environment: tests/unit/test_llm_config.py checks the two agree).
NODES = {
    "g5.xlarge": (23028, 1),
    "g5.12xlarge": (23028, 4),
    "g5.48xlarge": (23028, 8),
    "g6.xlarge": (23034, 1),
    "g4dn.xlarge": (15360, 1),
    "p4d.24xlarge": (40960, 8),
    "p5.48xlarge": (81559, 8),
}
PUBLISHED_PARAMS = {  # each model page's "Model size", in billions
    "meta-llama/Llama-3.1-8B-Instruct": 8.03,
    "meta-llama/Llama-3.1-70B-Instruct": 70.6,
    "mistralai/Mistral-7B-Instruct-v0.3": 7.25,
    "Qwen/Qwen2.5-7B-Instruct": 7.61,
    "Qwen/Qwen2.5-72B-Instruct": 72.7,
    "Qwen/Qwen2.5-1.5B-Instruct": 1.54,
}


def shape(source: str) -> fit.ModelShape:
    s = fit.card_shape(source)
    assert s is not None, f"no card for {source} in llm/cards/"
    return s


@pytest.mark.parametrize("source,billions", PUBLISHED_PARAMS.items())
def test_parameters_from_the_shape_match_the_published_count(source, billions):
    """The weight bytes come from the parameter count the shape implies: within 0.5 % of the model page."""
    assert shape(source).params / 1e9 == pytest.approx(billions, rel=0.005)


def test_kv_bytes_per_token_of_each_family():
    assert shape("meta-llama/Llama-3.1-8B-Instruct").kv_bytes_per_token == 32 * 8 * 128 * 2 * 2 == 131_072
    assert shape("Qwen/Qwen2.5-7B-Instruct").kv_bytes_per_token == 28 * 4 * 128 * 2 * 2 == 57_344
    assert shape("Qwen/Qwen2.5-72B-Instruct").kv_bytes_per_token == 80 * 8 * 128 * 2 * 2 == 327_680
    assert shape("mistralai/Mistral-7B-Instruct-v0.3").kv_bytes_per_token == 131_072


def test_awq_weights_are_about_a_third():
    """Qwen2.5-7B-Instruct-AWQ: 4-bit linear layers, fp16 embeddings: ~5.57 GB (its two published
    safetensors shards add up to about that), against 15.2 GB in bf16."""
    awq, bf16 = shape("Qwen/Qwen2.5-7B-Instruct-AWQ"), shape("Qwen/Qwen2.5-7B-Instruct")
    assert awq.quant_bits == 4 and awq.dtype == "float16"
    assert awq.weights_bytes / 1e9 == pytest.approx(5.57, rel=0.02)
    assert bf16.weights_bytes / 1e9 == pytest.approx(15.23, rel=0.01)


# (model, node, GPUs per replica, maxModelLen, maxNumSeqs, fits)
CASES = [
    ("meta-llama/Llama-3.1-8B-Instruct", "g5.xlarge", 1, 8192, 1, True),  # 14.96 + 1.0 <= 19.24
    ("meta-llama/Llama-3.1-8B-Instruct", "g5.xlarge", 1, 131072, 1, False),  # its full context: + 16 GiB of KV
    ("meta-llama/Llama-3.1-8B-Instruct", "g4dn.xlarge", 1, 4096, 1, False),  # T4: 12.5 usable < 14.96 weights
    ("mistralai/Mistral-7B-Instruct-v0.3", "g6.xlarge", 1, 32768, 1, True),  # 13.5 + 4.0
    ("mistralai/Mistral-7B-Instruct-v0.3", "g6.xlarge", 1, 32768, 4, False),  # 4 full contexts: + 16 GiB
    ("Qwen/Qwen2.5-7B-Instruct", "g6.xlarge", 1, 32768, 1, True),  # 14.19 + 1.75
    ("Qwen/Qwen2.5-7B-Instruct-AWQ", "g5.xlarge", 1, 32768, 2, True),  # 5.19 + 3.5
    ("Qwen/Qwen2.5-72B-Instruct", "p4d.24xlarge", 4, 32768, 1, False),  # 135.4 + 10 > 4 x 35
    ("Qwen/Qwen2.5-72B-Instruct", "p4d.24xlarge", 8, 32768, 1, True),
    ("Qwen/Qwen2.5-72B-Instruct", "p5.48xlarge", 2, 32768, 1, False),  # 145.4 > 2 x 70.7
    ("Qwen/Qwen2.5-72B-Instruct", "p5.48xlarge", 4, 32768, 1, True),
    ("meta-llama/Llama-3.1-70B-Instruct", "g5.12xlarge", 4, 8192, 1, False),  # 131.4 > 4 x 19.24
    ("meta-llama/Llama-3.1-70B-Instruct", "g5.48xlarge", 8, 8192, 1, True),  # 133.9 <= 153.9
    ("meta-llama/Llama-3.1-70B-Instruct", "p4d.24xlarge", 4, 8192, 1, True),  # 133.9 <= 140
    ("meta-llama/Llama-3.1-70B-Instruct", "p5.48xlarge", 2, 8192, 1, True),  # 133.9 <= 141.4
    ("meta-llama/Llama-3.1-70B-Instruct", "p5.48xlarge", 1, 8192, 1, False),
]


@pytest.mark.parametrize(
    "source,node,gpus,tokens,seqs,fits", CASES, ids=[f"{c[0].split('/')[1]}-{c[1]}-x{c[2]}-{c[3]}-s{c[4]}" for c in CASES]
)
def test_fits_or_not_on_aws_gpu_nodes(source, node, gpus, tokens, seqs, fits):
    mib, _ = NODES[node]
    result = fit.check(shape(source), tokens, seqs, mib, 0.9, gpus)
    assert result.fits is fits, result.numbers()


def test_the_largest_context_that_fits_is_reported():
    """Llama-3.1-8B on one A10G: (19.24 - 14.96) GiB / 128 KiB per token ~ 35,000 tokens."""
    result = fit.check(shape("meta-llama/Llama-3.1-8B-Instruct"), 131072, 1, 23028, 0.9, 1)
    assert 34_000 < result.max_tokens < 36_000
    assert fit.check(shape("meta-llama/Llama-3.1-8B-Instruct"), result.max_tokens, 1, 23028, 0.9, 1).fits


def test_suggestions_name_what_would_fit():
    catalogue = {k: v for k, v in NODES.items()}
    s8 = shape("meta-llama/Llama-3.1-8B-Instruct")
    on_t4 = fit.suggestions(s8, 4096, 1, 15360, 0.9, 1, 1, catalogue)
    assert any("4-bit" in s for s in on_t4) and any(s.startswith("a pool of g5.xlarge") for s in on_t4), on_t4
    long = fit.suggestions(s8, 131072, 1, 23028, 0.9, 1, 1, catalogue)
    assert long[0].startswith("maxModelLen <= 3"), long
    s70 = shape("meta-llama/Llama-3.1-70B-Instruct")
    big = fit.suggestions(s70, 8192, 1, 23028, 0.9, 4, 4, catalogue)
    # fewest GPUs first: two H100s hold it, four A10Gs do not.
    assert "a pool of p5.48xlarge (80 GiB GPUs) with gpus: 2" in big, big
    assert not any(s.startswith("gpus:") for s in big)  # a g5.12xlarge has no more than 4


def test_a_recorded_weight_size_wins_over_the_estimate():
    cfg = fit.card("Qwen/Qwen2.5-7B-Instruct")["config"]
    assert fit.shape_of(cfg, weights_bytes=123).weights_bytes == 123


def test_mixture_of_experts_is_not_guessed():
    with pytest.raises(ValueError, match="mixture-of-experts"):
        fit.shape_of({**fit.card("Qwen/Qwen2.5-7B-Instruct")["config"], "num_experts": 64})
