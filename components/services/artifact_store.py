"""ArtifactStore: where trained models are published and served from.

EKS stacks: an S3 bucket (versioned, encrypted with the store's own customer-managed KMS key, public
access blocked, old versions expired) that workloads reach through IRSA roles scoped to it. Its bucket
and key policies (components/lib/promotion_iam.py) let the receiving stacks' promoter roles read
their models' folders (``models.<name>.receivers``, normally in other accounts), and refuse every
principal tagged with another stack (where environments share an account). Objects written before the
key existed stay under ``aws/s3``, which another account cannot use: docs/security.md says how to
re-encrypt them. The local stack has no cloud account: a single
MinIO (S3 API) in the cluster, its credentials generated and kept as Kubernetes Secrets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
import pulumi_random as random

from components.config.schema import ModelConfig
from components.lib import iam, promotion_iam
from components.lib.security import container_security, pod_security

MINIO_IMAGE = "quay.io/minio/minio:RELEASE.2025-09-07T16-13-09Z"
MINIO_PORT = 9000
MINIO_LABELS = {"app.kubernetes.io/name": "minio", "app.kubernetes.io/part-of": "mlplatform"}
BUCKET = "models"
CREDENTIALS_SECRET = "model-store-credentials"


@dataclass
class ArtifactStoreArgs:
    eks: bool
    namespace: str  # where MinIO runs (local)
    client_namespaces: list[str]  # namespaces whose pods use the store
    force_destroy: bool = False
    # staging/prod: the bucket (every model version) is retained on destroy and, with ``protect``, an
    # accidental destroy is refused (README "Destroy prod on purpose").
    retain: bool = False
    protect: bool = False
    oidc_provider_arn: pulumi.Input[str] | None = None
    oidc_provider_url: pulumi.Input[str] | None = None
    tags: dict[str, str] = field(default_factory=dict)
    stack: str = ""
    account_id: str | None = None  # cluster.accountId; None: the provider's credentials
    receivers: dict[str, list[str]] = field(default_factory=dict)  # promoter role ARN -> models (store_receivers)


def store_receivers(models: dict[str, ModelConfig]) -> dict[str, list[str]]:
    """``models.<name>.receivers`` as the policies need them: receiving promoter role ARN -> models."""
    out: dict[str, list[str]] = {}
    for name, model in sorted(models.items()):
        for r in model.receivers:
            out.setdefault(promotion_iam.role_arn(r.account, r.stack), []).append(name)
    return out


class ArtifactStore(pulumi.ComponentResource):
    """``uri`` is the store root (s3://bucket); ``endpoint_url`` is set for the in-cluster MinIO."""

    uri: pulumi.Output[str]
    endpoint_url: str | None
    bucket_arn: pulumi.Output[str] | None
    key_arn: pulumi.Output[str] | None

    def __init__(self, name: str, args: ArtifactStoreArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlplatform:artifact_store:ArtifactStore", name, None, opts)
        self._args = args
        if args.eks:
            self._s3(name, args)
        else:
            self._minio(name, args)
        self.register_outputs({"uri": self.uri})

    def _s3(self, name: str, args: ArtifactStoreArgs) -> None:
        """The bucket: public access blocked, versioned, encrypted with its key, old versions expired."""
        child = pulumi.ResourceOptions(parent=self)
        keep = pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(retain_on_delete=args.retain, protect=args.protect))
        bucket = aws.s3.Bucket(f"{name}-bucket", aws.s3.BucketArgs(force_destroy=args.force_destroy, tags=args.tags), opts=keep)
        key = self._key(name, args, keep)
        block = aws.s3.BucketPublicAccessBlock(
            f"{name}-public-access-block",
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=child,
        )
        # Keyword arguments throughout: some aws.s3.*Args names are shadowed by legacy nested types.
        aws.s3.BucketVersioning(
            f"{name}-versioning",
            bucket=bucket.id,
            versioning_configuration=aws.s3.BucketVersioningVersioningConfigurationArgs(status="Enabled"),
            opts=child,
        )
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-encryption",
            bucket=bucket.id,
            rules=[
                aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                    apply_server_side_encryption_by_default=aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                        sse_algorithm="aws:kms", kms_master_key_id=key.arn
                    ),
                    bucket_key_enabled=True,
                )
            ],
            opts=child,
        )
        self._s3_lifecycle(name, bucket, child)
        aws.s3.BucketPolicy(
            f"{name}-policy",
            bucket=bucket.id,
            policy=pulumi.Output.all(bucket.arn, key.arn).apply(
                lambda a: promotion_iam.store_bucket_policy(a[0], args.stack, args.receivers, a[1])
            ),
            # After the public access block: S3 checks a new policy against it.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[block]),
        )
        self.uri = pulumi.Output.concat("s3://", bucket.bucket)
        self.bucket_arn = bucket.arn
        self.key_arn = key.arn
        self.endpoint_url = None

    def _key(self, name: str, args: ArtifactStoreArgs, keep: pulumi.ResourceOptions) -> aws.kms.Key:
        """The store's own key (kept like the bucket: without it the models cannot be read). Its policy
        lets the receivers' promoter roles decrypt through S3; this account's IAM decides the rest."""
        account = (
            pulumi.Output.from_input(args.account_id)
            if args.account_id
            else aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(parent=self)).account_id
        )
        key = aws.kms.Key(
            f"{name}-key",
            aws.kms.KeyArgs(
                description=f"mlplatform {args.stack} model store",
                enable_key_rotation=True,
                deletion_window_in_days=30,
                policy=account.apply(lambda a: promotion_iam.store_key_policy(a, sorted(args.receivers))),
                tags=args.tags,
            ),
            opts=keep,
        )
        aws.kms.Alias(
            f"{name}-key-alias",
            aws.kms.AliasArgs(name=f"alias/mlplatform-{args.stack}-store", target_key_id=key.key_id),
            opts=pulumi.ResourceOptions(parent=self),
        )
        return key

    def _s3_lifecycle(self, name: str, bucket: aws.s3.Bucket, child: pulumi.ResourceOptions) -> None:
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-lifecycle",
            bucket=bucket.id,
            rules=[
                # Checkpoints are only useful to resume a run; old model versions stay (the
                # bucket is versioned) but overwritten/deleted objects expire after 30 days.
                aws.s3.BucketLifecycleConfigurationRuleArgs(
                    id="expire-checkpoints",
                    status="Enabled",
                    filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix="checkpoints/"),
                    expiration=aws.s3.BucketLifecycleConfigurationRuleExpirationArgs(days=14),
                ),
                aws.s3.BucketLifecycleConfigurationRuleArgs(
                    id="expire-noncurrent",
                    status="Enabled",
                    filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix=""),
                    noncurrent_version_expiration=aws.s3.BucketLifecycleConfigurationRuleNoncurrentVersionExpirationArgs(
                        noncurrent_days=30
                    ),
                    abort_incomplete_multipart_upload=aws.s3.BucketLifecycleConfigurationRuleAbortIncompleteMultipartUploadArgs(
                        days_after_initiation=2
                    ),
                ),
            ],
            opts=child,
        )

    def irsa_role(
        self,
        name: str,
        namespace: str,
        service_account: str,
        write: bool,
        prefixes: list[str] | None = None,
        read_all: bool = False,
        read_prefixes: list[str] | None = None,
    ) -> pulumi.Output[str] | None:
        """An IAM role that only ``namespace/service_account`` can assume, with read (or read-write)
        access to this bucket only, under ``prefixes`` when given, reading ``read_prefixes`` too
        (iam.s3_bucket_policy). None on the local stack (MinIO credentials instead)."""
        args = self._args
        if not args.eks:
            return None
        child = pulumi.ResourceOptions(parent=self)
        role = aws.iam.Role(
            f"{name}-role",
            aws.iam.RoleArgs(
                assume_role_policy=pulumi.Output.all(args.oidc_provider_arn, args.oidc_provider_url).apply(
                    lambda a: iam.irsa_trust_policy(a[0], a[1], namespace, service_account)
                ),
                tags=args.tags,
            ),
            opts=child,
        )
        aws.iam.RolePolicy(
            f"{name}-policy",
            aws.iam.RolePolicyArgs(
                role=role.id,
                policy=pulumi.Output.all(self.bucket_arn, self.key_arn).apply(
                    lambda a: iam.s3_bucket_policy(a[0], write, prefixes, read_all, a[1], read_prefixes)
                ),
            ),
            opts=child,
        )
        return role.arn

    def _minio(self, name: str, args: ArtifactStoreArgs) -> None:
        """MinIO with generated credentials, one volume, a Service, reachable from the client namespaces only."""
        child = pulumi.ResourceOptions(parent=self)
        password = random.RandomPassword(f"{name}-password", random.RandomPasswordArgs(length=32, special=False), opts=child)
        creds = {"AWS_ACCESS_KEY_ID": "mlplatform", "AWS_SECRET_ACCESS_KEY": pulumi.Output.secret(password.result)}
        # One Secret per namespace that uses the store (a Secret cannot be mounted across namespaces).
        for ns in sorted({args.namespace, *args.client_namespaces}):
            k8s.core.v1.Secret(
                f"{name}-credentials-{ns}",
                metadata=k8s.meta.v1.ObjectMetaArgs(name=CREDENTIALS_SECRET, namespace=ns),
                string_data=creds,
                opts=child,
            )
        k8s.core.v1.PersistentVolumeClaim(
            f"{name}-data",
            metadata=k8s.meta.v1.ObjectMetaArgs(name="minio-data", namespace=args.namespace),
            spec=k8s.core.v1.PersistentVolumeClaimSpecArgs(access_modes=["ReadWriteOnce"], resources={"requests": {"storage": "10Gi"}}),
            opts=child,
        )
        minio = self._minio_deployment(name, args.namespace, child)
        k8s.core.v1.Service(
            f"{name}-service",
            metadata=k8s.meta.v1.ObjectMetaArgs(name="minio", namespace=args.namespace, labels=MINIO_LABELS),
            spec=k8s.core.v1.ServiceSpecArgs(
                selector=MINIO_LABELS, ports=[k8s.core.v1.ServicePortArgs(name="s3", port=MINIO_PORT, target_port="s3")]
            ),
            # Awaited until a ready pod backs it: after the Deployment (awaited ready), not racing it.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[minio]),
        )
        self._minio_network_policy(name, args, child)
        self.uri = pulumi.Output.from_input(f"s3://{BUCKET}")
        self.endpoint_url = f"http://minio.{args.namespace}.svc.cluster.local:{MINIO_PORT}"
        self.bucket_arn = None
        self.key_arn = None

    def _minio_deployment(self, name: str, namespace: str, child: pulumi.ResourceOptions) -> k8s.apps.v1.Deployment:
        """One MinIO pod on its volume, root credentials from the namespace's store Secret."""
        return k8s.apps.v1.Deployment(
            f"{name}-minio",
            metadata=k8s.meta.v1.ObjectMetaArgs(name="minio", namespace=namespace, labels=MINIO_LABELS),
            spec=k8s.apps.v1.DeploymentSpecArgs(
                replicas=1,
                strategy={"type": "Recreate"},  # one RWO volume: never two pods at once
                selector={"matchLabels": MINIO_LABELS},
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata={"labels": MINIO_LABELS},
                    spec=k8s.core.v1.PodSpecArgs(
                        security_context=pod_security(uid=1000),
                        automount_service_account_token=False,
                        containers=[
                            k8s.core.v1.ContainerArgs(
                                name="minio",
                                image=MINIO_IMAGE,
                                # The bucket exists from the start: the data dir's sub-directory is a bucket.
                                command=["sh", "-c", f"mkdir -p /data/{BUCKET} && exec minio server /data --address :{MINIO_PORT}"],
                                env=[
                                    k8s.core.v1.EnvVarArgs(name="MINIO_ROOT_USER", value_from=_secret_ref("AWS_ACCESS_KEY_ID")),
                                    k8s.core.v1.EnvVarArgs(name="MINIO_ROOT_PASSWORD", value_from=_secret_ref("AWS_SECRET_ACCESS_KEY")),
                                ],
                                ports=[k8s.core.v1.ContainerPortArgs(name="s3", container_port=MINIO_PORT)],
                                readiness_probe={"httpGet": {"path": "/minio/health/ready", "port": MINIO_PORT}},
                                liveness_probe={"httpGet": {"path": "/minio/health/live", "port": MINIO_PORT}},
                                resources={"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
                                security_context=container_security(),
                                volume_mounts=[
                                    k8s.core.v1.VolumeMountArgs(name="data", mount_path="/data"),
                                    k8s.core.v1.VolumeMountArgs(name="tmp", mount_path="/tmp"),
                                ],
                            )
                        ],
                        volumes=[
                            k8s.core.v1.VolumeArgs(name="data", persistent_volume_claim={"claimName": "minio-data"}),
                            k8s.core.v1.VolumeArgs(name="tmp", empty_dir={}),
                        ],
                    ),
                ),
            ),
            opts=child,
        )

    def _minio_network_policy(self, name: str, args: ArtifactStoreArgs, child: pulumi.ResourceOptions) -> None:
        """Only the client namespaces reach MinIO."""
        k8s.networking.v1.NetworkPolicy(
            f"{name}-allow-clients",
            metadata=k8s.meta.v1.ObjectMetaArgs(name="minio-allow-clients", namespace=args.namespace),
            spec=k8s.networking.v1.NetworkPolicySpecArgs(
                pod_selector={"matchLabels": MINIO_LABELS},
                policy_types=["Ingress"],
                ingress=[
                    k8s.networking.v1.NetworkPolicyIngressRuleArgs(
                        from_=[
                            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}
                            for ns in sorted(args.client_namespaces)
                        ],
                        ports=[k8s.networking.v1.NetworkPolicyPortArgs(protocol="TCP", port=MINIO_PORT)],
                    )
                ],
            ),
            opts=child,
        )


