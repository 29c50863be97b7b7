"""0 violations on every stack: the pack is satisfied by the program, not silenced."""

from __future__ import annotations

import pytest

from policy import check, rules
from tests.conftest import trains, unavailable
from tools import reference


def _resources(result, chart_defaults: bool) -> list[rules.Res]:
    resources = [rules.Res(type=r.type, props=r.inputs, urn=r.urn, name=r.name, parent=r.parent) for r in result.records]
    return check.with_chart_defaults(resources) if chart_defaults else resources


@pytest.mark.parametrize("chart_defaults", [False, True], ids=["as-the-pack-sees-it", "with-chart-defaults"])
def test_every_mandatory_policy_passes(result, chart_defaults):
    """Twice: as CrossGuard sees the stack (values only) and with the charts' default values merged
    under ours (what Helm renders; needs ../shared/reference)."""
    if chart_defaults and reference.reference_dir() is None:
        unavailable("../shared/reference not present: chart defaults unknown")
    mandatory, _ = check.violations(_resources(result, chart_defaults))
    assert mandatory == [], "\n".join(f"{name}: {urn}: {m}" for name, urn, m in mandatory)


def test_policies_actually_inspect_the_workloads(result):
    """Guard against a vacuous pass: the pod-spec rules see our model servers (Rollout) and Job."""
    kinds = {
        rules.Res(type=r.type, props=r.inputs).kind
        for r in result.records
        if rules.pod_spec(rules.Res(type=r.type, props=r.inputs)) is not None
    }
    assert "Rollout" in kinds and ("Job" in kinds or not trains(result.stack))


def test_policies_inspect_chart_pods_and_agent_templates(result):
    """The pack sees inside Helm values: the agents' pod templates (Jenkins) and every chart workload
    whose pod settings the program sets."""
    seen = {
        (r.inputs["chart"], workload)
        for r in result.of_type("kubernetes:helm.sh/v3:Release")
        for workload, _pod, _families in rules.chart_pods(rules.Res(type=r.type, props=r.inputs))
    }
    charts = {r.inputs["chart"] for r in result.of_type("kubernetes:helm.sh/v3:Release")}
    expected = {(c, w) for c in charts for w in rules.CHART_PODS.get(c, {})}
    if "jenkins" in charts:
        expected |= {("jenkins", "python"), ("jenkins", "builder")}
    assert expected and expected <= seen
