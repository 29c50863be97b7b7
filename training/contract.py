"""The training contract: what the platform gives a model's training code at run time.

A model's training folder holds its code (an entrypoint script or module) and, optionally, a
Dockerfile. The TrainingJob runs ``python -m training`` which runs ``TRAIN_ENTRYPOINT``; the code
reads its run from the environment through this library and hands its result back to it::

    from training import contract

    run = contract.Run.from_env("diabetes", gate=contract.Gate("test_r2", 0.40, label="test R^2"))
    with run.strategy.scope():                        # all local devices, and all workers
        model, state = run.restore(build_model)       # resumes from the last complete epoch
                                                      # (compile with run.steps_per_execution)
    stopped = run.train(model, data.batch(run.global_batch_size), state)  # epochs, callbacks, sharding
    if stopped is not None:
        return stopped                                # 143 SIGTERM / 75 peer lost: resumes on restart
    results = {"test_r2": r2}                         # held-out metrics, the gate's among them
    if not run.gate_passes(results, evaluate=score_stored_model):  # threshold, then the champion
        return contract.EXIT_GATE                     # nothing published, exit 3 fails the Job at once
    run.publish(write_files, results, metadata={...}) # the chief alone: write_files(dir) writes
                                                      # saved_model/ + model.keras; the gate's verdict
                                                      # goes into metadata.json; the pipeline adopts it

models/diabetes/train.py is the complete example.

Environment (the platform sets these; a local run may set any of them by hand):

==========================  ================================================================
``TRAIN_DATA``              data location (path, file:// or s3://); its format is the model's
``MLPLATFORM_STORE``        model store root: versions go to <store>/models/<name>/<version>/
                            (``TRAIN_OUTPUT``, then ``MLPLATFORM_MODEL_STORE``, when it is unset)
``TRAIN_CHECKPOINT_DIR``    per-run checkpoint directory (path or s3://); a restart resumes
``JOB_UID``                 the Job's UID: a platform Job's checkpoint directory must end with it
``TRAIN_MODEL_NAME``        the model's name in the store (default: the code's own)
``TRAIN_EPOCHS``            hyperparameters common to all models ...
``TRAIN_BATCH_SIZE``        ... per device: the global batch is this x replicas
``TRAIN_LEARNING_RATE``     ... the peak at one replica, scaled by sqrt(replicas)
``TRAIN_SEED``              ... same seed + data + code -> same model (single device)
``TRAIN_PARAMS``            a JSON object of the model's own hyperparameters
``TRAIN_GATE_MIN``          the quality gate: minimum of the model's gate metric
``TRAIN_CHAMPION_MARGIN``   ... and how much worse than the serving champion it may be (default 0.002)
``TRAIN_PUBLISH_AS``        ``candidate``: the version only; the pipeline adopts it (every platform
                            Job and CronJob) - or ``champion`` (default): it serves at once (local)
``TRAIN_PUSHGATEWAY``       Prometheus Pushgateway host:port for the run's metrics
``TRAIN_RUN_ID``/``JOB_NAME``  names the version (default: the Job's name, else random)
``TRAIN_WORKERS`` ...       multi-worker runs: see training/cluster.py
``TRAIN_CPU_DEVICES``       split the CPU into N logical devices (tests, CPU-only data parallel)
==========================  ================================================================

Exit codes: 0 published (or gate passed on a non-chief worker); 2 bad data or arguments; 3 quality
gate failed; 75 a peer worker was lost (multi-worker; retry: the run resumes from the last
checkpoint); 143 stopped by SIGTERM (resumable from the checkpoint).
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training import cluster as clusters
from training.env import env_float, env_int
from training.progress import Progress

EXIT_OK, EXIT_USAGE, EXIT_GATE, EXIT_PREEMPTED = 0, 2, 3, 143
# A multi-worker run lost a peer (its collectives abort): retry; every worker resumes from the
# last complete checkpoint. EX_TEMPFAIL from sysexits.h.
EXIT_PEER_LOST = 75
# Optimizer steps per compiled call on one device (measured for MNIST: -13 % epoch time on 2 cores).
STEPS_PER_EXECUTION = 8
log = logging.getLogger("training")


class ContractError(ValueError):
    """A contract variable is malformed; the message names it."""


class SignatureBreak(ContractError):
    """The new version's serving signature breaks the champion's: not published (the message says how)."""


@dataclass
class RunState:
    """What a checkpoint records next to the model file."""

    epoch: int = 0  # epochs completed
    history: dict[str, list[float]] = field(default_factory=dict)
    checkpoint: str = ""


class Stop:
    """SIGTERM (spot reclaim, node drain, preemption) asks training to stop at the next batch boundary."""

    requested = False

    @classmethod
    def install(cls) -> None:
        def handler(signum, _frame):
            log.warning("received signal %s: stopping after the current batch (the last complete epoch is checkpointed)", signum)
            cls.requested = True

        signal.signal(signal.SIGTERM, handler)


class Checkpoint:
    """``epoch-NNNN.keras`` (weights + optimizer state) then ``state.json`` naming it: the state file
    is written last, so it always names a complete model file. In a multi-worker run every worker
    reads it and only the chief writes it (the variables are mirrored: the chief's copy is everyone's)."""

    def __init__(self, uri: str, writer: bool = True):
        self.uri = uri
        self.writer = writer

    def state(self) -> RunState | None:
        from training import storage

        try:
            return RunState(**json.loads(storage.read_text(storage.join(self.uri, "state.json"))))
        except FileNotFoundError:
            return None

    def load(self):
        import keras

        from training import storage

        state = self.state()
        if state is None:
            return None, RunState()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.keras"
            path.write_bytes(storage.read_bytes(storage.join(self.uri, state.checkpoint)))
            model = keras.models.load_model(path)
        return model, state

    def save(self, model, state: RunState) -> None:
        from training import storage

        name = f"epoch-{state.epoch:04d}.keras"
        state.checkpoint = name
        if not self.writer:
            return
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            model.save(path)
            storage.write_bytes(storage.join(self.uri, name), path.read_bytes())
        storage.write_bytes(storage.join(self.uri, "state.json"), json.dumps(state.__dict__).encode())
        log.info("checkpoint: epoch %d -> %s", state.epoch, storage.join(self.uri, name))


@dataclass(frozen=True)
class Gate:
    """The model's quality gate: its metric, and the threshold a run must reach to publish."""

    metric: str  # a key of the metrics the code hands to Run.gate_passes
    threshold: float
    higher_is_better: bool = True
    label: str = ""  # how the failure message names the metric (default: the key)
    champion_margin: float = 0.002  # how much worse than the champion a candidate may be (training/gate.py)

    def passes(self, value: float) -> bool:
        return value >= self.threshold if self.higher_is_better else value <= self.threshold

    def failure(self, value: float) -> str:
        op = "<" if self.higher_is_better else ">"
        word = "required" if self.higher_is_better else "allowed"
        return f"quality gate failed: {self.label or self.metric} {value:.4f} {op} {word} {self.threshold:.4f}; nothing published"


