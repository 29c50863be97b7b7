"""Per-environment deploy roles for GitHub Actions / GitLab CI (issue 13 item 1): each deploy stack owns
one role that trusts only its own environment's OIDC tokens, and can reach its own cluster."""

from __future__ import annotations

import json

import pytest
import yaml

from components.config import ConfigError, validate
from tests.conftest import ROOT
from tools import mock_engine

GITHUB_PROVIDER = "arn:aws:iam::111122223333:oidc-provider/token.actions.githubusercontent.com"
GITLAB_PROVIDER = "arn:aws:iam::111122223333:oidc-provider/gitlab.example.com"
CI = {
    "githubRepo": "acme/mlplatform",
    "githubOidcProvider": GITHUB_PROVIDER,
    "gitlabProject": "acme/ml/platform",
    "gitlabOidcProvider": GITLAB_PROVIDER,
}


@pytest.fixture(scope="module")
def prod_with_ci():
    return mock_engine.run("prod", overrides={"mlplatform:ci": CI})


def _role(result):
    roles = [r for r in result.of_type("aws:iam/role:Role") if r.inputs.get("name", "").endswith("-ci-deploy")]
    assert len(roles) == 1, [r.inputs.get("name") for r in roles]
    return roles[0]


def test_deploy_role_trusts_only_this_environments_tokens(prod_with_ci):
    role = _role(prod_with_ci)
    assert role.inputs["name"] == "mlplatform-prod-ci-deploy"
    policy = json.loads(role.inputs["assumeRolePolicy"])
    by_provider = {s["Principal"]["Federated"]: s for s in policy["Statement"]}
    assert set(by_provider) == {GITHUB_PROVIDER, GITLAB_PROVIDER}
    for s in policy["Statement"]:
        assert s["Effect"] == "Allow" and s["Action"] == "sts:AssumeRoleWithWebIdentity"
        assert set(s["Condition"]) == {"StringEquals"}  # exact subjects: no StringLike wildcard
    github = by_provider[GITHUB_PROVIDER]["Condition"]["StringEquals"]
    assert github == {
        "token.actions.githubusercontent.com:aud": "sts.amazonaws.com",
        "token.actions.githubusercontent.com:sub": "repo:acme/mlplatform:environment:prod",
    }
    gitlab = by_provider[GITLAB_PROVIDER]["Condition"]["StringEquals"]
    assert gitlab == {
        "gitlab.example.com:aud": "mlplatform-prod",  # the audience only prod's deploy job asks for
        "gitlab.example.com:sub": "project_path:acme/ml/platform:ref_type:branch:ref:main",
    }


def test_deploy_role_can_deploy_and_reach_its_cluster(prod_with_ci):
    role_name = _role(prod_with_ci).inputs["name"]
    attached = [
        a.inputs["policyArn"]
        for a in prod_with_ci.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
        if a.inputs["role"] == role_name
    ]
    assert attached == []  # no AdministratorAccess: a bounded policy (tests/stacks/test_environment_isolation.py)
    assert _role(prod_with_ci).inputs["permissionsBoundary"].endswith(":policy/mlplatform-prod-deploy-boundary")
    (entry,) = [e for e in prod_with_ci.of_type("aws:eks/accessEntry:AccessEntry") if "ci-deploy" in e.inputs["principalArn"]]
    assert entry.inputs["clusterName"] == "mlplatform-prod" and entry.inputs["principalArn"].endswith(f":role/{role_name}")
    (assoc,) = [
        a
        for a in prod_with_ci.of_type("aws:eks/accessPolicyAssociation:AccessPolicyAssociation")
        if "ci-deploy" in a.inputs["principalArn"]
    ]
    assert assoc.inputs["policyArn"] == "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"
    assert assoc.inputs["accessScope"] == {"type": "cluster"}
    assert prod_with_ci.outputs["ciDeployRoleArn"].endswith(":role/mlplatform-prod-ci-deploy")


def test_no_ci_config_no_role(result, stack):
    assert [r for r in result.of_type("aws:iam/role:Role") if r.inputs.get("name", "").endswith("-ci-deploy")] == []
    assert result.outputs.get("ciDeployRoleArn") is None


def test_github_only():
    result = mock_engine.run("dev", overrides={"mlplatform:ci": {"githubRepo": "acme/mlplatform", "githubOidcProvider": GITHUB_PROVIDER}})
    (s,) = json.loads(_role(result).inputs["assumeRolePolicy"])["Statement"]
    assert s["Condition"]["StringEquals"]["token.actions.githubusercontent.com:sub"] == "repo:acme/mlplatform:environment:dev"


def _raw(stack: str, ci: dict) -> dict:
    doc = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]
    return {**{k.removeprefix("mlplatform:"): v for k, v in doc.items()}, "ci": ci}


@pytest.mark.parametrize(
    "name, ci, key",
    [
        ("local", CI, "ci"),
        ("prod", {"githubRepo": "acme/mlplatform"}, "ci.githubOidcProvider"),
        ("prod", {"gitlabOidcProvider": GITLAB_PROVIDER}, "ci.gitlabProject"),
        ("prod", {"githubRepo": "acme/mlplatform", "githubOidcProvider": GITLAB_PROVIDER}, "ci.githubOidcProvider"),
        ("prod", {"githubRepo": "acme/ml:platform", "githubOidcProvider": GITHUB_PROVIDER}, "ci.githubRepo"),
        ("prod", {"gitlabProject": "acme", "gitlabOidcProvider": GITLAB_PROVIDER}, "ci.gitlabProject"),
        ("prod", {"githubRepo": "acme/mlplatform", "githubOidcProvider": "arn:aws:iam::1:oidc-provider/x"}, "ci.githubOidcProvider"),
    ],
)
def test_ci_config_refused_in_one_line(name, ci, key):
    with pytest.raises(ConfigError) as info:
        validate(_raw(name, ci), f"stacks/Pulumi.{name}.yaml")
    lines = [ln for ln in str(info.value).splitlines() if ":ci" in ln]
    assert len(lines) == 1 and lines[0].startswith(f"stacks/Pulumi.{name}.yaml: mlplatform:{key}"), str(info.value)


def test_gitlab_jobs_ask_for_the_audience_their_environments_role_trusts():
    """Issue 24 item 4: GitLab's subject is the branch for every deploy job of main, so the role of an
    environment trusts only the audience that environment's job asks for; a dev token is refused by
    prod's role (and staging's)."""
    from components.cluster.ci_deploy_role import trust_policy
    from components.config import CiConfig
    from tests.unit.test_pipeline import gitlab_ci

    doc = gitlab_ci()
    cfg = CiConfig(gitlab_project="acme/ml/platform", gitlab_oidc_provider=GITLAB_PROVIDER)

    def trusted(stack):
        (s,) = trust_policy(cfg, stack)["Statement"]
        return s["Condition"]["StringEquals"]["gitlab.example.com:aud"]

    asked = {env: doc[f"deploy:{env}"]["id_tokens"]["AWS_ID_TOKEN"]["aud"] for env in ("dev", "staging", "prod")}
    assert asked == {env: trusted(env) for env in asked}
    assert len(set(asked.values())) == 3
    # every job that assumes a role names its audience itself (none inherits a shared one)
    for name in ("ephemeral:up", "ephemeral:destroy"):
        assert doc[name]["id_tokens"]["AWS_ID_TOKEN"]["aud"] == "mlplatform-preview", name
    assert "aud" not in str(doc[".aws-oidc"].get("id_tokens", ""))
