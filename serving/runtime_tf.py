"""The TensorFlow runtime (serving/runtime.py): a SavedModel's serving signatures, or a Keras
``model.keras`` served as one ``serving_default`` signature. Imported only when such a model loads."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from serving.codec import DEFAULT_SIGNATURE, DTYPES, SignatureSpec, TensorSpec
from serving.model import ModelLoadError
from serving.runtime import Signature


def _call(fn):
    """Named arrays -> the concrete function's named outputs as arrays."""

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        out = fn(**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in out.items()}

    return run


def _dtype_name(tf_dtype) -> str | None:
    name = "string" if tf_dtype.name == "string" else tf_dtype.name
    return name if name in DTYPES else None


def _spec_of(name: str, fn) -> SignatureSpec:
    args, kwargs = fn.structured_input_signature
    if args:
        raise ModelLoadError("incompatible", f"signature {name!r} takes positional inputs; only named inputs can be served")

    def tensor(key, ts) -> TensorSpec:
        dtype = _dtype_name(ts.dtype)
        if dtype is None:
            raise ModelLoadError("incompatible", f"signature {name!r}: {key!r} has dtype {ts.dtype.name}, which JSON cannot carry")
        if ts.shape.rank is None:
            raise ModelLoadError("incompatible", f"signature {name!r}: {key!r} has an unknown rank")
        return TensorSpec(key, dtype, tuple(ts.shape.as_list()))

    outputs = fn.structured_outputs
    if not isinstance(outputs, dict):
        raise ModelLoadError("incompatible", f"signature {name!r} does not return named outputs")
    return SignatureSpec(
        name, tuple(tensor(k, v) for k, v in sorted(kwargs.items())), tuple(tensor(k, v) for k, v in sorted(outputs.items()))
    )


def load_signatures(local: Path) -> dict[str, Signature]:
    """A SavedModel's serving signatures (or a Keras model.keras as one), each a Signature."""
    configure_threads()
    import tensorflow as tf

    saved = local / "saved_model" if (local / "saved_model").is_dir() else local
    try:
        if (saved / "saved_model.pb").exists():
            loaded = tf.saved_model.load(str(saved))
            fns = dict(loaded.signatures)
            keep = loaded  # the signatures' variables live as long as the loaded object
        elif (local / "model.keras").exists():
            keep, fns = _keras_signature(local / "model.keras")
        else:
            raise ModelLoadError("load", f"{local}: neither saved_model/saved_model.pb nor model.keras")
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to deserialize means this version is unusable
        raise ModelLoadError("load", f"{local}: cannot load model: {type(exc).__name__}: {exc}") from None
    if DEFAULT_SIGNATURE not in fns:
        raise ModelLoadError("incompatible", f"{local}: no {DEFAULT_SIGNATURE!r} signature (has {sorted(fns)})")
    out = {}
    for name, fn in fns.items():
        fn._mlplatform_keep = keep  # noqa: SLF001 - keep the owner alive with the function
        out[name] = Signature(_spec_of(name, fn), _call(fn))
    return out


def _keras_signature(path: Path):
    import keras
    import tensorflow as tf

    model = keras.models.load_model(path, compile=False)
    names = [t.name.split(":")[0] for t in model.inputs]
    specs = {n: tf.TensorSpec(t.shape, t.dtype, name=n) for n, t in zip(names, model.inputs, strict=True)}
    out_names = list(getattr(model, "output_names", None) or [f"output_{i}" for i in range(len(model.outputs))])

    @tf.function(input_signature=[specs])
    def serve(inputs):
        y = model([inputs[n] for n in names] if len(names) > 1 else inputs[names[0]], training=False)
        ys = y if isinstance(y, (list, tuple)) else [y]
        return dict(zip(out_names, ys, strict=True))

    concrete = serve.get_concrete_function()

    class Fn:
        structured_input_signature = ((), specs)
        structured_outputs = concrete.structured_outputs

        def __call__(self, **kw):
            return serve(kw)

    return model, {DEFAULT_SIGNATURE: Fn()}


_configured = False


def configure_threads() -> None:
    """TF uses its own pools; keep them small so the HTTP event loop keeps a core (env overrides).
    Once per process, before TensorFlow's runtime starts (the first model load)."""
    global _configured
    if _configured:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(os.environ.get("SERVING_TF_THREADS", "1")))
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already runs in this process (a test, a tool that built a model): its pools stay
        pass
    _configured = True
