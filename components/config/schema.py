"""The stack file's sections as pydantic models, and the constants they check against.

A field's type, bounds, default and description live here (tools/config_doc.py renders them as the
README's table); rules that relate several fields are in rules.py. No Pulumi: the offline policy
checker (policy/check.py) and the pure tests import it without an engine.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator
from pydantic.alias_generators import to_camel

from components.config.capacity import GPU_COUNT, TRAINING_WORKER_CPU, serving_resources_for
from components.config.llm import CLIENT_ID, LlmConfig, LlmRateLimit
from components.config.lora import TRAINING_LORA, TRAINING_TF, LoraTrainingConfig, training_tag
from monitoring.spec import DEFAULT_RUNBOOKS_URL

NAMESPACE = "mlplatform"
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Model names end up in object names (`model-server-<name>-metrics`, `train-<name>-<hash>`), which must stay <= 63.
MODEL_NAME_MAX = 30

ANY_CIDRS = {"0.0.0.0/0", "::/0"}


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


AWS_ACCOUNT = r"^[0-9]{12}$"


# RFC 5737's documentation networks: an allowlist of one of them admits nobody (the stack files' examples).
DOCUMENTATION_CIDRS = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
# cluster.accessEntries[].policy -> the EKS access policy it associates (EKS user guide, "Access policy permissions").
EKS_ACCESS_POLICIES = {
    "cluster-admin": "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy",
    "admin": "arn:aws:eks::aws:cluster-access-policy/AmazonEKSAdminPolicy",
    "edit": "arn:aws:eks::aws:cluster-access-policy/AmazonEKSEditPolicy",
    "view": "arn:aws:eks::aws:cluster-access-policy/AmazonEKSViewPolicy",
}


def documentation_cidrs(cidrs: list[str]) -> list[str]:
    """The entries of ``cidrs`` inside a documentation network (RFC 5737)."""
    docs = [ipaddress.ip_network(d) for d in DOCUMENTATION_CIDRS]
    return [c for c in cidrs if any(ipaddress.ip_network(c).subnet_of(d) for d in docs if ipaddress.ip_network(c).version == 4)]


class AccessEntry(_Model):
    principal_arn: str = Field(
        pattern=r"^arn:aws:iam::[0-9]{12}:(role|user)/[A-Za-z0-9+=,.@_/-]{1,512}$",
        description="IAM role or user ARN that deploys or operates this stack (a person's SSO role, Jenkins's identity, a CI role)",
    )
    policy: Literal["cluster-admin", "admin", "edit", "view"] = Field(
        default="cluster-admin", description="EKS access policy, cluster-wide (`cluster-admin` for a principal that runs `pulumi up`)"
    )


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
    access_entries: list[AccessEntry] = Field(
        default=[],
        description="EKS: every principal but the cluster's creator that deploys or reads this stack gets an access entry "
        "(authenticationMode API admits no one else); ignored on a kubeconfig cluster",
    )
    account_id: str | None = Field(
        default=None,
        pattern=AWS_ACCOUNT,
        description="the AWS account of this stack, one per environment (docs/security.md); the AWS provider refuses credentials "
        "of any other account; required on the dev/staging/prod EKS stacks",
    )


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
    platforms: list[Literal["linux/amd64", "linux/arm64"]] = Field(
        default=["linux/amd64"],
        min_length=1,
        description="image platforms (one multi-platform image each); several need `builder`; EKS nodes here are x86_64",
    )


# The one stack (by environment) that runs Jenkins: it deploys every environment with that environment's
# credentials (README "CI/CD"). Not prod: PR code runs on Jenkins agents and must never run in prod's
# cluster. Not dev: its API endpoint is the least restricted and every PR stack copies its config.
JENKINS_ENVIRONMENT = "staging"
# Pasted into job-dsl Groovy (components/services/jenkins.py): nothing that can end a literal or interpolate.
GITHUB_REPO_URL = re.compile(r"^https://github\.com/[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}$")
GIT_BRANCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$")
# A GitHub login, or a team as the GitHub OAuth realm names it: `ORG*TEAM` (github-oauth plugin groups).
JENKINS_PRINCIPAL = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}(\*[A-Za-z0-9][A-Za-z0-9._-]{0,99})?$"


class JenkinsConfig(_Model):
    enabled: bool = Field(default=False, description=f"run the one Jenkins here (only on the `{JENKINS_ENVIRONMENT}` stack)")
    repo_url: str | None = Field(
        default=None, description="`https://github.com/OWNER/NAME[.git]` of this repository; required when enabled"
    )
    branch: str = Field(default="main", description="the protected branch the `deploy/main` job builds and rolls out")
    prod_approvers: list[Annotated[str, Field(pattern=JENKINS_PRINCIPAL)]] = Field(
        default=[],
        description="GitHub logins or `ORG*TEAM` teams who may start a PR's ephemeral stack (Job/Build on `ephemeral/pr-stack`, "
        "nobody else; never Administer; prod deploys from GitHub/GitLab, never from Jenkins); required when enabled",
    )
    admins: list[Annotated[str, Field(pattern=JENKINS_PRINCIPAL)]] = Field(
        default=[], description="GitHub logins or `ORG*TEAM` teams with Overall/Administer; none of them an approver; required when enabled"
    )
    github_oauth_client_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9._-]{8,64}$",
        description="client ID of the GitHub OAuth App users sign in with (its secret: `jenkinsCredentials` key "
        "`github-oauth-client-secret`); required when enabled",
    )
    service_type: Literal["ClusterIP", "LoadBalancer"] = Field(default="ClusterIP", description="`LoadBalancer` requires `allowedCidrs`")
    allowed_cidrs: list[Cidr] = Field(default=[], description="sources allowed to the Jenkins load balancer")
    tls_certificate_arn: str | None = Field(
        default=None,
        pattern=r"^arn:aws:acm:[a-z0-9-]+:[0-9]{12}:certificate/[A-Za-z0-9-]+$",
        description="ACM certificate the Jenkins load balancer (an NLB) terminates TLS with, on 443 only; required with `LoadBalancer`",
    )
    storage_gi_b: int = Field(default=20, ge=1, le=1000, alias="storageGiB", description="Jenkins home volume, GiB")
    agent_image: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9.-]+(:[0-9]+)?/[a-z0-9._/-]+(:[A-Za-z0-9._-]+|@sha256:[0-9a-f]{64})$",
        description="the CI toolbox image (ci/toolbox, `make toolbox-push`) the agents run, by tag or digest; required when enabled",
    )

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


class ResourceAmounts(_Model):
    cpu: Quantity = Field(description="CPU, e.g. `500m`")
    memory: Quantity = Field(description="memory, e.g. `1Gi`")


class Resources(_Model):
    requests: ResourceAmounts = Field(default=ResourceAmounts(cpu="500m", memory="1Gi"), description="container requests")
    limits: ResourceAmounts = Field(default=ResourceAmounts(cpu="2", memory="2Gi"), description="container limits")


class TrainingResources(Resources):
    """One training worker's container. The queue admits a run by its requests (`queue.cpu`/`queue.memory`);
    the defaults let it burst to 4 CPUs where the node has room."""

    requests: ResourceAmounts = Field(
        default=ResourceAmounts(cpu=str(TRAINING_WORKER_CPU), memory="4Gi"),
        description="what a worker is scheduled and admitted by (a laptop's kind stack: e.g. `500m` / `2Gi`)",
    )
    limits: ResourceAmounts = Field(default=ResourceAmounts(cpu="4", memory="8Gi"), description="what a worker may use at most")


class TrainingConfig(_Model):
    """One model's training run (a Job, and a CronJob when scheduled)."""

    code: str | None = Field(
        default=None,
        description=(
            "the model's training folder, relative to the project (its `train.py` on the training contract, optional "
            "`requirements.txt` and `Dockerfile`), e.g. `models/diabetes`: `pulumi up` builds the model's image from it; "
            "any framework: TensorFlow publishes a SavedModel, PyTorch (`models/mnist_torch`), scikit-learn "
            "(`models/breast_cancer`) and others ONNX (docs/frameworks.md); unset: the platform's MNIST trainer"
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
    allow_signature_change: bool = Field(
        default=False,
        description="publish a version whose serving signature (input/output names, dtypes, shapes) breaks the champion's "
        "(`TRAIN_ALLOW_SIGNATURE_CHANGE`); its clients must change with it",
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
    resources: TrainingResources = Field(
        default=TrainingResources(),
        description="one worker's container (default: requests 1 CPU / 4Gi, limits 4 CPU / 8Gi; GPUs come from `gpus`)",
    )

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


class CanaryConfig(_Model):
    """How a new model version reaches traffic: an Argo Rollouts canary whose analysis compares the
    canary pods with the stable ones (README "Model delivery")."""

    steps: list[Annotated[int, Field(ge=1, le=99)]] = Field(
        default=[25, 50],
        min_length=1,
        description="canary weights in percent, increasing; with replica-ratio canaries a weight is rounded to whole pods "
        "(vllm: not used, the canary is one pod for stepSeconds; docs/llm.md)",
    )
    step_seconds: int = Field(
        default=360,
        ge=10,
        le=86400,
        description="pause after each weight while the analysis runs (vllm: longer than minRequests / warmupRate + windowSeconds + (inconclusive limit + 1) x intervalSeconds + 30)",
    )
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
        description="canary user (not warm-up) predictions per window below which the class mix is not judged (inconclusive; on its own it never pauses the rollout)",
    )
    min_requests: int = Field(
        default=50,
        ge=1,
        le=1_000_000,
        description="predict requests per window each side (canary and stable) must answer before any metric is judged; below it every metric is inconclusive, never failed",
    )
    max_client_error_ratio_increase: float = Field(
        default=0.05,
        ge=0,
        lt=1,
        description="canary 4xx ratio minus the stable pods' 4xx ratio, at most (a broken input contract is a 400 storm)",
    )
    # runtime vllm (components/lib/llm_canary.py): vLLM's own latencies and the model's golden prompts
    max_ttft_p95_ratio: float = Field(
        default=1.5,
        ge=1,
        le=100,
        description="vllm: canary p95 time to first token over the stable pods', at most (docs/llm.md: the known limit of p95 ratios)",
    )
    max_itl_p95_ratio: float = Field(
        default=1.5,
        ge=1,
        le=100,
        description="vllm: canary p95 inter-token latency over the stable pods', at most",
    )
    max_golden_failure_ratio: float = Field(
        default=0.05,
        ge=0,
        lt=1,
        description="vllm: share of the canary's answers to models/<name>/golden.yaml that miss their expectations, at most "
        "(judged once every prompt was answered; above 0 for GPU numerics that may flip a token at temperature 0)",
    )
    warmup_rate: float = Field(
        default=2,
        ge=0,
        le=100,
        description="requests per second the analysis' warm-up Job sends to each side during a canary (instances built from the model's signature; "
        "vllm: the golden prompts); 0: none, the stack's own traffic must reach minRequests",
    )

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[int]) -> list[int]:
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"canary weights must increase: {steps}")
        return steps

    @model_validator(mode="after")
    def _warmup_reaches_the_minimum(self) -> CanaryConfig:
        # Otherwise the warm-up alone never gives a side minRequests in a window: on a quiet stack
        # every canary would pause inconclusive, by construction.
        if 0 < self.warmup_rate * self.window_seconds < self.min_requests:
            raise ValueError(
                f"warmupRate {self.warmup_rate:g}/s x windowSeconds {self.window_seconds} = "
                f"{self.warmup_rate * self.window_seconds:g} requests per window, below minRequests {self.min_requests}: "
                "raise warmupRate or windowSeconds, or lower minRequests (warmupRate 0: no warm-up)"
            )
        return self


