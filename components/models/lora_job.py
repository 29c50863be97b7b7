"""An adapter's LoRA fine-tuning run in the cluster (issue 26, docs/lora.md): one queued GPU Job per
adapter entry with ``training: {kind: lora}`` on a stack that trains it (not where it is received).

* **Queued like every training run**: created suspended with the stack's LocalQueue and the
  ``pipeline`` priority class (components/services/kueue.py), so it waits for the GPU quota, is
  preempted like the TF runs, and resumes: a preempted or lost pod's successor starts from the last
  checkpoint (``checkpoints/<adapter>/<Job name>/`` in the store; llm/finetune.py resumes byte-identically).
* **Two steps, one pod**: the ``finetune`` init container (``python -m llm.finetune``: fetches the base's
  served version from the registry, every file digest-verified, trains, checkpoints) then the ``gate``
  container (``python -m llm.lora_gate gate``: held-out perplexity against the base and the champion
  adapter, golden prompts; publishes a version under ``models/<adapter>/`` only when it passes). An init
  container, not a shell: each step is PID 1 and gets SIGTERM itself (llm/finetune.py checkpoints and exits 143).
* **The base version is the base's served (pinned) one** (``serving.version`` or the stack's record,
  components/models/model.py): the Job's name hashes it with the run's parameters, data, code and
  image, so a new base version (or any change) is a new run and an unchanged ``up`` runs nothing.
  Before the base serves a pinned version there is nothing to train on: no Job (logged).
* **Data**: the files committed with the model (``training.data``/``heldout`` and
  ``models/<adapter>/golden.yaml``) travel in an immutable ConfigMap named by their digest, as the
  platform code does (components/models/llm_import.py); ``data`` may instead be ``s3://`` under the
  adapter's prefix of the store.
* **Identity**: its own ServiceAccount whose IRSA role writes only ``models/<adapter>/`` (with the
  registry guards of components/lib/iam.py: create-only, no aliases, no rejections) and
  ``checkpoints/<adapter>/``, and reads only those and ``models/<base>/`` (the base's version it
  trains on; the champion adapter and an ``s3://`` data set are under ``models/<adapter>/``), where a
  TF training run reads the whole bucket (its data may live anywhere in it).
* **Image**: the LoRA image (llm/lora-image/Dockerfile), built and pushed by ``pulumi up``
  (components/services/images.py, on a stack that fine-tunes an adapter: ``trains_here``) FROM the
  pinned vLLM image (``BASE_IMAGE``: torch, transformers, accelerate) plus ``peft==0.21.2``
  (requirements-llm.txt's pin, hash-checked), run by digest; the platform code is mounted read-only.
  The run's name hashes the image's tag (known at preview): a new image is a new run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.cluster.gpu_pools import GPU_PRESENT_LABEL, GPU_RESOURCE, GPU_TOLERATION
from components.config import ModelConfig
from components.config.llm import LlmConfig
from components.config.lora import LoraTrainingConfig
from components.config.schema import PROJECT_ROOT
from components.lib import workload
from components.models import llm_import
from components.models.training_job import JOB_UID_ENV, JOB_UID_LABEL, store_prefixes
from components.services import kueue
from components.services.artifact_store import ArtifactStore, client_env, store_service_account

APP = "lora"
# The pinned vLLM image the LoRA image is built FROM (components/services/images.py LORA_IMAGE).
BASE_IMAGE = llm_import.IMAGE
DATA_DIR = "/data"
RUN_DIR = "/scratch/run"  # the finetune step's output (adapter + lora-run.json), the gate's input
DATA_VOLUME = "data"
PUSHGATEWAY_PORT = 9091
# llm/finetune.py and llm/lora_gate.py: 2 refused (bad data, base, arguments), 3 gate failed: the same on every retry.
NON_RETRYABLE_EXIT_CODES = [2, 3]


def trains_here(entry: ModelConfig) -> bool:
    """``entry`` is an adapter this stack fine-tunes (``training: {kind: lora}``, not received from another stack)."""
    return entry.adapter_of is not None and isinstance(entry.training, LoraTrainingConfig) and entry.source is None


def object_name(adapter: str) -> str:
    return f"lora-{adapter}"


def labels(adapter: str) -> dict[str, str]:
    return workload.labels(APP, adapter)


def data_files(adapter: str, cfg: LoraTrainingConfig, root: Path) -> dict[str, str]:
    """ConfigMap data: the committed sets (``data-<file>``, ``heldout-<file>``: the suffix tells
    finetune a ``.jsonl`` set) and the adapter's golden prompts, when committed."""
    out = {f"{field}-{Path(rel).name}": (root / rel).read_text() for field, rel in cfg.committed().items()}
    golden = root / "models" / adapter / "golden.yaml"
    if golden.is_file():
        out["golden.yaml"] = golden.read_text()
    return out


def data_configmap_name(adapter: str, files: dict[str, str]) -> str:
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return f"{object_name(adapter)}-data-{digest[:10]}"


def _data_path(field: str, uri: str) -> str:
    return uri if uri.startswith("s3://") else f"{DATA_DIR}/{field}-{Path(uri).name}"


