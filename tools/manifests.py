"""Validate Kubernetes manifests offline: kubernetes-validate (strict) for built-in kinds, the
Prometheus-operator CRD schemas (unknown fields rejected) for monitoring kinds."""

from __future__ import annotations

import functools
from typing import Any

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils

from tools.reference import crd_schema

# kubernetes-validate re-reads and re-parses the (large) schema files for every manifest; the files
# never change within a run, so parse each once.
kubernetes_validate.utils.schema_contents = functools.cache(kubernetes_validate.utils.schema_contents)

# Custom kinds the program renders, each validated against its upstream CRD schema in
# ../shared/reference/crds/<kind>.json (see its README for versions and provenance).
CRD_KINDS = {
    *("ServiceMonitor", "PodMonitor", "PrometheusRule"),  # prometheus-operator
    *("ResourceFlavor", "ClusterQueue", "LocalQueue", "WorkloadPriorityClass"),  # Kueue
    "JobSet",
    *("Gateway", "GatewayClass", "HTTPRoute", "ReferenceGrant"),  # Gateway API
    *("EnvoyProxy", "SecurityPolicy", "BackendTrafficPolicy"),  # Envoy Gateway v1.9.0 (gateway.envoyproxy.io)
    *("ScaledObject", "ScaledJob", "TriggerAuthentication"),  # KEDA
    *("Rollout", "AnalysisTemplate", "ClusterAnalysisTemplate", "AnalysisRun", "Experiment"),  # Argo Rollouts
}


def validate(manifest: dict[str, Any], kubernetes_version: str) -> list[str]:
    """Problems with ``manifest`` ([] when valid). Custom kinds without a schema at hand are skipped."""
    kind = manifest.get("kind", "?")
    if kind in CRD_KINDS:
        schema = crd_schema(kind)
        if schema is None:
            return []
        validator = jsonschema.Draft7Validator(schema)
        return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(manifest)]
    try:
        kubernetes_validate.validate(manifest, kubernetes_version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [e.message]
    return []
