"""The policy pack sees each isolation class of issue 24 on a planted violation, on the resources a
stack renders: an administrator role, a role outside the deploy boundary, a deploy role without
one (item 3); and the rendered training role carries the registry guards (item 8)."""

from __future__ import annotations

import copy
import json

import pytest

from components.lib import iam
from policy import rules
from tools import iam_eval, mock_engine

GITHUB = "arn:aws:iam::{}:oidc-provider/token.actions.githubusercontent.com"


@pytest.fixture(scope="module")
def prod_ci():
    acct = mock_engine.stack_config("prod")[0]["mlplatform:cluster"]
    account = json.loads(acct)["accountId"]
    return mock_engine.run(
        "prod", overrides={"mlplatform:ci": {"githubRepo": "acme/mlplatform", "githubOidcProvider": GITHUB.format(account)}}
    )


def _res(result) -> list[rules.Res]:
    return [rules.Res(type=r.type, props=copy.deepcopy(r.inputs), urn=r.urn, name=r.name, parent=r.parent) for r in result.records]


def _deploy_role(res):
    (role,) = [r for r in res if r.type == "aws:iam/role:Role" and r.props.get("name") == "mlplatform-prod-ci-deploy"]
    return role


def test_the_rendered_stack_passes(prod_ci):
    res = _res(prod_ci)
    assert _deploy_role(res).props["permissionsBoundary"]  # the rule has something to judge
    assert rules.iam_roles_bounded(res) == []
    assert rules.STACK_RULES["iam-roles-bounded"][0] is rules.iam_roles_bounded


def test_planted_administrator_attachment_is_caught(prod_ci):
    res = _res(prod_ci)
    role = _deploy_role(res)
    res.append(
        rules.Res(
            "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
            {"role": role.props["name"], "policyArn": "arn:aws:iam::aws:policy/AdministratorAccess"},
            urn="planted-admin",
        )
    )
    assert rules.iam_roles_bounded(res) == [
        ("planted-admin", "a role of the stack is an AWS administrator (AdministratorAccess): give it a bounded policy of its own")
    ]


def test_planted_role_without_the_boundary_is_caught(prod_ci):
    res = _res(prod_ci)
    workload = next(r for r in res if r.type == "aws:iam/role:Role" and r is not _deploy_role(res))
    del workload.props["permissionsBoundary"]
    assert rules.iam_roles_bounded(res) == [(workload.urn, "IAM role without the stack's permission boundary")]


def test_planted_deploy_role_without_its_boundary_policy_is_caught(prod_ci):
    """The old shape: the deploy role, no boundary anywhere."""
    res = [r for r in _res(prod_ci) if r.type != "aws:iam/policy:Policy"]
    for r in res:
        if r.type == "aws:iam/role:Role":
            r.props.pop("permissionsBoundary", None)
    found = rules.iam_roles_bounded(res)
    role = _deploy_role(res)
    assert (role.urn, "CI deploy role without a deploy boundary policy (mlplatform-<stack>-deploy-boundary)") in found
    assert (role.urn, "IAM role without the stack's permission boundary") in found


def test_the_training_role_renders_the_registry_guards():
    res = mock_engine.run("dev")
    (policy,) = [p for p in res.of_type("aws:iam/rolePolicy:RolePolicy") if p.name == "mlplatform-mnist-training-store-policy"]
    doc = json.loads(policy.inputs["policy"])
    by_sid = {s["Sid"]: s for s in doc["Statement"]}
    bucket = by_sid["List"]["Resource"]
    assert by_sid["NoRejections"]["Resource"] == [f"{bucket}/models/mnist/rejected/*"]
    assert by_sid["NoPointers"]["Effect"] == "Deny" and by_sid["NoPointers"]["Resource"] == [
        f"{bucket}/models/mnist/aliases/*",
        f"{bucket}/models/mnist/audit/*",
        f"{bucket}/models/mnist/LATEST",
    ]
    assert by_sid["CreateOnly"] == {
        "Sid": "CreateOnly",
        "Effect": "Deny",
        "Action": ["s3:PutObject"],
        "Resource": [f"{bucket}/models/mnist/*"],
        "Condition": {"Null": {"s3:if-none-match": "true"}},
    }
    assert "s3:DeleteObject" not in json.dumps(
        [s for s in doc["Statement"] if "models/" in json.dumps(s.get("Resource")) and s["Effect"] == "Allow"]
    )
    assert iam.REGISTRY_PREFIX == "models/"


@pytest.fixture(scope="module")
def dev():
    return mock_engine.run("dev")


def _release(result, chart: str) -> rules.Res:
    (r,) = [r for r in _res(result) if r.type == "kubernetes:helm.sh/v3:Release" and r.props.get("chart") == chart]
    return r


