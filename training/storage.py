"""Tiny URI-addressed storage: local paths, file:// and s3:// (boto3; AWS_ENDPOINT_URL for MinIO etc.).

Local writes go to a temporary file then ``os.replace``, and an S3 PUT is atomic per object, so a
reader never sees half an object.

Pointers that several writers may move (the registry's aliases, ``LATEST``) use compare-and-swap:
``read_versioned`` returns the object with a token (S3: its ETag; local: the SHA-256 of its bytes),
``write_if`` writes only if the object still has that token (S3 conditional PUT, ``If-Match`` /
``If-None-Match: *``; local: an exclusive ``flock`` held across compare and replace). A writer that
lost the race gets ``Conflict``, never a silent overwrite.

Object keys that come from the store (manifest entries, bucket listings) are written under a local
folder only through ``safe_join``, which refuses absolute keys, ``..`` and anything that resolves
outside that folder (``UnsafeKey``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse


class Conflict(Exception):
    """A conditional write lost: the object changed (or appeared) since it was read."""


class UnsafeKey(ValueError):
    """An object key that would land outside the local folder it is fetched into."""


def safe_key(key: str) -> str:
    """``key`` if it is a relative, '/'-separated name with no ``..``, ``.`` or empty part; else UnsafeKey.
    Keys come from manifests and bucket listings, which whoever can write to the store controls."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or "\0" in key or any(p in ("", ".", "..") for p in parts):
        raise UnsafeKey(f"key {key!r} refused: only relative names without '..', '.', empty parts, '\\' or NUL may be fetched")
    return key


def safe_join(dest: Path, key: str) -> Path:
    """``dest / key``, refused (UnsafeKey) when ``key`` is absolute, has a ``..`` part, or resolves
    outside ``dest`` (e.g. through a symlink already in ``dest``). Reads, never writes: creates nothing."""
    target = Path(dest) / safe_key(key)
    base = Path(dest).resolve()
    if not target.resolve().is_relative_to(base):
        raise UnsafeKey(f"key {key!r} refused: it resolves to {target.resolve()}, outside {base}")
    return target


def _s3():
    import boto3

    return boto3.client("s3")


class BadURI(ValueError):
    """A store URI that names no usable location; the message is the one line to show."""


def parse(uri: str) -> tuple[str, str, str]:
    """(scheme, bucket, key) for s3://; ("file", "", path) for a path or file:// URI. A relative
    file URI is a relative path (``file://./artifacts`` is ``./artifacts``, not ``/artifacts``:
    urlparse reads the ``.`` as a host); a file URI naming a host, an s3 URI without a bucket, an
    empty path or another scheme is refused (BadURI). serving/model.py ``_split`` repeats these rules."""
    u = urlparse(uri)
    if u.scheme == "s3":
        if not u.netloc:
            raise BadURI(f"{uri!r}: an s3 URI needs a bucket: s3://BUCKET/PREFIX")
        return "s3", u.netloc, u.path.lstrip("/")
    if u.scheme == "":
        if not uri:
            raise BadURI("empty store URI: give a path, file:// or s3:// URI")
        return "file", "", uri
    if u.scheme != "file":
        raise BadURI(f"unsupported URI scheme {u.scheme!r} in {uri!r}: use a path, file:// or s3://")
    if u.netloc in (".", ".."):
        path = u.netloc + u.path
    elif u.netloc in ("", "localhost"):
        path = u.path
    else:
        raise BadURI(f"{uri!r}: a file URI names no host ({u.netloc!r}): use file:///absolute/path or file://./relative/path")
    if not path:
        raise BadURI(f"{uri!r}: no path: use file:///absolute/path or file://./relative/path")
    return "file", "", path


def display(uri: str) -> str:
    """Where ``uri`` is, for a person: a local path resolved to an absolute one, an s3 URI as it is."""
    scheme, _, key = parse(uri)
    return uri if scheme == "s3" else str(Path(key).resolve())


