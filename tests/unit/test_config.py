"""Bad config stops the program before any resource exists, with one line naming file and key."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys

import pytest
import yaml

from components.config import ConfigError, PlatformConfig, validate
from tests.conftest import ROOT
from tools import mock_engine

PROD = yaml.safe_load((ROOT / "stacks" / "Pulumi.prod.yaml").read_text())["config"]
# An EKS receiver names its source store itself (issue 24 item 3).
STAGING_SOURCE = {"stack": "staging", "account": "222222222222", "bucket": "staging-store"}


def prod_with(**changes):
    """The prod stack's config with ``changes`` applied; keys are dotted paths, e.g. 'gpuPools[0].min'."""
    cfg = copy.deepcopy(PROD)
    for dotted, value in changes.items():
        path = dotted.replace("[", ".").replace("]", "").split(".")
        node = cfg
        top = f"mlplatform:{path[0]}"
        keys = [top, *path[1:]]
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
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
    (
        "typo in a nested key",
        {"models.mnist.serving.maxReplica": 4},
        "mlplatform:models.mnist.serving.maxReplica:",
        "did you mean 'maxReplicas'",
    ),
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
    (
        "accuracy above 1",
        {"models.mnist.training.minAccuracy": 98.42},
        "mlplatform:models.mnist.training.minAccuracy:",
        "less than or equal to 1",
    ),
    ("accuracy zero", {"models.mnist.training.minAccuracy": 0}, "mlplatform:models.mnist.training.minAccuracy:", "greater than 0"),
    (
        "minReplicas > maxReplicas",
        {"models.mnist.serving.minReplicas": 8, "models.mnist.serving.maxReplicas": 4, "models.mnist.serving.replicas": 4},
        "mlplatform:models.mnist.serving.minReplicas:",
        "<= maxReplicas",
    ),
    (
        "prod with one replica",
        {"models.mnist.serving.replicas": 1, "models.mnist.serving.minReplicas": 1},
        "mlplatform:models.mnist.serving.replicas:",
        ">= 2 replicas",
    ),
    (
        "prod LB open to the world",
        {"models.mnist.serving.allowedCidrs": ["0.0.0.0/0"]},
        "mlplatform:models.mnist.serving.allowedCidrs[0]:",
        "not be open to the world",
    ),
    (
        "prod LB unrestricted",
        {"models.mnist.serving.allowedCidrs": []},
        "mlplatform:models.mnist.serving.allowedCidrs:",
        "set at least one CIDR",
    ),
    (
        "not a CIDR",
        {"models.mnist.serving.allowedCidrs": ["10.0.0.300/24"]},
        "mlplatform:models.mnist.serving.allowedCidrs[0]:",
        "must be a CIDR block",
    ),
    ("missing cluster kind", {"cluster.kind": DELETE}, "mlplatform:cluster.kind:", "required key is missing"),
    ("eks without region", {"cluster.region": DELETE}, "mlplatform:cluster.region:", "required when cluster.kind is 'eks'"),
    # (the chat LLM is pinned to the renamed pool: unpinned, so the duplicate is the one problem)
    (
        "duplicate pool names",
        {"gpuPools[1].name": "gpu-train", "models.chat.llm.pool": DELETE},
        "mlplatform:gpuPools[1].name:",
        "must be unique",
    ),
    (
        "pool mixing GPU counts",
        {"gpuPools[0].instanceTypes": ["g5.xlarge", "g5.12xlarge"]},
        "mlplatform:gpuPools[0].instanceTypes:",
        "same GPU count",
    ),
    ("bad cron schedule", {"models.mnist.training.schedule": "every day"}, "mlplatform:models.mnist.training.schedule:", "5-field cron"),
    ("wrong type", {"models.mnist.training.epochs": "many"}, "mlplatform:models.mnist.training.epochs:", "valid integer"),
    # The model catalogue
    ("old top-level training key", {"training": {"epochs": 3}}, "mlplatform:training:", "moved to models.<name>.training"),
    ("old top-level serving key", {"serving": {"replicas": 3}}, "mlplatform:serving:", "moved to models.<name>.serving"),
    (
        "model name not DNS-1123",
        {
            "models.Fraud_Model": {
                "source": STAGING_SOURCE,
                "serving": {"allowedCidrs": ["203.0.113.0/24"]},
            }
        },
        "mlplatform:models.Fraud_Model:",
        "DNS-1123",
    ),
    (
        "model name too long",
        {"models." + "m" * 31: {"source": STAGING_SOURCE, "serving": {"allowedCidrs": ["203.0.113.0/24"]}}},
        "mlplatform:models." + "m" * 31 + ":",
        "at most 30",
    ),
    (
        "per-model rule on a second model",
        {
            "models.fraud": {
                "source": STAGING_SOURCE,
                "serving": {"minReplicas": 3, "maxReplicas": 2, "allowedCidrs": ["203.0.113.0/24"]},
            }
        },
        "mlplatform:models.fraud.serving.minReplicas:",
        "<= maxReplicas",
    ),
    ("unknown key in an entry", {"models.fraud": {"servng": {}}}, "mlplatform:models.fraud.servng:", "did you mean 'serving'"),
    ("unknown runtime", {"models.mnist.runtime": "onnx"}, "mlplatform:models.mnist.runtime:", "'tensorflow'"),
    (
        "champion margin above 1",
        {"models.mnist.training.championMargin": 2},
        "mlplatform:models.mnist.training.championMargin:",
        "less than or equal to 1",
    ),
    (
        "queue quota above the pools' capacity",
        {"queue": {"gpuQuota": 10}},
        "mlplatform:queue.gpuQuota:",
        "must not exceed the GPU pools' capacity",
    ),
    (
        "prod trains",
        {"models.mnist.source": DELETE},
        "mlplatform:models.mnist.source:",
        "prod never trains",
    ),
    (
        "training keys on a model received from another stack",
        {"models.mnist.training": {"epochs": 3}},
        "mlplatform:models.mnist.training:",
        "trains nothing",
    ),
    ("a stack promoting from itself", {"models.mnist.source.stack": "prod"}, "mlplatform:models.mnist.source.stack:", "another stack"),
    (
        "workers must be positive",
        {"models.mnist.training.workers": 0},
        "mlplatform:models.mnist.training.workers:",
        "greater than or equal to 1",
    ),
    (
        "ecr on a kubeconfig cluster",
        {"cluster.kind": "kubeconfig", "gpuPools": [], "models.chat": DELETE, "models.support-bot": DELETE},
        "mlplatform:registry.kind:",
        "needs an EKS stack",
    ),
    # runtime vllm (components/config/llm.py)
    ("vllm without its llm section", {"models.chat.llm": DELETE}, "mlplatform:models.chat.llm:", "required when runtime is 'vllm'"),
    ("tensor parallel beyond one node", {"models.chat.llm.gpus": 4}, "mlplatform:models.chat.llm.gpus:", "fit no node of the GPU pools"),
    (
        "a TF setting on a vllm model",
        {"models.chat.serving.maxBatchSize": 8},
        "mlplatform:models.chat.serving.maxBatchSize:",
        "configures the TF server",
    ),
    ("an llm section on a TF model", {"models.mnist.llm": {"source": "o/m"}}, "mlplatform:models.mnist.llm:", "only for runtime 'vllm'"),
    (
        "prod LLM asleep at night",
        {"models.chat.llm.awake": {"timezone": "UTC"}},
        "mlplatform:models.chat.llm.awake:",
        "prod models do not sleep",
    ),
    ("not a model source", {"models.chat.llm.source": "qwen 7b"}, "mlplatform:models.chat.llm.source:", "Hugging Face id"),
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


