"""The front-end's trio server: listening sockets, accepting clients, and one process's run.

``FrontendServer`` holds the current ``Site`` (routes, upstreams, limits,
logs) plus what takes clients in: an accept loop per listening socket, TLS
handshakes, and the hub that holds idle connections. Each client is then a
``ClientConnection`` (``_client``), owned by the hub or by a task of its own,
which sees the site through a ``SiteView``.

``reload(config)`` (SIGHUP) swaps the site for new requests; the sockets,
the connections open and the requests in flight go on. A retired site's
worker connections that the new one does not use are closed once its last
request ends.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import socket
import ssl
import typing
from collections.abc import Sequence

import trio

from .._accept import accept_loop
from ._cgi import ConnectionParams
from ._client import ClientConnection
from ._client_io import ClientIO
from ._control import serve_control
from ._h2_connection import choose_protocol
from ._hub import HUB_AVAILABLE, Hub
from ._resolve import Resolutions, expand_config
from ._server_states import ServerStates
from ._site import Site, SiteView
from ._upstream import run_health_checks
from .edge._listeners import accept_proxied, client_params, listener_plan
from .edge._cache import purge_command

__all__ = ["FrontendServer", "serve_frontend", "RESTART_KEYS"]

#: [frontend] keys a reload cannot change in a running process: the
#: listening sockets and processes are made once (nginx rebinds; we keep
#: them and say so), the connection count bounds a semaphore already in
#: use, the TLS context and error log are set up at start, and so are the
#: control listener and the server-state file.
RESTART_KEYS = ("listen", "processes", "max_connections", "tls", "http2", "error_log", "control", "server_state_file")

log = logging.getLogger("fcgi_cluster.frontend")


class FrontendServer:
    """Everything one front-end process serves, and the accepting of its clients.

    Made from a ``ClusterConfig``; ``serve`` runs it on listening sockets,
    ``reload`` swaps in a new configuration.
    """

    def __init__(self, config: typing.Any, nursery: trio.Nursery, state_file: str | None = None) -> None:
        self._nursery = nursery
        #: Where control commands' states are kept ("" for nowhere): the
        #: file's ``server_state_file``, unless the process runner gives one.
        self.state_file = config.frontend.server_state_file if state_file is None else state_file
        #: Servers set by control commands (``_server_states``), kept over reloads.
        self.states = load_states(self.state_file)
        #: The configuration as the file has it, before ``states`` apply.
        self.file_config = config
        #: Servers' host names as last resolved (``_resolve``), kept over reloads.
        self.resolutions = Resolutions()
        #: Clients accepted so far (the status page's figure).
        self.accepted = 0
        #: The configuration new requests get.
        self.site = Site(self.states.apply(config), nursery)
        #: Sites replaced by a reload that still have requests in flight.
        self._retiring: list[Site] = []
        self._health: dict[int, trio.CancelScope] = {}
        fe = self.frontend
        #: Idle keep-alive connections' watcher, once serving (see ``_hub``).
        self.hub: Hub | None = None
        self._accepting = trio.CancelScope()
        #: Set by ``stop_accepting``: HTTP/2 connections say GOAWAY at once.
        self.stopping = trio.Event()
        self._ssl_context: ssl.SSLContext | None = None
        if fe.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(fe.tls.cert, fe.tls.key)
            context.set_alpn_protocols(["h2", "http/1.1"] if fe.http2 is not False else ["http/1.1"])
            self._ssl_context = context
        #: HTTP/2: on by default with TLS (ALPN), on cleartext only when asked (h2c, by its preface).
        self._http2 = fe.http2 is True or (fe.http2 == "auto" and fe.tls is not None)

    # The current site's parts, for the hub and for callers that look.
    @property
    def config(self) -> object:
        return self.site.config

    @property
    def frontend(self) -> typing.Any:
        return self.site.frontend

    @property
    def upstreams(self) -> dict[str, typing.Any]:
        return self.site.upstreams

    @property
    def routes(self) -> typing.Any:
        return self.site.routes

    @property
    def deadlines(self) -> typing.Any:
        return self.site.deadlines

    @property
    def connections(self) -> trio.Semaphore:
        return self.site.connections

    @property
    def access_log(self) -> typing.Any:
        return self.site.access_log

    @property
    def active_requests(self) -> int:
        """Requests being answered, under every configuration still in use."""
        return self.site.active_requests + sum(site.active_requests for site in self._retiring)

    def sites(self) -> tuple[Site, ...]:
        """The current site and those a reload replaced that still have requests in flight."""
        return (self.site, *self._retiring)

    async def wait_idle(self) -> None:
        """Return once no request is being answered, under any configuration."""
        while self.active_requests:
            for site in (self.site, *self._retiring):
                await site.wait_idle()

    def start_health_checks(self) -> None:
        """Run the active health checks of the current site's upstreams that have none running."""
        for upstream in self.site.upstreams.values():
            if upstream.config.health_check is not None and id(upstream) not in self._health:
                scope = self._health[id(upstream)] = trio.CancelScope()
                self._nursery.start_soon(self._health_checks, upstream, scope)

    async def _health_checks(self, upstream: typing.Any, scope: trio.CancelScope) -> None:
        with scope:
            await run_health_checks(upstream)

    def reload(self, config: typing.Any) -> list[str]:
        """New requests get ``config``; returns the [frontend] keys left as they were (``RESTART_KEYS``).

        Upstreams with unchanged settings are carried over whole, and worker
        addresses with unchanged connection settings keep their connections.
        Requests in flight finish under the site they began with.
        """
        self.file_config = config
        config = expand_config(self.states.apply(config), self.resolutions)
        old = self.site
        kept = [key for key in RESTART_KEYS if getattr(config.frontend, key) != getattr(old.frontend, key)]
        if kept:
            frontend = dataclasses.replace(config.frontend, **{key: getattr(old.frontend, key) for key in kept})
            config = dataclasses.replace(config, frontend=frontend)
        new = Site(config, self._nursery, previous=old)
        self.site = new
        for upstream in old.retired_upstreams(new):
            scope = self._health.pop(id(upstream), None)
            if scope is not None:
                scope.cancel()
        self.start_health_checks()
        self._retiring.append(old)
        self._nursery.start_soon(self._retire, old)
        return kept

    def control(self, line: str) -> str:
        """Carry out one control command (``ServerStates.execute``) for new requests; returns what was done.

        The states are written to ``server_state_file`` when there is one,
        then ``on_states_changed`` (set by the process runner) tells sibling
        processes to read it.

        Raises:
            ControlError: the command cannot be carried out; nothing changed.
        """
        if line.split(" ", 1)[0] == "purge":
            return purge_command(self.site, line)
        done = self.states.execute(line, self.file_config)
        path = self.state_file
        if path:
            save_states(path, self.states)
        self.reload(self.file_config)
        log.info("control: %s", done)
        if self.on_states_changed is not None:
            self.on_states_changed()
        return done

    #: Called after a control command changed the states (None: nobody to tell).
    on_states_changed: typing.Callable[[], None] | None = None
    #: The sibling processes' status reports (``_status_share``), for the control listener.
    status_share: typing.Any = None

    def reload_resolved(self) -> None:
        """Serve the addresses the servers' host names now resolve to (``Resolutions.run``).

        An answer the balancer refuses (``ValueError``) leaves the running
        configuration as it is, logged.
        """
        try:
            self.reload(self.file_config)
        except ValueError as exc:
            log.warning("resolve: the new addresses cannot be served (%s); the running configuration stays", exc)

    def reload_states(self) -> None:
        """Read ``server_state_file`` again and serve what it sets (a sibling process ran a command)."""
        path = self.state_file
        if path:
            self.states = load_states(path)
            self.reload(self.file_config)

    async def _retire(self, old: Site) -> None:
        """Once ``old`` has no request in flight: close what no site in use shares with it."""
        await old.wait_idle()
        self._retiring.remove(old)
        in_use = (self.site, *self._retiring)
        servers = {id(server) for site in in_use for upstream in site.upstreams.values() for server in upstream.servers}
        for upstream in old.upstreams.values():
            for server in upstream.servers:
                if id(server) not in servers:
                    server.close_all()
        if old.access_log is not None and all(site.access_log is not old.access_log for site in in_use):
            old.access_log.close()

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
                    for index, sock in enumerate(sockets):
                        acceptors.start_soon(self._accept_loop, sock, connections, index)
                    task_status.started()
            # Accepting has stopped: close the sockets so new clients are
            # refused rather than left in a backlog nobody reads.
            for sock in sockets:
                trio.lowlevel.notify_closing(sock)
                sock.close()
            await trio.sleep_forever()

    def stop_accepting(self) -> None:
        """Stop taking new clients (shutdown); connections already open go on."""
        self._accepting.cancel()
        self.stopping.set()

    async def _accept_loop(self, sock: socket.socket, nursery: trio.Nursery, index: int = 0) -> None:
        local = sock.getsockname()
        # At max_connections, stop accepting: new clients wait in the
        # kernel's backlog instead of costing memory here.
        await accept_loop(sock, self.connections, lambda stream: self._accepted(stream, local, nursery, index))

    def _connection(self, stream: trio.abc.Stream, transport: trio.SocketStream,
                    params: tuple[ConnectionParams, object]) -> ClientConnection:
        io = ClientIO(stream, transport, self.deadlines, self.frontend.send_timeout)
        conn = ClientConnection(self._view(), io, params[0], self.hub)  # type: ignore[arg-type]
        conn.real_ip = params[1]
        return conn

    def _view(self) -> SiteView:
        return SiteView(lambda: self.site)

    def _accepted(self, stream: trio.SocketStream, local: tuple, nursery: trio.Nursery, index: int = 0,
                  proxied: object = None) -> None:
        """A new client: to the hub when it can hold it (plain TCP), else to a task of its own.

        The hub reads the first request now (it usually came with the
        connection) and answers it as it answers any other, so a client that
        sends one request per connection costs no task either. On a listener
        with ``proxy_protocol`` a task reads the PROXY header (``proxied``) first.
        """
        plan = listener_plan(self.site.listeners, index)
        if proxied is None:
            self.accepted += 1
            if plan.proxy_protocol:
                take = functools.partial(self._accepted, stream, local, nursery, index)
                nursery.start_soon(accept_proxied, self, stream, take)
                return
        hub = self.hub
        if hub is None or self._ssl_context is not None or self._http2:
            nursery.start_soon(self._connection_task, stream, local, plan, proxied)
            return
        try:
            conn = self._connection(stream, stream, self._connection_params(stream, local, plan, proxied))
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

    async def _connection_task(self, stream: trio.SocketStream, local: tuple, plan: object, proxied: object) -> None:
        conn = None
        try:
            conn = await self._client_connection(stream, local, plan, proxied)
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

    async def _client_connection(self, stream: trio.SocketStream, local: tuple, plan: object,
                                 proxied: object) -> ClientConnection | None:
        """A new client's connection, TLS handshake done (None if it did not finish in time)."""
        params = self._connection_params(stream, local, plan, proxied)
        client: trio.abc.Stream = stream
        if self._ssl_context is not None:
            client = trio.SSLStream(stream, self._ssl_context, server_side=True)
            with trio.move_on_after(self.frontend.header_timeout) as scope:
                await client.do_handshake()
            if scope.cancelled_caught:
                return None
        conn = self._connection(client, stream, params)
        return await choose_protocol(conn, self._http2, self._view, self.stopping)  # type: ignore[return-value]

    def _connection_params(self, stream: trio.SocketStream, local: tuple, plan: object,
                           proxied: object) -> tuple[ConnectionParams, object]:
        """The connection's params, and its ``ClientAddress`` if requests' header fields set it (``edge``)."""
        return client_params(plan, self._socket_params(stream, local), proxied)  # type: ignore[arg-type]

    def _socket_params(self, stream: trio.SocketStream, local: tuple) -> ConnectionParams:
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

