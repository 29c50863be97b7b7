"""Each policy catches a planted violation and lets the compliant version through."""

from __future__ import annotations

import copy

import pytest

from components.config import GPU_COUNT
from components.lib.network import IN_CLUSTER, egress_except_metadata
from policy import rules
from policy.rules import Res

GOOD_CONTAINER = {
    "name": "app",
    "image": "registry/app:ctx-0123456789abcdef",
    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
    "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
    "env": [{"name": "LOG_LEVEL", "value": "info"}],
}
LT = {"launchTemplate": {"id": "lt-1", "version": "1"}}
GOOD_POD = {"securityContext": {"runAsNonRoot": True}, "containers": [GOOD_CONTAINER]}


def deployment(pod=None, **container_changes):
    pod = copy.deepcopy(pod or GOOD_POD)
    pod["containers"][0].update(container_changes)
    return Res(
        "kubernetes:apps/v1:Deployment",
        {"kind": "Deployment", "metadata": {"name": "d", "namespace": "ml-serving"}, "spec": {"template": {"spec": pod}}},
        urn="urn:d",
    )


def netpol(egress):
    return Res(
        "kubernetes:networking.k8s.io/v1:NetworkPolicy",
        {"kind": "NetworkPolicy", "metadata": {"name": "n", "namespace": "x"}, "spec": {"podSelector": {}, "egress": egress}},
    )


def with_pod(**pod_changes):
    pod = copy.deepcopy(GOOD_POD)
    pod.update(pod_changes)
    return deployment(pod)


