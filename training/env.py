"""Numbers from environment variables, for the training contract and the cluster spec: an unset or
empty variable is the default; anything else must parse, or the caller's own error type names it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

T = TypeVar("T")


def env_int(env: Mapping[str, str], name: str, default: T, error: type[ValueError] = ValueError) -> int | T:
    return _read(env, name, default, int, "an integer", error)


def env_float(env: Mapping[str, str], name: str, default: T, error: type[ValueError] = ValueError) -> float | T:
    return _read(env, name, default, float, "a number", error)


def _read(env: Mapping[str, str], name: str, default: T, parse: Callable[[str], int | float], what: str, error: type[ValueError]):
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        return parse(raw)
    except ValueError:
        raise error(f"{name} must be {what}, got {raw!r}") from None