STAGING = yaml.safe_load((ROOT / "stacks" / "Pulumi.staging.yaml").read_text())["config"]


@pytest.mark.parametrize(
    ("what", "changes", "training", "key", "expect"),
    [
        (
            "a run bigger than the queue's GPU quota",
            {"mlplatform:queue": {"gpuQuota": 2}},
            {"workers": 3},
            "workers",
            "more than queue.gpuQuota (2)",
        ),
        (
            "a run bigger than the queue's CPU quota",
            {"mlplatform:queue": {"cpu": "2"}},
            {"workers": 3},
            "workers",
            "3 workers request 3 CPUs, more than queue.cpu (2)",
        ),
        (
            "a worker needs more GPUs than any pool's node has",
            {},
            {"gpus": 2},
            "gpus",
            "must fit one node: the largest GPU pool instance has 1 (got gpus=2)",
        ),
        ("workers x gpus beyond the pools' capacity", {}, {"workers": 9}, "workers", "workers x gpus = 9 GPUs, more than the GPU pools"),
    ],
    ids=lambda v: v if isinstance(v, str) and " " in v else "",
)
def test_training_fit_rules_on_a_stack_that_trains(what, changes, training, key, expect):
    """Prod trains nothing (models.<name>.source): the training rules are checked on a stack whose GPU pools could run them (staging, training turned back on)."""
    cfg = copy.deepcopy(STAGING)
    cfg.update(changes)
    cfg["mlplatform:models"]["mnist"].pop("source", None)  # staging receives mnist from dev: train here instead
    cfg["mlplatform:models"]["mnist"].setdefault("training", {}).update(training)
    with pytest.raises(ConfigError) as info:
        mock_engine.run("staging", overrides=cfg)
    message = str(info.value)
    assert message.startswith(f"stacks/Pulumi.staging.yaml: mlplatform:models.mnist.training.{key}:"), message
    assert expect in message and "\n" not in message, message


