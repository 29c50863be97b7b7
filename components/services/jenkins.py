"""Jenkins: the one CI/CD controller (on the stack whose config enables it: see ``config.JENKINS_ENVIRONMENT``),
the jenkinsci chart configured entirely as code (JCasC).

Trust model (README "CI/CD"): whoever can push a branch or open a pull request controls what the
root ``Jenkinsfile`` does, so nothing that file can reach may deploy a shared environment.

- Folder ``preview``: the multibranch job ``preview/mlplatform`` (GitHub branch source: branches and
  pull requests). Each branch or PR build runs that branch's own Jenkinsfile (fork PRs from users
  without write access: the target branch's), so the folder holds no cloud credential at all: only the
  read-only GitHub scan/clone token and a separate token that can only comment on PRs
  (``github-comment``). Whatever a PR writes in its Jenkinsfile, it can name nothing else.
- Folder ``ephemeral`` (issue 24 review M2): the ephemeral stacks' AWS identity and Pulumi passphrase,
  seen only by its two jobs, each a pipeline whose script is read from ``jenkins.branch`` (main) and
  never from a PR: ``ephemeral/pr-stack`` (``ci/ephemeral.Jenkinsfile``: a PR's stack at the commit a
  maintainer reviewed, started only by the prod approvers, who alone hold Job/Build on it) and the
  hourly reaper. The approval is Jenkins' authorization, outside anything a PR can edit.
- Sign-in and authorization (``security_jcasc``): GitHub OAuth, a project matrix where only
  ``jenkins.admins`` administer; the prod approvers read and approve, never administer (Administer
  passes any ``input``); anonymous users get nothing. Builds run as ``BUILD_USER`` (authorize-project),
  which may read and use its own folder's credentials, never as SYSTEM.
- Folder ``deploy``: one pipeline job, ``deploy/main``, that builds ``jenkins.branch`` (main) and nothing
  else, from ``ci/deploy.Jenkinsfile`` as merged there (branch protection on GitHub is the review gate).
  Its folder credentials are one AWS identity and one Pulumi passphrase per environment it deploys,
  ``DEPLOY_ENVIRONMENTS`` (dev and staging); each stage binds only its own environment's. Never prod's:
  this cluster is staging's, and a credential on it is reachable by whoever administers it (staging's
  deploy identity is cluster admin here, and deploys Jenkins itself). Prod deploys from prod's own
  identity: GitHub environment ``prod`` (required reviewers) or GitLab ``deploy:prod`` (manual,
  protected), each an OIDC role of prod's account (components/cluster/ci_deploy_role.py).
  Folder credentials are invisible to jobs outside the folder, so no PR build can name them.
- Agents: every agent pod runs in the build namespace (Pod Security ``privileged`` for rootless BuildKit, no Secrets in it,
  agents' service account without a token or any RBAC). The chart grants the controller pod rights in
  the agent namespace only, so a pipeline-defined pod template cannot land next to the controller's
  home volume or Secrets. ``python`` (tests, Pulumi CLI) and ``builder`` (plus a rootless BuildKit
  daemon: uid 1000, not privileged, capabilities SETUID/SETGID only, see ``BUILDKITD_SECURITY``; Pulumi's docker-build provider
  sends builds there through a buildx ``remote`` builder, so no Docker socket and no privileged pod).
  The namespace may only talk to the controller, DNS and HTTP(S) outside the cluster.
- Other clusters: the deploy stages reach each environment with that environment's credentials, and
  ``make train-wait`` uses that stack's ``kubeconfig`` output, never the in-cluster context.
- Credential values come from the Pulumi secret config key ``jenkinsCredentials`` (a JSON object with
  the keys in ``CREDENTIAL_KEYS``), put in a Kubernetes Secret the controller reads at start (JCasC).
  Without it the folders carry no credentials and every stage that needs one fails closed.
- Admin credentials: a generated password in a Kubernetes Secret (existingSecret), never in values.
  Plugins pinned (and their dependencies at the minimum versions they declare: reproducible).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random
import yaml

from components.config import JenkinsConfig
from components.lib import helm
from components.lib.network import IN_CLUSTER, egress_except_metadata

ADMIN_SECRET = "jenkins-admin"
AGENT_SA = "jenkins-agent"
CONTROLLER_SA = "jenkins"
BUILDER = "mlplatform-buildkit"  # buildx builder name the builder agent registers (registry.builder)
AGENT_IMAGE = "pulumi/pulumi-python-3.11:3.272.0"  # tests only: a stack with Jenkins names its toolbox (jenkins.agentImage)
BUILDKIT_IMAGE = "moby/buildkit:v0.23.2-rootless"
BUILDKIT_ADDR = "tcp://127.0.0.1:1234"  # the sidecar daemon, reached by the agent over the pod's loopback
# Rootless BuildKit as upstream runs it on Kubernetes (moby/buildkit examples/kubernetes/pod.rootless.yaml
# and deployment+service.rootless.yaml: uid/gid 1000, --oci-worker-no-process-sandbox, seccomp and
# AppArmor Unconfined; docs/rootless.md: seccomp for unshare/mount, AppArmor for mount), minus every
# capability but the two the setuid newuidmap/newgidmap keep to map the build's user namespace
# (inside it, rootlesskit gets a full set of its own). allowPrivilegeEscalation stays on, as upstream
# has it: no_new_privs would switch off those setuid helpers. Unconfined profiles are beyond Pod
# Security `baseline`, so the build namespace is `privileged` (platform.NAMESPACES) and holds
# nothing else; the policy pack excuses exactly these three settings for this one container.
CONTROLLER_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}
BUILDKITD_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "privileged": False,
    "allowPrivilegeEscalation": True,
    "capabilities": {"drop": ["ALL"], "add": ["SETUID", "SETGID"]},
    "seccompProfile": {"type": "Unconfined"},
    "appArmorProfile": {"type": "Unconfined"},
}
PLUGINS = [
    # the chart's own pins
    "kubernetes:4540.v612369217f87",
    "workflow-aggregator:608.v67378e9d3db_1",
    "git:5.10.1",
    "configuration-as-code:2115.vf6de120eef70",
    # ours
    "job-dsl:1.93",
    "workflow-multibranch:806.vb_b_688f609ee9",
    "github-branch-source:1822.v9eec8e5e69e3",
    "pipeline-utility-steps:2.19.0",
    "timestamper:1.30",
    "prometheus:860.v532442b_44e9a_",
    # sign-in and authorization (issue 24 item 5): GitHub OAuth realm, matrix authorization
    "github-oauth:685.v53b_070455063",
    "matrix-auth:3.3",
    # builds run as a bounded identity, not SYSTEM (issue 24 item 5; security_jcasc)
    "authorize-project:534.v2f208c45e11c",
]

# The stacks deploy/main rolls out, in order (ci/deploy.Jenkinsfile); PR builds get `ephemeral` only.
# What the deploy folder holds credentials for: the environments no more sensitive than the cluster
# Jenkins runs on (config.JENKINS_ENVIRONMENT, staging). Prod's credentials never live on a non-prod
# cluster (issue 24 review H2).
DEPLOY_ENVIRONMENTS = ("dev", "staging")
PREVIEW_FOLDER = "preview"
EPHEMERAL_FOLDER = "ephemeral"
DEPLOY_FOLDER = "deploy"
# The one job that deploys a PR's code (ci/ephemeral.Jenkinsfile from main), and what its starters hold.
PR_STACK_JOB = f"{EPHEMERAL_FOLDER}/pr-stack"
PR_STACK_PERMISSIONS = ["Job/Build", "Job/Cancel"]
CREDENTIALS_SECRET = "jenkins-ci-credentials"
SECRETS_DIR = "/run/secrets/additional"  # where the chart mounts controller.additionalExistingSecrets


@dataclass(frozen=True)
class Credential:
    """A username/password credential in a folder's store. Every value is read from a key of
    ``CREDENTIALS_SECRET``; credentials with nothing to call a username get a fixed label instead."""

    id: str
    secret_key: str
    description: str
    user_key: str | None = None
    username: str = ""


def _aws(env: str) -> Credential:
    return Credential(
        f"aws-{env}", f"aws-{env}-secret-access-key", f"AWS identity of the {env} stack(s)", user_key=f"aws-{env}-access-key-id"
    )


def _passphrase(env: str) -> Credential:
    return Credential(f"pulumi-{env}", f"pulumi-passphrase-{env}", f"Pulumi passphrase of the {env} stack(s)", username="pulumi")


GITHUB = Credential("github", "github-token", "GitHub user + token: repository scan and clone (read-only)", user_key="github-user")
# Comments only (issue 24 item 11): a fine-grained token whose one permission is "Pull requests: write",
# separate from the scan/clone token, bound in the PR-comment stage only (Jenkinsfile).
GITHUB_COMMENT = Credential(
    "github-comment", "github-comment-token", "GitHub user + token that can only comment on pull requests", user_key="github-comment-user"
)
NOTIFY = Credential("notify-webhook", "notify-webhook-url", "pipeline notifications", username="webhook")
FOLDER_CREDENTIALS: dict[str, tuple[Credential, ...]] = {
    PREVIEW_FOLDER: (GITHUB, GITHUB_COMMENT),
    EPHEMERAL_FOLDER: (_aws("ephemeral"), _passphrase("ephemeral"), GITHUB),
    DEPLOY_FOLDER: (*(c for env in DEPLOY_ENVIRONMENTS for c in (_aws(env), _passphrase(env))), GITHUB, NOTIFY),
}
# Read by the controller itself (JCasC), in no folder: the OAuth App's secret.
OAUTH_SECRET_KEY = "github-oauth-client-secret"
CREDENTIAL_KEYS = sorted(
    {k for creds in FOLDER_CREDENTIALS.values() for c in creds for k in (c.user_key, c.secret_key) if k} | {OAUTH_SECRET_KEY}
)

_GROOVY_SAFE = re.compile(r"^[A-Za-z0-9 ._:/@,+=()*-]*$")


def _q(value: str) -> str:
    """A single-quoted Groovy literal. Config validation already restricts these values; this refuses
    anything that could end the literal or start an interpolation (JCasC's ``${``) all the same."""
    if not _GROOVY_SAFE.match(value):
        raise ValueError(f"refusing to paste {value!r} into job-dsl Groovy")
    return f"'{value}'"


def _secret_value(key: str) -> str:
    # JCasC pastes the mounted file base64-encoded (`${base64:${file:PATH}}`, configuration-as-code's
    # demos/credentials/README.md), so no character of the value can break out of the Groovy literal;
    # job-dsl decodes it.
    return "new String('${base64:${file:" + f"{SECRETS_DIR}/{CREDENTIALS_SECRET}-{key}" + "}}'.decodeBase64(), 'UTF-8')"


def _folder(name: str, description: str, with_credentials: bool) -> str:
    lines = [f"folder({_q(name)}) {{", f"  description({_q(description)})"]
    if with_credentials:
        lines += [
            "  properties {",
            "    folderCredentialsProperty {",
            "      domainCredentials {",
            "        domainCredentials {",
            "          domain { name(''); description('') }",
            "          credentials {",
        ]
        for c in FOLDER_CREDENTIALS[name]:
            username = _secret_value(c.user_key) if c.user_key else _q(c.username)
            lines += [
                "            usernamePassword {",
                f"              scope('GLOBAL'); id({_q(c.id)}); description({_q(c.description)})",
                f"              username({username}); usernameSecret({'true' if c.user_key else 'false'})",
                f"              password({_secret_value(c.secret_key)})",
                "            }",
            ]
        lines += ["          }", "        }", "      }", "    }", "  }"]
    return "\n".join([*lines, "}"])


def github_repo(repo_url: str) -> tuple[str, str]:
    """(owner, name) of a GitHub URL (config validation admits only https://github.com/OWNER/NAME[.git])."""
    owner, name = repo_url.removesuffix(".git").removeprefix("https://github.com/").split("/")
    return owner, name


def jobs_jcasc(repo_url: str, branch: str, with_credentials: bool, approvers: list[str]) -> str:
    """JCasC (job-dsl): the three folders with their credentials, the PR/branch job, the PR-stack job
    (startable by ``approvers`` only), the reaper and the deploy job, as the chart's configScripts entry."""
    owner, name = github_repo(repo_url)
    https = f"https://github.com/{owner}/{name}"
    hourly = "pipelineTriggers { triggers { cron { spec('H * * * *') } } }"
    script = "\n".join(
        [
            _folder(PREVIEW_FOLDER, "Branches and pull requests: tests and offline previews. No cloud credential.", with_credentials),
            _folder(
                EPHEMERAL_FOLDER,
                f"Ephemeral PR stacks, from the pipelines on {branch} only. Ephemeral credentials only.",
                with_credentials,
            ),
            _folder(
                DEPLOY_FOLDER, f"Deploys {branch} to every environment. Only jobs in this folder see its credentials.", with_credentials
            ),
            _pr_job(owner, name, https),
            _branch_pipeline_job(
                PR_STACK_JOB,
                _q(
                    f"The ephemeral stack of a PR at the commit you reviewed: see ci/ephemeral.Jenkinsfile (from {branch}). Approvers only."
                ),
                [_starters(approvers)],
                "ci/ephemeral.Jenkinsfile",
                https,
                branch,
                parameters=[
                    "stringParam('PR', '', 'The pull request number')",
                    "stringParam('COMMIT', '', 'The full SHA of the PR head you reviewed: exactly this commit is deployed')",
                ],
            ),
            _branch_pipeline_job(
                f"{EPHEMERAL_FOLDER}/reap-ephemeral-stacks",
                "'Destroys ephemeral pr-N stacks past their expiry'",
                [hourly],
                "ci/reap.Jenkinsfile",
                https,
                branch,
            ),
            _branch_pipeline_job(
                f"{DEPLOY_FOLDER}/main",
                _q(f"Deploys {branch} to {', '.join(DEPLOY_ENVIRONMENTS)}: see ci/deploy.Jenkinsfile. Builds this branch only."),
                ["pipelineTriggers { triggers { pollSCM { scmpoll_spec('H/5 * * * *') } } }"],
                "ci/deploy.Jenkinsfile",
                https,
                branch,
            ),
        ]
    )
    return yaml.safe_dump({"jobs": [{"script": script}]}, sort_keys=False)


def _starters(approvers: list[str]) -> str:
    """A job's matrix (matrix-auth 3.2+ job-dsl syntax) adding Job/Build to ``approvers`` on top of the
    global matrix, where nobody else but an administrator holds it (builds included: BUILD_USER)."""
    entries = " ".join(
        f"{'group' if '*' in a else 'user'} {{ name({_q(a)}); permissions({json.dumps(PR_STACK_PERMISSIONS)}) }}" for a in approvers
    )
    return f"authorizationMatrix {{ inheritanceStrategy {{ inheriting() }}; entries {{ {entries} }} }}"


def _pr_job(owner: str, name: str, https: str) -> str:
    """The multibranch job of the preview folder: every branch and pull request, each with its own Jenkinsfile."""
    return f"""multibranchPipelineJob('{PREVIEW_FOLDER}/mlplatform') {{
  description('Tests every branch and pull request, previews PRs on an ephemeral stack: see the Jenkinsfile')
  branchSources {{
    branchSource {{
      source {{
        github {{
          id('mlplatform')
          credentialsId('{GITHUB.id}')
          repoOwner({_q(owner)})
          repository({_q(name)})
          repositoryUrl({_q(https)})
          configuredByUrl(true)
          traits {{
            gitHubBranchDiscovery {{ strategyId(1) }}
            gitHubPullRequestDiscovery {{ strategyId(1) }}
          }}
        }}
      }}
    }}
  }}
  factory {{ workflowBranchProjectFactory {{ scriptPath('Jenkinsfile') }} }}
  orphanedItemStrategy {{ discardOldItems {{ numToKeep(20) }} }}
  triggers {{ periodicFolderTrigger {{ interval('5m') }} }}
  configure {{ node ->
    def traits = node / 'sources' / 'data' / 'jenkins.branch.BranchSource' / 'source' / 'traits'
    // Fork PRs: built, but with the target branch's Jenkinsfile unless the author has write access.
    traits << 'org.jenkinsci.plugins.github__branch__source.ForkPullRequestDiscoveryTrait' {{
      strategyId(1)
      trust(class: 'org.jenkinsci.plugins.github_branch_source.ForkPullRequestDiscoveryTrait$TrustPermission')
    }}
  }}
}}"""


def _branch_pipeline_job(
    job: str, description: str, properties: list[str], script_path: str, https: str, branch: str, parameters: list[str] | None = None
) -> str:
    """A pipeline job that runs ``script_path`` as merged on ``branch`` only (never a branch's or a PR's
    copy: the script is read from that ref, ``lightweight``); ``description`` is a Groovy literal,
    ``properties`` and ``parameters`` job-dsl blocks."""
    git = f"git {{ remote {{ url({_q(https + '.git')}); credentials('{GITHUB.id}') }}; branch({_q('refs/heads/' + branch)}) }}"
    params = f"\n  parameters {{ {'; '.join(parameters)} }}" if parameters else ""
    return f"""pipelineJob('{job}') {{
  description({description}){params}
  properties {{ {"; ".join(properties)} }}
  definition {{
    cpsScm {{
      scm {{ {git} }}
      scriptPath('{script_path}')
      lightweight(true)
    }}
  }}
}}"""


def env_jcasc(repo_url: str, prod_approvers: list[str]) -> str:
    """Global environment for pipelines: the GitHub owner/name the PR comments go to, and who may
    approve a PR's ephemeral stack (the ``submitter`` of its ``input``)."""
    owner, name = github_repo(repo_url)
    env = [
        {"key": "GITHUB_REPOSITORY", "value": f"{owner}/{name}"},
        {"key": "MLPLATFORM_PROD_APPROVERS", "value": ",".join(prod_approvers)},
    ]
    return yaml.safe_dump({"jenkins": {"globalNodeProperties": [{"envVars": {"env": env}}]}}, sort_keys=False)


def _entry(principal: str, permissions: list[str], group: bool = False) -> dict[str, Any]:
    """A matrix-auth 3.x entry: ``ORG*TEAM`` (and an org, ``group``) is a group of the GitHub realm
    (github-oauth grants each member an authority per org and per ``org*team``), anything else a user."""
    kind = "group" if group or "*" in principal else "user"
    return {kind: {"name": principal, "permissions": permissions}}


READ = ["Overall/Read", "Job/Read"]
# Every build runs as this user (authorize-project's global strategy), never as SYSTEM, which may do
# anything in Jenkins: start deploy/main from a PR's Jenkinsfile (`build job:`), read any job's
# config. It may read, check out and use the credentials of its own job's folder (Credentials/
# UseItem, enabled by USE_ITEM_PROPERTY), and nothing else: no Job/Build, no Configure, no Administer.
# An underscore cannot appear in a GitHub login, so nobody can sign in as it through the realm.
BUILD_USER = "mlplatform_builds"
BUILD_PERMISSIONS = ["Overall/Read", "Job/Read", "Credentials/UseItem"]
# Credentials/UseItem is off by default and then means Job/Configure (credentials plugin,
# CredentialsProvider.USE_ITEM: enabled by this system property, implied by Job.CONFIGURE).
USE_ITEM_PROPERTY = "-Dcom.cloudbees.plugins.credentials.UseItemPermission=true"
# authorize-project runs a build as anonymous when the user has no record (SpecificUsersAuthorizationStrategy
# .authenticate: User.get(id, false) == null), and the GitHub realm never creates one for a name that is
# not a GitHub login: an init script (chart controller.initScripts, run at every start) makes the record.
# Impersonated under the GitHub realm it gets the "authenticated" authority only (Jenkins core
# User.getUserDetailsForImpersonation2: the realm cannot look it up), so its matrix entry is all it holds.
BUILD_USER_INIT = f"hudson.model.User.getById('{BUILD_USER}', true).save()\n"


def security_jcasc(cfg: JenkinsConfig, with_credentials: bool) -> str:
    """Who signs in and what they may do (issue 24 item 5), replacing the chart's local admin and
    "logged-in users can do anything": the GitHub OAuth realm (github-oauth plugin), and a project
    matrix (matrix-auth ``projectMatrix``: these entries hold on every item, and a job's own
    ``authorizationMatrix`` may only add to them) where ``admins`` administer, the repository's
    organisation and the prod approvers read, and nobody else (anonymous included) has any permission.
    The approvers' one right beyond reading is starting ``PR_STACK_JOB`` (its own matrix, ``_starters``);
    they hold no Administer, which would pass any ``input`` and configure any job. Builds run as
    ``BUILD_USER`` (authorize-project), not as SYSTEM."""
    owner, _ = github_repo(cfg.repo_url or "https://github.com/x/y")
    secret = "${file:" + f"{SECRETS_DIR}/{CREDENTIALS_SECRET}-{OAUTH_SECRET_KEY}" + "}" if with_credentials else ""
    entries = [_entry(a, ["Overall/Administer"]) for a in cfg.admins]
    entries += [_entry(owner, READ, group=True)] if owner not in cfg.admins else []
    entries += [_entry(p, READ) for p in cfg.prod_approvers if p != owner]
    entries += [_entry(BUILD_USER, BUILD_PERMISSIONS)]
    doc = {
        # authorize-project: the queue authenticates every build as BUILD_USER (JCasC form as in the
        # plugin's ConfigurationAsCodeTest global.config.SpecificUsersAuthorizationStrategy.yml).
        "security": {
            "queueItemAuthenticator": {
                "authenticators": [{"global": {"strategy": {"specificUsersAuthorizationStrategy": {"userid": BUILD_USER}}}}]
            }
        },
        "jenkins": {
            "securityRealm": {
                "github": {
                    "githubWebUri": "https://github.com",
                    "githubApiUri": "https://api.github.com",
                    "clientID": cfg.github_oauth_client_id or "",
                    "clientSecret": secret,
                    "oauthScopes": "read:org,user:email",
                }
            },
            "authorizationStrategy": {"projectMatrix": {"entries": entries}},
        },
    }
    return yaml.safe_dump(doc, sort_keys=False)


def credentials_data(raw: str) -> dict[str, str]:
    """The Secret's data from the ``jenkinsCredentials`` secret config value; names missing or unknown
    keys (never values). Loading the config runs it first (components/config/loading.py) and turns its
    ValueError into the one-line ConfigError naming the stack file and key, so inside the ``apply`` it
    no longer fails."""
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"must be a JSON object ({exc.msg})") from None
    if not isinstance(doc, dict):
        raise ValueError("must be a JSON object")
    missing, unknown = sorted(set(CREDENTIAL_KEYS) - set(doc)), sorted(set(doc) - set(CREDENTIAL_KEYS))
    if missing or unknown:
        raise ValueError(f"missing keys {missing}, unknown keys {unknown} (expected: {', '.join(CREDENTIAL_KEYS)})")
    empty = sorted(k for k, v in doc.items() if not isinstance(v, str) or not v)
    if empty:
        raise ValueError(f"keys {empty} must be non-empty strings")
    return dict(doc)


