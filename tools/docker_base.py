"""Build a local Debian base image for the Dockerfiles when no registry can be pulled from:

    python -m tools.docker_base [--tag mlplatform-base:bookworm] [--rootfs build/rootfs]

debootstrap's a minimal Debian 12 with Python 3.11 and pip, adds the host's CA bundle (so pip inside
builds trusts the same TLS roots as the host, e.g. a corporate proxy) and `docker import`s it. Then:
docker build --build-arg BASE_IMAGE=mlplatform-base:bookworm serving/
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGES = "python3,python3-pip,python3-venv,ca-certificates"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def apt_mirror() -> str:
    """The Debian mirror this machine's apt uses (the one known to be reachable here)."""
    import re

    for path in sorted(Path("/etc/apt").glob("sources.list.d/*.sources")) + [Path("/etc/apt/sources.list")]:
        text = path.read_text() if path.exists() else ""
        m = re.search(r"^URIs:\s*(\S+)", text, re.M) or re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+\S+", text, re.M)
        if m and "security" not in m.group(1):
            return m.group(1)
    return "http://deb.debian.org/debian"


def build(tag: str, rootfs: Path, mirror: str | None = None) -> str:
    mirror = mirror or apt_mirror()
    if not (rootfs / "usr" / "bin" / "python3").exists():
        if shutil.which("debootstrap") is None:
            raise SystemExit("debootstrap not found: apt-get install debootstrap")
        rootfs.mkdir(parents=True, exist_ok=True)
        print(f"debootstrap bookworm into {rootfs} ...", flush=True)
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}", "bookworm", str(rootfs), mirror], check=True)
    if HOST_CA.exists():
        shutil.copy(HOST_CA, rootfs / "etc" / "ssl" / "certs" / "ca-certificates.crt")
    # The python:*-slim images this stands in for: `python` on PATH, pip allowed to install.
    (rootfs / "usr" / "local" / "bin").mkdir(parents=True, exist_ok=True)
    link = rootfs / "usr" / "local" / "bin" / "python"
    if not link.exists():
        link.symlink_to("/usr/bin/python3")
    for marker in (rootfs / "usr" / "lib").glob("python3*/EXTERNALLY-MANAGED"):
        marker.unlink()
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(
        ["docker", "import", "--change", "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt", "--change", "ENV LANG=C.UTF-8", "-", tag],
        stdin=tar.stdout,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    tar.wait()
    return tag


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tools.docker_base", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tag", default="mlplatform-base:bookworm")
    p.add_argument("--rootfs", type=Path, default=Path("build/rootfs"))
    args = p.parse_args(argv)
    print(f"built {build(args.tag, args.rootfs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
