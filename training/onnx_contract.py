"""The training contract for models that publish ONNX (PyTorch, scikit-learn, ...): no TensorFlow.

:class:`OnnxRun` is training/contract.py's ``Run`` with the TensorFlow parts left out (no
``tf.distribute`` strategy: one replica per process) and the publish made for ONNX. Everything
else is the contract's own, not a copy: the environment (``Run.from_env``: the same variables,
``TRAIN_*``, store resolution and its writability check), the exit codes, SIGTERM (``Stop``), the
gate (``Gate``, ``gate_passes``: the threshold, then the champion re-evaluated on the same data),
the metrics pushed to the Pushgateway (training/metrics.py, the same names as the TensorFlow path)
and the chief-only publish through the registry. A scikit-learn model uses it as it is
(models/breast_cancer); PyTorch's run (training/torch_contract.py) adds its devices, DDP and
checkpoints. ::

    run = OnnxRun.from_env("breast-cancer", gate=contract.Gate("test_roc_auc", 0.97))
    ...fit...
    if not run.gate_passes(results, evaluate=onnx_evaluator(score)):  # score(predict) -> results
        return contract.EXIT_GATE
    run.publish_onnx(onnx_bytes, native, held_out, results, files={"model.joblib": ...})

A version published here has ``format: onnx`` in its metadata.json (the server runs it in ONNX
Runtime, serving/runtime_onnx.py), ``model.onnx``, the native model's files, and the export check's
figures (``onnx.max_abs_diff`` on ``onnx.checked_inputs`` held-out inputs, ``onnx.tolerance``).
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from training import contract, onnx_export

log = logging.getLogger("training")
ONNX_FILE = "model.onnx"


def onnx_evaluator(score: Callable[[Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]], Mapping[str, float]]):
    """The gate's ``evaluate`` for a stored ONNX version: ``score(predict)`` computes the held-out
    results given a predict function; the candidate is scored through the same ``score`` (with its
    own ONNX graph or native model), so both figures come from the same data and code."""

    def evaluate(model_dir: Path) -> Mapping[str, float]:
        session = onnx_export._session((model_dir / ONNX_FILE).read_bytes())
        return score(lambda inputs: onnx_export.run_onnx(session, inputs))

    return evaluate


def champion_onnx_signature(root: str, name: str) -> tuple[str, dict] | None:
    """(version, signature) of the champion's model.onnx, checked against its manifest digest; None
    without a champion or when the champion is not ONNX (a SavedModel's signature is another kind)."""
    from training import registry, storage

    doc = registry.get_alias(root, name, "champion")
    if doc is None:
        return None
    version = doc["version"]
    want = registry.read_manifest(root, name, version)["files"].get(ONNX_FILE)
    if want is None:
        return None
    data = storage.read_bytes(storage.join(registry.model_root(root, name), version, ONNX_FILE))
    if hashlib.sha256(data).hexdigest() != want["sha256"]:
        raise registry.VerifyError(f"{name}/{version}", [f"{ONNX_FILE} does not match its manifest digest"])
    return version, onnx_export.signature(data)


class OnnxRun(contract.Run):
    """A run of a model that publishes ONNX: one process is one replica (no TensorFlow strategy)."""

    world_size = 1  # processes in the run (PyTorch's DDP sets it, training/torch_contract.py)

    @property
    def strategy(self):
        return None  # the TensorFlow strategy: none here (contract.Run.strategy would start TensorFlow)

    @property
    def replicas(self) -> int:
        return self.world_size

    def seed_everything(self) -> None:
        random.seed(self.seed)
        np.random.seed(self.seed)

    def check_signature(self, out: Path) -> None:
        """As contract.Run.check_signature, for ONNX: the new graph's inputs and outputs (names,
        element types, ranks; a fixed dimension may become dynamic) against the ONNX champion's,
        the rule the server applies on a hot swap (contract.signature_breaks)."""
        path = out / ONNX_FILE
        champion = champion_onnx_signature(self.output, self.model_name) if path.exists() else None
        if champion is None:
            return
        version, old = champion
        problems = contract.signature_breaks(old, onnx_export.signature(path.read_bytes()))
        if not problems:
            return
        text = f"serving signature breaks champion {version}'s: {'; '.join(problems)}"
        if self.allow_signature_change:
            log.warning("%s (allowed: TRAIN_ALLOW_SIGNATURE_CHANGE)", text)
            return
        from training.metrics import GATE_PASSED

        self.metrics.set(GATE_PASSED, 0)
        self.push()
        raise contract.SignatureBreak(
            f"{text}; nothing published (clients of the champion would break: keep the names, dtypes and shapes, "
            "or set training.allowSignatureChange in the catalogue entry)"
        )

    def publish_onnx(
        self,
        onnx_bytes: bytes,
        native: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]],
        held_out: Mapping[str, np.ndarray],
        results: Mapping[str, float],
        *,
        files: Mapping[str, bytes] | None = None,
        metadata: Mapping[str, Any] | None = None,
        tolerance: float = onnx_export.TOLERANCE,
    ) -> str | None:
        """The chief checks the export against ``native`` on ``held_out`` (onnx_export.check_equal:
        ExportMismatch, nothing published, when it differs by more than ``tolerance``), then
        publishes ``model.onnx``, ``files`` (the native model: its own framework's weights) and the
        metadata with ``format: onnx``. Other workers publish nothing and get None."""
        if not self.is_chief:
            return self.publish(lambda _out: None, results, metadata)
        max_diff = onnx_export.check_equal(onnx_bytes, native, held_out, tolerance)
        n = len(next(iter(held_out.values())))
        log.info(
            "ONNX export matches the native model on %d held-out inputs: max abs difference %.3g (tolerance %g)", n, max_diff, tolerance
        )
        import onnx

        graph = onnx.load_model_from_string(onnx_bytes)

        def write(out: Path) -> None:
            (out / ONNX_FILE).write_bytes(onnx_bytes)
            for rel, data in (files or {}).items():
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                (out / rel).write_bytes(data)

        meta = {
            "format": "onnx",
            "onnx": {
                "opset": max((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), default=None),
                "producer": f"{graph.producer_name} {graph.producer_version}".strip(),
                "max_abs_diff": max_diff,
                "tolerance": tolerance,
                "checked_inputs": n,
            },
            **(metadata or {}),
        }
        return self.publish(write, results, meta)
