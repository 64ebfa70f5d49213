"""The front-end's trio server: client connections, routing, and the response loop.

A client connection's requests are read in order (pipelined ones wait their
turn), routed (a static directory or an upstream pool), and each answered
before the next is read: answers leave in request order without holding later
requests' responses in memory.

Who does the work: an idle plain-TCP connection belongs to the hub (``_hub``),
one task for all of them. The common request, a GET to an upstream, is then
answered from callbacks with no task: the hub reads and parses it and sends it
to a worker, and the worker connection's reader writes the answer to the
client (``_CallbackAnswer``). Any other request, and any answer that turns out
large, slow or failed, is served by a task of the connection's own, from where
it is, with the code below; the task gives the connection back to the hub
once it falls idle. TLS connections keep their task throughout.

Timeouts, with nginx's names and defaults: ``header_timeout`` while a request
head arrives (-> 408), ``body_timeout`` between two reads of a body (-> 408),
``keepalive_timeout`` for an idle connection (closed silently),
``send_timeout`` between two writes to a client that does not read (closed).

Error handling: a client's garbage gets its 4xx and that connection closes;
an upstream failure gets 502/504; anything unexpected is logged with its
traceback and the client gets a plain 500. No exception leaves a connection's
task or a callback, so one client can never take the server down.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
import ssl
import tempfile
import time
import typing
from urllib.parse import quote_from_bytes
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import trio

from .._accept import accept_loop
from ..client import FastCGIError, ResponseOverflow
from ..client._buffer import MemoryPool
from ..client._response import ResponseStream
from ..protocol._records import encode_params
from ._access_log import AccessLog
from ._cgi import BadPath, ConnectionParams, encode_line_params, header_params, normalize_path, request_params, split_path
from ._http import NEED_DATA, Body, ConnectionClosed, EndOfMessage, HTTPError, HTTPServerConnection, RequestHead, error_page
from ._hub import HUB_AVAILABLE, Hub
from ._proxy import IDEMPOTENT, FirstTry, UpstreamFailure, finish_try, open_upstream_response
from ._relay import Relay
from ._static import plan_static, read_file_range
from ._upstream import ANSWER_POOL, ANSWER_POOL_PER_REQUEST, Upstream, answer_buffering, run_health_checks

__all__ = ["FrontendServer", "serve_frontend"]

log = logging.getLogger("fcgi_cluster.frontend")

#: The keys of an upstream's answer buffering that a route may set for itself.
_BUFFERING_KEYS = ("buffering", "buffer_size", "max_temp_file_size", "temp_path")

#: Bytes asked of a client socket per receive.
RECEIVE_SIZE = 64 * 1024

#: A request body up to this size is read whole before the request goes
#: upstream, so it can be sent again to another server if the first fails,
#: and chunked bodies get a true CONTENT_LENGTH. Larger ones are streamed.
#: nginx's client_body_buffer_size is 16 KiB (past it nginx spools to disk).
BUFFERED_BODY_SIZE = 64 * 1024

#: After closing our side with a request body unread: how long in all, and
#: how long between two reads, the client's remaining bytes are read and
#: dropped (nginx's lingering_time and lingering_timeout).
LINGERING_TIME = 30.0
LINGERING_TIMEOUT = 5.0

#: How long a request may wait for its upstream's answer before the
#: front-end also watches the client socket, so a client that hangs up on a
#: slow request has that request aborted at once. Fast answers (the usual
#: case) never pay for the watcher.
WATCH_CLIENT_AFTER = 0.05


#: ``_serve``'s result when the connection went idle and to the hub.
_TO_HUB = object()

#: A request the hub began, for the task that goes on with it: its head, and a
#: function making the awaitable rest of its answer.
_Resume = tuple[RequestHead, Callable[[], Awaitable[bool]]]


class _ClientGone(Exception):
    """The client closed or reset its connection."""


class _WatchClient(Exception):
    """A request's answer is slow: start watching its client (raised by ``_Deadlines``)."""


#: How often ``_Deadlines`` looks at waiting answers, and at waiting clients.
_HEAD_TICK = 0.025
_READ_TICK = 0.1


class _Deadlines:
    """One task that enforces the deadlines of the two waits every request makes.

    A trio cancel scope per wait costs more than the rest of a small request's
    trip through the front-end; on the hot path (a kept-alive client's next
    request, a worker's answer) a dict entry is enough instead. The task wakes
    every ``_HEAD_TICK`` while something waits, and then:

    * a client read past its deadline is woken with ``notify_closing`` (the
      connection closes after it anyway), which raises ClosedResourceError in
      that wait only; the connection's ``timed_out`` tells it why;
    * an answer still missing ``WATCH_CLIENT_AFTER`` after it was asked for is
      interrupted with ``_WatchClient``, and its request goes on with a
      watcher on the client and an ordinary cancel scope (slow answers are
      rare, and then the scope's cost does not matter).

    The precision is one tick: fine for timeouts of seconds. Waits off the hot
    path (TLS clients, request bodies, sends) use cancel scopes as usual.
    """

    def __init__(self) -> None:
        self.reads: dict[_ClientConnection, float] = {}
        #: Responses awaited (or ``_CallbackAnswer``s): anything with ``interrupt``.
        self.heads: dict[ResponseStream | _CallbackAnswer, float] = {}
        self._parked = False
        self._lot = trio.lowlevel.ParkingLot()

    def watch_read(self, conn: _ClientConnection, deadline: float) -> None:
        self.reads[conn] = deadline
        if self._parked:
            self._lot.unpark_all()

    def watch_head(self, response: ResponseStream | _CallbackAnswer, at: float) -> None:
        self.heads[response] = at
        if self._parked:
            self._lot.unpark_all()

    async def run(self) -> None:
        next_read_check = 0.0
        while True:
            if not self.reads and not self.heads:
                self._parked = True
                try:
                    await self._lot.park()
                finally:
                    self._parked = False
            await trio.sleep(_HEAD_TICK)
            now = trio.current_time()
            if self.heads:
                for response, at in list(self.heads.items()):
                    if now >= at and response.interrupt(_WatchClient()):
                        self.heads.pop(response, None)
            if now >= next_read_check:
                next_read_check = now + _READ_TICK
                for conn, deadline in list(self.reads.items()):
                    if now >= deadline:
                        del self.reads[conn]
                        conn.read_expired()


