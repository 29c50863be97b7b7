"""The model registry, kept in the artifact store itself (no extra service to run or secure).

Layout under ``<root>/models/<name>/``::

    <version>/...                      the files of a version (model.keras, saved_model/, metadata.json, ...)
    <version>/MANIFEST.json            SHA-256 and size of every other file; written last and only once
    aliases/<alias>.json               {"alias", "version", "generation", "from", "at", "by", "reason"}
    audit/<alias>/<generation>.json    one record per alias move (the same fields)
    rejected/<version>.json            {"version", "at", "by", "reason"}: written once, never removed
    LATEST                             the champion's version name, for readers that follow LATEST

A version is complete once its manifest exists; the manifest is written with ``If-None-Match: *``, so a
version can never be replaced, and an alias can only name a complete version whose files match it.
Aliases move by compare-and-swap (``storage.write_if``): of two concurrent moves one wins, the other
gets ``AliasConflict`` and nothing changes. Every move is recorded: the alias document carries the
record of its last move and ``audit/`` keeps each one; a move first makes sure the record of the move
before it is in ``audit/``, so a writer that dies between its alias write and its audit write loses
nothing.

Version names sort by time (``YYYYmmddTHHMMSSZ-<run>``): "forward" means a later name. Automated paths
(adoption, promotion between stores) only move ``champion``/``candidate`` forward; only ``rollback``
moves the champion back, explicitly.

Who writes what (issue 24 item 8): a workload (a training Job or CronJob, the LLM import Job) adds
versions only, every file and the manifest as a conditional create (``publish(adopt=False)``); its IAM
role is denied everything else here: ``aliases/``, ``audit/``, ``LATEST``, ``rejected/``, any overwrite
and any delete (components/lib/iam.py ``_registry_guards``). The pipeline, with the deploy identity,
adopts what they published (``adopt``: the newest version newer than the champion whose gate passed on
record, that is not rejected and whose name is no later than its manifest's store-set LastModified becomes
the candidate, or the champion where no canary judges) and moves every alias after that (ops/deliver.py).
A local run with a person's identity adopts its own version. A key in a version's folder that its
manifest does not list is not part of the version: ``verify`` warns, ``fetch`` and ``copy_version``
never read it.

A rejected version (a failed canary, a rollback away from it, ``reject``) is final in its store: it
never becomes champion or candidate again and is never copied to another store. A rollback rejects
the version it leaves and moves ``candidate`` off it, so the next pipeline run does not canary it
again; rejecting the champion rolls it back. Manifest keys are checked (``storage.safe_key``) before
any file is read, copied or fetched, so a manifest cannot address anything outside its version.
"""

from __future__ import annotations

import calendar
import getpass
import hashlib
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from training import storage

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
ALIASES = ("champion", "candidate", "previous")
REQUIRED = ("metadata.json", "model.keras", "saved_model/saved_model.pb")
# A version's format (``"format"`` in its metadata.json; the model server picks its runtime from it,
# serving/runtime.py) and the files it must have. Versions published before the field: savedmodel.
FORMATS = {"savedmodel": REQUIRED, "onnx": ("metadata.json", "model.onnx")}
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SYNC_ATTEMPTS = 20


class RegistryError(Exception):
    """A refused registry operation; the message is one line, for people and pipeline logs."""


class AliasConflict(RegistryError):
    """Someone else moved the alias between our read and our write; nothing was changed."""


class Rejected(RegistryError):
    """The version is rejected (in the store named in the message): refused, nothing changed."""


class VerifyError(RegistryError):
    def __init__(self, where: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"{where}: {len(problems)} problem(s): {'; '.join(problems[:3])}{' ...' if len(problems) > 3 else ''}")


def actor() -> str:
    """Who or what is moving an alias: MLPLATFORM_ACTOR (the pipeline sets it), else the Kubernetes
    Job, else user@host."""
    if who := os.environ.get("MLPLATFORM_ACTOR"):
        return who
    if job := os.environ.get("JOB_NAME"):
        return f"job/{job}"
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def model_root(root: str, name: str) -> str:
    return storage.join(root, "models", name)


def _check_version(version: str) -> str:
    if not _VERSION_RE.match(version or ""):
        raise RegistryError(f"invalid version name {version!r}: letters, digits, '.', '_' and '-' only")
    return version


