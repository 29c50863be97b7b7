"""The model server: a thin ASGI app, TF-Serving compatible REST API.

    GET  /v1/models/{name}            model status (TF-Serving shape)
    POST /v1/models/{name}:predict    {"instances": [...]} or {"inputs": [...]} -> {"predictions": [...]}
    GET  /healthz                     liveness (the process is up)
    GET  /readyz                      readiness (a model is loaded and we are not draining)
    GET  /metrics                     Prometheus

Nothing a client sends produces a 5xx: malformed input is a 400 with a JSON reason, an oversized
body a 413, a full queue a 429 with Retry-After. A raw ASGI app (no framework) keeps the hot path short.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from dataclasses import dataclass

import numpy as np
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from serving import model as model_lib
from serving.batcher import Batcher, QueueFull
from serving.metrics import ServingMetrics

log = logging.getLogger("serving")


@dataclass
class Settings:
    model_uri: str
    model_name: str = "mnist"
    max_batch_size: int = 64  # instances per model call, and per request
    batch_timeout_ms: float = 2.0
    max_queue: int = 1024  # instances waiting before 429
    max_body_bytes: int = 4 * 1024 * 1024
    request_timeout_s: float = 10.0
    poll_seconds: float = 30.0  # how often to look for a new LATEST (0: never)


class BadRequest(Exception):
    def __init__(self, status: int, message: str, headers: list | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or []


def parse_instances(body: bytes, max_batch: int) -> np.ndarray:
    """Request body -> float32 array (n, 28, 28, 1), or BadRequest with the reason."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest(400, 'body must be a JSON object with "instances" or "inputs"')
    keys = {"instances", "inputs"} & doc.keys()
    if len(keys) != 1:
        raise BadRequest(400, 'body must have exactly one of "instances" (row format) or "inputs" (columnar format)')
    key = keys.pop()
    data = doc[key]
    if key == "inputs" and isinstance(data, dict):  # columnar with a named input
        if len(data) != 1:
            raise BadRequest(400, f'"inputs" must name exactly one input, got {sorted(data)}')
        data = next(iter(data.values()))
    if not isinstance(data, list) or not data:
        raise BadRequest(400, f'"{key}" must be a non-empty list of 28x28 images')
    if len(data) > max_batch:
        raise BadRequest(400, f"{len(data)} instances exceed the limit of {max_batch} per request: split the batch")
    try:
        arr = np.asarray(data)
    except ValueError:
        raise BadRequest(400, "instances must all have the same shape, 28x28 or 28x28x1") from None
    if arr.dtype.kind not in "iuf":
        raise BadRequest(400, f"instances must contain only numbers (got {arr.dtype.kind!r} data)")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.shape[1:] != model_lib.INPUT_SHAPE:
        raise BadRequest(400, f"each instance must be 28x28 or 28x28x1, got {'x'.join(map(str, arr.shape[1:])) or 'a scalar'}")
    arr = arr.astype(np.float32, copy=False)
    lo, hi = float(arr.min()), float(arr.max())
    if not (0.0 <= lo and hi <= 1.0):  # also false for NaN
        raise BadRequest(400, f"pixel values must be in [0, 1] (got min {lo}, max {hi})")
    return arr


