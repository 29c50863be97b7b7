"""EntryPoint: the stack's one public entry point for every model (Kubernetes Gateway API).

Envoy Gateway (chart gateway-helm, pinned) is the implementation of record: it installs the Gateway
API CRDs and turns the Gateway below into an Envoy Deployment. The load balancer in front of Envoy is
our own Service (Envoy Gateway's is ClusterIP, via EnvoyProxy): its annotations, source ranges and
address are then ours to set and read, and its address is the stack's entry point. Each model adds
one HTTPRoute (``/v1/models/<name>…`` and ``/v2/models/<name>…`` to its ClusterIP Service, or to its
stable and canary Services by weight where Argo Rollouts runs the model's canary) and, where
the model sets ``allowedCidrs``, an Envoy Gateway SecurityPolicy that admits only those client
networks on that route; the load balancer admits the union of them when every model is restricted. The pure builders here (``gateway_spec``, ``http_route_spec``,
``security_policy_spec``) are validated against the upstream CRD schemas in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.config import GatewayConfig
from components.lib import helm
from components.lib.network import egress_except_metadata

GATEWAY_API = "gateway.networking.k8s.io"
ENVOY_GATEWAY_API = "gateway.envoyproxy.io"
CONTROLLER_NAME = "gateway.envoyproxy.io/gatewayclass-controller"  # gateway-helm 1.9.0 values: config.envoyGateway.gateway
GATEWAY_CLASS = "mlplatform"
GATEWAY_NAME = "mlplatform"
HTTP_LISTENER, HTTPS_LISTENER = "http", "https"
# Envoy listens on the service port + 10000 for ports below 1024 (envoyproxy/gateway v1.9.0,
# internal/gatewayapi/listener.go, wellKnownPortShift).
PROXY_PORTS = {80: 10080, 443: 10443}
XDS_PORT = 18000
WEBHOOK_PORT = 9443  # gateway-helm 1.9.0 templates/envoy-proxy-topology-injector-webhook.yaml
# Labels Envoy Gateway puts on its proxy pods (v1.9.0 internal/infrastructure/kubernetes/proxy/resource.go,
# EnvoyAppLabel; owning-gateway labels from internal/gatewayapi/translator.go).
PROXY_LABELS = {"app.kubernetes.io/name": "envoy", "app.kubernetes.io/component": "proxy", "app.kubernetes.io/managed-by": "envoy-gateway"}
ENTRY_SERVICE = "mlplatform-entry"
CONTROLLER_LABELS = {"control-plane": "envoy-gateway"}
NLB_ANNOTATIONS = {
    "service.beta.kubernetes.io/aws-load-balancer-type": "nlb",
    "service.beta.kubernetes.io/aws-load-balancer-cross-zone-load-balancing-enabled": "true",
}


def proxy_selector(namespace: str) -> dict[str, str]:
    """This Gateway's Envoy pods."""
    return {
        **PROXY_LABELS,
        "gateway.envoyproxy.io/owning-gateway-name": GATEWAY_NAME,
        "gateway.envoyproxy.io/owning-gateway-namespace": namespace,
    }


def service_annotations(cfg: GatewayConfig, eks: bool) -> dict[str, str]:
    """The entry Service's AWS load balancer: an NLB, internal where configured."""
    if not eks:
        return {}
    scheme = "internal" if cfg.internal else "internet-facing"
    annotations = {**NLB_ANNOTATIONS, "service.beta.kubernetes.io/aws-load-balancer-scheme": scheme}
    if cfg.internal:
        # The scheme annotation is read only by the AWS Load Balancer Controller, which this program
        # does not install; EKS's in-tree service controller (kubernetes/cloud-provider-aws
        # pkg/providers/v1/aws.go, ServiceAnnotationLoadBalancerInternal) reads this one. Without it,
        # an "internal" entry point is internet-facing (issue 29, Destroy/minor).
        annotations["service.beta.kubernetes.io/aws-load-balancer-internal"] = "true"
    return annotations


REDIRECT_ROUTE = "https-redirect"


