"""Monitoring: kube-prometheus-stack (Prometheus, Alertmanager, Grafana), the Pushgateway for training
metrics, our alert rules (monitoring/rules/) and dashboards (monitoring/dashboards/).

Secrets never enter Helm values: Grafana's admin password and Alertmanager's receiver credentials are
Kubernetes Secrets made from Pulumi secrets, referenced by name (existingSecret) or mounted as files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from components.config import AlertingConfig, MonitoringConfig
from components.lib import helm
from components.lib.network import IN_CLUSTER, NAMESPACES, NODE_EXPORTER_NAMESPACE, egress_except_metadata
from monitoring.spec import CREDENTIALS_SECRET, RELEASE, alertmanager_config, dashboards, rule_groups, threshold_rules

PUSHGATEWAY_RELEASE = "pushgateway"
PUSHGATEWAY_PERSISTENCE_FILE = "/data/pushgateway.data"
GRAFANA_ADMIN_SECRET = "grafana-admin"
LABELS = {"app.kubernetes.io/part-of": "mlplatform"}

ZONE_KEY = "topology.kubernetes.io/zone"


def pushgateway_url(namespace: str) -> str:
    return f"{PUSHGATEWAY_RELEASE}-prometheus-pushgateway.{namespace}.svc.cluster.local:9091"


def _volume(size: str, storage_class: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
    if storage_class:
        spec["storageClassName"] = storage_class
    return {"volumeClaimTemplate": {"spec": spec}}


def _spread(replicas: int) -> dict[str, Any]:
    """Replicas of an HA set go to different zones (the chart builds the pod selector), and each
    claims its own volume, which a WaitForFirstConsumer StorageClass creates in that pod's zone: a
    zone outage takes one replica and its disk, never the whole set."""
    if replicas < 2:
        return {}
    return {"podAntiAffinity": "hard", "podAntiAffinityTopologyKey": ZONE_KEY}


def _grafana_values() -> dict[str, Any]:
    """kube-prometheus-stack's grafana subchart (keys checked against grafana 12.11.1's values.yaml)."""
    return {
        "enabled": True,
        "admin": {"existingSecret": GRAFANA_ADMIN_SECRET, "userKey": "admin-user", "passwordKey": "admin-password"},
        # Our dashboards are ConfigMaps of this namespace: the sidecar looks here only, and Grafana's
        # RBAC is a Role here (rbac.namespaced), not a ClusterRole that reads every Secret of the
        # cluster (issue 24 item 6; the grafana chart grants the sidecar get/list/watch on
        # ConfigMaps and Secrets).
        "rbac": {"namespaced": True},
        "sidecar": {
            "dashboards": {
                "enabled": True,
                "label": "grafana_dashboard",
                "labelValue": "1",
                "searchNamespace": NAMESPACES["monitoring"][0],
            }
        },
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
    }


def stack_values(
    cfg: MonitoringConfig,
    alerting: AlertingConfig,
    has_slack: bool,
    has_smtp_password: bool,
    storage_class: str | None = None,
    node_exporter_namespace: str = NODE_EXPORTER_NAMESPACE,
) -> dict[str, Any]:
    prometheus_spec: dict[str, Any] = {
        # Select our rules/monitors in every namespace, not only those carrying the release label
        # (the chart's default): without this, our PrometheusRules and ServiceMonitors are ignored.
        "ruleSelectorNilUsesHelmValues": False,
        "serviceMonitorSelectorNilUsesHelmValues": False,
        "podMonitorSelectorNilUsesHelmValues": False,
        "probeSelectorNilUsesHelmValues": False,
        "retention": cfg.retention,
        "retentionSize": f"{int(cfg.storage_gi_b * 0.9)}GB",
        "resources": {"requests": {"cpu": "200m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}},
        # Two replicas scrape the same targets independently (an HA pair); Alertmanager deduplicates
        # what both fire.
        "replicas": cfg.prometheus_replicas,
        "storageSpec": _volume(f"{cfg.storage_gi_b}Gi", storage_class),
        **_spread(cfg.prometheus_replicas),
    }
    am_replicas = cfg.alertmanager_replicas
    return {
        "fullnameOverride": RELEASE,
        "prometheus": {
            "prometheusSpec": prometheus_spec,
            "podDisruptionBudget": {"enabled": cfg.prometheus_replicas > 1, "minAvailable": 1},
        },
        "alertmanager": {
            "enabled": True,
            "config": alertmanager_config(alerting, has_slack, has_smtp_password),
            "alertmanagerSpec": {
                "secrets": [CREDENTIALS_SECRET],  # mounted at /etc/alertmanager/secrets/<name>/
                "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
                # Replicas gossip alerts, silences and the notification log; a quorum survives one loss.
                "replicas": am_replicas,
                # Silences and the notification log survive a restart of the whole set.
                "storage": _volume("1Gi", storage_class),
                **_spread(am_replicas),
            },
            "podDisruptionBudget": {"enabled": am_replicas > 1, "minAvailable": max(1, am_replicas - 1)},
        },
        # node-exporter needs the host's network, PID namespace and /proc, /sys: it gets its own
        # `privileged` namespace so that `monitoring` can enforce Pod Security `restricted`.
        "prometheus-node-exporter": {"namespaceOverride": node_exporter_namespace},
        # The chart sets no resources for the operator and its webhook-certificate jobs.
        "prometheusOperator": {
            "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
            "admissionWebhooks": {"patch": {"resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}}}},
        },
        "grafana": _grafana_values(),
    }


# What Prometheus ingests from the Pushgateway: training's metrics and the push timestamps, nothing
# else. honorLabels keeps the labels a push sets, so without this a training job (any code in
# ml-training) could push `mlplatform_serving_requests_total{...}` and forge the canary analysis or
# KEDA's inputs (issue 24 item 8). Applied after the scrape, on the pushed names (metric_relabel_configs).
PUSHGATEWAY_METRIC_RELABELINGS = [
    {"sourceLabels": ["__name__"], "regex": "mlplatform_training_.+|push_time_seconds|push_failure_time_seconds", "action": "keep"}
]


def pushgateway_values() -> dict[str, Any]:
    return {
        # honorLabels: keep the job/model labels training pushes; only training's names get in.
        "serviceMonitor": {"enabled": True, "honorLabels": True, "metricRelabelings": PUSHGATEWAY_METRIC_RELABELINGS},
        "resources": {"requests": {"cpu": "20m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
        "securityContext": {"runAsNonRoot": True, "runAsUser": 65534, "fsGroup": 65534, "seccompProfile": {"type": "RuntimeDefault"}},
        # The chart's default is {}: without this the pod is refused by `restricted` Pod Security.
        "containerSecurityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}},
        # Pushed values live only in memory unless persisted: a restarted Pushgateway would forget the
        # last training success, and TrainingStale could not fire (issue 13 item 8). The chart mounts
        # the volume at /data but passes no persistence flag itself.
        "persistentVolume": {"enabled": True, "size": "1Gi", "mountPath": "/data"},
        "extraArgs": [f"--persistence.file={PUSHGATEWAY_PERSISTENCE_FILE}", "--persistence.interval=1m"],
    }


def _from_namespaces(namespaces: list[str] | tuple[str, ...]) -> list[dict[str, Any]]:
    return [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": n}}} for n in sorted(namespaces)]


def network_policy_spec(client_namespaces: list[str], query_namespaces: tuple[str, ...] = ()) -> dict[str, Any]:
    """The monitoring namespace's NetworkPolicy. Inside the namespace, anything; the operator's
    admission webhook from the API server; ``client_namespaces`` push to the Pushgateway,
    ``query_namespaces`` query Prometheus. Egress: Prometheus scrapes every namespace, Alertmanager
    calls out to Slack/e-mail/webhooks."""
    query = [{"from": _from_namespaces(query_namespaces), "ports": [{"protocol": "TCP", "port": 9090}]}] if query_namespaces else []
    return {
        "podSelector": {},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [
            {"from": [{"podSelector": {}}]},
            {"ports": [{"protocol": "TCP", "port": 10250}]},
            {"from": _from_namespaces(client_namespaces), "ports": [{"protocol": "TCP", "port": 9091}]},
            *query,
        ],
        # Prometheus scrapes kubelets and node-exporter on node IPs, Alertmanager reaches
        # Slack/SMTP/webhooks: any port, but never the node's metadata service.
        "egress": [IN_CLUSTER, egress_except_metadata()],
    }


@dataclass
class MonitoringArgs:
    namespace: str
    config: MonitoringConfig
    alerting: AlertingConfig
    secrets: dict[str, pulumi.Output[str]]
    client_namespaces: list[str]  # namespaces allowed to push to the Pushgateway (training)
    storage_class: str | None = None  # None: the cluster's default StorageClass
    node_exporter_namespace: str = NODE_EXPORTER_NAMESPACE
    # Namespaces whose pods may query Prometheus' API (port 9090): KEDA's scalers read the queues there.
    query_namespaces: tuple[str, ...] = ()


class Monitoring(pulumi.ComponentResource):
    release: k8s.helm.v3.Release
    pushgateway_url: str

    def __init__(self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlplatform:monitoring:Monitoring", name, None, opts)
        ns, cfg = args.namespace, args.config
        secrets, creds = self._secrets(name, args)
        values = stack_values(
            cfg, args.alerting, "slack-webhook-url" in creds, "smtp-password" in creds, args.storage_class, args.node_exporter_namespace
        )
        self.release = helm.release(
            f"{name}-stack",
            "kube-prometheus-stack",
            ns,
            values,
            pulumi.ResourceOptions(parent=self, depends_on=secrets),
            timeout_s=900,
            release_name=RELEASE,
        )
        self.pushgateway = helm.release(
            f"{name}-pushgateway",
            "prometheus-pushgateway",
            ns,
            pushgateway_values(),
            pulumi.ResourceOptions(parent=self, depends_on=[self.release]),  # its ServiceMonitor needs the CRD
            release_name=PUSHGATEWAY_RELEASE,
        )
        self.pushgateway_url = pushgateway_url(ns)
        self._rules(name, args)
        self._dashboards(name, ns)
        k8s.networking.v1.NetworkPolicy(
            f"{name}-netpol",
            metadata=k8s.meta.v1.ObjectMetaArgs(name="monitoring", namespace=ns, labels=LABELS),
            spec=network_policy_spec(args.client_namespaces, args.query_namespaces),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"pushgateway_url": self.pushgateway_url})

    def _secrets(self, name: str, args: MonitoringArgs) -> tuple[list[pulumi.Resource], dict[str, pulumi.Input[str]]]:
        """Grafana's admin Secret (a generated password) and Alertmanager's receiver credentials: the
        Secrets the chart references by name, and which credentials there are."""
        child = pulumi.ResourceOptions(parent=self)
        password = random.RandomPassword(f"{name}-grafana-password", random.RandomPasswordArgs(length=24, special=False), opts=child)
        # RandomPassword.result is secret by the provider schema; say so here too (mocks and policies
        # see the explicit secret, and a future refactor cannot drop it).
        self.grafana_password = pulumi.Output.secret(password.result)
        grafana_secret = k8s.core.v1.Secret(
            f"{name}-grafana-admin",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=GRAFANA_ADMIN_SECRET, namespace=args.namespace, labels=LABELS),
            string_data={"admin-user": "admin", "admin-password": pulumi.Output.secret(password.result)},
            opts=child,
        )
        creds: dict[str, pulumi.Input[str]] = {}
        if "alertingSlackWebhookUrl" in args.secrets:
            creds["slack-webhook-url"] = args.secrets["alertingSlackWebhookUrl"]
        if "alertingSmtpPassword" in args.secrets:
            creds["smtp-password"] = args.secrets["alertingSmtpPassword"]
        am_secret = k8s.core.v1.Secret(
            f"{name}-alertmanager-credentials",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=CREDENTIALS_SECRET, namespace=args.namespace, labels=LABELS),
            string_data=pulumi.Output.secret(creds) if creds else {},
            opts=child,
        )
        return [grafana_secret, am_secret], creds

    def _rules(self, name: str, args: MonitoringArgs) -> None:
        """One PrometheusRule per group: the thresholds from the stack config, then monitoring/rules/."""
        cfg = args.config
        groups = [threshold_rules(cfg.latency_slo_ms, cfg.error_ratio_slo, cfg.training_stale_days)] + [
            g for gs in rule_groups(args.alerting.runbooks_url).values() for g in gs
        ]
        for group in groups:
            k8s.apiextensions.CustomResource(
                f"{name}-rules-{group['name']}",
                api_version="monitoring.coreos.com/v1",
                kind="PrometheusRule",
                metadata=k8s.meta.v1.ObjectMetaArgs(name=group["name"], namespace=args.namespace, labels=LABELS),
                spec={"groups": [group]},
                opts=pulumi.ResourceOptions(parent=self, depends_on=[self.release]),  # the chart installs the CRD
            )

    def _dashboards(self, name: str, ns: str) -> None:
        for stem, body in dashboards().items():
            k8s.core.v1.ConfigMap(
                f"{name}-dashboard-{stem}",
                # The Grafana sidecar loads every ConfigMap with this label (kube-prometheus-stack's setting).
                metadata=k8s.meta.v1.ObjectMetaArgs(name=f"dashboard-{stem}", namespace=ns, labels={**LABELS, "grafana_dashboard": "1"}),
                data={f"{stem}.json": body},
                opts=pulumi.ResourceOptions(parent=self),
            )
