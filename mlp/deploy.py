"""The live-stack commands: up, down, destroy, preview, local-up, ephemeral (in .venv, through the
Pulumi CLI). Nothing is changed without a preview and a yes: interactive runs let Pulumi show its
preview and ask; `--yes` (non-interactive, policy pack enforced) is for the CI targets only; a
protected stack (prod by default, `mlplatform:protect`) is destroyed only after its name is typed."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import yaml

from mlp import env
from mlp.env import EXIT_FAILED, EXIT_USAGE, ROOT
from mlp.options import stack_option

YES_HELP = "no prompt: non-interactive, policy pack enforced (the CI targets use it; people get Pulumi's preview and question)"


def stack_config(stack: str) -> dict:
    """The stack file's `config:` ({} for a stack without a file, e.g. pr-N)."""
    path = ROOT / "stacks" / f"Pulumi.{stack}.yaml"
    if not path.exists():
        return {}
    try:
        return (yaml.safe_load(path.read_text()) or {}).get("config") or {}
    except yaml.YAMLError as exc:
        from components.config.errors import yaml_error_line

        click.echo(yaml_error_line(f"stacks/Pulumi.{stack}.yaml", exc), err=True)
        raise SystemExit(EXIT_USAGE) from None


def protected(stack: str) -> bool:
    """The stack file's `mlplatform:protect`, else whether it is prod (components/platform.py applies
    the same rule to the cluster, the model store and the image repositories)."""
    config = stack_config(stack)
    value = config.get("mlplatform:protect")
    return bool(value) if value is not None else config.get("mlplatform:environment") == "prod"


def _pulumi(*args: str) -> int:
    return subprocess.call([env.pulumi(), *args], cwd=ROOT)


def source_stacks(stack: str) -> dict[str, str]:
    """The stacks STACK receives models from, each with the first key naming it
    (``models.<name>.source.stack``): ModelPromoter reads each through a StackReference."""
    sources: dict[str, str] = {}
    for name, model in sorted((stack_config(stack).get("mlplatform:models") or {}).items()):
        src = model.get("source") if isinstance(model, dict) else None
        if isinstance(src, dict) and isinstance(src.get("stack"), str):
            sources.setdefault(src["stack"], f"models.{name}.source.stack")
    return sources


def require_sources(stack: str) -> None:
    """Before `pulumi up|preview`: every source stack exists in the backend, else one line naming the
    key and what to do (exit 2) instead of the engine's `unknown stack "<org>/mlplatform/<source>"`.
    `pulumi stack ls --json` lists this project's stacks, unqualified when they are in the default
    organization (the one an unqualified --stack and its StackReferences use). When the listing itself
    fails (not logged in), the check stands aside: `pulumi up` says why in its own words."""
    sources = source_stacks(stack)
    if not sources:
        return
    listing = subprocess.run([env.pulumi(), "stack", "ls", "--json"], cwd=ROOT, capture_output=True, text=True)
    try:
        existing = {s["name"] for s in json.loads(listing.stdout)} if listing.returncode == 0 else None
    except (ValueError, TypeError, KeyError):
        existing = None
    if existing is None:
        return
    for source, key in sources.items():
        if source not in existing:
            click.echo(
                f"stacks/Pulumi.{stack}.yaml: mlplatform:{key}: source stack {source!r} does not exist in this backend "
                f"(pulumi stack ls): `mlp up --stack {source}` first (docs/architecture.md, first `up` order), then rerun",
                err=True,
            )
            raise SystemExit(EXIT_USAGE)


def _interactive_or_refuse(yes: bool, what: str) -> None:
    if not yes and not sys.stdin.isatty():
        click.echo(f"mlp {what}: no terminal to ask on: run it in a terminal, or pass --yes (CI targets only)", err=True)
        raise SystemExit(EXIT_USAGE)


def confirm_destroy(stack: str, confirm: str | None, yes: bool) -> None:
    """A protected stack needs its name, typed or passed as --confirm; any other stack needs a
    terminal (Pulumi's own preview and question) or --yes."""
    if protected(stack):
        click.echo(
            f"stack {stack} is protected (stacks/Pulumi.{stack}.yaml: mlplatform:protect, default on prod): its cluster, model store "
            "and image repositories refuse deletion until you set `mlplatform:protect: false` and run `mlp up` (docs/architecture.md, 'Stacks')",
            err=True,
        )
        if confirm is None:
            if not sys.stdin.isatty():
                click.echo(f"mlp destroy: {stack} is protected: pass --confirm {stack} to destroy it without a terminal", err=True)
                raise SystemExit(EXIT_FAILED)
            confirm = click.prompt(f"type the stack name ({stack}) to destroy it", default="", show_default=False)
        if confirm != stack:
            click.echo(f"mlp destroy: {confirm!r} is not {stack!r}: nothing destroyed", err=True)
            raise SystemExit(EXIT_FAILED)
        return
    _interactive_or_refuse(yes, "destroy")