def test_every_stack_file_is_valid():
    for path in sorted((ROOT / "stacks").glob("Pulumi.*.yaml")):
        raw = {k.removeprefix("mlplatform:"): v for k, v in yaml.safe_load(path.read_text())["config"].items()}
        assert isinstance(validate(raw, path.name), PlatformConfig)


def test_non_prod_gpu_pools_may_scale_to_zero():
    cfg = validate(
        {
            "environment": "dev",
            "cluster": {"kind": "eks", "region": "eu-west-1", "endpointPublicAccessCidrs": ["203.0.113.0/24"], "accountId": "111111111111"},
            "jenkins": {"enabled": False},
            "gpuPools": [{"name": "g", "instanceTypes": ["g5.xlarge"], "min": 0, "desired": 0, "max": 1}],
        },
        "x.yaml",
    )
    assert cfg.gpu_pools[0].min == 0


LOCAL = {
    "environment": "local",
    "cluster": {"kind": "kubeconfig"},
    "registry": {"kind": "external", "url": "localhost:5001"},
    "jenkins": {"enabled": False},
    "gateway": {"internal": True},
}


def test_training_gpus_need_gpu_nodes():
    with pytest.raises(ConfigError, match=r"x.yaml: mlplatform:models.mnist.training.gpus: must be 0"):
        validate({**LOCAL, "models": {"mnist": {"training": {"gpus": 1}}}}, "x.yaml")


