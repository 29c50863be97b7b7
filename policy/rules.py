"""Security and GPU-cost guardrails as pure functions over resources (type + inputs).

The CrossGuard pack (policy/__main__.py) and the offline checker (python -m policy.check, over a
synth's resources.json) call the same functions, and so do the tests, without any engine.

A resource rule takes a ``Res`` and returns violation messages; a stack rule takes every resource and
returns (urn, message) pairs.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from tools import iam_eval

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

# Rollout (Argo Rollouts): the model servers' pods; every pod-spec rule applies to its template too.
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "Pod", "Rollout"}
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
    pod_level = (pod.get("securityContext") or {}).get("runAsNonRoot")
    # A container's own setting overrides the pod's (runAsNonRoot: false there undoes the pod's true).
    return [
        f"container {c.get('name')!r} may run as root (set runAsNonRoot: true)"
        for c in containers(pod)
        if (c.get("securityContext") or {}).get("runAsNonRoot", pod_level) is not True
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


QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


def _batch_pods(r: Res) -> Iterator[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(object labels, job spec, pod spec) of each job a batch workload submits: a Job, a CronJob's
    job template, each replicated job of a JobSet."""
    spec = r.props.get("spec") or {}
    labels = (r.props.get("metadata") or {}).get("labels") or {}
    if r.kind == "Job":
        yield labels, spec, ((spec.get("template") or {}).get("spec")) or {}
    elif r.kind == "CronJob":
        tpl = spec.get("jobTemplate") or {}
        job = tpl.get("spec") or {}
        yield (tpl.get("metadata") or {}).get("labels") or {}, job, ((job.get("template") or {}).get("spec")) or {}
    elif r.kind == "JobSet":
        for rj in spec.get("replicatedJobs") or []:
            job = (rj.get("template") or {}).get("spec") or {}
            # Kueue admits a JobSet as one workload: the queue label sits on the JobSet itself.
            yield labels, {"suspend": spec.get("suspend")}, ((job.get("template") or {}).get("spec")) or {}


def gpu_jobs_queued(r: Res) -> list[str]:
    """A batch workload that asks for GPUs waits in the stack's Kueue queue: created suspended, with
    the queue label, so the queue (not whoever submits first) decides who gets the GPUs."""
    if not r.type.startswith("kubernetes:") or r.kind not in ("Job", "CronJob", "JobSet"):
        return []
    out = []
    for labels, job, pod in _batch_pods(r):
        if not any(GPU_RESOURCE in ((c.get("resources") or {}).get("limits") or {}) for c in containers(pod)):
            continue
        if not labels.get(QUEUE_LABEL):
            out.append(f"requests {GPU_RESOURCE} but names no Kueue queue (label {QUEUE_LABEL})")
        if job.get("suspend") is not True:
            out.append(f"requests {GPU_RESOURCE} but is not created suspended (Kueue unsuspends it on admission)")
    return sorted(set(out))


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


def _reads_every_secret(rule: dict[str, Any]) -> bool:
    """A ClusterRole rule that reads Secrets: every one, or (``resourceNames``) the Secrets of those
    names in every namespace (a ClusterRole's names are not scoped to a namespace)."""
    core = set(rule.get("apiGroups") or []) & {"", "*"}
    reads = set(rule.get("verbs") or []) & {"get", "list", "watch", "*"}
    return bool(core and reads and set(rule.get("resources") or []) & {"secrets", "*"})


# Creating any of these runs a pod, which may mount any Secret and use any service account of its
# namespace: cluster-wide, that is every Secret of the cluster (Kubernetes RBAC good practices,
# "Workload creation").
WORKLOAD_RESOURCES = {
    "": {"pods"},
    "apps": {"deployments", "replicasets", "statefulsets", "daemonsets"},
    "batch": {"jobs", "cronjobs"},
    "argoproj.io": {"rollouts"},
}


def _creates_workloads(rule: dict[str, Any]) -> bool:
    if not set(rule.get("verbs") or []) & {"create", "*"}:
        return False
    resources = set(rule.get("resources") or [])
    for group in rule.get("apiGroups") or []:
        kinds = set().union(*WORKLOAD_RESOURCES.values()) if group == "*" else WORKLOAD_RESOURCES.get(group, set())
        if "*" in resources or resources & kinds:
            return True
    return False


def rbac_least_privilege(r: Res) -> list[str]:
    if r.kind in ("ClusterRoleBinding", "RoleBinding"):
        if (r.props.get("roleRef") or {}).get("name") == "cluster-admin":
            return [f"{r.kind} grants cluster-admin"]
    if r.kind in ("ClusterRole", "Role"):
        rules = list(enumerate(r.props.get("rules") or []))
        out = [
            f"rule {i} grants every verb on every resource"
            for i, rule in rules
            if "*" in (rule.get("verbs") or []) and "*" in (rule.get("resources") or [])
        ]
        # Issue 24 item 6: no ClusterRole of ours reads every Secret of the cluster.
        out += [f"rule {i} reads Secrets in every namespace" for i, rule in rules if r.kind == "ClusterRole" and _reads_every_secret(rule)]
        out += [
            f"rule {i} creates workloads in every namespace (a pod may mount any Secret there)"
            for i, rule in rules
            if r.kind == "ClusterRole" and _creates_workloads(rule)
        ]
        return out
    return []


