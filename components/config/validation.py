"""Every problem of a raw stack config, as (key path, what is expected): pydantic's errors translated to
camelCase key paths (unknown keys with a did-you-mean), keys that moved, then the cross-field rules.
No Pulumi; loading.py turns the problems into one ConfigError.
"""

from __future__ import annotations

import difflib
import json
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from components.config.rules import rules
from components.config.schema import MOVED_KEYS, SECRET_KEYS, TOP_LEVEL_KEYS, TRAINING_BRANCHES, PlatformConfig


def _untagged(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """``loc`` without the tag pydantic adds after a tagged union's field (``training.lora.params`` ->
    ``training.params``): the stack file has no such key."""
    return tuple(p for i, p in enumerate(loc) if not (i and loc[i - 1] == "training" and p in TRAINING_BRANCHES))


def _key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in _untagged(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _submodel(ann: Any) -> tuple[type[BaseModel] | None, bool]:
    """The model type inside a field annotation (``X``, ``X | None``, ``list[X]``, ``dict[str, X]``),
    and whether a path part (a dict key) comes before it."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is dict:
        return _submodel(args[1])[0], True
    if origin is typing.Annotated:
        return _submodel(args[0])
    if origin is list or origin in (typing.Union, types.UnionType):
        for arg in args:
            found, keyed = _submodel(arg)
            if found is not None:
                return found, keyed
        return None, False
    return (ann, False) if isinstance(ann, type) and issubclass(ann, BaseModel) else (None, False)


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The camelCase keys allowed at ``loc`` (walks the model along the path)."""
    m: Any = model
    parts = [p for p in loc if not isinstance(p, int)]
    while parts:
        part = parts.pop(0)
        field = next((f for n, f in m.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return []
        m, keyed = _submodel(field.annotation)
        if part == "training" and parts and parts[0] in TRAINING_BRANCHES:
            m = TRAINING_BRANCHES[parts.pop(0)]  # the tagged union's branch (components/config/lora.py)
        if m is None:
            return []
        if keyed and parts:
            parts.pop(0)  # the dict key (a model name)
    return [f.alias or n for n, f in m.model_fields.items()]


def _describe(err: dict[str, Any]) -> str:
    loc, kind, got = err["loc"], err["type"], err.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(PlatformConfig, loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        did = f"did you mean {hint[0]!r}? " if hint else ""
        return f"unknown key ({did}allowed: {', '.join(allowed)})"
    if kind == "missing":
        return "required key is missing"
    msg = err["msg"].removeprefix("Value error, ")
    if kind == "value_error":
        return msg
    return f"{msg[0].lower()}{msg[1:]} (got {json.dumps(got, default=str)})"


def _base_broken(cfg: PlatformConfig, section: list[str], broken: set[str]) -> bool:
    """A LoRA adapter's base with type errors was left out of the rules' config: the adapter's rules
    would call it unknown (its type errors are what to fix)."""
    if section[0] != "models" or len(section) < 2 or section[1] not in cfg.models:
        return False
    base = cfg.models[section[1]].adapter_of
    return base is not None and f"models.{base}" in broken


def problems(raw: dict[str, Any]) -> tuple[PlatformConfig | None, list[tuple[str, str]]]:
    """Every problem of the raw camelCase config as (key path, what is expected); the validated
    config when there is none.

    Sections with type errors are reported as such; the cross-field rules still run on the other
    sections (with the broken ones at their defaults, and no rule reported against those), except
    when ``environment`` or ``cluster`` is broken: every rule reads them.
    """
    found: list[tuple[str, str]] = []
    for key in raw:
        if key in MOVED_KEYS:
            found.append((key, MOVED_KEYS[key]))
        elif key not in TOP_LEVEL_KEYS and key not in SECRET_KEYS:
            hint = difflib.get_close_matches(key, TOP_LEVEL_KEYS + SECRET_KEYS, n=1)
            did = f"did you mean {hint[0]!r}? " if hint else ""
            found.append((key, f"unknown key ({did}allowed: {', '.join(TOP_LEVEL_KEYS)})"))
    plain = {k: v for k, v in raw.items() if k in TOP_LEVEL_KEYS}
    try:
        cfg = PlatformConfig.model_validate(plain)
        broken: set[str] = set()
    except ValidationError as exc:
        errors = exc.errors()
        found += [(_key_path(e["loc"]), _describe(e)) for e in errors]
        # A catalogue entry is its own section: one broken model does not hide the others' rules.
        broken = {".".join(map(str, e["loc"][: 2 if e["loc"][0] == "models" else 1])) for e in errors if e["loc"]}
        if broken & {"environment", "cluster"}:
            return None, found
        partial = {k: v for k, v in plain.items() if k not in broken}
        if isinstance(partial.get("models"), dict):
            partial["models"] = {n: m for n, m in partial["models"].items() if f"models.{n}" not in broken}
        cfg = PlatformConfig.model_validate(partial)
    for key, message in rules(cfg):
        section = key.split("[")[0].split(".")
        # A defaulted gpuPools would make every GPU training look unschedulable.
        if (
            section[0] in broken
            or ".".join(section[:2]) in broken
            or ("gpuPools" in broken and (key.endswith((".training.gpus", ".runtime")) or ".llm." in key))
            or _base_broken(cfg, section, broken)
        ):
            continue
        found.append((key, message))
    return (None if found else cfg), found
