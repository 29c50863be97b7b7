"""The canary analysis for real (issue 15 item 4): a real Prometheus scrapes real model servers - the
stable pods on version A and three canaries - under load from this test, and the AnalysisTemplate
*rendered by components/lib/rollout_specs.py*, the program's own builder (Pulumi-free, so imported here
directly), with its queries and successConditions, args substituted, is decided the way the Argo
Rollouts controller decides an AnalysisRun (tests/monitoring/argo_analysis.py).

- good: version B, trained like A on other real MNIST images -> the analysis passes (promote);
- slow: version B on a server with a 400 ms batch wait (a real server option, a real misconfiguration)
  -> fails on p99 latency (abort);
- shuffled: a model trained on the same images with shuffled labels -> its predicted-class mix on the
  same traffic is far from the stable one's -> fails on the class-mix PSI (abort).

Each scrape target carries the labels the ServiceMonitor's relabeling gives a pod in the cluster
(namespace, pod, rollouts_pod_template_hash): the queries can only tell the sides apart by them.
Thresholds are config (CanaryConfig); this shared 2-core machine gets wider latency bounds than a
cluster would (p99 ratio 3, floor 50 ms) and short windows (10 s windows, a measurement every 5 s, scrapes every 1 s).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from components.lib.rollout_specs import (
    ARG_CANARY,
    ARG_STABLE,
    METRIC_CLASSES,
    METRIC_ERRORS,
    METRIC_LATENCY,
    POD_HASH_TARGET_LABEL,
    analysis_template,
    chart_values,
)
from tests.monitoring import argo_analysis as argo
from tests.monitoring.test_e2e_alert import query, start_prometheus, wait_http
from tests.serving.conftest import ServerProcess, free_port

pytestmark = pytest.mark.e2e

NAMESPACE = "ml-serving"
# models.mnist.serving.canary as a stack file would set it, as the CanaryConfig fields the template reads
# (the config schema needs pydantic, which this environment does not have).
CANARY = SimpleNamespace(
    steps=[50],
    step_seconds=20,
    window_seconds=10,
    interval_seconds=5,
    failure_limit=1,
    max_error_ratio_increase=0.01,
    max_p99_ratio=3,
    p99_floor_ms=50,
    max_class_psi=0.2,
    min_class_samples=200,
    # This test applies its own (user) load and renders no warm-up Job (tests/monitoring/test_e2e_quiet_stack.py does).
    min_requests=20,
    max_client_error_ratio_increase=0.05,
    warmup_rate=0,
)

MEASUREMENTS = 3
SLOW_BATCH_WAIT_MS = 400


def train_version(path: Path, version: str, x: np.ndarray, y: np.ndarray, seed: int) -> Path:
    """A small real classifier on real MNIST pixels, exported in the store's version layout."""
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((28, 28, 1), name="images"), keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[..., None], y, epochs=4, batch_size=64, verbose=0)
    path.mkdir(parents=True)
    model.save(path / "model.keras")
    model.export(str(path / "saved_model"), verbose=False)
    (path / "metadata.json").write_text(json.dumps({"version": version}))
    return path


class Load:
    """Per server, two client threads sending the same real test images in the same order."""

    def __init__(self, urls: dict[str, str], images: np.ndarray, threads: int = 2):
        # each image as the model declares it, [28, 28, 1] (the server refuses a rank-2 image: serving/codec.py)
        self.bodies = [json.dumps({"instances": [img.round(3)[..., None].tolist()]}).encode() for img in images]
        self.codes: dict[str, dict[int, int]] = {name: {} for name in urls}
        self.stop = threading.Event()
        self.workers = [
            threading.Thread(target=self._run, args=(name, url, t, threads), daemon=True)
            for name, url in urls.items()
            for t in range(threads)
        ]

    def _run(self, name: str, url: str, offset: int, step: int) -> None:
        i = offset
        while not self.stop.is_set():
            req = urllib.request.Request(
                f"{url}/v1/models/mnist:predict", self.bodies[i % len(self.bodies)], {"Content-Type": "application/json"}
            )
            try:
                code = urllib.request.urlopen(req, timeout=10).status
            except urllib.error.HTTPError as exc:
                code = exc.code
            except OSError:
                code = 0
            self.codes[name][code] = self.codes[name].get(code, 0) + 1
            i += step
            time.sleep(0.005)

    def __enter__(self):
        for w in self.workers:
            w.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for w in self.workers:
            w.join(15)


