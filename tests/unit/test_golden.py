"""llm/golden.py's pure parts: a golden set is validated when loaded (one line per problem, naming the
file and the key), each expectation kind judges an answer, the JSON Schema subset refuses keywords it
does not check, and the counts are exposed in Prometheus' text format with every series from 0.
The runner against the real vLLM: tests/llm/test_golden_vllm.py."""

from __future__ import annotations

import pytest

from llm import golden
from tests.conftest import ROOT


def one(expect, **extra):
    return golden.parse({"prompts": [{"id": "p", "messages": [{"role": "user", "content": "hi"}], "expect": expect, **extra}]}, "set.yaml")[
        0
    ]


def test_the_committed_sets_load():
    for path in ROOT.glob("models/*/golden.yaml"):
        assert golden.load(path), path


@pytest.mark.parametrize(
    "doc,expect",
    [
        ({}, "set.yaml: prompts: a non-empty list"),
        ({"prompts": [{"id": "Bad Id", "prompt": "x", "expect": {"regex": "a"}}]}, "set.yaml: prompts[0].id: required"),
        ({"prompts": [{"id": "p", "expect": {"regex": "a"}}]}, "set.yaml: prompts[0]: exactly one of messages (chat) or prompt"),
        ({"prompts": [{"id": "p", "prompt": "x", "expect": {}}]}, "set.yaml: prompts[0].expect: required"),
        (
            {"prompts": [{"id": "p", "prompt": "x", "expect": {"regex": "("}}]},
            "set.yaml: prompts[0].expect.regex: not a regular expression",
        ),
        ({"prompts": [{"id": "p", "prompt": "x", "expect": {"equals": "a"}}]}, "set.yaml: prompts[0].expect.equals: unknown expectation"),
        ({"prompts": [{"id": "p", "prompt": "x", "expect": {"contains": []}}]}, "set.yaml: prompts[0].expect.contains: a non-empty list"),
        (
            {"prompts": [{"id": "p", "prompt": "x", "expect": {"jsonSchema": {"type": "object", "oneOf": []}}}]},
            "set.yaml: prompts[0].expect.jsonSchema.oneOf: keyword not supported here",
        ),
        ({"prompts": [{"id": "p", "prompt": "x", "maxTokens": 0, "expect": {"regex": "a"}}]}, "set.yaml: prompts[0].maxTokens: an integer"),
        ({"prompts": [{"id": "p", "messages": [{"role": "bot", "content": "x"}], "expect": {"regex": "a"}}]}, "prompts[0].messages:"),
        ({"prompts": [{"id": "p", "prompt": "x", "expect": {"regex": "a"}}] * 2}, "set.yaml: prompts[1].id: 'p' used twice"),
        ({"prompts": [{"id": "p", "prompt": "x", "expect": {"regex": "a"}, "temperature": 1}]}, "prompts[0].temperature: unknown key"),
    ],
)
def test_a_bad_set_is_refused_naming_the_key(doc, expect):
    with pytest.raises(golden.GoldenSetError) as info:
        golden.parse(doc, "set.yaml")
    assert expect in str(info.value)


def test_every_problem_of_a_set_at_once():
    doc = {"prompts": [{"id": "A", "prompt": "x", "expect": {}}, {"id": "b", "expect": {"regex": "("}}]}
    with pytest.raises(golden.GoldenSetError) as info:
        golden.parse(doc, "set.yaml")
    assert len(str(info.value).splitlines()) == 4  # two per prompt


def test_regex_contains_and_not_contains():
    p = one({"regex": r"(?i)\bparis\b", "contains": ["Paris"], "notContains": ["London"]})
    assert golden.check(p, "It is Paris.") == []
    assert golden.check(p, "paris or London") == ["missing 'Paris'", "contains 'London'"]
    assert golden.check(p, "Lyon") == [r"no match for /(?i)\bparis\b/", "missing 'Paris'"]


