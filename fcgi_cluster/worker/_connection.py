"""One FastCGI connection inside a worker: read records, run requests, write answers.

The reader task feeds the sans-IO ``ServerConnection`` and starts one task per
request; each request writes its records into a shared output buffer that one
writer task sends. Records of several requests finished in the same moment go
out in one write (batching), and a request waits when the buffer is over
its limit (backpressure).

Resource handling: the stream is closed when ``run`` returns. Error handling: a
peer that breaks the protocol, resets or closes the connection ends this
connection only (its requests are cancelled, the error is logged); the worker
keeps serving other connections.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from typing import Awaitable, Callable

import trio

from .._limits import READ_SIZE, next_read_size
from ..protocol import (
    NEED_DATA,
    AbortRequest,
    ConnectionClosed,
    ConnectionState,
    EndRequest,
    LocalProtocolError,
    ProtocolStatus,
    RemoteProtocolError,
    Request,
    ServerConnection,
    Stderr,
    Stdin,
    Stdout,
)
from ._body import RequestBody
from ._config import WorkerConfig
from ._drain import DrainPolicy

__all__ = ["RequestContext", "WorkerConnection"]

log = logging.getLogger("fcgi_cluster.worker")


class RequestCancelled(Exception):
    """Raised where a handler without a cancel scope waits, when its request is cancelled."""


class RequestContext:
    """One request, as an app adapter sees it.

    Attributes:
        request_id: the FastCGI request ID.
        params: the CGI variables, as bytes.
        body: the request body (STDIN).
        cancel_scope: for handlers that need one (ASGI), cancelled when the
            web server aborts the request; None for the WSGI handler, which
            is told by ``interrupt`` instead (a cancel scope costs a few
            microseconds per request).
        cancelled: ``cancel`` was called (ABORT_REQUEST, or a stop past the
            terminate timeout).
        interrupt: set by a handler without a scope while it waits: called
            with the error to raise there.
        status: the HTTP status of the response once its first bytes were
            sent (0 before: nothing has reached the web server yet).
        app_thread: the id of the thread running the app's code for this
            request while it does (WSGI), else None; for the slow log's stack
            and to tell a request whose code cannot be stopped.
        task: the trio task running the request, when a slow log wants its
            stack (ASGI), else None.
        before_end: called once, just before END_REQUEST is written (the pool
            counts the request over before the web server can know it is).
    """

    __slots__ = ("request_id", "params", "body", "cancel_scope", "cancelled", "interrupt", "ended", "status",
                 "app_thread", "task", "before_end", "_conn")

    def __init__(self, conn: "WorkerConnection", request: Request, body: RequestBody, *, scoped: bool = True) -> None:
        self.request_id = request.request_id
        self.params = request.params
        self.body = body
        self.cancel_scope: trio.CancelScope | None = trio.CancelScope() if scoped else None
        self.cancelled = False
        self.interrupt: Callable[[BaseException], None] | None = None
        self.ended = False
        self.status = 0
        self.app_thread: int | None = None
        self.task: trio.lowlevel.Task | None = None
        self.before_end: Callable[[], None] | None = None
        self._conn = conn

    def cancel(self) -> None:
        """Stop the request's handler where it waits; it ends with app status 1."""
        self.cancelled = True
        if self.cancel_scope is not None:
            self.cancel_scope.cancel()
        elif self.interrupt is not None:
            self.interrupt(RequestCancelled())

    def _stdout(self, data: bytes) -> bytes:
        """The STDOUT records for response bytes; the first ones set ``status``."""
        if not self.status:
            self.status = _status_of(data)
        return self._conn.encode(Stdout(self.request_id, data))

    async def send(self, data: bytes) -> None:
        """Send response bytes (CGI headers and body), waiting while the peer is slow."""
        if data and not self.ended:
            await self._conn.write(self._stdout(data))

    async def wait_for_space(self) -> None:
        """Wait while the connection holds more unsent output than ``output_buffer``."""
        await self._conn.wait_for_space()

    @property
    def over_high_water(self) -> bool:
        """The connection holds more unsent output than ``output_buffer``."""
        return self._conn.over_high_water

    def send_nowait(self, data: bytes) -> None:
        """Send response bytes without waiting (for small, final pieces)."""
        if data and not self.ended:
            self._conn.write_nowait(self._stdout(data))

    def log(self, data: bytes) -> None:
        """Send bytes to the web server's error log (FastCGI STDERR)."""
        if data and not self.ended:
            self._conn.write_nowait(self._conn.encode(Stderr(self.request_id, data)))

    def end(self, app_status: int = 0, last: bytes = b"") -> None:
        """Finish the request (END_REQUEST); later sends are ignored.

        Args:
            app_status: the application's exit status.
            last: response bytes still to send, sent with END_REQUEST in one
                write (``send_nowait(last)`` then ``end()``, cheaper).
        """
        if not self.ended:
            out = self._stdout(last) if last else b""
            self.ended = True
            if self.before_end is not None:
                self.before_end()
            self.body.abort()
            self._conn.write_last(out + self._conn.encode(EndRequest(self.request_id, app_status)))