def _destroy(stack: str, yes: bool) -> int:
    return _pulumi("destroy", "--stack", stack, *(["--yes", "--non-interactive"] if yes else []))


@click.command()
@stack_option(default="local")
@click.option("--yes", is_flag=True, help=YES_HELP)
@click.option("--use-current-context", is_flag=True, help="local: deploy into the current kube context instead of creating kind's")
def up(stack, yes, use_current_context):
    """Deploy STACK: local sets up kind, a registry and a pinned Pulumi first (ops/local_up.py);
    others `pulumi up`, which previews and asks (--yes: CI)."""
    env.ensure("program", sys.argv[1:])
    if stack == "local":
        from ops import local_up

        raise SystemExit(local_up.main(["up", *(["--use-current-context"] if use_current_context else [])]))
    pulumi = env.pulumi()
    _interactive_or_refuse(yes, "up")
    require_sources(stack)
    builder = (stack_config(stack).get("mlplatform:registry") or {}).get("builder")
    script = ROOT / "ci" / "toolbox" / "builder.sh"
    # the stack's image builds need this buildx builder: registered now, not 20 minutes into the up
    if builder and script.exists() and subprocess.call([str(script), builder], cwd=ROOT):
        raise SystemExit(EXIT_FAILED)
    # a person's first up creates the stack; CI (--yes) never does: a mistyped STACK fails there
    if not yes and subprocess.call([pulumi, "stack", "select", "--create", stack], cwd=ROOT):
        raise SystemExit(EXIT_FAILED)
    raise SystemExit(_pulumi("up", "--stack", stack, "--policy-pack", "policy", *(["--yes", "--non-interactive"] if yes else [])))


@click.command()
@stack_option()
@click.option("--yes", is_flag=True, help=YES_HELP)
@click.option("--confirm", metavar="STACK", help="a protected stack's name, to destroy it without a terminal")
def destroy(stack, yes, confirm):
    """Destroy STACK's resources (Pulumi previews and asks; a protected stack wants its name typed)."""
    env.ensure("program", sys.argv[1:])
    env.pulumi()
    confirm_destroy(stack, confirm, yes)
    raise SystemExit(_destroy(stack, yes))


@click.command()
@stack_option(default="local")
@click.option("--yes", is_flag=True, help=YES_HELP)
@click.option("--confirm", metavar="STACK", help="a protected stack's name, to destroy it without a terminal")
def down(stack, yes, confirm):
    """Destroy STACK; for local also the kind cluster and registry that `mlp up` created."""
    env.ensure("program", sys.argv[1:])
    if stack == "local":
        if not yes and not click.confirm("destroy the local stack, and the kind cluster and registry `mlp up` created?"):
            raise SystemExit(EXIT_FAILED)
        from ops import local_up

        raise SystemExit(local_up.main(["down"]))
    env.pulumi()
    confirm_destroy(stack, confirm, yes)
    raise SystemExit(_destroy(stack, yes))


@click.command()
@stack_option(default="local")
def preview(stack):
    """`pulumi preview --diff` of STACK with the policy pack (needs the Pulumi CLI and the stack's backend)."""
    env.ensure("program", sys.argv[1:])
    require_sources(stack)
    raise SystemExit(_pulumi("preview", "--diff", "--non-interactive", "--stack", stack, "--policy-pack", "policy"))


@click.command("local-up", context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
@click.pass_context
def local_up_cmd(ctx):
    """ops.local_up: up|down the local kind set-up (`mlp up --stack local` is the usual way in)."""
    env.ensure("program", sys.argv[1:])
    from ops import local_up

    raise SystemExit(local_up.main(ctx.args))


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
@click.pass_context
def ephemeral(ctx):
    """PR stacks (ops.ephemeral): up|destroy --pr N, reap (the CI targets run these)."""
    env.ensure("program", sys.argv[1:])
    if not any(a in ("-h", "--help") for a in ctx.args):
        env.pulumi()  # each of them drives the Pulumi CLI: say so in mlp's one line (exit 5)
    from ops import ephemeral as eph

    raise SystemExit(eph.main(ctx.args))


COMMANDS = [up, destroy, down, preview, local_up_cmd, ephemeral]
