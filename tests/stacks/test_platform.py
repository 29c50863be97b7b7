"""Properties of the resource graph, on every stack (each test checks one property)."""

from __future__ import annotations

import json

import pytest
import yaml

from components.cluster.gpu_pools import GPU_TAINT_KEY, NVIDIA_AMI, POOL_LABEL
from components.lib import helm
from tests.conftest import ROOT, trains, unavailable
from tools import manifests, reference


def stack_cfg(stack):
    return yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]


def test_every_k8s_resource_uses_the_cluster_provider(result):
    providers = result.of_type("pulumi:providers:kubernetes")
    assert len(providers) == 1
    ref = f"{providers[0].urn}::{providers[0].name}-id"
    for r in result.records:
        if r.custom and r.type.startswith("kubernetes:"):
            assert r.provider == ref, f"{r.urn} uses provider {r.provider!r}, not the cluster's"


def test_manifests_validate_strictly(result, stack):
    version = stack_cfg(stack)["mlplatform:kubernetesVersion"]
    for r in result.k8s_objects():
        assert manifests.validate(r.inputs, version) == [], r.urn


def test_kubeconfig_output_is_secret(result, stack):
    if stack_cfg(stack)["mlplatform:cluster"]["kind"] == "eks":
        assert result.outputs["kubeconfig"] == "[secret]"
        assert json.loads(result.raw_outputs["kubeconfig"])["kind"] == "Config"
    else:
        assert result.outputs.get("kubeconfig") is None  # the user's own kubeconfig file: nothing to export


def test_kubeconfig_provider_reads_the_users_context(result, stack):
    cluster = stack_cfg(stack)["mlplatform:cluster"]
    (provider,) = result.of_type("pulumi:providers:kubernetes")
    if cluster["kind"] == "kubeconfig":
        assert provider.inputs.get("context") == cluster.get("context")
    else:
        assert provider.inputs["kubeconfig"] == "[secret]"


def test_namespaces_are_default_deny(result):
    namespaces = {r.inputs["metadata"]["name"] for r in result.of_type("kubernetes:core/v1:Namespace")}
    denies = {
        r.inputs["metadata"]["namespace"]
        for r in result.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")
        if r.inputs["spec"]["podSelector"] == {}
        and sorted(r.inputs["spec"]["policyTypes"]) == ["Egress", "Ingress"]
        and not r.inputs["spec"].get("ingress")
        and not r.inputs["spec"].get("egress")
    }
    assert namespaces and namespaces == denies


def test_gpu_pools_exactly_as_configured(result, stack):
    pools = stack_cfg(stack).get("mlplatform:gpuPools", [])
    groups = {r.inputs["nodeGroupName"]: r for r in result.of_type("aws:eks/nodeGroup:NodeGroup") if r.inputs["nodeGroupName"] != "system"}
    assert sorted(groups) == sorted(p["name"] for p in pools)
    for p in pools:
        g = groups[p["name"]].inputs
        assert g["amiType"] == NVIDIA_AMI, g
        assert g["instanceTypes"] == p["instanceTypes"]
        assert g["capacityType"] == p["capacityType"]
        assert g["scalingConfig"] == {"minSize": p["min"], "desiredSize": p["desired"], "maxSize": p["max"]}
        assert g["labels"][POOL_LABEL] == p["name"]
        assert g["taints"] == [{"key": GPU_TAINT_KEY, "value": "true", "effect": "NO_SCHEDULE"}]
        assert "launchTemplate" in g  # its disk size: tests/stacks/test_node_credentials.py


def test_desired_size_is_ignored_after_creation(result):
    for r in result.of_type("aws:eks/nodeGroup:NodeGroup"):
        assert "scalingConfig.desiredSize" in r.ignore_changes, r.urn