def finetune_args(adapter: str, base: str, base_version: str, cfg: LoraTrainingConfig, store_uri: str) -> list[str]:
    p = cfg.params
    args = ["-m", "llm.finetune", "--store", store_uri, "--base", base, "--base-version", base_version, "--name", adapter]
    args += ["--data", _data_path("data", cfg.data), "--out", RUN_DIR]
    args += ["--checkpoint", f"{store_uri}/checkpoints/{adapter}/$({JOB_UID_ENV})"]
    args += ["--steps", str(p.steps), "--batch-size", str(p.batch_size), "--seq-len", str(p.seq_len)]
    args += ["--learning-rate", f"{p.learning_rate:g}", "--rank", str(p.rank), "--alpha", str(p.alpha), "--dropout", f"{p.dropout:g}"]
    return [*args, "--target-modules", ",".join(p.target_modules)]


def gate_args(
    adapter: str, base: str, base_version: str, cfg: LoraTrainingConfig, store_uri: str, publish_as: str, golden: bool
) -> list[str]:
    g = cfg.gate
    args = ["-m", "llm.lora_gate", "gate", "--store", store_uri, "--adapter", adapter, "--run", RUN_DIR]
    args += ["--heldout", _data_path("heldout", cfg.heldout), "--base", base, "--base-version", base_version]
    args += ["--min-improvement", f"{g.min_improvement:g}", "--champion-margin", f"{g.champion_margin:g}"]
    args += ["--seq-len", str(cfg.params.seq_len), "--publish-as", publish_as]
    return [*args, "--golden", f"{DATA_DIR}/golden.yaml"] if golden else args


@dataclass(frozen=True)
class Run:
    """One fine-tuning run of ``adapter`` on ``base``/``base_version``."""

    adapter: str
    base: str
    base_version: str
    config: LoraTrainingConfig
    base_llm: LlmConfig  # the base's: its container resources fit the GPU nodes it runs on; its cache size the base's staging
    publish_as: str = "candidate"
    pushgateway: str | None = None


@dataclass(frozen=True)
class Image:
    """The LoRA image (components/services/images.py ``refs``/``tags`` of LORA_IMAGE)."""

    ref: pulumi.Input[str]  # registry/repo:ctx-<hash>@sha256:...: what the containers run
    tag: pulumi.Input[str]  # registry/repo:ctx-<hash>: known at preview, what the run's name hashes


def run_name(run: Run, code_map: str, data_map: str, image_tag: str) -> str:
    """``lora-<adapter>-<hash>`` of what the run produces: base version, parameters, data, code, image (its tag)."""
    what = {
        "base": [run.base, run.base_version],
        "config": run.config.model_dump(mode="json", exclude={"active_deadline_seconds"}),
        "code": code_map,
        "data": data_map,
        "image": image_tag,
    }
    return f"{object_name(run.adapter)}-{hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:10]}"


def _env(run: Run, store_env: list[dict[str, Any]]) -> list[dict[str, Any]]:
    env = [
        {"name": "JOB_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['batch.kubernetes.io/job-name']"}}},
        # The checkpoints are keyed by the Job's UID, not its name: a name can be guessed in advance and a
        # hostile run could plant a checkpoint a later run resumes from (components/models/training_job.py).
        {"name": JOB_UID_ENV, "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{JOB_UID_LABEL}']"}}},
        {"name": "PYTHONPATH", "value": llm_import.CODE_DIR},
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
        {"name": "HOME", "value": "/scratch"},
        {"name": "HF_HOME", "value": "/scratch/huggingface"},
        {"name": "XDG_CACHE_HOME", "value": "/scratch/xdg"},
        {"name": "TRAIN_MODEL_NAME", "value": run.adapter},
        *llm_import.OFFLINE_ENV,
        *store_env,
    ]
    if run.pushgateway:
        env.append({"name": "TRAIN_PUSHGATEWAY", "value": run.pushgateway})
    return env


