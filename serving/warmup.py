"""Canary warm-up: traffic for both sides of a canary from inside the cluster, so the analysis has
data on a stack with no users (dev, staging on a quiet day).

    python -m serving.warmup --canary URL --stable URL --model NAME --rate R --duration S

Run by the AnalysisTemplate's ``job`` metric (components/lib/rollout_specs.py warmup_job) in the
serving image, beside the Prometheus metrics of the same AnalysisRun. It reads the model's signature
from ``GET /v1/models/{name}/metadata`` of the *stable* Service (the contract clients use today; the
canary's if the stable one does not answer), builds instances from it (serving/instances.py, shared
with ops/smoke.py), and sends the same instances, in the same order, at ``--rate`` requests per second
to each Service for ``--duration`` seconds. Every request carries ``X-Mlplatform-Traffic: warmup``:
the server counts it under traffic="warmup", which the user-facing dashboards and alerts leave out
and the canary analysis includes.

Exit status. Argo maps the Job's outcome onto the metric: Complete -> Successful, Failed -> Failed,
and a Failed metric fails the run, which aborts the rollout. What the servers answer (5xx, 400,
timeouts, refused connections while the canary pods load) is the analysis' data, not the warm-up's
verdict: the warm-up exits 0 whenever it ran its course, and ``ops/deliver.py`` never rejects a
version for a failed warm-up metric. Non-zero only when it is misconfigured: 2 for bad arguments or
a model name neither Service knows (404).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from serving.instances import inputs_from_tfs_metadata, instances

HEADER = "X-Mlplatform-Traffic"
VALUE = "warmup"
DISTINCT_INSTANCES = 16
TIMEOUT_S = 10.0


class Misconfigured(Exception):
    """Bad arguments or a model neither Service knows: exit 2 (the Job fails, loudly)."""


@dataclass
class Side:
    """One Service and what it answered: HTTP code (0: no answer) -> count."""

    name: str
    url: str
    codes: dict[int, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, code: int) -> None:
        with self.lock:
            self.codes[code] = self.codes.get(code, 0) + 1


def _headers(api_key: str | None, json_body: bool = False) -> dict[str, str]:
    out = {HEADER: VALUE}
    if json_body:
        out["Content-Type"] = "application/json"
    if api_key:
        out["Authorization"] = f"Bearer {api_key}"
    return out


def signature(urls: list[str], model: str, api_key: str | None, stop: threading.Event, wait_s: float) -> list[dict[str, Any]] | None:
    """The model's inputs from the first Service that answers its metadata; None if none does
    within ``wait_s`` (pods not ready: nothing to send, not a verdict). A 404 from every Service
    that answered means the model name is wrong: Misconfigured."""
    deadline = time.monotonic() + wait_s
    while not stop.is_set():
        not_found = 0
        for url in urls:
            req = urllib.request.Request(f"{url}/v1/models/{model}/metadata", headers=_headers(api_key))  # noqa: S310 - http(s) checked by _url
            try:
                with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:  # noqa: S310 - in-cluster URL from the template
                    return inputs_from_tfs_metadata(json.loads(r.read()))
            except urllib.error.HTTPError as exc:
                not_found += exc.code == 404
            except (OSError, ValueError, KeyError):
                pass
        if not_found == len(urls):
            raise Misconfigured(f"model {model!r}: 404 from every Service ({', '.join(urls)})")
        if time.monotonic() >= deadline:
            return None
        stop.wait(2)
    return None


def send(side: Side, model: str, bodies: list[bytes], rate: float, until: float, stop: threading.Event, api_key: str | None) -> None:
    """Requests to one side at ``rate`` per second on a fixed schedule (a slow answer delays the next
    request, never bunches them: at most one in flight per side), body i % len(bodies)."""
    url, headers, i = f"{side.url}/v1/models/{model}:predict", _headers(api_key, json_body=True), 0
    start = time.monotonic()
    while not stop.is_set() and time.monotonic() < until:
        req = urllib.request.Request(url, data=bodies[i % len(bodies)], headers=headers)  # noqa: S310 - http(s) checked by _url
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:  # noqa: S310 - in-cluster URL from the template
                r.read()
                side.count(r.status)
        except urllib.error.HTTPError as exc:
            side.count(exc.code)
        except OSError:
            side.count(0)
        i += 1
        stop.wait(max(0.0, start + i / rate - time.monotonic()))


def run(canary: str, stable: str, model: str, rate: float, duration: float, api_key: str | None, stop: threading.Event) -> dict[str, Any]:
    until = time.monotonic() + duration
    sides = [Side("stable", stable.rstrip("/")), Side("canary", canary.rstrip("/"))]
    inputs = signature([s.url for s in sides], model, api_key, stop, wait_s=duration)
    if inputs is None:
        return {"sent": 0, "reason": "no Service answered the model's metadata", "codes": {}}
    bodies = [json.dumps({"instances": [row]}).encode() for row in instances(inputs, DISTINCT_INSTANCES)]
    threads = [threading.Thread(target=send, args=(s, model, bodies, rate, until, stop, api_key), daemon=True) for s in sides]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = {s.name: {str(k): v for k, v in sorted(s.codes.items())} for s in sides}
    return {"sent": sum(sum(s.codes.values()) for s in sides), "inputs": [i["name"] for i in inputs], "codes": codes}


def _url(value: str) -> str:
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"not an http(s) URL: {value!r}")
    return value


def _bounded(top: float):
    def check(value: str) -> float:
        v = float(value)
        if not 0 < v <= top:
            raise argparse.ArgumentTypeError(f"must be in (0, {top:g}]: {value}")
        return v

    return check


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serving.warmup", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--canary", required=True, type=_url, help="the canary Service's base URL")
    p.add_argument("--stable", required=True, type=_url, help="the stable Service's base URL")
    p.add_argument("--model", required=True, help="the model's name in the API")
    p.add_argument("--rate", required=True, type=_bounded(1000), help="requests per second to each side")
    p.add_argument(
        "--duration", required=True, type=_bounded(7 * 86400), help="seconds to send (Argo ends the Job earlier when the rollout ends)"
    )
    args = p.parse_args(argv)  # exit 2 on bad arguments
    key = (os.environ.get("WARMUP_API_KEY") or "").strip().splitlines()
    stop = threading.Event()
    # Argo deletes the Job when the run ends: stop sending, report, exit 0.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        summary = run(args.canary, args.stable, args.model, args.rate, args.duration, key[0] if key else None, stop)
    except Misconfigured as exc:
        print(f"warmup: misconfigured: {exc}", file=sys.stderr)
        return 2
    print("warmup: " + json.dumps(summary, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
