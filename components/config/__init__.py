"""Typed, validated stack configuration: the only package that reads ``pulumi.Config``.

Every error names the stack file and the key path, in one line, and is raised before any resource is
registered, e.g. ``stacks/Pulumi.prod.yaml: mlplatform:gpuPools[0].min: must be <= max (got min=3, max=2)``.

One concern per module:
- ``schema``: the stack file's sections as pydantic models (types, bounds, defaults, descriptions)
- ``llm``: the ``llm`` section of a ``runtime: vllm`` model, and its rules
- ``capacity``: quantities, server processes per pod, the GPUs the pools hold and LLM serving keeps
- ``rules``: the cross-field and per-environment rules, one generator per section
- ``validation``: ``problems()``: every problem of a raw config as (key path, message)
- ``errors``: ``ConfigError`` (a ``pulumi.RunError``: the engine prints it without a traceback)
- ``loading``: ``load()`` (the engine's config -> ``Settings``) and ``validate()``

Only ``errors`` and ``loading`` import Pulumi. This package re-exports the names the program imports;
those two modules' names are imported on first use, so that importing the rest (the offline policy
checker, the pure tests) never loads Pulumi (tests/unit/test_layout.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from components.config.capacity import GPU_COUNT, TRAINING_WORKER_CPU, serving_processes, serving_reserved_gpus
from components.config.schema import (
    GITHUB_ISSUER,
    JENKINS_ENVIRONMENT,
    SECRET_KEYS,
    AlertingConfig,
    CanaryConfig,
    CiConfig,
    ClusterConfig,
    GatewayConfig,
    GpuPool,
    JenkinsConfig,
    ModelConfig,
    MonitoringConfig,
    PlatformConfig,
    RegistryConfig,
    ServingConfig,
    TrainingConfig,
)

if TYPE_CHECKING:
    from components.config.errors import ConfigError, stack_file
    from components.config.loading import Settings, load, validate

# The names whose modules import Pulumi: resolved by ``__getattr__`` when first asked for.
_PULUMI_BOUND = {
    "ConfigError": "errors",
    "stack_file": "errors",
    "Settings": "loading",
    "load": "loading",
    "validate": "loading",
}


def __getattr__(name: str) -> Any:
    if name not in _PULUMI_BOUND:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_PULUMI_BOUND[name]}"), name)
    globals()[name] = value
    return value


__all__ = [
    "GITHUB_ISSUER",
    "GPU_COUNT",
    "JENKINS_ENVIRONMENT",
    "SECRET_KEYS",
    "TRAINING_WORKER_CPU",
    "AlertingConfig",
    "CanaryConfig",
    "CiConfig",
    "ClusterConfig",
    "ConfigError",
    "GatewayConfig",
    "GpuPool",
    "JenkinsConfig",
    "ModelConfig",
    "MonitoringConfig",
    "PlatformConfig",
    "RegistryConfig",
    "ServingConfig",
    "Settings",
    "TrainingConfig",
    "load",
    "serving_processes",
    "serving_reserved_gpus",
    "stack_file",
    "validate",
]
