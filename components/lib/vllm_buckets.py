"""The latency histogram buckets every vLLM pod exposes (``--custom-histogram-buckets``), chosen for the
thresholds that judge them: the SLO alerts (monitoring/rules/llm.yaml) and the canary's p95 ratios
(components/lib/llm_canary.py). Pure: the program renders the flag from here, the tests start the real
vLLM with it and check every threshold against it.

**The flag** (vLLM 0.32.0 CPU build read here, 0.33.0's flag list has it too): a JSON object from a
bucket *family* to its strictly increasing positive upper bounds (vllm/config/observability.py
``ObservabilityConfig.custom_histogram_buckets`` and its validators; parsed with ``json.loads``,
vllm/engine/arg_utils.py ``_compute_kwargs``). A family replaces the defaults
(vllm/v1/metrics/buckets.py ``histogram_buckets``) of every histogram that PrometheusStatLogger
builds from it (vllm/v1/metrics/loggers.py): ``time_to_first_token`` -> ``vllm:time_to_first_token_seconds``;
``inter_token_latency`` -> ``vllm:inter_token_latency_seconds`` and
``vllm:request_time_per_output_token_seconds``; ``request_latency`` -> ``vllm:e2e_request_latency_seconds``,
``vllm:request_queue_time_seconds``, ``_inference_time_``, ``_prefill_time_``, ``_decode_time_``.

**Why these bounds.** vLLM's defaults are coarse where the thresholds are (time to first token
...1.0, 2.5...: the 2 s SLO sat inside a bucket; ...0.1, 0.25...) and ``histogram_quantile``
interpolates inside a bucket, so a p95 ratio could read a 2x regression as 1.0 or a 10% one as 2.4.
Here each family's dense part is a *doubling ladder*: ``scale x {1, 1.25, 1.5} x 2^k``, three
interleaved chains each closed under doubling. Hence:

* every step is at most x1.33 (x1.25, x1.2, x1.33): a 1.5x or 2x change always crosses a bound;
* the set maps onto itself under x2, so ``histogram_quantile`` is exactly scale-equivariant for a
  factor 2: a canary 2x slower in every request reads a p95 ratio of exactly 2.0 whatever the
  latency's shape; by monotonicity a 1.5x change reads between 1.27 and 1.65, 1.25x at most 1.5, 1.1x
  at most 1.31 (the defaults: 2x read 1.0-4.1, 1.1x up to 2.4; tests/unit/test_vllm_buckets.py);
* the SLO thresholds are bounds (2 s first token, 0.1 s per output token, 5 s queued), which makes
  ``histogram_quantile(0.95, ...) > T`` exactly "more than 5% of requests took longer than T": no
  interpolation at the decision;
* the stable side's floors (llm_canary ``TTFT_FLOOR_S`` 0.05, ``ITL_FLOOR_S`` 0.00625) sit on the
  ``1`` chain, so floor x 1.25, 1.5, 2 and 3 are bounds too: against a fast stable side the canary's
  ratio threshold is decided without interpolation as well.

Outside the dense range vLLM's own coarse bounds are kept (a 40-minute time to first token needs no
resolution). Cost: about 110 more series per vLLM pod than the defaults (every bound is a series per
histogram; the request-latency family has five histograms).
"""

from __future__ import annotations

import json
import re

CHAINS = (1.0, 1.25, 1.5)


def doubling_ladder(scale: float, lo: float, hi: float) -> tuple[float, ...]:
    """``scale x m x 2^k`` for m in ``CHAINS``, every k, within [lo, hi], sorted (10 significant
    digits: 0.1 x 1.5 is 0.15, not 0.15000000000000002)."""
    out = {float(f"{scale * m * 2.0**k:.10g}") for m in CHAINS for k in range(-40, 41)}
    return tuple(sorted(v for v in out if lo <= v <= hi))


# family -> bounds. Heads and tails are vLLM's defaults (vllm/v1/metrics/buckets.py) outside the ladder.
BUCKETS: dict[str, tuple[float, ...]] = {
    "time_to_first_token": (0.001, 0.005, 0.01, *doubling_ladder(0.1, 0.0125, 20), 40.0, 80.0, 160.0, 640.0, 2560.0),
    "inter_token_latency": (*doubling_ladder(0.1, 0.003, 2.5), 5.0, 10.0, 20.0, 40.0, 80.0),
    "request_latency": (*doubling_ladder(1.0, 0.25, 100), 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0),
}

# vLLM histogram (without _bucket) -> its family (vllm/v1/metrics/loggers.py PrometheusStatLogger).
FAMILY_OF = {
    "vllm:time_to_first_token_seconds": "time_to_first_token",
    "vllm:inter_token_latency_seconds": "inter_token_latency",
    "vllm:request_time_per_output_token_seconds": "inter_token_latency",
    "vllm:e2e_request_latency_seconds": "request_latency",
    "vllm:request_queue_time_seconds": "request_latency",
    "vllm:request_inference_time_seconds": "request_latency",
    "vllm:request_prefill_time_seconds": "request_latency",
    "vllm:request_decode_time_seconds": "request_latency",
}

FLAG = "--custom-histogram-buckets"


def flag_value() -> str:
    """The flag's JSON (sorted keys: the same bounds render the same pod template, no new canary)."""
    return json.dumps({family: list(bounds) for family, bounds in BUCKETS.items()}, sort_keys=True, separators=(",", ":"))


def args() -> list[str]:
    return [FLAG, flag_value()]


def le(bound: float) -> str:
    """The ``le`` label value of ``bound`` as vLLM's prometheus_client writes it (``floatToGoString``:
    Python's repr, e.g. "2.0", "0.1") and as Prometheus 3 normalizes it on ingestion (Go's shortest
    float with ".0" on whole numbers): the same string for every bound here."""
    return repr(float(bound))


def bounds_of(histogram: str, families: dict[str, list[float]] | None = None) -> tuple[float, ...]:
    """The bounds ``histogram`` (a vLLM histogram name, with or without ``_bucket``) has under
    ``families`` (a rendered flag's JSON; default: ``BUCKETS``)."""
    family = FAMILY_OF[histogram.removesuffix("_bucket")]
    return tuple((families or BUCKETS)[family])


def rendered(vllm_args: list[str]) -> dict[str, list[float]]:
    """The families a rendered ``vllm serve`` argument list sets (``{}`` without the flag)."""
    return json.loads(vllm_args[vllm_args.index(FLAG) + 1]) if FLAG in vllm_args else {}


_QUANTILE = re.compile(r"histogram_quantile\([^,]+,.*?\((vllm:[a-z0-9_]+)_bucket\b.*?\)\)\)\s*>\s*([0-9.]+)", re.S)
_LE = re.compile(r"(vllm:[a-z0-9_]+)_bucket\{[^}]*\ble\s*=\s*\"([^\"]+)\"")


def thresholds_in(expr: str) -> list[tuple[str, str]]:
    """(vLLM histogram, threshold as written) for each ``histogram_quantile(...) > T`` on a vLLM
    histogram and each ``le="..."`` matcher on one, in a PromQL expression."""
    return _QUANTILE.findall(expr) + _LE.findall(expr)
