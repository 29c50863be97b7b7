"""Fill a node-local cache with one pinned LLM version and verify it, before vLLM starts (an init container).

    python -m llm.fetch --store ROOT --model NAME --version V|@champion --cache DIR [--source S --revision R]

Exit 0 when ``DIR/<NAME>/<V>`` holds exactly the version's files with their manifest digests (vLLM then
starts with ``--model`` on that folder); exit 1 with one line otherwise, and vLLM never starts:

* a version rejected in the store, or one whose recorded source/commit is not the stack's pin
  (``--source``/``--revision``), is refused before a byte is read;
* a cold cache is filled from the store into a hidden sibling folder, every file checked against the
  manifest as it lands (``registry.fetch``), the manifest written beside them, the whole folder checked
  again as vLLM will read it (``serving/integrity.verify_dir``: digests, sizes, no extra file), then
  renamed into place: a half-filled or altered copy is never at the path vLLM loads;
* a warm cache (a restart, a morning wake-up on the same volume) is verified in place: its manifest's
  SHA-256 must be the store manifest's, and every file must match it; a copy that no longer matches
  (a flipped byte on the node's disk, a manifest rewritten with it) is thrown away and filled again from the store,
  while a store whose bytes do not match their manifest refuses (the store is the truth);
* ``--version @champion`` (a pod template that pins no version yet: a stack's first ``up``, before
  ``make deliver`` pinned one) resolves the store's champion alias at start, fills and verifies that
  version as above and points ``DIR/<NAME>/@champion`` at it (a symlink replaced atomically): vLLM's
  ``--model`` is that link. No champion yet: exit 1, and the pod's init container retries with the
  kubelet's back-off until the import and the first delivery made one. Never Hugging Face.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

from llm import importer
from serving import integrity
from training import registry


def local_path(cache: Path, name: str, version: str) -> Path:
    return Path(cache) / name / version


def _fill(root: str, name: str, version: str, dest: Path) -> None:
    partial = dest.parent / f".{version}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    registry.fetch(root, name, version, partial)
    manifest = registry.read_manifest(root, name, version)
    (partial / integrity.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    integrity.verify_dir(partial, f"{name}/{version} (filled)")
    partial.rename(dest)


ALIAS_PREFIX = "@"  # never in a version name (registry._VERSION_RE): ``@champion`` is the alias


def resolve(root: str, name: str, version: str) -> str:
    """``version`` itself, or the version the alias ``@<alias>`` names in the store now."""
    if not version.startswith(ALIAS_PREFIX):
        return version
    alias = version.removeprefix(ALIAS_PREFIX)
    doc = registry.get_alias(root, name, alias)
    if doc is None:
        raise registry.RegistryError(f"{name}: no {alias} in {root} yet (the import Job and `make deliver` make the first one)")
    return doc["version"]


def link(cache: Path, name: str, alias: str, target: Path) -> Path:
    """``cache/<name>/<alias>`` -> ``target`` (a sibling folder), replaced atomically."""
    path = Path(cache) / name / alias
    tmp = path.with_name(f".{alias}.link")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target.name, target_is_directory=True)
    tmp.replace(path)
    return path


def manifest_digest(manifest: dict) -> str:
    """SHA-256 of a manifest in the form ``_fill`` writes it (sorted keys, indent 2)."""
    return hashlib.sha256(json.dumps(manifest, indent=2, sort_keys=True).encode()).hexdigest()


def _verify_warm(root: str, name: str, version: str, dest: Path) -> None:
    """A warm copy is the store's version: its MANIFEST.json is the store's (SHA-256 of both), and
    its files match that manifest. Checking the files against the local manifest alone would accept
    a copy whose files and manifest were changed together on the node's disk."""
    try:
        local = json.loads((dest / integrity.MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise integrity.Unverified("manifest", f"{name}/{version} (cached): {integrity.MANIFEST} unreadable: {exc}") from None
    theirs, ours = manifest_digest(registry.read_manifest(root, name, version)), manifest_digest(local)
    if ours != theirs:
        raise integrity.Unverified(
            "manifest", f"{name}/{version} (cached): {integrity.MANIFEST} sha256 {ours[:12]} is not the store's {theirs[:12]}"
        )
    integrity.verify_dir(dest, f"{name}/{version} (cached)")


def ensure(root: str, name: str, version: str, cache: Path, source: str | None = None, revision: str | None = None) -> tuple[Path, str]:
    """The verified local folder of ``version`` and what was done (``verified`` a warm copy, ``filled``,
    ``refilled`` after a local mismatch). Raises RegistryError / integrity.Unverified."""
    if mark := registry.rejection(root, name, version):
        raise registry.Rejected(f"{name}/{version} is rejected in {root} ({registry.describe_rejection(mark)}): not served")
    if source is not None:
        importer.check_pin(root, name, version, source, revision)
    dest = local_path(cache, name, version)
    if dest.is_dir():
        try:
            _verify_warm(root, name, version, dest)
            return dest, "verified"
        except integrity.Unverified as exc:
            print(f"llm fetch: local copy refused, filling again from the store: {exc}", file=sys.stderr)
            shutil.rmtree(dest)
            _fill(root, name, version, dest)
            return dest, "refilled"
    dest.parent.mkdir(parents=True, exist_ok=True)
    _fill(root, name, version, dest)
    return dest, "filled"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llm.fetch", description=__doc__.split("\n\n")[0])
    p.add_argument("--store", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--cache", required=True, type=Path)
    p.add_argument("--source", help="the stack's llm.source: the version must have been imported from it")
    p.add_argument("--revision", help="the stack's llm.revision: the version must be that commit")
    a = p.parse_args(argv)
    t0 = time.monotonic()
    try:
        version = resolve(a.store, a.model, a.version)
        dest, done = ensure(a.store, a.model, version, a.cache, a.source, a.revision)
        if version != a.version:
            done = f"{done} ({a.version} = {version})"
            dest = link(a.cache, a.model, a.version, dest)
    except (registry.RegistryError, integrity.Unverified, integrity.UnsafeKey) as exc:
        print(f"llm fetch: REFUSED {a.model}/{a.version}: {exc}", file=sys.stderr)
        return 1
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"llm fetch: {a.model}/{a.version} {done} at {dest}: {size / 2**20:.1f} MiB in {time.monotonic() - t0:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
