"""The front-end's trio server: listening sockets, accepting clients, and one process's run.

``FrontendServer`` is the ``Site`` (routes, upstreams, limits, logs) plus
what takes clients in: an accept loop per listening socket, TLS handshakes,
and the hub that holds idle connections. Each client is then a
``ClientConnection`` (``_client``), owned by the hub or by a task of its own.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Sequence

import trio

from .._accept import accept_loop
from ._cgi import ConnectionParams
from ._client import ClientConnection
from ._client_io import ClientIO
from ._hub import HUB_AVAILABLE, Hub
from ._site import Site
from ._upstream import run_health_checks

__all__ = ["FrontendServer", "serve_frontend"]

log = logging.getLogger("fcgi_cluster.frontend")


class FrontendServer(Site):
    """Everything one front-end process serves, and the accepting of its clients.

    Made from a ``ClusterConfig``; ``serve`` runs it on listening sockets.
    """

    def __init__(self, config: object, nursery: trio.Nursery) -> None:
        super().__init__(config, nursery)
        fe = self.frontend
        #: Idle keep-alive connections' watcher, once serving (see ``_hub``).
        self.hub: Hub | None = None
        self._accepting = trio.CancelScope()
        self._ssl_context: ssl.SSLContext | None = None
        if fe.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(fe.tls.cert, fe.tls.key)
            context.set_alpn_protocols(["http/1.1"])
            self._ssl_context = context

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

    def stop_accepting(self) -> None:
        """Stop taking new clients (shutdown); connections already open go on."""
        self._accepting.cancel()

    async def _accept_loop(self, sock: socket.socket, nursery: trio.Nursery) -> None:
        local = sock.getsockname()
        # At max_connections, stop accepting: new clients wait in the
        # kernel's backlog instead of costing memory here.
        await accept_loop(sock, self.connections, lambda stream: self._accepted(stream, local, nursery))

    def _connection(self, stream: trio.abc.Stream, transport: trio.SocketStream,
                    params: ConnectionParams) -> ClientConnection:
        io = ClientIO(stream, transport, self.deadlines, self.frontend.send_timeout)
        return ClientConnection(self, io, params, self.hub)

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
            conn = self._connection(stream, stream, self._connection_params(stream, local))
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

    async def _client_connection(self, stream: trio.SocketStream, local: tuple) -> ClientConnection | None:
        """A new client's connection, TLS handshake done (None if it did not finish in time)."""
        params = self._connection_params(stream, local)
        client: trio.abc.Stream = stream
        if self._ssl_context is not None:
            client = trio.SSLStream(stream, self._ssl_context, server_side=True)
            with trio.move_on_after(self.frontend.header_timeout) as scope:
                await client.do_handshake()
            if scope.cancelled_caught:
                return None
        return self._connection(client, stream, params)

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
