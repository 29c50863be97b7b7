"""Dynamic batching per model: concurrent requests to one model are merged into one model call.

Requests wait in a bounded queue (counted in instances). One worker per model takes what is queued,
up to ``max_batch_size`` instances, lets the event loop turn once (requests already received join),
then waits at most ``max_wait_s`` for more when the queue runs dry, and runs the model in a dedicated
thread so the event loop keeps accepting requests meanwhile. While a batch runs, the next one
accumulates: under load, batches fill without any waiting. The default wait is 0 (Triton's default
``max_queue_delay_microseconds``): under a closed-loop load, the clients whose requests are in the
batch cannot send more, so waiting for them only idles the CPU (measured in bench/serving.py).
Triton: "by default the dynamic batcher ... will not delay when forming batches"
(https://docs.nvidia.com/deeplearning/triton-inference-server/user-guide/docs/batcher.html).

A batch only merges requests for the same signature whose inputs have the same per-instance shapes
(a signature with variable non-batch dimensions is batched only among equal shapes); a model
whose signature has no batch dimension is called once per request. Models never share a batcher.

Where the model runs: in the inference thread, so the event loop keeps parsing requests while a batch
runs on another core. A process that is one of several in its pod (``--workers``: each has a core of
its own) runs batches inline in the event loop instead, if the model is fast: a full batch, timed at
load (``LoadedModel.max_batch_seconds``), under ``inline_below_s``. There the thread's hand-off (and
the two threads taking turns on the GIL) costs more than it overlaps (measured: +25 % req/s, -20 % CPU
per request with 2 processes). A slow model still runs in the thread, so a long batch never holds up
health checks. (Timing batches in the thread under load would not do: there they wait for the GIL.)
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from serving.errors import Overloaded

log = logging.getLogger("serving")


@dataclass
class _Item:
    signature: str
    inputs: dict[str, np.ndarray]
    n: int
    future: asyncio.Future
    # Warm-up traffic (serving/warmup.py) is answered like any request but its synthetic instances say
    # nothing about the classes users see: the class mix counts user requests only.
    warmup: bool = False

    def key(self):
        return self.signature, tuple((k, v.shape[1:]) for k, v in self.inputs.items())


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():  # the batch still runs; its result for this request is dropped
        fut.set_exception(TimeoutError())


class Batcher:
    def __init__(
        self, get_model, max_batch_size: int, max_wait_s: float, max_queue: int, metrics, model_name: str, inline_below_s: float = 0.0
    ):
        self._get_model = get_model  # the current LoadedModel (hot-swapped atomically)
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.model_name = model_name
        self._metrics = metrics
        self._m_queue = metrics.queue_depth.labels(model=model_name)
        self._m_infer = metrics.inference_seconds.labels(model=model_name)
        self._m_batch = metrics.batch_size.labels(model=model_name)
        metrics.queue_capacity.labels(model=model_name).set(max_queue)
        self._pending: collections.deque[_Item] = collections.deque()
        self._queued = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"inference-{model_name}")
        self.inline_below_s = inline_below_s  # 0: always the inference thread

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Finish what is queued, then stop the worker."""
        while self._pending:
            await asyncio.sleep(0.005)
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    @property
    def queued(self) -> int:
        return self._queued

    async def submit(
        self, signature: str, inputs: dict[str, np.ndarray], n: int, timeout_s: float | None = None, warmup: bool = False
    ) -> tuple[dict[str, np.ndarray], str]:
        """Outputs for ``inputs`` (``n`` instances) and the model version that produced them;
        TimeoutError after ``timeout_s`` (a timer on the future: cheaper than asyncio.wait_for's task)."""
        if self._queued + n > self.max_queue:
            raise Overloaded(f"queue full ({self._queued}/{self.max_queue} instances waiting): retry later")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append(_Item(signature, inputs, n, fut, warmup))
        self._queued += n
        self._m_queue.set(self._queued)
        self._wakeup.set()
        if timeout_s is None:
            return await fut
        timer = loop.call_later(timeout_s, _expire, fut)
        try:
            return await fut
        finally:
            timer.cancel()

    async def _take(self) -> list[_Item]:
        while not self._pending:
            self._wakeup.clear()
            await self._wakeup.wait()
        model = self._get_model()
        first = self._pending.popleft()
        batch, size = [first], first.n
        if model is None or not model.signatures[first.signature].spec.batched:
            return batch
        key = first.key()
        deadline = time.monotonic() + self.max_wait_s
        yielded = False
        while True:
            while self._pending and size + self._pending[0].n <= self.max_batch_size and self._pending[0].key() == key:
                item = self._pending.popleft()
                batch.append(item)
                size += item.n
            if size >= self.max_batch_size or self._pending:
                break  # full, or the next request does not fit this batch
            if not yielded:
                # Requests already received wait in the loop's ready queue: one turn of the loop lets
                # them in, at no cost in latency.
                yielded = True
                await asyncio.sleep(0)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        return batch

    def _observe(self, batch: list[_Item], y: dict[str, np.ndarray], version: str) -> None:
        """The class mix the version answered to users, counted once per batch (not per request): the
        canary analysis' quality signal. All outputs, whatever a v2 client asked back; warm-up rows out."""
        if any(i.warmup for i in batch):
            rows = np.concatenate([np.full(i.n, not i.warmup) for i in batch])
            if not rows.any():
                return
            y = {k: v[rows] for k, v in y.items()}
        try:
            self._metrics.observe_outputs(self.model_name, version, y)
        except Exception:  # noqa: BLE001 - a metric must never stop the batcher
            log.exception("model %s: counting outputs failed", self.model_name)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._take()
            self._queued -= sum(i.n for i in batch)
            self._m_queue.set(self._queued)
            model = self._get_model()
            first = batch[0]
            if len(batch) == 1:
                x = first.inputs
            else:
                x = {k: np.concatenate([i.inputs[k] for i in batch]) for k in first.inputs}
            start = time.perf_counter()
            try:
                if self.inline_below_s and model.max_batch_seconds < self.inline_below_s:
                    y = model.signatures[first.signature](x)
                else:
                    y = await loop.run_in_executor(self._executor, model.signatures[first.signature], x)
            except Exception as exc:  # noqa: BLE001 - delivered to every waiting request as a 500
                for i in batch:
                    if not i.future.done():
                        i.future.set_exception(exc)
                continue
            self._m_infer.observe(time.perf_counter() - start)
            self._m_batch.observe(sum(i.n for i in batch))
            offset = 0
            for i in batch:
                if not i.future.done():  # the client may have gone away
                    if len(batch) == 1:
                        i.future.set_result((y, model.version))
                    else:
                        i.future.set_result(({k: v[offset : offset + i.n] for k, v in y.items()}, model.version))
                offset += i.n
            self._observe(batch, y, model.version)
