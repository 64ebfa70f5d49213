"""One client's connection: its requests read in order, routed, and answered, each before the next.

Answers leave in request order without holding later requests' responses in
memory. Who does the work: an idle plain-TCP connection belongs to the hub
(``_hub``), one task for all of them. The common request, a GET to an
upstream, is then answered from callbacks with no task: the hub reads and
parses it and sends it to a worker, and the worker connection's reader writes
the answer to the client (``CallbackAnswer``). Any other request, and any
answer that turns out large, slow or failed, is served by a task of the
connection's own (``ClientConnection.drive``), from where it is; the task
gives the connection back to the hub once it falls idle. TLS connections
keep their task throughout. Both write what a ``Relay`` frames.

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

import functools
import logging
import math
import os
import time
import typing
from collections.abc import AsyncIterator, Awaitable, Callable

import trio

from ..client import FastCGIError, ResponseOverflow, ResponseStream
from ..protocol._records import encode_params
from ._cgi import BadPath, ConnectionParams, encode_line_params, header_params, normalize_path, request_params, split_path
from ._client_io import RECEIVE_SIZE, ClientGone, ClientIO
from ._deadlines import WATCH_CLIENT_AFTER, WatchClient
from ._http import NEED_DATA, Body, ConnectionClosed, EndOfMessage, HTTPError, HTTPServerConnection, RequestHead
from ._hub import Hub
from ._proxy import IDEMPOTENT, FirstTry, UpstreamFailure, finish_try, open_upstream_response
from ._relay import Relay
from ._request_body import BodyStream, read_body
from ._site import Site, log_stderr, status_page
from ._static import send_static
from ._upstream import Upstream
from .edge._accel import send_accel
from .edge._cache_serve import ProxyParts, cacheable_request, serve_cached

__all__ = ["CallbackAnswer", "ClientConnection"]

log = logging.getLogger("fcgi_cluster.frontend")

#: ``_serve``'s result when the connection went idle and to the hub.
_TO_HUB = object()

#: A request the hub began, for the task that goes on with it: its head, and a
#: function making the awaitable rest of its answer.
_Resume = tuple[RequestHead, Callable[[], Awaitable[bool]]]


class ClientConnection:
    """One client's keep-alive connection: requests in, responses out, in order.

    Served by a task of its own (``drive``) while requests keep coming; an
    idle plain-TCP connection goes to the server's ``Hub`` instead, which
    answers the common request from callbacks (``hub_readable``) and starts a
    task again for any other.
    """

    __slots__ = ("server", "io", "http", "params", "base_block", "remote_addr", "_received", "_body_stream",
                 "_last_headers", "_headers_block", "_hub", "in_hub", "armed", "served", "_answer", "real_ip")

    def __init__(self, server: Site, io: ClientIO, params: ConnectionParams, hub: Hub | None) -> None:
        self.server = server
        self.io = io
        self.http = HTTPServerConnection(server.limits)
        self.params = params
        #: The connection's part of every request's params, encoded once.
        self.base_block = encode_params(params.base())
        self.remote_addr = params.remote_addr
        self._received = False  # bytes of the next request seen (408 vs silent close)
        #: The current request's body while a worker's connection reads it.
        self._body_stream: BodyStream | None = None
        # A client sends much the same header fields in every request of a
        # connection: the params made of the last ones, encoded, are reused
        # while they stay the same (a list comparison).
        self._last_headers: list[tuple[bytes, bytes]] | None = None
        self._headers_block = b""
        #: The hub this connection goes to when idle (None: TLS, or no epoll).
        self._hub = hub if io.fd >= 0 else None
        #: Owned by the hub (idle, or answered from callbacks), not by a task.
        self.in_hub = False
        #: Registered in the hub's epoll set (the hub's to set).
        self.armed = False
        #: Requests begun on this connection (keepalive_requests).
        self.served = 0
        #: The request being answered from callbacks, while there is one.
        self._answer: CallbackAnswer | None = None
        self.real_ip: typing.Any = None  # a trusted proxy's ``edge.ClientAddress``: sets remote_addr per request

    @property
    def fd(self) -> int:
        return self.io.fd

    def idle_timeout(self) -> float:
        """How long the connection may wait for the client now: header_timeout within a head, else keepalive_timeout."""
        fe = self.server.frontend
        return fe.header_timeout if self._received or not self.served else fe.keepalive_timeout

    def timeout_answer(self) -> bytes:
        """What a client whose wait ran out gets before the close: 408 within a head, else nothing."""
        return self.http.send_error_response(408) if self._received else b""

    def close_socket(self) -> None:
        self.io.transport.socket.close()

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
        except (trio.BrokenResourceError, trio.ClosedResourceError, ClientGone, OSError):
            pass
        except Exception:
            log.exception("client connection failed")
        finally:
            if not adopted:
                self.server.connections.release()
                await trio.aclose_forcefully(self.io.transport)

    async def run(self, first: object = None, resume: _Resume | None = None) -> bool:
        """Serve the connection's requests until it closes; then linger if the client may be sending.

        Returns:
            True when the connection went to the hub (and is not closed here).
        """
        result = await self._serve(first, resume)
        if result is _TO_HUB:
            return True
        if result and self.io.fd >= 0:
            await self._take_body_back()
            await self.io.linger()
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
                    if fresh and self.io.fd >= 0:
                        # A new connection's first request usually came with it.
                        data = await self.io.read_ready(self.io.fd)
                    fresh = False
                    if data is None:
                        if self._hub is not None and not self._received and self._body_stream is None:
                            self._hub.adopt(self)
                            return _TO_HUB
                        timeout = fe.header_timeout if self._received or not self.served else fe.keepalive_timeout
                        data = await self.io.receive_next(timeout)
                    if data is None:
                        if self._received:
                            await self._send_error(408)
                        return False
                    self._received = True
                    http.receive_data(data)
                    event = http.next_event()
                if type(event) is ConnectionClosed or event is ConnectionClosed:
                    return False
                if self.real_ip is not None:
                    self.real_ip.apply(self, event)
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
        self.server.request_started()

    async def _answered(self, event: object, answer: typing.Awaitable[bool]) -> bool:
        """Await one request's answer (begun with ``_begin_request``); True when the connection serves on."""
        try:
            keep = await answer
        except (HTTPError, ClientGone, trio.BrokenResourceError, trio.ClosedResourceError):
            raise
        except Exception:
            # A bug of ours must cost this request only: log it, tell
            # the client no more than "500", and close.
            log.exception("request %r failed", getattr(event, "target", event))
            await self._send_error(500)
            return False
        finally:
            self.server.request_ended()
        if not keep or not self.http.keep_alive:
            return False
        self.http.start_next_cycle()
        self._received = False
        return True

    # --- in the hub ------------------------------------------------------------

    def read_expired(self) -> None:
        """``Deadlines``: the hub's wait for this client's next bytes ran out."""
        if self.in_hub:
            self._hub.expire(self)  # type: ignore[union-attr]

    def hub_readable(self) -> None:
        """The hub saw this idle connection readable: read, and answer or start a task."""
        hub = self._hub
        assert hub is not None
        self.server.deadlines.forget_read(self)
        try:
            data = os.read(self.io.fd, RECEIVE_SIZE)
        except BlockingIOError:
            hub.adopt(self)
            return
        except OSError:
            hub.close(self)
            return
        self._received = True
        self.http.receive_data(data)
        self._next_in_hub()

    def feed(self, data: bytes) -> None:
        """Bytes of this client read before it came here (while choosing its protocol): parsed as its own."""
        self._received = bool(data)
        self.http.receive_data(data)

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
        elif not answer_from_callbacks(self, event):
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
                self.server.request_ended()
            self.server.connections.release()
            self.io.transport.socket.close()

    async def _send_rest(self, data: bytes) -> bool:
        """The end of an answer the client's socket did not take at once."""
        await self.io.send(data)
        return True

    def drop_answer(self) -> None:
        """The connection closes: give up the request being answered from callbacks, if any."""
        answer = self._answer
        if answer is not None:
            self._answer = None
            answer.drop()

    async def _send_error(self, status: int, reason: str | None = None) -> None:
        try:
            await self.io.send(self.http.send_error_response(status, reason=reason))
        except ClientGone:
            pass

    # --- one request ----------------------------------------------------------

    async def respond(self, head: RequestHead) -> bool:
        """Answer one request whose head was read elsewhere (an HTTP/2 stream's), as any other."""
        if self.real_ip is not None:
            self.real_ip.apply(self, head)
        self._begin_request()
        try:
            return await self._respond(head)
        finally:
            self.server.request_ended()

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
        limits = self.server.route_plans[number].limits
        if limits is not None:
            async with limits.admit(self.remote_addr, head.headers) as refused:
                if refused:
                    return await self._simple(head, refused, started)
                return await self._routed(head, number, route, path, started)
        return await self._routed(head, number, route, path, started)

    async def _routed(self, head: RequestHead, number: int, route: typing.Any, path: bytes, started: float) -> bool:
        """Answer a request admitted to route ``number``: its directory's file, or its upstream's answer."""
        if route.static is not None:
            return await self._static(head, route, path, started, self.server.route_plans[number].compression)
        if route.cache is not None and cacheable_request(head):
            parts = ProxyParts(self._upstream_params, self._relay_answer, self._simple, functools.partial(watch_client, self))
            return await serve_cached(self, head, number, route, path, started, parts)
        return await self._proxy(head, number, route, path, started)

    async def _simple(self, head: RequestHead, status: int, started: float) -> bool:
        """A small generated answer with the connection kept if the request allows it."""
        body = status_page(status)
        out = self.http.send_head(status, [(b"Content-Type", b"text/html")], content_length=len(body))
        out += self.http.send_body(body) + self.http.send_end()
        await self.io.send(out)
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

    async def _static(self, head: RequestHead, route: object, path: bytes, started: float, compression: object = None) -> bool:
        if route.internal:  # type: ignore[attr-defined]
            return await self._simple(head, 404, started)
        status, sent = await send_static(route, path, head, self.http, self.io.send, compression=compression)
        self._log(head, status, sent, started)
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
                hash_key=upstream.hash_key(head, self.remote_addr) if upstream.hashed else None,
                wait_head=wait, first=first,  # type: ignore[arg-type]
                buffering=server.route_plans[number].buffering,
            )
        except UpstreamFailure as exc:
            if isinstance(body, BodyStream) and body.error is not None:
                raise body.error
            return await self._simple(head, exc.status, started)
        return await self._relay_answer(head, result, started, server.route_plans[number].compression)

    async def _relay_answer(self, head: RequestHead, result: typing.Any, started: float, compression: typing.Any = None) -> bool:
        """Write an upstream's answer to the client at the client's pace; False when the connection must close.

        The worker's connection reads on meanwhile (the answer waits in its
        buffer), whatever this client's pace.
        """
        response = result.response
        if self.server.site.accel is not None and self.server.site.accel.target(response) is not None:
            await send_accel(self, head, result, started)
            return await self._finish_request_body()
        upstream = result.upstream
        http = self.http
        read_timeout = upstream.config.read_timeout or math.inf
        upstream_failed = False
        ok = False
        relay: Relay | None = None
        try:
            relay = Relay(response, http, head, compression)
            while True:
                out, done = relay.ready()
                if out:
                    await self.io.send(out)
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
            result.finish(upstream_failed, started)
            self._log(head, response.status, 0 if relay is None else relay.sent, started)
            if response.has_stderr:
                log_stderr(upstream.servers[result.index].address, response.stderr)
        if not ok:
            return False  # the client cannot tell a cut body from a whole one otherwise
        if self._body_stream is None and http.request_complete:
            return True
        return await self._finish_request_body()

    def _upstream_params(self, head: RequestHead, number: int, path: bytes, length: int | None) -> dict[bytes, bytes] | bytes:
        """A request's FastCGI params for route ``number``: encoded, or a dict when the route adds its own."""
        server = self.server
        route = server.routes[number]
        plan = server.route_plans[number]
        script, info = split_path(path, route.split_path_info, plan.index)
        # A route's own params may override any other, so they need one dict
        # of all; otherwise the connection's and the header fields' parts are
        # encoded already.
        extra = plan.extra
        if extra:
            return request_params(
                self.params.base(), head.method, head.target, head.query, path, head.headers,
                script_name=script, path_info=info, document_root=plan.root,
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
            document_root=plan.root, http_version=head.http_version, content_length=length,
        ) + self._headers_block

    async def _wait_head(self, response: ResponseStream, deadline: float) -> None:
        """Wait for an answer's head until ``deadline``; a client that hangs up meanwhile aborts it.

        Fast answers never pay for watching the client, nor for a cancel
        scope: ``Deadlines`` interrupts one still missing after
        ``WATCH_CLIENT_AFTER``, which then gets a watcher task and a scope.

        Raises:
            trio.TooSlowError: the deadline passed.
            ClientGone: the client hung up.
        """
        deadlines = self.server.deadlines
        deadlines.watch_head(response, min(deadline, trio.current_time() + WATCH_CLIENT_AFTER))
        try:
            await response.read_head()
            return
        except WatchClient:
            pass
        finally:
            deadlines.forget_head(response)
        if trio.current_time() >= deadline:
            raise trio.TooSlowError
        gone = done = False
        failure: BaseException | None = None
        with trio.CancelScope(deadline=deadline) as timeout:
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    nonlocal gone
                    await watch_client(self)
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
            raise ClientGone()
        if timeout.cancelled_caught:
            raise trio.TooSlowError

    async def _request_body(self, head: RequestHead) -> tuple[bytes | AsyncIterator[bytes], int | None]:
        """The body to send upstream (see ``read_body``), and its length if known."""
        http = self.http
        if http.request_complete:
            return b"", head.content_length
        # A body is coming: a client that asked for 100-continue waits for it.
        await self.io.send(http.send_continue())
        body, length = await read_body(self._next_body_event, head.content_length)
        if isinstance(body, BodyStream):
            self._body_stream = body
        return body, length

    async def _next_body_event(self) -> Body | EndOfMessage:
        http = self.http
        while True:
            event = http.next_event()
            if event is not NEED_DATA:
                return event  # type: ignore[return-value]
            data = await self.io.receive(self.server.frontend.body_timeout)
            if data is None:
                raise HTTPError(408, "request body timed out")
            http.receive_data(data)

    def _log(self, head: RequestHead, status: int, sent: int, started: float) -> None:
        self.server.log_request(self.remote_addr, head, status, sent, started)



