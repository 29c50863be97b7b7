"""0 violations on every stack: the pack is satisfied by the program, not silenced."""

from __future__ import annotations

from policy import check, rules


def test_every_mandatory_policy_passes(result):
    resources = [rules.Res(type=r.type, props=r.inputs, urn=r.urn, name=r.name, parent=r.parent) for r in result.records]
    mandatory, _ = check.violations(resources)
    assert mandatory == [], "\n".join(f"{name}: {urn}: {m}" for name, urn, m in mandatory)


def test_policies_actually_inspect_the_workloads(result):
    """Guard against a vacuous pass: the pod-spec rules see our Deployment and Job."""
    kinds = {
        rules.Res(type=r.type, props=r.inputs).kind
        for r in result.records
        if rules.pod_spec(rules.Res(type=r.type, props=r.inputs)) is not None
    }
    assert {"Deployment", "Job"} <= kinds
