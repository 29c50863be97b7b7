"""Will the first ``pulumi up`` converge, and will ``destroy`` leave nothing behind? An offline check.

No Pulumi engine and no Kubernetes API can run here (design.md, "What runs for real" 5c), so this
module applies the pinned providers' await and delete rules to what the mock engine records: every
registration's dependencies (``depends_on`` and property dependencies, components already expanded
to their custom children by the SDK), its provider, its options (ignore_changes, customTimeouts,
protect, retainOnDelete) and its inputs, which for Kubernetes objects are the rendered manifests.
It is pure: ``check(records)`` returns findings, one line each, naming the resource's URN.

The engine semantics it encodes (pulumi-kubernetes 4.34.2 as pinned in requirements.txt; the source
files are cited from memory of that provider's tree, not re-read here: no network in this workplace,
so every citation below is UNVERIFIED against the exact tag):

* ``provider/pkg/await/awaiters.go`` maps built-in kinds to await logic; Deployment, StatefulSet,
  DaemonSet, Job, Pod, Service, PersistentVolume(Claim) and Ingress are awaited, each with a default
  create timeout of 10 minutes (PV/PVC: 5); custom resources (Argo Rollout, ScaledObject, Gateway,
  HTTPRoute, ...) are not awaited unless annotated ``pulumi.com/waitFor``.
* ``provider/pkg/await/service.go``: a Service with a selector that is neither headless
  (``clusterIP: None``) nor ``ExternalName`` is ready only once its Endpoints have a subset, i.e. a
  ready pod it selects; a ``LoadBalancer`` Service also needs ``status.loadBalancer.ingress``.
* ``pulumi.com/skipAwait: "true"`` on any object skips its await (the object is created and the
  engine moves on).
* Deployments/StatefulSets are awaited until their ready replicas match ``spec.replicas`` (0 is
  ready at once); a Job until it completes (our training Jobs skip it: they run for hours).
* ``kubernetes:helm.sh/v3:Release`` with ``atomic`` implies Helm's ``--wait``: every Deployment,
  StatefulSet, DaemonSet, PVC (Bound), Service and Job hook of the chart must be ready within
  ``timeout`` or the release is rolled back (uninstalled on a first install) and the ``up`` fails.
* The engine creates a resource after everything it depends on (its provider included), and on
  ``destroy`` deletes it before them: "destroy order is reverse dependency order". An object that
  needs a node, a CSI driver or a controller to be deleted cleanly (volumes, finalizers) must
  therefore depend on it, directly or through its provider.

What it cannot see (say so where a finding or a pass is quoted):

* inside Helm charts and remote components (``eks:index:Cluster``): their own objects are one
  opaque record; persistence in chart values is recognised by the two shapes the charts we pin use
  (``persistence``/``persistentVolume`` with ``enabled``, and ``volumeClaimTemplate``);
* the cluster itself: an existing cluster's (``cluster.kind: kubeconfig``) StorageClasses and
  node capacity are unknown (a default class is assumed, as kind and minikube have one), and the EKS
  node capacity comes from a small instance table with the EKS AMI's reservation formula and a
  fixed allowance for the system DaemonSets: an estimate, not the scheduler;
* time: a race is reported where an awaited object's readiness depends on something it does not wait
  for (its clock starts before its pods' creator), whether or not that race would usually be won;
* controllers' behaviour beyond the fields listed in ``CONTROLLER_FIELDS`` below, and anything done
  outside Pulumi (runs started by hand without the training-runs ownerReference; see rule h).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

SKIP_AWAIT = "pulumi.com/skipAwait"
PATCH_FORCE = "pulumi.com/patchForce"
# pulumi-kubernetes' delete option (annotation): "foreground" makes the provider's delete return only
# once the API server has removed the object, i.e. after the garbage collector removed every dependent
# with blockOwnerDeletion (Kubernetes docs, "Garbage collection", foreground cascading deletion).
DELETE_PROPAGATION = "pulumi.com/deletionPropagationPolicy"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# The ConfigMap that owns training runs started by hand (components/services/kueue.py RUNS_OWNER).
RUNS_OWNER = "training-runs"
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"
AWAIT_DEFAULT_S = 600  # awaiters.go: 10 minutes for every awaited kind we create
GPU_RESOURCE = "nvidia.com/gpu"
# Scale-from-zero of a GPU node group: cluster-autoscaler's scan (10 s) and scale-up decision, the EC2
# launch, boot, kubelet join and the device plugin advertising the GPUs: AWS's EKS best-practices
# guide quotes "a few minutes"; 5 minutes is the figure this check budgets (an estimate).
NODE_SCALE_UP_S = 300
# API group of a custom resource -> the chart whose release installs its CRD and runs its controller
# (the finalizers on these objects are removed only by that controller).
CRD_CHARTS = {
    "keda.sh": "keda",
    "kueue.x-k8s.io": "kueue",
    "argoproj.io": "argo-rollouts",
    "monitoring.coreos.com": "kube-prometheus-stack",
    "gateway.networking.k8s.io": "gateway-helm",
    "gateway.envoyproxy.io": "gateway-helm",
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "Rollout", "ReplicaSet"}
AWAITED_WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
# vCPU, GiB of the system node instance types the stacks use (AWS's instance type pages).
INSTANCE_SIZES = {
    **{f"{family}.large": (2, 8) for family in ("m5", "m6i", "m6a", "m7i")},
    **{f"{family}.xlarge": (4, 16) for family in ("m5", "m6i", "m6a", "m7i")},
    **{f"{family}.2xlarge": (8, 32) for family in ("m5", "m6i", "m6a", "m7i")},
    **{f"{family}.4xlarge": (16, 64) for family in ("m5", "m6i", "m6a", "m7i")},
}
# Max pods per node with the VPC CNI (eni-max-pods.txt in amazon-eks-ami) for those sizes.
MAX_PODS = {2: 29, 4: 58, 8: 58, 16: 234}
# What the system DaemonSets (aws-node, kube-proxy, ebs-csi-node, node-exporter) request per node.
DAEMONSET_CPU_M, DAEMONSET_MEMORY_MI = 250, 400


@dataclass(frozen=True)
class Finding:
    rule: str
    urn: str
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.urn}: {self.message}"


@dataclass
class Facts:
    """What the check knows about the target cluster, derived from the records (``facts_of``)."""

    eks: bool
    load_balancer: bool  # a cloud load-balancer implementation exists (EKS: the in-tree AWS provider)
    default_class: bool  # a StorageClass is marked default (an existing cluster: assumed)
    classes: set[str] = field(default_factory=set)
    system_nodes: list[Any] = field(default_factory=list)  # the system node group records


def manifest(record: Any) -> dict[str, Any]:
    return record.raw if isinstance(record.raw, dict) else {}


def kind(record: Any) -> str:
    return record.type.rsplit(":", 1)[-1] if record.type.startswith("kubernetes:") else ""


def annotations(record: Any) -> dict[str, str]:
    return (manifest(record).get("metadata") or {}).get("annotations") or {}


def namespace(record: Any) -> str:
    return (manifest(record).get("metadata") or {}).get("namespace") or manifest(record).get("namespace") or ""


def skips_await(record: Any) -> bool:
    if record.type == "kubernetes:helm.sh/v3:Release":
        return bool(manifest(record).get("skipAwait")) and not manifest(record).get("atomic")
    return str(annotations(record).get(SKIP_AWAIT, "")).lower() == "true"


def chart(record: Any) -> str:
    return str(manifest(record).get("chart", "")).rsplit("/", 1)[-1] if record.type == "kubernetes:helm.sh/v3:Release" else ""


def duration_s(value: str | None, default: int = AWAIT_DEFAULT_S) -> int:
    """A Go duration as Pulumi's customTimeouts take it ("30m", "1h30m", "600s") in seconds."""
    if not value:
        return default
    units = {"h": 3600, "m": 60, "s": 1}
    return int(sum(float(n) * units[u] for n, u in re.findall(r"([0-9.]+)([hms])", value)))