def load_states(path: str) -> ServerStates:
    """The server-state file's states; empty when there is none (or it cannot be read: logged)."""
    if not path:
        return ServerStates()
    try:
        with open(path, encoding="utf-8") as file:
            return ServerStates.from_json(file.read())
    except FileNotFoundError:
        return ServerStates()
    except (OSError, ValueError) as exc:
        log.error("server_state_file %s: %s; starting with the servers as the cluster file has them", path, exc)
        return ServerStates()


def save_states(path: str, states: ServerStates) -> None:
    """Write the server-state file whole (a rename, so a reader never sees half of it)."""
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as file:
        file.write(states.to_json())
    os.replace(temporary, path)


async def serve_frontend(
    config: object,
    sockets: Sequence[socket.socket],
    *,
    control: socket.socket | None = None,
    state_file: str | None = None,
    task_status: trio.TaskStatus[FrontendServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one front-end process on already-bound listening sockets until cancelled.

    Args:
        config: a ``ClusterConfig``.
        sockets: bound, listening stdlib sockets (shared with sibling processes or not).
        control: the bound control listener's socket, if this process serves it.
        state_file: the server-state file, when not the configuration's (``processes > 1``).

    Resource handling: upstream connections and client connections live in
    this function's nursery and are closed when it is cancelled.
    """
    async with trio.open_nursery() as nursery:
        server = FrontendServer(config, nursery, state_file)
        server.start_health_checks()
        nursery.start_soon(server.resolutions.run, server)
        try:
            await nursery.start(server.serve, sockets)
            if control is not None:
                await nursery.start(serve_control, control, server)
            task_status.started(server)
            await trio.sleep_forever()
        finally:
            logs = {}
            for site in server.sites():
                for upstream in site.upstreams.values():
                    upstream.close_all()
                if site.access_log is not None:
                    logs[id(site.access_log)] = site.access_log
            for access_log in logs.values():
                access_log.close()
