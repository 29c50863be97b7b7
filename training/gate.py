"""The gate against the champion (issue 15 item 2): a candidate publishes only if it reaches the
absolute threshold *and* is not worse than the current champion, evaluated on the same data by the
same code, beyond a margin. Re-evaluating the champion (rather than trusting the figure in its
metadata) is what makes the comparison fair when the evaluation data or code changed since.

The margin absorbs noise: at 99 % accuracy on the 10 000 MNIST test images the binomial standard
error is sqrt(0.99 x 0.01 / 10 000) = 0.001, so the default margin (0.002, two standard errors) lets
an equally good model through and stops a real regression. Configure it per model:
``--champion-margin`` / ``TRAIN_CHAMPION_MARGIN``.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from training import registry

log = logging.getLogger(__name__)

DEFAULT_MARGIN = 0.002
MARGIN_ENV = "TRAIN_CHAMPION_MARGIN"

# evaluate(model_dir) -> the model's held-out metrics for the model stored in model_dir
Evaluate = Callable[[Path], Mapping[str, float]]


@dataclass
class Verdict:
    metric: str
    value: float
    threshold: float
    higher_is_better: bool
    margin: float
    champion_version: str | None
    champion_value: float | None
    note: str  # why there is no champion figure, when there is none
    passed: bool
    reason: str

    def metadata(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        """The decision first (``gate PASSED`` / ``gate FAILED (why)``), then the figures it compared."""
        meets = (self.value >= self.threshold) if self.higher_is_better else (self.value <= self.threshold)
        op = (">=" if meets else "<") if self.higher_is_better else ("<=" if meets else ">")
        parts = [f"{self.metric} {self.value:.4f} {op} {self.threshold:.4f} (absolute)"]
        if self.champion_value is not None:
            bound = self.champion_value - self.margin if self.higher_is_better else self.champion_value + self.margin
            sign = "-" if self.higher_is_better else "+"
            parts.append(f"champion {self.champion_version} {self.champion_value:.4f} {sign} margin {self.margin:.4f} = {bound:.4f}")
        else:
            parts.append(f"no champion comparison ({self.note})")
        head = "gate PASSED" if self.passed else f"gate FAILED ({self.reason})"
        return f"{head}: {'; '.join(parts)}"


def judge(
    metric: str,
    value: float,
    threshold: float,
    *,
    higher_is_better: bool = True,
    margin: float = DEFAULT_MARGIN,
    champion_version: str | None = None,
    champion_value: float | None = None,
    note: str = "",
) -> Verdict:
    """The decision alone (no I/O)."""
    if margin < 0:
        raise ValueError(f"champion margin must be >= 0, got {margin}")
    reason = ""
    if (value < threshold) if higher_is_better else (value > threshold):
        reason = f"{metric} {value:.4f} {'<' if higher_is_better else '>'} required {threshold:.4f}"
    elif champion_value is not None:
        worse = champion_value - value if higher_is_better else value - champion_value
        if worse > margin:
            reason = (
                f"{metric} {value:.4f} is {worse:.4f} worse than champion {champion_version} ({champion_value:.4f}), "
                f"more than the margin {margin:.4f}"
            )
    return Verdict(metric, value, threshold, higher_is_better, margin, champion_version, champion_value, note, not reason, reason)


def champion_figure(root: str, name: str, metric: str, evaluate: Evaluate) -> tuple[str | None, float | None, str]:
    """(version, metric value, note) of the current champion, evaluated by ``evaluate`` on a
    verified download. A champion that cannot be evaluated gives no figure and a note: the gate then
    falls back to the absolute threshold, so a broken champion never blocks its replacement."""
    doc = registry.get_alias(root, name, "champion")
    version = doc["version"] if doc else None
    if version is None:
        return None, None, "no champion yet"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            results = evaluate(registry.fetch(root, name, version, Path(tmp)))
        return version, float(results[metric]), ""
    except Exception as exc:  # any failure to load or evaluate the champion: recorded, not fatal
        note = f"champion {version} could not be evaluated: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        log.warning("%s", note)
        return version, None, note


def check(
    metric: str,
    value: float,
    threshold: float,
    *,
    root: str,
    name: str,
    evaluate: Evaluate | None,
    higher_is_better: bool = True,
    margin: float = DEFAULT_MARGIN,
) -> Verdict:
    """Absolute threshold first (no download when it already fails), then the champion."""
    first = judge(metric, value, threshold, higher_is_better=higher_is_better, margin=margin, note="absolute threshold failed")
    if not first.passed:
        return first
    if evaluate is None:
        return judge(metric, value, threshold, higher_is_better=higher_is_better, margin=margin, note="the model's code gives no evaluator")
    version, champ, note = champion_figure(root, name, metric, evaluate)
    return judge(
        metric,
        value,
        threshold,
        higher_is_better=higher_is_better,
        margin=margin,
        champion_version=version,
        champion_value=champ,
        note=note,
    )


def keras_classifier_evaluator(dataset) -> Evaluate:
    """For a Keras classifier trained on one-hot labels: evaluates a stored ``model.keras`` on
    ``dataset`` (the candidate's own evaluation data) as the candidate was evaluated."""

    def evaluate(model_dir: Path) -> dict[str, float]:
        import keras

        stored = keras.models.load_model(model_dir / "model.keras", compile=False)
        stored.compile(loss="categorical_crossentropy", metrics=["accuracy"])
        loss, accuracy = stored.evaluate(dataset, verbose=0)
        return {"test_accuracy": float(accuracy), "test_loss": float(loss)}

    return evaluate
