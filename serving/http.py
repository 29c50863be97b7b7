"""Connection-level defences uvicorn's HTTP protocol does not have: read deadlines and a connection cap.

* Header deadline: the request line and headers must arrive within ``header_timeout_s`` of the
  connection opening (or of the first byte of a later request on a keep-alive connection): idle and
  slow-header (slowloris) connections are answered 408 and closed.
* Body deadline: once the headers are in, the whole body must arrive within ``body_timeout_s``;
  a slow body is closed (the app sees a disconnect).
* Header size cap (``MAX_HEADER_BYTES``): 431 and close beyond it.
* Write deadline: a response whose bytes the client does not read (its socket buffers full, so the
  transport pauses writing) must drain within ``write_timeout_s``; beyond it the connection is
  aborted (close() would wait for a flush that never comes), which ends the request and frees its
  slot under the connection cap. Without it, clients that send requests and never read their
  responses held connections forever (8 of them kept a --max-connections 8 server at 503).
* Connection cap: beyond ``max_connections`` a new connection is answered 503 and closed at once,
  before anything is read, so idle sockets cannot pin memory or file descriptors.

And one speed-up: a response's head and body leave in one write (``_OneWritePerResponse``).

Between requests, uvicorn's own keep-alive timeout applies. The app bounds what it buffers itself
(body cap from Content-Length, a budget for bodies in flight).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEADER_BYTES = 64 * 1024


def _response(status: str, text: str) -> bytes:
    body = b'{"error":"' + text.encode() + b'"}'
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body
    )


class _OneWritePerResponse:
    """The connection's transport, with a response's status line and headers held back until its
    body is written, so both leave in one send() (uvicorn writes them separately: two system calls
    per response, the largest single cost of a small predict under load). A head with no body
    following in the same turn of the event loop (HEAD, 204, 100 Continue) is flushed at the next."""

    __slots__ = ("_transport", "_loop", "_head")

    def __init__(self, transport, loop):
        self._transport, self._loop, self._head = transport, loop, None

    def write(self, data) -> None:
        if self._head is not None:
            data, self._head = self._head + data, None
        elif data[:9] == b"HTTP/1.1 " and data[-4:] == b"\r\n\r\n":
            self._head = data
            self._loop.call_soon(self._flush)
            return
        self._transport.write(data)

    def _flush(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            if not self._transport.is_closing():
                self._transport.write(head)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name):
        return getattr(self._transport, name)


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol with the limits above; ``guarded_protocol()`` makes the subclass that
    carries one server's settings (uvicorn takes a class, and makes an instance per connection)."""

    header_timeout_s: float
    body_timeout_s: float
    write_timeout_s: float
    max_connections: int
    on_close: Callable[[str], None]  # counts each forced close, by reason

    _deadline: asyncio.TimerHandle | None = None
    _write_deadline: asyncio.TimerHandle | None = None
    _deadline_what = ""
    _header_bytes = 0
    _in_headers = False  # a request line has begun, its headers are not complete
    _in_body = False

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired, what)
        self._deadline_what = what

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, what: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        self.on_close(what)
        if what == "header_timeout":
            self.transport.write(_response("408 Request Timeout", "request headers not received in time"))
        # body_timeout: the app owns the response; closing makes its receive() see a disconnect.
        self.transport.close()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.transport = _OneWritePerResponse(transport, self.loop)
        if len(self.connections) > self.max_connections:
            self.on_close("connection_limit")
            transport.write(_response("503 Service Unavailable", "too many connections"))
            transport.close()
            return
        self._arm(self.header_timeout_s, "header_timeout")

    def connection_lost(self, exc) -> None:
        self._disarm()
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        # asyncio calls this when the transport's buffer passes its high-water mark: the client is
        # not reading. It has write_timeout_s to catch up.
        super().pause_writing()
        if self._write_deadline is None:
            self._write_deadline = self.loop.call_later(self.write_timeout_s, self._write_expired)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None

    def _write_expired(self) -> None:
        self._write_deadline = None
        if not self.transport.is_closing():
            self.on_close("write_timeout")
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if not self._in_body:
            # Counted per chunk (cheaper than per header callback); on_headers_complete resets it.
            self._header_bytes += len(data)
        super().data_received(data)
        if self.transport.is_closing():
            return
        if not self._in_body and self._header_bytes > MAX_HEADER_BYTES:
            self.on_close("header_too_large")
            self.transport.write(_response("431 Request Header Fields Too Large", "request line and headers exceed 64 KiB"))
            self.transport.close()
            return
        # A deadline only for what this chunk left incomplete: most requests arrive whole in one
        # read and need no timer at all. Headers: from the first byte of a request on a kept-alive
        # connection (a new connection's runs from its opening); body: from the end of the headers.
        if self._in_headers:
            if self._deadline is None:
                self._arm(self.header_timeout_s, "header_timeout")
        elif self._in_body and (self._deadline is None or self._deadline_what != "body_timeout"):
            self._arm(self.body_timeout_s, "body_timeout")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._header_bytes = 0
        self._in_headers, self._in_body = False, True
        self._disarm()  # headers in time; a body still incomplete after this chunk gets its own deadline

    def on_message_complete(self) -> None:
        self._in_body = False
        self._disarm()
        super().on_message_complete()


def guarded_protocol(
    header_timeout_s: float,
    body_timeout_s: float,
    max_connections: int,
    on_close: Callable[[str], None] = lambda reason: None,
    write_timeout_s: float = 30.0,
) -> type[GuardedProtocol]:
    """A uvicorn protocol class with the limits above; ``on_close(reason)`` counts each forced close."""
    settings = {
        "header_timeout_s": header_timeout_s,
        "body_timeout_s": body_timeout_s,
        "write_timeout_s": write_timeout_s,
        "max_connections": max_connections,
        "on_close": staticmethod(on_close),  # a plain function, not a method of the connection
    }
    return type("GuardedProtocol", (GuardedProtocol,), settings)
