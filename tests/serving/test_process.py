"""The real server as a process under real HTTP load: overload, SIGTERM, hot swap, corrupt versions."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request

import numpy as np

from tests.serving.conftest import make_model_dir, publish
from training import artifacts

BODY = json.dumps({"instances": [np.linspace(0, 1, 784).reshape(28, 28, 1).round(4).tolist()]}).encode()


def post(url, body=BODY, timeout=30):
    req = urllib.request.Request(url + "/v1/models/mnist:predict", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}"), dict(e.headers)


class Load:
    """Client threads sending predicts in a loop; records (status, model_version) per request."""

    def __init__(self, url, threads=8, body=BODY):
        self.url, self.body = url, body
        self.results: list[tuple[int, str]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self):
        while not self._stop.is_set():
            try:
                status, doc, _ = post(self.url, self.body)
                self.results.append((status, doc.get("model_version", "")))
            except OSError as exc:
                self.errors.append(repr(exc))

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(30)


def metric(url, name, labels=""):
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + labels + " ") or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_overload_gives_429_then_recovers(store, server_factory):
    # decoded inline (the ~300 KB body would otherwise queue behind the one parse worker, not in the model's queue)
    s = server_factory(
        str(store), "--max-queue", "64", "--max-batch-size", "64", "--batch-timeout-ms", "20", "--offload-body-bytes", "1048576"
    )
    big = json.dumps({"instances": [np.zeros((28, 28, 1)).tolist()] * 64}).encode()
    with Load(s.url, threads=16, body=big) as load:
        time.sleep(3)
    codes = {c for c, _ in load.results}
    assert 429 in codes and 200 in codes, codes
    assert codes <= {200, 429}, codes
    assert load.errors == []
    status, doc, headers = post(s.url)  # the queue drained: served again
    assert status == 200
    _, _, h429 = next((post(s.url, big) for _ in range(1)), (None, None, {}))
    assert s.proc.poll() is None
    assert metric(s.metrics_url, "mlplatform_serving_requests_total", '{code="429",model="mnist",route="predict",traffic="user"}') >= 1


def test_429_carries_retry_after(store, server_factory):
    s = server_factory(str(store), "--max-queue", "1", "--batch-timeout-ms", "50")
    two = json.dumps({"instances": [np.zeros((28, 28, 1)).tolist()] * 2}).encode()
    status, doc, headers = post(s.url, two)
    assert status == 429 and headers.get("retry-after") == "1" and "queue full" in doc["error"]


def test_sigterm_under_load_loses_nothing(store, server_factory):
    s = server_factory(str(store), "--drain-seconds", "3")
    with Load(s.url, threads=8) as load:
        time.sleep(1.0)
        s.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        ready = urllib.request.Request(s.url + "/readyz")
        try:
            urllib.request.urlopen(ready, timeout=2)
            not_ready = False
        except urllib.error.HTTPError as e:
            not_ready = e.code == 503
        time.sleep(1.2)  # the load balancer keeps sending during the drain window
    assert not_ready, "readyz must fail as soon as draining starts"
    assert load.errors == [], load.errors[:3]
    codes = [c for c, _ in load.results]
    assert len(codes) > 50 and set(codes) == {200}, set(codes)
    assert s.proc.wait(30) == 0


def test_hot_swap_under_load_has_no_errors(tmp_path, server_factory):
    root = tmp_path / "store"
    publish(root, "v1", seed=1)
    s = server_factory(f"file://{root}", "--poll-seconds", "0.3")
    with Load(s.url, threads=6) as load:
        time.sleep(0.5)
        publish(root, "v2", seed=2)
        deadline = time.time() + 60
        while time.time() < deadline and not any(v == "v2" for _, v in load.results[-20:]):
            time.sleep(0.2)
        time.sleep(0.5)
    assert load.errors == []
    assert {c for c, _ in load.results} == {200}
    versions = [v for _, v in load.results]
    assert "v1" in versions and "v2" in versions
    first_v2 = versions.index("v2")
    assert "v1" not in versions[first_v2 + 30 :]  # switched, and stays switched
    assert metric(s.metrics_url, "mlplatform_serving_model_info", '{model="mnist",version="v2"}') == 1


def test_corrupt_version_is_refused_and_old_keeps_serving(tmp_path, server_factory):
    root = tmp_path / "store"
    publish(root, "v1", seed=1)
    s = server_factory(f"file://{root}", "--poll-seconds", "0.3")
    # v2: published with its digests, but corrupt (truncated model files): it passes the registry
    # checks and fails to load (bytes altered after publishing are a digest refusal: test_integrity.py)
    vdir = make_model_dir(tmp_path / "build-v2", "v2", seed=2)
    (vdir / "saved_model" / "saved_model.pb").write_bytes(b"\x08 truncated")
    (vdir / "model.keras").write_bytes(b"PK\x03\x04 truncated")
    artifacts.publish(vdir, f"file://{root}", "mnist", "v2")
    # The first version the server sees is v1 (already loaded); give the poller time to see v2.
    deadline = time.time() + 30
    while (
        time.time() < deadline
        and (metric(s.metrics_url, "mlplatform_serving_model_load_failures_total", '{model="mnist",reason="load"}') or 0) < 1
    ):
        time.sleep(0.2)
    assert metric(s.metrics_url, "mlplatform_serving_model_load_failures_total", '{model="mnist",reason="load"}') == 1
    status, doc, _ = post(s.url)
    assert status == 200 and doc["model_version"] == "v1"
    # an incompatible model (3 classes) is refused too, with its own reason
    publish(root, "v3", seed=3, kind="wrong-output")
    deadline = time.time() + 30
    while (
        time.time() < deadline
        and (metric(s.metrics_url, "mlplatform_serving_model_load_failures_total", '{model="mnist",reason="incompatible"}') or 0) < 1
    ):
        time.sleep(0.2)
    assert metric(s.metrics_url, "mlplatform_serving_model_load_failures_total", '{model="mnist",reason="incompatible"}') == 1
    assert post(s.url)[1]["model_version"] == "v1"
    assert "refusing model mnist version v2" in s.stop()
