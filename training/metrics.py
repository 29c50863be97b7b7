"""Training metrics, pushed to a Prometheus Pushgateway (batch jobs cannot be scraped)."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

log = logging.getLogger(__name__)

JOB = "mlplatform-training"

ACCURACY = "mlplatform_training_test_accuracy_ratio"
LOSS = "mlplatform_training_test_loss"
EPOCH_SECONDS = "mlplatform_training_epoch_duration_seconds"
DURATION_SECONDS = "mlplatform_training_duration_seconds"
EPOCHS = "mlplatform_training_epochs_completed"
GATE_PASSED = "mlplatform_training_quality_gate_passed"
LAST_SUCCESS = "mlplatform_training_last_success_timestamp_seconds"
LAST_RUN = "mlplatform_training_last_run_timestamp_seconds"

NAMES = (ACCURACY, LOSS, EPOCH_SECONDS, DURATION_SECONDS, EPOCHS, GATE_PASSED, LAST_SUCCESS, LAST_RUN)


class TrainingMetrics:
    """One registry per run; labels are bounded (model name, arch)."""

    def __init__(self, model: str, arch: str, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.labels = {"model": model, "arch": arch}
        names = list(self.labels)
        self._g = {
            ACCURACY: Gauge(ACCURACY, "Held-out test accuracy of the last run (0..1).", names, registry=self.registry),
            LOSS: Gauge(LOSS, "Held-out test loss of the last run.", names, registry=self.registry),
            EPOCH_SECONDS: Gauge(EPOCH_SECONDS, "Wall time of the last completed epoch.", names, registry=self.registry),
            DURATION_SECONDS: Gauge(DURATION_SECONDS, "Wall time of the last run, data loading to publish.", names, registry=self.registry),
            EPOCHS: Gauge(EPOCHS, "Epochs completed by the last run (resumed epochs included).", names, registry=self.registry),
            GATE_PASSED: Gauge(GATE_PASSED, "1 when the last run passed the quality gate, else 0.", names, registry=self.registry),
            LAST_SUCCESS: Gauge(
                LAST_SUCCESS, "Unix time of the last run that passed the gate and published.", names, registry=self.registry
            ),
            LAST_RUN: Gauge(LAST_RUN, "Unix time the last run finished (pass or fail).", names, registry=self.registry),
        }

    def set(self, name: str, value: float) -> None:
        self._g[name].labels(**self.labels).set(value)

    def push(self, gateway: str | None) -> None:
        """Push to ``gateway`` when configured. A monitoring outage must not fail a training run."""
        if not gateway:
            return
        try:
            push_to_gateway(gateway, job=JOB, grouping_key=self.labels, registry=self.registry, timeout=10)
        except OSError as exc:
            log.warning("could not push metrics to %s: %s", gateway, exc)
