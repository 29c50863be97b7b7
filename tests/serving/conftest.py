from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def make_model_dir(path: Path, version: str, seed: int = 0, kind: str = "dense") -> Path:
    """A tiny real Keras MNIST-shaped classifier (random weights) in the store's version layout."""
    import keras

    keras.utils.set_random_seed(seed)
    if kind == "dense":
        model = keras.Sequential(
            [keras.Input((28, 28, 1), name="images"), keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")]
        )
    elif kind == "wrong-output":
        model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax")])
    else:
        raise ValueError(kind)
    path.mkdir(parents=True, exist_ok=True)
    model.save(path / "model.keras")
    model.export(str(path / "saved_model"), verbose=False)
    (path / "metadata.json").write_text(json.dumps({"version": version}))
    return path


def make_cnn_dir(path: Path) -> Path:
    """The MNIST CNN the platform trains (training.model.seed_model, untrained), exported as training does."""
    import keras

    from training.model import seed_model

    keras.utils.set_random_seed(3)
    model = seed_model()
    path.mkdir(parents=True, exist_ok=True)
    model.export(str(path / "saved_model"), verbose=False)
    return path


def make_multi_input_dir(path: Path) -> Path:
    """A SavedModel with a float input, an integer input and two named outputs (a tabular model)."""
    import tensorflow as tf

    class Tabular(tf.Module):
        def __init__(self):
            super().__init__()
            rng = tf.random.Generator.from_seed(7)
            self.w = tf.Variable(rng.normal((4, 3)))
            self.emb = tf.Variable(rng.normal((5, 3)))

        @tf.function(
            input_signature=[tf.TensorSpec([None, 4], tf.float32, name="features"), tf.TensorSpec([None], tf.int64, name="category")]
        )
        def serve(self, features, category):
            logits = features @ self.w + tf.gather(self.emb, tf.clip_by_value(category, 0, 4))
            return {"probabilities": tf.nn.softmax(logits), "score": tf.reduce_sum(logits, axis=1)}

    m = Tabular()
    tf.saved_model.save(m, str(path / "saved_model"), signatures={"serving_default": m.serve})
    return path


def make_text_dir(path: Path) -> Path:
    """A SavedModel with a string input: TextVectorization -> embedding -> 2 classes, plus a token count."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(5)
    vec = keras.layers.TextVectorization(max_tokens=20, output_mode="int", output_sequence_length=6)
    vec.adapt(["the cat sat", "a dog ran fast", "the dog sat on the mat", "héllo wörld"])
    emb = keras.layers.Embedding(20, 4)
    dense = keras.layers.Dense(2, activation="softmax")

    class Text(tf.Module):
        def __init__(self):
            super().__init__()
            self.vec, self.emb, self.dense = vec, emb, dense

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text):
            ids = self.vec(text)
            probs = self.dense(tf.reduce_mean(self.emb(ids), axis=1))
            return {"probs": probs, "tokens": tf.math.count_nonzero(ids, axis=1), "upper_bytes": tf.strings.upper(text)}

    m = Text()
    tf.saved_model.save(m, str(path / "saved_model"), signatures={"serving_default": m.serve})
    return path


def publish(root: Path, version: str, **kw) -> None:
    from training import artifacts

    src = make_model_dir(root.parent / f"build-{version}", version, **kw)
    artifacts.publish(src, f"file://{root}", "mnist", version)


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store") / "root"
    publish(root, "v1", seed=1)
    return root


def run(coro):
    return asyncio.run(coro)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """The real server as a process (python -m serving), for load/SIGTERM/hot-swap tests."""

    def __init__(self, model_uri: str, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_port = free_port()
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "serving",
                *(["--model-uri", model_uri] if model_uri else []),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--metrics-port",
                str(self.metrics_port),
                *extra,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: stop() also ends the parse worker it spawns
        )

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.proc.stdout.read()}")
            try:
                if urllib.request.urlopen(self.url + "/readyz", timeout=1).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("server not ready in time")

    def stop(self) -> str:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:  # started outside its own group
            self.proc.kill()
        out, _ = self.proc.communicate(timeout=30)
        return out


@pytest.fixture
def server_factory():
    servers = []

    def start(model_uri: str, *extra: str) -> ServerProcess:
        s = ServerProcess(model_uri, *extra)
        servers.append(s)
        s.wait_ready()
        return s

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory, store) -> dict[str, Path]:
    """Real SavedModels of every shape of contract the server must handle, made once per session."""
    base = tmp_path_factory.mktemp("models")
    return {
        "mnist": store / "models" / "mnist" / "v1",
        "cnn": make_cnn_dir(base / "cnn"),
        "tabular": make_multi_input_dir(base / "tabular"),
        "text": make_text_dir(base / "text"),
    }
