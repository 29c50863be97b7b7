"""Training metrics, pushed to a Prometheus Pushgateway (batch jobs cannot be scraped).

Two Pushgateway groups per model, because a push (PUT) replaces its whole group:

- the run group ``{job="mlplatform-training", model}``: the current/last run (epochs, accuracy, gate,
  ...), replaced by every push of every run. Keyed by model only, so a run with another arch
  replaces the old arch's series instead of leaving them behind forever (the Pushgateway persists).
- the success group ``{job="mlplatform-training-success", model}``: only the last-success timestamp,
  pushed only by a run that published. Epoch pushes and failed runs never touch it, so TrainingStale
  keeps seeing the last success however many runs fail after it.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

log = logging.getLogger(__name__)

JOB = "mlplatform-training"
SUCCESS_JOB = "mlplatform-training-success"

ACCURACY = "mlplatform_training_test_accuracy_ratio"
LOSS = "mlplatform_training_test_loss"
EPOCH_SECONDS = "mlplatform_training_epoch_duration_seconds"
DURATION_SECONDS = "mlplatform_training_duration_seconds"
EPOCHS = "mlplatform_training_epochs_completed"
GATE_PASSED = "mlplatform_training_quality_gate_passed"
CHAMPION_ACCURACY = "mlplatform_training_champion_accuracy_ratio"
LAST_SUCCESS = "mlplatform_training_last_success_timestamp_seconds"
LAST_RUN = "mlplatform_training_last_run_timestamp_seconds"

NAMES = (ACCURACY, LOSS, EPOCH_SECONDS, DURATION_SECONDS, EPOCHS, GATE_PASSED, CHAMPION_ACCURACY, LAST_SUCCESS, LAST_RUN)

# Per worker of a (multi-worker) run: each worker pushes its own group {job, model, worker}, so a
# slow or stalled worker shows as itself rather than hiding in the chief's figures.
WORKER_JOB = "mlplatform-training-worker"
EXAMPLES_PER_SECOND = "mlplatform_training_examples_per_second"
STEP_SECONDS = "mlplatform_training_step_duration_seconds"
WORKER_NAMES = (EXAMPLES_PER_SECOND, STEP_SECONDS)


class TrainingMetrics:
    """One registry per run; labels are bounded (model name, arch)."""

    def __init__(self, model: str, arch: str, registry: CollectorRegistry | None = None, success_registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.success_registry = success_registry or CollectorRegistry()
        self.labels = {"model": model, "arch": arch}
        names = list(self.labels)
        self._published = False
        self._g = {
            ACCURACY: Gauge(ACCURACY, "Held-out test accuracy of the last run (0..1).", names, registry=self.registry),
            LOSS: Gauge(LOSS, "Held-out test loss of the last run.", names, registry=self.registry),
            EPOCH_SECONDS: Gauge(EPOCH_SECONDS, "Wall time of the last completed epoch.", names, registry=self.registry),
            DURATION_SECONDS: Gauge(DURATION_SECONDS, "Wall time of the last run, data loading to publish.", names, registry=self.registry),
            EPOCHS: Gauge(EPOCHS, "Epochs completed by the last run (resumed epochs included).", names, registry=self.registry),
            GATE_PASSED: Gauge(GATE_PASSED, "1 when the last run passed the quality gate, else 0.", names, registry=self.registry),
            CHAMPION_ACCURACY: Gauge(
                CHAMPION_ACCURACY,
                "Accuracy of the serving champion on the last run's test data (the gate's comparison).",
                names,
                registry=self.registry,
            ),
            LAST_SUCCESS: Gauge(
                LAST_SUCCESS, "Unix time of the last run that passed the gate and published.", ["model"], registry=self.success_registry
            ),
            LAST_RUN: Gauge(LAST_RUN, "Unix time the last run finished (pass or fail).", names, registry=self.registry),
        }

    def set(self, name: str, value: float) -> None:
        if name == LAST_SUCCESS:
            self._g[name].labels(model=self.labels["model"]).set(value)
            self._published = True
            return
        self._g[name].labels(**self.labels).set(value)

    def push(self, gateway: str | None) -> None:
        """Push the run group to ``gateway`` when configured, and the success group once this run
        has published. A monitoring outage must not fail a training run."""
        if not gateway:
            return
        model = {"model": self.labels["model"]}
        try:
            push_to_gateway(gateway, job=JOB, grouping_key=model, registry=self.registry, timeout=10)
            if self._published:
                push_to_gateway(gateway, job=SUCCESS_JOB, grouping_key=model, registry=self.success_registry, timeout=10)
        except OSError as exc:
            log.warning("could not push metrics to %s: %s", gateway, exc)


class WorkerMetrics:
    """This worker's throughput over its last epoch (labels: model; the group adds worker)."""

    def __init__(self, model: str, worker: int, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.model, self.worker = model, worker
        self.examples_per_second = Gauge(
            EXAMPLES_PER_SECOND,
            "Training examples this worker processed per second over its last epoch.",
            ["model"],
            registry=self.registry,
        )
        self.step_seconds = Gauge(
            STEP_SECONDS, "Mean wall time of one training step of this worker over its last epoch.", ["model"], registry=self.registry
        )

    def observe_epoch(self, steps: int, examples: int, seconds: float) -> None:
        if steps <= 0 or seconds <= 0:
            return  # an empty or interrupted epoch says nothing about throughput
        self.examples_per_second.labels(model=self.model).set(examples / seconds)
        self.step_seconds.labels(model=self.model).set(seconds / steps)

    def push(self, gateway: str | None) -> None:
        if not gateway:
            return
        try:
            push_to_gateway(
                gateway, job=WORKER_JOB, grouping_key={"model": self.model, "worker": str(self.worker)}, registry=self.registry, timeout=10
            )
        except OSError as exc:
            log.warning("could not push worker metrics to %s: %s", gateway, exc)
