"""The two sides of a FastCGI connection, as sans-IO state machines.

Rules enforced here (FastCGI 1.0, sections 3-6):

* Every record starts with version 1; anything else ends the connection.
* Request ID 0 carries management records. The application answers them itself:
  GET_VALUES -> GET_VALUES_RESULT (known names only), any other type ->
  UNKNOWN_TYPE. They never surface as events on the application side.
* A request lives from BEGIN_REQUEST to the application's END_REQUEST. Many may
  be in flight on one connection (multiplexing), each with its own ID.
* Application side: BEGIN_REQUEST for an ID already in flight is an error; an
  unsupported role is refused with END_REQUEST(UNKNOWN_ROLE); records for an ID
  not in flight are ignored (the web server may still be sending STDIN for a
  request the application has already finished). PARAMS is one byte stream
  ended by an empty record; pairs may straddle records. The request surfaces as
  one ``Request`` event when PARAMS ends; STDIN (and DATA for FILTER) follow and
  may not arrive before that or after their own end.
* Web-server side: every record for a request ID must belong to a request it
  sent, except that after ``AbortRequest`` the rest of that request (up to its
  END_REQUEST) is swallowed: a request that was given up produces no events.
* Limits: PARAMS per request, requests in flight, bytes held per connection.
  Exceeding one is a ``RemoteProtocolError``.
* After any ``RemoteProtocolError`` the connection is in ERROR and refuses more
  work: the only thing left to do with it is to close it.

Driving a connection: feed bytes with ``receive_data`` (b"" at EOF), call
``next_event`` until it returns ``NEED_DATA``, write out ``send(event)`` and
``data_to_send()`` (the application side's automatic answers).
"""

from __future__ import annotations

import enum
from typing import Callable, Mapping

from ._constants import (
    DEFAULT_MAX_BUFFER_SIZE,
    DEFAULT_MAX_PARAMS_SIZE,
    DEFAULT_MAX_REQUESTS,
    FCGI_CLUSTER_PROCESSES,
    FCGI_MAX_CONNS,
    FCGI_MAX_REQS,
    FCGI_MPXS_CONNS,
    HEADER_SIZE,
    KEEP_CONN,
    MAX_REQUEST_ID,
    VERSION,
    ProtocolStatus,
    RecordType,
    Role,
)
from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import (
    NEED_DATA,
    AbortRequest,
    ConnectionClosed,
    Data,
    EndRequest,
    Event,
    GetValues,
    GetValuesResult,
    Request,
    Stderr,
    Stdin,
    Stdout,
    UnknownType,
)
from ._records import (
    HEADER,
    decode_begin_request,
    decode_end_request,
    decode_pairs,
    decode_unknown_type,
    encode_begin_request,
    encode_end_request,
    encode_pairs,
    encode_params,
    encode_record,
    encode_stream,
    encode_unknown_type,
)

__all__ = ["ConnectionState", "ServerConnection", "ClientConnection"]

_unpack_header = HEADER.unpack_from
_T = RecordType



# Enum lookups by value, without the cost of calling the enum class (a few
# tenths of a microsecond, on every request).
_PROTOCOL_STATUSES = {int(status): status for status in ProtocolStatus}
_ROLES = {int(role): role for role in Role}

class ConnectionState(enum.Enum):
    """Whether a connection can still be used."""

    OPEN = "open"
    #: The peer sent EOF; events already buffered were delivered.
    CLOSED = "closed"
    #: A protocol error happened; close the transport.
    ERROR = "error"