def test_planted_unpinned_rollouts_plugin_is_caught(dev):
    """Item 7: the controller fetches the Gateway API plugin at every start."""
    rule = rules.RESOURCE_RULES["rollouts-plugins-pinned"][0]
    release = _release(dev, "argo-rollouts")
    (plugin,) = release.props["values"]["controller"]["trafficRouterPlugins"]
    assert rule(release) == []
    plugin.pop("sha256")
    assert rule(release) == [f"plugin 'argoproj-labs/gatewayAPI' is fetched from {plugin['location']} without a sha256"]
    plugin["sha256"] = "latest"
    assert len(rule(release)) == 1
    plugin["location"] = "file:///home/argo-rollouts/plugin-bin/gatewayapi"  # baked into a pinned image
    assert rule(release) == []


def test_planted_pushgateway_scrape_without_name_filter_is_caught(dev):
    """Item 8: honorLabels without the keep relabeling lets a push forge a canary's 5xx ratio."""
    rule = rules.RESOURCE_RULES["pushgateway-scrape-confined"][0]
    release = _release(dev, "prometheus-pushgateway")
    monitor = release.props["values"]["serviceMonitor"]
    assert monitor["honorLabels"] is True and rule(release) == []
    expected = ["the Pushgateway is scraped with honorLabels and no keep of its metric names: a push can forge any series"]
    keep = monitor.pop("metricRelabelings")
    assert rule(release) == expected
    monitor["metricRelabelings"] = [{**keep[0], "regex": ".*"}]  # a keep that keeps everything
    assert rule(release) == expected
    monitor["metricRelabelings"] = keep
    monitor["honorLabels"] = False  # without honorLabels the scrape's own job/instance labels win
    assert rule(release) == []


ADMIN = "arn:aws:iam::aws:policy/AdministratorAccess"
ALL = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})


@pytest.mark.parametrize(
    "type_, props, message",
    [
        ("aws:iam/role:Role", {"name": "x", "managedPolicyArns": [ADMIN]}, "is an AWS administrator"),
        (
            "aws:iam/policyAttachment:PolicyAttachment",
            {"roles": ["mlplatform-prod-ci-deploy"], "policyArn": ADMIN},
            "is an AWS administrator",
        ),
        (
            "aws:iam/rolePolicyAttachmentsExclusive:RolePolicyAttachmentsExclusive",
            {"roleName": "x", "policyArns": [ADMIN]},
            "is an AWS administrator",
        ),
        ("aws:iam/role:Role", {"name": "y", "permissionsBoundary": ADMIN}, "bounds nothing"),
        (
            "aws:iam/rolePolicy:RolePolicy",
            {"role": "mlplatform-mnist-serving-store-role-id", "policy": ALL},
            "every action on every resource",
        ),
        ("aws:iam/role:Role", {"name": "z", "inlinePolicies": [{"name": "p", "policy": ALL}]}, "every action on every resource"),
    ],
)
def test_planted_administrator_by_another_route_is_caught(prod_ci, type_, props, message):
    """AdministratorAccess however attached, an inline * on * on any role but the (bounded) deploy
    role's own, a boundary that bounds nothing."""
    res = _res(prod_ci)
    boundary = _deploy_role(res).props["permissionsBoundary"]
    if type_ == "aws:iam/role:Role":
        props = {"permissionsBoundary": boundary, **props}
    res.append(rules.Res(type_, props, urn="planted"))
    assert [m for urn, m in rules.iam_roles_bounded(res) if urn == "planted" and message in m], rules.iam_roles_bounded(res)
    # control: the deploy role's own inline * on * (bounded) is what the stack renders, and passes
    assert rules.iam_roles_bounded(_res(prod_ci)) == []


def test_planted_allow_all_network_policy_beside_default_deny_is_caught(dev):
    res = _res(dev)
    assert rules.namespaces_default_deny(res) == []
    open_all = {
        "kind": "NetworkPolicy",
        "metadata": {"name": "open", "namespace": "ml-serving"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "ingress": [{}], "egress": [{}]},
    }
    res.append(rules.Res("kubernetes:networking.k8s.io/v1:NetworkPolicy", open_all, urn="planted"))
    assert rules.namespaces_default_deny(res) == [
        ("planted", "NetworkPolicy 'open' allows all ingress (a rule with no peers and no ports)"),
        ("planted", "NetworkPolicy 'open' allows all egress (a rule with no peers and no ports)"),
    ]


