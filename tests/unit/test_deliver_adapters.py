"""ops/deliver.py for LoRA adapters (issue 26): adapter versions go dev -> staging -> prod as verified
bytes (llm/lora_gate.py ``promote``: the target must hold the adapter's base with the same digest), only
onto the base version the target stack serves, pinned like every model (``serving.version``) and judged
by the base's Rollout (``llm-<base>``: its canary pods serve base + the new adapter).

Real local stores (three, under tmp_path) and real registry calls; pulumi and kubectl are the only
stand-ins (a scripted runner answering what the step reads, as tests/unit/test_deliver.py does)."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from components.lib import llm_canary
from llm import finetune, importer, lora_gate
from ops import deliver
from training import registry, storage

V1, V2, V3 = "20260101T000000Z-lora1", "20260102T000000Z-lora2", "20260103T000000Z-lora3"
BASE_V = "20251201T000000Z-chat"  # the base version every stack serves
RUN = "llm-chat-c2-1"
KEY = "mlplatform:models.support-bot.serving.version"


class BaseRollout:
    """pulumi and kubectl for one stack whose base ``chat`` serves BASE_V: pinning the adapter changes
    the base's pod template, the Rollout ``llm-chat`` canaries it and ends ``outcome`` (Healthy: every
    judging metric measured Successful; Failed: the adapter's golden prompts failed)."""

    def __init__(self, stores: dict[str, str], outcome: str = "Healthy"):
        self.stores, self.outcome = stores, outcome
        self.pins: list[str | None] = []  # the adapter's serving.version, None: removed
        self.pinned: str | None = None
        self.serving: str | None = None  # the adapter version the stable pods serve
        self.ups = self.canaries = 0

    def _rollout(self) -> dict:
        meta = {
            "annotations": {
                deliver.VERSION_ANNOTATION: BASE_V,
                **({lora_gate.version_annotation("support-bot"): self.pinned} if self.pinned else {}),
            }
        }
        status: dict = {"phase": "Healthy", "stableRS": "c1", "currentPodHash": "c1"}
        if self.pinned != self.serving:
            status = {"canary": {"currentBackgroundAnalysisRunStatus": {"name": RUN}}, "stableRS": "c1", "currentPodHash": "c2"}
            if self.outcome == "Healthy":
                status.update(phase="Healthy", stableRS="c2")
                self.serving = self.pinned
            else:
                status.update(phase="Degraded", abort=True, message=f'RolloutAborted: Metric "{llm_canary.METRIC_GOLDEN}" assessed Failed')
        return {"spec": {"replicas": 2, "template": {"metadata": meta}}, "status": status}

    def _run(self) -> dict:
        self.canaries += 1
        passed = self.outcome == "Healthy"
        results = {m: "Successful" for m in llm_canary.JUDGING_METRICS}
        if not passed:
            results[llm_canary.METRIC_GOLDEN] = "Failed"
        metrics = [{"name": n, "phase": p, "measurements": [{"phase": p, "value": "[0.25]"}]} for n, p in results.items()]
        spec = {"metrics": [{"name": n} for n in llm_canary.JUDGING_METRICS]}
        return {
            "metadata": {"name": RUN},
            "spec": spec,
            "status": {"phase": "Successful" if passed else "Failed", "metricResults": metrics},
        }

    def __call__(self, cmd: list[str]) -> str:
        if cmd[:4] == ["pulumi", "stack", "output", "promotionRole"]:
            return "null\n"
        if cmd[:4] == ["pulumi", "stack", "output", "modelStore"]:
            return self.stores[cmd[-1]] + "\n"
        if cmd[:3] == ["pulumi", "config", "set"]:
            assert cmd[3:5] == ["--path", KEY], cmd
            self.pinned = None if cmd[5] == deliver.UNPINNED else cmd[5]
            self.pins.append(self.pinned)
            return ""
        if cmd[:2] == ["pulumi", "up"]:
            self.ups += 1
            return ""
        if cmd[3:6] == ["get", "rollout", "llm-chat"]:  # the base's Rollout, never one of the adapter's own
            return json.dumps(self._rollout())
        if cmd[3:6] == ["get", "analysisrun", RUN]:
            return json.dumps(self._run())
        raise AssertionError(f"unexpected command {cmd}")


