"""TrainingJob: one model's training run as a Kubernetes Job (and a CronJob for scheduled retraining).

The Job is named ``train-<model>-<hash>``, the hash of the image and the hyperparameters: a no-op `pulumi up` keeps the same
Job (nothing runs); any change gives a new name, i.e. a new run. `pulumi up` does not wait for
training (skipAwait); the pipeline waits with `kubectl wait` and reads the exit status.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.cluster.gpu_pools import GPU_PRESENT_LABEL, GPU_RESOURCE, GPU_TOLERATION
from components.config import TrainingConfig
from components.lib import workload
from components.lib.security import container_security, pod_security
from components.services import kueue
from components.services.artifact_store import ArtifactStore, client_env, store_service_account

APP = "training"
# training.train exit codes: 2 bad data/arguments, 3 quality gate failed -> retrying cannot help.
NON_RETRYABLE_EXIT_CODES = [2, 3]
TTL_SECONDS = 7 * 86400
# The port each worker's TensorFlow server listens on (training/cluster.py DEFAULT_PORT); PyTorch's rendezvous too.
WORKER_PORT = 2222
# PyTorch's collectives (gloo, NCCL) connect the workers on ephemeral ports, not the rendezvous port: a
# multi-worker run pins its pods' ephemeral range (net.ipv4.ip_local_port_range, a namespaced sysctl Pod
# Security allows) and its NetworkPolicies open that range between its own workers, nothing else.
COLLECTIVE_PORTS = (33000, 33999)
# The Job controller labels each pod with its Job's UID (Kubernetes 1.27+); the pod reads it as JOB_UID.
JOB_UID_LABEL = "batch.kubernetes.io/controller-uid"
JOB_UID_ENV = "JOB_UID"


def workers_service(model: str) -> str:
    """The headless Service that gives a multi-worker run's pods their DNS names (the pods' subdomain)."""
    return f"{object_name(model)}-workers"


def object_name(model: str) -> str:
    """The ServiceAccount, CronJob and NetworkPolicy of ``model``'s training."""
    return f"train-{model}"


def store_prefixes(model: str) -> list[str]:
    """Where ``model``'s runs write in the store: its versions and its checkpoints, nobody else's."""
    return [f"models/{model}/", f"checkpoints/{model}/"]


def labels(model: str) -> dict[str, str]:
    return workload.labels(APP, model)


def run_name(model: str, image: str, cfg: TrainingConfig) -> str:
    """``train-<model>-<hash>`` of everything that changes what a run produces."""
    # resources: where a run gets its CPU/memory changes not what it produces (and a new key must not
    # rename, so rerun, every stack's Job at the next up)
    params = cfg.model_dump(mode="json", exclude={"schedule", "active_deadline_seconds", "resources"})
    digest = hashlib.sha256(json.dumps({"image": image, "params": params}, sort_keys=True).encode()).hexdigest()
    return f"{object_name(model)}-{digest[:10]}"


