"""The build namespace's admission policy (issue 24, Low): the unconfined exemption belongs to the
builder's BuildKit daemon exactly as the program defines it, and Pod Security baseline's /proc,
SELinux and sysctl checks hold for every build pod. Evaluated with a real CEL interpreter (celpy)."""

from __future__ import annotations

import pytest

from tests.unit.test_ci_trust import _admits, _template_pods, _with

pytest.importorskip("celpy")


def _buildkitd(spec):
    return next(c for c in spec["containers"] if c["name"] == "buildkitd")


@pytest.mark.parametrize(
    "what, change",
    [
        ("its own command", lambda s: _buildkitd(s).update(command=["sh", "-c", "id"])),
        ("other arguments", lambda s: _buildkitd(s).update(args=["--addr", "tcp://0.0.0.0:1234"])),
        ("root", lambda s: _buildkitd(s)["securityContext"].update(runAsUser=0, runAsNonRoot=False)),
        ("capabilities kept", lambda s: _buildkitd(s)["securityContext"].update(capabilities={"add": ["SETUID"]})),
        ("AppArmor annotation on a look-alike", lambda s: _buildkitd(s).update(command=["sh"])),
    ],
)
def test_a_buildkitd_look_alike_gets_no_exemption(what, change):
    builder = _template_pods()["builder"]
    pod = _with(builder, change)
    if what.startswith("AppArmor"):
        # the field form removed, the annotation form kept: still refused for a look-alike
        for key in ("appArmorProfile", "seccompProfile"):
            _buildkitd(pod["spec"])["securityContext"].pop(key, None)
        pod["metadata"]["annotations"] = {"container.apparmor.security.beta.kubernetes.io/buildkitd": "unconfined"}
        assert _admits(pod) == ["only the buildkitd container may run without AppArmor confinement"]
        return
    assert _admits(pod), f"{what} was admitted"


@pytest.mark.parametrize(
    "what, change",
    [
        ("unmasked /proc", lambda s: s["containers"][0].setdefault("securityContext", {}).update(procMount="Unmasked")),
        ("SELinux type", lambda s: s["containers"][0].setdefault("securityContext", {}).update(seLinuxOptions={"type": "spc_t"})),
        ("SELinux user", lambda s: s.setdefault("securityContext", {}).update(seLinuxOptions={"user": "system_u"})),
        ("unsafe sysctl", lambda s: s.setdefault("securityContext", {}).update(sysctls=[{"name": "kernel.core_pattern", "value": "|/x"}])),
    ],
)
def test_baseline_checks_refuse(what, change):
    assert _admits(_with(_template_pods()["python"], change)), f"{what} was admitted"


def test_baseline_checks_admit_what_baseline_admits():
    pod = _with(
        _template_pods()["python"],
        lambda s: s.setdefault("securityContext", {}).update(
            sysctls=[{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}], seLinuxOptions={"type": "container_t"}
        ),
    )
    assert _admits(pod) == []
    assert _admits(_template_pods()["builder"]) == []
