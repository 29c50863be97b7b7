"""Every route's ports are open end to end through the stack's NetworkPolicies, and the neighbours'
are not, judged by a small NetworkPolicy evaluator over the objects the program renders (the mock
engine's records) for every stack.

The evaluator implements the subset of networking.k8s.io/v1 NetworkPolicy the program writes, with
the API's semantics (kubernetes/api networking/v1/types.go, v1.33; "Network Policies" in the
Kubernetes docs):
- a pod is isolated for a direction when some policy of its namespace selects it with that direction
  in ``policyTypes`` (absent: Ingress, plus Egress where the policy has egress rules); a connection
  needs the source's egress AND the destination's ingress to allow it; policies add up (a union);
- a peer's ``podSelector`` alone selects pods of the policy's own namespace, ``namespaceSelector``
  alone every pod of the matching namespaces, both: those pods in those namespaces; an absent or empty
  ``from``/``to`` matches every peer; an ``ipBlock`` is for cluster-external addresses and is taken to
  match no pod (where an implementation lets it match pod IPs it allows more, never less);
- ``ports`` absent or empty: every port; an entry matches its protocol (default TCP) and its port:
  absent (all), a number (up to ``endPort``), or a name (the destination pod's container port name);
  a port is the destination pod's port, after a Service's translation;
- label selectors: ``matchLabels`` and ``matchExpressions`` (In, NotIn, Exists, DoesNotExist); an
  empty selector matches everything; a namespace carries ``kubernetes.io/metadata.name``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from components.services import gateway
from tests.stacks.test_llm_service import llm_models

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Rollout", "Job"}


@dataclass
class Pod:
    namespace: str
    labels: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)  # container port name -> number
    name: str = ""


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return False
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


class Network:
    """The rendered policies and namespaces of one stack."""

    def __init__(self, policies: list[dict[str, Any]], namespaces: dict[str, dict[str, str]]):
        self.policies = policies
        self.namespaces = namespaces

    def ns_labels(self, namespace: str) -> dict[str, str]:
        return {**self.namespaces.get(namespace, {}), "kubernetes.io/metadata.name": namespace}

    @staticmethod
    def types(policy: dict[str, Any]) -> set[str]:
        spec = policy["spec"]
        return set(spec.get("policyTypes") or (["Ingress"] + (["Egress"] if spec.get("egress") else [])))

    def _peer(self, peer: dict[str, Any], policy_ns: str, other: Pod) -> bool:
        if "ipBlock" in peer:
            return False
        pods, nss = peer.get("podSelector"), peer.get("namespaceSelector")
        if nss is None and other.namespace != policy_ns:
            return False
        if nss is not None and not selects(nss, self.ns_labels(other.namespace)):
            return False
        return pods is None or selects(pods, other.labels)

    @staticmethod
    def _port(entries: list[dict[str, Any]] | None, dst: Pod, port: int, protocol: str) -> bool:
        if not entries:
            return True
        for p in entries:
            if p.get("protocol", "TCP") != protocol:
                continue
            want = p.get("port")
            if want is None:
                return True
            if isinstance(want, str):
                if dst.ports.get(want) == port:
                    return True
            elif want <= port <= p.get("endPort", want):
                return True
        return False

    def _side(self, pod: Pod, direction: str, other: Pod, dst: Pod, port: int, protocol: str) -> bool:
        key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        selecting = [
            p
            for p in self.policies
            if p["metadata"]["namespace"] == pod.namespace and direction in self.types(p) and selects(p["spec"]["podSelector"], pod.labels)
        ]
        if not selecting:
            return True  # not isolated in this direction
        return any(
            (not rule.get(peers_key) or any(self._peer(peer, p["metadata"]["namespace"], other) for peer in rule[peers_key]))
            and self._port(rule.get("ports"), dst, port, protocol)
            for p in selecting
            for rule in p["spec"].get(key) or []
        )

    def allowed(self, src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> bool:
        return self._side(src, "Egress", dst, dst, port, protocol) and self._side(dst, "Ingress", src, dst, port, protocol)


# ------------------------------------------------------------------ the evaluator on planted cases


def _policy(namespace, selector, types, ingress=None, egress=None):
    spec: dict[str, Any] = {"podSelector": selector, "policyTypes": types}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    return {"metadata": {"namespace": namespace}, "spec": spec}


A = Pod("a", {"app": "client"})
B = Pod("b", {"app": "server"}, {"http": 8000})
DENY_B = _policy("b", {}, ["Ingress", "Egress"])
DENY_A = _policy("a", {}, ["Ingress", "Egress"])
FROM_A = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "a"}}}
CLIENTS_OF_A = {**FROM_A, "podSelector": {"matchLabels": {"app": "client"}}}
TO_B_8000 = _policy("a", {}, ["Egress"], egress=[{"to": [{"namespaceSelector": {}}], "ports": [{"port": 8000}]}])


@pytest.mark.parametrize(
    "policies,port,expect",
    [
        ([], 8000, True),  # no policy: nothing isolated
        ([DENY_B], 8000, False),
        ([DENY_B, _policy("b", {}, ["Ingress"], ingress=[{"from": [FROM_A], "ports": [{"port": 8000}]}])], 8000, True),
        ([DENY_B, _policy("b", {}, ["Ingress"], ingress=[{"from": [FROM_A], "ports": [{"port": 8000}]}])], 8501, False),
        ([DENY_B, _policy("b", {}, ["Ingress"], ingress=[{"from": [FROM_A], "ports": [{"port": "http"}]}])], 8000, True),
        ([DENY_B, _policy("b", {}, ["Ingress"], ingress=[{"from": [FROM_A], "ports": [{"port": 7000, "endPort": 8100}]}])], 8000, True),
        ([DENY_B, _policy("b", {}, ["Ingress"], ingress=[{"from": [FROM_A], "ports": [{"port": 8000, "protocol": "UDP"}]}])], 8000, False),
        # podSelector alone: pods of the policy's own namespace (b), so not a's client
        ([DENY_B, _policy("b", {}, ["Ingress"], ingress=[{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}])], 8000, False),
        ([DENY_B, _policy("b", {}, ["Ingress"], ingress=[{"from": [CLIENTS_OF_A]}])], 8000, True),
        (
            [DENY_B, _policy("b", {}, ["Ingress"], ingress=[{"from": [{**FROM_A, "podSelector": {"matchLabels": {"app": "x"}}}]}])],
            8000,
            False,
        ),
        ([DENY_B, _policy("b", {}, ["Ingress"], ingress=[{}])], 8000, True),  # a rule with no from/ports: everyone
        ([DENY_B, _policy("b", {}, ["Ingress"], ingress=[{"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}])], 8000, False),
        # a policy that selects other pods does not open this one
        ([DENY_B, _policy("b", {"matchLabels": {"app": "other"}}, ["Ingress"], ingress=[{}])], 8000, False),
        (
            [
                DENY_B,
                _policy(
                    "b",
                    {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["server"]}]},
                    ["Ingress"],
                    ingress=[{}],
                ),
            ],
            8000,
            False,
        ),
        ([DENY_A], 8000, False),  # the source's egress is closed
        ([DENY_A, TO_B_8000], 8000, True),
        ([DENY_A, TO_B_8000], 9000, False),
        ([DENY_A, TO_B_8000, DENY_B], 8000, False),  # egress open, ingress closed: both sides must allow
    ],
)
def test_evaluator_on_planted_cases(policies, port, expect):
    assert Network(policies, {}).allowed(A, B, port) is expect


def test_evaluator_policy_types_default():
    """Without policyTypes a policy isolates for Ingress, and for Egress only where it has egress rules."""
    only_ingress_rules = {"metadata": {"namespace": "a"}, "spec": {"podSelector": {}, "ingress": [{}]}}
    assert Network([only_ingress_rules], {}).allowed(A, B, 8000)
    with_egress = {"metadata": {"namespace": "a"}, "spec": {"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]}}
    assert not Network([with_egress], {}).allowed(A, B, 8000)


# ------------------------------------------------------------------ every stack's routes


def network(result) -> Network:
    objs = [r.raw for r in result.k8s_objects()]
    return Network(
        [o for o in objs if o.get("kind") == "NetworkPolicy"],
        {o["metadata"]["name"]: (o["metadata"].get("labels") or {}) for o in objs if o.get("kind") == "Namespace"},
    )


def pods(result) -> list[Pod]:
    out = []
    for r in result.k8s_objects():
        o = r.raw
        if o.get("kind") not in WORKLOAD_KINDS:
            continue
        tpl = (o.get("spec") or {}).get("template") or {}
        spec = tpl.get("spec") or {}
        ports = {p["name"]: p["containerPort"] for c in spec.get("containers") or [] for p in c.get("ports") or [] if p.get("name")}
        out.append(Pod(o["metadata"]["namespace"], (tpl.get("metadata") or {}).get("labels") or {}, ports, o["metadata"]["name"]))
    return out


def proxy_pod(namespace: str) -> Pod:
    """An Envoy proxy pod as Envoy Gateway labels it (the pods are the controller's, not in the records)."""
    return Pod(namespace, gateway.proxy_selector(namespace), name="envoy")


def backends(result) -> list[tuple[str, str, Pod, int]]:
    """(route, backendRef, pod, pod port) for every backendRef of every HTTPRoute, through its Service
    (selector, port -> targetPort, by name through the pod's container ports)."""
    objs = [r.raw for r in result.k8s_objects()]
    services = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objs if o.get("kind") == "Service"}
    all_pods = pods(result)
    out = []
    for route in (o for o in objs if o.get("kind") == "HTTPRoute"):
        ns = route["metadata"]["namespace"]
        for rule in route["spec"]["rules"]:
            for ref in rule.get("backendRefs") or []:
                svc = services[(ref.get("namespace", ns), ref["name"])]
                (sp,) = [p for p in svc["spec"]["ports"] if p["port"] == ref["port"]]
                selected = [
                    p
                    for p in all_pods
                    if p.namespace == svc["metadata"]["namespace"] and selects({"matchLabels": svc["spec"]["selector"]}, p.labels)
                ]
                # A Service's selector is a plain label map (equality on each), not a LabelSelector.
                assert selected, f"{route['metadata']['name']}: Service {ref['name']} selects no pod"
                for pod in selected:
                    target = sp.get("targetPort", sp["port"])
                    port = pod.ports[target] if isinstance(target, str) else target
                    out.append((route["metadata"]["name"], ref["name"], pod, port))
    return out


