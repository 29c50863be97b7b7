"""ops.local_up (`make up`/`make down` for STACK=local) against a fake `docker` on PATH, and fake
`kind` and `pulumi` that it downloads itself from a local HTTP server and checks against pins."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import socket
import stat
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from ops import local_up
from tests.conftest import ROOT

# One JSON state file plays the machine: containers (docker), clusters (kind), stacks (pulumi).
# Every call is appended to $FAKE_LOG as {"cmd", "args", "stdin"?, "env"?}.
COMMON = f"""#!{sys.executable}
import json, os, sys
state_path, log_path = os.environ["FAKE_STATE"], os.environ["FAKE_LOG"]
state = json.load(open(state_path)) if os.path.exists(state_path) else {{}}
state.setdefault("containers", {{}}); state.setdefault("clusters", []); state.setdefault("stacks", [])
args = sys.argv[1:]
entry = {{"cmd": os.path.basename(sys.argv[0]), "args": args}}
def done(out="", rc=0):
    with open(log_path, "a") as f:
        f.write(json.dumps(entry) + "\\n")
    json.dump(state, open(state_path, "w"))
    print(out, end="")
    sys.exit(rc)
"""
FAKE_DOCKER = (
    COMMON
    + """
c = state["containers"]
if args[0] == "info":
    done("27.0\\n" if os.environ.get("FAKE_DAEMON") != "down" else "", 0 if os.environ.get("FAKE_DAEMON") != "down" else 1)
if args[0] == "inspect":
    name = args[-1]
    if name not in c:
        done("", 1)
    done(("true" if c[name]["running"] else "false") + "\\n" if "Running" in args[2] else ("{}" if "kind" in c[name]["networks"] else "null") + "\\n")
if args[0] == "start":
    c[args[1]]["running"] = True; done(args[1] + "\\n")
if args[0] == "run":
    c[args[args.index("--name") + 1]] = {"running": True, "networks": ["bridge"]}; done("f00d\\n")
if args[0] == "exec":
    if "-i" in args:
        entry["stdin"] = sys.stdin.read()
    done()
if args[:2] == ["network", "connect"]:
    c[args[3]]["networks"].append(args[2]); done()
if args[:2] == ["rm", "-f"]:
    c.pop(args[2], None); done(args[2] + "\\n")
done("unexpected\\n", 2)
"""
)
FAKE_KIND = (
    COMMON
    + """
if args[:2] == ["get", "clusters"]:
    done("".join(n + "\\n" for n in state["clusters"]))
if args[:2] == ["create", "cluster"]:
    entry["stdin"] = sys.stdin.read()
    name = args[args.index("--name") + 1]
    state["clusters"].append(name); state["containers"][name + "-control-plane"] = {"running": True, "networks": ["kind"]}
    done()
if args[:2] == ["get", "nodes"]:
    done(args[3] + "-control-plane\\n")
if args[:2] == ["delete", "cluster"]:
    name = args[3]; state["clusters"].remove(name); state["containers"].pop(name + "-control-plane"); done()
done("unexpected\\n", 2)
"""
)
FAKE_PULUMI = (
    COMMON
    + """
entry["env"] = {k: os.environ.get(k) for k in ("PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE_FILE")}
entry["cwd"] = os.getcwd()
if args[:2] == ["stack", "ls"]:
    done(json.dumps([{"name": s} for s in state["stacks"]]))
if args[:3] == ["stack", "select", "--create"]:
    state["stacks"] = sorted(set(state["stacks"]) | {args[3]}); done()
if args[:1] in (["up"], ["destroy"]):
    done()
if args[:2] == ["stack", "output"]:
    done(json.dumps({"serviceUrl": "", "models": {"mnist": {"url": ""}, "digits": {"url": "http://1.2.3.4"}},
                     "namespaces": {"serving": "ml-serving", "monitoring": "monitoring", "jenkins": "jenkins"}}))
