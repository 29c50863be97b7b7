"""Run the Pulumi program for one stack under Pulumi's mocks and record every resource.

This is the engine behind ``tools.synth`` and the test harness: no Pulumi CLI, no cloud. Mocks return
the outputs the program reads (kubeconfig, subnet IDs, ASG names, repository URLs, image digests), all
derived from names only, so two runs give identical records.
"""

from __future__ import annotations

import hashlib
import json
import os
import runpy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import mocks as pmocks
from pulumi.runtime import settings as psettings
from pulumi.runtime.proto import resource_pb2
from pulumi.runtime.stack import run_in_stack
from pulumi.runtime.sync_await import _sync_await

ROOT = Path(__file__).resolve().parent.parent


def stacks_dir() -> Path:
    """Where the stack files are: ``stacks/``, or ``MLPLATFORM_STACKS_DIR`` (tests that need a broken
    stack file write it to a temporary folder, never into ``stacks/`` where parallel test workers
    collect the stacks)."""
    return Path(os.environ.get("MLPLATFORM_STACKS_DIR") or ROOT / "stacks")


PROJECT = "mlplatform"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"
SIG = "4dabf18193072939515e22adb298388d"
ACCOUNT = "123456789012"


def _h(*parts: str, n: int = 12) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:n]


def redact(value: Any) -> Any:
    """Replace Pulumi secrets by "[secret]" (and unknowns by "[unknown]"), recursively.

    A secret map or list keeps its shape (keys are not secret, and a manifest must stay a valid
    object): only its leaves become "[secret]".
    """
    if isinstance(value, dict):
        if value.get(SIG) == SECRET_SIG:
            return _mask(value.get("value"))
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if value == UNKNOWN:
        return "[unknown]"
    return _number(value)


def _mask(value: Any) -> Any:
    if isinstance(value, dict) and value.get(SIG) != SECRET_SIG:
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return "[secret]"


def unwrap(value: Any) -> Any:
    """The plain value with secret wrappers removed (for assertions on the real content)."""
    if isinstance(value, dict):
        if value.get(SIG) == SECRET_SIG:
            return unwrap(value.get("value"))
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return _number(value)


def _number(value: Any) -> Any:
    # The wire format (protobuf Struct) carries every number as a double; give integers back.
    return int(value) if isinstance(value, float) and value.is_integer() else value


@dataclass
class Record:
    type: str
    name: str
    urn: str
    parent: str
    custom: bool
    provider: str
    inputs: dict[str, Any]  # secrets redacted
    raw: dict[str, Any]  # secrets unwrapped: for tests only, never written to disk
    ignore_changes: list[str] = field(default_factory=list)
    depends_on: list[str] = field(default_factory=list)
    delete_before_replace: bool = False
    replace_on_changes: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)  # URNs this resource was known by (Pulumi aliases)
    # Resource options the convergence check (tools/convergence.py) reads: the engine's create/update/
    # delete timeouts ("" where unset: the provider's default), and what a destroy does to it.
    custom_timeouts: dict[str, str] = field(default_factory=dict)
    protect: bool = False
    retain_on_delete: bool = False
    deleted_with: str = ""

    @property
    def is_k8s_object(self) -> bool:
        return self.custom and self.type.startswith("kubernetes:") and not self.type.startswith("kubernetes:helm.sh")


@dataclass
class Result:
    stack: str
    records: list[Record]
    outputs: dict[str, Any]  # stack outputs, secrets redacted
    raw_outputs: dict[str, Any]
    sensitive: set[str]  # secret values the mocks handed to the program

    def of_type(self, type_: str) -> list[Record]:
        return [r for r in self.records if r.type == type_]

    def one(self, type_: str, name: str) -> Record:
        found = [r for r in self.records if r.type == type_ and r.name == name]
        assert len(found) == 1, f"expected one {type_} named {name}, found {len(found)}"
        return found[0]

    def k8s_objects(self) -> list[Record]:
        return [r for r in self.records if r.is_k8s_object]


def _account_of(stack: str) -> str:
    """The account a stack's provider is pinned to (``cluster.accountId``, docs/security.md), else the mocks' one."""
    path = stacks_dir() / f"Pulumi.{stack}.yaml"
    doc = yaml.safe_load(path.read_text()) if path.exists() else {}
    return ((doc or {}).get("config", {}).get("mlplatform:cluster") or {}).get("accountId") or ACCOUNT


def reference_bucket(stack: str) -> str:
    """The model store bucket a StackReference to ``stack`` reports under the mocks (its own per stack,
    unlike the auto-named bucket the mocks give every stack's own program)."""
    return f"mlplatform-{stack}-store-{_h(stack, 'store', n=7)}"