class CallbackAnswer:
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
        self, client: ClientConnection, head: RequestHead, number: int, route: object, path: bytes, started: float,
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
            shared, alone = self.client.server.route_plans[self.number].buffering  # type: ignore[misc]
            buffering = shared if self.upstream.servers[self.index].multiplexed else alone
            response = conn.start_request(self.params, b"", buffering=buffering)  # type: ignore[attr-defined]
        except FastCGIError:
            return False
        self.conn = conn
        self.response = response
        self.client._answer = self
        response.call_on_records(self.ready)
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
        response = self.response
        assert response is not None
        try:
            if not response.complete:
                # Part of an answer that is still coming (large, or streamed
                # by the app): a task relays it at the client's pace, at once.
                if response.has_ready:
                    self.to_task()
            elif response.failed:
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
        """``Deadlines``: the answer is slow; it goes on in a task, which watches the client."""
        self.to_task()
        return True

    def _detach(self) -> None:
        if self.response is not None:
            self.response.call_on_records(None)
        self.client.server.deadlines.forget_head(self)
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
            self.client.server.request_ended()

    def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            finish_try(self.response, self.upstream, self.index, self.conn, started=self.started)  # type: ignore[arg-type]

    def _write(self) -> None:
        """The request ended well: send its answer, then serve the connection on."""
        response = self.response
        assert response is not None
        try:
            response.head_ready()
        except FastCGIError:
            self.to_task()  # the task meets the same error, and tries the next server
            return
        accel = self.client.server.site.accel
        if accel is not None and accel.target(response) is not None:
            self.to_task()  # the file is sent from a task, as any static answer
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
            relay = Relay(response, http, self.head, server.route_plans[self.number].compression)
            out = relay.whole()
            sent = relay.sent
        except ValueError as exc:
            # The worker's body did not match its own Content-Length.
            log.warning("upstream %s: %s: %s", upstream.name, upstream.servers[self.index].address, exc)
            out = b""
            keep = False
        written = client.io.write_now(out) if out else 0
        if written < 0:
            keep, written = False, 0
        self._finish()
        client._log(self.head, response.status, sent, self.started)
        if response.has_stderr:
            log_stderr(upstream.servers[self.index].address, response.stderr)
        self._over = True
        if written < len(out) and keep:
            rest = out[written:]
            client._to_task(resume=(self.head, lambda: client._send_rest(rest)))
            return
        server.request_ended()
        if not keep or not http.keep_alive:
            hub.close(client)
            return
        http.start_next_cycle()
        client._received = False
        client._next_in_hub()


