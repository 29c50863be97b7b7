"""The model server: a raw ASGI app serving one or more models, contract from their signatures.

TF-Serving REST (https://www.tensorflow.org/tfx/serving/api_rest):
    GET  /v1/models/{name}[/versions/{v}]                 status
    GET  /v1/models/{name}[/versions/{v}]/metadata        signatures
    POST /v1/models/{name}[/versions/{v}]:predict         row ("instances") or columnar ("inputs")
Open Inference Protocol v2 REST (KServe, Triton):
    GET  /v2/health/live   /v2/health/ready   /v2
    GET  /v2/models/{name}[/versions/{v}]                 metadata (datatypes, shapes)
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer
Kubernetes: GET /healthz (liveness), GET /readyz (every model loaded and not draining).
/metrics is served on its own port (serving/__main__.py), never on this app.

Nothing a client sends produces a 5xx other than 503 (overloaded/not ready): malformed input is a 400
naming the input and what was expected; each error type maps to its status in serving/errors.py.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import orjson
from prometheus_client import CollectorRegistry

from serving import codec, workers
from serving import model as model_lib
from serving.auth import ApiKeys
from serving.batcher import Batcher
from serving.errors import MethodNotAllowed, NotFound, PayloadTooLarge, ServingError, Unavailable, status_of
from serving.metrics import TRAFFIC, ServingMetrics

log = logging.getLogger("serving")


@dataclass
class ServerSettings:
    models: dict[str, str]  # name -> store root or model directory
    max_batch_size: int = 64  # instances per model call, and per request
    batch_timeout_ms: float = 0.0  # wait for more once the queue runs dry (0: batch what is queued, as Triton does)
    max_queue: int = 1024  # instances waiting per model before 429
    max_body_bytes: int = 4 * 1024 * 1024
    max_inflight_body_bytes: int = 64 * 1024 * 1024
    request_timeout_s: float = 10.0
    poll_seconds: float = 30.0  # how often to look for a new version (0: never, once one is loaded)
    allow_signature_change: bool = False
    api_keys_file: str | None = None
    parse_workers: int = 1  # processes for large bodies (0: a thread)
    offload_body_bytes: int = 256 * 1024
    # Run batches faster than this inline in the event loop (serving/batcher.py); 0: always in the
    # inference thread. __main__ sets it for a process that is one of several in its pod.
    inline_inference_below_ms: float = 0.0
    retry_base_s: float = 1.0  # backoff for transient load failures: base * 2**attempt, capped
    retry_max_s: float = 300.0
    extra: dict = field(default_factory=dict)


class ServedModel:
    """One model name: its current version, its batcher, and the loop that follows its store."""

    def __init__(self, name: str, uri: str, server: ModelServer):
        self.name, self.uri, self.server = name, uri, server
        s = server.settings
        self.source = model_lib.Source(uri, name)
        self.model: model_lib.LoadedModel | None = None
        self.refused: dict[str, str] = {}  # version -> reason; only versions that failed their checks
        self._retry: dict[str, tuple[int, float]] = {}  # version -> (failed attempts, monotonic time of next try)
        self._exported_refusal: tuple[str, str] | None = None  # (version, reason) on REFUSED_VERSION
        self.batcher = Batcher(
            lambda: self.model,
            s.max_batch_size,
            s.batch_timeout_ms / 1000,
            s.max_queue,
            server.metrics,
            name,
            inline_below_s=s.inline_inference_below_ms / 1000,
        )
        m = server.metrics
        # per traffic kind (serving/metrics.py TRAFFIC): bound once, a dict lookup per request
        self.m_predict_seconds = {t: m.request_seconds.labels(model=name, traffic=t) for t in TRAFFIC}
        self.m_ok = {t: m.requests.labels(model=name, route="predict", code="200", traffic=t) for t in TRAFFIC}

    async def watch(self) -> None:
        """Load a version, then keep following the store (hot swap)."""
        s = self.server.settings
        while True:
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - a broken store must not kill the server; keep serving
                log.exception("model %s: refresh failed", self.name)
            if s.poll_seconds <= 0 and self.model is not None:
                return
            await asyncio.sleep(s.poll_seconds if self.model else min(s.retry_base_s, s.poll_seconds or s.retry_base_s))

    async def refresh(self) -> bool:
        """Try the version the pointer names; a pod with nothing loaded falls back to the newest older
        version that loads and passes its checks. Returns True when it switched."""
        candidates = await asyncio.to_thread(self.source.candidates)
        switched = await self._first_good(candidates)
        self._export_champion(candidates[0][0] if candidates else None)
        return switched

    async def _first_good(self, candidates: list[tuple[str, str]]) -> bool:
        if self.model is not None:
            candidates = candidates[:1]  # serving already: only the pointer's version replaces it
        for version, uri in candidates:
            if self.model is not None and version == self.model.version:
                return False
            if version in self.refused or self._retry.get(version, (0, 0.0))[1] > time.monotonic():
                continue
            if await self._try(version, uri):
                return True
        return False

    def _export_champion(self, champion: str | None) -> None:
        """Whether the champion (the version LATEST or the pin names) is the one serving, and which
        champion was refused and why (one series per model: the previous one is dropped)."""
        m = self.server.metrics
        m.champion_served.labels(model=self.name).set(1 if self.model is not None and self.model.version == champion else 0)
        refused = (champion, self.refused[champion]) if champion in self.refused else None
        if refused != self._exported_refusal:
            if self._exported_refusal is not None:
                m.refused_version.labels(self.name, *self._exported_refusal).set(0)  # workers' files keep the last value
                m.refused_version.remove(self.name, *self._exported_refusal)
            if refused is not None:
                m.refused_version.labels(self.name, *refused).set(1)
            self._exported_refusal = refused

    async def _try(self, version: str, uri: str) -> bool:
        s, m = self.server.settings, self.server.metrics
        try:
            loaded = await asyncio.to_thread(model_lib.load, version, uri, (1, s.max_batch_size))
            if self.model is not None and not s.allow_signature_change:
                problems = _signature_problems(self.model.specs, loaded.specs)
                if problems:
                    raise model_lib.ModelLoadError(
                        "incompatible",
                        f"signature not compatible with version {self.model.version}: {'; '.join(problems)} "
                        "(serve it under a new model name, or pass --allow-signature-change)",
                    )
        except model_lib.ModelLoadError as exc:
            m.load_failures.labels(model=self.name, reason=exc.reason).inc()
            current = self.model.version if self.model else "nothing"
            if exc.transient:
                attempts = self._retry.get(version, (0, 0.0))[0] + 1
                delay = min(s.retry_base_s * 2 ** (attempts - 1), s.retry_max_s)
                self._retry[version] = (attempts, time.monotonic() + delay)
                log.warning("model %s version %s not available (%s), retry in %.0fs; serving %s", self.name, version, exc, delay, current)
            else:
                self.refused[version] = exc.reason
                m.versions_refused.labels(model=self.name, reason=exc.reason).inc()
                log.error("refusing model %s version %s (%s): %s; serving %s", self.name, version, exc.reason, exc, current)
            return False
        self._retry.pop(version, None)
        old, self.model = self.model, loaded  # one reference assignment: the next batch uses it
        if old:
            m.model_info.labels(model=self.name, version=old.version).set(0)  # workers' files keep the last value
            m.model_info.remove(self.name, old.version)
            m.forget_version(self.name, old.version)
        # TensorFlow/Keras leave hundreds of thousands of long-lived objects; a full GC pass over
        # them stalls the event loop for tens of ms (the p99). Collect once (the old model's cycles
        # included), then freeze the survivors out of the collector's reach.
        del old
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        m.model_info.labels(model=self.name, version=version).set(1)
        m.model_ready.labels(model=self.name).set(1)
        log.info("serving model %s version %s from %s", self.name, version, uri)
        if all(s.model is not None for s in self.server.models.values()):
            workers.mark_ready()
        return True


def _signature_problems(old: dict[str, codec.SignatureSpec], new: dict[str, codec.SignatureSpec]) -> list[str]:
    problems = []
    for name, spec in old.items():
        if name not in new:
            problems.append(f"signature {name!r} is gone")
        else:
            problems += [f"{name}: {p}" for p in codec.incompatibilities(spec, new[name])]
    return problems


def _model_path(rest: str) -> tuple[str, str | None, str]:
    """``NAME[/versions/V][/SUB]`` (the path after /v1/models/ or /v2/models/) -> (name, version or None, sub)."""
    parts = rest.split("/")
    if len(parts) >= 3 and parts[1] == "versions":
        return parts[0], parts[2], "/".join(parts[3:])
    return parts[0], None, "/".join(parts[1:])


class ModelServer:
    """The ASGI callable plus the models' lifecycle (load, hot-swap, drain)."""

    def __init__(self, settings: ServerSettings, registry: CollectorRegistry | None = None):
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = ServingMetrics(self.registry, settings.max_batch_size, list(settings.models))
        self.models = {name: ServedModel(name, uri, self) for name, uri in settings.models.items()}
        self.api_keys = ApiKeys(settings.api_keys_file) if settings.api_keys_file else None
        self.draining = False
        self._inflight_bytes = 0
        self._pool: ProcessPoolExecutor | None = None
        self._tasks: list[asyncio.Task] = []

    @property
    def model(self) -> model_lib.LoadedModel | None:
        """The only model's loaded version (one-model servers and tests)."""
        return next(iter(self.models.values())).model

    @property
    def ready(self) -> bool:
        """Every model loaded, not draining, and (several workers per pod) every worker likewise."""
        return not self.draining and all(m.model is not None for m in self.models.values()) and workers.all_ready() and workers.healthy()

    # ---- lifecycle ----

    async def startup(self) -> None:
        if self.settings.parse_workers > 0:
            self._pool = self._new_pool()
            await asyncio.get_running_loop().run_in_executor(self._pool, codec.DTYPES.get, "float32")  # start it now
        for served in self.models.values():
            await served.batcher.start()
            self._tasks.append(asyncio.create_task(served.watch()))
        if os.environ.get(workers.WORKERS_ENV):
            self._tasks.append(asyncio.create_task(_heartbeat()))

    def _new_pool(self) -> ProcessPoolExecutor | None:
        if self.settings.parse_workers <= 0:
            return None
        # spawn, not fork: the parent holds TensorFlow's threads; the worker imports only numpy/orjson.
        return ProcessPoolExecutor(self.settings.parse_workers, mp_context=multiprocessing.get_context("spawn"))

    async def shutdown(self) -> None:
        for t in self._tasks:
            t.cancel()
        for served in self.models.values():
            await served.batcher.stop()
        if self._pool:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # ---- ASGI ----

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path.startswith("/v1/models/"):
            await self._v1(scope, receive, send, method, path[len("/v1/models/") :])
        elif path.startswith("/v2/models/"):
            await self._v2(scope, receive, send, method, path[len("/v2/models/") :])
        elif path in ("/healthz", "/v2/health/live"):
            live = workers.healthy()  # False while a sibling worker of this pod is hung (serving/workers.py)
            doc = ({"status": "ok" if live else "a worker of this pod is hung"}) if path == "/healthz" else {"live": live}
            await self._json(send, "", "health", 200 if live else 503, doc)
        elif path in ("/readyz", "/v2/health/ready"):
            ready = self.ready
            doc = {"ready": ready, "draining": self.draining}
            if path == "/readyz":
                doc["models"] = {n: (m.model.version if m.model else None) for n, m in self.models.items()}
            await self._json(send, "", "health", 200 if ready else 503, doc)
        elif path == "/v2":
            await self._json(
                send, "", "metadata", 200, {"name": "mlplatform-serving", "version": "2", "extensions": ["binary_tensor_data"]}
            )
        else:
            hint = " (metrics are on the metrics port)" if path == "/metrics" else ""
            await self._json(send, "", "other", 404, {"error": f"not found: {path!r}{hint}"})

    async def _json(self, send, model: str, route: str, status: int, doc: dict, headers=(), traffic: str = "user") -> None:
        self.metrics.requests.labels(model=model, route=route, code=str(status), traffic=traffic).inc()
        await _respond(send, status, orjson.dumps(doc), extra=headers)

    async def _error(self, send, model: str, route: str, exc: ServingError, traffic: str = "user") -> None:
        status, headers = status_of(exc)
        await self._json(send, model, route, status, {"error": exc.message}, headers, traffic)

    def _served(self, name: str, version: str | None) -> ServedModel:
        served = self.models.get(name)
        if served is None:
            raise NotFound(f"unknown model {name!r}: this server serves {sorted(self.models)}")
        if version is not None:
            current = served.model.version if served.model else None
            if version != current:
                raise NotFound(f"model {name!r} version {version!r} is not served (serving {current!r})")
        return served

    async def _v1(self, scope, receive, send, method: str, rest: str) -> None:
        verb = None
        if ":" in rest:
            rest, verb = rest.rsplit(":", 1)
        name, version, sub = _model_path(rest)
        label = name if name in self.models else ""
        traffic = traffic_of(scope)
        try:
            if verb == "predict" and not sub:
                await self._predict(scope, receive, send, method, name, version, v2=False)
                return
            if verb is not None:
                raise NotFound(f"unsupported method :{verb} (this server implements :predict)")
            served = self._served(name, version)
            if method != "GET":
                raise MethodNotAllowed(f"{scope['path']} takes GET", "GET")
            if sub == "":
                await self._json(send, label, "status", 200 if served.model else 503, _tfs_status(served.model), traffic=traffic)
            elif sub == "metadata":
                if served.model is None:
                    raise Unavailable(f"model {name!r} is not loaded yet")
                doc = codec.tfs_metadata(name, served.model.version, served.model.specs)
                await self._json(send, label, "metadata", 200, doc, traffic=traffic)
            else:
                raise NotFound(f"unknown endpoint {scope['path']!r}")
        except ServingError as exc:
            await self._error(send, label, "status" if verb is None else "predict", exc, traffic)

    async def _v2(self, scope, receive, send, method: str, rest: str) -> None:
        name, version, sub = _model_path(rest)
        label = name if name in self.models else ""
        traffic = traffic_of(scope)
        try:
            if sub == "infer":
                await self._predict(scope, receive, send, method, name, version, v2=True)
                return
            served = self._served(name, version)
            if method != "GET":
                raise MethodNotAllowed(f"{scope['path']} takes GET", "GET")
            if sub == "ready":
                ready = served.model is not None and not self.draining
                await self._json(send, label, "health", 200 if ready else 503, {"name": name, "ready": ready}, traffic=traffic)
            elif sub == "":
                if served.model is None:
                    raise Unavailable(f"model {name!r} is not loaded yet")
                loaded = served.model
                doc = codec.v2_metadata(
                    name, loaded.version, loaded.default.spec, loaded.platform, loaded.format, self.settings.max_batch_size
                )
                await self._json(send, label, "metadata", 200, doc, traffic=traffic)
            else:
                raise NotFound(f"unknown endpoint {scope['path']!r}")
        except ServingError as exc:
            await self._error(send, label, "status", exc, traffic)

    async def _predict(self, scope, receive, send, method: str, name: str, version: str | None, v2: bool) -> None:
        start = time.perf_counter()
        served = self.models.get(name)
        label = name if served else ""
        traffic = traffic_of(scope)
        try:
            if method != "POST":
                raise MethodNotAllowed(f"{scope['path']} takes POST")
            if self.api_keys is not None:
                self.api_keys.check(scope["headers"])
            served = self._served(name, version)
            loaded = served.model
            if loaded is None:
                raise Unavailable(f"model {name!r} is not loaded yet")
            header_length = _binary_header_length(scope) if v2 else None
            body, reserved = await self._read_body(scope, receive)
            try:
                decoded = await self._decode(body, loaded.specs, v2, header_length)
            finally:
                del body
                self._inflight_bytes -= reserved
            try:
                outputs, used = await served.batcher.submit(
                    decoded.signature, decoded.inputs, decoded.n, self.settings.request_timeout_s, traffic == "warmup"
                )
            except TimeoutError:
                raise Unavailable("prediction timed out: server overloaded") from None
            if v2:
                if decoded.outputs:
                    outputs = {k: outputs[k] for k in decoded.outputs}
                payload, header_length = codec.encode_v2(name, used, outputs, decoded.request_id, decoded.binary_outputs)
            else:
                payload, header_length = codec.encode_tfs(outputs, decoded.row_format, used), None
            served.m_ok[traffic].inc()
            served.m_predict_seconds[traffic].observe(time.perf_counter() - start)
            if header_length is None:
                await _respond(send, 200, payload)
            else:
                extra = [(b"inference-header-content-length", str(header_length).encode())]
                await _respond(send, 200, payload, b"application/octet-stream", extra)
            return
        except ServingError as exc:
            status, headers = status_of(exc)
            payload = orjson.dumps({"error": exc.message})
        except Exception:  # noqa: BLE001 - our bug, not the client's: log it and answer 500, never crash
            log.exception("predict failed")
            status, payload, headers = 500, b'{"error":"internal error"}', []
        self.metrics.requests.labels(model=label, route="predict", code=str(status), traffic=traffic).inc()
        if served is not None:
            served.m_predict_seconds[traffic].observe(time.perf_counter() - start)
        await _respond(send, status, payload, extra=headers)

    async def _read_body(self, scope, receive) -> tuple[bytes, int]:
        """The body, within the per-request cap (checked from Content-Length before reading) and the
        budget of bytes all requests may hold at once (so many unfinished bodies cannot exhaust memory)."""
        limit = self.settings.max_body_bytes
        declared = None
        for hname, value in scope.get("headers", ()):
            if hname == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    raise codec.BadRequest("invalid Content-Length") from None
                if declared < 0:
                    raise codec.BadRequest("invalid Content-Length")
                if declared > limit:
                    raise PayloadTooLarge(f"body of {declared} bytes exceeds the limit of {limit} bytes")
                break
        reserve = limit if declared is None else declared
        if self._inflight_bytes + reserve > self.settings.max_inflight_body_bytes:
            raise Unavailable(f"server busy: {self._inflight_bytes} bytes of request bodies in flight; retry later")
        self._inflight_bytes += reserve
        try:
            chunks, size = [], 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise codec.BadRequest("client disconnected before sending the whole body")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
                if not message.get("more_body"):
                    return b"".join(chunks), reserve
        except BaseException:
            self._inflight_bytes -= reserve
            raise

    async def _decode(self, body: bytes, specs: dict, v2: bool, header_length: int | None = None) -> codec.Decoded:
        parse = codec.parse_v2 if v2 else codec.parse_tfs
        args = (body, specs, self.settings.max_batch_size) + ((header_length,) if v2 else ())
        if _inline(body, header_length, self.settings.offload_body_bytes):
            return parse(*args)
        # Decoding megabytes of JSON holds the GIL for hundreds of ms: in another process, the event
        # loop (health checks, small requests) keeps running.
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, parse, *args)
        except BrokenProcessPool:
            # the worker died (killed, out of memory): start a new one for the next request
            log.error("parse worker died; starting a new one")
            self._pool = self._new_pool()
            raise Unavailable("request decoding failed: parse worker restarted; retry") from None

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


