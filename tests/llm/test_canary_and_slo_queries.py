"""The LLM queries the platform relies on, run by a real Prometheus scraping the real vLLM (the session's
CPU server, tests/llm/conftest.py: 2 sequence slots, 8 KV blocks) under load from this test:

* the SLO alert rules of monitoring/rules/llm.yaml, as rendered (monitoring/spec.py), loaded into the
  Prometheus with one change - ``for`` set to 0 (their 10-30 minute holds are promtool's to test, in
  monitoring/tests/llm.test.yaml): under twelve concurrent long generations the queue and the time to
  first token go above their thresholds, and those alerts fire with the model's labels;
* the KEDA trigger's query (components/lib/keda_specs.py ``vllm_queue_query``) sees the waiting
  requests, and KEDA's arithmetic on it asks for more replicas;
* every query the vLLM canary analysis sends (components/lib/llm_canary.py), args substituted, returns a
  number on this engine's series (the canary and the stable side are the same server here, scraped
  twice under two pod-template hashes: what is tested is that the queries match vLLM's real label
  sets, not a verdict - tests/llm/test_canary.py gives the verdicts on separate servers);
* the KV-cache gauge moves (8 blocks of 128 tokens: two long sequences fill up to three quarters);
* the latency buckets the platform renders (``--custom-histogram-buckets``, components/lib/vllm_buckets.py,
  which the session's server runs with): vLLM accepts the flag, every histogram of each family exposes
  exactly the rendered bounds (which histograms a family reaches is vLLM's, read from its source - here
  it is what the engine does), and every alert threshold is a series Prometheus holds. (The p95 read
  on them is not compared with the load generator's own: on this machine the clients' durations ran
  up to 1.7x the engine's e2e latency - 18.0 s against 10.4 s at the p95 - the frontend and the client
  threads starved of CPU; the resolution is tested in tests/unit/test_vllm_buckets.py, on promtool.)
"""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.parse
import urllib.request
from types import SimpleNamespace

import pytest
import yaml

from components.lib import keda_specs, llm_canary, vllm_buckets
from llm import testing
from monitoring import spec
from tests.llm.conftest import API_KEY, SERVED
from tests.monitoring import argo_analysis as argo
from tests.monitoring.test_e2e_alert import start_prometheus, wait_http

pytestmark = pytest.mark.slow

NAMESPACE = "ml-serving"
SERVICE = "llm-tiny"
# Ten of them wait behind the server's 2 slots: a request queues ~5 generations. Each generation is
# MAX_TOKENS long: at 200 tokens (~1.1 s at the ~350 tokens/s the tiny model makes here and in CI) the
# queue's p95 sat at the alert's 5 s and CI saw it under (time to first token 5.6 s); 300 tokens queue a
# request ~8 s. Not longer: at 380 the first token's p95 reached the wide 19.2-40 s bucket, where the
# two scrapes of one server read p95s 1.5x apart. More clients instead (24) starved vLLM's API server
# on 2 cores (its engine's queue emptied while they looped) and the canary queries had no data.
CLIENTS = 12
MAX_TOKENS = 300
LOAD_SECONDS = 45
CANARY = SimpleNamespace(
    steps=[50],
    step_seconds=20,
    window_seconds=20,
    interval_seconds=5,
    failure_limit=1,
    max_error_ratio_increase=0.01,
    max_client_error_ratio_increase=0.01,
    max_ttft_p95_ratio=3,
    max_itl_p95_ratio=3,
    max_golden_failure_ratio=0.05,
    min_requests=5,
    warmup_rate=1,
)


def query(prom: str, q: str) -> list:
    """An instant query. 30 s, not 5: on the shared 2-core machine, with vLLM's OpenMP threads spinning
    beside it, Prometheus was measured answering a trivial query in 10 s (CPU pressure 80%)."""
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    return json.loads(urllib.request.urlopen(url, timeout=30).read())["data"]["result"]


