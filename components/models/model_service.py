"""ModelService: one model's server behind the stack's entry point, autoscaled, safe to roll, scraped.

Deployment (maxUnavailable 0, spread across zones/nodes, graceful drain), a ClusterIP Service that
only the entry point's HTTPRoute reaches (the API port only), a separate metrics Service for the
ServiceMonitor (port 9091, never routed), HPA, PDB, NetworkPolicy, an optional generated API key,
and an IRSA role that can only read the model bucket. Every object is named ``model-server-<model>``
and labelled with the model, so two models never share a Service, PDB, HPA or ServiceMonitor.

Where Argo Rollouts runs the canary (components/services/argo_rollouts.py) the pods are a Rollout, the Service above
is its *stable* Service, a second one (``model-server-<model>-canary``, same port) its canary Service,
and the HTTPRoute sends weight 100 / 0 to them, which the Gateway API plugin moves during a canary
(exact weights); the controller may get/update that one route (a Role in the serving namespace).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from components.config import ServingConfig, serving_processes
from components.lib import keda_specs
from components.lib.network import egress_except_metadata
from components.lib.security import container_security, pod_security
from components.services import argo_rollouts, gateway, keda
from components.services.artifact_store import ArtifactStore, client_env, store_service_account

APP = "model-server"
PORT = 8501
PORT_NAME = "http"
METRICS_PORT = 9091
METRICS_PORT_NAME = "metrics"
MODEL_LABEL = "mlplatform.io/model"
METRICS_SERVICE_LABEL = {"mlplatform.io/service": "metrics"}
API_KEYS_DIR = "/etc/mlplatform/api-keys"
API_KEYS_FILE = f"{API_KEYS_DIR}/keys"  # one key per line (the server's --api-keys-file)
DRAIN_SECONDS = 5
GRACEFUL_SHUTDOWN_SECONDS = 30


CANARY_SUFFIX = "-canary"
ROUTE_ROLE_SUFFIX = "-rollouts"


def object_name(model: str) -> str:
    """The name of every serving object of ``model`` (Deployment, Service, HPA, PDB, ...)."""
    return f"{APP}-{model}"


def canary_service_name(model: str) -> str:
    """The Argo Rollouts canary Service of ``model`` (its stable Service is ``object_name``)."""
    return object_name(model) + CANARY_SUFFIX


def labels(model: str) -> dict[str, str]:
    """Selects exactly this model's pods."""
    return {
        "app.kubernetes.io/name": APP,
        "app.kubernetes.io/instance": model,
        "app.kubernetes.io/part-of": "mlplatform",
        MODEL_LABEL: model,
    }


def server_env(model: str, cfg: ServingConfig, model_uri: str) -> list[dict[str, Any]]:
    env = [
        {"name": "SERVING_MODEL_URI", "value": model_uri},
        {"name": "SERVING_MODEL_NAME", "value": model},
        {"name": "SERVING_PORT", "value": str(PORT)},
        {"name": "SERVING_METRICS_PORT", "value": str(METRICS_PORT)},
        {"name": "SERVING_MAX_BATCH_SIZE", "value": str(cfg.max_batch_size)},
        {"name": "SERVING_BATCH_TIMEOUT_MS", "value": str(cfg.batch_timeout_ms)},
        {"name": "SERVING_MAX_QUEUE", "value": str(cfg.max_queue)},
        {"name": "SERVING_DRAIN_SECONDS", "value": str(DRAIN_SECONDS)},
        {"name": "HOME", "value": "/tmp"},
    ]
    if cfg.api_key:
        env.append({"name": "SERVING_API_KEYS_FILE", "value": API_KEYS_FILE})
    if cfg.processes != 1:
        # N processes on the port (SO_REUSEPORT), metrics summed on the metrics port (serving/workers.py).
        env.append({"name": "SERVING_WORKERS", "value": str(cfg.processes)})
    return env


