"""The real vLLM for the LLM tests: one tiny model and one server for the whole test session.

These tests run in .venv-ml (the registry, moto, the smoke client); the model is built and vLLM runs
from .venv-llm (`make venv-llm`), spawned by llm/testing.py. Without .venv-llm the tests that need the
engine skip with the reason (``unavailable``: MLPLATFORM_STRICT=1 makes that a failure). Starting vLLM
takes ~35 s (torch import, engine start): it happens once, on first use, and only in the slow lane.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from components.lib import vllm_buckets
from llm import testing
from tests.conftest import unavailable

API_KEY = "tiny-secret-key"
SERVED = "tiny"


def need_engine() -> None:
    if (why := testing.missing_engine()) is not None:
        unavailable(why)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny Llama and its tokenizer, built from nothing by the engine's own libraries (seed 0)."""
    need_engine()
    return testing.build_with_engine(tmp_path_factory.mktemp("tiny-llama") / "model", seed=0)


@pytest.fixture(scope="session")
def vllm_server(tiny_model, tmp_path_factory):
    """One real vLLM OpenAI server on the tiny model for the session: ``.base_url`` (…/v1), ``.url``
    (/health, /metrics), ``.api_key``, ``.served_name``."""
    log = tmp_path_factory.mktemp("vllm-log") / "vllm.log"
    # with the latency buckets every pod runs (components/lib/vllm_buckets.py): the queries are tested on them
    # 512 tokens (the tiny model's positions): test_canary_and_slo_queries queues requests behind long generations
    server = testing.VllmServer(
        tiny_model, served_name=SERVED, api_key=API_KEY, log_path=log, extra_args=vllm_buckets.args(), max_model_len=512
    )
    server.start()
    yield server
    server.stop()
