"""A model's way in: its HTTPRoute on the stack's entry point (components/services/gateway.py) and,
where the model admits only some client networks (``allowedCidrs``), the SecurityPolicy on that
route, and where ``serving.apiKey`` is on its keys and per-client rate limit (``guard``). Both serving
runtimes attach the same way; what differs is the route's spec (gateway.py's
``http_route_spec`` for our server, llm_service.py's for vLLM's OpenAI routes)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from components.services import gateway

# The plugin updates the route with a plain update, so its field manager owns spec.rules, an atomic
# list (Gateway API's HTTPRoute schema sets no list-map keys on rules): a later route edit applied by
# Pulumi (server-side apply) would conflict with it. patchForce takes the list back on our apply;
# ignore_changes above keeps the weights at the values in Pulumi's state (100/0, what the plugin
# leaves after a canary). pulumi-kubernetes 4.x annotation, docs "Server-Side Apply" (unverified here).
PATCH_FORCE = {"pulumi.com/patchForce": "true"}


def route_metadata(metadata: k8s.meta.v1.ObjectMetaArgs, canary: bool) -> k8s.meta.v1.ObjectMetaArgs:
    if not canary:
        return metadata
    return k8s.meta.v1.ObjectMetaArgs(
        name=metadata.name,
        namespace=metadata.namespace,
        labels=metadata.labels,
        annotations={**(metadata.annotations or {}), **PATCH_FORCE},
    )


@dataclass(frozen=True)
class Guard:
    """What a route admits besides its CIDRs: ``api_keys_secret``, the Secret (in the route's
    namespace) whose keys the gateway requires; ``rate_limit``, the BackendTrafficPolicy spec
    (gateway.rate_limit_spec) limiting its clients. None: neither (our server checks its own key)."""

    api_keys_secret: str | None = None
    rate_limit: dict[str, Any] | None = None
    sanitize: bool = True  # the gateway removes the key before the backend
    depends_on: list[pulumi.Resource] = field(default_factory=list)


@dataclass(frozen=True)
class Access:
    """What a model's route asks of its clients at the entry point, for every runtime: with ``clients``
    one generated key each (``serving.apiKey``; LLM: ``llm.apiClients``, TF: ``serving.apiClients``) in
    the Secret ``secret``, each client limited to ``requests`` per ``unit`` apart; without, the route
    as a whole is limited where ``limit_without_keys`` (LLM routes), else not at all (TF routes: their
    server's queue answers 429). ``sanitize``: the gateway strips the key before the backend (LLM);
    False where the backend checks it again (our TF server, model_service.py ``_identity``)."""

    secret: str
    clients: list[str] | None
    requests: int
    unit: str
    sanitize: bool = True
    limit_without_keys: bool = True
    resource_suffix: str = "-api-keys"  # the Secret's Pulumi name: ``<name><suffix>``


def guard(parent: pulumi.Resource, name: str, metadata: k8s.meta.v1.ObjectMetaArgs, access: Access) -> tuple[Guard, pulumi.Output | None]:
    """The route's Guard (``attach``) and, with clients, their keys (client name -> key, a Pulumi
    secret: ``RandomPassword``s in state, never in config or clear text) in the Secret the gateway's
    apiKeyAuth reads (data key = client name, value = key), next to the route (``metadata``'s namespace)."""
    route_name = metadata.name
    limited = bool(access.clients) or access.limit_without_keys
    limit = gateway.rate_limit_spec(route_name, access.requests, access.unit, access.clients) if limited else None
    if not access.clients:
        return Guard(rate_limit=limit), None
    child = pulumi.ResourceOptions(parent=parent)
    keys = {
        c: random.RandomPassword(f"{name}-api-key-{c}", random.RandomPasswordArgs(length=40, special=False), opts=child).result
        for c in access.clients
    }
    secret_keys = pulumi.Output.secret(pulumi.Output.all(**keys))
    secret = k8s.core.v1.Secret(
        f"{name}{access.resource_suffix}",
        metadata=k8s.meta.v1.ObjectMetaArgs(name=access.secret, namespace=metadata.namespace, labels=metadata.labels),
        type="Opaque",
        string_data=secret_keys,
        opts=child,
    )
    return Guard(api_keys_secret=access.secret, rate_limit=limit, sanitize=access.sanitize, depends_on=[secret]), secret_keys


def attach(
    name: str,
    metadata: k8s.meta.v1.ObjectMetaArgs,
    spec: dict[str, Any],
    allowed_cidrs: Sequence[str],
    opts: pulumi.ResourceOptions,
    guard: Guard | None = None,
) -> k8s.apiextensions.CustomResource:
    """``<name>-route``, the HTTPRoute ``spec`` named as ``metadata``, and with ``allowed_cidrs`` or
    an API key ``<name>-allowed-cidrs``, the SecurityPolicy that targets it by name (and with a rate
    limit ``<name>-rate-limit``, its BackendTrafficPolicy). ``opts`` is the parent and what routes
    wait for (the entry point's CRDs and Gateway)."""
    guard = guard or Guard()
    weights = gateway.weight_paths(spec)
    route = k8s.apiextensions.CustomResource(
        f"{name}-route",
        api_version=f"{gateway.GATEWAY_API}/v1",
        kind="HTTPRoute",
        metadata=route_metadata(metadata, canary=bool(weights)),
        spec=spec,
        # Where Argo Rollouts' plugin owns the backend weights during a canary (and leaves them 0/100
        # after), the program never resets them.
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(ignore_changes=weights)),
    )
    # The Envoy proxies' egress to this route's backends (their namespace is default-deny).
    gateway.allow_route(name, metadata, spec, opts)
    after = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[route, *guard.depends_on]))
    if allowed_cidrs or guard.api_keys_secret:
        k8s.apiextensions.CustomResource(
            # The name kept from when the policy held only the CIDRs (no replacement on upgrade).
            f"{name}-allowed-cidrs",
            api_version=f"{gateway.ENVOY_GATEWAY_API}/v1alpha1",
            kind="SecurityPolicy",
            metadata=metadata,
            spec=gateway.security_policy_spec(metadata.name, list(allowed_cidrs), guard.api_keys_secret, guard.sanitize),
            opts=after,
        )
    if guard.rate_limit:
        k8s.apiextensions.CustomResource(
            f"{name}-rate-limit",
            api_version=f"{gateway.ENVOY_GATEWAY_API}/v1alpha1",
            kind="BackendTrafficPolicy",
            metadata=metadata,
            spec=guard.rate_limit,
            opts=after,
        )
    return route
