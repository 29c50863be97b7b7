"""Who reaches an EKS stack's API: an access entry per deploying principal from config (authenticationMode
API admits no one else), ordered before every Kubernetes object; an API allowlist that admits somebody."""

from __future__ import annotations

import pytest
import yaml

from components.cluster import cluster
from components.config import ConfigError, validate
from components.config.schema import EKS_ACCESS_POLICIES, documentation_cidrs
from tests.conftest import ROOT


def _cluster_config(stack: str) -> dict:
    return yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"].get("mlplatform:cluster", {})


def test_every_configured_principal_gets_an_entry_and_a_policy(stack, result):
    entries = _cluster_config(stack).get("accessEntries", [])
    if _cluster_config(stack).get("kind") != "eks":
        assert not result.of_type("aws:eks/accessEntry:AccessEntry")
        return
    assert entries, f"{stack}: an EKS stack names the principals that deploy it (cluster.accessEntries)"
    mine = [r for r in result.of_type("aws:eks/accessEntry:AccessEntry") if "-access-" in r.name]
    assert sorted(r.inputs["principalArn"] for r in mine) == sorted(e["principalArn"] for e in entries)
    policies = {
        r.raw["principalArn"]: r for r in result.of_type("aws:eks/accessPolicyAssociation:AccessPolicyAssociation") if "-access-" in r.name
    }
    for e in entries:
        assoc = policies[e["principalArn"]]
        assert assoc.inputs["policyArn"] == EKS_ACCESS_POLICIES[e.get("policy", "cluster-admin")]
        assert assoc.inputs["accessScope"] == {"type": "cluster"}


def test_the_kubernetes_provider_waits_for_every_access_policy(stack, result):
    """The provider's edge orders every Kubernetes object after the entries on create and before them on
    destroy: nothing is created that the next deployer could not read back."""
    (provider,) = [r for r in result.of_type("pulumi:providers:kubernetes") if r.name.endswith("-k8s")]
    assocs = [r for r in result.of_type("aws:eks/accessPolicyAssociation:AccessPolicyAssociation") if "-access-" in r.name]
    missing = [a.urn for a in assocs if a.urn not in provider.depends_on]
    assert not missing, f"{stack}: the Kubernetes provider does not wait for {missing}"


BASE = {
    "environment": "dev",
    "cluster": {"kind": "eks", "region": "eu-west-1", "accountId": "111111111111", "endpointPublicAccessCidrs": ["198.18.0.0/15"]},
}


@pytest.mark.parametrize(
    ("entries", "key", "expect"),
    [
        ([{"principalArn": "arn:aws:iam::123:role/x"}], "cluster.accessEntries[0].principalArn", "should match pattern"),
        ([{"principalArn": "arn:aws:iam::111111111111:role/x", "policy": "root"}], "cluster.accessEntries[0].policy", "cluster-admin"),
        (
            [{"principalArn": "arn:aws:iam::111111111111:role/x"}, {"principalArn": "arn:aws:iam::111111111111:role/x"}],
            "cluster.accessEntries[1].principalArn",
            "listed twice",
        ),
    ],
)
def test_bad_access_entries_fail_in_one_line(entries, key, expect):
    raw = {**BASE, "cluster": {**BASE["cluster"], "accessEntries": entries}}
    with pytest.raises(ConfigError) as info:
        validate(raw, "x.yaml")
    line = str(info.value).splitlines()[0]
    assert line.startswith(f"x.yaml: mlplatform:{key}:") and expect in line, line


def test_access_entries_are_eks_only():
    """An existing cluster's access is its own: entries are accepted (a stack file moved between kinds)
    and render nothing there."""
    entries = [{"principalArn": "arn:aws:iam::111111111111:role/x"}]
    raw = {
        "environment": "local",
        "cluster": {"kind": "kubeconfig", "accessEntries": entries},
        "registry": {"kind": "external", "url": "localhost:5001"},
    }
    assert validate(raw, "x.yaml").cluster.access_entries


def test_documentation_ranges_are_recognised():
    assert documentation_cidrs(["203.0.113.0/24", "198.51.100.128/25", "192.0.2.7/32"]) == [
        "203.0.113.0/24",
        "198.51.100.128/25",
        "192.0.2.7/32",
    ]
    assert documentation_cidrs(["198.18.0.0/15", "10.0.0.0/8", "2001:db8::/32"]) == []


def test_a_documentation_allowlist_stops_a_real_up_and_warns_a_preview(monkeypatch):
    """An engine-run `up` (not a preview, not under mocks) refuses before the cluster is created; a
    preview and the offline synth warn and go on, so the example stack files still render."""
    from tools import mock_engine

    warned: list[str] = []
    monkeypatch.setattr(cluster.pulumi.log, "warn", lambda msg, *a, **k: warned.append(msg))
    mock_engine.run("dev")
    assert any("mlplatform:cluster.endpointPublicAccessCidrs: 203.0.113.0/24 is a documentation range" in w for w in warned)
    monkeypatch.setattr(cluster, "_offline", lambda: False)
    with pytest.raises(ConfigError) as info:
        mock_engine.run("dev")
    assert str(info.value).startswith("stacks/Pulumi.dev.yaml: mlplatform:cluster.endpointPublicAccessCidrs: 203.0.113.0/24")
    warned.clear()
    mock_engine.run("dev", overrides={"mlplatform:cluster": {**_cluster_config("dev"), "endpointPublicAccessCidrs": ["198.18.0.0/15"]}})
    assert not [w for w in warned if "documentation range" in w]
