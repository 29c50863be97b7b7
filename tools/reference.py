"""Locate the upstream reference data (chart values, CRD schemas) in ../shared/reference.

Present on the developers' machines and CI; absent on a user's clone, where tests that need it skip.
``MLPLATFORM_REFERENCE`` overrides the location.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


def reference_dir() -> Path | None:
    path = Path(os.environ.get("MLPLATFORM_REFERENCE", ROOT.parent / "shared" / "reference"))
    return path if path.is_dir() else None


# Subcharts whose values.yaml the parent only overrides in part: checked against the subchart's own.
SUBCHARTS = {"kube-prometheus-stack": {"grafana": ("grafana", "12.11.1")}}


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in over.items()}}
    return over if over is not None else base


@cache
def chart_values(chart: str, version: str) -> dict[str, Any] | None:
    """The chart's default values, with its subcharts' own defaults merged under their keys."""
    ref = reference_dir()
    path = ref / "charts" / chart / version / "values.yaml" if ref else None
    if path and not path.exists():
        # Some charts (Envoy Gateway's gateway-helm) keep only a values template upstream; its
        # placeholders are plain strings, so it parses as YAML and has every key (reference README).
        path = path.with_name("values.tmpl.yaml")
    if not path or not path.exists():
        return None
    values = yaml.safe_load(path.read_text())
    for key, (sub, sub_version) in SUBCHARTS.get(chart, {}).items():
        sub_values = chart_values(sub, sub_version)
        if sub_values is not None:
            values[key] = _merge(sub_values, values.get(key) or {})
    return values


def _close(schema: Any) -> Any:
    """Set additionalProperties: false wherever an object lists its properties, so typos fail
    (structural schemas, like Kubernetes itself without strict validation, accept unknown fields)."""
    if isinstance(schema, dict):
        out = {k: _close(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_close(v) for v in schema]
    return schema


@cache
def crd_schema(kind: str) -> dict[str, Any] | None:
    """Strict JSON schema for a Prometheus-operator kind (ServiceMonitor, PodMonitor, PrometheusRule)."""
    ref = reference_dir()
    path = ref / "crds" / f"{kind.lower()}.json" if ref else None
    if not path or not path.exists():
        return None
    schema = _close(json.loads(path.read_text()))
    # metadata is validated by the API server, not by the CRD schema
    schema["properties"]["metadata"] = {"type": "object"}
    return schema


# Maps a chart passes through verbatim (e.g. command-line flags): any key is valid below them.
# Kubernetes SecurityContext objects the chart renders verbatim (toYaml): any field of the Kubernetes
# schema is valid there, not only those the chart's default happens to list.
FREE_FORM = {
    "cluster-autoscaler": {"extraArgs"},
    "jenkins": {"controller.containerSecurityContext"},
    "prometheus-pushgateway": {"securityContext", "containerSecurityContext"},
}


def unknown_value_keys(values: Any, reference: Any, chart: str = "", path: str = "") -> list[str]:
    """Key paths set in ``values`` that the chart's values.yaml does not have (typos, removed keys).

    Below a key whose default is not a non-empty map (``{}``, a list, null, a scalar), anything goes:
    those are free-form in the chart.
    """
    if not isinstance(values, dict) or not isinstance(reference, dict) or not reference:
        return []
    if path in FREE_FORM.get(chart, ()):
        return []
    bad = []
    for key, value in values.items():
        sub = f"{path}.{key}" if path else str(key)
        if key not in reference:
            bad.append(sub)
        else:
            bad += unknown_value_keys(value, reference[key], chart, sub)
    return bad
