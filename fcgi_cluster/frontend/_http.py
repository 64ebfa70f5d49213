"""The front-end's HTTP/1.1 server side, sans-IO, on httptools (llhttp).

This is the one module that knows the HTTP parser: bytes in (``receive_data``),
events out (``next_event``), bytes out (``send_head``, ``send_body``, ...).

Rules enforced here (RFC 9112 and RFC 9110, with nginx's choices where the RFCs
leave room):

* Message boundaries are ours, not llhttp's. A head ends at the first empty
  line (CRLF CRLF; llhttp refuses bare LF, so there is no other way to end one),
  a body after Content-Length bytes, a chunked body at a CRLF CRLF where llhttp
  reports the message complete. llhttp is fed the current message only, so it
  never parses a pipelined request before ``start_next_cycle``; the bytes of
  later requests stay raw in our buffer (at most ``max_pipelined_bytes`` of
  them: past that they are dropped and the connection closes after the
  current response, as a server may).
* Limits are counted on the raw bytes as they arrive, before llhttp sees them:
  a request line over ``max_request_line`` is 414, a head over
  ``max_header_size`` (request line, header lines and the empty line) or with
  more than ``max_headers`` fields is 431, a Content-Length over
  ``max_body_size`` is 413 at once, a chunked body is 413 when it crosses it.
* Framing that two parsers could read two ways is refused with 400: both
  Content-Length and Transfer-Encoding, Transfer-Encoding other than exactly
  one ``chunked`` (or any on HTTP/1.0), repeated or non-numeric Content-Length,
  bad chunk sizes, obs-fold, bad header names, bare CR or LF, NUL or other
  controls in a field, chunk extensions and trailers over ``max_header_size``
  between two pieces of body data.
* The request target is origin-form (``/path?query``), absolute-form
  (``http://host/path``, whose host then replaces Host), or ``*`` for OPTIONS;
  a fragment (``#``) or raw non-ASCII byte is 400. HTTP/1.1 needs exactly one
  valid Host (400 otherwise). Versions other than 1.0 and 1.1 (HTTP/0.9, the
  HTTP/2 preface) are 505; methods llhttp does not know are 501, CONNECT too.
* An Upgrade request (WebSocket, h2c) is served as an ordinary request: the
  upgrade is ignored, its body is read as any other, and what follows it is
  the next request.
* What llhttp (httptools 0.9) lets through, checked in the tests: empty lines
  (CRLF or bare LF) before a request line, which RFC 9112 2.2 allows and we
  skip; more than one space between method and target; spaces and tabs around
  a field value (we strip them); obs-text (bytes 0x80-0xFF) in field values.
  What it refuses: bare LF or bare CR as a line end anywhere in a head or in
  chunk framing, obs-fold, whitespace before a field's colon, NUL and other
  controls, raw non-ASCII bytes in the target.
* EOF between requests is ``ConnectionClosed``; EOF inside a head or body is
  ``HTTPError(400)``. Any ``HTTPError`` puts the connection in ERROR: answer
  with ``send_error_response`` and close.
* Responses: Date, Server, the caller's headers, then framing chosen here
  (Content-Length, chunked, or close-delimited for HTTP/1.0). Responses to HEAD
  and 1xx/204/304 have no body. The connection is kept alive only when the
  client asked for it and the response has a length the client can find. A
  response may begin before the request body has arrived: the caller then
  reads the rest (dropping it) before ``start_next_cycle``, or closes; if the
  client still waits for 100 Continue it may never send that body, so the
  response says "Connection: close".

Driving it: ``receive_data`` what the socket gave (b"" at EOF), call
``next_event`` until ``NEED_DATA``; answer the current request with
``send_continue`` / ``send_head`` / ``send_body`` / ``send_end`` (or
``send_error_response``); when ``request_complete`` and the response has ended,
close unless ``keep_alive``, else ``start_next_cycle`` and go on reading.
"""

from __future__ import annotations

import html
import http
import re
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple, Union

import httptools

# ``next_event`` returns NEED_DATA when it has nothing to give until more bytes
# arrive (or, once the current request is complete, until ``start_next_cycle``):
# the FastCGI core's sentinel, one "need more bytes" for both protocols.
from ..protocol import NEED_DATA

__all__ = [
    "HTTPLimits",
    "RequestHead",
    "Body",
    "EndOfMessage",
    "ConnectionClosed",
    "NEED_DATA",
    "error_page",
    "Event",
    "HTTPError",
    "HTTPUsageError",
    "HTTPServerConnection",
]