# Charts whose default RBAC lets a pod read every Secret of the cluster (a ClusterRole with get/list/
# watch on secrets), each with the values that confine it to its own namespace. Judged on the values
# because a Release's rendered ClusterRoles are not resources of the stack. (From the charts' RBAC
# templates at the pinned versions, from memory: the reference copies hold values.yaml only.)
SECRET_READ_NARROWING: dict[str, tuple[tuple[str, Any], ...]] = {
    # KEDA 2.20.2: the operator's and the metrics server's ClusterRoles read Secrets for
    # TriggerAuthentications in any namespace unless restricted to KEDA's own.
    "keda": (("permissions.operator.restrict.secret", True), ("permissions.metricServer.restrict.secret", True)),
    # grafana 12.11.1 (a subchart of kube-prometheus-stack): its dashboard/datasource sidecars get a
    # ClusterRole on ConfigMaps and Secrets unless rbac.namespaced.
    "grafana": (("rbac.namespaced", True),),
    "kube-prometheus-stack": (("grafana.rbac.namespaced", True),),
    # argo-rollouts 2.41.0: the chart's ClusterRole reads every Secret; the program binds its own
    # (components/services/argo_rollouts.py CONTROLLER_RULES), which the rule below checks like any other.
    "argo-rollouts": (("controller.createClusterRole", False),),
}
# Charts that keep a cluster-wide Secret read, and why (as HOST_ACCESS_ALLOWED): issue 24 item 6.
SECRET_READ_ALLOWED = {
    "gateway-helm": "Envoy Gateway reads the TLS certificate Secrets that Gateways reference in their namespaces",
    "kube-prometheus-stack": "the Prometheus Operator writes the Prometheus/Alertmanager config Secrets and reads those "
    "ServiceMonitors reference; kube-state-metrics lists Secrets (it exports their metadata only)",
    "kueue": "the manager rotates its webhook certificate Secret (unverified: kueue 0.19.2 RBAC not in the reference copy)",
}
# Charts whose RBAC reads no Secret outside their namespace (each pinned chart is classified, tested).
NO_CLUSTER_SECRET_READ = {"cluster-autoscaler", "nvidia-device-plugin", "dcgm-exporter", "prometheus-pushgateway", "jenkins"}


def chart_rbac_no_cluster_secret_read(r: Res) -> list[str]:
    """A chart may not read every Secret of the cluster (on staging that includes the Jenkins
    credentials for prod) unless its values confine it, or it is on the allow-list with a reason."""
    if r.type != "kubernetes:helm.sh/v3:Release":
        return []
    chart = str(r.props.get("chart", "")).rsplit("/", 1)[-1]
    values = r.props.get("values") or {}
    if chart == "kube-prometheus-stack" and _get(values, "grafana.enabled") is False:
        return []
    return [
        f"chart {chart} reads every Secret of the cluster: set {path}: {str(want).lower()}"
        for path, want in SECRET_READ_NARROWING.get(chart, ())
        if _get(values, path) != want
    ]


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


def no_added_capabilities(r: Res) -> list[str]:
    pod = pod_spec(r)
    if pod is None:
        return []
    return [
        f"container {c.get('name')!r} adds capabilities {added}"
        for c in containers(pod)
        if (added := (((c.get("securityContext") or {}).get("capabilities") or {}).get("add") or []))
    ]


def no_unconfined_profiles(r: Res) -> list[str]:
    """seccomp/AppArmor Unconfined (pod or container level) switch off the kernel's syscall filter."""
    pod = pod_spec(r)
    if pod is None:
        return []
    out = []
    pod_ctx = pod.get("securityContext") or {}
    for where, ctx in [("pod", pod_ctx)] + [(f"container {c.get('name')!r}", c.get("securityContext") or {}) for c in containers(pod)]:
        for key in ("seccompProfile", "appArmorProfile"):
            if (ctx.get(key) or {}).get("type") == "Unconfined":
                out.append(f"{where} sets {key} Unconfined")
    return out


# ---------------------------------------------------------------- pods inside Helm values
#
# A helm.v3.Release's pods are rendered by the chart, out of the engine's sight; what the program
# decides about them is in the values. The pack rebuilds each workload's pod from the values paths
# the chart reads (pod/container securityContext, resources) and runs the pod rules on it, and it
# runs them on every pod template the program writes into values (Jenkins agents). Where the chart's
# default values are at hand (the offline checker and the tests, from ../shared/reference), they are
# merged under the program's values as Helm merges them; without them (the CrossGuard pack) only what
# the program sets is checked.


@dataclass(frozen=True)
class ChartPod:
    """Where a chart reads one workload's pod settings from (dotted values paths)."""

    container: str  # container name, for messages and exceptions
    container_security: str
    resources: str
    pod_security: str | None = None


CHART_PODS: dict[str, dict[str, ChartPod]] = {
    "dcgm-exporter": {"dcgm-exporter": ChartPod("exporter", "securityContext", "resources", "podSecurityContext")},
    "nvidia-device-plugin": {"device-plugin": ChartPod("nvidia-device-plugin-ctr", "securityContext", "resources", "podSecurityContext")},
    "cluster-autoscaler": {
        "cluster-autoscaler": ChartPod("cluster-autoscaler", "containerSecurityContext", "resources", "securityContext")
    },
    "prometheus-pushgateway": {"pushgateway": ChartPod("pushgateway", "containerSecurityContext", "resources", "securityContext")},
    "kube-prometheus-stack": {
        "grafana": ChartPod("grafana", "grafana.containerSecurityContext", "grafana.resources", "grafana.securityContext"),
        # The operator and its admission-webhook certificate jobs run in `monitoring` too (Pod Security
        # `restricted`): judged with the chart's defaults wherever those are known.
        "prometheus-operator": ChartPod(
            "kube-prometheus-stack",
            "prometheusOperator.containerSecurityContext",
            "prometheusOperator.resources",
            "prometheusOperator.securityContext",
        ),
        "admission-create": ChartPod(
            "create",
            "prometheusOperator.admissionWebhooks.createSecretJob.securityContext",
            "prometheusOperator.admissionWebhooks.patch.resources",
            "prometheusOperator.admissionWebhooks.patch.securityContext",
        ),
        "admission-patch": ChartPod(
            "patch",
            "prometheusOperator.admissionWebhooks.patchWebhookJob.securityContext",
            "prometheusOperator.admissionWebhooks.patch.resources",
            "prometheusOperator.admissionWebhooks.patch.securityContext",
        ),
    },
    "jenkins": {
        "controller": ChartPod(
            "jenkins", "controller.containerSecurityContext", "controller.resources", "controller.podSecurityContextOverride"
        )
    },
}

# Pod rules run on chart pods, and which values each needs to say anything (rules whose inputs the
# program leaves to an unseen chart default are skipped, not failed).
_SECURITY, _RESOURCES = "security", "resources"
CHART_POD_RULES: dict[str, tuple[Callable[[Res], list[str]], str]] = {
    "no-privileged-containers": (no_privileged, _SECURITY),
    "run-as-non-root": (run_as_non_root, _SECURITY),
    "no-privilege-escalation": (no_privilege_escalation, _SECURITY),
    "drop-all-capabilities": (drop_all_capabilities, _SECURITY),
    "no-added-capabilities": (no_added_capabilities, _SECURITY),
    "no-unconfined-profiles": (no_unconfined_profiles, _SECURITY),
    "no-host-namespaces-or-paths": (no_host_access, _SECURITY),
    "requests-and-limits": (requests_and_limits, _RESOURCES),
}

