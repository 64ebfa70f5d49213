"""The front-end's HTTP/2 server side, sans-IO, over python-hyper's ``h2``.

Bytes in (``receive_data``, which returns events), frames out (``send_head``,
``send_data``, ``end_stream``, ``reset``, ``close``, then ``data_to_send``).
The core never touches a socket; ``_h2_connection`` moves the bytes.

Rules enforced here (RFC 9113, with nginx's choices and the lessons of the
known attacks), each breach a GOAWAY and an ``H2Refused`` (the peer's fault):

* Our SETTINGS: ``max_concurrent_streams`` (nginx's 128); MAX_HEADER_LIST_SIZE
  the HTTP/1.1 side's ``max_header_size``; a stream's receive window of 64 KiB,
  the request body held per stream before a worker takes it.
* CONTINUATION flood (2024): the bytes of one header block (HEADERS and its
  CONTINUATION frames) are counted on the raw frames before h2 gathers or
  decodes them; past ``max_header_block`` the connection ends.
* HPACK bomb: the decoded header list is bounded by h2's decoder
  (``max_header_list_size``), whatever the compressed size.
* Rapid reset (CVE-2023-44487): streams reset by the client, PINGs, SETTINGS
  and empty DATA frames are counted per ``flood_window`` seconds; past their
  bound, GOAWAY ENHANCE_YOUR_CALM.
* A request's own faults (a missing or bad pseudo-header, a bad
  Content-Length, too many fields) are not the connection's: its ``Request``
  carries a ``refusal`` (status, reason) that the caller answers as HTTP.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Union

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

from ._http import HTTPLimits, RequestHead

__all__ = [
    "PREFACE", "H2Limits", "H2Refused", "H2Server", "Request", "Data", "EndStream", "Reset", "WindowOpened",
    "Closed", "Event", "request_head",
]  # fmt: skip

#: The client's connection preface (RFC 9113 3.4): how h2c with prior knowledge starts.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

_HEADERS, _CONTINUATION, _END_HEADERS = 0x1, 0x9, 0x4


@dataclass(frozen=True, slots=True)
class H2Limits:
    """What one HTTP/2 client may do before its connection ends.

    Args:
        max_concurrent_streams: streams open at once (SETTINGS); nginx's
            ``http2_max_concurrent_streams`` default.
        max_header_list_size: decoded bytes of one request's header list (RFC
            7541 sizes: name + value + 32 each); the HTTP/1.1 head's bound.
        max_header_block: compressed bytes of one header block across its
            CONTINUATION frames. Four times the decoded bound: HPACK never
            needs more than the literal bytes plus a few per field.
        stream_window: bytes of request body a stream may send ahead of what
            a worker took (its receive window).
        max_resets: streams the client may reset per ``flood_window``. A
            browser cancels a few when a page changes; the 2023 attack
            resets thousands a second.
        max_pings: PING frames per window (a client checks liveness once in
            seconds).
        max_settings: SETTINGS frames per window (a client sends one or two).
        max_empty_data: empty DATA frames without END_STREAM per window
            (CVE-2019-9518: they cost work and carry nothing).
        flood_window: seconds over which those are counted.
    """

    max_concurrent_streams: int = 128
    max_header_list_size: int = 32 * 1024
    max_header_block: int = 128 * 1024
    stream_window: int = 65535
    max_resets: int = 200
    max_pings: int = 100
    max_settings: int = 100
    max_empty_data: int = 100
    flood_window: float = 10.0


class H2Refused(Exception):
    """The client broke a rule or a limit: a GOAWAY with ``error_code`` is queued; close after sending it."""

    def __init__(self, error_code: int, reason: str) -> None:
        super().__init__(reason)
        self.error_code = error_code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Request:
    """A stream's request head arrived; ``refusal`` (status, reason) when it must be answered with an error."""

    stream_id: int
    head: RequestHead
    refusal: tuple[int, str] | None = None
    #: The head ended the stream: no body (an ``EndStream`` follows all the same).
    ended: bool = False


@dataclass(frozen=True, slots=True)
class Data:
    """Request body bytes; ``flow`` is what they cost of the windows (padding counted), for ``ack``."""

    stream_id: int
    data: bytes
    flow: int


