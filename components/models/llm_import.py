"""An LLM's weights as registry versions, in the cluster: the import Job and the weights init container.

* **Import** (``attach_import``): a Job on a CPU node of the training namespace, queued by Kueue like
  any training run (created suspended, label ``kueue.x-k8s.io/queue-name``), runs ``python -m
  llm.importer import`` (llm/importer.py): downloads ``llm.source`` at the pinned ``revision`` into the
  stack's store as an immutable version with a SHA-256 manifest and the model's shape, after the fit
  check against the pool's GPU (with the LoRA buffers its vLLM holds where the stack has adapters of
  it). Named ``import-<model>-<hash>`` of source, revision, fit target and code, so an unchanged `up`
  runs nothing and a new revision (or adapter count) is a new run. Only on stacks that import:
  a stack that receives the model (``models.<name>.source``, prod) never has it, and so never talks to
  Hugging Face: its versions arrive by promotion (bytes copied and checked, training/registry.py).
* **Load** (``served_weights``, for the vLLM pod template, components/models/llm_service.py): an init
  container runs ``python -m llm.fetch`` (llm/fetch.py), which fills the replica's own volume with the
  pinned version from the store and verifies every digest; vLLM then starts with ``--model`` on that
  folder, ``HF_HUB_OFFLINE=1`` and no Hugging Face token. A version that fails verification, is
  rejected, or is not the stack's pinned source/revision stops the pod before vLLM starts.

Both run the pinned vLLM image (its Python has huggingface_hub and boto3 — the image installs the Run:ai
streamer's S3 extra; from vLLM's docker/Dockerfile, not verified here) with the platform's own code
mounted read-only from a ConfigMap (``code_files``: the registry, the integrity check, llm/). The
ConfigMap is immutable and named by its content's digest, so a code change rolls the pods and a running
pod never sees its checker change under it.

Why a node-local cache filled before start, not the Run:ai streamer (docs/llm.md "Cold start"): the
streamer overlaps the S3 read with the GPU copy, so a cold start is faster, but vLLM would load bytes
nobody checked against the manifest, and every restart or wake-up reads the whole model from S3 again.
The init container pays one S3 read + one hash pass on a cold volume, then only a hash pass of the
local copy on every later start.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.config.llm import VLLM_VERSION, LlmConfig
from components.lib import workload
from components.services import kueue
from components.services.artifact_store import ArtifactStore, client_env, store_service_account

# The pinned vLLM image (components/models/llm_service.py VLLM_IMAGE): one image to pull per node.
IMAGE = f"docker.io/vllm/vllm-openai:v{VLLM_VERSION}"
CACHE_DIR = "/cache"  # the replica's volume (llm_service.CACHE_DIR)
MODELS_DIR = f"{CACHE_DIR}/models"
CODE_DIR = "/opt/mlplatform"
CODE_VOLUME = "platform-code"
# The platform code the import and the init container run (stdlib + boto3 + huggingface_hub).
CODE_FILES = (
    "training/__init__.py",
    "training/storage.py",
    "training/registry.py",
    "serving/__init__.py",
    "serving/integrity.py",
    "llm/__init__.py",
    "llm/fit.py",
    "llm/importer.py",
    "llm/fetch.py",
    # LoRA adapters (docs/lora.md): the fine-tuning run and gate (components/models/lora_job.py), and
    # the adapters' fetch before vLLM starts (components/models/llm_service.py)
    "llm/golden.py",
    "llm/finetune.py",
    "llm/lora_gate.py",
)
IMPORT_DEADLINE_S = 4 * 3600  # a 70B model is ~140 GB: hours at a few hundred MB/s
# llm/importer.py exit 2: refused (no safetensors, does not fit, pin mismatch): a retry cannot help.
NON_RETRYABLE_EXIT_CODES = [2]
# Hugging Face and transformers never go online in a serving pod (prod has no route to it either).
OFFLINE_ENV = [
    {"name": "HF_HUB_OFFLINE", "value": "1"},
    {"name": "TRANSFORMERS_OFFLINE", "value": "1"},
    {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
]


def _root() -> Any:
    from pathlib import Path

    return Path(__file__).resolve().parents[2]


def code_files() -> dict[str, str]:
    """ConfigMap data: ``training__registry.py`` -> its text (a key cannot hold '/')."""
    root = _root()
    return {rel.replace("/", "__"): (root / rel).read_text() for rel in CODE_FILES}


def code_configmap_name(prefix: str = "llm-code") -> str:
    digest = hashlib.sha256(json.dumps(code_files(), sort_keys=True).encode()).hexdigest()
    return f"{prefix}-{digest[:10]}"


def code_volume(configmap: str) -> dict[str, Any]:
    return {
        "name": CODE_VOLUME,
        "configMap": {"name": configmap, "items": [{"key": rel.replace("/", "__"), "path": rel} for rel in CODE_FILES]},
    }


def model_path(model: str, version: str) -> str:
    """Where the init container leaves ``version`` and vLLM's ``--model`` reads it."""
    return f"{MODELS_DIR}/{model}/{version}"