# (chart, workload or pod template, container) -> rule -> why the exception is needed. Nothing else
# in a chart pod may break a pod rule.
CHART_POD_EXCEPTIONS: dict[tuple[str, str, str], dict[str, str]] = {
    ("jenkins", "builder", "buildkitd"): {
        "no-privilege-escalation": "rootlesskit maps the build's user namespace with the setuid newuidmap/newgidmap "
        "(no_new_privs would disable them); moby/buildkit examples/kubernetes/*.rootless.yaml leave it on",
        "no-added-capabilities": "SETUID and SETGID only, the two capabilities newuidmap/newgidmap keep (shadow's "
        "idmapping drops every other one); everything else is dropped",
        "no-unconfined-profiles": "the runtime's default seccomp profile refuses unshare/mount and AppArmor refuses mount, "
        "both of which rootlesskit needs (moby/buildkit docs/rootless.md; examples/kubernetes/pod.rootless.yaml sets "
        "seccompProfile and appArmorProfile Unconfined)",
    },
    ("nvidia-device-plugin", "device-plugin", "nvidia-device-plugin-ctr"): {
        "run-as-non-root": "creates its socket in the kubelet's root-owned /var/lib/kubelet/device-plugins (no capability needed: "
        "it owns the directory as uid 0)",
    },
}


# DCGM's profiling metrics (DCGM_FI_PROF_*) need root and SYS_ADMIN; they are off unless the stack turns
# them on (monitoring.gpuProfilingMetrics), and only then is the exporter let off these two rules.
DCGM_PROFILING_COUNTERS = "/etc/dcgm-exporter/dcp-metrics-included.csv"
DCGM_PROFILING_EXCEPTIONS = {
    "run-as-non-root": "profiling metrics read the GPUs' performance counters, which DCGM opens as root",
    "no-added-capabilities": "SYS_ADMIN, required by DCGM for profiling metrics (DCGM_FI_PROF_*) only",
}


# The only capabilities an excused container may add back.
ALLOWED_ADDED_CAPABILITIES: dict[tuple[str, str, str], set[str]] = {
    ("jenkins", "builder", "buildkitd"): {"SETUID", "SETGID"},
    ("dcgm-exporter", "dcgm-exporter", "exporter"): {"SYS_ADMIN"},
}


def _adds_only_allowed(pod: dict[str, Any], chart: str, workload: str, container: str) -> bool:
    allowed = ALLOWED_ADDED_CAPABILITIES.get((chart, workload, container), set())
    return all(
        set(((c.get("securityContext") or {}).get("capabilities") or {}).get("add") or []) <= allowed
        for c in containers(pod)
        if c.get("name") == container
    )


def _exceptions(r: Res, chart: str, workload: str, container: str) -> dict[str, str]:
    """The rules a chart pod's container (or, with container "", the pod) is excused from, and why."""
    out = {**CHART_POD_EXCEPTIONS.get((chart, workload, ""), {}), **CHART_POD_EXCEPTIONS.get((chart, workload, container), {})}
    if chart == "dcgm-exporter" and DCGM_PROFILING_COUNTERS in ((r.props.get("values") or {}).get("arguments") or []):
        out |= DCGM_PROFILING_EXCEPTIONS
    return out