def check_writable(uri: str) -> None:
    """Refuse (BadURI, one line) a store a run could not publish to, before any training (a non-root
    user and ``/artifacts`` used to find out after the gate). A local store, or the nearest folder
    above it that exists (publish creates the rest), must be a writable folder; nothing is created
    here. An s3 store is not probed: writing needs the run's credentials, which only the chief's
    publish uses."""
    scheme, _, key = parse(uri)
    if scheme == "s3":
        return
    path = Path(key).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise BadURI(f"store {uri} ({path}): {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BadURI(f"store {uri} ({path}) is not writable: {existing} does not let this user ({os.geteuid()}) create files")


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def read_bytes(uri: str) -> bytes:
    scheme, bucket, key = parse(uri)
    if scheme == "s3":
        s3 = _s3()
        try:
            return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except s3.exceptions.NoSuchKey:
            raise FileNotFoundError(uri) from None
    return Path(key).read_bytes()


def read_text(uri: str) -> str:
    return read_bytes(uri).decode()


def write_bytes(uri: str, data: bytes) -> None:
    scheme, bucket, key = parse(uri)
    if scheme == "s3":
        _s3().put_object(Bucket=bucket, Key=key, Body=data)
        return
    path = Path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def read_versioned(uri: str) -> tuple[bytes | None, str | None]:
    """(bytes, token) of ``uri``; (None, None) when it does not exist. Pass the token to ``write_if``."""
    scheme, bucket, key = parse(uri)
    if scheme == "s3":
        s3 = _s3()
        try:
            obj = s3.get_object(Bucket=bucket, Key=key)
        except s3.exceptions.NoSuchKey:
            return None, None
        return obj["Body"].read(), obj["ETag"]
    try:
        data = Path(key).read_bytes()
    except FileNotFoundError:
        return None, None
    return data, hashlib.sha256(data).hexdigest()


# S3 answers a lost condition with 412 PreconditionFailed, a concurrent conditional write with 409
# ConditionalRequestConflict, and If-Match on a deleted object with 404 NoSuchKey.
_CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412", "409"}


def write_if(uri: str, data: bytes, token: str | None) -> None:
    """Write ``data`` only if ``uri`` still has ``token`` (None: only if it does not exist yet)."""
    scheme, bucket, key = parse(uri)
    if scheme == "s3":
        from botocore.exceptions import ClientError

        cond = {"IfMatch": token} if token is not None else {"IfNoneMatch": "*"}
        try:
            _s3().put_object(Bucket=bucket, Key=key, Body=data, **cond)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _CONFLICT_CODES:
                raise Conflict(f"{uri} changed since it was read") from None
            raise
        return
    path = Path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        current, current_token = read_versioned(str(path))
        if current_token != token:
            raise Conflict(f"{uri} changed since it was read" if token else f"{uri} already exists")
        write_bytes(str(path), data)


@contextlib.contextmanager
def _locked(path: Path):
    # A sidecar lock file: the pointer itself is replaced (os.replace), so it cannot carry the lock.
    fd = os.open(path.parent / f".{path.name}.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def list_names(uri: str) -> list[str]:
    """Relative names of every object under ``uri`` (a "directory"), sorted; [] when there is none."""
    scheme, bucket, key = parse(uri)
    if scheme == "s3":
        prefix = key.rstrip("/") + "/"
        names = []
        for page in _s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            names += [obj["Key"][len(prefix) :] for obj in page.get("Contents", [])]
        return sorted(names)
    root = Path(key)
    if not root.is_dir():
        return []
    # Dot-files here are ours and not objects: lock files, and temporary files of a write in progress.
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def modified(uri: str) -> float:
    """When ``uri`` was last written, as a Unix time, set by the store and not by the writer (S3: the
    object's LastModified; a local store: the file's mtime). FileNotFoundError when it does not exist."""
    scheme, bucket, key = parse(uri)
    if scheme == "s3":
        from botocore.exceptions import ClientError

        try:
            return _s3().head_object(Bucket=bucket, Key=key)["LastModified"].timestamp()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(uri) from None
            raise
    return Path(key).stat().st_mtime


def exists(uri: str) -> bool:
    try:
        read_bytes(uri)
    except FileNotFoundError:
        return False
    return True


def upload_dir(local: Path, uri: str) -> list[str]:
    """Copy every file under ``local`` to ``uri``; returns the relative names, sorted."""
    names = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    for name in names:
        write_bytes(join(uri, name), (local / name).read_bytes())
    return names


def download_dir(uri: str, local: Path) -> list[str]:
    """Copy every object under ``uri`` into ``local``; returns the relative names, sorted. Every name
    is checked with ``safe_join`` before anything is written: one unsafe name refuses the whole fetch."""
    scheme, bucket, key = parse(uri)
    if scheme == "s3":
        s3 = _s3()
        prefix = key.rstrip("/") + "/"
        keys = [
            obj["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for obj in page.get("Contents", [])
            if not obj["Key"].endswith("/")  # "folder" markers some tools create: no bytes to fetch
        ]
        targets = {k: safe_join(local, k[len(prefix) :]) for k in keys}
        for obj_key, dest in targets.items():
            dest.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, obj_key, str(dest))
        return sorted(k[len(prefix) :] for k in keys)
    src = Path(key)
    if not src.is_dir():
        raise FileNotFoundError(uri)
    names = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    targets = {rel: safe_join(local, rel) for rel in names}
    for rel, dest in targets.items():
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes((src / rel).read_bytes())
    return names
