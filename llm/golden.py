"""Golden prompts: a model's own evaluation set, run against a canary at temperature 0.

A vLLM model's catalogue entry carries ``models/<name>/golden.yaml`` (the program refuses a vLLM model
without one): prompts with the answers' expectations. During a canary the analysis runs this module as
a Job (components/lib/llm_canary.py): it sends every prompt to the canary *and* the stable Service at
``--rate`` requests per second each (the quiet-stack traffic that gives the latency metrics their data:
both sides get the same prompts), checks every answer, and serves the counts on ``/metrics``
(``mlplatform_llm_golden_answers_total{model, rollouts_pod_template_hash, prompt, result}``, result
``pass | fail | error``), which Prometheus scrapes and the analysis judges like every other metric: the
canary's failure ratio, only once each prompt was answered (fewer answers: inconclusive, never failed).

Standard library only: the Job runs it from a ConfigMap with the serving image's Python, and the tests
run it in any environment.

The set (YAML in the repository, JSON once rendered into the ConfigMap)::

    prompts:
      - id: capital                      # [a-z0-9_-], unique; a label value, so at most 100 prompts
        messages: [{role: user, content: "What is the capital of France? One word."}]   # chat, or
        # prompt: "The capital of France is"                                             # completion
        maxTokens: 16                    # default 64
        model: support-bot               # optional: the served model name this prompt is sent with
        #   (default: the Job's --model). Set by ``with_adapters`` on a LoRA adapter's prompts, which
        #   the base's canary sends with ``model: <adapter>`` (docs/lora.md "Delivery")
        responseFormat: {...}            # optional, sent as is (e.g. vLLM's json_schema structured output)
        expect:                          # at least one; every one must hold
          regex: "(?i)paris"             # re.search on the answer
          contains: ["Paris"]            # every string present (case-sensitive)
          notContains: ["London"]        # none present, in any case ("london" too)
        # an empty answer fails every prompt
          jsonSchema: {type: object, required: [city]}   # the answer is JSON valid against it (subset below)

    python -m llm.golden check --url http://host:8000 --model chat --set models/chat/golden.yaml   # once, exit 1 on a failure
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

METRIC = "mlplatform_llm_golden_answers_total"
RESULTS = ("pass", "fail", "error")
MAX_PROMPTS = 100  # each prompt id is a label value: bounded
PROMPT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
EXPECT_KEYS = {"regex", "contains", "notContains", "jsonSchema"}
PROMPT_KEYS = {"id", "messages", "prompt", "maxTokens", "responseFormat", "expect", "model"}
SERVED_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
# The JSON Schema keywords checked here (a subset of draft 2020-12); a set using any other is refused
# when loaded, never silently passed.
SCHEMA_KEYS = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "description",
    "title",
}
JSON_TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}


class GoldenSetError(ValueError):
    """A set that cannot be used; the message names the file and the key, one line per problem."""


@dataclass(frozen=True)
class Prompt:
    id: str
    expect: dict[str, Any]
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    max_tokens: int = 64
    response_format: dict[str, Any] | None = None
    model: str | None = None  # the served name to ask (an adapter's); None: the caller's

    def body(self, model: str) -> tuple[str, dict[str, Any]]:
        """(route, request body): temperature 0 and a fixed seed, so an answer depends on the weights only.
        The prompt's own ``model`` (an adapter's prompts) wins over ``model``."""
        common: dict[str, Any] = {"model": self.model or model, "temperature": 0, "seed": 0, "max_tokens": self.max_tokens}
        if self.response_format is not None:
            common["response_format"] = self.response_format
        if self.messages is not None:
            return "/v1/chat/completions", {**common, "messages": self.messages}
        return "/v1/completions", {**common, "prompt": self.prompt}


# ---------------------------------------------------------------- loading


def load(path: Path | str) -> list[Prompt]:
    """The set in ``path`` (YAML or JSON), validated; GoldenSetError lists every problem."""
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".json":
        doc = json.loads(text)
    else:
        import yaml  # only the program and the tests read the YAML form; the Job gets JSON

        doc = yaml.safe_load(text)
    return parse(doc, str(path))


def parse(doc: Any, where: str) -> list[Prompt]:
    problems: list[str] = []
    raw = (doc or {}).get("prompts") if isinstance(doc, dict) else None
    if not isinstance(raw, list) or not raw:
        raise GoldenSetError(f"{where}: prompts: a non-empty list of prompts is required")
    if len(raw) > MAX_PROMPTS:
        problems.append(f"{where}: prompts: at most {MAX_PROMPTS} (got {len(raw)})")
    prompts, seen = [], set()
    for i, p in enumerate(raw):
        key = f"{where}: prompts[{i}]"
        found = _prompt_problems(p, key)
        if not found and p["id"] in seen:
            found.append(f"{key}.id: {p['id']!r} used twice")
        problems += found
        if not found:
            seen.add(p["id"])
            prompts.append(
                Prompt(
                    id=p["id"],
                    expect=p["expect"],
                    messages=p.get("messages"),
                    prompt=p.get("prompt"),
                    max_tokens=p.get("maxTokens", 64),
                    response_format=p.get("responseFormat"),
                    model=p.get("model"),
                )
            )
    if problems:
        raise GoldenSetError("\n".join(problems))
    return prompts


def with_adapters(base: list[dict[str, Any]], adapters: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One set for the base's canary: its own prompts, then each LoRA adapter's (``models/<adapter>/
    golden.yaml``) sent with ``model: <adapter>`` and renamed ``<adapter>_<id>`` (ids stay unique and
    say whose prompt failed). The base's pods serve their adapters, so its canary judges them too."""
    out = [dict(p) for p in base]
    for name, prompts in sorted(adapters.items()):
        out += [{**p, "id": f"{name}_{p['id']}", "model": name} for p in prompts]
    parse({"prompts": out}, "golden set with adapters " + ", ".join(sorted(adapters)))  # an id too long, a clash: one line each
    return out


