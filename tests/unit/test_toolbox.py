"""The CI toolbox (ci/toolbox): pinned, checksummed downloads; every tool the deploy path runs is in
it; every pipeline that deploys uses it; the BuildKit builder the stacks name is the one CI registers."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess

import pytest
import yaml

from components.lib import toolbox
from components.services import jenkins
from ops import local_up
from tests.conftest import ROOT

SCRIPT = (toolbox.DIR / "install-tools.sh").read_text()
DOCKERFILE = (toolbox.DIR / "Dockerfile").read_text()
PINS = dict(re.findall(r"^([A-Za-z0-9_]+)=(\S+)$", SCRIPT, re.M))
GITLAB = toolbox.DIR / "gitlab-ci.yml"


class GitLabLoader(yaml.SafeLoader):
    """YAML with GitLab's !reference tag."""


GitLabLoader.add_constructor("!reference", lambda loader, node: ("!reference", loader.construct_sequence(node)))


def _gitlab(path) -> dict:
    return yaml.load(path.read_text(), Loader=GitLabLoader)  # noqa: S506 (a SafeLoader subclass)


def test_every_download_is_pinned_and_checksummed_per_architecture():
    fetches = re.findall(r'^fetch "([^"]+)" "\$\(sha ([A-Z]+)\)"', SCRIPT, re.M)
    assert {tool for _, tool in fetches} == {"PULUMI", "KUBECTL", "BUILDX"}
    for url, tool in fetches:
        assert f"${{{tool}_VERSION}}" in url, f"{url} is not the pinned {tool}_VERSION"
        for arch in ("amd64", "arm64"):
            assert re.fullmatch(r"[0-9a-f]{64}", PINS.get(f"{tool}_SHA256_{arch}", "")), f"{tool} {arch}: no SHA-256 pin"
    # No other way onto PATH: every curl is fetch's, and fetch refuses a digest that is not the pin.
    assert SCRIPT.count("curl ") == 1 and "sha256sum -c" in SCRIPT


def test_pulumi_pin_is_the_same_as_make_up_local():
    assert PINS["PULUMI_VERSION"] == local_up.PULUMI
    for arch in ("amd64", "arm64"):
        assert PINS[f"PULUMI_SHA256_{arch}"] == local_up.PINS["pulumi"][f"linux-{arch}"]["sha256"]


def test_kubectl_is_within_one_minor_of_the_clusters():
    stacks = [yaml.safe_load(p.read_text())["config"] for p in sorted((ROOT / "stacks").glob("Pulumi.*.yaml"))]
    minors = {int(s["mlplatform:kubernetesVersion"].split(".")[1]) for s in stacks if "mlplatform:kubernetesVersion" in s}
    client = int(PINS["KUBECTL_VERSION"].split(".")[1])
    assert minors and all(abs(client - m) <= 1 for m in minors), f"kubectl 1.{client} vs clusters 1.{sorted(minors)}"


def _provided() -> set[str]:
    """What the image's PATH holds: the Python base image's, Debian's packages (by the command they
    install) and what install-tools.sh installs."""
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11[.\w-]*-bookworm$", DOCKERFILE, re.M)
    packages = set(re.findall(r"^\s+([a-z0-9.+-]+)(?:=\S+)? \\$", DOCKERFILE, re.M))
    commands = {"awscli": "aws", "ca-certificates": None, "curl": "curl", "git": "git", "make": "make"}
    from_apt = {commands[p] for p in packages if commands.get(p)}
    installed = {"pulumi", "kubectl", "buildx"} if "/opt/toolbox/install-tools.sh /usr/local/bin" in DOCKERFILE else set()
    return {"python3", "bash"} | from_apt | installed


def test_every_deploy_tool_is_in_the_image():
    missing = set(toolbox.DEPLOY_TOOLS) - _provided()
    assert not missing, f"ci/toolbox/Dockerfile lacks {sorted(missing)}"


