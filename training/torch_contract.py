"""The training contract for PyTorch: the same run, with DistributedDataParallel instead of tf.distribute.

A PyTorch model's code reads its run from the same environment as a TensorFlow one
(training/contract.py: ``TRAIN_*``, the store, the gate, the Pushgateway) and hands back the same
things; only the devices and the training loop are PyTorch's::

    from training import contract, torch_contract

    def main():
        run = torch_contract.TorchRun.from_env("mnist-torch", gate=contract.Gate("test_accuracy", 0.97))
        contract.Stop.install()                        # SIGTERM: stop at the next step, exit 143
        model, optimizer, state = run.restore(build)   # build() -> (module, optimizer); resumes
        stopped = run.train(model, optimizer, loss, (x, y), state)  # epochs, DDP, checkpoints, metrics
        if stopped is not None:
            return stopped                             # 143 SIGTERM / 75 peer lost: resumes on restart
        if not run.gate_passes(results, evaluate=onnx_contract.onnx_evaluator(score)):
            return contract.EXIT_GATE
        run.publish_torch(model, held_out, results, output_names=["output_0"])  # ONNX (checked) + weights
        return contract.EXIT_OK

    sys.exit(torch_contract.launch(main))              # one process per GPU

models/mnist_torch/train.py is the complete example.

Distribution (DDP, https://pytorch.org/docs/stable/notes/ddp.html): every process is one replica.
A pod runs one process per GPU (:func:`launch`; on CPU one, or ``TRAIN_CPU_DEVICES`` processes);
a multi-worker run is the same Indexed Job as TensorFlow's, and :func:`torch_env` derives DDP's
rendezvous from the pod's index with training/cluster.py, the function that builds TF_CONFIG:
``MASTER_ADDR``/``MASTER_PORT`` are worker 0's address in that spec, ``RANK`` = pod index x
processes per pod + local rank, ``WORLD_SIZE`` = pods x processes per pod. Backend: NCCL on GPUs,
gloo on CPUs. Rank 0 is the chief: it alone writes checkpoints, pushes the run's metrics and publishes.

Each step every replica takes ``TRAIN_BATCH_SIZE`` examples of its shard of the epoch's shuffled
order (the same permutation on every rank, seeded by seed + epoch, so a resumed epoch replays the
same order), and the learning rate is the contract's (scaled by sqrt(replicas)). Checkpoints:
``epoch-NNNN.pt`` (model and optimizer state dicts, ``torch.save``) then ``state.json`` naming it,
each written atomically (training/storage.py: temp file + rename locally, one PUT on S3), the state
last, as the TensorFlow path does (contract.Checkpoint).

A SIGTERM on any worker stops every worker at the same step: the replicas agree on it with an
all-reduce per step (on a loaded 2-core machine under 1 % of a step of the MNIST CNN), so none is
left waiting in a collective for a peer that left. A peer that dies (killed, OOM, evicted) fails
the collective on the others: they exit 75, and the retried run resumes from the last checkpoint.
"""

from __future__ import annotations

import datetime
import io
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from training import cluster as clusters
from training import contract, onnx_contract
from training.env import env_int
from training.progress import Progress

log = logging.getLogger("training")
# A collective that has not completed in this long means a peer hangs (a dead one fails it at once:
# its connections close); long enough for the chief's checkpoint upload between two steps.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=5)
STOP_GRACE_S = 120  # the launcher's wait for its other processes after one failed (the pod's grace period)
WEIGHTS = "model.pt"


def torch_env(cluster: clusters.Cluster, local_rank: int = 0, local_world: int = 1, port: int = clusters.DEFAULT_PORT) -> dict[str, str]:
    """DDP's environment (``init_method="env://"``) for process ``local_rank`` of ``local_world`` in
    worker ``cluster.index``: the rendezvous is worker 0's address in the cluster's TF_CONFIG (so a
    run's pods find each other exactly as TensorFlow's do); one worker rendezvous on loopback at ``port``."""
    if not 0 <= local_rank < local_world:
        raise clusters.ClusterError(f"local rank {local_rank} out of range for {local_world} processes per worker")
    if cluster.tf_config is None:
        addr, master_port = "127.0.0.1", str(port)
    else:
        addr, master_port = cluster.tf_config["cluster"]["worker"][0].rsplit(":", 1)
    return {
        "MASTER_ADDR": addr,
        "MASTER_PORT": master_port,
        "RANK": str(cluster.index * local_world + local_rank),
        "WORLD_SIZE": str(cluster.workers * local_world),
        "LOCAL_RANK": str(local_rank),
        "LOCAL_WORLD_SIZE": str(local_world),
    }


