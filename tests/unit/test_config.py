"""Bad config stops the program before any resource exists, with one line naming file and key."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

from components.config import ConfigError, PlatformConfig, validate
from tests.conftest import ROOT
from tools import mock_engine

PROD = yaml.safe_load((ROOT / "stacks" / "Pulumi.prod.yaml").read_text())["config"]


def prod_with(**changes):
    """The prod stack's config with ``changes`` applied; keys are dotted paths, e.g. 'gpuPools[0].min'."""
    cfg = copy.deepcopy(PROD)
    for dotted, value in changes.items():
        path = dotted.replace("[", ".").replace("]", "").split(".")
        node = cfg
        top = f"mlplatform:{path[0]}"
        keys = [top, *path[1:]]
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        last = keys[-1]
        if isinstance(node, list):
            node[int(last)] = value
        elif value is DELETE:
            del node[last]
        else:
            node[last] = value
    return cfg


DELETE = object()

# (what is wrong, overrides to prod, expected key path in the message, a phrase of the expectation)
CASES = [
    ("typo in a top-level key", {"gpuPool": []}, "mlplatform:gpuPool:", "did you mean 'gpuPools'"),
    ("typo in a nested key", {"serving.maxReplica": 4}, "mlplatform:serving.maxReplica:", "did you mean 'maxReplicas'"),
    ("min > max", {"gpuPools[0].min": 3, "gpuPools[0].max": 2}, "mlplatform:gpuPools[0].min:", "must be <= max (got min=3, max=2)"),
    ("desired outside min..max", {"gpuPools[1].desired": 5}, "mlplatform:gpuPools[1].desired:", "between min and max"),
    (
        "CPU instance in a GPU pool",
        {"gpuPools[0].instanceTypes": ["m5.large"]},
        "mlplatform:gpuPools[0].instanceTypes[0]:",
        "GPU instance type",
    ),
    ("pool name not DNS-1123", {"gpuPools[0].name": "GPU_Pool"}, "mlplatform:gpuPools[0].name:", "DNS-1123"),
    ("capacity type enum", {"gpuPools[0].capacityType": "spot"}, "mlplatform:gpuPools[0].capacityType:", "'SPOT' or 'ON_DEMAND'"),
    ("environment enum", {"environment": "production"}, "mlplatform:environment:", "'local', 'dev', 'staging', 'prod' or 'ephemeral'"),
    ("accuracy above 1", {"training.minAccuracy": 98.42}, "mlplatform:training.minAccuracy:", "less than or equal to 1"),
    ("accuracy zero", {"training.minAccuracy": 0}, "mlplatform:training.minAccuracy:", "greater than 0"),
    (
        "minReplicas > maxReplicas",
        {"serving.minReplicas": 8, "serving.maxReplicas": 4, "serving.replicas": 4},
        "mlplatform:serving.minReplicas:",
        "<= maxReplicas",
    ),
    ("prod with one replica", {"serving.replicas": 1, "serving.minReplicas": 1}, "mlplatform:serving.replicas:", ">= 2 replicas"),
    (
        "prod LB open to the world",
        {"serving.allowedCidrs": ["0.0.0.0/0"]},
        "mlplatform:serving.allowedCidrs[0]:",
        "not be open to the world",
    ),
    ("prod LB unrestricted", {"serving.allowedCidrs": []}, "mlplatform:serving.allowedCidrs:", "set at least one CIDR"),
    ("not a CIDR", {"serving.allowedCidrs": ["10.0.0.300/24"]}, "mlplatform:serving.allowedCidrs[0]:", "must be a CIDR block"),
    ("missing cluster kind", {"cluster.kind": DELETE}, "mlplatform:cluster.kind:", "required key is missing"),
    ("eks without region", {"cluster.region": DELETE}, "mlplatform:cluster.region:", "required when cluster.kind is 'eks'"),
    ("duplicate pool names", {"gpuPools[1].name": "gpu-train"}, "mlplatform:gpuPools[1].name:", "must be unique"),
    (
        "pool mixing GPU counts",
        {"gpuPools[0].instanceTypes": ["g5.xlarge", "g5.12xlarge"]},
        "mlplatform:gpuPools[0].instanceTypes:",
        "same GPU count",
    ),
    ("bad cron schedule", {"training.schedule": "every day"}, "mlplatform:training.schedule:", "5-field cron"),
    ("wrong type", {"training.epochs": "many"}, "mlplatform:training.epochs:", "valid integer"),
    ("ecr on a kubeconfig cluster", {"cluster.kind": "kubeconfig", "gpuPools": []}, "mlplatform:registry.kind:", "needs an EKS stack"),
]