def _check_alias(alias: str) -> str:
    if alias not in ALIASES:
        raise RegistryError(f"unknown alias {alias!r}: use one of {', '.join(ALIASES)}")
    return alias


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def when(ts: float | None) -> str:
    """A record's time for people: UTC, ISO 8601 to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)) if ts else "-"


def describe_rejection(mark: dict) -> str:
    """``reason, by WHO at WHEN``: one rejection record in one line."""
    return f"{mark['reason']}, by {mark['by']} at {when(mark.get('at'))}"


# ---- versions ----


def manifest_of(local_dir: Path, name: str, version: str) -> dict:
    files = sorted(p for p in local_dir.rglob("*") if p.is_file() and p.name != MANIFEST)
    return {
        "model": name,
        "version": version,
        "files": {p.relative_to(local_dir).as_posix(): {"sha256": _sha256(p.read_bytes()), "size": p.stat().st_size} for p in files},
        "created_at": time.time(),
        "created_by": actor(),
    }


def _write_manifest(root: str, name: str, version: str, manifest: dict) -> None:
    uri = storage.join(model_root(root, name), version, MANIFEST)
    try:
        storage.write_if(uri, json.dumps(manifest, indent=2, sort_keys=True).encode(), None)
    except storage.Conflict:
        raise RegistryError(f"{name}/{version} already exists: versions are immutable, publish under a new version name") from None


def record_format(local_dir: Path) -> str:
    """The format of the model in ``local_dir``, written into its metadata.json when the writer left
    it out (a model.onnx without a SavedModel is onnx, anything else savedmodel); RegistryError for
    a format the server does not run."""
    path = local_dir / "metadata.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RegistryError(f"refusing to publish: {path} is not readable JSON ({exc})") from None
    fmt = meta.get("format")
    if fmt is None:
        onnx_only = (local_dir / "model.onnx").exists() and not (local_dir / "saved_model").exists()
        fmt = meta["format"] = "onnx" if onnx_only else "savedmodel"
        path.write_text(json.dumps(meta, indent=2, sort_keys=True))
    if fmt not in FORMATS:
        raise RegistryError(f"refusing to publish: format {fmt!r} in {path} is not one of {sorted(FORMATS)}")
    return fmt


def add_version(local_dir: Path, root: str, name: str, version: str, required: tuple[str, ...] | None = None) -> str:
    """Upload ``local_dir`` as an immutable ``version``: every file first, the manifest last. Returns
    its URI. ``required``: the files it must have (default: those of its format, recorded in its metadata)."""
    _check_version(version)
    if required is None:
        required = FORMATS[record_format(local_dir)] if (local_dir / "metadata.json").exists() else REQUIRED
    missing = [f for f in required if not (local_dir / f).exists()]  # an LLM's files differ (llm/importer.py)
    if missing:
        raise RegistryError(f"refusing to publish an incomplete model: missing {missing} in {local_dir}")
    if storage.exists(storage.join(model_root(root, name), version, MANIFEST)):
        raise RegistryError(f"{name}/{version} already exists: versions are immutable, publish under a new version name")
    manifest = manifest_of(local_dir, name, version)
    dest = storage.join(model_root(root, name), version)
    for rel in manifest["files"]:
        # Every file a conditional create, as the manifest: a publishing workload's role may write
        # nothing else in the registry (components/lib/iam.py ``_registry_guards``).
        try:
            storage.write_if(storage.join(dest, rel), (local_dir / rel).read_bytes(), None)
        except storage.Conflict:
            raise RegistryError(
                f"{name}/{version}/{rel} already exists: versions are immutable, publish under a new version name"
            ) from None
    _write_manifest(root, name, version, manifest)
    return dest


def read_manifest(root: str, name: str, version: str) -> dict:
    """``version``'s manifest; RegistryError when it has none or one that is not ``{"files": {path:
    {"sha256": ..., ...}}}`` (whoever may create keys could write a malformed one)."""
    _check_version(version)
    try:
        manifest = json.loads(storage.read_text(storage.join(model_root(root, name), version, MANIFEST)))
    except FileNotFoundError:
        raise RegistryError(f"{name}/{version}: no such complete version in {root} (no {MANIFEST})") from None
    except (ValueError, UnicodeDecodeError):
        raise RegistryError(f"{name}/{version}: {MANIFEST} is not JSON") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(isinstance(w, dict) and isinstance(w.get("sha256"), str) for w in files.values()):
        raise RegistryError(f"{name}/{version}: {MANIFEST} lists no files as {{path: {{sha256, size}}}}")
    return manifest


def _files(manifest: dict, where: str) -> dict[str, dict]:
    """The manifest's files, every key checked first: one that is absolute or has a ``..`` part would
    read, copy or fetch something outside the version, so the whole manifest is refused (VerifyError
    naming each such key) before anything is read or written."""
    refused = []
    for rel in manifest["files"]:
        try:
            storage.safe_key(rel)
        except storage.UnsafeKey as exc:
            refused.append(f"manifest {exc}")
    if refused:
        raise VerifyError(where, refused)
    return manifest["files"]


def versions(root: str, name: str) -> list[str]:
    """Complete versions (those with a manifest), oldest first."""
    found = []
    for rel in storage.list_names(model_root(root, name)):
        parts = rel.split("/")
        if len(parts) == 2 and parts[1] == MANIFEST:
            found.append(parts[0])
    return sorted(found)


def _read_checked(root: str, name: str, version: str, problems: list[str]) -> Iterator[tuple[str, bytes]]:
    """Each file of ``version`` whose bytes match its manifest digest, as (path, bytes); a missing or
    altered file is added to ``problems`` instead."""
    manifest = read_manifest(root, name, version)
    base = storage.join(model_root(root, name), version)
    for rel, want in _files(manifest, f"{name}/{version}").items():
        try:
            data = storage.read_bytes(storage.join(base, rel))
        except FileNotFoundError:
            problems.append(f"{rel} missing")
            continue
        if _sha256(data) != want["sha256"]:
            problems.append(f"{rel} sha256 {_sha256(data)[:12]} != manifest {want['sha256'][:12]}")
            continue
        yield rel, data


def verify(root: str, name: str, version: str) -> list[str]:
    """Every file of ``version`` is present with its manifest digest; raises VerifyError. Returns the
    keys in its folder that its manifest does not list, logged as a warning: they are not part of the
    version (``fetch`` and ``copy_version`` read only listed keys) and must not make it unusable, since
    a role that may create keys could add one to any version and block a rollback to it (issue 24 item 8)."""
    problems: list[str] = []
    for _ in _read_checked(root, name, version, problems):
        pass
    if problems:
        raise VerifyError(f"{name}/{version}", problems)
    listed = set(read_manifest(root, name, version)["files"])
    extra = sorted(set(storage.list_names(storage.join(model_root(root, name), version))) - listed - {MANIFEST})
    if extra:
        log.warning(
            "%s/%s: %d key(s) not in the manifest, not part of the version, ignored: %s", name, version, len(extra), ", ".join(extra[:5])
        )
    return extra


def fetch(root: str, name: str, version: str, dest: Path) -> Path:
    """Download ``version`` into ``dest`` and check every file against its manifest there (what
    arrives is what was published). Returns ``dest``; raises VerifyError. Every target path is
    checked (``storage.safe_join``) before the first byte is written: a key that would land outside
    ``dest`` refuses the whole fetch (RegistryError naming the key) and nothing is written."""
    where = f"{name}/{version}"
    targets = {}
    for rel in _files(read_manifest(root, name, version), where):
        try:
            targets[rel] = storage.safe_join(dest, rel)
        except storage.UnsafeKey as exc:
            raise RegistryError(f"{where}: {exc}; nothing fetched") from None
    problems: list[str] = []
    for rel, data in _read_checked(root, name, version, problems):
        targets[rel].parent.mkdir(parents=True, exist_ok=True)
        targets[rel].write_bytes(data)
    if problems:
        raise VerifyError(f"{name}/{version}", problems)
    return dest


# ---- aliases ----


def _alias_uri(root: str, name: str, alias: str) -> str:
    return storage.join(model_root(root, name), "aliases", f"{alias}.json")


def _audit_uri(root: str, name: str, alias: str, generation: int) -> str:
    return storage.join(model_root(root, name), "audit", alias, f"{generation:010d}.json")


def _read_alias(root: str, name: str, alias: str) -> tuple[dict | None, str | None]:
    data, token = storage.read_versioned(_alias_uri(root, name, _check_alias(alias)))
    return (json.loads(data) if data is not None else None), token


def get_alias(root: str, name: str, alias: str) -> dict | None:
    """The alias document (``version``, ``generation``, and its last move), or None when unset."""
    return _read_alias(root, name, alias)[0]


def aliases(root: str, name: str) -> dict[str, dict]:
    return {a: doc for a in ALIASES if (doc := get_alias(root, name, a))}


def _record(root: str, name: str, doc: dict) -> None:
    """Write ``doc``'s audit record unless it is already there (records are written once)."""
    try:
        storage.write_if(_audit_uri(root, name, doc["alias"], doc["generation"]), json.dumps(doc, sort_keys=True).encode(), None)
    except storage.Conflict:
        pass


