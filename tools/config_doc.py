"""The README's stack-config table, generated from the config schema (components/config/schema.py):

    python -m tools.config_doc            # print the table
    python -m tools.config_doc --write    # replace it in README.md (between the config-table markers)

Every field's description lives in the model; a test fails when the README's table differs from
this output, so the table cannot drift from what the program accepts.
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


def rows(model: type[BaseModel] = schema.PlatformConfig, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key path, type, default, description) of every field, depth first, in declaration order."""
    out = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.config_doc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="replace the table in README.md")
    args = parser.parse_args(argv)
    if not args.write:
        sys.stdout.write(table())
        return 0
    text = README.read_text()
    if readme_table(text) is None:
        print(f"README.md: no {BEGIN} ... {END} section", file=sys.stderr)
        return 2
    README.write_text(text[: text.index(BEGIN) + len(BEGIN)] + "\n" + table() + text[text.index(END) :])
    return 0


if __name__ == "__main__":
    sys.exit(main())
