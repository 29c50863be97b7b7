"""Jenkins: the jenkinsci chart configured entirely as code (JCasC), running this repository's Jenkinsfile.

- Admin credentials: a generated password in a Kubernetes Secret (existingSecret), never in values.
- Plugins pinned (and their dependencies at the minimum versions they declare: reproducible).
- Jobs: a multibranch pipeline over ``jenkins.repoUrl`` (Jenkinsfile) and an hourly job that reaps
  expired ephemeral stacks (ci/reap.Jenkinsfile).
- Agents (Kubernetes cloud): ``python`` (tests, Pulumi CLI) in the `jenkins` namespace, and
  ``builder`` in a dedicated `jenkins-builds` namespace: the same Python/Pulumi container plus a
  rootless BuildKit daemon (uid 1000, not privileged, `--oci-worker-no-process-sandbox` so it needs no
  unconfined seccomp/AppArmor). Pulumi's docker-build provider sends builds there through a buildx
  `remote` builder, so no Docker socket and no privileged pod exist anywhere. The build namespace is
  Pod-Security `baseline` (rootlesskit needs setuid newuidmap), default-deny, and may only talk to
  the Jenkins controller, DNS and HTTPS (registries, package indexes): a malicious Dockerfile
  cannot reach other workloads.
- RBAC: the controller manages agent pods in its two namespaces only; the agents' service account may
  only watch training Jobs and read their pods/logs (the pipeline's "wait for training" step).
  Nothing is bound to cluster-admin; Pulumi itself deploys with the stack's cloud credentials.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random
import yaml

from components import helm
from components.config import JenkinsConfig
from components.namespaces import IN_CLUSTER, egress_except_metadata

RELEASE = "jenkins"
ADMIN_SECRET = "jenkins-admin"
AGENT_SA = "jenkins-agent"
CONTROLLER_SA = "jenkins"
BUILD_NAMESPACE = "jenkins-builds"
BUILDER = "mlplatform-buildkit"  # buildx builder name the builder agent registers (registry.builder)
AGENT_IMAGE = "pulumi/pulumi-python-3.11:3.272.0"
BUILDKIT_IMAGE = "moby/buildkit:v0.23.2-rootless"
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
]


def jobs_jcasc(repo_url: str, branch: str) -> str:
    """JCasC (job-dsl) for the pipeline and the reaper, as the chart's configScripts entry."""
    script = f"""
multibranchPipelineJob('mlplatform') {{
  description('Tests, previews PRs, deploys main: see the Jenkinsfile')
  branchSources {{
    branchSource {{
      source {{
        git {{
          id('mlplatform')
          remote('{repo_url}')
          traits {{ gitBranchDiscovery() }}
        }}
      }}
    }}
  }}
  factory {{ workflowBranchProjectFactory {{ scriptPath('Jenkinsfile') }} }}
  orphanedItemStrategy {{ discardOldItems {{ numToKeep(20) }} }}
  triggers {{ periodicFolderTrigger {{ interval('5m') }} }}
}}
pipelineJob('reap-ephemeral-stacks') {{
  description('Destroys ephemeral pr-N stacks past their expiry')
  properties {{ pipelineTriggers {{ triggers {{ cron {{ spec('H * * * *') }} }} }} }}
  definition {{
    cpsScm {{
      scm {{ git {{ remote {{ url('{repo_url}') }}; branch('{branch}') }} }}
      scriptPath('ci/reap.Jenkinsfile')
    }}
  }}
}}
""".strip()
    return yaml.safe_dump({"jobs": [{"script": script}]}, sort_keys=False)


def env_jcasc(repo_url: str) -> str:
    """Global environment for pipelines: the GitHub owner/name the PR comments go to."""
    repo = repo_url.removesuffix(".git").split("github.com/")[-1].split("github.com:")[-1]
    return yaml.safe_dump(
        {"jenkins": {"globalNodeProperties": [{"envVars": {"env": [{"key": "GITHUB_REPOSITORY", "value": repo}]}}]}}, sort_keys=False
    )


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


def pod_templates(jenkins_namespace: str) -> dict[str, str]:
    """Kubernetes-plugin pod templates (JCasC YAML), keyed as the chart's agent.podTemplates expects."""
    python_pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "spec": {
            "serviceAccountName": AGENT_SA,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [_restricted_container("python", AGENT_IMAGE, "1", "4Gi")],
        },
    }
    builder_pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "spec": {
            "serviceAccountName": AGENT_SA,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                _restricted_container("python", AGENT_IMAGE, "1", "4Gi", env=[{"name": "BUILDX_BUILDER", "value": BUILDER}]),
                {
                    "name": "buildkitd",
                    "image": BUILDKIT_IMAGE,
                    "args": ["--addr", "tcp://127.0.0.1:1234", "--oci-worker-no-process-sandbox"],
                    "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "8Gi"}},
                    "securityContext": BUILDKITD_SECURITY,
                    "volumeMounts": [{"name": "buildkit", "mountPath": "/home/user/.local/share/buildkit"}],
                },
            ],
            "volumes": [{"name": "buildkit", "emptyDir": {"sizeLimit": "30Gi"}}],
        },
    }

    def template(name: str, namespace: str, pod: dict) -> str:
        return yaml.safe_dump(
            [
                {
                    "name": name,
                    "label": name,
                    "namespace": namespace,
                    "serviceAccount": AGENT_SA,
                    "yamlMergeStrategy": "merge",
                    "yaml": yaml.safe_dump(pod, sort_keys=False),
                }
            ],
            sort_keys=False,
        )

    return {"python": template("python", jenkins_namespace, python_pod), "builder": template("builder", BUILD_NAMESPACE, builder_pod)}