def _secret_ref(key: str) -> k8s.core.v1.EnvVarSourceArgs:
    return k8s.core.v1.EnvVarSourceArgs(secret_key_ref=k8s.core.v1.SecretKeySelectorArgs(name=CREDENTIALS_SECRET, key=key))


def store_service_account(
    parent: pulumi.Resource,
    name: str,
    store: ArtifactStore,
    namespace: str,
    account: str,
    labels: dict[str, str],
    write: bool,
    prefixes: list[str] | None = None,
    read_all: bool = False,
    read_prefixes: list[str] | None = None,
) -> k8s.core.v1.ServiceAccount:
    """The workload's ServiceAccount: on EKS annotated with an IRSA role limited to the store's bucket
    (read, or read-write; under ``prefixes`` when given, and reading ``read_prefixes``); never mounting
    an API token (our workloads do not talk to Kubernetes)."""
    role_arn = store.irsa_role(
        f"{name}-store", namespace, account, write=write, prefixes=prefixes, read_all=read_all, read_prefixes=read_prefixes
    )
    return k8s.core.v1.ServiceAccount(
        f"{name}-sa",
        metadata=k8s.meta.v1.ObjectMetaArgs(
            name=account, namespace=namespace, labels=labels, annotations={"eks.amazonaws.com/role-arn": role_arn} if role_arn else None
        ),
        automount_service_account_token=False,
        opts=pulumi.ResourceOptions(parent=parent),
    )


def client_env(store: ArtifactStore) -> list[k8s.core.v1.EnvVarArgs]:
    """Environment a workload needs to reach the store (credentials only for the in-cluster MinIO;
    on EKS the pod's IRSA role provides them)."""
    if store.endpoint_url is None:
        return []
    return [
        k8s.core.v1.EnvVarArgs(name="AWS_ENDPOINT_URL", value=store.endpoint_url),
        k8s.core.v1.EnvVarArgs(name="AWS_DEFAULT_REGION", value="us-east-1"),
        k8s.core.v1.EnvVarArgs(name="AWS_ACCESS_KEY_ID", value_from=_secret_ref("AWS_ACCESS_KEY_ID")),
        k8s.core.v1.EnvVarArgs(name="AWS_SECRET_ACCESS_KEY", value_from=_secret_ref("AWS_SECRET_ACCESS_KEY")),
    ]
