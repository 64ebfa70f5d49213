"""An in-process FastCGI worker for the client tests, built on our ServerConnection.

Not a mock: the worker side is the project's real sans-IO core driven over a
real loopback socket; only the application logic is written per test, so a
test can make the worker misbehave in exactly one way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial

import trio

from fcgi_cluster.protocol import (
    NEED_DATA,
    AbortRequest,
    ConnectionClosed,
    EndRequest,
    Event,
    Request,
    ServerConnection,
    Stderr,
    Stdin,
    Stdout,
)


@asynccontextmanager
async def fake_worker(handler: Callable[[trio.SocketStream], Awaitable[None]]) -> AsyncIterator[str]:
    """Serve ``handler(stream)`` per connection on a loopback port; yield "127.0.0.1:port"."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        try:
            yield f"127.0.0.1:{port}"
        finally:
            nursery.cancel_scope.cancel()


class Peer:
    """The worker side of one connection: events in, events out.

    Attributes:
        core: the ServerConnection.
        aborted: request IDs the client aborted, in order.
        max_in_flight: the most requests seen in flight at once.
    """

    def __init__(self, stream: trio.abc.Stream, **server_options: object) -> None:
        self.stream = stream
        self.core = ServerConnection(**server_options)  # type: ignore[arg-type]
        self.aborted: list[int] = []
        self.max_in_flight = 0
        self._send_lock = trio.Lock()
        self._bodies: dict[int, bytearray] = {}
        self._requests: dict[int, Request] = {}

    async def next_event(self) -> Event:
        """The next event from the client (ConnectionClosed at EOF); sends automatic answers."""
        while True:
            event = self.core.next_event()
            automatic = self.core.data_to_send()
            if automatic:
                await self.send_bytes(automatic)
            if event is not NEED_DATA:
                self.max_in_flight = max(self.max_in_flight, self.core.requests_in_flight)
                return event  # type: ignore[return-value]
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
            self.core.receive_data(data)

    async def next_request(self) -> tuple[Request, bytes] | None:
        """The next request whose body is complete, or None when the client closed.

        AbortRequest events met on the way are recorded in ``aborted``.
        """
        while True:
            event = await self.next_event()
            if isinstance(event, ConnectionClosed):
                return None
            if isinstance(event, Request):
                self._requests[event.request_id] = event
                self._bodies[event.request_id] = bytearray()
            elif isinstance(event, Stdin):
                if event.data:
                    self._bodies[event.request_id] += event.data
                else:
                    return self._requests.pop(event.request_id), bytes(self._bodies.pop(event.request_id))
            elif isinstance(event, AbortRequest):
                self.aborted.append(event.request_id)

    async def send(self, *events: Event) -> None:
        await self.send_bytes(b"".join(self.core.send(event) for event in events))

    async def send_bytes(self, data: bytes) -> None:
        async with self._send_lock:
            await self.stream.send_all(data)

    async def respond(self, request_id: int, stdout: bytes, *, stderr: bytes = b"", app_status: int = 0) -> None:
        """Send a whole response: STDOUT, STDERR if any, END_REQUEST."""
        events: list[Event] = [Stdout(request_id, stdout)] if stdout else []
        if stderr:
            events.append(Stderr(request_id, stderr))
        events.append(EndRequest(request_id, app_status))
        await self.send(*events)


def ok(body: bytes, *headers: str) -> bytes:
    """A CGI response: Status 200, the given header lines, a blank line, the body."""
    return b"".join(line.encode() + b"\r\n" for line in ("Status: 200 OK", *headers)) + b"\r\n" + body