def train_versions(store: Path, x: np.ndarray, y: np.ndarray) -> dict[str, Path]:
    """A and B: the same recipe on disjoint real images; C: B's images with their labels shuffled."""
    rng = np.random.default_rng(0)
    return {
        "v1": train_version(store / "v1", "v1", x[:2000], y[:2000], seed=1),
        "v2": train_version(store / "v2", "v2", x[2000:], y[2000:], seed=2),
        "v3": train_version(store / "v3", "v3", x[2000:], rng.permutation(y[2000:]), seed=3),
    }


# The served version is pinned in the pod template (a version directory, not LATEST).
PLAN = {
    "stable": ("v1", ()),
    "good": ("v2", ()),
    "slow": ("v2", ("--batch-timeout-ms", str(SLOW_BATCH_WAIT_MS))),
    "shuffled": ("v3", ()),
}


def pod_labels(name: str) -> dict[str, str]:
    """What the ServiceMonitor's podTargetLabels/relabeling give the pod of server ``name``."""
    return {"namespace": NAMESPACE, "pod": f"model-server-mnist-{name}", POD_HASH_TARGET_LABEL: f"hash-{name}"}


def scrape_config(servers: dict[str, ServerProcess]) -> dict:
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
        "scrape_configs": [
            {
                "job_name": "model-server",
                "static_configs": [{"targets": [f"127.0.0.1:{s.metrics_port}"], "labels": pod_labels(name)} for name, s in servers.items()],
            }
        ],
    }


@contextlib.contextmanager
def servers_scraped(tmp: Path, store: str, plan: dict[str, tuple[str, tuple]], prom_port: int):
    """One real server process per ``plan`` entry (name -> (version, extra flags)) serving that version of
    the store, all ready, and a real Prometheus scraping them as the ServiceMonitor would; stopped after."""
    servers = {
        name: ServerProcess(f"{store}/models/mnist/{v}", "--parse-workers", "0", "--poll-seconds", "0", *extra)
        for name, (v, extra) in plan.items()
    }
    prom_proc = None
    try:
        for s in servers.values():
            s.wait_ready()
        prom_proc = start_prometheus(tmp, scrape_config(servers), prom_port)
        wait_http(f"http://127.0.0.1:{prom_port}/-/ready")
        yield servers
    finally:
        for s in servers.values():
            s.stop()
        if prom_proc is not None:
            prom_proc.terminate()
            prom_proc.wait(20)


def analyse(template: dict, servers: dict[str, ServerProcess], prom: str, images: np.ndarray) -> dict:
    """One AnalysisRun per canary against the stable pods, MEASUREMENTS measurements under load."""
    analyses = {
        name: argo.Analysis(template, {ARG_CANARY: f"hash-{name}", ARG_STABLE: "hash-stable"}, prom)
        for name in ("good", "slow", "shuffled")
    }
    started = time.time()
    with Load({n: s.url for n, s in servers.items()}, images) as load:
        # initialDelay: the canary takes traffic for one window before it is judged.
        time.sleep(rollouts_seconds(template["spec"]["metrics"][0]["initialDelay"]))
        log = []
        for _ in range(MEASUREMENTS):
            for name, analysis in analyses.items():
                log.append((name, analysis.measure()))
            time.sleep(rollouts_seconds(template["spec"]["metrics"][0]["interval"]))
    for name, a in analyses.items():  # the figures, for the log (pytest -s)
        print(f"canary {name}: {a.rollout_decision()}; " + "; ".join(f"{m} {r.phases} {r.values}" for m, r in a.results.items()))
    print(f"requests per server: {load.codes}; load {time.time() - started:.0f} s")
    return {"analyses": analyses, "load": load, "log": log, "prom": prom, "seconds": time.time() - started}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, mnist_file):
    tmp = tmp_path_factory.mktemp("canary")
    prom_port = free_port()
    prom = f"http://127.0.0.1:{prom_port}"
    template = analysis_template("mnist", NAMESPACE, CANARY, prometheus_url=prom)
    with np.load(mnist_file) as d:
        x_train, y_train, x_test = d["x_train"][:4000] / 255.0, d["y_train"][:4000], d["x_test"][:2000] / 255.0
    dirs = train_versions(tmp / "src", x_train, y_train)
    # Published to a real store (manifest and digests): the server verifies what it loads.
    from training import registry

    store = f"file://{tmp / 'store'}"
    for v, d in dirs.items():
        registry.publish(d, store, "mnist", v, reason="trained (test)", champion=v == "v1")
    with servers_scraped(tmp, store, PLAN, prom_port) as servers:
        yield analyse(template, servers, prom, x_test)


