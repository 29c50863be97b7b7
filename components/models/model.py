"""Model: one catalogue entry's parts (its TrainingJob, store prefix and ModelService; for
``runtime: vllm``, an LlmService and no training).

A model's store prefix is ``<store root>/models/<name>/``: the trainer publishes there and the server
follows that prefix's LATEST pointer (training/artifacts.py), so two models never share one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from components.config import GpuPool, ModelConfig
from components.config.llm import choose_pool
from components.lib import workload
from components.models import llm_import, lora_job
from components.models.llm_service import PROMETHEUS_POD_LABELS, LlmService, LlmServiceArgs
from components.models.model_service import ModelService, ModelServiceArgs
from components.models.training_job import TrainingJob, TrainingJobArgs
from components.services import gateway
from components.services.argo_rollouts import ArgoRollouts
from components.services.artifact_store import ArtifactStore
from components.services.gateway import EntryPoint
from components.services.keda import Keda
from components.services.kueue import Kueue

# Stacks made before the catalogue had one model, MNIST, whose parts were children of the Platform
# (`<platform>-training`, `<platform>-serving`). Aliases keep that model's state under the new names,
# so migrating a stack updates its resources in place instead of deleting and recreating them.
LEGACY_MODEL = "mnist"
LEGACY_PARTS = {"training": "mlplatform:training_job:TrainingJob", "serving": "mlplatform:model_service:ModelService"}
# Where an EKS stack records the version each model's pods serve (SSM Parameter Store, in the stack's
# account): ``<prefix><model>``, the value a version name or UNPINNED. See ``served_version``.
SERVED_VERSION_PREFIX = "/mlplatform/{stack}/served-version/"
UNPINNED = "champion"


@dataclass
class ModelArgs:
    model: str  # the catalogue name
    config: ModelConfig
    training_namespace: str
    serving_namespace: str
    training_image: pulumi.Input[str]  # by digest; an adapter fine-tuned here: the LoRA image (components/services/images.py)
    serving_image: pulumi.Input[str]
    store: ArtifactStore
    entry: EntryPoint  # the stack's entry point: the model's HTTPRoute attaches to it
    gpu_nodes: bool  # the stack has GPU pools (taint + label to target)
    zone_spread_required: bool = False  # prod: replicas must spread over zones
    pushgateway: str | None = None
    monitoring_namespace: str = "monitoring"
    monitoring_release: pulumi.Resource | None = None
    queue: Kueue | None = None  # the stack's Kueue: training runs wait in its queue
    keda: Keda | None = None  # scales the servers on their queues (None: no Prometheus, CPU HPA)
    rollouts: ArgoRollouts | None = None  # a new version reaches traffic through an analysed canary
    # runtime vllm: the pools it may run on, the Hugging Face token (a secret), the weights volumes' class
    gpu_pools: list[GpuPool] = field(default_factory=list)
    # What makes a GPU schedulable (node groups, autoscaler, device plugin): an LLM waits for it.
    gpu_ready: list[pulumi.Resource] = field(default_factory=list)
    hf_token: pulumi.Input[str] | None = None
    storage_class: str | None = None
    # The stack's whole catalogue: an adapter finds its base there, a vLLM base its adapters (docs/lora.md).
    catalogue: dict[str, ModelConfig] = field(default_factory=dict)
    # training_image's tag (registry/repo:ctx-<hash>, known at preview): a LoRA run's name hashes it.
    training_image_tag: pulumi.Input[str] | None = None


class Model(pulumi.ComponentResource):
    training: TrainingJob | None  # None for a vllm model: served, not trained here
    service: ModelService | LlmService | None  # None for a LoRA adapter: its base's vLLM serves it
    lora_job: pulumi.Resource | None = None  # an adapter's fine-tuning run (components/models/lora_job.py)

    def __init__(self, name: str, args: ModelArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlplatform:model:Model", name, None, opts)
        # Children keep the platform's providers and wait for the namespaces, as the Model does.
        child = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(parent=self))
        self.runtime = args.config.runtime
        self.adapter_of = args.config.adapter_of
        if self.adapter_of is not None:
            self.training, self.service, self.lora_job = None, None, build_adapter(name, args, child)
            self.url = pulumi.Output.concat(args.entry.base_url, f"/llm/{self.adapter_of}/v1")
        else:
            self.training, self.service = build(name, args, child)
            self.url = self.service.url
        self.register_outputs({"training_job": self.training.job_name if self.training else None, "url": self.url})

    def outputs(self) -> dict[str, pulumi.Input[str] | None]:
        """What the stack exports per model; `make smoke` reads it. No keys: they are ``apiKeys``."""
        if self.adapter_of is not None:  # its base's route; clients send `model: <adapter>`
            job = self.lora_job.metadata.name if self.lora_job is not None else None
            return {"runtime": self.runtime, "adapterOf": self.adapter_of, "url": self.url, "loraJob": job}
        if isinstance(self.service, LlmService):
            return {"runtime": self.runtime, "url": self.service.url}
        return {
            "runtime": self.runtime,
            # None where the model is received from another stack (models.<name>.source): nothing trains here.
            "trainingJob": self.training.job_name if self.training else None,
            "url": self.service.url,
        }


def api_keys(models: dict[str, Model], runtimes: tuple[str, ...] | None = None) -> dict[str, pulumi.Output] | None:
    """The stack output ``apiKeys``: per model with ``serving.apiKey`` (of ``runtimes``; None: every
    runtime), client name -> key (a Pulumi secret). Apart from ``models``: a secret inside it would
    make that whole output secret, and ``make smoke`` / ``train-wait`` read it without ``--show-secrets``."""
    keys = {
        name: m.service.api_keys
        for name, m in models.items()
        if m.service is not None and m.service.api_keys is not None and (runtimes is None or m.runtime in runtimes)
    }
    return keys or None


def llm_api_keys(models: dict[str, Model]) -> dict[str, pulumi.Output] | None:
    """The stack output ``llmApiKeys``: ``apiKeys``' LLMs, kept for scripts written before TF models' keys moved to the gateway."""
    return api_keys(models, ("vllm",))


def build(name: str, args: ModelArgs, opts: pulumi.ResourceOptions) -> tuple[TrainingJob | None, ModelService | LlmService]:
    """What a catalogue entry is made of, by runtime (``tensorflow``: a TrainingJob and the SavedModel
    server; ``vllm``: an open-weights LLM on vLLM, components/models/llm_service.py)."""
    if args.config.runtime == "vllm":
        return None, build_llm(name, args, opts)
    return build_training(name, args, opts), build_server(name, args, opts)


def build_training(name: str, args: ModelArgs, opts: pulumi.ResourceOptions) -> TrainingJob | None:
    cfg = args.config
    if cfg.source is not None:  # promotion, not retraining: a stack that receives the model (prod) trains nothing
        return None
    return TrainingJob(
        f"{name}-training",
        TrainingJobArgs(
            model=args.model,
            namespace=args.training_namespace,
            image=args.training_image,
            config=cfg.training,
            store=args.store,
            gpu_nodes=args.gpu_nodes,
            pushgateway=args.pushgateway,
            queue=args.queue,
            # Every run publishes a version only; the pipeline adopts it: the candidate where a canary
            # judges, the champion where none does (ops/deliver.py; its role may not move an alias).
            publish_as="candidate",
        ),
        opts=opts,
    )


def served_version(name: str, args: ModelArgs, opts: pulumi.ResourceOptions) -> str | None:
    """The version the pods serve: ``serving.version`` where the config says one, else (EKS) the one
    the last ``up`` of this stack served, read from the account at ``up`` time; None: the champion
    (LATEST), unpinned.

    The pipeline pins the version per run (``make pin`` / ``make deliver`` set ``serving.version`` in
    the CI workspace, never in git: the champion moves after a canary, not in a commit). Without the
    record, an ``up`` from a clean checkout (a person, another CI) rendered the pod template unpinned
    and started a canary of what already served (issue 29). So every ``up`` writes the version it
    rendered to an SSM parameter (a resource of this stack: destroy removes it) and an ``up`` whose
    config names none renders that one: the same pod template as the last pipeline run. Not in git
    (a bot commit per delivery, and a checkout of an older commit would roll back); not Pulumi ESC
    (Pulumi Cloud only; these stacks use a self-managed backend). A stack on an existing cluster
    (local) keeps its state and workspace on one machine: its config is the record."""
    pinned = recorded_version(args.model, args.config.serving.version, args, opts)
    if args.store.endpoint_url is not None:  # the in-cluster MinIO: not an AWS stack
        return pinned
    key = SERVED_VERSION_PREFIX.format(stack=pulumi.get_stack()) + args.model
    aws.ssm.Parameter(
        f"{name}-served-version",
        aws.ssm.ParameterArgs(
            name=key, type="String", insecure_value=pinned or UNPINNED, description=f"the version the {args.model} pods serve (last up)"
        ),
        opts=opts,
    )
    return pinned


def recorded_version(model: str, pinned: str | None, args: ModelArgs, opts: pulumi.ResourceOptions) -> str | None:
    """The version ``model``'s pods serve, read only (``served_version`` records it): ``pinned`` (its
    ``serving.version``), else on EKS the record of the last ``up``; None: unpinned (``serving.version:
    champion`` says so explicitly, whatever the record: ops/deliver.py unpins a failed first adapter so)."""
    if pinned == UNPINNED:
        return None
    if pinned is not None or args.store.endpoint_url is not None:
        return pinned
    key = SERVED_VERSION_PREFIX.format(stack=pulumi.get_stack()) + model
    # An invoke at program time (synchronous): the pod templates are plain values.
    found = aws.ssm.get_parameters_by_path(path=key.rsplit("/", 1)[0] + "/", opts=pulumi.InvokeOptions(parent=opts.parent))
    recorded = dict(zip(found.names, found.values, strict=True)).get(key)
    return None if recorded in (None, UNPINNED) else recorded


def adapter_versions(args: ModelArgs, opts: pulumi.ResourceOptions) -> dict[str, str | None]:
    """The stack's LoRA adapters of this vLLM model -> the version its pods serve (None: none yet)."""
    return {n: recorded_version(n, c.serving.version, args, opts) for n, c in sorted(args.catalogue.items()) if c.adapter_of == args.model}


