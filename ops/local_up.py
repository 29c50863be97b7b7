"""`make up STACK=local` / `make down STACK=local`: from a laptop with Docker to the running platform.

    python3 -m ops.local_up up|down

up: the Pulumi CLI and kind at pinned versions into .tools/ (each download checked against its pinned
SHA-256 before use), kind's documented local registry on localhost:5001 and the kind cluster
`mlplatform` (each only if absent), a file state backend in .pulumi-state/ and a secrets passphrase in
.pulumi-passphrase (both in the project, git-ignored), then `pulumi up` and what to do next.
down: `pulumi destroy`, then deletes the cluster and the registry only if `up` created them
(recorded in .tools/local-created.json). Anything that cannot work stops with one line. Stdlib only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from components.lib.network import NAMESPACES as PLATFORM_NAMESPACES

ROOT = Path(__file__).resolve().parent.parent
STACK = "local"
CLUSTER = "mlplatform"  # context kind-mlplatform, as stacks/Pulumi.local.yaml expects
REGISTRY = "kind-registry"
REGISTRY_PORT = 5001  # registry.url in stacks/Pulumi.local.yaml

# Pinned downloads. Published checksums: https://github.com/kubernetes-sigs/kind/releases/tag/v0.29.0
# (kind-<os>-<arch>.sha256sum next to each binary) and
# https://get.pulumi.com/releases/sdk/pulumi-3.255.0-checksums.txt. Values as pinned, from those files,
# by cert-manager/makefile-modules (modules/tools/00_mod.mk, kind) and by two independent install
# scripts (pulumi linux-x64); they could not be re-downloaded from here (no internet but registries).
KIND = "v0.29.0"
PULUMI = "3.255.0"
PINS: dict[str, dict[str, dict[str, str]]] = {
    "kind": {
        f"{os_}-{arch}": {"url": f"https://github.com/kubernetes-sigs/kind/releases/download/{KIND}/kind-{os_}-{arch}", "sha256": sha}
        for (os_, arch), sha in {
            ("linux", "amd64"): "c72eda46430f065fb45c5f70e7c957cc9209402ef309294821978677c8fb3284",
            ("linux", "arm64"): "03d45095dbd9cc1689f179a3e5e5da24b77c2d1b257d7645abf1b4174bebcf2a",
            ("darwin", "amd64"): "3eb0d4de25b854f34ea8ce8a3cbe15054fc03bc962b03e96fd10664b829fb6ed",
            ("darwin", "arm64"): "314d8f1428842fd1ba2110fd0052a0f0b3ab5773ab1bdcdad1ff036e913310c9",
        }.items()
    },
    "pulumi": {
        f"linux-{arch}": {"url": f"https://get.pulumi.com/releases/sdk/pulumi-v{PULUMI}-linux-{name}.tar.gz", "sha256": sha}
        for arch, name, sha in (
            ("amd64", "x64", "cf559568e2c32f7fae56ea3de8ae5fa48973ba8c5aa9dd2b3dc0c8898fe50dba"),
            ("arm64", "arm64", "699fbc6ea848d997e9b3645487f108d27b1b55ec807c7576406131e6e080f0e3"),
        )
    },
}
VERSIONS = {"kind": KIND, "pulumi": PULUMI}

# Names the program gives (components/lib/network.py NAMESPACES, model_service.object_name, the
# kube-prometheus-stack release in monitoring/spec.py, components/services/jenkins.py); a test keeps them in step.
NAMESPACES = {role: PLATFORM_NAMESPACES[role][0] for role in ("serving", "monitoring", "jenkins")}
MODEL = "mnist"  # the catalogue's first model, where the stack has no `models` output yet


def serving_service(model: str) -> str:
    return f"model-server-{model}"


GRAFANA_SVC = "kps-grafana"
JENKINS_SVC = "jenkins"

# kind's local registry guide (https://kind.sigs.k8s.io/docs/user/local-registry/): containerd reads
# per-registry hosts.toml files, and "localhost:5001" inside a node means the registry container.
KIND_CONFIG = """kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
containerdConfigPatches:
- |-
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "/etc/containerd/certs.d"
"""
REGISTRY_HOSTING = f"""apiVersion: v1
kind: ConfigMap
metadata:
  name: local-registry-hosting
  namespace: kube-public
