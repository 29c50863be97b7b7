"""A model's way in: its HTTPRoute on the stack's entry point (components/services/gateway.py) and,
where the model admits only some client networks (``allowedCidrs``), the SecurityPolicy on that
route. Both serving runtimes attach the same way; what differs is the route's spec (gateway.py's
``http_route_spec`` for our server, llm_service.py's for vLLM's OpenAI routes)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

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
    depends_on: list[pulumi.Resource] = field(default_factory=list)


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
            spec=gateway.security_policy_spec(metadata.name, list(allowed_cidrs), guard.api_keys_secret),
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
