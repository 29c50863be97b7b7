"""Locate the upstream reference data (chart values, CRD schemas) the tests check against.

Where: ``MLPLATFORM_REFERENCE``, else ../shared/reference (the developers' machines and CI), else
build/reference, which a user's checkout fills with one command:

    make reference        # = python -m tools.reference fetch

It downloads every pinned upstream file (tools/reference_pins.json: URL at a commit + SHA-256, the
provenance of each in ../shared/reference/README.md), refuses any whose digest differs, and derives the
CRDs' JSON Schemas from them. Tests that need a file still missing skip, saying so.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import urllib.request
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
FETCHED = ROOT / "build" / "reference"
PINS = Path(__file__).with_name("reference_pins.json")


def reference_dir() -> Path | None:
    if "MLPLATFORM_REFERENCE" in os.environ:
        path = Path(os.environ["MLPLATFORM_REFERENCE"])
        return path if path.is_dir() else None
    for path in (ROOT.parent / "shared" / "reference", FETCHED):
        if path.is_dir():
            return path
    return None


# ---- make reference: fetch the pinned files, derive the schemas ----


class FetchError(Exception):
    """One line: which file, what went wrong; nothing half-written is left under its name."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _download(url: str, sha256: str, dest: Path) -> bool:
    """Put ``url`` at ``dest`` when its digest is ``sha256``; False when ``dest`` already was it."""
    if dest.exists() and _sha256(dest.read_bytes()) == sha256:
        return False
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 (pinned https URLs, or a test's file://)
            data = resp.read()
    except OSError as exc:
        raise FetchError(f"{url}: cannot download ({exc}); check the connection or proxy, then run `make reference` again") from exc
    if (got := _sha256(data)) != sha256:
        raise FetchError(f"{url}: SHA-256 {got} is not the pinned {sha256}; not installed")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(dest)
    return True


def _rewrite(node: Any, rewrites: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: _rewrite(v, rewrites) for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite(v, rewrites) for v in node]
    return rewrites.get(node, node) if isinstance(node, str) else node


def derive_schema(crd_text: str, version: str, rewrites: dict[str, str] | None = None) -> dict[str, Any]:
    """A CRD version's openAPIV3Schema as a draft-07 JSON Schema (../shared/reference/README.md:
    copied unchanged, except patterns Python's re rejects, rewritten to their equivalents)."""
    crd = yaml.load(crd_text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 (a safe loader; libyaml's when built)
    entry = next((v for v in crd["spec"]["versions"] if v["name"] == version), None)
    if entry is None:
        raise FetchError(f"CRD {crd['metadata']['name']} has no version {version}")
    title = f"{crd['spec']['names']['kind']} ({crd['spec']['group']}/{version})"
    header = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": title,
        "$comment": f"derived from CRD {crd['metadata']['name']}",
    }
    return {**header, **_rewrite(entry["schema"]["openAPIV3Schema"], rewrites or {})}


def fetch(dest: Path = FETCHED, pins_file: Path = PINS) -> tuple[int, int]:
    """Fill ``dest``: (files downloaded, files already current). Raises FetchError."""
    pins = json.loads(pins_file.read_text())
    got = kept = 0
    for pin in pins["fetched"]:
        if _download(pin["url"], pin["sha256"], dest / pin["path"]):
            got += 1
        else:
            kept += 1
    for der in pins["derived"]:
        schema = derive_schema((dest / der["from"]).read_text(), der["version"], pins.get("rewrites", {}).get(der["path"]))
        (dest / der["path"]).write_text(json.dumps(schema, indent=2) + "\n")
    return got, kept


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.reference", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["fetch", "where"])
    p.add_argument("--dest", type=Path, default=FETCHED, help=argparse.SUPPRESS)
    p.add_argument("--pins", type=Path, default=PINS, help=argparse.SUPPRESS)  # the tests' own pins
    args = p.parse_args(argv)
    if args.command == "where":
        print(reference_dir() or "none: run `make reference`")
        return 0
    try:
        got, kept = fetch(args.dest, args.pins)
    except FetchError as exc:
        print(f"reference: {exc}", file=sys.stderr)
        return 1
    print(f"reference: {got} downloaded, {kept} already current, schemas derived -> {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


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
