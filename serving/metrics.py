"""Model-server metrics. Names carry units; labels are bounded: ``model`` is one of the names given on
the command line (or "" for requests that name no served model), plus route, status code, reason, version."""

from __future__ import annotations

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
CONNECTIONS_CLOSED = "mlplatform_serving_connections_closed_total"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
ROUTES = ("predict", "status", "metadata", "health", "other")
LOAD_FAILURE_REASONS = ("download", "load", "incompatible", "warmup")
CLOSE_REASONS = ("header_timeout", "body_timeout", "header_too_large", "connection_limit")


class ServingMetrics:
    def __init__(self, registry: CollectorRegistry, max_batch_size: int, models: list[str]):
        self.registry = registry
        self.requests = Counter(
            REQUESTS.removesuffix("_total"), "HTTP requests by model, route and status code.", ["model", "route", "code"], registry=registry
        )
        self.request_seconds = Histogram(
            REQUEST_SECONDS, "Latency of predict requests, receipt to response.", ["model"], buckets=LATENCY_BUCKETS, registry=registry
        )
        buckets = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, max_batch_size})
        self.batch_size = Histogram(
            BATCH_SIZE,
            "Instances per model call (dynamic batching).",
            ["model"],
            buckets=[b for b in buckets if b <= max_batch_size],
            registry=registry,
        )
        self.queue_depth = Gauge(QUEUE_DEPTH, "Instances waiting for a model call.", ["model"], registry=registry)
        self.queue_capacity = Gauge(QUEUE_CAPACITY, "Instances the queue holds before answering 429.", ["model"], registry=registry)
        self.inference_seconds = Histogram(
            INFERENCE_SECONDS, "Wall time of one batched model call.", ["model"], buckets=LATENCY_BUCKETS, registry=registry
        )
        self.model_info = Gauge(MODEL_INFO, "1 for the model version being served.", ["model", "version"], registry=registry)
        self.load_failures = Counter(
            MODEL_LOAD_FAILURES.removesuffix("_total"),
            "Model versions refused (corrupt or incompatible) or not loadable yet (download).",
            ["model", "reason"],
            registry=registry,
        )
        self.model_ready = Gauge(MODEL_READY, "1 once a version of the model is loaded and warmed up.", ["model"], registry=registry)
        self.connections_closed = Counter(
            CONNECTIONS_CLOSED.removesuffix("_total"),
            "Connections the server closed on a client: read deadlines, header size, connection limit.",
            ["reason"],
            registry=registry,
        )
        # Pre-create the label sets dashboards rely on, so they read 0 rather than 'no data'.
        for model in models:
            self.model_ready.labels(model=model).set(0)
            for reason in LOAD_FAILURE_REASONS:
                self.load_failures.labels(model=model, reason=reason)
        for reason in CLOSE_REASONS:
            self.connections_closed.labels(reason=reason)