def history(root: str, name: str, alias: str | None = None) -> list[dict]:
    """Every recorded move (of ``alias``, or of all aliases), oldest first."""
    records = []
    for rel in storage.list_names(storage.join(model_root(root, name), "audit")):
        if alias is None or rel.startswith(f"{alias}/"):
            records.append(json.loads(storage.read_text(storage.join(model_root(root, name), "audit", rel))))
    # A move whose writer died before its audit write is still recorded in its alias document.
    for doc in aliases(root, name).values():
        if (alias is None or doc["alias"] == alias) and not any(
            r["alias"] == doc["alias"] and r["generation"] == doc["generation"] for r in records
        ):
            records.append(doc)
    return sorted(records, key=lambda r: (r["at"], r["alias"], r["generation"]))


def latest(root: str, name: str) -> str | None:
    try:
        return storage.read_text(storage.join(model_root(root, name), "LATEST")).strip() or None
    except FileNotFoundError:
        return None


def move(
    root: str,
    name: str,
    alias: str,
    version: str,
    *,
    reason: str,
    forward_only: bool = False,
    expect: str | None | bool = False,
) -> dict:
    """Point ``alias`` at ``version`` (complete and verified) by compare-and-swap; returns the new alias document.

    ``forward_only``: refuse a version that does not sort after the alias's current one (for the
    champion, nor after LATEST, which older code wrote directly). ``expect``: the version the caller
    believes the alias holds (None: unset); a different current value is a conflict. The default
    (False) accepts whatever the alias holds at the moment it is read.
    """
    _check_alias(alias)
    if not reason or not reason.strip():
        raise RegistryError("a reason is required for every alias move (it goes to the audit log)")
    if alias in ("champion", "candidate") and (mark := rejection(root, name, _check_version(version))):
        raise Rejected(f"{name}/{version} was rejected ({describe_rejection(mark)}): it cannot become {alias}; nothing changed")
    verify(root, name, _check_version(version))
    current, token = _read_alias(root, name, alias)
    was = current["version"] if current else None
    if expect is not False and was != expect:
        raise AliasConflict(f"{name}:{alias} is {was or 'unset'}, not {expect or 'unset'} as expected: nothing changed")
    if was == version:
        return current  # already there: not a move, nothing to record
    if forward_only:
        floor = max(filter(None, [was, latest(root, name) if alias == "champion" else None]), default=None)
        if floor is not None and version <= floor:
            raise RegistryError(f"{name}:{alias} stays at {floor}: {version} is not newer (only a rollback moves it back)")
    if current:
        _record(root, name, current)  # the move before ours, in case its writer died before recording it
    doc = {
        "alias": alias,
        "version": version,
        "generation": (current["generation"] + 1) if current else 1,
        "from": was,
        "at": time.time(),
        "by": actor(),
        "reason": reason.strip(),
    }
    try:
        storage.write_if(_alias_uri(root, name, alias), json.dumps(doc, sort_keys=True).encode(), token)
    except storage.Conflict:
        now = get_alias(root, name, alias) or {}
        raise AliasConflict(
            f"{name}:{alias} was moved concurrently (now {now.get('version', 'unset')} by {now.get('by', '?')}): nothing changed; re-read and retry"
        ) from None
    _record(root, name, doc)
    log.info("%s:%s %s -> %s (%s, by %s)", name, alias, was or "unset", version, doc["reason"], doc["by"])
    if alias == "champion":
        _sync(root, name)
    return doc