@dataclass(frozen=True, slots=True)
class HTTPLimits:
    """What a client may send before we refuse it.

    Args:
        max_request_line: bytes in the request line, without its CRLF; past it,
            414. nginx's ``large_client_header_buffers`` is 8k, and a request
            line must fit one buffer.
        max_header_size: bytes in the whole head (request line, header lines,
            the empty line); past it, 431. nginx's default gives a head four
            8k buffers, 32 KiB.
        max_headers: header fields in a head; past it, 431. Apache's
            ``LimitRequestFields`` default; browsers send 10 to 20.
        max_body_size: bytes in a request body, 0 for no limit; past it, 413.
            nginx's ``client_max_body_size`` default, 1m.
        max_pipelined_bytes: bytes of later pipelined requests held raw while
            the current one is answered. Those that came in the same receive
            as the end of the current request are kept whatever their size;
            once more arrive past this, they are dropped and the connection
            closes after the current response. A 64 KiB receive holds hundreds
            of pipelined GETs; clients that pipeline send a few.
    """

    max_request_line: int = 8 * 1024
    max_header_size: int = 32 * 1024
    max_headers: int = 100
    max_body_size: int = 1024 * 1024
    max_pipelined_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        for name in ("max_request_line", "max_header_size", "max_headers", "max_pipelined_bytes"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if type(self.max_body_size) is not int or self.max_body_size < 0:
            raise ValueError(f"max_body_size must be an integer >= 0, not {self.max_body_size!r}")


# --- events -----------------------------------------------------------------------


class RequestHead(NamedTuple):
    """A request's line and header fields: the first event of every request.

    Immutable as the other events, but a named tuple: one is made for every
    request, in 0.4 us against 2 for a frozen dataclass.

    Attributes:
        method: as sent, e.g. b"GET" (llhttp knows the method, so it is upper case).
        target: the request target as sent, e.g. b"/a%20b?x=1".
        path: ``target`` before "?", still percent-encoded. For an absolute-form
            target (b"http://host/p") its path only, b"/" if it had none; b"*"
            for ``OPTIONS *``.
        query: ``target`` after the first "?", without it; b"" if none.
        http_version: b"1.1" or b"1.0".
        headers: (name, value) pairs in the order received, repeats kept; names
            lower-cased, values without surrounding spaces and tabs. For an
            absolute-form target, the target's authority is the Host value.
        content_length: the Content-Length sent, None when chunked or absent.
        chunked: the body comes in chunks (Transfer-Encoding: chunked).
        expect_continue: an HTTP/1.1 client sent "Expect: 100-continue" and
            waits for ``send_continue`` before sending its body.
        keep_alive: the client asked to keep the connection (HTTP/1.1 unless
            "Connection: close"; HTTP/1.0 only with "Connection: keep-alive").
    """

    method: bytes
    target: bytes
    path: bytes
    query: bytes
    http_version: bytes
    headers: list[tuple[bytes, bytes]]
    content_length: int | None
    chunked: bool
    expect_continue: bool
    keep_alive: bool


@dataclass(frozen=True, slots=True)
class Body:
    """A piece of the request body, never empty."""

    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    """The request is complete (also sent, at once, after a head without a body)."""


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The client closed the connection cleanly, between two requests."""


Event = Union[RequestHead, Body, EndOfMessage, ConnectionClosed]

# Field-less events are immutable and equal to one another: one instance each.
_END = EndOfMessage()
_CLOSED_EVENT = ConnectionClosed()


# --- errors -----------------------------------------------------------------------


class HTTPError(Exception):
    """The client sent something we refuse; answer with ``status`` and close.

    Attributes:
        status: the HTTP status to answer with: 400, 408, 413, 414, 431, 501
            or 505.
        reason: a short fixed text, safe to show the client (it never quotes
            the client's bytes).
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


class HTTPUsageError(ValueError):
    """This side misused the API: a call the current state does not allow, or
    a response body longer or shorter than its Content-Length."""


# --- module constants -------------------------------------------------------------

# Receive states: where the current request stands on the wire.
_HEAD = 0  # reading a head (or waiting for one)
_NO_BODY = 1  # head complete, llhttp about to report the message complete
_LENGTH = 2  # reading a Content-Length body
_CHUNKED = 3  # reading a chunked body
_DONE = 4  # message complete; later bytes wait for start_next_cycle
_CLOSED = 5  # EOF between requests
_ERROR = 6

# Response states.
_TX_IDLE = 0  # no request to answer yet
_TX_WAIT = 1  # a request head was returned, no response begun
_TX_BODY = 2  # response head sent
_TX_DONE = 3  # response complete

# Response body framing.
_F_NONE = 0  # no body may follow (HEAD, 1xx, 204, 304): send_body drops data
_F_LENGTH = 1
_F_CHUNKED = 2
_F_CLOSE = 3  # HTTP/1.0 without a length: the body ends when we close

_BLANK_LINE = b"\r\n\r\n"
_CRLF_BYTES = b"\r\n"  # `byte in _CRLF_BYTES` tests one int

# Header names whose values drive framing, routing or the connection.
_SPECIAL = frozenset((b"host", b"content-length", b"transfer-encoding", b"connection", b"expect", b"upgrade"))

# Response headers that describe this connection or its framing, which only
# this module may write (RFC 9110 7.6.1: hop-by-hop; framing per RFC 9112 6).
_OWN_RESPONSE_HEADERS = frozenset((b"connection", b"content-length", b"transfer-encoding", b"keep-alive"))

# RFC 3986 reg-name / IP-literal characters and ":" for the port: what a Host
# value may hold. Anything else ("/", "\\", spaces, "@") is a request made to
# confuse whatever builds a URL or a file path from it.
_HOST_CHARS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:[]%"

# A method-shaped start of a request line (RFC 9110 token and a space): when
# llhttp does not know the method, that is 501 rather than 400.
_TOKEN_SP = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ ").match

# llhttp error texts that mean "this is not HTTP/1.x".
_VERSION_ERRORS = ("Invalid HTTP version", "Pause on PRI/Upgrade")

_STATUS_LINES = {int(s): b"HTTP/1.1 %d %s\r\n" % (s, s.phrase.encode("ascii")) for s in http.HTTPStatus}
_PHRASES = {int(s): s.phrase.encode("ascii") for s in http.HTTPStatus}

# An empty chunk would end the body, so send_body(b"") sends nothing.
_LAST_CHUNK = b"0\r\n\r\n"

_DAYS = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")
_MONTHS = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")

# The Date header changes once a second: format it at most that often, for
# every connection of the process at once.
_date_second = -1
_date_line = b""


def _date_header(now: float) -> bytes:
    """The ``Date:`` line (RFC 9110 5.6.7 IMF-fixdate) for the second ``now`` is in."""
    global _date_second, _date_line
    second = int(now)
    if second != _date_second:
        t = time.gmtime(second)
        _date_line = b"Date: %s, %02d %s %04d %02d:%02d:%02d GMT\r\n" % (
            _DAYS[t.tm_wday], t.tm_mday, _MONTHS[t.tm_mon - 1], t.tm_year, t.tm_hour, t.tm_min, t.tm_sec,
        )
        _date_second = second
    return _date_line


def _error_page(status: int, phrase: bytes, reason: str | None, server: bytes | None) -> bytes:
    """A small HTML page for an error status, shaped like nginx's."""
    title = b"%d %s" % (status, phrase)
    parts = [
        b"<html>\r\n<head><title>", title, b"</title></head>\r\n<body>\r\n<center><h1>", title, b"</h1></center>\r\n",
    ]
    if reason:
        parts += [b"<center>", html.escape(reason).encode("ascii", "xmlcharrefreplace"), b"</center>\r\n"]
    if server:
        parts += [b"<hr><center>", html.escape(server.decode("latin-1")).encode("latin-1"), b"</center>\r\n"]
    parts.append(b"</body>\r\n</html>\r\n")
    return b"".join(parts)


def error_page(status: int, server: bytes | None = b"fcgi-cluster") -> bytes:
    """The page ``send_error_response`` sends, for callers that frame their own response.

    The proxy answers 404/502/504 with it on a connection that stays open.
    """
    return _error_page(status, _PHRASES.get(status, b"Unknown"), None, server)


# --- the connection ---------------------------------------------------------------


class _BodyCallbacks:
    """What llhttp calls for a body alone (see ``_after_upgrade``); a slotted holder,
    a few dozen bytes where a namespace's dict is hundreds, per connection."""

    __slots__ = ("on_body", "on_message_complete")

    def __init__(self, on_body: Callable, on_message_complete: Callable) -> None:
        self.on_body = on_body
        self.on_message_complete = on_message_complete


class _Callbacks(_BodyCallbacks):
    """What llhttp calls for a request."""

    __slots__ = ("on_url", "on_header", "on_headers_complete")

    def __init__(self, on_url: Callable, on_header: Callable, on_headers_complete: Callable,
                 on_body: Callable, on_message_complete: Callable) -> None:
        super().__init__(on_body, on_message_complete)
        self.on_url = on_url
        self.on_header = on_header
        self.on_headers_complete = on_headers_complete


class HTTPServerConnection:
    """The server side of one HTTP/1.1 connection, as a sans-IO state machine.

    Args:
        limits: what a client may send (see ``HTTPLimits``).
        server_header: the ``Server`` response header value; None for none.
        clock: seconds since the epoch, read for the Date header.

    Resource handling: holds the bytes of one receive plus up to
    ``limits.max_pipelined_bytes`` of later requests, and one head being read
    (at most ``limits.max_header_size``). Nothing to close.
    """

    def __init__(
        self,
        limits: HTTPLimits = HTTPLimits(),
        *,
        server_header: bytes | None = b"fcgi-cluster",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._limits = limits
        self._max_line = limits.max_request_line
        self._max_head = limits.max_header_size
        self._max_body = limits.max_body_size
        self._max_headers = limits.max_headers
        if server_header is not None and any(c in server_header for c in (b"\r", b"\n", b"\0")):
            raise ValueError("server_header must not hold CR, LF or NUL")
        self._server = server_header
        self._server_line = b"Server: " + server_header + b"\r\n" if server_header else b""
        self._clock = clock
        # Events parsed and not yet returned: events[_taken:]. A list and an
        # index rather than a deque: a deque's first block is 624 bytes, held
        # by every idle keep-alive connection.
        self._events: list = []
        self._taken = 0
        self._parser = self._new_parser()
        self._body_only_parser = False  # the parser was replaced after an Upgrade request
        # Received bytes; those before _pos were fed to llhttp or skipped.
        self._buf = b""
        self._pos = 0
        self._eof = False
        self._dropping = False  # pipelined bytes overflowed: drop what comes
        self._rx = _HEAD
        self._tx = _TX_IDLE
        self._keep_alive = True
        self._request_complete = False
        self._head: RequestHead | None = None
        # The current head, as llhttp reports it.
        self._head_bytes = 0  # bytes of it fed so far
        self._line_done = False  # its request line's LF was seen
        self._tail = b""  # last bytes fed, for a CRLF CRLF split over two receives
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._special: list[tuple[bytes, bytes]] = []  # the fields named in _SPECIAL
        # The current body; set when its head completes.
        self._skip_complete = False
        self._remaining = 0  # Content-Length bytes still to feed
        self._body_bytes = 0
        self._framing_bytes = 0  # chunked: bytes fed since the last body data
        # The current response; set by send_head.
        self._continue_sent = False
        self._framing = _F_NONE
        self._response_left = 0

    def _new_parser(self) -> httptools.HttpRequestParser:
        # Callbacks are bound methods handed over in a small holder, so that
        # the connection's public face does not grow on_* methods.
        return httptools.HttpRequestParser(_Callbacks(
            self._on_url, self._on_header, self._on_headers_complete, self._on_body, self._on_message_complete
        ))

    # --- receiving ------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Add bytes received from the client; b"" means it closed its side.

        Raises:
            HTTPUsageError: the connection is in ERROR, or data came after EOF.
        """
        if self._rx == _ERROR:
            raise HTTPUsageError("the connection is in ERROR; close it")
        if not data:
            self._eof = True
            return
        if self._eof:
            raise HTTPUsageError("data received after EOF")
        if self._dropping:
            return
        if self._pos >= len(self._buf):
            self._buf = bytes(data)
        else:
            self._buf = self._buf[self._pos :] + data
        self._pos = 0
        if self._rx == _DONE and len(self._buf) > self._limits.max_pipelined_bytes:
            # The client pipelines faster than we answer. Closing after the
            # current response is allowed (RFC 9112 9.3.2: it retries what was
            # not answered); holding on would let it fill our memory.
            self._dropping = True
            self._keep_alive = False
            self._buf = b""

    def next_event(self) -> Event | object:
        """The next event of the current request, ``NEED_DATA``, or ``ConnectionClosed``.

        Once the current request's ``EndOfMessage`` was returned, this returns
        ``NEED_DATA`` until ``start_next_cycle``.

        Raises:
            HTTPError: the client sent something refused, went over a limit,
                or closed the connection in the middle of a request (400). The
                connection is then in ERROR.
            HTTPUsageError: called again after an ``HTTPError``.
        """
        events = self._events
        if not events:
            rx = self._rx
            if rx == _DONE:
                return NEED_DATA
            if rx == _CLOSED:
                return _CLOSED_EVENT
            if rx == _ERROR:
                raise HTTPUsageError("the connection is in ERROR; close it")
            try:
                if self._pos < len(self._buf):
                    self._parse()
                if not events and self._eof and self._rx != _DONE:
                    if self._rx == _HEAD and not self._head_bytes:
                        self._rx = _CLOSED
                        return _CLOSED_EVENT
                    raise HTTPError(400, "client closed the connection before the request was complete")
            except HTTPError:
                self._rx = _ERROR
                self._keep_alive = False
                events.clear()
                self._taken = 0
                raise
            if not events:
                return NEED_DATA
        taken = self._taken
        event = events[taken]
        if taken + 1 == len(events):
            events.clear()
            self._taken = 0
        else:
            self._taken = taken + 1
        if event is _END:
            self._request_complete = True
        return event

    def _parse(self) -> None:
        """Feed llhttp the part of the held bytes that belongs to the current request."""
        buf = self._buf
        pos = self._pos
        end = len(buf)
        try:
            while pos < end:
                rx = self._rx
                if rx == _HEAD:
                    if not self._head_bytes:
                        # Empty lines before a request are ignored (RFC 9112
                        # 2.2); they count toward no limit.
                        while pos < end and buf[pos] in _CRLF_BYTES:
                            pos += 1
                        if pos == end:
                            break
                    if self._tail:
                        stop = _find_blank_line(self._tail, buf, pos)
                    else:
                        stop = buf.find(_BLANK_LINE, pos)
                        if stop >= 0:
                            stop += 4
                    found = stop >= 0
                    if not found:
                        stop = end
                    size = self._head_bytes + stop - pos
                    # A whole head no longer than the line limit cannot hold
                    # a request line over it: the common case needs no search.
                    if not self._line_done and (not found or size > self._max_line):
                        self._check_request_line(buf, pos, stop)
                    if size > self._max_head:
                        raise HTTPError(431, "request header fields too large")
                    first = not self._head_bytes
                    self._head_bytes = size
                    self._feed(buf, pos, stop, first)
                    pos = stop
                    if found:
                        self._tail = b""
                        if self._rx == _HEAD:
                            if self._parser.get_http_version() == "2.0":
                                # The HTTP/2 preface, which llhttp waits to see whole.
                                raise HTTPError(505, "HTTP version not supported")
                            raise HTTPError(400, "malformed request head")
                    else:
                        self._tail = (self._tail + buf[max(stop - 3, 0) : stop])[-3:]
                elif rx == _LENGTH:
                    stop = min(end, pos + self._remaining)
                    self._remaining -= stop - pos
                    self._feed(buf, pos, stop, False)
                    pos = stop
                    if not self._remaining and self._rx == _LENGTH:
                        raise HTTPError(400, "malformed request")
                elif rx == _CHUNKED:
                    stop = _find_blank_line(self._tail, buf, pos)
                    found = stop >= 0
                    if not found:
                        stop = end
                    before = self._body_bytes
                    self._feed(buf, pos, stop, False)
                    if self._body_bytes == before:
                        # Chunk sizes, extensions and trailers only: bounded
                        # like a head, since httptools buffers trailers.
                        self._framing_bytes += stop - pos
                        if self._framing_bytes > self._max_head:
                            raise HTTPError(400, "chunk extensions or trailers too long")
                    else:
                        self._framing_bytes = 0
                    self._tail = b"" if found else (self._tail + buf[max(stop - 3, 0) : stop])[-3:]
                    pos = stop
                else:
                    break
                if self._rx == _NO_BODY:
                    raise HTTPError(400, "malformed request")
        finally:
            self._pos = pos

    def _check_request_line(self, buf: bytes, pos: int, stop: int) -> None:
        """414 when the request line is over the limit, as soon as that is known."""
        lf = buf.find(b"\n", pos, stop)
        if lf < 0:
            # Still open: the last byte may be its CR.
            if self._head_bytes + stop - pos > self._max_line + 1:
                raise HTTPError(414, "request line too long")
            return
        self._line_done = True
        if self._head_bytes + lf - pos - 1 > self._max_line:
            raise HTTPError(414, "request line too long")

    def _feed(self, buf: bytes, pos: int, stop: int, first: bool) -> None:
        """Give llhttp ``buf[pos:stop]``, turning its errors into ``HTTPError``."""
        piece = buf if pos == 0 and stop == len(buf) else buf[pos:stop]
        try:
            self._parser.feed_data(piece)
        except httptools.HttpParserUpgrade as exc:
            self._after_upgrade(exc.args[0] if exc.args else -1, len(piece))
        except httptools.HttpParserError as exc:
            context = exc.__context__
            if isinstance(context, HTTPError):
                raise context from None
            if context is not None:
                raise context  # a fault in this module, not the client's
            raise _error_from_llhttp(exc, piece, first) from exc

    def _after_upgrade(self, offset: int, fed: int) -> None:
        """llhttp stopped after an Upgrade request's head; serve it as a plain request.

        llhttp skips the body of an upgrade request and would take it for the
        next request: a smuggling route. A fresh parser is put in the same
        body state by a made-up head, so the body is read as any other.
        """
        if offset != fed:
            raise HTTPError(400, "malformed request")
        rx = self._rx
        if rx == _DONE or rx == _NO_BODY:
            return  # no body: llhttp completed the message and resumes after it
        self._parser = httptools.HttpRequestParser(_BodyCallbacks(self._on_body, self._on_message_complete))
        self._body_only_parser = True
        self._skip_complete = False
        if rx == _CHUNKED:
            self._parser.feed_data(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        else:
            self._parser.feed_data(b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % self._remaining)

    # --- llhttp callbacks --------------------------------------------------------

    def _on_url(self, url: bytes) -> None:
        if self._rx != _HEAD:
            # llhttp began a second message within one feed: its idea of where
            # the first one ended differs from ours. Never guess which is right.
            raise HTTPError(400, "malformed request")
        self._url += url

    def _on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        # llhttp drops the spaces before a value, not those after it.
        value = value.rstrip(b" \t")
        self._headers.append((name, value))
        # After the head, fields are trailers: framing and routing come from
        # the head alone, so trailers are dropped.
        if name in _SPECIAL and self._rx == _HEAD:
            self._special.append((name, value))

    def _on_headers_complete(self) -> None:
        parser = self._parser
        headers = self._headers
        self._headers = []  # trailers, if any, land here and are dropped
        if len(headers) > self._max_headers:
            raise HTTPError(431, "too many header fields")
        head, rx = read_head(parser.get_http_version(), parser.get_method(), self._url, headers, self._special,
                             self._max_body)
        if rx == _CHUNKED:
            self._body_bytes = self._framing_bytes = 0
        elif rx == _LENGTH:
            self._remaining = head.content_length
            self._body_bytes = 0
        # llhttp takes an Upgrade request's body for the next request's bytes:
        # it reports the message complete after the head, and _after_upgrade
        # reads the body after all.
        self._skip_complete = rx != _NO_BODY and any(n == b"upgrade" for n, _ in self._special) and parser.should_upgrade()
        self._rx = rx
        self._continue_sent = False
        self._head = head
        if not head.keep_alive:
            self._keep_alive = False
        self._tx = _TX_WAIT
        self._events.append(head)

    def _on_body(self, data: bytes) -> None:
        self._body_bytes += len(data)
        if self._max_body and self._body_bytes > self._max_body:
            raise HTTPError(413, "request body too large")
        self._events.append(Body(data))

    def _on_message_complete(self) -> None:
        if self._skip_complete:
            return
        self._rx = _DONE
        self._events.append(_END)

    # --- the cycle ------------------------------------------------------------------

    @property
    def request_complete(self) -> bool:
        """``next_event`` already returned the current request's ``EndOfMessage``."""
        return self._request_complete

    @property
    def keep_alive(self) -> bool:
        """After the current response ends, may the next request be read?

        False once the client asked to close, the response had to be
        close-delimited, a final response was sent to a client still waiting
        for 100 Continue, later pipelined bytes overflowed
        ``max_pipelined_bytes``, an error happened, or the caller set it to
        False (it cannot be set back). When True, the request must still be
        read to its ``EndOfMessage`` before ``start_next_cycle``.
        """
        return self._keep_alive

    @keep_alive.setter
    def keep_alive(self, value: bool) -> None:
        if value and not self._keep_alive:
            raise HTTPUsageError("keep-alive can be turned off, not back on")
        self._keep_alive = bool(value)

    def start_next_cycle(self) -> None:
        """Begin the next request: its events may now come out of ``next_event``.

        Raises:
            HTTPUsageError: the current request or its response is not over,
                or the connection must close (``keep_alive`` is False).
        """
        if not self._request_complete or self._tx != _TX_DONE:
            raise HTTPUsageError("the current request and its response must end first")
        if not self._keep_alive:
            raise HTTPUsageError("the connection must close (keep_alive is False)")
        if self._body_only_parser:
            self._parser = self._new_parser()
            self._body_only_parser = False
        self._rx = _HEAD
        self._tx = _TX_IDLE
        self._request_complete = False
        self._head = None
        self._head_bytes = 0
        self._line_done = False
        self._url = b""
        if self._headers:  # trailers of the request just ended
            self._headers = []
        self._special = []

    # --- sending ------------------------------------------------------------------------

    def send_continue(self) -> bytes:
        """``100 Continue`` if the client waits for it, once; else b"".

        Worth sending only when the body will be read: a client that gets the
        final response instead may not send its body, and the connection
        closes after that response.
        """
        head = self._head
        if (
            head is None
            or not head.expect_continue
            or self._continue_sent
            or self._tx != _TX_WAIT
            or self._rx == _DONE
        ):
            return b""
        self._continue_sent = True
        return b"HTTP/1.1 100 Continue\r\n\r\n"

    def send_head(self, status: int, headers: list[tuple[bytes, bytes]], *, content_length: int | None = None) -> bytes:
        """The status line and headers of the response to the current request.

        Adds Date and Server, drops any Connection, Content-Length,
        Transfer-Encoding and Keep-Alive in ``headers`` and writes those itself:
        Content-Length if ``content_length`` is given, else chunked for
        HTTP/1.1 or a close-delimited body for HTTP/1.0. HEAD requests and
        1xx, 204 and 304 answers get no body framing (Content-Length is still
        written for HEAD and 304 when given, as nginx does). A 1xx status is an
        interim response: the final one follows with another ``send_head``
        (nothing is sent to an HTTP/1.0 client).

        Args:
            status: 100 to 999, not 101 (upgrades are not supported).
            headers: (name, value) pairs without hop-by-hop fields.
            content_length: the body's length, when known.

        Raises:
            HTTPUsageError: no request is waiting for a response, the status
                or a header is invalid (CR, LF or NUL in it).
        """
        if self._tx != _TX_WAIT:
            raise HTTPUsageError("no request is waiting for a response head")
        if not 100 <= status <= 999 or status == 101:
            raise HTTPUsageError(f"cannot send status {status}")
        if content_length is not None and content_length < 0:
            raise HTTPUsageError("content_length must be >= 0")
        head = self._head
        assert head is not None  # _TX_WAIT is only entered with a head
        interim = status < 200
        if interim:
            if head.http_version == b"1.0":
                return b""
            if status == 100:
                self._continue_sent = True
            parts = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status]
            lines = 2  # the status line and the empty line
        else:
            parts = [
                _STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status,
                _date_header(self._clock()),
                self._server_line,
            ]
            lines = 4 if self._server_line else 3
        for name, value in headers:
            if name.lower() not in _OWN_RESPONSE_HEADERS:
                parts += (name, b": ", value, b"\r\n")
                lines += 1
        if not interim:
            if self._rx != _DONE and head.expect_continue and not self._continue_sent:
                # Told "no" before "go on", the client may never send its
                # body, and the next request cannot be found without it.
                self._keep_alive = False
            if head.method == b"HEAD" or status == 204 or status == 304:
                framing = _F_NONE
                if content_length is not None and status != 204:
                    parts.append(b"Content-Length: %d\r\n" % content_length)
                    lines += 1
            elif content_length is not None:
                framing = _F_LENGTH
                self._response_left = content_length
                parts.append(b"Content-Length: %d\r\n" % content_length)
                lines += 1
            elif head.http_version == b"1.1":
                framing = _F_CHUNKED
                parts.append(b"Transfer-Encoding: chunked\r\n")
                lines += 1
            else:
                framing = _F_CLOSE
                self._keep_alive = False
            if not self._keep_alive:
                parts.append(b"Connection: close\r\n")
                lines += 1
            elif head.http_version == b"1.0":
                parts.append(b"Connection: keep-alive\r\n")
                lines += 1
        parts.append(b"\r\n")
        out = b"".join(parts)
        # Every line added here ends in CRLF: any other CR or LF came from a
        # header and would split the response; NUL would corrupt it.
        if out.count(b"\r") != lines or out.count(b"\n") != lines or b"\0" in out:
            raise HTTPUsageError("CR, LF or NUL in a response header")
        if not interim:
            self._framing = framing
            self._tx = _TX_BODY
        return out

    def send_body(self, data: bytes) -> bytes:
        """A piece of the response body, framed; b"" when the response has no body.

        Raises:
            HTTPUsageError: no response head was sent, or ``data`` goes past
                the Content-Length.
        """
        framing = self._framing
        if self._tx != _TX_BODY:
            raise HTTPUsageError("send_head first")
        if framing == _F_CHUNKED:
            if not data:
                return b""
            return b"%x\r\n%b\r\n" % (len(data), data)
        if framing == _F_LENGTH:
            left = self._response_left - len(data)
            if left < 0:
                raise HTTPUsageError(f"body longer than its Content-Length by {-left} bytes")
            self._response_left = left
            return data
        if framing == _F_CLOSE:
            return data
        return b""

    def send_end(self) -> bytes:
        """End the response: the last chunk if chunked, else b"".

        Raises:
            HTTPUsageError: no response head was sent, or the body is shorter
                than its Content-Length.
        """
        if self._tx != _TX_BODY:
            raise HTTPUsageError("send_head first")
        framing = self._framing
        self._tx = _TX_DONE
        if framing == _F_CHUNKED:
            return _LAST_CHUNK
        if framing == _F_LENGTH and self._response_left:
            self._keep_alive = False
            raise HTTPUsageError(f"body shorter than its Content-Length by {self._response_left} bytes")
        return b""

    def send_error_response(self, status: int, *, reason: str | None = None) -> bytes:
        """A whole error response (small HTML page, Connection: close).

        Usable whether or not a request head was parsed (garbage, a timeout
        before the head ended, an ``HTTPError``) and for the proxy's 502/504.
        The connection must close afterwards. If a response has already
        begun, nothing more can be said: returns b"" (close the connection).

        Args:
            status: 400 to 599.
            reason: a short text shown on the page; never put a client's or a
                worker's bytes here.

        Raises:
            HTTPUsageError: ``status`` is not an error status.
        """
        if not 400 <= status <= 599:
            raise HTTPUsageError(f"{status} is not an error status")
        self._keep_alive = False
        if self._tx == _TX_BODY or self._tx == _TX_DONE:
            self._tx = _TX_DONE
            return b""
        phrase = _PHRASES.get(status, b"Unknown")
        page = _error_page(status, phrase, reason, self._server)
        head_request = self._head is not None and self._head.method == b"HEAD"
        self._tx = _TX_DONE
        return b"".join(
            (
                _STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status,
                _date_header(self._clock()),
                self._server_line,
                b"Content-Type: text/html\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(page),
                b"" if head_request else page,
            )
        )


def read_head(version: str, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
              special: list[tuple[bytes, bytes]], max_body: int) -> tuple[RequestHead, int]:
    """A request head from what llhttp read, checked as RFC 9112 asks; and the body state that follows.

    ``special`` holds the fields of ``_SPECIAL`` (framing and routing), in order.

    Raises:
        HTTPError: the head is malformed, ambiguous, or asks what we refuse.
    """
    if version == "1.1":
        http_version = b"1.1"
    elif version == "1.0":
        http_version = b"1.0"
    else:
        raise HTTPError(505, "HTTP version not supported")
    if method == b"CONNECT":
        raise HTTPError(501, "method not implemented")
    host = length = coding = None
    hosts = lengths = codings = 0
    close = keep = expect_continue = False
    for name, value in special:
        if name == b"host":
            host = value
            hosts += 1
        elif name == b"connection":
            for token in value.lower().split(b","):
                token = token.strip(b" \t")
                if token == b"close":
                    close = True
                elif token == b"keep-alive":
                    keep = True
        elif name == b"content-length":
            length = value
            lengths += 1
        elif name == b"transfer-encoding":
            coding = value
            codings += 1
        elif name == b"expect":
            expect_continue = value.lower() == b"100-continue" and http_version == b"1.1"
    keep_alive = not close and (keep or http_version == b"1.1")

    # Framing (RFC 9112 6.1-6.3), refusing every ambiguous form.
    chunked = False
    content_length = None
    if coding is not None:
        if length is not None:
            raise HTTPError(400, "both Content-Length and Transfer-Encoding")
        if http_version == b"1.0":
            raise HTTPError(400, "Transfer-Encoding in an HTTP/1.0 request")
        if codings != 1 or coding.lower() != b"chunked":
            raise HTTPError(400, "unsupported Transfer-Encoding")
        chunked = True
        rx = _CHUNKED
    elif length is not None:
        if lengths != 1:
            raise HTTPError(400, "repeated Content-Length")
        if not length.isdigit():
            raise HTTPError(400, "invalid Content-Length")
        content_length = int(length)
        if max_body and content_length > max_body:
            raise HTTPError(413, "request body too large")
        if content_length:
            rx = _LENGTH
        else:
            rx = _NO_BODY
    else:
        rx = _NO_BODY

    # The target (RFC 9112 3.2).
    if hosts > 1:
        raise HTTPError(400, "repeated Host")
    if target[:1] == b"/":
        path, _, query = target.partition(b"?")
    elif target == b"*":
        if method != b"OPTIONS":
            raise HTTPError(400, "malformed request target")
        path, query = target, b""
    else:
        host, path, query = _split_absolute(target)
        # RFC 9112 3.2.2: the target's authority overrides Host.
        headers = [(n, v) for n, v in headers if n != b"host"]
        headers.append((b"host", host))
    if target.find(b"#") >= 0:
        raise HTTPError(400, "fragment in request target")
    if host is not None:
        if not host or host.translate(None, _HOST_CHARS):
            raise HTTPError(400, "invalid Host")
    elif http_version == b"1.1":
        raise HTTPError(400, "missing Host")
    head = RequestHead(
        method, target, path, query, http_version, headers, content_length, chunked, expect_continue, keep_alive
    )
    return head, rx


def _error_from_llhttp(exc: Exception, piece: bytes, first: bool) -> HTTPError:
    """The HTTPError of what llhttp refused in ``piece`` (``first``: the piece starts the request)."""
    text = str(exc)
    if isinstance(exc, httptools.HttpParserInvalidMethodError):
        if first and _TOKEN_SP(piece):
            return HTTPError(501, "method not implemented")
        return HTTPError(400, "malformed request line")
    if text in _VERSION_ERRORS:
        return HTTPError(505, "HTTP version not supported")
    if isinstance(exc, httptools.HttpParserInvalidURLError):
        return HTTPError(400, "malformed request target")
    # llhttp's texts are fixed strings ("Invalid header value char"),
    # never the client's bytes.
    return HTTPError(400, text[:1].lower() + text[1:] if text else "malformed request")


def _find_blank_line(tail: bytes, buf: bytes, pos: int) -> int:
    """Index just past the first CRLF CRLF in ``buf`` from ``pos`` (one begun in ``tail``, the
    bytes fed before, counts), or -1."""
    if tail:
        i = (tail + buf[pos : pos + 3]).find(_BLANK_LINE)
        if i >= 0:
            return pos + i + 4 - len(tail)
    i = buf.find(_BLANK_LINE, pos)
    return i + 4 if i >= 0 else -1


def _split_absolute(target: bytes) -> tuple[bytes, bytes, bytes]:
    """(authority, path, query) of an absolute-form target such as b"http://h/p?q".

    Raises:
        HTTPError: 400 for another scheme, no authority, or userinfo in it.
    """
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        raise HTTPError(400, "malformed request target")
    cut = len(rest)
    for mark in (b"/", b"?"):
        i = rest.find(mark)
        if 0 <= i < cut:
            cut = i
    authority = rest[:cut]
    path_query = rest[cut:]
    if not authority or b"@" in authority:
        raise HTTPError(400, "malformed request target")
    if path_query[:1] != b"/":
        path_query = b"/" + path_query
    path, _, query = path_query.partition(b"?")
    return authority, path, query
