"""Decide an AnalysisTemplate's outcome the way the Argo Rollouts v1.9 controller does, against a real
Prometheus, so a test can run *the rendered template* (components/lib/rollout_specs.py), not a copy of it.

What is reproduced, from argoproj/argo-rollouts:
- args: ``{{args.<name>}}`` in a query is replaced by the arg's value (a template default, or the value
  the Rollout passes); an arg without a value, or any ``{{`` left over, is an error here, as it is an
  AnalysisRun error there.
- Prometheus provider (metricproviders/prometheus/prometheus.go ``processResponse``): an instant query;
  a vector result becomes ``result``, the list of its sample values in the API's order; a scalar
  becomes a number; any other result type is an error.
- One measurement (utils/evaluate ``EvaluateResult``): only a successCondition -> Failed unless it is
  true; only a failureCondition -> Successful unless it is true; both false -> Inconclusive; an
  evaluation error (e.g. ``result[0]`` of an empty vector) -> Error. Go and Python agree that every
  comparison with NaN is false.
- One metric (analysis/analysis.go ``assessMetricFailureInconclusiveOrError``): Failed when failed >
  failureLimit (default 0), Inconclusive when inconclusive > inconclusiveLimit (default 0), Error when
  consecutive errors > consecutiveErrorLimit (default 4); otherwise Successful once ``count`` is
  reached, or when the run is terminated at the end of the rollout (background analysis has no count).
- A metric that is Failed, Error or Inconclusive terminates the run (analysisutil.IsTerminating): the
  others are assessed as terminated. The run is its worst metric; a Failed or Error run aborts the rollout, an Inconclusive one pauses it.

- Job provider (metricproviders/job): see ``StartJob`` below; ``{{args.X}}`` in the Job's spec is
  substituted like in a query (Argo resolves args over the whole metric before it runs).

The conditions are expr-lang (github.com/expr-lang/expr). Only a small subset is understood here, and
anything else raises ``Unsupported`` (the test fails loudly rather than guessing):
``result``, ``result[<int>]``, numbers, ``< <= > >= == !=``, ``&&`` and ``||`` (short-circuit), ``!``,
parentheses, ``len(x)`` (expr's builtin) and ``isNaN(x)`` (Argo's, utils/evaluate/evaluate.go).
"""

from __future__ import annotations

import json
import math
import operator
import re
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SEVERITY = {"Successful": 0, "Inconclusive": 1, "Error": 2, "Failed": 3}


class Unsupported(ValueError):
    """A template feature or expression this emulation does not implement."""


class MeasurementError(RuntimeError):
    """What Argo records as a measurement in phase Error."""


def substitute(text: str, args: dict[str, str]) -> str:
    def value(m: re.Match) -> str:
        if m.group(1) not in args:
            raise MeasurementError(f"arg {m.group(1)!r} has no value")
        return args[m.group(1)]

    out = re.sub(r"\{\{\s*args\.([A-Za-z0-9_-]+)\s*\}\}", value, text)
    if "{{" in out:
        raise Unsupported(f"template syntax other than {{{{args.X}}}} in {text!r}")
    return out


def resolve_args(template: dict[str, Any], given: dict[str, str]) -> dict[str, str]:
    args = {}
    for arg in template["spec"].get("args", []):
        if arg["name"] in given:
            args[arg["name"]] = given[arg["name"]]
        elif "value" in arg:
            args[arg["name"]] = arg["value"]
        elif "valueFrom" in arg:
            raise Unsupported(f"arg {arg['name']!r}: valueFrom in the template itself")
        else:
            raise MeasurementError(f"arg {arg['name']!r} has no value (the Rollout must pass it)")
    return args


_TOKEN = re.compile(r"\s*(?:(?P<num>\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)|(?P<op><=|>=|==|!=|&&|\|\||[<>!()\[\]])|(?P<name>[A-Za-z_]\w*))")
# expr-lang's builtin ``len`` and Argo's ``isNaN`` (math.IsNaN, added to the environment by
# utils/evaluate/evaluate.go EvalCondition); any other name is refused.
_FUNCTIONS = {"len": len, "isNaN": math.isnan}


