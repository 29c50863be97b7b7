"""Dynamic batching: concurrent requests are merged into one model call.

Requests wait in a bounded queue (counted in instances). One worker takes everything queued, up to
``max_batch_size`` instances, waiting at most ``max_wait_s`` for more when the queue runs dry, and
runs the model in a dedicated thread so the event loop keeps accepting requests meanwhile. While a
batch runs, the next one accumulates: under load, batches fill without any waiting.
"""

from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from serving.metrics import ServingMetrics


class QueueFull(Exception):
    """Back-pressure: the caller answers 429 with Retry-After."""


class Batcher:
    def __init__(self, get_model, max_batch_size: int, max_wait_s: float, max_queue: int, metrics: ServingMetrics):
        self._get_model = get_model  # the current LoadedModel (hot-swapped atomically)
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.metrics = metrics
        self._pending: collections.deque[tuple[np.ndarray, asyncio.Future]] = collections.deque()
        self._queued = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        metrics.queue_capacity.set(max_queue)

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

    async def submit(self, x: np.ndarray) -> tuple[np.ndarray, str]:
        """Predictions for ``x`` (n, 28, 28, 1) and the model version that produced them."""
        n = len(x)
        if self._queued + n > self.max_queue:
            raise QueueFull(f"queue full ({self._queued}/{self.max_queue} instances waiting)")
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((x, fut))
        self._queued += n
        self.metrics.queue_depth.set(self._queued)
        self._wakeup.set()
        return await fut

    async def _take(self) -> list[tuple[np.ndarray, asyncio.Future]]:
        while not self._pending:
            self._wakeup.clear()
            await self._wakeup.wait()
        batch, size = [], 0
        deadline = time.monotonic() + self.max_wait_s
        while True:
            while self._pending and size + len(self._pending[0][0]) <= self.max_batch_size:
                item = self._pending.popleft()
                batch.append(item)
                size += len(item[0])
            remaining = deadline - time.monotonic()
            if size >= self.max_batch_size or remaining <= 0 or (self._pending and batch):
                break  # full, out of time, or the next request does not fit
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._take()
            sizes = [len(x) for x, _ in batch]
            self._queued -= sum(sizes)
            self.metrics.queue_depth.set(self._queued)
            model = self._get_model()
            x = batch[0][0] if len(batch) == 1 else np.concatenate([x for x, _ in batch])
            start = time.perf_counter()
            try:
                y = await loop.run_in_executor(self._executor, model, x)
            except Exception as exc:  # noqa: BLE001 - delivered to every waiting request as a 500
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.metrics.inference_seconds.observe(time.perf_counter() - start)
            self.metrics.batch_size.observe(len(x))
            offset = 0
            for (_, fut), n in zip(batch, sizes, strict=True):
                if not fut.done():  # the client may have gone away
                    fut.set_result((y[offset : offset + n], model.version))
                offset += n
