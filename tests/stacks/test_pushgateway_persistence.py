"""Issue 13 item 8: the Pushgateway keeps pushed values (the last training success) across restarts."""

from __future__ import annotations

from components.lib import helm
from components.services import monitoring
from tests.conftest import unavailable
from tools import reference


def test_pushgateway_persists_to_its_volume(result):
    (pg,) = [r for r in result.of_type("kubernetes:helm.sh/v3:Release") if r.inputs["chart"] == "prometheus-pushgateway"]
    values = pg.raw["values"]
    volume = values["persistentVolume"]
    assert volume["enabled"] is True
    # the chart mounts the volume but passes no flag: the file must be on the mounted volume
    (flag,) = [a for a in values["extraArgs"] if a.startswith("--persistence.file=")]
    assert flag.removeprefix("--persistence.file=").startswith(volume["mountPath"].rstrip("/") + "/")


def test_persistence_values_are_chart_keys():
    version = helm.CHARTS["prometheus-pushgateway"][0]
    defaults = reference.chart_values("prometheus-pushgateway", version)
    if defaults is None:
        unavailable(f"../shared/reference/charts/prometheus-pushgateway/{version} not present")
    values = monitoring.pushgateway_values()
    assert reference.unknown_value_keys(values, defaults, "prometheus-pushgateway") == []
    assert defaults["persistentVolume"]["enabled"] is False  # the default this overrides
