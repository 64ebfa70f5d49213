"""A trio FastCGI connection to one worker, shared by many concurrent requests.

Three kinds of task touch a connection, and each owns one thing:

* The caller of ``request``/``stream``/``get_values`` turns its request into
  bytes through the sans-IO core and queues them, in one synchronous step, so
  the order of the queue is the order the core saw. It then waits for its
  answer on its own per-request state.
* The writer task is the only one that calls ``send_all``. It sends everything
  queued so far in one call: a request with a small body leaves as one write,
  and requests queued together leave together. Because callers never send,
  a caller that is cancelled can never leave half a record on the wire.
* The reader task is the only one that receives. It feeds the core and hands
  each event to the request it belongs to. It never waits for one request's
  caller: an answer its caller has not read yet is held in memory, then in a
  temporary file, up to the request's ``Buffering`` (``_buffer``); one that
  outgrows it is aborted alone (``ResponseOverflow``), so a slow consumer
  costs disk, never the other requests' time.

When the connection dies (peer closed it, reset, protocol error, or this side
closed it) every request waiting on it fails with the same kind of error;
nothing is left waiting. A request given up by its caller is aborted
(ABORT_REQUEST) and forgotten, and the connection serves on.
"""

from __future__ import annotations

import errno
import math
import os
import socket
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager

import trio
from trio.lowlevel import ParkingLot

from .._address import Address, parse_address
from .._limits import READ_SIZE, next_read_size
from ..protocol import (
    NEED_DATA,
    AbortRequest,
    ClientConnection,
    ConnectionClosed,
    EndRequest,
    GetValues,
    GetValuesResult,
    ProtocolStatus,
    RecordType,
    RemoteProtocolError,
    Request,
    Role,
    Stderr,
    Stdin,
    Stdout,
    UnknownType,
)
from ._buffer import DEFAULT_BUFFERING, Buffering
from ._liveness import DEFAULT_DEAD_PEER_TIMEOUT, ping_loop, set_dead_peer_timeout
from ._errors import (
    ConnectError,
    ConnectionLost,
    FastCGIError,
    PeerUnresponsive,
    RequestRefused,
    ResponseOverflow,
    UpstreamProtocolError,
)
from ._response import RequestState, Response, ResponseStream

__all__ = ["Connection", "open_connection", "DEFAULT_CONNECT_TIMEOUT", "DEFAULT_GET_VALUES_TIMEOUT"]

#: Seconds to wait for a worker to accept. nginx waits 60 s, but a worker on
#: the same host or LAN that has not accepted in 5 s is down or swamped, and a
#: pool does better trying another one.
DEFAULT_CONNECT_TIMEOUT = 5.0

#: Seconds to wait for a GET_VALUES answer. Some peers never answer the
#: management records they do not implement, so the wait must end.
DEFAULT_GET_VALUES_TIMEOUT = 5.0

#: Linux only; elsewhere the delayed-ACK stall it avoids is left alone.
_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)

#: The variables a GET_VALUES query asks for by default: all the spec defines,
#: and ours (FCGI_CLUSTER_PROCESSES), which other workers leave unanswered.
_ALL_VALUES = ("FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS", "FCGI_CLUSTER_PROCESSES")

Params = Mapping[str, str] | Mapping[bytes, bytes] | Mapping[str | bytes, str | bytes]
Body = bytes | bytearray | memoryview | AsyncIterable[bytes]


