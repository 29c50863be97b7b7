"""python -m serving: see serving/cli.py for the flags (python -m serving --help)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from serving.cli import parse_models, parser

# A full batch this fast may run inline (serving/batcher.py): it holds the event loop for less than
# half the p99 the server is built for (25 ms).
INLINE_INFERENCE_BELOW_MS = 10.0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        models, n_workers = _models_and_workers(args)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if n_workers > 1:
        from serving import workers

        argv_ = list(sys.argv[1:] if argv is None else argv)
        return workers.supervise(n_workers, argv_, args.host, args.metrics_port, args.worker_heartbeat_timeout_s)
    _serve(args, models)
    return 0


def _models_and_workers(args: argparse.Namespace) -> tuple[dict[str, str], int]:
    """What to serve, and in how many processes; ValueError with the line to print when a flag is wrong."""
    models = parse_models(args)
    from serving import model as model_lib
    from serving import workers

    for name, uri in models.items():
        try:
            model_lib.check_uri(uri)
        except ValueError as exc:
            raise ValueError(f"model {name!r}: {exc}") from None

    try:
        n_workers = workers.count(args.workers)
    except ValueError as exc:
        raise ValueError(f"--workers {args.workers!r}: {exc}") from None
    if args.api_keys_file and not os.path.isfile(args.api_keys_file):
        raise ValueError(
            f"--api-keys-file {args.api_keys_file}: no such file (authentication was asked for: refusing to start without keys)"
        )
    if not os.environ.get(workers.WORKERS_ENV):  # a worker shares the port its supervisor checked
        _check_ports(args)
    return models, n_workers


def _check_ports(args: argparse.Namespace) -> None:
    """A port already taken is one line now, not a traceback once TensorFlow and the model loaded."""
    import socket

    for flag, port in (("--port", args.port), ("--metrics-port", args.metrics_port)):
        if not port:
            continue
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and prometheus_client bind
            try:
                sock.bind((args.host, port))
            except OSError as exc:
                raise ValueError(
                    f"{flag} {port} on {args.host}: {exc.strerror or exc} (another server running? choose another {flag})"
                ) from None


def _serve(args: argparse.Namespace, models: dict[str, str]) -> None:
    """This process serves the models until a signal stops it (see serving/cli.py, "Shutdown")."""
    import uvicorn
    from prometheus_client import start_http_server

    from serving import workers
    from serving.app import ModelServer
    from serving.http import guarded_protocol
    from serving.model import configure_threads

    # This process is one of SERVING_INTERNAL_WORKERS in its pod (serving/workers.py): ONNX Runtime's
    # pool gets its share of the CPU limit.
    configure_threads(int(os.environ.get(workers.WORKERS_ENV, "1")), args.onnx_threads)
    app = ModelServer(_settings(args, models))
    if args.metrics_port:
        # A plain threaded HTTP server on its own port: scrapes never queue behind API traffic, and the
        # public Service, which exposes only the API port, cannot reach it.
        start_http_server(args.metrics_port, addr=args.host, registry=app.registry)
    closed = app.metrics.connections_closed
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,  # per-request logging would cost more than the request; metrics count them
        timeout_graceful_shutdown=30,
        timeout_keep_alive=args.keep_alive_s,
        server_header=False,  # names the server software to every client, for no use
        lifespan="on",
        proxy_headers=False,  # nothing here reads the client address; saves a middleware per request
        loop="auto",
        http=guarded_protocol(
            args.header_timeout_s,
            args.body_timeout_s,
            args.max_connections,
            lambda reason: closed.labels(reason=reason).inc(),
            args.write_timeout_s,
        ),
    )
    server = _draining_server(app, args.drain_seconds)(config)
    # A worker of a multi-process pod: the port is shared with its siblings, the kernel spreads connections.
    server.run(sockets=[workers.reuse_port_socket(args.host, args.port)] if os.environ.get(workers.WORKERS_ENV) else None)


def _settings(args: argparse.Namespace, models: dict[str, str]):
    from serving import workers
    from serving.app import ServerSettings

    return ServerSettings(
        models=models,
        max_batch_size=args.max_batch_size,
        batch_timeout_ms=args.batch_timeout_ms,
        max_queue=args.max_queue,
        max_body_bytes=args.max_body_bytes,
        max_inflight_body_bytes=args.max_inflight_body_bytes,
        request_timeout_s=args.request_timeout_s,
        poll_seconds=args.poll_seconds,
        allow_signature_change=args.allow_signature_change,
        api_keys_file=args.api_keys_file,
        parse_workers=args.parse_workers,
        offload_body_bytes=args.offload_body_bytes,
        # one of several processes of a pod, each with a core: fast batches run inline
        inline_inference_below_ms=INLINE_INFERENCE_BELOW_MS if os.environ.get(workers.WORKERS_ENV) else 0.0,
    )


def _draining_server(app, drain_seconds: float):
    """uvicorn.Server whose first signal only drains: ``app`` reports not-ready and keeps serving for
    ``drain_seconds``, then the server shuts down gracefully and exits 0. A second signal exits at once."""
    import asyncio

    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame):
            if app.draining or drain_seconds <= 0:
                return super().handle_exit(sig, frame)
            app.draining = True
            logging.getLogger("serving").info("signal %s: draining for %.1fs, then shutting down", sig, drain_seconds)
            loop = getattr(self, "_loop", None)
            if loop is not None:
                loop.call_soon_threadsafe(loop.call_later, drain_seconds, self._drained, sig, frame)

        def _drained(self, sig, frame):
            super().handle_exit(sig, frame)
            # A drained, graceful shutdown exits 0 (uvicorn would re-raise the signal at the end).
            self._captured_signals.clear()

        async def serve(self, sockets=None):
            self._loop = asyncio.get_running_loop()
            await super().serve(sockets)

    return DrainingServer


if __name__ == "__main__":
    sys.exit(main())