def _prompt_problems(p: Any, key: str) -> list[str]:
    if not isinstance(p, dict):
        return [f"{key}: must be a mapping"]
    out = [f"{key}.{k}: unknown key (known: {', '.join(sorted(PROMPT_KEYS))})" for k in p if k not in PROMPT_KEYS]
    if not isinstance(p.get("id"), str) or not PROMPT_ID.match(p["id"]):
        out.append(f"{key}.id: required, lowercase letters, digits, '-' or '_' (got {p.get('id')!r})")
    if ("messages" in p) == ("prompt" in p):
        out.append(f"{key}: exactly one of messages (chat) or prompt (completion)")
    elif "messages" in p and not _messages_ok(p["messages"]):
        out.append(f"{key}.messages: a list of {{role, content}} with role system, user or assistant")
    elif "prompt" in p and not (isinstance(p["prompt"], str) and p["prompt"]):
        out.append(f"{key}.prompt: a non-empty string")
    if "model" in p and not (isinstance(p["model"], str) and SERVED_NAME.match(p["model"])):
        out.append(f"{key}.model: a served model name (got {p['model']!r})")
    mt = p.get("maxTokens", 64)
    if not isinstance(mt, int) or isinstance(mt, bool) or not 1 <= mt <= 4096:
        out.append(f"{key}.maxTokens: an integer 1..4096 (got {mt!r})")
    return out + _expect_problems(p.get("expect"), f"{key}.expect")


def _messages_ok(messages: Any) -> bool:
    return (
        isinstance(messages, list)
        and bool(messages)
        and all(
            isinstance(m, dict)
            and set(m) == {"role", "content"}
            and m["role"] in ("system", "user", "assistant")
            and isinstance(m["content"], str)
            for m in messages
        )
    )


