"""Typed, validated stack configuration: the only module that reads ``pulumi.Config``.

Every error names the stack file and the key path, in one line, and is raised before any resource is
registered, e.g. ``stacks/Pulumi.prod.yaml: mlplatform:gpuPools[0].min: must be <= max (got min=3, max=2)``.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import pulumi
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from components.config.llm import LlmConfig, choose_pool, llm_rules
from monitoring.spec import DEFAULT_RUNBOOKS_URL

NAMESPACE = "mlplatform"
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Model names end up in object names (`model-server-<name>-metrics`, `train-<name>-<hash>`), which must stay <= 63.
MODEL_NAME_MAX = 30

# GPUs per node for the instance types we accept in GPU pools. cluster-autoscaler needs this number to
# scale a pool up from zero (it cannot read it from a node that does not exist yet).
GPU_COUNT: dict[str, int] = {
    **{f"g4dn.{s}": 1 for s in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    "g4dn.12xlarge": 4,
    "g4dn.metal": 8,
    **{f"g5.{s}": 1 for s in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    "g5.12xlarge": 4,
    "g5.24xlarge": 4,
    "g5.48xlarge": 8,
    **{f"g6.{s}": 1 for s in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    "g6.12xlarge": 4,
    "g6.24xlarge": 4,
    "g6.48xlarge": 8,
    **{f"g6e.{s}": 1 for s in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    "g6e.12xlarge": 4,
    "g6e.24xlarge": 4,
    "g6e.48xlarge": 8,
    "p3.2xlarge": 1,
    "p3.8xlarge": 4,
    "p3.16xlarge": 8,
    "p4d.24xlarge": 8,
    "p5.48xlarge": 8,
}

ANY_CIDRS = {"0.0.0.0/0", "::/0"}


class ConfigError(pulumi.RunError):
    """A stack-config mistake. ``pulumi.RunError`` makes the engine print the message without a traceback."""

    def __init__(self, stack_file: str, key: str, message: str, more: list[tuple[str, str]] | None = None):
        self.stack_file, self.key, self.message = stack_file, key, message
        self.problems = [(key, message), *(more or [])]
        super().__init__("\n".join(f"{stack_file}: {NAMESPACE}:{k}: {m}" for k, m in self.problems))

    @classmethod
    def many(cls, stack_file: str, problems: list[tuple[str, str]]) -> ConfigError:
        """One error for all problems of a stack file: one line each, the first one first."""
        (key, message), *rest = problems
        return cls(stack_file, key, message, rest)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)


def _cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as exc:
        raise ValueError(f"must be a CIDR block like 203.0.113.0/24 (got {value!r}: {exc})") from None


Cidr = Annotated[str, AfterValidator(_cidr)]
Quantity = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti)?$")]


class NodeGroupSize(_Model):
    instance_type: str = Field(default="m6i.large", description="EC2 instance type of the system nodes")
    min: int = Field(default=2, ge=1, le=100, description="smallest node count")
    desired: int = Field(default=2, ge=1, le=100, description="node count at creation (`min <= desired <= max`)")
    max: int = Field(default=4, ge=1, le=100, description="largest node count")


class ClusterConfig(_Model):
    kind: Literal["eks", "kubeconfig"] = Field(description="create an EKS cluster, or use an existing one from a kubeconfig")
    region: str | None = Field(default=None, pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]$", description="AWS region; required for `eks`")
    kubeconfig: str | None = Field(default=None, description="kubeconfig path (unset: `KUBECONFIG` or `~/.kube/config`)")
    context: str | None = Field(default=None, description="kubeconfig context (unset: the current one)")
    system_nodes: NodeGroupSize = Field(default=NodeGroupSize(), description="the on-demand system node group")
    endpoint_public_access_cidrs: list[Cidr] = Field(
        default=[], description="who may reach the EKS API; required on every EKS stack, never 0.0.0.0/0"
    )
    availability_zones: int = Field(default=2, ge=2, le=6, description="AZs of the VPC's private/public subnets")
    vpc_cidr: Cidr = Field(default="10.0.0.0/16", description="VPC CIDR")
    has_gpus: bool = Field(default=False, description="existing cluster with NVIDIA GPUs: install the device plugin and DCGM exporter")


class GpuPool(_Model):
    name: str = Field(max_length=40, description="DNS-1123 label; node label `mlplatform.io/gpu-pool=<name>`")
    instance_types: list[str] = Field(min_length=1, description="g4dn/g5/g6/g6e/p3/p4d/p5 types, all with the same GPU count")
    capacity_type: Literal["SPOT", "ON_DEMAND"] = Field(default="SPOT", description="spot or on-demand capacity")
    min: int = Field(default=0, ge=0, le=100, description="smallest node count (0: scale to zero)")
    desired: int = Field(default=0, ge=0, le=100, description="node count at creation; ignored afterwards (the autoscaler owns it)")
    max: int = Field(default=2, ge=1, le=100, description="largest node count")
    disk_gi_b: int = Field(default=100, ge=20, le=16384, alias="diskGiB", description="node root volume, GiB")

    @field_validator("name")
    @classmethod
    def _dns(cls, v: str) -> str:
        if not DNS1123_LABEL.match(v):
            raise ValueError(f"must be a DNS-1123 label (lowercase letters, digits, '-') (got {v!r})")
        return v

    @property
    def gpus_per_node(self) -> int:
        return GPU_COUNT[self.instance_types[0]]


class RegistryConfig(_Model):
    kind: Literal["ecr", "external"] = Field(default="ecr", description="`ecr` (EKS stacks) or an `external` registry")
    url: str | None = Field(default=None, description="the external registry, e.g. `localhost:5001`")
    keep_images: int = Field(default=20, ge=1, le=1000, description="ECR lifecycle: images kept per repository")
    builder: str | None = Field(
        default=None, description="buildx builder for the image builds (e.g. remote rootless BuildKit in CI); unset: local Docker"
    )


# The one stack (by environment) that runs Jenkins: it deploys every environment with that environment's
# credentials (README "CI/CD"). Not prod: PR code runs on Jenkins agents and must never run in prod's
# cluster. Not dev: its API endpoint is the least restricted and every PR stack copies its config.
JENKINS_ENVIRONMENT = "staging"
# Pasted into job-dsl Groovy (components/services/jenkins.py): nothing that can end a literal or interpolate.
GITHUB_REPO_URL = re.compile(r"^https://github\.com/[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}$")
GIT_BRANCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$")
JENKINS_PRINCIPAL = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$"


class JenkinsConfig(_Model):
    enabled: bool = Field(default=False, description=f"run the one Jenkins here (only on the `{JENKINS_ENVIRONMENT}` stack)")
    repo_url: str | None = Field(
        default=None, description="`https://github.com/OWNER/NAME[.git]` of this repository; required when enabled"
    )
    branch: str = Field(default="main", description="the protected branch the `deploy/main` job builds and rolls out")
    prod_approvers: list[Annotated[str, Field(pattern=JENKINS_PRINCIPAL)]] = Field(
        default=[], description="Jenkins users/groups who may approve the prod deploy (`input` submitter); required when enabled"
    )
    service_type: Literal["ClusterIP", "LoadBalancer"] = Field(default="ClusterIP", description="`LoadBalancer` requires `allowedCidrs`")
    allowed_cidrs: list[Cidr] = Field(default=[], description="sources allowed to the Jenkins load balancer")
    storage_gi_b: int = Field(default=20, ge=1, le=1000, alias="storageGiB", description="Jenkins home volume, GiB")

    @field_validator("repo_url")
    @classmethod
    def _github_https(cls, v: str | None) -> str | None:
        if v is not None and not GITHUB_REPO_URL.match(v.removesuffix(".git")):
            raise ValueError(f"must be https://github.com/OWNER/NAME[.git] (the GitHub branch source builds its PRs) (got {v!r})")
        return v

    @field_validator("branch")
    @classmethod
    def _git_branch(cls, v: str) -> str:
        if not GIT_BRANCH.match(v) or ".." in v or "//" in v or v.endswith(("/", ".", ".lock")):
            raise ValueError(f"must be a plain branch name (letters, digits, '.', '_', '-', '/') (got {v!r})")
        return v


GITHUB_REPO = r"^[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}$"
GITLAB_PROJECT = r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)+$"
OIDC_PROVIDER_ARN = r"^arn:aws:iam::[0-9]{12}:oidc-provider/[a-z0-9.-]+(/[A-Za-z0-9._/-]+)?$"
GITHUB_ISSUER = "token.actions.githubusercontent.com"
# The stacks GitHub Actions / GitLab CI deploy, each with its own role (components/cluster/ci_deploy_role.py).
CI_DEPLOY_ENVIRONMENTS = ("dev", "staging", "prod")


class CiConfig(_Model):
    """This stack's deploy role for GitHub Actions / GitLab CI: trusts their OIDC tokens, for this
    environment only (README "CI/CD"). The account's IAM OIDC providers are referenced, not created:
    there is one per issuer and account, shared by every stack in it."""

    github_repo: str | None = Field(
        default=None,
        pattern=GITHUB_REPO,
        description="`OWNER/NAME`: its jobs in the GitHub environment named like this stack may deploy it",
    )
    github_oidc_provider: str | None = Field(
        default=None, pattern=OIDC_PROVIDER_ARN, description=f"ARN of the account's IAM OIDC provider for `{GITHUB_ISSUER}`"
    )
    gitlab_project: str | None = Field(
        default=None, pattern=GITLAB_PROJECT, description="`GROUP/[SUBGROUP/]NAME`: its pipelines on `deployBranch` may deploy this stack"
    )
    gitlab_oidc_provider: str | None = Field(
        default=None,
        pattern=OIDC_PROVIDER_ARN,
        description="ARN of the account's IAM OIDC provider for the GitLab host (e.g. `gitlab.com`)",
    )
    deploy_branch: str = Field(default="main", description="the protected branch whose GitLab pipelines may deploy")

    @field_validator("deploy_branch")
    @classmethod
    def _git_branch(cls, v: str) -> str:
        return JenkinsConfig._git_branch(v)

    @property
    def enabled(self) -> bool:
        return bool(self.github_repo or self.gitlab_project or self.github_oidc_provider or self.gitlab_oidc_provider)


PROJECT_ROOT = Path(__file__).resolve().parents[2]
CODE_FOLDER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$")
ParamValue = str | int | float | bool


class TrainingConfig(_Model):
    """One model's training run (a Job, and a CronJob when scheduled)."""

    code: str | None = Field(
        default=None,
        description=(
            "the model's training folder, relative to the project (its `train.py` on the training contract, optional "
            "`requirements.txt` and `Dockerfile`), e.g. `models/diabetes`: `pulumi up` builds the model's image from it; "
            "unset: the platform's MNIST trainer"
        ),
    )
    params: dict[str, ParamValue] = Field(
        default={}, description="the model's own hyperparameters (`TRAIN_PARAMS`, JSON), for `code` models"
    )
    gate_min: float | None = Field(
        default=None,
        description="quality gate of a `code` model: its gate metric must reach this (`TRAIN_GATE_MIN`); unset: the model's own",
    )
    arch: Literal["seed", "strong"] = Field(default="strong", description="`seed` (the reference CNN) or `strong` (MNIST trainer only)")
    epochs: int = Field(default=10, ge=1, le=1000, description="training epochs (a change starts a new run)")
    batch_size: int | None = Field(default=None, ge=1, le=65536, description="minibatch size; unset: the arch's own (seed 128, strong 256)")
    min_accuracy: float = Field(
        default=0.9842, gt=0, le=1, description="quality gate: minimum held-out accuracy to publish, in (0, 1] (MNIST trainer only)"
    )
    champion_margin: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="a new version must not fall more than this below the published one; unset: the trainer's default",
    )
    schedule: str | None = Field(default=None, description="cron for scheduled retraining (a CronJob); unset: none")
    gpus: int = Field(
        default=1,
        ge=0,
        le=8,
        description="GPUs per worker, all used (data parallel); must fit one node of a GPU pool; 0 on a stack without GPUs",
    )
    workers: int = Field(
        default=1, ge=1, le=64, description="worker pods of one run (multi-worker data parallel); `workers x gpus` must fit the GPU pools"
    )
    data_uri: str | None = Field(default=None, description="training data URI (s3:// or path); unset: the trainer's download")
    active_deadline_seconds: int = Field(default=7200, ge=60, le=7 * 86400, description="hard time limit per run")

    @field_validator("code")
    @classmethod
    def _code(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.rstrip("/")
        if not CODE_FOLDER.match(v) or ".." in v.split("/"):
            raise ValueError(f"must be a folder inside the project, like 'models/diabetes' (got {v!r})")
        if not (PROJECT_ROOT / v / "train.py").is_file():
            raise ValueError(f'{v}/train.py not found: a model\'s folder holds its train.py (README "Your own model")')
        return v

    @field_validator("schedule")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is not None and len(v.split()) != 5 and not v.startswith("@"):
            raise ValueError(f"must be a 5-field cron expression like '0 3 * * 1' (got {v!r})")
        return v


class ResourceAmounts(_Model):
    cpu: Quantity = Field(description="CPU, e.g. `500m`")
    memory: Quantity = Field(description="memory, e.g. `1Gi`")


class Resources(_Model):
    requests: ResourceAmounts = Field(default=ResourceAmounts(cpu="500m", memory="1Gi"), description="container requests")
    limits: ResourceAmounts = Field(default=ResourceAmounts(cpu="2", memory="2Gi"), description="container limits")


class CanaryConfig(_Model):
    """How a new model version reaches traffic: an Argo Rollouts canary whose analysis compares the
    canary pods with the stable ones (README "Model delivery")."""

    steps: list[Annotated[int, Field(ge=1, le=99)]] = Field(
        default=[25, 50],
        min_length=1,
        description="canary weights in percent, increasing; with replica-ratio canaries a weight is rounded to whole pods",
    )
    step_seconds: int = Field(default=300, ge=10, le=86400, description="pause after each weight while the analysis runs")
    interval_seconds: int = Field(default=60, ge=5, le=3600, description="how often the analysis measures")
    window_seconds: int = Field(default=120, ge=5, le=3600, description="rate window of the analysis queries (at least 4 scrape intervals)")
    failure_limit: int = Field(default=1, ge=0, le=10, description="failed measurements tolerated per metric before the rollout aborts")
    max_error_ratio_increase: float = Field(
        default=0.01, ge=0, lt=1, description="canary 5xx ratio minus the stable pods' 5xx ratio, at most"
    )
    max_p99_ratio: float = Field(default=1.5, ge=1, le=100, description="canary p99 latency over the stable pods' p99, at most")
    p99_floor_ms: float = Field(default=10, gt=0, le=10000, description="the stable p99 is taken as at least this (tiny p99s are noise)")
    max_class_psi: float = Field(
        default=0.2,
        gt=0,
        le=10,
        description="population stability index of the canary's predicted-class mix against the stable pods', at most",
    )
    min_class_samples: int = Field(
        default=200,
        ge=1,
        le=1_000_000,
        description="canary predictions per window below which the class mix is not judged (inconclusive: the rollout pauses)",
    )

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[int]) -> list[int]:
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"canary weights must increase: {steps}")
        return steps


