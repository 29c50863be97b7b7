"""Tiny URI-addressed storage: local paths, file:// and s3:// (boto3; AWS_ENDPOINT_URL for MinIO etc.).

Local writes go to a temporary file then ``os.replace``, and an S3 PUT is atomic per object, so a
reader never sees half an object.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse


def _s3():
    import boto3

    return boto3.client("s3")


def parse(uri: str) -> tuple[str, str, str]:
    """(scheme, bucket, key) for s3://; ("file", "", path) otherwise."""
    u = urlparse(uri)
    if u.scheme == "s3":
        return "s3", u.netloc, u.path.lstrip("/")
    if u.scheme in ("", "file"):
        return "file", "", u.path if u.scheme == "file" else uri
    raise ValueError(f"unsupported URI scheme {u.scheme!r} in {uri!r}: use a path, file:// or s3://")


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
    """Copy every object under ``uri`` into ``local``; returns the relative names, sorted."""
    scheme, bucket, key = parse(uri)
    names: list[str] = []
    if scheme == "s3":
        s3 = _s3()
        prefix = key.rstrip("/") + "/"
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix) :]
                dest = local / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, obj["Key"], str(dest))
                names.append(rel)
    else:
        src = Path(key)
        if not src.is_dir():
            raise FileNotFoundError(uri)
        for p in src.rglob("*"):
            if p.is_file():
                rel = p.relative_to(src).as_posix()
                (local / rel).parent.mkdir(parents=True, exist_ok=True)
                (local / rel).write_bytes(p.read_bytes())
                names.append(rel)
    return sorted(names)