def test_every_problem_reported_at_once_one_line_each():
    """Type errors, unknown keys, moved keys and rule violations of one file, in one error."""
    cfg = prod_with(
        **{
            "training": {},
            "models.mnist.serving.maxReplica": 3,
            "monitoring.retention": "forever",
            "gpuPools[0].min": 9,
            "models.fraud": {
                "source": STAGING_SOURCE,
                "serving": {"minReplicas": 3, "maxReplicas": 2, "allowedCidrs": ["203.0.113.0/24"]},
            },
        }
    )
    with pytest.raises(ConfigError) as info:
        mock_engine.run("prod", overrides=cfg)
    lines = str(info.value).splitlines()
    keys = [line.split(": ")[1] for line in lines]
    assert keys == [
        "mlplatform:training",
        "mlplatform:models.mnist.serving.maxReplica",
        "mlplatform:monitoring.retention",
        "mlplatform:gpuPools[0].min",
        "mlplatform:models.fraud.serving.minReplicas",
    ], lines
    assert all(line.startswith("stacks/Pulumi.prod.yaml: mlplatform:") for line in lines)
    assert info.value.registered == []


def test_public_entry_point_needs_cidrs_or_internal():
    """Issue 13 item 4: a non-prod entry point open to the internet is refused; internal is fine."""
    open_dev = {**LOCAL, "gateway": {}, "models": {"mnist": {"training": {"gpus": 0}}}}
    with pytest.raises(ConfigError, match=r"mlplatform:models.mnist.serving.allowedCidrs: a public entry point must be restricted"):
        validate(open_dev, "x.yaml")
    assert validate({**open_dev, "gateway": {"internal": True}}, "x.yaml").gateway.internal
    restricted = {"mnist": {"training": {"gpus": 0}, "serving": {"allowedCidrs": ["203.0.113.0/24"]}}}
    assert validate({**open_dev, "models": restricted}, "x.yaml").models["mnist"].serving.allowed_cidrs == ["203.0.113.0/24"]


def test_duplicate_model_name_in_the_stack_file(tmp_path, monkeypatch):
    """YAML keeps the last of two equal keys silently; the Pulumi CLI refuses the file, and so do we."""
    text = (ROOT / "stacks" / "Pulumi.dev.yaml").read_text()
    entry = text[text.index("    mnist:\n") : text.index("  mlplatform:monitoring:")]
    bad = text.replace(entry, entry + entry)
    (tmp_path / "Pulumi.zz-dup-test.yaml").write_text(bad)
    monkeypatch.setenv("MLPLATFORM_STACKS_DIR", str(tmp_path))  # never into stacks/: parallel workers collect it
    with pytest.raises(ConfigError, match=r"^stacks/Pulumi.zz-dup-test.yaml: mlplatform:models.mnist: defined twice \(line \d+\)$"):
        mock_engine.stack_config("zz-dup-test")


