"""Typed, validated stack configuration: the only module that reads ``pulumi.Config``.

Every error names the stack file and the key path, in one line, and is raised before any resource is
registered, e.g. ``stacks/Pulumi.prod.yaml: mlplatform:gpuPools[0].min: must be <= max (got min=3, max=2)``.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pulumi
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

NAMESPACE = "mlplatform"
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

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

    def __init__(self, stack_file: str, key: str, message: str):
        self.stack_file, self.key, self.message = stack_file, key, message
        super().__init__(f"{stack_file}: {NAMESPACE}:{key}: {message}")


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
    instance_type: str = "m6i.large"
    min: int = Field(default=2, ge=1, le=100)
    desired: int = Field(default=2, ge=1, le=100)
    max: int = Field(default=4, ge=1, le=100)


class ClusterConfig(_Model):
    kind: Literal["eks", "kubeconfig"]
    region: str | None = Field(default=None, pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]$")
    kubeconfig: str | None = None
    context: str | None = None
    system_nodes: NodeGroupSize = NodeGroupSize()
    endpoint_public_access_cidrs: list[Cidr] = []
    availability_zones: int = Field(default=2, ge=2, le=6)
    vpc_cidr: Cidr = "10.0.0.0/16"
    has_gpus: bool = False


class GpuPool(_Model):
    name: str = Field(max_length=40)
    instance_types: list[str] = Field(min_length=1)
    capacity_type: Literal["SPOT", "ON_DEMAND"] = "SPOT"
    min: int = Field(default=0, ge=0, le=100)
    desired: int = Field(default=0, ge=0, le=100)
    max: int = Field(default=2, ge=1, le=100)
    disk_gi_b: int = Field(default=100, ge=20, le=16384, alias="diskGiB")

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
    kind: Literal["ecr", "external"] = "ecr"
    url: str | None = None
    keep_images: int = Field(default=20, ge=1, le=1000)
    builder: str | None = None  # a buildx builder (e.g. remote rootless BuildKit in CI); unset: local Docker


class JenkinsConfig(_Model):
    enabled: bool = True
    repo_url: str | None = None
    branch: str = "main"
    service_type: Literal["ClusterIP", "LoadBalancer"] = "ClusterIP"
    allowed_cidrs: list[Cidr] = []
    storage_gi_b: int = Field(default=20, ge=1, le=1000, alias="storageGiB")


class TrainingConfig(_Model):
    arch: Literal["seed", "strong"] = "strong"
    epochs: int = Field(default=10, ge=1, le=1000)
    batch_size: int | None = Field(default=None, ge=1, le=65536)  # None: the arch's own (seed 128, strong 256)
    min_accuracy: float = Field(default=0.9842, gt=0, le=1)
    schedule: str | None = None
    gpus: int = Field(default=1, ge=0, le=8)
    data_uri: str | None = None
    active_deadline_seconds: int = Field(default=7200, ge=60, le=7 * 86400)

    @field_validator("schedule")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is not None and len(v.split()) != 5 and not v.startswith("@"):
            raise ValueError(f"must be a 5-field cron expression like '0 3 * * 1' (got {v!r})")
        return v


class ResourceAmounts(_Model):
    cpu: Quantity
    memory: Quantity


class Resources(_Model):
    requests: ResourceAmounts = ResourceAmounts(cpu="500m", memory="1Gi")
    limits: ResourceAmounts = ResourceAmounts(cpu="2", memory="2Gi")


class ServingConfig(_Model):
    replicas: int = Field(default=2, ge=1, le=100)
    min_replicas: int = Field(default=2, ge=1, le=100)
    max_replicas: int = Field(default=6, ge=1, le=1000)
    allowed_cidrs: list[Cidr] = []
    max_batch_size: int = Field(default=64, ge=1, le=4096)
    batch_timeout_ms: float = Field(default=2.0, ge=0, le=1000)
    max_queue: int = Field(default=1024, ge=1, le=1_000_000)
    target_cpu_utilization: int = Field(default=70, ge=10, le=100)
    resources: Resources = Resources()


class MonitoringConfig(_Model):
    enabled: bool = True
    retention: str = Field(default="15d", pattern=r"^[0-9]+(h|d|w|y)$")
    storage_gi_b: int = Field(default=50, ge=1, le=10000, alias="storageGiB")
    latency_slo_ms: float = Field(default=100, gt=0)
    error_ratio_slo: float = Field(default=0.01, gt=0, lt=1)
    training_stale_days: int = Field(default=7, ge=1, le=365)
    prometheus_replicas: int = Field(default=1, ge=1, le=5)
    alertmanager_replicas: int = Field(default=1, ge=1, le=5)
    gpu_profiling_metrics: bool = Field(default=False)


class AlertingConfig(_Model):
    webhook_url: str | None = Field(default=None, pattern=r"^https?://")
    slack_channel: str | None = None
    email_to: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+$")
    smtp_smarthost: str | None = None
    smtp_from: str | None = None


class EphemeralConfig(_Model):
    ttl_hours: float = Field(default=24, gt=0, le=24 * 30)


class PlatformConfig(_Model):
    environment: Literal["local", "dev", "staging", "prod", "ephemeral"]
    kubernetes_version: str = Field(default="1.33", pattern=r"^1\.[0-9]{2}$")
    cluster: ClusterConfig
    gpu_pools: list[GpuPool] = []
    registry: RegistryConfig = RegistryConfig()
    jenkins: JenkinsConfig = JenkinsConfig()
    training: TrainingConfig = TrainingConfig()
    serving: ServingConfig = ServingConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    alerting: AlertingConfig = AlertingConfig()
    ephemeral: EphemeralConfig = EphemeralConfig()  # PR stacks made from this stack (tools/ephemeral.py)

    @property
    def is_eks(self) -> bool:
        return self.cluster.kind == "eks"

    @property
    def has_gpus(self) -> bool:
        return bool(self.gpu_pools) or self.cluster.has_gpus


# Secret keys are read with require/get_secret and never enter the (plain) model.
SECRET_KEYS = ("alertingSlackWebhookUrl", "alertingSmtpPassword")
TOP_LEVEL_KEYS = tuple(f.alias or n for n, f in PlatformConfig.model_fields.items())


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
    m = cfg.monitoring
    if cfg.environment == "prod" and m.enabled and (m.prometheus_replicas < 2 or m.alertmanager_replicas < 3):
        yield "monitoring", (
            "prod needs prometheusReplicas >= 2 and alertmanagerReplicas >= 3 to survive a node or zone loss"
            f" (got {m.prometheus_replicas} and {m.alertmanager_replicas})"
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
    r = cfg.registry
    if r.kind == "ecr" and c.kind != "eks":
        yield "registry.kind", "'ecr' needs an EKS stack; use kind 'external' with a url (e.g. localhost:5001)"
    if r.kind == "external" and not r.url:
        yield "registry.url", "required when registry.kind is 'external' (e.g. 'localhost:5001')"
    if cfg.jenkins.enabled and not cfg.jenkins.repo_url:
        yield "jenkins.repoUrl", "required when jenkins.enabled (the Git URL of this repository)"
    if cfg.training.gpus > 0 and not cfg.has_gpus:
        yield "training.gpus", "must be 0 on a stack without gpuPools or cluster.hasGpus (nothing could schedule it)"
    sv = cfg.serving
    if sv.min_replicas > sv.max_replicas:
        yield "serving.minReplicas", f"must be <= maxReplicas (got minReplicas={sv.min_replicas}, maxReplicas={sv.max_replicas})"
    elif not sv.min_replicas <= sv.replicas <= sv.max_replicas:
        yield "serving.replicas", f"must be between minReplicas and maxReplicas (got {sv.replicas})"
    if cfg.environment == "prod":
        if sv.replicas < 2 or sv.min_replicas < 2:
            yield "serving.replicas", "prod needs >= 2 replicas and minReplicas >= 2 to survive a node loss"
        if not sv.allowed_cidrs:
            yield "serving.allowedCidrs", "prod load balancers must be restricted: set at least one CIDR"
        for j, cidr in enumerate(sv.allowed_cidrs):
            if cidr in ANY_CIDRS:
                yield f"serving.allowedCidrs[{j}]", "prod load balancers must not be open to the world (0.0.0.0/0)"
    if cfg.jenkins.service_type == "LoadBalancer":
        if not cfg.jenkins.allowed_cidrs:
            yield "jenkins.allowedCidrs", "required when jenkins.serviceType is 'LoadBalancer'"
        for j, cidr in enumerate(cfg.jenkins.allowed_cidrs):
            if cidr in ANY_CIDRS:
                yield f"jenkins.allowedCidrs[{j}]", "Jenkins must not be open to the world (0.0.0.0/0)"


def _key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The camelCase keys allowed at ``loc`` (walks the model along the path)."""
    m: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = next((f for n, f in m.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return []
        ann = field.annotation
        ann = getattr(ann, "__args__", (ann,))[0] if getattr(ann, "__origin__", None) is list else ann
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        m = ann
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


def validate(raw: dict[str, Any], stack_file: str) -> PlatformConfig:
    """Validate the raw camelCase config; raise ConfigError naming the first problem."""
    for key in raw:
        if key not in TOP_LEVEL_KEYS and key not in SECRET_KEYS:
            hint = difflib.get_close_matches(key, TOP_LEVEL_KEYS + SECRET_KEYS, n=1)
            did = f"did you mean {hint[0]!r}? " if hint else ""
            raise ConfigError(stack_file, key, f"unknown key ({did}allowed: {', '.join(TOP_LEVEL_KEYS)})")
    plain = {k: v for k, v in raw.items() if k not in SECRET_KEYS}
    try:
        cfg = PlatformConfig.model_validate(plain)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(stack_file, _key_path(err["loc"]), _describe(err)) from None
    for key, message in rules(cfg):
        raise ConfigError(stack_file, key, message)
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
