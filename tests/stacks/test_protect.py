"""Nothing destroyed by accident (issue 27): prod's stateful resources carry Pulumi's `protect`, so the
engine refuses `pulumi destroy` (and a replacement) of them; `mlplatform:protect` sets it per stack and
setting it false (then `up`) is the documented way to lift it."""

from __future__ import annotations

import pytest

from tools import mock_engine

STATEFUL = ("eks:index:Cluster", "aws:s3/bucketV2:BucketV2", "aws:s3/bucket:Bucket", "aws:ecr/repository:Repository")


def _protected(result) -> set[str]:
    return {r.type for r in result.records if r.protect}


def test_prod_protects_its_cluster_store_and_image_repositories(result, stack):
    protected = _protected(result)
    stateful = {r.type for r in result.records if r.type in STATEFUL}
    if stack == "prod":
        assert stateful and stateful <= protected, f"unprotected on prod: {sorted(stateful - protected)}"
        # the whole cluster subtree (VPC, control plane, system nodes) inherits it from the Cluster component
        cluster = next(r for r in result.records if r.type == "mlplatform:cluster:Cluster")
        assert cluster.protect and all(r.protect for r in result.records if r.parent == cluster.urn)
        # the workloads stay unprotected: `up` may replace a Deployment or a Job
        assert not any(r.protect for r in result.records if r.is_k8s_object and r.parent != cluster.urn)
    else:
        assert protected == set(), f"{stack} protects {sorted(protected)}: only prod does by default"


@pytest.mark.parametrize("name, value", [("prod", False), ("dev", True)])
def test_the_stack_setting_lifts_or_sets_it(name, value):
    result = mock_engine.run(name, {"mlplatform:protect": value})
    stateful = [r for r in result.records if r.type in STATEFUL]
    assert stateful and all(r.protect is value for r in stateful), [(r.urn, r.protect) for r in stateful]
