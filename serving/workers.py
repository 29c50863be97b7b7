"""Several server processes per pod (``--workers N``): every core of the pod serves requests.

One Python process serves one core at best (the GIL); a pod with a 4-CPU limit needs 4 processes. The
supervisor (this module, no TensorFlow) starts N copies of the server. Each loads its own model and
batcher, binds the API port with SO_REUSEPORT, and the kernel spreads connections between them.

Metrics: prometheus_client's multiprocess mode. Each worker writes its samples to files in a shared
directory and the supervisor serves their sum on ``--metrics-port``. Per-process labels were the
alternative, but they multiply series by N and every rule would need a ``sum``; the aggregate keeps
the metric names, labels, rules and dashboards as they are. Gauges choose how to combine:
queue depth and capacity add up, readiness is the minimum, the served version the maximum.

Liveness: a worker that is hung, not dead (stopped, or its event loop blocked), never exits, so the
supervisor would never notice. Each worker's event loop touches a heartbeat file every second; the
supervisor marks the pod unhealthy while any worker's heartbeat is older than
--worker-heartbeat-timeout-s, and every worker then answers /healthz (and /readyz) 503, so the
kubelet's liveness probe (answered by whichever worker the kernel picks) restarts the container.

Readiness: a worker answers /readyz 200 only when every worker has loaded its models (a marker file per
worker), so a probe that reaches one worker speaks for the pod. Shutdown: SIGTERM is passed to every
worker, each drains as a single server does, and the supervisor exits 0 when all exited 0. A worker
that dies takes the pod down (exit 1): the kubelet restarts the container, and nothing serves with
fewer processes than it was sized for.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("serving.workers")
READY_DIR_ENV = "SERVING_INTERNAL_READY_DIR"
WORKERS_ENV = "SERVING_INTERNAL_WORKERS"
HEARTBEAT_S = 1.0
UNHEALTHY = "unhealthy"  # a file in the ready dir while some worker's heartbeat is stale


def cpu_limit() -> int:
    """The container's CPU limit in whole cores, rounded up (cgroup v2, then v1), else the CPU count."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota > 0:
            return max(1, math.ceil(quota / period))
    except (OSError, ValueError):
        pass
    return os.cpu_count() or 1


def count(value: str) -> int:
    """``--workers``: a number, or ``auto`` (the CPU limit)."""
    if value == "auto":
        return cpu_limit()
    n = int(value)
    if n < 1:
        raise ValueError("--workers must be at least 1 (or auto)")
    return n


def reuse_port_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def mark_ready() -> None:
    d = os.environ.get(READY_DIR_ENV)
    if d:
        Path(d, f"ready-{os.getpid()}").touch()


def beat() -> None:
    """This worker's event loop is alive (called every HEARTBEAT_S from it)."""
    d = os.environ.get(READY_DIR_ENV)
    if d:
        Path(d, f"alive-{os.getpid()}").touch()


def healthy() -> bool:
    """False while the supervisor sees a hung worker in this pod (always True for a single process)."""
    d = os.environ.get(READY_DIR_ENV)
    return d is None or not os.path.exists(os.path.join(d, UNHEALTHY))


def _hung(procs: list[subprocess.Popen], ready_dir: Path, timeout_s: float) -> list[int]:
    """Pids of running workers whose heartbeat is older than ``timeout_s`` (a worker that has not
    beaten yet is starting: its readiness covers it)."""
    now, hung = time.time(), []
    for p in procs:
        try:
            if p.poll() is None and now - Path(ready_dir, f"alive-{p.pid}").stat().st_mtime > timeout_s:
                hung.append(p.pid)
        except FileNotFoundError:
            pass
    return hung


def _mark_health(hung: list[int], ready_dir: Path, was: list[int]) -> list[int]:
    marker = ready_dir / UNHEALTHY
    if hung and not was:
        log.error("worker(s) %s hung: no heartbeat: failing liveness", hung)
        marker.write_text(" ".join(map(str, hung)))
    elif was and not hung:
        log.warning("worker(s) %s beat again: liveness restored", was)
        marker.unlink(missing_ok=True)
    return hung


def all_ready() -> bool:
    d, n = os.environ.get(READY_DIR_ENV), int(os.environ.get(WORKERS_ENV, "1"))
    return d is None or len(list(Path(d).glob("ready-*"))) >= n


def supervise(n: int, argv: list[str], host: str, metrics_port: int, heartbeat_timeout_s: float = 10.0) -> int:
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    base = Path(tempfile.mkdtemp(prefix="serving-workers-"))
    metrics_dir, ready_dir = base / "metrics", base / "ready"
    metrics_dir.mkdir()
    ready_dir.mkdir()
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        READY_DIR_ENV: str(ready_dir),
        WORKERS_ENV: str(n),
    }
    child_argv = [*argv, "--workers", "1", "--metrics-port", "0"]  # later flags win in argparse
    procs = [subprocess.Popen([sys.executable, "-m", "serving", *child_argv], env=env) for _ in range(n)]
    log.info("started %d workers: %s", n, [p.pid for p in procs])
    if metrics_port:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(metrics_dir))
        start_http_server(metrics_port, addr=host, registry=registry)

    stopping = False

    def forward(sig, frame):
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.poll() is None:
                p.send_signal(sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code, hung = 0, []
    try:
        while any(p.poll() is None for p in procs):
            dead = [p for p in procs if p.poll() is not None]
            if dead and not stopping:
                log.error("worker %d exited with %s: stopping the others", dead[0].pid, dead[0].returncode)
                code = 1
                forward(signal.SIGTERM, None)
            hung = _mark_health(_hung(procs, ready_dir, heartbeat_timeout_s), ready_dir, hung)
            time.sleep(0.2)
        if any(p.returncode != 0 for p in procs):
            code = code or 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            multiprocess.mark_process_dead(p.pid, str(metrics_dir))
        shutil.rmtree(base, ignore_errors=True)
    return code
