"""Everything that documents the stack config is generated from the config model (issue 27):
Pulumi.yaml's `config:` declarations and the stack file's JSON Schema are current, every stack file
validates against the schema (editors check stack files with it), and the schema catches a typo."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml

from components.config import schema
from tests.conftest import ROOT, STACKS
from tools import config_doc

STALE = "stale: run `python -m tools.config_doc --write`"


def test_pulumi_yaml_config_is_generated_from_the_model():
    text = config_doc.PULUMI_YAML.read_text()
    assert text == config_doc.pulumi_yaml(text), f"Pulumi.yaml config section {STALE}"
    declared = yaml.safe_load(text)["config"]
    assert set(declared) == {f"mlplatform:{k}" for k in schema.TOP_LEVEL_KEYS}
    assert declared["mlplatform:protect"]["type"] == "boolean" and declared["mlplatform:environment"]["type"] == "string"


def test_the_stack_schema_is_current_and_a_valid_json_schema():
    assert config_doc.SCHEMA.read_text() == config_doc.schema_text(), f"stacks/stack.schema.json {STALE}"
    jsonschema.Draft202012Validator.check_schema(json.loads(config_doc.SCHEMA.read_text()))


@pytest.fixture(scope="module")
def validator():
    return jsonschema.Draft202012Validator(json.loads(config_doc.SCHEMA.read_text()))


@pytest.mark.parametrize("name", STACKS)
def test_every_stack_file_validates_and_names_its_schema(name, validator):
    text = (ROOT / "stacks" / f"Pulumi.{name}.yaml").read_text()
    assert text.splitlines()[0] == config_doc.SCHEMA_LINE, "first line: the editor's pointer to the schema"
    problems = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(yaml.safe_load(text))]
    assert problems == []


@pytest.mark.parametrize(
    "config, where",
    [
        ({"mlplatform:cluster": {"kind": "eks", "regon": "eu-west-1"}}, "regon"),  # a typo in a key
        ({"mlplatform:enviroment": "dev"}, "enviroment"),  # a typo in a top-level key
        ({"mlplatform:protect": "yes"}, "protect"),  # a wrong type
    ],
)
def test_the_schema_catches_typos_and_wrong_types(config, where, validator):
    doc = {"config": {"mlplatform:environment": "dev", "mlplatform:cluster": {"kind": "kubeconfig"}, **config}}
    found = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    assert any(where in f for f in found), found


def test_other_namespaces_and_secrets_are_accepted(validator):
    doc = {
        "config": {
            "mlplatform:environment": "dev",
            "mlplatform:cluster": {"kind": "kubeconfig"},
            "aws:region": "eu-west-1",
            "mlplatform:hfToken": {"secure": "AAAB..."},
        },
        "encryptionsalt": "v1:abc",
    }
    assert list(validator.iter_errors(doc)) == []
