from __future__ import annotations

import asyncio
import json
import os
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
        model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])
    elif kind == "wrong-output":
        model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax")])
    else:
        raise ValueError(kind)
    path.mkdir(parents=True, exist_ok=True)
    model.save(path / "model.keras")
    model.export(str(path / "saved_model"), verbose=False)
    (path / "metadata.json").write_text(json.dumps({"version": version}))
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
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving", "--model-uri", model_uri, "--host", "127.0.0.1", "--port", str(self.port), *extra],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
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
        if self.proc.poll() is None:
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
