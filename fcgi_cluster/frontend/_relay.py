"""An upstream answer on its way to the client: the one path from STDOUT records to HTTP bytes.

The worker connection's reader never waits for a client: what a client has
not taken yet waits in the answer's buffer (memory, then an unlinked
temporary file: ``fcgi_cluster.client.Buffering``). A ``Relay`` turns what has
arrived into HTTP/1.1 bytes, head first, as fast as the client takes them, and
whoever writes them (the reader's callback for an answer that came whole, a
task for any other) writes the same bytes. Nothing here does I/O but the
wait for more of the answer.
"""

from __future__ import annotations

import math

import trio

from ..client import ResponseStream
from ._http import HTTPServerConnection
from .edge._compress import Compression, Encoder

__all__ = ["Relay", "response_headers", "SEND_BATCH"]

#: HTTP bytes gathered before they are written: one write per this much of a
#: large answer, every byte of a small one in one write.
SEND_BATCH = 64 * 1024

#: Response headers that describe one hop, not the response: the front-end
#: frames the client side itself. Content-Length is taken apart (it sets the
#: framing) and not copied.
_HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade",
    b"proxy-connection", b"content-length",
    # Orders to the front door, never meant for the client (nginx hides them too).
    b"x-accel-redirect", b"x-accel-expires", b"x-accel-limit-rate", b"x-accel-buffering", b"x-accel-charset",
})


def response_headers(headers: list[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, bytes]], int | None]:
    """The worker's CGI headers as HTTP response headers, and the body length they declare.

    Args:
        headers: ``ResponseStream.raw_headers``.

    Returns:
        ``(headers, content_length)``: hop-by-hop headers removed;
        ``content_length`` None when absent or not a plain decimal (then the
        body is sent chunked and its true length wins).
    """
    out: list[tuple[bytes, bytes]] = []
    length: int | None = None
    for name, value in headers:
        lower = name.lower()
        if lower in _HOP_BY_HOP:
            if lower == b"content-length" and value.isdigit() and length is None:
                length = int(value)
            continue
        out.append((name, value))
    return out, length


class Relay:
    """One answer whose CGI head has arrived, framed for its client piece by piece.

    ``ready()`` gives the HTTP bytes of what has arrived (the head with the
    first of them) and says when they end the answer; ``wait`` waits for more.
    The caller writes the bytes at its client's pace: a slow client holds
    back only its own answer, which the connection keeps receiving.

    Attributes:
        response: the answer.
        sent: body bytes framed so far (the access log's count).

    Raises (``ready``):
        ValueError: the body does not match the worker's Content-Length.
        FastCGIError: the answer failed before its end (its connection was
            lost, or it outgrew its buffering: ``ResponseOverflow``).
    """

    __slots__ = ("response", "sent", "_http", "_head", "_encoder", "_left")

    def __init__(
        self, response: ResponseStream, http: HTTPServerConnection, request: object = None, compression: Compression | None = None,
    ) -> None:
        self.response = response
        self.sent = 0
        self._http = http
        headers, declared = response_headers(response.raw_headers)
        #: The answer's compressor, when its route compresses and the answer qualifies.
        self._encoder: Encoder | None = None
        self._left: int | None = None  # of a compressed answer: bytes its Content-Length still owes
        if compression is not None:
            self._encoder, headers = compression.choose(request, response.status, headers, declared)
            if self._encoder is not None:
                # The worker's body is still held to its Content-Length, which the client no longer sees.
                self._left, declared = declared, None
        self._head = http.send_head(response.status, headers, content_length=declared)

    def ready(self, limit: float = SEND_BATCH) -> tuple[bytes, bool]:
        """HTTP bytes of the answer that arrived since the last call (about ``limit`` at most), and whether they end it."""
        if self._encoder is not None:
            return self._ready_encoded(limit)
        out, self._head = self._head, b""
        response = self.response
        send_body = self._http.send_body
        chunk = response.take_ready()
        while chunk is not None:
            self.sent += len(chunk)
            out += send_body(chunk)
            if len(out) >= limit:
                return out, False
            chunk = response.take_ready()
        if response.complete:
            response.raise_if_failed()
            return out + self._http.send_end(), True
        return out, False

    def _ready_encoded(self, limit: float) -> tuple[bytes, bool]:
        """``ready`` of a compressed answer: what arrived, compressed and flushed so that it can be read now."""
        encoder = self._encoder
        assert encoder is not None
        out, self._head = self._head, b""
        response = self.response
        data = b""
        chunk = response.take_ready()
        left = self._left
        taken = 0
        while chunk is not None:
            if left is not None:
                left -= len(chunk)
                if left < 0:
                    raise ValueError(f"body longer than its Content-Length by {-left} bytes")
            data += encoder.feed(chunk)
            # Bounded by what is taken as well as by what comes out: a highly
            # compressible answer must not hold the loop (whose checkpoint is
            # the write of what comes out) for its whole length.
            taken += len(chunk)
            if taken >= limit or len(data) >= limit:
                break
            chunk = response.take_ready()
        self._left = left
        done = chunk is None and response.complete
        if done:
            response.raise_if_failed()
            if left:
                raise ValueError(f"body shorter than its Content-Length by {left} bytes")
            data += encoder.finish()
        else:
            # What arrived reaches the client now (a streamed piece is not
            # held back for the next), and the writer has bytes to write.
            data += encoder.flush()
        if data:
            self.sent += len(data)
            out += self._http.send_body(data)
        return (out + self._http.send_end(), True) if done else (out, False)

    def whole(self) -> bytes:
        """Every HTTP byte of an answer that is ``complete``: what ``ready`` gives, in one piece."""
        out, done = self.ready(math.inf)
        assert done, "whole() of an answer still arriving"
        return out

    async def wait(self, timeout: float) -> None:
        """Return when more of the answer has arrived or it ended (at once if it has).

        Raises:
            trio.TooSlowError: ``timeout`` seconds passed with neither (the
                worker's ``read_timeout``).
        """
        response = self.response
        if response.has_ready or response.complete:
            return
        # A bare CancelScope: fail_after costs a generator per wait.
        with trio.CancelScope(deadline=trio.current_time() + timeout) as scope:
            await response.wait_ready()
        if scope.cancelled_caught:
            raise trio.TooSlowError