done("unexpected\\n", 2)
"""
)


def _exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


class Downloads:
    """A local HTTP server with the 'release assets'; counts the requests."""

    def __init__(self, root: Path):
        self.root, self.requests = root, []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(root), **kw)

            def do_GET(self):
                outer.requests.append(self.path)
                super().do_GET()

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _tarball(members: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Laptop:
    def __init__(self, tmp: Path):
        self.tmp, self.project = tmp, tmp / "project"
        self.project.mkdir()
        self.bin, self.assets = tmp / "bin", tmp / "assets"
        self.bin.mkdir()
        self.assets.mkdir()
        _exe(self.bin / "docker", FAKE_DOCKER)
        (self.assets / "kind").write_text(FAKE_KIND)
        (self.assets / "pulumi.tar.gz").write_bytes(
            _tarball({"pulumi/pulumi": FAKE_PULUMI, "pulumi/pulumi-language-python": "#!/bin/sh\n"})
        )
        self.server = Downloads(self.assets)
        self.state, self.log = tmp / "state.json", tmp / "calls.jsonl"
        self.port = _free_port()
        self.pins = tmp / "pins.json"
        self.write_pins()

    def write_pins(self, **wrong_sha: str) -> None:
        key = local_up.Local(self.project, {}).platform_key()
        pins = {}
        for name, asset in (("kind", "kind"), ("pulumi", "pulumi.tar.gz")):
            sha = hashlib.sha256((self.assets / asset).read_bytes()).hexdigest()
            pins[name] = {key: {"url": f"{self.server.url}/{asset}", "sha256": wrong_sha.get(name, sha)}}
        self.pins.write_text(json.dumps(pins))

    def run(self, command: str, **env):
        environ = {k: v for k, v in os.environ.items() if not k.startswith("PULUMI_")}
        environ.update({"PATH": f"{self.bin}:{os.environ['PATH']}", "FAKE_STATE": str(self.state), "FAKE_LOG": str(self.log), **env})
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "ops.local_up",
                command,
                "--root",
                str(self.project),
                "--pins",
                str(self.pins),
                "--registry-port",
                str(self.port),
            ],
            cwd=ROOT,
            env=environ,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def calls(self, cmd: str | None = None) -> list[dict]:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [c for c in map(json.loads, lines) if cmd is None or c["cmd"] == cmd]

    def seed(self, **state) -> None:
        self.state.write_text(json.dumps(state))


@pytest.fixture
def laptop(tmp_path):
    lap = Laptop(tmp_path)
    yield lap
    lap.server.close()


def creations(lap: Laptop) -> list[list[str]]:
    return [
        c["args"][:2]
        for c in lap.calls()
        if c["args"][:1] == ["run"] or c["args"][:2] in (["create", "cluster"], ["delete", "cluster"], ["rm", "-f"])
    ]


@pytest.mark.parametrize("tool, asset", [("kind", "kind"), ("pulumi", "pulumi.tar.gz")])
def test_bad_checksum_is_refused_and_nothing_installed(laptop, tool, asset):
    laptop.write_pins(**{tool: "0" * 64})
    proc = laptop.run("up")
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"make up STACK=local: {laptop.server.url}/{asset}: SHA-256 ") and line.endswith(
        f"is not the pinned {'0' * 64}; nothing was installed"
    )
    tools = laptop.project / ".tools"
    assert not (tools / f"{tool}-{local_up.VERSIONS[tool]}").exists() and not (tools / "bin" / tool).exists()
    assert [p.name for p in tools.iterdir() if p.name.startswith("tmp")] == []  # the download is gone too
    assert creations(laptop) == [] and laptop.calls("pulumi") == []  # nothing runs before the tools are verified


def test_up_creates_once_then_down_removes_what_it_created(laptop):
    proc = laptop.run("up")
    assert proc.returncode == 0, proc.stderr
    assert sorted(laptop.server.requests) == ["/kind", "/pulumi.tar.gz"]
    assert creations(laptop) == [["run", "-d"], ["create", "cluster"]]
    run = next(c["args"] for c in laptop.calls("docker") if c["args"][0] == "run")
    assert run[-1] == "registry:2" and f"127.0.0.1:{laptop.port}:5000" in run  # loopback only
    create = next(c for c in laptop.calls("kind") if c["args"][:2] == ["create", "cluster"])
    assert create["args"][2:4] == ["--name", "mlplatform"] and 'config_path = "/etc/containerd/certs.d"' in create["stdin"]
    hosts = [c for c in laptop.calls("docker") if c["args"][:2] == ["exec", "-i"] and "hosts.toml" in c["args"][-1]]
    assert hosts[0]["stdin"] == '[host."http://kind-registry:5000"]\n'
    assert hosts[0]["args"][-1] == f"/etc/containerd/certs.d/localhost:{laptop.port}/hosts.toml"
    assert ["network", "connect", "kind", "kind-registry"] in [c["args"] for c in laptop.calls("docker")]

    pulumi = laptop.calls("pulumi")
    assert [c["args"][:2] for c in pulumi] == [["stack", "select"], ["up", "--yes"], ["stack", "output"]]
    assert all(c["cwd"] == str(laptop.project) for c in pulumi)
    passphrase = laptop.project / ".pulumi-passphrase"
    assert pulumi[1]["env"] == {
        "PULUMI_BACKEND_URL": (laptop.project / ".pulumi-state").as_uri(),
        "PULUMI_CONFIG_PASSPHRASE_FILE": str(passphrase),
    }
    assert stat.S_IMODE(passphrase.stat().st_mode) == 0o600 and len(passphrase.read_text().strip()) >= 32
    assert "created .pulumi-passphrase" in proc.stdout
    assert "port-forward svc/model-server-mnist 8501:80" in proc.stdout and "make down STACK=local" in proc.stdout
    assert "svc/model-server-digits 8502:80" in proc.stdout and "model service digits: http://1.2.3.4" in proc.stdout
    assert "Jenkins:" not in proc.stdout  # no jenkinsAdminPassword output: the local stack runs no Jenkins
    assert (laptop.project / ".tools" / "bin" / "pulumi-language-python").exists()  # the CLI's language host beside it

    # a second `make up`: no download, nothing created, only `pulumi up` again
    secret = passphrase.read_text()
    laptop.log.unlink()
    proc = laptop.run("up")
    assert proc.returncode == 0, proc.stderr
    assert len(laptop.server.requests) == 2 and creations(laptop) == []
    assert [c["args"][:2] for c in laptop.calls("pulumi")] == [["stack", "select"], ["up", "--yes"], ["stack", "output"]]
    assert passphrase.read_text() == secret and "created .pulumi-passphrase" not in proc.stdout

    laptop.log.unlink()
    proc = laptop.run("down")
    assert proc.returncode == 0, proc.stderr
    assert [c["args"][:3] for c in laptop.calls("pulumi")] == [["stack", "ls", "--json"], ["destroy", "--yes", "--stack"]]
    assert creations(laptop) == [["delete", "cluster"], ["rm", "-f"]]
    assert json.loads(laptop.state.read_text())["containers"] == {} and not (laptop.project / ".tools" / "local-created.json").exists()


def test_an_existing_cluster_and_registry_are_reused_and_kept(laptop):
    laptop.seed(
        containers={
            "kind-registry": {"running": False, "networks": ["bridge", "kind"]},
            "mlplatform-control-plane": {"running": True, "networks": ["kind"]},
        },
        clusters=["mlplatform"],
    )
    proc = laptop.run("up")
    assert proc.returncode == 0, proc.stderr
    assert creations(laptop) == []
    assert ["start", "kind-registry"] in [c["args"] for c in laptop.calls("docker")]  # stopped: started, not replaced
    assert "registry kind-registry: exists, reused" in proc.stdout and "kind cluster mlplatform: exists, reused" in proc.stdout

    laptop.log.unlink()
    proc = laptop.run("down")
    assert proc.returncode == 0, proc.stderr
    assert [c["args"][0] for c in laptop.calls("pulumi")] == ["stack", "destroy"]
    assert creations(laptop) == []
    assert "left in place (not created by make up): cluster, registry" in proc.stdout
    assert set(json.loads(laptop.state.read_text())["containers"]) == {"kind-registry", "mlplatform-control-plane"}


def test_down_after_a_partial_up_removes_only_the_registry(laptop):
    laptop.seed(containers={"mlplatform-control-plane": {"running": True, "networks": ["kind"]}}, clusters=["mlplatform"])
    assert laptop.run("up").returncode == 0
    laptop.log.unlink()
    assert laptop.run("down").returncode == 0
    assert creations(laptop) == [["rm", "-f"]]
    assert json.loads(laptop.state.read_text())["clusters"] == ["mlplatform"]


def test_no_docker_daemon_is_one_line_before_any_download(laptop):
    proc = laptop.run("up", FAKE_DAEMON="down")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "make up STACK=local: no Docker daemon answers (`docker info` failed): start Docker, then run make up again"
    ]
    assert laptop.server.requests == []


def test_port_taken_is_one_line(laptop):
    with socket.socket() as s:
        s.bind(("127.0.0.1", laptop.port))
        proc = laptop.run("up")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"make up STACK=local: port {laptop.port} is taken by another process (the local registry needs it): free it, then run make up again"
    ]
    assert creations(laptop) == []


def test_no_internet_is_one_line(laptop):
    pins = json.loads(laptop.pins.read_text())
    for per_platform in pins.values():
        for pin in per_platform.values():
            pin["url"] = f"http://127.0.0.1:{_free_port()}/gone"
    laptop.pins.write_text(json.dumps(pins))
    proc = laptop.run("up")
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("make up STACK=local: cannot download http://127.0.0.1:") and "check the internet connection" in line


def test_a_platform_without_pins_uses_the_tool_on_path_or_says_so(laptop):
    pins = json.loads(laptop.pins.read_text())
    pins["kind"] = {}
    laptop.pins.write_text(json.dumps(pins))
    proc = laptop.run("up")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[0].startswith("make up STACK=local: no pinned kind v0.29.0 for ")
    _exe(laptop.bin / "kind", FAKE_KIND)
    proc = laptop.run("up")
    assert proc.returncode == 0, proc.stderr
    assert f"using {laptop.bin / 'kind'}" in proc.stdout and laptop.server.requests == ["/pulumi.tar.gz"]


@pytest.mark.parametrize("has_data_filter", [True, False], ids=["python>=3.11.4", "debian-python-3.11.2"])
@pytest.mark.parametrize("member", ["../escape", "/abs", "link"])
def test_release_archive_members_stay_inside(tmp_path, monkeypatch, has_data_filter, member):
    if not has_data_filter:
        monkeypatch.delattr(local_up.tarfile, "data_filter", raising=False)
    elif not hasattr(local_up.tarfile, "data_filter"):
        pytest.skip("this Python's tarfile has no data filter")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo(member)
        if member == "link":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info, io.BytesIO(b""))
    (tmp_path / "x.tar.gz").write_bytes(buf.getvalue())
    dest = tmp_path / "dest"
    dest.mkdir()
    with tarfile.open(tmp_path / "x.tar.gz") as tar:
        try:
            local_up.safe_extract(tar, dest)
            stopped = False
        except local_up.Stop as e:
            assert "unexpected member in the release archive; nothing was installed" in str(e)
            stopped = True
    # Python's data filter may keep a member by stripping its leading "/"; the fallback refuses all three.
    assert stopped or has_data_filter
    assert not (tmp_path / "escape").exists()
    assert all(p.resolve().is_relative_to(dest.resolve()) for p in dest.rglob("*"))
    good = _tarball({"pulumi/pulumi": "x"})
    with tarfile.open(fileobj=io.BytesIO(good)) as tar:
        local_up.safe_extract(tar, dest)
    assert (dest / "pulumi" / "pulumi").read_text() == "x"


def test_pins_are_sha256_of_official_release_urls():
    for name, per_platform in local_up.PINS.items():
        assert "linux-amd64" in per_platform, name
        for pin in per_platform.values():
            assert pin["url"].startswith(
                ("https://github.com/kubernetes-sigs/kind/releases/download/", "https://get.pulumi.com/releases/sdk/")
            )
            assert len(pin["sha256"]) == 64 and int(pin["sha256"], 16) >= 0
            assert local_up.VERSIONS[name].lstrip("v") in pin["url"]


def test_printed_names_are_the_programs():
    from components import platform
    from components.models import model_service
    from monitoring import spec

    assert local_up.serving_service("mnist") == model_service.object_name("mnist")
    assert local_up.serving_service("fraud-v2") == model_service.object_name("fraud-v2")
    assert local_up.GRAFANA_SVC == f"{spec.RELEASE}-grafana"
    assert {k: platform.NAMESPACES[k][0] for k in local_up.NAMESPACES} == local_up.NAMESPACES
    assert "context: kind-mlplatform" in (ROOT / "stacks" / "Pulumi.local.yaml").read_text()
    assert f"url: localhost:{local_up.REGISTRY_PORT}" in (ROOT / "stacks" / "Pulumi.local.yaml").read_text()