def rules_for_now() -> dict:
    """monitoring/rules/llm.yaml's groups as the platform renders them, with ``for`` removed."""
    groups = spec.rule_groups()["llm"]
    for g in groups:
        for r in g["rules"]:
            r.pop("for", None)
    return {"groups": groups}


def load(url: str, stop: threading.Event, codes: list) -> None:
    """Long generations (ignore_eos: every one runs its MAX_TOKENS) back to back."""
    body = {"model": SERVED, "prompt": "the model serves", "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True}
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
    while not stop.is_set():
        req = urllib.request.Request(f"{url}/v1/completions", json.dumps(body).encode(), headers)
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                codes.append(r.status)
        except OSError as exc:
            codes.append(getattr(exc, "code", 0))


@pytest.fixture(scope="module")
def loaded(vllm_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("llm-queries")
    port = vllm_server.port
    prom_port = testing.free_port()
    prom = f"http://127.0.0.1:{prom_port}"
    (tmp / "rules.yaml").write_text(yaml.safe_dump(rules_for_now()))
    target = {"namespace": NAMESPACE, "service": SERVICE, "pod": f"{SERVICE}-0"}
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
        "rule_files": [str(tmp / "rules.yaml")],
        "scrape_configs": [
            {
                "job_name": SERVICE,
                "static_configs": [
                    # the same server as both sides of a canary: two hashes, so every query finds both
                    {"targets": [f"127.0.0.1:{port}"], "labels": {**target, "rollouts_pod_template_hash": "hash-stable"}},
                    {"targets": [f"localhost:{port}"], "labels": {**target, "rollouts_pod_template_hash": "hash-canary"}},
                ],
            }
        ],
    }
    proc = start_prometheus(tmp, config, prom_port)
    stop, codes, seen = threading.Event(), [], {"waiting": 0.0, "kv": 0.0}
    try:
        wait_http(f"{prom}/-/ready")
        workers = [threading.Thread(target=load, args=(vllm_server.url, stop, codes), daemon=True) for _ in range(CLIENTS)]
        for w in workers:
            w.start()
        deadline = time.time() + LOAD_SECONDS
        while time.time() < deadline:
            for key, q in (("waiting", keda_specs.vllm_queue_query(NAMESPACE, SERVED)), ("kv", "max(vllm:kv_cache_usage_perc)")):
                try:
                    found = query(prom, q)
                except OSError:  # stalled past its 30 s (see ``query``; measured once in a full slow lane): the next sample counts
                    continue
                if found:
                    seen[key] = max(seen[key], float(found[0]["value"][1]) / (2 if key == "waiting" else 1))
            time.sleep(1)
        alerts = alerts_under_load(prom)
        template = llm_canary.analysis_template(SERVED, NAMESPACE, SERVICE, CANARY, prometheus_url=prom)
        analysis = argo.Analysis(template, {"canary-hash": "hash-canary", "stable-hash": "hash-stable"}, prom)
        values = judged_values(prom, analysis)
        yield SimpleNamespace(prom=prom, alerts=alerts, codes=codes, seen=seen, values=values, template=template)
    finally:
        stop.set()
        proc.terminate()
        proc.wait(20)


def alerts_under_load(prom: str, wait_s: float = 60) -> list[dict]:
    """Prometheus' alerts once the two this load must fire are firing, or after ``wait_s`` more of the
    load (the rules are evaluated every second; a starved Prometheus evaluates late, and a read that
    stalls is read again)."""
    deadline, alerts = time.time() + wait_s, []
    while True:
        try:
            alerts = json.loads(urllib.request.urlopen(f"{prom}/api/v1/alerts", timeout=30).read())["data"]["alerts"]
        except OSError:
            pass
        firing = {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}
        if {"LlmQueueTimeHigh", "LlmTimeToFirstTokenHigh"} <= firing or time.time() > deadline:
            return alerts
        time.sleep(2)


def judged_values(prom: str, analysis: argo.Analysis, wait_s: float = 90) -> dict[str, list]:
    """Every canary query's result once its data gates are open (each side answered minRequests in the
    window and its warm-up before it), each query's first answer kept: on a CPU-starved machine the
    first long generations finish late, and a scrape that times out can close a 20 s window's gate for
    a moment (in a full slow lane the gates were never all open at one instant of 60 s). Under load the
    whole time: waiting does not change what is checked."""
    deadline, values = time.time() + wait_s, {name: [] for name in analysis.queries()}
    while True:
        for name, q in analysis.queries().items():
            if not values[name]:
                try:
                    values[name] = argo.prometheus_result(prom, q)
                except argo.MeasurementError:  # a query stalled past its 10 s (see ``query``)
                    pass
        if all(values.values()) or time.time() > deadline:
            return values
        time.sleep(2)


def firing(loaded) -> dict[str, dict]:
    return {a["labels"]["alertname"]: a for a in loaded.alerts if a["state"] == "firing"}


def test_the_load_was_served(loaded):
    assert loaded.codes and set(loaded.codes) == {200}, loaded.codes[:20]


def test_queue_and_first_token_alerts_fire_with_the_models_labels(loaded):
    fired = firing(loaded)
    for name in ("LlmQueueTimeHigh", "LlmTimeToFirstTokenHigh"):
        assert name in fired, (
            f"{name} not firing; alerts: {[(a['labels']['alertname'], a['state'], a.get('value')) for a in loaded.alerts]}"
        )
        labels = fired[name]["labels"]
        assert labels["model_name"] == SERVED and labels["namespace"] == NAMESPACE, labels
    # a ready pod serving requests is not idle (and kube-state-metrics is not here: the rule needs it)
    assert "LlmReplicaIdle" not in fired


def test_keda_sees_the_queue_and_would_scale_out(loaded):
    """The one server is scraped as two targets here (two hashes): the peak is halved back. Ten of the
    twelve clients wait behind two slots; at the default target (llm.waitingPerReplica 4) KEDA asks
    for more than one replica."""
    waiting = loaded.seen["waiting"]
    assert waiting > 4, loaded.seen
    assert keda_specs.desired_replicas(waiting, 4, 1, 3) >= 2


def test_the_kv_cache_gauge_moves(loaded):
    assert loaded.seen["kv"] > 0.05, loaded.seen


def test_every_canary_query_returns_a_number_on_vllm_series(loaded):
    for name, value in loaded.values.items():
        assert isinstance(value, list) and len(value) == 1 and not math.isnan(value[0]), (name, loaded.values, len(loaded.codes))
    # the same server on both sides: its ratios are 1 and its error difference 0
    assert loaded.values[llm_canary.METRIC_ERRORS] == [0.0]
    assert loaded.values[llm_canary.METRIC_CLIENT_ERRORS] == [0.0]
    for name in (llm_canary.METRIC_TTFT, llm_canary.METRIC_ITL):
        assert loaded.values[name][0] == pytest.approx(1.0, rel=0.1), (name, loaded.values[name])


def test_every_latency_histogram_exposes_exactly_the_rendered_bounds(loaded):
    """vLLM accepted --custom-histogram-buckets (the server started with it) and applied each family to
    every histogram vllm_buckets.FAMILY_OF names (vllm/v1/metrics/loggers.py), nothing else."""
    for histogram, family in vllm_buckets.FAMILY_OF.items():
        found = query(loaded.prom, f'count by (le) ({histogram}_bucket{{rollouts_pod_template_hash="hash-stable"}})')
        les = {r["metric"]["le"] for r in found}
        assert les == {vllm_buckets.le(b) for b in vllm_buckets.BUCKETS[family]} | {"+Inf"}, (histogram, sorted(les))


def test_every_alert_threshold_is_a_series_prometheus_holds(loaded):
    """The thresholds of monitoring/rules/llm.yaml are bounds (exact decisions): the ``le`` series exists."""
    thresholds = [t for g in rules_for_now()["groups"] for r in g["rules"] for t in vllm_buckets.thresholds_in(r["expr"])]
    assert len(thresholds) >= 3
    for histogram, value in thresholds:
        assert query(loaded.prom, f'{histogram}_bucket{{le="{vllm_buckets.le(float(value))}"}}'), (histogram, value)
