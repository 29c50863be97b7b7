"""Breast cancer diagnosis: a scikit-learn Pipeline on the training contract, published as ONNX.

The scikit-learn example (docs/frameworks.md): no TensorFlow and no PyTorch. The data is the
Wisconsin Diagnostic Breast Cancer set (Street, Wolberg and Mangasarian 1993: 569 fine-needle
aspirates, 30 measurements of the cell nuclei each, malignant or benign) as scikit-learn ships it
inside its wheel, so it trains offline. The model is ``StandardScaler -> LogisticRegression``,
exported with skl2onnx and served by ONNX Runtime::

    {"instances": [{"features": [17.99, 10.38, 122.8, 1001.0, 0.1184, ...30 values...]}]}

- input ``features``: float32 (n, 30), in the data set's units and column order (``COLUMNS``);
- outputs ``label``: int64 (n,), 0 malignant / 1 benign (the data set's coding), and
  ``probabilities``: float32 (n, 2), P(malignant), P(benign).

Gate: ROC AUC on the held-out quarter (``test_roc_auc``, default >= 0.97, ``TRAIN_GATE_MIN``), then
the serving champion on the same patients. AUC, not accuracy: it judges the ranking of the scores
whatever the decision threshold a clinic picks, and the classes are unbalanced (212 / 357), so a
model always answering "benign" has accuracy 0.63 but AUC 0.5. This pipeline reaches about 0.995;
0.97 leaves room for the split's noise (143 patients) and refuses a broken model. Accuracy and log
loss are recorded too (the platform's accuracy and loss metrics).

Published: ``model.onnx`` (checked against the Pipeline on the held-out patients: the labels
exactly, the probabilities within 1e-4), ``model.joblib`` (the fitted Pipeline, a pickle: load it
only from a store you trust; the registry verifies its digest) and metadata.json with ``format: onnx``.

Run it: ``python models/breast_cancer/train.py --store file://./artifacts`` (``--help`` lists the
flags), or ``TRAIN_ENTRYPOINT=models/breast_cancer/train.py python -m training`` as the TrainingJob
does. Its own hyperparameters (``TRAIN_PARAMS``): ``--c`` (inverse regularisation strength) and
``--test-fraction``; ``--data`` may name a CSV with the header ``COLUMNS`` + ``target``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

# Run as a script, the platform library is not on the path yet: the project root in a checkout, /app in the image.
for _root in (Path(__file__).resolve().parents[2], Path("/app")):
    if (_root / "training" / "contract.py").is_file() and str(_root) not in sys.path:
        sys.path.insert(0, str(_root))
        break

from training import contract, onnx_contract, onnx_export, storage  # noqa: E402

NAME = "breast-cancer"
# The champion is re-scored on the same patients: AUC moves by about 0.002-0.005 between fits.
GATE = contract.Gate("test_roc_auc", 0.97, label="test ROC AUC", champion_margin=0.005)
SPLIT_SEED = 0  # the held-out patients stay the same across runs: comparable gates
INPUT = "features"
log = logging.getLogger("training")


def columns() -> tuple[str, ...]:
    from sklearn.datasets import load_breast_cancer

    return tuple(n.replace(" ", "_") for n in load_breast_cancer().feature_names)


class DataError(ValueError):
    """The data is not the breast-cancer table; the message says what is wrong."""


def load(uri: str | None) -> tuple[np.ndarray, np.ndarray, str, str]:
    """(features float32 (n, 30), labels int64 (n,), source, sha256)."""
    names = columns()
    if uri is None:
        import sklearn
        from sklearn.datasets import load_breast_cancer

        x, y = load_breast_cancer(return_X_y=True)  # the CSV inside scikit-learn's wheel, no download
        table, source = np.column_stack([x, y]), f"scikit-learn {sklearn.__version__} load_breast_cancer()"
    else:
        try:
            raw = storage.read_bytes(uri)
        except FileNotFoundError:
            raise DataError(f"{uri}: no such file") from None
        header = raw.split(b"\n", 1)[0].decode(errors="replace").strip()
        if header != ",".join((*names, "target")):
            raise DataError(f"{uri}: header must be the {len(names)} columns {names[0]},...,{names[-1]} then target, got {header[:120]!r}")
        try:
            table = np.loadtxt(io.BytesIO(raw), delimiter=",", skiprows=1, ndmin=2)
        except ValueError as exc:
            raise DataError(f"{uri}: not a numeric CSV ({exc})") from None
        source = uri
    if len(table) < 40 or not np.isfinite(table).all() or not np.isin(table[:, -1], (0, 1)).all():
        raise DataError(f"{source}: need >= 40 rows of finite values and a 0/1 target")
    digest = hashlib.sha256(np.ascontiguousarray(table).tobytes()).hexdigest()
    return table[:, :-1].astype(np.float32), table[:, -1].astype(np.int64), source, digest


def split(y: np.ndarray, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows), stratified by class, the same on every run."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(y))
    train, test = train_test_split(rows, test_size=test_fraction, random_state=SPLIT_SEED, stratify=y)
    return np.sort(train), np.sort(test)


def score(predict, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Held-out metrics of ``predict`` ({"features": x} -> {"label", "probabilities"})."""
    from sklearn.metrics import log_loss, roc_auc_score

    out = predict({INPUT: x})
    p = np.clip(np.asarray(out["probabilities"], dtype=np.float64), 1e-12, 1.0)
    p /= p.sum(axis=1, keepdims=True)  # float32 probabilities sum to 1 only within round-off
    return {
        "test_roc_auc": float(roc_auc_score(y, p[:, 1])),
        "test_accuracy": float((np.asarray(out["label"]) == y).mean()),
        "test_loss": float(log_loss(y, p, labels=[0, 1])),
    }