def gateway_spec(cfg: GatewayConfig, route_namespace: str) -> dict[str, Any]:
    """The models' listener (HTTPS with the configured certificate, else HTTP), open to routes of the
    serving namespace only. With TLS, port 80 stays open only to answer a redirect to HTTPS: its one
    route (``redirect_route_spec``) lives in the Gateway's own namespace, where no model can attach."""
    allowed = {"namespaces": {"from": "Selector", "selector": {"matchLabels": {"kubernetes.io/metadata.name": route_namespace}}}}
    if not cfg.tls:
        return {
            "gatewayClassName": GATEWAY_CLASS,
            "listeners": [{"name": HTTP_LISTENER, "protocol": "HTTP", "port": 80, "allowedRoutes": allowed}],
        }
    listener: dict[str, Any] = {
        "name": HTTPS_LISTENER,
        "protocol": "HTTPS",
        "port": 443,
        "tls": {"mode": "Terminate", "certificateRefs": [{"kind": "Secret", "name": cfg.tls.certificate_secret}]},
        "allowedRoutes": allowed,
    }
    redirect: dict[str, Any] = {"name": HTTP_LISTENER, "protocol": "HTTP", "port": 80, "allowedRoutes": {"namespaces": {"from": "Same"}}}
    if cfg.tls.hostname:
        listener["hostname"] = redirect["hostname"] = cfg.tls.hostname
    return {"gatewayClassName": GATEWAY_CLASS, "listeners": [listener, redirect]}


