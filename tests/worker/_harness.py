"""Drive one WorkerConnection through an in-memory stream with our web-server core.

The other end is the real ``ClientConnection``, so every test exercises both
sides of the protocol; no sockets, no processes.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio
import trio.testing

from fcgi_cluster.protocol import (
    NEED_DATA,
    AbortRequest,
    ClientConnection,
    ConnectionClosed,
    EndRequest,
    Request,
    Stderr,
    Stdin,
    Stdout,
)
from fcgi_cluster.worker import WorkerConfig
from fcgi_cluster.worker._asgi import ASGIHandler
from fcgi_cluster.worker._connection import WorkerConnection
from fcgi_cluster.worker._threads import ThreadPool
from fcgi_cluster.worker._wsgi import WSGIHandler


def params(uri: str = "/", method: str = "GET", **extra: str) -> dict[bytes, bytes]:
    path, _, query = uri.partition("?")
    base = {
        "REQUEST_METHOD": method,
        "REQUEST_URI": uri,
        "SCRIPT_NAME": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "40000",
    }
    base.update(extra)
    return {k.encode(): v.encode() for k, v in base.items()}


@dataclass
class Answer:
    stdout: bytes = b""
    stderr: bytes = b""
    end: EndRequest | None = None
    done: trio.Event = field(default_factory=trio.Event)

    @property
    def head(self) -> bytes:
        return self.stdout.partition(b"\r\n\r\n")[0]

    @property
    def body(self) -> bytes:
        return self.stdout.partition(b"\r\n\r\n")[2]

    @property
    def status(self) -> int:
        for line in self.head.split(b"\r\n"):
            if line.lower().startswith(b"status:"):
                return int(line.split()[1])
        return 200


class WebServer:
    """The web-server end of an in-memory FastCGI connection."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.core = ClientConnection()
        self.answers: dict[int, Answer] = {}
        self.closed = trio.Event()
        #: While True the web server reads nothing (a slow reader, with ``lockstep``).
        self.paused = False

    async def reader(self) -> None:
        while True:
            while self.paused:
                await trio.sleep(0.01)
            data = await self.stream.receive_some(65536)
            self.core.receive_data(data)
            while (event := self.core.next_event()) is not NEED_DATA:
                if isinstance(event, ConnectionClosed):
                    self.closed.set()
                    return
                answer = self.answers[event.request_id]
                if type(event) is Stdout:
                    answer.stdout += event.data
                elif type(event) is Stderr:
                    answer.stderr += event.data
                elif type(event) is EndRequest:
                    answer.end = event
                    answer.done.set()

    async def start(self, p: dict[bytes, bytes], body: bytes = b"", *, keep_conn: bool = True, end_body: bool = True) -> int:
        rid = self.core.new_request_id()
        self.answers[rid] = Answer()
        out = self.core.send(Request(rid, p, keep_conn=keep_conn))
        if body:
            out += self.core.send(Stdin(rid, body))
        if end_body:
            out += self.core.send(Stdin(rid, b""))
        await self.stream.send_all(out)
        return rid

    async def send_body(self, rid: int, data: bytes) -> None:
        await self.stream.send_all(self.core.send(Stdin(rid, data)))

    async def abort(self, rid: int) -> None:
        await self.stream.send_all(self.core.send(AbortRequest(rid)))

    async def request(self, p: dict[bytes, bytes], body: bytes = b"", **kw) -> Answer:
        rid = await self.start(p, body, **kw)
        answer = self.answers[rid]
        with trio.fail_after(10):
            await answer.done.wait()
        return answer


@asynccontextmanager
async def serving(app, *, interface: str = "wsgi", config: WorkerConfig = WorkerConfig(threads=8), state=None,
                  lockstep: bool = False):
    """Yield a WebServer connected to a worker connection serving ``app``.

    ``lockstep``: the worker's sends wait until the web server reads them (as a
    socket with full buffers would), so ``WebServer.paused`` makes a slow reader.
    """
    ours, theirs = trio.testing.lockstep_stream_pair() if lockstep else trio.testing.memory_stream_pair()
    pool = None
    if interface == "wsgi":
        pool = ThreadPool(config.threads or 1)
        handler = WSGIHandler(app, pool, config, {"fcgi_cluster.listen": "memory"})
    else:
        handler = ASGIHandler(app, config.root_path, state or {}, {})
    conn = WorkerConnection(theirs, handler, config, "memory")
    web = WebServer(ours)
    try:
        async with trio.open_nursery() as nursery:
            if pool is not None:
                nursery.start_soon(pool.watch)
                nursery.start_soon(handler.flusher.run)
            nursery.start_soon(conn.run)
            nursery.start_soon(web.reader)
            web.worker = conn
            yield web
            nursery.cancel_scope.cancel()
    finally:
        if pool is not None:
            pool.close()