async def _heartbeat() -> None:
    """Tell the supervisor this worker's event loop runs (a stopped or blocked loop stops beating)."""
    while True:
        try:
            workers.beat()  # in the loop itself: a beat proves the loop runs
        except OSError:
            log.warning("heartbeat file not writable", exc_info=True)
        await asyncio.sleep(workers.HEARTBEAT_S)


def _inline(body: bytes, header_length: int | None, offload_bytes: int) -> bool:
    """Whether a body is cheap enough to decode in the event loop: small JSON, or binary tensors
    behind a small JSON header, numbers only (numpy views the bytes). BYTES tensors are split element
    by element, so a binary body with one is judged by its whole size, like JSON (a 4 MB BYTES
    request decoded inline stalled /healthz for seconds)."""
    if len(body) < offload_bytes:
        return True
    return header_length is not None and header_length < offload_bytes and b'"BYTES"' not in body[:header_length]


def traffic_of(scope) -> str:
    """ "warmup" for a request that says it is warm-up traffic (``X-Mlplatform-Traffic: warmup``, sent
    by the in-cluster traffic of a canary: serving/warmup.py), "user" for every other request,
    whatever the header holds: the label has exactly these two values."""
    for name, value in scope["headers"]:
        if name == b"x-mlplatform-traffic":
            return "warmup" if value.strip().lower() == b"warmup" else "user"
    return "user"


def _binary_header_length(scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"inference-header-content-length":
            try:
                return int(value)
            except ValueError:
                raise codec.BadRequest("Inference-Header-Content-Length must be an integer") from None
    return None


def _tfs_status(loaded: model_lib.LoadedModel | None) -> dict:
    if loaded is None:
        return {
            "model_version_status": [
                {"version": "", "state": "LOADING", "status": {"error_code": "UNAVAILABLE", "error_message": "loading"}}
            ]
        }
    return {
        "model_version_status": [{"version": loaded.version, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]
    }


async def _respond(send, status: int, body: bytes, content_type: bytes = b"application/json", extra=()) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