def cpu_limit() -> int:
    """The container's CPUs: its cgroup v2 quota (a pod's CPU limit) rounded up, else the CPUs this
    process may run on. os.cpu_count() is the node's: 64 threads under a limit of 4 are throttled."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            return max(1, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def local_processes(env: Mapping[str, str]) -> int:
    """Processes per worker: one per GPU; on CPU one, or ``TRAIN_CPU_DEVICES`` (data parallel without GPUs)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count()
    return max(1, env_int(env, "TRAIN_CPU_DEVICES", 1, contract.ContractError) or 1)


class TorchCheckpoint(contract.Checkpoint):
    """contract.Checkpoint's layout and state file, with PyTorch's state dicts as the model file."""

    def load_into(self, model, optimizer) -> contract.RunState:
        import torch

        from training import storage

        state = self.state()
        if state is None:
            return contract.RunState()
        blob = torch.load(io.BytesIO(storage.read_bytes(storage.join(self.uri, state.checkpoint))), map_location="cpu", weights_only=True)
        model.load_state_dict(blob["model"])
        optimizer.load_state_dict(blob["optimizer"])
        return state

    def save(self, model, optimizer, state: contract.RunState) -> None:  # type: ignore[override]
        import json

        import torch

        from training import storage

        name = f"epoch-{state.epoch:04d}.pt"
        state.checkpoint = name
        if not self.writer:
            return
        buf = io.BytesIO()
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buf)
        storage.write_bytes(storage.join(self.uri, name), buf.getvalue())
        storage.write_bytes(storage.join(self.uri, "state.json"), json.dumps(state.__dict__).encode())
        log.info("checkpoint: epoch %d -> %s", state.epoch, storage.join(self.uri, name))


