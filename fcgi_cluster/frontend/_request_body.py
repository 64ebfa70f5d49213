"""A request body on its way upstream: whole when small, streamed when large, spooled when chunked.

``read_body`` decides; ``BodyStream`` is read by the upstream connection's
body task as the worker takes it, and ``spool_chunked_body`` writes a large
chunked body to a temporary file first, so the worker gets its CONTENT_LENGTH.
"""

from __future__ import annotations

import tempfile
import typing
from collections.abc import AsyncIterator, Awaitable, Callable

import trio

from ._http import Body, EndOfMessage

__all__ = ["BUFFERED_BODY_SIZE", "BodyStream", "read_body"]

#: A request body up to this size is read whole before the request goes
#: upstream, so it can be sent again to another server if the first fails,
#: and chunked bodies get a true CONTENT_LENGTH. Larger ones are streamed.
#: nginx's client_body_buffer_size is 16 KiB (past it nginx spools to disk).
BUFFERED_BODY_SIZE = 64 * 1024

#: The next Body or EndOfMessage of the request, read from the client.
NextEvent = Callable[[], Awaitable[Body | EndOfMessage]]


class BodyStream:
    """A large request body, read from the client as the worker's connection takes it.

    It is read by the upstream connection's body task, not by the client
    connection's own task. When the answer is over before the body, the
    client connection takes the reading back (``close``): two tasks reading
    one socket could feed the parser out of order.
    """

    def __init__(self, next_event: NextEvent, first: bytes) -> None:
        self._next_event = next_event
        self._first = first
        self._closed = False
        self._reading: trio.Event | None = None
        #: What reading the client raised, for the request's answer to re-raise.
        self.error: BaseException | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def close(self) -> None:
        """Read no more; return once a read in progress has given its bytes to the parser."""
        self._closed = True
        while self._reading is not None:
            await self._reading.wait()

    async def _chunks(self) -> AsyncIterator[bytes]:
        try:
            if self._first:
                yield self._first
            while not self._closed:
                self._reading = reading = trio.Event()
                try:
                    event = await self._next_event()
                finally:
                    self._reading = None
                    reading.set()
                if type(event) is EndOfMessage:
                    return
                yield event.data  # type: ignore[union-attr]
        except BaseException as exc:
            if isinstance(exc, Exception):
                self.error = exc
            raise


async def read_body(
    next_event: NextEvent, length: int | None
) -> tuple[bytes | BodyStream | AsyncIterator[bytes], int | None]:
    """The body to send upstream: whole bytes when small, else a stream; and its length if known."""
    if length is not None and length > BUFFERED_BODY_SIZE:
        return BodyStream(next_event, b""), length
    buffered = bytearray()
    while True:
        event = await next_event()
        if type(event) is EndOfMessage:
            return bytes(buffered), len(buffered)
        buffered += event.data  # type: ignore[union-attr]
        if len(buffered) > BUFFERED_BODY_SIZE:
            if length is not None:
                return BodyStream(next_event, bytes(buffered)), length
            return await spool_chunked_body(next_event, buffered)


async def spool_chunked_body(next_event: NextEvent, first: bytearray) -> tuple[AsyncIterator[bytes], int]:
    """Read a large chunked body into a temporary file, so the worker gets its CONTENT_LENGTH.

    php-fpm (PHP's SAPI) reads a request body only up to CONTENT_LENGTH:
    without one, a chunked upload arrives empty. nginx buffers such
    bodies to disk (fastcgi_request_buffering); so do we, for chunked
    bodies only: a body with a Content-Length streams straight through.
    ``max_body_size`` bounds the file.
    """
    spool = tempfile.TemporaryFile(prefix="fcgi-cluster-body-")
    try:
        spool.write(first)
        total = len(first)
        while True:
            event = await next_event()
            if type(event) is EndOfMessage:
                break
            spool.write(event.data)  # type: ignore[union-attr]
            total += len(event.data)  # type: ignore[union-attr]
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return _spooled_chunks(spool), total


async def _spooled_chunks(spool: typing.BinaryIO) -> AsyncIterator[bytes]:
    """A spooled body, read back in pieces (page-cache reads: fast enough for the loop)."""
    try:
        while True:
            chunk = spool.read(BUFFERED_BODY_SIZE)
            if not chunk:
                return
            yield chunk
            await trio.lowlevel.checkpoint()
    finally:
        spool.close()
