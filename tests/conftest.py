"""Shared harness: every stack file is a parameter, and the program's records are cached per stack
(the program is deterministic; tests that change config run it afresh with overrides)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STACKS = sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in (ROOT / "stacks").glob("Pulumi.*.yaml"))


def pytest_generate_tests(metafunc):
    if "stack" in metafunc.fixturenames:
        metafunc.parametrize("stack", STACKS)


@pytest.fixture(scope="session")
def _results():
    return {}


@pytest.fixture
def result(stack, _results):
    """The program's records for ``stack`` under mocks (run once per session per stack)."""
    from tools import mock_engine

    if stack not in _results:
        _results[stack] = mock_engine.run(stack)
    return _results[stack]