@pytest.mark.parametrize("regex", ["(.*)", ".*|mlplatform_training_.+", "mlplatform_training_.+|.+", "[a-z_:]+", "(["])
def test_planted_pushgateway_keep_that_keeps_everything_is_caught(dev, regex):
    rule = rules.RESOURCE_RULES["pushgateway-scrape-confined"][0]
    release = _release(dev, "prometheus-pushgateway")
    release.props["values"]["serviceMonitor"]["metricRelabelings"][0]["regex"] = regex
    assert rule(release) == ["the Pushgateway is scraped with honorLabels and no keep of its metric names: a push can forge any series"]


def _store_policies(result) -> list[rules.Res]:
    return [r for r in _res(result) if r.type == "aws:iam/rolePolicy:RolePolicy" and r.name.endswith("-store-policy")]


def _publishes(policy: rules.Res, model: str) -> bool:
    """Whether the document lets its role create a version file in ``models/<model>/`` (evaluated)."""
    doc = json.loads(policy.props["policy"])
    bucket = next(s for s in doc["Statement"] if s.get("Sid") == "List")["Resource"]
    principal = iam_eval.Principal("arn:aws:iam::000000000000:role/r", [policy.props["policy"]])
    req = iam_eval.Request("s3:PutObject", f"{bucket}/models/{model}/v1/f", "000000000000", context={"s3:if-none-match": "*"})
    return iam_eval.allowed(principal, req)


def test_every_rendered_registry_writer_is_guarded(dev):
    rule = rules.RESOURCE_RULES["registry-writers-guarded"][0]
    policies = _store_policies(dev)
    writers = {p.name for p in policies if _publishes(p, p.name.removeprefix("mlplatform-").split("-training")[0].split("-import")[0])}
    # every workload that publishes on dev: the TF/ONNX trainings and the LLM import
    assert writers >= {"mlplatform-mnist-training-store-policy", "mlplatform-chat-import-store-policy"}
    assert [(p.name, rule(p)) for p in policies if rule(p)] == []


def _mnist_training(dev) -> tuple[rules.Res, dict, str]:
    (policy,) = [p for p in _store_policies(dev) if p.name == "mlplatform-mnist-training-store-policy"]
    doc = json.loads(policy.props["policy"])
    return policy, doc, next(s for s in doc["Statement"] if s["Sid"] == "List")["Resource"]


@pytest.mark.parametrize(
    ("sid", "expected"),
    [
        ("NoPointers", "{aliases/x.json, LATEST, audit/x/1.json}: pointers move only by the pipeline"),
        ("NoRejections", "{rejected/x.json}"),
        ("CreateOnly", "{v/f without If-None-Match}"),
    ],
)
def test_planted_training_role_that_can_move_pointers_is_caught(dev, sid, expected):
    """Item 8: without each guard, code a training run executes could move champion/LATEST (what the
    servers follow), write a rejection, or replace a published version's files."""
    rule = rules.RESOURCE_RULES["registry-writers-guarded"][0]
    policy, doc, bucket = _mnist_training(dev)
    doc["Statement"] = [s for s in doc["Statement"] if s.get("Sid") != sid]
    policy.props["policy"] = json.dumps(doc)
    (found,) = rule(policy)
    assert found == f"allows puts on {bucket.removeprefix('arn:aws:s3:::')}/models/mnist/{expected}" or (
        found.startswith(f"allows puts on {bucket.removeprefix('arn:aws:s3:::')}/models/mnist/") and expected in found
    )


def _planted(bucket: str) -> dict[str, list[dict]]:
    """The review's cases (issue 24 item 8 attack review): each Allow beside the rendered guards (or
    the guards rewritten) must still be seen, by evaluation, not by the text of the guards."""
    allow = {"Effect": "Allow", "Resource": f"{bucket}/models/*"}
    return {
        "exact alias key": [{"Effect": "Allow", "Action": "s3:PutObject", "Resource": f"{bucket}/models/mnist/aliases/champion.json"}],
        "alias key by wildcard": [{"Effect": "Allow", "Action": "s3:PutObject", "Resource": f"{bucket}/models/mnist/alias*"}],
        "mid wildcard": [{"Effect": "Allow", "Action": "s3:PutObject", "Resource": f"{bucket}/*/aliases/*"}],
        "action wildcard": [{**allow, "Action": "s3:PutObj*"}],
        "NotAction": [{**allow, "NotAction": "s3:DeleteObject"}],
        "lowercase action": [{**allow, "Action": "s3:putobject"}],
        "every bucket": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        "NotResource": [{"Effect": "Allow", "Action": "s3:PutObject", "NotResource": f"{bucket}/checkpoints/*"}],
        "another model by prefix": [{"Effect": "Allow", "Action": "s3:PutObject", "Resource": f"{bucket}/models/mnist*"}],
        "another named model": [{"Effect": "Allow", "Action": "s3:PutObject", "Resource": f"{bucket}/models/mnist-torch/*"}],
        "allow under a condition": [{**allow, "Action": "s3:PutObject", "Condition": {"StringEquals": {"aws:PrincipalTag/x": "never"}}}],
    }