class Graph:
    """Dependencies as the engine sees them: depends_on (and property dependencies) plus the provider."""

    def __init__(self, records: Iterable[Any]):
        self.records = list(records)
        self.by_urn = {r.urn: r for r in self.records}
        self._up: dict[str, set[str]] = {}

    def direct(self, record: Any) -> set[str]:
        deps = set(record.depends_on)
        if record.provider:
            deps.add(record.provider.rsplit("::", 1)[0])  # "<urn>::<id>"
        return deps

    def upstream(self, urn: str) -> set[str]:
        """Everything ``urn`` waits for on create (and outlives on destroy), transitively."""
        if urn in self._up:
            return self._up[urn]
        seen: set[str] = set()
        stack = [urn]
        while stack:
            record = self.by_urn.get(stack.pop())
            for dep in self.direct(record) if record else ():
                if dep not in seen:
                    seen.add(dep)
                    stack.append(dep)
        self._up[urn] = seen
        return seen

    def waits_for(self, record: Any, other: Any) -> bool:
        return other.urn in self.upstream(record.urn)


def facts_of(records: Iterable[Any]) -> Facts:
    records = list(records)
    eks = any(r.type == "eks:index:Cluster" for r in records)
    classes = [r for r in records if r.type == "kubernetes:storage.k8s.io/v1:StorageClass"]
    default = any(str(annotations(c).get(DEFAULT_CLASS_ANNOTATION, "")).lower() == "true" for c in classes)
    system = [
        r
        for r in records
        if r.type == "aws:eks/nodeGroup:NodeGroup" and not manifest(r).get("taints") and GPU_RESOURCE not in str(manifest(r).get("labels"))
    ]
    return Facts(
        eks=eks,
        load_balancer=eks,
        default_class=default or not eks,
        classes={(manifest(c).get("metadata") or {}).get("name", "") for c in classes},
        system_nodes=system,
    )


