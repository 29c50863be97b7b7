"""Multi-platform images (registry.platforms): the tag still hashes only what the stack file and the
build context say (never the building machine), a platform change is a new tag, and several
platforms need a BuildKit builder."""

from __future__ import annotations

import json

import pytest

from components.config import ConfigError, validate
from components.services import images
from tools import mock_engine

BOTH = ["linux/arm64", "linux/amd64"]


def test_amd64_only_tags_are_unchanged_by_the_platforms_setting():
    context = images.ROOT / "serving"
    legacy = "ctx-" + images.context_hash(context, extra="BASE_IMAGE=b")[:16]
    assert images.image_tag(context, "b") == images.image_tag(context, "b", ("linux/amd64",)) == legacy


def test_a_platform_change_is_a_new_tag_and_the_order_does_not_matter():
    context = images.ROOT / "serving"
    amd64 = images.image_tag(context, "b", ("linux/amd64",))
    both = images.image_tag(context, "b", ("linux/amd64", "linux/arm64"))
    assert both != amd64 and both == images.image_tag(context, "b", ("linux/arm64", "linux/amd64"))
    assert images.image_tag(context, "b", ("linux/arm64",)) not in (amd64, both)


def test_a_multi_platform_stack_builds_every_image_for_every_platform():
    local = mock_engine.stack_config("local")[0]["mlplatform:registry"]
    registry = {**json.loads(local), "platforms": BOTH, "builder": "mlplatform-buildkit"}
    result = mock_engine.run("local", overrides={"mlplatform:registry": registry})
    default = {r.name: r.inputs["tags"][0] for r in mock_engine.run("local").of_type("docker-build:index:Image")}
    built = result.of_type("docker-build:index:Image")
    assert built and all(sorted(r.inputs["platforms"]) == sorted(BOTH) for r in built)
    assert all(r.inputs["builder"] == {"name": "mlplatform-buildkit"} for r in built)
    assert all(r.inputs["tags"][0] != default[r.name] for r in built), "the multi-platform images reuse the amd64 tags"


BASE = {"environment": "local", "cluster": {"kind": "kubeconfig"}, "registry": {"kind": "external", "url": "localhost:5001"}}


@pytest.mark.parametrize(
    ("registry", "message"),
    [
        ({"platforms": BOTH}, "registry.platforms: several platforms need a BuildKit builder"),
        ({"platforms": ["linux/amd64", "linux/amd64"], "builder": "b"}, "registry.platforms: each platform once"),
        ({"platforms": ["linux/s390x"]}, "registry.platforms[0]"),
    ],
)
def test_bad_platforms_fail_in_one_line(registry, message):
    with pytest.raises(ConfigError) as info:
        validate({**BASE, "registry": {**BASE["registry"], **registry}}, "x.yaml")
    assert str(info.value).splitlines()[0].startswith(f"x.yaml: mlplatform:{message}"), str(info.value)


def test_eks_stacks_build_for_their_x86_nodes():
    raw = {
        "environment": "dev",
        "cluster": {"kind": "eks", "region": "eu-west-1", "accountId": "111111111111", "endpointPublicAccessCidrs": ["198.18.0.0/15"]},
        "registry": {"kind": "ecr", "platforms": ["linux/arm64"]},
    }
    with pytest.raises(ConfigError, match=r"mlplatform:registry.platforms: must include linux/amd64"):
        validate(raw, "x.yaml")


def test_a_mode_only_change_is_a_new_tag(tmp_path):
    """docker-build's context hash includes file modes and COPY keeps them, so a chmod alone is a new
    image: under the old tag it would be pushed into an IMMUTABLE repository and refused (issue 29)."""
    (tmp_path / "Dockerfile").write_text("FROM b\nCOPY . /app\n")
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    before = images.image_tag(tmp_path, "b")
    script.chmod(0o755)
    assert images.image_tag(tmp_path, "b") != before
    script.chmod(0o644)
    assert images.image_tag(tmp_path, "b") == before
