"""The CrossGuard pack:  pulumi preview --policy-pack policy [--policy-pack-config policy/config.json]

Every policy is a pure function in policy/rules.py; this file only adapts them to pulumi-policy.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulumi_policy import (  # noqa: E402
    EnforcementLevel,
    PolicyPack,
    ResourceValidationPolicy,
    StackValidationPolicy,
)

from components.config import GPU_COUNT  # noqa: E402
from policy import rules  # noqa: E402

DEFAULT_MAX_TOTAL_GPUS = 16


def _res(args) -> rules.Res:
    return rules.Res(type=args.resource_type, props=args.props, urn=args.urn, name=args.name)


def _resource_policy(name, rule, why):
    def validate(args, report_violation):
        for message in rule(_res(args)):
            report_violation(message)

    return ResourceValidationPolicy(name=name, description=why, validate=validate)


def _stack_resources(args) -> list[rules.Res]:
    return [
        rules.Res(type=r.resource_type, props=r.props, urn=r.urn, name=r.name, parent=r.parent.urn if r.parent else "")
        for r in args.resources
    ]


def _stack_policy(name, rule, why, level=EnforcementLevel.MANDATORY, config_schema=None):
    def validate(args, report_violation):
        for urn, message in (
            rule(_stack_resources(args), args.get_config() if config_schema else None) if config_schema else rule(_stack_resources(args))
        ):
            report_violation(message, None if urn == "stack" else urn)

    return StackValidationPolicy(name=name, description=why, validate=validate, enforcement_level=level, config_schema=config_schema)


GPU_CONFIG = {"properties": {"maxTotalGpus": {"type": "integer", "default": DEFAULT_MAX_TOTAL_GPUS}}}


def _ceiling(prod: bool):
    def rule(resources, config):
        return rules.gpu_ceiling(resources, int((config or {}).get("maxTotalGpus", DEFAULT_MAX_TOTAL_GPUS)), GPU_COUNT, prod)

    return rule


PolicyPack(
    name="mlplatform",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=[
        *(_resource_policy(name, rule, why) for name, (rule, why) in rules.RESOURCE_RULES.items()),
        *(_stack_policy(name, rule, why) for name, (rule, why) in rules.STACK_RULES.items()),
        _stack_policy("gpu-ceiling", _ceiling(prod=False), "a typo in max must not buy a fleet of GPUs", config_schema=GPU_CONFIG),
        _stack_policy(
            "gpu-ceiling-prod", _ceiling(prod=True), "prod may exceed the ceiling, but says so", EnforcementLevel.ADVISORY, GPU_CONFIG
        ),
    ],
)
