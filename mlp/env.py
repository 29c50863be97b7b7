"""Where each subcommand runs and what it needs: the virtualenv (re-exec into it), the Pulumi CLI, the
model store. Stdlib only: this runs before we know which environment we are in."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The console script's editable install maps only the `mlp` package: the modules it delegates to
# (training, serving, ops, tools, policy) are imported from the project, wherever `mlp` is run from.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Exit codes of `mlp` itself; a delegate's own code (e.g. deliver's 3 NOT JUDGED, models' 4 verify
# failed) passes through unchanged.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_MISSING = 0, 1, 2, 5

# The two environments (Makefile: pulumi pins protobuf<6, TensorFlow needs >=6), the module that
# proves an interpreter is the right one, and the make target that creates it.
ENVS = {
    "program": ("MLPLATFORM_VENV", ".venv", "pulumi", "make venv"),
    "ml": ("MLPLATFORM_VENV_ML", ".venv-ml", "tensorflow", "make venv-ml"),
}


class Missing(Exception):
    """A prerequisite is absent: the message is one line saying how to get it (exit 5)."""


def version() -> str:
    """The project's version, from pyproject.toml (the one place it is written; .venv-ml has no
    installed metadata for it)."""
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def venv_dir(kind: str) -> Path:
    var, default, _, _ = ENVS[kind]
    return Path(os.environ.get(var) or ROOT / default)


def in_env(kind: str) -> bool:
    """This interpreter can run ``kind``'s subcommands (its marker module is importable)."""
    return importlib.util.find_spec(ENVS[kind][2]) is not None


def reexec_argv(kind: str, argv: list[str]) -> list[str]:
    """The command line that runs ``mlp ARGV`` in ``kind``'s virtualenv; Missing when it is absent."""
    python = venv_dir(kind) / "bin" / "python"
    if not python.exists():
        _, default, module, target = ENVS[kind]
        raise Missing(f"this command runs in {default} (it needs {module}), which does not exist: create it with `{target}`")
    return [str(python), "-m", "mlp", *argv]


def ensure(kind: str, argv: list[str]) -> None:
    """Return when this interpreter fits ``kind``; else replace this process with the right one."""
    if in_env(kind):
        return
    cmd = reexec_argv(kind, argv)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env["MLP_REEXEC"] = kind  # a second miss in the re-executed interpreter is a broken venv, not a loop
    if os.environ.get("MLP_REEXEC") == kind:
        _, default, module, target = ENVS[kind]
        raise Missing(f"{default} cannot import {module}: recreate it with `rm -rf {default} && {target}`")
    sys.stdout.flush()
    os.execve(cmd[0], cmd, env)  # noqa: S606 (our own venv's python, argv passed through as a list)


def pulumi() -> str:
    """The Pulumi CLI on PATH, or Missing with the one line every command that needs it prints."""
    found = shutil.which("pulumi")
    if not found:
        raise Missing(
            "the Pulumi CLI is not on PATH: install it from https://www.pulumi.com/docs/install/ (make up STACK=local fetches a pinned one into .tools/)"
        )
    return found


def stacks() -> list[str]:
    return sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in (ROOT / "stacks").glob("Pulumi.*.yaml"))


def stack_output(stack: str, name: str) -> str:
    """``pulumi stack output NAME --stack STACK`` (Missing when the CLI or the output is absent)."""
    proc = subprocess.run([pulumi(), "stack", "output", name, "--stack", stack], capture_output=True, text=True, cwd=ROOT)
    value = proc.stdout.strip()
    if proc.returncode != 0 or not value or value == "null":
        why = (proc.stderr.strip().splitlines() or ["no such output"])[-1]
        raise Missing(f"stack {stack}: no `{name}` output ({why}); is it deployed? (`mlp up --stack {stack}`)")
    return value


def store(explicit: str | None, stack: str | None) -> str | None:
    """The model store, one setting for every subcommand: --store, else --stack's `modelStore` output
    (flags before the environment), else $MLPLATFORM_STORE (the older $MLPLATFORM_MODEL_STORE too), else None."""
    if explicit:
        return explicit
    if stack:
        return stack_output(stack, "modelStore")
    return os.environ.get("MLPLATFORM_STORE") or os.environ.get("MLPLATFORM_MODEL_STORE") or None
