"""The pipeline's delivery step (ops/deliver.py) against real local model stores: the copy, the pin,
the decision on the Rollout's outcome, the aliases after each outcome. pulumi and kubectl are the only
stand-ins (a scripted runner: their answers are what the step reads)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import yaml

from ops import deliver
from training import registry

V1, V2 = "20260101T000000Z-run1", "20260102T000000Z-run2"


def publish(tmp_path: Path, root: str, version: str, champion: bool = True) -> None:
    d = tmp_path / f"src-{version}-{abs(hash(root))}"
    (d / "saved_model").mkdir(parents=True)
    (d / "saved_model" / "saved_model.pb").write_bytes(b"pb" + version.encode())
    (d / "model.keras").write_bytes(b"k" + version.encode())
    (d / "metadata.json").write_text(json.dumps({"version": version}))
    registry.publish(d, root, "mnist", version, reason="trained", champion=champion)


# What the Rollout and its AnalysisRun say once the canary has run, per outcome (Argo Rollouts v1.9
# status fields: phase, abort, pauseConditions, canary.currentBackgroundAnalysisRunStatus; the run's
# status.phase and metricResults).
RUN = "model-server-mnist-h2-2"
OUTCOMES = {
    "Healthy": ({"phase": "Healthy", "stableRS": "h2", "currentPodHash": "h2"}, "Successful", []),
    "Failed": (
        {
            "phase": "Degraded",
            "abort": True,
            "message": 'RolloutAborted: Rollout aborted update to revision 2: Metric "class-mix" assessed Failed',
        },
        "Failed",
        [{"name": "class-mix", "phase": "Failed", "measurements": [{"value": "[0.38]"}]}, {"name": "warmup", "phase": "Successful"}],
    ),
    "Inconclusive": (
        {"phase": "Paused", "pauseConditions": [{"reason": "InconclusiveAnalysisRun"}], "message": "InconclusiveAnalysisRun"},
        "Inconclusive",
        [{"name": "error-ratio", "phase": "Inconclusive", "measurements": [{"value": "[]"}]}],
    ),
    "Error": (
        {"phase": "Degraded", "abort": True, "message": 'RolloutAborted: Metric "latency-p99" assessed Error'},
        "Error",
        [{"name": "latency-p99", "phase": "Error", "measurements": [{"message": "Post http://prometheus: connection refused"}]}],
    ),
    "WarmupFailed": (
        {"phase": "Degraded", "abort": True, "message": 'RolloutAborted: Metric "warmup" assessed Failed'},
        "Failed",
        [{"name": "warmup", "phase": "Failed", "measurements": [{"message": "job failed"}]}],
    ),
    "NeverReady": ({"phase": "Degraded", "message": "ProgressDeadlineExceeded: ReplicaSet has timed out progressing."}, "Running", []),
    "Progressing": ({"phase": "Progressing", "message": "more replicas need to be updated"}, "Running", []),
}


class Cluster:
    """Answers pulumi/kubectl as the step calls them; the Rollout ends ``outcome`` (OUTCOMES) once pinned
    to a new version, and is Healthy on whatever the stable pods serve (``serving``) otherwise."""

    def __init__(self, stores: dict[str, str], outcome: str, roles: dict[str, str] | None = None, serving: str | None = None):
        self.stores, self.outcome, self.pins, self.ups = stores, outcome, [], 0
        self.roles = roles or {}  # stack -> its promotionRole output (unset: null, as on a stack without IAM)
        self.pinned: str | None = None
        self.serving = serving  # the stable ReplicaSet's version (None: whatever is pinned first)
        self.promoted_full = 0

    def _rollout(self) -> str:
        if self.serving is None:
            self.serving = self.pinned
        if self.pinned == self.serving or self.promoted_full:
            status = dict(OUTCOMES["Healthy"][0])
        else:
            status = {**OUTCOMES[self.outcome][0], "canary": {"currentBackgroundAnalysisRunStatus": {"name": RUN}}}
        meta = {"annotations": {"mlplatform.io/model-version": self.pinned}}
        return json.dumps({"spec": {"template": {"metadata": meta}}, "status": status})

    def __call__(self, cmd: list[str]) -> str:
        if cmd[:4] == ["pulumi", "stack", "output", "promotionRole"]:
            if self.roles.get(cmd[-1]) == "missing":
                raise deliver.DeliveryError("pulumi stack output promotionRole ... failed (255): current stack does not have output")
            return self.roles.get(cmd[-1], "null") + "\n"
        if cmd[:4] == ["pulumi", "stack", "output", "modelStore"]:
            return self.stores[cmd[-1]] + "\n"
        if cmd[:3] == ["pulumi", "config", "set"]:
            assert cmd[4] == "mlplatform:models.mnist.serving.version"
            self.pinned = cmd[5]
            self.pins.append(cmd[5])
            return ""
        if cmd[:2] == ["pulumi", "up"]:
            assert "--policy-pack" in cmd
            self.ups += 1
            return ""
        if cmd[3:6] == ["get", "rollout", "model-server-mnist"]:
            return self._rollout()
        if cmd[3:6] == ["get", "analysisrun", RUN]:
            _, phase, metrics = OUTCOMES[self.outcome]
            return json.dumps({"metadata": {"name": RUN}, "status": {"phase": phase, "metricResults": metrics}})
        if cmd[3:6] == ["patch", "rollout", "model-server-mnist"]:
            assert cmd[6:] == ["--subresource=status", "--type=merge", "-p", '{"status": {"promoteFull": true}}'], cmd
            self.promoted_full += 1
            return ""
        raise AssertionError(f"unexpected command {cmd}")


@pytest.fixture
def stacks(tmp_path):
    d = tmp_path / "stacks"
    d.mkdir()
    (d / "Pulumi.staging.yaml").write_text(yaml.safe_dump({"config": {"mlplatform:models": {"mnist": {"training": {"epochs": 3}}}}}))
    (d / "Pulumi.prod.yaml").write_text(yaml.safe_dump({"config": {"mlplatform:models": {"mnist": {"source": {"stack": "staging"}}}}}))
    stores = {"staging": f"file://{tmp_path}/staging", "prod": f"file://{tmp_path}/prod"}
    publish(tmp_path, stores["staging"], V1)
    publish(tmp_path, stores["prod"], V1)  # prod serves V1
    publish(tmp_path, stores["staging"], V2)  # staging validated V2
    return d, stores


def test_a_passing_canary_makes_the_copied_version_the_champion(stacks, capsys):
    d, stores = stacks
    cluster = Cluster(stores, "Healthy", serving=V1)
    assert deliver.deliver("prod", "mnist", cluster, timeout_s=5, poll_s=0, stacks_dir=d) == 0
    assert cluster.pins == [V2] and cluster.ups == 1
    assert registry.get_alias(stores["prod"], "mnist", "champion")["version"] == V2
    registry.verify(stores["prod"], "mnist", V2)  # the exact bytes staging validated
    assert registry.read_manifest(stores["prod"], "mnist", V2)["files"] == registry.read_manifest(stores["staging"], "mnist", V2)["files"]
    assert "is the champion" in capsys.readouterr().out


def test_an_aborted_canary_rejects_the_version_restores_the_pin_and_fails(stacks, capsys):
    d, stores = stacks
    cluster = Cluster(stores, "Failed", serving=V1)
    assert deliver.deliver("prod", "mnist", cluster, timeout_s=5, poll_s=0, stacks_dir=d) == deliver.REJECTED == 1
    assert cluster.pins == [V2, V1] and cluster.ups == 2  # canary, then the desired state back on the champion
    assert registry.get_alias(stores["prod"], "mnist", "champion")["version"] == V1  # aliases where they started
    reason = registry.rejection(stores["prod"], "mnist", V2)["reason"]
    assert "class-mix Failed (last value [0.38])" in reason and "warmup" not in reason  # only the failed judging metric
    err = capsys.readouterr().err
    assert "canary failed its analysis on prod: class-mix Failed (last value [0.38])" in err and "stays on " + V1 in err
    # The next run does not retry it: it only re-pins the champion.
    again = Cluster(stores, "Healthy")
    assert deliver.deliver("prod", "mnist", again, timeout_s=5, poll_s=0, stacks_dir=d) == 0
    assert again.pins == [V1] and "was rejected in prod" in capsys.readouterr().out


def test_a_stack_that_trains_delivers_its_own_candidate(tmp_path, stacks):
    d, stores = stacks
    publish(tmp_path, stores["staging"], "20260103T000000Z-run3", champion=False)  # a scheduled retrain: candidate only
    assert registry.get_alias(stores["staging"], "mnist", "champion")["version"] == V2
    cluster = Cluster(stores, "Healthy")
    assert deliver.deliver("staging", "mnist", cluster, timeout_s=5, poll_s=0, stacks_dir=d) == 0
    assert cluster.pins == ["20260103T000000Z-run3"]
    assert registry.get_alias(stores["staging"], "mnist", "champion")["version"] == "20260103T000000Z-run3"


def test_nothing_new_only_pins_the_champion(stacks):
    d, stores = stacks
    registry.promote_between(stores["staging"], stores["prod"], "mnist", V2, reason="earlier run")
    cluster = Cluster(stores, "Failed", serving=V1)  # would fail if a canary ran
    assert deliver.deliver("prod", "mnist", cluster, timeout_s=5, poll_s=0, stacks_dir=d) == 0
    assert cluster.pins == [V2]


def test_pin_champions_keeps_what_serves_across_an_unrelated_up(stacks):
    d, stores = stacks
    cluster = Cluster(stores, "Healthy")
    deliver.pin_champions("prod", cluster, d)
    assert cluster.pins == [V1] and cluster.ups == 0  # pinned for the coming `pulumi up`, nothing deployed here


def test_a_stacks_first_version_becomes_champion_without_a_canary(tmp_path, stacks):
    d, stores = stacks
    stores["prod"] = f"file://{tmp_path}/empty-prod"  # a new prod store: nothing served yet
    cluster = Cluster(stores, "Failed", serving="nothing")  # no canary may run (it would fail here)
    assert deliver.deliver("prod", "mnist", cluster, timeout_s=5, poll_s=0, stacks_dir=d) == 0
    assert cluster.pins == [V2] and registry.get_alias(stores["prod"], "mnist", "champion")["version"] == V2


def test_an_unknown_model_is_a_one_line_error(stacks):
    d, _ = stacks
    with pytest.raises(deliver.DeliveryError, match="stacks/Pulumi.prod.yaml: no model 'fraud'"):
        deliver.source_stack("prod", "fraud", d)


# ---- the promotion identity: the source is read, and the copy written, only as the promotion role ----

PROMOTER = "arn:aws:iam::123456789012:role/mlplatform-prod-model-promoter"


class StoreLog:
    """Every store access (training.storage) with the role it ran as (the fake promoter's current one)."""

    def __init__(self, monkeypatch):
        from training import storage

        self.role: str | None = None
        self.depth = 0
        self.calls: list[tuple[str | None, str, str]] = []  # (role, operation, uri)
        self.sessions: list[tuple[str | None, str]] = []
        for op in ("read_bytes", "write_bytes", "read_versioned", "write_if", "list_names"):
            monkeypatch.setattr(storage, op, self._logged(op, getattr(storage, op)))

    def _logged(self, op, real):
        def call(uri, *args):
            if not self.depth:  # the registry's call, not storage's own calls inside it (plain paths)
                self.calls.append((self.role, op, uri))
            self.depth += 1
            try:
                return real(uri, *args)
            finally:
                self.depth -= 1

        return call

    @contextlib.contextmanager
    def promoter(self, role: str | None, session: str):
        self.sessions.append((role, session))
        self.role = role
        try:
            yield
        finally:
            self.role = None


def test_the_copy_runs_as_the_promotion_role_and_nothing_else_does(stacks, monkeypatch):
    d, stores = stacks
    log = StoreLog(monkeypatch)
    cluster = Cluster(stores, "Healthy", roles={"prod": PROMOTER})
    assert deliver.deliver("prod", "mnist", cluster, timeout_s=5, poll_s=0, stacks_dir=d, promoter=log.promoter) == 0
    assert registry.get_alias(stores["prod"], "mnist", "champion")["version"] == V2
    assert {s for s in log.sessions} == {(PROMOTER, "deliver-prod-mnist")}
    as_role = [(op, uri) for role, op, uri in log.calls if role == PROMOTER]
    as_deployer = [(op, uri) for role, op, uri in log.calls if role is None]
    # The source store is touched by the promotion role only, and only read.
    assert all(role == PROMOTER for role, _, uri in log.calls if uri.startswith(stores["staging"]))
    assert {op for op, uri in as_role if uri.startswith(stores["staging"])} <= {"read_bytes", "read_versioned", "list_names"}
    # What the role touches is under the model's folder of either store (its policy's prefixes).
    outside = [uri for _, uri in as_role if not uri.startswith((f"{stores['staging']}/models/mnist/", f"{stores['prod']}/models/mnist/"))]
    assert as_role and outside == []
    # It wrote the version (files, then the manifest) and the candidate alias.
    written = {uri.removeprefix(f"{stores['prod']}/models/mnist/") for op, uri in as_role if op in ("write_bytes", "write_if")}
    assert {f"{V2}/model.keras", f"{V2}/MANIFEST.json", "aliases/candidate.json"} <= written
    # The champion moves after the canary, as the deploy identity (the pipeline's own decision).
    assert ("write_if", f"{stores['prod']}/models/mnist/aliases/champion.json") in as_deployer


def test_a_stack_without_a_promotion_role_copies_with_the_deploy_identity(stacks, monkeypatch, capsys):
    d, stores = stacks
    log = StoreLog(monkeypatch)
    assert deliver.deliver("prod", "mnist", Cluster(stores, "Healthy"), timeout_s=5, poll_s=0, stacks_dir=d, promoter=log.promoter) == 0
    assert set(log.sessions) == {(None, "deliver-prod-mnist")}
    assert "as the deploy identity (no promotion role on this stack)" in capsys.readouterr().out


def test_a_stack_not_yet_updated_is_a_one_line_error_before_any_copy(stacks, monkeypatch):
    d, stores = stacks
    log = StoreLog(monkeypatch)
    with pytest.raises(deliver.DeliveryError, match=r"prod has no promotionRole output .*make up-ci STACK=prod"):
        deliver.deliver("prod", "mnist", Cluster(stores, "Healthy", roles={"prod": "missing"}), stacks_dir=d, promoter=log.promoter)
    assert not any(op in ("write_bytes", "write_if") for _, op, _ in log.calls)
    assert V2 not in registry.versions(stores["prod"], "mnist")


def test_a_stack_that_trains_assumes_no_role(stacks, monkeypatch):
    d, stores = stacks
    log = StoreLog(monkeypatch)
    publish_dir = d.parent
    publish(publish_dir, stores["staging"], "20260103T000000Z-run3", champion=False)
    cluster = Cluster(stores, "Healthy", roles={"staging": "must not be read"})
    assert deliver.deliver("staging", "mnist", cluster, timeout_s=5, poll_s=0, stacks_dir=d, promoter=log.promoter) == 0
    assert log.sessions == []


def test_as_role_without_a_role_changes_nothing():
    with deliver.as_role(None, "s", assume=lambda *_: pytest.fail("no role: nothing to assume")):
        pass


# ---- reject only on evidence: everything but a failed judging metric leaves the version a candidate ----


@pytest.mark.parametrize(
    ("outcome", "why"),
    [
        ("Inconclusive", "the analysis is inconclusive (error-ratio Inconclusive (last value []))"),
        ("Error", "the analysis ended in Error (latency-p99 Error (last value Post http://prometheus: connection refused))"),
        ("WarmupFailed", "the analysis failed only on warmup Failed (last value job failed): its warm-up could not run"),
        ("NeverReady", "Degraded without a failed analysis (canary pods never ready?): ProgressDeadlineExceeded"),
        ("Progressing", "timed out after 0s (phase Progressing"),
    ],
)
def test_a_canary_not_judged_leaves_a_candidate_restores_the_pin_and_exits_3(tmp_path, stacks, capsys, outcome, why):
    d, stores = stacks
    publish(tmp_path, stores["staging"], "20260103T000000Z-run3", champion=False)
    cluster = Cluster(stores, outcome, serving=V2)
    code = deliver.deliver("staging", "mnist", cluster, timeout_s=0, poll_s=0, stacks_dir=d)
    assert code == deliver.NOT_JUDGED_EXIT == 3
    assert cluster.pins == ["20260103T000000Z-run3", V2] and cluster.ups == 2  # the desired state is what serves
    assert registry.rejection(stores["staging"], "mnist", "20260103T000000Z-run3") is None
    assert registry.get_alias(stores["staging"], "mnist", "candidate")["version"] == "20260103T000000Z-run3"
    assert registry.get_alias(stores["staging"], "mnist", "champion")["version"] == V2
    err = capsys.readouterr().err
    assert "NOT JUDGED" in err and why in err and "stays the candidate (not rejected)" in err


def test_a_not_judged_candidate_is_judged_again_on_the_next_run(tmp_path, stacks):
    d, stores = stacks
    publish(tmp_path, stores["staging"], "20260103T000000Z-run3", champion=False)
    assert deliver.deliver("staging", "mnist", Cluster(stores, "Inconclusive", serving=V2), timeout_s=0, poll_s=0, stacks_dir=d) == 3
    again = Cluster(stores, "Healthy", serving=V2)
    assert deliver.deliver("staging", "mnist", again, timeout_s=5, poll_s=0, stacks_dir=d) == 0
    assert again.pins == ["20260103T000000Z-run3"]
    assert registry.get_alias(stores["staging"], "mnist", "champion")["version"] == "20260103T000000Z-run3"


def test_main_exits_3_when_not_judged(stacks, monkeypatch, capsys):
    d, stores = stacks
    monkeypatch.setattr(deliver, "delivered_models", lambda stack: ["mnist"])
    real = deliver.deliver
    monkeypatch.setattr(
        deliver,
        "deliver",
        lambda stack, model, timeout_s: real(
            stack, model, Cluster(stores, "Inconclusive", serving=V1), timeout_s=0, poll_s=0, stacks_dir=d
        ),
    )
    assert deliver.main(["--stack", "prod"]) == 3


# ---- rollbacks: bytes that already served get a full promotion, never a canary ----


def test_a_version_that_served_as_champion_is_rolled_back_to_without_a_canary_and_it_sticks(stacks, capsys):
    d, stores = stacks
    registry.promote_between(stores["staging"], stores["prod"], "mnist", V2, reason="earlier run")  # prod served V2
    registry.rollback(stores["staging"], "mnist", reason="V2 misclassifies sevens")  # staging went back to V1
    cluster = Cluster(stores, "Failed", serving=V2)  # a canary would fail here
    assert deliver.deliver("prod", "mnist", cluster, timeout_s=5, poll_s=0, stacks_dir=d) == 0
    assert cluster.pins == [V1] and cluster.promoted_full == 1 and cluster.ups == 1
    assert registry.get_alias(stores["prod"], "mnist", "champion")["version"] == V1
    mark = registry.rejection(stores["prod"], "mnist", V2)
    assert mark is not None and "rollback from " + V2 in mark["reason"] and mark["by"]
    assert "full promotion, no canary" in capsys.readouterr().out
    # The next pipeline run: nothing to do but pin what serves; V2 never comes back.
    again = Cluster(stores, "Failed", serving=V1)
    assert deliver.deliver("prod", "mnist", again, timeout_s=5, poll_s=0, stacks_dir=d) == 0
    assert again.pins == [V1] and again.promoted_full == 0


def test_make_rollback_promotes_the_rolled_back_champion_in_full(tmp_path, stacks):
    d, stores = stacks
    publish(tmp_path, stores["staging"], "20260103T000000Z-run3")  # staging: V1, V2, then run3 champion
    registry.rollback(stores["staging"], "mnist", reason="bad run3")  # what `make rollback` does first (ops.models)
    cluster = Cluster(stores, "Failed", serving="20260103T000000Z-run3")
    assert deliver.roll_back("staging", "mnist", cluster, timeout_s=5, poll_s=0) == 0
    assert cluster.pins == [V2] and cluster.promoted_full == 1
    # The next pipeline run neither canaries run3 again nor moves anything.
    again = Cluster(stores, "Failed", serving=V2)
    assert deliver.deliver("staging", "mnist", again, timeout_s=5, poll_s=0, stacks_dir=d) == 0
    assert again.pins == [V2] and again.promoted_full == 0


def test_the_abort_message_is_evidence_only_for_a_judging_metric():
    ro = {"spec": {"template": {"metadata": {"annotations": {}}}}, "status": {"phase": "Degraded", "abort": True}}
    ro["status"]["message"] = (
        'RolloutAborted: Rollout aborted update to revision 3: Metric "error-ratio" assessed Failed due to failed (2) > failureLimit (1)'
    )
    assert deliver.judge(ro, None, V2)[0] == deliver.FAILED
    ro["status"]["message"] = 'RolloutAborted: Metric "warmup" assessed Failed'
    assert deliver.judge(ro, None, V2)[0] == deliver.NOT_JUDGED


def test_a_status_the_controller_has_not_caught_up_with_is_not_a_verdict():
    """Found by the attack review: right after `pulumi up` changes the template, the Rollout's status is
    still the previous generation's (Healthy, stable == current). Read as Healthy, it would make the new
    version champion with no canary at all."""
    healthy = {"phase": "Healthy", "stableRS": "abc", "currentPodHash": "abc", "observedGeneration": "5"}
    rollout = {"metadata": {"generation": 6}, "spec": {"template": {"metadata": {"annotations": {deliver.VERSION_ANNOTATION: "v2"}}}}}
    assert deliver.judge({**rollout, "status": healthy}, None, "v2") is None
    caught_up = {**healthy, "observedGeneration": "6"}
    assert deliver.judge({**rollout, "status": caught_up}, None, "v2") == (deliver.HEALTHY, "")
