"""Where this process sits in a training run: the one pure function from a pod's index to its cluster spec.

Kubernetes runs a multi-worker run as an Indexed Job (``completionMode: Indexed``, ``parallelism =
completions = workers``) with a headless Service as the pods' ``subdomain``: pod *i* is reachable at
``<job-name>-<i>.<service>`` and gets its index in ``JOB_COMPLETION_INDEX``. Every worker derives
the same cluster from the same environment, so nothing has to hand out addresses at run time.

Environment (all optional; no ``TRAIN_WORKERS`` or ``TRAIN_WORKERS=1`` is a single-worker run):

- ``TRAIN_WORKERS``: number of worker processes (pods) in the run.
- ``JOB_COMPLETION_INDEX``: this worker's index, 0..workers-1 (set by Kubernetes for Indexed Jobs;
  ``TRAIN_WORKER_INDEX`` overrides it).
- ``JOB_NAME``: the Job's name, the pods' hostname prefix.
- ``TRAIN_WORKER_SERVICE``: the headless Service (pod subdomain).
- ``TRAIN_WORKER_PORT`` (default 2222): the port each worker's TensorFlow server listens on.
- ``TRAIN_WORKER_HOST``: the host template, default ``{job}-{index}.{service}`` (Kubernetes DNS);
  on one machine use ``127.0.0.1`` with ``TRAIN_WORKER_PORT_STEP=1`` (worker i on port + i).

Worker 0 is the chief: it alone writes checkpoints and publishes (TensorFlow's
MultiWorkerMirroredStrategy convention when the cluster has no separate ``chief`` task).
"""

from __future__ import annotations

import json
import os
import random
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from training.env import env_int

DEFAULT_PORT = 2222
K8S_HOST = "{job}-{index}.{service}"


class ClusterError(ValueError):
    """The environment does not describe a valid cluster; the message names the variable."""


@dataclass(frozen=True)
class Cluster:
    workers: int
    index: int
    tf_config: dict | None  # None for a single-worker run

    @property
    def is_chief(self) -> bool:
        return self.index == 0


def tf_config(
    index: int,
    workers: int,
    *,
    job: str = "",
    service: str = "",
    port: int = DEFAULT_PORT,
    host: str = K8S_HOST,
    port_step: int = 0,
) -> dict:
    """TF_CONFIG for worker ``index`` of ``workers``: every worker's address, in index order, and this task."""
    if workers < 1:
        raise ClusterError(f"TRAIN_WORKERS must be >= 1, got {workers}")
    if not 0 <= index < workers:
        raise ClusterError(f"worker index {index} out of range for TRAIN_WORKERS={workers} (JOB_COMPLETION_INDEX must be 0..{workers - 1})")
    if "{job}" in host and not job:
        raise ClusterError("JOB_NAME is required to address the workers (pod hostnames are <job>-<index>)")
    if "{service}" in host and not service:
        raise ClusterError("TRAIN_WORKER_SERVICE is required to address the workers (the headless Service)")
    addresses = [f"{host.format(job=job, index=i, service=service)}:{port + i * port_step}" for i in range(workers)]
    return {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}


def from_env(env: Mapping[str, str] | None = None) -> Cluster:
    """The cluster this process belongs to, from the environment (see the module docstring)."""
    env = os.environ if env is None else env
    workers = env_int(env, "TRAIN_WORKERS", 1, ClusterError)
    index = env_int(env, "TRAIN_WORKER_INDEX", env_int(env, "JOB_COMPLETION_INDEX", 0, ClusterError), ClusterError)
    if workers == 1 and index == 0:
        return Cluster(1, 0, None)
    config = tf_config(
        index,
        workers,
        job=env.get("JOB_NAME", ""),
        service=env.get("TRAIN_WORKER_SERVICE", ""),
        port=env_int(env, "TRAIN_WORKER_PORT", DEFAULT_PORT, ClusterError),
        host=env.get("TRAIN_WORKER_HOST", K8S_HOST),
        port_step=env_int(env, "TRAIN_WORKER_PORT_STEP", 0, ClusterError),
    )
    return Cluster(workers, index, config)


def free_loopback_port(workers: int) -> int:
    """A base port with ``workers`` consecutive free ports on 127.0.0.1, for the one-machine layout
    (``TRAIN_WORKER_HOST=127.0.0.1``, ``TRAIN_WORKER_PORT_STEP=1``) that tests and benchmarks run."""
    for _ in range(50):
        base = random.randint(20000, 40000)
        try:
            for i in range(workers):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
    raise RuntimeError("no free loopback ports")


def export(cluster: Cluster) -> None:
    """Set TF_CONFIG for TensorFlow (before the strategy is created); a single worker clears it."""
    if cluster.tf_config is None:
        os.environ.pop("TF_CONFIG", None)
    else:
        os.environ["TF_CONFIG"] = json.dumps(cluster.tf_config)