def redirect_route_spec(gateway_namespace: str) -> dict[str, Any]:
    """Every plain-HTTP request answered with a 301 to the same URL on https (Gateway API
    HTTPRequestRedirectFilter: without a port, the scheme's well-known one, 443). No backend: nothing
    is served over HTTP."""
    return {
        "parentRefs": [
            {"group": GATEWAY_API, "kind": "Gateway", "namespace": gateway_namespace, "name": GATEWAY_NAME, "sectionName": HTTP_LISTENER}
        ],
        "rules": [{"filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}]}],
    }


def proxy_spread(namespace: str, replicas: int) -> dict[str, Any]:
    """More than one Envoy: one per zone where the zones allow (a zone outage leaves an Envoy up);
    ScheduleAnyway, so a node shortage in one zone never blocks the entry point from starting."""
    if replicas < 2:
        return {}
    constraint = {
        "maxSkew": 1,
        "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": proxy_selector(namespace)},
    }
    return {"pod": {"topologySpreadConstraints": [constraint]}}


def entry_service_spec(cfg: GatewayConfig, namespace: str, source_ranges: list[str], load_balancer: bool = True) -> dict[str, Any]:
    """The entry point's Service: a LoadBalancer where the cluster has a load-balancer implementation
    (EKS), else ClusterIP, reached with ``kubectl port-forward`` (kind assigns a LoadBalancer no
    address, and pulumi-kubernetes would await one for 10 minutes and fail the `up`: issue 29 item 4)."""
    ports = [{"name": HTTPS_LISTENER, "port": 443, "targetPort": PROXY_PORTS[443], "protocol": "TCP"}] if cfg.tls else []
    # With TLS, port 80 only redirects (gateway_spec).
    ports.append({"name": HTTP_LISTENER, "port": 80, "targetPort": PROXY_PORTS[80], "protocol": "TCP"})
    if not load_balancer:
        return {"type": "ClusterIP", "selector": proxy_selector(namespace), "ports": ports}
    return {
        "type": "LoadBalancer",
        "selector": proxy_selector(namespace),
        "ports": ports,
        # Local: Envoy sees the client's address, which the models' SecurityPolicies check.
        "externalTrafficPolicy": "Local",
        **({"loadBalancerSourceRanges": source_ranges} if source_ranges else {}),
    }


def listener_name(cfg: GatewayConfig) -> str:
    return HTTPS_LISTENER if cfg.tls else HTTP_LISTENER


# Set by the canary's warm-up Job (serving/warmup.py), counted apart by the server (serving/app.py).
TRAFFIC_HEADER = "X-Mlplatform-Traffic"


def http_route_spec(
    model: str, gateway_namespace: str, listener: str, service: str, port: int, canary_service: str | None = None
) -> dict[str, Any]:
    """Both REST protocols of ``model`` to its Service. TF-Serving's verbs are suffixes of the last
    path element (``/v1/models/<name>:predict``), which a PathPrefix match (whole elements) does
    not cover: a regular expression does (Envoy matches it against the whole path).

    With ``canary_service`` (the model is an Argo Rollout) the rule has two backends, ``service`` (the
    stable pods) at weight 100 and the canary at 0: Argo Rollouts' Gateway API plugin rewrites both
    weights during a canary (rollouts-plugin-trafficrouter-gatewayapi pkg/plugin/httproute.go,
    setHTTPRouteWeight: canary = w, stable = 100 - w) and Envoy splits requests by them. The program
    must not set them back: ``weight_paths`` is the route's Pulumi ignore_changes."""
    if canary_service is None:
        backends: list[dict[str, Any]] = [{"kind": "Service", "name": service, "port": port}]
    else:
        backends = [
            {"kind": "Service", "name": service, "port": port, "weight": 100},
            {"kind": "Service", "name": canary_service, "port": port, "weight": 0},
        ]
    return {
        "parentRefs": [
            {"group": GATEWAY_API, "kind": "Gateway", "namespace": gateway_namespace, "name": GATEWAY_NAME, "sectionName": listener}
        ],
        "rules": [
            {
                "matches": [
                    {"path": {"type": "RegularExpression", "value": f"/v1/models/{model}([/:].*)?"}},
                    {"path": {"type": "PathPrefix", "value": f"/v2/models/{model}"}},
                ],
                # The warm-up label is the server's to trust only from inside the cluster (the canary's
                # warm-up Job calls the Services directly): a client that sent it through the entry point
                # would hide its requests from the user-facing alerts, so the Gateway drops it.
                "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"remove": [TRAFFIC_HEADER]}}],
                "backendRefs": backends,
            }
        ],
    }


def weight_paths(route_spec: dict[str, Any]) -> list[str]:
    """The Pulumi property paths of every backend weight in ``route_spec`` (a CustomResource's ``spec``
    input): the route's ``ignore_changes`` where a controller owns the weights. Pulumi then keeps the
    weights from its state instead of the program's 100/0 (pulumi.com/docs/iac/concepts/options/
    ignorechanges), so a preview during or after a canary shows no diff and never resets them."""
    return [
        f"spec.rules[{i}].backendRefs[{j}].weight"
        for i, rule in enumerate(route_spec["rules"])
        for j, backend in enumerate(rule.get("backendRefs") or [])
        if "weight" in backend
    ]


# Where a route asks for API keys (any model's routes with ``serving.apiKey``): the header clients send the key
# in (Envoy Gateway v1.9 task "API Key Authentication" uses it), and the header Envoy sets to the
# matching client's name, which the rate limit counts by.
API_KEY_HEADER = "x-api-key"
CLIENT_ID_HEADER = "x-mlplatform-client"


def security_policy_spec(route: str, allowed_cidrs: list[str], api_keys_secret: str | None = None, sanitize: bool = True) -> dict[str, Any]:
    """Only ``allowed_cidrs`` reach the route (403 otherwise): Envoy Gateway's authorization by
    client address (api/v1alpha1/authorization_types.go, Principal.clientCIDRs, v1.9.0). With
    ``api_keys_secret`` (a Secret in the route's namespace, one key per client name) every request
    also needs one of those keys in ``API_KEY_HEADER`` (401 otherwise; apiKeyAuth): the key is removed
    before the backend where ``sanitize`` (kept where the backend checks it again: our TF server) and
    the client's name forwarded in ``CLIENT_ID_HEADER``. One
    policy holds both: Envoy Gateway applies one SecurityPolicy per route."""
    spec: dict[str, Any] = {"targetRefs": [{"group": GATEWAY_API, "kind": "HTTPRoute", "name": route}]}
    if allowed_cidrs:
        spec["authorization"] = {
            "defaultAction": "Deny",
            "rules": [{"name": "allowed-cidrs", "action": "Allow", "principal": {"clientCIDRs": list(allowed_cidrs)}}],
        }
    if api_keys_secret:
        spec["apiKeyAuth"] = {
            "credentialRefs": [{"group": "", "kind": "Secret", "name": api_keys_secret}],
            "extractFrom": [{"headers": [API_KEY_HEADER]}],
            "forwardClientIDHeader": CLIENT_ID_HEADER,
            "sanitize": sanitize,
        }
    return spec


def rate_limit_spec(route: str, requests: int, unit: str, clients: list[str] | None = None) -> dict[str, Any]:
    """A BackendTrafficPolicy limiting the route to ``requests`` per ``unit`` (429 beyond): with
    ``clients`` (API-key names) one bucket per client, selected by the client name the key check
    forwards (``CLIENT_ID_HEADER``: Envoy Gateway orders its api_key_auth filter before the local rate
    limit; that Envoy overwrites a client-sent header of that name is not verified here); without, one
    bucket for the whole route. Local: counted by each Envoy replica (api/v1alpha1/ratelimit_types.go,
    LocalRateLimit, v1.9.0)."""
    limit = {"requests": requests, "unit": unit}
    if clients:
        rules = [
            {"clientSelectors": [{"headers": [{"name": CLIENT_ID_HEADER, "type": "Exact", "value": c}]}], "limit": limit} for c in clients
        ]
    else:
        rules = [{"limit": limit}]
    return {"targetRefs": [{"group": GATEWAY_API, "kind": "HTTPRoute", "name": route}], "rateLimit": {"local": {"rules": rules}}}


def route_egress_spec(route_spec: dict[str, Any], route_namespace: str) -> dict[str, Any]:
    """Envoy's way out to one route's backends: their namespace, on the ports the route's backendRefs
    name, so a runtime on another port (vLLM on 8000, our server on 8501) is reachable exactly when
    routed. A NetworkPolicy port matches the destination pod's port (after the Service's translation):
    our Services map port -> the same container port (tests/stacks/test_network_isolation.py checks
    each backendRef through its Service to the pods and their ingress policies)."""
    ports = sorted({int(b["port"]) for rule in route_spec["rules"] for b in rule.get("backendRefs") or [] if b.get("port")})
    return {
        "podSelector": {"matchLabels": PROXY_LABELS},
        "policyTypes": ["Egress"],
        "egress": [
            {
                "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": route_namespace}}}],
                "ports": [{"protocol": "TCP", "port": p} for p in ports],
            }
        ],
    }


