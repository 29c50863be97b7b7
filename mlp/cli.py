"""mlp: one command line for everything a person runs on the platform.

Every subcommand delegates to the module that does the work (training.train, serving, ops.*, tools.*,
policy.check) and runs in the environment it needs: program subcommands in .venv, workload ones
(train, serve, models, deliver, smoke) in .venv-ml; `mlp` re-executes itself there.

\b
Common flags: --stack NAME (stacks/Pulumi.NAME.yaml), --model NAME, --store URI, --version V.
The model store, one setting for every subcommand: --store, else the --stack's `modelStore`
output, else $MLPLATFORM_STORE.

\b
Exit codes: 0 done; 1 failed or refused (one line says why); 2 usage or bad config;
5 a prerequisite is missing (a virtualenv, the Pulumi CLI, a stack output: the line says how to get
it). A delegate's own codes pass through: models 3 conflict / 4 verify failed, deliver 3 NOT JUDGED,
train 3 quality gate failed.

\b
Shell completion (click's): eval "$(mlp completion bash)"   (also zsh, fish)
"""

from __future__ import annotations

import os
import subprocess
import sys

import click

from mlp import deploy, env
from mlp.env import EXIT_FAILED, EXIT_MISSING, EXIT_USAGE, ROOT, Missing
from mlp.options import PASSTHROUGH, _check_stack, _stacks, stack_option, store_option


def project_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a delegate runs in: the project importable from any directory, so relative
    paths in its arguments (``--store ./artifacts``) mean what they mean where the user typed them."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **(extra or {})}


def run_module(module: str, argv: list[str], extra_env: dict[str, str] | None = None) -> int:
    """``python -m MODULE ARGV`` with this interpreter, in the user's directory: its exit code."""
    return subprocess.call([sys.executable, "-m", module, *argv], env=project_env(extra_env))


def exec_module(module: str, argv: list[str], extra_env: dict[str, str] | None = None):
    """Become ``python -m MODULE ARGV`` (one delegate: signals such as Ctrl-C and SIGTERM reach it
    directly, its exit code is ours)."""
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], project_env(extra_env))  # noqa: S606 (this interpreter, argv as a list)


def _exit(code: int):
    raise SystemExit(code)


@click.group(help=__doc__, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(version=env.version(), prog_name="mlp", message="%(prog)s %(version)s")
def cli():
    pass


# ---------------------------------------------------------------- workload (.venv-ml)


def _with_stack_store(argv: list[str], stack: str | None) -> tuple[list[str], dict[str, str]]:
    """``--stack S`` for a delegate that takes ``--store``: S's `modelStore` output as --store (unless
    one is given), and as $MLPLATFORM_STORE for the code it runs (a model's train.py)."""
    if stack is None or any(a in ("-h", "--help") for a in argv) or any(a == "--store" or a.startswith("--store=") for a in argv):
        return argv, {}
    store = env.store(None, stack)
    return ["--store", store, *argv], {"MLPLATFORM_STORE": store}


def _passthrough_help(argv: list[str], what: str) -> None:
    if any(a in ("-h", "--help") for a in argv):
        click.echo(what + "\n", err=False)
        sys.stdout.flush()


@cli.command(context_settings=PASSTHROUGH, add_help_option=False)
@click.option("--model", default="mnist", show_default=True, help="mnist: the platform's trainer; NAME: models/NAME/train.py")
@click.option("--stack", default=None, shell_complete=_stacks, callback=_check_stack, help="publish to this stack's model store")
@click.pass_context
def train(ctx, model, stack):
    """Train a model, gate it, publish it to the store (in .venv-ml). Every other flag is the trainer's:
    `mlp train --help` shows them."""
    env.ensure("ml", sys.argv[1:])
    _passthrough_help(ctx.args, "mlp train [--model NAME] [--stack NAME] [TRAINER FLAGS]: the trainer's flags follow")
    args, extra = _with_stack_store(ctx.args, stack)
    if model == "mnist":
        exec_module("training.train", args, extra)
    script = ROOT / "models" / model / "train.py"
    if not script.exists():
        known = sorted(p.parent.name for p in (ROOT / "models").glob("*/train.py"))
        raise click.BadParameter(f"no models/{model}/train.py; the models are: {', '.join(['mnist', *known])}", param_hint="--model")
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, str(script), *args], project_env(extra))  # noqa: S606 (this interpreter, the model's script)