def _sync(root: str, name: str) -> None:
    """Make ``previous`` and LATEST follow the champion (``previous`` = what the champion's last move
    replaced). Each write is conditional and re-checks the champion afterwards, so concurrent
    promotions converge on the last champion instead of the last writer."""
    for _ in range(_SYNC_ATTEMPTS):
        champ = get_alias(root, name, "champion")
        if champ is None:
            return
        prev, prev_token = _read_alias(root, name, "previous")
        if champ["from"] and (prev is None or prev["version"] != champ["from"]):
            doc = {
                "alias": "previous",
                "version": champ["from"],
                "generation": (prev["generation"] + 1) if prev else 1,
                "from": prev["version"] if prev else None,
                "at": time.time(),
                "by": champ["by"],
                "reason": f"champion moved {champ['from']} -> {champ['version']}",
            }
            try:
                if prev:
                    _record(root, name, prev)
                storage.write_if(_alias_uri(root, name, "previous"), json.dumps(doc, sort_keys=True).encode(), prev_token)
                _record(root, name, doc)
            except storage.Conflict:
                continue
        latest_uri = storage.join(model_root(root, name), "LATEST")
        data, token = storage.read_versioned(latest_uri)
        if data is None or data.decode().strip() != champ["version"]:
            try:
                storage.write_if(latest_uri, champ["version"].encode(), token)
            except storage.Conflict:
                continue
        if (get_alias(root, name, "champion") or {}).get("generation") == champ["generation"]:
            return
    raise RegistryError(f"{name}: champion kept moving while LATEST/previous were synced; run `python -m ops.models verify` to repair")


