"""A model's way in: its HTTPRoute on the stack's entry point (components/services/gateway.py) and,
where the model admits only some client networks (``allowedCidrs``), the SecurityPolicy on that
route. Both serving runtimes attach the same way; what differs is the route's spec (gateway.py's
``http_route_spec`` for our server, llm_service.py's for vLLM's OpenAI routes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.services import gateway


def attach(
    name: str, metadata: k8s.meta.v1.ObjectMetaArgs, spec: dict[str, Any], allowed_cidrs: Sequence[str], opts: pulumi.ResourceOptions
) -> k8s.apiextensions.CustomResource:
    """``<name>-route``, the HTTPRoute ``spec`` named as ``metadata``, and with ``allowed_cidrs``
    ``<name>-allowed-cidrs``, the SecurityPolicy that targets it by name. ``opts`` is the parent and
    what routes wait for (the entry point's CRDs and Gateway)."""
    route = k8s.apiextensions.CustomResource(
        f"{name}-route",
        api_version=f"{gateway.GATEWAY_API}/v1",
        kind="HTTPRoute",
        metadata=metadata,
        spec=spec,
        # Where Argo Rollouts' plugin owns the backend weights during a canary (and leaves them 0/100
        # after), the program never resets them.
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(ignore_changes=gateway.weight_paths(spec))),
    )
    if allowed_cidrs:
        k8s.apiextensions.CustomResource(
            f"{name}-allowed-cidrs",
            api_version=f"{gateway.ENVOY_GATEWAY_API}/v1alpha1",
            kind="SecurityPolicy",
            metadata=metadata,
            spec=gateway.security_policy_spec(metadata.name, list(allowed_cidrs)),
            opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[route])),
        )
    return route