# Beside the rendered guards these two are denied (an explicit Deny wins): no violation there.
_DENIED_BESIDE_GUARDS = {"exact alias key", "alias key by wildcard"}


@pytest.mark.parametrize("case", list(_planted("b")))
def test_planted_registry_write_is_caught(dev, case):
    """Each case as the review planted it (the whole document), and beside the rendered guards."""
    rule = rules.RESOURCE_RULES["registry-writers-guarded"][0]
    policy, doc, bucket = _mnist_training(dev)
    assert rule(policy) == []  # control: the rendered document passes
    planted = _planted(bucket)[case]
    assert rule(rules.Res(policy.type, {"policy": json.dumps({"Statement": planted})}, name="planted")), case
    doc["Statement"] += planted
    policy.props["policy"] = json.dumps(doc)
    assert bool(rule(policy)) is (case not in _DENIED_BESIDE_GUARDS), case


@pytest.mark.parametrize(
    ("lost", "condition"),
    [
        # a guard that holds only under another key, or spelled in lowercase, is judged as AWS would
        ("NoPointers", {"StringEquals": {"aws:PrincipalTag/team": "ml"}}),
        ("CreateOnly", {"Null": {"s3:if-none-match": "false"}}),
    ],
)
def test_planted_guard_that_does_not_apply_is_caught(dev, lost, condition):
    rule = rules.RESOURCE_RULES["registry-writers-guarded"][0]
    policy, doc, _ = _mnist_training(dev)
    for s in doc["Statement"]:
        if s.get("Sid") == lost:
            s["Condition"] = condition
    policy.props["policy"] = json.dumps(doc)
    assert rule(policy)


def test_guards_spelled_otherwise_still_count(dev):
    """Evaluation, not text: lowercase actions and a wildcard action in the guards deny the same."""
    rule = rules.RESOURCE_RULES["registry-writers-guarded"][0]
    policy, doc, _ = _mnist_training(dev)
    for s in doc["Statement"]:
        if s["Effect"] == "Deny":
            s["Action"] = ["s3:put*"]
    policy.props["policy"] = json.dumps(doc)
    assert rule(policy) == []


@pytest.mark.parametrize(
    ("type_", "props"),
    [
        ("aws:iam/rolePolicyAttachment:RolePolicyAttachment", {"role": "r", "policyArn": "arn:aws:iam::aws:policy/AmazonS3FullAccess"}),
        ("aws:iam/role:Role", {"name": "r", "managedPolicyArns": ["arn:aws:iam::aws:policy/PowerUserAccess"]}),
        (
            "aws:iam/role:Role",
            {
                "name": "r",
                "inlinePolicies": [
                    {"name": "p", "policy": json.dumps({"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]})}
                ],
            },
        ),
    ],
)
def test_planted_registry_writer_by_another_route_is_caught(type_, props):
    assert rules.RESOURCE_RULES["registry-writers-guarded"][0](rules.Res(type_, props, name="planted"))


def test_planted_writer_of_the_whole_registry_is_caught(dev):
    rule = rules.RESOURCE_RULES["registry-writers-guarded"][0]
    policy, doc, bucket = _mnist_training(dev)
    doc["Statement"].append({"Effect": "Allow", "Action": "s3:*", "Resource": f"{bucket}/*"})
    policy.props["policy"] = json.dumps(doc)
    name = bucket.removeprefix("arn:aws:s3:::")
    assert f"allows puts on {name}/models/zz-probe-model/: a wildcard reaches models it does not name" in rule(policy)


def test_the_pipelines_identities_may_move_pointers(prod_ci):
    """The receiving stacks' promoter and the CI deploy role are the pipeline's identities: they write
    candidate, aliases and audit. The exemption is what lets them pass (renamed, they are caught); the
    deploy boundary grants nothing and is not judged."""
    rule = rules.RESOURCE_RULES["registry-writers-guarded"][0]
    (promoter,) = [r for r in _res(mock_engine.run("staging")) if r.name == "mlplatform-model-promoter-policy"]
    (deploy,) = [r for r in _res(prod_ci) if r.type == "aws:iam/rolePolicy:RolePolicy" and r.name.endswith("-ci-deploy-deploy")]
    for identity in (promoter, deploy):
        assert rule(identity) == []
        assert rule(rules.Res(identity.type, identity.props, name="renamed"))
    assert [(r.name, rule(r)) for r in _res(prod_ci) if rule(r)] == []