def _restricted_container(name: str, image: str, cpu: str, memory: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "command": ["sleep"],
        "args": ["infinity"],
        "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}},
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True, "runAsUser": 1000, "capabilities": {"drop": ["ALL"]}},
        **extra,
    }


def _agent_pod(containers: list[dict], volumes: list[dict] | None = None) -> dict:
    """An agent pod of the build namespace: the agent's service account without its token, non-root."""
    spec = {
        "serviceAccountName": AGENT_SA,
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": containers,
    }
    return {"apiVersion": "v1", "kind": "Pod", "spec": {**spec, **({"volumes": volumes} if volumes else {})}}


def pod_templates(build_namespace: str, agent_image: str = AGENT_IMAGE) -> dict[str, str]:
    """Kubernetes-plugin pod templates (JCasC YAML), keyed as the chart's agent.podTemplates expects.
    Both run in the build namespace: the only one where the controller may create pods."""
    python_pod = _agent_pod([_restricted_container("python", agent_image, "1", "4Gi")])
    builder_pod = _agent_pod(
        [
            # `make up-ci` registers the builder BUILDER (registry.builder) with the remote driver to this address.
            _restricted_container("python", agent_image, "1", "4Gi", env=[{"name": "BUILDKIT_HOST", "value": BUILDKIT_ADDR}]),
            {
                "name": "buildkitd",
                "image": BUILDKIT_IMAGE,
                "args": BUILDKITD_ARGS,
                "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "8Gi"}},
                "securityContext": BUILDKITD_SECURITY,
                "volumeMounts": [{"name": "buildkit", "mountPath": "/home/user/.local/share/buildkit"}],
            },
        ],
        volumes=[{"name": "buildkit", "emptyDir": {"sizeLimit": "30Gi"}}],
    )

    def template(name: str, pod: dict) -> str:
        return yaml.safe_dump(
            [
                {
                    "name": name,
                    "label": name,
                    "namespace": build_namespace,
                    "serviceAccount": AGENT_SA,
                    "yamlMergeStrategy": "merge",
                    "yaml": yaml.safe_dump(pod, sort_keys=False),
                }
            ],
            sort_keys=False,
        )

    return {"python": template("python", python_pod), "builder": template("builder", builder_pod)}