CASES = [
    ("no-privileged-containers", deployment(securityContext={**GOOD_CONTAINER["securityContext"], "privileged": True}), "is privileged"),
    ("no-host-namespaces-or-paths", with_pod(hostNetwork=True), "hostNetwork"),
    ("no-host-namespaces-or-paths", with_pod(volumes=[{"name": "root", "hostPath": {"path": "/"}}]), "hostPath"),
    (
        "run-as-non-root",
        deployment(
            {"containers": [{**GOOD_CONTAINER, "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}]}
        ),
        "may run as root",
    ),
    (
        "no-privilege-escalation",
        deployment(securityContext={"runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}),
        "privilege escalation",
    ),
    ("drop-all-capabilities", deployment(securityContext={"allowPrivilegeEscalation": False, "runAsNonRoot": True}), "ALL capabilities"),
    ("requests-and-limits", deployment(resources={"requests": {"cpu": "1"}}), "requests.memory, limits.memory"),
    ("images-pinned", deployment(image="nginx:latest"), "not pinned"),
    ("images-pinned", deployment(image="nginx"), "not pinned"),
    (
        "gpu-pods-target-gpu-nodes",
        deployment(resources={"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "1Gi", "nvidia.com/gpu": 1}}),
        "does not tolerate",
    ),
    ("no-credentials-in-clear", deployment(env=[{"name": "DB_PASSWORD", "value": "hunter2"}]), "DB_PASSWORD"),
    (
        "no-credentials-in-clear",
        Res("kubernetes:core/v1:ConfigMap", {"kind": "ConfigMap", "data": {"cfg": "key=AKIAABCDEFGHIJKLMNOP"}}),
        "looks like a credential",
    ),
    (
        "no-credentials-in-clear",
        Res("kubernetes:helm.sh/v3:Release", {"chart": "grafana", "values": {"grafana": {"adminPassword": "s3cret"}}}),
        "grafana.adminPassword",
    ),
    (
        "rbac-least-privilege",
        Res(
            "kubernetes:rbac.authorization.k8s.io/v1:ClusterRoleBinding",
            {"kind": "ClusterRoleBinding", "roleRef": {"name": "cluster-admin"}},
        ),
        "cluster-admin",
    ),
    (
        "rbac-least-privilege",
        Res(
            "kubernetes:rbac.authorization.k8s.io/v1:Role",
            {"kind": "Role", "rules": [{"verbs": ["*"], "resources": ["*"], "apiGroups": ["*"]}]},
        ),
        "every verb",
    ),
    (
        "ecr-scan-and-immutable-tags",
        Res("aws:ecr/repository:Repository", {"imageTagMutability": "MUTABLE", "imageScanningConfiguration": {"scanOnPush": True}}),
        "mutable",
    ),
    (
        "gpu-pools-scale-to-zero",
        Res(
            "aws:eks/nodeGroup:NodeGroup",
            {"amiType": "AL2023_x86_64_NVIDIA", "tags": {"mlplatform.io/environment": "dev"}, "scalingConfig": {"minSize": 2}},
        ),
        "set min: 0",
    ),
    (
        "helm-host-access-allow-list",
        Res("kubernetes:helm.sh/v3:Release", {"chart": "random-chart", "values": {"hostNetwork": True}}),
        "allow-list",
    ),
    # What jenkins/monitoring had before issue 13: egress to anywhere, the metadata service included.
    ("no-metadata-egress", netpol([{}]), "every destination"),
    ("no-metadata-egress", netpol([{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 443}]}]), "without excepting"),
    ("no-metadata-egress", netpol([{"to": [{"ipBlock": {"cidr": "169.254.0.0/16", "except": ["169.254.1.0/24"]}}]}]), "169.254.0.0/16"),
    ("launch-template-imds-locked", Res("aws:ec2/launchTemplate:LaunchTemplate", {}), "IMDSv2"),
    (
        "launch-template-imds-locked",
        Res("aws:ec2/launchTemplate:LaunchTemplate", {"metadataOptions": {"httpTokens": "required", "httpPutResponseHopLimit": 2}}),
        "hop limit is 2",
    ),
    ("node-group-launch-template", Res("aws:eks/nodeGroup:NodeGroup", {"amiType": "AL2023_x86_64_STANDARD"}), "no launch template"),
    # What the program installed before issue 24: KEDA, Grafana (in kube-prometheus-stack) with the charts' RBAC
    ("chart-rbac-no-cluster-secret-read", Res("kubernetes:helm.sh/v3:Release", {"chart": "keda", "values": {}}), "restrict.secret"),
    (
        "chart-rbac-no-cluster-secret-read",
        Res("kubernetes:helm.sh/v3:Release", {"chart": "keda", "values": {"permissions": {"operator": {"restrict": {"secret": True}}}}}),
        "permissions.metricServer.restrict.secret",
    ),
    (
        "chart-rbac-no-cluster-secret-read",
        Res("kubernetes:helm.sh/v3:Release", {"chart": "kube-prometheus-stack", "values": {"grafana": {"enabled": True}}}),
        "grafana.rbac.namespaced",
    ),
]


@pytest.mark.parametrize("policy,res,expect", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_policy_catches_planted_violation(policy, res, expect):
    rule, _ = rules.RESOURCE_RULES[policy]
    found = rule(res)
    assert found and any(expect in m for m in found), found


@pytest.mark.parametrize("policy", sorted(rules.RESOURCE_RULES))
def test_policy_lets_compliant_resources_through(policy):
    rule, _ = rules.RESOURCE_RULES[policy]
    gpu_pod = copy.deepcopy(GOOD_POD)
    gpu_pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = 1
    gpu_pod |= {
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "nodeSelector": {"nvidia.com/gpu.present": "true"},
    }
    compliant = [
        deployment(),
        deployment(gpu_pod),
        deployment(image="registry/app@sha256:" + "a" * 64),
        deployment(env=[{"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}]),
        Res(
            "kubernetes:helm.sh/v3:Release",
            {
                "chart": "grafana",
                "values": {"admin": {"existingSecret": "grafana-admin", "passwordKey": "admin-password"}, "rbac": {"namespaced": True}},
            },
        ),
        Res("kubernetes:helm.sh/v3:Release", {"chart": "nvidia-device-plugin", "values": {"hostNetwork": True}}),
        Res(
            "kubernetes:helm.sh/v3:Release",
            {"chart": "keda", "values": {"permissions": {p: {"restrict": {"secret": True}} for p in ("operator", "metricServer")}}},
        ),
        Res("kubernetes:helm.sh/v3:Release", {"chart": "kube-prometheus-stack", "values": {"grafana": {"enabled": False}}}),
        Res("kubernetes:rbac.authorization.k8s.io/v1:Role", {"kind": "Role", "rules": [{"verbs": ["get", "list"], "resources": ["pods"]}]}),
        Res("aws:ecr/repository:Repository", {"imageTagMutability": "IMMUTABLE", "imageScanningConfiguration": {"scanOnPush": True}}),
        Res(
            "aws:eks/nodeGroup:NodeGroup",
            {"amiType": "AL2023_x86_64_NVIDIA", "tags": {"mlplatform.io/environment": "dev"}, "scalingConfig": {"minSize": 0}, **LT},
        ),
        Res(
            "aws:eks/nodeGroup:NodeGroup",
            {"amiType": "AL2023_x86_64_NVIDIA", "tags": {"mlplatform.io/environment": "prod"}, "scalingConfig": {"minSize": 2}, **LT},
        ),
        netpol([egress_except_metadata(443), egress_except_metadata(), IN_CLUSTER]),
        netpol([{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]),
        Res("aws:ec2/launchTemplate:LaunchTemplate", {"metadataOptions": {"httpTokens": "required", "httpPutResponseHopLimit": 1}}),
    ]
    for res in compliant:
        assert rule(res) == [], (policy, res)


def ns(name, env="dev"):
    return Res(
        "kubernetes:core/v1:Namespace",
        {
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "mlplatform", "mlplatform.io/environment": env}},
        },
        urn=f"urn:ns:{name}",
    )


def deny(namespace):
    return Res(
        "kubernetes:networking.k8s.io/v1:NetworkPolicy",
        {
            "kind": "NetworkPolicy",
            "metadata": {"name": "default-deny", "namespace": namespace},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
        },
    )


def lb(namespace, ranges):
    spec = {"type": "LoadBalancer", **({"loadBalancerSourceRanges": ranges} if ranges is not None else {})}
    return Res(
        "kubernetes:core/v1:Service", {"kind": "Service", "metadata": {"name": "s", "namespace": namespace}, "spec": spec}, urn="urn:svc"
    )


def test_default_deny_per_namespace():
    assert rules.namespaces_default_deny([ns("a"), ns("b"), deny("a")]) == [("urn:ns:b", "namespace 'b' has no default-deny NetworkPolicy")]
    assert rules.namespaces_default_deny([ns("a"), deny("a")]) == []


def test_prod_load_balancers_restricted():
    assert rules.prod_load_balancers_restricted([ns("p", "prod"), lb("p", None)]) == [
        ("urn:svc", "prod LoadBalancer without loadBalancerSourceRanges")
    ]
    assert rules.prod_load_balancers_restricted([ns("p", "prod"), lb("p", ["0.0.0.0/0"])]) == [
        ("urn:svc", "prod LoadBalancer open to 0.0.0.0/0")
    ]
    assert rules.prod_load_balancers_restricted([ns("p", "prod"), lb("p", ["203.0.113.0/24"])]) == []
    assert rules.prod_load_balancers_restricted([ns("d", "dev"), lb("d", None)]) == []


def test_s3_bucket_hardening():
    bucket = Res("aws:s3/bucket:Bucket", {}, urn="urn:b", parent="urn:store")
    pab = Res(
        "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
        dict.fromkeys(("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"), True),
        parent="urn:store",
    )
    ver = Res("aws:s3/bucketVersioning:BucketVersioning", {"versioningConfiguration": {"status": "Enabled"}}, parent="urn:store")
    sse = Res("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration", {}, parent="urn:store")
    assert rules.s3_buckets_hardened([bucket, pab, ver, sse]) == []
    msgs = [m for _, m in rules.s3_buckets_hardened([bucket, ver])]
    assert msgs == ["bucket without a full public-access block", "bucket without default encryption"]


def pool(env, max_size, types=("g5.12xlarge",)):
    return Res(
        "aws:eks/nodeGroup:NodeGroup",
        {
            "amiType": "AL2023_x86_64_NVIDIA",
            "instanceTypes": list(types),
            "tags": {"mlplatform.io/environment": env},
            "scalingConfig": {"minSize": 0, "maxSize": max_size},
        },
    )


def test_gpu_ceiling_mandatory_off_prod_advisory_on_prod():
    assert rules.gpu_ceiling([pool("dev", 5)], 16, GPU_COUNT, prod=False)  # 5 x 4 GPUs = 20 > 16
    assert rules.gpu_ceiling([pool("dev", 4)], 16, GPU_COUNT, prod=False) == []
    assert rules.gpu_ceiling([pool("prod", 5)], 16, GPU_COUNT, prod=False) == []
    assert rules.gpu_ceiling([pool("prod", 5)], 16, GPU_COUNT, prod=True)


def test_kubeconfig_must_be_secret():
    clear = Res("pulumi:providers:kubernetes", {"kubeconfig": '{"apiVersion": "v1"}'}, urn="urn:p")
    assert rules.kubeconfig_secret([clear]) == [("urn:p", "the Kubernetes provider's kubeconfig is not a secret")]
    assert rules.kubeconfig_secret([Res("pulumi:providers:kubernetes", {"kubeconfig": "[secret]"})]) == []


def _gpu_job(kind="Job", labels=None, suspend=True, gpus=1):
    pod = copy.deepcopy(GOOD_POD)
    if gpus:
        pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = gpus
    job = {"suspend": suspend, "template": {"spec": pod}}
    meta = {"name": "train", "labels": labels or {}}
    if kind == "Job":
        props = {"kind": "Job", "metadata": meta, "spec": job}
    elif kind == "CronJob":
        props = {"kind": "CronJob", "metadata": {"name": "train"}, "spec": {"jobTemplate": {"metadata": meta, "spec": job}}}
    else:
        props = {
            "kind": "JobSet",
            "metadata": meta,
            "spec": {"suspend": suspend, "replicatedJobs": [{"name": "w", "template": {"spec": job}}]},
        }
    return Res(f"kubernetes:batch/v1:{kind}", props, urn=f"urn:{kind}")


QUEUED = {"kueue.x-k8s.io/queue-name": "training"}


@pytest.mark.parametrize("kind", ["Job", "CronJob", "JobSet"])
def test_gpu_jobs_go_through_a_queue(kind):
    assert any("names no Kueue queue" in m for m in rules.gpu_jobs_queued(_gpu_job(kind)))
    assert any("not created suspended" in m for m in rules.gpu_jobs_queued(_gpu_job(kind, QUEUED, suspend=False)))
    assert rules.gpu_jobs_queued(_gpu_job(kind, QUEUED)) == []
    # CPU runs are not the GPU policy's business (they are queued by the program all the same)
    assert rules.gpu_jobs_queued(_gpu_job(kind, gpus=0, suspend=False)) == []


def _cni(config):
    props = {"addonName": "vpc-cni", **({"configurationValues": config} if config is not None else {})}
    return Res("aws:eks/addon:Addon", props, urn="urn:cni")


EKS = Res("eks:index:Cluster", {"name": "c"}, urn="urn:eks")


@pytest.mark.parametrize(
    "resources,expect",
    [
        ([EKS, _cni(None)], 'enableNetworkPolicy: "true"'),  # what every EKS stack had before issue 24
        ([EKS, _cni('{"enableNetworkPolicy": "false"}')], 'enableNetworkPolicy: "true"'),
        ([EKS, _cni('{"env": {"WARM_IP_TARGET": "5"}}')], 'enableNetworkPolicy: "true"'),
        ([EKS], "without the vpc-cni add-on"),
    ],
)
def test_network_policies_enforced_catches_planted_violation(resources, expect):
    found = rules.network_policies_enforced(resources)
    assert found and expect in found[0][1], found


@pytest.mark.parametrize(
    "resources",
    [
        [EKS, _cni('{"enableNetworkPolicy": "true"}')],
        [EKS, _cni("enableNetworkPolicy: 'true'\n")],  # EKS accepts YAML too
        [EKS, _cni(None), Res("kubernetes:helm.sh/v3:Release", {"chart": "cilium"})],  # another engine enforces them
        [_cni(None)],  # a kubeconfig cluster: its CNI is not the program's
    ],
)
def test_network_policies_enforced_lets_enforcing_clusters_through(resources):
    assert rules.network_policies_enforced(resources) == []


def test_every_pinned_chart_is_classified_for_secret_read():
    """A new chart must say whether its RBAC reads Secrets outside its namespace (and how that is
    confined, or why it may): otherwise chart-rbac-no-cluster-secret-read would not see it."""
    from components.lib.helm import CHARTS

    known = set(rules.SECRET_READ_NARROWING) | set(rules.SECRET_READ_ALLOWED) | rules.NO_CLUSTER_SECRET_READ
    assert set(CHARTS) - {"grafana"} <= known, set(CHARTS) - known
