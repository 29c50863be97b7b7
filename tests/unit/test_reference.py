from __future__ import annotations

from tools.reference import unknown_value_keys


def test_unknown_value_keys_catches_typos():
    ref = {"image": {"tag": "1"}, "resources": {}, "tolerations": [], "extraArgs": {"v": 4}}
    assert unknown_value_keys({"image": {"tga": "2"}}, ref) == ["image.tga"]
    assert unknown_value_keys({"imagee": {}}, ref) == ["imagee"]


def test_unknown_value_keys_allows_free_form_maps():
    ref = {"resources": {}, "tolerations": [], "extraArgs": {"v": 4}, "nodeSelector": None}
    values = {"resources": {"limits": {"cpu": "1"}}, "tolerations": [{"key": "k"}], "nodeSelector": {"a": "b"}}
    assert unknown_value_keys(values, ref) == []
    assert unknown_value_keys({"extraArgs": {"expander": "x"}}, ref, "cluster-autoscaler") == []
    assert unknown_value_keys({"extraArgs": {"expander": "x"}}, ref, "other-chart") == ["extraArgs.expander"]


def test_grafana_subchart_keys_checked_against_grafana_chart():
    from tools import reference

    if reference.reference_dir() is None:
        from tests.conftest import unavailable

        unavailable("../shared/reference not present")
    kps = reference.chart_values("kube-prometheus-stack", "88.5.3")
    assert unknown_value_keys({"grafana": {"resources": {}, "admin": {"existingSecret": "x"}}}, kps) == []
    assert unknown_value_keys({"grafana": {"adminPasswrd": "x"}}, kps) == ["grafana.adminPasswrd"]
    assert kps["grafana"]["sidecar"]["dashboards"]["labelValue"] == "1"  # the parent's override wins