def build_adapter(name: str, args: ModelArgs, opts: pulumi.ResourceOptions) -> pulumi.Resource | None:
    """A LoRA adapter (docs/lora.md): the version its base's pods serve, recorded like every model's
    (the base's LlmService reads it: ``adapter_versions``), and where this stack fine-tunes it the queued
    run (components/models/lora_job.py) on the version the base serves: none before the base has one."""
    cfg = args.config
    served_version(name, args, opts)
    if not lora_job.trains_here(cfg):
        return None  # received from another stack (promotion), or published by hand
    base = args.catalogue[cfg.adapter_of]
    base_version = recorded_version(cfg.adapter_of, base.serving.version, args, opts)
    if base_version is None or base.llm is None:
        pulumi.log.info(f"{args.model}: no fine-tuning run: base {cfg.adapter_of} serves no pinned version yet (make deliver pins one)")
        return None
    run = lora_job.Run(
        adapter=args.model,
        base=cfg.adapter_of,
        base_version=base_version,
        config=cfg.training,
        base_llm=base.llm,
        publish_as="candidate",  # a workload only publishes; the pipeline adopts (issue 24 item 8)
        pushgateway=args.pushgateway,
    )
    if args.training_image_tag is None:
        raise ValueError(f"{args.model}: a LoRA run needs the LoRA image's tag (ModelArgs.training_image_tag)")
    image = lora_job.Image(ref=args.training_image, tag=args.training_image_tag)
    return lora_job.attach(name, run, image, args.training_namespace, args.store, args.queue, opts.parent)


