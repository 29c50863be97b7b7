"""ModelService: one model's server, autoscaled, safe to roll, scraped.

Deployment (maxUnavailable 0, spread across zones/nodes, graceful drain), Service, HPA, PDB,
NetworkPolicy, ServiceMonitor, and an IRSA role that can only read the model bucket. Every object is
named ``model-server-<model>`` and labelled with the model, so two models never share a Service,
PDB, HPA or ServiceMonitor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.artifact_store import ArtifactStore, client_env, store_service_account
from components.config import ServingConfig
from components.namespaces import egress_except_metadata
from components.security import container_security, pod_security

APP = "model-server"
PORT = 8501
PORT_NAME = "http"
MODEL_LABEL = "mlplatform.io/model"
DRAIN_SECONDS = 5
GRACEFUL_SHUTDOWN_SECONDS = 30
NLB_ANNOTATIONS = {
    "service.beta.kubernetes.io/aws-load-balancer-type": "nlb",
    "service.beta.kubernetes.io/aws-load-balancer-cross-zone-load-balancing-enabled": "true",
}


def object_name(model: str) -> str:
    """The name of every serving object of ``model`` (Deployment, Service, HPA, PDB, ...)."""
    return f"{APP}-{model}"


def labels(model: str) -> dict[str, str]:
    """Selects exactly this model's pods."""
    return {
        "app.kubernetes.io/name": APP,
        "app.kubernetes.io/instance": model,
        "app.kubernetes.io/part-of": "mlplatform",
        MODEL_LABEL: model,
    }


def server_env(model: str, cfg: ServingConfig, model_uri: str) -> list[dict[str, Any]]:
    return [
        {"name": "SERVING_MODEL_URI", "value": model_uri},
        {"name": "SERVING_MODEL_NAME", "value": model},
        {"name": "SERVING_PORT", "value": str(PORT)},
        {"name": "SERVING_MAX_BATCH_SIZE", "value": str(cfg.max_batch_size)},
        {"name": "SERVING_BATCH_TIMEOUT_MS", "value": str(cfg.batch_timeout_ms)},
        {"name": "SERVING_MAX_QUEUE", "value": str(cfg.max_queue)},
        {"name": "SERVING_DRAIN_SECONDS", "value": str(DRAIN_SECONDS)},
        {"name": "HOME", "value": "/tmp"},
    ]


def deployment_spec(model: str, image: str, cfg: ServingConfig, model_uri: str, store_env: list) -> dict[str, Any]:
    r, selector = cfg.resources, labels(model)
    probe = {"httpGet": {"path": "/healthz", "port": PORT_NAME}, "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3}
    return {
        "replicas": cfg.replicas,
        "revisionHistoryLimit": 5,
        "selector": {"matchLabels": selector},
        # Never below the desired capacity during a rollout: a new pod must be ready (model loaded
        # and warmed) before an old one is taken away.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": {
            "metadata": {"labels": selector},
            "spec": {
                "serviceAccountName": object_name(model),
                "automountServiceAccountToken": False,
                # drain (not ready, still serving) + graceful shutdown of in-flight requests + margin
                "terminationGracePeriodSeconds": DRAIN_SECONDS + GRACEFUL_SHUTDOWN_SECONDS + 10,
                "securityContext": pod_security(),
                "topologySpreadConstraints": [
                    {"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": selector}}
                    for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname")
                ],
                "containers": [
                    {
                        "name": APP,
                        "image": image,
                        "ports": [{"name": PORT_NAME, "containerPort": PORT}],
                        "env": server_env(model, cfg, model_uri) + store_env,
                        "resources": {
                            "requests": {"cpu": r.requests.cpu, "memory": r.requests.memory},
                            "limits": {"cpu": r.limits.cpu, "memory": r.limits.memory},
                        },
                        "livenessProbe": probe,
                        "readinessProbe": {
                            **probe,
                            "httpGet": {"path": "/readyz", "port": PORT_NAME},
                            "periodSeconds": 2,
                            "failureThreshold": 1,
                        },
                        "startupProbe": {**probe, "periodSeconds": 2, "failureThreshold": 60},
                        "securityContext": container_security(),
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                    }
                ],
                "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
            },
        },
    }