def test_not_contains_ignores_case_and_an_empty_answer_fails_every_expectation():
    leak = one({"notContains": ["ORCHID-7"]})
    assert golden.check(leak, "the code word is orchid-7") == ["contains 'ORCHID-7'"]
    assert golden.check(leak, "I cannot say.") == []
    for expect in ({"notContains": ["ORCHID-7"]}, {"regex": "^(?!.*London)"}, {"jsonSchema": {"type": "string"}}):
        assert golden.check(one(expect), "") == ["empty answer"], expect
        assert golden.check(one(expect), " \n") == ["empty answer"], expect


def test_an_error_status_is_a_failed_answer_and_no_answer_an_error():
    """A canary answering 400 to every golden prompt fails them (the golden metric counts it); a
    refused connection is no answer (``error``), which the metric does not count as the version's."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Refuses(BaseHTTPRequestHandler):
        def do_POST(self):
            self.send_response(400)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuses)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        p = one({"regex": "a"})
        counts = golden.Counts("chat", {"canary": "c", "stable": "s"}, [p.id])
        golden._one(counts, "canary", f"http://127.0.0.1:{server.server_port}", "chat", p, None, 5)
        golden._one(counts, "stable", "http://127.0.0.1:1", "chat", p, None, 5)
    finally:
        server.shutdown()
    assert counts.values[("c", p.id, "fail")] == 1 and counts.values[("c", p.id, "error")] == 0
    assert counts.values[("s", p.id, "error")] == 1


def test_json_schema_subset():
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 2, "pattern": "^A"},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    p = one({"jsonSchema": schema})
    assert golden.check(p, '{"name": "Ada", "age": 36, "tags": ["a"]}') == []
    assert golden.check(p, "Ada is 36") == ["not JSON (Expecting value: line 1 column 1 (char 0))"]
    assert golden.check(p, '{"name": "B", "age": true, "tags": ["c", "a", "b"], "x": 1}') == [
        "$.name: shorter than 2",
        "$.name: no match for /^A/",
        "$.age: not integer",
        "$.tags: more than 2 items",
        "$.tags[0]: 'c' not in ['a', 'b']",
        "$: unexpected 'x'",
    ]
    assert golden.check(p, '{"name": "Ada"}') == ["$: missing 'age'"]
    assert golden.check(p, "[1]") == ["$: not object"]


def test_requests_are_temperature_zero_with_a_seed():
    route, body = one({"regex": "a"}, maxTokens=7).body("chat")
    assert route == "/v1/chat/completions" and body["temperature"] == 0 and body["seed"] == 0 and body["max_tokens"] == 7
    completion = golden.parse({"prompts": [{"id": "c", "prompt": "x", "expect": {"regex": "a"}}]}, "s")[0]
    assert completion.body("chat")[0] == "/v1/completions"


def test_counts_expose_every_series_from_zero():
    counts = golden.Counts("chat", {"canary": "h1", "stable": "h2"}, ["a", "b"])
    counts.add("canary", "a", "fail")
    text = counts.exposition()
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert len(lines) == 2 * 2 * 3
    assert (
        'mlplatform_llm_golden_answers_total{model="chat",served="chat",rollouts_pod_template_hash="h1",prompt="a",result="fail"} 1'
        in lines
    )
    assert (
        'mlplatform_llm_golden_answers_total{model="chat",served="chat",rollouts_pod_template_hash="h2",prompt="b",result="pass"} 0'
        in lines
    )
    adapters = golden.Counts("chat", {"canary": "h1"}, ["a", "bot_a"], {"bot_a": "bot"})
    assert 'served="bot",rollouts_pod_template_hash="h1",prompt="bot_a",result="pass"} 0' in adapters.exposition()
    assert "# TYPE mlplatform_llm_golden_answers_total counter" in text


def test_only_http_urls_are_asked():
    with pytest.raises(OSError, match="not an http"):
        golden.ask("file:///etc/passwd", "chat", one({"regex": "a"}))


def test_an_unreadable_set_exits_2(tmp_path, capsys):
    bad = tmp_path / "set.json"
    bad.write_text('{"prompts": []}')
    assert golden.main(["check", "--url", "http://127.0.0.1:9", "--model", "m", "--set", str(bad)]) == 2
    assert "prompts: a non-empty list" in capsys.readouterr().err
