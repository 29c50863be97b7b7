"""examples/openai_chat.py with the official OpenAI client (from .venv-llm, where `openai` is installed
beside vLLM) against the OpenAI-shaped stand-in of tests/unit/openai_standin.py: the example's client
calls are right. The real vLLM server answers the same client in the slow lane (tests/llm)."""

from __future__ import annotations

import subprocess
import time
import urllib.request

import pytest

from tests.conftest import ROOT, unavailable
from tests.unit.test_smoke_openai import standin  # noqa: F401 (the fixture)

LLM_PYTHON = ROOT / ".venv-llm" / "bin" / "python"


def _client_python() -> str:
    if not LLM_PYTHON.exists() or subprocess.run([str(LLM_PYTHON), "-c", "import openai"], capture_output=True).returncode:
        unavailable(".venv-llm with the openai package absent (make venv-llm)")
    return str(LLM_PYTHON)


def test_the_openai_example_chats_through_the_official_client(standin):  # noqa: F811 (the imported fixture)
    python = _client_python()
    server = standin("--model", "chat")
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            urllib.request.urlopen(server.url + "/models", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    proc = subprocess.run(
        [python, str(ROOT / "examples" / "openai_chat.py"), "--base-url", server.url, "--model", "chat", "Say hello"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip(), "no reply printed"


@pytest.mark.parametrize("args", [["--model", "chat", "hi"], ["--base-url", "http://x/v1", "hi"]])
def test_its_required_arguments(args):
    python = _client_python()
    proc = subprocess.run([python, str(ROOT / "examples" / "openai_chat.py"), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "required" in proc.stderr
