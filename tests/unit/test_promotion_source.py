"""The delivery step reads the promotion source where the receiving stack's reviewed file names it
(issue 24 items 3 and 11): never from another stack's Pulumi state when the file says."""

from __future__ import annotations

import pytest
import yaml

from ops import deliver


def _stack(tmp_path, source: dict) -> object:
    d = tmp_path / "stacks"
    d.mkdir()
    (d / "Pulumi.prod.yaml").write_text(yaml.safe_dump({"config": {"mlplatform:models": {"mnist": {"source": source}}}}))
    return d


def test_the_configured_bucket_is_the_source_and_no_state_is_read(tmp_path):
    d = _stack(tmp_path, {"stack": "staging", "account": "222222222222", "bucket": "mlplatform-staging-store-692093e"})

    def no_state(cmd):
        raise AssertionError(f"read another stack's state: {cmd}")

    assert deliver.source_store("prod", "mnist", "staging", no_state, d) == "s3://mlplatform-staging-store-692093e"


def test_a_file_without_the_bucket_falls_back_to_the_source_stacks_output(tmp_path):
    d = _stack(tmp_path, {"stack": "staging"})
    calls = []

    def sh(cmd):
        calls.append(cmd)
        return "s3://from-state\n"

    assert deliver.source_store("prod", "mnist", "staging", sh, d) == "s3://from-state"
    assert calls == [["pulumi", "stack", "output", "modelStore", "--stack", "staging"]]


@pytest.mark.parametrize("receiver", ["staging", "prod"])
def test_the_real_stack_files_name_their_sources(receiver):
    stack = receiver
    from tests.conftest import ROOT

    def no_state(cmd):
        raise AssertionError(f"read another stack's state: {cmd}")

    src = deliver.source_stack(stack, "mnist", ROOT / "stacks")
    assert deliver.source_store(stack, "mnist", src, no_state, ROOT / "stacks").startswith(f"s3://mlplatform-{src}-store-")