def _code_env() -> list[dict[str, Any]]:
    return [{"name": "PYTHONPATH", "value": CODE_DIR}, {"name": "HOME", "value": "/tmp"}, {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}]


def _security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}


def pod_security() -> dict[str, Any]:
    """The Jobs' pods (the import, a LoRA run: components/models/lora_job.py): Pod Security ``restricted``."""
    return {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}}


def fetch_args(model: str, llm: LlmConfig, version: str, store_uri: str) -> list[str]:
    args = ["-m", "llm.fetch", "--store", store_uri, "--model", model, "--version", version, "--cache", MODELS_DIR]
    if not llm.from_store:
        args += ["--source", llm.source]  # the version must be this source ...
        if llm.revision:
            args += ["--revision", llm.revision]  # ... at the pinned revision
    return args


def init_container(model: str, llm: LlmConfig, version: str, store_uri: str, store_env: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``weights`` init container: exit 0 only with the verified version at ``model_path``.
    Its memory limit is the vLLM container's (an init container's resources are not added to the
    pod's: the larger of the two counts), and it holds one file of the version at a time (a shard,
    <= 5 GB as Hugging Face cuts them)."""
    return {
        "name": "weights",
        "image": IMAGE,
        "command": ["python3", *fetch_args(model, llm, version, store_uri)],
        "env": _code_env() + OFFLINE_ENV + store_env,
        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": llm.resources.memory_limit}},
        "securityContext": _security(),
        "volumeMounts": [
            {"name": "cache", "mountPath": CACHE_DIR},
            {"name": CODE_VOLUME, "mountPath": CODE_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }


@dataclass(frozen=True)
class WeightsMount:
    """What the vLLM pod template takes to serve a pinned version: the init container first, the code
    volume (the ``cache`` and ``tmp`` volumes are the pod's own), vLLM's ``--model`` path and env."""

    init_container: dict[str, Any]
    volumes: list[dict[str, Any]]
    model_path: str
    env: list[dict[str, Any]]


def served_weights(
    model: str, llm: LlmConfig, version: str, store_uri: str, store_env: list[dict[str, Any]], configmap: str
) -> WeightsMount:
    """For the vLLM pod template (components/models/llm_service.py): ``model_path`` is vLLM's model
    (no ``--revision``, no streamer: the folder is the pinned revision), offline, no HF_TOKEN.
    ``version``: a version name, or ``@champion`` (llm/fetch.py resolves the store's champion at start)."""
    return WeightsMount(
        init_container=init_container(model, llm, version, store_uri, store_env),
        volumes=[code_volume(configmap)],
        model_path=model_path(model, version),
        env=list(OFFLINE_ENV),
    )


# ---- the import Job ----


@dataclass(frozen=True)
class ImportTarget:
    """The GPU the fit check runs against at import: the pool's smallest (components/config/capacity.py)."""

    gpu_mib: int
    gpus: int
    utilization: float
    max_model_len: int
    max_num_seqs: int | None
    # vLLM's LoRA buffers where the base serves adapters (llm_service.lora_limits: the pods' own
    # --max-lora-rank/--max-loras); 0: none. In the run's name: a new adapter re-checks the fit.
    max_lora_rank: int = 0
    max_loras: int = 0


def object_name(model: str) -> str:
    return f"import-{model}"


def labels(model: str) -> dict[str, str]:
    return workload.labels("llm-import", model)


def import_args(model: str, llm: LlmConfig, store_uri: str, target: ImportTarget | None, champion: bool) -> list[str]:
    args = ["-m", "llm.importer", "import", "--store", store_uri, "--model", model, "--source", llm.source]
    args += ["--reason", f"import {llm.source}@{llm.revision or 'main'}"]
    if llm.revision:
        args += ["--revision", llm.revision]
    if champion:
        args.append("--champion")  # no canary on the stack: the import is what serves
    if target is not None and target.gpu_mib:
        args += ["--gpu-mib", str(target.gpu_mib), "--gpus", str(target.gpus), "--utilization", f"{target.utilization:g}"]
        args += ["--max-model-len", str(target.max_model_len)]
        if target.max_num_seqs:
            args += ["--max-num-seqs", str(target.max_num_seqs)]
        if target.max_loras:
            args += ["--max-lora-rank", str(target.max_lora_rank), "--max-loras", str(target.max_loras)]
    return args


def run_name(model: str, llm: LlmConfig, target: ImportTarget | None, configmap: str) -> str:
    what = {"source": llm.source, "revision": llm.revision, "target": target.__dict__ if target else None, "code": configmap}
    return f"{object_name(model)}-{hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:10]}"


def import_pod_spec(
    model: str,
    llm: LlmConfig,
    store_uri: str,
    store_env: list,
    target: ImportTarget | None,
    configmap: str,
    champion: bool,
    hf_secret: str | None,
) -> dict[str, Any]:
    """On a CPU node (no GPU toleration: the GPU pools are tainted), scratch space for one snapshot."""
    env = [
        *_code_env(),
        {"name": "HF_HOME", "value": "/scratch/huggingface"},
        {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
        *store_env,
    ]
    if hf_secret:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": hf_secret, "key": "token"}}})
    return {
        "serviceAccountName": object_name(model),
        "restartPolicy": "Never",
        "securityContext": pod_security(),
        "containers": [
            {
                "name": "import",
                "image": IMAGE,
                "command": ["python3", *import_args(model, llm, store_uri, target, champion)],
                "env": env,
                "resources": {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"cpu": "2", "memory": "12Gi"}},
                "securityContext": _security(),
                "volumeMounts": [
                    {"name": CODE_VOLUME, "mountPath": CODE_DIR, "readOnly": True},
                    {"name": "scratch", "mountPath": "/scratch"},
                    {"name": "tmp", "mountPath": "/tmp"},
                ],
            }
        ],
        "volumes": [
            code_volume(configmap),
            {"name": "scratch", "emptyDir": {"sizeLimit": f"{llm.cache_gi_b}Gi"}},
            # the snapshot is staged under the temp dir (llm/importer.py), then uploaded
            {"name": "tmp", "emptyDir": {"sizeLimit": f"{llm.cache_gi_b}Gi"}},
        ],
    }


def import_job_spec(model: str, pod: dict[str, Any]) -> dict[str, Any]:
    return {
        "suspend": True,  # Kueue admits it
        "backoffLimit": 3,
        "activeDeadlineSeconds": IMPORT_DEADLINE_S,
        "podFailurePolicy": {
            "rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": "import", "operator": "In", "values": NON_RETRYABLE_EXIT_CODES}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]
        },
        "template": {"metadata": {"labels": labels(model)}, "spec": pod},
    }


