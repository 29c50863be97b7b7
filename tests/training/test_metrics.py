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
def pushgateway(tmp_path):
    binary = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
    if binary is None:
        pytest.fail("prometheus-pushgateway not installed (apt-get install prometheus-pushgateway; .ci/run does)")
    port = _free_port()
    # Debian's build defaults --persistence.file to /var/lib/prometheus/pushgateway.data: without a
    # file of its own, every test (and every other run on the machine) would share pushed groups.
    proc = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}", f"--persistence.file={tmp_path / 'pushgateway.data'}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
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


def _series(gateway, name):
    body = urllib.request.urlopen(f"http://{gateway}/metrics", timeout=5).read().decode()
    return [x for x in body.splitlines() if x.startswith(name + "{")]


def test_last_success_survives_later_runs_that_fail(pushgateway):
    """Issue 13 item 8: a push replaces its whole group, so the last success must not share a group
    with what every run pushes (epoch progress, a failed gate)."""
    ok = metrics.TrainingMetrics("mnist", "strong")
    ok.set(metrics.GATE_PASSED, 1)
    ok.set(metrics.LAST_SUCCESS, 1700000000)
    ok.push(pushgateway)
    nxt = metrics.TrainingMetrics("mnist", "strong")  # the next run: an epoch push, then a failed gate
    nxt.set(metrics.EPOCHS, 1)
    nxt.push(pushgateway)
    nxt.set(metrics.GATE_PASSED, 0)
    nxt.push(pushgateway)
    (line,) = _series(pushgateway, metrics.LAST_SUCCESS)
    assert 'model="mnist"' in line and 'job="mlplatform-training-success"' in line and line.endswith(" 1.7e+09")
    (gate,) = _series(pushgateway, metrics.GATE_PASSED)
    assert gate.endswith(" 0")


def test_a_run_with_another_arch_replaces_the_old_arch_series(pushgateway):
    """With a persistent Pushgateway, series keyed by an old arch would otherwise stay forever (and a
    failed gate of the old arch would keep TrainingQualityGateFailed firing)."""
    old = metrics.TrainingMetrics("mnist", "seed")
    old.set(metrics.GATE_PASSED, 0)
    old.push(pushgateway)
    new = metrics.TrainingMetrics("mnist", "strong")
    new.set(metrics.GATE_PASSED, 1)
    new.push(pushgateway)
    (gate,) = _series(pushgateway, metrics.GATE_PASSED)
    assert 'arch="strong"' in gate and gate.endswith(" 1")


def test_worker_throughput_is_exact():
    registry = CollectorRegistry()
    w = metrics.WorkerMetrics("mnist", worker=1, registry=registry)
    w.observe_epoch(steps=100, examples=12800, seconds=4.0)
    assert registry.get_sample_value(metrics.EXAMPLES_PER_SECOND, {"model": "mnist"}) == 3200
    assert registry.get_sample_value(metrics.STEP_SECONDS, {"model": "mnist"}) == 0.04
    w.observe_epoch(steps=0, examples=0, seconds=0.5)  # an interrupted epoch leaves the last figures
    assert registry.get_sample_value(metrics.EXAMPLES_PER_SECOND, {"model": "mnist"}) == 3200
    for name in metrics.WORKER_NAMES:
        assert name.startswith("mlplatform_training_") and name.endswith(("_second", "_seconds")), name


def test_every_worker_of_a_run_keeps_its_own_series(pushgateway):
    """Each worker pushes its own group: worker 1's push must not replace worker 0's figures."""
    for worker, rate in ((0, 1000.0), (1, 400.0)):
        w = metrics.WorkerMetrics("mnist", worker=worker, registry=CollectorRegistry())
        w.observe_epoch(steps=10, examples=int(rate * 2), seconds=2.0)
        w.push(pushgateway)
    lines = _series(pushgateway, metrics.EXAMPLES_PER_SECOND)
    by_worker = {next(p.split('"')[1] for p in x.split(",") if p.startswith("worker=")): float(x.rsplit(" ", 1)[1]) for x in lines}
    assert by_worker == {"0": 1000.0, "1": 400.0}
    assert all('job="mlplatform-training-worker"' in x and 'model="mnist"' in x for x in lines)
