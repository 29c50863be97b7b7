"""What documents the stack config, generated from the config model (components/config/schema.py):
the README's table, Pulumi.yaml's `config:` declarations (what `pulumi config` shows) and the JSON
Schema of a stack file (stacks/stack.schema.json: editors complete and check stack files with it,
through the `# yaml-language-server: $schema=` line at their top).

    python -m tools.config_doc            # print the table
    python -m tools.config_doc --write    # rewrite all three

Every field's description lives in the model; tests fail when any of the three differs from this
output, so none can drift from what the program accepts.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from components.config import schema

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PULUMI_YAML = ROOT / "Pulumi.yaml"
SCHEMA = ROOT / "stacks" / "stack.schema.json"
SCHEMA_LINE = "# yaml-language-server: $schema=./stack.schema.json"
BEGIN, END = "<!-- config-table:begin (python -m tools.config_doc --write) -->", "<!-- config-table:end -->"


def _type(ann: Any) -> str:
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Literal:
        return "\\|".join(str(a) for a in args)
    if origin is list:
        return f"list of {_type(args[0])}"
    if origin is dict:
        return f"map of {_type(args[1])}"
    if args and type(None) in args:
        return _type(next(a for a in args if a is not type(None)))
    if origin in (typing.Union, types.UnionType):  # e.g. int | "auto", str | int | float | bool
        return " or ".join(_type(a) for a in args)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return "object"
    meta = getattr(ann, "__origin__", None)  # Annotated[str, ...] (Cidr, Quantity)
    return _type(meta) if meta is not None else getattr(ann, "__name__", str(ann))


def _default(field: Any) -> str:
    if field.is_required():
        return "(required)"
    value = field.default if field.default is not PydanticUndefined else field.default_factory()
    if value is None:
        return "unset"
    if isinstance(value, BaseModel):
        return "its keys' defaults"
    return "`" + json.dumps(value, separators=(", ", ": ")).replace("|", "\\|") + "`"


def _sub(ann: Any) -> tuple[type[BaseModel] | None, str]:
    """The model inside an annotation and the path suffix that leads into it."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is dict:
        inner, _ = _sub(args[1])
        return inner, ".<name>"
    if origin is list:
        inner, _ = _sub(args[0])
        return inner, "[]"
    if args and type(None) in args:
        return _sub(next(a for a in args if a is not type(None)))
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann, ""
    return None, ""


def _tagged(ann: Any) -> list[tuple[type[BaseModel], str]]:
    """The branches of a tagged union (``models.<name>.training``: a TF run or ``kind: lora``), with their tags."""
    if typing.get_origin(ann) not in (typing.Union, types.UnionType):
        return []
    out = []
    for arg in typing.get_args(ann):
        if typing.get_origin(arg) is typing.Annotated:
            model, *meta = typing.get_args(arg)
            tag = next((m.tag for m in meta if hasattr(m, "tag")), None)
            if tag is not None and isinstance(model, type) and issubclass(model, BaseModel):
                out.append((model, tag))
    return out


def rows(model: type[BaseModel] = schema.PlatformConfig, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key path, type, default, description) of every field, depth first, in declaration order. A
    tagged union's first branch is keyed as the field, the others as ``field(tag)``."""
    out = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        if branches := _tagged(field.annotation):
            out.append((key, "object", _default(field), field.description or ""))
            for i, (branch, tag) in enumerate(branches):
                out += rows(branch, f"{key}." if i == 0 else f"{key}({tag}).")
            continue
        inner, suffix = _sub(field.annotation)
        out.append((key + suffix if suffix == ".<name>" else key, _type(field.annotation), _default(field), field.description or ""))
        if inner is not None:
            out += rows(inner, f"{key}{suffix}.")
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table() -> str:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    lines += [f"| `{k}` | {t} | {d} | {_cell(m)} |" for k, t, d, m in rows()]
    secrets = ", ".join(f"`{k}`" for k in schema.SECRET_KEYS)
    lines.append(f"| {secrets} | secret | unset | set with `pulumi config set --secret mlplatform:<key> ...` |")
    return "\n".join(lines) + "\n"


def readme_table(text: str) -> str | None:
    if BEGIN not in text or END not in text:
        return None
    return text[text.index(BEGIN) + len(BEGIN) : text.index(END)].strip("\n") + "\n"


# ---- Pulumi.yaml: the project's config declarations ----

