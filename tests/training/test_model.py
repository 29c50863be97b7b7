"""The strong recipe's learning-rate schedule and the per-arch defaults."""

from __future__ import annotations

import numpy as np
import pytest

from training import model


def test_defaults_cover_every_arch():
    assert set(model.DEFAULT_BATCH_SIZE) == set(model.ARCHS) == set(model.DEFAULT_LEARNING_RATE)


@pytest.mark.parametrize("steps_per_epoch,epochs", [(235, 1), (235, 10), (4, 2)])
def test_strong_schedule_warms_up_then_anneals_to_one_percent(steps_per_epoch, epochs):
    peak = 1.2e-2
    schedule = model.strong_schedule(peak, steps_per_epoch, epochs)
    total = steps_per_epoch * epochs
    lr = np.array([float(schedule(step)) for step in range(total + 1)])
    top = int(lr.argmax())
    assert 1 <= top <= max(1, total // 10)  # a short warm-up, never longer than a tenth of the run
    assert lr[0] < peak / 2 and np.all(np.diff(lr[: top + 1]) > 0)  # rises from (near) zero
    assert lr[top] == pytest.approx(peak)
    assert np.all(np.diff(lr[top:]) <= 1e-12)  # then only decays
    assert lr[-1] == pytest.approx(0.01 * peak, rel=1e-3)  # to 1 % of the peak at the last step


def test_strong_model_compiles_with_the_recipe():
    m = model.build("strong", 160, 2, precision="float32")
    assert float(m.optimizer.learning_rate) == pytest.approx(0.0)  # step 0: the warm-up starts at zero
    m.optimizer.iterations.assign(160 // 16)  # the end of the warm-up
    assert float(m.optimizer.learning_rate) == pytest.approx(model.STRONG_LEARNING_RATE)
    assert m.loss.get_config()["label_smoothing"] == model.STRONG_LABEL_SMOOTHING
    seed = model.build("seed", 160, 2)
    assert float(seed.optimizer.learning_rate) == pytest.approx(1e-3) and seed.loss == "categorical_crossentropy"


def test_steps_per_execution_default_and_override():
    """Several steps per call by default; one under a distribution strategy (Keras' multi-step loop
    fails there, see training/train.py)."""
    assert model.build("seed", 10, 1).steps_per_execution == model.STEPS_PER_EXECUTION > 1
    assert model.build("strong", 10, 1, steps_per_execution=1).steps_per_execution == 1
