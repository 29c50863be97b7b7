"""LlmService: one open-weights model served by vLLM's OpenAI-compatible server on the GPU pool.

What it renders, and why:

* a **StatefulSet** of the pinned ``vllm/vllm-openai`` image (not a Deployment): each replica gets its
  own weights volume from ``volumeClaimTemplates`` (gp3 on EKS), kept when KEDA scales the model to
  zero at night (``persistentVolumeClaimRetentionPolicy.whenScaled: Retain``) and deleted with the
  model. ``HF_HOME`` lives there, so a restart or a morning wake-up loads the weights from disk
  instead of downloading them again; vLLM's compile cache (``VLLM_CACHE_ROOT``) too. A Deployment
  would need a ReadWriteMany volume (EFS) to do the same. Weights in the model store (``s3://``)
  are streamed from S3 by vLLM's Run:ai streamer loader (``--load-format runai_streamer``, vllm
  0.33.0 vllm/model_executor/model_loader/__init__.py) with the pod's read-only IRSA role;
* GPU placement: the pool's node label, the GPU taint's toleration, ``nvidia.com/gpu`` limits
  (= tensor-parallel size, checked against the pool's GPUs per node by components/config/llm.py);
* ``/dev/shm`` as a memory-backed emptyDir (vLLM's workers and NCCL exchange tensors through it;
  the container runtime's 64 MiB default is far too small);
* probes on vLLM's ``/health`` (vllm/entrypoints/serve/instrumentator/health.py: 200, or 503 once
  the engine is dead); the HTTP server only starts after the weights are loaded, so a startup probe
  allows ``startupSeconds`` for download + load + CUDA graph capture before liveness counts;
* the Hugging Face token from a Secret (``HF_TOKEN``, read by huggingface_hub), never in argv;
* a ClusterIP Service, a ServiceMonitor (vLLM's ``/metrics`` on the same port), a PDB, a
  NetworkPolicy, a KEDA ScaledObject on ``vllm:num_requests_waiting``, and an HTTPRoute on the
  stack's Gateway exposing only the OpenAI routes under ``/llm/<model>/v1/...``.

Nothing can run vLLM here (no GPU): every flag is checked against the list derived from vLLM
0.33.0's own parser (../shared/reference/vllm/0.33.0/serve-flags.txt) by the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.cluster.gpu_pools import GPU_PRESENT_LABEL, GPU_RESOURCE, GPU_TOLERATION, POOL_LABEL
from components.config.llm import VLLM_VERSION, LlmConfig
from components.lib import keda_specs, workload
from components.models import route
from components.services.artifact_store import ArtifactStore, client_env, store_service_account
from components.services.keda import Keda, scaled_object

# Pinned tag of the image vLLM publishes per release (docker.io/vllm/vllm-openai:v<version>).
VLLM_IMAGE = f"docker.io/vllm/vllm-openai:v{VLLM_VERSION}"
PORT = 8000  # vLLM's default --port (vllm/entrypoints/common/cli_args.py: FrontendArgs.port)
PORT_NAME = "http"
CACHE_DIR = "/cache"
UID = 10001
# The three OpenAI routes clients use (vllm/entrypoints/openai/{chat_completion,completion,models}/
# api_router.py); admin endpoints (/sleep, /reset_prefix_cache, LoRA loading, /metrics) stay private.
OPENAI_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models")
# A long generation streams for minutes; Envoy's default route timeout (15 s) would cut it.
ROUTE_TIMEOUT = "600s"
# Scale-up of a GPU pool from 0: autoscaler decision, EC2 launch, boot, join, device plugin (an
# estimate, tools/convergence.py NODE_SCALE_UP_S), and pulling the vLLM image onto the new node.
NODE_SCALE_UP_MINUTES = 5
IMAGE_PULL_MINUTES = 5


def object_name(model: str) -> str:
    # Never "vllm": Kubernetes would inject VLLM_PORT=tcp://... for a Service of that name, which
    # vLLM reads as its own port setting and refuses (vllm/envs.py get_vllm_port).
    return f"llm-{model}"


def labels(model: str) -> dict[str, str]:
    return workload.labels(object_name(model), model, instance=False, runtime="vllm")


def served_name(model: str, llm: LlmConfig) -> str:
    return llm.served_model_name or model


def shm_size_gi(llm: LlmConfig) -> int:
    """2 GiB per GPU: room for the engine/worker shared-memory queues and NCCL's buffers between
    tensor-parallel ranks. Counted against the container's memory limit."""
    return 2 * llm.gpus