def _no_outputs(name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    return {}


def _vpc(name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    return {
        "vpcId": f"vpc-{_h(name, n=17)}",
        "privateSubnetIds": [f"subnet-{_h(name, 'private', str(i), n=17)}" for i in range(3)],
        "publicSubnetIds": [f"subnet-{_h(name, 'public', str(i), n=17)}" for i in range(3)],
    }


def _node_group(name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    asg = f"eks-{inputs.get('nodeGroupName', name)}-{_h(name, n=8)}"
    return {"arn": f"arn:aws:eks:eu-west-1:{ACCOUNT}:nodegroup/{name}", "resources": [{"autoscalingGroups": [{"name": asg}]}]}


def _role(name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    rname = inputs.get("name", f"{name}-{_h(name, n=7)}")
    return {"arn": f"arn:aws:iam::{ACCOUNT}:role/{rname}", "name": rname}


def _repository(name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    rname = inputs.get("name", name)
    return {
        "repositoryUrl": f"{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com/{rname}",
        "registryId": ACCOUNT,
        "arn": f"arn:aws:ecr:eu-west-1:{ACCOUNT}:repository/{rname}",
    }


def _image(name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    tag = inputs["tags"][0]
    digest = f"sha256:{_h(tag, n=64)}"
    return {"digest": digest, "ref": f"{tag}@{digest}"}


def _bucket(name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    b = inputs.get("bucket", f"{name}-{_h(name, n=7)}")
    return {"bucket": b, "arn": f"arn:aws:s3:::{b}"}


def _service(name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    if inputs.get("spec", {}).get("type") != "LoadBalancer":
        return {}
    return {"status": {"loadBalancer": {"ingress": [{"hostname": f"{_h(name)}.elb.eu-west-1.amazonaws.com"}]}}}


# Type -> the outputs the program reads, from the resource's name and inputs (no secrets among them).
_OUTPUTS = {
    "awsx:ec2:Vpc": _vpc,
    "aws:eks/nodeGroup:NodeGroup": _node_group,
    "aws:ec2/launchTemplate:LaunchTemplate": lambda name, inputs: {"latestVersion": 1, "defaultVersion": 1},
    "aws:iam/role:Role": _role,
    "aws:iam/policy:Policy": lambda name, inputs: {"arn": f"arn:aws:iam::{ACCOUNT}:policy/{inputs.get('name', name)}"},
    "aws:ecr/repository:Repository": _repository,
    "docker-build:index:Image": _image,
    "aws:s3/bucket:Bucket": _bucket,
    "aws:kms/key:Key": lambda name, inputs: {
        "arn": f"arn:aws:kms:eu-west-1:{ACCOUNT}:key/{_h(name, 'key', n=32)}",
        "keyId": _h(name, "key", n=32),
    },
    "kubernetes:core/v1:Service": _service,
}


class PlatformMocks(pulumi.runtime.Mocks):
    """Outputs for the resources and invokes the program reads, derived from names only.

    ``sensitive`` collects every value these mocks hand out that the program must keep secret
    (passwords, tokens, kubeconfigs), so tests can assert none of them reaches any output in clear.
    """

    def __init__(self, references: dict[str, dict[str, Any]] | None = None, parameters: dict[str, str] | None = None):
        super().__init__()
        self.sensitive: set[str] = set()
        self.references = references or {}
        # SSM Parameter Store of the account (name -> value), as getParametersByPath reads it.
        self.parameters = parameters or {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        t, name, inputs = args.typ, args.name, dict(args.inputs)
        if t == "pulumi:pulumi:StackReference":
            return self._stack_reference(args, inputs)
        if t == "eks:index:Cluster":
            outs = self._eks_cluster(inputs.get("name", name))
        elif t == "random:index/randomPassword:RandomPassword":
            outs = {"result": self._sensitive(_h(name, "password", n=int(inputs.get("length", 24))))}
        else:
            outs = _OUTPUTS.get(t, _no_outputs)(name, inputs)
        # Remote components (custom=False) have outputs unrelated to their inputs: return only ours.
        return f"{name}-id", ({**inputs, **outs} if args.custom else outs)

    def _eks_cluster(self, cname: str) -> dict[str, Any]:
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": cname, "cluster": {"server": f"https://{_h(cname)}.gr7.eks.amazonaws.com"}}],
            "contexts": [{"name": cname, "context": {"cluster": cname, "user": cname}}],
            "current-context": cname,
            "users": [{"name": cname, "user": {"exec": {"command": "aws", "args": ["eks", "get-token", "--cluster-name", cname]}}}],
        }
        oidc = f"oidc.eks.eu-west-1.amazonaws.com/id/{_h(cname, n=32).upper()}"
        return {
            "kubeconfig": kubeconfig,
            "kubeconfigJson": self._sensitive(json.dumps(kubeconfig, sort_keys=True)),
            "oidcProviderArn": f"arn:aws:iam::{ACCOUNT}:oidc-provider/{oidc}",
            "oidcProviderUrl": oidc,
            "oidcIssuer": oidc,
            "clusterSecurityGroupId": f"sg-{_h(cname, 'cluster', n=17)}",
            "nodeSecurityGroupId": f"sg-{_h(cname, 'node', n=17)}",
        }

    def _stack_reference(self, args: pulumi.runtime.MockResourceArgs, inputs: dict[str, Any]):
        """Another stack's outputs (org/project/stack): its own bucket, this account; ``references``
        (stack -> outputs) overrides them. The engine reads them, so they come back as `outputs`."""
        ref = inputs.get("name") or args.resource_id or args.name
        other = ref.rsplit("/", 1)[-1]
        outputs = {"environment": other, "modelStore": f"s3://{reference_bucket(other)}", "awsAccountId": _account_of(other)}
        outs = {"outputs": {**outputs, **self.references.get(other, {})}, "secretOutputNames": []}
        return ref, {**inputs, **outs}

    def _sensitive(self, value: str) -> str:
        self.sensitive.add(value)
        return value

    def call(self, args: pulumi.runtime.MockCallArgs):
        if args.token == "aws:ecr/getAuthorizationToken:getAuthorizationToken":
            return {
                "userName": "AWS",
                "password": self._sensitive(f"ecr-token-{_h(str(args.args))}"),
                "proxyEndpoint": f"https://{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com",
            }
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": ACCOUNT, "arn": f"arn:aws:iam::{ACCOUNT}:user/ci", "userId": "AIDA"}
        if args.token == "aws:index/getPartition:getPartition":
            return {"partition": "aws", "dnsSuffix": "amazonaws.com"}
        if args.token == "aws:ssm/getParametersByPath:getParametersByPath":
            # Non-recursive: the parameters directly under the path (the AWS API's default).
            path = args.args["path"]
            found = sorted((k, v) for k, v in self.parameters.items() if k.startswith(path) and "/" not in k[len(path) :])
            return {"path": path, "names": [k for k, _ in found], "values": [v for _, v in found], "types": ["String"] * len(found)}
        return {}


class RecordingMonitor(pmocks.MockMonitor):
    """MockMonitor that records each registration with its parent/provider/options.

    It also drops RESOURCE_REFERENCES from the supported features: with it on, passing a resource to a
    remote component makes the default monitor flaky (event-loop errors, hangs), see design.md.
    """

    def __init__(self, mocks: pulumi.runtime.Mocks):
        super().__init__(mocks)
        self.records: list[Record] = []
        self.outputs: dict[str, Any] = {}

    def GetDeploymentInfo(self, request):
        info = super().GetDeploymentInfo(request)
        feats = [f for f in info.supportedFeatures if f != resource_pb2.RESOURCE_MONITOR_FEATURE_RESOURCE_REFERENCES]
        return resource_pb2.DeploymentInfo(supportedFeatures=feats)

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            from pulumi.runtime import rpc

            inputs = rpc.deserialize_properties(request.object, keep_unknowns=True)
            self.records.append(
                Record(
                    type=request.type,
                    name=request.name,
                    urn=response.urn,
                    parent=request.parent,
                    custom=request.custom,
                    provider=request.provider,
                    inputs=redact(inputs),
                    raw=unwrap(inputs),
                    ignore_changes=list(request.ignoreChanges),
                    depends_on=sorted(request.dependencies),
                    delete_before_replace=request.deleteBeforeReplace,
                    replace_on_changes=list(request.replaceOnChanges),
                    aliases=alias_urns(request, self.make_urn),
                    custom_timeouts=timeouts(request),
                    protect=bool(request.protect),
                    retain_on_delete=bool(request.retainOnDelete),
                    deleted_with=request.deletedWith,
                )
            )
        return response

    def RegisterResourceOutputs(self, request):
        if request.urn.endswith(f"::pulumi:pulumi:Stack::{PROJECT}-{psettings.get_stack()}"):
            from pulumi.runtime import rpc

            self.outputs = rpc.deserialize_properties(request.outputs, keep_unknowns=True)
        return super().RegisterResourceOutputs(request)


def timeouts(request: Any) -> dict[str, str]:
    """The registration's customTimeouts that are set (``create``/``update``/``delete``: "10m")."""
    if not request.HasField("customTimeouts"):
        return {}
    t = request.customTimeouts
    return {k: v for k, v in (("create", t.create), ("update", t.update), ("delete", t.delete)) if v}


def alias_urns(request: Any, make_urn: Any) -> list[str]:
    """The URNs a registration's aliases stand for (unset name/type/parent: the resource's own),
    built by ``make_urn``, the mock monitor's own URN scheme, so they compare with the URNs it gives
    out. (That scheme puts only the parent's own type before a child's type; the engine puts the
    parent's whole type chain. Both see an alias the same way relative to its parent's URN.)"""
    urns = list(request.aliasURNs)
    for alias in request.aliases:
        if alias.urn:
            urns.append(alias.urn)
            continue
        spec = alias.spec
        parent = "" if spec.noParent else (spec.parentUrn or request.parent)
        if parent.split("::")[2:3] == ["pulumi:pulumi:Stack"]:
            parent = ""
        urns.append(make_urn(parent, spec.type or request.type, spec.name or request.name))
    return sorted(set(urns))


def duplicate_keys(node: Any, path: str = "") -> list[tuple[str, int]]:
    """(key path, line) of every mapping key defined twice. YAML loaders here keep the last one
    silently; the Pulumi CLI refuses the file, so the synth must not render it either."""
    found: list[tuple[str, int]] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            sub = f"{path}.{k.value}" if path else str(k.value)
            if k.value in seen:
                found.append((sub, k.start_mark.line + 1))
            seen.add(k.value)
            found += duplicate_keys(v, sub)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            found += duplicate_keys(v, f"{path}[{i}]")
    return found


def stack_config(stack: str, overrides: dict[str, Any] | None = None) -> tuple[dict[str, str], list[str]]:
    """The engine's view of ``stacks/Pulumi.<stack>.yaml``: 'ns:key' -> string (objects JSON-encoded).

    ``overrides`` maps 'ns:key' to a value, or to None to delete the key. Encrypted (``secure:``)
    values cannot be decrypted here; they become the secret placeholder "[secret]".
    """
    path = stacks_dir() / f"Pulumi.{stack}.yaml"
    text = path.read_text()
    duplicate = duplicate_keys(yaml.compose(text))
    if duplicate:
        from components.config import ConfigError

        key, line = duplicate[0]
        raise ConfigError(f"stacks/Pulumi.{stack}.yaml", key.removeprefix("config.mlplatform:"), f"defined twice (line {line})")
    doc = yaml.safe_load(text) or {}
    values: dict[str, Any] = dict(doc.get("config") or {})
    for k, v in (overrides or {}).items():
        if v is None:
            values.pop(k, None)
        else:
            values[k] = v
    cfg: dict[str, str] = {}
    secret_keys: list[str] = []
    for key, value in values.items():
        if isinstance(value, dict) and set(value) == {"secure"}:
            cfg[key], _ = "[secret]", secret_keys.append(key)
        elif isinstance(value, (dict, list)):
            cfg[key] = json.dumps(value)
        elif isinstance(value, bool):
            cfg[key] = "true" if value else "false"
        else:
            cfg[key] = str(value)
    return cfg, secret_keys


def _drop_pending_tasks() -> None:
    import asyncio

    from pulumi.runtime.sync_await import _ensure_event_loop

    loop = _ensure_event_loop()
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in pending:
        task.cancel()
    if pending and not loop.is_running():
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    psettings._get_rpc_manager().clear()
    with psettings.SETTINGS.lock:
        psettings.SETTINGS.outputs.clear()


def run(
    stack: str,
    overrides: dict[str, Any] | None = None,
    references: dict[str, dict[str, Any]] | None = None,
    parameters: dict[str, str] | None = None,
) -> Result:
    """Run ``__main__.py`` for ``stack`` under mocks; return every registered resource (sorted by URN).
    ``references``: stack -> outputs a StackReference to that stack reports (over the mocks' own).
    ``parameters``: the account's SSM parameters (name -> value) the program may read."""
    mocks = PlatformMocks(references, parameters)
    monitor = RecordingMonitor(mocks)
    psettings.ROOT.set(None)
    pmocks.set_mocks(mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor)
    # run_in_stack makes its own root Stack (as the real entry point does) so that pulumi.export
    # outputs are registered; a fresh root per run keeps runs independent.
    psettings.ROOT.set(None)
    cfg, secret_keys = stack_config(stack, overrides)
    pulumi.runtime.set_all_config(cfg, secret_keys)
    try:
        _sync_await(run_in_stack(lambda: runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")))
    except BaseException as exc:
        exc.registered = list(monitor.records)  # type: ignore[attr-defined]  # what got registered before the failure
        # An error raised inside an apply (e.g. a StackReference's answer refused) leaves this run's
        # dependent tasks pending on the shared event loop and the error in the SDK's RPC manager, both
        # of which outlive the run: cancel and forget them, or the next run fails with this error.
        _drop_pending_tasks()
        raise
    records = sorted(monitor.records, key=lambda r: r.urn)
    return Result(
        stack=stack,
        records=records,
        outputs=redact(monitor.outputs),
        raw_outputs=unwrap(monitor.outputs),
        sensitive=set(mocks.sensitive),
    )
