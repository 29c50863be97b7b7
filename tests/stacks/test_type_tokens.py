"""Type tokens are state, not file names: every `mlplatform:<module>:<Class>` a URN carries stays what it was
when the resource was created, wherever its file moves (issue 22; pulumi-eks keeps `eks:index:*` for every
folder). A changed token is a new URN: Pulumi would replace the component and every child under it, unless
an alias says otherwise. These pins make such a change a deliberate edit instead of a side effect of a move."""

from __future__ import annotations

import re

from tests.conftest import ROOT

# Every component type the program can register, as created by the first releases. Adding a component
# adds a line here; renaming one needs an alias (see components/models/model.py's legacy aliases).
TYPE_TOKENS = {
    "mlplatform:artifact_store:ArtifactStore",
    "mlplatform:autoscaler:ClusterAutoscaler",
    "mlplatform:autoscaling:Keda",
    "mlplatform:ci:CiDeployRole",
    "mlplatform:cluster:Cluster",
    "mlplatform:gateway:EntryPoint",
    "mlplatform:gpu_addons:GpuAddons",
    "mlplatform:gpu_node_pool:GpuNodePool",
    "mlplatform:images:Images",
    "mlplatform:jenkins:Jenkins",
    "mlplatform:kueue:Kueue",
    "mlplatform:llm_service:LlmService",
    "mlplatform:model:Model",
    "mlplatform:model_service:ModelService",
    "mlplatform:monitoring:Monitoring",
    "mlplatform:namespaces:PlatformNamespace",
    "mlplatform:platform:Platform",
    "mlplatform:promotion:ModelPromoter",
    "mlplatform:rollouts:ArgoRollouts",
    "mlplatform:training_job:TrainingJob",
}

# What each stack file renders today (a stack without Jenkins has no Jenkins component, and so on).
RENDERED = {
    "dev": TYPE_TOKENS - {"mlplatform:ci:CiDeployRole", "mlplatform:jenkins:Jenkins", "mlplatform:promotion:ModelPromoter"},
    "local": TYPE_TOKENS
    - {
        "mlplatform:autoscaler:ClusterAutoscaler",
        "mlplatform:ci:CiDeployRole",
        "mlplatform:gpu_addons:GpuAddons",
        "mlplatform:gpu_node_pool:GpuNodePool",
        "mlplatform:jenkins:Jenkins",
        "mlplatform:llm_service:LlmService",
        "mlplatform:promotion:ModelPromoter",
    },
    "prod": TYPE_TOKENS - {"mlplatform:ci:CiDeployRole", "mlplatform:jenkins:Jenkins", "mlplatform:training_job:TrainingJob"},
    # staging serves the LLM dev imported (received: docs/llm.md "dev -> staging -> prod")
    "staging": TYPE_TOKENS - {"mlplatform:ci:CiDeployRole", "mlplatform:training_job:TrainingJob"},
}

TOKEN = re.compile(r"[\"'](mlplatform:[a-z_]+:[A-Za-z]+)[\"']")


def test_the_source_registers_exactly_the_pinned_type_tokens():
    found = {m for path in (ROOT / "components").rglob("*.py") for m in TOKEN.findall(path.read_text())}
    assert found == TYPE_TOKENS, f"added: {sorted(found - TYPE_TOKENS)}; gone: {sorted(TYPE_TOKENS - found)}"


def test_each_stack_renders_its_pinned_component_types(stack, result):
    rendered = {r.type for r in result.records if r.type.startswith("mlplatform:")}
    expected = RENDERED.get(stack)
    assert expected is not None, f"stacks/Pulumi.{stack}.yaml is new: pin the component types it renders in RENDERED"
    assert rendered == expected, f"{stack}: added {sorted(rendered - expected)}; gone {sorted(expected - rendered)}"


def test_urns_carry_the_type_tokens_not_the_file_layout(stack, result):
    for r in result.records:
        if r.type.startswith("mlplatform:"):
            assert f"::{r.type}::" in r.urn or f"${r.type}::" in r.urn, r.urn
            assert "components" not in r.urn and "/" not in r.type, r.urn
