"""The worker server: accept FastCGI connections and serve one app on them.

``serve`` is the trio-level server (tests and supervisors ``await
nursery.start(serve, ...)``); ``run_worker`` is the process entry point with
signals: SIGTERM or SIGINT stop accepting, let in-flight requests finish within
``graceful_timeout``, then cancel what is left; SIGUSR1 reopens the access and
slow logs (php-fpm's log rotation signal).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

import trio

from .._accept import accept_loop
from .._address import Address, bound_address, parse_address
from .._limits import raise_open_file_limit
from ._app import app_interface
from ._asgi import ASGIHandler, Lifespan
from ._config import WorkerConfig
from ._connection import WorkerConnection
from ._features import PoolFeatures
from ._request_logs import reopen_logs
from ._threads import ThreadPool
from ._wsgi import WSGIHandler

__all__ = ["serve", "run_worker", "open_listener", "ListenError"]

log = logging.getLogger("fcgi_cluster.worker")


class ListenError(Exception):
    """The listen address cannot be bound (in use, bad path, no permission)."""


def open_listener(address: Address, backlog: int) -> socket.socket:
    """A bound, listening socket for ``address`` (unix sockets replace a stale file).

    Raises:
        ListenError: with a one-line reason.
    """
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    try:
        if address.is_unix:
            assert address.path is not None
            try:
                if os.path.exists(address.path) and _is_stale_socket(address.path):
                    os.unlink(address.path)
            except OSError:
                pass
            sock.bind(address.path)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if address.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address.host, address.port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        raise ListenError(f"cannot listen on {address}: {reason}") from None
    return sock


def _is_stale_socket(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        return True
    finally:
        probe.close()
    return False


class _Admission:
    """Room for one more connection (the ``slots`` of ``accept_loop``).

    Fewer than ``max_conns`` connections are open; and, in a process that
    stops after a number of requests (``pm.max_requests``), fewer connections
    wait for their first request than the requests it will still start. Every
    connection accepted is then served at least one request: one that would
    not be is left in the kernel's queue, for a sibling or this process's
    successor, as php-fpm's children accept one connection at a time.
    """

    def __init__(self, max_conns: int, requests_left: Callable[[], int | None],
                 connections: set[WorkerConnection]) -> None:
        self._free = max_conns
        self._requests_left = requests_left
        self._connections = connections
        #: Accepted, their task not started yet (not in ``connections``).
        self.starting = 0
        self._lot = trio.lowlevel.ParkingLot()

    @property
    def value(self) -> int:
        if not self._free:
            return 0
        left = self._requests_left()
        if left is None:
            return self._free
        # Cheap first: every open connection counted as waiting.
        if self.starting + len(self._connections) < left:
            return self._free
        waiting = self.starting + sum(1 for conn in self._connections if conn.waiting_for_first_request)
        return self._free if waiting < left else 0

    def acquire_nowait(self) -> None:
        self._free -= 1

    async def acquire(self) -> None:
        while not self.value:
            await self._lot.park()
        self.acquire_nowait()

    def release(self) -> None:
        """A connection is over (or was not accepted after all): wake a waiting accept."""
        self._free += 1
        if self._lot:
            self._lot.unpark_all()

    def accepted(self) -> None:
        """A connection was accepted: its task is about to start."""
        self.starting += 1

    def started(self) -> None:
        """An accepted connection's task is running (it is in ``connections``)."""
        self.starting -= 1


class _Server:
    """The connections of one worker, so that a stop can drain them."""

    def __init__(self, handler: Any, config: WorkerConfig, features: PoolFeatures) -> None:
        self.handler = handler
        self.config = config
        self.features = features
        self.connections: set[WorkerConnection] = set()
        self.admission = _Admission(config.max_conns, config.hooks.requests_left, self.connections)
        self.draining = False
        #: Set once draining and every connection has closed.
        self.idle = trio.Event()

    async def accept_loop(self, sock: socket.socket, nursery: trio.Nursery) -> None:
        """Accept connections on ``sock`` into ``nursery`` while there is room (``_Admission``).

        Raises:
            trio.ClosedResourceError: the listener was closed (a stop).
        """
        admission = self.admission

        def start(stream: trio.SocketStream) -> None:
            admission.accepted()
            nursery.start_soon(self._handle, stream)

        await accept_loop(sock, admission, start)

    async def _handle(self, stream: trio.SocketStream) -> None:
        # Until the connection is in self.connections (no checkpoint before),
        # the admission counted it as starting.
        self.admission.started()
        peer = ""
        conn: WorkerConnection | None = None
        try:
            if stream.socket.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    # (trio's SocketStream has set TCP_NODELAY already.)
                    host, port = stream.socket.getpeername()[:2]
                except OSError:  # reset before we got here
                    host, port = "", 0
                peer = "%s:%d" % (host, port)
                if not self.features.allows(host):
                    # listen.allowed_clients: closed before a byte is read.
                    log.warning("connection from %s refused: not in listen.allowed_clients",
                                host or "a vanished peer")
                    await trio.aclose_forcefully(stream)
                    return
            self.features.connection_accepted()
            conn = WorkerConnection(stream, self.handler, self.config, peer)
            self.connections.add(conn)
            if self.draining:
                conn.drain()
            await conn.run()
        except Exception:
            # One connection's failure, whatever it is, must not stop the
            # others: log it and let this connection go.
            log.exception("connection from %s failed", peer or "a unix socket peer")
        finally:
            if conn is not None:
                self.connections.discard(conn)
            self.admission.release()
            if self.draining and not self.connections and not self.admission.starting:
                self.idle.set()

    def drain(self) -> None:
        """Close every connection once its in-flight requests are answered.

        A connection accepted whose task has not started yet is drained as it
        starts (it is served its first request).
        """
        self.draining = True
        for conn in list(self.connections):
            conn.drain()
        if not self.connections and not self.admission.starting:
            self.idle.set()