def allow_route(
    name: str, metadata: k8s.meta.v1.ObjectMetaArgs, route_spec: dict[str, Any], opts: pulumi.ResourceOptions
) -> k8s.networking.v1.NetworkPolicy:
    """``<name>-proxy-egress``: the NetworkPolicy (in the Gateway's namespace, from the route's
    parentRef) that lets the Envoy proxies reach this route's backends; policies add up, so each
    route opens its own ports and nothing else."""
    gateway_ns = route_spec["parentRefs"][0]["namespace"]
    return k8s.networking.v1.NetworkPolicy(
        f"{name}-proxy-egress",
        metadata={"name": f"envoy-to-{metadata.name}", "namespace": gateway_ns},
        spec=route_egress_spec(route_spec, metadata.namespace),
        opts=opts,
    )


@dataclass
class EntryPointArgs:
    namespace: str  # Envoy Gateway's own namespace: its controller, the Gateway and the Envoy proxies
    serving_namespace: str  # where the models' HTTPRoutes live
    config: GatewayConfig
    eks: bool
    proxy_replicas: int = 1
    # Union of the models' allowedCidrs when every model sets some; empty: the LB admits anyone
    # and each route's SecurityPolicy (if any) decides.
    source_ranges: list[str] = field(default_factory=list)


