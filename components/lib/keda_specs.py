"""Autoscaling on queue depth with KEDA, for both serving runtimes: the pure part (no Pulumi import,
so the TensorFlow venv's end-to-end test can use it too); components/services/keda.py installs KEDA.

CPU is the wrong signal for model serving: a GPU server is saturated long before its CPU is busy, and
our batching server keeps its CPU flat while its queue grows. KEDA turns a Prometheus query into an
external metric for the HPA it manages, so each model scales on the depth of its own queue:

* vLLM: ``vllm:num_requests_waiting`` (requests the engine has accepted but not scheduled yet; a
  gauge registered by ``PrometheusStatLogger`` in vllm/v1/metrics/loggers.py, vLLM 0.33.0),
* our TF server: ``mlplatform_serving_queue_depth`` (instances waiting for a model call,
  serving/metrics.py), averaged over a short window because the gauge drops to 0 at every batch.

The replica count KEDA asks for (KEDA v2.20.2 ``pkg/scalers/scaler.go`` ``GetMetricTargetType``:
metricType defaults to ``AverageValue``; the HPA then applies the algorithm of
https://kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/#algorithm-details, which
for an AverageValue external metric is the one KEDA's docs state,
https://keda.sh/docs/2.20/concepts/scaling-deployments/ and
https://keda.sh/http-add-on/0.14/concepts/scaling/): ``desired = ceil(value / threshold)``, clamped
to ``[minReplicaCount, maxReplicaCount]`` (see :func:`desired_replicas`). The HPA's 10 % tolerance
and its scale-down stabilisation window smooth this further in a cluster.

Non-prod GPU serving can sleep: a KEDA ``cron`` trigger keeps ``replicas`` pods during the awake
window (e.g. 08:00-20:00 on weekdays) and, with ``minReplicaCount: 0``, KEDA scales to zero outside
it once the queue trigger is idle too (``pkg/scalers/cron_scaler.go``: the trigger is active only
within [start, end)). A dev GPU then does not idle for the 108 hours a week nobody works.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from components.lib.network import egress_except_metadata

NAMESPACE = "keda"
RELEASE = "keda"
API_VERSION = "keda.sh/v1alpha1"
# kube-prometheus-stack with fullnameOverride "kps" (monitoring/spec.py RELEASE) names its Prometheus
# Service "<fullname>-prometheus" on port 9090.
PROMETHEUS_URL = "http://kps-prometheus.monitoring.svc.cluster.local:9090"
# How long the TF server's queue gauge is averaged: it is sampled at scrape time and the batcher
# empties it at every model call, so one sample says little; 30 s is two scrapes at 15 s.
QUEUE_WINDOW = "30s"
# KEDA's ports: the operator's gRPC server (the metrics server asks it for values), the metrics
# API server (the kube-apiserver calls it) and the admission webhooks.
OPERATOR_GRPC_PORT, METRICS_API_PORT, WEBHOOK_PORT = 9666, 6443, 9443


def keda_values() -> dict[str, Any]:
    """Chart values (keys checked against keda 2.20.2's values.yaml by the tests)."""
    return {
        "crds": {"install": True},
        # Our NetworkPolicies (below) instead of the chart's Cilium-flavoured ones.
        "networkPolicy": {"enabled": False},
        # Our triggers (Prometheus, cron) read no Secret: the operator and the metrics server may read
        # only those of KEDA's own namespace, not every Secret of the cluster (issue 24 item 6; chart
        # 2.20.2 values permissions.*.restrict.secret).
        "permissions": {"operator": {"restrict": {"secret": True}}, "metricServer": {"restrict": {"secret": True}}},
        "resources": {
            part: {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}
            for part in ("operator", "metricServer", "webhooks")
        },
    }


def keda_network_policy(prometheus_namespace: str) -> dict[str, Any]:
    """What KEDA's pods need on top of the namespace's default deny: the API server calls the metrics
    API and the webhooks; the metrics server calls the operator over gRPC; the operator and the
    metrics server call the API server; the operator queries Prometheus."""
    return {
        "podSelector": {},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"ports": [{"protocol": "TCP", "port": p} for p in (METRICS_API_PORT, WEBHOOK_PORT, OPERATOR_GRPC_PORT)]}],
        "egress": [
            # the Kubernetes API (EKS: control-plane ENIs on 443), never the instance metadata service
            egress_except_metadata(443, 6443),
            {"to": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": OPERATOR_GRPC_PORT}]},
            {
                "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": prometheus_namespace}}}],
                "ports": [{"protocol": "TCP", "port": 9090}],
            },
        ],
    }