def build_pod_policy(build_namespace: str) -> dict[str, Any]:
    """ValidatingAdmissionPolicy spec for every pod in the build namespace. A Jenkinsfile may define its
    own pod template, and the namespace is Pod Security ``privileged`` (rootless BuildKit's Unconfined
    profiles), so this is what keeps a branch from starting a privileged pod beside a deploy agent:
    Pod Security ``baseline``, except ``BUILDKITD_SECURITY`` for a ``buildkitd`` container running
    ``BUILDKIT_IMAGE``, and no service account but the agents' (which has no rights)."""
    flag = "(has(object.spec.{f}) && object.spec.{f})"
    return {
        "failurePolicy": "Fail",
        "matchConstraints": {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": build_namespace}},
            "resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["pods"]}],
        },
        "variables": [
            {
                "name": "containers",
                "expression": "object.spec.containers"
                " + (has(object.spec.initContainers) ? object.spec.initContainers : [])"
                " + (has(object.spec.ephemeralContainers) ? object.spec.ephemeralContainers : [])",
            }
        ],
        "validations": [
            {
                "expression": " || ".join(flag.format(f=f) for f in ("hostNetwork", "hostPID", "hostIPC")).join(("!(", ")")),
                "message": "build pods may not share the node's network, PID or IPC namespace",
            },
            {
                "expression": "!has(object.spec.volumes) || object.spec.volumes.all(v, !has(v.hostPath))",
                "message": "build pods may not mount host paths",
            },
            {
                "expression": "variables.containers.all(c, !has(c.securityContext) || !has(c.securityContext.privileged) || !c.securityContext.privileged)",
                "message": "build pods may not run privileged containers",
            },
            {
                "expression": "variables.containers.all(c, !has(c.securityContext) || !has(c.securityContext.capabilities)"
                " || !has(c.securityContext.capabilities.add) || c.securityContext.capabilities.add.all(x, x in ['SETUID', 'SETGID']))",
                "message": "build pods may add no capability but SETUID/SETGID (rootless BuildKit's newuidmap)",
            },
            *_confinement_validations(),
            *_baseline_validations(),
            {
                "expression": "variables.containers.all(c, !has(c.ports) || c.ports.all(p, !has(p.hostPort) || p.hostPort == 0))",
                "message": "build pods may not use host ports",
            },
            {
                "expression": f"!has(object.spec.serviceAccountName) || object.spec.serviceAccountName in ['{AGENT_SA}', 'default']",
                "message": f"build pods run as {AGENT_SA} (no rights), never another service account",
            },
        ],
    }


