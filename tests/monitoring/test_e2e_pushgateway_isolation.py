"""End to end, issue 24 item 8: what a training job pushes cannot reach the delivery gate. A real
Pushgateway, scraped by a real Prometheus with the program's ServiceMonitor settings (honorLabels and
the metric relabelling of components/services/monitoring.py): our training code's metrics get in, a
forged `mlplatform_serving_requests_total{...}` push (what the canary analysis and KEDA read) does not.

The ML venv has no Pulumi, so the relabelling is read from the program's source (the module constant
PUSHGATEWAY_METRIC_RELABELINGS, a literal) and translated as the Prometheus Operator does for a
ServiceMonitor endpoint (metricRelabelings -> metric_relabel_configs: sourceLabels -> source_labels,
the action lower-cased; prometheus-operator pkg/prometheus/promcfg.go, generateRelabelConfig; from
memory, unverified against a pinned copy)."""

from __future__ import annotations

import ast
import re
import time
import urllib.request

import pytest

from tests.conftest import ROOT
from tests.monitoring.test_e2e_alert import query, start_prometheus, wait_http
from tests.monitoring.test_e2e_training_alert import Pushgateway
from tests.serving.conftest import free_port
from training import metrics

pytestmark = pytest.mark.e2e

FORGED = "mlplatform_serving_requests_total"


def program_relabelings() -> list[dict]:
    tree = ast.parse((ROOT / "components" / "services" / "monitoring.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "PUSHGATEWAY_METRIC_RELABELINGS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("components/services/monitoring.py defines no PUSHGATEWAY_METRIC_RELABELINGS")


def to_prometheus(relabel: dict) -> dict:
    snake = {re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), k): v for k, v in relabel.items()}
    if "action" in snake:
        snake["action"] = snake["action"].lower()
    return snake


def push(gateway: str, job: str, body: str) -> None:
    req = urllib.request.Request(f"http://{gateway}/metrics/job/{job}", data=body.encode(), method="PUT")
    urllib.request.urlopen(req, timeout=5).read()


@pytest.fixture
def scraped_pushgateway(tmp_path):
    pg = Pushgateway(tmp_path)
    pg.start()
    port = free_port()
    cfg = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
        "scrape_configs": [
            {
                "job_name": "pushgateway",
                "honor_labels": True,
                "static_configs": [{"targets": [pg.addr]}],
                "metric_relabel_configs": [to_prometheus(r) for r in program_relabelings()],
            }
        ],
    }
    prom = start_prometheus(tmp_path, cfg, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/-/ready")
        yield pg, url
    finally:
        prom.terminate()
        pg.stop()
        prom.wait(20)


def wait_for(prom: str, q: str, timeout: float = 20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if found := query(prom, q):
            return found
        time.sleep(0.5)
    raise AssertionError(f"{q}: nothing within {timeout}s")


def test_forged_serving_series_never_reach_prometheus(scraped_pushgateway):
    pg, prom = scraped_pushgateway
    # the attack of the December review: a canary's 5xx ratio forged through the Pushgateway
    forged = "".join(
        f'{FORGED}{{namespace="ml-serving",model="mnist",track="canary",code="{code}",route="predict"}} {n}\n'
        for code, n in (("200", 1), ("500", 10))
    )
    push(pg.addr, "evil", forged + 'vllm:num_requests_running{model_name="chat"} 99\n')
    # our training code's own push, through the same gateway
    run = metrics.TrainingMetrics("mnist", "strong")
    run.set(metrics.ACCURACY, 0.97)
    run.push(pg.addr)
    assert pg.series(FORGED), "the Pushgateway itself holds the forged series (the test pushed it)"
    wait_for(prom, f'{metrics.ACCURACY}{{model="mnist"}}')  # the scrape happened and training got in
    wait_for(prom, 'push_time_seconds{job="evil"}')  # the forged group was scraped too
    assert query(prom, f'{{__name__=~"{FORGED}|vllm:.*"}}') == []
    # nothing but training's names and the push timestamps from this target (`up` & co. are Prometheus' own)
    names = {r["metric"]["__name__"] for r in query(prom, '{job=~".+", __name__!~"up|scrape_.*"}')}
    assert names and all(n.startswith(("mlplatform_training_", "push_")) for n in names), names


def test_relabelling_keeps_every_training_metric():
    """Every name our training code pushes passes the keep rule (a rename there must not go dark)."""
    (keep,) = [r for r in program_relabelings() if r["action"] == "keep"]
    names = [v for k, v in vars(metrics).items() if k.isupper() and isinstance(v, str) and v.startswith("mlplatform_")]
    assert names and all(re.fullmatch(keep["regex"], n) for n in names), names
    assert not re.fullmatch(keep["regex"], FORGED)