def _get(values: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        if not isinstance(values, dict) or part not in values:
            return None
        values = values[part]
    return values


def helm_merge(defaults: Any, values: Any) -> Any:
    """Helm's coalescing of user values over chart defaults: maps merge key by key, anything else
    (lists included) is replaced."""
    if isinstance(defaults, dict) and isinstance(values, dict):
        return {**defaults, **{k: helm_merge(defaults.get(k), v) for k, v in values.items()}}
    return defaults if values is None else values


def chart_pods(r: Res) -> Iterator[tuple[str, dict[str, Any], set[str]]]:
    """(workload, pod spec, which rule families it can be judged on) for every pod of a Helm release
    that the program configures. ``r.extra["chart_defaults"]``, when present, are merged under the values."""
    if r.type != "kubernetes:helm.sh/v3:Release":
        return
    chart = r.props.get("chart", "")
    values = r.props.get("values") or {}
    defaults = r.extra.get("chart_defaults")
    merged = helm_merge(defaults, values) if defaults else values
    for workload, where in CHART_PODS.get(chart, {}).items():
        # Judged on what is there (set by the program, or a chart default when known), {} included.
        families = {
            f for f, path in ((_SECURITY, where.container_security), (_RESOURCES, where.resources)) if _get(merged, path) is not None
        }
        if not families:
            continue
        pod: dict[str, Any] = {
            "securityContext": (_get(merged, where.pod_security) if where.pod_security else None) or {},
            "containers": [
                {
                    "name": where.container,
                    "securityContext": _get(merged, where.container_security) or {},
                    "resources": _get(merged, where.resources) or {},
                }
            ],
        }
        yield workload, pod, families
    # Pod templates the program writes into values verbatim: the Jenkins Kubernetes plugin's agents.
    if chart == "jenkins":
        for key, text in ((values.get("agent") or {}).get("podTemplates") or {}).items():
            for template in yaml.safe_load(text) or []:
                spec = (yaml.safe_load(template.get("yaml") or "") or {}).get("spec") or {}
                yield template.get("name", key), spec, {_SECURITY, _RESOURCES}


def chart_pods_hardened(r: Res) -> list[str]:
    """The pod rules, applied to the pods a chart renders from the program's values."""
    chart = r.props.get("chart", "")
    out = []
    for workload, pod, families in chart_pods(r):
        res = Res("kubernetes:core/v1:Pod", {"kind": "Pod", "spec": pod})
        for name, (rule, family) in CHART_POD_RULES.items():
            if family not in families:
                continue
            for message in rule(res):
                container = message.split("'")[1] if message.startswith("container '") else ""
                if name in _exceptions(r, chart, workload, container):
                    if name != "no-added-capabilities" or _adds_only_allowed(pod, chart, workload, container):
                        continue
                out.append(f"{chart} {workload}: {name}: {message}")
    return out


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def rollouts_plugins_pinned(r: Res) -> list[str]:
    """Argo Rollouts downloads its plugins at every controller start and runs them with the controller's
    rights: each one fetched over the network carries the SHA-256 the controller checks (issue 24 item 7;
    argo-rollouts utils/plugin/downloader.go). A ``file://`` plugin baked into the image is the image's pin."""
    if r.type != "kubernetes:helm.sh/v3:Release" or str(r.props.get("chart", "")).rsplit("/", 1)[-1] != "argo-rollouts":
        return []
    controller = (r.props.get("values") or {}).get("controller") or {}
    plugins = [*(controller.get("trafficRouterPlugins") or []), *(controller.get("metricProviderPlugins") or [])]
    return [
        f"plugin {p.get('name')!r} is fetched from {p.get('location')} without a sha256"
        for p in plugins
        if not str(p.get("location", "")).startswith("file://") and not _SHA256.match(str(p.get("sha256") or ""))
    ]


# Series a push must not be able to forge: serving, canary, KEDA and Prometheus' own (and any name).
FOREIGN_SERIES = ("up", "http_requests_total", "envoy_cluster_upstream_rq_xx", "vllm:num_requests_running", "mlplatform_serving_x", "a")


def _keeps_foreign(regex: Any) -> bool:
    """Whether a keep regex (anchored, as Prometheus anchors it) admits a series no training pushes;
    an invalid regex counts as admitting everything."""
    if not regex:
        return True
    try:
        pattern = re.compile(str(regex))
    except re.error:
        return True
    return any(pattern.fullmatch(name) for name in FOREIGN_SERIES)


def pushgateway_scrape_confined(r: Res) -> list[str]:
    """A Pushgateway scraped with ``honorLabels`` keeps whatever labels a push sets, so any code that can
    push (training) could forge a canary's or KEDA's series: the scrape keeps only names matched by a
    ``keep`` relabeling on ``__name__`` (issue 24 item 8; components/services/monitoring.py)."""
    if r.type != "kubernetes:helm.sh/v3:Release" or str(r.props.get("chart", "")).rsplit("/", 1)[-1] != "prometheus-pushgateway":
        return []
    monitor = (r.props.get("values") or {}).get("serviceMonitor") or {}
    if not monitor.get("enabled") or not monitor.get("honorLabels"):
        return []
    keeps = [
        m
        for m in monitor.get("metricRelabelings") or []
        if m.get("action") == "keep" and m.get("sourceLabels") == ["__name__"] and not _keeps_foreign(m.get("regex"))
    ]
    return [] if keeps else ["the Pushgateway is scraped with honorLabels and no keep of its metric names: a push can forge any series"]


# An S3 object ARN: bucket, then key.
_S3_OBJECT = re.compile(r"^arn:aws:s3:::([^/]+)/(.*)$")
_NAMED_MODEL = re.compile(r"models/([a-z0-9][a-z0-9-]*)")
# The pipeline's own identities move candidate/aliases by design: the promoter on receiving stacks
# (components/lib/promotion_iam.py, role mlplatform-<stack>-model-promoter) and the CI deploy role's
# own policy (components/cluster/ci_deploy_role.py, resource <platform>-ci-deploy-deploy: `make
# deliver` adopts and promotes with it; its permission boundary is what bounds it).
PIPELINE_POLICY_SUFFIX = "model-promoter-policy"
PIPELINE_POLICY_SUFFIXES = (PIPELINE_POLICY_SUFFIX, "-ci-deploy-deploy")
# AWS managed policies that allow s3:PutObject on every object of every bucket (AdministratorAccess:
# * on *; PowerUserAccess: NotAction iam/organizations/account on *; AmazonS3FullAccess: s3:* on *).
# Another managed ARN is not judged here; a customer-managed one is judged as its own Policy resource.
S3_WRITING_MANAGED = frozenset({"AdministratorAccess", "PowerUserAccess", "AmazonS3FullAccess"})
# What a publishing workload may never do under models/<m>/ (components/lib/iam.py _registry_guards).
_POINTER_KEYS = ("aliases/x.json", "LATEST", "audit/x/1.json", "rejected/x.json")
_PROBE_ACCOUNT = "000000000000"
_PROBE_MODEL = "zz-probe-model"
_CREATE = {"s3:if-none-match": "*"}


def _policy_statements(r: Res) -> list[dict[str, Any]] | None:
    doc = r.props.get("policy")
    if not isinstance(doc, str):
        return None  # unknown at preview: judged at up
    try:
        statements = json.loads(doc).get("Statement", [])
    except (ValueError, AttributeError):
        return None
    return [statements] if isinstance(statements, dict) else statements


def _listed(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def _worst_case(statements: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The statements as the rule evaluates them: every Allow as if its condition held, every Deny
    only where its condition is on ``s3:if-none-match`` alone (the one key the probes set) or absent.
    So a guard that depends on anything else does not count, and an Allow cannot hide behind one.
    Condition keys are case-insensitive in AWS: spelled lowercase here, as the probes set them."""
    out = []
    for s in statements:
        condition = {op: {k.lower(): v for k, v in pairs.items()} for op, pairs in (s.get("Condition") or {}).items()}
        keys = {k for pairs in condition.values() for k in pairs}
        if s.get("Effect") == "Allow":
            out.append({k: v for k, v in s.items() if k != "Condition"})
        elif s.get("Effect") == "Deny" and keys <= {"s3:if-none-match"}:
            out.append({**s, "Condition": condition} if condition else s)
    return out


def _probe_buckets(statements: list[dict[str, Any]]) -> set[str]:
    """The buckets a document names, and an instance of any bucket wildcard an Allow spans
    (``*``, ``arn:aws:s3:::*``, a ``NotResource``)."""
    buckets = set()
    for s in statements:
        for res in _listed(s.get("Resource")) + _listed(s.get("NotResource")):
            m = _S3_OBJECT.match(res) or re.match(r"^arn:aws:s3:::([^/]+)$", res)
            bucket = m.group(1) if m else "*"
            if s.get("Effect") == "Allow" or not re.search(r"[*?]", bucket):
                buckets.add(re.sub(r"[*?]", "probe", bucket))
        if "NotResource" in s:
            buckets.add("probe")
    return buckets


def _probe_models(statements: list[dict[str, Any]]) -> set[str]:
    """The models a document names, a name each of them prefixes, and one it does not name: a
    wildcard that reaches past the named folders (``models/*``, ``models/mnist*``) is seen writing
    the probe's."""
    named = {m for s in statements for res in _listed(s.get("Resource")) for m in _NAMED_MODEL.findall(res)}
    return named | {f"{m}-{_PROBE_MODEL}" for m in named} | {_PROBE_MODEL}


def _pointer_keys(statements: list[dict[str, Any]], model: str) -> list[str]:
    """Keys of the pipeline's under ``models/<model>/``: one of each kind (``aliases/``, ``LATEST``,
    ``audit/``, ``rejected/``), and every key there an Allow of the document names in one of them (its
    wildcards filled in), so an exact ``aliases/champion.json`` is probed as written."""
    keys = list(_POINTER_KEYS)
    for s in statements:
        for res in _listed(s.get("Resource")) if s.get("Effect") == "Allow" else []:
            m = _S3_OBJECT.match(res)
            key = re.sub(r"[*?]", "x", m.group(2)) if m else ""
            rest = key.removeprefix(f"models/{model}/")
            if rest != key and rest.startswith(("aliases/", "audit/", "rejected/", "LATEST")) and rest not in keys:
                keys.append(rest)
    return keys


def _registry_findings(statements: list[dict[str, Any]]) -> list[str]:
    """Evaluated with tools/iam_eval.py (the AWS logic: explicit deny wins, actions case-insensitive,
    wildcards, NotAction/NotResource) on probe puts in every models/<m>/ the document reaches."""
    principal = iam_eval.Principal(arn=f"arn:aws:iam::{_PROBE_ACCOUNT}:role/probe", policies=[json.dumps({"Statement": statements})])

    def put(bucket: str, key: str, ctx: dict[str, str]) -> bool:
        req = iam_eval.Request("s3:PutObject", f"arn:aws:s3:::{bucket}/{key}", _PROBE_ACCOUNT, context=dict(ctx))
        return iam_eval.allowed(principal, req)

    out = []
    for bucket in sorted(_probe_buckets(statements)):
        for model in sorted(_probe_models(statements)):
            folder = f"models/{model}/"
            if _PROBE_MODEL in model and put(bucket, f"{folder}v/f", _CREATE):
                out.append(f"allows puts on {bucket}/{folder}: a wildcard reaches models it does not name")
                continue
            bad = [k for k in _pointer_keys(statements, model) if put(bucket, folder + k, _CREATE) or put(bucket, folder + k, {})]
            bad += ["v/f without If-None-Match"] if put(bucket, f"{folder}v/f", {}) else []
            if bad:
                out.append(f"allows puts on {bucket}/{folder}{{{', '.join(bad)}}}: pointers move only by the pipeline")
    return out


def _managed_s3_writers(r: Res) -> list[str]:
    arns: list[Any] = []
    for key in ADMIN_ATTACHMENTS.get(r.type, ()):
        arns += _listed(r.props.get(key))
    return [
        str(a).rsplit("/", 1)[-1]
        for a in arns
        if str(a).startswith("arn:aws:iam::aws:policy/") and str(a).rsplit("/", 1)[-1] in S3_WRITING_MANAGED
    ]


def _is_boundary(r: Res) -> bool:
    """The deploy boundary (components/lib/iam.py ``deploy_boundary_policy``): a ceiling, no grant
    (its Allow of * on * lets the roles it bounds keep what their own policies give them)."""
    return r.type == "aws:iam/policy:Policy" and str(r.props.get("name") or r.name).endswith(BOUNDARY_SUFFIX)


def registry_writers_guarded(r: Res) -> list[str]:
    """No identity but the pipeline's may move what is served: a role policy (inline, managed, or a
    role's inline/managed list) that allows any put in ``models/<m>/`` must deny puts on its
    ``aliases/``, ``audit/``, ``LATEST`` and ``rejected/`` and any put without ``If-None-Match``, and
    may not reach a model's folder it does not name (issue 24 item 8; components/lib/iam.py
    ``_registry_guards``). Judged by evaluating probe requests, not by matching the guards' text; an
    attached AWS managed policy that writes every bucket (AmazonS3FullAccess, PowerUserAccess,
    AdministratorAccess) is refused outright. The pipeline's own identities are exempt."""
    if r.name.endswith(PIPELINE_POLICY_SUFFIXES) or _is_boundary(r):
        return []
    managed = _managed_s3_writers(r)
    out = [f"attaches {name}: puts anywhere in the registry, pointers included" for name in managed]
    docs = [r.props.get("policy")] if r.type in ("aws:iam/rolePolicy:RolePolicy", "aws:iam/policy:Policy") else []
    if r.type == "aws:iam/role:Role":
        docs += [p.get("policy") for p in r.props.get("inlinePolicies") or [] if isinstance(p, dict)]
    for doc in docs:
        statements = _policy_statements(Res(r.type, {"policy": doc}))
        if statements:
            out += _registry_findings(_worst_case(statements))
    return out


RESOURCE_RULES: dict[str, tuple[Callable[[Res], list[str]], str]] = {
    "rollouts-plugins-pinned": (rollouts_plugins_pinned, "a plugin the controller downloads runs with the controller's rights"),
    "pushgateway-scrape-confined": (pushgateway_scrape_confined, "what training pushes must not pass for serving or canary metrics"),
    "registry-writers-guarded": (
        registry_writers_guarded,
        "code a run executes must not move what is served: only the pipeline moves pointers",
    ),
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
    "gpu-jobs-queued": (gpu_jobs_queued, "GPUs go to runs in queue order and within the stack's quota, not to whoever submits first"),
    "no-credentials-in-clear": (no_credentials_in_clear, "clear-text credentials leak through state, previews and kubectl describe"),
    "rbac-least-privilege": (rbac_least_privilege, "cluster-admin or */* turns any compromised pod into a cluster takeover"),
    "ecr-scan-and-immutable-tags": (ecr_hardened, "scan images for CVEs; an immutable tag always means the same image"),
    "gpu-pools-scale-to-zero": (gpu_pool_scales_to_zero, "idle GPUs are the largest avoidable bill"),
    "no-metadata-egress": (no_metadata_egress, "the metadata service hands the node role's credentials to any pod that asks"),
    "launch-template-imds-locked": (launch_template_imds_locked, "IMDSv2 with hop limit 1 keeps the node role out of pods"),
    "node-group-launch-template": (node_group_uses_launch_template, "only our launch template locks the metadata service"),
    "no-added-capabilities": (no_added_capabilities, "every capability widens what a compromised process can do to the node"),
    "no-unconfined-profiles": (no_unconfined_profiles, "seccomp/AppArmor are the kernel's last filter between a container and the node"),
    "chart-pods-hardened": (chart_pods_hardened, "the pods charts render (and agent pod templates) are pods too"),
    "chart-rbac-no-cluster-secret-read": (
        chart_rbac_no_cluster_secret_read,
        "a chart that reads every Secret hands every credential of the cluster to whoever takes its pod",
    ),
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
    out = [
        (r.urn, f"namespace {r.props['metadata']['name']!r} has no default-deny NetworkPolicy")
        for r in ours
        if r.props["metadata"]["name"] not in denied
    ]
    # Policies add up: one that admits everything undoes the default-deny beside it.
    out += [
        (r.urn, f"NetworkPolicy {_meta(r).get('name')!r} allows all {d} (a rule with no peers and no ports)")
        for r in resources
        if r.kind == "NetworkPolicy"
        for d, key in (("ingress", "from"), ("egress", "to"))
        if any(not rule.get(key) and not rule.get("ports") for rule in (r.props.get("spec") or {}).get(d) or [])
    ]
    return out


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


# Our namespaces that may enforce Pod Security `privileged`, and why. Everything else is `restricted`
# or `baseline`.
PRIVILEGED_NAMESPACES = {
    "node-exporter": "node-exporter alone: host network and PID namespace, /proc and /sys of the node",
    "jenkins-builds": "rootless BuildKit alone: Unconfined seccomp/AppArmor for its user namespace (see jenkins.BUILDKITD_SECURITY)",
}
PSA_ENFORCE = "pod-security.kubernetes.io/enforce"


def privileged_namespaces_allow_listed(resources: list[Res]) -> list[tuple[str, str]]:
    out = []
    for r in resources:
        meta = r.props.get("metadata") or {}
        labels = meta.get("labels") or {}
        if r.kind == "Namespace" and labels.get(PART_OF[0]) == PART_OF[1] and labels.get(PSA_ENFORCE) == "privileged":
            if meta.get("name") not in PRIVILEGED_NAMESPACES:
                out.append((r.urn, f"namespace {meta.get('name')!r} enforces Pod Security `privileged` but is not on the allow-list"))
    return out


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


def built_images_by_digest(resources: list[Res]) -> list[tuple[str, str]]:
    """Every container that runs an image this stack builds names it by digest: a tag can be moved
    (or re-pushed where the registry allows), a digest is the bytes that were built."""
    repos = {str(t).rsplit(":", 1)[0] for r in resources if r.type == "docker-build:index:Image" for t in r.props.get("tags") or [] if t}
    out = []
    for r in resources:
        for c in containers(pod_spec(r) or {}):
            image = str(c.get("image", ""))
            if image.split("@", 1)[0].rsplit(":", 1)[0] in repos and not re.search(r"@sha256:[0-9a-f]{64}$", image):
                out.append((r.urn, f"container {c.get('name')!r} runs our image {image!r} by tag, not by digest"))
    return out


EKS_CLUSTER_TYPES = {"eks:index:Cluster", "aws:eks/cluster:Cluster"}
# Helm charts that install a NetworkPolicy engine of their own, in place of the VPC CNI's agent.
POLICY_ENGINE_CHARTS = {"cilium", "tigera-operator", "calico", "antrea"}


def _addon_config(r: Res) -> dict[str, Any]:
    raw = r.props.get("configurationValues")
    if isinstance(raw, dict):
        return raw
    try:
        parsed = yaml.safe_load(raw) if isinstance(raw, str) else None  # EKS accepts JSON or YAML
    except yaml.YAMLError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def network_policies_enforced(resources: list[Res]) -> list[tuple[str, str]]:
    """An EKS cluster enforces NetworkPolicies only where something implements them: the VPC CNI's
    network policy agent (the vpc-cni add-on with ``enableNetworkPolicy: "true"``, off by default;
    Amazon VPC CNI >= 1.14) or another engine's chart. Otherwise default-deny and every other policy
    of the stack are accepted by the API server and do nothing. A kubeconfig cluster is not judged
    here: its CNI is not in the program (README, local stack)."""
    clusters = [r for r in resources if r.type in EKS_CLUSTER_TYPES]
    if not clusters:
        return []
    if any(r.type == "kubernetes:helm.sh/v3:Release" and r.props.get("chart") in POLICY_ENGINE_CHARTS for r in resources):
        return []
    cni = [r for r in resources if r.type == "aws:eks/addon:Addon" and r.props.get("addonName") == "vpc-cni"]
    if not cni:
        return [(clusters[0].urn, "EKS cluster without the vpc-cni add-on (or another policy engine): NetworkPolicies are not enforced")]
    return [
        (r.urn, 'vpc-cni add-on without configurationValues enableNetworkPolicy: "true": NetworkPolicies are not enforced')
        for r in cni
        if str(_addon_config(r).get("enableNetworkPolicy", "")).lower() != "true"
    ]


TLS_ENVIRONMENTS = {"staging", "prod"}
LB_INTERNAL = "service.beta.kubernetes.io/aws-load-balancer-internal"
LB_SCHEME = "service.beta.kubernetes.io/aws-load-balancer-scheme"
LB_SSL_CERT = "service.beta.kubernetes.io/aws-load-balancer-ssl-cert"
LB_SSL_PORTS = "service.beta.kubernetes.io/aws-load-balancer-ssl-ports"


def _meta(r: Res) -> dict[str, Any]:
    return r.props.get("metadata") or {}


def _internet_facing(annotations: dict[str, Any]) -> bool:
    return str(annotations.get(LB_INTERNAL, "")).lower() != "true" and annotations.get(LB_SCHEME) != "internal"


def _nlb_tls_covers(annotations: dict[str, Any], ports: list[Any]) -> bool:
    """The load balancer terminates TLS (an ACM certificate) on every one of ``ports``."""
    if not annotations.get(LB_SSL_CERT):
        return False
    tls_ports = {p.strip() for p in str(annotations.get(LB_SSL_PORTS, "*")).split(",")}
    return "*" in tls_ports or all(str(p) in tls_ports for p in ports)


def _attaches(ref: dict[str, Any], route_ns: Any, gateway: Any, namespace: Any, listener: dict[str, Any]) -> bool:
    """Whether a parentRef may attach its route to ``listener``: a ref without ``sectionName`` attaches
    to every listener of the Gateway, one with ``port`` to every listener on that port (Gateway API
    ParentReference); which namespaces a listener admits is not judged (it could change with a label)."""
    return (
        ref.get("name") == gateway
        and ref.get("namespace", route_ns) == namespace
        and ref.get("sectionName") in (None, listener.get("name"))
        and ref.get("port") in (None, listener.get("port"))
    )


def _redirect_only(routes: list[Res], gateway: str, namespace: str, listener: dict[str, Any]) -> bool:
    """Every route attached to ``listener`` only answers a redirect to https (no backend), and one is."""
    attached = [
        r
        for r in routes
        if any(
            _attaches(p, _meta(r).get("namespace"), gateway, namespace, listener)
            for p in (r.props.get("spec") or {}).get("parentRefs") or []
        )
    ]

    def redirects(rule: dict[str, Any]) -> bool:
        filters = rule.get("filters") or []
        https = [f for f in filters if f.get("type") == "RequestRedirect" and (f.get("requestRedirect") or {}).get("scheme") == "https"]
        return not rule.get("backendRefs") and bool(https) and len(https) == len(filters)

    return bool(attached) and all(all(redirects(rule) for rule in (r.props.get("spec") or {}).get("rules") or []) for r in attached)


def _gateway_ports_tls(gateways: list[Res], routes: list[Res], namespace: str, ports: list[Any]) -> list[str]:
    """The Service ports in front of a Gateway of ``namespace`` that serve anything over plain HTTP."""
    bad = []
    for port in ports:
        listeners = [
            (g, ln) for g in gateways if _meta(g).get("namespace") == namespace for ln in (g.props.get("spec") or {}).get("listeners") or []
        ]
        matching = [(g, ln) for g, ln in listeners if ln.get("port") == port]
        for g, ln in matching:
            if ln.get("protocol") in ("HTTPS", "TLS"):
                continue
            if not _redirect_only(routes, _meta(g).get("name"), namespace, ln):
                bad.append(f"port {port}: listener {ln.get('name')} serves plain {ln.get('protocol')}")
        if not matching:
            bad.append(f"port {port}: no TLS listener")
    return bad


def _envoy_service(resources: list[Res], gateway: Res) -> dict[str, Any] | None:
    """The LoadBalancer Service Envoy Gateway makes for ``gateway`` (its ``envoyService``), None when the
    proxy's Service is not a LoadBalancer. Envoy Gateway's default, with no EnvoyProxy or no type, is a
    LoadBalancer (EnvoyProxy ``envoyService.type``)."""
    cls = next(
        (
            c
            for c in resources
            if c.kind == "GatewayClass" and _meta(c).get("name") == (gateway.props.get("spec") or {}).get("gatewayClassName")
        ),
        None,
    )
    ref = ((cls.props.get("spec") or {}).get("parametersRef") or {}) if cls else {}
    proxy = next(
        (p for p in resources if p.kind == "EnvoyProxy" and _meta(p).get("name") == ref.get("name") and ref.get("kind") == "EnvoyProxy"),
        None,
    )
    spec = proxy.props.get("spec") or {} if proxy else {}
    service = ((spec.get("provider") or {}).get("kubernetes") or {}).get("envoyService") or {}
    return service if service.get("type", "LoadBalancer") == "LoadBalancer" else None


def entry_points_tls(resources: list[Res]) -> list[tuple[str, str]]:
    """An internet-facing load balancer of a staging/prod stack serves TLS on every port: its own
    certificate (an NLB's ACM listener), or a Gateway listener that terminates TLS, where a plain-HTTP
    port only answers a redirect to https (issue 24 item 9). Jenkins' load balancer is read from its
    chart values (the chart makes the Service)."""
    env_of = {_meta(r).get("name"): (_meta(r).get("labels") or {}).get(ENV_LABEL) for r in resources if r.kind == "Namespace"}
    gateways = [r for r in resources if r.kind == "Gateway"]
    routes = [r for r in resources if r.kind == "HTTPRoute"]
    out = []
    for r in resources:
        spec, meta = r.props.get("spec") or {}, _meta(r)
        if r.kind == "Service" and spec.get("type") == "LoadBalancer" and env_of.get(meta.get("namespace")) in TLS_ENVIRONMENTS:
            annotations = meta.get("annotations") or {}
            ports = [p.get("port") for p in spec.get("ports") or []]
            if not _internet_facing(annotations) or _nlb_tls_covers(annotations, ports):
                continue
            bad = _gateway_ports_tls(gateways, routes, meta.get("namespace"), ports)
            out += [(r.urn, f"internet-facing LoadBalancer without TLS: {b}") for b in bad]
        elif r.kind == "Gateway" and env_of.get(meta.get("namespace")) in TLS_ENVIRONMENTS:
            service = _envoy_service(resources, r)
            if service is None or not _internet_facing(service.get("annotations") or {}):
                continue
            ports = sorted({ln.get("port") for ln in spec.get("listeners") or []}, key=str)
            bad = _gateway_ports_tls([r], routes, meta.get("namespace"), ports)
            out += [(r.urn, f"Gateway exposed by Envoy's own LoadBalancer without TLS: {b}") for b in bad]
        elif r.type == "kubernetes:helm.sh/v3:Release" and str(r.props.get("chart", "")).endswith("jenkins"):
            controller = (r.props.get("values") or {}).get("controller") or {}
            if controller.get("serviceType") != "LoadBalancer" or env_of.get(r.props.get("namespace")) not in TLS_ENVIRONMENTS:
                continue
            annotations = controller.get("serviceAnnotations") or {}
            if _internet_facing(annotations) and not _nlb_tls_covers(annotations, [controller.get("servicePort", 8080)]):
                out.append((r.urn, "Jenkins LoadBalancer without TLS (jenkins.tlsCertificateArn)"))
    return out


ADMIN_POLICY_SUFFIX = ":policy/AdministratorAccess"
BOUNDARY_SUFFIX = "-deploy-boundary"


def _grants_everything(doc: Any) -> bool:
    """An identity policy document with an Allow of every action on every resource (AdministratorAccess
    by another name)."""
    if isinstance(doc, str):
        try:
            doc = json.loads(doc)
        except json.JSONDecodeError:
            return False
    if not isinstance(doc, dict):
        return False
    statements = doc.get("Statement") or []
    for st in statements if isinstance(statements, list) else [statements]:
        actions = st.get("Action") or []
        resources = st.get("Resource") or []
        actions = actions if isinstance(actions, list) else [actions]
        resources = resources if isinstance(resources, list) else [resources]
        if st.get("Effect") == "Allow" and "*" in actions and "*" in resources and not st.get("Condition"):
            return True
    return False


ADMIN_ATTACHMENTS = {
    # type -> the props holding the attached managed policy ARN(s)
    "aws:iam/rolePolicyAttachment:RolePolicyAttachment": ("policyArn",),
    "aws:iam/policyAttachment:PolicyAttachment": ("policyArn",),
    "aws:iam/rolePolicyAttachmentsExclusive:RolePolicyAttachmentsExclusive": ("policyArns",),
    "aws:iam/role:Role": ("managedPolicyArns",),
}


def _attached_admin(r: Res) -> bool:
    arns: list[Any] = []
    for key in ADMIN_ATTACHMENTS.get(r.type, ()):
        v = r.props.get(key)
        arns += v if isinstance(v, list) else [v]
    return any(str(a or "").endswith(ADMIN_POLICY_SUFFIX) for a in arns)


def _inline_admin(resources: list[Res], deploy: list[Res]) -> list[tuple[str, str]]:
    """Inline policies granting * on *: only the CI deploy role's own (bounded) one may. A policy's
    ``role`` is the role's id, its name on AWS (``<resource name>-id`` under the test mocks)."""
    deploy_refs = {str(d.props.get("name")) for d in deploy} | {f"{d.name}-id" for d in deploy}
    msg = "an inline policy grants every action on every resource (AdministratorAccess by another name)"
    out = []
    for r in resources:
        if r.type == "aws:iam/rolePolicy:RolePolicy" and _grants_everything(r.props.get("policy")):
            if str(r.props.get("role") or "") not in deploy_refs:
                out.append((r.urn, msg))
        if r.type == "aws:iam/role:Role" and any(_grants_everything(p.get("policy")) for p in r.props.get("inlinePolicies") or []):
            out.append((r.urn, msg))
    return out


def iam_roles_bounded(resources: list[Res]) -> list[tuple[str, str]]:
    """No role of the stack is an AWS administrator, and where the stack has a CI deploy identity every
    role carries its permission boundary (issue 24 item 3: dev's deploy, which runs unapproved on every
    push, administered prod; components/cluster/ci_deploy_role.py). A role without the boundary is one
    the deploy role could not create (the boundary forbids it) and an escape route from it if it could.
    An administrator is AdministratorAccess however attached (a RolePolicyAttachment, a PolicyAttachment,
    RolePolicyAttachmentsExclusive, the role's managedPolicyArns), an inline * on * other than the
    deploy role's own, or a boundary that is AdministratorAccess (which bounds nothing).
    A boundary unknown at preview (the policy's ARN) counts as present: only a missing one is judged."""
    out = [
        (r.urn, "a role of the stack is an AWS administrator (AdministratorAccess): give it a bounded policy of its own")
        for r in resources
        if _attached_admin(r)
    ]
    roles = [r for r in resources if r.type == "aws:iam/role:Role"]
    deploy = [r for r in roles if str(r.props.get("name", "")).endswith("-ci-deploy")]
    out += _inline_admin(resources, deploy)
    out += [
        (r.urn, "a role's permission boundary is AdministratorAccess, which bounds nothing")
        for r in roles
        if str(r.props.get("permissionsBoundary") or "").endswith(ADMIN_POLICY_SUFFIX)
    ]
    bounded_stack = any(r.type == "aws:iam/policy:Policy" and str(r.props.get("name", "")).endswith(BOUNDARY_SUFFIX) for r in resources)
    if deploy and not bounded_stack:
        out += [(r.urn, "CI deploy role without a deploy boundary policy (mlplatform-<stack>-deploy-boundary)") for r in deploy]
    if deploy or bounded_stack:
        out += [
            (r.urn, "IAM role without the stack's permission boundary")
            for r in roles
            if "permissionsBoundary" not in r.props or r.props.get("permissionsBoundary") == ""
        ]
    return out


STACK_RULES: dict[str, tuple[Callable[[list[Res]], list[tuple[str, str]]], str]] = {
    "iam-roles-bounded": (iam_roles_bounded, "one environment's deploy identity must not be able to administer another's"),
    "entry-points-tls": (entry_points_tls, "nothing crosses the internet in clear: logins, API keys, model inputs"),
    "network-policies-enforced": (network_policies_enforced, "a NetworkPolicy nothing enforces isolates nothing"),
    "namespaces-default-deny": (namespaces_default_deny, "a new workload is reachable only through the policies written for it"),
    "prod-load-balancers-restricted": (prod_load_balancers_restricted, "prod endpoints face the internet only from known networks"),
    "s3-buckets-hardened": (s3_buckets_hardened, "model artifacts: no public access, recoverable, encrypted at rest"),
    "kubeconfig-is-secret": (kubeconfig_secret, "a kubeconfig is a cluster credential"),
    "privileged-namespaces-allow-listed": (
        privileged_namespaces_allow_listed,
        "a `privileged` namespace admits any pod: only the one workload that needs it gets one",
    ),
    "built-images-by-digest": (built_images_by_digest, "what runs is exactly what was built, whatever happens to its tag"),
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