@dataclass(frozen=True)
class SleepSchedule:
    """When GPU serving is awake (5-field cron, KEDA's cron scaler); asleep (0 replicas) otherwise."""

    timezone: str  # IANA name, e.g. "Europe/Paris"
    start: str  # e.g. "0 8 * * 1-5"
    end: str  # e.g. "0 20 * * 1-5"
    replicas: int = 1


def vllm_queue_query(namespace: str, served_model_name: str) -> str:
    """Requests waiting in every replica of one vLLM model (one series: KEDA refuses several)."""
    return f'sum(vllm:num_requests_waiting{{namespace="{namespace}", model_name="{served_model_name}"}})'


def target_label(service_label: str) -> str:
    """The Prometheus label a ServiceMonitor's ``targetLabels`` entry becomes: prometheus-operator
    sanitizes the Service label's name (pkg/prometheus/promcfg.go: ``sanitizeLabelName``, every
    character outside [a-zA-Z0-9_] becomes '_'), e.g. ``mlplatform.io/model`` -> ``mlplatform_io_model``."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", service_label)


def tf_queue_query(namespace: str, job: str, labels: dict[str, str] | None = None, window: str = QUEUE_WINDOW) -> str:
    """Instances waiting in every replica of one model's TF server (``job`` and ``labels`` as its
    ServiceMonitor labels the targets), each replica's gauge averaged over ``window``."""
    matchers = ", ".join(f'{k}="{v}"' for k, v in {"namespace": namespace, "job": job, **(labels or {})}.items())
    return f"sum(avg_over_time(mlplatform_serving_queue_depth{{{matchers}}}[{window}]))"


def prometheus_trigger(query: str, threshold: float, activation: float = 0, url: str = PROMETHEUS_URL) -> dict[str, Any]:
    return {
        "type": "prometheus",
        "name": "queue",
        "metricType": "AverageValue",
        "metadata": {
            "serverAddress": url,
            "query": query,
            "threshold": f"{threshold:g}",
            # Above this the trigger is active (scales up from zero); at or below it, idle.
            "activationThreshold": f"{activation:g}",
            # An empty answer (no pod scraped yet, model asleep) is 0 waiting requests, not an error.
            "ignoreNullValues": "true",
        },
    }


def cron_trigger(schedule: SleepSchedule) -> dict[str, Any]:
    return {
        "type": "cron",
        "name": "awake",
        "metadata": {
            "timezone": schedule.timezone,
            "start": schedule.start,
            "end": schedule.end,
            "desiredReplicas": str(schedule.replicas),
        },
    }


def scaled_object_spec(
    target: dict[str, str],
    min_replicas: int,
    max_replicas: int,
    query: str,
    threshold: float,
    schedule: SleepSchedule | None = None,
    prometheus_url: str = PROMETHEUS_URL,
    scale_down_window_s: int = 300,
) -> dict[str, Any]:
    """ScaledObject spec: the queue trigger, plus the awake window when a schedule is given (then the
    minimum is 0: outside the window, with an empty queue, nothing runs)."""
    if schedule is not None:
        min_replicas = 0
    if not 0 <= min_replicas <= max_replicas:
        raise ValueError(f"need 0 <= min <= max replicas (got {min_replicas}, {max_replicas})")
    triggers = [prometheus_trigger(query, threshold, url=prometheus_url)]
    if schedule is not None:
        triggers.append(cron_trigger(schedule))
    return {
        "scaleTargetRef": target,
        "minReplicaCount": min_replicas,
        "maxReplicaCount": max_replicas,
        "pollingInterval": 15,
        # Only for the step to zero: how long every trigger must be idle before the last pod goes.
        "cooldownPeriod": 600,
        "advanced": {
            "horizontalPodAutoscalerConfig": {
                # Up fast, down slowly: a new LLM replica takes minutes to load its weights.
                "behavior": {
                    "scaleUp": {"stabilizationWindowSeconds": 0, "policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}]},
                    "scaleDown": {
                        "stabilizationWindowSeconds": scale_down_window_s,
                        "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}],
                    },
                }
            }
        },
        "triggers": triggers,
    }


def desired_replicas(value: float, threshold: float, min_replicas: int, max_replicas: int) -> int:
    """The replica count KEDA's HPA computes from one AverageValue metric (module docstring):
    ``ceil(value / threshold)`` clamped to [min, max]. Used by the tests that evaluate the rendered
    query against a real Prometheus; not by the program."""
    return max(min_replicas, min(max_replicas, math.ceil(value / threshold)))
