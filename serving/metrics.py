"""Model-server metrics. Names carry units; labels are bounded (status code, route, reason, version)."""

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

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
ROUTES = ("predict", "status", "health", "metrics", "other")


class ServingMetrics:
    def __init__(self, registry: CollectorRegistry, max_batch_size: int):
        self.registry = registry
        self.requests = Counter(
            REQUESTS.removesuffix("_total"), "HTTP requests by route and status code.", ["route", "code"], registry=registry
        )
        self.request_seconds = Histogram(
            REQUEST_SECONDS, "Latency of :predict requests, receipt to response.", buckets=LATENCY_BUCKETS, registry=registry
        )
        buckets = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, max_batch_size})
        self.batch_size = Histogram(
            BATCH_SIZE,
            "Instances per model call (dynamic batching).",
            buckets=[b for b in buckets if b <= max_batch_size],
            registry=registry,
        )
        self.queue_depth = Gauge(QUEUE_DEPTH, "Instances waiting for a model call.", registry=registry)
        self.queue_capacity = Gauge(QUEUE_CAPACITY, "Instances the queue holds before answering 429.", registry=registry)
        self.inference_seconds = Histogram(
            INFERENCE_SECONDS, "Wall time of one batched model call.", buckets=LATENCY_BUCKETS, registry=registry
        )
        self.model_info = Gauge(MODEL_INFO, "1 for the model version being served.", ["model", "version"], registry=registry)
        self.load_failures = Counter(
            MODEL_LOAD_FAILURES.removesuffix("_total"), "Model versions refused (corrupt or incompatible).", ["reason"], registry=registry
        )
        self.model_ready = Gauge(MODEL_READY, "1 once a model is loaded and warmed up.", registry=registry)
        # Pre-create the label sets dashboards rely on, so they read 0 rather than 'no data'.
        for reason in ("download", "load", "incompatible", "warmup"):
            self.load_failures.labels(reason=reason)
