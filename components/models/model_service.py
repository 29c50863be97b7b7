"""ModelService: one model's server behind the stack's entry point, autoscaled, safe to roll, scraped.

Deployment (maxUnavailable 0, spread across zones/nodes, graceful drain), a ClusterIP Service that
only the entry point's HTTPRoute reaches (the API port only), a separate metrics Service for the
ServiceMonitor (port 9091, never routed), HPA, PDB, NetworkPolicy, optional generated API keys (checked at the entry point and by the server),
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

from components.config import ServingConfig, serving_processes
from components.lib import keda_specs, rollout_specs, workload
from components.lib.security import container_security, pod_security
from components.models import route
from components.services import argo_rollouts, gateway
from components.services.artifact_store import ArtifactStore, client_env, store_service_account
from components.services.keda import Keda, scaled_object

APP = "model-server"
PORT = 8501
PORT_NAME = "http"
METRICS_PORT = 9091
METRICS_PORT_NAME = "metrics"
METRICS_SERVICE_LABEL = {"mlplatform.io/service": "metrics"}
API_KEYS_DIR = "/etc/mlplatform/api-keys"
API_KEYS_FILE = f"{API_KEYS_DIR}/keys"  # one key per line (the server's --api-keys-file)
DRAIN_SECONDS = 5
GRACEFUL_SHUTDOWN_SECONDS = 30


CANARY_SUFFIX = "-canary"
# The Secret the entry point reads the model's keys from (one data key per client); the server's
# file is ``<object>-api-keys`` (API_KEYS_FILE, every key a line).
GATEWAY_KEYS_SUFFIX = "-client-keys"
ROUTE_ROLE_SUFFIX = "-rollouts"


def object_name(model: str) -> str:
    """The name of every serving object of ``model`` (Deployment, Service, HPA, PDB, ...)."""
    return f"{APP}-{model}"


def gateway_keys_secret(model: str) -> str:
    """The Secret (serving namespace) the entry point's apiKeyAuth reads: client name -> key."""
    return object_name(model) + GATEWAY_KEYS_SUFFIX


def canary_service_name(model: str) -> str:
    """The Argo Rollouts canary Service of ``model`` (its stable Service is ``object_name``)."""
    return object_name(model) + CANARY_SUFFIX


def labels(model: str) -> dict[str, str]:
    """Selects exactly this model's pods."""
    return workload.labels(APP, model)