class EntryPoint(pulumi.ComponentResource):
    """``base_url`` is the entry point's address (``http(s)://host``); routes attach with ``route_opts``."""

    base_url: pulumi.Output[str]

    def __init__(self, name: str, args: EntryPointArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlplatform:gateway:EntryPoint", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        ns, cfg = args.namespace, args.config
        self.namespace, self.listener = ns, listener_name(cfg)
        self.release = helm.release(
            f"{name}-envoy-gateway",
            "gateway-helm",
            ns,
            {"deployment": {"replicas": 1}, "podDisruptionBudget": {"minAvailable": 0}},
            child,
            release_name="envoy-gateway",
        )
        self.gateway = self._gateway(name, args)
        service = k8s.core.v1.Service(
            f"{name}-service",
            metadata={"name": ENTRY_SERVICE, "namespace": ns, "annotations": service_annotations(cfg, args.eks) or None},
            spec=entry_service_spec(cfg, ns, sorted(set(args.source_ranges)), load_balancer=args.eks),
            # Awaited (its address is the stack's URL): its Envoy pods exist only once the controller
            # (the release) runs and the Gateway is there, so its 10-minute clock starts after both.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.release, self.gateway]),
        )
        self._network_policies(name, ns, args.serving_namespace, child)
        if cfg.tls:
            k8s.apiextensions.CustomResource(
                f"{name}-https-redirect",
                api_version=f"{GATEWAY_API}/v1",
                kind="HTTPRoute",
                metadata={"name": REDIRECT_ROUTE, "namespace": ns},
                spec=redirect_route_spec(ns),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[self.release, self.gateway]),
            )
        scheme = "https" if cfg.tls else "http"
        host = cfg.tls.hostname if cfg.tls and cfg.tls.hostname else None
        ingress = service.status.apply(lambda s: (s.load_balancer.ingress or [None])[0] if s and s.load_balancer else None)
        # Without a load balancer (kind): the in-cluster address; `make up` prints the port-forward.
        in_cluster = f"{ENTRY_SERVICE}.{ns}.svc.cluster.local"
        self.base_url = ingress.apply(
            lambda i: f"{scheme}://{host or ((i.hostname or i.ip) if i else ('pending' if args.eks else in_cluster))}"
        )
        # Routes and policies are custom resources whose CRDs the chart installs.
        self.route_opts = pulumi.ResourceOptions(depends_on=[self.release, self.gateway])
        self.register_outputs({"base_url": self.base_url})

    def _gateway(self, name: str, args: EntryPointArgs) -> k8s.apiextensions.CustomResource:
        """The Envoy proxies' settings (EnvoyProxy), the GatewayClass that points at them, and the Gateway."""
        ns = args.namespace
        proxy = k8s.apiextensions.CustomResource(
            f"{name}-proxy-config",
            api_version=f"{ENVOY_GATEWAY_API}/v1alpha1",
            kind="EnvoyProxy",
            metadata={"name": GATEWAY_NAME, "namespace": ns},
            # More than one Envoy where the stack asks for it: the entry point is every model's path.
            spec={
                "provider": {
                    "type": "Kubernetes",
                    "kubernetes": {
                        "envoyDeployment": {"replicas": args.proxy_replicas, **proxy_spread(ns, args.proxy_replicas)},
                        "envoyService": {"type": "ClusterIP"},
                        # A node drain takes one Envoy at a time (never the only one where there are two).
                        "envoyPDB": {"maxUnavailable": 1},
                    },
                }
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.release]),
        )
        gateway_class = k8s.apiextensions.CustomResource(
            f"{name}-class",
            api_version=f"{GATEWAY_API}/v1",
            kind="GatewayClass",
            metadata={"name": GATEWAY_CLASS},
            spec={
                "controllerName": CONTROLLER_NAME,
                "parametersRef": {"group": ENVOY_GATEWAY_API, "kind": "EnvoyProxy", "name": GATEWAY_NAME, "namespace": ns},
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.release, proxy]),
        )
        return k8s.apiextensions.CustomResource(
            f"{name}-gateway",
            api_version=f"{GATEWAY_API}/v1",
            kind="Gateway",
            metadata={"name": GATEWAY_NAME, "namespace": ns},
            spec=gateway_spec(args.config, args.serving_namespace),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[gateway_class]),
        )

    def _network_policies(self, name: str, ns: str, serving_ns: str, child: pulumi.ResourceOptions) -> None:
        """The namespace is default-deny: open what Envoy Gateway needs, nothing more."""
        k8s.networking.v1.NetworkPolicy(
            f"{name}-proxy",
            metadata={"name": "envoy-proxy", "namespace": ns},
            spec={
                "podSelector": {"matchLabels": PROXY_LABELS},
                "policyTypes": ["Ingress", "Egress"],
                # Clients from anywhere the load balancer admits; per-model CIDRs are enforced by Envoy.
                "ingress": [{"ports": [{"protocol": "TCP", "port": p} for p in PROXY_PORTS.values()]}],
                # The backends are opened per route (allow_route), on the ports its backendRefs name.
                "egress": [
                    {"to": [{"podSelector": {"matchLabels": CONTROLLER_LABELS}}], "ports": [{"protocol": "TCP", "port": XDS_PORT}]},
                ],
            },
            opts=child,
        )
        k8s.networking.v1.NetworkPolicy(
            f"{name}-controller",
            metadata={"name": "envoy-gateway-controller", "namespace": ns},
            spec={
                # The controller and the chart's certgen Job: the Kubernetes API only (plus xDS from the proxies).
                "podSelector": {"matchExpressions": [{"key": "app.kubernetes.io/name", "operator": "NotIn", "values": ["envoy"]}]},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [
                    {"from": [{"podSelector": {"matchLabels": PROXY_LABELS}}], "ports": [{"protocol": "TCP", "port": XDS_PORT}]},
                    # The topology-injector webhook, called by the API server (address unknown here).
                    {"ports": [{"protocol": "TCP", "port": WEBHOOK_PORT}]},
                ],
                "egress": [egress_except_metadata(443, 6443)],
            },
            opts=child,
        )
