"""Run every policy on a synth output, offline (no Pulumi CLI):

    python -m policy.check build/synth/dev [--max-total-gpus 16]

Prints each violation with its URN; exit 1 on a mandatory violation (the prod GPU ceiling is advisory).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from components.config import GPU_COUNT
from policy import rules

DEFAULT_MAX_TOTAL_GPUS = 16


def load(out_dir: Path) -> list[rules.Res]:
    return with_chart_defaults(
        [
            rules.Res(type=r["type"], props=r["inputs"], urn=r["urn"], name=r["name"], parent=r["parent"])
            for r in json.loads((out_dir / "resources.json").read_text())
        ]
    )


def with_chart_defaults(resources: list[rules.Res]) -> list[rules.Res]:
    """Attach each Helm release's chart defaults (../shared/reference, where present) so that the
    chart-pod rules judge the values Helm will render, not only those the program sets."""
    from tools import reference

    for r in resources:
        if r.type == "kubernetes:helm.sh/v3:Release":
            defaults = reference.chart_values(str(r.props.get("chart", "")), str(r.props.get("version", "")))
            if defaults is not None:
                r.extra["chart_defaults"] = defaults
    return resources


def violations(
    resources: list[rules.Res], max_total_gpus: int = DEFAULT_MAX_TOTAL_GPUS
) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """(mandatory, advisory) violations as (policy, urn, message)."""
    mandatory = [(name, r.urn, m) for r in resources for name, (rule, _) in rules.RESOURCE_RULES.items() for m in rule(r)]
    mandatory += [(name, urn, m) for name, (rule, _) in rules.STACK_RULES.items() for urn, m in rule(resources)]
    mandatory += [("gpu-ceiling", u, m) for u, m in rules.gpu_ceiling(resources, max_total_gpus, GPU_COUNT, prod=False)]
    advisory = [("gpu-ceiling-prod", u, m) for u, m in rules.gpu_ceiling(resources, max_total_gpus, GPU_COUNT, prod=True)]
    return mandatory, advisory


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m policy.check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("synth_dir", type=Path)
    p.add_argument("--max-total-gpus", type=int, default=DEFAULT_MAX_TOTAL_GPUS)
    args = p.parse_args(argv)
    mandatory, advisory = violations(load(args.synth_dir), args.max_total_gpus)
    for level, found in (("MANDATORY", mandatory), ("advisory", advisory)):
        for name, urn, message in found:
            print(f"{level} {name}: {urn}: {message}")
    print(f"{len(mandatory)} mandatory, {len(advisory)} advisory violations")
    return 1 if mandatory else 0


if __name__ == "__main__":
    sys.exit(main())
