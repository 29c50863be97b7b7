"""Platform: composes every component of one stack from its validated config: cluster -> shared services -> models."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from components.cluster.ci_deploy_role import CiDeployRole, CiDeployRoleArgs, bound_roles, deploy_boundary
from components.cluster.cluster import Cluster, ClusterArgs
from components.cluster.cluster_autoscaler import ClusterAutoscaler, ClusterAutoscalerArgs
from components.cluster.gpu_addons import GpuAddons, GpuAddonsArgs
from components.cluster.gpu_pools import GpuNodePool, GpuNodePoolArgs
from components.cluster.namespaces import PlatformNamespace, PlatformNamespaceArgs
from components.config import ModelConfig, Settings, serving_reserved_gpus, stack_file
from components.lib.keda_specs import NAMESPACE as KEDA_NAMESPACE
from components.lib.network import NAMESPACES
from components.models import llm_import, lora_job
from components.models.model import LEGACY_MODEL, Model, ModelArgs, legacy_aliases
from components.services.argo_rollouts import ArgoRollouts, ArgoRolloutsArgs
from components.services.artifact_store import ArtifactStore, ArtifactStoreArgs, store_receivers
from components.services.gateway import EntryPoint, EntryPointArgs
from components.services.images import LORA_IMAGE, Images, ImagesArgs, model_image
from components.services.jenkins import Jenkins, JenkinsArgs
from components.services.keda import Keda, KedaArgs
from components.services.kueue import Kueue, KueueArgs, QueueQuota
from components.services.model_promoter import ModelPromoter, ModelPromoterArgs, account_id
from components.services.monitoring import Monitoring, MonitoringArgs

# Environments whose model store and image repositories hold what runs in production: a destroy
# leaves them in the account (retain_on_delete) instead of stopping half-way on a non-empty bucket
# or repository; prod's are also protected, so `pulumi destroy` is refused until they are unprotected.
KEEPS_DATA = ("staging", "prod")


def after(dependencies: list[pulumi.Resource]) -> pulumi.ResourceTransformation:
    """A transformation that makes every Kubernetes object it reaches depend on ``dependencies``."""

    def transform(args: pulumi.ResourceTransformationArgs) -> pulumi.ResourceTransformationResult | None:
        if not args.type_.startswith("kubernetes:") or any(d is args.resource for d in dependencies):
            return None
        return pulumi.ResourceTransformationResult(
            args.props, pulumi.ResourceOptions.merge(args.opts, pulumi.ResourceOptions(depends_on=dependencies))
        )

    return transform


class Platform(pulumi.ComponentResource):
    """One stack: the cluster, then the services every model shares, then one Model per catalogue entry."""

    cluster: Cluster
    images: Images
    namespaces: dict[str, PlatformNamespace]
    gpu_pools: list[GpuNodePool]
    models: dict[str, Model]

    def __init__(self, name: str, settings: Settings, opts: pulumi.ResourceOptions | None = None):
        if LEGACY_MODEL in settings.config.models:
            legacy_aliases(name)
        super().__init__("mlplatform:platform:Platform", name, None, opts)
        self.name, self.settings, cfg = name, settings, settings.config
        self.cluster_name = f"{name}-{settings.stack}"
        self.tags = {"mlplatform.io/stack": settings.stack, "mlplatform.io/environment": cfg.environment, "managed-by": "pulumi"}
        self._cluster()
        self._shared_services()
        self._models()
        self.register_outputs({"cluster_name": self.cluster_name, "images": self.images.refs, "model_store": self.store.uri})

    def _cluster(self) -> None:
        """The cluster and its providers, the CI deploy role, the platform namespaces and the GPU node pools."""
        name, cfg = self.name, self.settings.config
        self.providers: list[pulumi.ProviderResource] = []
        if cfg.is_eks:
            # One explicit AWS provider, region from the stack config: no ambient aws:region needed. Pinned
            # to the stack's account: another environment's credentials fail before anything is touched.
            pin = [cfg.cluster.account_id] if cfg.cluster.account_id else None
            self.providers.append(
                aws.Provider(
                    f"{name}-aws",
                    # Every AWS resource carries the stack's tags, those a component forgets too (the
                    # deploy boundary and the stores tell stacks apart by them: docs/security.md).
                    aws.ProviderArgs(
                        region=cfg.cluster.region, allowed_account_ids=pin, default_tags=aws.ProviderDefaultTagsArgs(tags=self.tags)
                    ),
                    opts=pulumi.ResourceOptions(parent=self),
                )
            )
        self.aws_opts = pulumi.ResourceOptions(parent=self, providers=self.providers)
        # The CI deploy role's boundary first: every role made from here on carries it (docs/security.md).
        self.deploy_boundary, self.role_bounds = None, []
        if cfg.is_eks and cfg.ci.enabled:
            self.deploy_boundary = deploy_boundary(f"{name}-ci-deploy-boundary", self.settings.stack, self.tags, self.aws_opts)
            self.role_bounds = [bound_roles(self.deploy_boundary)]
            self.aws_opts = pulumi.ResourceOptions.merge(self.aws_opts, pulumi.ResourceOptions(transformations=self.role_bounds))
        self.cluster = Cluster(
            f"{name}-cluster",
            ClusterArgs(
                cluster_name=self.cluster_name,
                config=cfg.cluster,
                kubernetes_version=cfg.kubernetes_version,
                high_availability_nat=cfg.environment == "prod",
                tags=self.tags,
            ),
            # `protect` (mlplatform:protect, default on prod) is inherited by every child: the VPC,
            # the control plane, the system nodes. Lifted by setting it false and running `up`.
            opts=pulumi.ResourceOptions.merge(self.aws_opts, pulumi.ResourceOptions(protect=cfg.protected)),
        )
        # Every Kubernetes object goes through the cluster's provider, never an ambient kubeconfig.
        self.k8s_opts = pulumi.ResourceOptions(
            parent=self, providers=[*self.providers, self.cluster.provider], transformations=self.role_bounds
        )
        # GitHub Actions / GitLab CI deploy this stack through its own role (README "CI/CD").
        self.ci_role: CiDeployRole | None = None
        if cfg.is_eks and cfg.ci.enabled:
            self.ci_role = CiDeployRole(
                f"{name}-ci-deploy",
                CiDeployRoleArgs(
                    stack=self.settings.stack, config=cfg.ci, cluster_name=self.cluster_name, tags=self.tags, boundary=self.deploy_boundary
                ),
                opts=pulumi.ResourceOptions.merge(self.aws_opts, pulumi.ResourceOptions(depends_on=[self.cluster])),
            )
            # The CI role's access entry is how CI reaches the cluster: every Kubernetes object waits
            # for it, so a destroy run by that role deletes them all before its own access goes.
            self.k8s_opts = pulumi.ResourceOptions.merge(self.k8s_opts, pulumi.ResourceOptions(transformations=[after([self.ci_role])]))
        self._namespaces()
        self._gpu_pools()

    def _namespaces(self) -> None:
        """The platform namespaces, each with its Pod Security level; ``in_namespaces`` waits for all of them."""
        name, cfg = self.name, self.settings.config
        # A namespace only for what runs there: no empty privileged/baseline namespaces where
        # monitoring or Jenkins is off (ephemeral PR stacks run without Jenkins).
        wanted = {
            "monitoring": cfg.monitoring.enabled,
            "node-exporter": cfg.monitoring.enabled,
            "jenkins": cfg.jenkins.enabled,
            "builds": cfg.jenkins.enabled,
        }
        self.namespaces = {
            role: PlatformNamespace(
                f"{name}-ns-{role}",
                PlatformNamespaceArgs(namespace=ns, environment=cfg.environment, pod_security=level),
                opts=self.k8s_opts,
            )
            for role, (ns, level) in NAMESPACES.items()
            if wanted.get(role, True)
        }
        self.ns = {role: n.name for role, n in self.namespaces.items()}
        # A component's depends_on does not reach its children (the SDK registers each child with its
        # own options), so every Kubernetes object under these components would race its Namespace
        # on the first `up` (a Helm release into a missing namespace fails at once). A transformation
        # is inherited by every descendant: each Kubernetes object gets the Namespaces as
        # dependencies, which also makes destroy delete it before them (tools/convergence.py rule g).
        namespaces = [n.namespace for n in self.namespaces.values()]
        self.in_namespaces = pulumi.ResourceOptions.merge(
            self.k8s_opts, pulumi.ResourceOptions(depends_on=list(self.namespaces.values()), transformations=[after(namespaces)])
        )

    def _gpu_pools(self) -> None:
        """EKS only: one node group per configured GPU pool, scaled from zero by the cluster autoscaler."""
        name, cfg = self.name, self.settings.config
        self.gpu_pools = []
        # What an LLM replica needs before it can be scheduled (components/models/llm_service.py).
        self.gpu_ready: list[pulumi.Resource] = []
        if not (cfg.is_eks and cfg.gpu_pools):
            return
        self.gpu_pools = [
            GpuNodePool(
                f"{name}-gpu-{pool.name}",
                GpuNodePoolArgs(
                    pool=pool,
                    cluster_name=self.cluster_name,
                    node_role_arn=self.cluster.node_role_arn,
                    subnet_ids=self.cluster.private_subnet_ids,
                    tags=self.tags,
                ),
                opts=pulumi.ResourceOptions(parent=self, providers=self.providers, depends_on=[self.cluster]),
            )
            for pool in cfg.gpu_pools
        ]
        self.gpu_ready = [*self.gpu_pools]
        autoscaler = ClusterAutoscaler(
            f"{name}-autoscaler",
            ClusterAutoscalerArgs(
                cluster_name=self.cluster_name,
                region=cfg.cluster.region or "",
                oidc_provider_arn=self.cluster.oidc_provider_arn,
                oidc_provider_url=self.cluster.oidc_provider_url,
                kubernetes_version=cfg.kubernetes_version,
                tags=self.tags,
            ),
            opts=self.k8s_opts,
        )
        self.gpu_ready.append(autoscaler)

    def _shared_services(self) -> None:
        """What every model uses, in dependency order: monitoring first (the others scrape into it or
        read from it), the controllers the workloads run under, the artifacts, the entry point, CI/CD."""
        self._monitoring()
        self._workload_controllers()
        self._artifacts()
        self._entry_point()
        self._jenkins()

    def _monitoring(self) -> None:
        """Prometheus, Alertmanager, Grafana and the Pushgateway, where the stack enables monitoring."""
        name, cfg, ns = self.name, self.settings.config, self.ns
        self.monitoring: Monitoring | None = None
        if cfg.monitoring.enabled:
            self.monitoring = Monitoring(
                f"{name}-monitoring",
                MonitoringArgs(
                    namespace=ns["monitoring"],
                    config=cfg.monitoring,
                    alerting=cfg.alerting,
                    secrets=self.settings.secrets,
                    client_namespaces=[ns["training"]],
                    storage_class=self.cluster.storage_class,
                    node_exporter_namespace=ns["node-exporter"],
                    # KEDA (created next) reads the model servers' queues from Prometheus
                    query_namespaces=(KEDA_NAMESPACE,) if cfg.models else (),
                ),
                opts=self.in_namespaces,
            )
        self.monitoring_release = self.monitoring.release if self.monitoring else None

    def _workload_controllers(self) -> None:
        """What the models' pods run under: KEDA scales the servers, Argo Rollouts delivers their
        versions, the GPU add-ons expose the GPUs, Kueue queues the training runs."""
        name, cfg, ns = self.name, self.settings.config, self.ns
        # KEDA scales every model server on its queue, read from this Prometheus; without monitoring
        # the TF servers keep a CPU HPA (and config validation refuses vllm models).
        self.keda: Keda | None = None
        if cfg.monitoring.enabled and cfg.models:
            self.keda = Keda(
                f"{name}-keda", KedaArgs(environment=cfg.environment, prometheus_namespace=ns["monitoring"]), opts=self.k8s_opts
            )
        # Argo Rollouts: every TF model server's new version goes through a canary analysed in this
        # Prometheus (README "Model delivery"); without monitoring there is nothing to analyse with.
        self.rollouts: ArgoRollouts | None = None
        if cfg.monitoring.enabled and cfg.models:
            self.rollouts = ArgoRollouts(
                f"{name}-rollouts",
                ArgoRolloutsArgs(
                    environment=cfg.environment, prometheus_namespace=ns["monitoring"], monitoring_release=self.monitoring_release
                ),
                # its Role in ml-serving waits for that namespace
                opts=self.in_namespaces,
            )
        if cfg.has_gpus:
            addons = GpuAddons(
                f"{name}-gpu-addons",
                GpuAddonsArgs(monitoring_release=self.monitoring_release, profiling_metrics=cfg.monitoring.gpu_profiling_metrics),
                opts=self.k8s_opts,
            )
            self.gpu_ready.append(addons.device_plugin)
        # Every training run waits in the stack's queue for its share of the GPU pools (README "Training at scale").
        self.queue = Kueue(
            f"{name}-queue",
            KueueArgs(
                namespace=ns["queue"],
                training_namespace=ns["training"],
                gpu_pools=cfg.gpu_pools,
                quota=QueueQuota(gpus=cfg.queue.gpu_quota, cpu=cfg.queue.cpu, memory=cfg.queue.memory, reserved=serving_reserved_gpus(cfg)),
                monitoring_release=self.monitoring_release,
            ),
            opts=self.in_namespaces,
        )

    def _artifacts(self) -> None:
        """The images, the model store, and (on a stack that receives models) the promoter identity."""
        name, cfg, ns = self.name, self.settings.config, self.ns
        self.images = Images(
            f"{name}-images",
            ImagesArgs(
                registry=cfg.registry,
                repo_prefix=self.cluster_name,
                force_delete=cfg.environment in ("ephemeral", "local", "dev"),
                retain=cfg.environment in KEEPS_DATA,
                protect=cfg.protected,
                tags=self.tags,
                # A model with its own training code gets its own image, built FROM the training image.
                model_code={
                    model: m.training.code
                    for model, m in cfg.models.items()
                    if m.runtime == "tensorflow" and m.source is None and m.training.code
                },
                # An adapter fine-tuned here runs the LoRA image: the pinned vLLM image plus PEFT.
                lora_base=llm_import.IMAGE if any(lora_job.trains_here(m) for m in cfg.models.values()) else None,
            ),
            opts=self.aws_opts,
        )
        self.store = ArtifactStore(
            f"{name}-store",
            ArtifactStoreArgs(
                eks=cfg.is_eks,
                namespace=ns["training"],
                client_namespaces=[ns["training"], ns["serving"]],
                force_destroy=cfg.environment in ("ephemeral", "dev"),
                retain=cfg.environment in KEEPS_DATA,
                protect=cfg.protected,
                oidc_provider_arn=self.cluster.oidc_provider_arn,
                oidc_provider_url=self.cluster.oidc_provider_url,
                tags=self.tags,
                stack=self.settings.stack,
                account_id=cfg.cluster.account_id,
                receivers=store_receivers(cfg.models),
            ),
            opts=self.in_namespaces,
        )
        self._promoter()

    def _promoter(self) -> None:
        """The identity that copies received models into this store, least privilege (components/services/model_promoter.py)."""
        cfg = self.settings.config
        self.account_id = account_id(self.providers[0], self, cfg.cluster.account_id) if cfg.is_eks else None
        # Every runtime: an LLM's weights are promoted like any version (same registry layout, same copy).
        received = {m: e.source for m, e in cfg.models.items() if e.source}
        self.promoter: ModelPromoter | None = None
        if cfg.is_eks and received:
            self.promoter = ModelPromoter(
                f"{self.name}-model-promoter",
                ModelPromoterArgs(
                    stack=self.settings.stack,
                    stack_file=stack_file(self.settings.stack),
                    received=received,
                    own_bucket_arn=self.store.bucket_arn,
                    account_id=self.account_id,
                    deploy_role_arn=self.ci_role.arn if self.ci_role else None,
                    tags=self.tags,
                ),
                opts=self.aws_opts,
            )

    def _entry_point(self) -> None:
        """Every model's one way in. The load balancer admits the union of the models' networks when
        every model is restricted; each route's SecurityPolicy narrows it to that model's own."""
        cfg, ns = self.settings.config, self.ns
        # an adapter has no route of its own (its base's serves it): not one of the entry point's sources
        routed = [m for m in cfg.models.values() if m.adapter_of is None]
        restricted = bool(routed) and all(m.serving.allowed_cidrs for m in routed)
        self.entry = EntryPoint(
            f"{self.name}-entry",
            EntryPointArgs(
                namespace=ns["gateway"],
                serving_namespace=ns["serving"],
                config=cfg.gateway,
                eks=cfg.is_eks,
                proxy_replicas=2 if cfg.environment == "prod" else 1,
                source_ranges=[c for m in routed for c in m.serving.allowed_cidrs] if restricted else [],
            ),
            opts=self.in_namespaces,
        )

    def _jenkins(self) -> None:
        """The CI/CD controller, on the stack whose config enables it."""
        cfg, ns = self.settings.config, self.ns
        self.jenkins: Jenkins | None = None
        if cfg.jenkins.enabled:
            self.jenkins = Jenkins(
                f"{self.name}-jenkins",
                JenkinsArgs(
                    namespace=ns["jenkins"],
                    build_namespace=ns["builds"],
                    config=cfg.jenkins,
                    monitoring_release=self.monitoring_release,
                    credentials=self.settings.secrets.get("jenkinsCredentials"),
                ),
                opts=self.in_namespaces,
            )

    @staticmethod
    def _training_image(model: str, entry: ModelConfig) -> str:
        """The image a catalogue entry trains with: an adapter fine-tuned here the LoRA image, a model with
        its own code its own (both fall back to the training image where the stack builds none)."""
        return LORA_IMAGE if lora_job.trains_here(entry) else model_image(model)

    def _models(self) -> None:
        """One Model per catalogue entry, in catalogue order."""
        cfg = self.settings.config
        self.models = {
            model: Model(
                f"{self.name}-{model}",
                ModelArgs(
                    model=model,
                    config=entry,
                    training_namespace=self.ns["training"],
                    serving_namespace=self.ns["serving"],
                    training_image=self.images.refs.get(self._training_image(model, entry), self.images.refs["training"]),
                    training_image_tag=self.images.tags.get(self._training_image(model, entry), self.images.tags["training"]),
                    serving_image=self.images.refs["serving"],
                    store=self.store,
                    entry=self.entry,
                    gpu_nodes=bool(cfg.gpu_pools),
                    zone_spread_required=cfg.environment == "prod",
                    monitoring_namespace=NAMESPACES["monitoring"][0],
                    pushgateway=self.monitoring.pushgateway_url if self.monitoring else None,
                    monitoring_release=self.monitoring_release,
                    queue=self.queue,
                    keda=self.keda,
                    rollouts=self.rollouts,
                    gpu_pools=list(cfg.gpu_pools),
                    hf_token=self.settings.secrets.get("hfToken"),
                    storage_class=self.cluster.storage_class,
                    gpu_ready=self.gpu_ready,
                    catalogue=dict(cfg.models),
                ),
                opts=self.in_namespaces,
            )
            for model, entry in cfg.models.items()
        }
