"""Issue 13 item 6: our images deploy by digest, and cluster-autoscaler matches the cluster's minor."""

from __future__ import annotations

import pytest

from components.cluster import cluster_autoscaler
from components.services.images import digest_ref
from policy import rules
from policy.rules import Res

DIGEST = "sha256:" + "ab" * 32
TAG = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/mlplatform-dev/serving:ctx-0123456789abcdef"


def test_digest_ref_pins_the_pushed_bytes():
    assert digest_ref(TAG, DIGEST) == f"{TAG}@{DIGEST}"


@pytest.mark.parametrize("digest", ["", "deadbeef"])
def test_digest_ref_refuses_an_image_that_was_not_pushed(digest):
    with pytest.raises(ValueError, match="refusing to deploy it by tag"):
        digest_ref(TAG, digest)


def _stack(image: str) -> list[Res]:
    built = Res("docker-build:index:Image", {"tags": [TAG]})
    pod = {"containers": [{"name": "server", "image": image}]}
    deployment = Res("kubernetes:apps/v1:Deployment", {"kind": "Deployment", "spec": {"template": {"spec": pod}}}, urn="urn:d")
    return [built, deployment]


def test_policy_refuses_our_image_by_tag():
    """What every stack deployed before issue 13: the ctx tag."""
    assert rules.built_images_by_digest(_stack(TAG)) == [("urn:d", f"container 'server' runs our image {TAG!r} by tag, not by digest")]
    assert rules.built_images_by_digest(_stack(f"{TAG}@{DIGEST}")) == []
    assert rules.built_images_by_digest(_stack("python:3.11.14-slim-bookworm")) == []  # not ours: tag pins are checked elsewhere


@pytest.mark.parametrize("minor", sorted(cluster_autoscaler.IMAGE_TAGS))
def test_autoscaler_image_matches_the_cluster_minor(minor):
    values = cluster_autoscaler.autoscaler_values("c", "eu-west-1", "arn:aws:iam::1:role/r", minor)
    assert values["image"]["repository"] == cluster_autoscaler.IMAGE
    assert values["image"]["tag"].startswith(f"v{minor}.")


def test_autoscaler_refuses_an_unpinned_minor():
    with pytest.raises(ValueError, match="no cluster-autoscaler release known for Kubernetes 1.20"):
        cluster_autoscaler.autoscaler_values("c", "eu-west-1", "arn", "1.20")


def test_config_refuses_an_unpinned_minor_with_gpu_pools():
    from components.config import ConfigError, validate

    raw = {
        "environment": "dev",
        "kubernetesVersion": "1.29",
        "cluster": {"kind": "eks", "region": "eu-west-1", "endpointPublicAccessCidrs": ["203.0.113.0/24"]},
        "jenkins": {"enabled": False},
        "gpuPools": [{"name": "g", "instanceTypes": ["g5.xlarge"]}],
    }
    with pytest.raises(ConfigError, match="kubernetesVersion: no cluster-autoscaler release is pinned for 1.29"):
        validate(raw, "x.yaml")
