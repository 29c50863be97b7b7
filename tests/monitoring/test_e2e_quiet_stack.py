"""A quiet-stack day, for real on this machine (issue 23): nobody sends a request, yet a good version is
delivered, a bad one is rejected, and a canary without data is *not judged* instead of rejected.

Real parts: model versions trained on real MNIST and published to a real local store (training.registry,
manifests and all); real server processes (python -m serving) serving them from that store; a real
Prometheus scraping them with the labels the ServiceMonitor gives canary and stable pods; the
AnalysisTemplate *rendered by components/lib/rollout_specs.py*, warm-up Job included, decided as the
Argo Rollouts controller decides it (tests/monitoring/argo_analysis.py); the warm-up Job's container
command (serving/warmup.py, with the Job's rendered args) run as a real process, the only change being
the in-cluster Service URLs mapped to the local servers; and ops/deliver.py's decision on the real store,
reading the Rollout and the AnalysisRun as the controller would show them. No other traffic.

- good: v2 trained like v1 on other images -> Successful -> deliver makes it the champion (exit 0);
- 5xx: v2 wrapped so every other call fails (a real intermittent model failure: the server answers 500)
  -> error-ratio Failed -> rejected (exit 1), the pin back on v1;
- slow: v2 on a server with a 400 ms batch wait -> latency-p99 Failed -> rejected (exit 1);
- never ready: the canary Service has no ready pod (nothing listens) -> no canary data -> Inconclusive
  -> not judged (exit 3), still the candidate;
- quiet: the same good canary with no warm-up and no traffic -> Inconclusive -> not judged (exit 3).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from components.lib import rollout_specs
from components.lib.rollout_specs import ARG_CANARY, ARG_STABLE, METRIC_ERRORS, METRIC_LATENCY, METRIC_WARMUP
from tests.monitoring import argo_analysis as argo
from tests.monitoring.test_e2e_alert import query
from tests.monitoring.test_e2e_canary import CANARY as ANALYSED_UNDER_LOAD
from tests.monitoring.test_e2e_canary import rollouts_seconds, servers_scraped
from tests.serving.conftest import ROOT, ServerProcess, free_port

pytestmark = pytest.mark.e2e

NAMESPACE = "ml-serving"
V1, V2, V2_ERR = "20260101T000000Z-v1", "20260102T000000Z-v2", "20260102T000000Z-v2err"
# The canary test's settings (models.mnist.serving.canary as CanaryConfig's fields; no pydantic in this
# venv), with what a quiet stack changes: the warm-up brings the data, a lower minimum per window, and a
# wider error bound for this shared 2-core machine.
CANARY = SimpleNamespace(**{**vars(ANALYSED_UNDER_LOAD), "max_error_ratio_increase": 0.05, "min_requests": 10, "warmup_rate": 4})
MEASUREMENTS = 4
FAIL_AFTER_CALLS = 12  # the 5xx version answers the server's load-time warm-up calls, then fails every other call
# canary name -> (version, extra server flags); "stable" serves V1.
CANARIES = {"good": (V2, ()), "err": (V2_ERR, ()), "slow": (V2, ("--batch-timeout-ms", "400"))}


def train(path: Path, x: np.ndarray, y: np.ndarray, seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((28, 28, 1), name="images"), keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(x[..., None], y, epochs=4, batch_size=64, verbose=0)
    path.mkdir(parents=True)
    model.save(path / "model.keras")
    model.export(str(path / "saved_model"), verbose=False)
    return model


def failing_every_other_call(path: Path, good: Path, model) -> None:
    """``model`` behind a signature that fails every other call after FAIL_AFTER_CALLS (a tf.Variable
    counts the calls): the server loads it (its load-time calls pass) and then answers 500 to half of
    the requests, as a model with an intermittent runtime fault does."""
    import shutil

    import tensorflow as tf

    class Flaky(tf.Module):
        def __init__(self):
            super().__init__()
            self.model, self.calls = model, tf.Variable(0, dtype=tf.int64)

        @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32, name="images")])
        def serve(self, images):
            n = self.calls.assign_add(1)
            ok = tf.logical_or(n <= FAIL_AFTER_CALLS, tf.math.floormod(n, 2) == 1)
            with tf.control_dependencies([tf.debugging.Assert(ok, ["injected model fault at call", n])]):
                return {"output_0": tf.identity(self.model(images))}

    flaky = Flaky()
    path.mkdir(parents=True)
    tf.saved_model.save(flaky, str(path / "saved_model"), signatures={"serving_default": flaky.serve})
    shutil.copy(good / "model.keras", path / "model.keras")


def publish(src: Path, root: str, version: str, champion: bool) -> None:
    from training import registry

    (src / "metadata.json").write_text(json.dumps({"version": version}))
    registry.publish(src, root, "mnist", version, reason="trained (test)", champion=champion)


def job_starter(urls: dict[str, str]):
    """Runs the warm-up Job's container as a process: its command and rendered args, the in-cluster
    Service URLs replaced by the local servers' (``urls``: rendered URL -> local URL)."""

    def start(_name: str, job: dict) -> subprocess.Popen:
        (c,) = job["spec"]["template"]["spec"]["containers"]
        assert c["command"][:1] == ["python"], c["command"]
        args = [urls.get(a, a) for a in c["args"]]
        env = {**os.environ, **{e["name"]: e["value"] for e in c.get("env", []) if "value" in e}}
        return subprocess.Popen(
            [sys.executable, *c["command"][1:], *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    return start


def run_analysis(analysis: argo.Analysis, template: dict) -> None:
    """One canary's AnalysisRun: jobs start with it, the judging metrics wait initialDelay, then
    MEASUREMENTS measurements (or fewer, once the run has decided), then the run ends."""
    metric = next(m for m in template["spec"]["metrics"] if "prometheus" in m["provider"])
    analysis.start()
    time.sleep(rollouts_seconds(metric["initialDelay"]))
    for _ in range(MEASUREMENTS):
        analysis.measure()
        if analysis.phase(terminating=False) != "Running":
            break
        time.sleep(rollouts_seconds(metric["interval"]))
    analysis.finish()


def controller_view(analysis: argo.Analysis, version: str) -> tuple[dict, dict]:
    """(Rollout, AnalysisRun) as the controller leaves them once the run is decided: promoted when it
    succeeded, aborted (Degraded) when it Failed or Errored, paused when it is Inconclusive."""
    run = analysis.run_document("model-server-mnist-hash-2")
    phase = run["status"]["phase"]
    status: dict = {"canary": {"currentBackgroundAnalysisRunStatus": {"name": run["metadata"]["name"], "status": phase}}}
    if phase == "Successful":
        status |= {"phase": "Healthy", "stableRS": "hash-2", "currentPodHash": "hash-2"}
    elif phase in ("Failed", "Error"):
        failed = next(m["name"] for m in run["status"]["metricResults"] if m["phase"] == phase)
        status |= {"phase": "Degraded", "abort": True, "message": f'RolloutAborted: Metric "{failed}" assessed {phase}'}
    else:
        status |= {"phase": "Paused", "pauseConditions": [{"reason": "InconclusiveAnalysisRun"}], "message": "InconclusiveAnalysisRun"}
    rollout = {"spec": {"template": {"metadata": {"annotations": {rollout_specs.VERSION_ANNOTATION: version}}}}, "status": status}
    return rollout, run


class Pipeline:
    """pulumi and kubectl as the delivery step calls them; the Rollout shows ``view`` once the
    candidate is pinned, and is Healthy on the champion otherwise."""

    def __init__(self, store: str, view: tuple[dict, dict], champion: str):
        self.store, (self.rollout, self.run), self.champion, self.pins = store, view, champion, []

    def __call__(self, cmd: list[str]) -> str:
        if cmd[:4] == ["pulumi", "stack", "output", "modelStore"]:
            return self.store + "\n"
        if cmd[:3] == ["pulumi", "config", "set"]:
            self.pins.append(cmd[5])
            return ""
        if cmd[:2] == ["pulumi", "up"]:
            return ""
        if cmd[3:5] == ["get", "rollout"]:
            if self.pins and self.pins[-1] == self.champion:
                healthy = {"phase": "Healthy", "stableRS": "hash-1", "currentPodHash": "hash-1"}
                return json.dumps(
                    {
                        "spec": {"template": {"metadata": {"annotations": {rollout_specs.VERSION_ANNOTATION: self.champion}}}},
                        "status": healthy,
                    }
                )
            return json.dumps(self.rollout)
        if cmd[3:5] == ["get", "analysisrun"]:
            return json.dumps(self.run)
        raise AssertionError(f"unexpected command {cmd}")


def deliver_on(tmp: Path, name: str, dirs: dict[str, Path], candidate: str, view: tuple[dict, dict]) -> tuple[int, str, Pipeline]:
    """ops/deliver.py on a fresh real store where v1 is the champion and ``candidate`` the candidate."""
    from ops import deliver

    store = f"file://{tmp / 'stores' / name}"
    publish(dirs[V1], store, V1, champion=True)
    publish(dirs[candidate], store, candidate, champion=False)
    stacks = tmp / "stacks" / name
    stacks.mkdir(parents=True)
    (stacks / "Pulumi.dev.yaml").write_text(yaml.safe_dump({"config": {"mlplatform:models": {"mnist": {}}}}))
    pipeline = Pipeline(store, view, V1)
    code = deliver.deliver("dev", "mnist", pipeline, timeout_s=0, poll_s=0, stacks_dir=stacks)
    return code, store, pipeline


@pytest.fixture(scope="module")
def day(tmp_path_factory, mnist_file):
    tmp = tmp_path_factory.mktemp("quiet")
    with np.load(mnist_file) as d:
        x, y = d["x_train"][:4000] / 255.0, d["y_train"][:4000]
    dirs = {V1: tmp / "src" / V1, V2: tmp / "src" / V2, V2_ERR: tmp / "src" / V2_ERR}
    train(dirs[V1], x[:2000], y[:2000], seed=1)
    good = train(dirs[V2], x[2000:], y[2000:], seed=2)
    failing_every_other_call(dirs[V2_ERR], dirs[V2], good)
    served = f"file://{tmp / 'served'}"  # the store the servers load from: the same bytes, published
    for v in (V1, V2, V2_ERR):
        publish(dirs[v], served, v, champion=v == V1)
    plan = {"stable": (V1, ()), **CANARIES}
    prom_port = free_port()
    with servers_scraped(tmp, served, plan, prom_port) as servers:
        yield decide(tmp, dirs, servers, f"http://127.0.0.1:{prom_port}")


def decide(tmp: Path, dirs: dict[str, Path], servers: dict[str, ServerProcess], prom: str) -> dict:
    warmup = rollout_specs.Warmup("serving-image", "http://stable.svc:8501", "http://canary.svc:8501")
    template = rollout_specs.analysis_template("mnist", NAMESPACE, CANARY, prometheus_url=prom, warmup=warmup)
    closed = f"http://127.0.0.1:{free_port()}"  # a Service without a ready pod: nothing answers
    runs = {}
    # The four canaries of the day run side by side (each its own warm-up process), as four stacks would.
    for name in (*CANARIES, "never-ready"):
        canary_url = servers[name].url if name in servers else closed
        start = job_starter({warmup.stable_url: servers["stable"].url, warmup.canary_url: canary_url})
        runs[name] = argo.Analysis(template, {ARG_CANARY: f"hash-{name}", ARG_STABLE: "hash-stable"}, prom, start_job=start)
    started = time.time()
    for a in runs.values():
        a.start()
    _measure_together(runs, template)
    # Then the quiet one: the good canary and the stable pods, with no warm-up and no traffic at all
    # (everything above has stopped; wait out a window, so nothing of it is left in the queries).
    time.sleep(CANARY.window_seconds + 3)
    quiet_template = rollout_specs.analysis_template("mnist", NAMESPACE, CANARY, prometheus_url=prom)
    runs["quiet"] = argo.Analysis(quiet_template, {ARG_CANARY: "hash-good", ARG_STABLE: "hash-stable"}, prom)
    run_analysis(runs["quiet"], quiet_template)
    outputs = {n: (a.jobs[METRIC_WARMUP].stdout.read() if METRIC_WARMUP in a.jobs else "") for n, a in runs.items()}
    candidates = {"good": V2, "err": V2_ERR, "slow": V2, "never-ready": V2, "quiet": V2}
    delivered = {n: deliver_on(tmp, n, dirs, candidates[n], controller_view(a, candidates[n])) for n, a in runs.items()}
    for n, a in runs.items():  # the figures, for the log (pytest -s)
        print(f"{n}: {a.phase(True)}; " + "; ".join(f"{m} {r.phases} {r.values}" for m, r in a.results.items()))
        print(f"  warm-up: {outputs[n].strip()[-300:]}; deliver exit {delivered[n][0]}")
    return {"runs": runs, "warmup": outputs, "delivered": delivered, "seconds": time.time() - started, "stable_url": servers["stable"].url}


def _measure_together(runs: dict[str, argo.Analysis], template: dict) -> None:
    metric = next(m for m in template["spec"]["metrics"] if "prometheus" in m["provider"])
    time.sleep(rollouts_seconds(metric["initialDelay"]))
    for _ in range(MEASUREMENTS):
        for a in runs.values():
            if a.phase(terminating=False) == "Running":
                a.measure()
        time.sleep(rollouts_seconds(metric["interval"]))
    for a in runs.values():
        a.finish()


def explain(day, name):
    a = day["runs"][name]
    return (
        f"{name}: {a.metric_phases(True)}; {[(m, r.phases, r.values) for m, r in a.results.items()]}; warm-up {day['warmup'][name][-400:]}"
    )


def test_the_warmup_ran_for_real_and_exited_0_with_its_requests_labelled(day):
    for name in ("good", "err", "slow", "never-ready"):
        a = day["runs"][name]
        assert a.results[METRIC_WARMUP].phases == ["Successful"], explain(day, name)
        summary = json.loads(day["warmup"][name].split("warmup: ", 1)[1])
        assert summary["codes"]["stable"].get("200", 0) >= 20, summary
    never = json.loads(day["warmup"]["never-ready"].split("warmup: ", 1)[1])
    assert set(never["codes"]["canary"]) == {"0"}, never  # refused connections, still exit 0: not a verdict
    # The server counted the warm-up as warm-up (the user-facing views leave it out).
    (warm,) = query(day["runs"]["good"].prom_url, 'sum(mlplatform_serving_requests_total{traffic="warmup",route="predict"})')
    assert float(warm["value"][1]) > 0


def test_a_good_version_becomes_champion_with_no_other_traffic(day):
    from training import registry

    a = day["runs"]["good"]
    assert a.phase(terminating=True) == "Successful", explain(day, "good")
    code, store, pipeline = day["delivered"]["good"]
    assert code == 0 and registry.get_alias(store, "mnist", "champion")["version"] == V2, explain(day, "good")


def test_a_version_with_5xx_is_rejected(day):
    from training import registry

    a = day["runs"]["err"]
    assert a.metric_phases(terminating=True)[METRIC_ERRORS] == "Failed", explain(day, "err")
    code, store, pipeline = day["delivered"]["err"]
    assert code == 1 and pipeline.pins == [V2_ERR, V1]
    assert "error-ratio Failed" in registry.rejection(store, "mnist", V2_ERR)["reason"]
    assert registry.get_alias(store, "mnist", "champion")["version"] == V1


def test_a_slow_version_is_rejected(day):
    from training import registry

    a = day["runs"]["slow"]
    assert a.metric_phases(terminating=True)[METRIC_LATENCY] == "Failed", explain(day, "slow")
    code, store, _ = day["delivered"]["slow"]
    assert code == 1 and "latency-p99 Failed" in registry.rejection(store, "mnist", V2)["reason"]


@pytest.mark.parametrize("name", ["never-ready", "quiet"])
def test_no_data_is_not_judged_and_the_version_stays_the_candidate(day, name):
    from training import registry

    a = day["runs"][name]
    phases = a.metric_phases(terminating=False)
    assert a.phase(terminating=False) == "Inconclusive", explain(day, name)
    assert "Failed" not in phases.values() and "Error" not in phases.values(), explain(day, name)
    code, store, pipeline = day["delivered"][name]
    assert code == 3 and pipeline.pins == [V2, V1]
    assert registry.rejection(store, "mnist", V2) is None
    assert registry.get_alias(store, "mnist", "candidate")["version"] == V2
    assert registry.get_alias(store, "mnist", "champion")["version"] == V1


def test_the_day_is_time_bounded(day):
    assert day["seconds"] < 180, day["seconds"]


def test_the_warmup_fails_only_when_misconfigured(day):
    """Exit 2 (the Job fails, the run fails, deliver says not judged): a model neither Service knows,
    or bad arguments. Never for what the servers answer."""
    base = [sys.executable, "-m", "serving.warmup", "--rate", "2", "--duration", "3"]
    url = day["stable_url"]
    wrong_model = subprocess.run(
        [*base, "--canary", url, "--stable", url, "--model", "fraud"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert wrong_model.returncode == 2 and "404 from every Service" in wrong_model.stderr, wrong_model.stderr
    bad_url = subprocess.run(
        [*base, "--canary", "model-server:8501", "--stable", url, "--model", "mnist"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert bad_url.returncode == 2 and "not an http(s) URL" in bad_url.stderr, bad_url.stderr
