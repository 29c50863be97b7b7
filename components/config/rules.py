"""Cross-field and per-environment rules of a stack config, one generator per section.

Each generator yields (key path, what is expected). ``rules`` chains them in ``SECTIONS`` order, which is
the order the problems are reported in: ``ConfigError.many`` leads its error with the first one.

No Pulumi at import. One rule reads the cluster-autoscaler pins from components/cluster/cluster_autoscaler.py,
which imports Pulumi, when it runs (on an EKS stack with GPU pools).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

from components.config.capacity import (
    GPU_COUNT,
    SERVING_MEMORY_PER_PROCESS_MI,
    cpu_cores,
    gpus_per_node,
    memory_mib,
    pools_gpu_capacity,
    serving_processes,
    serving_reserved_gpus,
    training_gpu_capacity,
)
from components.config.llm import llm_rules
from components.config.lora import LoraTrainingConfig, adapter_base_rules, adapter_serving_rules, lora_training_rules
from components.config.schema import (
    ANY_CIDRS,
    CI_DEPLOY_ENVIRONMENTS,
    DNS1123_LABEL,
    GITHUB_ISSUER,
    JENKINS_ENVIRONMENT,
    MODEL_NAME_MAX,
    PROJECT_ROOT,
    GpuPool,
    JenkinsConfig,
    ModelConfig,
    PlatformConfig,
    ServingConfig,
    TrainingConfig,
)

Problems = Iterator[tuple[str, str]]


def api_server_rules(cfg: PlatformConfig) -> Problems:
    """An EKS control plane: who may reach its API, and a cluster-autoscaler pinned for its minor."""
    c = cfg.cluster
    # Every EKS stack's API endpoint (dev's, which PR stacks copy, too) answers only known networks.
    if c.kind == "eks":
        if not c.endpoint_public_access_cidrs:
            yield "cluster.endpointPublicAccessCidrs", "required on EKS: the networks (office, CI runners) that may reach the API endpoint"
        for j, cidr in enumerate(c.endpoint_public_access_cidrs):
            if cidr in ANY_CIDRS:
                yield f"cluster.endpointPublicAccessCidrs[{j}]", "the API endpoint must not be open to the world (0.0.0.0/0)"
    if c.kind == "eks" and cfg.gpu_pools:
        # The pins live beside the release they configure; imported only when a stack needs them.
        from components.cluster.cluster_autoscaler import IMAGE_TAGS

        if cfg.kubernetes_version not in IMAGE_TAGS:
            yield (
                "kubernetesVersion",
                (
                    f"no cluster-autoscaler release is pinned for {cfg.kubernetes_version} (it must match the cluster's minor;"
                    f" pinned: {', '.join(IMAGE_TAGS)} in components/cluster/cluster_autoscaler.py)"
                ),
            )


def monitoring_rules(cfg: PlatformConfig) -> Problems:
    m = cfg.monitoring
    if cfg.environment == "prod" and m.enabled and (m.prometheus_replicas < 2 or m.alertmanager_replicas < 3):
        yield (
            "monitoring",
            (
                "prod needs prometheusReplicas >= 2 and alertmanagerReplicas >= 3 to survive a node or zone loss"
                f" (got {m.prometheus_replicas} and {m.alertmanager_replicas})"
            ),
        )


def access_entry_rules(cfg: PlatformConfig) -> Problems:
    """Who else may use the EKS API (authenticationMode API: the creator, the CI role and these only)."""
    c = cfg.cluster
    principals = [e.principal_arn for e in c.access_entries]
    for j, arn in enumerate(principals):
        if arn in principals[:j]:
            yield f"cluster.accessEntries[{j}].principalArn", f"{arn} is listed twice: one entry (and one policy) per principal"


def cluster_rules(cfg: PlatformConfig) -> Problems:
    """Where the platform runs: the kind of cluster the environment needs, and its system nodes."""
    c = cfg.cluster
    if cfg.environment == "local" and c.kind != "kubeconfig":
        yield "cluster.kind", f"the local stack runs on an existing cluster: must be 'kubeconfig' (got {c.kind!r})"
    if c.kind == "eks" and not c.region:
        yield "cluster.region", "required when cluster.kind is 'eks' (e.g. 'eu-west-1')"
    if c.kind == "eks" and cfg.environment in CI_DEPLOY_ENVIRONMENTS and not c.account_id:
        yield "cluster.accountId", "required on an EKS stack: its own AWS account (one per environment, docs/security.md)"
    s = c.system_nodes
    if not s.min <= s.desired <= s.max:
        yield "cluster.systemNodes", f"must satisfy min <= desired <= max (got min={s.min}, desired={s.desired}, max={s.max})"


def gpu_pool_rules(cfg: PlatformConfig) -> Problems:
    if cfg.gpu_pools and cfg.cluster.kind != "eks":
        yield "gpuPools", "GPU node pools are created only on EKS; for an existing cluster with GPUs set cluster.hasGpus: true"
    seen: set[str] = set()
    for i, p in enumerate(cfg.gpu_pools):
        if p.name in seen:
            yield f"gpuPools[{i}].name", f"must be unique (duplicate {p.name!r})"
        seen.add(p.name)
        yield from gpu_pool_shape_rules(f"gpuPools[{i}]", p)


def gpu_pool_shape_rules(key: str, p: GpuPool) -> Problems:
    """One pool: GPU instance types of one GPU count (what scale-from-zero assumes), a sane size."""
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


def queue_rules(cfg: PlatformConfig) -> Problems:
    capacity = pools_gpu_capacity(cfg.gpu_pools)
    if cfg.queue.gpu_quota is not None and cfg.gpu_pools and cfg.queue.gpu_quota > capacity:
        yield "queue.gpuQuota", f"must not exceed the GPU pools' capacity at their max size ({capacity}); unset it to use all of it"


def registry_rules(cfg: PlatformConfig) -> Problems:
    r = cfg.registry
    if r.kind == "ecr" and cfg.cluster.kind != "eks":
        yield "registry.kind", "'ecr' needs an EKS stack; use kind 'external' with a url (e.g. localhost:5001)"
    if r.kind == "external" and not r.url:
        yield "registry.url", "required when registry.kind is 'external' (e.g. 'localhost:5001')"
    if len(set(r.platforms)) != len(r.platforms):
        yield "registry.platforms", "each platform once"
    if len(r.platforms) > 1 and not r.builder:
        # The Docker engine's own builder (the legacy `docker` driver) builds one platform only, and
        # Pulumi's docker-build provider supports only docker-container/kubernetes/remote builders by name.
        yield "registry.platforms", "several platforms need a BuildKit builder: set registry.builder (`make builder` registers it)"
    if cfg.cluster.kind == "eks" and "linux/amd64" not in r.platforms:
        yield "registry.platforms", "must include linux/amd64: the EKS node groups here run x86_64 AMIs"


def jenkins_rules(cfg: PlatformConfig) -> Problems:
    """The one Jenkins: on its stack only, with the repository it builds and who approves prod."""
    j = cfg.jenkins
    if j.enabled and cfg.environment != JENKINS_ENVIRONMENT:
        where = f"runs on the {JENKINS_ENVIRONMENT} stack only"
        yield "jenkins.enabled", f'one Jenkins deploys every environment and {where} (README "CI/CD"): remove it here'
    elif j.enabled and not j.repo_url:
        yield "jenkins.repoUrl", "required when jenkins.enabled (the Git URL of this repository)"
    if j.enabled and cfg.environment == JENKINS_ENVIRONMENT and not j.prod_approvers:
        yield "jenkins.prodApprovers", "required when jenkins.enabled: the Jenkins users or groups who may approve a PR's ephemeral stack"
    if j.enabled and cfg.environment == JENKINS_ENVIRONMENT:
        yield from jenkins_realm_rules(j)
    if j.enabled and cfg.environment == JENKINS_ENVIRONMENT and not j.agent_image:
        yield (
            "jenkins.agentImage",
            "required when jenkins.enabled: the CI toolbox image the agents run (`make toolbox-push TOOLBOX_REPO=...`)",
        )
    if j.agent_image and j.agent_image.endswith(":latest"):
        yield "jenkins.agentImage", "pin the toolbox by its content tag or digest, not ':latest' (agents must run what was reviewed)"


def jenkins_realm_rules(j: JenkinsConfig) -> Problems:
    """Who signs in (GitHub OAuth) and who administers: an administrator passes every ``input``
    whatever its submitter, so the prod approvers must not be one (issue 24 item 5)."""
    if not j.admins:
        yield "jenkins.admins", "required when jenkins.enabled: the GitHub logins or ORG*TEAM teams that administer Jenkins"
    if not j.github_oauth_client_id:
        yield "jenkins.githubOauthClientId", "required when jenkins.enabled: the GitHub OAuth App users sign in with"
    both = sorted(set(j.admins) & set(j.prod_approvers))
    if both:
        yield "jenkins.admins", f"{', '.join(both)} also approve prod: Administer bypasses the approval, keep the two apart"


def jenkins_exposure_rules(cfg: PlatformConfig) -> Problems:
    """Who may reach a Jenkins behind a load balancer."""
    if cfg.jenkins.service_type != "LoadBalancer":
        return
    if not cfg.jenkins.allowed_cidrs:
        yield "jenkins.allowedCidrs", "required when jenkins.serviceType is 'LoadBalancer'"
    if not cfg.jenkins.tls_certificate_arn:
        yield "jenkins.tlsCertificateArn", "required when jenkins.serviceType is 'LoadBalancer' (no login crosses the internet in clear)"
    for j, cidr in enumerate(cfg.jenkins.allowed_cidrs):
        if cidr in ANY_CIDRS:
            yield f"jenkins.allowedCidrs[{j}]", "Jenkins must not be open to the world (0.0.0.0/0)"


def entry_tls_rules(cfg: PlatformConfig) -> Problems:
    """An internet-facing staging/prod entry point serves HTTPS only (issue 24 item 9)."""
    if cfg.is_eks and cfg.environment in ("staging", "prod") and not cfg.gateway.internal and cfg.gateway.tls is None:
        yield "gateway.tls", "required: the entry point faces the internet (certificateSecret: a TLS Secret), or internal: true"


def ci_rules(cfg: PlatformConfig) -> Problems:
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


def catalogue_rules(cfg: PlatformConfig) -> Problems:
    for name, model in cfg.models.items():
        yield from model_rules(cfg, name, model)


def model_rules(cfg: PlatformConfig, name: str, model: ModelConfig) -> Problems:
    """The rules of one catalogue entry (key paths start at ``models.<name>``)."""
    key = f"models.{name}"
    if not DNS1123_LABEL.match(name) or len(name) > MODEL_NAME_MAX:
        yield (
            key,
            f"a model name must be a DNS-1123 label (lowercase letters, digits, '-'), at most {MODEL_NAME_MAX} characters (got {name!r})",
        )
    if model.adapter_of is not None:
        yield from adapter_rules(cfg, key, model)
    elif model.runtime == "vllm":
        yield from vllm_model_rules(cfg, key, model)
    elif model.llm is not None:
        yield f"{key}.llm", "only for runtime 'vllm' (this model's runtime is 'tensorflow')"
    yield from model_source_rules(cfg, key, name, model)
    yield from receiver_rules(cfg, key, model)
    # A received model's training is not run here.
    if isinstance(model.training, LoraTrainingConfig) and model.source is None:
        yield from lora_training_rules(cfg, key, model)
    elif model.runtime == "tensorflow" and model.source is None:
        yield from training_rules(cfg, key, model.training)
    if model.adapter_of is None:
        yield from serving_rules(cfg, key, model.serving)


def adapter_rules(cfg: PlatformConfig, key: str, model: ModelConfig) -> Problems:
    """A LoRA adapter (components/config/lora.py): a servable base, no server of its own, and the
    golden prompts its base's canary sends it (``model: <adapter>``)."""
    yield from adapter_base_rules(cfg.models, key, model)
    if model.runtime == "vllm":
        yield from adapter_serving_rules(key, model)
        yield from golden_rules(key)


