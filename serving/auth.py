"""Optional API keys for the predict routes, from a file mounted from a Kubernetes Secret.

One key per line (blank lines and lines starting with # are ignored). Kubernetes updates a mounted
Secret in place (an atomic symlink swap), so the file is re-read when its identity or mtime changes,
checked at most once a second. Keys are compared as SHA-256 digests with ``hmac.compare_digest``
against every key, so neither the length nor the position of a match shows in the timing.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time

from serving.errors import Unauthorized

log = logging.getLogger("serving.auth")


class ApiKeys:
    def __init__(self, path: str, check_every_s: float = 1.0):
        self.path = path
        self.check_every_s = check_every_s
        self._digests: list[bytes] = []
        self._stamp: tuple | None = None
        self._checked = 0.0
        self._load(force=True)

    def _load(self, force: bool = False) -> None:
        st = os.stat(self.path)  # follows the Secret's ..data symlink: a swap changes the inode
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp and not force:
            return
        with open(self.path, encoding="utf-8") as f:
            keys = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys]
        self._stamp = stamp
        if not keys:
            log.warning("%s holds no API keys: every predict request will be refused", self.path)
        else:
            log.info("loaded %d API key(s) from %s", len(keys), self.path)

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.check_every_s:
            return
        self._checked = now
        try:
            self._load()
        except OSError as exc:  # mid-swap or removed: keep the last good keys
            log.warning("cannot re-read API keys from %s: %s; keeping %d key(s)", self.path, exc, len(self._digests))

    def check(self, headers) -> None:
        """Raise Unauthorized unless the request carries a valid key (Bearer or X-API-Key)."""
        self._maybe_reload()
        key = None
        for name, value in headers:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer" and token.strip():
                    key = token.strip()
            elif name == b"x-api-key" and value.strip():
                key = value.strip()
        if key is None:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
        digest = hashlib.sha256(key).digest()
        ok = False
        for d in self._digests:
            ok |= hmac.compare_digest(d, digest)
        if not ok:
            raise Unauthorized("invalid API key")
