"""The server's command line and error table, without TensorFlow."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from serving import cli, errors
from tests.serving.conftest import ROOT


def test_cli_imports_without_tensorflow():
    code = "import sys, serving.cli; serving.cli.parser().parse_args([]); assert 'tensorflow' not in sys.modules and 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_every_serving_variable_the_component_emits_is_accepted():
    emitted = {v for f in (ROOT / "components").rglob("*.py") for v in re.findall(r'"(SERVING_[A-Z_]+)"', f.read_text())}
    assert emitted, "no SERVING_* variables found: did the component move?"
    assert emitted <= cli.accepted_env(), emitted - cli.accepted_env()


def test_environment_sets_every_flag_and_flags_win():
    env = {
        "SERVING_MODELS": "mnist=s3://b/root, fraud=file:///m",
        "SERVING_PORT": "9000",
        "SERVING_METRICS_PORT": "9100",
        "SERVING_API_KEYS_FILE": "/etc/keys/api-keys",
        "SERVING_ALLOW_SIGNATURE_CHANGE": "true",
        "SERVING_MAX_CONNECTIONS": "50",
    }
    args = cli.parser(env).parse_args([])
    assert (args.port, args.metrics_port, args.api_keys_file, args.allow_signature_change, args.max_connections) == (
        9000,
        9100,
        "/etc/keys/api-keys",
        True,
        50,
    )
    assert cli.parse_models(args, env) == {"mnist": "s3://b/root", "fraud": "file:///m"}
    args = cli.parser(env).parse_args(["--model", "a=/x", "--model", "b=/y", "--port", "1"])
    assert cli.parse_models(args, env) == {"a": "/x", "b": "/y"} and args.port == 1
    one = cli.parser({"SERVING_MODEL_URI": "/store"}).parse_args([])
    assert cli.parse_models(one, {}) == {"mnist": "/store"}
    assert cli.parser({}).parse_args([]).metrics_port == 9091


@pytest.mark.parametrize(
    "argv,message",
    [
        ([], "no model"),
        (["--model", "mnist"], "expected NAME=URI"),
        (["--model", "Bad_Name=/x"], "DNS-1123"),
        (["--model", "a=/x", "--model", "a=/y"], "given twice"),
        (["--model", "mnist=/x", "--model-uri", "/y"], "both --model and --model-uri"),
    ],
)
def test_bad_model_flags(argv, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        cli.parse_models(cli.parser({}).parse_args(argv), {})


def test_bad_env_value_names_the_variable(capsys):
    with pytest.raises(SystemExit):
        cli.parser({"SERVING_PORT": "eighty"})
    assert "SERVING_PORT='eighty'" in capsys.readouterr().err


def test_each_error_type_has_its_status():
    table = {
        errors.BadRequest("x"): 400,
        errors.Unauthorized("x"): 401,
        errors.NotFound("x"): 404,
        errors.MethodNotAllowed("x", "GET"): 405,
        errors.PayloadTooLarge("x"): 413,
        errors.Overloaded("x"): 429,
        errors.Unavailable("x"): 503,
    }
    for exc, status in table.items():
        assert errors.status_of(exc)[0] == status
    assert (b"allow", b"GET") in errors.status_of(errors.MethodNotAllowed("x", "GET"))[1]
    assert (b"retry-after", b"1") in errors.status_of(errors.Overloaded("x"))[1]
    # they cross a process boundary (the parse worker) intact
    import pickle

    again = pickle.loads(pickle.dumps(errors.MethodNotAllowed("use GET", "GET")))  # noqa: S301 - our own bytes
    assert again.message == "use GET" and again.allow == "GET"