def _params(run: contract.Run) -> tuple[float, float]:
    c, test_fraction = float(run.params.get("c", 1.0)), float(run.params.get("test_fraction", 0.25))
    if c <= 0 or not 0 < test_fraction < 1:
        raise contract.ContractError(f"TRAIN_PARAMS: c must be > 0 and test_fraction in (0, 1), got {c}, {test_fraction}")
    return c, test_fraction


FLAGS = {
    "--data": ("TRAIN_DATA", str, "a CSV with the 30 feature columns then target (path, file:// or s3://); unset: scikit-learn's copy"),
    "--min-roc-auc": ("TRAIN_GATE_MIN", float, f"quality gate: minimum held-out ROC AUC to publish (default {GATE.threshold})"),
    "--champion-margin": (
        "TRAIN_CHAMPION_MARGIN",
        float,
        f"how far below the champion's AUC a candidate may be (default {GATE.champion_margin})",
    ),
    "--publish-as": ("TRAIN_PUBLISH_AS", str, "candidate (a canary decides) or champion (serves at once; default)"),
    "--seed": ("TRAIN_SEED", int, "random seed (default 42)"),
    "--model-name": ("TRAIN_MODEL_NAME", str, f"the model's name in the store (default {NAME})"),
    "--run-id": ("TRAIN_RUN_ID", str, "names the version (default: the Job's name or a random id)"),
    "--pushgateway": ("TRAIN_PUSHGATEWAY", str, "Prometheus Pushgateway host:port for the run's metrics"),
}
PARAMS = {
    "--c": (float, "inverse L2 regularisation strength (default 1.0)"),
    "--test-fraction": (float, "share of patients held out (default 0.25)"),
}


