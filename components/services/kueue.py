"""Kueue: who gets the GPUs. Every training run waits in one queue per stack, within a quota taken from
the GPU pools' capacity, in priority order (a pipeline's run before an experiment before a scheduled
retrain), and a lower-priority run is preempted (it resumes from its checkpoint) rather than a
higher-priority one waiting behind it.

Kueue is the engine of record (kubernetes-sigs/kueue, chart and CRDs v0.19.2); this module only
renders its objects from the stack config. Shapes follow the v1beta2 CRDs in
../shared/reference/crds/ (the tests validate every object against them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import yaml

from components.cluster.gpu_pools import GPU_RESOURCE, GPU_TAINT_KEY, POOL_LABEL
from components.config import GpuPool
from components.lib import helm
from components.lib.network import egress_except_metadata

API_VERSION = "kueue.x-k8s.io/v1beta2"
VERSION = "v0.19.2"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
LOCAL_QUEUE = "training"
CLUSTER_QUEUE = "mlplatform"
# EKS sets this label on every managed node: the flavor of a spot pool is visibly a spot flavor.
CAPACITY_TYPE_LABEL = "eks.amazonaws.com/capacityType"
# The CPU/memory flavor: no node labels, so it adds no placement of its own.
DEFAULT_FLAVOR = "default"

# Who yields to whom. A pipeline's run is someone waiting on a merge; an engineer's experiment is
# interactive; a scheduled retrain can wait hours without anyone noticing.
PRIORITIES: dict[str, tuple[int, str]] = {
    "pipeline": (1000, "Runs started by the CI/CD pipeline for a change on main: someone waits on them."),
    "experiment": (500, "Runs an engineer started by hand."),
    "scheduled": (100, "Scheduled retraining (CronJob): yields to everything else, preempted first."),
}


def flavor_name(pool: GpuPool) -> str:
    return f"gpu-{pool.name}"


def resource_flavors(pools: list[GpuPool]) -> list[dict[str, Any]]:
    """One ResourceFlavor per GPU pool (its node label, capacity type and GPU taint), and the default
    flavor for CPU and memory."""
    flavors = [{"apiVersion": API_VERSION, "kind": "ResourceFlavor", "metadata": {"name": DEFAULT_FLAVOR}, "spec": {}}]
    for pool in pools:
        flavors.append(
            {
                "apiVersion": API_VERSION,
                "kind": "ResourceFlavor",
                "metadata": {"name": flavor_name(pool), "labels": {"mlplatform.io/capacity-type": pool.capacity_type.lower()}},
                "spec": {
                    # Kueue adds these to the admitted pods' nodeSelector: the run lands on this pool.
                    "nodeLabels": {POOL_LABEL: pool.name, CAPACITY_TYPE_LABEL: pool.capacity_type},
                    # Only pods that tolerate the GPU taint are given this flavor.
                    "nodeTaints": [{"key": GPU_TAINT_KEY, "value": "true", "effect": "NoSchedule"}],
                },
            }
        )
    return flavors


def pool_gpus(pool: GpuPool) -> int:
    """GPUs the pool can hold at its maximum size."""
    return pool.max * pool.gpus_per_node


def gpu_quotas(pools: list[GpuPool], quota: int | None = None, reserved: dict[str, int] | None = None) -> dict[str, int]:
    """Nominal GPU quota per pool flavor: the pool's capacity less what LLM serving may hold there
    (``reserved``), or a configured stack-wide lower quota given to the pools in order (the first
    pool listed is the preferred one)."""
    out, left = {}, quota
    for pool in pools:
        cap = max(0, pool_gpus(pool) - (reserved or {}).get(pool.name, 0))
        out[flavor_name(pool)] = cap if left is None else min(cap, left)
        if left is not None:
            left -= out[flavor_name(pool)]
    return out


@dataclass(frozen=True)
class QueueQuota:
    gpus: int | None = None  # None: the pools' capacity
    cpu: str = "32"
    memory: str = "128Gi"
    reserved: dict[str, int] = field(default_factory=dict)  # pool -> GPUs LLM serving may hold


def cluster_queue(name: str, namespace: str, pools: list[GpuPool], quota: QueueQuota) -> dict[str, Any]:
    groups: list[dict[str, Any]] = [
        {
            "coveredResources": ["cpu", "memory"],
            "flavors": [
                {
                    "name": DEFAULT_FLAVOR,
                    "resources": [{"name": "cpu", "nominalQuota": quota.cpu}, {"name": "memory", "nominalQuota": quota.memory}],
                }
            ],
        }
    ]
    if pools:
        groups.append(
            {
                "coveredResources": [GPU_RESOURCE],
                # Flavor order is preference: the first pool listed (usually spot) is tried first.
                "flavors": [
                    {"name": flavor, "resources": [{"name": GPU_RESOURCE, "nominalQuota": gpus}]}
                    for flavor, gpus in gpu_quotas(pools, quota.gpus, quota.reserved).items()
                ],
            }
        )
    return {
        "apiVersion": API_VERSION,
        "kind": "ClusterQueue",
        "metadata": {"name": name},
        "spec": {
            # Only the training namespace may submit to this queue.
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            # A big run at the head does not block small runs that fit behind it.
            "queueingStrategy": "BestEffortFIFO",
            "resourceGroups": groups,
            # A higher-priority run evicts lower-priority ones (they checkpoint on SIGTERM and resume
            # when readmitted); equal priorities never preempt each other.
            "preemption": {"withinClusterQueue": "LowerPriority", "reclaimWithinCohort": "Never"},
        },
    }


def local_queue(namespace: str, cluster_queue_name: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "LocalQueue",
        "metadata": {"name": LOCAL_QUEUE, "namespace": namespace},
        "spec": {"clusterQueue": cluster_queue_name},
    }


def priority_classes() -> list[dict[str, Any]]:
    return [
        {"apiVersion": API_VERSION, "kind": "WorkloadPriorityClass", "metadata": {"name": name}, "value": value, "description": why}
        for name, (value, why) in PRIORITIES.items()
    ]


def job_labels(priority: str) -> dict[str, str]:
    """Labels that submit a Job/JobSet to the stack's queue (the Job must be created suspended)."""
    if priority not in PRIORITIES:
        raise ValueError(f"unknown priority class {priority!r} (one of {', '.join(PRIORITIES)})")
    return {QUEUE_LABEL: LOCAL_QUEUE, PRIORITY_LABEL: priority}


