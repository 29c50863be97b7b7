"""An `up` from a clean checkout serves what the pipeline's last `up` served (issue 29, "Later ups").

The pipeline pins each model's version in its workspace (`make pin`, `make deliver`: `pulumi config set`,
never committed). A clean checkout has no pin, so without a record its `up` rendered the pod template
unpinned and started a canary of what already served. Every EKS `up` now records the version it
rendered (an SSM parameter) and an `up` whose config names none renders that one."""

from __future__ import annotations

import copy

import pytest
import yaml

from components.models.model import SERVED_VERSION_PREFIX, UNPINNED
from tests.conftest import ROOT
from tools import mock_engine

VERSION = "20261201T120000Z-ci0042"
PARAMETER = "aws:ssm/parameter:Parameter"


def _models(stack: str) -> dict:
    return yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]["mlplatform:models"]


def _pinned_by_ci(stack: str, version: str) -> dict:
    """The workspace config after `make pin` / `make deliver`: every model's serving.version set."""
    models = copy.deepcopy(_models(stack))
    for entry in models.values():
        entry.setdefault("serving", {})["version"] = version
    return {"mlplatform:models": models}


def _rollouts(result) -> dict[str, dict]:
    return {r.name: r.raw["spec"] for r in result.of_type("kubernetes:argoproj.io/v1alpha1:Rollout")}


def _recorded(result) -> dict[str, str]:
    return {r.inputs["name"]: r.inputs["insecureValue"] for r in result.of_type(PARAMETER)}


@pytest.fixture(scope="module")
def ci_run():
    return mock_engine.run("dev", overrides=_pinned_by_ci("dev", VERSION))


def test_the_pipelines_up_records_what_it_served(ci_run):
    recorded = _recorded(ci_run)
    assert recorded == {SERVED_VERSION_PREFIX.format(stack="dev") + m: VERSION for m in _models("dev")}


def test_an_up_from_a_clean_checkout_renders_what_the_pipeline_served(ci_run):
    clean = mock_engine.run("dev", parameters=_recorded(ci_run))  # the stack file as committed: no pin
    ci, mine = _rollouts(ci_run), _rollouts(clean)
    assert ci and mine == ci, "a clean checkout's up would change the served pod templates (a canary)"
    assert _recorded(clean) == _recorded(ci_run)


def test_the_record_is_the_stacks_own():
    """Another stack's record (a different prefix) or a nested path is not read."""
    other = {
        SERVED_VERSION_PREFIX.format(stack="staging") + "mnist": VERSION,
        SERVED_VERSION_PREFIX.format(stack="dev") + "x/mnist": VERSION,
    }
    result = mock_engine.run("dev", parameters=other)
    assert set(_recorded(result).values()) == {UNPINNED}


def test_the_first_up_is_unpinned_and_records_that():
    result = mock_engine.run("dev")
    assert set(_recorded(result).values()) == {UNPINNED}
    spec = _rollouts(result)["mlplatform-mnist-serving-rollout"]
    assert spec["template"]["metadata"]["annotations"]["mlplatform.io/model-version"] == "champion"


def test_a_pin_in_the_stack_file_wins_over_the_record():
    result = mock_engine.run(
        "dev",
        overrides=_pinned_by_ci("dev", "20261202T000000Z-x"),
        parameters={SERVED_VERSION_PREFIX.format(stack="dev") + "mnist": VERSION},
    )
    assert _recorded(result)[SERVED_VERSION_PREFIX.format(stack="dev") + "mnist"] == "20261202T000000Z-x"


def test_a_stack_on_an_existing_cluster_keeps_its_config_as_the_record(result, stack):
    kind = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]["mlplatform:cluster"]["kind"]
    assert bool(result.of_type(PARAMETER)) == (kind == "eks")


def test_an_explicit_champion_pin_overrides_the_record():
    """`serving.version: champion` is how the pipeline unpins (ops/deliver.py: a failed first adapter
    version): removing the key would render the version the last `up` recorded, the failed one."""
    from ops import deliver

    assert deliver.UNPINNED == UNPINNED
    ci_record = {SERVED_VERSION_PREFIX.format(stack="dev") + m: VERSION for m in _models("dev")}
    result = mock_engine.run("dev", overrides=_pinned_by_ci("dev", UNPINNED), parameters=ci_record)
    assert set(_recorded(result).values()) == {UNPINNED}
    spec = _rollouts(result)["mlplatform-mnist-serving-rollout"]
    assert spec["template"]["metadata"]["annotations"]["mlplatform.io/model-version"] == "champion"
