"""tools.preview_diff on synth outputs: add / remove / change / replace, secrets never printed."""

from __future__ import annotations

import json

import yaml

from tests.conftest import ROOT
from tools import mock_engine, preview_diff, synth


def write(d, resources):
    d.mkdir(parents=True, exist_ok=True)
    (d / "resources.json").write_text(json.dumps(resources))
    return d


def res(urn_name, type_="kubernetes:core/v1:ConfigMap", **inputs):
    return {"type": type_, "name": urn_name, "urn": f"urn:pulumi:dev::mlplatform::{type_}::{urn_name}", "parent": "", "inputs": inputs}


def test_add_remove_change_replace(tmp_path):
    base = write(
        tmp_path / "a",
        [
            res("keep", data={"a": "1"}),
            res("gone", data={}),
            res("job", "kubernetes:batch/v1:Job", metadata={"name": "train-aaa"}, spec={"backoffLimit": 4}),
            res("pool", "aws:eks/nodeGroup:NodeGroup", instanceTypes=["g5.xlarge"], scalingConfig={"maxSize": 2}),
        ],
    )
    head = write(
        tmp_path / "b",
        [
            res("keep", data={"a": "2"}),
            res("new", data={}),
            res("job", "kubernetes:batch/v1:Job", metadata={"name": "train-bbb"}, spec={"backoffLimit": 4}),
            res("pool", "aws:eks/nodeGroup:NodeGroup", instanceTypes=["g5.xlarge"], scalingConfig={"maxSize": 4}),
        ],
    )
    md = preview_diff.render(preview_diff.load(base), preview_diff.load(head))
    assert "**1 to add, 2 to update, 1 to replace, 1 to delete**" in md
    assert "- `+` `kubernetes:core/v1:ConfigMap::new`" in md
    assert "- `-` `kubernetes:core/v1:ConfigMap::gone`" in md
    assert "#### `~` `kubernetes:batch/v1:Job::job` (**replace**)" in md
    assert "| `metadata.name` (forces replacement) | `train-aaa` | `train-bbb` |" in md
    assert "A new training run starts: Job `train-aaa` is replaced by `train-bbb`." in md
    assert "| `data.a` | `1` | `2` |" in md
    assert "max size 2 -> 4" in md


def test_no_changes(tmp_path):
    d = write(tmp_path / "a", [res("x", data={"a": "1"})])
    assert "No changes." in preview_diff.render(preview_diff.load(d), preview_diff.load(d))


def test_secrets_are_not_printed(tmp_path):
    base = write(
        tmp_path / "a", [res("s", "kubernetes:core/v1:Secret", stringData={"password": "[secret]"}, metadata={"labels": {"v": "1"}})]
    )
    head = write(tmp_path / "b", [res("s", "kubernetes:core/v1:Secret", stringData="[secret]", metadata={"labels": {"v": "2"}})])
    md = preview_diff.render(preview_diff.load(base), preview_diff.load(head))
    assert "(secret)" in md and "[secret]" not in md


def test_real_synth_pair(tmp_path):
    """dev vs dev with one more epoch and a bigger GPU pool: a new training run, a pool update."""
    dev = yaml.safe_load((ROOT / "stacks" / "Pulumi.dev.yaml").read_text())["config"]
    synth.synth("dev", tmp_path / "base")
    mnist = dev["mlplatform:models"]["mnist"]
    mnist = dict(mnist, training=dict(mnist["training"], epochs=mnist["training"]["epochs"] + 1))
    pools = [dict(dev["mlplatform:gpuPools"][0], max=3)]
    models = {**dev["mlplatform:models"], "mnist": mnist}
    synth.synth("dev", tmp_path / "head", overrides={"mlplatform:models": models, "mlplatform:gpuPools": pools})
    md = preview_diff.render(preview_diff.load(tmp_path / "base"), preview_diff.load(tmp_path / "head"))
    assert "A new training run starts" in md
    assert "max size 2 -> 3" in md
    assert "to delete**" in md and "0 to delete" in md
    assert not any(s in md for s in mock_engine.run("dev").sensitive)


def test_alias_is_a_rename_not_a_delete_and_a_create(tmp_path):
    old = res("mlplatform-training-job", "kubernetes:batch/v1:Job", metadata={"name": "train-aaa"})
    new = dict(res("mlplatform-mnist-training-job", "kubernetes:batch/v1:Job", metadata={"name": "train-aaa"}), aliases=[old["urn"]])
    md = preview_diff.render(preview_diff.load(write(tmp_path / "a", [old])), preview_diff.load(write(tmp_path / "b", [new])))
    assert "**0 to add, 1 to update, 0 to replace, 0 to delete**" in md and "1 renamed with an alias" in md
    assert "Renamed from `kubernetes:batch/v1:Job::mlplatform-training-job` (alias: same resource). No other change." in md


def test_renamed_deployment_is_explained(tmp_path):
    old = res("mlplatform-serving-deployment", "kubernetes:apps/v1:Deployment", metadata={"name": "model-server"})
    new = res("mlplatform-serving-deployment", "kubernetes:apps/v1:Deployment", metadata={"name": "model-server-mnist"})
    md = preview_diff.render(preview_diff.load(write(tmp_path / "a", [old])), preview_diff.load(write(tmp_path / "b", [new])))
    assert "1 to replace" in md
    assert "> Deployment `model-server` is replaced by `model-server-mnist`: the new one is created and ready before" in md


def test_cli_usage_errors(tmp_path, capsys):
    assert preview_diff.main([str(tmp_path), str(tmp_path)]) == 2
    assert "no resources.json" in capsys.readouterr().err