class _ValuesWaiter:
    __slots__ = ("done", "values", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.values: dict[str, str] = {}
        self.error: FastCGIError | None = None


class Connection:
    """One FastCGI connection to a worker, multiplexing concurrent requests.

    Made by ``open_connection``; valid inside its ``async with`` block. Every
    method may be called from many tasks at once; each request gets its own
    request ID.

    Attributes:
        address: the worker's address as text, for messages and logs.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        address: str,
        *,
        quickack: bool = False,
        send_timeout: float = math.inf,
        buffering: Buffering = DEFAULT_BUFFERING,
    ) -> None:
        self.address = address
        self._buffering = buffering
        self._send_timeout = send_timeout
        self._stream = stream
        # The socket's descriptor, for the read and write fast paths (-1: any
        # other stream, used through its own methods).
        self._fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1
        self._quickack = quickack
        self._receive_size = READ_SIZE  # READ_SIZE_LARGE while a large answer streams in
        self._core = ClientConnection()
        self._requests: dict[int, RequestState] = {}
        #: Requests answered to their end on this connection: one that then
        #: closes had been kept alive (its peer may have closed it as idle).
        self.answered = 0
        #: Requests whose callback is due once the records read in one go are dispatched.
        self._due: list[RequestState] = []
        self._values_waiters: deque[_ValuesWaiter] = deque()
        self._outbox: list[bytes] = []
        self._queued = 0  # bytes ever queued
        self._sent = 0  # bytes ever handed to send_all successfully
        self._outbox_lot = ParkingLot()
        self._sent_lot = ParkingLot()
        # (error class, message, cause) once the connection is dead.
        self._failure: tuple[type[FastCGIError], str, BaseException | None] | None = None
        self._closing = False
        self._closed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._reads = 0  # receives that brought bytes, for the liveness ping
        self._reader_paused = False  # waiting for a slow caller to take its answer

    # --- state --------------------------------------------------------------

    @property
    def requests_in_flight(self) -> int:
        """Requests sent whose END_REQUEST has not arrived.

        Includes requests given up (aborted) that the worker has not yet
        ended: a non-multiplexing worker is still busy with those.
        """
        return self._core.requests_in_flight

    @property
    def is_usable(self) -> bool:
        """True while new requests may be sent: not dead, not closing.

        A request sent with ``keep_conn=False`` makes the connection not usable:
        the worker will close it once that request ends.
        """
        return self._failure is None and not self._closing

    async def wait_closed(self) -> None:
        """Return once the connection is dead or closed, whoever ended it."""
        await self._closed.wait()

    def close(self) -> None:
        """Close the connection now; requests still in flight on it fail with ConnectionLost."""
        self._fail(ConnectionLost, f"the connection to {self.address} was closed")

    # --- requests -----------------------------------------------------------

    async def request(self, params: Params, body: Body = b"", *, keep_conn: bool = True) -> Response:
        """Send one request and read its whole response into memory.

        Args:
            params: the CGI params (see ``cgi_params``); str is sent as UTF-8.
            body: the request body (STDIN): bytes, or an async iterable of bytes
                sent as it is produced.
            keep_conn: False asks the worker to close the connection after
                this request.

        Returns:
            The response, its body complete. Use ``stream`` for large bodies.

        Raises:
            RequestRefused: the worker refused the request (overloaded, cannot
                multiplex, unknown role).
            ConnectionLost: the connection died before the response ended.
            UpstreamProtocolError: the worker broke FastCGI or sent a bad CGI
                header block.

        Error handling: if the caller is cancelled, the request is aborted and
        the connection stays usable. Nothing is retried here.
        """
        async with self.stream(params, body, keep_conn=keep_conn) as response:
            chunks = [chunk async for chunk in response]
        assert response.app_status is not None  # the body ends only at END_REQUEST
        return Response(response.status, response.headers, b"".join(chunks), response.stderr, response.app_status)

    @asynccontextmanager
    async def stream(
        self, params: Params, body: Body = b"", *, keep_conn: bool = True, buffering: Buffering | None = None
    ) -> AsyncIterator[ResponseStream]:
        """Send one request; enter once its CGI headers have arrived, iterate for the body.

        ``async with conn.stream(params) as response:`` gives ``status`` and
        ``headers``; ``async for chunk in response`` gives the body as it
        arrives. Leaving the block before the response ends aborts the request.

        Args: as for ``request``, and ``buffering``: how much of the answer
            the connection may hold for a caller that reads slower than the
            worker writes (default: the connection's, ``open_connection``).

        Raises: as for ``request``, and ``ResponseOverflow`` from the body's
            iteration when the caller fell so far behind that the answer
            outgrew its buffering: that request alone is aborted.

        Resource handling: the connection's reader never waits for this
        caller (unless ``buffering.wait``): what it has not read is held in
        memory up to ``buffering.memory`` bytes, then in an unlinked
        temporary file up to ``buffering.max_file``, freed when the block
        ends. Other requests on the connection go on meanwhile.
        """
        response = self.start_request(params, body, keep_conn=keep_conn, buffering=buffering)
        try:
            yield await response.read_head()
        finally:
            response.close()

    def start_request(
        self, params: Params | bytes, body: Body = b"", *, keep_conn: bool = True, buffering: Buffering | None = None
    ) -> ResponseStream:
        """Queue one request and return its response, before anything has arrived.

        The low-level form of ``stream``, for callers that manage the
        request's lifetime themselves (the front-end's proxy): call
        ``await response.read_head()``, read the body, and always call
        ``response.close()`` at the end, which aborts the request if the
        worker has not ended it.

        Args: as for ``stream``, and ``params`` may also be bytes: the
            name-value block already encoded,
            for a caller that encodes the parts common to many requests once.

        Raises:
            ConnectionLost, UpstreamProtocolError: the connection is already dead.
        """
        return ResponseStream(self._begin(params, body, keep_conn, buffering or self._buffering), self._forget)

    async def get_values(
        self, names: Iterable[str] = _ALL_VALUES, *, timeout: float = DEFAULT_GET_VALUES_TIMEOUT
    ) -> dict[str, str]:
        """Ask the worker for its FastCGI capabilities (GET_VALUES).

        Args:
            names: the variables to ask for; by default FCGI_MAX_CONNS,
                FCGI_MAX_REQS and FCGI_MPXS_CONNS.
            timeout: seconds to wait for the answer.

        Returns:
            The variables the worker answered, e.g. ``{"FCGI_MPXS_CONNS": "1"}``.
            Empty when the worker knows none of them, answers UNKNOWN_TYPE, or
            does not answer within ``timeout`` (a late answer is then dropped).

        Raises:
            ConnectionLost, UpstreamProtocolError: the connection died.
        """
        self._raise_if_failed()
        waiter = _ValuesWaiter()
        self._values_waiters.append(waiter)
        self._queue(self._core.send(GetValues(tuple(name.encode("latin-1") for name in names))))
        with trio.move_on_after(timeout):
            await waiter.done.wait()
        if waiter.error is not None:
            raise waiter.error
        return waiter.values

    def watch_liveness(self, interval: float, timeout: float) -> None:
        """Ping the worker when silent with requests in flight (``_liveness.ping_loop``); multiplexing peers only."""
        if interval > 0 and self._nursery is not None and self._failure is None:
            self._nursery.start_soon(ping_loop, self, interval, timeout)

    def _ping(self) -> trio.Event:
        """Queue one GET_VALUES (FCGI_MPXS_CONNS); the event is set when its answer arrives."""
        waiter = _ValuesWaiter()
        self._values_waiters.append(waiter)
        self._queue(self._core.send(GetValues((b"FCGI_MPXS_CONNS",))))
        return waiter.done

    # --- the per-request steps ----------------------------------------------

    def _begin(self, params: Params | bytes, body: Body, keep_conn: bool, buffering: Buffering) -> RequestState:
        self._raise_if_failed()
        # Everything that can fail on bad arguments runs before the core
        # records the request, so a refused call leaves nothing in flight.
        is_bytes = isinstance(body, (bytes, bytearray, memoryview))
        iterator = None if is_bytes else aiter(body)  # type: ignore[arg-type]
        core = self._core
        if type(params) is bytes or _all_bytes(params):
            # The proxy's case, in one call. A body given whole is queued now,
            # small or large, so BEGIN_REQUEST, PARAMS and STDIN leave in one
            # write (the writer applies backpressure); an iterable one follows
            # from a task of its own.
            rid, out = core.send_request(params, None if iterator is not None else bytes(body), keep_conn)  # type: ignore[arg-type]
            state = RequestState(rid, buffering, self._due)
        else:
            rid = core.new_request_id()
            state = RequestState(rid, buffering, self._due)
            out = core.send(Request(rid, params, Role.RESPONDER, keep_conn))  # type: ignore[arg-type]
            if iterator is None:
                if body:
                    out += core.send(Stdin(rid, bytes(body)))  # type: ignore[arg-type]
                out += core.send(Stdin(rid, b""))
        if iterator is not None:
            assert self._nursery is not None
            state.body_scope = trio.CancelScope()
            self._nursery.start_soon(self._send_body, state, iterator)
        self._requests[rid] = state
        if not keep_conn:
            self._closing = True
        self._queue(out)
        return state

    async def _send_body(self, state: RequestState, body: AsyncIterator[bytes]) -> None:
        assert state.body_scope is not None
        try:
            with state.body_scope:
                async for chunk in body:
                    # The worker may end a request before reading all of its
                    # body; then stop, and never send for a reused request ID.
                    if state.finished:
                        return
                    if chunk:
                        await self._wait_sent(self._queue(self._core.send(Stdin(state.request_id, bytes(chunk)))))
                if not state.finished:
                    self._queue(self._core.send(Stdin(state.request_id, b"")))
        except Exception as exc:
            # If the connection died, _fail has already told the request.
            # Otherwise the caller's body iterable failed: that request alone
            # fails, with the iterable's own error, and the worker is told to
            # give up on it.
            if self._failure is None:
                self._abort(state)
                state.fail(exc)
                self._run_due()
        finally:
            if hasattr(body, "aclose"):
                await trio.aclose_forcefully(body)  # type: ignore[arg-type]

    def _abort(self, state: RequestState) -> None:
        """Send ABORT_REQUEST if the request is still in flight, and stop tracking it."""
        rid = state.request_id
        if self._requests.get(rid) is state:
            del self._requests[rid]
            if self._failure is None:
                self._queue(self._core.send(AbortRequest(rid)))

    def _forget(self, state: RequestState) -> None:
        self._abort(state)
        state.forget()

    # --- sending ------------------------------------------------------------

    def _queue(self, data: bytes) -> int:
        """Queue bytes for the writer task; returns the mark ``_wait_sent`` waits for.

        The only request in flight, with the writer idle, is written at once:
        nothing could join it in a batch, and waking the writer would cost a
        task switch per request (a connection to php-fpm carries one request
        at a time). What the socket does not take, and any error, is left to
        the writer.
        """
        if not data:
            return self._queued
        self._queued += len(data)
        if self._fd >= 0 and not self._outbox and self._outbox_lot and len(self._requests) <= 1:
            try:
                written = os.write(self._fd, data)
            except OSError:  # BlockingIOError included: the writer waits, or reports the failure
                written = 0
            self._sent += written
            if written == len(data):
                if self._sent_lot:
                    self._sent_lot.unpark_all()
                return self._queued
            data = data[written:]
        self._outbox.append(data)
        if self._outbox_lot:  # an empty lot's unpark still costs a generator
            self._outbox_lot.unpark_all()
        return self._queued

    async def _wait_sent(self, mark: int) -> None:
        while self._sent < mark:
            self._raise_if_failed()
            await self._sent_lot.park()
        self._raise_if_failed()

    async def _write_loop(self) -> None:
        try:
            while True:
                while not self._outbox:
                    await self._outbox_lot.park()
                data = self._outbox[0] if len(self._outbox) == 1 else b"".join(self._outbox)
                self._outbox.clear()
                total = len(data)
                if self._fd >= 0:
                    # The socket buffer nearly always takes a whole batch:
                    # write it straight away, and only go through trio (a
                    # cancel scope and an epoll wait) for what is left.
                    try:
                        written = os.write(self._fd, data)
                    except BlockingIOError:
                        written = 0
                    except OSError as exc:
                        raise trio.BrokenResourceError(exc.strerror) from exc
                    if written:
                        data = data[written:]
                if data:
                    with trio.CancelScope(deadline=trio.current_time() + self._send_timeout) as scope:
                        await self._stream.send_all(data)
                    if scope.cancelled_caught:
                        self._fail(
                            PeerUnresponsive,
                            f"{self.address} took none of our data for {self._send_timeout:g} s: connection dropped",
                        )
                        return
                self._sent += total
                if self._sent_lot:
                    self._sent_lot.unpark_all()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._fail(_lost_kind(exc), f"connection to {self.address} lost while sending: {_reason(exc)}", exc)

    # --- receiving ----------------------------------------------------------

    async def _read_loop(self) -> None:
        core = self._core
        try:
            while True:
                event = core.next_event()
                if event is NEED_DATA:
                    if self._due:
                        self._run_due()
                    # Only a response still coming needs our ACKs at once; once
                    # every answer is in, the next request carries the ACK.
                    if self._quickack and self._requests:
                        _rearm_quickack(self._stream)
                    core.receive_data(await self._receive())
                    self._reads += 1
                elif type(event) is ConnectionClosed:
                    pending = len(self._requests)
                    self._fail(
                        ConnectionLost,
                        f"{self.address} closed the connection"
                        + (f" with {pending} request(s) in flight" if pending else ""),
                    )
                    return
                else:
                    full = self._dispatch(event)
                    if full is not None:
                        # A full buffer: its caller's turn first (see feed_stdout).
                        self._run_due()
                        self._reader_paused = True
                        try:
                            await full.wait_for_room()
                        finally:
                            self._reader_paused = False
                        if full.deferred is not None:
                            self._feed_deferred(full)
        except RemoteProtocolError as exc:
            self._fail(UpstreamProtocolError, f"{self.address} broke the FastCGI protocol: {exc}", exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._fail(_lost_kind(exc), f"connection to {self.address} lost: {_reason(exc)}", exc)

    async def _receive(self) -> bytes:
        fd = self._fd
        if fd < 0:
            return await self._stream.receive_some(READ_SIZE)
        # As trio's receive_some, without its per-call checks: wait until
        # readable, then read. A wakeup with nothing to read waits again.
        while True:
            try:
                await trio.lowlevel.wait_readable(fd)
            except OSError as exc:  # the descriptor was closed under us
                raise trio.ClosedResourceError(str(exc)) from exc
            size = self._receive_size
            try:
                data = os.read(fd, size)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(exc.strerror) from exc
            self._receive_size = next_read_size(size, len(data))
            return data

    def _dispatch(self, event: object) -> RequestState | None:
        """Hand an event to whoever waits for it; returns a request the reader must wait for.

        That is a request with ``Buffering.wait`` whose memory is full: the
        reader then waits for its caller to take some before it reads on.
        """
        # The two events of every request first, by exact type.
        kind = type(event)
        if kind is Stdout:
            state = self._requests.get(event.request_id)  # type: ignore[attr-defined]
            if state is not None and event.data:  # type: ignore[attr-defined]
                try:
                    if state.feed_stdout(event.data):  # type: ignore[attr-defined]
                        return state
                except ResponseOverflow as exc:
                    # This answer alone is given up; its neighbours read on.
                    self._abort(state)
                    state.overflowed(exc)
            return None
        if kind is EndRequest:
            state = self._requests.pop(event.request_id, None)  # type: ignore[attr-defined]
            if state is None:
                pass
            elif event.protocol_status is ProtocolStatus.REQUEST_COMPLETE:  # type: ignore[attr-defined]
                self.answered += 1
                state.complete(event.app_status)  # type: ignore[attr-defined]
            else:
                status = event.protocol_status  # type: ignore[attr-defined]
                if status is ProtocolStatus.OVERLOADED:
                    # A worker that is stopping refuses what it has not started:
                    # no new request goes on this connection (it closes once
                    # its last answer is in).
                    self._closing = True
                state.fail(RequestRefused(f"{self.address} refused the request: {status.name}", status))
            return None
        match event:
            case Stderr(request_id=rid, data=data):
                state = self._requests.get(rid)
                if state is not None:
                    state.feed_stderr(data)
            case GetValuesResult(values=values):
                # Management records carry no ID: answers come in query order.
                # One nobody asked for is harmless and dropped.
                if self._values_waiters:
                    waiter = self._values_waiters.popleft()
                    waiter.values = {name.decode("latin-1"): value.decode("latin-1") for name, value in values.items()}
                    waiter.done.set()
            case UnknownType(record_type=RecordType.GET_VALUES):
                if self._values_waiters:
                    self._values_waiters.popleft().done.set()
            case _:
                pass  # UNKNOWN_TYPE for a record we never send: nothing waits for it
        return None

    # --- failure and shutdown -----------------------------------------------

    def _fail(self, kind: type[FastCGIError], message: str, cause: BaseException | None = None) -> None:
        """The connection is dead: fail everything waiting on it, stop its tasks."""
        if self._failure is None:
            self._failure = (kind, message, cause)
        pending = list(self._requests.values())
        self._requests.clear()
        for state in pending:
            state.fail(self._error())
        while self._values_waiters:
            waiter = self._values_waiters.popleft()
            waiter.error = self._error()
            waiter.done.set()
        self._outbox.clear()
        self._sent_lot.unpark_all()
        self._run_due()
        self._closed.set()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _feed_deferred(self, state: RequestState) -> None:
        try:
            state.feed_deferred()
        except ResponseOverflow as exc:
            self._abort(state)
            state.overflowed(exc)

    def _run_due(self) -> None:
        """Call the callbacks of the requests that got STDOUT or ended since the last call."""
        due = self._due
        for state in due:  # a callback may queue another: it is called in this pass
            state.run_callback()
        due.clear()

    def _error(self) -> FastCGIError:
        # A fresh exception for each waiter: one instance raised in many tasks
        # would collect all their tracebacks.
        assert self._failure is not None
        kind, message, cause = self._failure
        error = kind(message)
        error.__cause__ = cause
        return error

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._error()

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._read_loop)
                nursery.start_soon(self._write_loop)
                task_status.started()
        finally:
            await trio.aclose_forcefully(self._stream)


def _all_bytes(params: Params) -> bool:
    # Web servers build params as bytes; a dict of them is checked by its
    # first pair (encode_pairs refuses a str among bytes anyway).
    if type(params) is not dict:
        return False
    for name, value in params.items():
        return type(name) is bytes and type(value) is bytes
    return True


def _rearm_quickack(stream: trio.abc.Stream) -> None:
    # Workers that write a response as several small sends without
    # TCP_NODELAY (flup does) hold each later send until we ACK the first,
    # and Linux delays that ACK by 40 ms on a kept-alive connection. Asking for
    # an immediate ACK after every receive (the kernel clears the flag itself)
    # took flup from 44 ms to under 5 ms per request on loopback.
    try:
        stream.setsockopt(trio.socket.IPPROTO_TCP, _TCP_QUICKACK, 1)  # type: ignore[attr-defined]
    except OSError:
        pass  # the socket is closing; the next receive will say so


def _connect_reason(exc: OSError) -> str:
    # open_tcp_stream tries every address and raises "all attempts failed",
    # with each attempt's error in an ExceptionGroup as the cause.
    if isinstance(exc.__cause__, BaseExceptionGroup):
        for attempt in exc.__cause__.exceptions:
            if isinstance(attempt, OSError) and attempt.errno:
                return os.strerror(attempt.errno)
    return exc.strerror or str(exc)


#: errno values that mean the worker's host stopped answering, not that it closed.
_UNRESPONSIVE = frozenset({errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN})


def _lost_kind(exc: BaseException) -> type[ConnectionLost]:
    cause = exc.__cause__
    if isinstance(cause, OSError) and cause.errno in _UNRESPONSIVE:
        return PeerUnresponsive
    return ConnectionLost


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return str(cause or exc) or type(exc).__name__


@asynccontextmanager
async def open_connection(
    address: Address | str,
    *,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    send_timeout: float = math.inf,
    buffering: Buffering = DEFAULT_BUFFERING,
    dead_peer_timeout: float = DEFAULT_DEAD_PEER_TIMEOUT,
) -> AsyncIterator[Connection]:
    """Connect to a FastCGI worker: ``async with open_connection("127.0.0.1:9000") as conn:``.

    Args:
        address: an ``Address``, or text for ``parse_address`` (``host:port``,
            ``[v6]:port``, ``port``, ``unix:/path`` or ``/path``).
        connect_timeout: seconds to wait for the worker to accept.
        send_timeout: seconds a write may wait for the worker to take our
            bytes (nginx's ``fastcgi_send_timeout``); past it the connection
            is dropped and its requests fail with ConnectionLost.
        buffering: how much of each answer the connection may hold for a
            caller that reads slower than the worker writes (``stream`` can
            say otherwise per request).
        dead_peer_timeout: seconds of silence from the worker's host after
            which the connection fails (TCP keepalive and TCP_USER_TIMEOUT,
            see ``set_dead_peer_timeout``); 0 leaves the system's settings.

    Returns:
        An async context manager giving a ``Connection``; leaving the block
        closes the connection (requests still waiting on it get ConnectionLost).

    Raises:
        ValueError: ``address`` is text that is not an address.
        ConnectError: the worker is unreachable, refused, or did not accept in time.

    Resource handling: TCP connections set TCP_NODELAY, since each write is a
    whole request (or answer) that should leave at once, and on Linux ask for
    immediate ACKs (TCP_QUICKACK) after each receive. The connection's
    reader and writer tasks live in a nursery inside the ``async with``.
    """
    if isinstance(address, str):
        address = parse_address(address)
    stream = await _connect(address, connect_timeout)
    if address.path is None and dead_peer_timeout > 0:
        set_dead_peer_timeout(stream, dead_peer_timeout)
    quickack = address.path is None and _TCP_QUICKACK is not None
    async with _attach(stream, str(address), quickack=quickack, send_timeout=send_timeout, buffering=buffering) as conn:
        yield conn


async def _connect(address: Address, timeout: float) -> trio.SocketStream:
    try:
        with trio.fail_after(timeout):
            if address.path is not None:
                return await trio.open_unix_socket(address.path)
            assert address.host is not None and address.port is not None
            stream = await trio.open_tcp_stream(address.host, address.port)
    except trio.TooSlowError:
        raise ConnectError(f"cannot connect to {address}: not accepted within {timeout:g} s") from None
    except OSError as exc:
        raise ConnectError(f"cannot connect to {address}: {_connect_reason(exc)}") from exc
    # trio sets it already; we rely on it, so say so.
    stream.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, True)
    return stream


@asynccontextmanager
async def _attach(
    stream: trio.abc.Stream,
    address: str,
    *,
    quickack: bool = False,
    send_timeout: float = math.inf,
    buffering: Buffering = DEFAULT_BUFFERING,
) -> AsyncIterator[Connection]:
    """Run a ``Connection`` over a stream that is already connected (closed on exit)."""
    conn = Connection(stream, address, quickack=quickack, send_timeout=send_timeout, buffering=buffering)
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(conn._run)
            try:
                yield conn
            except BaseException as exc:
                # Re-raised below, outside the nursery, so the caller gets its
                # own exception rather than an ExceptionGroup wrapping it.
                body_error = exc
            finally:
                conn._fail(ConnectionLost, f"the connection to {address} was closed")
    finally:
        await trio.aclose_forcefully(stream)  # already closed unless _run never ran
    if body_error is not None:
        raise body_error
