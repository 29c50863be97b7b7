"""The layout's promises that imports alone can break (issue 22)."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.conftest import ROOT


def test_config_schema_and_rules_import_no_pulumi():
    """The config's schema, rules and capacity arithmetic, and the pure builders in components/lib, import
    no Pulumi: the offline policy checker, and for some of lib/ the workload venv's operator commands,
    use them without an engine. Run in a fresh interpreter of this venv (the workload venv has no
    pydantic) whose importer refuses any ``pulumi*`` module, so an indirect import fails too, naming
    the chain."""
    modules = [
        "components.config.schema",
        "components.config.rules",
        "components.config.capacity",
        "components.config.validation",
        "components.config.llm",
        "components.lib.keda_specs",
        "components.lib.promotion_iam",
        "components.lib.network",
        "components.lib.iam",
        "components.lib.rollout_specs",
        "components.lib.workload",
    ]
    script = f"""
import importlib, importlib.abc, sys, traceback

class NoPulumi(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0].startswith("pulumi"):
            raise ImportError(f"{{name}} imported")

sys.meta_path.insert(0, NoPulumi())
for module in {modules!r}:
    try:
        importlib.import_module(module)
    except ImportError:
        print(f"{{module}} imports Pulumi:", traceback.format_exc(), file=sys.stderr)
        sys.exit(1)
assert not [m for m in sys.modules if m.startswith("pulumi")]
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# Functions allowed over MAX_LINES, each with its reason. Empty: every function of the tree is short.
LONG_FUNCTIONS: dict[str, str] = {}
MAX_LINES = 60
SKIP_DIRS = {".venv", ".venv-ml", ".venv-llm", "node_modules", "build", ".git"}


def _functions(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1


def test_no_function_longer_than_sixty_lines():
    """ruff's C901/PLR0915 bound branches and statements; this bounds length (a dict literal is one
    statement). A long function is split by concern, or listed above with the reason it cannot be."""
    long = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if SKIP_DIRS & set(rel.parts):
            continue
        for name, line, length in _functions(path):
            key = f"{rel.as_posix()}:{name}"
            if length > MAX_LINES and key not in LONG_FUNCTIONS:
                long.append(f"{rel}:{line} {name} ({length} lines)")
    assert long == [], "split these (or list them with a reason):\n" + "\n".join(long)


def test_the_length_check_sees_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "m.py").write_text(f"def f():\n{body}\n")
    assert [length for _, _, length in _functions(tmp_path / "m.py")] == [MAX_LINES + 1]