def manager_config() -> dict[str, Any]:
    """Kueue's Configuration (config.kueue.x-k8s.io/v1beta2), the chart's controllerManagerConfigYaml."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "health": {"healthProbeBindAddress": ":8081"},
        "metrics": {"bindAddress": ":8443"},
        "webhook": {"port": 9443},
        "leaderElection": {"leaderElect": True, "resourceName": "c1f6bfd2.kueue.x-k8s.io"},
        # All-or-nothing for multi-worker runs: a run whose workers do not all start within the timeout
        # gives its quota back and is requeued, instead of holding GPUs while waiting for its peers.
        # 15 min covers a GPU node scaled up from zero. (In the v1beta2 Configuration the block's
        # presence enables it: the chart's default documents no `enable` key any more.)
        "waitForPodsReady": {
            "timeout": "15m",
            "blockAdmission": False,
            "requeuingStrategy": {"timestamp": "Eviction", "backoffBaseSeconds": 60, "backoffMaxSeconds": 3600},
        },
        # Only what we submit: Jobs (CronJob runs included) and JobSets.
        "integrations": {"frameworks": ["batch/job", "jobset.x-k8s.io/jobset"]},
        # Only Jobs that name a queue (QUEUE_LABEL) get a Workload and Kueue's finalizers; any other
        # Job in the cluster is none of Kueue's business, and cannot be left holding its finalizers
        # once Kueue is gone. (Kueue's default; explicit because the destroy order below relies on it.)
        "manageJobsWithoutQueueName": False,
    }


def chart_values(monitoring: bool) -> dict[str, Any]:
    return {
        "controllerManager": {
            "manager": {
                # The values.yaml at the tag points at the staging registry; the published chart
                # rewrites it to the release (kueue hack/helm-chart-package.sh). Pin the release here.
                "image": {"repository": "registry.k8s.io/kueue/kueue", "tag": VERSION, "pullPolicy": "IfNotPresent"},
                "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
            },
        },
        "managerConfig": {"controllerManagerConfigYaml": yaml.safe_dump(manager_config(), sort_keys=False)},
        # A ServiceMonitor for Kueue's metrics (queue alerts and the training dashboard read them).
        "enablePrometheus": monitoring,
    }


VISIBILITY_PORT = 8082


def network_policy(namespace: str) -> dict[str, Any]:
    """The controller: its webhook (:9443) and its visibility API server (:8082, behind the chart's
    v1beta1.visibility.kueue.x-k8s.io APIService: kueue config/components/visibility/service.yaml,
    targetPort 8082; not in the pinned chart's values.yaml, so unverified here) are called by the API
    server (from outside the pod network on EKS), Prometheus scrapes :8443, and it talks to the API
    server. Without :8082 the APIService stays unavailable, and API discovery reports it failing."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "kueue-controller", "namespace": namespace},
        "spec": {
            "podSelector": {"matchLabels": {"control-plane": "controller-manager"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"ports": [{"protocol": "TCP", "port": p} for p in (9443, VISIBILITY_PORT, 8443)]}],
            "egress": [egress_except_metadata(443, 6443)],
        },
    }


