"""End to end, issue 13 item 8: training metrics pushed by our code to a real Pushgateway (persisting
to a file, as the chart values configure it), scraped by a real Prometheus evaluating our training
rules. A model whose last success is older than the stale threshold keeps TrainingStale firing while
later runs fail, also across a Pushgateway restart; a model that never published is caught by
TrainingNeverSucceeded."""

from __future__ import annotations

import subprocess
import time
import urllib.request

import pytest
import yaml

from monitoring import spec
from tests.monitoring.test_e2e_alert import binary, query, start_prometheus, wait_http
from tests.serving.conftest import free_port
from training import metrics

pytestmark = pytest.mark.e2e

DAY = 86400


class Pushgateway:
    def __init__(self, tmp_path):
        self.port = free_port()
        self.data = tmp_path / "pushgateway.data"
        self.addr = f"127.0.0.1:{self.port}"
        self.proc = None

    def start(self):
        # the flags components/services/monitoring.py gives the chart (--persistence.file on its volume)
        self.proc = subprocess.Popen(
            [
                binary("prometheus-pushgateway", "pushgateway"),
                f"--web.listen-address={self.addr}",
                f"--persistence.file={self.data}",
                "--persistence.interval=1m",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_http(f"http://{self.addr}/-/ready")

    def stop(self):
        self.proc.terminate()  # graceful: the Pushgateway writes its persistence file on shutdown
        self.proc.wait(20)

    def series(self, name):
        body = urllib.request.urlopen(f"http://{self.addr}/metrics", timeout=5).read().decode()
        return [x for x in body.splitlines() if x.startswith(name + "{")]


@pytest.fixture
def observed_training(tmp_path):
    pg = Pushgateway(tmp_path)
    pg.start()
    rule_files = []
    for stem, groups in spec.rule_groups().items():
        (tmp_path / f"{stem}.rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
        rule_files.append(str(tmp_path / f"{stem}.rules.yaml"))
    (tmp_path / "thresholds.rules.yaml").write_text(yaml.safe_dump({"groups": [spec.threshold_rules(training_stale_days=7)]}))
    rule_files.append(str(tmp_path / "thresholds.rules.yaml"))
    prom_port = free_port()
    prom_cfg = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
        "rule_files": rule_files,
        # as the chart's ServiceMonitor does (honorLabels): keep the job/model labels training pushes
        "scrape_configs": [{"job_name": "pushgateway", "honor_labels": True, "static_configs": [{"targets": [pg.addr]}]}],
    }
    prom = start_prometheus(tmp_path, prom_cfg, prom_port)
    url = f"http://127.0.0.1:{prom_port}"
    try:
        wait_http(f"{url}/-/ready")
        yield pg, url
    finally:
        prom.terminate()
        if pg.proc.poll() is None:
            pg.stop()
        prom.wait(20)


def wait_alert(prom, alertname, state, timeout=30, **labels):
    matchers = ",".join([f'alertname="{alertname}"', f'alertstate="{state}"', *(f'{k}="{v}"' for k, v in labels.items())])
    deadline = time.time() + timeout
    while time.time() < deadline:
        if found := query(prom, f"ALERTS{{{matchers}}}"):
            return found
        time.sleep(0.5)
    raise AssertionError(f"no {state} {alertname} {labels} within {timeout}s; ALERTS: {query(prom, 'ALERTS')}")


def test_stale_fires_while_runs_keep_failing_and_survives_a_pushgateway_restart(observed_training):
    pg, prom = observed_training
    now = time.time()
    # mnist published 8 days ago (the stale threshold is 7 days) ...
    ok = metrics.TrainingMetrics("mnist", "strong")
    ok.set(metrics.GATE_PASSED, 1)
    ok.set(metrics.LAST_RUN, now - 8 * DAY)
    ok.set(metrics.LAST_SUCCESS, now - 8 * DAY)
    ok.push(pg.addr)
    # ... and every run since has failed: the next run pushes its epochs, then a failed gate
    failing = metrics.TrainingMetrics("mnist", "strong")
    failing.set(metrics.EPOCHS, 1)
    failing.push(pg.addr)
    failing.set(metrics.GATE_PASSED, 0)
    failing.set(metrics.LAST_RUN, now)
    failing.push(pg.addr)
    # fashion trains too, but no run of it ever published
    never = metrics.TrainingMetrics("fashion", "seed")
    never.set(metrics.GATE_PASSED, 0)
    never.set(metrics.LAST_RUN, now)
    never.push(pg.addr)

    assert len(pg.series(metrics.LAST_SUCCESS)) == 1
    (stale,) = wait_alert(prom, "TrainingStale", "firing", model="mnist")
    assert stale["metric"]["severity"] == "warning"
    wait_alert(prom, "TrainingQualityGateFailed", "firing", model="mnist")
    # TrainingNeverSucceeded holds for 10 minutes before it fires: pending proves its condition matched
    (pending,) = wait_alert(prom, "TrainingNeverSucceeded", "pending")
    assert pending["metric"]["model"] == "fashion"  # not mnist: its success is on record

    # a restarted Pushgateway still has the last success (persistence), so the alert keeps firing
    pg.stop()
    pg.start()
    assert len(pg.series(metrics.LAST_SUCCESS)) == 1 and 'model="mnist"' in pg.series(metrics.LAST_SUCCESS)[0]
    time.sleep(3)  # a few scrapes and evaluations of the restarted Pushgateway
    assert query(prom, 'up{job="pushgateway"} == 1')
    wait_alert(prom, "TrainingStale", "firing", model="mnist")

    # a new success resolves it, and is the one that stays
    fresh = metrics.TrainingMetrics("mnist", "strong")
    fresh.set(metrics.GATE_PASSED, 1)
    fresh.set(metrics.LAST_SUCCESS, time.time())
    fresh.push(pg.addr)
    deadline = time.time() + 30
    while time.time() < deadline and query(prom, 'ALERTS{alertname="TrainingStale", alertstate="firing"}'):
        time.sleep(0.5)
    assert not query(prom, 'ALERTS{alertname="TrainingStale", alertstate="firing"}')