def train_env(
    model: str, cfg: TrainingConfig, store_uri: str, pushgateway: str | None, publish_as: str = "champion"
) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        # The run id follows the Job that owns the pod (also for CronJob runs).
        {"name": "JOB_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['batch.kubernetes.io/job-name']"}}},
        # The checkpoint dir follows the Job's UID, which no earlier run can know: a CronJob's next Job
        # name can be guessed, so a run could plant a checkpoint that the next run resumes from.
        {"name": JOB_UID_ENV, "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{JOB_UID_LABEL}']"}}},
        # The store root; the trainer publishes under <root>/models/<model name>/ (the model's prefix).
        {"name": "TRAIN_OUTPUT", "value": store_uri},
        {"name": "TRAIN_MODEL_NAME", "value": model},
        {"name": "TRAIN_CHECKPOINT_DIR", "value": f"{store_uri}/checkpoints/{model}/$({JOB_UID_ENV})"},
        {"name": "TRAIN_EPOCHS", "value": str(cfg.epochs)},
        # candidate: the run never moves the champion; a canary does (ops/deliver.py, README "Model delivery").
        {"name": "TRAIN_PUBLISH_AS", "value": publish_as},
        # Read-only root filesystem: Keras, matplotlib and TF caches go to the scratch volume.
        {"name": "HOME", "value": "/scratch"},
        {"name": "KERAS_HOME", "value": "/scratch/.keras"},
        {"name": "MPLCONFIGDIR", "value": "/scratch/.matplotlib"},
    ]
    if cfg.code is None:  # the MNIST trainer's own flags
        env += [{"name": "TRAIN_ARCH", "value": cfg.arch}, {"name": "TRAIN_MIN_ACCURACY", "value": str(cfg.min_accuracy)}]
    else:  # a model's own code, on the training contract (training/contract.py)
        if cfg.params:
            env.append({"name": "TRAIN_PARAMS", "value": json.dumps(cfg.params, sort_keys=True)})
        if cfg.gate_min is not None:
            env.append({"name": "TRAIN_GATE_MIN", "value": str(cfg.gate_min)})
    if cfg.batch_size:
        env.append({"name": "TRAIN_BATCH_SIZE", "value": str(cfg.batch_size)})
    if cfg.champion_margin is not None:
        env.append({"name": "TRAIN_CHAMPION_MARGIN", "value": str(cfg.champion_margin)})
    if cfg.allow_signature_change:  # the contract refuses a signature that breaks the champion's otherwise
        env.append({"name": "TRAIN_ALLOW_SIGNATURE_CHANGE", "value": "1"})
    if cfg.data_uri:
        env.append({"name": "TRAIN_DATA", "value": cfg.data_uri})
    if pushgateway:
        env.append({"name": "TRAIN_PUSHGATEWAY", "value": pushgateway})
    if cfg.workers > 1:
        # training/cluster.py derives TF_CONFIG from these and the pod's JOB_COMPLETION_INDEX.
        env += [
            {"name": "TRAIN_WORKERS", "value": str(cfg.workers)},
            {"name": "TRAIN_WORKER_SERVICE", "value": workers_service(model)},
            {"name": "TRAIN_WORKER_PORT", "value": str(WORKER_PORT)},
        ]
    return env


def pod_spec(
    model: str,
    image: str,
    cfg: TrainingConfig,
    store_uri: str,
    store_env: list,
    pushgateway: str | None,
    gpu_nodes: bool,
    publish_as: str = "champion",
) -> dict[str, Any]:
    gpu = cfg.gpus > 0
    resources: dict[str, Any] = cfg.resources.model_dump()  # training.resources (default: 1 CPU / 4Gi requested)
    if gpu:
        resources["limits"][GPU_RESOURCE] = cfg.gpus
        resources["requests"][GPU_RESOURCE] = cfg.gpus
    spec: dict[str, Any] = {
        "serviceAccountName": object_name(model),
        "restartPolicy": "Never",  # required by podFailurePolicy; retries are new pods
        "terminationGracePeriodSeconds": 120,  # SIGTERM -> stop at the next batch, exit 143
        "securityContext": pod_security(),
        "containers": [
            {
                "name": "train",
                "image": image,
                "env": train_env(model, cfg, store_uri, pushgateway, publish_as) + store_env,
                "resources": resources,
                "securityContext": container_security(),
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}, {"name": "tmp", "mountPath": "/tmp"}],
            }
        ],
        "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "5Gi"}}, {"name": "tmp", "emptyDir": {"sizeLimit": "5Gi"}}],
    }
    if gpu and gpu_nodes:
        spec["tolerations"] = [GPU_TOLERATION]
        spec["nodeSelector"] = {GPU_PRESENT_LABEL: "true"}
    if cfg.workers > 1:
        spec["subdomain"] = workers_service(model)  # pod i answers at <job>-<i>.<service>
        spec["containers"][0]["ports"] = [{"name": "worker", "containerPort": WORKER_PORT, "protocol": "TCP"}]
        pod = pod_security()
        pod.sysctls = [k8s.core.v1.SysctlArgs(name="net.ipv4.ip_local_port_range", value=f"{COLLECTIVE_PORTS[0]} {COLLECTIVE_PORTS[1]}")]
        spec["securityContext"] = pod
    return spec