# Kueue keeps a finalizer on each Workload (kueue.x-k8s.io/resource-in-use) and removes it only while
# its controller runs. The runs Pulumi manages (the pipeline's Job, the retraining CronJob) depend on
# the queue objects, so destroy deletes them before Kueue, with foreground propagation: the engine's
# delete returns once their Jobs, pods and Workloads are gone. A run started by hand (an experiment)
# is owned by RUNS_OWNER (``runs_owner_reference``): destroy deletes that ConfigMap, foreground, before
# Kueue too, and Kubernetes' garbage collector takes every run it owns with it.
RUNS_OWNER = "training-runs"
FOREGROUND = {"pulumi.com/deletionPropagationPolicy": "foreground"}


def runs_owner(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": RUNS_OWNER, "namespace": namespace, "annotations": dict(FOREGROUND)},
        "data": {
            "purpose": "owner of queued training runs started outside Pulumi (experiments): "
            "destroy deletes it, foreground, while Kueue still runs, and the runs go with it"
        },
    }


def runs_owner_reference(uid: str) -> dict[str, Any]:
    """The ``ownerReferences`` entry a hand-started run (an experiment Job) carries: its UID is the
    ConfigMap's (``kubectl -n <training ns> get configmap training-runs -o jsonpath='{.metadata.uid}'``).
    blockOwnerDeletion: a foreground delete of the owner waits for the run."""
    return {"apiVersion": "v1", "kind": "ConfigMap", "name": RUNS_OWNER, "uid": uid, "blockOwnerDeletion": True}


def kubernetes_object(name: str, obj: dict[str, Any], opts: pulumi.ResourceOptions) -> pulumi.CustomResource:
    """Any object of a custom kind, as written. (``apiextensions.CustomResource`` in Python takes only a
    ``spec``; a WorkloadPriorityClass keeps its fields at the top level.) The type token is the one
    the Kubernetes provider gives every custom kind: ``kubernetes:<apiVersion>:<kind>``."""
    return pulumi.CustomResource(f"kubernetes:{obj['apiVersion']}:{obj['kind']}", name, dict(obj), opts)


@dataclass
class KueueArgs:
    namespace: str  # Kueue's own (platform.NAMESPACES["queue"])
    training_namespace: str
    gpu_pools: list[GpuPool] = field(default_factory=list)
    quota: QueueQuota = field(default_factory=QueueQuota)
    # The kube-prometheus-stack release (the ServiceMonitor CRD), when monitoring is on.
    monitoring_release: pulumi.Resource | None = None


class Kueue(pulumi.ComponentResource):
    """The chart, one ClusterQueue for the stack, the training namespace's LocalQueue, flavors and
    priority classes. ``queue_labels(priority)`` is what a training Job carries."""

    cluster_queue_name: str

    def __init__(self, name: str, args: KueueArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlplatform:kueue:Kueue", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        mon = args.monitoring_release
        self.release = helm.release(
            f"{name}-release",
            "kueue",
            args.namespace,
            chart_values(monitoring=mon is not None),
            pulumi.ResourceOptions(parent=self, depends_on=[mon] if mon else []),
        )
        policy = network_policy(args.namespace)
        k8s.networking.v1.NetworkPolicy(f"{name}-netpol", metadata=policy["metadata"], spec=policy["spec"], opts=child)
        self.cluster_queue_name = CLUSTER_QUEUE
        objs = [
            *resource_flavors(args.gpu_pools),
            *priority_classes(),
            cluster_queue(CLUSTER_QUEUE, args.training_namespace, args.gpu_pools, args.quota),
            local_queue(args.training_namespace, CLUSTER_QUEUE),
        ]
        # The CRDs come with the release: the queue objects wait for it.
        after_release = pulumi.ResourceOptions(parent=self, depends_on=[self.release])
        self.objects = [kubernetes_object(f"{name}-{o['kind'].lower()}-{o['metadata']['name']}", o, after_release) for o in objs]
        owner = runs_owner(args.training_namespace)
        self.runs_owner = k8s.core.v1.ConfigMap(
            f"{name}-runs-owner",
            metadata=owner["metadata"],
            data=owner["data"],
            # After the queue objects (and so the release): destroy deletes it, and the runs it owns, first.
            opts=pulumi.ResourceOptions(parent=self, depends_on=self.objects),
        )
        self.register_outputs({"cluster_queue": self.cluster_queue_name})