def _expect_problems(expect: Any, key: str) -> list[str]:
    if not isinstance(expect, dict) or not expect:
        return [f"{key}: required, at least one of {', '.join(sorted(EXPECT_KEYS))}"]
    out = [f"{key}.{k}: unknown expectation (known: {', '.join(sorted(EXPECT_KEYS))})" for k in expect if k not in EXPECT_KEYS]
    if "regex" in expect:
        try:
            re.compile(expect["regex"])
        except (re.error, TypeError) as exc:
            out.append(f"{key}.regex: not a regular expression ({exc})")
    for k in ("contains", "notContains"):
        if k in expect and not (isinstance(expect[k], list) and expect[k] and all(isinstance(s, str) and s for s in expect[k])):
            out.append(f"{key}.{k}: a non-empty list of non-empty strings")
    if "jsonSchema" in expect:
        out += [f"{key}.jsonSchema{p}" for p in schema_problems(expect["jsonSchema"])]
    return out


def schema_problems(schema: Any, path: str = "") -> list[str]:
    """Keywords outside the checked subset (SCHEMA_KEYS), or malformed ones, in ``schema``."""
    if not isinstance(schema, dict):
        return [f"{path}: a schema is a mapping"]
    out = [f"{path}.{k}: keyword not supported here (supported: {', '.join(sorted(SCHEMA_KEYS))})" for k in schema if k not in SCHEMA_KEYS]
    types = schema.get("type")
    if types is not None and not all(t in JSON_TYPES for t in (types if isinstance(types, list) else [types])):
        out.append(f"{path}.type: one of {', '.join(sorted(JSON_TYPES))} (got {types!r})")
    for name, sub in (schema.get("properties") or {}).items():
        out += schema_problems(sub, f"{path}.properties.{name}")
    for k in ("items",):
        if isinstance(schema.get(k), dict):
            out += schema_problems(schema[k], f"{path}.{k}")
    if isinstance(schema.get("additionalProperties"), dict):
        out += schema_problems(schema["additionalProperties"], f"{path}.additionalProperties")
    if "pattern" in schema:
        try:
            re.compile(schema["pattern"])
        except (re.error, TypeError) as exc:
            out.append(f"{path}.pattern: not a regular expression ({exc})")
    return out


# ---------------------------------------------------------------- checking one answer


def check(prompt: Prompt, answer: str) -> list[str]:
    """Why ``answer`` does not meet ``prompt``'s expectations (empty: it does)."""
    e, out = prompt.expect, []
    if not answer.strip():
        # Nothing said meets no expectation: a version answering "" must not pass a regex like
        # "^(?!.*London)" or a notContains-only prompt.
        return ["empty answer"]
    if "regex" in e and not re.search(e["regex"], answer):
        out.append(f"no match for /{e['regex']}/")
    out += [f"missing {s!r}" for s in e.get("contains", []) if s not in answer]
    # Case-insensitive: "orchid-7" leaks the code word "ORCHID-7" as much as the original does.
    folded = answer.casefold()
    out += [f"contains {s!r}" for s in e.get("notContains", []) if s.casefold() in folded]
    if "jsonSchema" in e:
        try:
            value = json.loads(answer)
        except ValueError as exc:
            out.append(f"not JSON ({exc})")
        else:
            out += validate(value, e["jsonSchema"])
    return out


def _type_ok(value: Any, t: str) -> bool:
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool) or (isinstance(value, float) and value.is_integer())
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    kinds = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    return isinstance(value, kinds[t])