def model_source_rules(cfg: PlatformConfig, key: str, name: str, model: ModelConfig) -> Problems:
    """Prod receives its models (a vLLM model's weights too: prod never talks to Hugging Face); a
    received model is not trained or imported here, and never from its own stack."""
    if model.runtime == "tensorflow" and model.source is None and cfg.environment == "prod":
        yield f"{key}.source", "prod never trains: receive the model from the stack that validated it (e.g. source: {stack: staging})"
    hub = model.llm is not None and not model.llm.from_store
    if model.runtime == "vllm" and hub and model.source is None and cfg.environment == "prod":
        yield (
            f"{key}.source",
            "prod never downloads from Hugging Face: receive the weights from the stack that validated them (e.g. source: {stack: staging})",
        )
    if model.source is None:
        return
    if model.runtime == "vllm" and model.llm is not None and model.llm.from_store:
        yield f"{key}.source", "a vllm model received from another stack is a Hugging Face import there (llm.source: an id, not s3://)"
    elif model.training.model_fields_set:
        yield f"{key}.training", f"not used: this stack receives {name} from stack {model.source.stack!r} (source) and trains nothing"
    if model.source.stack == cfg.environment:
        yield f"{key}.source.stack", "must name another stack (a stack cannot promote from itself)"
    for field in ("account", "bucket") if cfg.is_eks else ():
        if getattr(model.source, field) is None:
            yield f"{key}.source.{field}", f"required on an EKS stack: the source store's {field}, from this reviewed file"