def network_policy_spec(model: str) -> dict[str, Any]:
    """Egress to Hugging Face / S3 over HTTPS (never the metadata service) and the in-cluster store."""
    return {
        "podSelector": {"matchLabels": labels(model)},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [],
        "egress": workload.egress(workload.STORE_PORT),
    }


@dataclass
class ImportArgs:
    model: str
    namespace: str  # the training namespace: the stack's Kueue queue is there
    config: LlmConfig
    store: ArtifactStore
    target: ImportTarget | None = None
    champion: bool = False  # no canary on the stack: the imported version serves at once
    hf_token: pulumi.Input[str] | None = None
    queue: kueue.Kueue | None = None


def _env_dict(e: Any) -> dict[str, Any]:
    if isinstance(e, dict):
        return e
    out: dict[str, Any] = {"name": e.name}
    if e.value is not None:
        out["value"] = e.value
    if e.value_from is not None:
        ref = e.value_from.secret_key_ref
        out["valueFrom"] = {"secretKeyRef": {"name": ref.name, "key": ref.key}}
    return out


def attach_import(name: str, args: ImportArgs, parent: pulumi.Resource) -> k8s.batch.v1.Job:
    """The import's ServiceAccount (writes only ``models/<model>/``), code ConfigMap, HF token Secret,
    NetworkPolicy and the queued Job, as children of ``parent`` (the Model)."""
    child, model, llm = pulumi.ResourceOptions(parent=parent), args.model, args.config
    lab, obj = labels(model), object_name(model)

    def meta(n: str) -> k8s.meta.v1.ObjectMetaArgs:
        return k8s.meta.v1.ObjectMetaArgs(name=n, namespace=args.namespace, labels=lab)

    sa = store_service_account(parent, f"{name}-import", args.store, args.namespace, obj, lab, write=True, prefixes=[f"models/{model}/"])
    configmap = code_configmap_name()
    cm = k8s.core.v1.ConfigMap(f"{name}-import-code", metadata=meta(configmap), immutable=True, data=code_files(), opts=child)
    needs: list[pulumi.Resource] = [sa, cm, *(args.queue.objects if args.queue else [])]
    secret = None
    if args.hf_token is not None:
        secret = f"{obj}-hf-token"
        needs.append(
            k8s.core.v1.Secret(
                f"{name}-import-hf-token",
                metadata=meta(secret),
                type="Opaque",
                string_data={"token": pulumi.Output.secret(args.hf_token)},
                opts=child,
            )
        )
    k8s.networking.v1.NetworkPolicy(f"{name}-import-netpol", metadata=meta(obj), spec=network_policy_spec(model), opts=child)
    store_env = [_env_dict(e) for e in client_env(args.store)]
    spec = pulumi.Output.from_input(args.store.uri).apply(
        lambda uri: import_job_spec(model, import_pod_spec(model, llm, uri, store_env, args.target, configmap, args.champion, secret))
    )
    return k8s.batch.v1.Job(
        f"{name}-import",
        metadata=k8s.meta.v1.ObjectMetaArgs(
            name=run_name(model, llm, args.target, configmap),
            namespace=args.namespace,
            labels={**lab, **kueue.job_labels("pipeline")},
            # Foreground: destroy returns once its pods and Kueue Workload are gone (kueue.FOREGROUND).
            annotations={"pulumi.com/skipAwait": "true", **kueue.FOREGROUND},
        ),
        spec=spec,
        opts=pulumi.ResourceOptions(parent=parent, depends_on=needs, ignore_changes=["spec.suspend"]),
    )