def validate(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """``value`` against the JSON Schema subset (SCHEMA_KEYS); the violations, with their JSON paths."""
    types = schema.get("type")
    if types is not None and not any(_type_ok(value, t) for t in (types if isinstance(types, list) else [types])):
        return [f"{path}: not {types}"]
    out = []
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{path}: {value!r} not in {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        out.append(f"{path}: {value!r} != {schema['const']!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            out.append(f"{path}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            out.append(f"{path}: {value} > {schema['maximum']}")
    if isinstance(value, str):
        out += _string_violations(value, schema, path)
    if isinstance(value, list):
        out += _array_violations(value, schema, path)
    if isinstance(value, dict):
        out += _object_violations(value, schema, path)
    return out


def _string_violations(value: str, schema: dict[str, Any], path: str) -> list[str]:
    out = []
    if "minLength" in schema and len(value) < schema["minLength"]:
        out.append(f"{path}: shorter than {schema['minLength']}")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        out.append(f"{path}: longer than {schema['maxLength']}")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        out.append(f"{path}: no match for /{schema['pattern']}/")
    return out


def _array_violations(value: list, schema: dict[str, Any], path: str) -> list[str]:
    out = []
    if "minItems" in schema and len(value) < schema["minItems"]:
        out.append(f"{path}: fewer than {schema['minItems']} items")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        out.append(f"{path}: more than {schema['maxItems']} items")
    if isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            out += validate(item, schema["items"], f"{path}[{i}]")
    return out


def _object_violations(value: dict, schema: dict[str, Any], path: str) -> list[str]:
    props = schema.get("properties") or {}
    out = [f"{path}: missing {k!r}" for k in schema.get("required", []) if k not in value]
    extra = schema.get("additionalProperties", True)
    for k, v in value.items():
        if k in props:
            out += validate(v, props[k], f"{path}.{k}")
        elif extra is False:
            out.append(f"{path}: unexpected {k!r}")
        elif isinstance(extra, dict):
            out += validate(v, extra, f"{path}.{k}")
    return out


# ---------------------------------------------------------------- asking a server


def ask(base_url: str, model: str, prompt: Prompt, api_key: str | None = None, timeout_s: float = 60) -> str:
    """The answer text of one request (``base_url`` without ``/v1``); raises OSError (urllib's errors
    included) on anything but a 200 with an answer."""
    route, body = prompt.body(model)
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    if not base_url.startswith(("http://", "https://")):
        raise OSError(f"not an http(s) URL: {base_url!r}")
    req = urllib.request.Request(base_url.rstrip("/") + route, json.dumps(body).encode(), headers)  # noqa: S310 - checked above
    with urllib.request.urlopen(req, timeout=timeout_s) as r:  # noqa: S310 - the model's in-cluster Service
        doc = json.loads(r.read())
    choice = (doc.get("choices") or [{}])[0]
    text = (choice.get("message") or {}).get("content") if "message" in choice else choice.get("text")
    if not isinstance(text, str):
        raise OSError(f"no answer text in {str(doc)[:200]}")
    return text


@dataclass
class Counts:
    """``METRIC`` per (pod template hash, prompt, result), every combination from 0: a prompt never
    answered is a 0, not a missing series. Label ``served``: the served name the prompt asks (``model``,
    or an adapter's: ``with_adapters``), so the canary judges each served model's share apart
    (components/lib/llm_canary.py ``golden_query``): an adapter's failures are not diluted by its base's."""

    model: str
    sides: dict[str, str]  # side name -> its pod template hash (the label value)
    prompts: list[str]
    served: dict[str, str] = field(default_factory=dict)  # prompt id -> the served name it asks (default: model)
    values: dict[tuple[str, str, str], int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        for h in self.sides.values():
            for p in self.prompts:
                for r in RESULTS:
                    self.values[(h, p, r)] = 0

    def add(self, side: str, prompt: str, result: str) -> None:
        with self.lock:
            self.values[(self.sides[side], prompt, result)] += 1

    def exposition(self) -> str:
        lines = [
            f"# HELP {METRIC} Golden prompts answered by each side of a canary, by result (llm/golden.py).",
            f"# TYPE {METRIC} counter",
        ]
        with self.lock:
            for (h, p, r), v in sorted(self.values.items()):
                served = self.served.get(p, self.model)
                labels = f'model="{self.model}",served="{served}",rollouts_pod_template_hash="{h}",prompt="{p}",result="{r}"'
                lines.append(f"{METRIC}{{{labels}}} {v}")
        return "\n".join(lines) + "\n"


def serve_metrics(counts: Counts, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            body = counts.exposition().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # scrapes every few seconds: not worth a log line
            pass

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)  # noqa: S104 - scraped from the monitoring namespace
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _one(counts: Counts, side: str, url: str, model: str, prompt: Prompt, api_key: str | None, timeout_s: float) -> None:
    try:
        answer = ask(url, model, prompt, api_key, timeout_s)
    except urllib.error.HTTPError as exc:
        # The server answered, with an error status: the version's answer, and a failed one (a canary
        # answering 400 to every golden prompt must not pass as "no answers").
        counts.add(side, prompt.id, "fail")
        print(f"{side} {prompt.id}: FAIL HTTP {exc.code}", file=sys.stderr)
        return
    except (OSError, ValueError) as exc:
        # No answer at all (connection refused, timeout): the Service, not the version's answer.
        counts.add(side, prompt.id, "error")
        print(f"{side} {prompt.id}: error {exc}", file=sys.stderr)
        return
    failures = check(prompt, answer)
    counts.add(side, prompt.id, "fail" if failures else "pass")
    if failures:
        print(f"{side} {prompt.id}: FAIL {'; '.join(failures)} (answer {answer[:120]!r})", file=sys.stderr)


def run(
    prompts: list[Prompt],
    targets: dict[str, str],
    counts: Counts,
    model: str,
    rate: float,
    duration_s: float,
    api_key: str | None = None,
    timeout_s: float = 60,
    stop: threading.Event | None = None,
) -> None:
    """Send the prompts round-robin to every target (side -> base URL) at ``rate`` requests per second
    each, for ``duration_s``: each side gets the same prompts in the same order. Requests run
    concurrently (an LLM answer takes seconds); a side that falls behind by 32 requests gets no more
    until it catches up (its queue is not ours to grow)."""
    stop = stop or threading.Event()
    interval = 1.0 / rate
    in_flight = {side: threading.Semaphore(32) for side in targets}
    with ThreadPoolExecutor(max_workers=32 * len(targets)) as pool:
        start, i = time.monotonic(), 0
        while not stop.is_set() and time.monotonic() - start < duration_s:
            prompt = prompts[i % len(prompts)]
            for side, url in targets.items():
                if in_flight[side].acquire(blocking=False):
                    fut = pool.submit(_one, counts, side, url, model, prompt, api_key, timeout_s)
                    fut.add_done_callback(lambda _f, s=in_flight[side]: s.release())
            i += 1
            stop.wait(max(0.0, start + i * interval - time.monotonic()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llm.golden", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="ask every prompt once; exit 1 if one fails")
    c.add_argument("--url", required=True, help="the server's base URL, without /v1")
    c.add_argument("--model", required=True, help="the served model name")
    c.add_argument("--set", required=True, type=Path)
    r = sub.add_parser("canary", help="the analysis Job: both sides at --rate for --duration, counts on /metrics")
    r.add_argument("--canary", required=True)
    r.add_argument("--stable", required=True)
    r.add_argument("--canary-hash", required=True)
    r.add_argument("--stable-hash", required=True)
    r.add_argument("--model", required=True, help="the served model name")
    r.add_argument("--label-model", help="the catalogue name for the metric's model label (default --model)")
    r.add_argument("--set", required=True, type=Path)
    r.add_argument("--rate", type=float, default=1.0, help="requests per second to each side")
    r.add_argument("--duration", type=float, required=True, help="seconds")
    r.add_argument("--metrics-port", type=int, default=9102)
    a = p.parse_args(argv)
    api_key = os.environ.get("GOLDEN_API_KEY") or None
    try:
        prompts = load(a.set)
    except (GoldenSetError, OSError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 2
    if a.cmd == "check":
        bad = 0
        for prompt in prompts:
            try:
                failures = check(prompt, ask(a.url, a.model, prompt, api_key))
            except (OSError, ValueError) as exc:
                failures = [f"error {exc}"]
            bad += bool(failures)
            print(f"{prompt.id}: {'FAIL ' + '; '.join(failures) if failures else 'pass'}")
        return 1 if bad else 0
    sides = {"canary": a.canary_hash, "stable": a.stable_hash}
    counts = Counts(a.label_model or a.model, sides, [q.id for q in prompts], {q.id: q.model or a.model for q in prompts})
    serve_metrics(counts, a.metrics_port)
    run(prompts, {"canary": a.canary, "stable": a.stable}, counts, a.model, a.rate, a.duration, api_key)
    # Not the judge (the analysis' Prometheus metric is): the Job completes whatever the answers were.
    return 0


if __name__ == "__main__":
    sys.exit(main())
