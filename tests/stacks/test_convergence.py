"""The first `up` converges and `destroy` leaves nothing behind, as far as an offline check can tell
(tools/convergence.py: the pinned providers' await and delete rules on the recorded graph).

Every real stack passes every rule; each rule catches a violation planted in a small synthetic graph
(the shape of the finding the review made on the program, issue 29), and the same graph with the
fix applied passes, so each test fails if its rule stops looking.
"""

from __future__ import annotations

import copy
from typing import Any

from tools import convergence
from tools.mock_engine import Record

STACK = "urn:pulumi:t::mlplatform::"
PROVIDER = f"{STACK}pulumi:providers:kubernetes::k8s"
SKIP = {"pulumi.com/skipAwait": "true"}


def test_every_stack_converges(result):
    findings = convergence.check(result.records)
    assert findings == [], f"{result.stack}:\n" + "\n".join(map(str, findings))


def test_the_stack_facts_are_read_from_the_records(result):
    """The rules judge the right cluster: EKS stacks have a load balancer, a default class (ours)
    and known system nodes; the kubeconfig stack has no load balancer."""
    facts = convergence.facts_of(result.records)
    eks = any(r.type == "eks:index:Cluster" for r in result.records)
    assert facts.eks is eks and facts.load_balancer is eks
    assert facts.default_class
    if eks:
        assert facts.classes == {"gp3-zonal"} and facts.system_nodes
        assert convergence.system_allocatable(facts) is not None, f"{result.stack}: system node type not in INSTANCE_SIZES"


# ---------------------------------------------------------------- a small synthetic graph


def rec(type_: str, name: str, raw: dict[str, Any] | None = None, deps: list[Record] = (), provider: bool = True, **opts) -> Record:
    return Record(
        type=type_,
        name=name,
        urn=f"{STACK}{type_}::{name}",
        parent="",
        custom=True,
        provider=f"{PROVIDER}::id" if provider and type_.startswith("kubernetes:") else "",
        inputs=raw or {},
        raw=raw or {},
        depends_on=sorted(d.urn for d in deps),
        **opts,
    )


def svc(name: str, selector: dict[str, str], deps: list[Record] = (), annotations=None, type_: str = "ClusterIP") -> Record:
    meta = {"name": name, "namespace": "ml", **({"annotations": annotations} if annotations else {})}
    return rec("kubernetes:core/v1:Service", name, {"metadata": meta, "spec": {"type": type_, "selector": selector}}, deps)


def pods(kind: str, name: str, labels: dict[str, str], deps: list[Record] = (), replicas: int = 1, container=None, **opts) -> Record:
    group = {"Rollout": "argoproj.io/v1alpha1", "Job": "batch/v1"}.get(kind, "apps/v1")
    spec = {
        "replicas": replicas,
        "template": {"metadata": {"labels": labels}, "spec": {"containers": [container or {"name": "c"}]}},
    }
    return rec(f"kubernetes:{group}:{kind}", name, {"metadata": {"name": name, "namespace": "ml"}, "spec": spec}, deps, **opts)


def provider(deps: list[Record] = ()) -> Record:
    r = rec("pulumi:providers:kubernetes", "k8s", {}, deps, provider=False)
    r.urn = PROVIDER
    return r


def release(chart: str, values: dict[str, Any] | None = None, deps: list[Record] = ()) -> Record:
    return rec(
        "kubernetes:helm.sh/v3:Release", chart, {"chart": chart, "namespace": "kube-system", "atomic": True, "values": values or {}}, deps
    )


def rules_of(records: list[Record], facts: convergence.Facts | None = None) -> set[str]:
    return {f.rule for f in convergence.check(records, facts)}


def findings(records: list[Record], facts: convergence.Facts | None = None) -> list[str]:
    return [str(f) for f in convergence.check(records, facts)]


LABELS = {"app": "server"}
KIND = convergence.Facts(eks=False, load_balancer=False, default_class=True)


# ---------------------------------------------------------------- (a) awaited Services


