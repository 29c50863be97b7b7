"""The real server process under stress (issue 23 item 9): a large BYTES request must not stall the
event loop, and clients that never read their responses are cut off by the write deadline."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import numpy as np
import pytest

from tests.serving.conftest import ServerProcess
from tests.serving.test_abuse import _started as started
from tests.serving.test_process import metric


def _started(*args) -> ServerProcess:
    """A ready server whose models all come from ``args`` (no store argument)."""
    return started("", *args)


# Many short elements: the per-element work is what stalled the loop (the signature's batch
# dimension is open, so the server's --max-batch-size is the bound).
N = 1 << 17


def bytes_request(n: int, total: int) -> tuple[bytes, int]:
    """An Open Inference Protocol binary request of ``n`` BYTES elements of uneven lengths, ``total`` bytes in all."""
    rng = np.random.default_rng(0)
    sizes = rng.integers(total // n // 2, total // n * 3 // 2, n)
    words = [(b"the cat sat on the mat " * (int(k) // 23 + 1))[: int(k)] for k in sizes]
    raw = b"".join(len(w).to_bytes(4, "little") + w for w in words)
    head = json.dumps(
        {
            "inputs": [{"name": "text", "shape": [n], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}],
            "outputs": [{"name": "tokens", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return head + raw, len(head)


def test_a_4mb_bytes_request_does_not_stall_healthz(model_dirs):
    s = _started(
        "--model", f"text={model_dirs['text']}", "--max-batch-size", str(N), "--max-queue", str(N), "--max-body-bytes", str(8 << 20)
    )
    try:
        body, head = bytes_request(N, 4 << 20)
        assert len(body) >= 4 << 20
        probes: list[float] = []
        done = threading.Event()
        result: dict = {}

        def send():
            c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=60)
            c.request("POST", "/v2/models/text/infer", body, {"Inference-Header-Content-Length": str(head)})
            r = c.getresponse()
            result["status"], result["body"], result["head"] = r.status, r.read(), r.getheader("Inference-Header-Content-Length", "0")
            done.set()

        health = http.client.HTTPConnection("127.0.0.1", s.port, timeout=5)
        health.request("GET", "/healthz")
        health.getresponse().read()  # connected and warm
        t = threading.Thread(target=send)
        t.start()
        while not done.is_set():
            start = time.perf_counter()
            health.request("GET", "/healthz")
            r = health.getresponse()
            r.read()
            probes.append(time.perf_counter() - start)
            assert r.status == 200
            time.sleep(0.005)
        t.join(60)
        assert result["status"] == 200, result["body"][:300]
        assert json.loads(result["body"][: int(result["head"])])["outputs"][0]["shape"] == [N]
        assert len(probes) >= 10, probes  # the probes ran while the request was in flight
        assert max(probes) < 0.1, f"/healthz took {max(probes) * 1000:.0f} ms during the request (median {np.median(probes) * 1000:.1f} ms)"
    finally:
        s.stop()


def _never_reads(port: int, stop: threading.Event, connected: threading.Event) -> None:
    """Pipelined requests with large answers (a 404 echoes its 60 KB path), never reading one."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    connected.set()
    request = b"GET /" + b"x" * 60_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    sock.settimeout(0.5)
    try:
        for _ in range(400):
            if stop.is_set():
                break
            try:
                sock.sendall(request)
            except TimeoutError:
                continue
    except OSError:
        pass  # reset by the server: what the deadline does
    finally:
        stop.wait(30)
        sock.close()


@pytest.fixture
def stop():
    event = threading.Event()
    yield event
    event.set()


def test_clients_that_never_read_are_cut_off_by_the_write_deadline(store, stop):
    s = _started("--model-uri", str(store), "--max-connections", "4", "--write-timeout-s", "1", "--header-timeout-s", "30")
    try:
        connected = [threading.Event() for _ in range(4)]
        threads = [threading.Thread(target=_never_reads, args=(s.port, stop, c), daemon=True) for c in connected]
        for t in threads:
            t.start()
        # The probe below must not take a slot before the four clients hold theirs (seen on a loaded
        # machine: the fourth was then refused, and only three could time out).
        assert all(c.wait(10) for c in connected)
        time.sleep(1)  # the server accepts them (its event loop is not blocked by their writes)
        started = time.monotonic()
        closed = 0.0
        full_seen = False
        while time.monotonic() - started < 30 and closed < 4:
            if not full_seen:  # while they hold their slots, a fifth client is refused
                c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=5)
                try:
                    c.request("GET", "/healthz")
                    full_seen = c.getresponse().status == 503
                except OSError:
                    pass
                c.close()
            closed = metric(s.metrics_url, "mlplatform_serving_connections_closed_total", '{reason="write_timeout"}') or 0.0
            time.sleep(0.2)
        assert closed == 4, closed
        assert full_seen
        c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=5)
        c.request("GET", "/healthz")
        assert c.getresponse().status == 200  # their slots are free again
    finally:
        stop.set()
        s.stop()
