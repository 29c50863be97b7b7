"""KEDA's decision, for real: the ScaledObject the program renders for our TF server (taken from
`tools.synth`'s manifests of the dev stack, not a copy of its query), evaluated the way KEDA's
Prometheus scaler evaluates it (``GET /api/v1/query?query=...&time=...``, one series, KEDA v2.20.2
pkg/scalers/prometheus_scaler.go ExecutePromQuery) against a real Prometheus scraping our real server
(configured from the rendered Deployment's environment) under real HTTP load from wrk.

The replica count is then KEDA's AverageValue formula, components/autoscaling.desired_replicas:
``ceil(value / threshold)`` clamped to [minReplicaCount, maxReplicaCount]
(https://keda.sh/docs/2.20/concepts/scaling-deployments/, the HPA algorithm
https://kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/#algorithm-details).
Low load (one client at a time) must keep the minimum; high load (hundreds of concurrent clients on a
model whose batched inference is the bottleneck) must ask for more replicas.

What this does not run: KEDA itself and the HPA (no cluster here), so their polling, the HPA's 10 %
tolerance and stabilisation windows are not exercised; the formula is KEDA's documented one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from components.lib.keda_specs import desired_replicas, target_label
from tests.conftest import ROOT
from tests.monitoring.test_e2e_alert import binary, start_prometheus
from tests.serving.conftest import free_port

pytestmark = pytest.mark.e2e
STACK = "dev"


def rendered(tmp_path: Path) -> dict[tuple[str, str], dict]:
    """Every object `python -m tools.synth --stack dev` renders, by (kind, name). Synth needs the
    program's venv (Pulumi), not this one (TensorFlow)."""
    py = ROOT / ".venv" / "bin" / "python"
    out = tmp_path / "synth"
    proc = subprocess.run(
        [str(py if py.exists() else sys.executable), "-m", "tools.synth", "--stack", STACK, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    objs = [yaml.safe_load(p.read_text()) for p in sorted((out / "manifests").glob("*.yaml"))]
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


def tf_scaling(objs: dict) -> tuple[dict, dict, dict[str, str]]:
    """(ScaledObject, its target Deployment/Rollout, the labels Prometheus gives its targets)
    of our TF server. The labels are what prometheus-operator's relabeling makes of the rendered
    ServiceMonitor and the Service it selects: namespace, job (the Service label named by
    ``jobLabel``, else the Service's name), each ``targetLabels`` entry under its sanitized name."""
    for (kind, _), so in objs.items():
        target = so["spec"]["scaleTargetRef"] if kind == "ScaledObject" else {}
        # a Deployment, or an Argo Rollout with its pod template inline (the delivery issue's)
        if target.get("kind", "Deployment") not in ("Deployment", "Rollout"):
            continue
        dep = objs.get((target.get("kind", "Deployment"), target.get("name")))
        if not dep or not any(c["name"] == "model-server" for c in dep["spec"]["template"]["spec"]["containers"]):
            continue
        # a model whose replicas are fixed (minReplicas == maxReplicas, e.g. dev's breast-cancer) has
        # nothing to scale between: the first TF server that can scale out is the one under test
        if so["spec"].get("minReplicaCount", 0) >= so["spec"].get("maxReplicaCount", 100):  # KEDA's default max: 100
            continue
        ns, pod_labels = so["metadata"]["namespace"], dep["spec"]["template"]["metadata"]["labels"]
        services = [
            s
            for (k, _), s in objs.items()
            if k == "Service" and s["metadata"]["namespace"] == ns and s["spec"].get("selector", {}).items() <= pod_labels.items()
        ]
        for (k, _), sm in objs.items():
            if k != "ServiceMonitor" or ns not in sm["spec"]["namespaceSelector"].get("matchNames", [ns]):
                continue
            picked = [s for s in services if sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"].get("labels", {}).items()]
            if len(picked) == 1:
                svc_labels = picked[0]["metadata"].get("labels", {})
                job = svc_labels[sm["spec"]["jobLabel"]] if sm["spec"].get("jobLabel") else picked[0]["metadata"]["name"]
                labels = {"namespace": ns, "job": job, "pod": f"{dep['metadata']['name']}-0"}
                labels |= {target_label(t): svc_labels[t] for t in sm["spec"].get("targetLabels", [])}
                return so, dep, labels
        raise AssertionError(f"no ServiceMonitor scrapes {dep['metadata']['name']}")
    raise AssertionError(f"the {STACK} stack renders no ScaledObject for our TF server (still an HPA?)")


def publish_heavy_model(root: Path, name: str) -> None:
    """A CNN (random weights) whose batched inference, not JSON parsing, is the server's bottleneck,
    so the queue grows under load as it does with the real model on a busy node."""
    import keras

    from training import artifacts

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.Conv2D(128, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    src = root.parent / "build-heavy"
    src.mkdir(parents=True)
    model.save(src / "model.keras")
    model.export(str(src / "saved_model"), verbose=False)
    (src / "metadata.json").write_text(json.dumps({"version": "v1"}))
    artifacts.publish(src, f"file://{root}", name, "v1")


def wait_http(url: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(url, timeout=1).status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} not up in {timeout}s")


def keda_query(prom: str, query: str) -> list:
    """As KEDA's Prometheus scaler asks: instant query at 'now'."""
    t = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": query, "time": t})
    body = json.loads(urllib.request.urlopen(url, timeout=10).read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def load(url: str, connections: int, seconds: int, tmp_path: Path) -> subprocess.Popen:
    script = tmp_path / "predict.lua"
    instance = [[[0.5] for _ in range(28)] for _ in range(28)]
    script.write_text(
        f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = \'{json.dumps({"instances": [instance]})}\'\n'
    )
    threads = min(2, connections)
    return subprocess.Popen(
        [binary("wrk"), f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s", "-s", str(script), url],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture
def scaling_env(tmp_path):
    objs = rendered(tmp_path)
    so, dep, target_labels = tf_scaling(objs)
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e}
    root = tmp_path / "store"
    if "SERVING_MODELS" in env:  # NAME=URI pairs: serve the same names from the local store
        names = [pair.split("=", 1)[0] for pair in env["SERVING_MODELS"].split(",")]
        env["SERVING_MODELS"] = ",".join(f"{n}=file://{root}" for n in names)
    else:
        names = [env.get("SERVING_MODEL_NAME", "mnist")]
        env["SERVING_MODEL_URI"] = f"file://{root}"
    for name in names:
        publish_heavy_model(root, name)
    port = metrics_port = free_port()
    # The server as the Deployment configures it (models, batch size, batch timeout, queue), on a
    # local store and local ports.
    server_env = {**os.environ, **{k: v for k, v in env.items() if k.startswith("SERVING_")}}
    server_env.update(SERVING_PORT=str(port), SERVING_HOST="127.0.0.1", SERVING_POLL_SECONDS="0")
    help_text = subprocess.run([sys.executable, "-m", "serving", "--help"], cwd=ROOT, capture_output=True, text=True).stdout
    if "--metrics-port" in help_text:  # /metrics on its own port (what the ServiceMonitor scrapes)
        metrics_port = free_port()
        server_env["SERVING_METRICS_PORT"] = str(metrics_port)
    server = subprocess.Popen(
        [sys.executable, "-m", "serving"], cwd=ROOT, env=server_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    prom_port = free_port()
    prom_cfg = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms"},
        # One target labelled as the ServiceMonitor's relabeling labels it in the cluster.
        "scrape_configs": [
            {
                "job_name": target_labels["job"],
                "static_configs": [
                    {"targets": [f"127.0.0.1:{metrics_port}"], "labels": {k: v for k, v in target_labels.items() if k != "job"}}
                ],
            }
        ],
    }
    prom = start_prometheus(tmp_path, prom_cfg, prom_port)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout=180)
        wait_http(f"http://127.0.0.1:{prom_port}/-/ready")
        yield {
            "so": so,
            "prom": f"http://127.0.0.1:{prom_port}",
            "metrics": f"http://127.0.0.1:{metrics_port}/metrics",
            "predict": f"http://127.0.0.1:{port}/v1/models/{names[0]}:predict",
        }
    finally:
        for p in (server, prom):
            p.kill()
            p.wait(30)


def phase(env, connections: int, seconds: int, tmp_path: Path) -> tuple[float, list[float]]:
    """Run wrk for ``seconds``; just before it ends, evaluate the rendered query as KEDA would.
    Also sample the server's own queue gauge meanwhile (a cross-check of what Prometheus saw)."""
    trigger = env["so"]["spec"]["triggers"][0]
    wrk = load(env["predict"], connections, seconds, tmp_path)
    samples, t_end = [], time.time() + seconds - 2
    while time.time() < t_end:
        text = urllib.request.urlopen(env["metrics"], timeout=10).read().decode()
        samples += [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("mlplatform_serving_queue_depth")]
        time.sleep(0.5)
    result = keda_query(env["prom"], trigger["metadata"]["query"])
    out, _ = wrk.communicate(timeout=60)
    assert wrk.returncode == 0, out
    assert len(result) == 1, f"KEDA needs exactly one series, got {result}"  # else: 'returned multiple elements'
    return float(result[0]["value"][1]), samples


def test_rendered_queue_query_scales_out_under_load_only(scaling_env, tmp_path):
    so = scaling_env["so"]
    (trigger,) = [t for t in so["spec"]["triggers"] if t["type"] == "prometheus"]
    assert trigger["metricType"] == "AverageValue"
    threshold = float(trigger["metadata"]["threshold"])
    lo, hi = so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]
    assert lo < hi, "nothing to scale between"

    low, low_samples = phase(scaling_env, connections=1, seconds=40, tmp_path=tmp_path)
    high, high_samples = phase(scaling_env, connections=512, seconds=40, tmp_path=tmp_path)
    report = (
        f"threshold {threshold:g}, min {lo}, max {hi}; low load: query {low:.1f} -> {desired_replicas(low, threshold, lo, hi)} replicas "
        f"(server gauge mean {sum(low_samples) / max(1, len(low_samples)):.1f}); high load: query {high:.1f} -> "
        f"{desired_replicas(high, threshold, lo, hi)} replicas (server gauge mean {sum(high_samples) / max(1, len(high_samples)):.1f})"
    )
    print(report)
    assert desired_replicas(low, threshold, lo, hi) == lo, report
    assert high > threshold and desired_replicas(high, threshold, lo, hi) > lo, report
    # Prometheus saw what the server reported (the query averages each replica's gauge over a window)
    assert max(high_samples) > threshold, report