def test_a_catches_a_workload_that_waits_for_its_own_service():
    """The review's item 1: the Rollout/StatefulSet depends_on the Service that awaits its pods."""
    service = svc("server", LABELS)
    found = findings([provider(), service, pods("StatefulSet", "server", LABELS, deps=[service])], KIND)
    assert any("[a]" in f and "deadlock" in f for f in found), found


def test_a_catches_a_service_racing_a_creator_it_does_not_wait_for():
    """Dropping the edge alone is not enough: the Service's 10 minutes start before the pods can exist."""
    found = findings([provider(), svc("server", LABELS), pods("Deployment", "server", LABELS)], KIND)
    assert any("[a]" in f and "race" in f for f in found), found
    # nor is waiting for a Rollout: a custom resource is not awaited, so its pods may still be minutes away
    rollout = pods("Rollout", "server", LABELS)
    assert "a" in rules_of([provider(), rollout, svc("server", LABELS, deps=[rollout])], KIND)
    # nor a creator at 0 replicas (an LLM asleep): the Endpoints stay empty
    asleep = pods("StatefulSet", "server", LABELS, replicas=0)
    assert "a" in rules_of([provider(), asleep, svc("server", LABELS, deps=[asleep])], KIND)


def test_a_passes_skip_await_or_a_service_after_its_ready_workload():
    service = svc("server", LABELS, annotations=SKIP)
    assert "a" not in rules_of([provider(), service, pods("Rollout", "server", LABELS, deps=[service])], KIND)
    deployment = pods("Deployment", "server", LABELS)
    assert "a" not in rules_of([provider(), deployment, svc("server", LABELS, deps=[deployment])], KIND)


def test_a_catches_a_service_nothing_backs():
    assert "a" in rules_of([provider(), svc("orphan", {"app": "nobody"})], KIND)
    # a headless Service is not awaited on its Endpoints (service.go)
    headless = svc("workers", {"app": "nobody"})
    headless.raw["spec"]["clusterIP"] = "None"
    assert "a" not in rules_of([provider(), headless], KIND)


# ---------------------------------------------------------------- (b) storage classes


def eks_facts(records: list[Record], default: bool = False, classes: set[str] = frozenset()) -> convergence.Facts:
    return convergence.Facts(eks=True, load_balancer=True, default_class=default, classes=set(classes))


def test_b_catches_chart_persistence_without_a_class_on_eks_without_a_default():
    """The review's item 2: the Pushgateway and Jenkins charts claim volumes with no class."""
    pushgateway = release("prometheus-pushgateway", {"persistentVolume": {"enabled": True, "size": "1Gi"}})
    jenkins = release("jenkins", {"persistence": {"enabled": True, "size": "20Gi"}})
    records = [provider(), pushgateway, jenkins]
    found = findings(records, eks_facts(records))
    assert sum("[b]" in f for f in found) == 2, found
    # a default class (ours, annotated) fixes both; so would a class on each
    assert "b" not in rules_of(records, eks_facts(records, default=True, classes={"gp3-zonal"}))
    # disabled persistence claims nothing
    assert "b" not in rules_of([release("jenkins", {"persistence": {"enabled": False}})], eks_facts([]))