class FrontendServer:
    """Everything one front-end process serves: its routes and upstream pools.

    Made from a ``ClusterConfig``; ``serve`` runs it on listening sockets.
    """

    def __init__(self, config: object, nursery: trio.Nursery) -> None:
        from ._http import HTTPLimits

        self.config = config
        fe = config.frontend  # type: ignore[attr-defined]
        self.frontend = fe
        self.limits = HTTPLimits(
            max_request_line=fe.max_request_line,
            max_header_size=fe.max_header_size,
            max_headers=fe.max_headers,
            max_body_size=fe.max_body_size,
        )
        #: Memory lent to answers past their buffer_size, before a file.
        self.answer_pool = MemoryPool(ANSWER_POOL, ANSWER_POOL_PER_REQUEST)
        self.upstreams = {
            name: Upstream(name, upstream, nursery, self.answer_pool)
            for name, upstream in config.upstreams.items()  # type: ignore[attr-defined]
        }
        self.routes = config.routes  # type: ignore[attr-defined]
        self._route_extra = [
            {k.encode(): v.encode() for k, v in (route.params or {}).items()} for route in self.routes
        ]
        self._route_roots = [(route.root or fe.root).encode() for route in self.routes]
        self._route_index = [(route.index or "").encode() for route in self.routes]
        #: Each upstream route's answer buffering: its own keys over its upstream's.
        self._route_buffering = [
            None if route.upstream is None else answer_buffering(dataclasses.replace(
                config.upstreams[route.upstream],  # type: ignore[attr-defined]
                **{key: getattr(route, key) for key in _BUFFERING_KEYS if getattr(route, key) is not None},
            ), self.answer_pool)
            for route in self.routes
        ]
        self.access_log = AccessLog.open(fe.access_log)
        self.deadlines = _Deadlines()
        nursery.start_soon(self.deadlines.run)
        self.connections = trio.Semaphore(fe.max_connections)
        #: Idle keep-alive connections' watcher, once serving (see ``_hub``).
        self.hub: Hub | None = None
        self.active_requests = 0
        self._idle_lot = trio.lowlevel.ParkingLot()
        self._accepting = trio.CancelScope()
        self._ssl_context: ssl.SSLContext | None = None
        if fe.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(fe.tls.cert, fe.tls.key)
            context.set_alpn_protocols(["http/1.1"])
            self._ssl_context = context

    # --- accepting ----------------------------------------------------------

    async def serve(
        self, sockets: Sequence[socket.socket], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Accept clients on every listening socket until cancelled."""
        async with trio.open_nursery() as connections:
            if HUB_AVAILABLE:
                self.hub = Hub(self, connections)
                connections.start_soon(self.hub.run)
            with self._accepting:
                async with trio.open_nursery() as acceptors:
                    for sock in sockets:
                        acceptors.start_soon(self._accept_loop, sock, connections)
                    task_status.started()
            # Accepting has stopped: close the sockets so new clients are
            # refused rather than left in a backlog nobody reads.
            for sock in sockets:
                trio.lowlevel.notify_closing(sock)
                sock.close()
            await trio.sleep_forever()

    def route_of(self, path: bytes) -> tuple[int, typing.Any]:
        """The first route matching a normalised path, and its number; (-1, None) for none."""
        text_path = path.decode("utf-8", "surrogateescape")
        for number, route in enumerate(self.routes):
            if route.match(text_path):
                return number, route
        return -1, None

    def stop_accepting(self) -> None:
        """Stop taking new clients (shutdown); connections already open go on."""
        self._accepting.cancel()

    async def wait_idle(self) -> None:
        """Return once no request is being answered."""
        while self.active_requests:
            await self._idle_lot.park()

    def _request_started(self) -> None:
        self.active_requests += 1

    def _request_ended(self) -> None:
        self.active_requests -= 1
        if not self.active_requests:
            self._idle_lot.unpark_all()

    async def _accept_loop(self, sock: socket.socket, nursery: trio.Nursery) -> None:
        local = sock.getsockname()
        # At max_connections, stop accepting: new clients wait in the
        # kernel's backlog instead of costing memory here.
        await accept_loop(sock, self.connections, lambda stream: self._accepted(stream, local, nursery))

    def _accepted(self, stream: trio.SocketStream, local: tuple, nursery: trio.Nursery) -> None:
        """A new client: to the hub when it can hold it (plain TCP), else to a task of its own.

        The hub reads the first request now (it usually came with the
        connection) and answers it as it answers any other, so a client that
        sends one request per connection costs no task either.
        """
        hub = self.hub
        if hub is None or self._ssl_context is not None:
            nursery.start_soon(self._connection_task, stream, local)
            return
        try:
            conn = _ClientConnection(self, stream, self._connection_params(stream, local), stream)
        except OSError:  # reset before we looked at it
            self.connections.release()
            stream.socket.close()
            return
        hub.take(conn)
        try:
            conn.hub_readable()
        except Exception:
            log.exception("client connection failed")
            hub.close(conn)

    async def _connection_task(self, stream: trio.SocketStream, local: tuple) -> None:
        conn = None
        try:
            conn = await self._client_connection(stream, local)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        except Exception:
            log.exception("client connection failed")
        finally:
            if conn is None:
                self.connections.release()
                await trio.aclose_forcefully(stream)
        if conn is not None:
            await conn.drive()

    async def _client_connection(self, stream: trio.SocketStream, local: tuple) -> _ClientConnection | None:
        """A new client's connection, TLS handshake done (None if it did not finish in time)."""
        params = self._connection_params(stream, local)
        client: trio.abc.Stream = stream
        if self._ssl_context is not None:
            client = trio.SSLStream(stream, self._ssl_context, server_side=True)
            with trio.move_on_after(self.frontend.header_timeout) as scope:
                await client.do_handshake()
            if scope.cancelled_caught:
                return None
        return _ClientConnection(self, client, params, stream)

    def _connection_params(self, stream: trio.SocketStream, local: tuple) -> ConnectionParams:
        peer = stream.socket.getpeername()
        if isinstance(peer, tuple):
            remote_addr, remote_port = peer[0], peer[1]
            server_addr, server_port = local[0], local[1]
        else:  # unix socket
            remote_addr, remote_port, server_addr, server_port = "unix:", 0, "unix:", 0
        return ConnectionParams(
            remote_addr=remote_addr.encode(),
            remote_port=b"%d" % remote_port,
            server_addr=server_addr.encode(),
            server_port=b"%d" % server_port,
            server_name=(self.frontend.server_name or server_addr).encode(),
            https=self._ssl_context is not None,
        )


class _ClientConnection:
    """One client's keep-alive connection: requests in, responses out, in order.

    Served by a task of its own (``drive``) while requests keep coming; an
    idle plain-TCP connection goes to the server's ``Hub`` instead, which
    answers the common request from callbacks (``hub_readable``) and starts a
    task again for any other.
    """

    __slots__ = ("server", "stream", "http", "params", "base_block", "remote_addr", "_received", "_fd", "timed_out",
                 "_body_stream", "_last_headers", "_headers_block", "_transport", "_hub", "in_hub", "_armed_once",
                 "served", "_answer")

    def __init__(
        self, server: FrontendServer, stream: trio.abc.Stream, params: ConnectionParams, transport: trio.SocketStream
    ) -> None:
        self.server = server
        self.stream = stream
        self._transport = transport  # the socket under a TLS stream, or the stream itself
        self.http = HTTPServerConnection(server.limits)
        self.params = params
        #: The connection's part of every request's params, encoded once.
        self.base_block = encode_params(params.base())
        self.remote_addr = params.remote_addr
        self._received = False  # bytes of the next request seen (408 vs silent close)
        # Plain TCP and unix connections are read and written through their
        # descriptor directly when that cannot block (see _receive / _send);
        # TLS goes through the stream.
        self._fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1
        #: Set by ``_Deadlines`` when a wait for the client ran out.
        self.timed_out = False
        #: The current request's body while a worker's connection reads it.
        self._body_stream: _BodyStream | None = None
        # A client sends much the same header fields in every request of a
        # connection: the params made of the last ones, encoded, are reused
        # while they stay the same (a list comparison).
        self._last_headers: list[tuple[bytes, bytes]] | None = None
        self._headers_block = b""
        #: The hub this connection goes to when idle (None: TLS, or no epoll).
        self._hub = server.hub if self._fd >= 0 else None
        #: Owned by the hub (idle, or answered from callbacks), not by a task.
        self.in_hub = False
        self._armed_once = False  # registered in the hub's epoll set
        #: Requests begun on this connection (keepalive_requests).
        self.served = 0
        #: The request being answered from callbacks, while there is one.
        self._answer: _CallbackAnswer | None = None

    async def drive(self, first: object = None, resume: _Resume | None = None) -> None:
        """Serve the connection from a task until it closes, or until it goes to the hub.

        Args:
            first: an event (or an ``HTTPError``) the hub took from the parser.
            resume: a request the hub began: its head and the rest of its
                answer, to await first.
        """
        adopted = False
        try:
            adopted = await self.run(first, resume)
        except (trio.BrokenResourceError, trio.ClosedResourceError, _ClientGone, OSError):
            pass
        except Exception:
            log.exception("client connection failed")
        finally:
            if not adopted:
                self.server.connections.release()
                await trio.aclose_forcefully(self._transport)

    async def run(self, first: object = None, resume: _Resume | None = None) -> bool:
        """Serve the connection's requests until it closes; then linger if the client may be sending.

        Returns:
            True when the connection went to the hub (and is not closed here).
        """
        result = await self._serve(first, resume)
        if result is _TO_HUB:
            return True
        if result and self._fd >= 0:
            await self._take_body_back()
            await self._linger()
        return False

    async def _serve(self, first: object = None, resume: _Resume | None = None) -> bool | object:
        """Serve requests; True when closing while the client may still send (an unread body).

        ``_TO_HUB`` when the connection went idle and to the hub.
        """
        fe = self.server.frontend
        http = self.http
        try:
            if resume is not None:
                if not await self._answered(resume[0], resume[1]()):
                    return not http.request_complete
            fresh = not self.served and first is None  # a new connection's task
            while True:
                if first is not None:
                    event, first = first, None
                    if isinstance(event, HTTPError):
                        raise event
                else:
                    event = http.next_event()
                while event is NEED_DATA:
                    data = None
                    if fresh and self._fd >= 0:
                        # A new connection's first request usually came with it.
                        data = await self._read_ready(self._fd)
                    fresh = False
                    if data is None:
                        if self._hub is not None and not self._received and self._body_stream is None:
                            self._hub.adopt(self)
                            return _TO_HUB
                        timeout = fe.header_timeout if self._received or not self.served else fe.keepalive_timeout
                        data = await self._receive_next(timeout)
                    if data is None:
                        if self._received:
                            await self._send_error(408)
                        return False
                    self._received = True
                    http.receive_data(data)
                    event = http.next_event()
                if type(event) is ConnectionClosed or event is ConnectionClosed:
                    return False
                self._begin_request()
                if not await self._answered(event, self._respond(event)):  # type: ignore[arg-type]
                    return not http.request_complete
        except HTTPError as exc:
            await self._send_error(exc.status, getattr(exc, "reason", None))
            return True

    def _begin_request(self) -> None:
        self.served += 1
        if self.served >= self.server.frontend.keepalive_requests:
            self.http.keep_alive = False
        self.server._request_started()

    async def _answered(self, event: object, answer: typing.Awaitable[bool]) -> bool:
        """Await one request's answer (begun with ``_begin_request``); True when the connection serves on."""
        try:
            keep = await answer
        except (HTTPError, _ClientGone, trio.BrokenResourceError, trio.ClosedResourceError):
            raise
        except Exception:
            # A bug of ours must cost this request only: log it, tell
            # the client no more than "500", and close.
            log.exception("request %r failed", getattr(event, "target", event))
            await self._send_error(500)
            return False
        finally:
            self.server._request_ended()
        if not keep or not self.http.keep_alive:
            return False
        self.http.start_next_cycle()
        self._received = False
        return True

    # --- in the hub ------------------------------------------------------------

    def read_expired(self) -> None:
        """``_Deadlines``: the wait for this client's next bytes ran out."""
        self.timed_out = True
        if self.in_hub:
            self._hub.expire(self)  # type: ignore[union-attr]
        else:
            trio.lowlevel.notify_closing(self._fd)

    def hub_readable(self) -> None:
        """The hub saw this idle connection readable: read, and answer or start a task."""
        hub = self._hub
        assert hub is not None
        self.server.deadlines.reads.pop(self, None)
        try:
            data = os.read(self._fd, RECEIVE_SIZE)
        except BlockingIOError:
            hub.adopt(self)
            return
        except OSError:
            hub.close(self)
            return
        self._received = True
        self.http.receive_data(data)
        self._next_in_hub()

    def _next_in_hub(self) -> None:
        """The parser's next event, for a connection the hub owns: answered here if it can be."""
        hub = self._hub
        assert hub is not None
        try:
            event = self.http.next_event()
        except HTTPError as exc:
            self._to_task(exc)
            return
        if event is NEED_DATA:
            hub.adopt(self)
        elif type(event) is ConnectionClosed or event is ConnectionClosed:
            hub.close(self)
        elif not self._answer_from_callbacks(event):
            self._to_task(event)

    def _to_task(self, first: object = None, resume: _Resume | None = None) -> None:
        """Serve on from a task of the connection's own (the hub lets go of it)."""
        hub = self._hub
        assert hub is not None
        hub.release(self)
        try:
            hub.nursery.start_soon(self.drive, first, resume)
        except RuntimeError:  # the front-end is stopping
            if resume is not None:
                self.server._request_ended()
            self.server.connections.release()
            self._transport.socket.close()

    async def _send_rest(self, data: bytes) -> bool:
        """The end of an answer the client's socket did not take at once."""
        await self._send(data)
        return True

    def _answer_from_callbacks(self, head: object) -> bool:
        """Begin answering ``head`` with no task: False (and nothing done) when it needs one.

        The common request qualifies: no body, an idempotent method, a route
        to an upstream with a live server. It is sent at once on a connection
        that has room (a multiplexed one, or a kept-alive idle one), or waits
        in line for one at ``max_conns``; otherwise a task takes it on from
        the server chosen. Its answer is written by the worker connection's
        reader (``_CallbackAnswer``) if it is whole and small when it ends; a
        slow, large or failed one goes on in a task, from where it is.
        """
        if type(head) is not RequestHead or head.method not in IDEMPOTENT:
            return False
        http = self.http
        if not http.request_complete:
            if head.chunked or head.content_length:
                return False
            http.next_event()  # the EndOfMessage that came with the head
        try:
            path = normalize_path(head.path)
        except BadPath:
            return False
        server = self.server
        number, route = server.route_of(path)
        if route is None or route.static is not None:
            return False
        upstream = server.upstreams[route.upstream]
        index = upstream.balancer.choose(
            self._hash_key(upstream, head) if upstream.hashed else None, exclude=upstream.unhealthy or ()
        )
        if index is None:
            return False  # the task finds none either, and answers 502
        params = self._upstream_params(head, number, path, head.content_length)
        self._begin_request()
        answer = _CallbackAnswer(self, head, number, route, path, time.time(), upstream, index, params)
        target = upstream.servers[index]
        conn = target.ready_connection()
        if conn is not None:
            if answer.send(conn):
                upstream.balancer.started(index)
                return True
        else:
            waiter = target.wait_in_line(answer.connection_ready)
            if waiter is not None:
                upstream.balancer.started(index)
                answer.waiter = waiter
                self._answer = answer
                return True
        # No connection without waiting (or the one there was is dead): a task takes one.
        answer.to_task(FirstTry(index))
        return True

    def drop_answer(self) -> None:
        """The connection closes: give up the request being answered from callbacks, if any."""
        answer = self._answer
        if answer is not None:
            self._answer = None
            answer.drop()

    async def _linger(self) -> None:
        """Close our side, then read and drop what the client still sends (nginx's lingering close).

        Closing with unread bytes in the socket makes the kernel answer with a
        reset, which can destroy the response the client has not read yet (a
        413 or an early answer to an upload). Bounded as nginx's
        ``lingering_time`` and ``lingering_timeout``.
        """
        try:
            self.stream.socket.shutdown(socket.SHUT_WR)  # type: ignore[attr-defined]
        except OSError:
            return
        with trio.move_on_after(LINGERING_TIME):
            try:
                while await self._receive(LINGERING_TIMEOUT):
                    pass
            except _ClientGone:
                pass

    async def _receive_next(self, timeout: float) -> bytes | None:
        """``_receive`` for request heads, the hot path: its deadline is kept by ``_Deadlines``."""
        fd = self._fd
        if fd < 0:
            return await self._receive(timeout)
        deadlines = self.server.deadlines
        self.timed_out = False
        deadlines.watch_read(self, trio.current_time() + timeout)
        try:
            while True:
                try:
                    await trio.lowlevel.wait_readable(fd)
                except trio.ClosedResourceError:
                    if self.timed_out:
                        return None
                    raise _ClientGone() from None
                except OSError as exc:
                    raise _ClientGone() from exc
                try:
                    return os.read(fd, RECEIVE_SIZE)
                except BlockingIOError:
                    continue  # a wakeup with nothing to read: wait on
                except OSError as exc:
                    raise _ClientGone() from exc
        finally:
            # Always, cancelled or not: the descriptor may be reused by the
            # next connection once this one closes.
            deadlines.reads.pop(self, None)

    @staticmethod
    async def _read_ready(fd: int) -> bytes | None:
        """What the client socket holds now, or None when reading would block.

        Yields to the scheduler after a read, as trio's own receive does, so
        that a client pipelining requests that need no worker (static files,
        errors) cannot starve the others.

        Raises:
            _ClientGone: the connection was reset.
        """
        try:
            data = os.read(fd, RECEIVE_SIZE)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise _ClientGone() from exc
        await trio.lowlevel.cancel_shielded_checkpoint()
        return data

    async def _receive(self, timeout: float) -> bytes | None:
        """The next bytes from the client (b"" at EOF), or None after ``timeout`` seconds of silence.

        Raises:
            _ClientGone: the connection was reset.
        """
        fd = self._fd
        if fd >= 0:
            # A body's next bytes are often there already: reading first
            # spares the whole wait (a cancel scope and two epoll changes).
            data = await self._read_ready(fd)
            if data is not None:
                return data
            with trio.CancelScope(deadline=trio.current_time() + timeout) as scope:
                try:
                    await trio.lowlevel.wait_readable(fd)
                except (trio.ClosedResourceError, OSError) as exc:
                    raise _ClientGone() from exc
                try:
                    return os.read(fd, RECEIVE_SIZE)
                except BlockingIOError:
                    pass  # a wakeup with nothing to read: wait again below
                except OSError as exc:
                    raise _ClientGone() from exc
            if scope.cancelled_caught:
                return None
        with trio.move_on_after(timeout):
            try:
                return await self.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _ClientGone() from exc
        return None

    async def _send(self, data: bytes) -> None:
        """Send to the client; a client that takes nothing for ``send_timeout`` is gone.

        Raises:
            _ClientGone: the connection was reset, or the send timed out.
        """
        if not data:
            return
        fd = self._fd
        if fd >= 0:
            # The socket buffer nearly always has room for a whole answer:
            # write it straight away, and only wait (through trio) for the rest.
            try:
                sent = os.write(fd, data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise _ClientGone() from exc
            if sent == len(data):
                return
            data = data[sent:]
        with trio.move_on_after(self.server.frontend.send_timeout) as scope:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _ClientGone() from exc
        if scope.cancelled_caught:
            raise _ClientGone()

    async def _send_error(self, status: int, reason: str | None = None) -> None:
        try:
            await self._send(self.http.send_error_response(status, reason=reason))
        except _ClientGone:
            pass

    # --- one request ----------------------------------------------------------

    async def _respond(self, head: RequestHead) -> bool:
        """Answer one request; returns False when the connection must close after it."""
        started = time.time()
        try:
            path = normalize_path(head.path)
        except BadPath as exc:
            await self._send_error(400, str(exc))
            self._log(head, 400, 0, started)
            return False
        number, route = self.server.route_of(path)
        if route is None:
            return await self._simple(head, 404, started)
        if route.static is not None:
            return await self._static(head, route, path, started)
        return await self._proxy(head, number, route, path, started)

    async def _simple(self, head: RequestHead, status: int, started: float) -> bool:
        """A small generated answer with the connection kept if the request allows it."""
        body = _status_body(status)
        out = self.http.send_head(status, [(b"Content-Type", b"text/html")], content_length=len(body))
        out += self.http.send_body(body) + self.http.send_end()
        await self._send(out)
        self._log(head, status, len(body), started)
        return await self._finish_request_body()

    async def _take_body_back(self) -> None:
        """Stop a worker's connection reading this client's body, before reading the client here."""
        if self._body_stream is not None:
            await self._body_stream.close()
            self._body_stream = None

    async def _finish_request_body(self) -> bool:
        """After an answer that did not read all of the request body: read and drop the rest.

        As nginx does (ngx_http_discard_request_body): the client sends its
        body anyway, and dropping it keeps the connection for the next request
        instead of closing it under a client that is still sending. Each read
        is bounded by ``body_timeout`` (a client that stalls gets no more
        answers on this connection, only a close).
        """
        await self._take_body_back()
        while not self.http.request_complete:
            await self._next_body_event()
        return True

    # --- static files -----------------------------------------------------------

    async def _static(self, head: RequestHead, route: object, path: bytes, started: float) -> bool:
        # A prefix route maps its prefix onto the directory (nginx's alias):
        # /static/css/a.css under prefix "/static/" is <dir>/css/a.css.
        stripped = b""
        prefix = getattr(route, "prefix", None)
        if prefix:
            raw_prefix = prefix.encode("utf-8", "surrogateescape").rstrip(b"/")
            if path.startswith(raw_prefix):
                stripped = raw_prefix
        rel = path[len(stripped):]
        # plan_static wants the path percent-encoded (it decodes and checks it
        # itself): give it the canonical encoding of the normalised path.
        plan = plan_static(
            route.static, quote_from_bytes(rel, safe="/").encode(), head.method, head.headers,  # type: ignore[attr-defined]
            index=route.index or None, prefix=quote_from_bytes(stripped, safe="/").encode(),  # type: ignore[attr-defined]
        )
        http = self.http
        try:
            out = http.send_head(plan.status, plan.headers, content_length=plan.content_length)
            sent = 0
            if plan.path is None or head.method == b"HEAD":
                out += http.send_body(plan.body) + http.send_end()
                sent = len(plan.body)
                await self._send(out)
            else:
                await self._send(out)
                async for chunk in read_file_range(plan):
                    await self._send(http.send_body(chunk))
                    sent += len(chunk)
                await self._send(http.send_end())
        finally:
            plan.close()  # read_file_range closes it too; twice is harmless
        self._log(head, plan.status, sent, started)
        return await self._finish_request_body()

    # --- upstream ------------------------------------------------------------------

    async def _proxy(
        self, head: RequestHead, number: int, route: object, path: bytes, started: float,
        first: FirstTry | None = None, params: dict[bytes, bytes] | bytes | None = None,
    ) -> bool:
        """Answer a request from an upstream (``first``: its first try, and ``params``, made by the hub)."""
        server = self.server
        upstream = server.upstreams[route.upstream]  # type: ignore[attr-defined]
        http = self.http
        if not http.request_complete and not head.chunked and not head.content_length:
            # A request without a body: its EndOfMessage came with the head.
            http.next_event()
        if http.request_complete:
            # No body (the usual GET): no await, and the answer's head is
            # waited for with the client watched. CONTENT_LENGTH is then b""
            # (or "0" as sent), as nginx's $content_length.
            body: bytes | AsyncIterator[bytes] = b""
            length = head.content_length
            wait = self._wait_head
        else:
            body, length = await self._request_body(head)
            wait = self._wait_head if http.request_complete else None
        if params is None:
            params = self._upstream_params(head, number, path, length)
        try:
            result = await open_upstream_response(
                upstream, params, body, method=head.method,
                hash_key=self._hash_key(upstream, head) if upstream.hashed else None,
                wait_head=wait, first=first,  # type: ignore[arg-type]
                buffering=server._route_buffering[number],
            )
        except UpstreamFailure as exc:
            if isinstance(body, _BodyStream) and body.error is not None:
                raise body.error
            status = exc.status
            page = _status_body(status)
            out = http.send_head(status, [(b"Content-Type", b"text/html")], content_length=len(page))
            await self._send(out + http.send_body(page) + http.send_end())
            self._log(head, status, len(page), started)
            return await self._finish_request_body()
        return await self._relay_answer(head, result, started)

    async def _relay_answer(self, head: RequestHead, result: typing.Any, started: float) -> bool:
        """Write an upstream's answer to the client at the client's pace; False when the connection must close.

        The worker's connection reads on meanwhile (the answer waits in its
        buffer), whatever this client's pace.
        """
        response = result.response
        upstream = result.upstream
        http = self.http
        read_timeout = upstream.config.read_timeout or math.inf
        upstream_failed = False
        ok = False
        relay: Relay | None = None
        try:
            relay = Relay(response, http)
            while True:
                out, done = relay.ready()
                if out:
                    await self._send(out)
                if done:
                    ok = True
                    break
                await relay.wait(read_timeout)
        except ResponseOverflow as exc:
            # The client read too slowly for the answer's buffering: not the worker's fault.
            log.warning("upstream %s: %s: request aborted for a slow client: %s", upstream.name,
                        upstream.servers[result.index].address, exc)
        except (FastCGIError, trio.TooSlowError) as exc:
            upstream_failed = True
            log.warning("upstream %s: %s failed mid-response: %s", upstream.name,
                        upstream.servers[result.index].address, exc or type(exc).__name__)
        except ValueError as exc:
            # The worker's body did not match its own Content-Length.
            log.warning("upstream %s: %s: %s", upstream.name, upstream.servers[result.index].address, exc)
        finally:
            result.finish(upstream_failed)
            self._log(head, response.status, 0 if relay is None else relay.sent, started)
            if response.has_stderr:
                _log_stderr(upstream.servers[result.index].address, response.stderr)
        if not ok:
            return False  # the client cannot tell a cut body from a whole one otherwise
        if self._body_stream is None and http.request_complete:
            return True
        return await self._finish_request_body()

    def _upstream_params(self, head: RequestHead, number: int, path: bytes, length: int | None) -> dict[bytes, bytes] | bytes:
        """A request's FastCGI params for route ``number``: encoded, or a dict when the route adds its own."""
        server = self.server
        route = server.routes[number]
        script, info = split_path(path, route.split_path_info, server._route_index[number])  # type: ignore[attr-defined]
        # A route's own params may override any other, so they need one dict
        # of all; otherwise the connection's and the header fields' parts are
        # encoded already.
        extra = server._route_extra[number]
        if extra:
            return request_params(
                self.params.base(), head.method, head.target, head.query, path, head.headers,
                script_name=script, path_info=info, document_root=server._route_roots[number],
                http_version=head.http_version, content_length=length,
                underscores_in_headers=server.frontend.underscores_in_headers, extra=extra,
            )
        headers = head.headers
        if headers != self._last_headers:
            fields = header_params(headers, server.frontend.underscores_in_headers)
            fields.pop(b"CONTENT_LENGTH", None)  # the body's length is in line_params
            self._headers_block = encode_params(fields)
            self._last_headers = headers
        return self.base_block + encode_line_params(
            head.method, head.target, head.query, path, script_name=script, path_info=info,
            document_root=server._route_roots[number], http_version=head.http_version, content_length=length,
        ) + self._headers_block

    async def _wait_head(self, response: ResponseStream, deadline: float) -> None:
        """Wait for an answer's head until ``deadline``; a client that hangs up meanwhile aborts it.

        Fast answers never pay for watching the client, nor for a cancel
        scope: ``_Deadlines`` interrupts one still missing after
        ``WATCH_CLIENT_AFTER``, which then gets a watcher task and a scope.

        Raises:
            trio.TooSlowError: the deadline passed.
            _ClientGone: the client hung up.
        """
        deadlines = self.server.deadlines
        deadlines.watch_head(response, min(deadline, trio.current_time() + WATCH_CLIENT_AFTER))
        try:
            await response.read_head()
            return
        except _WatchClient:
            pass
        finally:
            deadlines.heads.pop(response, None)
        if trio.current_time() >= deadline:
            raise trio.TooSlowError
        gone = done = False
        failure: BaseException | None = None
        with trio.CancelScope(deadline=deadline) as timeout:
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    nonlocal gone
                    await self._watch_client()
                    gone = True
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch)
                try:
                    await response.read_head()
                    done = True
                except Exception as exc:  # re-raised outside the nursery, unwrapped
                    failure = exc
                nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
        if done:
            return
        if gone:
            raise _ClientGone()
        if timeout.cancelled_caught:
            raise trio.TooSlowError

    async def _watch_client(self) -> None:
        """Return when the client hangs up; bytes it pipelines meanwhile are kept for later."""
        try:
            data = await self._receive(math.inf)
        except _ClientGone:
            return
        if not data:
            return
        self.http.receive_data(data)
        # Pipelined requests wait in the parser; reading on would let a
        # client make us hold more than one receive's worth of them.
        await trio.sleep_forever()

    def _hash_key(self, upstream: Upstream, head: RequestHead) -> bytes | None:
        config = upstream.config
        method = config.balance  # type: ignore[attr-defined]
        if method == "ip_hash":
            return self.remote_addr
        if method != "hash":
            return None
        kind, name = upstream.hash_kind, upstream.hash_name
        if kind == "remote_addr":
            return self.remote_addr
        if kind == "uri":
            return head.target
        if kind == "header":
            lname = name.lower()
            for hname, value in head.headers:
                if hname == lname:
                    return value
            return b""
        if kind == "cookie":
            for hname, value in head.headers:
                if hname == b"cookie":
                    for part in value.split(b";"):
                        cname, _, cvalue = part.strip().partition(b"=")
                        if cname == name:
                            return cvalue
            return b""
        if kind == "arg":
            for part in head.query.split(b"&"):
                aname, _, avalue = part.partition(b"=")
                if aname == name:
                    return avalue
            return b""
        return None

    async def _request_body(self, head: RequestHead) -> tuple[bytes | AsyncIterator[bytes], int | None]:
        """The body to send upstream: whole bytes when small, else a stream; and its length if known."""
        http = self.http
        if http.request_complete:
            return b"", head.content_length
        # A body is coming: a client that asked for 100-continue waits for it.
        await self._send(http.send_continue())
        length = head.content_length
        if length is not None and length > BUFFERED_BODY_SIZE:
            self._body_stream = _BodyStream(self, b"")
            return self._body_stream, length
        buffered = bytearray()
        while True:
            event = await self._next_body_event()
            if type(event) is EndOfMessage:
                return bytes(buffered), len(buffered)
            buffered += event.data  # type: ignore[union-attr]
            if len(buffered) > BUFFERED_BODY_SIZE:
                if length is not None:
                    self._body_stream = _BodyStream(self, bytes(buffered))
                    return self._body_stream, length
                return await self._spool_chunked_body(buffered)

    async def _spool_chunked_body(self, first: bytearray) -> tuple[AsyncIterator[bytes], int]:
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
                event = await self._next_body_event()
                if type(event) is EndOfMessage:
                    break
                spool.write(event.data)  # type: ignore[union-attr]
                total += len(event.data)  # type: ignore[union-attr]
            spool.seek(0)
        except BaseException:
            spool.close()
            raise
        return _spooled_chunks(spool), total

    async def _next_body_event(self) -> Body | EndOfMessage:
        http = self.http
        while True:
            event = http.next_event()
            if event is not NEED_DATA:
                return event  # type: ignore[return-value]
            data = await self._receive(self.server.frontend.body_timeout)
            if data is None:
                raise HTTPError(408, "request body timed out")
            http.receive_data(data)

    def _log(self, head: RequestHead, status: int, sent: int, started: float) -> None:
        log_ = self.server.access_log
        if log_ is not None:
            log_.write(self.remote_addr, head, status, sent, started)


class _CallbackAnswer:
    """A request answered from callbacks: the worker connection's reader writes its answer.

    ``ready`` runs in that reader task once the records of one read are
    dispatched. An answer that came whole in them leaves for the client in
    one ``os.write`` (framed by a ``Relay``, as any other), and the connection
    goes back to the hub (or on to a request the client pipelined) with no
    task woken. Part of an answer still coming goes on in a task at once: it
    is large or streamed, and its bytes must reach the client as they come. A request that must wait in line for a connection (``max_conns``)
    waits with a callback too. Anything else (a failed or refused request, a
    large or slow answer, a client that does not take it all) goes on in a
    task of the connection's own, from where it is, through the same code as
    every other request.
    """

    __slots__ = ("client", "head", "number", "route", "path", "started", "upstream", "index", "params", "conn",
                 "response", "waiter", "_finished", "_over")

    def __init__(
        self, client: _ClientConnection, head: RequestHead, number: int, route: object, path: bytes, started: float,
        upstream: Upstream, index: int, params: dict[bytes, bytes] | bytes,
    ) -> None:
        self.client = client
        self.head = head
        self.number = number
        self.route = route
        self.path = path
        self.started = started
        self.upstream = upstream
        self.index = index
        self.params = params
        self.conn: object = None
        self.response: ResponseStream | None = None
        #: In line for a connection (``Server.wait_in_line``), while it is.
        self.waiter: object = None
        self._finished = False  # the response closed and the balancer told
        self._over = False  # the request counted as ended, or handed to a task that ends it

    def send(self, conn: object) -> bool:
        """Send the request on ``conn``; False (nothing sent) when that connection is dead."""
        try:
            shared, alone = self.client.server._route_buffering[self.number]  # type: ignore[misc]
            buffering = shared if self.upstream.servers[self.index].multiplexed else alone
            response = conn.start_request(self.params, b"", buffering=buffering)  # type: ignore[attr-defined]
        except FastCGIError:
            return False
        self.conn = conn
        self.response = response
        self.client._answer = self
        response._state.callback = self.ready
        self.client.server.deadlines.watch_head(self, trio.current_time() + WATCH_CLIENT_AFTER)
        return True

    def connection_ready(self, conn: object, error: FastCGIError | None) -> None:
        """``Server.wait_in_line``'s callback: this request's turn came (or its wait ended)."""
        self.waiter = None
        try:
            if conn is not None:
                if self.send(conn):
                    return
                self.upstream.servers[self.index].release(conn)  # a dead one: closed
            self.to_task(FirstTry(self.index, started=True, error=error))
        except Exception:
            self._failed_here()

    def ready(self) -> None:
        state = self.response._state  # type: ignore[union-attr]
        try:
            if not state.finished:
                # Part of an answer that is still coming (large, or streamed
                # by the app): a task relays it at the client's pace, at once.
                if state.has_data:
                    self.to_task()
            elif state.error is not None:
                self.to_task()
            else:
                self._write()
        except Exception:
            self._failed_here()

    def _failed_here(self) -> None:
        # Runs in a worker connection's reader or in a server's release: a bug
        # of ours must cost this client only, never the requests sharing
        # that connection.
        log.exception("request %r failed", self.head.target)
        if not self._over:
            self.drop()
        client = self.client
        if client.in_hub:  # not handed to a task: nothing else will close it
            client._hub.close(client)  # type: ignore[union-attr]

    def interrupt(self, error: BaseException) -> bool:
        """``_Deadlines``: the answer is slow; it goes on in a task, which watches the client."""
        self.to_task()
        return True

    def _detach(self) -> None:
        if self.response is not None:
            self.response._state.callback = None
        self.client.server.deadlines.heads.pop(self, None)
        if self.client._answer is self:
            self.client._answer = None

    def to_task(self, first: FirstTry | None = None) -> None:
        """Go on in a task: from ``first``, or from the request sent and its answer so far."""
        self._detach()
        self._over = True
        if first is None:
            first = FirstTry(self.index, started=True, conn=self.conn, response=self.response)  # type: ignore[arg-type]
        client, head = self.client, self.head
        number, route, path, started, params = self.number, self.route, self.path, self.started, self.params
        client._to_task(resume=(head, lambda: client._proxy(head, number, route, path, started, first, params)))

    def drop(self) -> None:
        """The client connection closes first (or the answer failed here): abort the request."""
        self._detach()
        if self.waiter is not None:
            self.upstream.servers[self.index].leave_line(self.waiter)  # type: ignore[arg-type]
            self.waiter = None
        if self.response is None:
            if not self._finished:
                self._finished = True
                self.upstream.balancer.finished(self.index)
        else:
            self._finish()
        if not self._over:
            self._over = True
            self.client.server._request_ended()

    def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            finish_try(self.response, self.upstream, self.index, self.conn)  # type: ignore[arg-type]

    def _write(self) -> None:
        """The request ended well: send its answer, then serve the connection on."""
        response = self.response
        assert response is not None
        try:
            response.head_ready()
        except FastCGIError:
            self.to_task()  # the task meets the same error, and tries the next server
            return
        self._detach()
        client, upstream = self.client, self.upstream
        http = client.http
        server = client.server
        hub = client._hub
        assert hub is not None
        sent = 0
        keep = True
        try:
            relay = Relay(response, http)
            out = relay.whole()
            sent = relay.sent
        except ValueError as exc:
            # The worker's body did not match its own Content-Length.
            log.warning("upstream %s: %s: %s", upstream.name, upstream.servers[self.index].address, exc)
            out = b""
            keep = False
        written = 0
        if out:
            try:
                written = os.write(client._fd, out)
            except BlockingIOError:
                pass
            except OSError:
                keep = False
        self._finish()
        client._log(self.head, response.status, sent, self.started)
        if response.has_stderr:
            _log_stderr(upstream.servers[self.index].address, response.stderr)
        self._over = True
        if written < len(out) and keep:
            rest = out[written:]
            client._to_task(resume=(self.head, lambda: client._send_rest(rest)))
            return
        server._request_ended()
        if not keep or not http.keep_alive:
            hub.close(client)
            return
        http.start_next_cycle()
        client._received = False
        client._next_in_hub()


class _BodyStream:
    """A large request body, read from the client as the worker's connection takes it.

    It is read by the upstream connection's body task, not by the client
    connection's own task. When the answer is over before the body, the
    client connection takes the reading back (``close``): two tasks reading
    one socket could feed the parser out of order.
    """

    def __init__(self, conn: _ClientConnection, first: bytes) -> None:
        self._conn = conn
        self._first = first
        self._closed = False
        self._reading: trio.Event | None = None
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
                    event = await self._conn._next_body_event()
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


def _log_stderr(address: str, stderr: bytes) -> None:
    for line in stderr.decode("utf-8", "replace").splitlines():
        if line.strip():
            log.warning("worker %s stderr: %s", address, line)


_STATUS_PAGES: dict[int, bytes] = {}


def _status_body(status: int) -> bytes:
    page = _STATUS_PAGES.get(status)
    if page is None:
        page = _STATUS_PAGES[status] = error_page(status)
    return page


async def serve_frontend(
    config: object,
    sockets: Sequence[socket.socket],
    *,
    task_status: trio.TaskStatus[FrontendServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one front-end process on already-bound listening sockets until cancelled.

    Args:
        config: a ``ClusterConfig``.
        sockets: bound, listening stdlib sockets (shared with sibling processes or not).

    Resource handling: upstream connections and client connections live in
    this function's nursery and are closed when it is cancelled.
    """
    async with trio.open_nursery() as nursery:
        server = FrontendServer(config, nursery)
        for upstream in server.upstreams.values():
            if upstream.config.health_check is not None:  # type: ignore[attr-defined]
                nursery.start_soon(run_health_checks, upstream)
        try:
            await nursery.start(server.serve, sockets)
            task_status.started(server)
            await trio.sleep_forever()
        finally:
            for upstream in server.upstreams.values():
                upstream.close_all()
            if server.access_log is not None:
                server.access_log.close()