# One model server process holds its own TensorFlow runtime and model: measured for MNIST with TF 2.21,
# ~290 MB private memory per process plus ~350 MB of shared libraries (README "Serving throughput").
SERVING_MEMORY_PER_PROCESS_MI = 512


def serving_resources_for(processes: int) -> dict[str, dict[str, str]]:
    """The default container resources of a pod with ``processes`` server processes: a core and
    512Mi requested per process, the limit one core per process (at least 2: the inference thread),
    and a 1Gi memory margin. One process: the plain defaults (500m/1Gi, 2/2Gi)."""
    n = processes
    return {
        "requests": {"cpu": f"{500 * n}m", "memory": f"{512 * (n + 1)}Mi"},
        "limits": {"cpu": str(max(2, n)), "memory": f"{1024 * (n + 1)}Mi"},
    }


class ServingConfig(_Model):
    """One model's server: Deployment, HPA, PDB, routes at the stack's entry point."""

    @model_validator(mode="before")
    @classmethod
    def _resources_for_processes(cls, data: Any) -> Any:
        """``processes: N`` without ``resources``: the pod is sized for N processes."""
        if isinstance(data, dict):
            n = data.get("processes")
            if isinstance(n, int) and not isinstance(n, bool) and n > 1 and "resources" not in data:
                return {**data, "resources": serving_resources_for(n)}
        return data

    replicas: int = Field(default=2, ge=1, le=100, description="initial replicas (`minReplicas <= replicas <= maxReplicas`)")
    min_replicas: int = Field(default=2, ge=1, le=100, description="HPA lower bound")
    max_replicas: int = Field(default=6, ge=1, le=1000, description="HPA upper bound")
    allowed_cidrs: list[Cidr] = Field(
        default=[],
        description="client sources allowed to this model's routes at the entry point; required in prod (unless `gateway.internal`)",
    )
    max_batch_size: int = Field(default=64, ge=1, le=4096, description="instances per model call and per request")
    batch_timeout_ms: float = Field(
        default=0.0, ge=0, le=1000, description="longest wait for more requests once the queue runs dry (0: batch what is queued)"
    )
    max_queue: int = Field(default=1024, ge=1, le=1_000_000, description="queued instances before 429")
    processes: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = Field(
        default="auto",
        description=(
            "server processes per pod sharing the port (`SERVING_WORKERS`), each with its own model and batcher; "
            "`auto` (default): the container's CPU limit, rounded up (2 with the default resources). Without `resources`, N processes get N x 500m/512Mi (+512Mi) requested and "
            "max(2, N) CPUs/(N+1)Gi as limits; at most one process per CPU of the limit and 512Mi of memory limit each. "
            "The queue target per pod (KEDA) is one full batch per process"
        ),
    )
    target_cpu_utilization: int = Field(default=70, ge=10, le=100, description="HPA CPU target, percent")
    resources: Resources = Field(default=Resources(), description="container resources")
    api_key: bool = Field(default=False, description="require an API key on predict routes (a generated key in a Secret)")
    canary: CanaryConfig = Field(default=CanaryConfig(), description="canary rollout of a new version (Argo Rollouts)")
    version: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        description="the model version served, pinned in the pod template: a change is a canary rollout (set by the pipeline's "
        "promotion step); unset: the server follows the store's champion (LATEST) with no canary",
    )