def for_model(name: str, args: Any, opts: pulumi.ResourceOptions, adapters: Collection[str] = ()) -> k8s.batch.v1.Job | None:
    """The import of a catalogue entry (components/models/model.py ModelArgs), where this stack imports:
    not where the model is received from another stack (``source``: prod), whose versions arrive by
    promotion and which so never reaches Hugging Face. The fit target is the model's pool's smallest GPU,
    with the LoRA buffers of ``adapters`` (the stack's adapters of this base) as its vLLM will hold them."""
    from components.config import capacity
    from components.config.llm import choose_pool
    from components.models.llm_service import lora_limits

    cfg = args.config
    if cfg.source is not None or cfg.llm is None or cfg.llm.from_store:
        return None
    llm = cfg.llm
    pool = choose_pool(llm, args.gpu_pools) if args.gpu_pools else None
    target = None
    if pool is not None:
        lora = lora_limits(llm, adapters)
        target = ImportTarget(
            capacity.pool_gpu_memory_mib(pool),
            llm.gpus,
            llm.gpu_memory_utilization,
            llm.max_model_len,
            llm.max_num_seqs,
            max_lora_rank=lora.max_rank if lora else 0,
            max_loras=lora.max_loras if lora else 0,
        )
    import_args = ImportArgs(
        model=args.model,
        namespace=args.training_namespace,
        config=llm,
        store=args.store,
        target=target,
        champion=args.rollouts is None,
        hf_token=args.hf_token,
        queue=args.queue,
    )
    return attach_import(name, import_args, opts.parent)
