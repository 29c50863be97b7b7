"""LoRA adapters on a stack (issue 26, docs/lora.md): dev's ``support-bot`` (``adapterOf: chat``,
``training: {kind: lora}``) rendered under mocks.

* the fine-tuning Job (components/models/lora_job.py): queued by Kueue like a training run, on the base's
  served version, non-root with a read-only root, GPU limits, its own identity that writes only the
  adapter's prefix (with the registry guards) and its checkpoints, ``llm.finetune`` then ``llm.lora_gate gate``;
* the base's vLLM serving it (components/models/llm_service.py): a verified fetch of the adapter's
  served version per adapter before vLLM starts, checked against the base version the pod serves, and
  the ``--enable-lora`` flags, each in the pinned vLLM's flag list;
* before the base or the adapter has a served version: no run, no adapter in the pods.
"""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from components.lib import rollout_specs
from components.models import llm_service, lora_job
from components.services import kueue
from llm import lora_gate
from tests.conftest import ROOT
from tools import mock_engine, reference

BASE_V, ADAPTER_V = "20261201T000000Z-base7", "20261202T000000Z-a3f9"
MODELS = yaml.safe_load((ROOT / "stacks" / "Pulumi.dev.yaml").read_text())["config"]["mlplatform:models"]


def pinned_models(base: str | None = BASE_V, adapter: str | None = ADAPTER_V) -> dict:
    """dev's catalogue as the pipeline's workspace has it (``serving.version`` pinned by deliver)."""
    models = copy.deepcopy(MODELS)
    for name, version in (("chat", base), ("support-bot", adapter)):
        if version:
            models[name].setdefault("serving", {})["version"] = version
    return {"mlplatform:models": models}


@pytest.fixture(scope="module")
def pinned():
    return mock_engine.run("dev", overrides=pinned_models())


def objects(result, kind: str) -> dict[str, dict]:
    return {r.raw["metadata"]["name"]: r for r in result.k8s_objects() if r.raw.get("kind") == kind}


def lora_jobs(result) -> list:
    return [j for name, j in objects(result, "Job").items() if name.startswith(lora_job.object_name("support-bot") + "-")]


def chat_pod(result) -> dict:
    return objects(result, "Rollout")[llm_service.object_name("chat")].raw["spec"]["template"]


def test_the_fine_tuning_job_is_queued_like_training_on_the_bases_served_version(pinned):
    (job,) = lora_jobs(pinned)
    meta, spec = job.raw["metadata"], job.raw["spec"]
    assert spec["suspend"] is True and kueue.job_labels("pipeline").items() <= meta["labels"].items()
    assert meta["annotations"].get("pulumi.com/skipAwait") == "true" and kueue.FOREGROUND.items() <= meta["annotations"].items()
    train_jobs = [j for n, j in objects(pinned, "Job").items() if n.startswith("train-")]
    assert train_jobs and meta["namespace"] == train_jobs[0].raw["metadata"]["namespace"]  # the queue's namespace
    pod = spec["template"]["spec"]
    (finetune,), (gate,) = pod["initContainers"], pod["containers"]
    cmd = finetune["command"]
    assert cmd[:3] == ["python3", "-m", "llm.finetune"]
    assert cmd[cmd.index("--base") + 1] == "chat" and cmd[cmd.index("--base-version") + 1] == BASE_V
    store = cmd[cmd.index("--store") + 1]
    # a retried pod resumes; keyed by the Job's UID, which no earlier run can guess
    assert cmd[cmd.index("--checkpoint") + 1] == f"{store}/checkpoints/support-bot/$(JOB_UID)"
    env = {e["name"]: e for e in pod["initContainers"][0]["env"]}
    assert env["JOB_UID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['batch.kubernetes.io/controller-uid']"
    assert cmd[cmd.index("--rank") + 1] == "8" and cmd[cmd.index("--target-modules") + 1] == "q_proj,k_proj,v_proj,o_proj"
    g = gate["command"]
    assert g[:4] == ["python3", "-m", "llm.lora_gate", "gate"] and g[g.index("--base-version") + 1] == BASE_V
    assert g[g.index("--publish-as") + 1] == "candidate"  # a canary on chat's pods decides (ops/deliver.py)
    assert g[g.index("--golden") + 1] == f"{lora_job.DATA_DIR}/golden.yaml"
    assert g[g.index("--run") + 1] == cmd[cmd.index("--out") + 1] == lora_job.RUN_DIR
    env = {e["name"]: e for e in finetune["env"]}
    assert env["TRAIN_PUSHGATEWAY"]["value"] and env["TRAIN_MODEL_NAME"]["value"] == "support-bot"
    assert env["HF_HUB_OFFLINE"]["value"] == "1" and "HF_TOKEN" not in env
    rules = spec["podFailurePolicy"]["rules"]
    assert {r["onExitCodes"]["containerName"] for r in rules if r["action"] == "FailJob"} == {"finetune", "gate"}
    assert any(r["action"] == "Ignore" and r["onPodConditions"][0]["type"] == "DisruptionTarget" for r in rules)


def test_the_job_is_non_root_read_only_on_a_gpu_with_limits(pinned):
    (job,) = lora_jobs(pinned)
    pod = job.raw["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"} and pod["tolerations"]
    chat = MODELS["chat"]["llm"]
    for c in pod["initContainers"] + pod["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == c["resources"]["requests"]["nvidia.com/gpu"] == 1
        assert c["resources"]["limits"]["memory"] == "13Gi"  # the base's llm.resources: sized for the pool's nodes
        assert "/lora:ctx-" in c["image"] and "@sha256:" in c["image"]  # the LoRA image by digest (test_lora_image.py)
        assert {m["mountPath"] for m in c["volumeMounts"]} == {"/opt/mlplatform", lora_job.DATA_DIR, "/scratch", "/tmp"}
    assert "cacheGiB" not in chat  # the base staged in /tmp, sized like its serving cache (default 50 GiB)
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "50Gi"}} in pod["volumes"]