def sync(root: str, name: str) -> None:
    """Repair LATEST and ``previous`` after a writer died between its champion move and its sync."""
    _sync(root, name)


@dataclass
class Published:
    uri: str
    version: str
    champion: bool  # the champion alias (and LATEST) moved to this version
    note: str = ""


def publish(
    local_dir: Path,
    root: str,
    name: str,
    version: str,
    *,
    reason: str,
    champion: bool = True,
    required: tuple[str, ...] | None = None,
    adopt: bool = True,
) -> Published:
    """Add ``version``; with ``adopt``, also make it the candidate and, with ``champion``, the champion
    (forward only: a run that finishes after a newer version was published leaves the champion where it is).

    ``adopt=False`` is how a workload publishes (a training Job or CronJob, the LLM import Job): the
    version only. Its role may not move an alias or LATEST (components/lib/iam.py ``_registry_guards``,
    issue 24 item 8); the pipeline adopts the version afterwards (``adopt``, ops/deliver.py). ``adopt=True``
    is for an identity that may move aliases: a person's local run, a fixture, a CLI."""
    uri = add_version(local_dir, root, name, version, required)
    if not adopt:
        return Published(uri, version, False, "published as a version only: the pipeline adopts it")
    try:
        move(root, name, "candidate", version, reason=reason, forward_only=True)
    except RegistryError as exc:
        log.warning("%s", exc)
    if not champion:
        return Published(uri, version, False, "published as candidate only")
    try:
        move(root, name, "champion", version, reason=reason, forward_only=True)
    except RegistryError as exc:
        log.warning("%s", exc)
        return Published(uri, version, False, str(exc))
    return Published(uri, version, True)


# ---- adoption: the pipeline takes what workloads published ----

# Where a version records its gate (training/contract.py Run.publish: ``metadata.json``; llm/lora_gate.py:
# ``lora-adapter.json``), as ``gate.passed``. Imported LLM weights (llm/importer.py ``llm-version.json``)
# have no quality gate: their canary (golden prompts included) judges them.
GATE_RECORDS = ("metadata.json", "lora-adapter.json")
UNGATED_RECORDS = ("llm-version.json",)
# Version names sort by time: ``YYYYmmddTHHMMSSZ-<id>`` (training/artifacts.py new_version, llm/importer.py).
_TIMED_RE = re.compile(r"^(\d{8}T\d{6}Z)-")
CLOCK_SKEW_S = 300


def gate_record(root: str, name: str, version: str) -> str | None:
    """Why ``version`` has no passing gate on record, or None when it has one (or needs none)."""
    files = read_manifest(root, name, version)["files"]
    for record in GATE_RECORDS:
        if record in files:
            try:
                gate = json.loads(storage.read_text(storage.join(model_root(root, name), version, record))).get("gate") or {}
            except (FileNotFoundError, ValueError, AttributeError):
                return f"{record} is not readable JSON"
            return None if gate.get("passed") is True else f"no passing gate recorded in {record} (gate.passed is {gate.get('passed')!r})"
    if any(record in files for record in UNGATED_RECORDS):
        return None
    return f"no gate record ({' or '.join(GATE_RECORDS)})"