def job_spec(model: str, pod: dict[str, Any], cfg: TrainingConfig, ttl: bool = False) -> dict[str, Any]:
    """One run. Created suspended: Kueue admits it (all workers at once) when the stack's quota has
    room, and suspends it again to preempt it for a higher-priority run (it resumes from its
    checkpoint). Several workers: an Indexed Job, pod i is worker i, worker 0 the chief."""
    workers: dict[str, Any] = {}
    if cfg.workers > 1:
        workers = {"completionMode": "Indexed", "completions": cfg.workers, "parallelism": cfg.workers}
    return {
        "suspend": True,
        **workers,
        # A lost worker makes every worker exit and restart together: up to 4 such restarts per run.
        "backoffLimit": 4 * cfg.workers,
        "activeDeadlineSeconds": cfg.active_deadline_seconds,
        # Only the CronJob's runs expire. The Job Pulumi manages must not: once the TTL deleted it, the
        # next `pulumi refresh` + `up` would recreate it, an unplanned retrain (issue 29). A config change
        # renames the Job (its hash), and Pulumi deletes the old one then.
        **({"ttlSecondsAfterFinished": TTL_SECONDS} if ttl else {}),
        "podFailurePolicy": {
            "rules": [
                # A failed gate or bad data fails the same way on every retry: stop now.
                {"action": "FailJob", "onExitCodes": {"containerName": "train", "operator": "In", "values": NON_RETRYABLE_EXIT_CODES}},
                # Spot reclaim / drain / preemption: retry without counting against backoffLimit;
                # the new pod resumes from the last epoch checkpoint.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]
        },
        "template": {"metadata": {"labels": labels(model)}, "spec": pod},
    }


def cron_spec(model: str, pod: dict[str, Any], cfg: TrainingConfig) -> dict[str, Any]:
    """Scheduled retraining: one run at a time, queued behind pipeline runs and experiments."""
    return {
        "schedule": cfg.schedule,
        "concurrencyPolicy": "Forbid",  # never two runs competing for GPUs
        "startingDeadlineSeconds": 3600,
        "successfulJobsHistoryLimit": 3,
        "failedJobsHistoryLimit": 3,
        # Scheduled retraining yields to pipeline runs and experiments in the queue.
        "jobTemplate": {
            "metadata": {"labels": {**labels(model), **kueue.job_labels("scheduled")}},
            "spec": job_spec(model, pod, cfg, ttl=True),
        },
    }


def network_policies(model: str, cfg: TrainingConfig) -> dict[str, dict[str, Any]]:
    """role -> NetworkPolicy spec. Egress: S3 / Keras' dataset download over HTTPS (never the metadata
    service) and, in-cluster, the model store (MinIO) and the Pushgateway. A multi-worker run's
    workers reach each other on the worker port and the collectives' range, and nothing else does."""
    selector = {"podSelector": {"matchLabels": labels(model)}}
    worker_port = [
        {"protocol": "TCP", "port": WORKER_PORT},
        {"protocol": "TCP", "port": COLLECTIVE_PORTS[0], "endPort": COLLECTIVE_PORTS[1]},
    ]
    peers = [{"to": [selector], "ports": worker_port}] if cfg.workers > 1 else []
    out = {"egress": {**selector, "policyTypes": ["Egress"], "egress": [*workload.egress(workload.STORE_PORT, 9091), *peers]}}
    if cfg.workers > 1:
        out["workers"] = {**selector, "policyTypes": ["Ingress"], "ingress": [{"from": [selector], "ports": worker_port}]}
    return out


@dataclass
class TrainingJobArgs:
    model: str  # the catalogue name: object names, labels, the store prefix
    namespace: str
    image: pulumi.Input[str]
    config: TrainingConfig
    store: ArtifactStore
    gpu_nodes: bool  # the stack has GPU pools (taint + label to target)
    pushgateway: str | None = None
    # The stack's Kueue: the Job waits for its queue objects (a suspended Job nobody admits never runs).
    queue: kueue.Kueue | None = None
    # "candidate" where new versions reach traffic through a canary (Argo Rollouts): a run, scheduled
    # or not, never writes the champion; "champion": it serves at once (no canary on the stack).
    publish_as: str = "champion"


def _meta(args: TrainingJobArgs, name: str) -> k8s.meta.v1.ObjectMetaArgs:
    return k8s.meta.v1.ObjectMetaArgs(name=name, namespace=args.namespace, labels=labels(args.model))


class TrainingJob(pulumi.ComponentResource):
    """The run (``_runs``: the Job and, with a schedule, the CronJob), a multi-worker run's headless
    Service (``_workers``) and the NetworkPolicies (``_guards``, ``network_policies``)."""

    job_name: pulumi.Output[str]

    def __init__(self, name: str, args: TrainingJobArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlplatform:training_job:TrainingJob", name, None, opts)
        cfg, store, model = args.config, args.store, args.model
        # Training never talks to the Kubernetes API; it writes models and checkpoints to the store.
        # Writes only its own model's versions and checkpoints; reads the bucket (its data may be anywhere in it).
        sa = store_service_account(
            self, name, store, args.namespace, object_name(model), labels(model), write=True, prefixes=store_prefixes(model), read_all=True
        )
        self.job_name = pulumi.Output.from_input(args.image).apply(lambda image: run_name(model, image, cfg))
        if cfg.workers > 1:
            self._workers(name, args)
        self.job = self._runs(name, args, sa)
        self._guards(name, args)
        self.register_outputs({"job_name": self.job_name})

    def _runs(self, name: str, args: TrainingJobArgs, sa: pulumi.Resource) -> k8s.batch.v1.Job:
        """The pipeline's run now (``job_name``) and, with a schedule, the CronJob of later ones; both
        wait for the service account and the Kueue objects that admit them."""
        cfg, model = args.config, args.model
        store_env = client_env(args.store)
        pod = pulumi.Output.all(args.image, args.store.uri).apply(
            lambda a: pod_spec(model, a[0], cfg, a[1], store_env, args.pushgateway, args.gpu_nodes, args.publish_as)
        )
        after = pulumi.ResourceOptions(parent=self, depends_on=[sa, *(args.queue.objects if args.queue else [])])
        job = k8s.batch.v1.Job(
            f"{name}-job",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=self.job_name,
                namespace=args.namespace,
                labels={**labels(model), **kueue.job_labels("pipeline")},
                # Foreground: destroy (which deletes this before Kueue) waits until the run's pods and
                # Workload are gone, so Kueue is still there to release its finalizer (kueue.FOREGROUND).
                annotations={"pulumi.com/skipAwait": "true", **kueue.FOREGROUND},
            ),
            spec=pod.apply(lambda p: job_spec(model, p, cfg)),
            # Kueue owns spec.suspend once the Job exists (admits: false; preempts: true): re-applying
            # our `true` after a refresh would conflict under server-side apply or stop a running run.
            opts=pulumi.ResourceOptions.merge(after, pulumi.ResourceOptions(ignore_changes=["spec.suspend"])),
        )
        if cfg.schedule:
            # Foreground too: deleting it takes its runs (and their Workloads) while Kueue still runs.
            meta = k8s.meta.v1.ObjectMetaArgs(
                name=object_name(model), namespace=args.namespace, labels=labels(model), annotations=dict(kueue.FOREGROUND)
            )
            k8s.batch.v1.CronJob(f"{name}-cron", metadata=meta, spec=pod.apply(lambda p: cron_spec(model, p, cfg)), opts=after)
        return job

    def _workers(self, name: str, args: TrainingJobArgs) -> None:
        """The headless Service that gives a multi-worker run's pods their DNS names."""
        k8s.core.v1.Service(
            f"{name}-workers",
            metadata=_meta(args, workers_service(args.model)),
            spec={
                "clusterIP": "None",
                "selector": labels(args.model),
                # Workers look each other up before any of them is ready.
                "publishNotReadyAddresses": True,
                "ports": [{"name": "worker", "port": WORKER_PORT, "targetPort": WORKER_PORT, "protocol": "TCP"}],
            },
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _guards(self, name: str, args: TrainingJobArgs) -> None:
        for role, spec in network_policies(args.model, args.config).items():
            k8s.networking.v1.NetworkPolicy(
                f"{name}-{role}",
                metadata=_meta(args, f"{object_name(args.model)}-{role}"),
                spec=spec,
                opts=pulumi.ResourceOptions(parent=self),
            )