BUILDKITD_ARGS = ["--addr", BUILDKIT_ADDR, "--oci-worker-no-process-sandbox"]
# Pod Security baseline's allowed sysctls (kubernetes.io/docs/concepts/security/pod-security-standards, "Sysctls", 1.33).
SAFE_SYSCTLS = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
]


def _cel_list(values: list[str]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def builder_exemption() -> str:
    """CEL: ``c`` is exactly the builder's BuildKit daemon (``BUILDKITD_SECURITY``): its name, image and
    arguments (no command of its own), uid 1000 non-root, not privileged, every capability dropped.
    Only that container may run unconfined: a look-alike with another command or user may not."""
    return (
        f"(c.name == 'buildkitd' && c.image == '{BUILDKIT_IMAGE}' && !has(c.command)"
        f" && has(c.args) && c.args == {_cel_list(BUILDKITD_ARGS)}"
        " && has(c.securityContext) && has(c.securityContext.runAsNonRoot) && c.securityContext.runAsNonRoot"
        " && has(c.securityContext.runAsUser) && c.securityContext.runAsUser == 1000"
        " && has(c.securityContext.capabilities) && has(c.securityContext.capabilities.drop)"
        " && 'ALL' in c.securityContext.capabilities.drop)"
    )


def _baseline_validations() -> list[dict[str, str]]:
    """Pod Security baseline's /proc mount, SELinux and sysctl checks (the namespace itself is privileged)."""
    selinux = (
        "(!has({p}.seLinuxOptions) || ((!has({p}.seLinuxOptions.type) || {p}.seLinuxOptions.type in "
        "['', 'container_t', 'container_init_t', 'container_kvm_t']) && !has({p}.seLinuxOptions.user) && !has({p}.seLinuxOptions.role)))"
    )
    return [
        {
            "expression": "variables.containers.all(c, !has(c.securityContext) || !has(c.securityContext.procMount)"
            " || c.securityContext.procMount == 'Default')",
            "message": "build pods may not unmask /proc (procMount)",
        },
        {
            "expression": "variables.containers.all(c, !has(c.securityContext) || "
            + selinux.format(p="c.securityContext")
            + ") && (!has(object.spec.securityContext) || "
            + selinux.format(p="object.spec.securityContext")
            + ")",
            "message": "build pods may not set a custom SELinux user, role or type",
        },
        {
            "expression": "!has(object.spec.securityContext) || !has(object.spec.securityContext.sysctls)"
            f" || object.spec.securityContext.sysctls.all(s, s.name in {_cel_list(SAFE_SYSCTLS)})",
            "message": "build pods may set only the safe sysctls",
        },
    ]


def _confinement_validations() -> list[dict[str, str]]:
    """Seccomp and AppArmor stay on for every container but the builder's BuildKit daemon
    (``builder_exemption``; pod level included), in the field and in the annotation form."""
    unconfined = (
        "(has({p}.seccompProfile) && {p}.seccompProfile.type == 'Unconfined') || "
        "(has({p}.appArmorProfile) && {p}.appArmorProfile.type == 'Unconfined')"
    )
    return [
        {
            "expression": "variables.containers.all(c, "
            + builder_exemption()
            + " || !has(c.securityContext) || !("
            + unconfined.format(p="c.securityContext")
            + ")) && (!has(object.spec.securityContext) || !("
            + unconfined.format(p="object.spec.securityContext")
            + "))",
            "message": f"only the buildkitd container ({BUILDKIT_IMAGE}) may run without seccomp/AppArmor confinement",
        },
        {
            # the annotation form of AppArmor, still honoured
            "expression": "!has(object.metadata.annotations) || object.metadata.annotations.all(k,"
            " !k.startsWith('container.apparmor.security.beta.kubernetes.io/')"
            " || (k == 'container.apparmor.security.beta.kubernetes.io/buildkitd'"
            " && variables.containers.all(c, c.name != 'buildkitd' || " + builder_exemption() + "))"
            " || object.metadata.annotations[k] != 'unconfined')",
            "message": "only the buildkitd container may run without AppArmor confinement",
        },
    ]


def tls_load_balancer(certificate_arn: str | None) -> dict[str, Any]:
    """Jenkins behind an NLB that terminates TLS with the ACM certificate, on 443 only: no plain-HTTP
    port faces the internet (issue 24 item 9). The EKS in-tree service controller reads these
    annotations (kubernetes/cloud-provider-aws pkg/providers/v1/aws.go: ssl-cert, ssl-ports on an NLB
    make TLS listeners); the pod still serves HTTP on 8080 inside the cluster."""
    return {
        "servicePort": 443,
        "targetPort": 8080,
        "serviceAnnotations": {
            "service.beta.kubernetes.io/aws-load-balancer-type": "nlb",
            "service.beta.kubernetes.io/aws-load-balancer-ssl-cert": certificate_arn or "",
            "service.beta.kubernetes.io/aws-load-balancer-ssl-ports": "443",
        },
    }


def jenkins_values(cfg: JenkinsConfig, build_namespace: str, metrics: bool, with_credentials: bool = False) -> dict[str, Any]:
    repo_url = cfg.repo_url or ""
    controller: dict[str, Any] = {
        "admin": {
            "createSecret": False,
            "existingSecret": ADMIN_SECRET,
            "userKey": "jenkins-admin-user",
            "passwordKey": "jenkins-admin-password",
        },
        "installPlugins": PLUGINS,
        "installLatestPlugins": False,
        "javaOpts": USE_ITEM_PROPERTY,
        "initScripts": {"mlplatform-build-user": BUILD_USER_INIT},
        "overwritePlugins": True,
        "serviceType": cfg.service_type,
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "3Gi"}},
        # The chart's default keeps every capability and does not say non-root: explicit, checked by the pack.
        "containerSecurityContext": CONTROLLER_SECURITY,
        "prometheus": {"enabled": metrics, "scrapeInterval": "60s"},
        "JCasC": {
            "defaultConfig": True,
            "configScripts": {
                "mlplatform-jobs": jobs_jcasc(repo_url, cfg.branch, with_credentials, list(cfg.prod_approvers)),
                "mlplatform-env": env_jcasc(repo_url, list(cfg.prod_approvers)),
                # Defines securityRealm and authorizationStrategy: the chart's defaults are then ignored
                # (jenkins chart 5.9.53 values.yaml, controller.JCasC.securityRealm).
                "mlplatform-security": security_jcasc(cfg, with_credentials),
            },
        },
    }
    if with_credentials:
        controller["additionalExistingSecrets"] = [{"name": CREDENTIALS_SECRET, "keyName": k} for k in CREDENTIAL_KEYS]
    if cfg.service_type == "LoadBalancer":
        controller["loadBalancerSourceRanges"] = list(cfg.allowed_cidrs)
        controller.update(tls_load_balancer(cfg.tls_certificate_arn))
    return {
        "controller": controller,
        # agent.namespace is also where the chart grants the controller its pod rights (and nowhere else).
        "agent": {
            "enabled": True,
            "namespace": build_namespace,
            "restrictedPssSecurityContext": True,
            "podTemplates": pod_templates(build_namespace, cfg.agent_image or AGENT_IMAGE),
        },
        "persistence": {"enabled": True, "size": f"{cfg.storage_gi_b}Gi"},
        "rbac": {"create": True, "readSecrets": False},
        "serviceAccount": {"create": True, "name": CONTROLLER_SA},
        "serviceAccountAgent": {"create": True, "name": AGENT_SA, "automountServiceAccountToken": False},
    }