class ServingRateLimit(LlmRateLimit):
    """Requests per API client a TF model's route admits at the entry point (429 beyond): the LLM
    routes' limit, with defaults for a batching server (a request is up to ``maxBatchSize`` instances)."""

    requests: int = Field(default=100, ge=1, le=1_000_000, description="requests per `unit` per API client")
    unit: Literal["Second", "Minute", "Hour"] = Field(default="Second", description="the rate limit's interval")


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
    api_key: bool = Field(
        default=False,
        description="require an API key on every route of the model (predict, status, metadata), checked at the entry point "
        "(and again by our TF server): one generated key per `apiClients` entry (vLLM: `llm.apiClients`), stack output `apiKeys`, a secret",
    )
    api_clients: list[Annotated[str, Field(pattern=CLIENT_ID)]] = Field(
        default=["default"],
        min_length=1,
        max_length=50,
        description="with `apiKey`: one generated key per client, each rate-limited apart (`rateLimit`); TF models (vLLM: `llm.apiClients`)",
    )
    rate_limit: ServingRateLimit = Field(
        default=ServingRateLimit(),
        description="with `apiKey`: requests admitted per API client at the entry point, per Envoy replica (429 beyond); "
        "a predict request carries up to `maxBatchSize` instances. TF models (vLLM: `llm.rateLimit`)",
    )
    canary: CanaryConfig = Field(default=CanaryConfig(), description="canary rollout of a new version (Argo Rollouts)")
    version: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        description="the model version served, pinned in the pod template: a change is a canary rollout (set by the pipeline's "
        "promotion step); unset or `champion`: the server follows the store's champion (LATEST) with no canary (`champion` "
        "also overrides the version the last `up` recorded; an adapter: not served)",
    )

    @field_validator("api_clients")
    @classmethod
    def _unique_clients(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("client names must be unique")
        return v


class ModelSource(_Model):
    """Where a stack that does not train gets a model's versions (README "Model delivery")."""

    stack: str = Field(
        pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
        description="the stack whose store the pipeline promotes versions from (byte-identical copy, digests verified); "
        "this stack runs no training for the model",
    )
    account: str | None = Field(
        default=None, pattern=AWS_ACCOUNT, description="the source stack's AWS account (its `cluster.accountId`); required on EKS stacks"
    )
    bucket: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
        description="the source stack's store bucket (`pulumi stack output modelStore --stack <source>`, without `s3://`); required on "
        "EKS stacks: the promotion reads what this reviewed file names, the source stack's outputs are only a cross-check",
    )