class ModelSource(_Model):
    """Where a stack that does not train gets a model's versions (README "Model delivery")."""

    stack: str = Field(
        pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
        description="the stack whose store the pipeline promotes versions from (byte-identical copy, digests verified); "
        "this stack runs no training for the model",
    )


class ModelConfig(_Model):
    """One catalogue entry: a model the stack trains, gates, publishes and serves."""

    runtime: Literal["tensorflow", "vllm"] = Field(
        default="tensorflow", description="serving runtime: `tensorflow` (our SavedModel server) or `vllm` (an open-weights LLM, see `llm`)"
    )
    training: TrainingConfig = Field(default=TrainingConfig(), description="training run")
    source: ModelSource | None = Field(
        default=None, description="receive versions from another stack instead of training here (prod: required)"
    )
    serving: ServingConfig = Field(default=ServingConfig(), description="model server")
    llm: LlmConfig | None = Field(
        default=None, description='runtime `vllm` only: the LLM and its vLLM options (README "Serve an open-weights LLM")'
    )


class TlsConfig(_Model):
    certificate_secret: str = Field(description="a `kubernetes.io/tls` Secret in the gateway namespace (e.g. from cert-manager)")
    hostname: str | None = Field(default=None, description="the certificate's host name; unset: any")


class GatewayConfig(_Model):
    internal: bool = Field(default=False, description="internal load balancer: reachable only from inside the VPC")
    tls: TlsConfig | None = Field(default=None, description="serve HTTPS on 443 with this certificate; unset: plain HTTP on 80")


