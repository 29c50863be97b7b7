"""Security and GPU-cost guardrails as pure functions over resources (type + inputs).

The CrossGuard pack (policy/__main__.py) and the offline checker (python -m policy.check, over a
synth's resources.json) call the same functions, and so do the tests, without any engine.

A resource rule takes a ``Res`` and returns violation messages; a stack rule takes every resource and
returns (urn, message) pairs.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

GPU_RESOURCE = "nvidia.com/gpu"
GPU_LABELS = ("nvidia.com/gpu.present", "mlplatform.io/gpu-pool")
ENV_LABEL = "mlplatform.io/environment"
PART_OF = ("app.kubernetes.io/part-of", "mlplatform")
ANY = {"0.0.0.0/0", "::/0"}
METADATA_IP = ipaddress.ip_address("169.254.169.254")

# Charts whose pods legitimately need host access, and why. Everything else may not have it.
HOST_ACCESS_ALLOWED = {
    "nvidia-device-plugin": "registers GPUs with the kubelet through its device-plugin socket (hostPath /var/lib/kubelet/device-plugins)",
    "dcgm-exporter": "reads GPU counters through the kubelet pod-resources socket (hostPath) to attribute GPUs to pods",
    "kube-prometheus-stack": "node-exporter reads the node's /proc and /sys (hostPath, hostPID, hostNetwork) for node metrics",
}

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "Pod"}
CREDENTIAL_VALUE = re.compile(
    r"(AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----|xox[baprs]-[0-9A-Za-z-]{10,}|gh[pousr]_[0-9A-Za-z]{30,}|hooks\.slack\.com/services/)"
)
CREDENTIAL_KEY = re.compile(r"(password|passwd|token|secret|api[_-]?key|access[_-]?key|credentials?)$", re.I)
REFERENCE_KEYS = re.compile(
    r"(existingsecret|secretname|secretkeyref|passwordkey|userkey|tokenkey|secretref|secret_?key_?ref|_file|file)$", re.I
)


@dataclass
class Res:
    type: str
    props: dict[str, Any]
    urn: str = ""
    name: str = ""
    parent: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.props.get("kind", "") if self.type.startswith("kubernetes:") else ""


# ---------------------------------------------------------------- pod specs


def pod_spec(r: Res) -> dict[str, Any] | None:
    if not r.type.startswith("kubernetes:") or r.kind not in WORKLOAD_KINDS | {"CronJob"}:
        return None
    spec = r.props.get("spec") or {}
    if r.kind == "Pod":
        return spec
    if r.kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    return ((spec.get("template") or {}).get("spec")) or {}


def containers(pod: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from pod.get("initContainers") or []
    yield from pod.get("containers") or []


def no_privileged(r: Res) -> list[str]:
    pod = pod_spec(r)
    if pod is None:
        return []
    return [f"container {c.get('name')!r} is privileged" for c in containers(pod) if (c.get("securityContext") or {}).get("privileged")]


def no_host_access(r: Res) -> list[str]:
    if r.type == "kubernetes:helm.sh/v3:Release":
        return []  # charts: see HOST_ACCESS_ALLOWED (checked by helm_host_access_allowed)
    pod = pod_spec(r)
    if pod is None:
        return []
    out = [f"pod uses {k}" for k in ("hostNetwork", "hostPID", "hostIPC") if pod.get(k)]
    out += [f"volume {v.get('name')!r} is a hostPath" for v in pod.get("volumes") or [] if v.get("hostPath")]
    return out


def helm_host_access_allowed(r: Res) -> list[str]:
    """A chart that enables host access through its values must be on the allow-list (with a reason)."""
    if r.type != "kubernetes:helm.sh/v3:Release":
        return []
    values = r.props.get("values") or {}
    flagged = [p for p, v in _walk(values) if p.split(".")[-1] in ("hostNetwork", "hostPID", "privileged") and v is True]
    chart = r.props.get("chart", "")
    return [f"chart {chart} sets {p}: true but is not on the host-access allow-list" for p in flagged if chart not in HOST_ACCESS_ALLOWED]


def run_as_non_root(r: Res) -> list[str]:
    pod = pod_spec(r)
    if pod is None:
        return []
    pod_level = (pod.get("securityContext") or {}).get("runAsNonRoot") is True
    return [
        f"container {c.get('name')!r} may run as root (set runAsNonRoot: true)"
        for c in containers(pod)
        if not (pod_level or (c.get("securityContext") or {}).get("runAsNonRoot") is True)
    ]


def no_privilege_escalation(r: Res) -> list[str]:
    pod = pod_spec(r)
    if pod is None:
        return []
    return [
        f"container {c.get('name')!r} allows privilege escalation (set allowPrivilegeEscalation: false)"
        for c in containers(pod)
        if (c.get("securityContext") or {}).get("allowPrivilegeEscalation") is not False
    ]


def drop_all_capabilities(r: Res) -> list[str]:
    pod = pod_spec(r)
    if pod is None:
        return []
    return [
        f"container {c.get('name')!r} does not drop ALL capabilities"
        for c in containers(pod)
        if "ALL" not in (((c.get("securityContext") or {}).get("capabilities") or {}).get("drop") or [])
    ]


def requests_and_limits(r: Res) -> list[str]:
    pod = pod_spec(r)
    if pod is None:
        return []
    out = []
    for c in containers(pod):
        res = c.get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        missing = [f"requests.{k}" for k in ("cpu", "memory") if k not in req] + [f"limits.{k}" for k in ("memory",) if k not in lim]
        if missing:
            out.append(f"container {c.get('name')!r} lacks {', '.join(missing)}")
    return out


def image_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    return ":" in last and not last.endswith(":latest") and last.split(":", 1)[1] != ""


def images_pinned(r: Res) -> list[str]:
    pod = pod_spec(r)
    if pod is None:
        return []
    return [
        f"container {c.get('name')!r} image {c.get('image')!r} is not pinned (tag or digest, never latest)"
        for c in containers(pod)
        if not image_pinned(str(c.get("image", "")))
    ]


def gpu_pods_target_gpu_nodes(r: Res) -> list[str]:
    """A pod that asks for GPUs must tolerate the GPU taint and select GPU nodes, or it will wait
    forever (or, worse, scale up a pool it cannot land on)."""
    pod = pod_spec(r)
    if pod is None:
        return []
    wants = any(GPU_RESOURCE in ((c.get("resources") or {}).get("limits") or {}) for c in containers(pod))
    if not wants:
        return []
    out = []
    if not any(t.get("key") == GPU_RESOURCE for t in pod.get("tolerations") or []):
        out.append(f"requests {GPU_RESOURCE} but does not tolerate the {GPU_RESOURCE} taint")
    selector = pod.get("nodeSelector") or {}
    affinity = str(pod.get("affinity") or "")
    if not any(label in selector or label in affinity for label in GPU_LABELS):
        out.append(f"requests {GPU_RESOURCE} but selects no GPU pool ({' or '.join(GPU_LABELS)})")
    return out


def no_credentials_in_clear(r: Res) -> list[str]:
    """Credentials belong in Pulumi secrets / Kubernetes Secrets, never in env values, ConfigMaps
    or Helm values."""
    out = []
    if r.kind == "ConfigMap":
        for path, v in _walk(r.props.get("data") or {}):
            if isinstance(v, str) and (CREDENTIAL_VALUE.search(v) or (CREDENTIAL_KEY.search(path) and v)):
                out.append(f"ConfigMap key {path!r} looks like a credential")
    pod = pod_spec(r)
    for c in containers(pod or {}):
        for e in c.get("env") or []:
            v = e.get("value")
            if isinstance(v, str) and v and (CREDENTIAL_VALUE.search(v) or CREDENTIAL_KEY.search(e.get("name", ""))):
                out.append(f"container {c.get('name')!r} env {e.get('name')!r} holds a credential in clear (use valueFrom.secretKeyRef)")
    if r.type == "kubernetes:helm.sh/v3:Release":
        for path, v in _walk(r.props.get("values") or {}):
            key = path.split(".")[-1]
            if not isinstance(v, str) or not v or v == "[secret]":
                continue
            if CREDENTIAL_VALUE.search(v) or (CREDENTIAL_KEY.search(key) and not REFERENCE_KEYS.search(key)):
                out.append(f"Helm value {path!r} looks like a credential in clear")
    return out


def rbac_least_privilege(r: Res) -> list[str]:
    if r.kind in ("ClusterRoleBinding", "RoleBinding"):
        if (r.props.get("roleRef") or {}).get("name") == "cluster-admin":
            return [f"{r.kind} grants cluster-admin"]
    if r.kind in ("ClusterRole", "Role"):
        return [
            f"rule {i} grants every verb on every resource"
            for i, rule in enumerate(r.props.get("rules") or [])
            if "*" in (rule.get("verbs") or []) and "*" in (rule.get("resources") or [])
        ]
    return []


def ecr_hardened(r: Res) -> list[str]:
    if r.type != "aws:ecr/repository:Repository":
        return []
    out = []
    if (r.props.get("imageScanningConfiguration") or {}).get("scanOnPush") is not True:
        out.append("ECR repository does not scan on push")
    if r.props.get("imageTagMutability") != "IMMUTABLE":
        out.append("ECR repository tags are mutable")
    return out


def gpu_pool_scales_to_zero(r: Res) -> list[str]:
    """Non-prod GPU pools must be able to cost nothing when idle."""
    if r.type != "aws:eks/nodeGroup:NodeGroup" or "NVIDIA" not in str(r.props.get("amiType", "")):
        return []
    env = (r.props.get("tags") or {}).get(ENV_LABEL)
    if env != "prod" and (r.props.get("scalingConfig") or {}).get("minSize", 0) != 0:
        return [f"GPU pool on a {env or 'non-prod'} stack has minSize {r.props['scalingConfig']['minSize']}: set min: 0"]
    return []


def _covers(cidr: str, ip: ipaddress.IPv4Address) -> bool:
    try:
        return ip in ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return True  # unparsable: assume the worst


def no_metadata_egress(r: Res) -> list[str]:
    """No NetworkPolicy egress rule may reach the instance metadata service: a rule with no ``to``
    reaches everything, an ipBlock that contains 169.254.169.254 must list it in ``except``."""
    if r.kind != "NetworkPolicy":
        return []
    spec = r.props.get("spec") or {}
    out = []
    for i, rule in enumerate(spec.get("egress") or []):
        peers = rule.get("to") or []
        if not peers:
            out.append(f"egress rule {i} allows every destination, the metadata service {METADATA_IP} included")
            continue
        for peer in peers:
            block = peer.get("ipBlock")
            if (
                block
                and _covers(block.get("cidr", ""), METADATA_IP)
                and not any(_covers(e, METADATA_IP) for e in block.get("except") or [])
            ):
                out.append(f"egress rule {i} allows {block.get('cidr')} without excepting the metadata service {METADATA_IP}/32")
    return out


def launch_template_imds_locked(r: Res) -> list[str]:
    """Node launch templates: IMDSv2 only, response hop limit 1 (the reply cannot reach a pod)."""
    if r.type != "aws:ec2/launchTemplate:LaunchTemplate":
        return []
    md = r.props.get("metadataOptions") or {}
    out = []
    if md.get("httpTokens") != "required":
        out.append("launch template does not require IMDSv2 (metadataOptions.httpTokens: required)")
    if md.get("httpPutResponseHopLimit") != 1:
        out.append(f"launch template IMDS hop limit is {md.get('httpPutResponseHopLimit')!r}, not 1: pods can reach the node role")
    return out


def node_group_uses_launch_template(r: Res) -> list[str]:
    """Without a launch template EKS uses its default one (IMDS hop limit 2: pods reach the node role)."""
    if r.type != "aws:eks/nodeGroup:NodeGroup":
        return []
    return [] if r.props.get("launchTemplate") else ["node group has no launch template (EKS's default allows IMDS from pods)"]


RESOURCE_RULES: dict[str, tuple[Callable[[Res], list[str]], str]] = {
    "no-privileged-containers": (no_privileged, "a privileged container owns the node"),
    "no-host-namespaces-or-paths": (no_host_access, "host network/PID/IPC and hostPath escape the pod sandbox"),
    "helm-host-access-allow-list": (helm_host_access_allowed, "charts may get host access only with a written reason"),
    "run-as-non-root": (run_as_non_root, "a root process in a container is one kernel bug away from root on the node"),
    "no-privilege-escalation": (no_privilege_escalation, "setuid binaries must not gain privileges"),
    "drop-all-capabilities": (drop_all_capabilities, "no container needs Linux capabilities here"),
    "requests-and-limits": (requests_and_limits, "without them one pod starves the node, and the autoscaler cannot size pools"),
    "images-pinned": (images_pinned, "latest is not a version: rollouts and rollbacks become guesses"),
    "gpu-pods-target-gpu-nodes": (
        gpu_pods_target_gpu_nodes,
        "a GPU pod without toleration/selector never schedules or scales the wrong pool",
    ),
    "no-credentials-in-clear": (no_credentials_in_clear, "clear-text credentials leak through state, previews and kubectl describe"),
    "rbac-least-privilege": (rbac_least_privilege, "cluster-admin or */* turns any compromised pod into a cluster takeover"),
    "ecr-scan-and-immutable-tags": (ecr_hardened, "scan images for CVEs; an immutable tag always means the same image"),
    "gpu-pools-scale-to-zero": (gpu_pool_scales_to_zero, "idle GPUs are the largest avoidable bill"),
    "no-metadata-egress": (no_metadata_egress, "the metadata service hands the node role's credentials to any pod that asks"),
    "launch-template-imds-locked": (launch_template_imds_locked, "IMDSv2 with hop limit 1 keeps the node role out of pods"),
    "node-group-launch-template": (node_group_uses_launch_template, "only our launch template locks the metadata service"),
}

# ---------------------------------------------------------------- stack rules


def namespaces_default_deny(resources: list[Res]) -> list[tuple[str, str]]:
    ours = [
        r for r in resources if r.kind == "Namespace" and (r.props.get("metadata") or {}).get("labels", {}).get(PART_OF[0]) == PART_OF[1]
    ]
    denied = set()
    for r in resources:
        if r.kind != "NetworkPolicy":
            continue
        spec = r.props.get("spec") or {}
        if (
            spec.get("podSelector") == {}
            and set(spec.get("policyTypes") or []) == {"Ingress", "Egress"}
            and not spec.get("ingress")
            and not spec.get("egress")
        ):
            denied.add((r.props.get("metadata") or {}).get("namespace"))
    return [
        (r.urn, f"namespace {r.props['metadata']['name']!r} has no default-deny NetworkPolicy")
        for r in ours
        if r.props["metadata"]["name"] not in denied
    ]


def prod_load_balancers_restricted(resources: list[Res]) -> list[tuple[str, str]]:
    env_of = {
        (r.props.get("metadata") or {}).get("name"): ((r.props.get("metadata") or {}).get("labels") or {}).get(ENV_LABEL)
        for r in resources
        if r.kind == "Namespace"
    }
    out = []
    for r in resources:
        spec = r.props.get("spec") or {}
        if r.kind != "Service" or spec.get("type") != "LoadBalancer":
            continue
        if env_of.get((r.props.get("metadata") or {}).get("namespace")) != "prod":
            continue
        ranges = spec.get("loadBalancerSourceRanges") or []
        if not ranges:
            out.append((r.urn, "prod LoadBalancer without loadBalancerSourceRanges"))
        elif ANY & set(ranges):
            out.append((r.urn, "prod LoadBalancer open to 0.0.0.0/0"))
    return out


def s3_buckets_hardened(resources: list[Res]) -> list[tuple[str, str]]:
    """Each bucket needs, next to it (same parent), a full public-access block, versioning and
    default encryption."""
    out = []
    for b in (r for r in resources if r.type == "aws:s3/bucket:Bucket"):
        siblings = [r for r in resources if r.parent == b.parent]
        pab = [s for s in siblings if s.type == "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"]
        if not any(
            all(s.props.get(k) is True for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"))
            for s in pab
        ):
            out.append((b.urn, "bucket without a full public-access block"))
        if not any(
            s.type == "aws:s3/bucketVersioning:BucketVersioning"
            and (s.props.get("versioningConfiguration") or {}).get("status") == "Enabled"
            for s in siblings
        ):
            out.append((b.urn, "bucket without versioning"))
        if not any(s.type == "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration" for s in siblings):
            out.append((b.urn, "bucket without default encryption"))
    return out


def total_gpu_max(resources: list[Res], gpu_counts: dict[str, int]) -> tuple[int, str]:
    total, env = 0, ""
    for r in resources:
        if r.type == "aws:eks/nodeGroup:NodeGroup" and "NVIDIA" in str(r.props.get("amiType", "")):
            per_node = max((gpu_counts.get(t, 1) for t in r.props.get("instanceTypes") or []), default=1)
            total += per_node * int((r.props.get("scalingConfig") or {}).get("maxSize", 0))
            env = (r.props.get("tags") or {}).get(ENV_LABEL, env)
    return total, env


def gpu_ceiling(resources: list[Res], ceiling: int, gpu_counts: dict[str, int], prod: bool) -> list[tuple[str, str]]:
    """Total GPUs the pools may scale to. Mandatory off prod; prod gets the advisory twin."""
    total, env = total_gpu_max(resources, gpu_counts)
    if (env == "prod") != prod or total <= ceiling:
        return []
    return [
        (
            "stack",
            f"GPU pools may scale to {total} GPUs, above the ceiling of {ceiling} (raise maxTotalGpus in the policy config deliberately)",
        )
    ]


def kubeconfig_secret(resources: list[Res]) -> list[tuple[str, str]]:
    return [
        (r.urn, "the Kubernetes provider's kubeconfig is not a secret")
        for r in resources
        if r.type == "pulumi:providers:kubernetes"
        and isinstance(r.props.get("kubeconfig"), str)
        and r.props["kubeconfig"].lstrip().startswith(("{", "apiVersion"))
    ]


SERVING_KINDS = {"Deployment", "StatefulSet", "Rollout"}


def gpu_serving_sleeps_off_prod(resources: list[Res]) -> list[tuple[str, str]]:
    """Outside prod, a long-running GPU workload (a model server) is scaled by a KEDA ScaledObject
    that can take it to zero: ``minReplicaCount`` 0 (KEDA's default) or an awake-window cron trigger.
    Otherwise a dev GPU idles through nights and weekends: 120 of the week's 168 hours."""
    env_of = {
        (r.props.get("metadata") or {}).get("name"): ((r.props.get("metadata") or {}).get("labels") or {}).get(ENV_LABEL)
        for r in resources
        if r.kind == "Namespace"
    }
    scalers: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in resources:
        if r.type.startswith("kubernetes:") and r.props.get("kind") == "ScaledObject":
            spec = r.props.get("spec") or {}
            ref = spec.get("scaleTargetRef") or {}
            scalers[((r.props.get("metadata") or {}).get("namespace"), ref.get("kind", "Deployment"), ref.get("name"))] = spec
    out = []
    for r in resources:
        if not r.type.startswith("kubernetes:") or r.props.get("kind") not in SERVING_KINDS:
            continue
        pod = ((r.props.get("spec") or {}).get("template") or {}).get("spec") or {}
        if not any(GPU_RESOURCE in ((c.get("resources") or {}).get("limits") or {}) for c in containers(pod)):
            continue
        meta = r.props.get("metadata") or {}
        if env_of.get(meta.get("namespace")) == "prod":
            continue
        spec = scalers.get((meta.get("namespace"), r.props["kind"], meta.get("name")))
        what = f"GPU serving {r.props['kind']} {meta.get('name')!r} outside prod"
        if spec is None:
            out.append((r.urn, f"{what} has no KEDA ScaledObject: it can never scale to zero"))
        elif spec.get("minReplicaCount", 0) != 0 and not any(t.get("type") == "cron" for t in spec.get("triggers") or []):
            out.append((r.urn, f"{what} keeps {spec['minReplicaCount']} replicas day and night: set minReplicas 0 or an awake schedule"))
    return out


STACK_RULES: dict[str, tuple[Callable[[list[Res]], list[tuple[str, str]]], str]] = {
    "namespaces-default-deny": (namespaces_default_deny, "a new workload is reachable only through the policies written for it"),
    "prod-load-balancers-restricted": (prod_load_balancers_restricted, "prod endpoints face the internet only from known networks"),
    "s3-buckets-hardened": (s3_buckets_hardened, "model artifacts: no public access, recoverable, encrypted at rest"),
    "kubeconfig-is-secret": (kubeconfig_secret, "a kubeconfig is a cluster credential"),
    "gpu-serving-sleeps-off-prod": (gpu_serving_sleeps_off_prod, "a non-prod GPU must not idle through nights and weekends"),
}


def _walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, f"{path}[{i}]")
    else:
        yield path, value
