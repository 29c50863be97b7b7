"""LlmService: one open-weights model served by vLLM's OpenAI-compatible server on the GPU pool.

What it renders, and why:

* an Argo Rollouts **Rollout** of the pinned ``vllm/vllm-openai`` image: a new model version (or
  revision, or vLLM flag) reaches traffic only through an analysed canary of one pod that is aborted
  by itself when vLLM's own metrics or the model's golden prompts say it is worse
  (components/lib/llm_canary.py: the strategy that works on a GPU-short pool, the AnalysisTemplate,
  the golden Job). It replaced a StatefulSet, whose rolling update judged nothing;
* each replica's weights and compile cache on its **own volume**: a generic ephemeral volume (a PVC
  made with the pod from ``volumeClaimTemplate``, gp3 on EKS, deleted with the pod). A Rollout's pods
  come from ReplicaSets, which have no volumeClaimTemplates; the ephemeral claim keeps what the
  StatefulSet's claim gave a running replica (a crashed or liveness-killed vLLM restarts on the
  weights already on disk, verified again, no fetch) and sizes it apart from the node's root disk. What
  it no longer keeps is the copy across a pod's replacement (a scale to zero at night): the morning's
  pod fetches again from the store (docs/llm.md "Cold start" weighs it);
* the **pinned registry version**, never Hugging Face: the ``weights`` init container
  (components/models/llm_import.py ``served_weights``) fills that volume with the version
  ``serving.version`` pins (``deliver`` sets it; unpinned: the store's champion, resolved at start)
  from the stack's store and verifies every digest before vLLM starts offline on the folder
  (``HF_HUB_OFFLINE=1``, no token, no ``--revision``), with the pod's read-only role on
  ``models/<model>/``. The version is imported by the stack's import Job (dev) or promoted as bytes
  (staging, prod). Only raw weights under an ``s3://`` prefix (``llm.source``, not a registry version)
  are still streamed by vLLM's Run:ai streamer loader (``--load-format runai_streamer``);
* GPU placement: the pool's node label, the GPU taint's toleration, ``nvidia.com/gpu`` limits
  (= tensor-parallel size, checked against the pool's GPUs per node by components/config/llm.py);
* ``/dev/shm`` as a memory-backed emptyDir (vLLM's workers and NCCL exchange tensors through it;
  the container runtime's 64 MiB default is far too small);
* probes on vLLM's ``/health`` (vllm/entrypoints/serve/instrumentator/health.py: 200, or 503 once
  the engine is dead); the HTTP server only starts after the weights are loaded, so a startup probe
  allows ``startupSeconds`` for download + load + CUDA graph capture before liveness counts;
* three ClusterIP Services: ``llm-<model>`` (the route's backend: every pod, so the canary pod takes
  its share of requests), ``-canary`` and ``-stable`` (the controller adds each side's pod template
  hash to their selectors; the golden Job calls them); a ServiceMonitor on the first (vLLM's
  ``/metrics`` on the same port, with the pods' template hash and version as labels: the analysis
  compares the two sides, the dashboard shows the versions side by side), a PDB, NetworkPolicies, a
  KEDA ScaledObject on ``vllm:num_requests_waiting`` scaling the Rollout, and an HTTPRoute on the
  stack's Gateway exposing only the OpenAI routes under ``/llm/<model>/v1/...``.

Every flag is checked against the list derived from vLLM 0.33.0's own parser
(../shared/reference/vllm/0.33.0/serve-flags.txt) by the tests, and the real vLLM (PyPI's CPU build)
runs the analysis queries in tests/llm/.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.cluster.gpu_pools import GPU_PRESENT_LABEL, GPU_RESOURCE, GPU_TOLERATION, POOL_LABEL
from components.config import CanaryConfig
from components.config.llm import VLLM_VERSION, LlmConfig
from components.lib import keda_specs, llm_canary, rollout_specs, vllm_buckets, workload
from components.models import llm_import, route
from components.services.argo_rollouts import ArgoRollouts
from components.services.artifact_store import ArtifactStore, client_env, store_service_account
from components.services.keda import Keda, scaled_object

ROOT = Path(__file__).resolve().parents[2]
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
# The route's Service (every pod) carries this label; the ServiceMonitor selects it alone, so the
# canary and stable Services (same pods) do not scrape each pod three times.
API_SERVICE_LABEL = {"mlplatform.io/service": "api"}
# The served version as a pod label too (the annotation is rollout_specs.VERSION_ANNOTATION): the
# ServiceMonitor copies it onto every series, the LLM dashboard groups by it.
VERSION_LABEL = "mlplatform.io/model-version"
# The label the Prometheus Operator puts on the Prometheus pods it runs (kube-prometheus-stack's
# Prometheus; the same selector as components/lib/rollout_specs.py prometheus_ingress_policy): of the
# monitoring namespace only they reach vLLM's port (Grafana, Alertmanager, the exporters do not).
PROMETHEUS_POD_LABELS = {"app.kubernetes.io/name": "prometheus"}
LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")


def object_name(model: str) -> str:
    # Never "vllm": Kubernetes would inject VLLM_PORT=tcp://... for a Service of that name, which
    # vLLM reads as its own port setting and refuses (vllm/envs.py get_vllm_port).
    return f"llm-{model}"


def labels(model: str) -> dict[str, str]:
    return workload.labels(object_name(model), model, instance=False, runtime="vllm")


def served_name(model: str, llm: LlmConfig) -> str:
    return llm.served_model_name or model


# What an unpinned pod template serves: the store's champion at the pod's start (llm/fetch.py @champion).
UNPINNED = "champion"


def served_version(llm: LlmConfig, version: str | None) -> str:
    """What the pod template says it serves: the pinned registry version, else the store's champion
    (``unpinned`` for raw ``s3://`` weights). A change of it is a new template, i.e. a canary."""
    return version or ("unpinned" if llm.from_store else UNPINNED)


def weights_version(version: str | None) -> str:
    """The init container's ``--version``: the pinned one, else the champion alias (llm/fetch.py)."""
    return version or f"@{UNPINNED}"


def golden_prompts(model: str, root: Path = ROOT) -> list[dict[str, Any]]:
    """The model's golden set as committed (validated by the config rules before the program runs)."""
    import yaml

    return yaml.safe_load(llm_canary.golden_path(root, model).read_text())["prompts"]


def shm_size_gi(llm: LlmConfig) -> int:
    """2 GiB per GPU: room for the engine/worker shared-memory queues and NCCL's buffers between
    tensor-parallel ranks. Counted against the container's memory limit."""
    return 2 * llm.gpus


def vllm_args(model: str, llm: LlmConfig, model_path: str | None = None) -> list[str]:
    """``vllm serve`` arguments (the model is the positional ``model_tag``): the registry version's
    verified folder (``model_path``, filled by the ``weights`` init container), or raw ``s3://``
    weights streamed. Never a Hugging Face id: a serving pod never downloads."""
    if model_path is None and not llm.from_store:
        raise ValueError(f"vLLM model {model}: a Hugging Face source is served from its registry version (model_path), never downloaded")
    args = [
        model_path or llm.source,
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
        # Latency buckets on which the SLO alerts and the canary's p95 ratios are exact (vllm_buckets).
        *vllm_buckets.args(),
    ]
    if llm.max_num_seqs:
        args += ["--max-num-seqs", str(llm.max_num_seqs)]
    if llm.quantization:
        args += ["--quantization", llm.quantization]
    if llm.enforce_eager:
        args.append("--enforce-eager")
    if model_path is None:  # raw s3:// weights; a verified local folder is read as is
        args += ["--load-format", "runai_streamer"]
    return args


def api_keys_secret(model: str) -> str:
    """The Secret (serving namespace) holding the model's API keys, one data key per client."""
    return f"{object_name(model)}-api-keys"


def flags(args: list[str]) -> list[str]:
    return [a for a in args if a.startswith("--")]


def env(llm: LlmConfig) -> list[dict[str, Any]]:
    """No Hugging Face token: a serving pod never reaches the hub (offline env from the weights mount)."""
    return [
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


def pod_placement(llm: LlmConfig, pool_name: str | None) -> dict[str, Any]:
    """On the model's GPU pool (EKS) or on any GPU node (an existing cluster with GPUs)."""
    selector = {POOL_LABEL: pool_name} if pool_name else {GPU_PRESENT_LABEL: "true"}
    return {"nodeSelector": selector, "tolerations": [GPU_TOLERATION]}


def cache_volume(model: str, llm: LlmConfig, storage_class: str | None) -> dict[str, Any]:
    """Each pod's weights and compile-cache volume: a generic ephemeral volume (Kubernetes >= 1.23,
    core/v1 EphemeralVolumeSource), i.e. a PVC the ephemeral-volume controller makes for the pod from
    this template, owned by the pod and deleted with it (module docstring)."""
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": f"{llm.cache_gi_b}Gi"}}}
    if storage_class:
        spec["storageClassName"] = storage_class
    return {"name": "cache", "ephemeral": {"volumeClaimTemplate": {"metadata": {"labels": labels(model)}, "spec": spec}}}


def vllm_container(
    model: str, llm: LlmConfig, store_env: list, weights: llm_import.WeightsMount | None = None, lora: AdapterMount | None = None
) -> dict[str, Any]:
    r = llm.resources
    health = {"httpGet": {"path": "/health", "port": PORT_NAME}, "timeoutSeconds": 5}
    # A registry version: vLLM reads the verified folder, offline, with no store access (a variable
    # in both lists is kept once).
    base = env(llm)
    offline = [e for e in weights.env if e["name"] not in {x["name"] for x in base}] if weights else []
    container_env = base + offline if weights else base + store_env
    return {
        "name": "vllm",
        "image": VLLM_IMAGE,
        "command": ["vllm", "serve"],
        "args": vllm_args(model, llm, weights.model_path if weights else None) + (lora.args if lora else []),
        "ports": [{"name": PORT_NAME, "containerPort": PORT}],
        "env": container_env,
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


def pod_template(
    model: str,
    llm: LlmConfig,
    pool_name: str | None,
    store_env: list,
    storage_class: str | None,
    version: str | None = None,
    weights: llm_import.WeightsMount | None = None,
    lora: AdapterMount | None = None,
) -> dict[str, Any]:
    """The vLLM pod: the served version on it (annotation; label where it is a valid label value);
    with ``weights`` (a registry version: every source but raw ``s3://`` weights) the init container
    that fetches and verifies it first (components/models/llm_import.py)."""
    served = served_version(llm, version)
    pod_labels = {**labels(model), **({VERSION_LABEL: served} if LABEL_VALUE.match(served) else {})}
    return {
        "metadata": {"labels": pod_labels, "annotations": {rollout_specs.VERSION_ANNOTATION: served, **(lora.annotations if lora else {})}},
        "spec": {
            "serviceAccountName": object_name(model),
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
            **({"initContainers": [weights.init_container, *(lora.init_containers if lora else [])]} if weights else {}),
            "containers": [vllm_container(model, llm, store_env, weights, lora)],
            "volumes": [
                cache_volume(model, llm, storage_class),
                {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{shm_size_gi(llm)}Gi"}},
                {"name": "tmp", "emptyDir": {"sizeLimit": "4Gi"}},
                *(weights.volumes if weights else []),
            ],
        },
    }


def rollout_spec(
    model: str,
    llm: LlmConfig,
    canary: CanaryConfig,
    pool_name: str | None,
    pool_replicas: int | None,
    store_env: list | None = None,
    storage_class: str | None = None,
    version: str | None = None,
    weights: llm_import.WeightsMount | None = None,
    lora: AdapterMount | None = None,
) -> dict[str, Any]:
    """The Rollout's spec: the pod template, and the one-pod canary (llm_canary.strategy)."""
    template = pod_template(model, llm, pool_name, store_env or [], storage_class, version, weights, lora)
    return {
        "replicas": llm.replicas,
        "revisionHistoryLimit": 3,
        # A canary still loading its weights is progress: the startup probe's allowance and a margin.
        "progressDeadlineSeconds": llm_canary.progress_deadline_seconds(template),
        "selector": {"matchLabels": labels(model)},
        "template": template,
        "strategy": llm_canary.strategy(model, object_name(model), canary, llm.max_replicas, pool_replicas),
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
    """Ingress on the one port from ``peers`` only (the entry point's proxies, Prometheus' namespace)
    and from the model's golden Job; no peers given: from anywhere in the cluster."""
    rule: dict[str, Any] = {"ports": [{"protocol": "TCP", "port": PORT}]}
    ingress = [rule]
    if peers:
        ingress = [{"from": peers, **rule}, {"from": [{"podSelector": {"matchLabels": llm_canary.golden_labels(model)}}], **rule}]
    return {
        "podSelector": {"matchLabels": labels(model)},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": ingress,
        # the store (S3 over HTTPS, never the instance metadata service; the in-cluster MinIO): the weights init container
        "egress": workload.egress(workload.STORE_PORT),
    }


def scaled_object_spec(model: str, llm: LlmConfig, namespace: str, prometheus_url: str = keda_specs.PROMETHEUS_URL) -> dict[str, Any]:
    schedule = None
    if llm.awake is not None:
        a = llm.awake
        schedule = keda_specs.SleepSchedule(timezone=a.timezone, start=a.start, end=a.end, replicas=a.replicas)
    return keda_specs.scaled_object_spec(
        # KEDA scales anything with a /scale subresource; the Rollout CRD has one (spec.replicas).
        {"apiVersion": rollout_specs.API_VERSION, "kind": "Rollout", "name": object_name(model)},
        llm.min_replicas,
        llm.max_replicas,
        keda_specs.vllm_queue_query(namespace, served_name(model, llm)),
        llm.waiting_per_replica,
        schedule,
        prometheus_url=prometheus_url,
        # A replica costs a GPU and minutes to come back: keep it 10 minutes after the queue empties.
        scale_down_window_s=600,
    )


def service_monitor_spec(model: str, namespace: str) -> dict[str, Any]:
    """vLLM's ``/metrics`` on the API port of the route's Service only; each series gets the pod's
    template hash (canary vs stable in the analysis) and served version (the dashboard)."""
    spec = workload.service_monitor_spec({**labels(model), **API_SERVICE_LABEL}, namespace, PORT_NAME, "10s")
    return {**spec, "targetLabels": [workload.MODEL_LABEL], "podTargetLabels": [rollout_specs.POD_HASH_LABEL, VERSION_LABEL]}


def _cluster_url(service: str, namespace: str) -> str:
    return f"http://{service}.{namespace}.svc.cluster.local:{PORT}"


def analysis_template(
    model: str, namespace: str, llm: LlmConfig, canary: CanaryConfig, image: str, prompts: int | None, instance_types: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The model's AnalysisTemplate (llm_canary.analysis_template) with its golden Job on ``image``;
    latencies judged only on a pool of one instance type (llm_canary.latency_judged)."""
    obj = object_name(model)
    golden = None
    if prompts:
        golden = llm_canary.Golden(
            image=image,
            config_map=f"{obj}-golden",
            stable_url=_cluster_url(llm_canary.stable_service(obj), namespace),
            canary_url=_cluster_url(llm_canary.canary_service(obj), namespace),
            served_name=served_name(model, llm),
            prompts=prompts,
        )
    return llm_canary.analysis_template(
        model, namespace, obj, canary, golden=golden, judge_latency=llm_canary.latency_judged(instance_types)
    )


@dataclass
class LlmServiceArgs:
    model: str  # the catalogue name (DNS-1123 label)
    namespace: str
    config: LlmConfig
    store: ArtifactStore
    pool_name: str | None  # GPU pool (EKS); None on an existing cluster with GPUs
    storage_class: str | None = None
    gateway: dict[str, str] | None = None  # parentRef of the stack's Gateway (name, namespace[, sectionName])
    gateway_url: pulumi.Input[str] | None = None  # the Gateway's base URL (http[s]://host), for ``url``
    route_opts: pulumi.ResourceOptions | None = None  # e.g. wait for the Gateway and its CRDs
    # Only these client networks reach the route (the entry point's SecurityPolicy); empty: anyone.
    allowed_cidrs: list[str] = field(default_factory=list)
    # The gateway requires a key per llm.apiClients entry (serving.apiKey), generated here.
    api_key: bool = False
    ingress_peers: list[dict[str, Any]] | None = None  # who may reach the pods (NetworkPolicy peers)
    keda: Keda | None = None
    monitoring_release: pulumi.Resource | None = None
    monitoring_namespace: str = "monitoring"
    service_monitor_labels: dict[str, str] = field(default_factory=dict)
    # What gives a replica its GPU: the GPU node groups, the cluster autoscaler (the pools start at 0
    # nodes) and the device plugin. The Rollout waits for them on create and is deleted before them
    # on destroy (reverse dependency order).
    gpu_ready: list[pulumi.Resource] = field(default_factory=list)
    # The canary (components/lib/llm_canary.py): the controller, the stack's canary settings, how
    # many replicas the model's pool holds at its max (None: unknown), the pinned version (None: the
    # store's champion at each pod's start), and the image whose Python runs the golden Job.
    rollouts: ArgoRollouts | None = None
    canary: CanaryConfig = field(default_factory=CanaryConfig)
    pool_replicas: int | None = None
    version: str | None = None
    golden_image: pulumi.Input[str] | None = None
    pool_instance_types: tuple[str, ...] = ()  # the pool's instance types (empty: unknown)
    # The stack's LoRA adapters of this model -> the version its pods serve (None: none yet): served_adapters.
    adapters: dict[str, str | None] = field(default_factory=dict)


def _meta(args: LlmServiceArgs, name: str | None = None, extra: dict[str, str] | None = None) -> k8s.meta.v1.ObjectMetaArgs:
    return k8s.meta.v1.ObjectMetaArgs(
        name=name or object_name(args.model), namespace=args.namespace, labels={**labels(args.model), **(extra or {})}
    )


# Not awaited (pulumi.com/skipAwait): a Service's Endpoints fill only once a replica has loaded its
# weights (minutes after the Rollout, which waits for the Services), and never while KEDA holds the
# model at 0 replicas (dev, nights): awaited, it would fail every first `up` after 10 minutes
# (pulumi-kubernetes 4.34.2 provider/pkg/await/service.go; issue 29 item 1, tools/convergence.py rule a).
SKIP_AWAIT = {"pulumi.com/skipAwait": "true"}


class LlmService(pulumi.ComponentResource):
    """One method per concern: ``_identity`` (service account), ``_services`` (the
    route's, canary and stable Services), ``_workload`` (the Rollout), ``_canary`` (AnalysisTemplate,
    golden set, its Job's network and scrape), ``_guards`` (PDB, NetworkPolicy), ``_autoscaling``
    (KEDA), ``_scrape`` (ServiceMonitor), ``_route`` (the OpenAI routes on the entry point)."""

    endpoint: pulumi.Output[str]  # the OpenAI base path on the Gateway (/llm/<model>/v1)
    url: pulumi.Output[str]  # the OpenAI base URL clients use (ops/smoke takes it as is)
    api_keys: pulumi.Output[dict[str, str]] | None  # client name -> key, a Pulumi secret (serving.apiKey)

    def __init__(self, name: str, args: LlmServiceArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlplatform:llm_service:LlmService", name, None, opts)
        if args.rollouts is None:
            # Config validation refuses a vllm model without monitoring, and the platform runs Argo
            # Rollouts wherever monitoring and models are: this is a wiring error, not a config one.
            raise ValueError(f"LlmService {args.model}: needs the stack's Argo Rollouts (LlmServiceArgs.rollouts)")
        needs = self._identity(name, args)
        service, services = self._services(name, args)
        needs += services + self._canary(name, args)
        rollout = self._workload(name, args, needs)
        self._guards(name, args)
        self._autoscaling(name, args, rollout)
        self._scrape(name, args, service)
        prefix = f"/llm/{args.model}"
        self._route(name, args, service, prefix)
        self.endpoint = pulumi.Output.from_input(f"{prefix}/v1")
        base = args.gateway_url if args.gateway_url is not None else "http://pending"
        self.url = pulumi.Output.concat(base, prefix, "/v1")
        self.register_outputs({"endpoint": self.endpoint, "url": self.url})

    def _identity(self, name: str, args: LlmServiceArgs) -> list[pulumi.Resource]:
        """The pods' service account (what the Rollout waits for): read-only on this model's prefix of
        the store, where its registry versions (or raw s3:// weights) are. No Hugging Face token."""
        obj = object_name(args.model)
        prefixes = [f"models/{args.model}/", *(f"models/{a}/" for a in sorted(args.adapters))]  # its adapters' versions too
        return [store_service_account(self, name, args.store, args.namespace, obj, labels(args.model), write=False, prefixes=prefixes)]

    def _services(self, name: str, args: LlmServiceArgs) -> tuple[k8s.core.v1.Service, list[pulumi.Resource]]:
        """The route's Service (every pod of the model) and the canary and stable Services (the Argo
        controller adds each side's pod template hash to their selector; Argo refuses a canary whose
        Services are missing, so the Rollout waits for them). None is awaited (SKIP_AWAIT)."""
        lab, obj, child = labels(args.model), object_name(args.model), pulumi.ResourceOptions(parent=self)
        spec = workload.cluster_ip_service_spec(lab, PORT_NAME, PORT)

        def meta(svc: str, extra: dict[str, str] | None = None) -> k8s.meta.v1.ObjectMetaArgs:
            return k8s.meta.v1.ObjectMetaArgs(name=svc, namespace=args.namespace, labels={**lab, **(extra or {})}, annotations=SKIP_AWAIT)

        service = k8s.core.v1.Service(f"{name}-service", metadata=meta(obj, API_SERVICE_LABEL), spec=spec, opts=child)
        canary = k8s.core.v1.Service(f"{name}-canary-service", metadata=meta(llm_canary.canary_service(obj)), spec=spec, opts=child)
        stable = k8s.core.v1.Service(f"{name}-stable-service", metadata=meta(llm_canary.stable_service(obj)), spec=spec, opts=child)
        return service, [service, canary, stable]

    def _canary(self, name: str, args: LlmServiceArgs) -> list[pulumi.Resource]:
        """The AnalysisTemplate (what the Rollout's analysis runs), the golden set's ConfigMap, and the
        golden Job's NetworkPolicy and PodMonitor. Returns what the Rollout waits for."""
        model, obj, rollouts = args.model, object_name(args.model), args.rollouts
        prompts = adapter_golden_prompts(model, args)
        child = pulumi.ResourceOptions(parent=self)
        from llm import golden  # the runner's source goes into the ConfigMap as is

        config_map = k8s.core.v1.ConfigMap(
            f"{name}-golden",
            metadata=_meta(args, f"{obj}-golden"),
            data=llm_canary.golden_config_map_data(Path(golden.__file__).read_text(), prompts),
            opts=child,
        )
        image = args.golden_image if args.golden_image is not None else "pending"
        spec = pulumi.Output.from_input(image).apply(
            lambda img: analysis_template(model, args.namespace, args.config, args.canary, img, len(prompts), args.pool_instance_types)[
                "spec"
            ]
        )
        template = k8s.apiextensions.CustomResource(
            f"{name}-analysis",
            api_version=rollout_specs.API_VERSION,
            kind="AnalysisTemplate",
            metadata=llm_canary.analysis_template(model, args.namespace, obj, args.canary)["metadata"],
            spec=spec,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[rollouts.release, config_map]),
        )
        k8s.networking.v1.NetworkPolicy(
            f"{name}-golden-netpol",
            metadata=_meta(args, f"{obj}-golden"),
            spec=llm_canary.golden_network_policy(model, labels(model), PORT, args.monitoring_namespace),
            opts=child,
        )
        if args.monitoring_release is not None:
            k8s.apiextensions.CustomResource(
                f"{name}-golden-podmonitor",
                api_version="monitoring.coreos.com/v1",
                kind="PodMonitor",
                metadata=_meta(args, f"{obj}-golden", args.service_monitor_labels),
                spec=llm_canary.golden_pod_monitor(model, args.namespace),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[args.monitoring_release]),
            )
        return [template, config_map]

    def _workload(self, name: str, args: LlmServiceArgs, needs: list[pulumi.Resource]) -> pulumi.Resource:
        """The Rollout (pod template inline: one object holds the served version, and a preview shows
        its change there). Custom resources are not awaited by pulumi-kubernetes (its await logic covers
        built-in kinds): the pods' readiness is the controller's to report, deliver's to wait for."""
        llm, model = args.config, args.model
        store_env = [e if isinstance(e, dict) else _env_dict(e) for e in client_env(args.store)]
        code_map = None if llm.from_store else self._weights_code(name, args)

        def spec(store_uri: str) -> dict[str, Any]:
            weights = None
            if code_map is not None:
                weights = llm_import.served_weights(model, llm, weights_version(args.version), store_uri, store_env, code_map)
            lora = adapter_mount(model, llm, args, store_uri, weights)
            return rollout_spec(
                model, llm, args.canary, args.pool_name, args.pool_replicas, store_env, args.storage_class, args.version, weights, lora
            )

        if code_map is not None:
            needs = [*needs, self._code_map]
        return k8s.apiextensions.CustomResource(
            f"{name}-rollout",
            api_version=rollout_specs.API_VERSION,
            kind="Rollout",
            metadata=_meta(args),
            spec=pulumi.Output.from_input(args.store.uri).apply(spec),
            # KEDA owns replicas once running: re-applying the configured count would undo its scaling.
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[*needs, args.rollouts.release, *args.gpu_ready], ignore_changes=["spec.replicas"]
            ),
        )

    def _weights_code(self, name: str, args: LlmServiceArgs) -> str:
        """The platform code the ``weights`` init container runs (llm/fetch.py and what it imports), in
        this namespace: an immutable ConfigMap named by its content's digest (llm_import.code_files)."""
        configmap = llm_import.code_configmap_name()
        self._code_map = k8s.core.v1.ConfigMap(
            f"{name}-weights-code",
            metadata=_meta(args, configmap),
            immutable=True,
            data=llm_import.code_files(),
            opts=pulumi.ResourceOptions(parent=self),
        )
        return configmap

    def _guards(self, name: str, args: LlmServiceArgs) -> None:
        child = pulumi.ResourceOptions(parent=self)
        pdb = workload.disruption_budget_spec(labels(args.model))
        k8s.policy.v1.PodDisruptionBudget(f"{name}-pdb", metadata=_meta(args), spec=pdb, opts=child)
        k8s.networking.v1.NetworkPolicy(
            f"{name}-netpol", metadata=_meta(args), spec=network_policy_spec(args.model, args.ingress_peers), opts=child
        )

    def _autoscaling(self, name: str, args: LlmServiceArgs, rollout: pulumi.Resource) -> None:
        """KEDA on the engine's queue; with an awake window, to zero outside it."""
        spec = scaled_object_spec(args.model, args.config, args.namespace)
        after = pulumi.ResourceOptions(parent=self, depends_on=[rollout])
        scaled_object(f"{name}-scaledobject", object_name(args.model), args.namespace, labels(args.model), spec, args.keda, after)

    def _route(self, name: str, args: LlmServiceArgs, service: k8s.core.v1.Service, prefix: str) -> None:
        """The OpenAI routes under ``prefix`` on the stack's Gateway, with their SecurityPolicy (CIDRs,
        API keys) and rate limit, if the stack has a Gateway."""
        self.api_keys = None
        if args.gateway is None:
            return
        opts = pulumi.ResourceOptions.merge(
            pulumi.ResourceOptions(parent=self, depends_on=[service]), args.route_opts or pulumi.ResourceOptions()
        )
        rate = args.config.rate_limit
        access = route.Access(
            api_keys_secret(args.model), list(args.config.api_clients) if args.api_key else None, rate.requests, rate.unit
        )
        guard, self.api_keys = route.guard(self, name, _meta(args), access)
        route.attach(name, _meta(args), http_route_spec(args.model, args.gateway, prefix), args.allowed_cidrs, opts, guard)

    def _scrape(self, name: str, args: LlmServiceArgs, service: k8s.core.v1.Service) -> None:
        """vLLM's ``/metrics``, on the API port, where the stack runs Prometheus."""
        if args.monitoring_release is None:
            return
        k8s.apiextensions.CustomResource(
            f"{name}-servicemonitor",
            api_version="monitoring.coreos.com/v1",
            kind="ServiceMonitor",
            metadata=_meta(args, extra=args.service_monitor_labels),
            spec=service_monitor_spec(args.model, args.namespace),
            # The release installs the ServiceMonitor CRD.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[args.monitoring_release, service]),
        )


def _env_dict(e: k8s.core.v1.EnvVarArgs) -> dict[str, Any]:
    """client_env() builds provider Args; the pod spec here is a plain dict."""
    out: dict[str, Any] = {"name": e.name}
    if e.value is not None:
        out["value"] = e.value
    if e.value_from is not None:
        ref = e.value_from.secret_key_ref
        out["valueFrom"] = {"secretKeyRef": {"name": ref.name, "key": ref.key}}
    return out


# ---- LoRA adapters (issue 26, docs/lora.md): served by their base's vLLM ----

ADAPTERS_DIR = f"{CACHE_DIR}/adapters"


@dataclass(frozen=True)
class AdapterMount:
    """What the base's pod template takes to serve its adapters: one init container per adapter (after
    the weights), vLLM's LoRA flags, and each adapter's served version as an annotation (a new adapter
    version is a new pod template, so it reaches traffic through the base's analysed canary)."""

    init_containers: list[dict[str, Any]]
    args: list[str]
    annotations: dict[str, str]


def served_adapters(base_version: str | None, adapters: dict[str, str | None]) -> dict[str, str]:
    """The adapters the pods serve: those with a version, on a base that serves a pinned one (an
    adapter is checked against the exact base version; an unpinned base's is known only at start)."""
    if base_version is None:
        return {}
    return {a: v for a, v in sorted(adapters.items()) if v}


def adapter_path(adapter: str, version: str) -> str:
    return f"{ADAPTERS_DIR}/{adapter}/{version}"


def adapter_init_container(model: str, base_version: str, adapter: str, version: str, store_uri: str, weights: Any) -> dict[str, Any]:
    """``python -m llm.lora_gate fetch``: the adapter version into the pod's volume, every file checked
    against its manifest; exit 2 (the pod does not start) when it is rejected or was trained on another
    base version than the one this pod serves (llm/lora_gate.py ``check_base`` names both). Same image,
    code, env, limits and security as the ``weights`` container."""
    args = ["-m", "llm.lora_gate", "fetch", "--store", store_uri, "--adapter", adapter, "--version", version]
    args += ["--base", model, "--base-version", base_version, "--dest", adapter_path(adapter, version)]
    return {**weights.init_container, "name": f"adapter-{adapter}"[:63], "command": ["python3", *args]}


@dataclass(frozen=True)
class LoraLimits:
    """vLLM's ``--max-lora-rank`` and ``--max-loras`` for a base: what sizes its LoRA buffers
    (llm/fit.py ``lora_buffer_bytes``). One source for the pods' flags (``adapter_mount``) and the
    import Job's fit check (components/models/llm_import.py ``for_model``)."""

    max_rank: int
    max_loras: int


def lora_limits(llm: LlmConfig, adapters: Collection[str]) -> LoraLimits | None:
    """``adapters``: every adapter of the base on the stack (served or not yet: what the config's fit
    check counts too); ``--max-lora-rank``: ``llm.maxLoraRank``. None: the base has no adapter."""
    return LoraLimits(llm.max_lora_rank, len(adapters)) if adapters else None


def adapter_mount(model: str, llm: LlmConfig, args: LlmServiceArgs, store_uri: str, weights: Any) -> AdapterMount | None:
    """The pod template's adapter parts (None: no adapter served), with the base's ``lora_limits``."""
    from llm import lora_gate

    served = served_adapters(args.version, args.adapters) if weights is not None else {}
    limits = lora_limits(llm, args.adapters)
    if not served or limits is None:
        return None
    assert args.version is not None  # served_adapters: only on a pinned base version
    return AdapterMount(
        init_containers=[adapter_init_container(model, args.version, a, v, store_uri, weights) for a, v in served.items()],
        args=lora_gate.serve_args({a: adapter_path(a, v) for a, v in served.items()}, limits.max_rank, limits.max_loras),
        annotations={lora_gate.version_annotation(a): v for a, v in served.items()},
    )


def adapter_golden_prompts(model: str, args: LlmServiceArgs) -> list[dict[str, Any]]:
    """The base's golden set and, after it, each served adapter's (``models/<adapter>/golden.yaml``, sent
    with ``model: <adapter>``; llm/golden.py ``with_adapters``): the canary pods serve the adapters, so
    the base's canary judges them too. Only the adapters in the pod template (``served_adapters``)."""
    from llm import golden

    served = served_adapters(args.version, args.adapters) if not args.config.from_store else {}
    if not served:
        return golden_prompts(model)
    return golden.with_adapters(golden_prompts(model), {a: golden_prompts(a) for a in served})