@dataclass
class ModelServiceArgs:
    model: str  # the catalogue name: object names, labels, the API path
    namespace: str
    image: pulumi.Input[str]
    config: ServingConfig
    store: ArtifactStore
    eks: bool
    # The kube-prometheus-stack release: it installs the ServiceMonitor CRD, so the ServiceMonitor
    # must wait for it (a CR applied before its CRD fails the first `up`).
    monitoring_release: pulumi.Resource | None = None


class ModelService(pulumi.ComponentResource):
    url: pulumi.Output[str]

    def __init__(self, name: str, args: ModelServiceArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlplatform:model_service:ModelService", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        cfg, ns, model = args.config, args.namespace, args.model
        obj, selector = object_name(model), labels(model)
        meta = lambda **kw: k8s.meta.v1.ObjectMetaArgs(name=obj, namespace=ns, labels=selector, **kw)  # noqa: E731
        sa = store_service_account(self, name, args.store, ns, obj, selector, write=False)
        store_env = client_env(args.store)
        deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata=meta(),
            spec=pulumi.Output.all(args.image, args.store.uri).apply(lambda a: deployment_spec(model, a[0], cfg, a[1], store_env)),
            # The HPA owns replicas once running; re-applying the configured count on every `up`
            # would undo its scaling (and show as a diff).
            opts=pulumi.ResourceOptions(parent=self, depends_on=[sa], ignore_changes=["spec.replicas"]),
        )
        service = k8s.core.v1.Service(
            f"{name}-service",
            metadata=meta(annotations=NLB_ANNOTATIONS if args.eks else None),
            spec={
                "type": "LoadBalancer",
                "selector": selector,
                "ports": [{"name": PORT_NAME, "port": 80, "targetPort": PORT_NAME, "protocol": "TCP"}],
                **({"loadBalancerSourceRanges": list(cfg.allowed_cidrs)} if cfg.allowed_cidrs else {}),
            },
            opts=child,
        )
        k8s.autoscaling.v2.HorizontalPodAutoscaler(
            f"{name}-hpa",
            metadata=meta(),
            spec={
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": obj},
                "minReplicas": cfg.min_replicas,
                "maxReplicas": cfg.max_replicas,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": cfg.target_cpu_utilization}},
                    }
                ],
                # Scale up fast, down slowly: a flapping fleet re-warms models for nothing.
                "behavior": {
                    "scaleDown": {"stabilizationWindowSeconds": 300, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}
                },
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[deployment]),
        )
        k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb",
            metadata=meta(),
            # maxUnavailable (not minAvailable) so a single-replica dev stack never blocks node drains.
            spec={"maxUnavailable": 1, "selector": {"matchLabels": selector}},
            opts=child,
        )
        k8s.networking.v1.NetworkPolicy(
            f"{name}-netpol",
            metadata=meta(),
            spec={
                "podSelector": {"matchLabels": selector},
                "policyTypes": ["Ingress", "Egress"],
                # Only the service port: clients through the load balancer and Prometheus (which
                # scrapes /metrics on the same port). Nothing else reaches the pods.
                "ingress": [{"ports": [{"protocol": "TCP", "port": PORT}]}],
                "egress": [
                    egress_except_metadata(443),
                    {"to": [{"namespaceSelector": {}}], "ports": [{"protocol": "TCP", "port": 9000}]},
                ],
            },
            opts=child,
        )
        if args.monitoring_release is not None:
            k8s.apiextensions.CustomResource(
                f"{name}-servicemonitor",
                api_version="monitoring.coreos.com/v1",
                kind="ServiceMonitor",
                metadata=meta(),
                spec={
                    # Must match the Service's labels and its port *name*: a mismatch scrapes nothing, silently.
                    "selector": {"matchLabels": selector},
                    "namespaceSelector": {"matchNames": [ns]},
                    # job="model-server" for every model (the alerts select on it); the model is a target label.
                    "jobLabel": "app.kubernetes.io/name",
                    "targetLabels": [MODEL_LABEL],
                    "endpoints": [{"port": PORT_NAME, "path": "/metrics", "interval": "15s", "scrapeTimeout": "5s"}],
                },
                opts=pulumi.ResourceOptions(parent=self, depends_on=[args.monitoring_release, service]),
            )
        ingress = service.status.apply(lambda s: (s.load_balancer.ingress or [None])[0] if s and s.load_balancer else None)
        self.url = ingress.apply(lambda i: f"http://{(i.hostname or i.ip) if i else 'pending'}/v1/models/{model}")
        self.register_outputs({"url": self.url})