def test_deploy_tools_cover_what_the_deploy_path_runs():
    # ops/* (but the laptop-only local_up) run these programs; the Makefile's deploy targets pulumi and
    # the builder script; the EKS kubeconfig (pulumi-eks) execs `aws eks get-token`.
    called = set()
    for path in sorted((ROOT / "ops").glob("*.py")):
        if path.name != "local_up.py":
            called |= set(re.findall(r'\[\s*"(kubectl|pulumi|aws|git|docker|helm|buildx|curl)"', path.read_text()))
    makefile = (ROOT / "Makefile").read_text()
    for target in ("up-ci", "pin", "train-wait", "deliver", "smoke", "builder", "ephemeral-up"):
        recipe = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
        called |= set(re.findall(r"\b(pulumi|kubectl|aws|git|docker|helm)\b", recipe))
    called |= {"aws", "buildx", "make", "python3"}
    assert called <= set(toolbox.DEPLOY_TOOLS), f"not in the toolbox's DEPLOY_TOOLS: {sorted(called - set(toolbox.DEPLOY_TOOLS))}"


def test_gitlab_builds_the_toolbox_under_its_content_tag_and_deploys_in_it():
    included = _gitlab(GITLAB)
    assert included["variables"]["TOOLBOX_IMAGE"] == f"$CI_REGISTRY_IMAGE/toolbox:{toolbox.tag()}", (
        f"ci/toolbox changed: set TOOLBOX_IMAGE's tag to {toolbox.tag()} (ci/toolbox/gitlab-ci.yml)"
    )
    assert "--local context=ci/toolbox" in " ".join(included["toolbox"]["script"])
    main = _gitlab(ROOT / ".gitlab-ci.yml")
    # The service daemon is the same pinned rootless BuildKit as the Jenkins builder agent's.
    assert main[".aws-oidc"]["services"][0]["name"] == jenkins.BUILDKIT_IMAGE
    assert main[".aws-oidc"]["variables"]["BUILDKIT_HOST"] == "tcp://buildkitd:1234"
    assert {"local": "ci/toolbox/gitlab-ci.yml"} in main["include"]
    deploying = {
        name
        for name, job in main.items()
        if isinstance(job, dict) and re.search(r"make (up-ci|ephemeral-up|ephemeral-destroy)", str(job.get("script")))
    }
    assert deploying >= {".deploy", "ephemeral:up", "ephemeral:destroy"}
    for name in deploying:
        job = main[name] if "extends" not in main[name] else {**main[main[name]["extends"]], **main[name]}
        assert (job.get("image") or {}).get("name") == "$TOOLBOX_IMAGE" and job.get("before_script") == [], f"{name} not in the toolbox"


def test_github_deploy_jobs_install_the_same_pinned_tools_first():
    for path in sorted((ROOT / ".github" / "workflows").glob("*.yml")):
        for name, job in yaml.safe_load(path.read_text())["jobs"].items():
            runs = [step.get("run", "") for step in job.get("steps", [])]
            deploy = [i for i, r in enumerate(runs) if re.search(r"make (up-ci|ephemeral-up|ephemeral-destroy|reap)", r)]
            if deploy:
                installs = [i for i, r in enumerate(runs) if "ci/toolbox/install-tools.sh" in r]
                assert installs and installs[0] < deploy[0], f"{path.name}:{name} deploys without ci/toolbox/install-tools.sh"


def test_the_stacks_builder_is_the_one_ci_registers():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(rf"^BUILDER := {jenkins.BUILDER}$", makefile, re.M)
    assert re.search(r"^up-ci: .*\bbuilder\b", makefile, re.M) and re.search(r"^ephemeral-up: .*\bbuilder\b", makefile, re.M)
    for path in sorted((ROOT / "stacks").glob("Pulumi.*.yaml")):
        cfg = yaml.safe_load(path.read_text())["config"]
        if cfg.get("mlplatform:cluster", {}).get("kind") == "eks":
            assert cfg["mlplatform:registry"].get("builder") == jenkins.BUILDER, f"{path.name}: registry.builder"
    # The Jenkins builder agent points the registration at its own buildkitd sidecar.
    pod = yaml.safe_load(yaml.safe_load(jenkins.pod_templates("b", "r.example/toolbox:ctx-1")["builder"])[0]["yaml"])
    python, buildkitd = pod["spec"]["containers"]
    assert python["image"] == "r.example/toolbox:ctx-1"
    assert {"name": "BUILDKIT_HOST", "value": buildkitd["args"][buildkitd["args"].index("--addr") + 1]} in python["env"]
    assert "BUILDX_BUILDER" not in str(pod)


