"""Issue 13 item 3: pods cannot read the node role's credentials, and the node role is worth less.

IMDSv2 with hop limit 1 on every node group's launch template, the VPC CNI on its own IRSA role (the
node role carries no CNI policy), and no NetworkPolicy in any platform namespace lets a pod reach
169.254.169.254.
"""

from __future__ import annotations

import json

import pytest

from components.cluster.cluster import IRSA_ADDONS
from policy import rules

CNI_POLICY = "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy"


def _eks_only(result):
    if not result.of_type("eks:index:Cluster"):
        pytest.skip("not an EKS stack: its nodes are not ours")


def test_every_node_group_has_a_locked_launch_template(result):
    _eks_only(result)
    templates = {f"{lt.name}-id": lt.raw for lt in result.of_type("aws:ec2/launchTemplate:LaunchTemplate")}
    groups = result.of_type("aws:eks/nodeGroup:NodeGroup")
    assert groups and any(g.raw["nodeGroupName"] == "system" for g in groups)
    for g in groups:
        ref = g.raw.get("launchTemplate")
        assert ref, f"{g.urn}: EKS's default launch template (IMDS hop limit 2)"
        lt = templates[ref["id"]]
        assert lt["metadataOptions"]["httpTokens"] == "required", g.urn
        assert lt["metadataOptions"]["httpPutResponseHopLimit"] == 1, g.urn
        assert ref["version"] == "1", "a version number, not $Latest (perpetual diff)"
        assert "diskSize" not in g.raw, "EKS refuses diskSize next to a launch template"


def test_gpu_pool_disk_size_moved_into_its_launch_template(result):
    _eks_only(result)
    templates = {f"{lt.name}-id": lt.raw for lt in result.of_type("aws:ec2/launchTemplate:LaunchTemplate")}
    from tests.stacks.test_platform import stack_cfg

    pools = {p["name"]: p for p in stack_cfg(result.stack).get("mlplatform:gpuPools", [])}
    for g in result.of_type("aws:eks/nodeGroup:NodeGroup"):
        if g.raw["nodeGroupName"] in pools:
            (bdm,) = templates[g.raw["launchTemplate"]["id"]]["blockDeviceMappings"]
            assert bdm["ebs"]["volumeSize"] == pools[g.raw["nodeGroupName"]].get("diskGiB", 100)
            assert bdm["ebs"]["encrypted"] == "true"


def test_node_role_has_no_cni_policy_and_cni_runs_on_irsa(result):
    _eks_only(result)
    attachments = {a.name: a.raw for a in result.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")}
    node = [a for n, a in attachments.items() if "-node-" in n]
    assert node and all(a["policyArn"] != CNI_POLICY for a in node), "the node role still carries the CNI policy"
    (cluster,) = result.of_type("eks:index:Cluster")
    assert cluster.raw["useDefaultVpcCni"] is True, "pulumi-eks' own vpc-cni add-on would run on the node role"
    addons = {a.raw["addonName"]: a for a in result.of_type("aws:eks/addon:Addon")}
    assert set(addons) == set(IRSA_ADDONS)
    roles = {f"arn:aws:iam::123456789012:role/{r.raw.get('name', r.name)}": r for r in result.of_type("aws:iam/role:Role")}
    for addon, (namespace, sa, policy) in IRSA_ADDONS.items():
        role_arn = addons[addon].raw["serviceAccountRoleArn"]
        role = next(r for arn, r in roles.items() if role_arn.startswith(arn))
        cond = json.loads(role.raw["assumeRolePolicy"])["Statement"][0]["Condition"]["StringEquals"]
        assert f"system:serviceaccount:{namespace}:{sa}" in cond.values(), addon
        assert any(a["policyArn"] == policy for n, a in attachments.items() if n.startswith(role.name.removesuffix("-role"))), addon
    # nodes join only after aws-node has its role
    system = next(g for g in result.of_type("aws:eks/nodeGroup:NodeGroup") if g.raw["nodeGroupName"] == "system")
    assert addons["vpc-cni"].urn in system.depends_on


def test_no_platform_namespace_can_reach_the_metadata_service(result):
    """Every namespace we create is default-deny, and no allow rule in it reaches 169.254.169.254.
    jenkins and monitoring had `egress: [{}]` before issue 13."""
    namespaces = {r.raw["metadata"]["name"] for r in result.of_type("kubernetes:core/v1:Namespace")}
    policies = result.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")
    with_egress = {p.raw["metadata"]["namespace"] for p in policies if p.raw["spec"].get("egress")}
    assert with_egress <= namespaces
    for p in policies:
        res = rules.Res(type=p.type, props=p.raw)
        assert rules.no_metadata_egress(res) == [], p.urn


def test_autoscaler_runs_the_release_of_the_clusters_minor(result):
    """Issue 13 item 6: the chart's default image (v1.35) on a 1.33 cluster."""
    from components.cluster.cluster_autoscaler import IMAGE_TAGS
    from tests.stacks.test_platform import stack_cfg

    releases = [r for r in result.of_type("kubernetes:helm.sh/v3:Release") if r.raw["chart"] == "cluster-autoscaler"]
    if not releases:
        pytest.skip("no GPU pools, no autoscaler")
    minor = stack_cfg(result.stack)["mlplatform:kubernetesVersion"]
    assert releases[0].raw["values"]["image"]["tag"] == IMAGE_TAGS[minor]
    assert IMAGE_TAGS[minor].startswith(f"v{minor}.")
