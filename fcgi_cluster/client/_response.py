"""One request's side of a multiplexed connection: what the reader task feeds
it, and the response objects a caller reads from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from ._cgi import parse_cgi_headers
from ._errors import UpstreamProtocolError

__all__ = ["Response", "ResponseStream", "STREAM_BUFFER", "MAX_STDERR_SIZE"]

#: STDOUT records held per request before the connection's reader task waits
#: for the caller to consume them. A record carries at most 64 KiB, so this
#: bounds a request's buffered body at 512 KiB. FastCGI has no flow control of
#: its own, so a caller that reads slowly stalls the reader, and with it every
#: request multiplexed on the connection (the reason nginx never multiplexes).
STREAM_BUFFER = 8

#: STDERR bytes kept per request. STDERR is the application's log, not its
#: answer: past this much the rest is dropped rather than held in memory.
MAX_STDERR_SIZE = 1024 * 1024


class _RequestState:
    """What the connection tracks for one request until it ends or is given up."""

    __slots__ = ("request_id", "_send", "_receive", "stderr", "app_status", "error", "finished", "body_scope")

    def __init__(self, request_id: int) -> None:
        self.request_id = request_id
        self._send, self._receive = trio.open_memory_channel[bytes](STREAM_BUFFER)
        self.stderr = bytearray()
        self.app_status: int | None = None
        self.error: BaseException | None = None
        #: Ended, failed or given up: nothing more may be sent for it.
        self.finished = False
        #: Covers the task sending an async-iterable body, if there is one.
        self.body_scope = trio.CancelScope()

    async def feed_stdout(self, data: bytes) -> None:
        """Pass body bytes to the caller; waits while the caller's buffer is full."""
        try:
            await self._send.send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the caller has given up on this request (or it just failed)

    def feed_stderr(self, data: bytes) -> None:
        room = MAX_STDERR_SIZE - len(self.stderr)
        if room > 0:
            self.stderr += data[:room]

    def complete(self, app_status: int) -> None:
        self.app_status = app_status
        self._finish()

    def fail(self, error: BaseException) -> None:
        if not self.finished:
            self.error = error
        self._finish()

    def _finish(self) -> None:
        self.finished = True
        self.body_scope.cancel()
        self._send.close()

    def forget(self) -> None:
        """The caller is done with this request: drop whatever is still buffered."""
        self._finish()
        self._receive.close()

    async def receive(self) -> bytes | None:
        """The next STDOUT chunk, or None at the end of a completed request.

        Raises:
            FastCGIError: the request failed (refused, or its connection died).
        """
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            if self.error is not None:
                raise self.error from self.error.__cause__
            return None


@dataclass(frozen=True, slots=True)
class Response:
    """A complete response, as returned by ``Connection.request``.

    Attributes:
        status: the HTTP status from the CGI headers (200 unless they say otherwise).
        headers: the CGI headers but Status, as (name, value) in the worker's order.
        body: everything after the header block.
        stderr: what the application wrote to FastCGI STDERR (its log).
        app_status: the application's exit status from END_REQUEST.
    """

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    stderr: bytes
    app_status: int


class ResponseStream:
    """A response being received: status and headers now, the body as it comes.

    Made by ``Connection.stream``; iterate it (``async for chunk in response``)
    for the body. Usable only inside that ``async with`` block.

    Attributes:
        status: the HTTP status from the CGI headers.
        headers: the CGI headers but Status, as (name, value).
    """

    def __init__(self, state: _RequestState, status: int, headers: list[tuple[str, str]], rest: bytes) -> None:
        self._state = state
        self.status = status
        self.headers = headers
        self._pending = rest

    @property
    def stderr(self) -> bytes:
        """STDERR received so far; all of it once the body has been read."""
        return bytes(self._state.stderr)

    @property
    def app_status(self) -> int | None:
        """The application's exit status, or None until the body has been read."""
        return self._state.app_status

    def __aiter__(self) -> ResponseStream:
        return self

    async def __anext__(self) -> bytes:
        """The next piece of the body.

        Raises:
            StopAsyncIteration: the request has ended.
            FastCGIError: the connection died or the worker broke the protocol.
        """
        if self._pending:
            chunk, self._pending = self._pending, b""
            return chunk
        chunk = await self._state.receive()
        if chunk is None:
            raise StopAsyncIteration
        return chunk


async def read_head(state: _RequestState) -> ResponseStream:
    """Receive STDOUT until the CGI header block is complete.

    Raises:
        UpstreamProtocolError: the header block is malformed or too large, or
            the request ended before it was complete.
        FastCGIError: the request was refused or its connection died.
    """
    buf = bytearray()
    while True:
        chunk = await state.receive()
        if chunk is None:
            raise UpstreamProtocolError(
                "the worker ended the request before the end of its CGI headers"
                if buf
                else "the worker ended the request without a response"
            )
        buf += chunk
        parsed = parse_cgi_headers(buf)
        if parsed is not None:
            return ResponseStream(state, *parsed)
