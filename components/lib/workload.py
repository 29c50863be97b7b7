"""What every model workload (the model server, the vLLM server, a training run) writes the same way:
its labels and the runtime-independent parts of its Services, disruption budget, NetworkPolicy and
ServiceMonitor. Pure dicts (no Pulumi import); the components in components/models/ pass them as specs,
and components/models/route.py attaches a model's HTTPRoute and SecurityPolicy to the entry point.

Label values reach selectors, and a Deployment's, StatefulSet's or Job's selector cannot change on a
live object: a new value here is a replaced workload on every stack."""

from __future__ import annotations

from typing import Any

from components.lib.network import IN_CLUSTER, egress_except_metadata

PART_OF = "mlplatform"
# On every object of a model: the alerts, the KEDA queries and the rollout analysis select on it.
MODEL_LABEL = "mlplatform.io/model"
RUNTIME_LABEL = "mlplatform.io/runtime"
# The in-cluster model store (MinIO's API port).
STORE_PORT = 9000


def labels(app: str, model: str, *, instance: bool = True, runtime: str | None = None) -> dict[str, str]:
    """The labels that select exactly ``model``'s pods of ``app``. ``instance``: the model as
    ``app.kubernetes.io/instance`` where one app name serves every model (``model-server``,
    ``training``); the vLLM servers are named per model (``llm-<model>``) and never had it."""
    out = {"app.kubernetes.io/name": app}
    if instance:
        out["app.kubernetes.io/instance"] = model
    out |= {"app.kubernetes.io/part-of": PART_OF, MODEL_LABEL: model}
    if runtime:
        out[RUNTIME_LABEL] = runtime
    return out


def cluster_ip_service_spec(selector: dict[str, str], port_name: str, port: int) -> dict[str, Any]:
    """One named TCP port of the selected pods, inside the cluster only."""
    return {
        "type": "ClusterIP",
        "selector": selector,
        "ports": [{"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP"}],
    }


def disruption_budget_spec(selector: dict[str, str]) -> dict[str, Any]:
    # maxUnavailable (not minAvailable) so a single-replica stack never blocks node drains.
    return {"maxUnavailable": 1, "selector": {"matchLabels": selector}}


def namespace_peer(namespace: str) -> dict[str, Any]:
    """Every pod of ``namespace`` (its immutable ``kubernetes.io/metadata.name`` label)."""
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}


def pods_peer(namespace: str, pod_labels: dict[str, str]) -> dict[str, Any]:
    """The pods labelled ``pod_labels`` in ``namespace`` only (e.g. the entry point's proxies)."""
    return {**namespace_peer(namespace), "podSelector": {"matchLabels": pod_labels}}


def egress(*in_cluster_ports: int) -> list[dict[str, Any]]:
    """HTTPS out of the cluster (S3, registries, Hugging Face), never the instance metadata service,
    and ``in_cluster_ports`` (TCP) on any pod of the cluster (the model store, the Pushgateway)."""
    return [egress_except_metadata(443), {**IN_CLUSTER, "ports": [{"protocol": "TCP", "port": p} for p in in_cluster_ports]}]


def service_monitor_spec(selector: dict[str, str], namespace: str, port_name: str, scrape_timeout: str) -> dict[str, Any]:
    """``/metrics`` every 15 s on the named port of the Services labelled ``selector`` in ``namespace``.
    The port is matched by *name*, and a selector or name that matches nothing scrapes nothing, silently."""
    return {
        "selector": {"matchLabels": selector},
        "namespaceSelector": {"matchNames": [namespace]},
        "endpoints": [{"port": port_name, "path": "/metrics", "interval": "15s", "scrapeTimeout": scrape_timeout}],
    }