def server_env(model: str, cfg: ServingConfig, model_uri: str) -> list[dict[str, Any]]:
    env = [
        {"name": "SERVING_MODEL_URI", "value": model_uri},
        {"name": "SERVING_MODEL_NAME", "value": model},
        {"name": "SERVING_HOST", "value": "0.0.0.0"},  # the server's own default is loopback (a laptop run)
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


def server_volumes(model: str, cfg: ServingConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The server's (mounts, volumes): scratch space under a read-only root, and the API keys file."""
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]
    if cfg.api_key:
        mounts.append({"name": "api-keys", "mountPath": API_KEYS_DIR, "readOnly": True})
        volumes.append({"name": "api-keys", "secret": {"secretName": f"{object_name(model)}-api-keys", "defaultMode": 0o440}})
    return mounts, volumes


def server_container(
    model: str, image: str, cfg: ServingConfig, model_uri: str, store_env: list, mounts: list[dict[str, Any]]
) -> dict[str, Any]:
    r = cfg.resources
    probe = {"httpGet": {"path": "/healthz", "port": PORT_NAME}, "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3}
    return {
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


def spread(selector: dict[str, str], zone_spread_required: bool) -> list[dict[str, Any]]:
    """Replicas across zones and nodes. Prod refuses to put every replica in one zone (a zone outage
    would take the model down); elsewhere a lopsided spread beats a pending pod."""
    rules = [
        ("topology.kubernetes.io/zone", "DoNotSchedule" if zone_spread_required else "ScheduleAnyway"),
        ("kubernetes.io/hostname", "ScheduleAnyway"),
    ]
    return [
        {"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": when, "labelSelector": {"matchLabels": selector}} for key, when in rules
    ]


def deployment_spec(
    model: str, image: str, cfg: ServingConfig, model_uri: str, store_env: list, zone_spread_required: bool = False
) -> dict[str, Any]:
    selector = labels(model)
    mounts, volumes = server_volumes(model, cfg)
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
                "topologySpreadConstraints": spread(selector, zone_spread_required),
                "containers": [server_container(model, image, cfg, model_uri, store_env, mounts)],
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
    keda: Keda | None = None
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
    meta["annotations"] = {**meta.get("annotations", {}), rollout_specs.VERSION_ANNOTATION: version or "champion"}
    return spec


def _meta(args: ModelServiceArgs, suffix: str = "", extra: dict[str, str] | None = None) -> k8s.meta.v1.ObjectMetaArgs:
    return k8s.meta.v1.ObjectMetaArgs(
        name=object_name(args.model) + suffix, namespace=args.namespace, labels={**labels(args.model), **(extra or {})}
    )


# pulumi-kubernetes (4.34.2, provider/pkg/await/service.go) awaits a selector Service until its
# Endpoints have a ready pod. These Services' pods come from the Rollout/Deployment, which waits for
# them (Argo Rollouts refuses a canary whose Services are missing), not yet ready before a model is
# published: awaited, they would time out after 10 minutes on every first `up` (issue 29 item 1).
# tools/convergence.py rule (a) keeps it so.
SKIP_AWAIT = {"pulumi.com/skipAwait": "true"}


def _service_meta(args: ModelServiceArgs, suffix: str = "", extra: dict[str, str] | None = None) -> k8s.meta.v1.ObjectMetaArgs:
    return k8s.meta.v1.ObjectMetaArgs(
        name=object_name(args.model) + suffix,
        namespace=args.namespace,
        labels={**labels(args.model), **(extra or {})},
        annotations=SKIP_AWAIT,
    )


class ModelService(pulumi.ComponentResource):
    """One method per concern: ``_identity`` (service account, API key), ``_route`` (the API Services,
    the route and, under Argo Rollouts, the canary's plumbing), ``_workload`` (Rollout or Deployment),
    ``_autoscaling`` (KEDA or a CPU HPA), ``_guards`` (PDB, NetworkPolicy), ``_scrape`` (metrics)."""

    url: pulumi.Output[str]
    api_keys: pulumi.Output[dict[str, str]] | None  # client name -> key, a Pulumi secret (serving.apiKey)

    def __init__(self, name: str, args: ModelServiceArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlplatform:model_service:ModelService", name, None, opts)
        needs = self._identity(name, args)
        routing, routed = self._route(name, args)
        workload_ref, deployment = self._workload(name, args, needs, routing, routed)
        self._autoscaling(name, args, workload_ref, deployment)
        self._guards(name, args)
        self._scrape(name, args)
        self.url = args.entry.base_url.apply(lambda base: f"{base}/v1/models/{args.model}")
        self.register_outputs({"url": self.url})

    def _identity(self, name: str, args: ModelServiceArgs) -> list[pulumi.Resource]:
        """What the pods need before they start: the service account, whose IRSA role reads this
        model's prefix only (training/artifacts.py: <root>/models/<name>/), and the API key's Secret."""
        model, child = args.model, pulumi.ResourceOptions(parent=self)
        sa = store_service_account(
            self, name, args.store, args.namespace, object_name(model), labels(model), write=False, prefixes=[f"models/{model}/"]
        )
        self.api_keys, self._guard = None, route.Guard()
        cfg = args.config
        if not cfg.api_key:
            return [sa]
        # The keys are checked twice. At the entry point (the route's SecurityPolicy, the same builder
        # as the LLM routes: route.guard), for every route of the model, status and metadata included,
        # with a rate limit per client. And again by our server on predict (serving/auth.py; the gateway
        # leaves the key on the request, sanitize off): what reaches the Service without passing the
        # gateway (the canary's warm-up Job by design, any pod the NetworkPolicies would have to stop:
        # they hold only where the CNI enforces them, issue 24 item 1) still needs a key. One SHA-256
        # per request buys that; the keys are the same, so a client never sees two answers.
        rate = cfg.rate_limit
        access = route.Access(
            gateway_keys_secret(model),
            list(cfg.api_clients),
            rate.requests,
            rate.unit,
            sanitize=False,
            limit_without_keys=False,
            resource_suffix=GATEWAY_KEYS_SUFFIX,
        )
        self._guard, self.api_keys = route.guard(self, name, _meta(args), access)
        secret = k8s.core.v1.Secret(
            f"{name}-api-keys",
            metadata=_meta(args, "-api-keys"),
            # The server's file: every client's key, one a line (the warm-up Job sends the first).
            string_data={"keys": self.api_keys.apply(lambda keys: "".join(k + "\n" for k in keys.values()))},
            opts=child,
        )
        return [sa, secret, *self._guard.depends_on]

    def _route(self, name: str, args: ModelServiceArgs) -> tuple[rollout_specs.TrafficRouting | None, list[pulumi.Resource]]:
        """The API Service and the model's route on the entry point; under Argo Rollouts also the canary
        Service and the controller's right to move the route's weights. Returns the Rollout's traffic
        routing (None: a Deployment) and what its first step needs in place."""
        model, obj, child = args.model, object_name(args.model), pulumi.ResourceOptions(parent=self)
        spec = workload.cluster_ip_service_spec(labels(model), PORT_NAME, PORT)
        # The API Service (the stable one under Argo Rollouts: the controller adds the stable pods'
        # rollouts-pod-template-hash to its selector, and the canary's to the canary Service's).
        routed: list[pulumi.Resource] = [k8s.core.v1.Service(f"{name}-service", metadata=_service_meta(args), spec=spec, opts=child)]
        routing = None
        if args.rollouts is not None:
            routing = rollout_specs.TrafficRouting(
                stable_service=obj, canary_service=canary_service_name(model), http_route=obj, namespace=args.namespace
            )
            routed.append(k8s.core.v1.Service(f"{name}-canary-service", metadata=_service_meta(args, CANARY_SUFFIX), spec=spec, opts=child))
        entry = args.entry
        route_spec = gateway.http_route_spec(model, entry.namespace, entry.listener, obj, PORT, routing.canary_service if routing else None)
        routed.append(
            route.attach(
                name, _meta(args), route_spec, args.config.allowed_cidrs, pulumi.ResourceOptions.merge(child, entry.route_opts), self._guard
            )
        )
        if args.rollouts is not None:
            routed.append(self._route_role(name, args))
        return routing, routed

    def _route_role(self, name: str, args: ModelServiceArgs) -> k8s.rbac.v1.RoleBinding:
        """The Gateway API plugin runs as the controller's service account: this one route, get + update only."""
        obj = object_name(args.model)
        role = k8s.rbac.v1.Role(
            f"{name}-rollouts-role",
            metadata=_meta(args, ROUTE_ROLE_SUFFIX),
            rules=rollout_specs.route_role_rules(obj),
            opts=pulumi.ResourceOptions(parent=self),
        )
        return k8s.rbac.v1.RoleBinding(
            f"{name}-rollouts-binding",
            metadata=_meta(args, ROUTE_ROLE_SUFFIX),
            role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": obj + ROUTE_ROLE_SUFFIX},
            subjects=[{"kind": "ServiceAccount", "name": rollout_specs.CONTROLLER_SERVICE_ACCOUNT, "namespace": rollout_specs.NAMESPACE}],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[role]),
        )

    def _workload(
        self,
        name: str,
        args: ModelServiceArgs,
        needs: list[pulumi.Resource],
        routing: rollout_specs.TrafficRouting | None,
        routed: list[pulumi.Resource],
    ) -> tuple[dict[str, str], pulumi.CustomResource]:
        """The pods: a Rollout (and its AnalysisTemplate) where Argo Rollouts runs, else a Deployment.
        Returns the scale target's reference and the resource."""
        cfg, model, obj = args.config, args.model, object_name(args.model)
        store_env = client_env(args.store)
        pod_spec = pulumi.Output.all(args.image, args.store.uri).apply(
            lambda a: pin(
                deployment_spec(model, a[0], cfg, served_uri(a[1], model, cfg.version), store_env, args.zone_spread_required), cfg.version
            )
        )
        if args.rollouts is None:
            metadata = _meta(args)
            if cfg.version is None:
                # Following the store's champion, the pods are ready only once a model is published, and
                # the first `up` is what starts the training that publishes it: awaited, the Deployment
                # would time out after 10 minutes on that `up` (issue 29). A pinned version exists
                # already (delivery copies it before pinning), so that rollout is awaited.
                metadata.annotations = SKIP_AWAIT
            deployment = k8s.apps.v1.Deployment(
                f"{name}-deployment",
                metadata=metadata,
                spec=pod_spec,
                # The HPA owns replicas once running; re-applying the configured count on every `up`
                # would undo its scaling (and show as a diff).
                opts=pulumi.ResourceOptions(parent=self, depends_on=needs, ignore_changes=["spec.replicas"]),
            )
            return {"apiVersion": "apps/v1", "kind": "Deployment", "name": obj}, deployment
        # A Rollout with the pod template inline (not workloadRef to a Deployment): one object holds
        # the served version, the preview shows its change there, and KEDA scales what runs.
        self._analysis(name, args)
        rollout = k8s.apiextensions.CustomResource(
            f"{name}-rollout",
            api_version=rollout_specs.API_VERSION,
            kind="Rollout",
            metadata=_meta(args),
            spec=pod_spec.apply(
                lambda spec: argo_rollouts.rollout(obj, args.namespace, labels(model), spec, model, cfg.canary, routing)["spec"]
            ),
            # The Services, the route and the controller's right to it exist before its first step.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*needs, args.rollouts.release, *routed], ignore_changes=["spec.replicas"]),
        )
        return {"apiVersion": rollout_specs.API_VERSION, "kind": "Rollout", "name": obj}, rollout

    def _analysis(self, name: str, args: ModelServiceArgs) -> None:
        """The AnalysisTemplate, with its warm-up Job running the serving image against both Services
        (rollout_specs.warmup_job), and the warm-up pods' NetworkPolicy."""
        cfg, model, obj = args.config, args.model, object_name(args.model)

        def svc_url(service: str) -> str:
            return f"http://{service}.{args.namespace}.svc.cluster.local:{PORT}"

        secret = f"{obj}-api-keys" if cfg.api_key else None
        template = pulumi.Output.from_input(args.image).apply(
            lambda image: rollout_specs.analysis_template(
                model,
                args.namespace,
                cfg.canary,
                warmup=rollout_specs.Warmup(image, svc_url(obj), svc_url(canary_service_name(model)), secret),
            )
        )
        k8s.apiextensions.CustomResource(
            f"{name}-analysis",
            api_version=rollout_specs.API_VERSION,
            kind="AnalysisTemplate",
            metadata=rollout_specs.analysis_template(model, args.namespace, cfg.canary)["metadata"],
            spec=template.apply(lambda t: t["spec"]),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[args.rollouts.release]),
        )
        k8s.networking.v1.NetworkPolicy(
            f"{name}-warmup-netpol",
            metadata=_meta(args, "-warmup"),
            spec=rollout_specs.warmup_network_policy(model, labels(model), PORT),
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _autoscaling(self, name: str, args: ModelServiceArgs, workload_ref: dict[str, str], deployment: pulumi.Resource) -> None:
        cfg, ns, model = args.config, args.namespace, args.model
        after = pulumi.ResourceOptions(parent=self, depends_on=[deployment])
        if args.keda is not None:
            # On the queue, not on CPU: the target is one full batch waiting per server process of a
            # replica (a pod's processes sum their queues: serving/workers.py, livesum). The query
            # selects this model's targets as the ServiceMonitor labels them (job from jobLabel, the
            # model from targetLabels); tests/monitoring/test_e2e_keda.py runs it.
            query = keda_specs.tf_queue_query(ns, APP, {keda_specs.target_label(workload.MODEL_LABEL): model})
            spec = keda_specs.scaled_object_spec(
                workload_ref, cfg.min_replicas, cfg.max_replicas, query, cfg.max_batch_size * serving_processes(cfg)
            )
            scaled_object(f"{name}-scaledobject", object_name(model), ns, labels(model), spec, args.keda, after)
            return
        cpu = {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": cfg.target_cpu_utilization}}
        # No Prometheus on this stack: CPU is the only signal left.
        k8s.autoscaling.v2.HorizontalPodAutoscaler(
            f"{name}-hpa",
            metadata=_meta(args),
            spec={
                "scaleTargetRef": workload_ref,
                "minReplicas": cfg.min_replicas,
                "maxReplicas": cfg.max_replicas,
                "metrics": [{"type": "Resource", "resource": cpu}],
                # Scale up fast, down slowly: a flapping fleet re-warms models for nothing.
                "behavior": {
                    "scaleDown": {"stabilizationWindowSeconds": 300, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}
                },
            },
            opts=after,
        )

    def _guards(self, name: str, args: ModelServiceArgs) -> None:
        """A node drain takes one replica at a time; nothing but the entry point's proxies (API port)
        and the monitoring namespace (metrics port) reaches the pods."""
        child, selector = pulumi.ResourceOptions(parent=self), labels(args.model)
        k8s.policy.v1.PodDisruptionBudget(f"{name}-pdb", metadata=_meta(args), spec=workload.disruption_budget_spec(selector), opts=child)
        k8s.networking.v1.NetworkPolicy(
            f"{name}-netpol",
            metadata=_meta(args),
            spec={
                "podSelector": {"matchLabels": selector},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [
                    {
                        "from": [workload.pods_peer(args.entry.namespace, gateway.PROXY_LABELS)],
                        "ports": [{"protocol": "TCP", "port": PORT}],
                    },
                    {"from": [workload.namespace_peer(args.monitoring_namespace)], "ports": [{"protocol": "TCP", "port": METRICS_PORT}]},
                    # The canary analysis' warm-up Job (same namespace), API port only.
                    *(
                        [
                            {
                                "from": [{"podSelector": {"matchLabels": rollout_specs.warmup_labels(args.model)}}],
                                "ports": [{"protocol": "TCP", "port": PORT}],
                            }
                        ]
                        if args.rollouts is not None
                        else []
                    ),
                ],
                "egress": workload.egress(workload.STORE_PORT),
            },
            opts=child,
        )

    def _scrape(self, name: str, args: ModelServiceArgs) -> None:
        """/metrics has its own Service and port: the route can never expose it."""
        selector = labels(args.model)
        metrics = k8s.core.v1.Service(
            f"{name}-metrics",
            metadata=_service_meta(args, "-metrics", METRICS_SERVICE_LABEL),
            spec=workload.cluster_ip_service_spec(selector, METRICS_PORT_NAME, METRICS_PORT),
            opts=pulumi.ResourceOptions(parent=self),
        )
        if args.monitoring_release is None:
            return
        spec = workload.service_monitor_spec({**selector, **METRICS_SERVICE_LABEL}, args.namespace, METRICS_PORT_NAME, "5s")
        k8s.apiextensions.CustomResource(
            f"{name}-servicemonitor",
            api_version="monitoring.coreos.com/v1",
            kind="ServiceMonitor",
            metadata=_meta(args),
            spec={
                **spec,
                # job="model-server" for every model (the alerts select on it); the model is a target label.
                "jobLabel": "app.kubernetes.io/name",
                "targetLabels": [workload.MODEL_LABEL],
                # Canary vs stable pods in the rollout analysis (components/lib/rollout_specs.py).
                **({"podTargetLabels": [rollout_specs.POD_HASH_LABEL]} if args.rollouts is not None else {}),
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[args.monitoring_release, metrics]),
        )
