"""Issue 13 item 5: the policy pack looks inside Helm values (chart workloads and agent pod templates),
and the most privileged pods are held to the pod rules with written exceptions only."""

from __future__ import annotations

import copy

import pytest
import yaml

from components.cluster import gpu_addons
from components.services import jenkins, monitoring
from policy import rules
from policy.rules import Res
from tests.conftest import unavailable
from tools import reference


def release(chart, values, version=""):
    return Res("kubernetes:helm.sh/v3:Release", {"chart": chart, "version": version, "values": values}, urn=f"urn:{chart}")


def with_defaults(res: Res) -> Res:
    defaults = reference.chart_values(res.props["chart"], res.props["version"])
    if defaults is None:
        unavailable("../shared/reference not present: chart defaults unknown")
    res.extra["chart_defaults"] = defaults
    return res


def jenkins_release(builder_container_changes=None):
    templates = jenkins.pod_templates("jenkins-builds")
    if builder_container_changes:
        (tpl,) = yaml.safe_load(templates["builder"])
        pod = yaml.safe_load(tpl["yaml"])
        buildkitd = next(c for c in pod["spec"]["containers"] if c["name"] == "buildkitd")
        buildkitd["securityContext"] = {**buildkitd["securityContext"], **builder_container_changes}
        tpl["yaml"] = yaml.safe_dump(pod)
        templates["builder"] = yaml.safe_dump([tpl])
    return release(
        "jenkins", {"agent": {"podTemplates": templates}, "controller": {"containerSecurityContext": jenkins.CONTROLLER_SECURITY}}
    )


def test_agent_pod_templates_are_inspected():
    pods = {w: pod for w, pod, _ in rules.chart_pods(jenkins_release())}
    assert {"python", "builder"} <= set(pods)
    assert {c["name"] for c in pods["builder"]["containers"]} == {"python", "buildkitd"}


def test_rootless_buildkit_passes_with_exactly_its_exceptions():
    assert rules.chart_pods_hardened(jenkins_release()) == []
    sc = jenkins.BUILDKITD_SECURITY
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["SETUID", "SETGID"]}
    assert sc["seccompProfile"] == {"type": "Unconfined"} and sc["appArmorProfile"] == {"type": "Unconfined"}
    assert sc["runAsNonRoot"] is True and sc["privileged"] is False


@pytest.mark.parametrize(
    "change,expect",
    [
        # what the builder had before issue 13: no capability dropped
        ({"capabilities": None}, "does not drop ALL"),
        ({"capabilities": {"drop": ["ALL"], "add": ["SETUID", "SETGID", "SYS_ADMIN"]}}, "adds capabilities"),
        ({"privileged": True}, "is privileged"),
        ({"runAsNonRoot": False}, "may run as root"),
    ],
)
def test_buildkit_beyond_its_exceptions_is_caught(change, expect):
    found = rules.chart_pods_hardened(jenkins_release(change))
    assert any(expect in m and "buildkitd" in m for m in found), found


def test_an_unexcused_agent_container_is_caught():
    templates = jenkins.pod_templates("jenkins-builds")
    (tpl,) = yaml.safe_load(templates["python"])
    pod = yaml.safe_load(tpl["yaml"])
    pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    pod["spec"]["securityContext"]["seccompProfile"] = {"type": "Unconfined"}
    tpl["yaml"] = yaml.safe_dump(pod)
    found = rules.chart_pods_hardened(release("jenkins", {"agent": {"podTemplates": {"python": yaml.safe_dump([tpl])}}}))
    assert any("no-privilege-escalation" in m for m in found) and any("pod sets seccompProfile Unconfined" in m for m in found), found


def test_dcgm_exporter_runs_without_root_or_sys_admin():
    values = gpu_addons.dcgm_values(service_monitor=True)
    assert rules.chart_pods_hardened(release("dcgm-exporter", values)) == []
    sc = values["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["capabilities"]["add"] == []


def test_dcgm_exporter_before_the_fix_is_caught_with_chart_defaults():
    """The chart's default is root with SYS_ADMIN; values that do not override it (as before issue 13)
    are caught once the chart's defaults are merged under them."""
    before = {k: v for k, v in gpu_addons.dcgm_values(service_monitor=True).items() if k not in ("securityContext", "arguments")}
    found = rules.chart_pods_hardened(with_defaults(release("dcgm-exporter", before, "4.8.2")))
    assert any("may run as root" in m for m in found) and any("SYS_ADMIN" in m for m in found), found
    now = with_defaults(release("dcgm-exporter", gpu_addons.dcgm_values(service_monitor=True), "4.8.2"))
    assert rules.chart_pods_hardened(now) == []


def test_helm_merge_keeps_default_capabilities_unless_add_is_explicit():
    """Why dcgm_values sets ``add: []``: Helm merges maps, so only an explicit list replaces SYS_ADMIN."""
    values = copy.deepcopy(gpu_addons.dcgm_values(service_monitor=True))
    del values["securityContext"]["capabilities"]["add"]
    found = rules.chart_pods_hardened(with_defaults(release("dcgm-exporter", values, "4.8.2")))
    assert any("SYS_ADMIN" in m for m in found), found


def test_dcgm_profiling_metrics_are_the_only_way_to_root():
    values = gpu_addons.dcgm_values(service_monitor=True, profiling_metrics=True)
    assert values["arguments"][-1] == gpu_addons.DCGM_PROFILING_COUNTERS == rules.DCGM_PROFILING_COUNTERS
    assert rules.chart_pods_hardened(release("dcgm-exporter", values)) == []
    values["arguments"] = ["-f", gpu_addons.DCGM_COUNTERS]  # root + SYS_ADMIN without the profiling counters
    assert rules.chart_pods_hardened(release("dcgm-exporter", values))


def test_pushgateway_container_is_restricted():
    """Its chart default containerSecurityContext is {}: `restricted` Pod Security would refuse the pod."""
    assert rules.chart_pods_hardened(release("prometheus-pushgateway", monitoring.pushgateway_values())) == []
    before = {**monitoring.pushgateway_values(), "containerSecurityContext": {}}
    assert rules.chart_pods_hardened(with_defaults(release("prometheus-pushgateway", before, "3.8.0")))


def test_device_plugin_runs_as_root_only_by_exception():
    values = gpu_addons.device_plugin_values()
    assert rules.chart_pods_hardened(release("nvidia-device-plugin", values)) == []
    values["securityContext"] = {**values["securityContext"], "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]}}
    assert any("adds capabilities" in m for m in rules.chart_pods_hardened(release("nvidia-device-plugin", values)))


def test_only_allow_listed_namespaces_are_privileged():
    def ns(name, level):
        labels = {"app.kubernetes.io/part-of": "mlplatform", "pod-security.kubernetes.io/enforce": level}
        return Res("kubernetes:core/v1:Namespace", {"kind": "Namespace", "metadata": {"name": name, "labels": labels}}, urn=f"urn:{name}")

    # `monitoring` was privileged for node-exporter before issue 13
    assert rules.privileged_namespaces_allow_listed([ns("monitoring", "privileged")]) == [
        ("urn:monitoring", "namespace 'monitoring' enforces Pod Security `privileged` but is not on the allow-list")
    ]
    assert rules.privileged_namespaces_allow_listed([ns("node-exporter", "privileged"), ns("monitoring", "restricted")]) == []