class MonitoringConfig(_Model):
    enabled: bool = Field(default=True, description="kube-prometheus-stack, Pushgateway, rules and dashboards")
    retention: str = Field(default="15d", pattern=r"^[0-9]+(h|d|w|y)$", description="Prometheus retention")
    storage_gi_b: int = Field(default=50, ge=1, le=10000, alias="storageGiB", description="Prometheus volume, GiB")
    latency_slo_ms: float = Field(default=100, gt=0, description="p99 latency alert threshold")
    error_ratio_slo: float = Field(default=0.01, gt=0, lt=1, description="5xx ratio alert threshold")
    training_stale_days: int = Field(default=7, ge=1, le=365, description="alert when no model was published for this long")
    prometheus_replicas: int = Field(default=1, ge=1, le=5, description="Prometheus replicas: 2 is an HA pair (prod requires it)")
    alertmanager_replicas: int = Field(default=1, ge=1, le=5, description="Alertmanager replicas (prod requires 3)")
    gpu_profiling_metrics: bool = Field(
        default=False, description="DCGM profiling metrics (DCGM_FI_PROF_*): the exporter then runs as root with SYS_ADMIN"
    )


class AlertingConfig(_Model):
    webhook_url: str | None = Field(default=None, pattern=r"^https?://", description="generic webhook receiver")
    slack_channel: str | None = Field(default=None, description="Slack channel (webhook URL: secret `alertingSlackWebhookUrl`)")
    email_to: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+$", description="e-mail receiver")
    smtp_smarthost: str | None = Field(default=None, description="SMTP server `host:port`")
    smtp_from: str | None = Field(default=None, description="sender address")
    runbooks_url: str = Field(
        default=DEFAULT_RUNBOOKS_URL,
        pattern=r"^https?://",
        description="the runbooks page every alert links to (`#<alert name, lowercased>` appended): your fork's docs/runbooks.md",
    )


class QueueConfig(_Model):
    """The stack's Kueue ClusterQueue: every training run waits here for its quota (README "Training at scale")."""

    gpu_quota: int | None = Field(
        default=None, ge=0, le=1024, description="GPUs training may hold at once; unset: the GPU pools' capacity at their max size"
    )
    cpu: Quantity = Field(default="32", description="CPU training may hold at once (requests)")
    memory: Quantity = Field(default="128Gi", description="memory training may hold at once (requests)")


class EphemeralConfig(_Model):
    ttl_hours: float = Field(default=24, gt=0, le=24 * 30, description="lifetime of PR stacks made from this stack (ops/ephemeral.py)")