def peer_lost(exc: BaseException) -> bool:
    """A collective failed because another process went away (gloo: "Connection closed by peer",
    NCCL: a remote error or the collective timeout)."""
    import torch.distributed as dist

    if isinstance(exc, dist.DistError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(k in text for k in ("gloo", "nccl", "connection", "timed out", "peer"))


class TorchRun(onnx_contract.OnnxRun):
    """One PyTorch training run (one process: one replica); build it with :meth:`from_env`."""

    def __init__(self, model_name: str, *, local_rank: int = 0, local_world: int = 1, rendezvous_port: int = clusters.DEFAULT_PORT, **kw):
        super().__init__(model_name, **kw)
        self.local_rank, self.local_world = local_rank, local_world
        self.dist_env = torch_env(self.cluster, local_rank, local_world, rendezvous_port)
        self.rank, self.world_size = int(self.dist_env["RANK"]), int(self.dist_env["WORLD_SIZE"])
        from training.metrics import WorkerMetrics

        self.worker_metrics = WorkerMetrics(model_name, self.rank)
        if self.checkpoint:
            self.checkpoint = TorchCheckpoint(self.checkpoint.uri, writer=self.is_chief)
        self.device = None  # set by start()

    @classmethod
    def from_env(cls, model_name: str, *, gate: contract.Gate, env: Mapping[str, str] | None = None, **kw) -> TorchRun:
        """contract.Run.from_env, plus this process's place in its pod (set by :func:`launch`)."""
        env = os.environ if env is None else env
        return super().from_env(
            model_name,
            gate=gate,
            env=env,
            local_rank=env_int(env, "TRAIN_LOCAL_RANK", 0, contract.ContractError),
            local_world=env_int(env, "TRAIN_LOCAL_WORLD", 1, contract.ContractError),
            rendezvous_port=env_int(env, "TRAIN_WORKER_PORT", clusters.DEFAULT_PORT, contract.ContractError),
            **kw,
        )

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def start(self) -> None:
        """Pick this process's device, join the process group (several replicas), seed. Idempotent."""
        if self.device is not None:
            return
        import torch
        import torch.distributed as dist

        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
            # Each process's intra-op pool gets its share of the CPUs: N pools of all cores thrash.
            torch.set_num_threads(max(1, cpu_limit() // self.local_world))
        if self.distributed:
            os.environ.update(self.dist_env)
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend, init_method="env://", timeout=COLLECTIVE_TIMEOUT)
        log.info(
            "devices: rank %d of %d (%s, worker %d of %d)",
            self.rank,
            self.world_size,
            self.device,
            self.cluster.index,
            self.cluster.workers,
        )
        self.seed_everything()

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()

    def seed_everything(self) -> None:
        import torch

        super().seed_everything()
        torch.manual_seed(self.seed)
        if self.world_size == 1 and self.device is not None and self.device.type == "cpu":
            # Same seed + data + code -> same model on one CPU process (the contract's promise).
            torch.use_deterministic_algorithms(True)

    # ---- checkpoints ----

    def restore(self, build: Callable[[], tuple[Any, Any]]):
        """(model, optimizer, state): ``build()``'s module and optimizer on this process's device,
        with the last complete checkpoint's weights and optimizer state when there is one."""
        self.start()
        model, optimizer = build()
        model.to(self.device)
        state = self.checkpoint.load_into(model, optimizer) if self.checkpoint else contract.RunState()
        if state.epoch:
            log.info("resuming from %s after epoch %d", self.checkpoint.uri, state.epoch)
        return model, optimizer, state

    # ---- training ----

    def shard(self, n: int, epoch: int) -> np.ndarray:
        """This replica's example indices for ``epoch``: one permutation (seed + epoch) shared by all
        replicas, dealt round-robin, cut to a multiple of the replicas (every replica the same steps)."""
        order = np.random.default_rng(self.seed + epoch).permutation(n)
        return order[self.rank : n - n % self.world_size : self.world_size]

    def _stop_agreed(self) -> bool:
        if not self.distributed:
            return contract.Stop.requested
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1.0 if contract.Stop.requested else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _epoch(self, net, optimizer, loss_fn, tensors, epoch: int, progress: Progress | None) -> dict[str, float] | None:
        """One epoch; its logs, or None when stopped (SIGTERM) before its end."""
        import torch

        order = self.shard(len(tensors[0]), epoch)
        steps = -(-len(order) // self.batch_size)
        if progress:
            progress.begin_epoch(epoch, steps)
        net.train()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, examples
        for step in range(steps):
            if self._stop_agreed():
                return None
            idx = torch.from_numpy(order[step * self.batch_size : (step + 1) * self.batch_size])
            batch = [t[idx].to(self.device, non_blocking=True) for t in tensors]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(net, *batch)
            loss.backward()
            optimizer.step()
            total += torch.tensor([loss.item() * len(idx), len(idx)], dtype=torch.float64, device=self.device)
            if progress:
                progress.step(step + 1, {"loss": float(total[0] / total[1])})
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(total)  # the epoch's loss over every replica's examples
        return {"loss": float(total[0] / total[1]), "_steps": steps}

    def _end_epoch(self, model, optimizer, state: contract.RunState, logs: dict[str, float], seconds: float) -> None:
        from training.metrics import EPOCH_SECONDS, EPOCHS

        steps = int(logs.pop("_steps"))
        for k, v in logs.items():
            state.history.setdefault(k, []).append(float(v))
        state.epoch += 1
        self.metrics.set(EPOCH_SECONDS, seconds)
        self.metrics.set(EPOCHS, state.epoch)
        self.worker_metrics.observe_epoch(steps, steps * self.batch_size, seconds)
        self.worker_metrics.push(self.pushgateway)
        if self.checkpoint:
            self.checkpoint.save(model, optimizer, state)
        self.push()

    def train(
        self,
        model,
        optimizer,
        loss_fn: Callable[..., Any],
        data: tuple[np.ndarray, ...],
        state: contract.RunState,
        validate: Callable[[Any], Mapping[str, float]] | None = None,
    ) -> int | None:
        """Train ``model`` from the last complete epoch to ``epochs``: ``loss_fn(net, *batch)`` is a
        batch's loss (``net`` is the DDP-wrapped model with several replicas: call it, not ``model``,
        so the gradients are averaged), ``data`` the training arrays (indexed together),
        ``validate(model)`` optional held-out metrics shown per epoch as ``val_*``. Per epoch: the
        progress line, the history, the metrics and the checkpoint. None when training is complete;
        else the exit code to return: 143 stopped by SIGTERM, 75 a peer was lost."""
        import torch

        if state.epoch >= self.epochs:
            return None
        net = model
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(model, device_ids=[self.local_rank] if self.device.type == "cuda" else None)
        tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in data]
        progress = Progress(self.epochs, state.epoch) if self.local_rank == 0 else None
        stopped = False  # by a SIGTERM here or, agreed in the step's all-reduce, on another replica
        try:
            for epoch in range(state.epoch, self.epochs):
                start = time.perf_counter()
                logs = self._epoch(net, optimizer, loss_fn, tensors, epoch, progress)
                if logs is None:
                    stopped = True
                    break
                if validate is not None:
                    model.eval()
                    logs |= {f"val_{k}": float(v) for k, v in validate(model).items()}
                self._end_epoch(model, optimizer, state, logs, time.perf_counter() - start)
                if progress:
                    progress.end_epoch(logs)
        except RuntimeError as exc:
            if self.distributed and peer_lost(exc):
                log.error(
                    "a peer process was lost (%s): exiting for a restart from the checkpoint after epoch %d",
                    type(exc).__name__,
                    state.epoch,
                )
                return contract.EXIT_PEER_LOST
            raise
        if stopped or contract.Stop.requested:
            who = "SIGTERM" if contract.Stop.requested else "a SIGTERM on another replica"
            log.warning("stopped by %s after %d complete epochs; a restart resumes from the checkpoint", who, state.epoch)
            return contract.EXIT_PREEMPTED
        return None

    # ---- publish ----

    def publish_torch(
        self,
        model,
        held_out: Mapping[str, np.ndarray],
        results: Mapping[str, float],
        *,
        output_names: list[str],
        export_module=None,
        metadata: Mapping[str, Any] | None = None,
        tolerance: float = onnx_contract.onnx_export.TOLERANCE,
    ) -> str | None:
        """The chief exports ``export_module`` (default ``model``; e.g. the model plus its softmax)
        to ONNX with a dynamic batch dimension, checks it against the native module on ``held_out``
        (ExportMismatch: nothing published), and publishes ``model.onnx`` with the native weights
        (``model.pt``: ``model``'s state_dict, torch.save; ``torch.load(..., weights_only=True)``
        reads it without running pickled code)."""
        import copy

        import torch

        from training import onnx_export

        if not self.is_chief:
            return self.publish(lambda _out: None, results, metadata)
        module = copy.deepcopy(export_module if export_module is not None else model).cpu().eval()
        onnx_bytes = onnx_export.export_torch(module, {k: v[:2] for k, v in held_out.items()}, output_names)
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
        native = {
            "framework": "pytorch",
            "torch": torch.__version__.split("+")[0],
            "weights": WEIGHTS,
            "class": f"{type(model).__module__}.{type(model).__qualname__}",
        }
        return self.publish_onnx(
            onnx_bytes,
            onnx_export.torch_native(module, output_names),
            held_out,
            results,
            files={WEIGHTS: buf.getvalue()},
            metadata={"native": native, **(metadata or {})},
            tolerance=tolerance,
        )


# ---- one process per GPU ----


def _first_failure(children: list[subprocess.Popen]) -> int:
    """Wait for ``children``; once one fails, SIGTERM the rest (they stop at their next step or fail
    their collective) and wait up to STOP_GRACE_S for them. The first failure's exit code (killed by
    a signal: 75, retry), or 0."""
    first = 0
    deadline = None
    while any(c.poll() is None for c in children):
        for c in children:
            code = c.poll()
            if code not in (None, 0) and first == 0:
                first = code if code > 0 else contract.EXIT_PEER_LOST
                deadline = time.monotonic() + STOP_GRACE_S
                for other in children:
                    if other.poll() is None:
                        other.send_signal(signal.SIGTERM)
        if deadline is not None and time.monotonic() > deadline:
            for c in children:
                if c.poll() is None:
                    c.kill()
        time.sleep(0.2)
    if first == 0:
        failed = [c.returncode for c in children if c.returncode != 0]
        first = (failed[0] if failed[0] > 0 else contract.EXIT_PEER_LOST) if failed else 0
    return first


def launch(main: Callable[[], int], env: Mapping[str, str] | None = None) -> int:
    """Run ``main`` once per local device: in this process on one device, else in one child process
    per GPU (or per ``TRAIN_CPU_DEVICES`` on CPU), each re-running this program with
    ``TRAIN_LOCAL_RANK``/``TRAIN_LOCAL_WORLD`` set; SIGTERM is passed on to them. The exit code is
    the first failing process's (0 when all published or passed)."""
    env = os.environ if env is None else env
    if env.get("TRAIN_LOCAL_RANK"):
        return main()
    try:
        procs = local_processes(env)
    except contract.ContractError as exc:
        print(str(exc), file=sys.stderr)
        return contract.EXIT_USAGE
    if procs == 1:
        return main()
    log.info("launching %d processes, one per device", procs)
    argv = [sys.executable, *sys.orig_argv[1:]]
    children = [subprocess.Popen(argv, env={**env, "TRAIN_LOCAL_RANK": str(i), "TRAIN_LOCAL_WORLD": str(procs)}) for i in range(procs)]

    def forward(signum, _frame):
        for c in children:
            if c.poll() is None:
                c.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    return _first_failure(children)
