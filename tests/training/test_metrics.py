"""Training metrics: exact values in a fresh registry, and a real push to a real Pushgateway."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from training import metrics


def test_metric_values_are_exact():
    registry = CollectorRegistry()
    m = metrics.TrainingMetrics("mnist", "strong", registry=registry)
    m.set(metrics.ACCURACY, 0.9931)
    m.set(metrics.EPOCHS, 7)
    labels = {"model": "mnist", "arch": "strong"}
    assert registry.get_sample_value(metrics.ACCURACY, labels) == 0.9931
    assert registry.get_sample_value(metrics.EPOCHS, labels) == 7
    assert registry.get_sample_value(metrics.LAST_SUCCESS, labels) is None  # never set: no sample


def test_names_carry_units():
    for name in metrics.NAMES:
        assert name.startswith("mlplatform_training_")
        assert name.endswith(("_seconds", "_ratio", "_loss", "_completed", "_passed")), name


def test_unreachable_gateway_does_not_fail_training():
    m = metrics.TrainingMetrics("mnist", "seed", registry=CollectorRegistry())
    m.push("127.0.0.1:9")  # discard port: connection refused, logged only


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def pushgateway():
    binary = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
    if binary is None:
        pytest.fail("prometheus-pushgateway not installed (apt-get install prometheus-pushgateway; .ci/run does)")
    port = _free_port()
    proc = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_push_reaches_a_real_pushgateway(pushgateway):
    m = metrics.TrainingMetrics("mnist", "strong", registry=CollectorRegistry())
    m.set(metrics.ACCURACY, 0.991)
    m.set(metrics.GATE_PASSED, 1)
    m.push(pushgateway)
    body = urllib.request.urlopen(f"http://{pushgateway}/metrics", timeout=5).read().decode()
    line = next(x for x in body.splitlines() if x.startswith(metrics.ACCURACY + "{"))
    assert 'job="mlplatform-training"' in line and 'arch="strong"' in line and line.endswith(" 0.991")