class PlatformConfig(_Model):
    environment: Literal["local", "dev", "staging", "prod", "ephemeral"] = Field(
        description=(
            "per-environment rules: prod needs >= 2 replicas per model, restricted `allowedCidrs` (not 0.0.0.0/0) and API endpoint; "
            "non-prod needs `allowedCidrs` or `gateway.internal`; `local` must use `cluster.kind: kubeconfig`"
        )
    )
    kubernetes_version: str = Field(
        default="1.33", pattern=r"^1\.[0-9]{2}$", description="Kubernetes minor version; manifests are validated against its schemas"
    )
    cluster: ClusterConfig = Field(description="where the platform runs")
    gpu_pools: list[GpuPool] = Field(default=[], description="EKS GPU node groups")
    registry: RegistryConfig = Field(default=RegistryConfig(), description="image registry")
    jenkins: JenkinsConfig = Field(default=JenkinsConfig(), description="CI/CD")
    ci: CiConfig = Field(default=CiConfig(), description="GitHub Actions / GitLab CI deploy role of this stack")
    models: dict[str, ModelConfig] = Field(default={}, description="the model catalogue: model name (DNS-1123) -> its settings")
    gateway: GatewayConfig = Field(default=GatewayConfig(), description="the stack's one public entry point for every model")
    monitoring: MonitoringConfig = Field(default=MonitoringConfig(), description="metrics, alerts, dashboards")
    alerting: AlertingConfig = Field(default=AlertingConfig(), description="Alertmanager receivers")
    ephemeral: EphemeralConfig = Field(default=EphemeralConfig(), description="PR stacks made from this stack")
    queue: QueueConfig = Field(default=QueueConfig(), description="training quota and queueing (Kueue)")

    @property
    def is_eks(self) -> bool:
        return self.cluster.kind == "eks"

    @property
    def has_gpus(self) -> bool:
        return bool(self.gpu_pools) or self.cluster.has_gpus


# Secret keys are read with require/get_secret and never enter the (plain) model.
# jenkinsCredentials: a JSON object of the CI credentials (components/services/jenkins.py CREDENTIAL_KEYS).
SECRET_KEYS = ("alertingSlackWebhookUrl", "alertingSmtpPassword", "jenkinsCredentials", "hfToken")
TOP_LEVEL_KEYS = tuple(f.alias or n for n, f in PlatformConfig.model_fields.items())
# Keys that existed before the model catalogue: one line says where they went.
MOVED_KEYS = {
    "training": "moved to models.<name>.training (one entry per model, e.g. models.mnist.training)",
    "serving": "moved to models.<name>.serving (one entry per model, e.g. models.mnist.serving)",
}


def rules(cfg: PlatformConfig) -> Iterator[tuple[str, str]]:
    """Cross-field and per-environment rules; yields (key path, what is expected)."""
    c = cfg.cluster
    # Every EKS stack's API endpoint (dev's, which PR stacks copy, too) answers only known networks.
    if c.kind == "eks":
        if not c.endpoint_public_access_cidrs:
            yield "cluster.endpointPublicAccessCidrs", "required on EKS: the networks (office, CI runners) that may reach the API endpoint"
        for j, cidr in enumerate(c.endpoint_public_access_cidrs):
            if cidr in ANY_CIDRS:
                yield f"cluster.endpointPublicAccessCidrs[{j}]", "the API endpoint must not be open to the world (0.0.0.0/0)"
    if c.kind == "eks" and cfg.gpu_pools:
        from components.cluster.cluster_autoscaler import IMAGE_TAGS

        if cfg.kubernetes_version not in IMAGE_TAGS:
            yield (
                "kubernetesVersion",
                (
                    f"no cluster-autoscaler release is pinned for {cfg.kubernetes_version} (it must match the cluster's minor;"
                    f" pinned: {', '.join(IMAGE_TAGS)} in components/cluster/cluster_autoscaler.py)"
                ),
            )
    m = cfg.monitoring
    if cfg.environment == "prod" and m.enabled and (m.prometheus_replicas < 2 or m.alertmanager_replicas < 3):
        yield (
            "monitoring",
            (
                "prod needs prometheusReplicas >= 2 and alertmanagerReplicas >= 3 to survive a node or zone loss"
                f" (got {m.prometheus_replicas} and {m.alertmanager_replicas})"
            ),
        )
    if cfg.environment == "local" and c.kind != "kubeconfig":
        yield "cluster.kind", f"the local stack runs on an existing cluster: must be 'kubeconfig' (got {c.kind!r})"
    if c.kind == "eks" and not c.region:
        yield "cluster.region", "required when cluster.kind is 'eks' (e.g. 'eu-west-1')"
    s = c.system_nodes
    if not s.min <= s.desired <= s.max:
        yield "cluster.systemNodes", f"must satisfy min <= desired <= max (got min={s.min}, desired={s.desired}, max={s.max})"
    if cfg.gpu_pools and c.kind != "eks":
        yield "gpuPools", "GPU node pools are created only on EKS; for an existing cluster with GPUs set cluster.hasGpus: true"
    seen: set[str] = set()
    for i, p in enumerate(cfg.gpu_pools):
        key = f"gpuPools[{i}]"
        if p.name in seen:
            yield f"{key}.name", f"must be unique (duplicate {p.name!r})"
        seen.add(p.name)
        for j, t in enumerate(p.instance_types):
            if t not in GPU_COUNT:
                yield f"{key}.instanceTypes[{j}]", f"must be a GPU instance type (g4dn, g5, g6, g6e, p3, p4d, p5) (got {t!r})"
        counts = {GPU_COUNT[t] for t in p.instance_types if t in GPU_COUNT}
        if len(counts) > 1:
            yield f"{key}.instanceTypes", f"must all have the same GPU count, or scale-from-zero guesses wrong (got {sorted(counts)})"
        if p.min > p.max:
            yield f"{key}.min", f"must be <= max (got min={p.min}, max={p.max})"
        elif not p.min <= p.desired <= p.max:
            yield f"{key}.desired", f"must be between min and max (got min={p.min}, desired={p.desired}, max={p.max})"
    capacity = sum(p.max * GPU_COUNT.get(p.instance_types[0], 0) for p in cfg.gpu_pools)
    if cfg.queue.gpu_quota is not None and cfg.gpu_pools and cfg.queue.gpu_quota > capacity:
        yield "queue.gpuQuota", f"must not exceed the GPU pools' capacity at their max size ({capacity}); unset it to use all of it"
    r = cfg.registry
    if r.kind == "ecr" and c.kind != "eks":
        yield "registry.kind", "'ecr' needs an EKS stack; use kind 'external' with a url (e.g. localhost:5001)"
    if r.kind == "external" and not r.url:
        yield "registry.url", "required when registry.kind is 'external' (e.g. 'localhost:5001')"
    if cfg.jenkins.enabled and cfg.environment != JENKINS_ENVIRONMENT:
        where = f"runs on the {JENKINS_ENVIRONMENT} stack only"
        yield "jenkins.enabled", f'one Jenkins deploys every environment and {where} (README "CI/CD"): remove it here'
    elif cfg.jenkins.enabled and not cfg.jenkins.repo_url:
        yield "jenkins.repoUrl", "required when jenkins.enabled (the Git URL of this repository)"
    if cfg.jenkins.enabled and cfg.environment == JENKINS_ENVIRONMENT and not cfg.jenkins.prod_approvers:
        yield "jenkins.prodApprovers", "required when jenkins.enabled: the Jenkins users or groups who may approve a prod deploy"
    yield from ci_rules(cfg)
    for name, model in cfg.models.items():
        yield from model_rules(cfg, name, model)
    if cfg.jenkins.service_type == "LoadBalancer":
        if not cfg.jenkins.allowed_cidrs:
            yield "jenkins.allowedCidrs", "required when jenkins.serviceType is 'LoadBalancer'"
        for j, cidr in enumerate(cfg.jenkins.allowed_cidrs):
            if cidr in ANY_CIDRS:
                yield f"jenkins.allowedCidrs[{j}]", "Jenkins must not be open to the world (0.0.0.0/0)"


