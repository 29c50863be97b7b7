"""Images: the training and serving images, built by `pulumi up` and pushed to ECR or a configured registry
(and a model's own training image, FROM the training one; on a stack that fine-tunes a LoRA adapter, the
LoRA Job's image, FROM the pinned vLLM image).

Built with Pulumi's docker-build provider (BuildKit): on a laptop it uses the local Docker; in CI it
uses a remote, rootless BuildKit (``registry.builder``), so no privileged Docker daemon is needed.

Each image is tagged with a hash of its build context (every file the build can see, by path and
bytes, minus .dockerignore). An unchanged context gives the same tag, so nothing is rebuilt or
redeployed; one changed byte gives a new tag, so the workloads always roll to what was built.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import stat
from dataclasses import dataclass, field
from pathlib import Path

import pulumi
import pulumi_aws as aws
import pulumi_docker_build as docker_build

from components.config import RegistryConfig

ROOT = Path(__file__).resolve().parents[2]
# name -> (build context relative to the project root, pinned default base image)
IMAGES: dict[str, tuple[str, str]] = {
    "training": ("training", "tensorflow/tensorflow:2.21.0-gpu"),
    "serving": ("serving", "python:3.11.14-slim-bookworm"),
}


def _ignored(rel: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(rel, f"{p}/*") or rel.startswith(p.rstrip("/") + "/") for p in patterns)


def context_hash(context: Path, extra: str = "") -> str:
    """sha256 over (relative path, mode, bytes) of every file in the build context, plus ``extra`` (build
    args). The mode bits count because docker-build's own context hash includes them (and a COPY keeps
    them): a chmod alone changes the image, so it must change the tag, or the rebuild is pushed under
    the old tag into an IMMUTABLE repository and refused (issue 29, "Later ups")."""
    ignore_file = context / ".dockerignore"
    patterns = [
        line.strip()
        for line in (ignore_file.read_text().splitlines() if ignore_file.exists() else [])
        if line.strip() and not line.startswith("#")
    ]
    digest = hashlib.sha256(extra.encode())
    for path in sorted(p for p in context.rglob("*") if p.is_file()):
        rel = path.relative_to(context).as_posix()
        if _ignored(rel, patterns) or "__pycache__" in rel:
            continue
        digest.update(rel.encode() + b"\0")
        digest.update(f"{stat.S_IMODE(path.stat().st_mode):o}".encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def image_tag(context: Path, base_image: str, platforms: tuple[str, ...] = ("linux/amd64",)) -> str:
    """``ctx-<hash>`` of the context, the base image and the platforms (sorted: the order in the stack
    file does not matter; the machine that builds does not enter it). A platform added or removed is a
    new image index, so it must be a new tag: pushed under the old one into an IMMUTABLE repository it
    would be refused. The amd64-only tag stays what it was before platforms were configurable."""
    extra = f"BASE_IMAGE={base_image}"
    if tuple(sorted(platforms)) != ("linux/amd64",):
        extra += "|PLATFORMS=" + ",".join(sorted(platforms))
    return "ctx-" + context_hash(context, extra=extra)[:16]


# A model folder without a Dockerfile of its own is built with this one, FROM the training image.
MODEL_DOCKERFILE = "training/model.Dockerfile"
# The LoRA fine-tuning Job's image (components/models/lora_job.py): the pinned vLLM image plus PEFT.
# Its own folder as the context, so the tag hashes only what the image is made of (the Dockerfile, the
# hashed requirements, the build-time check) and the vLLM image, never the platform code (mounted).
LORA_IMAGE = "lora"
LORA_CONTEXT = "llm/lora-image"


def model_image(model: str) -> str:
    """The image key (and repository suffix) of a model's own training image."""
    return f"train-{model}"


@dataclass
class ImagesArgs:
    registry: RegistryConfig
    repo_prefix: str  # e.g. "mlplatform-dev"
    # model -> its training folder (models.<name>.training.code): one image each, FROM the training image
    model_code: dict[str, str] = field(default_factory=dict)
    force_delete: bool = False  # ephemeral stacks: destroy removes the repositories with their images
    # staging/prod: the repositories (the images every deployed version runs) are retained on destroy
    # (left in the account, out of the state) and, with ``protect``, an accidental destroy is refused.
    retain: bool = False
    protect: bool = False
    tags: dict[str, str] = field(default_factory=dict)
    # The vLLM image (components/models/llm_import.py IMAGE) to build the LoRA image FROM, on a stack
    # that fine-tunes an adapter (components/models/lora_job.py ``trains_here``); None: no LoRA image.
    lora_base: str | None = None


def digest_ref(tag: str, digest: str) -> str:
    """``registry/repo:ctx-<hash>@sha256:...``: the kubelet pulls by the digest (the tag only names it),
    so what runs is byte for byte what was built and pushed, whatever later happens to the tag."""
    if not digest.startswith("sha256:"):
        raise ValueError(f"{tag}: the build pushed no image (digest {digest!r}); refusing to deploy it by tag")
    return f"{tag}@{digest}"