def hand_base(tmp_path: Path, store: str, weights: bytes = b"\0" * 64, version: str = BASE_V, champion: bool = True) -> dict:
    """An imported LLM version (a hand-made snapshot: what the registry and the checks read is bytes)."""
    snap = Path(tempfile.mkdtemp(dir=tmp_path))
    shape = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 32}
    (snap / "config.json").write_text(json.dumps({"model_type": "llama", **shape, "vocab_size": 512, "torch_dtype": "float32"}))
    (snap / "tokenizer.json").write_text('{"version": "1.0"}')
    header = json.dumps({"w": {"dtype": "F32", "shape": [len(weights) // 4], "data_offsets": [0, len(weights)]}}).encode()
    (snap / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + weights)
    importer.import_weights(str(snap), None, store, "chat", reason="test", champion=champion, version=version)
    return finetune.base_identity(store, "chat", version)


def publish_adapter(tmp_path: Path, store: str, base: dict, version: str) -> None:
    """What lora_gate.publish writes for a passing run (the candidate: the canary decides)."""
    d = Path(tempfile.mkdtemp(dir=tmp_path))
    (d / "adapter_config.json").write_text(json.dumps({"r": 8, "peft_type": "LORA"}))
    (d / "adapter_model.safetensors").write_bytes(version.encode() * 8)
    (d / lora_gate.META).write_text(json.dumps({"kind": "lora", "adapter": "support-bot", "version": version, "base": base}))
    registry.publish(d, store, "support-bot", version, reason="lora gate: passed", champion=False, required=lora_gate.REQUIRED)


@pytest.fixture
def stacks(tmp_path):
    """dev trains the adapter on its base; staging receives from dev, prod from staging. Every store
    serves the same base version (its bytes promoted from dev)."""
    d = tmp_path / "stacks"
    d.mkdir()
    chat = {"runtime": "vllm", "llm": {"source": "s3://weights/chat"}}
    bot = {"runtime": "vllm", "adapterOf": "chat"}
    files = {
        "dev": {"support-bot": {**bot, "training": {"kind": "lora"}}, "chat": chat},  # the adapter first: delivered after its base
        "staging": {"support-bot": {**bot, "source": {"stack": "dev"}}, "chat": {**chat, "source": {"stack": "dev"}}},
        "prod": {"support-bot": {**bot, "source": {"stack": "staging"}}, "chat": {**chat, "source": {"stack": "staging"}}},
    }
    for stack, models in files.items():
        (d / f"Pulumi.{stack}.yaml").write_text(yaml.safe_dump({"config": {"mlplatform:models": models}}))
    stores = {s: f"file://{tmp_path}/{s}-store" for s in files}
    base = hand_base(tmp_path, stores["dev"])
    for src, dst in (("dev", "staging"), ("staging", "prod")):
        registry.promote_between(stores[src], stores[dst], "chat", BASE_V, reason="base first")
    publish_adapter(tmp_path, stores["dev"], base, V1)
    return d, stores, base


def deliver_to(stack: str, d: Path, cluster: BaseRollout) -> int:
    return deliver.deliver(stack, "support-bot", cluster, timeout_s=5, poll_s=0, stacks_dir=d)


def test_an_adapter_version_goes_dev_staging_prod_on_its_bases_canary(stacks, capsys):
    d, stores, _ = stacks
    assert deliver.delivered_models("dev", d) == ["chat", "support-bot"]  # bases first
    assert deliver.rollout_of("dev", "support-bot", d) == "llm-chat" and deliver.rollout_of("dev", "chat", d) == "llm-chat"
    for stack in ("dev", "staging", "prod"):
        cluster = BaseRollout(stores)
        assert deliver_to(stack, d, cluster) == deliver.DELIVERED, capsys.readouterr()
        # the first version too is canaried: the base's stable pods are there to compare with
        assert cluster.pins == [V1] and cluster.canaries >= 1 and cluster.ups == 1
        assert registry.get_alias(stores[stack], "support-bot", "champion")["version"] == V1
        registry.verify(stores[stack], "support-bot", V1)
    files = registry.read_manifest(stores["prod"], "support-bot", V1)["files"]
    assert files == registry.read_manifest(stores["dev"], "support-bot", V1)["files"]  # the bytes dev gated
    out = capsys.readouterr().out
    assert f"{V1} copied from dev to staging (digests verified)" in out and f"{V1} copied from staging to prod" in out
    # a second run of each stack: nothing new, no copy, no canary; the pin stays
    for stack in ("dev", "staging", "prod"):
        again = BaseRollout(stores)
        again.serving = V1
        assert deliver_to(stack, d, again) == deliver.DELIVERED
        assert again.pins == [V1] and again.canaries == 0
        assert registry.versions(stores[stack], "support-bot") == [V1]
    assert "already serves" in capsys.readouterr().out


def test_an_adapter_of_another_base_version_is_refused_before_a_byte_is_copied(tmp_path, stacks):
    d, stores, _ = stacks
    assert deliver_to("dev", d, BaseRollout(stores)) == 0
    # staging moved on to another base version: dev's adapter (trained on BASE_V) cannot be served there
    other = "20251215T000000Z-chat2"
    hand_base(tmp_path, stores["staging"], weights=b"\1" * 64, version=other)
    cluster = BaseRollout(stores)
    with pytest.raises(lora_gate.AdapterRefused) as e:
        deliver_to("staging", d, cluster)
    assert str(e.value) == f"support-bot/{V1} was trained on chat/{BASE_V}; staging serves chat/{other}"
    assert registry.versions(stores["staging"], "support-bot") == [] and cluster.pins == [] and cluster.ups == 0
    # a stack that serves no version of the base yet
    empty = {**stores, "staging": f"file://{tmp_path}/new-staging"}
    with pytest.raises(
        lora_gate.AdapterRefused, match=f"support-bot/{V1} was trained on chat/{BASE_V}; staging serves no version of chat yet"
    ):
        deliver_to("staging", d, BaseRollout(empty))


def test_main_says_it_in_one_line_and_exits_1(tmp_path, stacks, monkeypatch, capsys):
    d, stores, _ = stacks
    assert deliver_to("dev", d, BaseRollout(stores)) == 0
    hand_base(tmp_path, stores["staging"], weights=b"\1" * 64, version="20251215T000000Z-chat2")
    monkeypatch.setattr(deliver, "delivered_models", lambda stack: ["support-bot"])
    real = deliver.deliver
    monkeypatch.setattr(deliver, "deliver", lambda stack, model, timeout_s: real(stack, model, BaseRollout(stores), 5, 0, d))
    assert deliver.main(["--stack", "staging"]) == deliver.REJECTED
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"deliver: support-bot/{V1} was trained on chat/{BASE_V}; staging serves chat/20251215T000000Z-chat2"]


def test_a_flipped_byte_is_refused_and_nothing_lands(stacks):
    d, stores, _ = stacks
    assert deliver_to("dev", d, BaseRollout(stores)) == 0
    f = Path(storage.join(registry.model_root(stores["dev"], "support-bot"), V1, "adapter_model.safetensors").removeprefix("file://"))
    f.write_bytes(bytes([f.read_bytes()[0] ^ 1]) + f.read_bytes()[1:])
    cluster = BaseRollout(stores)
    with pytest.raises(registry.RegistryError, match="adapter_model.safetensors: source sha256"):
        deliver_to("staging", d, cluster)
    assert registry.versions(stores["staging"], "support-bot") == [] and cluster.pins == []


def test_a_rejected_version_is_never_promoted(tmp_path, stacks, capsys):
    d, stores, base = stacks
    assert deliver_to("dev", d, BaseRollout(stores)) == 0
    assert deliver_to("staging", d, BaseRollout(stores)) == 0
    # V2 fails its golden prompts in the base's canary on dev: rejected there, dev keeps V1
    publish_adapter(tmp_path, stores["dev"], base, V2)
    failing = BaseRollout(stores, "Failed")
    failing.serving = failing.pinned = V1
    assert deliver_to("dev", d, failing) == deliver.REJECTED
    assert failing.pins == [V2, V1] and registry.rejection(stores["dev"], "support-bot", V2) is not None
    assert f"{llm_canary.METRIC_GOLDEN} Failed" in registry.rejection(stores["dev"], "support-bot", V2)["reason"]
    assert registry.get_alias(stores["dev"], "support-bot", "champion")["version"] == V1
    # staging receives dev's champion only: V1 again, nothing to copy
    again = BaseRollout(stores)
    again.serving = V1
    assert deliver_to("staging", d, again) == 0 and again.canaries == 0
    assert registry.versions(stores["staging"], "support-bot") == [V1]
    # and the copy itself refuses a rejected version
    with pytest.raises(registry.Rejected):
        lora_gate.promote(stores["dev"], stores["staging"], "support-bot", V2, reason="by hand")
    assert registry.versions(stores["staging"], "support-bot") == [V1]
    # dev does not retry it either
    retry = BaseRollout(stores, "Failed")
    retry.serving = V1
    assert deliver_to("dev", d, retry) == 0 and retry.pins == [V1] and retry.canaries == 0


def test_a_first_adapter_version_that_fails_leaves_the_base_as_it_was(stacks, capsys):
    """No champion yet: the canary still runs (the base's stable pods serve the base without the
    adapter); failed, the version is rejected and the pin removed (the base's pods serve no adapter)."""
    d, stores, _ = stacks
    cluster = BaseRollout(stores, "Failed")
    assert deliver_to("dev", d, cluster) == deliver.REJECTED
    assert cluster.pins == [V1, None] and cluster.ups == 2
    assert registry.rejection(stores["dev"], "support-bot", V1) is not None
    assert registry.get_alias(stores["dev"], "support-bot", "champion") is None
    assert "dev stays on no version of support-bot" in capsys.readouterr().err


def test_the_canary_knows_the_adapter_version_by_its_own_annotation():
    assert (
        deliver.version_key("support-bot", "llm-chat") == lora_gate.version_annotation("support-bot") == "adapter.mlplatform.io/support-bot"
    )
    assert deliver.version_key("chat", "llm-chat") == deliver.version_key("mnist", None) == deliver.VERSION_ANNOTATION
    rollout = {"spec": {"template": {"metadata": {"annotations": {deliver.VERSION_ANNOTATION: V1}}}}, "status": {"phase": "Healthy"}}
    # the base's version equal to the string is not the adapter's: not Healthy for the adapter
    assert deliver.judge(rollout, None, V1, key=deliver.version_key("support-bot", "llm-chat")) is None
    assert deliver.judge(rollout, None, V1)[0] == deliver.HEALTHY


class JointRollout(BaseRollout):
    """pulumi and kubectl for a stack whose base ``chat`` moves to a new version: the base's pin and the
    adapter's are both read (one pod template: the base version and the adapter version annotations)."""

    def __init__(self, stores: dict[str, str], base: str, adapter: str, outcome: str = "Healthy"):
        super().__init__(stores, outcome)
        self.base = self.base_serving = base
        self.pinned = self.serving = adapter
        self.sets: list[tuple[str, str | None]] = []

    def _rollout(self) -> dict:
        r = super()._rollout() if self.pinned != self.serving or self.base == self.base_serving else self._canary_of_base()
        r["spec"]["template"]["metadata"]["annotations"][deliver.VERSION_ANNOTATION] = self.base
        if r["status"].get("stableRS") == "c2":
            self.base_serving = self.base
        return r

    def _canary_of_base(self) -> dict:
        self.serving = None  # a new pod template: the canary runs whatever the adapter pin is
        return super()._rollout()

    def __call__(self, cmd: list[str]) -> str:
        if cmd[:3] == ["pulumi", "config", "set"]:
            name = cmd[4].split(".")[1]
            value = None if cmd[5] == deliver.UNPINNED else cmd[5]
            self.sets.append((name, value))
            if name == "chat":
                self.base = value
            else:
                self.pinned = value
                self.pins.append(value)
            return ""
        return super().__call__(cmd)


def staging_on_a_new_base(tmp_path, stacks):
    """dev and staging serve chat BASE_V with support-bot V1; dev then moved to chat NEW (a new import,
    canaried there) and support-bot V2 retrained on it (canaried there): both dev's champions."""
    d, stores, _ = stacks
    for stack in ("dev", "staging"):
        assert deliver_to(stack, d, BaseRollout(stores)) == 0
    new = hand_base(tmp_path, stores["dev"], weights=b"\2" * 64, version=NEW_BASE)
    publish_adapter(tmp_path, stores["dev"], new, V2)
    registry.move(stores["dev"], "support-bot", "champion", V2, reason="test: canaried on dev with chat NEW")
    return d, stores


NEW_BASE = "20251220T000000Z-chat3"


def deliver_chat(stack: str, d: Path, cluster: BaseRollout) -> int:
    return deliver.deliver(stack, "chat", cluster, timeout_s=5, poll_s=0, stacks_dir=d)


def test_on_a_receiving_stack_the_served_adapter_moves_with_its_new_base_in_one_canary(tmp_path, stacks, capsys):
    """staging never stops serving support-bot across a base upgrade: dev's adapter champion trained
    on the incoming base version is copied after the base and pinned in the same up; one canary judges
    both; passed, both are champions; a second run changes nothing."""
    d, stores = staging_on_a_new_base(tmp_path, stacks)
    cluster = JointRollout(stores, BASE_V, V1)
    assert deliver_chat("staging", d, cluster) == deliver.DELIVERED, capsys.readouterr()
    assert cluster.sets == [("chat", NEW_BASE), ("support-bot", V2)] and cluster.ups == 1 and cluster.canaries >= 1
    assert registry.get_alias(stores["staging"], "chat", "champion")["version"] == NEW_BASE
    assert registry.get_alias(stores["staging"], "support-bot", "champion")["version"] == V2
    registry.verify(stores["staging"], "support-bot", V2)
    assert f"canary of {NEW_BASE}, with support-bot/{V2} on staging" in capsys.readouterr().out
    # the adapter's own step then finds it served: no copy, no canary
    again = JointRollout(stores, NEW_BASE, V2)
    assert deliver_to("staging", d, again) == deliver.DELIVERED and again.canaries == 0
    assert registry.versions(stores["staging"], "support-bot") == [V1, V2]


def test_a_failed_joint_canary_puts_both_pins_back_rejects_the_pair_and_the_next_runs_are_settled(tmp_path, stacks, capsys):
    """The canary judges the pair and cannot say which one failed (the worst served model's golden
    share): both are rejected, staging stays on what it served, and the following runs are green
    (each settled on its rejection), not refused until dev imports another base."""
    d, stores = staging_on_a_new_base(tmp_path, stacks)
    cluster = JointRollout(stores, BASE_V, V1, outcome="Failed")
    assert deliver_chat("staging", d, cluster) == deliver.REJECTED
    assert cluster.sets == [("chat", NEW_BASE), ("support-bot", V2), ("chat", BASE_V), ("support-bot", V1)] and cluster.ups == 2
    assert registry.rejection(stores["staging"], "chat", NEW_BASE)["reason"].startswith(
        f"canary failed its analysis on staging: {llm_canary.METRIC_GOLDEN} Failed"
    )
    assert f"judged with chat/{NEW_BASE}" in registry.rejection(stores["staging"], "support-bot", V2)["reason"]
    assert registry.get_alias(stores["staging"], "chat", "champion")["version"] == BASE_V
    assert registry.get_alias(stores["staging"], "support-bot", "champion")["version"] == V1
    again = JointRollout(stores, BASE_V, V1)
    assert deliver_chat("staging", d, again) == deliver.DELIVERED
    assert deliver_to("staging", d, again) == deliver.DELIVERED
    assert again.sets == [("chat", BASE_V)] and again.canaries == 0  # the adapter keeps its pin (make pin's)
    # dev retrains the adapter on the same base (a data change): held on staging too, still green
    publish_adapter(tmp_path, stores["dev"], finetune.base_identity(stores["dev"], "chat", NEW_BASE), V3)
    registry.move(stores["dev"], "support-bot", "champion", V3, reason="test: canaried on dev")
    held = JointRollout(stores, BASE_V, V1)
    assert deliver_to("staging", d, held) == deliver.DELIVERED and held.sets == [] and held.ups == 0
    assert f"{V3} was trained on chat/{NEW_BASE} (rejected here): not delivered; staging keeps {V1}" in capsys.readouterr().out
    assert registry.versions(stores["staging"], "support-bot") == [V1, V2]


def test_a_base_whose_adapter_has_not_followed_on_the_source_is_refused_before_a_byte_is_copied(tmp_path, stacks):
    d, stores, _ = stacks
    for stack in ("dev", "staging"):
        assert deliver_to(stack, d, BaseRollout(stores)) == 0
    hand_base(tmp_path, stores["dev"], weights=b"\2" * 64, version=NEW_BASE)  # dev's champion; support-bot not retrained
    cluster = JointRollout(stores, BASE_V, V1)
    with pytest.raises(lora_gate.AdapterRefused) as e:
        deliver_chat("staging", d, cluster)
    assert str(e.value) == (
        f"chat/{NEW_BASE}: staging serves support-bot/{V1}, trained on chat/{BASE_V}; "
        "deliver support-bot on dev first (it moves with chat there), or unpin it here"
    )
    assert registry.versions(stores["staging"], "chat") == [BASE_V] and cluster.sets == [] and cluster.ups == 0


class PatchingRollout(JointRollout):
    """JointRollout that also takes the emergency path's full promotion (a kubectl patch)."""

    def __call__(self, cmd: list[str]) -> str:
        if cmd[:4] == ["kubectl", "-n", deliver.NAMESPACE, "patch"]:
            return ""
        return super().__call__(cmd)


def with_file(d: Path, stack: str, change) -> None:
    f = d / f"Pulumi.{stack}.yaml"
    cfg = yaml.safe_load(f.read_text())
    change(cfg["config"]["mlplatform:models"])
    f.write_text(yaml.safe_dump(cfg))


def pinning(d: Path, stack: str, store: str):
    """What ``make pin`` runs against: ``pulumi config set`` writes the stack file, as the CLI does."""

    def sh(cmd: list[str]) -> str:
        if cmd[:4] == ["pulumi", "stack", "output", "modelStore"]:
            return store
        assert cmd[:3] == ["pulumi", "config", "set"], cmd
        with_file(d, stack, lambda m: m[cmd[4].split(".")[1]].setdefault("serving", {}).update(version=cmd[5]))
        return ""

    return sh


def dev_with_a_new_import(tmp_path, stacks):
    d, stores, _ = stacks
    assert deliver_to("dev", d, BaseRollout(stores)) == 0  # dev serves chat BASE_V + support-bot V1
    hand_base(tmp_path, stores["dev"], weights=b"\2" * 64, version=NEW_BASE, champion=False)
    registry.move(stores["dev"], "chat", "candidate", NEW_BASE, reason="test: the new import")
    return d, stores


def test_on_dev_a_new_base_goes_without_the_adapter_it_trains_and_make_pin_keeps_the_stale_one_off(tmp_path, stacks, capsys):
    """The stack that trains the adapter cannot have it on the new base before the base serves (its Job
    trains on the base version served): the base's canary runs without it, then ``make pin`` leaves the
    stale champion unpinned until the retrained version is delivered."""
    d, stores = dev_with_a_new_import(tmp_path, stacks)
    cluster = JointRollout(stores, BASE_V, V1)
    assert deliver_chat("dev", d, cluster) == deliver.DELIVERED, capsys.readouterr()
    assert cluster.sets == [("chat", NEW_BASE), ("support-bot", None)]
    assert "without support-bot (retrained on it by the next up)" in capsys.readouterr().out
    assert registry.get_alias(stores["dev"], "chat", "champion")["version"] == NEW_BASE
    assert registry.get_alias(stores["dev"], "support-bot", "champion")["version"] == V1  # not moved, not rejected
    deliver.pin_champions("dev", pinning(d, "dev", stores["dev"]), d)
    assert deliver.served_adapters("dev", "chat", stores["dev"], d) == {}
    assert f"champion {V1} was trained on chat/{BASE_V}, not the chat served: unpinned" in capsys.readouterr().out
    # the same pipeline's deliver of the adapter, before its Job has retrained it: nothing to canary, and
    # the stale champion is not pinned back onto the new base (its pods would refuse it)
    idle = BaseRollout(stores)
    assert deliver_to("dev", d, idle) == deliver.DELIVERED and idle.pins == [None] and idle.canaries == 0
    assert (
        f"not served until a version trained on chat/{NEW_BASE} is (the adapter's fine-tuning Job trains on it)" in capsys.readouterr().out
    )
    # retrained on NEW and gated (a candidate): its canary on the base's pods; a failure goes back to no adapter
    publish_adapter(tmp_path, stores["dev"], finetune.base_identity(stores["dev"], "chat", NEW_BASE), V2)
    failing = BaseRollout(stores, "Failed")
    assert deliver_to("dev", d, failing) == deliver.REJECTED and failing.pins == [V2, None]
    publish_adapter(tmp_path, stores["dev"], finetune.base_identity(stores["dev"], "chat", NEW_BASE), "20260103T000000Z-lora3")
    assert deliver_to("dev", d, BaseRollout(stores)) == deliver.DELIVERED
    with_file(d, "dev", lambda m: m["support-bot"].pop("serving"))  # the next CI run: a fresh checkout
    deliver.pin_champions("dev", pinning(d, "dev", stores["dev"]), d)
    assert deliver.served_adapters("dev", "chat", stores["dev"], d) == {"support-bot": "20260103T000000Z-lora3"}


def test_an_unpin_in_the_stack_file_survives_make_pin(stacks):
    d, stores, _ = stacks
    assert deliver_to("dev", d, BaseRollout(stores)) == 0
    with_file(d, "dev", lambda m: m["support-bot"].update(serving={"version": deliver.UNPINNED}))
    deliver.pin_champions("dev", pinning(d, "dev", stores["dev"]), d)
    assert deliver.served_adapters("dev", "chat", stores["dev"], d) == {}
    assert yaml.safe_load((d / "Pulumi.dev.yaml").read_text())["config"]["mlplatform:models"]["chat"]["serving"] == {"version": BASE_V}


def test_an_adapter_a_receiving_stack_trains_itself_is_not_replaced_by_the_sources(tmp_path, stacks):
    """staging trains its own support-bot and receives chat from dev: a new chat does not bring dev's
    support-bot; staging's goes off until staging retrains it on the new base."""
    d, stores = staging_on_a_new_base(tmp_path, stacks)
    with_file(d, "staging", lambda m: m.update({"support-bot": {"runtime": "vllm", "adapterOf": "chat", "training": {"kind": "lora"}}}))
    cluster = JointRollout(stores, BASE_V, V1)
    assert deliver_chat("staging", d, cluster) == deliver.DELIVERED
    assert cluster.sets == [("chat", NEW_BASE), ("support-bot", None)]
    assert registry.versions(stores["staging"], "support-bot") == [V1]


def test_an_adapter_received_from_another_stack_than_its_base_is_refused(tmp_path, stacks):
    d, stores = staging_on_a_new_base(tmp_path, stacks)
    with_file(d, "staging", lambda m: m["support-bot"].update(source={"stack": "elsewhere"}))
    cluster = JointRollout(stores, BASE_V, V1)
    with pytest.raises(lora_gate.AdapterRefused) as e:
        deliver_chat("staging", d, cluster)
    assert str(e.value) == (
        f"chat/{NEW_BASE}: staging serves support-bot/{V1}, trained on chat/{BASE_V}; unpin it in stacks/Pulumi.staging.yaml "
        f"(models.support-bot.serving.version: {deliver.UNPINNED}) and deliver chat again"
    )
    assert cluster.sets == [] and registry.versions(stores["staging"], "chat") == [BASE_V]


def staging_on_the_new_pair(tmp_path, stacks):
    d, stores = staging_on_a_new_base(tmp_path, stacks)
    assert deliver_chat("staging", d, JointRollout(stores, BASE_V, V1)) == deliver.DELIVERED
    with_file(d, "staging", lambda m: (m["chat"].update(serving={"version": NEW_BASE}), m["support-bot"].update(serving={"version": V2})))
    return d, stores


def test_a_base_rolled_back_on_the_source_takes_its_adapter_back_with_it(tmp_path, stacks, capsys):
    """dev rolls chat back (the emergency path); staging's next delivery is a rollback to bytes that
    served: the adapter goes back to its earlier champion trained on that base, in the same pin."""
    d, stores = staging_on_the_new_pair(tmp_path, stacks)
    registry.rollback(stores["dev"], "chat", to=BASE_V, reason="test: bad base")
    cluster = PatchingRollout(stores, NEW_BASE, V2)
    assert deliver_chat("staging", d, cluster) == deliver.DELIVERED, capsys.readouterr()
    assert cluster.sets == [("chat", BASE_V), ("support-bot", V1)]
    assert registry.get_alias(stores["staging"], "support-bot", "champion")["version"] == V1
    assert registry.rejection(stores["staging"], "support-bot", V2) is not None  # rolled back with its base


def test_make_rollback_of_a_base_takes_its_adapters_back_or_off(tmp_path, stacks, capsys):
    d, stores = staging_on_the_new_pair(tmp_path, stacks)
    registry.rollback(stores["staging"], "chat", to=BASE_V, reason="test: ops.models rollback")
    cluster = PatchingRollout(stores, NEW_BASE, V2)
    assert deliver.roll_back("staging", "chat", cluster, timeout_s=5, poll_s=0, stacks_dir=d) == deliver.DELIVERED
    assert cluster.sets == [("chat", BASE_V), ("support-bot", V1)]
    lora_gate.fetch_adapter(stores["staging"], "support-bot", V1, "chat", BASE_V, tmp_path / "served")  # what the pods fetch


def test_make_rollback_of_a_base_with_no_earlier_adapter_for_it_takes_the_adapter_off(tmp_path, stacks, capsys):
    d, stores = staging_on_the_new_pair(tmp_path, stacks)
    registry.reject(stores["staging"], "support-bot", V1, reason="test: no good adapter on BASE_V")
    registry.rollback(stores["staging"], "chat", to=BASE_V, reason="test: ops.models rollback")
    cluster = PatchingRollout(stores, NEW_BASE, V2)
    assert deliver.roll_back("staging", "chat", cluster, timeout_s=5, poll_s=0, stacks_dir=d) == deliver.DELIVERED
    assert cluster.sets == [("chat", BASE_V), ("support-bot", None)]
    assert f"support-bot: no earlier version trained on chat/{BASE_V}: not served until retrained on it" in capsys.readouterr().err


def test_on_dev_an_adapter_version_trained_on_the_base_it_left_is_held_not_refused(tmp_path, stacks, capsys):
    """dev moved chat to NEW without the adapter; a run of the adapter's Job still on BASE_V (started
    before the move) publishes V2 on BASE_V: held (the stack trains it; its next run trains on NEW), the
    stale champion stays off, the run green."""
    d, stores = dev_with_a_new_import(tmp_path, stacks)
    assert deliver_chat("dev", d, JointRollout(stores, BASE_V, V1)) == deliver.DELIVERED
    publish_adapter(tmp_path, stores["dev"], finetune.base_identity(stores["dev"], "chat", BASE_V), V2)
    cluster = BaseRollout(stores)
    assert deliver_to("dev", d, cluster) == deliver.DELIVERED and cluster.pins == [None] and cluster.canaries == 0
    out = capsys.readouterr().out
    assert f"{V2} was trained on chat/{BASE_V} (not the chat/{NEW_BASE} dev serves): not delivered; not served until" in out
    assert registry.get_alias(stores["dev"], "support-bot", "champion")["version"] == V1  # nothing moved


def test_a_committed_unpin_is_read_from_git_not_from_this_runs_pins(tmp_path):
    repo = tmp_path / "repo"
    (repo / "stacks").mkdir(parents=True)
    f = repo / "stacks" / "Pulumi.dev.yaml"
    models = {"chat": {"runtime": "vllm"}, "support-bot": {"adapterOf": "chat", "serving": {"version": deliver.UNPINNED}}}
    f.write_text(yaml.safe_dump({"config": {"mlplatform:models": models}}))
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    for cmd in (["init", "-q"], ["add", "."], ["commit", "-qm", "unpin support-bot"]):
        subprocess.run(git + cmd, check=True)
    # this run's `make pin` writes into the working copy: it does not count
    models["chat"]["serving"] = {"version": deliver.UNPINNED}
    f.write_text(yaml.safe_dump({"config": {"mlplatform:models": models}}))
    assert deliver.committed_unpins("dev", repo) == {"support-bot"}
    # outside git (a copy of the tree), the working file is all there is
    plain = tmp_path / "plain"
    (plain / "stacks").mkdir(parents=True)
    (plain / "stacks" / "Pulumi.dev.yaml").write_text(f.read_text())
    assert deliver.committed_unpins("dev", plain) == {"chat", "support-bot"}


def test_main_leaves_a_committed_unpin_alone(stacks, monkeypatch, capsys):
    d, stores, _ = stacks
    monkeypatch.setattr(deliver, "committed_unpins", lambda stack: {"support-bot"})
    monkeypatch.setattr(deliver, "delivered_models", lambda stack: ["support-bot"])
    monkeypatch.setattr(deliver, "deliver", lambda *a, **k: pytest.fail("delivered an unpinned adapter"))
    assert deliver.main(["--stack", "dev"]) == deliver.DELIVERED
    assert (
        "support-bot: serving.version: champion in the committed stacks/Pulumi.dev.yaml: not served, not delivered"
        in capsys.readouterr().out
    )


def test_an_adapter_rolls_back_only_onto_the_base_served(tmp_path, stacks):
    """ops.models rollback of an adapter: by default the latest earlier champion trained on the base
    version served (its pods refuse any other); refused, nothing changed, where there is none or --to
    names another; deliver's --rollback refuses a champion moved by hand onto another base."""
    from ops import models

    d, stores = staging_on_the_new_pair(tmp_path, stacks)
    store = stores["staging"]
    with pytest.raises(registry.RegistryError, match=f"support-bot: no earlier champion trained on chat/{NEW_BASE}, the chat served"):
        models.adapter_rollback_target(store, "support-bot", None)
    with pytest.raises(registry.RegistryError, match=f"support-bot/{V1} was not trained on chat/{NEW_BASE}"):
        models.adapter_rollback_target(store, "support-bot", V1)
    assert registry.get_alias(store, "support-bot", "champion")["version"] == V2
    assert models.adapter_rollback_target(store, "chat", None) is None  # not an adapter: the registry's default
    registry.rollback(store, "chat", to=BASE_V, reason="test: the base first")
    assert models.adapter_rollback_target(store, "support-bot", None) == V1


def test_deliver_refuses_to_roll_an_adapter_back_onto_another_base(tmp_path, stacks):
    d, stores = staging_on_the_new_pair(tmp_path, stacks)
    registry.rollback(stores["staging"], "support-bot", to=V1, reason="test: by hand, past ops.models' guard")
    cluster = PatchingRollout(stores, NEW_BASE, V2)
    with pytest.raises(deliver.DeliveryError, match=f"champion {V1} was trained on chat/{BASE_V}, not the chat staging serves"):
        deliver.roll_back("staging", "support-bot", cluster, timeout_s=5, poll_s=0, stacks_dir=d)
    assert cluster.sets == [] and cluster.ups == 0