def _tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    expr = expr.rstrip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise Unsupported(f"cannot read {expr[pos:]!r} in condition {expr!r}")
        kind = m.lastgroup
        tok = m.group(kind)
        if kind == "name" and tok != "result" and tok not in _FUNCTIONS:
            raise Unsupported(f"{tok!r} in condition {expr!r}: only `result`, len() and isNaN() are supported")
        out.append((kind, tok))
        pos = m.end()
    return out


_COMPARE = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne}


def condition(expr: str, result: Any) -> bool:
    """Evaluate an expr-lang condition of the supported subset; MeasurementError for runtime errors."""
    return _Condition(expr, result).evaluate()


class _Condition:
    """Recursive descent over one condition's tokens: disjunction (``||``) of conjunctions (``&&``) of
    comparisons (``!``, ``< <= > >= == !=``) of operands (numbers, ``result``, ``result[i]``,
    ``len(x)``, ``isNaN(x)``, ``( )``). The parse builds thunks, evaluated afterwards: ``&&`` and
    ``||`` short-circuit as expr's compiled jumps do (OpJumpIfFalse / OpJumpIfTrue), so
    ``len(result) > 0 && result[0] < 1`` never indexes an empty result."""

    def __init__(self, expr: str, result: Any):
        self.expr, self.result = expr, result
        self.toks = _tokens(expr)
        self.i = 0

    def evaluate(self) -> bool:
        thunk = self.disjunction()
        if self.i != len(self.toks):
            raise Unsupported(f"condition {self.expr!r}: trailing {self.toks[self.i][1]!r}")
        out = thunk()
        if not isinstance(out, bool):
            raise MeasurementError(f"condition {self.expr!r} is not a boolean (expr.AsBool)")
        return out

    def peek(self) -> str | None:
        return self.toks[self.i][1] if self.i < len(self.toks) else None

    def take(self, expected: str | None = None) -> tuple[str, str]:
        if self.i >= len(self.toks) or (expected is not None and self.toks[self.i][1] != expected):
            raise Unsupported(f"condition {self.expr!r}: expected {expected or 'more'} at token {self.i}")
        self.i += 1
        return self.toks[self.i - 1]

    def disjunction(self):
        v = self.conjunction()
        while self.peek() == "||":
            self.take("||")
            v = (lambda a, b: lambda: _bool(a()) or _bool(b()))(v, self.conjunction())
        return v

    def conjunction(self):
        v = self.comparison()
        while self.peek() == "&&":
            self.take("&&")
            v = (lambda a, b: lambda: _bool(a()) and _bool(b()))(v, self.comparison())
        return v

    def comparison(self):
        if self.peek() == "!":
            self.take("!")
            inner = self.comparison()
            return lambda: not _bool(inner())
        left = self.operand()
        if self.peek() not in _COMPARE:
            return left
        op = self.take()[1]
        right = self.operand()

        def compare():
            a, b = left(), right()
            if isinstance(a, (list, bool)) or isinstance(b, (list, bool)):
                raise MeasurementError(f"cannot compare {a!r} {op} {b!r}")
            return _COMPARE[op](a, b)

        return compare

    def operand(self):
        kind, tok = self.take()
        if kind == "num":
            return lambda: float(tok)
        if tok == "(":
            v = self.disjunction()
            self.take(")")
            return v
        if tok in _FUNCTIONS:
            self.take("(")
            arg = self.disjunction()
            self.take(")")
            return lambda: _call(tok, arg())
        if tok == "result":
            return self.indexed() if self.peek() == "[" else (lambda: self.result)
        raise Unsupported(f"condition {self.expr!r}: unexpected {tok!r}")

    def indexed(self):
        """``result[<int>]``, after ``result``."""
        self.take("[")
        k, idx = self.take()
        if k != "num" or "." in idx:
            raise Unsupported(f"condition {self.expr!r}: only integer indexes")
        self.take("]")

        def index():
            if not isinstance(self.result, list):
                raise MeasurementError(f"cannot index a {type(self.result).__name__} result")
            if int(idx) >= len(self.result):
                raise MeasurementError(f"index out of range: {idx} (result has {len(self.result)} values)")
            return self.result[int(idx)]

        return index


