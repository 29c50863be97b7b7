"""Offline synth: render one stack under Pulumi's mocks, with no cloud and no Pulumi CLI.

    python -m tools.synth --stack dev --out build/synth/dev

writes ``resources.json`` (type, name, urn, parent, aliases, inputs; secrets as "[secret]") and
``manifests/*.yaml`` (every Kubernetes object, validated strictly for the stack's kubernetesVersion).
Two runs give byte-identical output. Exit 2 with one line on a bad config or an invalid manifest.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path

import yaml

from components.config import ConfigError
from components.config.errors import yaml_error_line
from tools import manifests, mock_engine


def manifest_filename(obj: dict) -> str:
    meta = obj.get("metadata", {})
    parts = [obj.get("kind", "object"), meta.get("namespace", "cluster"), meta.get("name", "unnamed")]
    return re.sub(r"[^a-z0-9.-]+", "-", "_".join(parts).lower()) + ".yaml"


def synth(stack: str, out: Path, overrides: dict | None = None) -> tuple[int, int]:
    """Render ``stack`` into ``out``; returns (resources, manifests). Raises ConfigError / ValueError.
    ``overrides`` replaces stack-config keys ('mlplatform:training': {...}), as mock_engine.run does."""
    result = mock_engine.run(stack, overrides)
    k8s_version = next((r.inputs.get("version") for r in result.records if r.type == "eks:index:Cluster"), None) or _stack_k8s_version(
        stack
    )
    resources = [
        {"type": r.type, "name": r.name, "urn": r.urn, "parent": r.parent, "aliases": r.aliases, "inputs": r.inputs} for r in result.records
    ]
    objects = [r.inputs for r in result.k8s_objects()]
    problems = [f"{manifest_filename(o)}: {p}" for o in objects for p in manifests.validate(o, k8s_version)]
    if problems:
        raise ValueError(f"invalid manifest {problems[0]}" + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))
    if out.exists():
        shutil.rmtree(out)
    (out / "manifests").mkdir(parents=True)
    (out / "resources.json").write_text(json.dumps(resources, indent=2, sort_keys=True) + "\n")
    (out / "outputs.json").write_text(json.dumps(result.outputs, indent=2, sort_keys=True) + "\n")
    for obj in objects:
        (out / "manifests" / manifest_filename(obj)).write_text(yaml.safe_dump(obj, sort_keys=True))
    return len(resources), len(objects)


def _stack_k8s_version(stack: str) -> str:
    cfg, _ = mock_engine.stack_config(stack)
    return cfg.get("mlplatform:kubernetesVersion", "1.33")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.synth", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", required=True, help="stack name: stacks/Pulumi.<stack>.yaml")
    parser.add_argument("--out", required=True, type=Path, help="output directory (replaced)")
    args = parser.parse_args(argv)
    if not (mock_engine.stacks_dir() / f"Pulumi.{args.stack}.yaml").exists():
        known = sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in mock_engine.stacks_dir().glob("Pulumi.*.yaml"))
        print(f"stacks/Pulumi.{args.stack}.yaml: no such stack file; the stacks are: {', '.join(known)}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        n_res, n_obj = synth(args.stack, args.out)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except yaml.YAMLError as exc:  # a syntax error in the stack file: one line, file:line:column
        print(yaml_error_line(f"stacks/Pulumi.{args.stack}.yaml", exc), file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"stacks/Pulumi.{args.stack}.yaml: {exc}", file=sys.stderr)
        return 2
    print(f"synth {args.stack}: {n_res} resources, {n_obj} manifests -> {args.out} ({time.perf_counter() - start:.2f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