def ci_rules(cfg: PlatformConfig) -> Iterator[tuple[str, str]]:
    ci = cfg.ci
    if not ci.enabled:
        return
    if cfg.environment not in CI_DEPLOY_ENVIRONMENTS or not cfg.is_eks:
        where = ", ".join(CI_DEPLOY_ENVIRONMENTS)
        yield "ci", f"deploy roles are for the EKS stacks of {where} (ephemeral stacks: a sandbox account's role)"
        return
    forges = (("githubRepo", ci.github_repo, "githubOidcProvider", ci.github_oidc_provider),)
    forges += (("gitlabProject", ci.gitlab_project, "gitlabOidcProvider", ci.gitlab_oidc_provider),)
    for repo_key, repo, provider_key, provider in forges:
        if repo and not provider:
            yield f"ci.{provider_key}", f"required with ci.{repo_key} (the account's IAM OIDC provider ARN)"
        elif provider and not repo:
            yield f"ci.{repo_key}", f"required with ci.{provider_key}"
    if ci.github_oidc_provider and not ci.github_oidc_provider.endswith(f"/{GITHUB_ISSUER}"):
        yield "ci.githubOidcProvider", f"must be the provider for {GITHUB_ISSUER} (got {ci.github_oidc_provider!r})"


def model_rules(cfg: PlatformConfig, name: str, model: ModelConfig) -> Iterator[tuple[str, str]]:
    """The rules of one catalogue entry (key paths start at ``models.<name>``)."""
    key = f"models.{name}"
    if not DNS1123_LABEL.match(name) or len(name) > MODEL_NAME_MAX:
        yield (
            key,
            f"a model name must be a DNS-1123 label (lowercase letters, digits, '-'), at most {MODEL_NAME_MAX} characters (got {name!r})",
        )
    if model.runtime == "vllm":
        yield from vllm_model_rules(cfg, key, model)
    elif model.llm is not None:
        yield f"{key}.llm", "only for runtime 'vllm' (this model's runtime is 'tensorflow')"
    if model.runtime == "tensorflow" and model.source is None and cfg.environment == "prod":
        yield f"{key}.source", "prod never trains: receive the model from the stack that validated it (e.g. source: {stack: staging})"
    if model.source is not None:
        if model.runtime != "tensorflow":
            yield f"{key}.source", "only for runtime 'tensorflow' (a vllm model is served from llm.source)"
        elif model.training.model_fields_set:
            yield f"{key}.training", f"not used: this stack receives {name} from stack {model.source.stack!r} (source) and trains nothing"
        if model.source.stack == cfg.environment:
            yield f"{key}.source.stack", "must name another stack (a stack cannot promote from itself)"
    trains = model.runtime == "tensorflow" and model.source is None  # a received model's training is not run here
    if trains and model.training.gpus > 0 and not cfg.has_gpus:
        yield f"{key}.training.gpus", "must be 0 on a stack without gpuPools or cluster.hasGpus (nothing could schedule it)"
    if trains:
        yield from training_fit_rules(cfg, key, model.training)
    sv = model.serving
    yield from serving_size_rules(key, sv)
    if sv.min_replicas > sv.max_replicas:
        yield f"{key}.serving.minReplicas", f"must be <= maxReplicas (got minReplicas={sv.min_replicas}, maxReplicas={sv.max_replicas})"
    elif not sv.min_replicas <= sv.replicas <= sv.max_replicas:
        yield f"{key}.serving.replicas", f"must be between minReplicas and maxReplicas (got {sv.replicas})"
    if cfg.environment == "prod" and (sv.replicas < 2 or sv.min_replicas < 2):
        yield f"{key}.serving.replicas", "prod needs >= 2 replicas and minReplicas >= 2 to survive a node loss"
    open_ = cfg.environment == "prod" or not cfg.gateway.internal
    if open_ and not sv.allowed_cidrs:
        if cfg.environment == "prod":
            yield f"{key}.serving.allowedCidrs", "prod entry points must be restricted: set at least one CIDR"
        else:
            yield f"{key}.serving.allowedCidrs", "a public entry point must be restricted: set at least one CIDR, or gateway.internal: true"
    for j, cidr in enumerate(sv.allowed_cidrs):
        if cidr in ANY_CIDRS and cfg.environment == "prod":
            yield f"{key}.serving.allowedCidrs[{j}]", "prod entry points must not be open to the world (0.0.0.0/0)"