def vllm_args(model: str, llm: LlmConfig) -> list[str]:
    """``vllm serve`` arguments (the model is the positional ``model_tag``)."""
    args = [
        llm.source,
        *("--served-model-name", served_name(model, llm)),
        *("--host", "0.0.0.0"),
        *("--port", str(PORT)),
        *("--tensor-parallel-size", str(llm.gpus)),
        *("--max-model-len", str(llm.max_model_len)),
        *("--gpu-memory-utilization", f"{llm.gpu_memory_utilization:g}"),
        *("--dtype", llm.dtype),
        "--enable-prefix-caching" if llm.enable_prefix_caching else "--no-enable-prefix-caching",
        # Probes and scrapes every few seconds would drown the log.
        *("--disable-access-log-for-endpoints", "/health,/metrics"),
    ]
    if llm.revision:
        args += ["--revision", llm.revision]
    if llm.max_num_seqs:
        args += ["--max-num-seqs", str(llm.max_num_seqs)]
    if llm.quantization:
        args += ["--quantization", llm.quantization]
    if llm.enforce_eager:
        args.append("--enforce-eager")
    if llm.from_store:
        args += ["--load-format", "runai_streamer"]
    return args


def flags(args: list[str]) -> list[str]:
    return [a for a in args if a.startswith("--")]


def env(llm: LlmConfig, hf_token_secret: str | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"name": "HOME", "value": "/tmp"},
        # We run as a UID without a passwd entry: getpass.getuser() (torch's compile caches use it)
        # reads USER first instead of failing on the lookup.
        {"name": "USER", "value": "vllm"},
        {"name": "HF_HOME", "value": f"{CACHE_DIR}/huggingface"},
        {"name": "VLLM_CACHE_ROOT", "value": f"{CACHE_DIR}/vllm"},
        # triton / flashinfer / torch JIT caches (under ~/.cache otherwise): on the volume too
        {"name": "XDG_CACHE_HOME", "value": f"{CACHE_DIR}/xdg"},
        # no usage reports to vLLM's telemetry endpoint from inside our cluster (vllm/envs.py)
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
        {"name": "VLLM_DO_NOT_TRACK", "value": "1"},
        {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
    ]
    if hf_token_secret:
        out.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": hf_token_secret, "key": "token"}}})
    return out


def pod_placement(llm: LlmConfig, pool_name: str | None) -> dict[str, Any]:
    """On the model's GPU pool (EKS) or on any GPU node (an existing cluster with GPUs)."""
    selector = {POOL_LABEL: pool_name} if pool_name else {GPU_PRESENT_LABEL: "true"}
    return {"nodeSelector": selector, "tolerations": [GPU_TOLERATION]}


def cache_claim(model: str, llm: LlmConfig, storage_class: str | None) -> dict[str, Any]:
    """Each replica's weights and compile-cache volume (the StatefulSet's volumeClaimTemplate)."""
    claim: dict[str, Any] = {
        "metadata": {"name": "cache", "labels": labels(model)},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": f"{llm.cache_gi_b}Gi"}}},
    }
    if storage_class:
        claim["spec"]["storageClassName"] = storage_class
    return claim