@dataclass(frozen=True, slots=True)
class EndStream:
    """The client ended its side of a stream: the body is complete."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class Reset:
    """The client reset a stream: nothing more may be sent on it."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class WindowOpened:
    """The client let more data be sent: on one stream, or (0) on all of them."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class Closed:
    """The client sent GOAWAY: no new streams; those open may end."""

    error_code: int


Event = Union[Request, Data, EndStream, Reset, WindowOpened, Closed]


class _Counter:
    """Events counted in fixed windows of ``span`` seconds: ``hit`` is False past ``bound`` in one."""

    __slots__ = ("bound", "span", "start", "count")

    def __init__(self, bound: int, span: float) -> None:
        self.bound = bound
        self.span = span
        self.start = -span
        self.count = 0

    def hit(self, now: float) -> bool:
        if now - self.start >= self.span:
            self.start, self.count = now, 0
        self.count += 1
        return self.count <= self.bound


class H2Server:
    """One client's HTTP/2 connection, server side, as a state object.

    Args:
        limits: the HTTP/2 bounds.
        http: the HTTP/1.1 side's limits (headers, body), applied the same.
        clock: monotonic seconds, for the flood counters.

    Raises (``receive_data``):
        H2Refused: the client broke the protocol or a limit; GOAWAY queued.
    """

    def __init__(self, limits: H2Limits, http: HTTPLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.http = http
        self._clock = clock
        # Outbound fields are not checked again by h2 (a fifth of a stream's
        # cost): names are lower-cased tokens (``response_fields``) and values
        # hold no CR, LF or NUL (the worker's CGI head is refused otherwise,
        # ``client._cgi``). What clients send is checked in full.
        config = h2.config.H2Configuration(client_side=False, header_encoding=None, validate_outbound_headers=False,
                                           normalize_outbound_headers=False)
        conn = self._h2 = h2.connection.H2Connection(config)
        codes = h2.settings.SettingCodes
        conn.local_settings = h2.settings.Settings(client=False, initial_values={
            codes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            codes.MAX_HEADER_LIST_SIZE: limits.max_header_list_size,
            codes.INITIAL_WINDOW_SIZE: limits.stream_window,
        })
        conn.decoder.max_header_list_size = limits.max_header_list_size
        conn.initiate_connection()
        # The connection window covers a few streams' bodies at once, so one
        # stream whose worker is slow to read does not stall the others' uploads.
        conn.increment_flow_control_window(15 * limits.stream_window)
        self._out = [conn.data_to_send()]
        #: Bytes queued for ``data_to_send``.
        self.output_size = len(self._out[0])
        span = limits.flood_window
        self._resets = _Counter(limits.max_resets, span)
        self._pings = _Counter(limits.max_pings, span)
        self._settings = _Counter(limits.max_settings, span)
        self._empty = _Counter(limits.max_empty_data, span)
        # The raw frame scanner (header block bytes before h2 sees them).
        self._preface_left = len(PREFACE)
        self._frame_head = b""
        self._payload_left = 0
        self._block = 0
        self.error: H2Refused | None = None
        #: Set by ``goaway``: the last stream served; the client's later ones are refused.
        self.last_stream_id: int | None = None

    # --- receiving ---------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the client; the events they complete, in order."""
        if self.error is not None:
            raise self.error
        try:
            self._scan(data)
            raw = self._h2.receive_data(data)
            events = self._translate(raw)
        except H2Refused as exc:
            self._fail(exc)
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued its GOAWAY already.
            code = getattr(exc, "error_code", ErrorCodes.PROTOCOL_ERROR)
            reason = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, h2.exceptions.DenialOfServiceError):
                # An HPACK bomb, or a plain header list over the bound: decoded size counts.
                code, reason = ErrorCodes.ENHANCE_YOUR_CALM, f"decoded header list too large ({exc})"
            self._take_output()
            self.error = H2Refused(int(code), reason)
            raise self.error from None
        self._take_output()
        return events

    def _fail(self, exc: H2Refused) -> None:
        self.error = exc
        try:
            self._h2.close_connection(exc.error_code, additional_data=exc.reason.encode()[:64])
        except h2.exceptions.ProtocolError:
            pass
        self._take_output()
        raise exc

    def _scan(self, data: bytes) -> None:
        """Follow frame boundaries in the raw bytes, counting each header block's size."""
        pos, end = 0, len(data)
        if self._preface_left:
            step = min(self._preface_left, end)
            self._preface_left -= step
            pos = step
        while pos < end:
            if self._payload_left:
                step = min(self._payload_left, end - pos)
                self._payload_left -= step
                pos += step
                continue
            need = 9 - len(self._frame_head)
            self._frame_head += data[pos : pos + need]
            pos += need
            if len(self._frame_head) < 9:
                return
            head, self._frame_head = self._frame_head, b""
            length = int.from_bytes(head[:3], "big")
            kind, flags = head[3], head[4]
            self._payload_left = length
            if kind == _HEADERS or kind == _CONTINUATION:
                self._block += length
                if self._block > self.limits.max_header_block:
                    raise H2Refused(ErrorCodes.ENHANCE_YOUR_CALM, "header block too large")
                if flags & _END_HEADERS:
                    self._block = 0

    def _translate(self, raw: list[h2.events.Event]) -> list[Event]:
        out: list[Event] = []
        now = self._clock()
        for event in raw:
            kind = type(event)
            if kind is h2.events.RequestReceived:
                out.append(self._request(event))
            elif kind is h2.events.DataReceived:
                if not event.data and event.stream_ended is None and not self._empty.hit(now):
                    raise H2Refused(ErrorCodes.ENHANCE_YOUR_CALM, "empty DATA flood")
                out.append(Data(event.stream_id, event.data, event.flow_controlled_length))
            elif kind is h2.events.StreamEnded:
                out.append(EndStream(event.stream_id))
            elif kind is h2.events.StreamReset:
                if event.remote_reset and not self._resets.hit(now):
                    raise H2Refused(ErrorCodes.ENHANCE_YOUR_CALM, "too many stream resets")
                out.append(Reset(event.stream_id))
            elif kind is h2.events.WindowUpdated:
                out.append(WindowOpened(event.stream_id))
            elif kind is h2.events.RemoteSettingsChanged:
                if not self._settings.hit(now):
                    raise H2Refused(ErrorCodes.ENHANCE_YOUR_CALM, "SETTINGS flood")
                out.append(WindowOpened(0))
            elif kind is h2.events.PingReceived:
                if not self._pings.hit(now):
                    raise H2Refused(ErrorCodes.ENHANCE_YOUR_CALM, "PING flood")
            elif kind is h2.events.ConnectionTerminated:
                out.append(Closed(event.error_code or 0))
            # Trailers are dropped (as on HTTP/1.1); priority is not used.
        return out

    def _request(self, event: h2.events.RequestReceived) -> Request:
        head, refusal = request_head(event.headers, self.http)
        if event.stream_ended is None and head.content_length is None:
            # A body of unknown length follows: read as HTTP/1.1 reads a chunked one.
            head = head._replace(chunked=True)
        return Request(event.stream_id, head, refusal, event.stream_ended is not None)

    # --- sending -------------------------------------------------------------------

    def _take_output(self) -> None:
        data = self._h2.data_to_send()
        if data:
            self._out.append(data)
            self.output_size += len(data)

    def data_to_send(self) -> bytes:
        """The frames queued since the last call."""
        out, self._out = self._out, []
        self.output_size = 0
        return b"".join(out)

    @property
    def has_output(self) -> bool:
        return bool(self._out)

    def send_head(self, stream_id: int, status: int, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        """A response's HEADERS frame (``headers`` with lower-case names, no hop-by-hop field)."""
        self._h2.send_headers(stream_id, [(b":status", b"%d" % status), *headers], end_stream=end)
        if end:
            self._answered(stream_id)
        self._take_output()

    def window(self, stream_id: int) -> int:
        """Bytes that may be sent on the stream now (its window and the connection's)."""
        try:
            return min(self._h2.local_flow_control_window(stream_id), self._h2.max_outbound_frame_size * 4)
        except h2.exceptions.StreamClosedError:
            return -1

    def send_data(self, stream_id: int, data: memoryview) -> int:
        """Send as much of ``data`` as the windows allow now: the bytes taken (-1: the stream is gone)."""
        room = self.window(stream_id)
        if room <= 0:
            return room
        size = self._h2.max_outbound_frame_size
        taken = 0
        conn = self._h2
        while taken < room and taken < len(data):
            step = min(size, room - taken, len(data) - taken)
            conn.send_data(stream_id, bytes(data[taken : taken + step]))
            taken += step
        self._take_output()
        return taken

    def end_stream(self, stream_id: int) -> bool:
        """End our side of the stream; False when it is gone already."""
        try:
            self._h2.end_stream(stream_id)
        except h2.exceptions.StreamClosedError:
            return False
        self._answered(stream_id)
        self._take_output()
        return True

    def _answered(self, stream_id: int) -> None:
        """Our answer is whole: a body the client now ends short of its Content-Length is not an error.

        (curl ends it so after an early 413; h2 would end the connection for
        it, and has no public way to say otherwise.)
        """
        stream = self._h2.streams.get(stream_id)
        if stream is not None:
            stream._expected_content_length = None

    def ack(self, stream_id: int, flow: int) -> None:
        """Body bytes were taken: give their room back to the client (WINDOW_UPDATE)."""
        if flow:
            try:
                self._h2.acknowledge_received_data(flow, stream_id)
            except h2.exceptions.StreamClosedError:
                # Its window is gone with it; the connection's still counts.
                self._h2.increment_flow_control_window(flow)
            self._take_output()

    def reset(self, stream_id: int, code: int = ErrorCodes.CANCEL) -> None:
        """RST_STREAM: the answer cannot be completed (or the rest of a body is not wanted)."""
        try:
            self._h2.reset_stream(stream_id, code)
        except h2.exceptions.StreamClosedError:
            return
        self._take_output()

    def goaway(self, reason: str, last_stream_id: int | None = None) -> None:
        """A graceful GOAWAY NO_ERROR: streams up to ``last_stream_id`` (default: the highest started) go on.

        The connection stays open for them (h2's own GOAWAY would close its
        state machine, and the DATA of streams in flight would be refused):
        the frame is written here, and ``refuses`` tells which streams came
        too late. A second call does nothing.
        """
        if self.last_stream_id is not None or self.error is not None:
            return
        last = self._h2.highest_inbound_stream_id if last_stream_id is None else last_stream_id
        self.last_stream_id = last
        self._take_output()
        frame = GoAwayFrame(0, last_stream_id=last, error_code=ErrorCodes.NO_ERROR,
                            additional_data=reason.encode()[:64]).serialize()
        self._out.append(frame)
        self.output_size += len(frame)

    def refuses(self, stream_id: int) -> bool:
        """The stream began after our GOAWAY's last stream: it must be refused (RST_STREAM REFUSED_STREAM)."""
        return self.last_stream_id is not None and stream_id > self.last_stream_id

    def close(self, code: int = ErrorCodes.NO_ERROR, reason: str = "") -> None:
        """GOAWAY and the end of the connection (after an idle timeout, or at shutdown)."""
        try:
            self._h2.close_connection(code, additional_data=reason.encode()[:64] or None,
                                      last_stream_id=self.last_stream_id)
        except h2.exceptions.ProtocolError:
            return
        self._take_output()


def request_head(headers: list[tuple[bytes, bytes]], limits: HTTPLimits) -> tuple[RequestHead, tuple[int, str] | None]:
    """A stream's header list as the HTTP/1.1 side's ``RequestHead`` (version b"2.0"), and a refusal if any.

    h2 has checked the pseudo-headers' presence and order, lower-case names
    and the absence of connection-specific fields. Here: the target's form,
    Host from ``:authority`` (RFC 9113 8.3.1), cookies joined into one field
    (8.2.3), Content-Length, and the HTTP/1.1 side's field and body bounds.
    """
    method, target, authority = b"GET", b"/", None
    fields: list[tuple[bytes, bytes]] = []
    cookies: list[bytes] = []
    for name, value in headers:
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                target = value
            elif name == b":authority":
                authority = value
        elif name == b"cookie":
            cookies.append(value)
        else:
            fields.append((name, value))
    refusal: tuple[int, str] | None = None
    if authority is not None:
        fields = [(n, v) for n, v in fields if n != b"host"]
        fields.append((b"host", authority))
    elif not any(n == b"host" for n, _ in fields):
        refusal = (400, "neither :authority nor Host")
    if cookies:
        fields.append((b"cookie", b"; ".join(cookies)))
    if target[:1] == b"/":
        path, _, query = target.partition(b"?")
    elif target == b"*" and method == b"OPTIONS":
        path, query = target, b""
    else:
        path, query = b"/", b""
        refusal = (400, "malformed :path")
    if method == b"CONNECT":
        refusal = (501, "method not implemented")
    if target.find(b"#") >= 0:
        refusal = (400, "fragment in request target")
    length: int | None = None
    lengths = [v for n, v in fields if n == b"content-length"]
    if lengths:
        if len(lengths) > 1 or not lengths[0].isdigit():
            refusal = (400, "invalid Content-Length")
        else:
            length = int(lengths[0])
            if limits.max_body_size and length > limits.max_body_size:
                refusal = (413, "request body too large")
    if len(fields) > limits.max_headers:
        refusal = (431, "too many header fields")
    head = RequestHead(method, target, path, query, b"2.0", fields, length, False, False, True)
    return head, refusal