class ModelServer:
    """The ASGI callable plus the model lifecycle (load, hot-swap, drain)."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None):
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = ServingMetrics(self.registry, settings.max_batch_size)
        self.model: model_lib.LoadedModel | None = None
        self.draining = False
        self._failed_versions: set[str] = set()
        self.batcher = Batcher(
            lambda: self.model, settings.max_batch_size, settings.batch_timeout_ms / 1000, settings.max_queue, self.metrics
        )
        self._tasks: list[asyncio.Task] = []
        prefix = f"/v1/models/{settings.model_name}"
        self._predict_path, self._status_path = f"{prefix}:predict", prefix

    # ---- lifecycle ----

    async def startup(self) -> None:
        await self.batcher.start()
        self._tasks.append(asyncio.create_task(self._watch()))

    async def shutdown(self) -> None:
        for t in self._tasks:
            t.cancel()
        await self.batcher.stop()

    async def _watch(self) -> None:
        """Load the current version, then keep following LATEST (hot swap)."""
        while True:
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - a broken store must not kill the server; keep serving
                log.exception("model refresh failed")
            if self.settings.poll_seconds <= 0 and self.model is not None:
                return
            await asyncio.sleep(self.settings.poll_seconds if self.model else min(5.0, self.settings.poll_seconds or 5.0))

    async def refresh(self) -> bool:
        """Load, check and warm a new version in a worker thread, then switch to it atomically.
        A version that fails is refused (logged, counted) and the current one keeps serving."""
        s = self.settings
        version, uri = await asyncio.to_thread(model_lib.resolve, s.model_uri, s.model_name)
        if (self.model and version == self.model.version) or version in self._failed_versions:
            return False
        try:
            loaded = await asyncio.to_thread(model_lib.load, version, uri, (1, s.max_batch_size))
        except model_lib.ModelLoadError as exc:
            self._failed_versions.add(version)
            self.metrics.load_failures.labels(reason=exc.reason).inc()
            log.error(
                "refusing model version %s (%s): %s; still serving %s",
                version,
                exc.reason,
                exc,
                self.model.version if self.model else "nothing",
            )
            return False
        old, self.model = self.model, loaded  # one reference assignment: the next batch uses it
        if old:
            self.metrics.model_info.remove(s.model_name, old.version)
        # TensorFlow/Keras leave hundreds of thousands of long-lived objects; a full GC pass over
        # them stalls the event loop for tens of ms (the p99). Collect once (the old model's cycles
        # included), then freeze the survivors out of the collector's reach.
        del old
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self.metrics.model_info.labels(model=s.model_name, version=version).set(1)
        self.metrics.model_ready.set(1)
        log.info("serving model %s version %s from %s", s.model_name, version, uri)
        return True

    # ---- ASGI ----

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == self._predict_path:
            await self._predict(scope, receive, send, method)
        elif path == "/healthz":
            await self._simple(send, "health", 200, {"status": "ok"})
        elif path == "/readyz":
            ready = self.model is not None and not self.draining
            await self._simple(send, "health", 200 if ready else 503, {"ready": ready, "draining": self.draining})
        elif path == "/metrics":
            self.metrics.requests.labels(route="metrics", code="200").inc()
            await _respond(send, 200, generate_latest(self.registry), CONTENT_TYPE_LATEST.encode())
        elif path == self._status_path and method == "GET":
            await self._simple(send, "status", 200 if self.model else 503, self._status())
        elif path.startswith("/v1/models/"):
            await self._simple(send, "other", 404, {"error": f"unknown model or endpoint {path!r}: this server serves {self._status_path}"})
        else:
            await self._simple(send, "other", 404, {"error": f"not found: {path!r}"})

    def _status(self) -> dict:
        if self.model is None:
            return {
                "model_version_status": [
                    {"version": "", "state": "LOADING", "status": {"error_code": "UNAVAILABLE", "error_message": "loading"}}
                ]
            }
        return {
            "model_version_status": [
                {"version": self.model.version, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            ]
        }

    async def _simple(self, send, route: str, status: int, doc: dict) -> None:
        self.metrics.requests.labels(route=route, code=str(status)).inc()
        await _respond(send, status, orjson.dumps(doc))

    async def _predict(self, scope, receive, send, method: str) -> None:
        start = time.perf_counter()
        try:
            if method != "POST":
                raise BadRequest(405, ":predict takes POST", [(b"allow", b"POST")])
            if self.model is None:
                raise BadRequest(503, "model not loaded yet", [(b"retry-after", b"1")])
            body = await _read_body(scope, receive, self.settings.max_body_bytes)
            x = parse_instances(body, self.settings.max_batch_size)
            try:
                y, version = await asyncio.wait_for(self.batcher.submit(x), self.settings.request_timeout_s)
            except QueueFull as exc:
                raise BadRequest(429, f"{exc}: retry later", [(b"retry-after", b"1")]) from None
            except TimeoutError:
                raise BadRequest(503, "prediction timed out: server overloaded", [(b"retry-after", b"1")]) from None
            status = 200
            payload = orjson.dumps({"predictions": y, "model_version": version}, option=orjson.OPT_SERIALIZE_NUMPY)
            headers: list = []
        except BadRequest as exc:
            status, payload, headers = exc.status, orjson.dumps({"error": exc.message}), exc.headers
        except Exception:  # noqa: BLE001 - our bug, not the client's: log it and answer 500, never crash
            log.exception("predict failed")
            status, payload, headers = 500, b'{"error":"internal error"}', []
        self.metrics.requests.labels(route="predict", code=str(status)).inc()
        self.metrics.request_seconds.observe(time.perf_counter() - start)
        await _respond(send, status, payload, extra=headers)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _read_body(scope, receive, limit: int) -> bytes:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise BadRequest(400, "invalid Content-Length") from None
            if declared > limit:
                raise BadRequest(413, f"body of {declared} bytes exceeds the limit of {limit} bytes")
            break
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest(400, "client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(send, status: int, body: bytes, content_type: bytes = b"application/json", extra: list | None = None) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