def check(records: Iterable[Any], facts: Facts | None = None) -> list[Finding]:
    """Every finding of every rule, sorted (rule, URN)."""
    records = list(records)
    facts = facts or facts_of(records)
    graph = Graph(records)
    found: list[Finding] = []
    for rule in RULES:
        found += rule(graph, facts)
    return sorted(set(found), key=lambda f: (f.rule, f.urn, f.message))


# ---------------------------------------------------------------- pods and their creators


def template(record: Any) -> dict[str, Any]:
    return (manifest(record).get("spec") or {}).get("template") or {}


def pod_labels(record: Any) -> dict[str, str]:
    return (template(record).get("metadata") or {}).get("labels") or {}


def replicas(record: Any) -> int:
    spec = manifest(record).get("spec") or {}
    if kind(record) == "Job":
        return 0 if spec.get("suspend") else int(spec.get("parallelism", 1))
    return int(spec.get("replicas", 1))


def workloads(graph: Graph) -> list[Any]:
    return [r for r in graph.records if r.custom and kind(r) in WORKLOAD_KINDS]


def pod_creators(graph: Graph, selector: dict[str, str], ns: str) -> list[Any]:
    """The records whose pods carry every label of ``selector`` in namespace ``ns``; for Envoy
    Gateway's proxies (labelled with their Gateway, envoyproxy/gateway v1.9.0
    internal/infrastructure/kubernetes/proxy/resource.go) the Gateway object they are made for."""
    found = [w for w in workloads(graph) if namespace(w) == ns and selector.items() <= pod_labels(w).items()]
    gw_name = selector.get("gateway.envoyproxy.io/owning-gateway-name")
    if gw_name:
        found += [
            r
            for r in graph.records
            if kind(r) == "Gateway" and (manifest(r).get("metadata") or {}).get("name") == gw_name and namespace(r) == ns
        ]
    return found


def _ready_source(graph: Graph, service: Any, creator: Any) -> bool:
    """``creator``'s pods are there (or being made by a running controller) before ``service``'s
    clock starts: ``service`` waits for it, and it is awaited ready with replicas, or it is a Gateway
    whose controller's release (awaited by Helm) the Service also waits for."""
    if not graph.waits_for(service, creator):
        return False
    if kind(creator) == "Gateway":
        return any(chart(graph.by_urn[u]) == "gateway-helm" for u in graph.upstream(service.urn) if u in graph.by_urn)
    return kind(creator) in AWAITED_WORKLOADS and not skips_await(creator) and replicas(creator) > 0