def test_synth_bad_config_exits_2_with_one_line(tmp_path):
    bad = yaml.safe_load((ROOT / "stacks" / "Pulumi.dev.yaml").read_text())
    bad["config"]["mlplatform:gpuPools"][0]["min"] = 5
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    (stacks / "Pulumi.zz-bad-test.yaml").write_text(yaml.safe_dump(bad))
    proc = subprocess.run(
        [sys.executable, "-m", "tools.synth", "--stack", "zz-bad-test", "--out", str(tmp_path / "o")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MLPLATFORM_STACKS_DIR": str(stacks)},  # not stacks/: parallel workers collect it
    )
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


def test_every_config_field_is_described():
    from tools import config_doc

    assert [key for key, _, _, meaning in config_doc.rows() if not meaning.strip()] == []


def test_readme_config_table_is_generated_from_the_model():
    from tools import config_doc

    readme = config_doc.readme_table((ROOT / "README.md").read_text())
    assert readme is not None, "README.md lost its config-table markers"
    assert readme == config_doc.table(), "README config table is stale: run `python -m tools.config_doc --write`"
    for key in ("registry.builder", "ephemeral.ttlHours", "models.<name>.serving.maxReplicas"):  # once missing from the table
        assert f"| `{key}` |" in readme


@pytest.mark.parametrize(
    "code,expect",
    [
        ("models/nope", "models/nope/train.py not found"),
        ("../elsewhere", "must be a folder inside the project"),
        ("/abs/models/x", "must be a folder inside the project"),
    ],
)
def test_a_models_code_folder_must_hold_its_trainer(code, expect):
    with pytest.raises(ConfigError, match=rf"x.yaml: mlplatform:models.fraud.training.code: .*{re.escape(expect)}"):
        validate({**LOCAL, "models": {"fraud": {"training": {"gpus": 0, "code": code}}}}, "x.yaml")
    ok = validate({**LOCAL, "models": {"fraud": {"training": {"gpus": 0, "code": "models/diabetes/"}}}}, "x.yaml")
    assert ok.models["fraud"].training.code == "models/diabetes"


def test_server_processes_are_a_positive_count_or_auto():
    base = {**LOCAL, "models": {"m": {"training": {"gpus": 0}, "serving": {"processes": "auto"}}}}
    assert validate(base, "x.yaml").models["m"].serving.processes == "auto"
    for bad in (0, "many"):
        with pytest.raises(ConfigError, match=r"mlplatform:models.m.serving.processes"):
            validate({**base, "models": {"m": {"training": {"gpus": 0}, "serving": {"processes": bad}}}}, "x.yaml")


def test_a_pod_is_sized_for_its_server_processes():
    """processes: N without resources sizes the pod for N (one core and 512Mi each); explicit
    resources that cannot hold N processes are refused in one line each, naming the key."""
    model = {"training": {"gpus": 0}, "serving": {"processes": 4}}
    r = validate({**LOCAL, "models": {"m": model}}, "x.yaml").models["m"].serving.resources
    assert (r.requests.cpu, r.requests.memory, r.limits.cpu, r.limits.memory) == ("2000m", "2560Mi", "4", "5120Mi")
    one = validate({**LOCAL, "models": {"m": {"training": {"gpus": 0}}}}, "x.yaml").models["m"].serving.resources
    assert (one.requests.cpu, one.requests.memory, one.limits.cpu, one.limits.memory) == ("500m", "1Gi", "2", "2Gi")
    small = {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "1Gi"}}
    with pytest.raises(ConfigError) as e:
        validate({**LOCAL, "models": {"m": {"training": {"gpus": 0}, "serving": {"processes": 3, "resources": small}}}}, "x.yaml")
    lines = str(e.value).splitlines()
    assert any(
        line.startswith("x.yaml: mlplatform:models.m.serving.processes: 3 processes exceed serving.resources.limits.cpu (2)")
        for line in lines
    ), lines
    assert any("mlplatform:models.m.serving.resources.limits.memory: 1Gi is less than 512Mi for each of the 3" in line for line in lines), (
        lines
    )
    # auto: as many processes as the CPU limit (rounded up, as the server reads its cgroup); memory checked for them
    with pytest.raises(ConfigError, match=r"limits.memory: 1Gi is less than 512Mi for each of the 4 server processes"):
        auto = {"processes": "auto", "resources": {**small, "limits": {"cpu": "3500m", "memory": "1Gi"}}}
        validate({**LOCAL, "models": {"m": {"training": {"gpus": 0}, "serving": auto}}}, "x.yaml")


@pytest.mark.parametrize(
    "value,expect",
    [
        ("[1]", "mlplatform:jenkinsCredentials: must be a JSON object"),
        ('{"github-token": "hunter2", "x": ""}', "mlplatform:jenkinsCredentials: missing keys ['aws-dev-access-key-id', "),
    ],
    ids=["not-an-object", "wrong-keys"],
)
def test_jenkins_credentials_mistake_is_one_line_before_any_resource(value, expect):
    """The secret is plaintext to the program at load: checked there, not in the Secret's apply (a traceback)."""
    with pytest.raises(ConfigError) as info:
        mock_engine.run("staging", overrides={"mlplatform:jenkinsCredentials": value})
    message = str(info.value)
    assert message.startswith(f"stacks/Pulumi.staging.yaml: {expect}"), message
    assert "\n" not in message and "hunter2" not in message, message
    assert info.value.registered == []
