"""The server's command line (importable without TensorFlow, for the program's contract tests).

    python -m serving --store URI --model NAME [--model NAME2 ...]   (models of one artifact store)
    python -m serving --model NAME=URI [--model NAME2=URI2 ...] [--host H] [--port P] ...
    python -m serving --model-uri URI [--model-name NAME]          (the one-model form)

URI is an artifact store root (the server follows models/<NAME>/LATEST) or a model directory;
path, file:// (file://./relative, file:///absolute) or s3://. The store defaults to the first of
SERVING_STORE, MLPLATFORM_STORE, TRAIN_OUTPUT, MLPLATFORM_MODEL_STORE that is set; --store alone
serves --model-name (mnist) from it. Every flag can be set by an environment variable
SERVING_<FLAG> (e.g. SERVING_MODEL_URI); SERVING_MODELS takes comma-separated NAME[=URI] entries.

Listening: --host 127.0.0.1 by default (this machine only); the container image sets
SERVING_HOST=0.0.0.0 so the pod's Service reaches it.

Ports: the API on --port (8501, TF-Serving's REST port); Prometheus /metrics on --metrics-port (9091)
only, so a public Service exposes the API without the metrics.

Shutdown: on SIGTERM the server reports not-ready (/readyz 503) and keeps serving for
--drain-seconds, so load balancers stop sending traffic first; then it stops accepting connections,
finishes in-flight requests and exits 0. A second signal exits at once.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping

ENV_PREFIX = "SERVING_"
MODEL_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


class _Flags:
    """Adds flags to one section of the help; a flag's default comes from its SERVING_<FLAG> variable
    when that is set (a value the flag's type refuses stops the parser, naming the variable)."""

    def __init__(self, p: argparse.ArgumentParser, env: Mapping[str, str], title: str):
        self.p, self.env, self.group = p, env, p.add_argument_group(title)

    def __call__(self, name: str, **kw) -> None:
        var = ENV_PREFIX + name.lstrip("-").upper().replace("-", "_")
        self.p.get_default("env_names").append(var)
        if var in self.env:
            conv = kw.get("type", str)
            try:
                kw["default"] = conv(self.env[var])
            except (ValueError, argparse.ArgumentTypeError) as exc:
                self.p.error(f"{var}={self.env[var]!r}: {exc}")
        kw["help"] = f"{kw['help']} [env {var}; default: %(default)s]"
        self.group.add_argument(name, **kw)


def parser(environ: dict[str, str] | None = None) -> argparse.ArgumentParser:
    env = os.environ if environ is None else environ
    p = argparse.ArgumentParser(prog="python -m serving", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(env_names=[])
    _model_flags(_Flags(p, env, "models"))
    _network_flags(_Flags(p, env, "network"))
    _limit_flags(_Flags(p, env, "batching and limits"))
    _deadline_flags(_Flags(p, env, "deadlines"))
    _process_flags(_Flags(p, env, "processes and lifecycle"))
    return p


# The platform's one store setting (the `mlp` CLI, the trainer), then the names used before it.
STORE_ENV = ("MLPLATFORM_STORE", "TRAIN_OUTPUT", "MLPLATFORM_MODEL_STORE")


def _model_flags(flag: _Flags) -> None:
    env_store = next((flag.env[n] for n in STORE_ENV if flag.env.get(n)), None)
    flag("--store", default=env_store, help="artifact store root the --model NAME entries come from")
    flag("--model-uri", help="one-model form: artifact store root (follows models/<name>/LATEST) or a model directory")
    flag("--model-name", default="mnist", help="one-model form: the model's name in the API (/v1/models/<name>)")
    flag.group.add_argument(
        "--model",
        action="append",
        default=None,
        metavar="NAME[=URI]",
        help="a model to serve (repeatable): NAME from --store, or NAME=URI [env SERVING_MODELS: comma-separated]",
    )
    flag.p.get_default("env_names").append("SERVING_MODELS")
    flag("--poll-seconds", type=float, default=30.0, help="how often to check for a new model version (0: never)")
    flag(
        "--allow-signature-change",
        type=_bool,
        nargs="?",
        const=True,  # a flag; "--allow-signature-change true|false" (the old form) still parses
        default=False,
        help="hot-swap to a version whose signature breaks the served one's clients",
    )


def _network_flags(flag: _Flags) -> None:
    flag("--host", default="127.0.0.1", help="listen address (0.0.0.0: every interface, as the container image sets)")
    flag("--port", type=int, default=8501, help="API port (TF-Serving's REST port)")
    flag("--metrics-port", type=int, default=9091, help="Prometheus /metrics port (0: off); the API port answers 404 on /metrics")
    flag(
        "--api-keys-file",
        default=None,
        help="file with one API key per line (a mounted Secret; reloaded when it changes): predict routes then need a key",
    )
    flag("--max-connections", type=int, default=1000, help="open connections; more are answered 503 and closed")


def _limit_flags(flag: _Flags) -> None:
    flag("--max-batch-size", type=int, default=64, help="instances per model call and per request")
    flag(
        "--batch-timeout-ms",
        type=float,
        default=0.0,
        help="longest wait for more requests once the queue runs dry (0: batch what is queued; the next batch fills while one runs)",
    )
    flag("--max-queue", type=int, default=1024, help="instances waiting per model before the server answers 429")
    flag("--max-body-bytes", type=int, default=4 * 1024 * 1024, help="largest request body (413 beyond, checked from Content-Length)")
    flag("--max-inflight-body-bytes", type=int, default=64 * 1024 * 1024, help="request bytes being read or decoded at once (503 beyond)")


def _deadline_flags(flag: _Flags) -> None:
    flag(
        "--header-timeout-s",
        type=float,
        default=10.0,
        help="time to send the request line and headers, from connect or from the first byte",
    )
    flag("--body-timeout-s", type=float, default=30.0, help="time to send the whole body once the headers are in")
    flag("--keep-alive-s", type=float, default=5.0, help="idle time between requests on a keep-alive connection")
    flag("--request-timeout-s", type=float, default=10.0, help="longest wait for a prediction (503 beyond)")
    flag(
        "--write-timeout-s",
        type=float,
        default=30.0,
        help="longest a response may wait for the client to read it (its socket full); the connection is closed beyond",
    )


def _process_flags(flag: _Flags) -> None:
    flag("--workers", default="1", help="server processes sharing the port (SO_REUSEPORT), or auto: the container's CPU limit")
    flag(
        "--onnx-threads",
        type=int,
        default=0,
        help="ONNX Runtime intra-op threads per process (0: the CPU limit / --workers, so threads x processes = the limit)",
    )
    flag("--parse-workers", type=int, default=1, help="processes decoding large JSON bodies off the event loop (0: decode in a thread)")
    flag("--offload-body-bytes", type=int, default=256 * 1024, help="bodies at least this large are decoded by a parse worker")
    flag(
        "--worker-heartbeat-timeout-s",
        type=float,
        default=10.0,
        help="--workers > 1: a worker whose event loop has not beaten for this long is hung: /healthz answers 503 (liveness fails)",
    )
    flag("--drain-seconds", type=float, default=5.0, help="after SIGTERM, keep serving (not ready) this long before closing")
    flag("--log-level", default="info", help="debug, info, warning, error")


def parse_models(args: argparse.Namespace, environ: dict[str, str] | None = None) -> dict[str, str]:
    """{name: uri} from --model, SERVING_MODELS, or the one-model --model-uri/--model-name; ValueError says why not."""
    env = os.environ if environ is None else environ
    pairs = list(args.model or [])
    if not pairs and env.get("SERVING_MODELS"):
        pairs = [x.strip() for x in env["SERVING_MODELS"].split(",") if x.strip()]
    models: dict[str, str] = {}
    for pair in pairs:
        name, sep, uri = pair.partition("=")
        if sep and not uri:
            raise ValueError(f"--model {pair!r}: expected NAME=URI or NAME (with --store)")
        if not sep:
            if not args.store:
                raise ValueError(f"--model {pair!r}: no store to find it in: give --store URI (or MLPLATFORM_STORE), or --model NAME=URI")
            uri = args.store
        if not MODEL_NAME.match(name):
            raise ValueError(f"--model {pair!r}: the name must be a DNS-1123 label (lowercase letters, digits, '-')")
        if name in models:
            raise ValueError(f"--model {name!r} given twice")
        models[name] = uri
    if args.model_uri:
        if args.model_name in models:
            raise ValueError(f"model {args.model_name!r} given by both --model and --model-uri")
        models[args.model_name] = args.model_uri
    if not models and args.store:
        models[args.model_name] = args.store
    if not models:
        raise ValueError("no model: give --store URI --model NAME (or MLPLATFORM_STORE), --model NAME=URI, or --model-uri URI")
    return models


def accepted_env() -> set[str]:
    """Every SERVING_* variable the server reads (for the program's contract test)."""
    return set(parser({}).get_default("env_names")) | {"SERVING_TF_THREADS"}