def test_autoscaler_asg_tags_agree_with_labels_and_taints(result):
    groups = [r for r in result.of_type("aws:eks/nodeGroup:NodeGroup") if r.inputs["nodeGroupName"] != "system"]
    for g in groups:
        pool_name = g.inputs["nodeGroupName"]
        asg_tags = {
            t.inputs["tag"]["key"]: t.inputs["tag"]["value"] for t in result.of_type("aws:autoscaling/tag:Tag") if t.parent == g.parent
        }
        prefix = "k8s.io/cluster-autoscaler/node-template"
        for k, v in g.inputs["labels"].items():
            assert asg_tags[f"{prefix}/label/{k}"] == v, (g.urn, k)
        for taint in g.inputs["taints"]:
            assert asg_tags[f"{prefix}/taint/{taint['key']}"] == f"{taint['value']}:NoSchedule"
        gpus = int(asg_tags[f"{prefix}/resources/nvidia.com/gpu"])
        assert gpus >= 1, pool_name
        assert asg_tags["k8s.io/cluster-autoscaler/enabled"] == "true"


def test_gpu_addons_tolerate_taint_and_select_gpu_nodes(result, stack):
    releases = {helm.chart_name(r.inputs["chart"]): r.inputs for r in result.of_type("kubernetes:helm.sh/v3:Release")}
    cfg = stack_cfg(stack)
    has_gpus = bool(cfg.get("mlplatform:gpuPools")) or cfg["mlplatform:cluster"].get("hasGpus", False)
    for chart in ("nvidia-device-plugin", "dcgm-exporter"):
        if not has_gpus:
            assert chart not in releases, f"{chart} on a stack without GPUs"
            continue
        values = releases[chart]["values"]
        assert {"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"} in values["tolerations"]
        terms = values["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert {"key": POOL_LABEL, "operator": "Exists"} in [e for t in terms for e in t["matchExpressions"]]


def test_nothing_gpu_without_pools(result, stack):
    cfg = stack_cfg(stack)
    if cfg.get("mlplatform:gpuPools"):
        pytest.skip("stack has GPU pools")
    assert not result.of_type("aws:autoscaling/tag:Tag")
    assert "cluster-autoscaler" not in {r.inputs["chart"] for r in result.of_type("kubernetes:helm.sh/v3:Release")}


def test_helm_charts_pinned_to_reference(result):
    ref = reference.reference_dir()
    if ref is None:
        unavailable("../shared/reference not present (user checkout): nothing to compare against")
    for r in result.of_type("kubernetes:helm.sh/v3:Release"):
        chart, version = helm.chart_name(r.inputs["chart"]), r.inputs["version"]
        assert reference.chart_values(chart, version) is not None, f"{r.urn}: {chart} {version} not the reference version"


def test_helm_value_keys_exist_in_chart(result):
    if reference.reference_dir() is None:
        unavailable("../shared/reference not present (user checkout)")
    for r in result.of_type("kubernetes:helm.sh/v3:Release"):
        chart, version = helm.chart_name(r.inputs["chart"]), r.inputs["version"]
        defaults = reference.chart_values(chart, version)
        bad = reference.unknown_value_keys(r.raw["values"], defaults, chart)
        assert bad == [], f"{r.urn}: keys not in {chart} {version} values.yaml: {bad}"


def test_chart_pins_cover_every_release(_results):
    """Every pin in helm.CHARTS (installed by a stack file or only under other config) is a version the
    reference data has, so the values-key checks compare against the chart that is installed, and
    every Release of every stack is one of the pins. (It used to compare each Release's version with
    helm.CHARTS, where that version came from: it could not fail.)"""
    from tests.conftest import STACKS
    from tools import mock_engine

    ref = reference.reference_dir()
    if ref is None:
        unavailable("../shared/reference not present (user checkout): nothing to compare the pins against")
    installed: set[tuple[str, str]] = set()
    for stack in STACKS:
        if stack not in _results:
            _results[stack] = mock_engine.run(stack)
        installed |= {
            (helm.chart_name(r.inputs["chart"]), r.inputs["version"]) for r in _results[stack].of_type("kubernetes:helm.sh/v3:Release")
        }
    pinned = {(chart, version) for chart, (version, _repo) in helm.CHARTS.items()}
    assert installed - pinned == set(), "installed but not pinned"
    assert [c for c, v in sorted(pinned) if not (ref / "charts" / c / v / "Chart.yaml").exists()] == [], (
        "pinned at a version the reference does not have"
    )


def own_code_models(stack) -> list[str]:
    """Models with their own training folder (models.<name>.training.code): one more image each."""
    models = stack_cfg(stack)["mlplatform:models"]
    return [m for m, e in models.items() if (e.get("training") or {}).get("code") and not e.get("source")]


def built_images(stack) -> int:
    """training, serving, one per own-code model, and the LoRA image where an adapter is fine-tuned here
    (models.<name>.training.kind: lora, no source; tests/stacks/test_lora_image.py)."""
    models = stack_cfg(stack)["mlplatform:models"]
    lora = any((e.get("training") or {}).get("kind") == "lora" and not e.get("source") for e in models.values())
    return 2 + len(own_code_models(stack)) + int(lora)


def test_images_pinned_never_latest(result, stack):
    images = result.of_type("docker-build:index:Image")
    assert len(images) == built_images(stack)
    for img in images:
        (name,) = img.inputs["tags"]
        assert ":ctx-" in name and not name.endswith(":latest"), name
        assert img.inputs["push"] is True
        assert img.inputs["buildArgs"]["BASE_IMAGE"].split(":")[-1] not in ("", "latest")
        assert not img.inputs["context"]["location"].startswith("/"), "absolute context path: differs per machine"


def test_workloads_run_the_built_images(result):
    """By digest (issue 13 item 6): ``<tag>@sha256:<digest of the pushed image>``."""
    from tools.mock_engine import _h

    refs = {f"{t}@sha256:{_h(t, n=64)}" for img in result.of_type("docker-build:index:Image") for t in img.inputs["tags"][:1]}
    used = set()
    workloads = ("kubernetes:apps/v1:Deployment", "kubernetes:argoproj.io/v1alpha1:Rollout", "kubernetes:batch/v1:Job")
    for r in (r for t in workloads for r in result.of_type(t)):
        used |= {c["image"] for c in r.raw["spec"]["template"]["spec"]["containers"]}
    if not trains(result.stack):
        # A stack that receives its models still builds the training image (components/services/images.py
        # builds both): only the serving image must be deployed there.
        refs = {r for r in refs if "training" not in r}
    # The LoRA image is built before its Job exists (the Job waits for the base's pinned version):
    # tests/stacks/test_lora_image.py checks the Job runs it by digest once it renders.
    refs = {r for r in refs if "/lora:" not in r}
    assert refs <= used, f"built but not deployed by digest: {refs - used}"


def test_ecr_repositories_secure(result, stack):
    repos = result.of_type("aws:ecr/repository:Repository")
    if stack_cfg(stack).get("mlplatform:registry", {}).get("kind", "ecr") != "ecr":
        assert repos == []
        return
    assert len(repos) == built_images(stack)
    for repo in repos:
        assert repo.inputs["imageTagMutability"] == "IMMUTABLE"
        assert repo.inputs["imageScanningConfiguration"] == {"scanOnPush": True}


def test_registry_password_is_secret(result):
    for img in result.of_type("docker-build:index:Image"):
        for registry in img.inputs.get("registries") or []:
            assert registry == "[secret]" or registry["password"] == "[secret]", img.urn


def test_eks_cluster_hardening(result, stack):
    clusters = result.of_type("eks:index:Cluster")
    cfg = stack_cfg(stack)["mlplatform:cluster"]
    if cfg["kind"] != "eks":
        assert clusters == []
        return
    (c,) = clusters
    assert c.inputs["version"] == stack_cfg(stack)["mlplatform:kubernetesVersion"]
    assert c.inputs["createOidcProvider"] is True
    assert c.inputs["nodeAssociatePublicIpAddress"] is False
    assert set(c.inputs["enabledClusterLogTypes"]) >= {"api", "audit", "authenticator"}
    assert c.inputs["publicAccessCidrs"] == cfg["endpointPublicAccessCidrs"]
    (vpc,) = result.of_type("awsx:ec2:Vpc")
    assert vpc.inputs["numberOfAvailabilityZones"] >= 2


def test_autoscaler_irsa_scoped_to_its_service_account(result, stack):
    if not stack_cfg(stack).get("mlplatform:gpuPools"):
        pytest.skip("no GPU pools, no autoscaler")
    role = result.one("aws:iam/role:Role", "mlplatform-autoscaler-role")
    trust = json.loads(role.inputs["assumeRolePolicy"])
    cond = trust["Statement"][0]["Condition"]["StringEquals"]
    assert "system:serviceaccount:kube-system:cluster-autoscaler" in cond.values()
    policy = json.loads(result.one("aws:iam/rolePolicy:RolePolicy", "mlplatform-autoscaler-policy").inputs["policy"])
    scale = next(s for s in policy["Statement"] if "autoscaling:SetDesiredCapacity" in s["Action"])
    assert scale["Condition"]["StringEquals"] == {f"aws:ResourceTag/k8s.io/cluster-autoscaler/mlplatform-{stack}": "owned"}
    # ... and that tag is the one every GPU pool's ASG carries
    owned = {t.inputs["tag"]["key"] for t in result.of_type("aws:autoscaling/tag:Tag") if t.inputs["tag"]["value"] == "owned"}
    assert owned == {f"k8s.io/cluster-autoscaler/mlplatform-{stack}"}


def namespace_names(res) -> set[str]:
    return {r.inputs["metadata"]["name"] for r in res.of_type("kubernetes:core/v1:Namespace")}


def test_no_namespace_for_a_component_that_is_off(stack, result):
    """Monitoring's namespace is privileged and Jenkins' two are baseline: none of them exists
    where nothing runs in it (ephemeral PR stacks turn Jenkins off)."""
    from tools import mock_engine

    jenkins = stack_cfg(stack).get("mlplatform:jenkins", {}).get("enabled", False)
    assert {"monitoring", *(["jenkins", "jenkins-builds"] if jenkins else [])} <= namespace_names(result)
    models = {n: m for n, m in stack_cfg(stack)["mlplatform:models"].items() if m.get("runtime") != "vllm"}  # they need Prometheus
    off = mock_engine.run(
        stack,
        overrides={"mlplatform:monitoring": {"enabled": False}, "mlplatform:jenkins": {"enabled": False}, "mlplatform:models": models},
    )
    gone = {"monitoring", "jenkins", "jenkins-builds"} | {n for n in namespace_names(result) if "exporter" in n}
    assert namespace_names(off) & gone == set()
    assert {"ml-serving", "ml-training", "envoy-gateway-system"} <= namespace_names(off)  # what every model needs stays


# URNs of the MNIST resources before the model catalogue (commit 297a651), as the mock monitor
# writes them (it puts only the parent's own type before a child's type): migrating a stack must find
# them again through aliases, or `pulumi up` deletes and recreates them.
PRE_CATALOGUE = [
    "mlplatform:platform:Platform$mlplatform:training_job:TrainingJob::mlplatform-training",
    "mlplatform:training_job:TrainingJob$kubernetes:batch/v1:Job::mlplatform-training-job",
    "mlplatform:training_job:TrainingJob$kubernetes:core/v1:ServiceAccount::mlplatform-training-sa",
    "mlplatform:platform:Platform$mlplatform:model_service:ModelService::mlplatform-serving",
    # (The server's Deployment is not kept: it became an Argo Rollout, another kind. On the first `up`
    # the Rollout starts at full scale and the Deployment is deleted after it, so the model keeps
    # serving: README "Model delivery".)
    "mlplatform:model_service:ModelService$kubernetes:policy/v1:PodDisruptionBudget::mlplatform-serving-pdb",
]
PRE_CATALOGUE_EKS = [
    "mlplatform:artifact_store:ArtifactStore$aws:iam/role:Role::mlplatform-training-store-role",
    "mlplatform:artifact_store:ArtifactStore$aws:iam/role:Role::mlplatform-serving-store-role",
]


def test_mnist_keeps_its_pre_catalogue_state(stack, result):
    aliases = {a for r in result.records for a in r.aliases}
    want = PRE_CATALOGUE + (PRE_CATALOGUE_EKS if stack_cfg(stack)["mlplatform:cluster"]["kind"] == "eks" else [])
    if not trains(stack):  # prod's training Job and its ServiceAccount are gone on purpose (it receives its models)
        want = [u for u in want if "training" not in u.split("::")[-1]]
    missing = [u for u in want if f"urn:pulumi:{stack}::mlplatform::{u}" not in aliases]
    assert missing == []


def test_data_is_kept_and_prod_refuses_an_accidental_destroy(result, stack):
    """Issue 29, Destroy: staging/prod keep the model store and the image repositories when destroyed
    (retain_on_delete: no half-way stop on a non-empty bucket), prod protects them too."""
    env = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]["mlplatform:environment"]
    data = result.of_type("aws:s3/bucket:Bucket") + result.of_type("aws:ecr/repository:Repository")
    for r in data:
        assert r.retain_on_delete is (env in ("staging", "prod")), r.urn
        assert r.protect is (env == "prod"), r.urn