def rule_service_await(graph: Graph, facts: Facts) -> Iterator[Finding]:
    """(a) An awaited Service whose Endpoints can fill only through what waits on it (a deadlock), or
    through what it does not wait for (its 10 minutes run before its pods can exist)."""
    for svc in graph.records:
        spec = manifest(svc).get("spec") or {}
        if kind(svc) != "Service" or not svc.custom or skips_await(svc):
            continue
        selector = spec.get("selector") or {}
        if not selector or spec.get("clusterIP") == "None" or spec.get("type") == "ExternalName":
            continue  # service.go: no selector, headless and ExternalName Services are not awaited on Endpoints
        creators = pod_creators(graph, selector, namespace(svc))
        blocked = [c for c in creators if graph.waits_for(c, svc)]
        if blocked:
            names = ", ".join(sorted(c.name for c in blocked))
            yield Finding("a", svc.urn, f"deadlock: awaited until its Endpoints have a pod, but {names} (their only source) wait for it")
        elif not creators:
            yield Finding("a", svc.urn, "selects pods nothing in this program creates: awaited 10 min for Endpoints that never come")
        elif not any(_ready_source(graph, svc, c) for c in creators):
            names = ", ".join(sorted(c.name for c in creators))
            yield Finding(
                "a",
                svc.urn,
                f"race: its 10-minute await starts before its pods' source ({names}) is ready (annotate {SKIP_AWAIT} or depend on it)",
            )


# ---------------------------------------------------------------- storage


def claims(record: Any) -> Iterator[tuple[str, str | None]]:
    """(where, storageClassName or None) of every volume claim ``record`` makes: a PVC, a
    StatefulSet's volumeClaimTemplates, a chart's persistence values."""
    m = manifest(record)
    if kind(record) == "PersistentVolumeClaim":
        yield "spec", (m.get("spec") or {}).get("storageClassName")
    elif kind(record) == "StatefulSet":
        for i, t in enumerate((m.get("spec") or {}).get("volumeClaimTemplates") or []):
            yield f"spec.volumeClaimTemplates[{i}]", (t.get("spec") or {}).get("storageClassName")
    elif record.type == "kubernetes:helm.sh/v3:Release":
        yield from _value_claims(m.get("values") or {}, "values")


def _value_claims(node: Any, path: str) -> Iterator[tuple[str, str | None]]:
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        sub = f"{path}.{key}"
        if key == "volumeClaimTemplate" and isinstance(value, dict):
            yield sub, (value.get("spec") or {}).get("storageClassName")
        elif key in ("persistence", "persistentVolume") and isinstance(value, dict) and value.get("enabled"):
            yield sub, value.get("storageClass") or value.get("storageClassName")
        else:
            yield from _value_claims(value, sub)


def rule_storage_class(graph: Graph, facts: Facts) -> Iterator[Finding]:
    """(b) A claim with no class on a cluster without a default class (EKS >= 1.30 creates none), or
    naming a class nothing creates: Pending forever, and an atomic release that waits on it rolls back."""
    if not facts.eks:
        return
    for record in graph.records:
        for where, cls in claims(record):
            if cls is None and not facts.default_class:
                yield Finding("b", record.urn, f"{where}: a volume claim with no storageClassName on EKS with no default StorageClass")
            elif cls is not None and cls not in facts.classes:
                yield Finding("b", record.urn, f"{where}: storageClassName {cls!r} is not a StorageClass this program creates")


# ---------------------------------------------------------------- load balancers


def rule_load_balancer(graph: Graph, facts: Facts) -> Iterator[Finding]:
    """(c) An awaited LoadBalancer Service where no controller assigns addresses (kind, bare clusters):
    service.go waits for status.loadBalancer.ingress for 10 minutes, then fails the `up`."""
    if facts.load_balancer:
        return
    for svc in graph.records:
        if kind(svc) == "Service" and (manifest(svc).get("spec") or {}).get("type") == "LoadBalancer" and not skips_await(svc):
            yield Finding("c", svc.urn, "type LoadBalancer awaited on a cluster with no load-balancer implementation")


# ---------------------------------------------------------------- nodes and GPUs


def containers(record: Any) -> list[dict[str, Any]]:
    return (template(record).get("spec") or {}).get("containers") or []


def pod_request(record: Any, resource: str) -> float:
    from components.config.capacity import cpu_cores, memory_mib

    total = 0.0
    for c in containers(record):
        value = ((c.get("resources") or {}).get("requests") or {}).get(resource)
        if value is None:
            continue
        total += {"cpu": cpu_cores, "memory": memory_mib}.get(resource, float)(str(value))
    return total