def receiver_rules(cfg: PlatformConfig, key: str, model: ModelConfig) -> Problems:
    """Who may read this model from this stack's store: other EKS stacks' promoters."""
    for i, r in enumerate(model.receivers):
        if not cfg.is_eks:
            yield f"{key}.receivers", "only on an EKS stack (the bucket and key policies name the receivers' roles)"
            return
        if r.stack == cfg.environment:
            yield f"{key}.receivers[{i}].stack", "must name another stack"


def training_rules(cfg: PlatformConfig, key: str, t: TrainingConfig) -> Problems:
    """A run this stack trains: it needs GPU nodes for its GPUs, and must fit them (training_fit_rules)."""
    if t.gpus > 0 and not cfg.has_gpus:
        yield f"{key}.training.gpus", "must be 0 on a stack without gpuPools or cluster.hasGpus (nothing could schedule it)"
    yield from training_fit_rules(cfg, key, t)
    yield from training_resource_rules(cfg, key, t)


def training_fit_rules(cfg: PlatformConfig, key: str, t: TrainingConfig) -> Problems:
    """A run that can never be admitted (too many GPUs for a node, or for the pools or the quota)
    would wait in the queue forever: refuse it here instead."""
    need = t.workers * t.gpus
    # A pool with an unknown instance type is reported as such; its capacity cannot be judged.
    known = all(it in GPU_COUNT for p in cfg.gpu_pools for it in p.instance_types)
    if t.gpus > 0 and cfg.gpu_pools and known:
        largest = max(gpus_per_node(cfg.gpu_pools).values())
        if largest < t.gpus:
            yield (
                f"{key}.training.gpus",
                f"a worker's GPUs must fit one node: the largest GPU pool instance has {largest} (got gpus={t.gpus})",
            )
        elif need > (capacity := training_gpu_capacity(cfg, t.gpus)):
            reserved = serving_reserved_gpus(cfg)
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