def test_every_kubernetes_object_outlives_the_system_nodes_and_the_ebs_driver(result, stack):
    """The Kubernetes provider waits for the EBS CSI add-on (which waits for the system node group):
    created after them, every object is destroyed before them (tools/convergence.py rule e)."""
    kind = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]["mlplatform:cluster"]["kind"]
    if kind != "eks":
        pytest.skip(f"stacks/Pulumi.{stack}.yaml: cluster.kind is {kind}: no node groups or add-ons of ours")
    (provider,) = result.of_type("pulumi:providers:kubernetes")
    (ebs,) = [a for a in result.of_type("aws:eks/addon:Addon") if a.raw["addonName"] == "aws-ebs-csi-driver"]
    (system,) = [n for n in result.of_type("aws:eks/nodeGroup:NodeGroup") if n.raw["nodeGroupName"] == "system"]
    assert ebs.urn in provider.depends_on and system.urn in ebs.depends_on
    (sc,) = result.of_type("kubernetes:storage.k8s.io/v1:StorageClass")
    assert sc.raw["metadata"]["annotations"] == {"storageclass.kubernetes.io/is-default-class": "true"}


def test_every_kubernetes_object_goes_before_the_ci_access_entry():
    """Issue 29, Destroy: a destroy run by the CI role deletes every Kubernetes object while that role
    can still reach the cluster (each waits for its access entry, so is deleted before it)."""
    from tools import mock_engine
    from tools.convergence import Graph

    ci = {
        "githubRepo": "acme/mlplatform",
        "githubOidcProvider": "arn:aws:iam::111122223333:oidc-provider/token.actions.githubusercontent.com",
    }
    result = mock_engine.run("dev", overrides={"mlplatform:ci": ci})
    entries = result.of_type("aws:eks/accessEntry:AccessEntry")
    assert entries
    graph = Graph(result.records)
    # (deleted_with the cluster: not deleted through the API at all)
    late = [r.urn for r in result.k8s_objects() if not r.deleted_with and not all(e.urn in graph.upstream(r.urn) for e in entries)]
    assert late == []
