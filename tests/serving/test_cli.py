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
        (["--model", "mnist"], "no store to find it in: give --store URI"),
        (["--model", "mnist="], "expected NAME=URI or NAME"),
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


def test_store_and_model_names_share_one_store_setting():
    """--store + --model NAME, the store from SERVING_STORE, else MLPLATFORM_STORE, else the old names;
    NAME=URI and --model-uri keep working beside it."""
    args = cli.parser({}).parse_args(["--store", "s3://b/root", "--model", "mnist", "--model", "fraud=file:///m"])
    assert cli.parse_models(args, {}) == {"mnist": "s3://b/root", "fraud": "file:///m"}
    for env, want in (
        ({"MLPLATFORM_STORE": "/a", "TRAIN_OUTPUT": "/b"}, "/a"),
        ({"TRAIN_OUTPUT": "/b", "MLPLATFORM_MODEL_STORE": "/c"}, "/b"),
        ({"MLPLATFORM_MODEL_STORE": "/c"}, "/c"),
        ({"SERVING_STORE": "/s", "MLPLATFORM_STORE": "/a"}, "/s"),
    ):
        args = cli.parser(env).parse_args(["--model", "mnist"])
        assert cli.parse_models(args, env) == {"mnist": want}, env
    alone = cli.parser({"MLPLATFORM_STORE": "/a"}).parse_args([])  # a store alone serves --model-name
    assert cli.parse_models(alone, {}) == {"mnist": "/a"}
    pinned = cli.parser({"MLPLATFORM_STORE": "/a"}).parse_args(["--model-uri", "/v", "--model-name", "x"])
    assert cli.parse_models(pinned, {}) == {"x": "/v"}


def test_allow_signature_change_is_a_flag_and_the_old_form_still_parses():
    p = cli.parser({})
    assert p.parse_args([]).allow_signature_change is False
    assert p.parse_args(["--allow-signature-change"]).allow_signature_change is True
    assert p.parse_args(["--allow-signature-change", "true"]).allow_signature_change is True
    assert p.parse_args(["--allow-signature-change", "false"]).allow_signature_change is False
    assert p.parse_args(["--allow-signature-change", "--port", "1"]).port == 1


def test_a_laptop_run_listens_on_loopback_and_the_image_on_every_interface():
    assert cli.parser({}).parse_args([]).host == "127.0.0.1"
    assert cli.parser({"SERVING_HOST": "0.0.0.0"}).parse_args([]).host == "0.0.0.0"
    assert "SERVING_HOST=0.0.0.0" in (ROOT / "serving" / "Dockerfile").read_text()


def _main(*argv: str) -> subprocess.CompletedProcess:
    code = (
        "import sys; from serving.__main__ import main; rc = main(sys.argv[1:]); "
        "assert 'tensorflow' not in sys.modules, 'tensorflow was loaded'; sys.exit(rc)"
    )
    return subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--model", "mnist=/no/such/store"], "model 'mnist': /no/such/store: no such file or directory"),
        (["--model-uri", "file://./no-such-dir"], "file://./no-such-dir: no such file or directory"),
        (["--model-uri", "file://host/x"], "a file URI names no host ('host')"),
        (["--model-uri", "s3:///prefix"], "an s3 URI needs a bucket"),
        (["--model-uri", "gs://b/x"], "unsupported model URI"),
    ],
)
def test_a_model_uri_that_cannot_be_is_refused_at_start_in_one_line(argv, message):
    proc = _main(*argv)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
    assert message in proc.stderr, proc.stderr


def test_a_port_in_use_is_one_line_before_tensorflow_loads(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for flag, argv in (
            ("--port", ["--port", str(port), "--metrics-port", "0"]),
            ("--metrics-port", ["--port", "0", "--metrics-port", str(port)]),
        ):
            proc = _main("--model-uri", str(tmp_path), *argv)
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 2 and len(lines) == 1, proc.stderr
            assert lines[0].startswith(f"{flag} {port} on 127.0.0.1: ") and "in use" in lines[0], lines