def _name_time(root: str, name: str, version: str, now: float | None) -> str | None:
    """Why ``version``'s name is not an honest time, or None. The time that counts is when the version
    was completed: its manifest's LastModified, which the store sets and the writer cannot. A name for a
    time after that (beyond the clock skew) is refused for good, not only while that time is in the
    future: a workload could otherwise plant a version that the pipeline adopts hours later, after the
    workload is gone, ahead of every real version published in between. A name earlier than its
    completion is normal (the name is taken before the upload, which may take minutes)."""
    if not _VERSION_RE.match(version):
        return "not a valid version name (letters, digits, '.', '_' and '-' only)"
    m = _TIMED_RE.match(version)
    if m is None:
        return "not a time-sorted version name (YYYYmmddTHHMMSSZ-<id>)"
    try:
        stamp = calendar.timegm(time.strptime(m.group(1), "%Y%m%dT%H%M%SZ"))
    except ValueError:
        return f"{m.group(1)} is not a time"
    if stamp > (time.time() if now is None else now) + CLOCK_SKEW_S:
        return f"named for a time in the future ({m.group(1)})"
    completed = storage.modified(storage.join(model_root(root, name), version, MANIFEST))
    if stamp > completed + CLOCK_SKEW_S:
        return f"named for {when(stamp)} but completed at {when(completed)} (its {MANIFEST}): a name after its completion is refused"
    return None


def adoptable(root: str, name: str, version: str, now: float | None = None) -> str | None:
    """Why the pipeline must not adopt ``version``, or None: its name is a time not after its completion
    (``_name_time``; a name that sorts after every real one would stop every later version: forward
    only), it is not rejected, and its gate passed on record. (Its files are checked against its
    manifest by the move itself: ``adopt`` skips a version that fails.)"""
    if why := _name_time(root, name, version, now):
        return why
    if mark := rejection(root, name, version):
        return f"rejected ({describe_rejection(mark)})"
    return gate_record(root, name, version)


def adopt(root: str, name: str, *, champion: bool, reason: str) -> dict | None:
    """The pipeline's step after the workloads (issue 24 item 8): the newest version that is newer than
    the champion (and, for the candidate, than the candidate) and ``adoptable`` becomes the candidate
    and, with ``champion`` (a stack where no canary judges), the champion, which LATEST follows. Every
    version a run published since the last adoption is considered, so a scheduled run that no pipeline
    watched is adopted by the next one. Compare-and-swap and forward only, as every move (``move``).
    Returns ``{"version", "moved": [aliases], "skipped": {version: why}}``, or None when nothing is newer."""
    reason = _need_reason(reason, "adopt a version")
    current = {a: d["version"] for a, d in aliases(root, name).items()}
    floor = max(filter(None, [current.get("champion"), latest(root, name) if champion else current.get("candidate")]), default="")
    skipped: dict[str, str] = {}
    for version in reversed([v for v in versions(root, name) if v > floor]):
        try:
            why = adoptable(root, name, version)
        except RegistryError as exc:  # e.g. an unreadable manifest: not this one, an older one may do
            why = str(exc)
        if why:
            skipped[version] = why
            log.warning("%s/%s not adopted: %s", name, version, why)
            continue
        moved = []
        try:
            for alias in ("candidate", "champion") if champion else ("candidate",):
                if current.get(alias) is None or version > current[alias]:
                    move(root, name, alias, version, reason=reason, forward_only=True, expect=current.get(alias))
                    moved.append(alias)
        except AliasConflict:
            raise
        except RegistryError as exc:  # its files differ from its manifest: nothing moved, an older one may do
            skipped[version] = str(exc)
            log.warning("%s/%s not adopted: %s", name, version, exc)
            continue
        return {"version": version, "moved": moved, "skipped": skipped}
    return {"version": None, "moved": [], "skipped": skipped} if skipped else None


# ---- promotion between stores ----


