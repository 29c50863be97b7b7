"""serving/http.py's one-write-per-response transport, on a real event loop, and through uvicorn's real
HTTP protocol on a real socket (the writes it makes are recorded under the wrapper)."""

from __future__ import annotations

import asyncio
import socket

import uvicorn

from serving.http import _OneWritePerResponse, guarded_protocol


class Recording:
    def __init__(self):
        self.writes, self.closed = [], False

    def write(self, data):
        self.writes.append(bytes(data))

    def is_closing(self):
        return self.closed

    def close(self):
        self.closed = True

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 1) if name in ("peername", "sockname") else default


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


def test_head_and_body_leave_in_one_write_and_a_lone_head_at_the_next_turn():
    async def go():
        loop = asyncio.get_running_loop()
        rec = Recording()
        t = _OneWritePerResponse(rec, loop)
        t.write(HEAD)
        assert rec.writes == []  # held back
        t.write(b"{}")
        assert rec.writes == [HEAD + b"{}"]
        t.write(b"HTTP/1.1 204 No Content\r\n\r\n")  # no body follows
        await asyncio.sleep(0)
        assert rec.writes[-1] == b"HTTP/1.1 204 No Content\r\n\r\n"
        t.write(b"raw bytes")  # anything else passes straight through
        assert rec.writes[-1] == b"raw bytes"
        t.write(HEAD)
        t.close()  # a held head is written before the close
        assert rec.writes[-1] == HEAD and rec.closed
        assert t.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is the transport's

    asyncio.run(go())


def test_uvicorn_responses_are_one_write_each_on_a_real_socket():
    writes: list[bytes] = []
    base = guarded_protocol(5.0, 5.0, 100)

    class Spy(base):
        def connection_made(self, transport):
            real_write = transport.write

            def write(data):
                writes.append(bytes(data))
                real_write(data)

            transport.write = write
            super().connection_made(transport)

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async def go():
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", http=Spy, loop="none"))
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(3):  # keep-alive: three requests on one connection
            writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            body = await reader.readexactly(2)
            assert head.startswith(b"HTTP/1.1 200") and body == b"ok"
        writer.close()
        server.should_exit = True
        await task

    asyncio.run(go())
    responses = [w for w in writes if w.startswith(b"HTTP/1.1 200")]
    assert len(responses) == 3 and all(w.endswith(b"\r\n\r\nok") for w in responses), writes
    assert len(writes) == 3  # without the wrapper: six (head, then body)
