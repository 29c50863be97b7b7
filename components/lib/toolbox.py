"""The CI toolbox image (ci/toolbox/): its content-addressed tag and the tools it must carry.

The tag hashes the files the image is built from, so a pipeline that names
``toolbox:<tag>`` runs exactly what those files build, and any change to them names a new image
(ci/toolbox/gitlab-ci.yml builds and pushes it; a test keeps its tag equal to ``tag()``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

DIR = Path(__file__).resolve().parents[2] / "ci" / "toolbox"
# What the image is built from (the build context: ci/toolbox without its pipeline file).
FILES = ("Dockerfile", "install-tools.sh", "builder.sh")
# Every program the deploy path runs (Makefile up-ci/pin/train-wait/deliver/smoke, ops/*, the EKS
# kubeconfig's exec plugin, ci/toolbox/builder.sh): tests check the image provides each one.
DEPLOY_TOOLS = ("python3", "make", "git", "bash", "curl", "aws", "pulumi", "kubectl", "buildx")


def tag(directory: Path = DIR) -> str:
    digest = hashlib.sha256()
    for name in FILES:
        digest.update(name.encode() + b"\0" + hashlib.sha256((directory / name).read_bytes()).digest())
    return "ctx-" + digest.hexdigest()[:16]