class _Core:
    """Byte buffering and record framing shared by both sides."""

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0
        self._eof = False
        self._out = bytearray()
        self.state = ConnectionState.OPEN

    def receive_data(self, data: bytes) -> None:
        """Feed bytes received from the peer; b"" means the peer closed its side."""
        if self.state is ConnectionState.ERROR:
            raise LocalProtocolError("connection is in ERROR; close it")
        if not data:
            self._eof = True
            return
        if self._eof:
            raise LocalProtocolError("received data after EOF")
        if self._pos:
            self._buf = self._buf[self._pos :] + data
            self._pos = 0
        elif self._buf:
            self._buf += data
        else:
            self._buf = bytes(data)

    def data_to_send(self) -> bytes:
        """Bytes the core produced by itself (answers to management records)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def buffered(self) -> int:
        """Bytes received but not yet turned into events."""
        return len(self._buf) - self._pos

    def next_event(self) -> Event | object:
        """The next event, ``NEED_DATA``, or ``ConnectionClosed`` after EOF.

        Raises:
            RemoteProtocolError: the peer broke the protocol or a limit. The
                connection is then in ERROR.
        """
        if self.state is not ConnectionState.OPEN:
            if self.state is ConnectionState.ERROR:
                raise RemoteProtocolError("connection is in ERROR; close it")
            return ConnectionClosed()
        try:
            buf = self._buf
            pos = self._pos
            end = len(buf)
            handlers = self._handlers
            while end - pos >= HEADER_SIZE:
                version, rtype, rid, clen, plen = _unpack_header(buf, pos)
                if version != VERSION:
                    raise RemoteProtocolError(f"record version {version}, expected 1 (not FastCGI?)")
                stop = pos + HEADER_SIZE + clen
                if stop + plen > end:
                    break
                content = buf[pos + HEADER_SIZE : stop]
                pos = self._pos = stop + plen
                handler = handlers.get(rtype)
                if handler is None:
                    event = self._unknown_record(rtype, rid, content)
                else:
                    event = handler(rid, content)
                if event is not None:
                    return event
            if self._eof:
                if end - pos:
                    raise RemoteProtocolError("connection closed in the middle of a record")
                self.state = ConnectionState.CLOSED
                return ConnectionClosed()
            return NEED_DATA
        except RemoteProtocolError:
            self.state = ConnectionState.ERROR
            raise

    # Subclasses fill these in.
    _handlers: dict[int, Callable[[int, bytes], Event | None]]

    def _unknown_record(self, rtype: int, rid: int, content: bytes) -> Event | None:
        raise RemoteProtocolError(f"unexpected record type {rtype}")

    def _check_usable(self) -> None:
        if self.state is ConnectionState.ERROR:
            raise LocalProtocolError("connection is in ERROR; close it")


class _ServerRequest:
    """What the application side tracks for one request in flight."""

    __slots__ = ("role", "keep_conn", "params", "input_open", "data_open", "aborted", "stdout_open", "stderr_used")

    def __init__(self, role: int, keep_conn: bool) -> None:
        self.role = role
        self.keep_conn = keep_conn
        self.params: bytearray | None = bytearray()
        self.input_open = True
        self.data_open = role == Role.FILTER
        self.aborted = False
        self.stdout_open = True
        self.stderr_used = False


class ServerConnection(_Core):
    """The application (worker) side of one FastCGI connection.

    Args:
        max_requests: requests in flight at once; advertised as FCGI_MAX_REQS.
        max_conns: advertised as FCGI_MAX_CONNS (the server's connection cap).
        multiplex: advertised as FCGI_MPXS_CONNS; when False a second request in
            flight is refused with END_REQUEST(CANT_MPX_CONN).
        roles: the roles served; others are refused with UNKNOWN_ROLE.
        max_params_size: bytes of PARAMS per request.
        max_buffer_size: bytes held for PARAMS of all requests at once.
        processes: processes serving this address, advertised as
            FCGI_CLUSTER_PROCESSES; None to leave it out.
    """

    def __init__(
        self,
        *,
        max_requests: int = DEFAULT_MAX_REQUESTS,
        max_conns: int = 1024,
        multiplex: bool = True,
        roles: frozenset[Role] = frozenset({Role.RESPONDER}),
        max_params_size: int = DEFAULT_MAX_PARAMS_SIZE,
        max_buffer_size: int = DEFAULT_MAX_BUFFER_SIZE,
        processes: int | None = None,
    ) -> None:
        super().__init__()
        self.max_requests = max_requests
        self.multiplex = multiplex
        self.roles = frozenset(roles)
        self.max_params_size = max_params_size
        self.max_buffer_size = max_buffer_size
        self.values = {
            FCGI_MAX_CONNS: str(max_conns).encode(),
            FCGI_MAX_REQS: str(max_requests if multiplex else 1).encode(),
            FCGI_MPXS_CONNS: b"1" if multiplex else b"0",
        }
        if processes is not None:
            self.values[FCGI_CLUSTER_PROCESSES] = str(processes).encode()
        self._requests: dict[int, _ServerRequest] = {}
        self._held = 0
        #: Set when a request without KEEP_CONN has ended: close after sending.
        self.should_close = False
        self._handlers = {
            _T.BEGIN_REQUEST: self._on_begin,
            _T.PARAMS: self._on_params,
            _T.STDIN: self._on_stdin,
            _T.DATA: self._on_data,
            _T.ABORT_REQUEST: self._on_abort,
            _T.GET_VALUES: self._on_get_values,
        }

    @property
    def requests_in_flight(self) -> int:
        return len(self._requests)

    # --- receiving ------------------------------------------------------

    def _unknown_record(self, rtype: int, rid: int, content: bytes) -> Event | None:
        if rid == 0:
            self._out += encode_unknown_type(rtype)
            return None
        if rid in self._requests:
            raise RemoteProtocolError(f"record type {rtype} is not one a web server sends")
        return None  # a record for a request not in flight: ignored, as the spec says

    def _on_get_values(self, rid: int, content: bytes) -> None:
        if rid != 0:
            return self._unknown_record(_T.GET_VALUES, rid, content)
        asked = decode_pairs(content)
        known = self.values
        self._out += encode_record(
            _T.GET_VALUES_RESULT, 0, encode_pairs((name, known[name]) for name in asked if name in known)
        )
        return None

    def _on_begin(self, rid: int, content: bytes) -> None:
        if rid == 0:
            self._out += encode_unknown_type(_T.BEGIN_REQUEST)
            return None
        role, flags = decode_begin_request(content)
        if rid in self._requests:
            raise RemoteProtocolError(f"BEGIN_REQUEST for request {rid}, which is already in flight")
        if role not in self.roles:
            self._out += encode_end_request(rid, 0, ProtocolStatus.UNKNOWN_ROLE)
            return None
        if self._requests and not self.multiplex:
            self._out += encode_end_request(rid, 0, ProtocolStatus.CANT_MPX_CONN)
            return None
        if len(self._requests) >= self.max_requests:
            raise RemoteProtocolError(
                f"more than {self.max_requests} requests in flight (FCGI_MAX_REQS)"
            )
        self._requests[rid] = _ServerRequest(role, bool(flags & KEEP_CONN))
        return None

    def _on_params(self, rid: int, content: bytes) -> Request | None:
        req = self._requests.get(rid)
        if req is None:
            return self._unknown_record(_T.PARAMS, rid, content)
        params = req.params
        if params is None:
            raise RemoteProtocolError(f"PARAMS for request {rid} after its end")
        if content:
            params += content
            self._held += len(content)
            if len(params) > self.max_params_size:
                raise RemoteProtocolError(
                    f"PARAMS of request {rid} exceed {self.max_params_size} bytes", 431
                )
            if self._held > self.max_buffer_size:
                raise RemoteProtocolError(f"PARAMS in flight exceed {self.max_buffer_size} bytes")
            return None
        self._held -= len(params)
        req.params = None
        return Request(rid, decode_pairs(params), _ROLES[req.role], req.keep_conn)

    def _input(self, rid: int, content: bytes, rtype: int) -> _ServerRequest | None:
        req = self._requests.get(rid)
        if req is None:
            return None
        if req.params is not None:
            raise RemoteProtocolError(f"{_T(rtype).name} for request {rid} before its PARAMS ended")
        return req

    def _on_stdin(self, rid: int, content: bytes) -> Stdin | None:
        req = self._input(rid, content, _T.STDIN)
        if req is None:
            return None
        if not req.input_open:
            raise RemoteProtocolError(f"STDIN for request {rid} after its end")
        if not content:
            req.input_open = False
        return None if req.aborted else Stdin(rid, content)

    def _on_data(self, rid: int, content: bytes) -> Data | None:
        req = self._input(rid, content, _T.DATA)
        if req is None:
            return None
        if not req.data_open:
            raise RemoteProtocolError(f"DATA for request {rid}, which is not an open FILTER stream")
        if not content:
            req.data_open = False
        return None if req.aborted else Data(rid, content)

    def _on_abort(self, rid: int, content: bytes) -> AbortRequest | None:
        req = self._requests.get(rid)
        if req is None or req.aborted:
            return None
        if req.params is not None:
            # Never surfaced to the application: finish it here.
            self._held -= len(req.params)
            del self._requests[rid]
            self._out += encode_end_request(rid, 0, ProtocolStatus.REQUEST_COMPLETE)
            self._note_end(req)
            return None
        req.aborted = True
        return AbortRequest(rid)

    # --- sending --------------------------------------------------------

    def _request_for_send(self, rid: int) -> _ServerRequest:
        self._check_usable()
        req = self._requests.get(rid)
        if req is None or req.params is not None:
            raise LocalProtocolError(f"request {rid} is not in flight")
        return req

    def send(self, event: Event) -> bytes:
        """Bytes that carry ``event`` (Stdout, Stderr or EndRequest) to the peer.

        Raises:
            LocalProtocolError: the event does not fit the request's state.
        """
        kind = type(event)
        if kind is Stdout or kind is Stderr:
            req = self._request_for_send(event.request_id)
            if kind is Stdout:
                if not req.stdout_open:
                    raise LocalProtocolError(f"STDOUT of request {event.request_id} already ended")
                if not event.data:
                    req.stdout_open = False
                    return encode_record(_T.STDOUT, event.request_id)
            elif event.data:
                req.stderr_used = True
            else:
                return b""  # STDERR is ended by EndRequest
            return encode_stream(kind.record_type, event.request_id, event.data)
        if kind is EndRequest:
            rid = event.request_id
            req = self._request_for_send(rid)
            # Encode first: a bad status must leave the request in flight.
            end = encode_end_request(rid, event.app_status, event.protocol_status)
            del self._requests[rid]
            out = b""
            if req.stdout_open:
                out += encode_record(_T.STDOUT, rid)
            if req.stderr_used:
                out += encode_record(_T.STDERR, rid)
            self._note_end(req)
            return out + end
        raise LocalProtocolError(f"an application does not send {kind.__name__}")

    def _note_end(self, req: _ServerRequest) -> None:
        if not req.keep_conn:
            self.should_close = True


class _ClientRequest:
    __slots__ = ("stdin_open", "data_open", "stdout_open", "stderr_open", "aborted")

    def __init__(self, role: int) -> None:
        self.stdin_open = True
        self.data_open = role == Role.FILTER
        self.stdout_open = True
        self.stderr_open = True
        self.aborted = False


class ClientConnection(_Core):
    """The web-server (front-end) side of one FastCGI connection."""

    def __init__(self) -> None:
        super().__init__()
        self._requests: dict[int, _ClientRequest] = {}
        self._next_id = 1
        self._handlers = {
            _T.STDOUT: self._on_stdout,
            _T.STDERR: self._on_stderr,
            _T.END_REQUEST: self._on_end,
            _T.GET_VALUES_RESULT: self._on_values,
            _T.UNKNOWN_TYPE: self._on_unknown_type,
        }

    @property
    def requests_in_flight(self) -> int:
        """Requests sent and not yet ended (aborted ones until their END_REQUEST)."""
        return len(self._requests)

    def new_request_id(self) -> int:
        """A request ID not in flight; IDs are reused lowest-first after 65535."""
        if len(self._requests) >= MAX_REQUEST_ID:
            raise LocalProtocolError("all 65535 request IDs are in flight")
        rid = self._next_id
        while rid in self._requests:
            rid = rid % MAX_REQUEST_ID + 1
        self._next_id = rid % MAX_REQUEST_ID + 1
        return rid

    # --- receiving ------------------------------------------------------

    def _request(self, rid: int, what: str) -> _ClientRequest:
        req = self._requests.get(rid)
        if req is None:
            raise RemoteProtocolError(f"{what} for request {rid}, which is not in flight")
        return req

    def _on_stdout(self, rid: int, content: bytes) -> Stdout | None:
        req = self._request(rid, "STDOUT")
        if not req.stdout_open:
            raise RemoteProtocolError(f"STDOUT for request {rid} after its end")
        if not content:
            req.stdout_open = False
        return None if req.aborted else Stdout(rid, content)

    def _on_stderr(self, rid: int, content: bytes) -> Stderr | None:
        req = self._request(rid, "STDERR")
        if not req.stderr_open:
            raise RemoteProtocolError(f"STDERR for request {rid} after its end")
        if not content:
            req.stderr_open = False
        return None if req.aborted else Stderr(rid, content)

    def _on_end(self, rid: int, content: bytes) -> EndRequest | None:
        req = self._request(rid, "END_REQUEST")
        app_status, protocol_status = decode_end_request(content)
        del self._requests[rid]
        if req.aborted:
            return None
        status = _PROTOCOL_STATUSES.get(protocol_status)
        if status is None:
            raise RemoteProtocolError(f"END_REQUEST with unknown protocol status {protocol_status}")
        return EndRequest(rid, app_status, status)

    def _on_values(self, rid: int, content: bytes) -> GetValuesResult:
        if rid != 0:
            raise RemoteProtocolError("GET_VALUES_RESULT with a non-zero request ID")
        return GetValuesResult(decode_pairs(content))

    def _on_unknown_type(self, rid: int, content: bytes) -> UnknownType:
        if rid != 0:
            raise RemoteProtocolError("UNKNOWN_TYPE with a non-zero request ID")
        return UnknownType(decode_unknown_type(content))

    # --- sending --------------------------------------------------------

    def send_request(
        self, params: Mapping[bytes, bytes] | bytes, body: bytes | None = b"", keep_conn: bool = True
    ) -> tuple[int, bytes]:
        """Start a RESPONDER request in one call: a new ID and its records.

        The same bytes as ``send(Request(...))`` then ``send(Stdin(...))`` for
        ``body`` and the end of STDIN, without the events: the proxy's hot path.

        Args:
            params: the CGI params, names and values as bytes; or the
                name-value block already encoded.
            body: the whole request body (STDIN is ended after it), or None
                when the body follows with ``send(Stdin(...))``.
            keep_conn: set FCGI_KEEP_CONN.

        Returns:
            ``(request_id, data)``.

        Raises:
            LocalProtocolError: the connection is not usable, or 65535
                requests are in flight.
        """
        self._check_usable()
        rid = self.new_request_id()
        parts = [
            encode_begin_request(rid, Role.RESPONDER, KEEP_CONN if keep_conn else 0),
            encode_stream(_T.PARAMS, rid, params if type(params) is bytes else encode_params(params)),  # type: ignore[arg-type]
            encode_record(_T.PARAMS, rid),
        ]
        req = _ClientRequest(Role.RESPONDER)
        if body is not None:
            if body:
                parts.append(encode_stream(_T.STDIN, rid, body))
            parts.append(encode_record(_T.STDIN, rid))
            req.stdin_open = False
        self._requests[rid] = req
        return rid, b"".join(parts)

    def send(self, event: Event) -> bytes:
        """Bytes that carry ``event`` (Request, Stdin, Data, AbortRequest, GetValues).

        Raises:
            LocalProtocolError: the event does not fit the connection's state.
        """
        self._check_usable()
        kind = type(event)
        if kind is Request:
            rid = event.request_id
            if not 1 <= rid <= MAX_REQUEST_ID:
                raise LocalProtocolError(f"request ID {rid} is out of range 1..65535")
            if rid in self._requests:
                raise LocalProtocolError(f"request {rid} is already in flight")
            # Encode first: a bad role or param must leave no request in flight.
            out = b"".join(
                (
                    encode_begin_request(rid, event.role, KEEP_CONN if event.keep_conn else 0),
                    encode_stream(_T.PARAMS, rid, encode_params(event.params)),
                    encode_record(_T.PARAMS, rid),
                )
            )
            self._requests[rid] = _ClientRequest(event.role)
            return out
        if kind is Stdin or kind is Data:
            rid = event.request_id
            req = self._requests.get(rid)
            if req is None:
                raise LocalProtocolError(f"request {rid} is not in flight")
            if req.aborted:
                return b""
            if kind is Stdin:
                if not req.stdin_open:
                    raise LocalProtocolError(f"STDIN of request {rid} already ended")
                if not event.data:
                    req.stdin_open = False
            else:
                if not req.data_open:
                    raise LocalProtocolError(f"DATA of request {rid} is not open")
                if not event.data:
                    req.data_open = False
            if not event.data:
                return encode_record(kind.record_type, rid)
            return encode_stream(kind.record_type, rid, event.data)
        if kind is AbortRequest:
            req = self._requests.get(event.request_id)
            if req is None or req.aborted:
                return b""
            req.aborted = True
            return encode_record(_T.ABORT_REQUEST, event.request_id)
        if kind is GetValues:
            body = encode_pairs((name, b"") for name in event.names)
            return encode_record(_T.GET_VALUES, 0, body)
        raise LocalProtocolError(f"a web server does not send {kind.__name__}")