def vllm_container(model: str, llm: LlmConfig, hf_token_secret: str | None, store_env: list) -> dict[str, Any]:
    r = llm.resources
    health = {"httpGet": {"path": "/health", "port": PORT_NAME}, "timeoutSeconds": 5}
    return {
        "name": "vllm",
        "image": VLLM_IMAGE,
        "command": ["vllm", "serve"],
        "args": vllm_args(model, llm),
        "ports": [{"name": PORT_NAME, "containerPort": PORT}],
        "env": env(llm, hf_token_secret) + store_env,
        "resources": {
            "requests": {"cpu": r.cpu, "memory": r.memory, GPU_RESOURCE: llm.gpus},
            "limits": {"memory": r.memory_limit, GPU_RESOURCE: llm.gpus},
        },
        "startupProbe": {**health, "periodSeconds": 10, "failureThreshold": llm.startup_seconds // 10},
        "readinessProbe": {**health, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**health, "periodSeconds": 15, "failureThreshold": 4},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "cache", "mountPath": CACHE_DIR},
            {"name": "shm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }


def statefulset_spec(
    model: str, llm: LlmConfig, pool_name: str | None, hf_token_secret: str | None, store_env: list, storage_class: str | None
) -> dict[str, Any]:
    name, lab = object_name(model), labels(model)
    return {
        "serviceName": name,
        "replicas": llm.replicas,
        # Replicas start and stop independently (KEDA adds several at once); order means nothing here.
        "podManagementPolicy": "Parallel",
        "selector": {"matchLabels": lab},
        "persistentVolumeClaimRetentionPolicy": {"whenScaled": "Retain", "whenDeleted": "Delete"},
        "volumeClaimTemplates": [cache_claim(model, llm, storage_class)],
        "template": {
            "metadata": {"labels": lab},
            "spec": {
                "serviceAccountName": name,
                "automountServiceAccountToken": False,
                # No <SERVICE>_PORT variables: one named VLLM_PORT would break vLLM (object_name).
                "enableServiceLinks": False,
                "terminationGracePeriodSeconds": 60,
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": UID,
                    "runAsGroup": UID,
                    "fsGroup": UID,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                **pod_placement(llm, pool_name),
                "containers": [vllm_container(model, llm, hf_token_secret, store_env)],
                "volumes": [
                    {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{shm_size_gi(llm)}Gi"}},
                    {"name": "tmp", "emptyDir": {"sizeLimit": "4Gi"}},
                ],
            },
        },
    }


def http_route_spec(model: str, gateway: dict[str, str], prefix: str | None = None) -> dict[str, Any]:
    """The OpenAI routes of this model under ``<prefix>/v1/...`` (default ``/llm/<model>``), rewritten to
    vLLM's ``/v1/...``: clients set ``base_url=<gateway>/llm/<model>/v1``."""
    prefix = prefix or f"/llm/{model}"
    backend = [{"name": object_name(model), "port": PORT}]
    return {
        "parentRefs": [gateway],
        "rules": [
            {
                "matches": [{"path": {"type": "PathPrefix", "value": f"{prefix}{route}"}}],
                "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": route}}}],
                "backendRefs": backend,
                "timeouts": {"request": ROUTE_TIMEOUT},
            }
            for route in OPENAI_ROUTES
        ],
    }


