"""llm/golden.py against the real vLLM (the session's CPU server, tests/llm/conftest.py): the operator's
``check`` command passes a set the server meets and fails, naming the prompt, a set it does not; the
committed chat set's structured-output prompt (``responseFormat: json_schema``) is one vLLM accepts and
honours, so its ``jsonSchema`` expectation judges the answer's values, never a parse failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from llm import golden
from tests.conftest import ROOT
from tests.llm.conftest import API_KEY, SERVED

pytestmark = pytest.mark.slow


def check(server, set_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "GOLDEN_API_KEY": API_KEY, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "llm.golden", "check", "--url", server.url, "--model", SERVED, "--set", str(set_path)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_check_passes_what_the_server_answers_and_names_what_it_does_not(vllm_server, tmp_path):
    probe = golden.parse({"prompts": [{"id": "p", "prompt": "the canary", "maxTokens": 12, "expect": {"regex": "."}}]}, "probe")[0]
    answer = golden.ask(vllm_server.url, SERVED, probe, API_KEY)
    assert answer.strip()
    # temperature 0 and a seed: the same answer again
    assert golden.ask(vllm_server.url, SERVED, probe, API_KEY) == answer
    good = {"prompts": [{"id": "same", "prompt": "the canary", "maxTokens": 12, "expect": {"contains": [answer[:10]]}}]}
    bad = {"prompts": [{"id": "never", "prompt": "the canary", "maxTokens": 12, "expect": {"contains": ["Paris is the capital"]}}]}
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(good))
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    ok = check(vllm_server, tmp_path / "good.yaml")
    assert ok.returncode == 0 and "same: pass" in ok.stdout, ok.stdout + ok.stderr
    refused = check(vllm_server, tmp_path / "bad.yaml")
    assert refused.returncode == 1 and "never: FAIL missing 'Paris is the capital'" in refused.stdout, refused.stdout + refused.stderr


def test_a_wrong_key_is_an_error_not_a_pass(vllm_server, tmp_path):
    prompt = golden.parse({"prompts": [{"id": "p", "prompt": "x", "expect": {"regex": "."}}]}, "s")[0]
    with pytest.raises(OSError) as info:
        golden.ask(vllm_server.url, SERVED, prompt, "wrong-key")
    assert getattr(info.value, "code", None) == 401


def test_the_committed_structured_output_prompt_is_accepted_and_honoured_by_vllm(vllm_server):
    """The chat set's json-extraction prompt, sent as llm/golden.py sends it to the tiny model: vLLM
    accepts its ``response_format`` (no 400) and constrains the answer to the schema - a complete answer
    is JSON of that schema; one cut by ``max_tokens`` (a random model need not close its strings) is at
    least the start of that JSON object, whitespace aside."""
    import urllib.request

    (prompt,) = [p for p in golden.load(ROOT / "models" / "chat" / "golden.yaml") if p.response_format]
    route, body = prompt.body(SERVED)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
    req = urllib.request.Request(vllm_server.url + route, json.dumps(body).encode(), headers)
    with urllib.request.urlopen(req, timeout=120) as r:
        choice = json.loads(r.read())["choices"][0]
    answer = choice["message"]["content"]
    if choice["finish_reason"] == "stop":
        assert golden.validate(json.loads(answer), prompt.response_format["json_schema"]["schema"]) == [], answer
    else:
        # JSON allows whitespace between tokens (the grammar let the random model emit tabs): compare
        # without it; the object's first key is one of the schema's
        compact = "".join(answer.split())
        keys = prompt.response_format["json_schema"]["schema"]["properties"]
        assert choice["finish_reason"] == "length" and any(compact.startswith(f'{{"{k}"') for k in keys), choice