def startup_allowance_s(record: Any) -> int:
    """The longest any container's startup probe lets it take (periodSeconds x failureThreshold)."""
    probes = [c.get("startupProbe") or {} for c in containers(record)]
    return max((int(p.get("periodSeconds", 10)) * int(p.get("failureThreshold", 3)) for p in probes if p), default=0)


def gpu_pool_of(graph: Graph, record: Any) -> Any | None:
    selector = (template(record).get("spec") or {}).get("nodeSelector") or {}
    for ng in graph.records:
        labels = manifest(ng).get("labels") or {}
        if ng.type == "aws:eks/nodeGroup:NodeGroup" and selector and selector.items() <= labels.items():
            return ng
    return None


def rule_gpu_capacity(graph: Graph, facts: Facts) -> Iterator[Finding]:
    """(d) An awaited GPU workload must wait for what gives it a GPU (its pool, the autoscaler where
    the pool starts at 0, the device plugin) and allow the scale-up and its startup in its timeout."""
    for w in workloads(graph):
        if kind(w) not in AWAITED_WORKLOADS or skips_await(w) or replicas(w) < 1 or pod_request(w, GPU_RESOURCE) < 1:
            continue
        up = graph.upstream(w.urn)
        charts = {chart(graph.by_urn[u]) for u in up if u in graph.by_urn}
        missing = [] if charts & {"nvidia-device-plugin", "gpu-operator"} else ["the NVIDIA device plugin"]
        need = startup_allowance_s(w)
        pool = gpu_pool_of(graph, w) if facts.eks else None
        if facts.eks:
            if pool is None or pool.urn not in up:
                missing.append("its GPU node group")
            if pool is not None and int((manifest(pool).get("scalingConfig") or {}).get("minSize", 0)) == 0:
                need += NODE_SCALE_UP_S
                if "cluster-autoscaler" not in charts:
                    missing.append("the cluster autoscaler (its pool starts at 0 nodes)")
        if missing:
            yield Finding("d", w.urn, f"awaited with {replicas(w)} GPU replica(s) but waits for none of: {', '.join(missing)}")
        timeout = duration_s(w.custom_timeouts.get("create"))
        if timeout < need:
            yield Finding("d", w.urn, f"create timeout {timeout}s < {need}s (node scale-up + startup probe allowance)")


def system_allocatable(facts: Facts) -> tuple[float, float] | None:
    """(CPU cores, MiB) a pod can request on the largest system node, or None (unknown type)."""
    sizes = [INSTANCE_SIZES.get(t) for ng in facts.system_nodes for t in manifest(ng).get("instanceTypes") or []]
    if not sizes or None in sizes:
        return None
    vcpu, gib = max(sizes)  # type: ignore[type-var]
    # EKS AMI kube-reserved (amazon-eks-ami bootstrap): CPU 6% of the first core, 1% of the second,
    # 0.5% of the next two, 0.25% above; memory 255Mi + 11Mi per pod; hard eviction at 100Mi.
    reserved_m = 60 + 10 * (vcpu > 1) + 5 * min(max(vcpu - 2, 0), 2) + 2.5 * max(vcpu - 4, 0)
    cpu = (vcpu * 1000 - reserved_m - DAEMONSET_CPU_M) / 1000
    memory = gib * 1024 * 0.93 - (255 + 11 * MAX_PODS.get(vcpu, 29)) - 100 - DAEMONSET_MEMORY_MI  # 0.93: what the OS leaves
    return cpu, memory


def tolerates_gpu_taint(record: Any) -> bool:
    return any(t.get("key") == GPU_RESOURCE for t in (template(record).get("spec") or {}).get("tolerations") or [])


def rule_cpu_fit(graph: Graph, facts: Facts) -> Iterator[Finding]:
    """(d) A pod that may only run on the system nodes (the GPU pools are tainted) must fit one of them:
    otherwise it stays Pending (Kueue admits, the Job never starts, and it is evicted and re-admitted)."""
    room = system_allocatable(facts) if facts.eks else None
    if room is None:
        return
    for w in workloads(graph):
        if tolerates_gpu_taint(w):
            continue
        cpu, mem = pod_request(w, "cpu"), pod_request(w, "memory")
        if cpu > room[0] or mem > room[1]:
            yield Finding(
                "d",
                w.urn,
                f"a pod requests {cpu:g} CPU / {mem:.0f}Mi; a system node has about {room[0]:.2f} CPU / {room[1]:.0f}Mi for pods",
            )