def gateway_namespace(result) -> str:
    (gw,) = [r.raw for r in result.k8s_objects() if r.raw.get("kind") == "Gateway"]
    return gw["metadata"]["namespace"]


def test_every_backend_ref_reachable_from_the_proxy(result, stack):
    """Each route's backend, on the port its pods listen on, is allowed by the proxy's egress AND the
    backend's ingress: with the policies enforced (issue 24), a route whose port is not opened goes dark."""
    net, proxy = network(result), proxy_pod(gateway_namespace(result))
    found = backends(result)
    assert found, f"{stack}: no routed backend"
    closed = [f"{route} -> {ref} ({pod.name}:{port})" for route, ref, pod, port in found if not net.allowed(proxy, pod, port)]
    assert closed == [], f"{stack}: routes the NetworkPolicies close: {closed}"


def test_llm_route_reachable_where_a_stack_serves_an_llm(result, stack):
    """The break issue 24 found: the proxy's egress opened 8501 only, vLLM listens on 8000."""
    # Whether the stack serves an LLM is the stack file's word, not the render's: a render that lost
    # the LLM's route must fail here, not skip.
    if not llm_models(stack):
        pytest.skip(f"stacks/Pulumi.{stack}.yaml configures no `runtime: vllm` model")
    net, proxy = network(result), proxy_pod(gateway_namespace(result))
    llm = [(route, pod, port) for route, _, pod, port in backends(result) if pod.labels.get("mlplatform.io/runtime") == "vllm"]
    assert {pod.labels.get("mlplatform.io/model") for _, pod, _ in llm} == set(llm_models(stack)), f"{stack}: LLM backends {llm}"
    assert all(port == 8000 and net.allowed(proxy, pod, port) for _, pod, port in llm), llm