def _call(name: str, value: Any) -> Any:
    """len of a non-list, isNaN of a non-number: expr's runtime errors (the measurement is Error)."""
    if name == "len" and not isinstance(value, list):
        raise MeasurementError(f"invalid argument for len (type {type(value).__name__})")
    if name == "isNaN" and (isinstance(value, (bool, list)) or not isinstance(value, (int, float))):
        raise MeasurementError(f"isNaN of a {type(value).__name__}")
    return _FUNCTIONS[name](value)


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise MeasurementError(f"{v!r} is not a boolean")
    return v


def measurement_phase(metric: dict[str, Any], result: Any) -> str:
    ok_expr, fail_expr = metric.get("successCondition", ""), metric.get("failureCondition", "")
    try:
        ok = condition(ok_expr, result) if ok_expr else False
        failed = condition(fail_expr, result) if fail_expr else False
    except MeasurementError:
        return "Error"
    if not ok_expr and not fail_expr:
        return "Successful"
    if ok_expr and not fail_expr:
        failed = not ok
    elif fail_expr and not ok_expr:
        ok = not failed
    if failed:
        return "Failed"
    return "Successful" if ok else "Inconclusive"


def prometheus_result(prom_url: str, query: str) -> Any:
    url = f"{prom_url}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    try:
        doc = json.loads(urllib.request.urlopen(url, timeout=10).read())
    except OSError as exc:
        raise MeasurementError(f"query failed: {exc}") from exc
    data = doc["data"]
    if data["resultType"] == "vector":
        return [float(s["value"][1]) for s in data["result"]]
    if data["resultType"] == "scalar":
        return float(data["value"][1])
    raise MeasurementError(f"Prometheus metric type not supported: {data['resultType']}")


@dataclass
class MetricResult:
    name: str
    phases: list[str] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)

    def assess(self, metric: dict[str, Any], terminating: bool) -> str:
        failed = self.phases.count("Failed")
        inconclusive = self.phases.count("Inconclusive")
        consecutive_errors = 0
        for p in reversed(self.phases):
            if p != "Error":
                break
            consecutive_errors += 1
        phase = None
        if failed > int(metric.get("failureLimit", 0)):
            phase = "Failed"
        if inconclusive > int(metric.get("inconclusiveLimit", 0)):
            phase = "Inconclusive"
        if consecutive_errors > int(metric.get("consecutiveErrorLimit", 4)):
            phase = "Error"
        if phase:
            return phase
        count = effective_count(metric)
        if count is not None and len(self.phases) >= count:
            return "Successful"
        return "Successful" if terminating else "Running"


def effective_count(metric: dict[str, Any]) -> int | None:
    """Metric.EffectiveCount (pkg/apis/rollouts/v1alpha1/analysis_types.go): ``count`` if set, else 1
    when there is no interval (one measurement), else none (measure until the run is terminated)."""
    if "count" in metric:
        return int(metric["count"])
    return None if "interval" in metric else 1


SUPPORTED_METRIC_KEYS = {
    "name",
    "interval",
    "initialDelay",
    "failureLimit",
    "inconclusiveLimit",
    "consecutiveErrorLimit",
    "count",
    "successCondition",
    "failureCondition",
    "provider",
}


# The ``job`` provider (metricproviders/job/job.go): the controller creates the metric's Job and the
# measurement stays Running while it runs; Job Complete -> Successful, Job Failed -> Failed; when the
# run is terminated (the rollout ends, or another metric ended the run) a running Job is deleted and
# its measurement marked Successful (JobProvider.Terminate). Here the Job's container runs as a local
# process: ``start_job(metric name, the provider's job dict)`` returns a ``subprocess.Popen``.
StartJob = Callable[[str, dict[str, Any]], subprocess.Popen]


