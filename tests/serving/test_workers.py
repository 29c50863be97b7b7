"""Several server processes per pod (issue 18 item 2): real processes on loopback, one shared port."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.serving.conftest import ServerProcess
from tests.serving.test_process import metric, post

pytestmark = pytest.mark.slow  # three processes, two of them TensorFlow


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(x) for x in text.split()]


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_two_workers_share_the_port_the_load_and_the_metrics_and_drain_together(store):
    s = ServerProcess(str(store), "--workers", "2", "--drain-seconds", "1")
    try:
        s.wait_ready()
        workers = children(s.proc.pid)
        assert len(workers) == 2, workers
        before = {w: cpu_ticks(w) for w in workers}
        codes: list[int] = []
        stop = threading.Event()

        def load():
            while not stop.is_set():
                codes.append(post(s.url)[0])  # a new connection each time: the kernel picks a worker

        threads = [threading.Thread(target=load, daemon=True) for _ in range(6)]
        for t in threads:
            t.start()
        time.sleep(3)
        stop.set()
        for t in threads:
            t.join(30)
        used = {w: cpu_ticks(w) - before[w] for w in workers}
        assert set(codes) == {200} and len(codes) > 50, (set(codes), len(codes))
        assert all(v > 20 for v in used.values()), used  # both did real work (> 0.2 s of CPU each)
        # one set of metrics for the pod: the workers' counts add up on the supervisor's metrics port
        assert metric(
            s.metrics_url, "mlplatform_serving_requests_total", '{code="200",model="mnist",route="predict",traffic="user"}'
        ) == len(codes)
        assert metric(s.metrics_url, "mlplatform_serving_queue_capacity", '{model="mnist"}') == 2 * 1024
        assert metric(s.metrics_url, "mlplatform_serving_model_ready", '{model="mnist"}') == 1
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(60) == 0
        assert not any(Path(f"/proc/{w}").exists() for w in workers)  # ended and reaped
    finally:
        s.stop()


def test_a_dead_worker_takes_the_pod_down(store):
    s = ServerProcess(str(store), "--workers", "2", "--drain-seconds", "0")
    try:
        s.wait_ready()
        victim = children(s.proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        assert s.proc.wait(60) == 1  # the kubelet restarts the container; nothing serves with half its processes
    finally:
        s.stop()


def _health(url: str) -> int | None:
    """/healthz's status, or None when no answer came in 1 s (the kernel gave the connection to the stopped worker)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/healthz", timeout=1) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def test_a_hung_worker_fails_the_pods_liveness(store):
    """Issue 23 item 9: a stopped (not dead) worker never exits; its heartbeat stops and every other
    worker answers /healthz 503, so the kubelet restarts the container. It beats again: 200."""
    s = ServerProcess(str(store), "--workers", "2", "--drain-seconds", "0", "--worker-heartbeat-timeout-s", "2")
    try:
        s.wait_ready()
        assert _health(s.url) == 200
        victim = children(s.proc.pid)[0]
        os.kill(victim, signal.SIGSTOP)
        stopped_at, seen = time.monotonic(), []
        while time.monotonic() - stopped_at < 20 and 503 not in seen:
            seen.append(_health(s.url))
        detected = time.monotonic() - stopped_at
        assert 503 in seen and detected < 10, (seen, detected)
        assert s.proc.poll() is None  # the pod is not taken down by the supervisor: liveness decides
        os.kill(victim, signal.SIGCONT)
        deadline, after = time.monotonic() + 20, []
        while time.monotonic() < deadline and after[-3:] != [200, 200, 200]:
            after.append(_health(s.url))
        assert after[-3:] == [200, 200, 200], after
    finally:
        s.stop()
