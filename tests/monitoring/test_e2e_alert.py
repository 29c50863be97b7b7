"""End to end: the real model server, a real Prometheus (our rules, 1 s scrape) and a real
Alertmanager (our routing) delivering to a webhook receiver in this test. A real fault (the server
is killed) must page within 60 s, with our labels and annotations, and resolve when it is back."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
import yaml

from monitoring import spec
from tests.serving.conftest import ServerProcess, free_port, publish

pytestmark = pytest.mark.e2e


def binary(*names):
    for n in names:
        if path := shutil.which(n):
            return path
    pytest.fail(f"none of {names} installed: apt-get install prometheus prometheus-alertmanager (.ci/run does)")


class Receiver:
    """A webhook receiver: records every Alertmanager notification."""

    def __init__(self):
        self.notifications: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.notifications.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, alertname, status, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for n in self.notifications:
                for a in n["alerts"]:
                    if a["labels"]["alertname"] == alertname and a["status"] == status:
                        return a
            time.sleep(0.2)
        raise AssertionError(
            f"no {status} {alertname} within {timeout}s; got {[(a['labels']['alertname'], a['status']) for n in self.notifications for a in n['alerts']]}"
        )


def start_prometheus(folder, config, port, *flags):
    """A real Prometheus on 127.0.0.1:``port`` with ``config`` (written to ``folder``/prom.yaml) and
    its own TSDB in ``folder``; the caller stops it."""
    (folder / "prom.yaml").write_text(yaml.safe_dump(config))
    return subprocess.Popen(
        [
            binary("prometheus"),
            f"--config.file={folder / 'prom.yaml'}",
            f"--storage.tsdb.path={folder / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            *flags,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_http(url, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} not up")


def query(prom, q):
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    return json.loads(urllib.request.urlopen(url, timeout=5).read())["data"]["result"]


def _start_alertmanager(tmp_path, receiver, port):
    am_cfg = spec.alertmanager_config(
        SimpleNamespace(webhook_url=receiver.url, slack_channel=None, email_to=None, smtp_smarthost=None, smtp_from=None), False, False
    )
    am_cfg["route"].update(group_wait="1s", group_interval="1s", repeat_interval="1h")
    (tmp_path / "am.yaml").write_text(yaml.safe_dump(am_cfg))
    return subprocess.Popen(
        [
            binary("prometheus-alertmanager", "alertmanager"),
            f"--config.file={tmp_path / 'am.yaml'}",
            f"--storage.path={tmp_path / 'am'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _prometheus_config(tmp_path, am_port, metrics_port):
    """Our rules (as the PrometheusRules carry them) and one scrape of the server, as in the cluster."""
    rule_files = []
    for stem, groups in spec.rule_groups().items():
        (tmp_path / f"{stem}.rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
        rule_files.append(str(tmp_path / f"{stem}.rules.yaml"))
    (tmp_path / "thresholds.rules.yaml").write_text(yaml.safe_dump({"groups": [spec.threshold_rules()]}))
    rule_files.append(str(tmp_path / "thresholds.rules.yaml"))
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
        "rule_files": rule_files,
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
        "scrape_configs": [
            {
                # as the ServiceMonitor makes it in the cluster: job = the Service's name
                "job_name": "model-server",
                "static_configs": [
                    # /metrics is on the metrics port (the ServiceMonitor's port), not the API port
                    {"targets": [f"127.0.0.1:{metrics_port}"], "labels": {"namespace": "ml-serving", "pod": "model-server-0"}}
                ],
            }
        ],
    }


@pytest.fixture
def observed(tmp_path):
    procs: list[subprocess.Popen] = []
    receiver = Receiver()
    root = tmp_path / "store"
    publish(root, "v1", seed=1)
    server = ServerProcess(f"file://{root}")
    server.wait_ready()

    am_port, prom_port = free_port(), free_port()
    procs.append(_start_alertmanager(tmp_path, receiver, am_port))
    prom_cfg = _prometheus_config(tmp_path, am_port, server.metrics_port)
    procs.append(start_prometheus(tmp_path, prom_cfg, prom_port, "--rules.alert.resend-delay=1s"))
    prom = f"http://127.0.0.1:{prom_port}"
    wait_http(f"{prom}/-/ready")
    wait_http(f"http://127.0.0.1:{am_port}/-/ready")
    env = SimpleNamespace(server=server, prom=prom, receiver=receiver, root=root)
    try:
        yield env
    finally:
        env.server.stop()
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(20)
        receiver.server.shutdown()


def test_server_down_pages_and_resolves(observed):
    stack = observed
    deadline = time.time() + 30
    while time.time() < deadline and not query(stack.prom, 'up{job="model-server"} == 1'):
        time.sleep(0.5)
    assert query(stack.prom, 'up{job="model-server"} == 1'), "Prometheus never scraped the server"
    assert query(stack.prom, "mlplatform_serving_model_ready") and query(stack.prom, "mlplatform:serving_latency_slo_seconds")

    port, metrics_port = stack.server.port, stack.server.metrics_port
    stack.server.stop()  # the fault: the model server dies
    stack.server.proc.wait()
    fired_at = time.time()
    alert = stack.receiver.wait_for("ModelServerDown", "firing", timeout=60)
    assert time.time() - fired_at < 60
    assert alert["labels"] == {
        "alertname": "ModelServerDown",
        "severity": "critical",
        "job": "model-server",
        "namespace": "ml-serving",
        "pod": "model-server-0",
        "instance": f"127.0.0.1:{metrics_port}",
    }
    assert alert["annotations"]["summary"] == "Model server model-server-0 is down"
    assert alert["annotations"]["runbook_url"].endswith("#modelserverdown")
    assert "ml-serving" in alert["annotations"]["description"]

    # recovery: the server comes back on the same address
    back = ServerProcess.__new__(ServerProcess)
    back.port, back.url, back.metrics_port = port, f"http://127.0.0.1:{port}", metrics_port
    import subprocess as sp
    import sys

    from tests.serving.conftest import ROOT

    back.proc = sp.Popen(
        [
            sys.executable,
            "-m",
            "serving",
            "--model-uri",
            f"file://{stack.root}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--metrics-port",
            str(metrics_port),
        ],
        cwd=ROOT,
        stdout=sp.PIPE,
        stderr=sp.STDOUT,
        text=True,
        start_new_session=True,
    )
    stack.server = back
    back.wait_ready()
    resolved = stack.receiver.wait_for("ModelServerDown", "resolved", timeout=60)
    assert resolved["labels"]["alertname"] == "ModelServerDown"