def build_server(name: str, args: ModelArgs, opts: pulumi.ResourceOptions) -> ModelService:
    version = served_version(name, args, opts)
    return ModelService(
        f"{name}-serving",
        ModelServiceArgs(
            model=args.model,
            namespace=args.serving_namespace,
            image=args.serving_image,
            config=args.config.serving.model_copy(update={"version": version}),
            store=args.store,
            entry=args.entry,
            monitoring_namespace=args.monitoring_namespace,
            zone_spread_required=args.zone_spread_required,
            monitoring_release=args.monitoring_release,
            keda=args.keda,
            rollouts=args.rollouts,
        ),
        opts=opts,
    )


def build_llm(name: str, args: ModelArgs, opts: pulumi.ResourceOptions) -> LlmService:
    """The LLM's weights import (where this stack imports: not where the model is received from
    another stack, e.g. prod, which gets its versions by promotion only and never reaches Hugging
    Face; components/models/llm_import.py), then the LLM on the pool that fits it, serving the pinned
    registry version, its OpenAI routes on the stack's entry point (restricted to the model's
    allowedCidrs like every route), reachable only from the entry point's proxies and Prometheus."""
    cfg, entry = args.config, args.entry
    assert cfg.llm is not None  # config validation requires it for runtime vllm
    # Not awaited and not a dependency of the Rollout: its pods wait (the weights init container)
    # until the import and the first delivery made a champion.
    adapters = adapter_versions(args, opts)
    llm_import.for_model(name, args, opts, adapters)  # its fit check counts the adapters' LoRA buffers
    pool = choose_pool(cfg.llm, args.gpu_pools) if args.gpu_pools else None
    return LlmService(
        f"{name}-llm",
        LlmServiceArgs(
            model=args.model,
            namespace=args.serving_namespace,
            config=cfg.llm,
            store=args.store,
            pool_name=pool.name if pool else None,
            storage_class=args.storage_class,
            gateway={
                "group": gateway.GATEWAY_API,
                "kind": "Gateway",
                "namespace": entry.namespace,
                "name": gateway.GATEWAY_NAME,
                "sectionName": entry.listener,
            },
            gateway_url=entry.base_url,
            route_opts=entry.route_opts,
            allowed_cidrs=list(cfg.serving.allowed_cidrs),
            api_key=cfg.serving.api_key,
            # The entry point's proxies and Prometheus' own pods (it scrapes vLLM's /metrics, which is
            # on the API port: vLLM serves both on --port), not the rest of the monitoring namespace.
            ingress_peers=[
                workload.pods_peer(entry.namespace, gateway.PROXY_LABELS),
                workload.pods_peer(args.monitoring_namespace, PROMETHEUS_POD_LABELS),
            ],
            keda=args.keda,
            monitoring_release=args.monitoring_release,
            monitoring_namespace=args.monitoring_namespace,
            gpu_ready=list(args.gpu_ready),
            # The analysed canary (components/lib/llm_canary.py): how many replicas the pool holds
            # at its max decides whether the canary pod is added or takes a stable replica's GPU.
            rollouts=args.rollouts,
            canary=cfg.serving.canary,
            pool_replicas=pool.max * (pool.gpus_per_node // cfg.llm.gpus) if pool else None,
            pool_instance_types=tuple(pool.instance_types) if pool else (),
            version=served_version(name, args, opts),
            golden_image=args.serving_image,
            adapters=adapters,
        ),
        opts=opts,
    )


def legacy_aliases(platform_name: str) -> None:
    """Alias every resource of the legacy model to its pre-catalogue URN (see LEGACY_MODEL).

    A stack transformation, registered before the Platform exists (a resource copies its parent's
    transformations when it is made): the IRSA roles of the model's ServiceAccounts are children of
    the ArtifactStore, outside the Model's subtree, and were renamed too.
    """
    new_prefix, old_prefix = f"{platform_name}-{LEGACY_MODEL}-", f"{platform_name}-"
    platform_urn = f"urn:pulumi:{pulumi.get_stack()}::{pulumi.get_project()}::mlplatform:platform:Platform"

    def alias(args: pulumi.ResourceTransformationArgs) -> pulumi.ResourceTransformationResult | None:
        part = next((p for p in LEGACY_PARTS if args.name == f"{new_prefix}{p}" or args.name.startswith(f"{new_prefix}{p}-")), None)
        if part is None:
            return None
        old_name = old_prefix + args.name.removeprefix(new_prefix)
        if args.name == f"{new_prefix}{part}":
            old = pulumi.Alias(name=old_name, parent=f"{platform_urn}::{platform_name}")  # the part itself: was the Platform's child
        elif isinstance(args.opts.parent, (TrainingJob, ModelService)):
            old = pulumi.Alias(name=old_name, parent=f"{platform_urn}${LEGACY_PARTS[part]}::{old_prefix}{part}")
        else:
            old = pulumi.Alias(name=old_name)  # same parent as before (the store's IRSA roles)
        return pulumi.ResourceTransformationResult(
            args.props, pulumi.ResourceOptions.merge(args.opts, pulumi.ResourceOptions(aliases=[old]))
        )

    pulumi.runtime.register_stack_transformation(alias)