def scaled(batch_size: int, learning_rate: float, replicas: int) -> tuple[int, float]:
    """Data-parallel recipe: each replica keeps the batch the recipe was tuned at (global batch =
    batch x replicas) and the peak learning rate grows with the square root of the replica count,
    the rule for Adam-family optimizers (Malladi et al., "On the SDEs and Scaling Rules for Adaptive
    Gradient Algorithms", NeurIPS 2022); the recipes' warm-up absorbs the larger early steps."""
    return batch_size * replicas, learning_rate * math.sqrt(replicas)


def _publish_champion(value: str) -> bool:
    if value not in ("candidate", "champion"):
        raise ContractError(f"TRAIN_PUBLISH_AS must be 'candidate' or 'champion', got {value!r}")
    return value == "champion"


# The store, by name, first set wins: the platform-wide name (the `mlp` CLI, a user's shell), then
# the names read before it (the Kubernetes Job sets TRAIN_OUTPUT; the registry tools read the last).
STORE_ENV = ("MLPLATFORM_STORE", "TRAIN_OUTPUT", "MLPLATFORM_MODEL_STORE")
DEFAULT_STORE = "file://./artifacts"


def default_store(env: Mapping[str, str] | None = None) -> str:
    """The store a run publishes to when no flag names one (see STORE_ENV)."""
    env = os.environ if env is None else env
    return next((env[name] for name in STORE_ENV if env.get(name)), DEFAULT_STORE)