def deployment_spec(
    model: str, image: str, cfg: ServingConfig, model_uri: str, store_env: list, zone_spread_required: bool = False
) -> dict[str, Any]:
    r, selector = cfg.resources, labels(model)
    probe = {"httpGet": {"path": "/healthz", "port": PORT_NAME}, "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3}
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]
    if cfg.api_key:
        mounts.append({"name": "api-keys", "mountPath": API_KEYS_DIR, "readOnly": True})
        volumes.append({"name": "api-keys", "secret": {"secretName": f"{object_name(model)}-api-keys", "defaultMode": 0o440}})
    spread = [
        # Prod refuses to put every replica in one zone (a zone outage would take the model down);
        # elsewhere a lopsided spread beats a pending pod.
        ("topology.kubernetes.io/zone", "DoNotSchedule" if zone_spread_required else "ScheduleAnyway"),
        ("kubernetes.io/hostname", "ScheduleAnyway"),
    ]
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
                    {"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": when, "labelSelector": {"matchLabels": selector}}
                    for key, when in spread
                ],
                "containers": [
                    {
                        "name": APP,
                        "image": image,
                        "ports": [
                            {"name": PORT_NAME, "containerPort": PORT},
                            {"name": METRICS_PORT_NAME, "containerPort": METRICS_PORT},
                        ],
                        "env": server_env(model, cfg, model_uri) + store_env,
                        "resources": {
                            "requests": {"cpu": r.requests.cpu, "memory": r.requests.memory},
                            "limits": {"cpu": r.limits.cpu, "memory": r.limits.memory},
                        },
                        "livenessProbe": probe,
                        # Three misses (6 s), not one: a single slow answer under load must not take
                        # a healthy replica out of the Service.
                        "readinessProbe": {**probe, "httpGet": {"path": "/readyz", "port": PORT_NAME}, "periodSeconds": 2},
                        "startupProbe": {**probe, "periodSeconds": 2, "failureThreshold": 60},
                        "securityContext": container_security(),
                        "volumeMounts": mounts,
                    }
                ],
                "volumes": volumes,
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
    entry: gateway.EntryPoint
    monitoring_namespace: str = "monitoring"  # who may scrape the metrics port
    zone_spread_required: bool = False
    # The kube-prometheus-stack release: it installs the ServiceMonitor CRD, so the ServiceMonitor
    # must wait for it (a CR applied before its CRD fails the first `up`).
    monitoring_release: pulumi.Resource | None = None
    # KEDA (components/services/keda.py) scales on the queue; None (a stack without monitoring): CPU HPA.
    keda: keda.Keda | None = None
    # Argo Rollouts (components/services/argo_rollouts.py): the pods run as a Rollout whose canary is analysed against
    # the stable pods in Prometheus. None (no monitoring, nothing to analyse with): a Deployment.
    rollouts: argo_rollouts.ArgoRollouts | None = None


def served_uri(store_uri: str, model: str, version: str | None) -> str:
    """What the server loads: the pinned version's directory, or (unpinned) the store root, where it
    follows the model's LATEST (the champion)."""
    return f"{store_uri}/models/{model}/{version}" if version else store_uri


def pin(spec: dict[str, Any], version: str | None) -> dict[str, Any]:
    """The served version on the pod template: changing it is a new template, i.e. a rollout."""
    meta = spec["template"]["metadata"]
    meta["annotations"] = {**meta.get("annotations", {}), argo_rollouts.VERSION_ANNOTATION: version or "champion"}
    return spec


