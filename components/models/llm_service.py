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
from components.lib.network import egress_except_metadata
from components.services import keda
from components.services.artifact_store import ArtifactStore, client_env, store_service_account

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


def object_name(model: str) -> str:
    # Never "vllm": Kubernetes would inject VLLM_PORT=tcp://... for a Service of that name, which
    # vLLM reads as its own port setting and refuses (vllm/envs.py get_vllm_port).
    return f"llm-{model}"


def labels(model: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": object_name(model),
        "app.kubernetes.io/part-of": "mlplatform",
        "mlplatform.io/model": model,
        "mlplatform.io/runtime": "vllm",
    }


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


def statefulset_spec(
    model: str, llm: LlmConfig, pool_name: str | None, hf_token_secret: str | None, store_env: list, storage_class: str | None
) -> dict[str, Any]:
    name, lab = object_name(model), labels(model)
    r = llm.resources
    health = {"httpGet": {"path": "/health", "port": PORT_NAME}, "timeoutSeconds": 5}
    claim: dict[str, Any] = {
        "metadata": {"name": "cache", "labels": lab},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": f"{llm.cache_gi_b}Gi"}}},
    }
    if storage_class:
        claim["spec"]["storageClassName"] = storage_class
    return {
        "serviceName": name,
        "replicas": llm.replicas,
        # Replicas start and stop independently (KEDA adds several at once); order means nothing here.
        "podManagementPolicy": "Parallel",
        "selector": {"matchLabels": lab},
        "persistentVolumeClaimRetentionPolicy": {"whenScaled": "Retain", "whenDeleted": "Delete"},
        "volumeClaimTemplates": [claim],
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
                "containers": [
                    {
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
                ],
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
        "egress": [egress_except_metadata(443), {"to": [{"namespaceSelector": {}}], "ports": [{"protocol": "TCP", "port": 9000}]}],
    }


def scaled_object_spec(model: str, llm: LlmConfig, namespace: str, prometheus_url: str = keda.PROMETHEUS_URL) -> dict[str, Any]:
    schedule = None
    if llm.awake is not None:
        a = llm.awake
        schedule = keda.SleepSchedule(timezone=a.timezone, start=a.start, end=a.end, replicas=a.replicas)
    return keda.scaled_object_spec(
        {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": object_name(model)},
        llm.min_replicas,
        llm.max_replicas,
        keda.vllm_queue_query(namespace, served_name(model, llm)),
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
    # The entry point's SecurityPolicy for this model's route (only these client networks), if any.
    security_policy: dict[str, Any] | None = None
    ingress_peers: list[dict[str, Any]] | None = None  # who may reach the pods (NetworkPolicy peers)
    keda: keda.Keda | None = None
    monitoring_release: pulumi.Resource | None = None
    service_monitor_labels: dict[str, str] = field(default_factory=dict)


class LlmService(pulumi.ComponentResource):
    endpoint: pulumi.Output[str]  # the OpenAI base path on the Gateway (/llm/<model>/v1)
    url: pulumi.Output[str]  # the OpenAI base URL clients use (ops/smoke takes it as is)

    def __init__(self, name: str, args: LlmServiceArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlplatform:llm_service:LlmService", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        llm, ns, model = args.config, args.namespace, args.model
        obj, lab = object_name(model), labels(model)

        def meta(n: str = obj, **kw: Any) -> k8s.meta.v1.ObjectMetaArgs:
            return k8s.meta.v1.ObjectMetaArgs(name=n, namespace=ns, labels=lab, **kw)

        token_secret = None
        depends: list[pulumi.Resource] = []
        if args.hf_token is not None:
            token_secret = f"{obj}-hf-token"
            depends.append(
                k8s.core.v1.Secret(
                    f"{name}-hf-token",
                    metadata=meta(token_secret),
                    type="Opaque",
                    # Output.secret: encrypted in the state, "[secret]" in previews and synth output.
                    string_data={"token": pulumi.Output.secret(args.hf_token)},
                    opts=child,
                )
            )
        if llm.from_store:
            # Weights streamed from the store: read-only, and only this model's prefix.
            depends.append(store_service_account(self, name, args.store, ns, obj, lab, write=False, prefixes=[f"models/{model}/"]))
        else:
            # Weights from Hugging Face: no cloud credentials at all.
            depends.append(k8s.core.v1.ServiceAccount(f"{name}-sa", metadata=meta(), automount_service_account_token=False, opts=child))
        store_env = [e if isinstance(e, dict) else _env_dict(e) for e in client_env(args.store)] if llm.from_store else []
        service = k8s.core.v1.Service(
            f"{name}-service",
            metadata=meta(),
            spec={
                "type": "ClusterIP",
                "selector": lab,
                "ports": [{"name": PORT_NAME, "port": PORT, "targetPort": PORT_NAME, "protocol": "TCP"}],
            },
            opts=child,
        )
        sts = k8s.apps.v1.StatefulSet(
            f"{name}-statefulset",
            metadata=meta(),
            spec=statefulset_spec(model, llm, args.pool_name, token_secret, store_env, args.storage_class),
            # KEDA owns replicas once running: re-applying the configured count would undo its scaling.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*depends, service], ignore_changes=["spec.replicas"]),
        )
        k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb", metadata=meta(), spec={"maxUnavailable": 1, "selector": {"matchLabels": lab}}, opts=child
        )
        k8s.networking.v1.NetworkPolicy(f"{name}-netpol", metadata=meta(), spec=network_policy_spec(model, args.ingress_peers), opts=child)
        keda.scaled_object(
            f"{name}-scaledobject",
            obj,
            ns,
            lab,
            scaled_object_spec(model, llm, ns),
            args.keda,
            pulumi.ResourceOptions(parent=self, depends_on=[sts]),
        )
        if args.monitoring_release is not None:
            k8s.apiextensions.CustomResource(
                f"{name}-servicemonitor",
                api_version="monitoring.coreos.com/v1",
                kind="ServiceMonitor",
                metadata=k8s.meta.v1.ObjectMetaArgs(name=obj, namespace=ns, labels={**lab, **args.service_monitor_labels}),
                spec={
                    "selector": {"matchLabels": lab},
                    "namespaceSelector": {"matchNames": [ns]},
                    "endpoints": [{"port": PORT_NAME, "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}],
                },
                # The release installs the ServiceMonitor CRD.
                opts=pulumi.ResourceOptions(parent=self, depends_on=[args.monitoring_release, service]),
            )
        prefix = f"/llm/{model}"
        if args.gateway is not None:
            route_opts = pulumi.ResourceOptions.merge(
                pulumi.ResourceOptions(parent=self, depends_on=[service]), args.route_opts or pulumi.ResourceOptions()
            )
            route = k8s.apiextensions.CustomResource(
                f"{name}-route",
                api_version="gateway.networking.k8s.io/v1",
                kind="HTTPRoute",
                metadata=meta(),
                spec=http_route_spec(model, args.gateway, prefix),
                opts=route_opts,
            )
            if args.security_policy is not None:
                k8s.apiextensions.CustomResource(
                    f"{name}-allowed-cidrs",
                    api_version="gateway.envoyproxy.io/v1alpha1",
                    kind="SecurityPolicy",
                    metadata=meta(),
                    spec=args.security_policy,
                    opts=pulumi.ResourceOptions.merge(route_opts, pulumi.ResourceOptions(depends_on=[route])),
                )
        self.endpoint = pulumi.Output.from_input(f"{prefix}/v1")
        base = args.gateway_url if args.gateway_url is not None else "http://pending"
        self.url = pulumi.Output.concat(base, prefix, "/v1")
        self.register_outputs({"endpoint": self.endpoint, "url": self.url})


def _env_dict(e: k8s.core.v1.EnvVarArgs) -> dict[str, Any]:
    """client_env() builds provider Args; the pod spec here is a plain dict."""
    out: dict[str, Any] = {"name": e.name}
    if e.value is not None:
        out["value"] = e.value
    if e.value_from is not None:
        ref = e.value_from.secret_key_ref
        out["valueFrom"] = {"secretKeyRef": {"name": ref.name, "key": ref.key}}
    return out
