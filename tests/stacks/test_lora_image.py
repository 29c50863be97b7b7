"""The LoRA fine-tuning Job's image (issue 26; llm/lora-image/Dockerfile, components/services/images.py):
built by ``pulumi up`` FROM the pinned vLLM image on a stack that fine-tunes an adapter (dev's
``support-bot``), pushed to its own IMMUTABLE repository, run by the Job by digest, the Job named by its
tag; no such image where no adapter is fine-tuned (staging and prod receive theirs, local has none);
PEFT at requirements-llm.txt's pin, every wheel hash-checked, and a build that fails when the base lacks
one of PEFT's dependencies."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml

from components.config.llm import LlmConfig
from components.config.lora import LoraTrainingConfig
from components.models import llm_import, lora_job
from components.services import images
from tests.conftest import ROOT
from tests.stacks.test_lora import BASE_V, MODELS, lora_jobs, objects, pinned_models
from tests.unit.test_requirements_lock import PIN, _pins
from tools import mock_engine

CONTEXT = ROOT / images.LORA_CONTEXT
DEPS_CHECK = CONTEXT / "check_requires.py"


@pytest.fixture(scope="module")
def dev_pinned():
    return mock_engine.run("dev", overrides=pinned_models())


def lora_images(result) -> list:
    return [r for r in result.of_type("docker-build:index:Image") if r.name.endswith(f"-{images.LORA_IMAGE}")]


def test_dev_builds_the_lora_image_from_the_pinned_vllm_image(dev_pinned):
    (img,) = lora_images(dev_pinned)
    assert img.inputs["buildArgs"] == {"BASE_IMAGE": llm_import.IMAGE} and lora_job.BASE_IMAGE == llm_import.IMAGE
    assert img.inputs["context"] == {"location": images.LORA_CONTEXT}
    assert img.inputs["dockerfile"] == {"location": f"{images.LORA_CONTEXT}/Dockerfile"}
    (tag,) = img.inputs["tags"]
    assert tag.endswith(f"/mlplatform-dev/lora:{images.image_tag(CONTEXT, llm_import.IMAGE)}") and img.inputs["push"] is True
    (repo,) = [r for r in dev_pinned.of_type("aws:ecr/repository:Repository") if r.inputs["name"] == "mlplatform-dev/lora"]
    assert repo.inputs["imageTagMutability"] == "IMMUTABLE"
    # A build without the build arg (by hand) starts from the same vLLM image.
    assert f"ARG BASE_IMAGE={llm_import.IMAGE}\n" in (CONTEXT / "Dockerfile").read_text()


def test_the_lora_job_runs_the_image_by_digest_and_is_named_by_its_tag(dev_pinned):
    ((img,), (job,)) = lora_images(dev_pinned), lora_jobs(dev_pinned)
    tag = img.inputs["tags"][0]
    pod = job.raw["spec"]["template"]["spec"]
    assert {c["image"] for c in pod["initContainers"] + pod["containers"]} == {f"{tag}@sha256:{mock_engine._h(tag, n=64)}"}
    # The name hashes exactly the tag (with the base version, parameters, code and data): recomputed here.
    code_map = llm_import.code_configmap_name("lora-code")
    (data_map,) = [n for n in objects(dev_pinned, "ConfigMap") if n.startswith(lora_job.object_name("support-bot") + "-data-")]
    run = lora_job.Run(
        adapter="support-bot",
        base="chat",
        base_version=BASE_V,
        config=LoraTrainingConfig.model_validate(MODELS["support-bot"]["training"]),
        base_llm=LlmConfig.model_validate(MODELS["chat"]["llm"]),
    )
    assert job.raw["metadata"]["name"] == lora_job.run_name(run, code_map, data_map, tag)


def test_a_new_image_is_a_new_run():
    cfg = LoraTrainingConfig.model_validate(MODELS["support-bot"]["training"])
    run = lora_job.Run(adapter="support-bot", base="chat", base_version="v1", config=cfg, base_llm=LlmConfig(source="org/m"))
    a = lora_job.run_name(run, "code", "data", "r/lora:ctx-1")
    assert a == lora_job.run_name(run, "code", "data", "r/lora:ctx-1")  # an unchanged up runs nothing
    assert a != lora_job.run_name(run, "code", "data", "r/lora:ctx-2")


def test_only_a_stack_that_fine_tunes_an_adapter_builds_the_lora_image(result, stack):
    """dev builds it before its first run (the Job waits for the base's pinned version); staging and prod
    receive support-bot from dev (``source``), local has no adapter: no image, no repository there."""
    models = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]["mlplatform:models"]
    fine_tunes = any((m.get("training") or {}).get("kind") == "lora" and not m.get("source") for m in models.values())
    assert fine_tunes == (stack == "dev")
    assert len(lora_images(result)) == int(fine_tunes)
    repos = [r for r in result.of_type("aws:ecr/repository:Repository") if r.inputs["name"].endswith("/lora")]
    assert len(repos) == int(fine_tunes)  # dev's registry is ECR
    assert lora_jobs(result) == []  # the stack files pin no base version: nothing to train on yet


def test_peft_is_requirements_llms_pin_and_every_requirement_is_hashed():
    ours, llm = _pins(f"{images.LORA_CONTEXT}/requirements.txt"), _pins("requirements-llm.txt")
    assert ours["peft"] == llm["peft"] == "0.21.2"
    assert ours.items() <= llm.items(), "a pin that is not requirements-llm.txt's"
    text = re.sub(r"\\\n\s*", " ", (CONTEXT / "requirements.txt").read_text())  # continuation lines joined
    for line in filter(None, (line.split("#", 1)[0].strip() for line in text.splitlines())):
        assert PIN.match(line) and re.search(r"--hash=sha256:[0-9a-f]{64}\b", line), f"not an exact pin with its --hash: {line}"


def test_the_build_installs_only_hashed_wheels_and_checks_peft_s_dependencies():
    run = next(line for line in (CONTEXT / "Dockerfile").read_text().split("\nRUN ")[1:] if "pip install" in line)
    for flag in ("--require-hashes", "--no-deps", "--only-binary=:all:", "-r /tmp/lora-image/requirements.txt"):
        assert flag in run, flag
    assert "check_requires.py peft" in run and 'python3 -c "import peft"' in run


def check(tmp_path, requires: list[str]) -> subprocess.CompletedProcess:
    """check_requires.py on a made-up installed distribution ``probe`` declaring ``requires``."""
    info = tmp_path / "probe-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: probe\nVersion: 1.0\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    return subprocess.run([sys.executable, str(DEPS_CHECK), "probe"], capture_output=True, text=True, env=env, timeout=60, check=False)


def test_the_dependency_check_fails_the_build_naming_what_is_unmet(tmp_path):
    met = check(tmp_path / "a", ["pyyaml", "pydantic>=2"])
    assert met.returncode == 0, met.stderr
    unmet = check(tmp_path / "b", ["pydantic>=999", "no-such-package-here", "pytest; extra == 'test'"])
    assert unmet.returncode == 1
    assert "probe needs pydantic>=999:" in unmet.stderr and "probe needs no-such-package-here: not installed" in unmet.stderr
    assert "pytest" not in unmet.stderr  # an extra's requirement is not the package's
    missing = subprocess.run(
        [sys.executable, str(DEPS_CHECK), "no-such-dist-here"], capture_output=True, text=True, timeout=60, check=False
    )
    assert missing.returncode == 1 and "no-such-dist-here: not installed" in missing.stderr
