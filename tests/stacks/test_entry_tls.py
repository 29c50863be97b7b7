"""TLS on every internet-facing entry point (issue 24 item 9): the Gateway serves the models on HTTPS
with the configured certificate, port 80 only redirects, staging/prod refuse plain HTTP in config, and
the policy pack catches each way back to clear text (planted on prod's rendered resources)."""

from __future__ import annotations

import copy
import json

import pytest

from components.config import ConfigError
from components.services import gateway, jenkins
from policy import rules
from tools import mock_engine


@pytest.fixture(scope="module")
def prod():
    return mock_engine.run("prod")


def _res(result) -> list[rules.Res]:
    return [rules.Res(type=r.type, props=copy.deepcopy(r.inputs), urn=r.urn, name=r.name, parent=r.parent) for r in result.records]


def _one(resources, kind, name):
    (r,) = [r for r in resources if r.kind == kind and (r.props.get("metadata") or {}).get("name") == name]
    return r


def test_prod_serves_https_and_port_80_only_redirects(prod):
    res = _res(prod)
    gw = _one(res, "Gateway", gateway.GATEWAY_NAME)
    listeners = {ln["name"]: ln for ln in gw.props["spec"]["listeners"]}
    assert listeners["https"]["protocol"] == "HTTPS" and listeners["https"]["tls"]["certificateRefs"] == [
        {"kind": "Secret", "name": "mlplatform-entry-tls"}
    ]
    assert listeners["http"]["allowedRoutes"] == {"namespaces": {"from": "Same"}}  # no model route can attach to port 80
    redirect = _one(res, "HTTPRoute", gateway.REDIRECT_ROUTE)
    assert redirect.props["spec"]["rules"] == [
        {"filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}]}
    ]
    # every model route is on the HTTPS listener
    model_routes = [r for r in res if r.kind == "HTTPRoute" and r is not redirect]
    assert model_routes and all(p["sectionName"] == "https" for r in model_routes for p in r.props["spec"]["parentRefs"])
    svc = _one(res, "Service", gateway.ENTRY_SERVICE)
    assert sorted(p["port"] for p in svc.props["spec"]["ports"]) == [80, 443]
    assert prod.outputs["entryPoint"] == "https://models.example.com"
    assert rules.entry_points_tls(res) == []


def _plant(prod, change):
    res = _res(prod)
    change(res)
    return [m for _, m in rules.entry_points_tls(res)]


def test_planted_plain_http_listener_is_caught(prod):
    def plain(res):
        gw = _one(res, "Gateway", gateway.GATEWAY_NAME)
        for ln in gw.props["spec"]["listeners"]:
            if ln["name"] == "https":
                ln["protocol"] = "HTTP"
                ln.pop("tls")

    assert _plant(prod, plain) == ["internet-facing LoadBalancer without TLS: port 443: listener https serves plain HTTP"]


def test_planted_port_80_serving_instead_of_redirecting_is_caught(prod):
    def serve(res):
        redirect = _one(res, "HTTPRoute", gateway.REDIRECT_ROUTE)
        redirect.props["spec"]["rules"] = [{"backendRefs": [{"name": "model-server-mnist", "port": 8501}]}]

    assert _plant(prod, serve) == ["internet-facing LoadBalancer without TLS: port 80: listener http serves plain HTTP"]
    # and with no redirect route at all
    assert _plant(prod, lambda res: res.remove(_one(res, "HTTPRoute", gateway.REDIRECT_ROUTE))) == [
        "internet-facing LoadBalancer without TLS: port 80: listener http serves plain HTTP"
    ]


def test_planted_extra_port_without_listener_is_caught(prod):
    def extra(res):
        _one(res, "Service", gateway.ENTRY_SERVICE).props["spec"]["ports"].append({"name": "admin", "port": 8080, "targetPort": 19000})

    assert _plant(prod, extra) == ["internet-facing LoadBalancer without TLS: port 8080: no TLS listener"]


def test_internal_or_dev_load_balancers_are_not_judged(prod):
    def internal(res):
        gw = _one(res, "Gateway", gateway.GATEWAY_NAME)
        gw.props["spec"]["listeners"] = [{"name": "http", "protocol": "HTTP", "port": 80}]
        _one(res, "Service", gateway.ENTRY_SERVICE).props["metadata"]["annotations"][rules.LB_INTERNAL] = "true"

    assert _plant(prod, internal) == []
    dev = mock_engine.run("dev")  # plain HTTP, restricted by CIDR: allowed off staging/prod
    assert rules.entry_points_tls(_res(dev)) == []


def test_jenkins_load_balancer_terminates_tls_with_its_certificate():
    arn = "arn:aws:acm:eu-west-1:222222222222:certificate/abcd-1234"
    values = jenkins.tls_load_balancer(arn)
    assert values["servicePort"] == 443 and values["serviceAnnotations"][rules.LB_SSL_CERT] == arn
    ns = rules.Res(
        "kubernetes:core/v1:Namespace", {"kind": "Namespace", "metadata": {"name": "jenkins", "labels": {rules.ENV_LABEL: "staging"}}}
    )

    def release(controller):
        return rules.Res(
            "kubernetes:helm.sh/v3:Release", {"chart": "jenkins", "namespace": "jenkins", "values": {"controller": controller}}, urn="j"
        )

    assert rules.entry_points_tls([ns, release({"serviceType": "LoadBalancer", **values})]) == []
    assert rules.entry_points_tls([ns, release({"serviceType": "LoadBalancer"})]) == [
        ("j", "Jenkins LoadBalancer without TLS (jenkins.tlsCertificateArn)")
    ]
    assert rules.entry_points_tls([ns, release({"serviceType": "ClusterIP"})]) == []


@pytest.mark.parametrize(
    "env, overrides, key",
    [
        ("prod", {"mlplatform:gateway": {}}, "mlplatform:gateway.tls"),
        ("staging", {"mlplatform:gateway": None}, "mlplatform:gateway.tls"),
        (
            "staging",
            {"mlplatform:jenkins": {"serviceType": "LoadBalancer", "allowedCidrs": ["203.0.113.0/24"]}},
            "mlplatform:jenkins.tlsCertificateArn",
        ),
    ],
)
def test_config_refuses_plain_http_on_the_internet(env, overrides, key):
    stack = env
    if "mlplatform:jenkins" in overrides:
        base = mock_engine.stack_config(stack)[0]
        overrides = {"mlplatform:jenkins": {**json.loads(base["mlplatform:jenkins"]), **overrides["mlplatform:jenkins"]}}
    with pytest.raises(ConfigError) as err:
        mock_engine.run(stack, overrides=overrides)
    assert f"stacks/Pulumi.{stack}.yaml: {key}: required" in str(err.value)


def _model_route(res):
    return next(r for r in res if r.kind == "HTTPRoute" and r.props["metadata"]["name"] != gateway.REDIRECT_ROUTE)


@pytest.mark.parametrize(
    "attach",
    [
        lambda ref: ref.update(port=80) or ref.pop("sectionName"),  # by port, no sectionName
        lambda ref: ref.pop("sectionName"),  # no sectionName: every listener of the Gateway
    ],
    ids=["parentRef.port-80", "no-sectionName"],
)
def test_planted_model_route_on_port_80_is_caught(prod, attach):
    """A model route that attaches to the plain-HTTP listener serves models in clear, whatever the
    listener's allowedRoutes says today (a namespace label away from admitting it)."""

    def plant(res):
        for ref in _model_route(res).props["spec"]["parentRefs"]:
            attach(ref)

    assert _plant(prod, plant) == ["internet-facing LoadBalancer without TLS: port 80: listener http serves plain HTTP"]


def test_planted_gateway_behind_envoys_own_load_balancer_is_caught(prod):
    """Envoy Gateway makes its own LoadBalancer Service unless the EnvoyProxy says otherwise (its
    default type): without the program's Service in front, the Gateway's listeners are the entry point."""

    def plant(res):
        res.remove(_one(res, "Service", gateway.ENTRY_SERVICE))
        proxy = next(r for r in res if r.kind == "EnvoyProxy")
        proxy.props["spec"]["provider"]["kubernetes"]["envoyService"].pop("type")  # Envoy Gateway's default: LoadBalancer
        gw = _one(res, "Gateway", gateway.GATEWAY_NAME)
        gw.props["spec"]["listeners"] = [ln for ln in gw.props["spec"]["listeners"] if ln["name"] == "http"]
        for ref in _model_route(res).props["spec"]["parentRefs"]:
            ref["sectionName"] = "http"

    assert _plant(prod, plant) == ["Gateway exposed by Envoy's own LoadBalancer without TLS: port 80: listener http serves plain HTTP"]
    # control: the rendered proxy's Service is a ClusterIP, so the Gateway itself is not judged
    res = _res(prod)
    assert next(r for r in res if r.kind == "EnvoyProxy").props["spec"]["provider"]["kubernetes"]["envoyService"]["type"] == "ClusterIP"