def training_resource_rules(cfg: PlatformConfig, key: str, t: TrainingConfig) -> Problems:
    """A worker's requests within its limits, and a run's requests within the queue's quota (else it
    would wait forever)."""
    req, lim = t.resources.requests, t.resources.limits
    if cpu_cores(req.cpu) > cpu_cores(lim.cpu):
        yield f"{key}.training.resources.requests.cpu", f"{req.cpu} is more than the limit ({lim.cpu})"
    if memory_mib(req.memory) > memory_mib(lim.memory):
        yield f"{key}.training.resources.requests.memory", f"{req.memory} is more than the limit ({lim.memory})"
    cpu, mem = t.workers * cpu_cores(req.cpu), t.workers * memory_mib(req.memory)
    if cpu > cpu_cores(cfg.queue.cpu):
        yield (
            f"{key}.training.workers",
            f"{t.workers} workers request {cpu:g} CPUs, more than queue.cpu ({cfg.queue.cpu}): it would wait forever",
        )
    if mem > memory_mib(cfg.queue.memory):
        yield (
            f"{key}.training.workers",
            f"{t.workers} workers request {mem:g}Mi of memory, more than queue.memory ({cfg.queue.memory}): it would wait forever",
        )


def serving_rules(cfg: PlatformConfig, key: str, sv: ServingConfig) -> Problems:
    """A model's server: pods that hold their processes, replica bounds (prod survives a node loss), who may call it."""
    yield from serving_size_rules(key, sv)
    if sv.min_replicas > sv.max_replicas:
        yield f"{key}.serving.minReplicas", f"must be <= maxReplicas (got minReplicas={sv.min_replicas}, maxReplicas={sv.max_replicas})"
    elif not sv.min_replicas <= sv.replicas <= sv.max_replicas:
        yield f"{key}.serving.replicas", f"must be between minReplicas and maxReplicas (got {sv.replicas})"
    if cfg.environment == "prod" and (sv.replicas < 2 or sv.min_replicas < 2):
        yield f"{key}.serving.replicas", "prod needs >= 2 replicas and minReplicas >= 2 to survive a node loss"
    yield from serving_access_rules(cfg, key, sv)


def serving_size_rules(key: str, sv: ServingConfig) -> Problems:
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


def serving_access_rules(cfg: PlatformConfig, key: str, sv: ServingConfig) -> Problems:
    """An entry point reachable from outside the VPC (always in prod) admits only listed networks."""
    prod = cfg.environment == "prod"
    if (prod or not cfg.gateway.internal) and not sv.allowed_cidrs:
        if prod:
            yield f"{key}.serving.allowedCidrs", "prod entry points must be restricted: set at least one CIDR"
        else:
            yield f"{key}.serving.allowedCidrs", "a public entry point must be restricted: set at least one CIDR, or gateway.internal: true"
    for j, cidr in enumerate(sv.allowed_cidrs):
        if cidr in ANY_CIDRS and prod:
            yield f"{key}.serving.allowedCidrs[{j}]", "prod entry points must not be open to the world (0.0.0.0/0)"