class ModelService(pulumi.ComponentResource):
    url: pulumi.Output[str]
    api_key: pulumi.Output[str] | None

    def __init__(self, name: str, args: ModelServiceArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlplatform:model_service:ModelService", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        cfg, ns, model = args.config, args.namespace, args.model
        obj, selector = object_name(model), labels(model)

        def meta(suffix: str = "", extra: dict[str, str] | None = None) -> k8s.meta.v1.ObjectMetaArgs:
            return k8s.meta.v1.ObjectMetaArgs(name=obj + suffix, namespace=ns, labels={**selector, **(extra or {})})

        # Reads its own model's prefix only (training/artifacts.py: <root>/models/<name>/).
        sa = store_service_account(self, name, args.store, ns, obj, selector, write=False, prefixes=[f"models/{model}/"])
        store_env = client_env(args.store)
        needs: list[pulumi.Resource] = [sa]
        self.api_key = None
        if cfg.api_key:
            key = random.RandomPassword(f"{name}-api-key", random.RandomPasswordArgs(length=40, special=False), opts=child)
            self.api_key = pulumi.Output.secret(key.result)
            needs.append(
                k8s.core.v1.Secret(
                    f"{name}-api-keys",
                    metadata=meta("-api-keys"),
                    string_data={"keys": self.api_key.apply(lambda k: k + "\n")},
                    opts=child,
                )
            )
        pod_spec = pulumi.Output.all(args.image, args.store.uri).apply(
            lambda a: pin(
                deployment_spec(model, a[0], cfg, served_uri(a[1], model, cfg.version), store_env, args.zone_spread_required), cfg.version
            )
        )
        api_service_spec = {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": PORT_NAME, "port": PORT, "targetPort": PORT_NAME, "protocol": "TCP"}],
        }
        # The API Service (the stable one under Argo Rollouts: the controller adds the stable pods'
        # rollouts-pod-template-hash to its selector, and the canary's to the canary Service's).
        service = k8s.core.v1.Service(f"{name}-service", metadata=meta(), spec=api_service_spec, opts=child)
        routing = None
        if args.rollouts is not None:
            routing = argo_rollouts.TrafficRouting(
                stable_service=obj, canary_service=canary_service_name(model), http_route=obj, namespace=ns
            )
            canary_service = k8s.core.v1.Service(f"{name}-canary-service", metadata=meta(CANARY_SUFFIX), spec=api_service_spec, opts=child)
        route_opts = pulumi.ResourceOptions.merge(child, args.entry.route_opts)
        route_spec = gateway.http_route_spec(
            model, args.entry.namespace, args.entry.listener, obj, PORT, routing.canary_service if routing else None
        )
        route = k8s.apiextensions.CustomResource(
            f"{name}-route",
            api_version=f"{gateway.GATEWAY_API}/v1",
            kind="HTTPRoute",
            metadata=meta(),
            spec=route_spec,
            # The plugin owns the weights during a canary (and leaves them 0/100 after): never reset them.
            opts=pulumi.ResourceOptions.merge(route_opts, pulumi.ResourceOptions(ignore_changes=gateway.weight_paths(route_spec))),
        )
        if args.rollouts is not None:
            # The plugin runs as the controller's service account: this one route, get + update only.
            role = k8s.rbac.v1.Role(
                f"{name}-rollouts-role",
                metadata=meta(ROUTE_ROLE_SUFFIX),
                rules=argo_rollouts.route_role_rules(obj),
                opts=child,
            )
            binding = k8s.rbac.v1.RoleBinding(
                f"{name}-rollouts-binding",
                metadata=meta(ROUTE_ROLE_SUFFIX),
                role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": obj + ROUTE_ROLE_SUFFIX},
                subjects=[
                    {"kind": "ServiceAccount", "name": argo_rollouts.CONTROLLER_SERVICE_ACCOUNT, "namespace": argo_rollouts.NAMESPACE}
                ],
                opts=pulumi.ResourceOptions(parent=self, depends_on=[role]),
            )
            # A Rollout with the pod template inline (not workloadRef to a Deployment): one object holds
            # the served version, the preview shows its change there, and KEDA scales what runs.
            after_crds = pulumi.ResourceOptions(parent=self, depends_on=[args.rollouts.release])
            template = argo_rollouts.analysis_template(model, ns, cfg.canary)
            k8s.apiextensions.CustomResource(
                f"{name}-analysis",
                api_version=argo_rollouts.API_VERSION,
                kind="AnalysisTemplate",
                metadata=template["metadata"],
                spec=template["spec"],
                opts=after_crds,
            )
            workload_ref = {"apiVersion": argo_rollouts.API_VERSION, "kind": "Rollout", "name": obj}
            deployment = k8s.apiextensions.CustomResource(
                f"{name}-rollout",
                api_version=argo_rollouts.API_VERSION,
                kind="Rollout",
                metadata=meta(),
                spec=pod_spec.apply(lambda spec: argo_rollouts.rollout(obj, ns, selector, spec, model, cfg.canary, routing)["spec"]),
                # The Services, the route and the controller's right to it exist before its first step.
                opts=pulumi.ResourceOptions(
                    parent=self,
                    depends_on=[*needs, args.rollouts.release, service, canary_service, route, binding],
                    ignore_changes=["spec.replicas"],
                ),
            )
        else:
            workload_ref = {"apiVersion": "apps/v1", "kind": "Deployment", "name": obj}
            deployment = k8s.apps.v1.Deployment(
                f"{name}-deployment",
                metadata=meta(),
                spec=pod_spec,
                # The HPA owns replicas once running; re-applying the configured count on every `up`
                # would undo its scaling (and show as a diff).
                opts=pulumi.ResourceOptions(parent=self, depends_on=needs, ignore_changes=["spec.replicas"]),
            )
        # /metrics has its own Service and port: the route above can never expose it.
        metrics = k8s.core.v1.Service(
            f"{name}-metrics",
            metadata=meta("-metrics", METRICS_SERVICE_LABEL),
            spec={
                "type": "ClusterIP",
                "selector": selector,
                "ports": [{"name": METRICS_PORT_NAME, "port": METRICS_PORT, "targetPort": METRICS_PORT_NAME, "protocol": "TCP"}],
            },
            opts=child,
        )
        if cfg.allowed_cidrs:
            k8s.apiextensions.CustomResource(
                f"{name}-allowed-cidrs",
                api_version=f"{gateway.ENVOY_GATEWAY_API}/v1alpha1",
                kind="SecurityPolicy",
                metadata=meta(),
                spec=gateway.security_policy_spec(obj, cfg.allowed_cidrs),
                opts=pulumi.ResourceOptions.merge(route_opts, pulumi.ResourceOptions(depends_on=[route])),
            )
        if args.keda is not None:
            # On the queue, not on CPU: the target is one full batch waiting per server process of a
            # replica (a pod's processes sum their queues: serving/workers.py, livesum). The query
            # selects this model's targets as the ServiceMonitor below labels them (job from
            # jobLabel, the model from targetLabels); tests/monitoring/test_e2e_keda.py runs it.
            keda.scaled_object(
                f"{name}-scaledobject",
                obj,
                ns,
                selector,
                keda_specs.scaled_object_spec(
                    workload_ref,
                    cfg.min_replicas,
                    cfg.max_replicas,
                    keda_specs.tf_queue_query(ns, APP, {keda_specs.target_label(MODEL_LABEL): model}),
                    cfg.max_batch_size * serving_processes(cfg),
                ),
                args.keda,
                pulumi.ResourceOptions(parent=self, depends_on=[deployment]),
            )
        else:  # no Prometheus on this stack: CPU is the only signal left
            k8s.autoscaling.v2.HorizontalPodAutoscaler(
                f"{name}-hpa",
                metadata=meta(),
                spec={
                    "scaleTargetRef": workload_ref,
                    "minReplicas": cfg.min_replicas,
                    "maxReplicas": cfg.max_replicas,
                    "metrics": [
                        {
                            "type": "Resource",
                            "resource": {
                                "name": "cpu",
                                "target": {"type": "Utilization", "averageUtilization": cfg.target_cpu_utilization},
                            },
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
                # The API port from the entry point's Envoy pods only; the metrics port from the
                # monitoring namespace only. Nothing else reaches the pods.
                "ingress": [
                    {
                        "from": [
                            {
                                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": args.entry.namespace}},
                                "podSelector": {"matchLabels": gateway.PROXY_LABELS},
                            }
                        ],
                        "ports": [{"protocol": "TCP", "port": PORT}],
                    },
                    {
                        "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": args.monitoring_namespace}}}],
                        "ports": [{"protocol": "TCP", "port": METRICS_PORT}],
                    },
                ],
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
                    # Must match the metrics Service's labels and its port *name*: a mismatch scrapes nothing, silently.
                    "selector": {"matchLabels": {**selector, **METRICS_SERVICE_LABEL}},
                    "namespaceSelector": {"matchNames": [ns]},
                    # job="model-server" for every model (the alerts select on it); the model is a target label.
                    "jobLabel": "app.kubernetes.io/name",
                    "targetLabels": [MODEL_LABEL],
                    # Canary vs stable pods in the rollout analysis (components/services/argo_rollouts.py).
                    **({"podTargetLabels": [argo_rollouts.POD_HASH_LABEL]} if args.rollouts is not None else {}),
                    "endpoints": [{"port": METRICS_PORT_NAME, "path": "/metrics", "interval": "15s", "scrapeTimeout": "5s"}],
                },
                opts=pulumi.ResourceOptions(parent=self, depends_on=[args.monitoring_release, metrics]),
            )
        self.url = args.entry.base_url.apply(lambda base: f"{base}/v1/models/{model}")
        self.register_outputs({"url": self.url})