data:
  localRegistryHosting.v1: |
    host: "localhost:{REGISTRY_PORT}"
    help: "https://kind.sigs.k8s.io/docs/user/local-registry/"
"""


def safe_extract(tar: tarfile.TarFile, dest: Path) -> None:
    """Only plain files and directories inside ``dest``. Python 3.11.4+ has this as filter="data";
    Debian 12's python3 is 3.11.2, so the same rule is spelled out where the filter is missing."""
    bad = f"{Path(str(tar.name)).name}: unexpected member in the release archive; nothing was installed"
    if hasattr(tarfile, "data_filter"):
        try:
            tar.extractall(dest, filter="data")
        except tarfile.TarError as e:
            raise Stop(f"{bad} ({e})") from e
        return
    for m in tar.getmembers():
        if not (m.isfile() or m.isdir()) or not (dest / m.name).resolve().is_relative_to(dest.resolve()):
            raise Stop(f"{bad} ({m.name!r})")
    tar.extractall(dest)  # noqa: S202 (every member checked above)


class Stop(Exception):
    """One line for the user; nothing after it runs."""


# What the local stack needs from Docker: kind's node runs the monitoring stack (Prometheus, Grafana,
# Alertmanager), the controllers (Argo Rollouts, KEDA, Kueue), a model server and a training Job
# (its requests: models.<name>.training in the stack file).
NEEDS_CPUS, NEEDS_GIB = 4, 8


def resources_note(docker_info: str) -> str:
    """One line on Docker's CPUs and memory against NEEDS_* (from `docker info` NCPU MemTotal)."""
    try:
        cpus, mem = (int(x) for x in docker_info.split()[:2])
    except ValueError:
        return f"the local platform needs Docker with >= {NEEDS_CPUS} CPUs and {NEEDS_GIB} GiB of memory"
    gib = mem / 2**30
    short = cpus < NEEDS_CPUS or gib < NEEDS_GIB - 0.5
    return f"Docker has {cpus} CPUs and {gib:.1f} GiB; the local platform needs >= {NEEDS_CPUS} CPUs and {NEEDS_GIB} GiB" + (
        ": pods may stay Pending (raise Docker's limits, or train with fewer resources)" if short else ""
    )


def run(*cmd: str, check=True, capture=True, input: str | None = None, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=capture, text=True, input=input, env=env)
    if check and proc.returncode != 0:
        last = ((proc.stderr or "") + (proc.stdout or "")).strip().splitlines()[-1:] if capture else []
        raise Stop(f"`{' '.join(cmd[:4])}` failed (exit {proc.returncode}){': ' + last[0] if last else ''}")
    return proc