# ---------------------------------------------------------------- destroy order


def rule_destroy_order(graph: Graph, facts: Facts) -> Iterator[Finding]:
    """(e) Every Kubernetes object outlives nothing it needs: on EKS the system nodes and the EBS CSI
    driver (volumes are detached and deleted by it, finalizers removed by pods on those nodes); every
    custom resource its controller's release (which also installs its CRD: create order)."""
    needs = []
    if facts.eks:
        needs += [r for r in graph.records if r.type == "aws:eks/addon:Addon" and manifest(r).get("addonName") == "aws-ebs-csi-driver"]
        needs += facts.system_nodes
    releases: dict[str, list[Any]] = {}
    for r in graph.records:
        releases.setdefault(chart(r), []).append(r)
    for obj in graph.records:
        if not obj.custom or not obj.type.startswith("kubernetes:") or obj.type.startswith("pulumi:providers"):
            continue
        up = graph.upstream(obj.urn)
        gone_first = sorted(n.name for n in needs if n.urn not in up)
        if gone_first:
            yield Finding("e", obj.urn, f"destroy deletes {', '.join(gone_first)} before this object (it does not depend on them)")
        group = obj.type.split(":")[1].rsplit("/", 1)[0]
        owner = CRD_CHARTS.get(group)
        if owner and releases.get(owner) and not any(r.urn in up for r in releases[owner]):
            yield Finding(
                "e", obj.urn, f"a {group} object that does not depend on the {owner} release (its CRD and its finalizers' controller)"
            )


# ---------------------------------------------------------------- controller-owned fields


def _scale_targets(graph: Graph) -> set[tuple[str, str, str]]:
    """(namespace, kind, name) of everything an HPA or a KEDA ScaledObject scales."""
    out = set()
    for r in graph.records:
        if kind(r) in ("HorizontalPodAutoscaler", "ScaledObject"):
            ref = (manifest(r).get("spec") or {}).get("scaleTargetRef") or {}
            out.add((namespace(r), ref.get("kind", "Deployment"), ref.get("name", "")))
    return out


def _canary_routes(graph: Graph) -> set[tuple[str, str]]:
    """(namespace, name) of every HTTPRoute an Argo Rollout's Gateway API plugin rewrites."""
    out = set()
    for r in graph.records:
        if kind(r) != "Rollout":
            continue
        routing = (((manifest(r).get("spec") or {}).get("strategy") or {}).get("canary") or {}).get("trafficRouting") or {}
        for plugin in (routing.get("plugins") or {}).values():
            for route in plugin.get("httpRoutes") or ([{"name": plugin["httpRoute"]}] if plugin.get("httpRoute") else []):
                out.add((plugin.get("namespace") or namespace(r), route.get("name", "")))
    return out


def _ignored(record: Any, path: str) -> bool:
    """``path`` or a parent of it is in ignore_changes."""
    return any(path == i or path.startswith(i + ".") or path.startswith(i + "[") for i in record.ignore_changes)


