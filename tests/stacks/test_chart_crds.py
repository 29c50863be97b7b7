"""Every chart's CRDs are upgraded with the chart (issue 29, "Destroy"/minor: "chart CRDs are never
upgraded by Helm"): Helm installs a chart's crds/ directory once and never upgrades it, so each chart
we install either renders its CRDs from templates, or runs its own CRD upgrade Job, or gets them from
a separate CRD chart applied server-side (components/lib/helm.py CRDS)."""

from __future__ import annotations

import pytest

from components.lib import helm
from tools import reference
from tools.reference import unknown_value_keys

RELEASE = "kubernetes:helm.sh/v3:Release"
CHART_V4 = "kubernetes:helm.sh/v4:Chart"


def _contains(values: dict, wanted: dict) -> bool:
    return all(_contains(values.get(k) or {}, v) if isinstance(v, dict) else values.get(k) == v for k, v in wanted.items())


def test_every_chart_we_install_has_a_crd_policy():
    assert set(helm.CRDS) == set(helm.CHARTS), f"choose a CRD policy for {sorted(set(helm.CHARTS) ^ set(helm.CRDS))}"
    for chart, policy in helm.CRDS.items():
        assert (policy.how == "separate-chart") == (policy.crd_chart is not None), chart
        if policy.how == "upgrade-job":
            assert policy.values, f"{chart}: an upgrade job is switched on in the values"


def _reference(chart: str) -> dict:
    if reference.reference_dir() is None:
        from tests.conftest import unavailable

        unavailable("../shared/reference not present")
    return reference.chart_values(chart, helm.CHARTS[chart][0])


@pytest.mark.parametrize("chart", sorted(c for c, p in helm.CRDS.items() if p.values or p.requires))
def test_the_crd_switches_are_the_pinned_charts_own_keys(chart):
    values = _reference(chart)
    assert unknown_value_keys(helm.CRDS[chart].values, values, chart) == []
    assert unknown_value_keys(helm.CRDS[chart].requires, values, chart) == []
    if helm.CRDS[chart].how == "upgrade-job":
        # The pinned chart ships the job off by default: the switch is what turns it on.
        assert values["crds"]["upgradeJob"]["enabled"] is False
    if chart == "gateway-helm":
        assert values["crds"]["enabled"] is True  # on by default: the separate chart only works with it off


def test_every_release_carries_its_charts_crd_mechanism(result):
    releases = result.of_type(RELEASE)
    crd_charts = {r.urn: r for r in result.of_type(CHART_V4)}
    assert releases
    for r in releases:
        chart = helm.chart_name(r.inputs["chart"])
        policy = helm.CRDS[chart]
        assert _contains(r.raw["values"], policy.values), f"{r.urn}: values lack {policy.values}"
        if policy.requires:  # what the chart renders with: its pinned defaults under our values
            effective = helm.merged(_reference(chart), r.raw["values"])
            assert _contains(effective, policy.requires), f"{r.urn}: {policy.requires} does not hold: its CRDs are not templated"
        if policy.how == "separate-chart":
            ref, version, values = policy.crd_chart
            deps = [crd_charts[u] for u in r.depends_on if u in crd_charts]
            assert [(d.inputs["chart"], d.inputs["version"]) for d in deps] == [(ref, version)], f"{r.urn}: no CRD chart first"
            assert _contains(deps[0].raw["values"], values)
            assert r.inputs.get("skipCrds") is True, f"{r.urn}: the main chart must skip its crds/ directory"
        else:
            assert not r.inputs.get("skipCrds"), f"{r.urn}: skipCrds without a separate CRD chart installs no CRDs at all"


def test_no_crd_job_image_floats():
    job = helm.CRDS["kube-prometheus-stack"].values["crds"]["upgradeJob"]
    assert job["image"]["busybox"]["tag"] not in ("", "latest")
