"""Every pinned package is imported by the code it is installed for, or named here with the reason it is
needed anyway (issue 13: `pulumi-docker` and `starlette` were pinned and imported by nothing)."""

from __future__ import annotations

import re

import pytest

from tests.conftest import ROOT

# distribution -> import name, where they differ
MODULES = {
    "PyYAML": "yaml",
    "pulumi-aws": "pulumi_aws",
    "pulumi-awsx": "pulumi_awsx",
    "pulumi-eks": "pulumi_eks",
    "pulumi-kubernetes": "pulumi_kubernetes",
    "pulumi-docker": "pulumi_docker",
    "pulumi-docker-build": "pulumi_docker_build",
    "pulumi-random": "pulumi_random",
    "pulumi-policy": "pulumi_policy",
    "tensorflow-cpu": "tensorflow",
    "prometheus-client": "prometheus_client",
}
# Installed for what they do at run time, not imported by our code.
RUNTIME_ONLY = {
    "uvloop": "uvicorn runs its event loop on uvloop when it is installed (loop='auto')",
    "httptools": "the HTTP parser behind uvicorn's HttpToolsProtocol, which serving/http.py subclasses",
}
# requirements file -> the code that runs with it
INSTALLS = {
    "requirements.txt": ["__main__.py", "components", "policy", "tools", "ops", "bench", "mlp"],
    "serving/requirements.txt": ["serving"],
}


def pins(path: str) -> list[str]:
    lines = (ROOT / path).read_text().splitlines()
    return [m.group(1) for line in lines if (m := re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==", line.strip()))]


def imported(paths: list[str]) -> set[str]:
    files = [ROOT / p for p in paths if (ROOT / p).is_file()] + [f for p in paths if (ROOT / p).is_dir() for f in (ROOT / p).rglob("*.py")]
    found: set[str] = set()
    for f in files:
        found |= set(re.findall(r"^\s*(?:from|import)\s+([A-Za-z_][A-Za-z0-9_]*)", f.read_text(), re.M))
    return found


@pytest.mark.parametrize("requirements", sorted(INSTALLS))
def test_every_pin_is_used(requirements):
    used = imported(INSTALLS[requirements])
    unused = [d for d in pins(requirements) if d not in RUNTIME_ONLY and MODULES.get(d, d.replace("-", "_")) not in used]
    assert unused == [], f"{requirements}: pinned but imported by nothing: {unused}"


def test_the_check_sees_imports():
    assert {"pulumi_aws", "yaml", "pydantic"} <= imported(INSTALLS["requirements.txt"])