def rule_controller_fields(graph: Graph, facts: Facts) -> Iterator[Finding]:
    """(f) A field a controller writes must be in ignore_changes, or the next `up` (server-side apply)
    conflicts with it or sets it back: Kueue's Job ``spec.suspend``, HPA/KEDA ``spec.replicas``, the
    Argo Rollouts Gateway API plugin's backend weights."""
    scaled = _scale_targets(graph)
    routes = _canary_routes(graph)
    for r in graph.records:
        m, k = manifest(r), kind(r)
        name = (m.get("metadata") or {}).get("name", "")
        if k == "Job" and QUEUE_LABEL in ((m.get("metadata") or {}).get("labels") or {}):
            if not _ignored(r, "spec.suspend"):
                yield Finding("f", r.urn, "Kueue flips spec.suspend: it must be in ignore_changes")
        if (namespace(r), k, name) in scaled and not _ignored(r, "spec.replicas"):
            yield Finding("f", r.urn, "an HPA/ScaledObject owns spec.replicas: it must be in ignore_changes")
        if k == "HTTPRoute" and (namespace(r), name) in routes and str(annotations(r).get(PATCH_FORCE, "")).lower() != "true":
            # spec.rules is an atomic list: once the plugin has updated it, its manager owns all of it
            yield Finding(
                "f", r.urn, f"the Argo Rollouts plugin takes spec.rules (atomic): a later route edit conflicts without {PATCH_FORCE}"
            )
        if k == "HTTPRoute" and (namespace(r), name) in routes:
            for i, rule in enumerate((m.get("spec") or {}).get("rules") or []):
                for j, _ in enumerate(rule.get("backendRefs") or []):
                    path = f"spec.rules[{i}].backendRefs[{j}].weight"
                    if not _ignored(r, path):
                        yield Finding("f", r.urn, f"the Argo Rollouts plugin owns {path}: it must be in ignore_changes")


# ---------------------------------------------------------------- namespaces


def rule_namespace_first(graph: Graph, facts: Facts) -> Iterator[Finding]:
    """(g) An object in a namespace this program creates must wait for that Namespace: the API server
    refuses it ("namespaces ... not found"), and `helm install` into a missing namespace fails the
    release at once. (Depending on a ComponentResource does not carry over to its children.)"""
    namespaces = {(manifest(r).get("metadata") or {}).get("name"): r for r in graph.records if kind(r) == "Namespace"}
    for obj in graph.records:
        ns = namespaces.get(namespace(obj)) if obj.custom and obj.type.startswith("kubernetes:") else None
        if ns is not None and ns.urn not in graph.upstream(obj.urn):
            yield Finding("g", obj.urn, f"created in namespace {namespace(obj)!r} without waiting for its Namespace ({ns.name})")


# ---------------------------------------------------------------- queued runs


def queues_runs(record: Any) -> bool:
    """A Job naming a Kueue queue, or a CronJob whose Jobs do."""
    m = manifest(record)
    if kind(record) == "Job":
        return QUEUE_LABEL in ((m.get("metadata") or {}).get("labels") or {})
    if kind(record) == "CronJob":
        return QUEUE_LABEL in ((((m.get("spec") or {}).get("jobTemplate") or {}).get("metadata") or {}).get("labels") or {})
    return False


def rule_queued_runs(graph: Graph, facts: Facts) -> Iterator[Finding]:
    """(h) Kueue keeps a finalizer on every Workload (``kueue.x-k8s.io/resource-in-use``) and only its
    controller removes it: a run still there when the Kueue release is uninstalled holds its namespace
    in Terminating for good. Every creator of queued runs the program manages (Jobs, CronJobs) and the
    owner of the runs started by hand must be deleted before the release (depend on it) and delete
    foreground (the engine waits until their runs and Workloads are gone); a stack with Kueue needs
    that owner. Runs started by hand without its ownerReference are beyond what this can see."""
    releases = [r for r in graph.records if chart(r) == "kueue"]
    if not releases:
        return
    owners = [r for r in graph.records if kind(r) == "ConfigMap" and (manifest(r).get("metadata") or {}).get("name") == RUNS_OWNER]
    if not owners:
        yield Finding("h", releases[0].urn, f"no {RUNS_OWNER} owner: destroy leaves the Workloads of runs started by hand to a gone Kueue")
    for r in [*owners, *(r for r in graph.records if queues_runs(r))]:
        if not any(rel.urn in graph.upstream(r.urn) for rel in releases):
            yield Finding(
                "h", r.urn, "destroy may delete the Kueue release first (this does not depend on it): its runs keep their finalizers"
            )
        if str(annotations(r).get(DELETE_PROPAGATION, "")).lower() != "foreground":
            yield Finding("h", r.urn, f"{DELETE_PROPAGATION} is not foreground: destroy moves on before its runs' Workloads are released")


RULES = (
    rule_namespace_first,
    rule_service_await,
    rule_storage_class,
    rule_load_balancer,
    rule_gpu_capacity,
    rule_cpu_fit,
    rule_destroy_order,
    rule_controller_fields,
    rule_queued_runs,
)
