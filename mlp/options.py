"""The flags every subcommand spells the same way (--stack, --store), with stack-name completion."""

from __future__ import annotations

import click

from mlp import env

PASSTHROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


def _stacks(ctx, param, incomplete):  # noqa: ARG001 (click's completion signature)
    return [s for s in env.stacks() if s.startswith(incomplete)]


def _check_stack(ctx, param, value):  # noqa: ARG001
    if value is not None and value not in env.stacks() and not value.startswith("pr-"):
        raise click.BadParameter(f"no stacks/Pulumi.{value}.yaml; the stacks are: {', '.join(env.stacks())}")
    return value


def stack_option(required: bool = True, default: str | None = None):
    return click.option(
        "--stack",
        required=required and default is None,
        default=default,
        envvar="STACK",
        show_default=default is not None,
        shell_complete=_stacks,
        callback=_check_stack,
        help="the stack: stacks/Pulumi.NAME.yaml [env STACK]",
    )


store_option = click.option(
    "--store", help="model store: path, file:// or s3:// [default: --stack's modelStore output, else env MLPLATFORM_STORE]"
)