def network_policy_spec(model: str, peers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Ingress on the one port from ``peers`` only (the entry point's proxies, Prometheus' namespace);
    no peers given: from anywhere in the cluster."""
    rule: dict[str, Any] = {"ports": [{"protocol": "TCP", "port": PORT}]}
    if peers:
        rule = {"from": peers, **rule}
    return {
        "podSelector": {"matchLabels": labels(model)},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [rule],
        # Hugging Face / S3 over HTTPS, never the instance metadata service; the in-cluster MinIO.
        "egress": workload.egress(workload.STORE_PORT),
    }


def scaled_object_spec(model: str, llm: LlmConfig, namespace: str, prometheus_url: str = keda_specs.PROMETHEUS_URL) -> dict[str, Any]:
    schedule = None
    if llm.awake is not None:
        a = llm.awake
        schedule = keda_specs.SleepSchedule(timezone=a.timezone, start=a.start, end=a.end, replicas=a.replicas)
    return keda_specs.scaled_object_spec(
        {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": object_name(model)},
        llm.min_replicas,
        llm.max_replicas,
        keda_specs.vllm_queue_query(namespace, served_name(model, llm)),
        llm.waiting_per_replica,
        schedule,
        prometheus_url=prometheus_url,
        # A replica costs a GPU and minutes to come back: keep it 10 minutes after the queue empties.
        scale_down_window_s=600,
    )


@dataclass
class LlmServiceArgs:
    model: str  # the catalogue name (DNS-1123 label)
    namespace: str
    config: LlmConfig
    store: ArtifactStore
    pool_name: str | None  # GPU pool (EKS); None on an existing cluster with GPUs
    hf_token: pulumi.Input[str] | None = None  # a Pulumi secret
    storage_class: str | None = None
    gateway: dict[str, str] | None = None  # parentRef of the stack's Gateway (name, namespace[, sectionName])
    gateway_url: pulumi.Input[str] | None = None  # the Gateway's base URL (http[s]://host), for ``url``
    route_opts: pulumi.ResourceOptions | None = None  # e.g. wait for the Gateway and its CRDs
    # Only these client networks reach the route (the entry point's SecurityPolicy); empty: anyone.
    allowed_cidrs: list[str] = field(default_factory=list)
    ingress_peers: list[dict[str, Any]] | None = None  # who may reach the pods (NetworkPolicy peers)
    keda: Keda | None = None
    monitoring_release: pulumi.Resource | None = None
    service_monitor_labels: dict[str, str] = field(default_factory=dict)
    # What gives a replica its GPU: the GPU node groups, the cluster autoscaler (the pools start at 0
    # nodes) and the device plugin. The StatefulSet waits for them on create and is deleted before
    # them on destroy (reverse dependency order).
    gpu_ready: list[pulumi.Resource] = field(default_factory=list)


def _meta(args: LlmServiceArgs, name: str | None = None, extra: dict[str, str] | None = None) -> k8s.meta.v1.ObjectMetaArgs:
    return k8s.meta.v1.ObjectMetaArgs(
        name=name or object_name(args.model), namespace=args.namespace, labels={**labels(args.model), **(extra or {})}
    )


class LlmService(pulumi.ComponentResource):
    """One method per concern: ``_identity`` (service account, Hugging Face token), ``_workload``
    (Service, StatefulSet), ``_guards`` (PDB, NetworkPolicy), ``_autoscaling`` (KEDA), ``_scrape``
    (ServiceMonitor), ``_route`` (the OpenAI routes on the entry point)."""

    endpoint: pulumi.Output[str]  # the OpenAI base path on the Gateway (/llm/<model>/v1)
    url: pulumi.Output[str]  # the OpenAI base URL clients use (ops/smoke takes it as is)

    def __init__(self, name: str, args: LlmServiceArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlplatform:llm_service:LlmService", name, None, opts)
        model = args.model
        token_secret, needs = self._identity(name, args)
        service, sts = self._workload(name, args, token_secret, needs)
        self._guards(name, args)
        self._autoscaling(name, args, sts)
        self._scrape(name, args, service)
        prefix = f"/llm/{model}"
        self._route(name, args, service, prefix)
        self.endpoint = pulumi.Output.from_input(f"{prefix}/v1")
        base = args.gateway_url if args.gateway_url is not None else "http://pending"
        self.url = pulumi.Output.concat(base, prefix, "/v1")
        self.register_outputs({"endpoint": self.endpoint, "url": self.url})

    def _identity(self, name: str, args: LlmServiceArgs) -> tuple[str | None, list[pulumi.Resource]]:
        """The Hugging Face token's Secret (its name, or None) and the pods' service account: what the
        StatefulSet waits for."""
        child, obj = pulumi.ResourceOptions(parent=self), object_name(args.model)
        needs: list[pulumi.Resource] = []
        token_secret = None
        if args.hf_token is not None:
            token_secret = f"{obj}-hf-token"
            needs.append(
                k8s.core.v1.Secret(
                    f"{name}-hf-token",
                    metadata=_meta(args, token_secret),
                    type="Opaque",
                    # Output.secret: encrypted in the state, "[secret]" in previews and synth output.
                    string_data={"token": pulumi.Output.secret(args.hf_token)},
                    opts=child,
                )
            )
        if args.config.from_store:
            # Weights streamed from the store: read-only, and only this model's prefix.
            prefixes = [f"models/{args.model}/"]
            needs.append(
                store_service_account(self, name, args.store, args.namespace, obj, labels(args.model), write=False, prefixes=prefixes)
            )
        else:
            # Weights from Hugging Face: no cloud credentials at all.
            needs.append(k8s.core.v1.ServiceAccount(f"{name}-sa", metadata=_meta(args), automount_service_account_token=False, opts=child))
        return token_secret, needs

    def _workload(
        self, name: str, args: LlmServiceArgs, token_secret: str | None, needs: list[pulumi.Resource]
    ) -> tuple[k8s.core.v1.Service, k8s.apps.v1.StatefulSet]:
        """The StatefulSet and its governing Service (the StatefulSet's ``serviceName``, and the API)."""
        llm, lab = args.config, labels(args.model)
        store_env = [e if isinstance(e, dict) else _env_dict(e) for e in client_env(args.store)] if llm.from_store else []
        # Not awaited (pulumi.com/skipAwait): its Endpoints fill only once a replica has loaded its
        # weights (minutes after the StatefulSet, which waits for it), and never while KEDA holds the
        # model at 0 replicas (dev, nights): awaited, it would fail every first `up` after 10 minutes
        # (pulumi-kubernetes 4.34.2 provider/pkg/await/service.go; issue 29 item 1).
        service = k8s.core.v1.Service(
            f"{name}-service",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=object_name(args.model), namespace=args.namespace, labels=lab, annotations={"pulumi.com/skipAwait": "true"}
            ),
            spec=workload.cluster_ip_service_spec(lab, PORT_NAME, PORT),
            opts=pulumi.ResourceOptions(parent=self),
        )
        sts = k8s.apps.v1.StatefulSet(
            f"{name}-statefulset",
            metadata=_meta(args),
            spec=statefulset_spec(args.model, llm, args.pool_name, token_secret, store_env, args.storage_class),
            # KEDA owns replicas once running: re-applying the configured count would undo its scaling.
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[*needs, service, *args.gpu_ready],
                ignore_changes=["spec.replicas"],
                custom_timeouts=pulumi.CustomTimeouts(create=await_timeout(llm), update=await_timeout(llm)),
            ),
        )
        return service, sts

    def _guards(self, name: str, args: LlmServiceArgs) -> None:
        child = pulumi.ResourceOptions(parent=self)
        pdb = workload.disruption_budget_spec(labels(args.model))
        k8s.policy.v1.PodDisruptionBudget(f"{name}-pdb", metadata=_meta(args), spec=pdb, opts=child)
        k8s.networking.v1.NetworkPolicy(
            f"{name}-netpol", metadata=_meta(args), spec=network_policy_spec(args.model, args.ingress_peers), opts=child
        )

    def _autoscaling(self, name: str, args: LlmServiceArgs, sts: k8s.apps.v1.StatefulSet) -> None:
        """KEDA on the engine's queue; with an awake window, to zero outside it."""
        spec = scaled_object_spec(args.model, args.config, args.namespace)
        after = pulumi.ResourceOptions(parent=self, depends_on=[sts])
        scaled_object(f"{name}-scaledobject", object_name(args.model), args.namespace, labels(args.model), spec, args.keda, after)

    def _route(self, name: str, args: LlmServiceArgs, service: k8s.core.v1.Service, prefix: str) -> None:
        """The OpenAI routes under ``prefix`` on the stack's Gateway (and its SecurityPolicy), if it has one."""
        if args.gateway is None:
            return
        opts = pulumi.ResourceOptions.merge(
            pulumi.ResourceOptions(parent=self, depends_on=[service]), args.route_opts or pulumi.ResourceOptions()
        )
        route.attach(name, _meta(args), http_route_spec(args.model, args.gateway, prefix), args.allowed_cidrs, opts)

    def _scrape(self, name: str, args: LlmServiceArgs, service: k8s.core.v1.Service) -> None:
        """vLLM's ``/metrics``, on the API port, where the stack runs Prometheus."""
        if args.monitoring_release is None:
            return
        k8s.apiextensions.CustomResource(
            f"{name}-servicemonitor",
            api_version="monitoring.coreos.com/v1",
            kind="ServiceMonitor",
            metadata=_meta(args, extra=args.service_monitor_labels),
            spec=workload.service_monitor_spec(labels(args.model), args.namespace, PORT_NAME, "10s"),
            # The release installs the ServiceMonitor CRD.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[args.monitoring_release, service]),
        )


def await_timeout(llm: LlmConfig) -> str:
    """How long the engine awaits the StatefulSet's ready replicas (pulumi-kubernetes awaits 10
    minutes by default): a GPU node scaled up from zero (NODE_SCALE_UP_MINUTES), then the startup
    probe's allowance (download + load + CUDA graphs), then a margin for the image pull (vLLM's image
    is ~10 GB). At 0 replicas (an LLM asleep) the StatefulSet is ready at once."""
    return f"{NODE_SCALE_UP_MINUTES + -(-llm.startup_seconds // 60) + IMAGE_PULL_MINUTES}m"


def _env_dict(e: k8s.core.v1.EnvVarArgs) -> dict[str, Any]:
    """client_env() builds provider Args; the pod spec here is a plain dict."""
    out: dict[str, Any] = {"name": e.name}
    if e.value is not None:
        out["value"] = e.value
    if e.value_from is not None:
        ref = e.value_from.secret_key_ref
        out["valueFrom"] = {"secretKeyRef": {"name": ref.name, "key": ref.key}}
    return out