def rollouts_seconds(duration: str) -> float:
    assert duration.endswith("s"), duration  # the template writes every duration in seconds
    return float(duration[:-1])


def explain(fleet, name):
    a = fleet["analyses"][name]
    return f"{name}: metrics {a.metric_phases(True)}; measurements {[(m, r.phases, r.values) for m, r in a.results.items()]}; load {fleet['load'].codes}"


def test_every_server_was_loaded_and_scraped_with_its_hash(fleet):
    codes = fleet["load"].codes
    for name in ("stable", "good", "slow", "shuffled"):
        assert codes[name].get(200, 0) >= 30, codes
        assert set(codes[name]) == {200}, codes
        assert query(fleet["prom"], f'mlplatform_serving_predicted_class_total{{{POD_HASH_TARGET_LABEL}="hash-{name}"}}'), name


def test_good_canary_passes(fleet):
    a = fleet["analyses"]["good"]
    assert a.rollout_decision() == "promote", explain(fleet, "good")
    assert all(p == "Successful" for r in a.results.values() for p in r.phases), explain(fleet, "good")


def test_slow_canary_is_aborted_on_latency(fleet):
    a = fleet["analyses"]["slow"]
    phases = a.metric_phases(terminating=True)
    assert a.rollout_decision() == "abort", explain(fleet, "slow")
    assert phases[METRIC_LATENCY] == "Failed", explain(fleet, "slow")
    assert phases[METRIC_ERRORS] == "Successful", explain(fleet, "slow")
    # ~5 requests/s at a 400 ms batch wait: too few predictions to judge its class mix, not a failure.
    assert "Failed" not in a.results[METRIC_CLASSES].phases, explain(fleet, "slow")
    assert min(v[0] for v in a.results[METRIC_LATENCY].values) > CANARY.max_p99_ratio


def test_canary_with_another_class_mix_is_aborted_on_the_quality_signal(fleet):
    a = fleet["analyses"]["shuffled"]
    phases = a.metric_phases(terminating=True)
    assert a.rollout_decision() == "abort", explain(fleet, "shuffled")
    assert phases[METRIC_CLASSES] == "Failed", explain(fleet, "shuffled")
    assert phases[METRIC_LATENCY] != "Failed" and phases[METRIC_ERRORS] == "Successful", explain(fleet, "shuffled")


def test_controller_series_keep_the_rollouts_namespace(tmp_path):
    """The chart's ServiceMonitor relabeling (components/lib/rollout_specs.py chart_values) on a real Prometheus: the Argo
    Rollouts controller's `rollout_info{namespace=<the rollout's>}` clashes with the target's
    namespace (argo-rollouts); Prometheus renames it exported_namespace, the relabeling puts it back,
    so the delivery alerts name the model's namespace."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    relabelings = chart_values(monitoring=True)["controller"]["metrics"]["serviceMonitor"]["metricRelabelings"]
    # prometheus-operator writes each RelabelConfig field in Prometheus' snake_case
    names = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    metric_relabel = [{names.get(k, k): v for k, v in r.items()} for r in relabelings]
    body = b'rollout_info{namespace="ml-serving",name="model-server-mnist",strategy="canary",traffic_router="",phase="Degraded"} 1\n'

    class Controller(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Controller)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = free_port()
    cfg = {
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "argo-rollouts-metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{server.server_address[1]}"], "labels": {"namespace": "argo-rollouts"}}],
                "metric_relabel_configs": metric_relabel,
            }
        ],
    }
    prom = start_prometheus(tmp_path, cfg, port)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/-/ready")
        deadline = time.time() + 30
        while time.time() < deadline and not (found := query(url, "rollout_info")):
            time.sleep(0.5)
        assert found, "rollout_info never scraped"
        (series,) = found
        assert series["metric"]["namespace"] == "ml-serving" and "exported_namespace" not in series["metric"], series
    finally:
        prom.terminate()
        prom.wait(20)
        server.shutdown()
