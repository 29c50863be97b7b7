"""Capacity arithmetic of a stack: Kubernetes quantities, server processes per pod and their default
resources, the GPUs the pools hold and what LLM serving keeps of them. The rules (rules.py) and the
components (model service, Kueue quotas) compute from the same numbers. No Pulumi.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from components.config.llm import choose_pool

if TYPE_CHECKING:
    from components.config.schema import PlatformConfig, ServingConfig

# GPUs per node for the instance types we accept in GPU pools. cluster-autoscaler needs this number to
# scale a pool up from zero (it cannot read it from a node that does not exist yet).
GPU_COUNT: dict[str, int] = {
    **{f"g4dn.{s}": 1 for s in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    "g4dn.12xlarge": 4,
    "g4dn.metal": 8,
    **{f"g5.{s}": 1 for s in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    "g5.12xlarge": 4,
    "g5.24xlarge": 4,
    "g5.48xlarge": 8,
    **{f"g6.{s}": 1 for s in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    "g6.12xlarge": 4,
    "g6.24xlarge": 4,
    "g6.48xlarge": 8,
    **{f"g6e.{s}": 1 for s in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    "g6e.12xlarge": 4,
    "g6e.24xlarge": 4,
    "g6e.48xlarge": 8,
    "p3.2xlarge": 1,
    "p3.8xlarge": 4,
    "p3.16xlarge": 8,
    "p4d.24xlarge": 8,
    "p5.48xlarge": 8,
}


# Memory of one GPU of each family, MiB, as the driver reports it (nvidia-smi "memory.total", what
# vLLM's gpuMemoryUtilization is a share of; torch.cuda.mem_get_info). The GPUs (AWS instance type
# pages): g4dn T4 16 GB, g5 A10G 24 GB, g6 L4 24 GB, g6e L40S 48 GB, p3 V100 16 GB, p4d A100 40 GB,
# p5 H100 80 GB. The MiB figures are the drivers' usual reports for those boards (recalled, not
# measured here: no GPU on this machine); the fit check (llm/fit.py) also keeps OVERHEAD_GIB free.
GPU_MEMORY_MIB: dict[str, int] = {
    "g4dn": 15360,
    "g5": 23028,
    "g6": 23034,
    "g6e": 46068,
    "p3": 16384,
    "p4d": 40960,
    "p5": 81559,
}


def gpu_memory_mib(instance_type: str) -> int:
    """Memory of one GPU of ``instance_type`` (its family's); 0 for a type outside the catalogue."""
    return GPU_MEMORY_MIB.get(instance_type.split(".")[0], 0)


def pool_gpu_memory_mib(pool: Any) -> int:
    """The smallest GPU of a pool's instance types: the autoscaler may start any of them."""
    return min(gpu_memory_mib(t) for t in pool.instance_types)


def gpu_catalogue() -> dict[str, tuple[int, int]]:
    """Instance type -> (GPU MiB, GPUs per node), for the fit check's suggestions."""
    return {t: (gpu_memory_mib(t), n) for t, n in GPU_COUNT.items()}


# One model server process holds its own TensorFlow runtime and model: measured for MNIST with TF 2.21,
# ~290 MB private memory per process plus ~350 MB of shared libraries (README "Serving throughput").
SERVING_MEMORY_PER_PROCESS_MI = 512


def serving_resources_for(processes: int) -> dict[str, dict[str, str]]:
    """The default container resources of a pod with ``processes`` server processes: a core and
    512Mi requested per process, the limit one core per process (at least 2: the inference thread),
    and a 1Gi memory margin. One process: the plain defaults (500m/1Gi, 2/2Gi)."""
    n = processes
    return {
        "requests": {"cpu": f"{500 * n}m", "memory": f"{512 * (n + 1)}Mi"},
        "limits": {"cpu": str(max(2, n)), "memory": f"{1024 * (n + 1)}Mi"},
    }


# What one training worker requests (components/models/training_job.py): the queue's CPU quota must admit a run.
# One core (its limit is 4: it bursts where the node has room): a CPU-only run has only the system nodes
# (the GPU pools are tainted), and an m6i.large (dev, PR stacks) leaves about 1.7 cores to pods after
# the EKS reservation and the DaemonSets: 2 would never schedule there, and Kueue would admit and evict
# it in a loop (issue 29 item 6; tools/convergence.py rule (d) checks the fit on every stack).
TRAINING_WORKER_CPU = 1


def cpu_cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def memory_mib(quantity: str) -> float:
    """A memory quantity (``Quantity``'s binary suffixes, plain bytes, or ``m``: millibytes) in MiB."""
    m = re.fullmatch(r"([0-9.]+)(m|Ki|Mi|Gi|Ti)?", quantity)
    scale = {None: 1, "m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[m.group(2)]
    return float(m.group(1)) * scale / 2**20


def serving_processes(sv: ServingConfig) -> int:
    """Server processes per pod: ``processes``, or for ``auto`` the CPU limit rounded up (what
    serving/workers.py reads from the container's cgroup)."""
    return max(1, math.ceil(cpu_cores(sv.resources.limits.cpu))) if sv.processes == "auto" else sv.processes


def serving_reserved_gpus(cfg: PlatformConfig) -> dict[str, int]:
    """GPUs per pool that LLM serving may take at its max replicas. Serving is not queued (a queued
    replica would be a scale-up that waits behind training), so training's quota leaves them free."""
    reserved: dict[str, int] = {}
    for m in cfg.models.values():
        if m.runtime == "vllm" and m.llm is not None and m.adapter_of is None and (pool := choose_pool(m.llm, cfg.gpu_pools)) is not None:
            reserved[pool.name] = reserved.get(pool.name, 0) + m.llm.max_replicas * m.llm.gpus
    return reserved


def pools_gpu_capacity(pools: list[Any]) -> int:
    """GPUs of every pool at its max size (an unknown instance type counts 0: the rules report it)."""
    return sum(p.max * GPU_COUNT.get(p.instance_types[0], 0) for p in pools)


def gpus_per_node(pools: list[Any]) -> dict[str, int]:
    """GPUs of one node of each pool, by pool name (an unknown instance type: 0)."""
    return {p.name: GPU_COUNT.get(p.instance_types[0], 0) for p in pools}


def training_gpu_capacity(cfg: PlatformConfig, gpus: int) -> int:
    """GPUs a training run of workers with ``gpus`` each can get: the pools whose nodes hold a worker,
    at their max size, less what LLM serving may take there."""
    per_node, reserved = gpus_per_node(cfg.gpu_pools), serving_reserved_gpus(cfg)
    return sum(max(0, p.max * per_node[p.name] - reserved.get(p.name, 0)) for p in cfg.gpu_pools if per_node[p.name] >= gpus)