RequestHandler = Callable[[RequestContext], Awaitable[None]]


def _status_of(head: bytes) -> int:
    """The status of a CGI response from its first bytes (our adapters put ``Status:`` first)."""
    if head.startswith(b"Status: "):
        try:
            return int(head[8:11])
        except ValueError:
            pass
    return 200


class WorkerConnection:
    """Serve FastCGI requests arriving on one stream until it closes."""

    def __init__(self, stream: trio.abc.Stream, handler: RequestHandler, config: WorkerConfig, peer: str = "") -> None:
        self.stream = stream
        self.peer = peer
        self.core = ServerConnection(
            max_requests=config.max_requests,
            max_conns=config.max_conns,
            max_params_size=config.max_params_size,
            max_buffer_size=config.max_buffer_size,
            processes=config.processes,
        )
        self.requests: dict[int, RequestContext] = {}
        self._handler = handler
        # Handlers that can be told to stop without a cancel scope say so (WSGI).
        self._scoped = getattr(handler, "needs_cancel_scope", True)
        # Handlers that can start a request with no task of its own (WSGI
        # with app threads): start_nowait(ctx, done, spawn) -> bool.
        self._start_nowait = getattr(handler, "start_nowait", None)
        self._input_buffer = config.input_buffer
        self._high_water = config.output_buffer
        self._out = bytearray()
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._space_lot = trio.lowlevel.ParkingLot()
        self._closing = False
        self._drain = DrainPolicy()
        self._seen_request = False
        self._read_scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._over = False  # run() has ended
        # A socket is read and written through its descriptor directly: a
        # trio stream's receive and send each add a trip through the scheduler
        # (a checkpoint after an operation that did not block). Other streams
        # (in-memory ones in tests) go through the stream.
        self._fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1

    async def run(self) -> None:
        """Serve until the peer closes, breaks the protocol, or a drain completes."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._write_loop)
                with self._read_scope:
                    await self._read_loop()
                self._close_when_idle()
        finally:
            self._over = True
            for ctx in list(self.requests.values()):
                ctx.body.abort()
                if ctx.interrupt is not None and self._start_nowait is not None:
                    ctx.cancel()  # a request with no task: its thread is told to stop
            if self._fd >= 0:
                # Every task that used the socket has ended: closed at once,
                # without aclose's cancel scopes and checkpoint (a connection
                # per request is how nginx talks FastCGI unless told otherwise).
                self.stream.socket.close()
            else:
                await trio.aclose_forcefully(self.stream)

    def encode(self, event: object) -> bytes:
        """The bytes for a response event; nothing once the connection is broken.

        After the web server broke the protocol the core is in ERROR and the
        connection is closing: requests still running finish into nothing
        rather than fail.
        """
        try:
            return self.core.send(event)  # type: ignore[arg-type]
        except LocalProtocolError:
            if self.core.state is ConnectionState.OPEN:
                raise  # a real misuse of the core, not a dying connection
            return b""

    @property
    def waiting_for_first_request(self) -> bool:
        """Accepted, and no request has arrived on it yet."""
        return not self._seen_request

    def drain(self) -> None:
        """Start no new request; close once those in flight are answered (``DrainPolicy``).

        A connection that has not delivered its first request yet (accepted
        just before the stop) is served that request first: a web server
        opened it to send one, and closing it unanswered would drop it. A
        peer seen to multiplex has every new request refused (OVERLOADED) and
        the connection closes once it has been quiet for a moment, so that a
        request it had on the wire is refused, not cut.
        """
        self._drain.start(trio.current_time())
        self._update_drain()

    def _update_drain(self) -> None:
        """Carry out the policy: close now, or when the peer will have been quiet enough."""
        at = self._drain.close_at(len(self.requests), self._seen_request)
        if at == -math.inf:
            self._close_when_idle()
        else:
            # The read ends at the deadline; run() then closes.
            self._read_scope.deadline = math.inf if at is None else at

    # --- reading ------------------------------------------------------------

    async def _read_loop(self) -> None:
        core = self.core
        stream = self.stream
        requests = self.requests
        fd = self._fd
        drain = self._drain
        pending: list[RequestContext] = []
        size = READ_SIZE
        while True:
            if fd >= 0:
                data = await _receive_fd(fd, size)
                size = next_read_size(size, len(data))
            else:
                try:
                    data = await stream.receive_some(READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
            core.receive_data(data)
            while True:
                try:
                    event = core.next_event()
                except RemoteProtocolError as exc:
                    log.warning("closing FastCGI connection from %s: %s", self.peer or "peer", exc)
                    self._abandon()
                    return
                if event is NEED_DATA:
                    if pending:
                        self._start_pending(pending)
                    break
                kind = type(event)
                if kind is Request:
                    if (requests or drain.draining or not (drain.numbered or drain.reuses_one)) and not drain.admit(event.request_id, len(requests)):
                        # Stopping, with a peer that multiplexes: a new
                        # request is refused unstarted (OVERLOADED), so the
                        # web server sends it again on a new connection (to
                        # the new children on a reload) and stops using this
                        # one. (A request alone is served: nginx takes an
                        # OVERLOADED for a 502.) DrainPolicy has the rules.
                        self.write_nowait(self.encode(EndRequest(event.request_id, 0, ProtocolStatus.OVERLOADED)))
                        continue
                    self._seen_request = True
                    ctx = RequestContext(self, event, RequestBody(self._input_buffer), scoped=self._scoped)
                    requests[event.request_id] = ctx
                    if self._start_nowait is None:
                        self._nursery.start_soon(self._run_request, ctx)
                    else:
                        # Started once this read is processed, as a task would
                        # be: an ABORT_REQUEST in the same read stops it first.
                        pending.append(ctx)
                elif kind is Stdin:
                    ctx = requests.get(event.request_id)
                    if ctx is not None:
                        ctx.body.feed(event.data)
                        if ctx.body.full:
                            if pending:
                                self._start_pending(pending)  # its app makes the room
                            await ctx.body.wait_for_room()
                elif kind is AbortRequest:
                    ctx = requests.get(event.request_id)
                    if ctx is not None:
                        ctx.body.abort()
                        ctx.cancel()
                elif kind is ConnectionClosed:
                    # The web server hung up: nobody is left to read the answers.
                    self._abandon()
                    return
            out = core.data_to_send()
            if out:
                self.write_nowait(out)
            if drain.draining:
                drain.heard(trio.current_time())
                self._update_drain()

    def _start_pending(self, pending: list[RequestContext]) -> None:
        """Start the requests of the read just processed: without a task when the handler can."""
        start_nowait = self._start_nowait
        assert start_nowait is not None and self._nursery is not None
        spawn = self._nursery.start_soon
        for ctx in pending:
            if not start_nowait(ctx, functools.partial(self._request_done, ctx), spawn):
                spawn(self._run_request, ctx)
        pending.clear()

    def _abandon(self) -> None:
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()

    async def _run_request(self, ctx: RequestContext) -> None:
        scope = ctx.cancel_scope
        try:
            if scope is None:
                await self._handler(ctx)
            else:
                with scope:
                    await self._handler(ctx)
        except RequestCancelled:
            pass
        except Exception:
            log.exception("request %d failed inside the worker", ctx.request_id)
        finally:
            self._request_done(ctx, scope is None or scope.cancelled_caught)

    def _request_done(self, ctx: RequestContext, cancelled_here: bool = True) -> None:
        """A request's handler is over: END_REQUEST if it sent none, and the connection's bookkeeping."""
        if self.requests.get(ctx.request_id) is not ctx:
            return  # done already
        ctx.end(1 if ctx.cancelled and cancelled_here else 0)
        del self.requests[ctx.request_id]
        if self._over:
            return
        if self.core.should_close:
            self._close_when_idle()
        elif self._drain.draining:
            self._update_drain()
        if self._closing and self._writer_lot:
            # The writer ends once the last request is done; with output
            # queued it was woken already (an idle writer's wake-up per
            # request cost nginx's peers, one request per turn, a task switch).
            self._writer_lot.unpark()

    def _close_when_idle(self) -> None:
        self._closing = True
        self._read_scope.cancel()
        self._writer_lot.unpark()

    # --- writing ------------------------------------------------------------

    def write_nowait(self, data: bytes) -> None:
        self._out += data
        if self._writer_lot:  # an empty lot's unpark still costs a generator
            self._writer_lot.unpark()

    def write_last(self, data: bytes) -> None:
        """A request's last bytes: written at once when nothing else is queued or in flight.

        A web server that sends one request at a time on a connection (nginx,
        and every request behind it) then costs the writer task no wake-up per
        request; with other requests in flight, the bytes join the writer's
        batch as ``write_nowait`` ones do.
        """
        fd = self._fd
        if fd >= 0 and not self._out and self._writer_lot and len(self.requests) <= 1:
            try:
                written = os.write(fd, data)
            except OSError:  # BlockingIOError included: the writer waits, or reports the failure
                written = 0
            if written == len(data):
                return
            data = data[written:]
        self.write_nowait(data)

    async def write(self, data: bytes) -> None:
        self._out += data
        if self._writer_lot:
            self._writer_lot.unpark()
        await self.wait_for_space()

    @property
    def over_high_water(self) -> bool:
        """More is queued than ``output_buffer``: writers should wait (``wait_for_space``)."""
        return len(self._out) > self._high_water

    async def wait_for_space(self) -> None:
        """Return once the queued output is back under ``output_buffer``."""
        while len(self._out) > self._high_water:
            await self._space_lot.park()

    async def _write_loop(self) -> None:
        stream = self.stream
        fd = self._fd
        while True:
            while not self._out:
                if self._closing and not self.requests:
                    return
                await self._writer_lot.park()
            data = self._out
            self._out = bytearray()
            if self._space_lot:
                self._space_lot.unpark_all()
            if fd >= 0:
                # The socket buffer nearly always takes the whole batch; only
                # what it leaves waits, through trio, for room.
                try:
                    written = os.write(fd, data)
                except BlockingIOError:
                    written = 0
                except OSError:
                    self._abandon()
                    return
                if written == len(data):
                    continue
                del data[:written]
            try:
                await stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._abandon()
                return


async def _receive_fd(fd: int, size: int) -> bytes:
    """The next bytes from a socket descriptor; b"" at EOF, a reset, or a close by another task."""
    while True:
        try:
            await trio.lowlevel.wait_readable(fd)
        except (trio.ClosedResourceError, OSError):
            return b""
        try:
            return os.read(fd, size)
        except BlockingIOError:
            continue  # a wakeup with nothing to read: wait on
        except OSError:
            return b""