def answer_from_callbacks(client: ClientConnection, head: object) -> bool:
    """Begin answering ``client``'s request ``head`` with no task: False (and nothing done) when it needs one.

    The common request qualifies: no body, an idempotent method, a route
    to an upstream with a live server. It is sent at once on a connection
    that has room (a multiplexed one, or a kept-alive idle one), or waits
    in line for one at ``max_conns``; otherwise a task takes it on from
    the server chosen. Its answer is written by the worker connection's
    reader (``CallbackAnswer``) if it is whole and small when it ends; a
    slow, large or failed one goes on in a task, from where it is.
    """
    if type(head) is not RequestHead or head.method not in IDEMPOTENT:
        return False
    if client.real_ip is not None:
        client.real_ip.apply(client, head)
    http = client.http
    if not http.request_complete:
        if head.chunked or head.content_length:
            return False
        http.next_event()  # the EndOfMessage that came with the head
    try:
        path = normalize_path(head.path)
    except BadPath:
        return False
    server = client.server
    number, route = server.route_of(path)
    if (route is None or route.static is not None or route.cache is not None
            or server.route_plans[number].limits is not None):
        return False  # a limited request may have to wait, a cached one be filled: a task's job
    upstream = server.upstreams[route.upstream]
    index = upstream.balancer.choose(
        upstream.hash_key(head, client.remote_addr) if upstream.hashed else None, exclude=upstream.unhealthy or ()
    )
    if index is None:
        return False  # the task finds none either, and answers 502
    params = client._upstream_params(head, number, path, head.content_length)
    client._begin_request()
    answer = CallbackAnswer(client, head, number, route, path, time.time(), upstream, index, params)
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
            client._answer = answer
            return True
    # No connection without waiting (or the one there was is dead): a task takes one.
    answer.to_task(FirstTry(index))
    return True


async def watch_client(client: ClientConnection) -> None:
    """Return when ``client`` hangs up; bytes it pipelines meanwhile are kept for later."""
    try:
        data = await client.io.receive(math.inf)
    except ClientGone:
        return
    if not data:
        return
    client.http.receive_data(data)
    # Pipelined requests wait in the parser; reading on would let a
    # client make us hold more than one receive's worth of them.
    await trio.sleep_forever()