def jenkins_values(cfg: JenkinsConfig, namespace: str, metrics: bool) -> dict[str, Any]:
    controller: dict[str, Any] = {
        "admin": {
            "createSecret": False,
            "existingSecret": ADMIN_SECRET,
            "userKey": "jenkins-admin-user",
            "passwordKey": "jenkins-admin-password",
        },
        "installPlugins": PLUGINS,
        "installLatestPlugins": False,
        "overwritePlugins": True,
        "serviceType": cfg.service_type,
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "3Gi"}},
        # The chart's default keeps every capability and does not say non-root: explicit, checked by the pack.
        "containerSecurityContext": CONTROLLER_SECURITY,
        "prometheus": {"enabled": metrics, "scrapeInterval": "60s"},
        "JCasC": {
            "defaultConfig": True,
            "configScripts": {
                "mlplatform-jobs": jobs_jcasc(cfg.repo_url or "", cfg.branch),
                "mlplatform-env": env_jcasc(cfg.repo_url or ""),
            },
        },
    }
    if cfg.service_type == "LoadBalancer":
        controller["loadBalancerSourceRanges"] = list(cfg.allowed_cidrs)
    return {
        "controller": controller,
        "agent": {"enabled": True, "namespace": namespace, "restrictedPssSecurityContext": True, "podTemplates": pod_templates(namespace)},
        "persistence": {"enabled": True, "size": f"{cfg.storage_gi_b}Gi"},
        "rbac": {"create": True, "readSecrets": False},
        "serviceAccount": {"create": True, "name": CONTROLLER_SA},
        "serviceAccountAgent": {"create": True, "name": AGENT_SA},
    }


@dataclass
class JenkinsArgs:
    namespace: str
    build_namespace: str
    config: JenkinsConfig
    training_namespace: str
    monitoring_release: pulumi.Resource | None = None
    depends_on: list[pulumi.Resource] = field(default_factory=list)


class Jenkins(pulumi.ComponentResource):
    admin_password: pulumi.Output[str]

    def __init__(self, name: str, args: JenkinsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlplatform:jenkins:Jenkins", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        ns = args.namespace
        password = random.RandomPassword(f"{name}-admin-password", random.RandomPasswordArgs(length=24, special=False), opts=child)
        self.admin_password = pulumi.Output.secret(password.result)
        secret = k8s.core.v1.Secret(
            f"{name}-admin",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=ADMIN_SECRET, namespace=ns),
            string_data={"jenkins-admin-user": "admin", "jenkins-admin-password": self.admin_password},
            opts=child,
        )
        deps = [secret, *args.depends_on] + ([args.monitoring_release] if args.monitoring_release else [])
        self.release = helm.release(
            f"{name}-chart",
            "jenkins",
            ns,
            jenkins_values(args.config, ns, metrics=args.monitoring_release is not None),
            pulumi.ResourceOptions(parent=self, depends_on=deps),
        )
        # The controller starts agent pods in the build namespace (the chart covers its own namespace).
        self._role(
            f"{name}-builds-agents",
            args.build_namespace,
            CONTROLLER_SA,
            ns,
            [
                {
                    "apiGroups": [""],
                    "resources": ["pods", "pods/exec"],
                    "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                },
                {"apiGroups": [""], "resources": ["pods/log", "events"], "verbs": ["get", "list", "watch"]},
            ],
        )
        # The pipeline's agents wait for training Jobs and read their logs, nothing else.
        self._role(
            f"{name}-watch-training",
            args.training_namespace,
            AGENT_SA,
            ns,
            [
                {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch"]},
            ],
        )
        k8s.core.v1.ServiceAccount(
            f"{name}-builds-agent-sa",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=AGENT_SA, namespace=args.build_namespace),
            automount_service_account_token=False,
            opts=child,
        )
        self._network_policies(name, ns, args.build_namespace)
        self.register_outputs({})

    def _role(self, name: str, namespace: str, sa: str, sa_namespace: str, rules: list[dict]) -> None:
        child = pulumi.ResourceOptions(parent=self)
        role = k8s.rbac.v1.Role(name, metadata=k8s.meta.v1.ObjectMetaArgs(name=name, namespace=namespace), rules=rules, opts=child)
        k8s.rbac.v1.RoleBinding(
            f"{name}-binding",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=name, namespace=namespace),
            role_ref=k8s.rbac.v1.RoleRefArgs(api_group="rbac.authorization.k8s.io", kind="Role", name=name),
            subjects=[k8s.rbac.v1.SubjectArgs(kind="ServiceAccount", name=sa, namespace=sa_namespace)],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[role]),
        )

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
                    # HTTPS: registries, package indexes, the Pulumi backend and cloud/Kubernetes APIs;
                    # never the node's metadata service. No in-cluster workload listens on 443.
                    egress_except_metadata(443),
                ],
            },
            opts=child,
        )
