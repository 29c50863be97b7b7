"""Training feedback a person can follow: where the run is, how long it still takes, how it does.

On a terminal, one line redrawn in place while an epoch runs (a bar, steps, running loss and
metrics, the epoch's ETA), then one line per finished epoch. Anywhere else (CI logs, a pod's log,
a pipe) only the per-epoch lines: a redrawn line is noise in a log file. Each epoch line carries
the epoch's time, its training and validation metrics (``val_*``, when the code passes
validation data) and the ETA of the whole run (the mean epoch time x the epochs left).

Pure Python (no TensorFlow): the Keras callback in training/contract.py feeds it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import TextIO

BAR = 24
REDRAW_S = 0.2  # a terminal redraw at most this often: a fast step loop must not spend its time printing


def duration(seconds: float) -> str:
    """``1:02:03`` / ``2:03`` (h:mm:ss, m:ss)."""
    s = max(0, round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def metrics_text(logs: Mapping[str, float] | None) -> str:
    """``loss 0.1234 accuracy 0.9612 val_loss ...``: training metrics first, then validation ones."""
    out = []
    for k, v in sorted((logs or {}).items(), key=lambda kv: (kv[0].startswith("val_"), kv[0])):
        try:
            out.append(f"{k} {float(v):.4f}")
        except (TypeError, ValueError):  # a non-scalar log entry: not a metric to show
            continue
    return " ".join(out)


class Progress:
    """Feed it ``begin_epoch``, ``step`` and ``end_epoch``; it prints to ``stream``."""

    def __init__(self, epochs: int, initial_epoch: int = 0, stream: TextIO | None = None, tty: bool | None = None, clock=time.monotonic):
        self.epochs, self.stream, self.clock = epochs, stream or sys.stdout, clock
        self.tty = self.stream.isatty() if tty is None else tty
        self.first = initial_epoch  # epochs done before this process (a resumed run)
        self.epoch_seconds: list[float] = []
        self.epoch, self.steps, self.start, self.last_draw = initial_epoch, None, 0.0, 0.0

    def begin_epoch(self, epoch: int, steps: int | None) -> None:
        self.epoch, self.steps, self.start, self.last_draw = epoch, steps, self.clock(), 0.0

    def step(self, done: int, logs: Mapping[str, float] | None = None) -> None:
        """``done`` steps of this epoch finished; a terminal redraws its line (throttled)."""
        if not self.tty:
            return
        if self.steps:
            done = min(done, self.steps)  # several steps per call: Keras reports the call's last step, past the end in the last call
        now = self.clock()
        if now - self.last_draw < REDRAW_S and (self.steps is None or done < self.steps):
            return
        self.last_draw = now
        elapsed = now - self.start
        if self.steps:
            frac = min(1.0, done / self.steps)
            filled = int(frac * BAR)
            bar = "[" + "=" * filled + (">" if filled < BAR else "") + " " * (BAR - filled - 1) + "]"
            eta = f"ETA {duration(elapsed / done * (self.steps - done))}" if done else "ETA -"
            where = f"{bar} {done}/{self.steps}"
        else:
            where, eta = f"{done} steps", f"{duration(elapsed)} elapsed"
        line = f"epoch {self.epoch + 1}/{self.epochs} {where} {metrics_text(logs)} {eta}"
        self.stream.write("\r" + line + "\033[K")
        self.stream.flush()

    def end_epoch(self, logs: Mapping[str, float] | None = None) -> str:
        """Print (and return) the finished epoch's line."""
        seconds = self.clock() - self.start
        self.epoch_seconds.append(seconds)
        left = self.epochs - (self.epoch + 1)
        mean = sum(self.epoch_seconds) / len(self.epoch_seconds)
        tail = f"run ETA {duration(mean * left)}" if left > 0 else "training done"
        took = f"{seconds:.1f}s" if seconds < 60 else duration(seconds)
        line = f"epoch {self.epoch + 1}/{self.epochs} {took} {metrics_text(logs)} | {tail}"
        self.stream.write(("\r\033[K" if self.tty else "") + line + "\n")
        self.stream.flush()
        return line