def test_the_jenkins_stack_names_its_toolbox_by_content_tag():
    cfg = yaml.safe_load((ROOT / "stacks" / "Pulumi.staging.yaml").read_text())["config"]["mlplatform:jenkins"]
    assert cfg["agentImage"].endswith(f"/toolbox:{toolbox.tag()}"), f"ci/toolbox changed: agentImage's tag is {toolbox.tag()}"


@pytest.fixture
def fake_buildx(tmp_path):
    """A `buildx` on PATH that records its arguments; `inspect` fails for unregistered builders."""
    log = tmp_path / "calls"
    exe = tmp_path / "bin" / "buildx"
    exe.parent.mkdir()
    exe.write_text(
        f'#!/bin/bash\necho "$*" >> {log}\nif [ "$1" = inspect ] && ! grep -q -- "^create --name ${{@: -1}} " {log}; then exit 1; fi\n'
    )
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    env = {"PATH": f"{exe.parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    return env, log


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize(
    ("host", "driver"),
    [("tcp://127.0.0.1:1234", "--driver remote tcp://127.0.0.1:1234"), (None, "--driver docker-container --driver-opt network=host")],
)
def test_builder_script_registers_the_named_builder_once(fake_buildx, host, driver):
    env, log = fake_buildx
    if host:
        env["BUILDKIT_HOST"] = host
    for _ in range(2):
        subprocess.run([str(toolbox.DIR / "builder.sh"), "mlplatform-buildkit"], env=env, check=True, capture_output=True)
    creates = [line for line in log.read_text().splitlines() if line.startswith("create")]
    assert creates == [f"create --name mlplatform-buildkit {driver}"]
    assert log.read_text().splitlines()[-1] == "inspect --bootstrap mlplatform-buildkit"


def test_builder_script_without_buildx_says_what_to_do(tmp_path):
    # A PATH with bash only: neither buildx nor docker.
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "bash").symlink_to(shutil.which("bash"))
    run = subprocess.run(
        [str(toolbox.DIR / "builder.sh"), "x"], env={"PATH": str(tmp_path / "bin"), "HOME": str(tmp_path)}, capture_output=True, text=True
    )
    assert run.returncode == 1 and "install-tools.sh" in run.stderr, run.stderr


def test_the_toolbox_files_are_executable():
    for name in ("install-tools.sh", "builder.sh"):
        assert os.access(toolbox.DIR / name, os.X_OK), f"ci/toolbox/{name} must be executable (COPY keeps the mode)"


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("sha256sum") is None, reason="needs bash and sha256sum")
def test_a_download_that_is_not_the_pinned_bytes_installs_nothing(tmp_path):
    """install-tools.sh run for real against a `curl` that returns other bytes (a tampered mirror): it
    stops at the first download, names the digest, and puts nothing on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    curl = bin_dir / "curl"
    curl.write_text('#!/bin/bash\nwhile [ $# -gt 0 ]; do if [ "$1" = -o ]; then printf tampered > "$2"; fi; shift; done\n')
    curl.chmod(0o755)
    prefix = tmp_path / "prefix"
    run = subprocess.run(
        [str(toolbox.DIR / "install-tools.sh"), str(prefix)],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    if run.returncode == 1 and "no pinned tools for" in run.stderr:
        pytest.skip(run.stderr.strip())
    tampered = hashlib.sha256(b"tampered").hexdigest()
    assert run.returncode == 1, run.stderr
    assert f"SHA-256 {tampered} is not the pinned" in run.stderr and "nothing installed" in run.stderr, run.stderr
    assert not prefix.exists() or not any(prefix.iterdir())