@pytest.mark.parametrize("what,changes,key,expect", CASES, ids=[c[0] for c in CASES])
def test_bad_config_fails_before_any_resource(what, changes, key, expect):
    with pytest.raises(ConfigError) as info:
        mock_engine.run("prod", overrides=prod_with(**changes))
    message = str(info.value)
    assert message.startswith(f"stacks/Pulumi.prod.yaml: {key}"), message
    assert expect in message, message
    assert "\n" not in message
    assert info.value.registered == [], f"{what}: resources registered before the error: {[r.urn for r in info.value.registered]}"


def test_every_stack_file_is_valid():
    for path in sorted((ROOT / "stacks").glob("Pulumi.*.yaml")):
        raw = {k.removeprefix("mlplatform:"): v for k, v in yaml.safe_load(path.read_text())["config"].items()}
        assert isinstance(validate(raw, path.name), PlatformConfig)


def test_non_prod_gpu_pools_may_scale_to_zero():
    cfg = validate(
        {
            "environment": "dev",
            "cluster": {"kind": "eks", "region": "eu-west-1", "endpointPublicAccessCidrs": ["203.0.113.0/24"]},
            "jenkins": {"enabled": False},
            "gpuPools": [{"name": "g", "instanceTypes": ["g5.xlarge"], "min": 0, "desired": 0, "max": 1}],
        },
        "x.yaml",
    )
    assert cfg.gpu_pools[0].min == 0


def test_training_gpus_need_gpu_nodes():
    with pytest.raises(ConfigError, match=r"x.yaml: mlplatform:training.gpus: must be 0"):
        validate(
            {
                "environment": "local",
                "cluster": {"kind": "kubeconfig"},
                "registry": {"kind": "external", "url": "localhost:5001"},
                "jenkins": {"enabled": False},
                "training": {"gpus": 1},
            },
            "x.yaml",
        )


def test_synth_bad_config_exits_2_with_one_line(tmp_path):
    bad = yaml.safe_load((ROOT / "stacks" / "Pulumi.dev.yaml").read_text())
    bad["config"]["mlplatform:gpuPools"][0]["min"] = 5
    stack_file = ROOT / "stacks" / "Pulumi.zz-bad-test.yaml"
    stack_file.write_text(yaml.safe_dump(bad))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tools.synth", "--stack", "zz-bad-test", "--out", str(tmp_path / "o")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        stack_file.unlink()
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "stacks/Pulumi.zz-bad-test.yaml: mlplatform:gpuPools[0].min: must be <= max (got min=5, max=2)"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("environment", ["dev", "staging", "ephemeral"])
@pytest.mark.parametrize("cidrs,message", [(None, "required on EKS"), (["0.0.0.0/0"], "must not be open to the world")])
def test_every_eks_stack_restricts_its_api_endpoint(environment, cidrs, message):
    """Issue 13 item 4: dev (and the PR stacks copied from it) had its API endpoint open to 0.0.0.0/0."""
    cluster = {"kind": "eks", "region": "eu-west-1", **({"endpointPublicAccessCidrs": cidrs} if cidrs else {})}
    raw = {"environment": environment, "cluster": cluster, "jenkins": {"enabled": False}}
    with pytest.raises(ConfigError, match=f"cluster.endpointPublicAccessCidrs.*{message}"):
        validate(raw, "x.yaml")


def test_prod_monitoring_is_highly_available():
    """Issue 13 item 11: prod needs an HA pair of Prometheus and three Alertmanagers."""
    import json

    from tools import mock_engine

    cfg, _ = mock_engine.stack_config("prod")
    monitoring = json.loads(cfg["mlplatform:monitoring"])
    assert monitoring["prometheusReplicas"] >= 2 and monitoring["alertmanagerReplicas"] >= 3
    low = {**monitoring, "alertmanagerReplicas": 1}
    with pytest.raises(ConfigError, match="alertmanagerReplicas >= 3"):
        mock_engine.run("prod", overrides={"mlplatform:monitoring": low})