def _store(env: Mapping[str, str]) -> str:
    """The store (MLPLATFORM_STORE, else TRAIN_OUTPUT, else MLPLATFORM_MODEL_STORE), refused before
    any training when it is malformed or, local, not writable: a run must not train for minutes to
    fail at publish."""
    from training import storage

    uri = default_store(env)
    try:
        storage.check_writable(uri)
    except storage.BadURI as exc:
        raise ContractError(f"store: {exc}") from None
    return uri


def checked_checkpoint_dir(uri: str | None, job_uid: str | None) -> str | None:
    """``uri`` (TRAIN_CHECKPOINT_DIR), checked. A platform Job keys it by its UID (``job_uid``, JOB_UID:
    components/models/training_job.py), which no earlier run can guess, unlike a CronJob's next Job
    name: a run that could write a checkpoint where a later run looks would choose the weights it
    resumes from. A Job whose UID is empty (its pod lacks the label) or not the directory's last part
    is refused (ContractError); a local run (no JOB_UID) names its directory as it likes."""
    if not uri or job_uid is None:
        return uri or None
    uid = job_uid.strip()
    if not uid or uri.rstrip("/").rsplit("/", 1)[-1] != uid:
        raise ContractError(
            f"TRAIN_CHECKPOINT_DIR {uri!r} is not keyed by this Job's UID ({uid or 'empty: the pod has no controller-uid label'}): "
            "refusing a checkpoint another run could have written"
        )
    return uri


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = (env.get(name) or "0").strip().lower()
    if value not in ("0", "1", "true", "false"):
        raise ContractError(f"{name} must be 1 or 0 (true or false), got {value!r}")
    return value in ("1", "true")


# ---- the serving signature: stable across versions ----


class SignatureUnreadable(ValueError):
    """A saved_model.pb that does not parse as a SavedModel."""