class Analysis:
    """One AnalysisRun of ``template`` with ``args``: ``start()`` at the start of the rollout (job
    metrics begin), ``measure()`` once per interval, then ``finish()`` and ``phase(terminating=True)``
    at the end of the rollout."""

    def __init__(self, template: dict[str, Any], args: dict[str, str], prom_url: str, start_job: StartJob | None = None):
        self.template, self.prom_url, self.start_job = template, prom_url, start_job
        self.args = resolve_args(template, args)
        self.metrics = template["spec"]["metrics"]
        for m in self.metrics:
            extra = set(m) - SUPPORTED_METRIC_KEYS
            provider = set(m["provider"])
            if extra or provider not in ({"prometheus"}, {"job"}) or (provider == {"job"} and start_job is None):
                raise Unsupported(f"metric {m['name']}: {sorted(extra) or list(m['provider'])} not emulated (job needs start_job)")
        self.results = {m["name"]: MetricResult(m["name"]) for m in self.metrics}
        self.jobs: dict[str, subprocess.Popen] = {}

    def queries(self) -> dict[str, str]:
        return {
            m["name"]: substitute(m["provider"]["prometheus"]["query"], self.args) for m in self.metrics if "prometheus" in m["provider"]
        }

    def start(self) -> None:
        for m in self.metrics:
            if "job" in m["provider"] and m["name"] not in self.jobs:
                # Argo resolves the run's args in the whole metric, the Job's spec included (the vLLM
                # golden Job takes the canary's and the stable pods' template hashes that way).
                job = json.loads(substitute(json.dumps(m["provider"]["job"]), self.args))
                self.jobs[m["name"]] = self.start_job(m["name"], job)

    def _job_measurement(self, m: dict[str, Any]) -> tuple[str, Any] | None:
        proc = self.jobs.get(m["name"])
        if proc is None:
            self.start()
            return None
        rc = proc.poll()
        if rc is None:
            return None  # the measurement is Running
        return ("Successful" if rc == 0 else "Failed"), f"job exited {rc}"

    def finish(self) -> None:
        """The run is terminated: running Jobs are deleted, their measurement Successful."""
        for name, proc in self.jobs.items():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
                if not self.results[name].phases:
                    self.results[name].phases.append("Successful")
                    self.results[name].values.append("terminated")

    def measure(self) -> dict[str, tuple[str, Any]]:
        out = {}
        for m in self.metrics:
            res = self.results[m["name"]]
            if res.assess(m, terminating=False) not in ("Running",):
                continue  # a completed metric takes no more measurements
            if "job" in m["provider"]:
                if (done := self._job_measurement(m)) is not None:
                    res.phases.append(done[0])
                    res.values.append(done[1])
                    out[m["name"]] = done
                continue
            try:
                value = prometheus_result(self.prom_url, substitute(m["provider"]["prometheus"]["query"], self.args))
                phase = measurement_phase(m, value)
            except MeasurementError as exc:
                value, phase = str(exc), "Error"
            res.phases.append(phase)
            res.values.append(value)
            out[m["name"]] = (phase, value)
        return out

    def metric_phases(self, terminating: bool) -> dict[str, str]:
        # analysisutil.IsTerminating: one metric Failed, Error or Inconclusive terminates the run, and
        # the metrics still running are then assessed as terminated.
        first = {m["name"]: self.results[m["name"]].assess(m, terminating) for m in self.metrics}
        if not terminating and any(p in ("Failed", "Error", "Inconclusive") for p in first.values()):
            return {m["name"]: self.results[m["name"]].assess(m, True) for m in self.metrics}
        return first

    def phase(self, terminating: bool) -> str:
        phases = self.metric_phases(terminating)
        if any(p == "Running" for p in phases.values()):
            return "Running"
        return max(phases.values(), key=lambda p: SEVERITY[p])

    def run_document(self, name: str, terminating: bool = True) -> dict[str, Any]:
        """The AnalysisRun as ``kubectl get analysisrun -o json`` shows it (status.phase, and per metric
        its phase and measurements with their values), for code that reads runs (ops/deliver.py)."""
        phases = self.metric_phases(terminating)
        results = [
            {
                "name": n,
                "phase": phases[n],
                "measurements": [
                    {"phase": p, "value": json.dumps(v) if isinstance(v, list) else str(v)} for p, v in zip(r.phases, r.values, strict=True)
                ],
            }
            for n, r in self.results.items()
        ]
        return {"metadata": {"name": name}, "status": {"phase": self.phase(terminating), "metricResults": results}}

    def rollout_decision(self, terminating: bool = True) -> str:
        """What the Rollout does with this run: abort (Failed/Error), pause (Inconclusive), promote."""
        p = self.phase(terminating)
        return {"Failed": "abort", "Error": "abort", "Inconclusive": "pause", "Successful": "promote"}.get(p, "wait")


def is_nan(x: Any) -> bool:
    return isinstance(x, float) and math.isnan(x)