def test_the_committed_sets_travel_in_an_immutable_configmap(pinned):
    (job,) = lora_jobs(pinned)
    (data,) = [v for v in job.raw["spec"]["template"]["spec"]["volumes"] if v["name"] == lora_job.DATA_VOLUME]
    cm = objects(pinned, "ConfigMap")[data["configMap"]["name"]]
    assert cm.raw.get("immutable") is True
    files = cm.raw["data"]
    assert files["data-train.txt"] == (ROOT / "models/support-bot/train.txt").read_text()
    assert files["heldout-heldout.txt"] == (ROOT / "models/support-bot/heldout.txt").read_text()
    assert "golden.yaml" in files


def test_the_jobs_identity_writes_only_the_adapters_prefix_with_the_registry_guards(pinned):
    (job,) = lora_jobs(pinned)
    sa = objects(pinned, "ServiceAccount")[job.raw["spec"]["template"]["spec"]["serviceAccountName"]]
    assert sa.raw["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] and sa.raw.get("automountServiceAccountToken") is False
    (policy,) = [r for r in pinned.of_type("aws:iam/rolePolicy:RolePolicy") if "-support-bot-lora-store" in r.name]
    doc = policy.inputs["policy"]
    doc = json.loads(doc) if isinstance(doc, str) else doc
    writes = [s for s in doc["Statement"] if s["Effect"] == "Allow" and "s3:PutObject" in s["Action"]]
    resources = {r.split(":::", 1)[-1].split("/", 1)[-1] for s in writes for r in s["Resource"]}
    assert resources == {"models/support-bot/*", "checkpoints/support-bot/*"}, resources
    denies = [s for s in doc["Statement"] if s["Effect"] == "Deny"]
    assert denies and all("models/support-bot/" in json.dumps(s["Resource"]) for s in denies)  # iam._registry_guards
    assert not any("models/chat/" in json.dumps(s["Resource"]) for s in writes)  # the base is read, never written


def test_chat_serves_the_adapter_verified_against_its_own_base_version(pinned):
    pod = chat_pod(pinned)
    assert pod["metadata"]["annotations"][lora_gate.version_annotation("support-bot")] == ADAPTER_V
    assert pod["metadata"]["annotations"][rollout_specs.VERSION_ANNOTATION] == BASE_V
    weights, adapter = pod["spec"]["initContainers"]
    assert weights["name"] == "weights" and adapter["name"] == "adapter-support-bot"
    cmd = adapter["command"]
    assert cmd[:4] == ["python3", "-m", "llm.lora_gate", "fetch"]
    assert cmd[cmd.index("--version") + 1] == ADAPTER_V
    assert (cmd[cmd.index("--base") + 1], cmd[cmd.index("--base-version") + 1]) == ("chat", BASE_V)  # refused if trained on another
    dest = cmd[cmd.index("--dest") + 1]
    assert dest == llm_service.adapter_path("support-bot", ADAPTER_V) and dest.startswith(llm_service.CACHE_DIR + "/")
    assert adapter["securityContext"] == weights["securityContext"] and adapter["volumeMounts"] == weights["volumeMounts"]
    (vllm,) = pod["spec"]["containers"]
    args = vllm["args"]
    assert args[args.index("--lora-modules") + 1] == f"support-bot={dest}"
    assert args[args.index("--max-lora-rank") + 1] == "16" and args[args.index("--max-loras") + 1] == "1"
    assert "--enable-lora" in args


def golden_set(result) -> list[dict]:
    return json.loads(objects(result, "ConfigMap")[f"{llm_service.object_name('chat')}-golden"].raw["data"]["set.json"])["prompts"]


def test_chats_canary_asks_the_served_adapters_golden_prompts(pinned):
    """The canary pods serve base + adapter: the base's golden Job also sends models/support-bot/golden.yaml
    with ``model: support-bot`` (llm/golden.py ``with_adapters``), after chat's own prompts."""
    prompts = golden_set(pinned)
    own = yaml.safe_load((ROOT / "models/chat/golden.yaml").read_text())["prompts"]
    bot = yaml.safe_load((ROOT / "models/support-bot/golden.yaml").read_text())["prompts"]
    assert [p["id"] for p in prompts] == [p["id"] for p in own] + [f"support-bot_{p['id']}" for p in bot]
    assert {p.get("model") for p in prompts[len(own) :]} == {"support-bot"} and not any(p.get("model") for p in prompts[: len(own)])


def test_the_lora_flags_are_in_the_pinned_vllms_flag_list(pinned):
    ref = reference.reference_dir()
    path = ref / "vllm" / llm_service.VLLM_VERSION / "serve-flags.txt" if ref else None
    if path is None or not path.exists():
        pytest.skip("../shared/reference not present (user checkout): no vLLM flag list")
    known = set(path.read_text().split())
    (vllm,) = chat_pod(pinned)["spec"]["containers"]
    flags = [a for a in vllm["args"] if a.startswith("--")]
    assert {"--enable-lora", "--lora-modules", "--max-lora-rank", "--max-loras"} <= set(flags)
    assert [f for f in flags if f not in known] == []


def test_chats_pods_read_the_adapters_versions(pinned):
    policies = [r for r in pinned.of_type("aws:iam/rolePolicy:RolePolicy") if "-chat-llm" in r.name]
    assert policies and all("models/support-bot/" in json.dumps(p.inputs["policy"]) for p in policies)


def test_nothing_to_train_on_or_serve_before_versions_are_pinned():
    """The committed dev stack (no pins, no record): the base serves its champion, resolved at start,
    so no run is rendered (it trains on a pinned base version) and no adapter is in the pods."""
    result = mock_engine.run("dev", overrides=pinned_models(base=None, adapter=None))
    assert lora_jobs(result) == []
    pod = chat_pod(result)
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["weights"]
    assert "--enable-lora" not in pod["spec"]["containers"][0]["args"]
    assert not any(p.get("model") for p in golden_set(result))  # no adapter served: none of its prompts asked
    models = result.outputs["models"]
    assert models["support-bot"]["adapterOf"] == "chat" and models["support-bot"].get("loraJob") is None
    assert models["support-bot"]["url"] == models["chat"]["url"]  # clients send model: support-bot on chat's route


def test_every_mandatory_policy_passes_with_the_job_and_the_adapter_served(pinned):
    """The pack (policy/) on the pinned render, where the Job and the adapter init container exist
    (the committed dev stack has neither: tests/stacks/test_policy_on_stacks.py cannot see them)."""
    from policy import check, rules

    resources = [rules.Res(type=r.type, props=r.inputs, urn=r.urn, name=r.name, parent=r.parent) for r in pinned.records]
    (job,) = lora_jobs(pinned)
    assert any(r.urn == job.urn and rules.pod_spec(r) is not None for r in resources)  # the pack sees the Job's pod
    mandatory, _ = check.violations(resources)
    assert mandatory == [], "\n".join(f"{name}: {urn}: {m}" for name, urn, m in mandatory)


def test_the_job_and_its_objects_are_schema_valid(pinned):
    from tools import manifests

    version = yaml.safe_load((ROOT / "stacks" / "Pulumi.dev.yaml").read_text())["config"]["mlplatform:kubernetesVersion"]
    (job,) = lora_jobs(pinned)
    named = [r for r in pinned.k8s_objects() if r.raw["metadata"]["name"].startswith(lora_job.object_name("support-bot"))]
    assert {r.raw["kind"] for r in named} >= {"Job", "ConfigMap", "NetworkPolicy", "ServiceAccount"}
    for r in [*named, objects(pinned, "Rollout")[llm_service.object_name("chat")]]:
        assert manifests.validate(r.inputs, version) == [], r.urn


def test_the_pinned_stack_converges(pinned):
    """issue 29's rules (tools/convergence.py): the Job, its ConfigMaps and the adapter's pod template converge."""
    from tools import convergence

    assert convergence.check(pinned.records) == []