class ModelReceiver(_Model):
    """A stack that receives this model's versions from this stack's store (README "Model delivery")."""

    stack: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", description="the receiving stack")
    account: str = Field(
        pattern=AWS_ACCOUNT, description="its AWS account: its promoter role `mlplatform-<stack>-model-promoter` there may read"
    )


class ModelConfig(_Model):
    """One catalogue entry: a model the stack trains, gates, publishes and serves."""

    runtime: Literal["tensorflow", "vllm"] = Field(
        default="tensorflow",
        description="serving runtime: `tensorflow` (our model server: a version's `format` in its metadata picks TensorFlow for a "
        "SavedModel or ONNX Runtime for `model.onnx`) or `vllm` (an open-weights LLM, see `llm`)",
    )
    adapter_of: str | None = Field(
        default=None,
        description="a LoRA adapter of this stack's `runtime: vllm` entry named here (pinned revision): served by that model's vLLM, "
        "picked by clients with `model: <this name>` on its route (docs/lora.md); no `llm` section of its own",
    )
    training: Annotated[
        Annotated[TrainingConfig, Tag(TRAINING_TF)] | Annotated[LoraTrainingConfig, Tag(TRAINING_LORA)], Discriminator(training_tag)
    ] = Field(
        default=TrainingConfig(),
        description="training run: a TF/ONNX run, or with `kind: lora` an adapter's fine-tuning (`adapterOf`; keys below)",
    )
    source: ModelSource | None = Field(
        default=None,
        description="receive versions from another stack instead of training (vllm: importing) here (prod: required; never Hugging Face)",
    )
    serving: ServingConfig = Field(default=ServingConfig(), description="model server")
    receivers: list[ModelReceiver] = Field(
        default=[],
        description="EKS: the stacks that promote this model from this stack's store; their promoter roles may read its folder "
        "(bucket policy) and decrypt it (key policy), nobody else outside this stack",
    )
    llm: LlmConfig | None = Field(
        default=None, description='runtime `vllm` only: the LLM and its vLLM options (README "Serve an open-weights LLM")'
    )