def copy_version(src_root: str, dst_root: str, name: str, version: str) -> str:
    """Copy ``version`` byte for byte from one store to another, checking every file against the
    source manifest as it is read and again as it lands; the target manifest is written only when
    every file matches, so a corrupted copy never becomes a complete version there. Idempotent.
    A version rejected in the source store is refused (Rejected): a copy must not undo a rejection."""
    manifest = read_manifest(src_root, name, version)
    if mark := rejection(src_root, name, version):
        raise Rejected(
            f"{name}/{version} was rejected in {src_root} ({describe_rejection(mark)}): not promoted to {dst_root}; nothing changed"
        )
    files = _files(manifest, f"{name}/{version} in {src_root}")
    try:
        existing = read_manifest(dst_root, name, version)
    except RegistryError:
        existing = None
    if existing is not None:
        if existing["files"] != manifest["files"]:
            raise RegistryError(f"{name}/{version} exists in {dst_root} with different files: refusing to overwrite an immutable version")
        verify(dst_root, name, version)
        return storage.join(model_root(dst_root, name), version)
    src = storage.join(model_root(src_root, name), version)
    dst = storage.join(model_root(dst_root, name), version)
    problems = []
    for rel, want in files.items():
        data = storage.read_bytes(storage.join(src, rel))
        if _sha256(data) != want["sha256"]:
            problems.append(f"{rel}: source sha256 {_sha256(data)[:12]} != manifest {want['sha256'][:12]}")
            continue
        storage.write_bytes(storage.join(dst, rel), data)
        landed = storage.read_bytes(storage.join(dst, rel))
        if _sha256(landed) != want["sha256"]:
            problems.append(f"{rel}: arrived with sha256 {_sha256(landed)[:12]} != manifest {want['sha256'][:12]}")
    if problems:
        raise VerifyError(f"copy of {name}/{version} to {dst_root} refused", problems)
    _write_manifest(dst_root, name, version, manifest | {"copied_from": src, "copied_at": time.time(), "copied_by": actor()})
    return dst


def _rejected_uri(root: str, name: str, version: str) -> str:
    return storage.join(model_root(root, name), "rejected", f"{_check_version(version)}.json")


def _need_reason(reason: str, what: str) -> str:
    if not reason or not reason.strip():
        raise RegistryError(f"a reason is required to {what} (it goes to the audit log)")
    return reason.strip()


def _mark_rejected(root: str, name: str, version: str, reason: str) -> dict:
    """Write ``version``'s rejection record once; a version already rejected keeps its first record."""
    doc = {"version": version, "at": time.time(), "by": actor(), "reason": reason}
    try:
        storage.write_if(_rejected_uri(root, name, version), json.dumps(doc, sort_keys=True).encode(), None)
    except storage.Conflict:
        return rejection(root, name, version) or doc
    log.info("%s/%s rejected (%s, by %s)", name, version, doc["reason"], doc["by"])
    return doc


def reject(root: str, name: str, version: str, *, reason: str) -> dict:
    """Mark ``version`` rejected (a failed canary, a bad model found later): it never becomes champion
    or candidate again in this store, nor is it copied to another, so the next pipeline run or `pulumi
    up` does not retry it. Written once (a second rejection keeps the first record); returns the record.

    A version that is not the champion: no alias moves. The champion: it is rolled back first, to the
    version ``rollback`` would choose, which also rejects it; with no good version to go back to,
    nothing is written and the RegistryError says how to name one."""
    reason = _need_reason(reason, "reject a version")
    read_manifest(root, name, version)  # only a version that exists
    champ = get_alias(root, name, "champion")
    if champ is None or champ["version"] != version:
        return _mark_rejected(root, name, version, reason)
    to = rollback_target(root, name)
    if to is None:
        raise RegistryError(
            f"{name}/{version} is the champion and no earlier champion is left to serve instead (none, or all rejected): "
            f"nothing changed; name one: python -m ops.models rollback --model {name} --to VERSION --reason ... (that rejects {version})"
        )
    _roll_back(root, name, champ, to, reason=reason, rejected_because=reason)
    return _mark_rejected(root, name, version, reason)  # written by the rollback: this returns that record


def rejection(root: str, name: str, version: str) -> dict | None:
    """The rejection record of ``version``, or None."""
    try:
        return json.loads(storage.read_text(_rejected_uri(root, name, version)))
    except FileNotFoundError:
        return None