@dataclass
class JenkinsArgs:
    namespace: str
    build_namespace: str
    config: JenkinsConfig
    monitoring_release: pulumi.Resource | None = None
    # The ``jenkinsCredentials`` secret config value (JSON); None: the folders carry no credentials.
    credentials: pulumi.Output[str] | None = None


class Jenkins(pulumi.ComponentResource):
    admin_password: pulumi.Output[str]

    def __init__(self, name: str, args: JenkinsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlplatform:jenkins:Jenkins", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        ns = args.namespace
        password = random.RandomPassword(f"{name}-admin-password", random.RandomPasswordArgs(length=24, special=False), opts=child)
        self.admin_password = pulumi.Output.secret(password.result)
        deps: list[pulumi.Resource] = [
            k8s.core.v1.Secret(
                f"{name}-admin",
                metadata=k8s.meta.v1.ObjectMetaArgs(name=ADMIN_SECRET, namespace=ns),
                string_data={"jenkins-admin-user": "admin", "jenkins-admin-password": self.admin_password},
                opts=child,
            )
        ]
        if args.credentials is not None:
            deps.append(
                k8s.core.v1.Secret(
                    f"{name}-ci-credentials",
                    metadata=k8s.meta.v1.ObjectMetaArgs(name=CREDENTIALS_SECRET, namespace=ns),
                    string_data=pulumi.Output.secret(args.credentials).apply(credentials_data),
                    opts=child,
                )
            )
        if args.monitoring_release:
            deps.append(args.monitoring_release)
        values = jenkins_values(
            args.config, args.build_namespace, metrics=args.monitoring_release is not None, with_credentials=args.credentials is not None
        )
        self.release = helm.release(f"{name}-chart", "jenkins", ns, values, pulumi.ResourceOptions(parent=self, depends_on=deps))
        self._network_policies(name, ns, args.build_namespace)
        policy = k8s.admissionregistration.v1.ValidatingAdmissionPolicy(
            f"{name}-build-pods",
            metadata=k8s.meta.v1.ObjectMetaArgs(name="jenkins-build-pods"),
            spec=build_pod_policy(args.build_namespace),
            opts=child,
        )
        k8s.admissionregistration.v1.ValidatingAdmissionPolicyBinding(
            f"{name}-build-pods",
            metadata=k8s.meta.v1.ObjectMetaArgs(name="jenkins-build-pods"),
            spec={"policyName": "jenkins-build-pods", "validationActions": ["Deny"]},
            opts=pulumi.ResourceOptions(parent=self, depends_on=[policy]),
        )
        self.register_outputs({})

    def _network_policies(self, name: str, ns: str, build_ns: str) -> None:
        child = pulumi.ResourceOptions(parent=self)
        in_ns = lambda n: {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": n}}}  # noqa: E731
        k8s.networking.v1.NetworkPolicy(
            f"{name}-controller",
            metadata=k8s.meta.v1.ObjectMetaArgs(name="jenkins", namespace=ns),
            spec={
                "podSelector": {},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [
                    {"ports": [{"protocol": "TCP", "port": 8080}]},  # UI, webhooks, Prometheus (exposure per jenkins.serviceType)
                    {"from": [in_ns(ns), in_ns(build_ns)], "ports": [{"protocol": "TCP", "port": 50000}]},  # agents
                ],
                # git, Pulumi backends, cloud APIs, the Kubernetes API, on any port; in-cluster peers;
                # never the node's metadata service.
                "egress": [IN_CLUSTER, egress_except_metadata()],
            },
            opts=child,
        )
        k8s.networking.v1.NetworkPolicy(
            f"{name}-builds",
            metadata=k8s.meta.v1.ObjectMetaArgs(name="builds", namespace=build_ns),
            spec={
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [
                    {"to": [in_ns(ns)], "ports": [{"protocol": "TCP", "port": 8080}, {"protocol": "TCP", "port": 50000}]},
                    # HTTPS: registries, package indexes, the Pulumi backend, cloud and Kubernetes APIs;
                    # HTTP: the smoke test against a stack's model service URL. Never the node's
                    # metadata service. No in-cluster workload listens on 443 or 80.
                    egress_except_metadata(443, 80),
                ],
            },
            opts=child,
        )
