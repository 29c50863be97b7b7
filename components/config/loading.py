"""From the engine's config to the program's Settings: read every ``mlplatform:*`` key, validate, fail
fast with one ConfigError (one line per problem) before any resource is registered."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi

from components.config.errors import ConfigError, stack_file
from components.config.schema import NAMESPACE, SECRET_KEYS, PlatformConfig
from components.config.validation import problems


def validate(raw: dict[str, Any], stack_file: str) -> PlatformConfig:
    """Validate the raw camelCase config; raise ConfigError naming every problem, one line each."""
    cfg, found = problems(raw)
    if found or cfg is None:
        raise ConfigError.many(stack_file, found)
    return cfg


@dataclass(frozen=True)
class Settings:
    """What the program gets: the validated config plus secrets (as Pulumi secret Outputs)."""

    stack: str
    config: PlatformConfig
    secrets: dict[str, pulumi.Output[str]]


def _raw_config() -> dict[str, Any]:
    """Every ``mlplatform:*`` key the engine passed us, decoded (objects arrive JSON-encoded)."""
    from pulumi.runtime import config as rtconfig

    keys = set(rtconfig.get_config_env()) | set(rtconfig.CONFIG.get())
    raw: dict[str, Any] = {}
    for full in sorted(keys):
        ns, _, key = full.partition(":")
        if ns != NAMESPACE or key in SECRET_KEYS:
            continue
        value = rtconfig.get_config(full)
        # Objects and lists arrive JSON-encoded; scalars stay strings ("1.30" must not become 1.3).
        if isinstance(value, str) and value[:1] in "{[":
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ConfigError(stack_file(pulumi.get_stack()), key, f"is not valid JSON/YAML: {exc}") from None
        raw[key] = value
    return raw


def secret_problems(cfg: PlatformConfig) -> list[tuple[str, str]]:
    """Problems of the secret values. The engine hands the program their plaintext (``get_secret``
    only wraps it), so they are checked here, before any resource, rather than inside an ``apply``
    where a mistake is a traceback. Messages name keys, never values."""
    from pulumi.runtime import config as rtconfig

    found: list[tuple[str, str]] = []
    credentials = rtconfig.get_config(f"{NAMESPACE}:jenkinsCredentials")
    if cfg.jenkins.enabled and credentials is not None:
        # The credentials a Jenkins folder binds are Jenkins's to name: its own parser is the check.
        from components.services.jenkins import credentials_data

        try:
            credentials_data(credentials)
        except ValueError as exc:
            found.append(("jenkinsCredentials", str(exc)))
    return found


def load() -> Settings:
    """Read and validate this stack's config. Raises ConfigError before any resource exists."""
    stack = pulumi.get_stack()
    cfg = validate(_raw_config(), stack_file(stack))
    if found := secret_problems(cfg):
        raise ConfigError.many(stack_file(stack), found)
    conf = pulumi.Config(NAMESPACE)
    secrets = {k: v for k in SECRET_KEYS if (v := conf.get_secret(k)) is not None}
    return Settings(stack=stack, config=cfg, secrets=secrets)