def rejections(root: str, name: str) -> dict[str, dict]:
    """Every rejection record of model ``name``, by version."""
    base = storage.join(model_root(root, name), "rejected")
    return {
        rel.removesuffix(".json"): json.loads(storage.read_text(storage.join(base, rel)))
        for rel in storage.list_names(base)
        if rel.endswith(".json")
    }


def promote_between(src_root: str, dst_root: str, name: str, version: str | None = None, *, reason: str, champion: bool = True) -> dict:
    """Promotion, not retraining: copy the source's ``version`` (default: its champion) to the target
    and make it the target's candidate, then (``champion``) its champion (forward only). With
    ``champion=False`` the target's champion stays: the canary on the target decides (README "Model delivery").
    A version rejected in the source store is refused (``Rejected``, from ``copy_version``) and nothing
    is written to the target."""
    if version is None:
        champ = get_alias(src_root, name, "champion")
        if champ is None:
            raise RegistryError(f"{name}: {src_root} has no champion to promote; name a version")
        version = champ["version"]
    copy_version(src_root, dst_root, name, version)
    why = f"{reason} (promoted from {src_root})"
    candidate = move(dst_root, name, "candidate", version, reason=why)
    if not champion:
        return candidate
    return move(dst_root, name, "champion", version, reason=why, forward_only=True)


def champions(root: str, name: str) -> list[str]:
    """The versions the champion alias has pointed at, in the order of its moves (a version appears
    once per move to it), from the audit history."""
    return [r["version"] for r in sorted(history(root, name, "champion"), key=lambda r: r["generation"])]


def served_as_champion(root: str, name: str, version: str) -> bool:
    """Whether ``version`` has been this store's champion at some point (the audit history says so).
    A delivery of such a version is a rollback to bytes that already served, not a new model."""
    return version in champions(root, name)


def rollback_target(root: str, name: str) -> str | None:
    """Where a rollback goes by default: the most recent earlier champion that is neither the current
    one nor rejected; None when there is none. Not ``previous``, which after a rollback names the
    version rolled back from (rejected): a second rollback goes further back, never forward again."""
    champ = get_alias(root, name, "champion")
    if champ is None:
        return None
    rejected = rejections(root, name)
    for version in reversed(champions(root, name)):
        if version != champ["version"] and version not in rejected:
            return version
    return None


def rollback(root: str, name: str, to: str | None = None, *, reason: str) -> dict:
    """Move the champion back to ``to`` (default: ``rollback_target``), explicitly; LATEST follows.

    The version rolled back from is rejected (who and why in its record: the rollback is final) and,
    if it is the candidate, the candidate moves to ``to`` too, so the next pipeline run does not
    deliver it again. ``to`` is checked (complete, digests, not rejected) before anything is written.
    Returns the champion's new alias document."""
    reason = _need_reason(reason, "roll back")
    champ = get_alias(root, name, "champion")
    if champ is None:
        raise RegistryError(f"{name}: no champion in {root}: nothing to roll back")
    if to is None:
        to = rollback_target(root, name)
        if to is None:
            raise RegistryError(
                f"{name}: no previous version recorded to roll back to from {champ['version']} "
                "(no earlier champion that is not rejected): name one with --to"
            )
    if to == champ["version"]:
        raise RegistryError(f"{name}: champion is already {to}")
    return _roll_back(root, name, champ, to, reason=reason, rejected_because=f"rolled back: {reason}")


def _roll_back(root: str, name: str, champ: dict, to: str, *, reason: str, rejected_because: str) -> dict:
    bad = champ["version"]
    if mark := rejection(root, name, _check_version(to)):
        raise Rejected(f"{name}/{to} was rejected ({describe_rejection(mark)}): cannot roll back to it; nothing changed")
    verify(root, name, to)
    # Rejected first: a rollback that dies after this line is finished by running it again (the
    # champion is still ``bad``); one that moved the champion first and died would leave ``bad``
    # deliverable, and a re-run would roll back one version too far.
    _mark_rejected(root, name, bad, rejected_because)
    why = f"rollback from {bad}: {reason}"
    doc = move(root, name, "champion", to, reason=why, expect=bad)
    cand = get_alias(root, name, "candidate")
    if cand is not None and cand["version"] == bad:
        try:
            move(root, name, "candidate", to, reason=why, expect=bad)
        except AliasConflict:
            pass  # someone moved it meanwhile: off ``bad`` either way (it cannot go back to a rejected version)
    return doc