def serving_size_rules(key: str, sv: ServingConfig) -> Iterator[tuple[str, str]]:
    """Processes the pod cannot hold: each needs a core of the CPU limit and 512Mi of the memory limit."""
    n, limits = serving_processes(sv), sv.resources.limits
    if sv.processes != "auto" and n > math.ceil(cpu_cores(limits.cpu)):
        yield (
            f"{key}.serving.processes",
            f"{n} processes exceed serving.resources.limits.cpu ({limits.cpu}): one process per CPU at most (raise the limit or lower processes)",
        )
    if memory_mib(limits.memory) < n * SERVING_MEMORY_PER_PROCESS_MI:
        yield (
            f"{key}.serving.resources.limits.memory",
            f"{limits.memory} is less than {SERVING_MEMORY_PER_PROCESS_MI}Mi for each of the {n} server processes (each loads the model)",
        )


# What one training worker requests (components/models/training_job.py): the queue's CPU quota must admit a run.
TRAINING_WORKER_CPU = 2


def cpu_cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def memory_mib(quantity: str) -> float:
    """A memory quantity (``Quantity``'s binary suffixes, plain bytes, or ``m``: millibytes) in MiB."""
    m = re.fullmatch(r"([0-9.]+)(m|Ki|Mi|Gi|Ti)?", quantity)
    scale = {None: 1, "m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[m.group(2)]
    return float(m.group(1)) * scale / 2**20


def serving_processes(sv: ServingConfig) -> int:
    """Server processes per pod: ``processes``, or for ``auto`` the CPU limit rounded up (what
    serving/workers.py reads from the container's cgroup)."""
    return max(1, math.ceil(cpu_cores(sv.resources.limits.cpu))) if sv.processes == "auto" else sv.processes


def serving_reserved_gpus(cfg: PlatformConfig) -> dict[str, int]:
    """GPUs per pool that LLM serving may take at its max replicas. Serving is not queued (a queued
    replica would be a scale-up that waits behind training), so training's quota leaves them free."""
    reserved: dict[str, int] = {}
    for m in cfg.models.values():
        if m.runtime == "vllm" and m.llm is not None and (pool := choose_pool(m.llm, cfg.gpu_pools)) is not None:
            reserved[pool.name] = reserved.get(pool.name, 0) + m.llm.max_replicas * m.llm.gpus
    return reserved


def training_fit_rules(cfg: PlatformConfig, key: str, t: TrainingConfig) -> Iterator[tuple[str, str]]:
    """A run that can never be admitted (too many GPUs for a node, or for the pools or the quota)
    would wait in the queue forever: refuse it here instead."""
    need = t.workers * t.gpus
    # A pool with an unknown instance type is reported as such; its capacity cannot be judged.
    known = all(it in GPU_COUNT for p in cfg.gpu_pools for it in p.instance_types)
    if t.gpus > 0 and cfg.gpu_pools and known:
        per_node = {p.name: GPU_COUNT.get(p.instance_types[0], 0) for p in cfg.gpu_pools}
        fits = [p for p in cfg.gpu_pools if per_node[p.name] >= t.gpus]
        reserved = serving_reserved_gpus(cfg)
        if not fits:
            yield (
                f"{key}.training.gpus",
                f"a worker's GPUs must fit one node: the largest GPU pool instance has {max(per_node.values())} (got gpus={t.gpus})",
            )
        else:
            capacity = sum(max(0, p.max * per_node[p.name] - reserved.get(p.name, 0)) for p in fits)
            if need > capacity:
                held = f", after {sum(reserved.values())} held for LLM serving" if reserved else ""
                yield (
                    f"{key}.training.workers",
                    f"workers x gpus = {need} GPUs, more than the GPU pools that fit a worker hold at their max size ({capacity}{held})",
                )
    if t.gpus > 0 and cfg.queue.gpu_quota is not None and need > cfg.queue.gpu_quota:
        yield (
            f"{key}.training.workers",
            f"workers x gpus = {need} GPUs, more than queue.gpuQuota ({cfg.queue.gpu_quota}): it would wait forever",
        )
    if t.workers * TRAINING_WORKER_CPU > cpu_cores(cfg.queue.cpu):
        yield (
            f"{key}.training.workers",
            f"{t.workers} workers request {t.workers * TRAINING_WORKER_CPU} CPUs, more than queue.cpu ({cfg.queue.cpu}): it would wait forever",
        )


# The serving keys a vLLM model uses (who may call it); the rest configure our TF server.
VLLM_SERVING_KEYS = {"allowed_cidrs"}


def vllm_model_rules(cfg: PlatformConfig, key: str, model: ModelConfig) -> Iterator[tuple[str, str]]:
    """A vLLM model is served, not trained here; it scales on vLLM's queue, read from Prometheus."""
    if model.llm is None:
        yield f"{key}.llm", "required when runtime is 'vllm' (at least llm.source: a Hugging Face id or an s3:// prefix)"
        return
    if model.training.model_fields_set:
        yield f"{key}.training", "a vllm model is not trained by the platform: remove this section"
    for field in sorted(model.serving.model_fields_set - VLLM_SERVING_KEYS):
        alias = ServingConfig.model_fields[field].alias or field
        yield f"{key}.serving.{alias}", f"configures the TF server, not vLLM: use {key}.llm (see README)"
    if not cfg.monitoring.enabled:
        yield f"{key}.runtime", "vllm models scale on vLLM's queue, read from Prometheus: needs monitoring.enabled"
    yield from llm_rules(model.llm, key, cfg.gpu_pools, cfg.has_gpus, cfg.environment)


def _key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _submodel(ann: Any) -> tuple[type[BaseModel] | None, bool]:
    """The model type inside a field annotation (``X``, ``X | None``, ``list[X]``, ``dict[str, X]``),
    and whether a path part (a dict key) comes before it."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is dict:
        return _submodel(args[1])[0], True
    if origin is list or origin in (typing.Union, types.UnionType):
        for arg in args:
            found, keyed = _submodel(arg)
            if found is not None:
                return found, keyed
        return None, False
    return (ann, False) if isinstance(ann, type) and issubclass(ann, BaseModel) else (None, False)


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The camelCase keys allowed at ``loc`` (walks the model along the path)."""
    m: Any = model
    parts = [p for p in loc if not isinstance(p, int)]
    while parts:
        part = parts.pop(0)
        field = next((f for n, f in m.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return []
        m, keyed = _submodel(field.annotation)
        if m is None:
            return []
        if keyed and parts:
            parts.pop(0)  # the dict key (a model name)
    return [f.alias or n for n, f in m.model_fields.items()]


def _describe(err: dict[str, Any]) -> str:
    loc, kind, got = err["loc"], err["type"], err.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(PlatformConfig, loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        did = f"did you mean {hint[0]!r}? " if hint else ""
        return f"unknown key ({did}allowed: {', '.join(allowed)})"
    if kind == "missing":
        return "required key is missing"
    msg = err["msg"].removeprefix("Value error, ")
    if kind == "value_error":
        return msg
    return f"{msg[0].lower()}{msg[1:]} (got {json.dumps(got, default=str)})"


def problems(raw: dict[str, Any]) -> tuple[PlatformConfig | None, list[tuple[str, str]]]:
    """Every problem of the raw camelCase config as (key path, what is expected); the validated
    config when there is none.

    Sections with type errors are reported as such; the cross-field rules still run on the other
    sections (with the broken ones at their defaults, and no rule reported against those), except
    when ``environment`` or ``cluster`` is broken: every rule reads them.
    """
    found: list[tuple[str, str]] = []
    for key in raw:
        if key in MOVED_KEYS:
            found.append((key, MOVED_KEYS[key]))
        elif key not in TOP_LEVEL_KEYS and key not in SECRET_KEYS:
            hint = difflib.get_close_matches(key, TOP_LEVEL_KEYS + SECRET_KEYS, n=1)
            did = f"did you mean {hint[0]!r}? " if hint else ""
            found.append((key, f"unknown key ({did}allowed: {', '.join(TOP_LEVEL_KEYS)})"))
    plain = {k: v for k, v in raw.items() if k in TOP_LEVEL_KEYS}
    try:
        cfg = PlatformConfig.model_validate(plain)
        broken: set[str] = set()
    except ValidationError as exc:
        errors = exc.errors()
        found += [(_key_path(e["loc"]), _describe(e)) for e in errors]
        # A catalogue entry is its own section: one broken model does not hide the others' rules.
        broken = {".".join(map(str, e["loc"][: 2 if e["loc"][0] == "models" else 1])) for e in errors if e["loc"]}
        if broken & {"environment", "cluster"}:
            return None, found
        partial = {k: v for k, v in plain.items() if k not in broken}
        if isinstance(partial.get("models"), dict):
            partial["models"] = {n: m for n, m in partial["models"].items() if f"models.{n}" not in broken}
        cfg = PlatformConfig.model_validate(partial)
    for key, message in rules(cfg):
        section = key.split("[")[0].split(".")
        # A defaulted gpuPools would make every GPU training look unschedulable.
        if (
            section[0] in broken
            or ".".join(section[:2]) in broken
            or ("gpuPools" in broken and (key.endswith((".training.gpus", ".runtime")) or ".llm." in key))
        ):
            continue
        found.append((key, message))
    return (None if found else cfg), found


def validate(raw: dict[str, Any], stack_file: str) -> PlatformConfig:
    """Validate the raw camelCase config; raise ConfigError naming every problem, one line each."""
    cfg, found = problems(raw)
    if found or cfg is None:
        raise ConfigError.many(stack_file, found)
    return cfg


@dataclass(frozen=True)
class Settings:
    """What the program gets: the validated config plus secrets (as Pulumi secret Outputs)."""

    stack: str
    config: PlatformConfig
    secrets: dict[str, pulumi.Output[str]]


def stack_file(stack: str) -> str:
    return f"stacks/Pulumi.{stack}.yaml"


def _raw_config() -> dict[str, Any]:
    """Every ``mlplatform:*`` key the engine passed us, decoded (objects arrive JSON-encoded)."""
    from pulumi.runtime import config as rtconfig

    keys = set(rtconfig.get_config_env()) | set(rtconfig.CONFIG.get())
    raw: dict[str, Any] = {}
    for full in sorted(keys):
        ns, _, key = full.partition(":")
        if ns != NAMESPACE or key in SECRET_KEYS:
            continue
        value = rtconfig.get_config(full)
        # Objects and lists arrive JSON-encoded; scalars stay strings ("1.30" must not become 1.3).
        if isinstance(value, str) and value[:1] in "{[":
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ConfigError(stack_file(pulumi.get_stack()), key, f"is not valid JSON/YAML: {exc}") from None
        raw[key] = value
    return raw


def load() -> Settings:
    """Read and validate this stack's config. Raises ConfigError before any resource exists."""
    stack = pulumi.get_stack()
    cfg = validate(_raw_config(), stack_file(stack))
    conf = pulumi.Config(NAMESPACE)
    secrets = {k: v for k in SECRET_KEYS if (v := conf.get_secret(k)) is not None}
    return Settings(stack=stack, config=cfg, secrets=secrets)