async def serve(
    app: Any,
    listen: str | Address | socket.socket,
    config: WorkerConfig = WorkerConfig(),
    *,
    stop: trio.Event | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` (WSGI or ASGI) over FastCGI until cancelled or ``stop`` is set.

    Args:
        app: a WSGI callable or an ASGI 3 app.
        listen: an address (``host:port``, ``[v6]:port``, a unix path) or a
            listening socket made by the caller (e.g. inherited from a master).
        config: limits and timeouts.
        stop: when set, stop accepting, let in-flight requests finish within
            ``config.graceful_timeout`` (then cancel them), and return.
        task_status: ``started`` with the bound address, once accepting.

    Raises:
        ListenError: the address cannot be bound.
        OSError: the access log or slow log cannot be opened.
        RuntimeError: an ASGI app's lifespan startup failed.
        StoreError, SessionConfigError: ``config.session`` is set and its store cannot be opened.
    """
    if isinstance(listen, socket.socket):
        sock = listen
    else:
        address = parse_address(listen) if isinstance(listen, str) else listen
        sock = open_listener(address, config.backlog)
    where = bound_address(sock)
    try:
        features = PoolFeatures(config, sock)
    except BaseException:
        if sock is not listen:
            sock.close()
        raise
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    pool: ThreadPool | None = None
    lifespan: Lifespan | None = None
    store: Any = None
    loop_store: Any = None
    try:
        if config.session is not None:
            # One store client per process, opened before the first request.
            from ..sessions import open_session_store

            store = await trio.to_thread.run_sync(
                functools.partial(open_session_store, config.session, check=config.session_check))
        async with trio.open_nursery() as nursery:
            if store is not None:
                from ..sessions import session_middleware

                # Its connections' tasks live in this nursery, which outlasts every request.
                loop_store = store.loop_store(nursery)
                app = session_middleware(app, store, config.session, app_interface(app), loop_store)
            if app_interface(app) == "asgi":
                lifespan = Lifespan(app)
                await nursery.start(lifespan.run)
                handler: Any = ASGIHandler(app, config.root_path, lifespan.state, {"fcgi_cluster.listen": where})
            else:
                # threads = 0 runs the app on this thread; one pool thread is
                # kept for the requests whose body is too large to wait for.
                pool = ThreadPool(config.threads or 1)
                nursery.start_soon(pool.watch)
                handler = WSGIHandler(app, pool, config, {"fcgi_cluster.listen": where})
                nursery.start_soon(handler.flusher.run)
            # Ping/status pages, hooks, logs and timeouts around every request.
            handler = features.wrap(handler)
            if features.needs_watch:
                nursery.start_soon(features.watch)
            server = _Server(handler, config, features)
            async with trio.open_nursery() as connections:
                accepting = trio.CancelScope()

                async def accept() -> None:
                    with accepting:
                        try:
                            await server.accept_loop(sock, connections)
                        except trio.ClosedResourceError:
                            # The stop closed the listener before this task
                            # saw its cancellation: that is the stop, not a failure.
                            if not accepting.cancel_called:
                                raise

                connections.start_soon(accept)
                task_status.started(where)
                await (stop.wait() if stop is not None else trio.sleep_forever())
                accepting.cancel()
                await listener.aclose()
                server.drain()
                with trio.move_on_after(config.graceful_timeout) as grace:
                    await server.idle.wait()
                if grace.cancelled_caught:
                    log.warning("graceful stop: %d connections still busy after %.0f s; cancelling them",
                                len(server.connections), config.graceful_timeout)
                connections.cancel_scope.cancel()
            if lifespan is not None:
                await lifespan.shutdown(config.graceful_timeout)
            nursery.cancel_scope.cancel()
    finally:
        if pool is not None:
            pool.close()
        features.close()
        if loop_store is not None:
            loop_store.close()
        if store is not None:
            store.close()
        await listener.aclose()


def run_worker(app: Any, listen: str | Address | socket.socket, config: WorkerConfig = WorkerConfig()) -> None:
    """Run a worker process until SIGTERM/SIGINT, then stop gracefully.

    A second signal during the graceful stop cancels what is left at once.

    Raises:
        ListenError: the address cannot be bound (raised before anything runs).
        RuntimeError: an ASGI app's lifespan startup failed.
    """
    raise_open_file_limit(config.max_conns, log=log)
    if not isinstance(listen, socket.socket):
        listen = open_listener(parse_address(listen) if isinstance(listen, str) else listen, config.backlog)

    async def main() -> None:
        stop = trio.Event()
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) as signals:
            async with trio.open_nursery() as nursery:

                async def serve_until_stopped(task_status: Any) -> None:
                    await serve(app, listen, config, stop=stop, task_status=task_status)
                    nursery.cancel_scope.cancel()

                where = await nursery.start(serve_until_stopped)
                log.info("worker %d serving %s on %s", os.getpid(), app_interface(app).upper(), where)
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if signum == signal.SIGUSR1:
                        log.info("SIGUSR1: reopening the access and slow logs")
                        reopen_logs()
                    elif stop.is_set():
                        log.warning("second %s: stopping now", name)
                        nursery.cancel_scope.cancel()
                    else:
                        log.info("%s: finishing in-flight requests, then stopping", name)
                        stop.set()

    try:
        trio.run(main)
    except BaseExceptionGroup as group:
        # One failure (a lifespan error) surfaces as itself, not as a nursery group.
        leaves = list(_leaves(group))
        if len(leaves) == 1:
            raise leaves[0] from None
        raise


def _leaves(group: BaseExceptionGroup):
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