def _container(name: str, args: list[str], run: Run, image: str, store_env: list[dict[str, Any]]) -> dict[str, Any]:
    r, gpus = run.base_llm.resources, run.config.gpus
    return {
        "name": name,
        "image": image,
        "command": ["python3", *args],
        "env": _env(run, store_env),
        "resources": {
            "requests": {"cpu": r.cpu, "memory": r.memory, GPU_RESOURCE: gpus},
            "limits": {"memory": r.memory_limit, GPU_RESOURCE: gpus},
        },
        "securityContext": llm_import._security(),
        "volumeMounts": [
            {"name": llm_import.CODE_VOLUME, "mountPath": llm_import.CODE_DIR, "readOnly": True},
            {"name": DATA_VOLUME, "mountPath": DATA_DIR, "readOnly": True},
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }


def pod_spec(
    run: Run, image: str, store_uri: str, store_env: list[dict[str, Any]], code_map: str, data_map: str, golden: bool
) -> dict[str, Any]:
    """Non-root, read-only root, on a GPU node (the pools' taint tolerated), the base staged in ``/tmp``
    (sized like the base's serving cache) by each step, the run's output in ``/scratch``."""
    finetune = finetune_args(run.adapter, run.base, run.base_version, run.config, store_uri)
    gate = gate_args(run.adapter, run.base, run.base_version, run.config, store_uri, run.publish_as, golden)
    return {
        "serviceAccountName": object_name(run.adapter),
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 120,  # SIGTERM -> stop at the next step, checkpoint, exit 143
        "securityContext": llm_import.pod_security(),
        "nodeSelector": {GPU_PRESENT_LABEL: "true"},
        "tolerations": [GPU_TOLERATION],
        "initContainers": [_container("finetune", finetune, run, image, store_env)],
        "containers": [_container("gate", gate, run, image, store_env)],
        "volumes": [
            llm_import.code_volume(code_map),
            {"name": DATA_VOLUME, "configMap": {"name": data_map}},
            {"name": "scratch", "emptyDir": {"sizeLimit": "20Gi"}},
            {"name": "tmp", "emptyDir": {"sizeLimit": f"{run.base_llm.cache_gi_b}Gi"}},
        ],
    }


def job_spec(run: Run, pod: dict[str, Any]) -> dict[str, Any]:
    """Suspended (Kueue admits it); a refused or failed gate stops the Job, a disruption is retried
    without counting (the successor resumes from the checkpoint)."""
    return {
        "suspend": True,
        "backoffLimit": 4,
        "activeDeadlineSeconds": run.config.active_deadline_seconds,
        "podFailurePolicy": {
            "rules": [
                *(
                    {"action": "FailJob", "onExitCodes": {"containerName": c, "operator": "In", "values": NON_RETRYABLE_EXIT_CODES}}
                    for c in ("finetune", "gate")
                ),
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]
        },
        "template": {"metadata": {"labels": labels(run.adapter)}, "spec": pod},
    }


def network_policy_spec(adapter: str) -> dict[str, Any]:
    """No ingress; egress to the store (S3 over HTTPS, never the metadata service; the in-cluster MinIO) and the Pushgateway."""
    return {
        "podSelector": {"matchLabels": labels(adapter)},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [],
        "egress": workload.egress(workload.STORE_PORT, PUSHGATEWAY_PORT),
    }


def read_prefixes(run: Run) -> list[str]:
    """What the run reads beside what it writes (``store_prefixes``: the adapter's versions, its champion
    and data, its checkpoints): its base's versions (the pinned one it trains on and gates against)."""
    return [f"models/{run.base}/"]


def _env_dicts(store: ArtifactStore) -> list[dict[str, Any]]:
    return [llm_import._env_dict(e) for e in client_env(store)]


def attach(
    name: str, run: Run, image: Image, namespace: str, store: ArtifactStore, queue: kueue.Kueue | None, parent: pulumi.Resource
) -> k8s.batch.v1.Job:
    """The run's ServiceAccount, code and data ConfigMaps, NetworkPolicy and the queued Job, children of ``parent`` (the adapter's Model)."""
    child, adapter, lab, obj = pulumi.ResourceOptions(parent=parent), run.adapter, labels(run.adapter), object_name(run.adapter)

    def meta(n: str) -> k8s.meta.v1.ObjectMetaArgs:
        return k8s.meta.v1.ObjectMetaArgs(name=n, namespace=namespace, labels=lab)

    sa = store_service_account(
        parent, f"{name}-lora", store, namespace, obj, lab, write=True, prefixes=store_prefixes(adapter), read_prefixes=read_prefixes(run)
    )
    code_map = llm_import.code_configmap_name("lora-code")
    code = k8s.core.v1.ConfigMap(f"{name}-lora-code", metadata=meta(code_map), immutable=True, data=llm_import.code_files(), opts=child)
    files = data_files(adapter, run.config, PROJECT_ROOT)
    data_map = data_configmap_name(adapter, files)
    data = k8s.core.v1.ConfigMap(f"{name}-lora-data", metadata=meta(data_map), immutable=True, data=files, opts=child)
    k8s.networking.v1.NetworkPolicy(f"{name}-lora-netpol", metadata=meta(obj), spec=network_policy_spec(adapter), opts=child)
    store_env = _env_dicts(store)
    golden = "golden.yaml" in files
    spec = pulumi.Output.all(image.ref, store.uri).apply(
        lambda a: job_spec(run, pod_spec(run, a[0], a[1], store_env, code_map, data_map, golden))
    )
    return k8s.batch.v1.Job(
        f"{name}-lora",
        metadata=k8s.meta.v1.ObjectMetaArgs(
            name=pulumi.Output.from_input(image.tag).apply(lambda tag: run_name(run, code_map, data_map, tag)),
            namespace=namespace,
            labels={**lab, **kueue.job_labels("pipeline")},
            annotations={"pulumi.com/skipAwait": "true", **kueue.FOREGROUND},
        ),
        spec=spec,
        opts=pulumi.ResourceOptions(
            parent=parent, depends_on=[sa, code, data, *(queue.objects if queue else [])], ignore_changes=["spec.suspend"]
        ),
    )
