"""An in-process front-end in front of in-process workers, and a raw HTTP/1.1 test client.

The front-end and the workers are the project's real servers on real loopback
sockets, run in the test's own trio loop, so a test can start several, kill
one, and read exact bytes off the wire.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from fcgi_cluster.frontend import bind_listeners, parse_config, serve_frontend
from fcgi_cluster.worker import WorkerConfig, serve


@asynccontextmanager
async def workers(app: object, count: int = 1, config: WorkerConfig = WorkerConfig()) -> AsyncIterator[list[str]]:
    """``count`` in-process workers serving ``app`` on free loopback ports; yields their addresses."""
    async with trio.open_nursery() as nursery:
        addresses = [await nursery.start(serve, app, "127.0.0.1:0", config) for _ in range(count)]
        try:
            yield addresses
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def frontend(config_text: str, **format_args: object) -> AsyncIterator[tuple[int, object]]:
    """An in-process front-end for a cluster.toml text; yields (port, FrontendServer).

    ``[frontend] listen`` is replaced by a free port; the text may use
    ``{name}`` placeholders filled from ``format_args``.
    """
    text = config_text.format(**format_args) if format_args else config_text
    config = parse_config(text, "<test>")
    sockets = bind_listeners(["127.0.0.1:0"])[0]
    port = sockets[0].getsockname()[1]
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_frontend, config, sockets)
        try:
            yield port, server
        finally:
            nursery.cancel_scope.cancel()


def upstream_config(addresses: Sequence[str], *, upstream: str = "", frontend: str = "", routes: str = "") -> str:
    servers = ", ".join(f'"{address}"' for address in addresses)
    return f"[frontend]\naccess_log = false\n{frontend}\n[upstream.app]\nservers = [{servers}]\n{upstream}\n{routes}\n"


@dataclass
class HTTPResponse:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    chunked: bool = False
    raw_head: bytes = b""
    extra: dict = field(default_factory=dict)

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


class RawClient:
    """A client connection that sends raw bytes and parses responses strictly."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.closed = False

    @classmethod
    @asynccontextmanager
    async def connect(cls, port: int) -> AsyncIterator[RawClient]:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            yield cls(stream)
        finally:
            await stream.aclose()

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self) -> bool:
        data = await self.stream.receive_some(65536)
        if not data:
            self.closed = True
            return False
        self.buffer += data
        return True

    async def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            if not await self._fill():
                raise EOFError(f"connection closed before {marker!r}; got {bytes(self.buffer[:200])!r}")
        index = self.buffer.index(marker) + len(marker)
        out = bytes(self.buffer[:index])
        del self.buffer[:index]
        return out

    async def _read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not await self._fill():
                raise EOFError("connection closed in the middle of a body")
        out = bytes(self.buffer[:size])
        del self.buffer[:size]
        return out

    async def response(self, *, head_request: bool = False) -> HTTPResponse:
        """Read one response (skipping nothing: a 100 Continue is returned as such)."""
        raw = await self._read_until(b"\r\n\r\n")
        lines = raw[:-4].split(b"\r\n")
        version, status, *reason = lines[0].split(b" ", 2)
        assert version == b"HTTP/1.1", lines[0]
        headers = [tuple(part.strip() for part in line.split(b":", 1)) for line in lines[1:]]
        response = HTTPResponse(int(status), reason[0] if reason else b"", headers, b"", raw_head=raw)  # type: ignore[arg-type]
        code = response.status
        if head_request or code in (204, 304) or 100 <= code < 200:
            return response
        if (response.header(b"transfer-encoding") or b"").lower() == b"chunked":
            response.chunked = True
            body = bytearray()
            while True:
                size_line = await self._read_until(b"\r\n")
                size = int(size_line.strip().split(b";")[0], 16)
                if size == 0:
                    await self._read_until(b"\r\n")
                    break
                body += await self._read_exactly(size)
                assert await self._read_exactly(2) == b"\r\n"
            response.body = bytes(body)
        elif response.header(b"content-length") is not None:
            response.body = await self._read_exactly(int(response.header(b"content-length")))  # type: ignore[arg-type]
        else:
            while await self._fill():
                pass
            response.body = bytes(self.buffer)
            self.buffer.clear()
        return response

    async def at_eof(self, timeout: float = 5.0) -> bool:
        """True if the server closes the connection (within ``timeout``) with nothing more sent."""
        with trio.move_on_after(timeout):
            while await self._fill():
                pass
            return not self.buffer
        return False


async def get(port: int, target: str = "/", headers: Sequence[tuple[str, str]] = (), method: str = "GET",
              body: bytes = b"") -> HTTPResponse:
    """One request on a new connection."""
    lines = [f"{method} {target} HTTP/1.1", "Host: test.local", *(f"{k}: {v}" for k, v in headers)]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    async with RawClient.connect(port) as client:
        await client.send(raw)
        return await client.response(head_request=method == "HEAD")


def dead_address() -> str:
    """A loopback address nothing listens on: a port the kernel just gave out and took back.

    Connecting to it is refused at once, as to a worker process that died.
    """
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


@asynccontextmanager
async def tls_connect(port: int, context: object, server_hostname: str = "localhost") -> AsyncIterator[RawClient]:
    """A ``RawClient`` over TLS: the handshake is done when it is yielded."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    tls = trio.SSLStream(stream, context, server_hostname=server_hostname)  # type: ignore[arg-type]
    try:
        await tls.do_handshake()
        yield RawClient(tls)  # type: ignore[arg-type]
    finally:
        await trio.aclose_forcefully(tls)


def request_bytes(target: str, headers: Sequence[tuple[str, str]] = (), method: str = "GET", body: bytes = b"") -> bytes:
    """The raw bytes of one request, framed as ``get`` frames it."""
    lines = [f"{method} {target} HTTP/1.1", "Host: test.local", *(f"{k}: {v}" for k, v in headers)]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@asynccontextmanager
async def stoppable_worker(app: object, config: WorkerConfig = WorkerConfig()) -> AsyncIterator[tuple[str, object]]:
    """One in-process worker that a test can stop while the front-end runs on.

    Yields ``(address, stop)``; ``await stop()`` returns once the worker has
    closed its listening socket and its connections, as a dead process would.
    """
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()
        done = trio.Event()

        async def run(task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with scope:
                    await serve(app, "127.0.0.1:0", config, task_status=task_status)
            finally:
                done.set()

        address = await nursery.start(run)

        async def stop() -> None:
            scope.cancel()
            await done.wait()

        try:
            yield address, stop
        finally:
            nursery.cancel_scope.cancel()
