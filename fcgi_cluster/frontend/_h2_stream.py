"""One HTTP/2 stream as the request path sees a connection: an ``http`` and an ``io`` of its own.

The request-level code (``ClientConnection.respond``: routes, static files,
upstreams, the Relay, the access log) frames an answer through ``http``
(``send_head``/``send_body``/``send_end``, as on HTTP/1.1) and writes what it
frames with ``io.send``; it reads a body with ``io.receive`` and
``http.next_event``. Here those calls become HEADERS, flow-controlled DATA
and END_STREAM on one stream of an ``H2Connection``:

* ``send_head`` queues the HEADERS frame at once (an app that streams sends
  its head before its first byte); ``send_body`` passes the bytes through and
  ``send_end`` only marks the end, which ``io.send`` (or ``finish``) sends
  after the last DATA.
* ``io.send`` waits for this stream's window, so a client that does not read
  one stream holds back that answer only; the others go on, and the worker
  connection's reader never waits (the answer waits in its buffering).
* A body chunk's window is given back when the request path takes it: the
  client sends no faster than the worker reads.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Protocol

import trio

from ._client_io import ClientGone
from ._http import NEED_DATA, Body, EndOfMessage, HTTPError, HTTPUsageError, RequestHead, error_page

__all__ = ["StreamHTTP", "StreamIO", "StreamOwner", "response_fields"]

#: Fields HTTP/2 forbids in a response (RFC 9113 8.2.2), dropped if a route or worker sets one.
_CONNECTION_FIELDS = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})

_date_second = -1
_date_value = b""


def _date(now: float) -> bytes:
    global _date_second, _date_value
    second = int(now)
    if second != _date_second:
        _date_value = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(second)).encode()
        _date_second = second
    return _date_value


def response_fields(headers: list[tuple[bytes, bytes]], content_length: int | None) -> list[tuple[bytes, bytes]]:
    """Response header fields for HTTP/2: names lower-cased, connection fields dropped, Date and Server first."""
    out = [(b"date", _date(time.time())), (b"server", b"fcgi-cluster")]
    for name, value in headers:
        lower = name.lower()
        if lower not in _CONNECTION_FIELDS and lower != b"content-length":
            out.append((lower, value))
    if content_length is not None:
        out.append((b"content-length", b"%d" % content_length))
    return out


class StreamOwner(Protocol):
    """What a stream needs of its connection (``H2Connection``)."""

    def send_head(self, stream_id: int, status: int, fields: list[tuple[bytes, bytes]], end: bool) -> None: ...

    def send_data(self, stream_id: int, data: memoryview) -> int: ...

    def end_stream(self, stream_id: int) -> None: ...

    def ack(self, stream_id: int, flow: int) -> None: ...

    async def drain(self, timeout: float) -> None: ...


class StreamHTTP:
    """The per-request ``http`` of an HTTP/2 stream: the subset of ``HTTPServerConnection`` the request path uses."""

    __slots__ = ("conn", "stream_id", "head", "keep_alive", "head_sent", "end_pending", "ended",
                 "_no_body", "_left", "_chunks", "_eof", "_complete", "_body_bytes", "_max_body")

    def __init__(self, conn: StreamOwner, stream_id: int, head: RequestHead, max_body: int, ended: bool) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.head = head
        #: Ignored: a stream ends with its answer, the connection goes on.
        self.keep_alive = True
        self.head_sent = False
        self.end_pending = False
        self.ended = False
        self._no_body = False
        self._left: int | None = None  # body bytes the answer's Content-Length still owes
        self._chunks: deque[bytes] = deque()
        self._eof = ended  # the stream ended with its head: no body
        self._complete = False
        self._body_bytes = 0
        self._max_body = max_body

    # --- the request body --------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """A body chunk from ``StreamIO.receive``; b"" when the client ended the stream."""
        if data:
            self._chunks.append(data)
        else:
            self._eof = True

    def next_event(self) -> object:
        if self._complete:
            return NEED_DATA
        if self._chunks:
            data = self._chunks.popleft()
            self._body_bytes += len(data)
            if self._max_body and self._body_bytes > self._max_body:
                raise HTTPError(413, "request body too large")
            return Body(data)
        if self._eof:
            length = self.head.content_length
            if length is not None and length != self._body_bytes:
                raise HTTPError(400, "request body shorter than its Content-Length")
            self._complete = True
            return EndOfMessage()
        return NEED_DATA

    @property
    def request_complete(self) -> bool:
        return self._complete

    # --- the answer ------------------------------------------------------------------

    def send_continue(self) -> bytes:
        return b""  # an HTTP/2 client sends its body without waiting for 100

    def send_head(self, status: int, headers: list[tuple[bytes, bytes]], *, content_length: int | None = None) -> bytes:
        if self.head_sent:
            raise HTTPUsageError("send_head twice")
        self.head_sent = True
        self._no_body = self.head.method == b"HEAD" or status in (204, 304) or status < 200
        if self._no_body:
            content_length = content_length if self.head.method == b"HEAD" else None
        self._left = None if self._no_body else content_length
        fields = response_fields(headers, content_length)
        self.conn.send_head(self.stream_id, status, fields, self._no_body)
        if self._no_body:
            self.ended = True
        return b""

    def send_body(self, data: bytes) -> bytes:
        if self._no_body:
            return b""
        left = self._left
        if left is not None:
            if len(data) > left:
                raise HTTPUsageError("body longer than its Content-Length")
            self._left = left - len(data)
        return data

    def send_end(self) -> bytes:
        if self._left:
            raise HTTPUsageError(f"body shorter than its Content-Length by {self._left} bytes")
        if not self.ended:
            self.end_pending = True
        return b""

    def send_error_response(self, status: int, *, reason: str | None = None) -> bytes:
        """An error page as the whole answer; b"" when an answer began already (the stream is then reset)."""
        if self.head_sent:
            self.end_pending = False
            return b""
        page = error_page(status)
        self.send_head(status, [(b"content-type", b"text/html")], content_length=len(page))
        body = self.send_body(page)
        self.send_end()
        return body


class StreamIO:
    """The per-request ``io`` of an HTTP/2 stream: body chunks in, flow-controlled DATA out.

    Raises (``send``, ``receive``):
        ClientGone: the client reset the stream, or the connection ended.
    """

    __slots__ = ("conn", "http", "stream_id", "fd", "gone", "client_ended", "pending", "_lot", "_eof_given", "_send_timeout")

    def __init__(self, conn: StreamOwner, http: StreamHTTP, send_timeout: float) -> None:
        self.conn = conn
        self.http = http
        self.stream_id = http.stream_id
        #: No descriptor of its own: the request path never reads a socket directly.
        self.fd = -1
        self.gone = False
        #: The client ended its side (END_STREAM): the body's end, once its chunks are taken.
        self.client_ended = False
        #: Body chunks received and not yet taken: (data, window cost).
        self.pending: deque[tuple[bytes, int]] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._eof_given = False
        self._send_timeout = send_timeout

    def wake(self) -> None:
        """Something changed for this stream (data, its end, a window, a reset)."""
        self._lot.unpark_all()

    async def _park(self, timeout: float) -> bool:
        """Wait for ``wake``; False after ``timeout`` seconds."""
        with trio.move_on_after(timeout) as scope:
            await self._lot.park()
        return not scope.cancelled_caught

    async def send(self, data: bytes) -> None:
        """Send body bytes on the stream as its window allows; then END_STREAM if the answer ended."""
        conn = self.conn
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            if self.gone:
                raise ClientGone()
            taken = conn.send_data(self.stream_id, view[pos:])
            if taken < 0:
                raise ClientGone()
            if taken:
                pos += taken
                await conn.drain(self._send_timeout)
            elif not await self._park(self._send_timeout):
                raise ClientGone()  # the client kept the window shut for send_timeout
        self.finish()
        if data:
            await conn.drain(self._send_timeout)

    def finish(self) -> None:
        """Send END_STREAM if the answer ended and it is not sent yet."""
        http = self.http
        if http.end_pending and not http.ended and not self.gone:
            http.end_pending = False
            http.ended = True
            self.conn.end_stream(self.stream_id)

    async def receive(self, timeout: float) -> bytes | None:
        """The next body chunk, b"" once at its end, None after ``timeout`` seconds with neither.

        Once the body is whole this waits until the stream is reset (the
        request path watches for a client that gives up).
        """
        while True:
            if self.gone:
                raise ClientGone()
            if self.pending:
                data, flow = self.pending.popleft()
                self.conn.ack(self.stream_id, flow)
                if data:
                    return data
                continue
            if self.client_ended and not self._eof_given and not self.http.request_complete:
                self._eof_given = True
                return b""
            if not await self._park(timeout):
                return None