_SCALARS = {str: "string", bool: "boolean", int: "integer"}


def _scalar(ann: Any) -> str | None:
    """Pulumi's type for a scalar annotation (a Literal of strings, ``X | None``), else None."""
    if typing.get_origin(ann) is typing.Literal:
        return "string" if all(isinstance(a, str) for a in typing.get_args(ann)) else None
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    if typing.get_origin(ann) in (typing.Union, types.UnionType) and len(args) == 1:
        return _scalar(args[0])
    return _SCALARS.get(ann)


def _declaration(name: str, field: Any) -> dict[str, Any]:
    """One `config:` entry: Pulumi's project config types are scalars and arrays only, so an object
    gets no type, its keys listed in the description, and `{}` as default (the model's defaults apply)."""
    inner, _ = _sub(field.annotation)
    description = field.description or ""
    entry: dict[str, Any] = {}
    if inner is not None:
        keys = ", ".join(f.alias or n for n, f in inner.model_fields.items())
        description += f" (keys: {keys})"
    elif kind := _scalar(field.annotation):
        entry["type"] = kind
    entry["description"] = description
    if not field.is_required():
        default = field.default if field.default is not PydanticUndefined else field.default_factory()
        if isinstance(default, BaseModel | dict):
            entry["default"] = {}
        elif isinstance(default, list):
            entry["default"] = []
        elif default is not None:
            entry["default"] = default
    return entry


def pulumi_config() -> str:
    """Pulumi.yaml's `config:` section, from the model."""
    import yaml

    decls = {f"{schema.NAMESPACE}:{f.alias or n}": _declaration(n, f) for n, f in schema.PlatformConfig.model_fields.items()}
    return yaml.safe_dump({"config": decls}, sort_keys=False, width=10_000, allow_unicode=True)


def pulumi_yaml(text: str) -> str:
    """``text`` (Pulumi.yaml) with its `config:` section (always the last) regenerated."""
    head = text[: text.index("\nconfig:\n") + 1] if "\nconfig:\n" in text else text
    return head + pulumi_config()


# ---- the stack file's JSON Schema ----


def stack_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of stacks/Pulumi.<stack>.yaml: every `mlplatform:` key from the model,
    secrets as Pulumi's `{secure: ...}`, other namespaces (e.g. `aws:`) free."""
    model = schema.PlatformConfig.model_json_schema(by_alias=True, ref_template="#/$defs/{model}")
    defs = model.pop("$defs", {})
    props = {f"{schema.NAMESPACE}:{k}": v for k, v in model["properties"].items()}
    secure = {"type": "object", "properties": {"secure": {"type": "string"}}, "required": ["secure"], "additionalProperties": False}
    props |= {f"{schema.NAMESPACE}:{k}": {**secure, "description": "secret: `pulumi config set --secret`"} for k in schema.SECRET_KEYS}
    config = {
        "type": "object",
        "description": model.get("description", "the stack's config"),
        "properties": props,
        "required": [f"{schema.NAMESPACE}:{k}" for k in model.get("required", [])],
        "patternProperties": {f"^(?!{schema.NAMESPACE}:)[A-Za-z0-9_-]+:": {}},
        "additionalProperties": False,
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": "generated by `python -m tools.config_doc --write` from components/config/schema.py: do not edit",
        "title": "mlplatform stack file (stacks/Pulumi.<stack>.yaml)",
        "type": "object",
        "properties": {
            "config": config,
            "secretsprovider": {"type": "string"},
            "encryptedkey": {"type": "string"},
            "encryptionsalt": {"type": "string"},
            "environment": {},
        },
        "additionalProperties": False,
        "$defs": defs,
    }


def schema_text() -> str:
    return json.dumps(stack_schema(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.config_doc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite README.md's table, Pulumi.yaml's config and stacks/stack.schema.json")
    args = parser.parse_args(argv)
    if not args.write:
        sys.stdout.write(table())
        return 0
    text = README.read_text()
    if readme_table(text) is None:
        print(f"README.md: no {BEGIN} ... {END} section", file=sys.stderr)
        return 2
    README.write_text(text[: text.index(BEGIN) + len(BEGIN)] + "\n" + table() + text[text.index(END) :])
    PULUMI_YAML.write_text(pulumi_yaml(PULUMI_YAML.read_text()))
    SCHEMA.write_text(schema_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