class TlsConfig(_Model):
    certificate_secret: str = Field(description="a `kubernetes.io/tls` Secret in the gateway namespace (e.g. from cert-manager)")
    hostname: str | None = Field(default=None, description="the certificate's host name; unset: any")


class GatewayConfig(_Model):
    internal: bool = Field(default=False, description="internal load balancer: reachable only from inside the VPC")
    tls: TlsConfig | None = Field(
        default=None,
        description="serve HTTPS on 443 with this certificate, port 80 only redirects to it; unset: plain HTTP on 80 "
        "(refused on an internet-facing staging/prod entry point)",
    )


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
    protect: bool | None = Field(
        default=None,
        description=(
            "Pulumi `protect` on the stateful resources (the cluster and everything in it, the model store, the image repositories): "
            "`pulumi destroy` and replacements are refused; unset: true on prod. To lift it: set false, `mlp up`, then destroy"
        ),
    )

    @property
    def protected(self) -> bool:
        return self.protect if self.protect is not None else self.environment == "prod"

    @property
    def is_eks(self) -> bool:
        return self.cluster.kind == "eks"

    @property
    def has_gpus(self) -> bool:
        return bool(self.gpu_pools) or self.cluster.has_gpus


# ``models.<name>.training``'s branches by the tag pydantic reports (components/config/lora.py).
TRAINING_BRANCHES: dict[str, type[BaseModel]] = {TRAINING_TF: TrainingConfig, TRAINING_LORA: LoraTrainingConfig}

# Secret keys are read with require/get_secret and never enter the (plain) model.
# jenkinsCredentials: a JSON object of the CI credentials (components/services/jenkins.py CREDENTIAL_KEYS).
SECRET_KEYS = ("alertingSlackWebhookUrl", "alertingSmtpPassword", "jenkinsCredentials", "hfToken")
TOP_LEVEL_KEYS = tuple(f.alias or n for n, f in PlatformConfig.model_fields.items())
# Keys that existed before the model catalogue: one line says where they went.
MOVED_KEYS = {
    "training": "moved to models.<name>.training (one entry per model, e.g. models.mnist.training)",
    "serving": "moved to models.<name>.serving (one entry per model, e.g. models.mnist.serving)",
}