def test_proxy_reaches_nothing_else_in_the_backends(result, stack):
    """Everything a route does not name stays closed to the proxy: the metrics port of every backend
    pod and any other port of theirs."""
    net, proxy = network(result), proxy_pod(gateway_namespace(result))
    routed = {(pod.name, port) for _, _, pod, port in backends(result)}
    opened = [
        (pod.name, port)
        for _, _, pod, _ in backends(result)
        for port in {*pod.ports.values(), 9091, 22}
        if (pod.name, port) not in routed and net.allowed(proxy, pod, port)
    ]
    assert opened == [], f"{stack}: the proxy reaches unrouted ports {opened}"


def test_a_neighbour_cannot_reach_the_backends(result, stack):
    """A pod of another namespace of the stack (a training job, an image build on a Jenkins agent)
    reaches no model server directly, past the entry point and its per-route CIDR policy."""
    net = network(result)
    neighbours = [
        Pod(ns, {"app": "neighbour"}, name=f"{ns}/neighbour") for ns in ("ml-training", "jenkins-builds", "jenkins") if ns in net.namespaces
    ]
    assert neighbours, f"{stack}: no neighbour namespace to test from"
    reached = [(n.name, pod.name, port) for n in neighbours for _, _, pod, port in backends(result) if net.allowed(n, pod, port)]
    assert reached == [], f"{stack}: {reached}"