@cli.command(context_settings=PASSTHROUGH, add_help_option=False)
@click.option("--stack", default=None, shell_complete=_stacks, callback=_check_stack, help="serve from this stack's model store")
@click.pass_context
def serve(ctx, stack):
    """Serve models over REST (TF-Serving and Open Inference Protocol) from the store (in .venv-ml);
    `mlp serve --help` shows the server's flags."""
    env.ensure("ml", sys.argv[1:])
    _passthrough_help(ctx.args, "mlp serve [--stack NAME] [SERVER FLAGS]: the server's flags follow")
    args, extra = _with_stack_store(ctx.args, stack)
    exec_module("serving", args, extra)


@cli.command(context_settings=PASSTHROUGH, add_help_option=False)
@store_option
@click.option("--stack", default=None, shell_complete=_stacks, callback=_check_stack, help="use this stack's model store")
@click.pass_context
def models(ctx, store, stack):
    """The model registry: list, show, promote, reject, rollback, verify (in .venv-ml);
    `mlp models --help` shows each."""
    env.ensure("ml", sys.argv[1:])
    argv = list(ctx.args)
    if not any(a in ("-h", "--help") for a in argv):
        resolved = env.store(store, stack)
        argv = (["--store", resolved] if resolved else []) + argv
    from ops import models as registry_cli

    _exit(registry_cli.main(argv, prog="mlp models"))


@cli.command(context_settings=PASSTHROUGH, add_help_option=False)
@click.pass_context
def deliver(ctx):
    """Deliver a stack's models through an analysed canary (ops.deliver, in .venv-ml):
    `mlp deliver --stack NAME [--model NAME]`; `mlp deliver --help` for the rest."""
    env.ensure("ml", sys.argv[1:])
    if not any(a in ("-h", "--help") for a in ctx.args):
        env.pulumi()  # it reads and sets the stack's config and outputs through the CLI
    exec_module("ops.deliver", ctx.args)


@cli.command(context_settings=PASSTHROUGH, add_help_option=False)
@click.pass_context
def smoke(ctx):
    """Smoke-test a deployed stack (`--stack NAME`: every model) or one URL (ops.smoke, in .venv-ml)."""
    env.ensure("ml", sys.argv[1:])
    exec_module("ops.smoke", ctx.args)


# ---------------------------------------------------------------- program (.venv), offline


@cli.command()
@stack_option(default="local")
@click.option("--out", default=None, help="output folder [default: build/synth/STACK]")
def synth(stack, out):
    """Render STACK offline (no cloud, no Pulumi CLI) into build/synth/STACK: resources.json + manifests."""
    env.ensure("program", sys.argv[1:])
    _exit(run_module("tools.synth", ["--stack", stack, "--out", out or f"build/synth/{stack}"]))


@cli.command()
@click.option("--stack", "stack_names", multiple=True, shell_complete=_stacks, callback=lambda c, p, v: [_check_stack(c, p, s) for s in v])
@click.option("--all", "every", is_flag=True, help="every stack file")
def policy(stack_names, every):
    """Render each stack offline and run the policy pack on it, naming the stack (`--stack` repeatable)."""
    env.ensure("program", sys.argv[1:])
    chosen = env.stacks() if every else list(stack_names) or ["local"]
    failed = []
    for name in chosen:
        out = f"build/synth/{name}"
        click.echo(f"== policy: stack {name}")
        if run_module("tools.synth", ["--stack", name, "--out", out]) or run_module("policy.check", [out]):
            failed.append(name)
    if failed:
        click.echo(f"policy: failed on {', '.join(failed)} (of {', '.join(chosen)})", err=True)
        _exit(EXIT_FAILED)
    click.echo(f"policy: passed on {', '.join(chosen)}")


@cli.command("preview-diff")
@stack_option(default="local")
@click.option("--base-ref", default="origin/main", show_default=True, envvar="BASE_REF", help="the git ref to compare with")
def preview_diff(stack, base_ref):
    """Offline preview: synth BASE_REF and the work tree, diff them as Markdown into build/preview.md."""
    env.ensure("program", sys.argv[1:])
    _exit(run_module("tools.preview_diff", ["--stack", stack, "--base-ref", base_ref]))


# ---------------------------------------------------------------- program (.venv), live stacks

for command in deploy.COMMANDS:
    cli.add_command(command)


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell):
    """Print the shell-completion script: eval "$(mlp completion bash)" (in ~/.bashrc to keep it)."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    click.echo(cls(cli, {}, "mlp", "_MLP_COMPLETE").source())


def main() -> None:
    try:
        cli(prog_name="mlp")
    except Missing as exc:
        click.echo(f"mlp: {exc}", err=True)
        sys.exit(EXIT_MISSING)
    except KeyboardInterrupt:
        click.echo("mlp: interrupted", err=True)
        sys.exit(EXIT_USAGE + 128)
