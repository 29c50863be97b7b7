"""What the server answers when it does not answer 200: one exception type per meaning.

The HTTP status of each type and the headers that go with it live in one table (``STATUS``), so a
handler says *what* went wrong and the mapping to the protocol is decided once. The exceptions pickle
(they cross from the parser worker process), so they carry only their message.
"""

from __future__ import annotations


class ServingError(Exception):
    """Base: the message is shown to the client as ``{"error": message}``."""

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class BadRequest(ServingError):
    """The request does not match the API or the model's signature."""


class Unauthorized(ServingError):
    """No API key, or one that is not valid."""


class NotFound(ServingError):
    """No such route, model, version or signature."""


class MethodNotAllowed(ServingError):
    """The route exists but takes another method; ``allow`` names it."""

    def __init__(self, message: str, allow: str = "POST"):
        super().__init__(message, allow)
        self.allow = allow


class PayloadTooLarge(ServingError):
    """The body is larger than --max-body-bytes."""


class Overloaded(ServingError):
    """The queue is full: the client should retry later (429)."""


class Unavailable(ServingError):
    """No model loaded yet, draining, timed out or the body budget is exhausted (503)."""


STATUS: dict[type[ServingError], tuple[int, tuple[tuple[bytes, bytes], ...]]] = {
    BadRequest: (400, ()),
    Unauthorized: (401, ((b"www-authenticate", b'Bearer realm="model-server"'),)),
    NotFound: (404, ()),
    MethodNotAllowed: (405, ()),
    PayloadTooLarge: (413, ((b"connection", b"close"),)),
    Overloaded: (429, ((b"retry-after", b"1"),)),
    Unavailable: (503, ((b"retry-after", b"1"),)),
}


def status_of(exc: ServingError) -> tuple[int, list[tuple[bytes, bytes]]]:
    status, headers = STATUS.get(type(exc), (500, ()))
    extra = [(b"allow", exc.allow.encode())] if isinstance(exc, MethodNotAllowed) else []
    return status, [*headers, *extra]
