"""Model-server metrics. Names carry units; labels are bounded: ``model`` is one of the names given on
the command line (or "" for requests that name no served model), plus route, status code, reason, version."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# *_created series double the scrape size and no dashboard or alert uses them.
disable_created_metrics()

REQUESTS = "mlplatform_serving_requests_total"
REQUEST_SECONDS = "mlplatform_serving_request_duration_seconds"
BATCH_SIZE = "mlplatform_serving_batch_size"
QUEUE_DEPTH = "mlplatform_serving_queue_depth"
QUEUE_CAPACITY = "mlplatform_serving_queue_capacity"
INFERENCE_SECONDS = "mlplatform_serving_inference_duration_seconds"
MODEL_INFO = "mlplatform_serving_model_info"
MODEL_LOAD_FAILURES = "mlplatform_serving_model_load_failures_total"
MODEL_READY = "mlplatform_serving_model_ready"
# Versions refused for the life of the process (failed a check, never retried), by reason; and whether
# the served version is the one the store's LATEST (the champion) or the pin names. A champion the
# server refuses (a digest mismatch, a rejection mark, a signature that breaks its clients) leaves the
# older version serving: CHAMPION_SERVED 0 and REFUSED_VERSION naming it make that visible (alert
# MlServedVersionNotChampion) instead of one log line.
VERSIONS_REFUSED = "mlplatform_serving_versions_refused_total"
CHAMPION_SERVED = "mlplatform_serving_champion_served"
REFUSED_VERSION = "mlplatform_serving_refused_version_info"
CONNECTIONS_CLOSED = "mlplatform_serving_connections_closed_total"
# The model-quality signal that needs no ground truth: what the served version answers, per version,
# so a canary's class mix can be compared with the stable pods' on the same traffic (Argo Rollouts
# analysis, components/lib/rollout_specs.py).
PREDICTED_CLASS = "mlplatform_serving_predicted_class_total"
OUTPUT_VALUE = "mlplatform_serving_output_value"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
ROUTES = ("predict", "status", "metadata", "health", "other")
# The `traffic` label of REQUESTS and REQUEST_SECONDS: "warmup" for requests marked
# `X-Mlplatform-Traffic: warmup` (the in-cluster traffic that gives a canary's analysis data on a
# quiet stack), "user" for all others. User-facing dashboards and alerts select traffic!="warmup"
# (not traffic="user": series from a server without the label still count); the canary analysis
# counts both. Exactly these two values, whatever a client sends.
TRAFFIC = ("user", "warmup")
# "manifest", "digest", "rejected", "unsafe_key": the registry checks (serving/integrity.py).
REFUSAL_REASONS = ("manifest", "digest", "rejected", "unsafe_key", "load", "incompatible", "warmup")
LOAD_FAILURE_REASONS = ("download", *REFUSAL_REASONS)
CLOSE_REASONS = ("header_timeout", "body_timeout", "write_timeout", "header_too_large", "connection_limit")
# Class ids 0..MAX_CLASS_LABELS-2 get their own label value, every larger (or negative) id shares
# OTHER_CLASS: at most MAX_CLASS_LABELS series per model and version, whatever the model's output width.
MAX_CLASS_LABELS = 32
OTHER_CLASS = "other"
# Non-classifiers (a regression score): coarse, sign-symmetric 1-2.5-5 buckets over 0.01..1000,
# enough to see a canary whose outputs moved by a factor, cheap enough for every model.
_POSITIVE = tuple(m * 10.0**e for e in range(-2, 3) for m in (1.0, 2.5, 5.0)) + (1000.0,)
OUTPUT_BUCKETS = tuple(sorted({-b for b in _POSITIVE} | {0.0} | set(_POSITIVE)))


def output_kind(outputs: dict[str, np.ndarray]) -> tuple[str, str] | None:
    """(output name, "class" or "value") for the output a model is judged by: the first output in
    name order. A float output of shape (n, k>=2) is class scores (argmax is the class); an integer
    (n,) output is class ids; any other numeric output is a value (its first element per instance).
    Strings: nothing to count."""
    if not outputs:
        return None
    key = sorted(outputs)[0]
    y = outputs[key]
    if y.ndim == 2 and y.shape[1] >= 2 and np.issubdtype(y.dtype, np.floating):
        return key, "class"
    if y.ndim == 1 and (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        return key, "class"
    if np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_:
        return key, "value"
    return None


def class_label(c: int) -> str:
    return str(c) if 0 <= c < MAX_CLASS_LABELS - 1 else OTHER_CLASS


class ServingMetrics:
    def __init__(self, registry: CollectorRegistry, max_batch_size: int, models: list[str]):
        self.registry = registry
        self._traffic(registry, max_batch_size)
        self._lifecycle(registry)
        self._quality(registry)
        # Pre-create the label sets dashboards rely on, so they read 0 rather than 'no data'.
        for model in models:
            self.model_ready.labels(model=model).set(0)
            self.champion_served.labels(model=model).set(0)
            for reason in LOAD_FAILURE_REASONS:
                self.load_failures.labels(model=model, reason=reason)
            for reason in REFUSAL_REASONS:
                self.versions_refused.labels(model=model, reason=reason)
        for reason in CLOSE_REASONS:
            self.connections_closed.labels(reason=reason)

    def _traffic(self, registry: CollectorRegistry, max_batch_size: int) -> None:
        """Requests, their latency, batching and queueing."""
        self.requests = Counter(
            REQUESTS.removesuffix("_total"),
            "HTTP requests by model, route, status code and traffic (user or warmup).",
            ["model", "route", "code", "traffic"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            REQUEST_SECONDS,
            "Latency of predict requests, receipt to response, by traffic (user or warmup).",
            ["model", "traffic"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        buckets = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, max_batch_size})
        self.batch_size = Histogram(
            BATCH_SIZE,
            "Instances per model call (dynamic batching).",
            ["model"],
            buckets=[b for b in buckets if b <= max_batch_size],
            registry=registry,
        )
        # multiprocess_mode: how the workers of one pod (serving/workers.py) add up; ignored in a single process
        self.queue_depth = Gauge(
            QUEUE_DEPTH, "Instances waiting for a model call.", ["model"], registry=registry, multiprocess_mode="livesum"
        )
        self.queue_capacity = Gauge(
            QUEUE_CAPACITY, "Instances the queue holds before answering 429.", ["model"], registry=registry, multiprocess_mode="livesum"
        )
        self.inference_seconds = Histogram(
            INFERENCE_SECONDS, "Wall time of one batched model call.", ["model"], buckets=LATENCY_BUCKETS, registry=registry
        )

    def _lifecycle(self, registry: CollectorRegistry) -> None:
        """The served versions, refused versions, readiness, and connections closed on clients."""
        self.model_info = Gauge(
            MODEL_INFO, "1 for the model version being served.", ["model", "version"], registry=registry, multiprocess_mode="livemax"
        )
        self.load_failures = Counter(
            MODEL_LOAD_FAILURES.removesuffix("_total"),
            "Model versions refused (corrupt or incompatible) or not loadable yet (download).",
            ["model", "reason"],
            registry=registry,
        )
        self.model_ready = Gauge(
            MODEL_READY, "1 once a version of the model is loaded and warmed up.", ["model"], registry=registry, multiprocess_mode="livemin"
        )
        self.versions_refused = Counter(
            VERSIONS_REFUSED.removesuffix("_total"),
            "Model versions refused for good: failed the registry checks (manifest, digest, rejected, unsafe_key) or loading.",
            ["model", "reason"],
            registry=registry,
        )
        self.champion_served = Gauge(
            CHAMPION_SERVED,
            "1 when the served version is the one the store's LATEST (or the pin) names; 0 when an older one serves instead.",
            ["model"],
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.refused_version = Gauge(
            REFUSED_VERSION,
            "1 for the champion version this server refused (at most one per model), with the reason.",
            ["model", "version", "reason"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.connections_closed = Counter(
            CONNECTIONS_CLOSED.removesuffix("_total"),
            "Connections the server closed on a client: read deadlines, header size, connection limit.",
            ["reason"],
            registry=registry,
        )

    def _quality(self, registry: CollectorRegistry) -> None:
        """What the served versions answer (see PREDICTED_CLASS)."""
        self.predicted_class = Counter(
            PREDICTED_CLASS.removesuffix("_total"),
            "Instances answered, by the class the served version predicted (argmax of the first output).",
            ["model", "version", "class"],
            registry=registry,
        )
        self.output_value = Histogram(
            OUTPUT_VALUE,
            "First element of the first output per instance, for models that are not classifiers.",
            ["model", "version"],
            buckets=OUTPUT_BUCKETS,
            registry=registry,
        )

    def observe_outputs(self, model: str, version: str, outputs: dict[str, np.ndarray]) -> None:
        """Count what ``version`` of ``model`` answered (one request's outputs, all its instances)."""
        kind = output_kind(outputs)
        if kind is None:
            return
        key, what = kind
        y = outputs[key]
        if what == "class":
            ids = y.argmax(axis=1) if y.ndim == 2 else y.astype(np.int64)
            if len(ids) == 1:  # the common single-instance request: skip np.unique (a sort) on the hot path
                self.predicted_class.labels(model=model, version=version, **{"class": class_label(int(ids[0]))}).inc()
                return
            values, counts = np.unique(ids, return_counts=True)
            per_label: dict[str, int] = {}
            for v, n in zip(values.tolist(), counts.tolist(), strict=True):
                label = class_label(int(v))
                per_label[label] = per_label.get(label, 0) + n
            for label, n in per_label.items():
                self.predicted_class.labels(model=model, version=version, **{"class": label}).inc(n)
        else:
            child = self.output_value.labels(model=model, version=version)
            if y.ndim == 0 or y.size == 0:
                return
            for v in y.reshape(y.shape[0], -1)[:, 0].astype(np.float64).tolist():
                if np.isfinite(v):
                    child.observe(v)

    def forget_version(self, model: str, version: str) -> None:
        """Drop a replaced version's output series: a long-lived pod that hot-swaps many versions
        keeps only the ones it serves (bounded cardinality)."""
        for labels in list(self.predicted_class._metrics):  # noqa: SLF001 - prometheus_client has no public listing
            if labels[:2] == (model, version):
                self.predicted_class.remove(*labels)
        try:
            self.output_value.remove(model, version)
        except KeyError:
            pass