def test_b_catches_a_statefulset_claim_naming_a_class_nothing_creates():
    sts = pods("StatefulSet", "llm", LABELS)
    sts.raw["spec"]["volumeClaimTemplates"] = [{"metadata": {"name": "cache"}, "spec": {"storageClassName": "gp2"}}]
    assert "b" in rules_of([provider(), sts], eks_facts([], default=True, classes={"gp3-zonal"}))
    sts.raw["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] = "gp3-zonal"
    assert "b" not in rules_of([provider(), sts], eks_facts([], default=True, classes={"gp3-zonal"}))


def test_b_reads_the_default_class_annotation():
    sc = rec("kubernetes:storage.k8s.io/v1:StorageClass", "sc", {"metadata": {"name": "gp3-zonal"}})
    cluster = rec("eks:index:Cluster", "eks", {})
    assert convergence.facts_of([cluster, sc]).default_class is False
    sc.raw["metadata"]["annotations"] = {convergence.DEFAULT_CLASS_ANNOTATION: "true"}
    assert convergence.facts_of([cluster, sc]).default_class is True


# ---------------------------------------------------------------- (c) load balancers


def test_c_catches_an_awaited_load_balancer_on_kind():
    """The review's item 4: kind assigns no address; the await fails after 10 minutes."""
    deployment = pods("Deployment", "envoy", LABELS)
    entry = svc("entry", LABELS, deps=[deployment], type_="LoadBalancer")
    assert "c" in rules_of([provider(), deployment, entry], KIND)
    assert "c" not in rules_of([provider(), deployment, entry], eks_facts([], default=True))
    entry.raw["spec"]["type"] = "ClusterIP"
    assert "c" not in rules_of([provider(), deployment, entry], KIND)


# ---------------------------------------------------------------- (d) nodes and GPUs

GPU_CONTAINER = {
    "name": "vllm",
    "resources": {"requests": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": 1}},
    "startupProbe": {"periodSeconds": 10, "failureThreshold": 180},
}


def gpu_world() -> tuple[Record, Record, Record]:
    pool = rec(
        "aws:eks/nodeGroup:NodeGroup",
        "gpu",
        {"labels": {"mlplatform.io/gpu-pool": "gpu"}, "taints": [{"key": "nvidia.com/gpu"}], "scalingConfig": {"minSize": 0}},
    )
    return pool, release("cluster-autoscaler"), release("nvidia-device-plugin")


def llm(deps: list[Record], **opts) -> Record:
    sts = pods("StatefulSet", "llm", LABELS, deps=deps, container=GPU_CONTAINER, **opts)
    sts.raw["spec"]["template"]["spec"]["nodeSelector"] = {"mlplatform.io/gpu-pool": "gpu"}
    return sts


def test_d_catches_the_prod_llm_awaited_without_its_gpu_capacity():
    """The review's item 5: 1 GPU replica, the pool at 0, a 30-minute startup, 10 minutes of await."""
    pool, autoscaler, plugin = gpu_world()
    found = findings([provider(), pool, autoscaler, plugin, llm([])], eks_facts([], default=True))
    assert any("[d]" in f and "device plugin" in f and "node group" in f and "autoscaler" in f for f in found), found
    assert any("[d]" in f and "timeout 600s < 2100s" in f for f in found), found
    # depending on all three is not enough without the time to use them
    found = findings([provider(), pool, autoscaler, plugin, llm([pool, autoscaler, plugin])], eks_facts([], default=True))
    assert [f for f in found if "[d]" in f] == [f for f in found if "timeout" in f] != [], found


def test_d_passes_a_gpu_workload_with_its_capacity_and_time_or_not_awaited():
    pool, autoscaler, plugin = gpu_world()
    ok = llm([pool, autoscaler, plugin], custom_timeouts={"create": "40m"})
    assert "d" not in rules_of([provider(), pool, autoscaler, plugin, ok], eks_facts([], default=True))
    skipped = llm([])
    skipped.raw["metadata"]["annotations"] = SKIP
    assert "d" not in rules_of([provider(), pool, autoscaler, plugin, skipped], eks_facts([], default=True))
    asleep = llm([], replicas=0)
    assert "d" not in rules_of([provider(), pool, autoscaler, plugin, asleep], eks_facts([], default=True))


def test_d_catches_a_cpu_pod_larger_than_a_system_node():
    """The review's item 6: 2 CPU per training worker on m6i.large system nodes (~1.7 left for pods)."""
    system = rec("aws:eks/nodeGroup:NodeGroup", "system", {"instanceTypes": ["m6i.large"], "labels": {"role": "system"}})
    big = {"name": "train", "resources": {"requests": {"cpu": "2", "memory": "4Gi"}}}
    job = pods("Job", "train", LABELS, container=big)
    job.raw["metadata"]["annotations"] = SKIP  # not awaited, and still never scheduled
    facts = convergence.facts_of([rec("eks:index:Cluster", "eks", {}), system])
    assert "d" in rules_of([provider(), system, job], facts)
    small = pods("Job", "train", LABELS, container={**big, "resources": {"requests": {"cpu": "1", "memory": "4Gi"}}})
    assert "d" not in rules_of([provider(), system, small], facts)


# ---------------------------------------------------------------- (e) destroy order


def test_e_catches_objects_that_outlive_nothing_they_need():
    """The review's Destroy item 1: the node group and the EBS CSI add-on go before the objects."""
    system = rec("aws:eks/nodeGroup:NodeGroup", "system", {"instanceTypes": ["m6i.large"]})
    ebs = rec("aws:eks/addon:Addon", "ebs", {"addonName": "aws-ebs-csi-driver"}, [system])
    cluster = rec("eks:index:Cluster", "eks", {})
    cm = rec("kubernetes:core/v1:ConfigMap", "cm", {"metadata": {"name": "cm", "namespace": "ml"}})
    facts = convergence.facts_of([cluster, system, ebs])
    found = findings([cluster, system, ebs, provider([cluster]), cm], facts)
    assert any("[e]" in f and "ebs, system" in f for f in found), found
    # the provider waiting for the add-on (which waits for the nodes) orders every object after both
    assert "e" not in rules_of([cluster, system, ebs, provider([cluster, ebs]), cm], facts)


def test_e_catches_a_custom_resource_that_does_not_wait_for_its_controller():
    keda = release("keda")
    scaled = rec("kubernetes:keda.sh/v1alpha1:ScaledObject", "so", {"metadata": {"name": "so", "namespace": "ml"}})
    assert "e" in rules_of([provider(), keda, scaled], KIND)
    scaled.depends_on = [keda.urn]
    assert "e" not in rules_of([provider(), keda, scaled], KIND)


# ---------------------------------------------------------------- (f) controller-owned fields


def test_f_catches_kueue_suspend_not_ignored():
    job = pods("Job", "train", LABELS)
    job.raw["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "q"}
    job.raw["spec"]["suspend"] = True
    job.raw["metadata"]["annotations"] = SKIP
    assert "f" in rules_of([provider(), job], KIND)
    job.ignore_changes = ["spec.suspend"]
    assert "f" not in rules_of([provider(), job], KIND)


def test_f_catches_replicas_under_an_autoscaler_and_weights_under_the_argo_plugin():
    rollout = pods("Rollout", "server", LABELS)
    rollout.raw["spec"]["strategy"] = {
        "canary": {"trafficRouting": {"plugins": {"argoproj-labs/gatewayAPI": {"httpRoute": "server", "namespace": "ml"}}}}
    }
    scaled = rec(
        "kubernetes:keda.sh/v1alpha1:ScaledObject",
        "so",
        {"metadata": {"name": "so", "namespace": "ml"}, "spec": {"scaleTargetRef": {"kind": "Rollout", "name": "server"}}},
    )
    backends = [{"name": "server", "weight": 100}, {"name": "server-canary", "weight": 0}]
    route = rec(
        "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute",
        "route",
        {"metadata": {"name": "server", "namespace": "ml"}, "spec": {"rules": [{"backendRefs": backends}]}},
    )
    found = findings([provider(), rollout, scaled, route], convergence.Facts(eks=False, load_balancer=False, default_class=True))
    assert sum("[f]" in f for f in found) == 4, found  # spec.replicas, both weights, the atomic rules list
    rollout.ignore_changes = ["spec.replicas"]
    route.ignore_changes = ["spec.rules[0].backendRefs[0].weight", "spec.rules[0].backendRefs[1].weight"]
    assert [f for f in findings([provider(), rollout, scaled, route], KIND) if "[f]" in f and "atomic" in f]
    route.raw["metadata"]["annotations"] = {"pulumi.com/patchForce": "true"}
    assert "f" not in rules_of([provider(), rollout, scaled, route], KIND)


# ---------------------------------------------------------------- (g) namespaces first


def test_g_catches_an_object_racing_its_namespace():
    """A component's depends_on does not reach its children: the program's EntryPoint release raced
    its Namespace before the Platform's transformation (components/platform.py ``after``)."""
    ns = rec("kubernetes:core/v1:Namespace", "ns", {"metadata": {"name": "ml"}})
    cm = rec("kubernetes:core/v1:ConfigMap", "cm", {"metadata": {"name": "cm", "namespace": "ml"}})
    helm = rec("kubernetes:helm.sh/v3:Release", "rel", {"chart": "x", "namespace": "ml"})
    assert [f.rule for f in convergence.check([provider(), ns, cm, helm], KIND)] == ["g", "g"]
    for r in (cm, helm):
        r.depends_on = [ns.urn]
    assert convergence.check([provider(), ns, cm, helm], KIND) == []


# ---------------------------------------------------------------- (h) queued runs outlive Kueue


def queued_world(foreground: bool, after_kueue: bool, owner: bool = True) -> list[Record]:
    """Kueue's release, a CronJob of queued runs, a queued Job and the owner of hand-started runs."""
    kueue = release("kueue")
    ann = {convergence.DELETE_PROPAGATION: "foreground"} if foreground else {}
    queued = {"metadata": {"labels": {convergence.QUEUE_LABEL: "training"}}}
    cron = rec(
        "kubernetes:batch/v1:CronJob",
        "cron",
        {"metadata": {"name": "cron", "namespace": "ml", "annotations": ann}, "spec": {"jobTemplate": queued}},
        [kueue] if after_kueue else [],
    )
    job = pods("Job", "train", LABELS, [kueue] if after_kueue else [], ignore_changes=["spec.suspend"])
    job.raw["metadata"].update({"labels": {convergence.QUEUE_LABEL: "training"}, "annotations": {**SKIP, **ann}})
    cm = {"metadata": {"name": convergence.RUNS_OWNER, "namespace": "ml", "annotations": ann}}
    runs = [rec("kubernetes:core/v1:ConfigMap", "owner", cm, [kueue] if after_kueue else [])] if owner else []
    return [provider(), kueue, cron, job, *runs]


def test_h_catches_queued_runs_that_destroy_leaves_to_a_gone_kueue():
    late = findings(queued_world(foreground=True, after_kueue=False))
    assert len([f for f in late if "does not depend on it" in f]) == 3, late
    background = findings(queued_world(foreground=False, after_kueue=True))
    assert len([f for f in background if "is not foreground" in f]) == 3, background
    assert any("no training-runs owner" in f for f in findings(queued_world(foreground=True, after_kueue=True, owner=False)))
    assert "h" not in rules_of(queued_world(foreground=True, after_kueue=True), KIND)


def test_h_names_the_owner_kueue_creates():
    from components.services import kueue

    assert convergence.RUNS_OWNER == kueue.RUNS_OWNER
    assert convergence.QUEUE_LABEL == kueue.QUEUE_LABEL
    assert kueue.FOREGROUND == {convergence.DELETE_PROPAGATION: "foreground"}
    assert kueue.manager_config()["manageJobsWithoutQueueName"] is False


# ---------------------------------------------------------------- the real program, broken on purpose


def test_the_check_sees_the_review_findings_in_the_program_records(_results):
    """Undo the fixes on the recorded dev graph: the check reports each again."""
    from tools import mock_engine

    if "dev" not in _results:
        _results["dev"] = mock_engine.run("dev")
    records = copy.deepcopy(_results["dev"].records)
    by_name = {r.name: r for r in records}
    llm_svc = by_name["mlplatform-chat-llm-service"]
    del llm_svc.raw["metadata"]["annotations"]  # awaited again: the StatefulSet waits for it
    k8s = next(r for r in records if r.type == "pulumi:providers:kubernetes")
    k8s.depends_on = [d for d in k8s.depends_on if "eks:index:Cluster" in d]  # the provider waits for the control plane only
    job = next(r for r in records if r.type == "kubernetes:batch/v1:Job")
    job.ignore_changes = []
    del job.raw["metadata"]["annotations"][convergence.DELETE_PROPAGATION]  # destroy no longer waits for its Workload
    found = convergence.check(records)
    assert any(f.rule == "a" and f.urn == llm_svc.urn and "deadlock" in f.message for f in found)
    assert any(f.rule == "e" and "mlplatform-cluster-system" in f.message for f in found)
    assert any(f.rule == "f" and f.urn == job.urn for f in found)
    assert any(f.rule == "h" and f.urn == job.urn for f in found)