def environment(argv: list[str] | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The contract's environment with the flags in ``argv`` applied (argparse exits 2 on a bad one).
    One fit of seconds: no epochs, batches or checkpoints to set."""
    import argparse

    p = argparse.ArgumentParser(
        prog="python models/breast_cancer/train.py",
        description=(__doc__ or "").split("\n\n")[0],
        epilog="Every flag can be set by its environment variable instead (the Kubernetes Job does); exit codes: 0 published, "
        "2 bad arguments or data, 3 quality gate failed or ONNX export mismatch, 143 SIGTERM (nothing published).",
    )
    p.add_argument(
        "--store", "--output", dest="store", help="artifact store root (path, file:// or s3://) [env MLPLATFORM_STORE, TRAIN_OUTPUT]"
    )
    for flag, (var, kind, text) in FLAGS.items():
        p.add_argument(flag, type=kind, help=f"{text} [env {var}]")
    for flag, (kind, text) in PARAMS.items():
        p.add_argument(flag, type=kind, help=f"{text} [env TRAIN_PARAMS: a JSON object]")
    p.add_argument(
        "--allow-signature-change", action="store_true", default=None, help="publish even when the serving signature breaks the champion's"
    )
    args = p.parse_args(argv)
    env = dict(os.environ if base is None else base)
    if args.store:
        env["MLPLATFORM_STORE"] = args.store
    for flag, (var, _, _) in FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            env[var] = str(value)
    params = {k[2:].replace("-", "_"): getattr(args, k[2:].replace("-", "_")) for k in PARAMS}
    if any(v is not None for v in params.values()):
        try:
            merged = json.loads(env.get("TRAIN_PARAMS") or "{}")
        except json.JSONDecodeError:
            merged = {}  # the contract names the malformed variable when a flag does not replace it
        env["TRAIN_PARAMS"] = json.dumps({**merged, **{k: v for k, v in params.items() if v is not None}})
    if args.allow_signature_change:
        env["TRAIN_ALLOW_SIGNATURE_CHANGE"] = "1"
    return env


def fit(run: onnx_contract.OnnxRun, x: np.ndarray, y: np.ndarray, c: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from training.metrics import EPOCH_SECONDS, EPOCHS

    # The scaler's statistics are the training split's and live in the Pipeline: clients send raw units.
    pipeline = Pipeline([("scale", StandardScaler()), ("classify", LogisticRegression(C=c, max_iter=5000, random_state=run.seed))])
    start = time.perf_counter()
    pipeline.fit(x, y)
    seconds = time.perf_counter() - start
    print(f"fit 1/1 {seconds:.2f}s: StandardScaler -> LogisticRegression(C={c}) on {len(y)} patients", flush=True)
    run.metrics.set(EPOCH_SECONDS, seconds)
    run.metrics.set(EPOCHS, 1)
    run.push()
    return pipeline


def train(run: onnx_contract.OnnxRun, x: np.ndarray, y: np.ndarray, source: str, digest: str, c: float, test_fraction: float) -> int:
    import joblib
    import sklearn

    tr, te = split(y, test_fraction)
    log.info("data: %s, %d train / %d test patients (sha256 %s)", source, len(tr), len(te), digest[:12])
    pipeline = fit(run, x[tr], y[tr], c)
    if contract.Stop.requested:
        log.warning("stopped by SIGTERM: nothing published (a restart fits again, in seconds)")
        return contract.EXIT_PREEMPTED
    native = onnx_export.sklearn_native(pipeline)
    results = score(native, x[te], y[te])
    log.info(
        "held out: ROC AUC %.4f, accuracy %.4f, log loss %.4f", results["test_roc_auc"], results["test_accuracy"], results["test_loss"]
    )
    if not run.gate_passes(results, evaluate=onnx_contract.onnx_evaluator(lambda predict: score(predict, x[te], y[te]))):
        return contract.EXIT_GATE
    buf = io.BytesIO()
    joblib.dump(pipeline, buf)
    run.publish_onnx(
        onnx_export.export_sklearn(pipeline, {INPUT: x[tr][:2]}),
        native,
        {INPUT: x[te]},
        results,
        files={"model.joblib": buf.getvalue()},
        metadata={
            "native": {"framework": "scikit-learn", "scikit-learn": sklearn.__version__, "file": "model.joblib"},
            "data": {"uri": source, "sha256": digest, "train": len(tr), "test": len(te), "split_seed": SPLIT_SEED},
            "inputs": {INPUT: {"dtype": "float32", "shape": [None, x.shape[1]], "columns": list(columns())}},
            "outputs": {
                "label": {"dtype": "int64", "shape": [None], "values": {"0": "malignant", "1": "benign"}},
                "probabilities": {"dtype": "float32", "shape": [None, 2], "columns": ["malignant", "benign"]},
            },
        },
    )
    return contract.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    env = environment(argv)  # --help and bad flags exit here, before scikit-learn loads
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    try:
        run = onnx_contract.OnnxRun.from_env(NAME, gate=GATE, epochs=1, env=env)
        c, test_fraction = _params(run)
        x, y, source, digest = load(run.data)
    except (contract.ContractError, DataError, ValueError) as exc:
        print(str(exc), file=sys.stderr)
        return contract.EXIT_USAGE
    contract.Stop.install()
    run.seed_everything()
    try:
        return train(run, x, y, source, digest, c, test_fraction)
    except (onnx_export.ExportMismatch, contract.SignatureBreak) as exc:
        print(str(exc), file=sys.stderr)
        return contract.EXIT_GATE


if __name__ == "__main__":
    sys.exit(main())
