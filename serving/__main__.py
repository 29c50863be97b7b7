"""Run the model server:  python -m serving --model-uri URI [--host H] [--port P] ...

Every flag can be set by an environment variable SERVING_<FLAG> (e.g. SERVING_MODEL_URI).

Shutdown: on SIGTERM the server reports not-ready (/readyz 503) and keeps serving for
--drain-seconds, so load balancers stop sending traffic first; then it stops accepting connections,
finishes in-flight requests and exits 0. A second signal exits at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m serving", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)

    def flag(name: str, **kw):
        env = "SERVING_" + name.lstrip("-").upper().replace("-", "_")
        kw["default"] = os.environ.get(env, kw.get("default"))
        kw["help"] = f"{kw['help']} [env {env}; default: %(default)s]"
        p.add_argument(name, **kw)

    flag("--model-uri", help="artifact store root (follows models/<name>/LATEST) or a model directory; path, file:// or s3://")
    flag("--model-name", default="mnist", help="the model's name in the API (/v1/models/<name>)")
    flag("--host", default="0.0.0.0", help="listen address")
    flag("--port", type=int, default=8501, help="listen port (TF-Serving's REST port)")
    flag("--max-batch-size", type=int, default=64, help="instances per model call and per request")
    flag("--batch-timeout-ms", type=float, default=2.0, help="longest wait for more requests to fill a batch")
    flag("--max-queue", type=int, default=1024, help="instances waiting before the server answers 429")
    flag("--max-body-bytes", type=int, default=4 * 1024 * 1024, help="largest request body (413 beyond)")
    flag("--poll-seconds", type=float, default=30.0, help="how often to check for a new model version (0: never)")
    flag("--drain-seconds", type=float, default=5.0, help="after SIGTERM, keep serving (not ready) this long before closing")
    flag("--log-level", default="info", help="debug, info, warning, error")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.model_uri:
        print("--model-uri (or SERVING_MODEL_URI) is required", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import uvicorn

    from serving.app import ModelServer, Settings
    from serving.model import configure_threads

    configure_threads()
    app = ModelServer(
        Settings(
            model_uri=args.model_uri,
            model_name=args.model_name,
            max_batch_size=args.max_batch_size,
            batch_timeout_ms=args.batch_timeout_ms,
            max_queue=args.max_queue,
            max_body_bytes=args.max_body_bytes,
            poll_seconds=args.poll_seconds,
        )
    )

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame):
            if app.draining or args.drain_seconds <= 0:
                return super().handle_exit(sig, frame)
            app.draining = True
            logging.getLogger("serving").info("signal %s: draining for %.1fs, then shutting down", sig, args.drain_seconds)
            loop = getattr(self, "_loop", None)
            if loop is not None:
                loop.call_soon_threadsafe(loop.call_later, args.drain_seconds, self._drained, sig, frame)

        def _drained(self, sig, frame):
            super().handle_exit(sig, frame)
            # A drained, graceful shutdown exits 0 (uvicorn would re-raise the signal at the end).
            self._captured_signals.clear()

        async def serve(self, sockets=None):
            import asyncio

            self._loop = asyncio.get_running_loop()
            await super().serve(sockets)

    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,  # per-request logging would cost more than the request; metrics count them
        timeout_graceful_shutdown=30,
        lifespan="on",
        loop="auto",
        http="auto",
    )
    server = DrainingServer(config)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
