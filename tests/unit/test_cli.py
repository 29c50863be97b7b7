"""`mlp`, the one command line (mlp/cli.py): --help everywhere, each subcommand in its environment
(one line naming the make target when that virtualenv is missing), one line when the Pulumi CLI is
missing, and nothing destroyed without a question: a protected stack (prod) only after its name."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from mlp import cli as mlp_cli
from mlp import deploy, env
from tests.conftest import ROOT

FAKE_PULUMI = ROOT / "tests" / "unit" / "fake_bin"


def mlp(*args, path=None, stdin=None, **extra_env):
    environ = {**os.environ, **extra_env}
    if path is not None:
        environ["PATH"] = path
    return subprocess.run(
        [sys.executable, "-m", "mlp", *args], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120, input=stdin
    )


def _no_pulumi_path(tmp_path):
    """PATH with the system's tools but no `pulumi` (this machine has none; a developer's may)."""
    return os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if not (p and os.path.exists(os.path.join(p, "pulumi"))))


PROGRAM_COMMANDS = ["synth", "policy", "preview-diff", "up", "down", "destroy", "preview", "completion"]


@pytest.mark.parametrize("command", PROGRAM_COMMANDS)
def test_every_program_subcommand_has_help(command):
    result = CliRunner().invoke(mlp_cli.cli, [command, "--help"])
    assert result.exit_code == 0 and result.output.startswith(f"Usage: cli {command}"), result.output


def test_top_level_help_lists_every_subcommand_and_the_exit_codes():
    result = CliRunner().invoke(mlp_cli.cli, ["--help"])
    assert result.exit_code == 0
    for command in ["train", "serve", "models", "deliver", "smoke", "local-up", "ephemeral", *PROGRAM_COMMANDS]:
        assert f"  {command} " in result.output, command
    text = " ".join(result.output.split())
    assert "0 done; 1 failed or refused" in text and "5 a prerequisite is missing" in text and "MLPLATFORM_STORE" in text


def test_a_workload_command_without_its_venv_says_which_make_target_in_one_line(tmp_path):
    proc = mlp("train", "--epochs", "1", MLPLATFORM_VENV_ML=str(tmp_path / "absent"))
    assert proc.returncode == env.EXIT_MISSING
    assert proc.stderr.strip() == (
        "mlp: this command runs in .venv-ml (it needs tensorflow), which does not exist: create it with `make venv-ml`"
    )
    assert "Traceback" not in proc.stderr and "ModuleNotFoundError" not in proc.stderr


def test_a_workload_command_reexecutes_in_the_ml_venv_and_shows_the_delegates_help():
    if not (ROOT / ".venv-ml" / ".installed").exists():
        pytest.skip(".venv-ml absent (make venv-ml)")
    proc = mlp("models", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage: mlp models" in proc.stdout and "rollback" in proc.stdout


def test_an_unknown_stack_lists_the_stacks(tmp_path):
    proc = mlp("synth", "--stack", "prd")
    assert proc.returncode == 2
    assert "no stacks/Pulumi.prd.yaml; the stacks are: " + ", ".join(env.stacks()) in proc.stderr


@pytest.mark.parametrize(
    "args", [["up", "--stack", "dev"], ["destroy", "--stack", "dev"], ["preview", "--stack", "dev"], ["down", "--stack", "staging"]]
)
def test_without_the_pulumi_cli_each_live_command_says_so_in_one_line(tmp_path, args):
    proc = mlp(*args, path=_no_pulumi_path(tmp_path))
    assert proc.returncode == env.EXIT_MISSING, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("mlp: the Pulumi CLI is not on PATH: install it from https://www.pulumi.com/docs/install/")


@pytest.mark.parametrize(
    "target",
    ["preview", "destroy", "down", "up-ci", "train-wait", "pin", "deliver", "rollback", "ephemeral-up", "ephemeral-destroy", "reap"],
)
def test_make_targets_without_pulumi_say_so_in_one_line(tmp_path, target):
    """Every target that drives the Pulumi CLI (make smoke: tests/training/test_models_cli.py)."""
    skip = ["-o", ".venv/.installed", "-o", ".venv-ml/.installed", "-o", "builder"]
    proc = subprocess.run(
        ["make", "-s", "--no-print-directory", *skip, target, "STACK=dev", "MODEL=mnist", "REASON=x", "PR=7", f"PY={sys.executable}"],
        cwd=ROOT,
        env={**os.environ, "PATH": _no_pulumi_path(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert [line for line in proc.stderr.splitlines() if not line.startswith("make")] == [
        "mlp: the Pulumi CLI is not on PATH: install it from https://www.pulumi.com/docs/install/ (make up STACK=local fetches a pinned one into .tools/)"
    ]


@pytest.fixture
def fake_pulumi(tmp_path):
    state, log = tmp_path / "state.json", tmp_path / "calls.jsonl"
    state.write_text(json.dumps({"stacks": {"prod": {}, "dev": {}}, "resources": {"prod": [{"urn": "x"}], "dev": [{"urn": "y"}]}}))
    extra = {"FAKE_PULUMI_STATE": str(state), "FAKE_PULUMI_LOG": str(log), "PATH": f"{FAKE_PULUMI}{os.pathsep}{os.environ['PATH']}"}

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return extra, calls


def test_prod_is_destroyed_only_after_its_name(fake_pulumi):
    extra, calls = fake_pulumi
    assert deploy.protected("prod") and not deploy.protected("dev")
    refused = mlp("destroy", "--stack", "prod", "--yes", **extra)  # --yes alone is not enough for a protected stack
    assert refused.returncode == 1 and "pass --confirm prod" in refused.stderr and calls() == []
    wrong = mlp("destroy", "--stack", "prod", "--confirm", "dev", **extra)
    assert wrong.returncode == 1 and "'dev' is not 'prod': nothing destroyed" in wrong.stderr and calls() == []
    done = mlp("destroy", "--stack", "prod", "--yes", "--confirm", "prod", **extra)
    assert done.returncode == 0, done.stderr
    assert "is protected" in done.stderr and "mlplatform:protect: false" in done.stderr  # how to lift it, said every time
    assert calls() == [["destroy", "--stack", "prod", "--yes"]]


def test_without_a_terminal_or_yes_nothing_is_changed(fake_pulumi):
    extra, calls = fake_pulumi
    for args in (["up", "--stack", "dev"], ["destroy", "--stack", "dev"]):
        proc = mlp(*args, stdin="", **extra)
        assert proc.returncode == 2 and "no terminal to ask on" in proc.stderr, proc.stderr
    assert calls() == []


def test_up_with_yes_is_the_ci_form_with_the_policy_pack(fake_pulumi, tmp_path):
    extra, calls = fake_pulumi
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    buildx = bin_dir / "buildx"  # stands in for buildx: records what builder.sh asks of it
    buildx.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "buildx.log"}\n')
    buildx.chmod(0o755)
    proc = mlp("up", "--stack", "dev", "--yes", **{**extra, "PATH": f"{bin_dir}{os.pathsep}{extra['PATH']}"})
    assert proc.returncode == 0, proc.stderr
    # exactly the CI command of before: no `stack select --create` (a mistyped STACK fails in CI)
    assert calls() == [["up", "--stack", "dev", "--policy-pack", "policy", "--yes"]]
    # dev's registry.builder is registered before the up (ci/toolbox/builder.sh)
    assert "inspect mlplatform-buildkit" in (tmp_path / "buildx.log").read_text()


@pytest.mark.parametrize("args", [["up", "--stack", "prod", "--yes"], ["preview", "--stack", "prod"]])
def test_a_receiving_stack_whose_source_was_never_up_fails_in_one_line(fake_pulumi, args):
    """prod receives its models from staging (a StackReference): with no staging stack in the backend,
    one line naming the key and what to do, exit 2, and no `pulumi up|preview` (nor `stack select --create`)."""
    extra, calls = fake_pulumi  # the backend holds prod and dev, not staging
    proc = mlp(*args, **extra)
    assert proc.returncode == env.EXIT_USAGE, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "stacks/Pulumi.prod.yaml: mlplatform:models.chat.source.stack: source stack 'staging' does not exist in this backend "
        "(pulumi stack ls): `mlp up --stack staging` first (docs/architecture.md, first `up` order), then rerun"
    ]
    assert calls() == [["stack", "ls", "--json"]]


def test_a_receiving_stack_whose_source_exists_goes_on_to_pulumi(fake_pulumi):
    """staging receives from dev, which the backend holds: the check passes and the preview runs."""
    extra, calls = fake_pulumi
    assert deploy.source_stacks("staging") == {"dev": "models.chat.source.stack"}
    assert deploy.source_stacks("prod") == {"staging": "models.chat.source.stack"} and deploy.source_stacks("dev") == {}
    proc = mlp("preview", "--stack", "staging", **extra)
    assert proc.returncode == 0, proc.stderr
    assert calls() == [["stack", "ls", "--json"], ["preview", "--diff", "--stack", "staging", "--policy-pack", "policy"]]


def test_the_ci_targets_and_only_they_pass_yes():
    text = (ROOT / "Makefile").read_text()
    recipes = {}
    for block in text.split("\n\n"):
        for line in block.splitlines():
            if line and not line.startswith(("\t", "#", " ")) and ":" in line and "=" not in line.split(":")[0]:
                recipes[line.split(":")[0]] = block
    with_yes = {t for t, b in recipes.items() if "--yes" in b}
    assert with_yes == {"up-ci"}, with_yes  # ephemeral-* and reap pass it inside ops/ephemeral.py
    assert "pulumi destroy" not in text and "pulumi up" not in text.replace("`pulumi up`", "")


def test_completion_script_is_clicks():
    result = CliRunner().invoke(mlp_cli.cli, ["completion", "bash"])
    assert result.exit_code == 0 and "_MLP_COMPLETE=bash_complete" in result.output


def test_stack_names_complete():
    from click.shell_completion import ShellComplete

    completions = ShellComplete(mlp_cli.cli, {}, "mlp", "_MLP_COMPLETE").get_completions(["destroy", "--stack"], "p")
    assert [c.value for c in completions] == ["prod"]


def test_synth_of_a_missing_stack_lists_the_stacks(tmp_path):
    """`make synth STACK=prd` (tools.synth directly, as the make target runs it)."""
    proc = subprocess.run(
        [sys.executable, "-m", "tools.synth", "--stack", "prd", "--out", str(tmp_path / "out")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"stacks/Pulumi.prd.yaml: no such stack file; the stacks are: {', '.join(env.stacks())}"


def test_make_policy_all_names_each_stack(tmp_path):
    """Each stack's result under its name (on empty renders: the naming is what is checked here)."""
    for name in env.stacks():
        (tmp_path / name).mkdir()
        (tmp_path / name / "resources.json").write_text("[]")
    proc = subprocess.run(
        [
            "make",
            "-s",
            "--no-print-directory",
            "-o",
            "synth-all",
            "-o",
            ".venv/.installed",
            "policy-all",
            f"OUT={tmp_path}",
            f"PY={sys.executable}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert [line for line in proc.stdout.splitlines() if line.startswith("== ")] == [f"== policy: stack {n}" for n in env.stacks()]


def test_stack_store_goes_to_the_delegate_as_store(tmp_path, monkeypatch):
    """`mlp train|serve --stack S`: S's `modelStore` output (through the Pulumi CLI) becomes --store,
    unless --store is given; the flag beats $MLPLATFORM_STORE."""
    pulumi = tmp_path / "pulumi"
    pulumi.write_text(
        f"#!{sys.executable}\nimport sys\nassert sys.argv[1:4] == ['stack', 'output', 'modelStore']\nprint('s3://dev-store')\n"
    )
    pulumi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("MLPLATFORM_STORE", "/elsewhere")
    args, extra = mlp_cli._with_stack_store(["--epochs", "1"], "dev")
    assert args == ["--store", "s3://dev-store", "--epochs", "1"] and extra == {"MLPLATFORM_STORE": "s3://dev-store"}
    assert mlp_cli._with_stack_store(["--store", "./mine"], "dev") == (["--store", "./mine"], {})
    assert env.store(None, None) == "/elsewhere" and env.store("./flag", "dev") == "./flag"


def _on_a_terminal(args, answer, extra):
    """Run mlp with a pseudo-terminal as stdin (a person at a shell) and type ``answer``."""
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlp", *args],
        cwd=ROOT,
        env={**os.environ, **extra},
        stdin=follower,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(follower)
    os.write(leader, answer.encode())
    out, err = proc.communicate(timeout=120)
    os.close(leader)
    return proc.returncode, out, err


@pytest.mark.parametrize("typed, destroyed", [("prod\n", True), ("yes\n", False)])
def test_at_a_terminal_prod_wants_its_name_typed(fake_pulumi, typed, destroyed):
    extra, calls = fake_pulumi
    code, out, err = _on_a_terminal(["destroy", "--stack", "prod"], typed, extra)
    assert "type the stack name (prod) to destroy it" in out + err
    if destroyed:
        assert code == 0 and calls() == [["destroy", "--stack", "prod"]]  # then Pulumi's own preview and question
    else:
        assert code == 1 and calls() == [] and "nothing destroyed" in err


def test_version_is_the_projects_and_the_console_script_runs_from_anywhere(tmp_path):
    """`mlp --version` prints pyproject.toml's version; `.venv/bin/mlp` (what `make venv` installs)
    works outside the checkout, where the project is not on sys.path."""
    import tomllib

    expected = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert CliRunner().invoke(mlp_cli.cli, ["--version"]).output == f"mlp {expected}\n"
    script = ROOT / ".venv" / "bin" / "mlp"
    if not script.exists():
        pytest.skip(".venv/bin/mlp absent (make venv)")
    proc = subprocess.run([str(script), "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == f"mlp {expected}\n", proc.stderr


def test_make_help_lists_every_target():
    """Every phony target a person or CI calls (`data` and `clean` included) is in `make help`."""
    text = (ROOT / "Makefile").read_text()
    phony = set(re.search(r"^\.PHONY:(.*?)(?<!\\)\n", text, re.MULTILINE | re.DOTALL).group(1).replace("\\", " ").split())
    proc = subprocess.run(["make", "-s", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    listed = {line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  ")}
    assert proc.returncode == 0 and {"data", "clean", "train", "serve", "models", "rollback", "reference"} <= phony
    assert phony - listed == set(), sorted(phony - listed)