class Images(pulumi.ComponentResource):
    """``refs[name]`` is what the workloads run: the pushed image by digest
    (registry/repo:ctx-<hash>@sha256:...), known only once the image is pushed, so nothing deploys an
    image that is not there. ``tags[name]`` (registry/repo:ctx-<hash>) is known at preview: the build
    context's hash, for names and previews."""

    refs: dict[str, pulumi.Output[str]]
    tags: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: ImagesArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlplatform:images:Images", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.refs = {}
        self.tags = {}
        self.images: dict[str, docker_build.Image] = {}
        for image, (context, base) in IMAGES.items():
            self._build(name, image, context, f"{context}/Dockerfile", base, base, args, child)
        for model, folder in sorted(args.model_code.items()):
            own = ROOT / folder / "Dockerfile"
            dockerfile = f"{folder}/Dockerfile" if own.is_file() else MODEL_DOCKERFILE
            # FROM the training image by digest; the tag hashes the folder, the Dockerfile and the
            # training image's tag (known at preview), so a change to either rebuilds the model's image.
            extra = self.tags["training"].apply(lambda t, d=dockerfile: f"{t}|{d}|{(ROOT / d).read_text()}")
            self._build(name, model_image(model), folder, dockerfile, self.refs["training"], extra, args, child)
        if args.lora_base is not None:
            base = args.lora_base
            self._build(name, LORA_IMAGE, LORA_CONTEXT, f"{LORA_CONTEXT}/Dockerfile", base, base, args, child)
        self.register_outputs({"refs": self.refs})

    def _build(
        self,
        name: str,
        image: str,
        context: str,
        dockerfile: str,
        base: pulumi.Input[str],
        hashed: pulumi.Input[str],
        args: ImagesArgs,
        child: pulumi.ResourceOptions,
    ) -> None:
        """Build ``context`` with ``dockerfile`` FROM ``base``, tagged by the context's hash and ``hashed``."""
        repo_name = f"{args.repo_prefix}/{image}"
        registries: list[docker_build.RegistryArgs] | None = None
        if args.registry.kind == "ecr":
            repo = self._ecr_repository(f"{name}-{image}", repo_name, args, child)
            token = aws.ecr.get_authorization_token_output(registry_id=repo.registry_id)
            repository = repo.repository_url
            registries = [
                docker_build.RegistryArgs(
                    address=repo.repository_url,
                    username=token.user_name,
                    password=pulumi.Output.secret(token.password),
                )
            ]
        else:
            repository = pulumi.Output.from_input(f"{args.registry.url}/{repo_name}")
        platforms = tuple(sorted(args.registry.platforms))
        tag = pulumi.Output.from_input(hashed).apply(lambda h: image_tag(ROOT / context, h, platforms))
        built = docker_build.Image(
            f"{name}-{image}",
            tags=[pulumi.Output.concat(repository, ":", tag)],
            # Relative to the project root (where `pulumi up` runs): absolute paths would
            # differ per machine and show as a diff on every preview.
            context=docker_build.BuildContextArgs(location=context),
            dockerfile=docker_build.DockerfileArgs(location=dockerfile),
            build_args={"BASE_IMAGE": base},
            platforms=[docker_build.Platform(p) for p in platforms],
            push=True,
            registries=registries,
            builder=docker_build.BuilderConfigArgs(name=args.registry.builder) if args.registry.builder else None,
            opts=child,
        )
        self.images[image] = built
        self.tags[image] = built.tags.apply(lambda tags: tags[0])
        self.refs[image] = pulumi.Output.all(built.tags, built.digest).apply(lambda a: digest_ref(a[0][0], a[1]))

    @staticmethod
    def _ecr_repository(name: str, repo_name: str, args: ImagesArgs, opts: pulumi.ResourceOptions) -> aws.ecr.Repository:
        repo = aws.ecr.Repository(
            name,
            aws.ecr.RepositoryArgs(
                name=repo_name,
                image_tag_mutability="IMMUTABLE",
                image_scanning_configuration=aws.ecr.RepositoryImageScanningConfigurationArgs(scan_on_push=True),
                encryption_configurations=[aws.ecr.RepositoryEncryptionConfigurationArgs(encryption_type="AES256")],
                force_delete=args.force_delete,
                tags=args.tags,
            ),
            opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(retain_on_delete=args.retain, protect=args.protect)),
        )
        aws.ecr.LifecyclePolicy(
            f"{name}-lifecycle",
            aws.ecr.LifecyclePolicyArgs(repository=repo.name, policy=lifecycle_policy(args.registry.keep_images)),
            opts=opts,
        )
        return repo


def lifecycle_policy(keep: int) -> str:
    return json.dumps(
        {
            "rules": [
                {
                    "rulePriority": 1,
                    "description": f"keep the last {keep} images",
                    "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": keep},
                    "action": {"type": "expire"},
                }
            ]
        },
        sort_keys=True,
    )
