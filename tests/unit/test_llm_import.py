"""The cluster side of LLM weights as registry versions (components/models/llm_import.py): the weights init
container that vLLM's pod runs first, the queued import Job, and the platform code both mount from a
ConfigMap, run here from exactly that ConfigMap's files against a real local store."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from components.config.llm import LlmConfig
from components.models import llm_import
from tests.conftest import ROOT

PINNED = LlmConfig(source="Qwen/Qwen2.5-7B-Instruct-AWQ", revision="a" * 40, max_model_len=8192, quantization="awq_marlin")
STORE_ENV = [{"name": "AWS_ENDPOINT_URL", "value": "http://minio.ml-store:9000"}]


def test_init_container_pins_the_version_and_the_revision():
    c = llm_import.init_container("chat", PINNED, "20261207T000000Z-aaaaaaaaaaaa", "s3://store", STORE_ENV)
    assert c["image"] == llm_import.IMAGE and c["image"].endswith(":v0.33.0")
    cmd = c["command"]
    assert cmd[:3] == ["python3", "-m", "llm.fetch"]
    assert cmd[cmd.index("--version") + 1] == "20261207T000000Z-aaaaaaaaaaaa"
    assert cmd[cmd.index("--source") + 1] == PINNED.source and cmd[cmd.index("--revision") + 1] == "a" * 40
    assert cmd[cmd.index("--cache") + 1] == llm_import.MODELS_DIR
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1" and "HF_TOKEN" not in env
    assert env["PYTHONPATH"] == llm_import.CODE_DIR
    # An init container's limits are not added to the pod's: the vLLM container's limit is the pod's anyway.
    assert c["resources"]["limits"]["memory"] == PINNED.resources.memory_limit
    assert {"name": llm_import.CODE_VOLUME, "mountPath": llm_import.CODE_DIR, "readOnly": True} in c["volumeMounts"]
    assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_served_weights_give_vllm_the_verified_folder():
    w = llm_import.served_weights("chat", PINNED, "v1", "s3://store", [], "llm-code-abc")
    assert w.model_path == f"{llm_import.MODELS_DIR}/chat/v1"
    assert w.volumes == [llm_import.code_volume("llm-code-abc")]
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in w.env


def test_code_configmap_holds_every_file_and_is_named_by_its_content():
    data = llm_import.code_files()
    assert set(data) == {rel.replace("/", "__") for rel in llm_import.CODE_FILES}
    assert all(len(k) <= 253 and k.replace("_", "").replace(".", "").isalnum() for k in data)  # ConfigMap key rules
    assert len(json.dumps(data)) < 1_000_000  # a ConfigMap holds at most 1 MiB
    name = llm_import.code_configmap_name()
    assert name.startswith("llm-code-") and name == llm_import.code_configmap_name()


def test_the_configmap_code_runs_the_fetch_on_its_own(tmp_path):
    """The files the ConfigMap carries, laid out as the volume's items lay them out, are all the fetch
    needs: run from that folder alone (not the repo), it fills and verifies a version from a real store."""
    code = tmp_path / "opt-mlplatform"
    for item in llm_import.code_volume("x")["configMap"]["items"]:
        (code / item["path"]).parent.mkdir(parents=True, exist_ok=True)
        (code / item["path"]).write_text(llm_import.code_files()[item["key"]])
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "config.json").write_text(
        json.dumps({"num_hidden_layers": 1, "num_attention_heads": 1, "hidden_size": 8, "torch_dtype": "float32"})
    )
    (snap / "tokenizer.json").write_text("{}")
    (snap / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    env = {**os.environ, "PYTHONPATH": str(code)}
    run = [sys.executable, "-m", "llm.importer", "import", "--store", str(tmp_path / "store"), "--model", "chat", "--source", str(snap)]
    out = subprocess.run(run, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    version = json.loads(out.stdout)["version"]
    fetch = [sys.executable, "-m", "llm.fetch", "--store", str(tmp_path / "store"), "--model", "chat", "--version", version]
    done = subprocess.run([*fetch, "--cache", str(tmp_path / "cache")], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.returncode == 0 and " filled at " in done.stdout, done.stderr
    assert (tmp_path / "cache" / "chat" / version / "model.safetensors").is_file()


def test_import_job_is_queued_on_a_cpu_node_and_refusals_do_not_retry():
    target = llm_import.ImportTarget(gpu_mib=23028, gpus=1, utilization=0.9, max_model_len=8192, max_num_seqs=None)
    pod = llm_import.import_pod_spec("chat", PINNED, "s3://store", [], target, "llm-code-abc", False, "import-chat-hf-token")
    assert "tolerations" not in pod and "nodeSelector" not in pod  # the GPU pools are tainted: a CPU node
    cmd = pod["containers"][0]["command"]
    assert cmd[:4] == ["python3", "-m", "llm.importer", "import"]
    assert cmd[cmd.index("--revision") + 1] == "a" * 40 and cmd[cmd.index("--gpu-mib") + 1] == "23028"
    assert "--champion" not in cmd  # the canary decides
    token = next(e for e in pod["containers"][0]["env"] if e["name"] == "HF_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "import-chat-hf-token", "key": "token"}
    job = llm_import.import_job_spec("chat", pod)
    assert job["suspend"] is True  # Kueue admits it
    rules = job["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "FailJob", "onExitCodes": {"containerName": "import", "operator": "In", "values": [2]}}


def test_a_new_revision_is_a_new_import_run():
    a = llm_import.run_name("chat", PINNED, None, "llm-code-abc")
    b = llm_import.run_name("chat", PINNED.model_copy(update={"revision": "b" * 40}), None, "llm-code-abc")
    assert a != b and a.startswith("import-chat-") and a == llm_import.run_name("chat", PINNED, None, "llm-code-abc")


def test_import_egress_never_reaches_the_metadata_service():
    spec = llm_import.network_policy_spec("chat")
    assert spec["ingress"] == []
    outside = spec["egress"][0]["to"][0]["ipBlock"]
    assert outside["except"] == ["169.254.169.254/32"]


def test_importer_exit_code_2_is_a_refusal(tmp_path):
    """What the Job's podFailurePolicy relies on: a refused import exits 2 (here: pickled weights only)."""
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "config.json").write_text("{}")
    (snap / "pytorch_model.bin").write_bytes(b"pickle")
    run = [sys.executable, "-m", "llm.importer", "import", "--store", str(tmp_path / "s"), "--model", "chat", "--source", str(snap)]
    out = subprocess.run(run, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "REFUSED" in out.stderr and "safetensors" in out.stderr