def serving_signatures(saved_model_pb: bytes) -> dict[str, dict[str, dict[str, tuple]]]:
    """{signature: {"inputs"|"outputs": {name: (dtype, shape)}}} of a SavedModel, read from its
    saved_model.pb alone (no weights loaded). A shape is a tuple with None for any size, or None for
    an unknown rank. These names, dtypes and shapes are what the model server's clients send and get."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    try:
        sm.ParseFromString(saved_model_pb)
    except DecodeError as exc:
        raise SignatureUnreadable(f"saved_model.pb is not a SavedModel ({exc})") from exc

    def tensors(m) -> dict[str, tuple]:
        return {
            k: (
                tf.dtypes.as_dtype(t.dtype).name,
                None if t.tensor_shape.unknown_rank else tuple(None if d.size < 0 else d.size for d in t.tensor_shape.dim),
            )
            for k, t in m.items()
        }

    graph = sm.meta_graphs[0]
    return {
        name: {"inputs": tensors(sig.inputs), "outputs": tensors(sig.outputs)}
        for name, sig in graph.signature_def.items()
        if not name.startswith("__")  # __saved_model_init_op: TF's own, no client calls it
    }


def signature_breaks(old: dict, new: dict) -> list[str]:
    """Why clients of ``old`` would break on ``new``; the model server's rule (serving/codec.py
    incompatibilities): same signatures, input and output names, dtypes and ranks; a fixed
    dimension may become any size, never another size."""
    problems = []
    for name, sig in sorted(old.items()):
        if name not in new:
            problems.append(f"signature {name!r} is gone")
            continue
        for kind in ("inputs", "outputs"):
            a, b = sig[kind], new[name][kind]
            if set(a) != set(b):
                problems.append(f"{name}: {kind} {sorted(a)} became {sorted(b)}")
                continue
            for t, (dtype, shape) in sorted(a.items()):
                ndtype, nshape = b[t]
                if ndtype != dtype:
                    problems.append(f"{name}: {kind[:-1]} {t!r} dtype {dtype} became {ndtype}")
                elif _shape_breaks(shape, nshape):
                    problems.append(f"{name}: {kind[:-1]} {t!r} shape {list(shape or [])} became {list(nshape or [])}")
    return problems


def _shape_breaks(old: tuple | None, new: tuple | None) -> bool:
    if old is None or new is None:
        return old != new
    return len(old) != len(new) or any(n is not None and n != o for o, n in zip(old, new, strict=True))


def champion_signatures(root: str, name: str) -> tuple[str, dict] | None:
    """(version, serving signatures) of the champion in ``root``, its saved_model.pb checked against
    its manifest digest; None when there is no champion or it has no SavedModel."""
    import hashlib

    from training import registry, storage

    doc = registry.get_alias(root, name, "champion")
    if doc is None:
        return None
    version = doc["version"]
    want = registry.read_manifest(root, name, version)["files"].get("saved_model/saved_model.pb")
    if want is None:
        return None
    data = storage.read_bytes(storage.join(registry.model_root(root, name), version, "saved_model/saved_model.pb"))
    if hashlib.sha256(data).hexdigest() != want["sha256"]:
        raise registry.VerifyError(f"{name}/{version}", ["saved_model/saved_model.pb does not match its manifest digest"])
    return version, serving_signatures(data)


def configure_devices(cpu_devices: int | None) -> None:
    """Split the CPU into ``cpu_devices`` logical devices (before TensorFlow starts its runtime), so
    the multi-device path runs for real on a machine without accelerators."""
    if not cpu_devices or cpu_devices < 2:
        return
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_devices)


def make_strategy(cluster: clusters.Cluster, cpu_devices: int | None = None):
    """MultiWorkerMirroredStrategy across workers (each with all its local GPUs); MirroredStrategy
    over every local GPU (or logical CPU) when there are several; else the default strategy."""
    import tensorflow as tf

    clusters.export(cluster)
    if cluster.tf_config is not None:
        return tf.distribute.MultiWorkerMirroredStrategy()
    configure_devices(cpu_devices)
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([d.name for d in gpus])
    cpus = tf.config.list_logical_devices("CPU")
    if not gpus and len(cpus) > 1:
        return tf.distribute.MirroredStrategy([d.name for d in cpus])
    return tf.distribute.get_strategy()


def keras_multi_worker_fit(model, strategy) -> None:
    """Make ``model.fit``/``evaluate`` work under MultiWorkerMirroredStrategy with Keras 3.

    Two bugs of Keras 3 (3.15, TF backend) in its multi-worker path (keras-team/keras#20585,
    tensorflow/tensorflow#72388: "Does Keras 3 work with MultiWorkerMirroredStrategy?"), both only
    hit when the strategy spans workers:

    - the symbolic build takes the first batch with ``strategy.reduce("MEAN", batch)``, which
      cannot reduce a PerReplica of images ("Attempt to convert a value (PerReplica...)"); the
      build only needs the batch's structure and shapes, which this worker's replica has;
    - each step's logs (scalar loss and metrics) are reduced with ``axis=0`` ("Invalid reduction
      dimension 0 for input with 0 dimensions"); scalars need ``axis=None``.

    The multi-worker tests (tests/training/test_distributed.py) run this for real, so a Keras
    upgrade that changes these internals fails there, not in a cluster."""
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    def local(x):
        return strategy.experimental_local_results(x)[0] if isinstance(x, tf.distribute.DistributedValues) else x

    def symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tree.map_structure(local, next(it))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = symbolic_build
    original = getattr(tf_trainer.reduce_per_replica, "__wrapped__", tf_trainer.reduce_per_replica)

    def reduce_per_replica(values, strat, reduction):
        if reduction not in ("auto", "mean") or not tf_trainer._collective_all_reduce_multi_worker(strat):
            return original(values, strat, reduction)

        def mean(v):
            rank = local(v).shape.rank
            return strat.reduce("MEAN", v, axis=0 if rank else None)

        return tree.map_structure(mean, values)

    reduce_per_replica.__wrapped__ = original
    tf_trainer.reduce_per_replica = reduce_per_replica


def _feedback(progress):
    """A Keras callback feeding ``progress`` (training/progress.py: a bar with ETA on a terminal,
    one line per epoch with its training and validation metrics everywhere)."""
    import keras

    class Feedback(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            progress.begin_epoch(epoch, (self.params or {}).get("steps"))

        def on_train_batch_end(self, batch, logs=None):
            progress.step(batch + 1, logs)

        def on_epoch_end(self, epoch, logs=None):
            if not Stop.requested:
                progress.end_epoch(logs)

    return Feedback()


def peer_lost(exc: BaseException) -> bool:
    """A collective failed because another worker went away (killed, evicted, OOM)."""
    import tensorflow as tf

    return isinstance(exc, (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError, tf.errors.DeadlineExceededError))


class Run:
    """One training run: its configuration and the platform's services (devices, checkpoints, gate,
    metrics, publish). Build it with :meth:`from_env` (user code) or directly (the MNIST CLI)."""

    def __init__(
        self,
        model_name: str,
        *,
        gate: Gate,
        output: str,
        data: str | None = None,
        checkpoint_dir: str | None = None,
        pushgateway: str | None = None,
        run_id: str | None = None,
        epochs: int = 10,
        batch_size: int = 32,
        learning_rate: float = 1e-3,
        seed: int = 42,
        params: dict[str, Any] | None = None,
        variant: str = "default",
        cluster: clusters.Cluster | None = None,
        cpu_devices: int | None = None,
        publish_champion: bool = True,
        allow_signature_change: bool = False,
    ):
        self.started = time.time()
        # False: a version whose serving signature breaks the champion's is not published (SignatureBreak).
        self.allow_signature_change = allow_signature_change
        # False: publish as candidate only; the champion moves through a canary (ops/deliver.py).
        self.publish_champion = publish_champion
        self.model_name = model_name
        self.gate = gate
        self.output = output
        self.data = data
        self.pushgateway = pushgateway
        self.run_id = run_id or os.environ.get("JOB_NAME") or uuid.uuid4().hex
        self.epochs = epochs
        self.batch_size = batch_size  # per replica
        self.base_learning_rate = learning_rate  # at one replica
        self.seed = seed
        self.params = dict(params or {})
        self.variant = variant
        self.cluster = cluster or clusters.from_env()
        self.cpu_devices = cpu_devices
        self._strategy = None
        checkpoint_dir = checked_checkpoint_dir(checkpoint_dir, os.environ.get("JOB_UID"))
        self.checkpoint = Checkpoint(checkpoint_dir, writer=self.cluster.is_chief) if checkpoint_dir else None
        self.verdict = None  # the gate's decision (training/gate.py), once gate_passes ran
        from training.metrics import TrainingMetrics, WorkerMetrics

        self.metrics = TrainingMetrics(model_name, variant)
        self.worker_metrics = WorkerMetrics(model_name, self.cluster.index)

    @classmethod
    def from_env(
        cls,
        model_name: str,
        *,
        gate: Gate,
        epochs: int = 10,
        batch_size: int = 32,
        learning_rate: float = 1e-3,
        env: Mapping[str, str] | None = None,
        **kw,
    ) -> Run:
        """The run the platform described in the environment; the arguments are the code's defaults."""
        env = os.environ if env is None else env
        raw_params = env.get("TRAIN_PARAMS", "") or "{}"
        try:
            params = json.loads(raw_params)
        except json.JSONDecodeError as exc:
            raise ContractError(f"TRAIN_PARAMS must be a JSON object: {exc}") from None
        if not isinstance(params, dict):
            raise ContractError(f"TRAIN_PARAMS must be a JSON object, got {type(params).__name__}")
        threshold = env_float(env, "TRAIN_GATE_MIN", gate.threshold, ContractError)
        values = {
            "epochs": env_int(env, "TRAIN_EPOCHS", epochs, ContractError),
            "batch_size": env_int(env, "TRAIN_BATCH_SIZE", batch_size, ContractError),
            "learning_rate": env_float(env, "TRAIN_LEARNING_RATE", learning_rate, ContractError),
        }
        for name, value in values.items():
            if value <= 0:
                raise ContractError(f"TRAIN_{name.upper()} must be > 0, got {value}")
        return cls(
            env.get("TRAIN_MODEL_NAME") or model_name,
            gate=Gate(
                gate.metric,
                threshold,
                gate.higher_is_better,
                gate.label,
                env_float(env, "TRAIN_CHAMPION_MARGIN", gate.champion_margin, ContractError),
            ),
            output=_store(env),
            data=env.get("TRAIN_DATA") or None,
            checkpoint_dir=checked_checkpoint_dir(env.get("TRAIN_CHECKPOINT_DIR"), env.get("JOB_UID")),
            pushgateway=env.get("TRAIN_PUSHGATEWAY") or None,
            run_id=env.get("TRAIN_RUN_ID") or env.get("JOB_NAME") or None,
            seed=env_int(env, "TRAIN_SEED", 42, ContractError),
            params=params,
            cluster=clusters.from_env(env),
            cpu_devices=env_int(env, "TRAIN_CPU_DEVICES", None, ContractError),
            publish_champion=_publish_champion(env.get("TRAIN_PUBLISH_AS") or "champion"),
            allow_signature_change=_flag(env, "TRAIN_ALLOW_SIGNATURE_CHANGE"),
            **values,
            **kw,
        )

    # ---- devices ----

    @property
    def strategy(self):
        """Created on first use, before any model or dataset: the device layout is fixed then."""
        if self._strategy is None:
            self._strategy = make_strategy(self.cluster, self.cpu_devices)
            log.info(
                "devices: %d replica(s) in sync (%s, worker %d of %d)",
                self.replicas,
                type(self._strategy).__name__,
                self.cluster.index,
                self.cluster.workers,
            )
        return self._strategy

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    @property
    def is_chief(self) -> bool:
        return self.cluster.is_chief

    @property
    def global_batch_size(self) -> int:
        return scaled(self.batch_size, self.base_learning_rate, self.replicas)[0]

    @property
    def learning_rate(self) -> float:
        return scaled(self.batch_size, self.base_learning_rate, self.replicas)[1]

    def seed_everything(self) -> None:
        import keras
        import tensorflow as tf

        keras.utils.set_random_seed(self.seed)
        if self.replicas == 1:
            # Cross-replica reductions sum in arrival order: determinism is a single-replica promise.
            tf.config.experimental.enable_op_determinism()

    @property
    def steps_per_execution(self) -> int:
        """Optimizer steps per compiled call to use in ``compile``: Keras' multi-step loop fails under
        a distribution strategy (TF 2.21 / Keras 3.15: "You must feed a value for placeholder
        tensor" in its has_next branch), so one there; several on one device (less Python per step)."""
        return STEPS_PER_EXECUTION if self.replicas == 1 else 1

    def shard(self, dataset):
        """``dataset`` (batched by ``global_batch_size``) ready for this run's devices: with several
        replicas, each worker reads its share of the elements (in-memory data has no files to split)."""
        if self.replicas == 1:
            return dataset
        import tensorflow as tf

        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return dataset.with_options(options)

    def lost_peer(self, exc: BaseException) -> bool:
        """``exc`` is a multi-worker collective that failed because another worker went away."""
        return self.cluster.workers > 1 and peer_lost(exc)

    def train(self, model, dataset, state: RunState, **fit_kwargs) -> int | None:
        """``model.fit`` from the last complete epoch to ``epochs`` with the contract's callbacks.
        None when training is complete; else the exit code to return: 143 stopped by SIGTERM, 75 a
        peer worker was lost (both resume from the checkpoint)."""
        try:
            if state.epoch < self.epochs:
                # The contract prints the progress (training/progress.py): Keras' own would repeat it.
                fit_kwargs.setdefault("verbose", 0)
                # A tf.data input is shuffled by the code that built it; Keras ignores shuffle=True
                # for one but warns on every run that it did.
                fit_kwargs.setdefault("shuffle", False)
                callbacks = self.callbacks(state) + list(fit_kwargs.pop("callbacks", []))
                model.fit(self.shard(dataset), epochs=self.epochs, initial_epoch=state.epoch, callbacks=callbacks, **fit_kwargs)
        except Exception as exc:
            if self.lost_peer(exc):
                log.error(
                    "a peer worker was lost (%s): exiting for a restart from the checkpoint after epoch %d", type(exc).__name__, state.epoch
                )
                return EXIT_PEER_LOST
            raise
        if Stop.requested:
            log.warning("stopped by SIGTERM after %d complete epochs; a restart resumes from the checkpoint", state.epoch)
            return EXIT_PREEMPTED
        return None

    # ---- checkpoints ----

    def restore(self, build: Callable[[], Any]):
        """(model, state): the last complete checkpoint, or ``build()`` and a fresh state. Call it
        inside ``strategy.scope()`` so the variables are mirrored."""
        model, state = self.checkpoint.load() if self.checkpoint else (None, RunState())
        if model is None:
            model = build()
        else:
            log.info("resuming from %s after epoch %d", self.checkpoint.uri, state.epoch)
        keras_multi_worker_fit(model, self.strategy)
        return model, state

    def callbacks(self, state: RunState) -> list:
        """Per-epoch history, checkpoint and metrics; SIGTERM stops at the next batch boundary."""
        import keras

        from training.metrics import EPOCH_SECONDS, EPOCHS

        run = self

        class EpochEnd(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.start = time.perf_counter()
                self.steps = 0

            def on_train_batch_end(self, batch, logs=None):
                # With several steps per call Keras reports the call's last step index.
                self.steps = batch + 1
                if Stop.requested:
                    self.model.stop_training = True

            def on_epoch_end(self, epoch, logs=None):
                if Stop.requested:
                    return  # a partial epoch: not a checkpoint
                for k, v in (logs or {}).items():
                    state.history.setdefault(k, []).append(float(v))
                state.epoch = epoch + 1
                seconds = time.perf_counter() - self.start
                run.metrics.set(EPOCH_SECONDS, seconds)
                run.metrics.set(EPOCHS, state.epoch)
                # A step takes one global batch, split evenly over the workers.
                run.worker_metrics.observe_epoch(self.steps, self.steps * run.global_batch_size // run.cluster.workers, seconds)
                run.worker_metrics.push(run.pushgateway)
                if run.checkpoint:
                    run.checkpoint.save(self.model, state)
                run.push()

        return [EpochEnd(), _feedback(Progress(self.epochs, state.epoch))]

    # ---- gate, metrics, publish ----

    def push(self) -> None:
        # One series per run: the chief speaks for it (workers' copies of the metrics are identical).
        if self.is_chief:
            self.metrics.push(self.pushgateway)

    def gate_passes(self, results: Mapping[str, float], evaluate: Callable[[Path], Mapping[str, float]] | None = None) -> bool:
        """Record the held-out results and apply the gate: the threshold, then (given ``evaluate``,
        which computes the same results for a stored model directory) the champion on the same data
        (training/gate.py). On failure it says why on stderr."""
        import sys

        from training import gate as gates
        from training.metrics import ACCURACY, CHAMPION_ACCURACY, DURATION_SECONDS, GATE_PASSED, LAST_RUN, LOSS

        if self.gate.metric not in results:
            raise ContractError(f"the gate's metric {self.gate.metric!r} is not among the results {sorted(results)}")
        for key, gauge in (("test_accuracy", ACCURACY), ("test_loss", LOSS)):
            if key in results:
                self.metrics.set(gauge, results[key])
        self.metrics.set(LAST_RUN, time.time())
        value = float(results[self.gate.metric])
        g = self.gate
        self.verdict = gates.check(
            g.metric,
            value,
            g.threshold,
            root=self.output,
            name=self.model_name,
            evaluate=evaluate,
            higher_is_better=g.higher_is_better,
            margin=g.champion_margin,
        )
        log.info("%s", self.verdict.line())
        if self.verdict.champion_value is not None and g.metric == "test_accuracy":
            self.metrics.set(CHAMPION_ACCURACY, self.verdict.champion_value)
        if self.verdict.passed:
            return True
        self.metrics.set(GATE_PASSED, 0)
        self.metrics.set(DURATION_SECONDS, time.time() - self.started)
        self.push()
        print(
            g.failure(value) if not g.passes(value) else f"quality gate failed: {self.verdict.reason}; nothing published", file=sys.stderr
        )
        return False

    def check_signature(self, out: Path) -> None:
        """Refuse (SignatureBreak) a version whose serving signature breaks the champion's, unless
        the catalogue entry allows it (``training.allowSignatureChange``: TRAIN_ALLOW_SIGNATURE_CHANGE=1).
        A running server refuses such a version anyway (it would break its clients mid-flight); a
        canary's fresh pods would not, and would break them for good."""
        pb = out / "saved_model" / "saved_model.pb"
        try:
            champion = champion_signatures(self.output, self.model_name) if pb.exists() else None
            if champion is None:
                return
            version, old = champion
            new = serving_signatures(pb.read_bytes())
        except SignatureUnreadable as exc:
            # Not a SavedModel protobuf on one side (a model that publishes another format under that
            # name): there is no signature to compare; the server's load check still applies.
            log.warning("serving signature not compared with the champion's: %s", exc)
            return
        problems = signature_breaks(old, new)
        if not problems:
            return
        text = f"serving signature breaks champion {version}'s: {'; '.join(problems)}"
        if self.allow_signature_change:
            log.warning("%s (allowed: TRAIN_ALLOW_SIGNATURE_CHANGE)", text)
            return
        from training.metrics import GATE_PASSED

        self.metrics.set(GATE_PASSED, 0)
        self.push()
        raise SignatureBreak(
            f"{text}; nothing published (clients of the champion would break: keep the names, dtypes and shapes, "
            "or set training.allowSignatureChange in the catalogue entry)"
        )

    def publish(self, write: Callable[[Path], None], results: Mapping[str, float], metadata: Mapping[str, Any] | None = None) -> str | None:
        """The chief writes the version's files with ``write(dir)`` (``saved_model/`` and ``model.keras``
        at least) and uploads them with ``metadata.json`` (the gate's verdict: ``gate.passed``) as a new
        version (artifacts.publish). A ``candidate`` run (every platform Job and CronJob) moves no alias:
        its role may not (issue 24 item 8), the pipeline adopts it (registry.adopt, ops/deliver.py); a
        ``champion`` run (local) adopts it at once, LATEST following. Other workers get None."""
        from training import artifacts
        from training.metrics import DURATION_SECONDS, GATE_PASSED, LAST_SUCCESS

        if not self.is_chief:
            log.info("worker %d: the chief publishes", self.cluster.index)
            return None
        version = artifacts.new_version(self.run_id)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            write(out)
            meta = {
                "model": self.model_name,
                "version": version,
                "metrics": dict(results),
                "gate": {"metric": self.gate.metric, "threshold": self.gate.threshold, "higher_is_better": self.gate.higher_is_better},
                "params": {
                    "epochs": self.epochs,
                    "batch_size": self.batch_size,
                    "learning_rate": self.base_learning_rate,
                    "seed": self.seed,
                    **self.params,
                },
                "distribution": {
                    "workers": self.cluster.workers,
                    "replicas": self.replicas,
                    "global_batch_size": self.global_batch_size,
                    "learning_rate": self.learning_rate,
                },
                "code_version": os.environ.get("MLPLATFORM_CODE_VERSION", "unknown"),
                "started_at": self.started,
            }
            meta.update(metadata or {})
            if self.verdict:  # both figures of the gate: this run's and the champion's
                meta["gate"] |= self.verdict.metadata()
            elif not self.publish_champion:
                log.warning("no gate verdict (gate_passes was not called): the pipeline will not adopt this version")
            meta["finished_at"] = time.time()
            (out / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
            self.check_signature(out)
            uri = artifacts.publish(out, self.output, self.model_name, version, champion=self.publish_champion)
            curve = (out / "training_curve.png").exists()
        self.metrics.set(GATE_PASSED, 1)
        self.metrics.set(LAST_SUCCESS, time.time())
        self.metrics.set(DURATION_SECONDS, time.time() - self.started)
        self.push()
        from training import storage

        shown = storage.display(uri)
        log.info("published %s%s", uri, f" ({shown})" if shown != uri else "")
        if curve:
            log.info("training curve: %s", storage.display(storage.join(uri, "training_curve.png")))
        print(json.dumps({"published": uri, "version": version, **{k: float(v) for k, v in results.items()}}))
        return uri