class Local:
    def __init__(self, root: Path, pins: dict, registry_port: int = REGISTRY_PORT):
        self.root, self.pins, self.port = root, pins, registry_port
        self.tools = root / ".tools"
        self.bin = self.tools / "bin"
        self.created_file = self.tools / "local-created.json"
        self.env = {
            **os.environ,
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_BACKEND_URL": (root / ".pulumi-state").as_uri(),
        }
        if not ({"PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE"} & os.environ.keys()):
            self.env["PULUMI_CONFIG_PASSPHRASE_FILE"] = str(root / ".pulumi-passphrase")

    # ---- pinned tools ----
    def platform_key(self) -> str:
        arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
            platform.machine().lower(), platform.machine()
        )
        return f"{platform.system().lower()}-{arch}"

    def on_path(self, name: str) -> Path | None:
        """The tool on PATH when it is the pinned version (no download then), else None."""
        found = shutil.which(name, path=os.environ.get("PATH", ""))
        if not found:
            return None
        proc = subprocess.run([found, "version"], capture_output=True, text=True, check=False, env=self.env)
        words = proc.stdout.replace("v", " v").split() if proc.returncode == 0 else []
        return Path(found) if VERSIONS[name] in words or f"v{VERSIONS[name]}" in words else None

    def ensure_tool(self, name: str) -> Path:
        home = self.tools / f"{name}-{VERSIONS[name]}"
        exe = home / name
        if exe.exists():
            return exe
        if found := self.on_path(name):
            print(f"{name} {VERSIONS[name]}: {found} (on PATH, the pinned version: no download)")
            return found
        pin = self.pins[name].get(self.platform_key())
        if pin is None:
            if found := shutil.which(name):
                print(f"no pinned {name} build for {self.platform_key()}: using {found}")
                return Path(found)
            raise Stop(
                f"no pinned {name} {VERSIONS[name]} for {self.platform_key()}: install {name} yourself (on PATH), then run make up again"
            )
        print(f"downloading {name} {VERSIONS[name]} ...", flush=True)
        with tempfile.TemporaryDirectory(dir=self.tools if self.tools.exists() else None) as tmp:
            file = Path(tmp) / Path(pin["url"]).name
            try:
                with urllib.request.urlopen(pin["url"], timeout=60) as resp, file.open("wb") as out:  # noqa: S310 (https or the test's server)
                    shutil.copyfileobj(resp, out)
            except OSError as e:
                raise Stop(f"cannot download {pin['url']} ({e}); check the internet connection or proxy, then run make up again") from e
            got = hashlib.sha256(file.read_bytes()).hexdigest()
            if got != pin["sha256"]:
                raise Stop(f"{pin['url']}: SHA-256 {got} is not the pinned {pin['sha256']}; nothing was installed")
            staging = Path(tmp) / "staging"
            staging.mkdir()
            if file.name.endswith(".tar.gz"):
                with tarfile.open(file) as tar:
                    safe_extract(tar, staging)
                # the release tarball holds pulumi/ with the CLI and its language hosts side by side
                shutil.move(str(staging / name), str(home))
            else:
                home.mkdir(parents=True)
                shutil.move(str(file), str(exe))
            exe.chmod(0o755)
        self.bin.mkdir(parents=True, exist_ok=True)
        for f in home.iterdir():  # pulumi finds its pulumi-language-python etc. on PATH
            link = self.bin / f.name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(f)
        return exe

    # ---- what up created ----
    def created(self) -> dict:
        return json.loads(self.created_file.read_text()) if self.created_file.exists() else {}

    def record(self, what: str) -> None:
        data = self.created()
        data[what] = True
        self.created_file.parent.mkdir(parents=True, exist_ok=True)
        self.created_file.write_text(json.dumps(data))

    # ---- cluster and registry ----
    def check_docker(self) -> None:
        if shutil.which("docker") is None:
            raise Stop("docker not found: install Docker (https://docs.docker.com/get-docker/) and run make up again")
        proc = run("docker", "info", "--format", "{{.NCPU}} {{.MemTotal}}", check=False)
        if proc.returncode != 0:
            raise Stop("no Docker daemon answers (`docker info` failed): start Docker, then run make up again")
        print(resources_note(proc.stdout))

    def ensure_registry(self) -> None:
        state = run("docker", "inspect", "-f", "{{.State.Running}}", REGISTRY, check=False)
        if state.returncode == 0:
            if state.stdout.strip() != "true":
                run("docker", "start", REGISTRY)
            print(f"registry {REGISTRY}: exists, reused")
            return
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", self.port))
            except OSError as e:
                raise Stop(
                    f"port {self.port} is taken by another process (the local registry needs it): free it, then run make up again"
                ) from e
        run(
            "docker",
            "run",
            "-d",
            "--restart=always",
            "-p",
            f"127.0.0.1:{self.port}:5000",
            "--network",
            "bridge",
            "--name",
            REGISTRY,
            "registry:2",
        )
        self.record("registry")
        print(f"registry {REGISTRY}: created on localhost:{self.port}")

    def ensure_cluster(self, kind: str) -> None:
        clusters = run(kind, "get", "clusters", env=self.env).stdout.split()
        if CLUSTER in clusters:
            print(f"kind cluster {CLUSTER}: exists, reused")
        else:
            run(kind, "create", "cluster", "--name", CLUSTER, "--config", "-", input=KIND_CONFIG, env=self.env, capture=False)
            self.record("cluster")
            print(f"kind cluster {CLUSTER}: created")
        hosts = f'[host."http://{REGISTRY}:5000"]\n'
        cert_dir = f"/etc/containerd/certs.d/localhost:{self.port}"
        for node in run(kind, "get", "nodes", "--name", CLUSTER, env=self.env).stdout.split():
            run("docker", "exec", node, "mkdir", "-p", cert_dir)
            run("docker", "exec", "-i", node, "cp", "/dev/stdin", f"{cert_dir}/hosts.toml", input=hosts)
        net = run("docker", "inspect", "-f", "{{json .NetworkSettings.Networks.kind}}", REGISTRY).stdout.strip()
        if net in ("", "null"):
            run("docker", "network", "connect", "kind", REGISTRY)
        run(
            "docker",
            "exec",
            "-i",
            f"{CLUSTER}-control-plane",
            "kubectl",
            "--kubeconfig",
            "/etc/kubernetes/admin.conf",
            "apply",
            "-f",
            "-",
            input=REGISTRY_HOSTING,
        )

    # ---- pulumi ----
    def ensure_backend(self) -> None:
        (self.root / ".pulumi-state").mkdir(exist_ok=True)
        passphrase = self.root / ".pulumi-passphrase"
        if "PULUMI_CONFIG_PASSPHRASE_FILE" in self.env and self.env["PULUMI_CONFIG_PASSPHRASE_FILE"] == str(passphrase):
            if not passphrase.exists():
                passphrase.touch(mode=0o600)
                passphrase.write_text(secrets.token_urlsafe(32) + "\n")
                print(
                    f"created {passphrase.relative_to(self.root)}: the passphrase that encrypts the local stack's secrets "
                    "(git-ignored; keep it, the state in .pulumi-state/ cannot be decrypted without it)"
                )

    def pulumi(self, exe: Path, *args: str, capture=False) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(exe), *args], cwd=self.root, env=self.env, capture_output=capture, text=True)
        if proc.returncode != 0:
            raise Stop(f"`pulumi {' '.join(args[:2])}` failed (exit {proc.returncode}); see its output above")
        return proc

    def stack_exists(self, exe: Path) -> bool:
        proc = subprocess.run([str(exe), "stack", "ls", "--json"], cwd=self.root, env=self.env, capture_output=True, text=True)
        return proc.returncode == 0 and any(s.get("name") == STACK for s in json.loads(proc.stdout or "[]"))

    def next_steps(self, exe: Path) -> None:
        outputs = json.loads(self.pulumi(exe, "stack", "output", "--json", "--stack", STACK, capture=True).stdout or "{}")
        ns = {**NAMESPACES, **(outputs.get("namespaces") or {})}
        forward = f"kubectl --context kind-{CLUSTER} -n"
        body = """python3 -c 'import json; print(json.dumps({"instances": [[[0.0] * 28] * 28]}))'"""
        models = outputs.get("models") or {MODEL: {"url": outputs.get("serviceUrl")}}
        serving = "".join(
            # kind has no load balancer: the entry Service is ClusterIP (components/services/gateway.py),
            # so the URL output is its in-cluster address and a port-forward reaches the model.
            f"  model service {model}: {(entry or {}).get('url') or '(no url output yet)'} (in-cluster address)\n"
            f"    {forward} {ns['serving']} port-forward svc/{serving_service(model)} {8501 + i}:80\n"
            f"    one prediction: {body} | curl -s -d @- http://localhost:{8501 + i}/v1/models/{model}:predict\n"
            for i, (model, entry) in enumerate(models.items())
        )
        print(
            "\nThe local platform is up. Next:\n"
            + serving
            + f"  Grafana: {forward} {ns['monitoring']} port-forward svc/{GRAFANA_SVC} 3000:80 -> http://localhost:3000\n"
            "    user admin, password: pulumi stack output grafanaAdminPassword --show-secrets --stack local\n"
            # Jenkins runs on one stack only (README "CI/CD"); its lines only where this one has it.
            + (
                f"  Jenkins: {forward} {ns['jenkins']} port-forward svc/{JENKINS_SVC} 8080:8080 -> http://localhost:8080\n"
                "    user admin, password: pulumi stack output jenkinsAdminPassword --show-secrets --stack local\n"
                if outputs.get("jenkinsAdminPassword")
                else ""
            )
            + "  this pulumi and kind: export PATH=$PWD/.tools/bin:$PATH (state: .pulumi-state/, passphrase: .pulumi-passphrase)\n"
            "  tear it all down: make down STACK=local"
        )

    # ---- commands ----
    def use_current_context(self, pulumi: Path) -> None:
        """Deploy into the current kube context: recorded in the stack file (cluster.context), visibly."""
        if shutil.which("kubectl") is None:
            raise Stop("--use-current-context reads the current context with kubectl, which is not on PATH")
        context = run("kubectl", "config", "current-context").stdout.strip()
        self.pulumi(pulumi, "config", "set", "--path", "mlplatform:cluster.context", context, "--stack", STACK)
        print(f"cluster: the current context {context} (set as cluster.context in stacks/Pulumi.{STACK}.yaml; no kind cluster created)")

    def up(self, current_context: bool = False) -> None:
        self.check_docker()
        self.tools.mkdir(parents=True, exist_ok=True)
        # both tools verified before anything is created
        kind = None if current_context else self.ensure_tool("kind")
        pulumi = self.ensure_tool("pulumi")
        self.ensure_registry()
        if kind is not None:
            self.ensure_cluster(str(kind))
        self.ensure_backend()
        self.pulumi(pulumi, "stack", "select", "--create", STACK)
        if current_context:
            self.use_current_context(pulumi)
        # On a terminal Pulumi shows its preview and asks; scripted (no terminal), the laptop's own kind
        # stack proceeds (the cloud stacks refuse instead: mlp/deploy.py).
        self.pulumi(pulumi, "up", *([] if sys.stdin.isatty() else ["--yes"]), "--stack", STACK)
        self.next_steps(pulumi)

    def down(self) -> None:
        created = self.created()
        pulumi = self.tools / f"pulumi-{PULUMI}" / "pulumi"
        pulumi = pulumi if pulumi.exists() else self.on_path("pulumi")
        if pulumi and self.stack_exists(pulumi):
            self.pulumi(pulumi, "destroy", "--yes", "--stack", STACK)
        if created.get("cluster"):
            run(str(self.tools / f"kind-{KIND}" / "kind"), "delete", "cluster", "--name", CLUSTER, env=self.env)
            print(f"kind cluster {CLUSTER}: deleted")
        if created.get("registry"):
            run("docker", "rm", "-f", REGISTRY)
            print(f"registry {REGISTRY}: deleted")
        kept = [what for what in ("cluster", "registry") if not created.get(what)]
        if kept:
            print(f"left in place (not created by make up): {', '.join(kept)}")
        self.created_file.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m ops.local_up", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["up", "down"])
    p.add_argument("--use-current-context", action="store_true", help="up: deploy into the current kube context, create no kind cluster")
    p.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    # For the tests: a JSON file in the shape of PINS (their local server's URLs and checksums).
    p.add_argument("--pins", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--registry-port", type=int, default=REGISTRY_PORT, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    pins = json.loads(args.pins.read_text()) if args.pins else PINS
    local = Local(args.root.resolve(), pins, args.registry_port)
    try:
        local.up(args.use_current_context) if args.command == "up" else local.down()
    except Stop as e:
        print(f"make {args.command} STACK=local: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