# The serving keys a vLLM model uses (who may call it, its canary, the pinned version); the rest
# configure our TF server.
VLLM_SERVING_KEYS = {"allowed_cidrs", "api_key", "canary", "version"}
# Stacks whose public LLM routes must ask for an API key (the gateway checks it: docs/llm.md "API keys").
LLM_KEYED_ENVIRONMENTS = ("staging", "prod")


def vllm_model_rules(cfg: PlatformConfig, key: str, model: ModelConfig) -> Problems:
    """A vLLM model is served, not trained here; it scales on vLLM's queue, read from Prometheus."""
    if model.llm is None:
        yield f"{key}.llm", "required when runtime is 'vllm' (at least llm.source: a Hugging Face id or an s3:// prefix)"
        return
    if model.training.model_fields_set and not isinstance(model.training, LoraTrainingConfig):
        yield f"{key}.training", "a vllm model is not trained by the platform: remove this section"
    for field in sorted(model.serving.model_fields_set - VLLM_SERVING_KEYS):
        alias = ServingConfig.model_fields[field].alias or field
        yield f"{key}.serving.{alias}", f"configures the TF server, not vLLM: use {key}.llm (see README)"
    if not cfg.monitoring.enabled:
        yield f"{key}.runtime", "vllm models scale on vLLM's queue, read from Prometheus: needs monitoring.enabled"
    if cfg.environment in LLM_KEYED_ENVIRONMENTS and not cfg.gateway.internal and not model.serving.api_key:
        yield (
            f"{key}.serving.apiKey",
            f"required on {cfg.environment}: an LLM on a public entry point admits only API keys (set apiKey: true; docs/llm.md)",
        )
    adapters = sum(1 for m in cfg.models.values() if m.adapter_of == key.removeprefix("models."))
    yield from llm_rules(model.llm, key, cfg.gpu_pools, cfg.has_gpus, cfg.environment, adapters)
    yield from llm_canary_rules(cfg, key, model)


def llm_canary_rules(cfg: PlatformConfig, key: str, model: ModelConfig) -> Problems:
    """A vLLM model's analysed canary (components/lib/llm_canary.py) can run: a one-pod canary fits
    its pool, and its golden set (models/<name>/golden.yaml) exists and is valid."""
    from components.config.llm import choose_pool
    from components.lib import llm_canary

    pool = choose_pool(model.llm, cfg.gpu_pools) if cfg.gpu_pools else None
    if pool is not None and pool.gpus_per_node >= model.llm.gpus:
        held = pool.max * (pool.gpus_per_node // model.llm.gpus)
        short = llm_canary.gpu_short(model.llm.max_replicas, held)
        if problem := llm_canary.short_pool_problem(model.llm.max_replicas, short):
            yield f"{key}.llm.maxReplicas", f"{problem} (pool {pool.name!r} holds {held})"
    if problem := llm_canary.step_problem(model.serving.canary):
        yield f"{key}.serving.canary.stepSeconds", problem
    yield from golden_rules(key)


def golden_rules(key: str) -> Problems:
    """The model's golden set (models/<name>/golden.yaml) exists and is valid."""
    from components.lib import llm_canary
    from llm import golden

    path = llm_canary.golden_path(PROJECT_ROOT, key.removeprefix("models."))
    if not path.is_file():
        yield key, f"{path.relative_to(PROJECT_ROOT)} missing: a vllm model's canary checks its golden prompts (docs/llm.md)"
        return
    try:
        golden.load(path)
    except golden.GoldenSetError as exc:
        for line in str(exc).splitlines():
            yield key, line.replace(str(PROJECT_ROOT) + "/", "")


# The sections in the order their problems are reported (kept from before the split: the first
# problem leads the error line, and tests compare the lines).
SECTIONS: tuple[Callable[[PlatformConfig], Problems], ...] = (
    api_server_rules,
    monitoring_rules,
    cluster_rules,
    gpu_pool_rules,
    queue_rules,
    registry_rules,
    jenkins_rules,
    ci_rules,
    catalogue_rules,
    jenkins_exposure_rules,
    access_entry_rules,
    entry_tls_rules,
)


def rules(cfg: PlatformConfig) -> Problems:
    """Cross-field and per-environment rules; yields (key path, what is expected)."""
    for section in SECTIONS:
        yield from section(cfg)
