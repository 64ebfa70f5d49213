"""The hub: one task that watches every idle keep-alive client, so a waiting client costs no task.

A client connection's task serves requests until the connection falls idle
(its last answer sent, nothing of the next request read). Then, instead of
parking in ``wait_readable``, the task hands the connection to the hub and
ends. The hub holds the idle sockets in an epoll set of its own (each one
armed once, ``EPOLLONESHOT``), and one ``wait_readable`` on that set's
descriptor stands for all of them: a busy front-end finds many clients ready
per wake-up and reads them in one pass.

What the hub reads goes to the connection's ``hub_readable``, which answers
the common request (a GET for a worker with room on a multiplexed connection)
from callbacks, with no task at all (see ``ClientConnection`` in
``_client.py``), and starts a task for anything else. The hub owns the
connections it holds: it closes them at their deadlines (keep-alive or header
timeout), when the client hangs up, and when the front-end stops.
"""

from __future__ import annotations

import logging
import os
import select
import typing

import trio

from ._site import Site

__all__ = ["Hub", "HUB_AVAILABLE", "HubClient"]

log = logging.getLogger("fcgi_cluster.frontend")

#: epoll is Linux's; elsewhere every connection keeps its own task.
HUB_AVAILABLE = hasattr(select, "epoll")

_ARM = getattr(select, "EPOLLIN", 1) | getattr(select, "EPOLLONESHOT", 0)


class HubClient(typing.Protocol):
    """What the hub needs of a client connection."""

    fd: int
    #: Owned by the hub (set by it).
    in_hub: bool
    #: In the hub's epoll set (set by it).
    armed: bool

    def idle_timeout(self) -> float: ...
    def timeout_answer(self) -> bytes: ...
    def hub_readable(self) -> None: ...
    def drop_answer(self) -> None: ...
    def close_socket(self) -> None: ...


class Hub:
    """The idle client connections of one front-end process, watched by one task.

    Args:
        site: the front-end's, for its deadlines and connection count.
        nursery: where a connection's task is started again when one is needed.
    """

    def __init__(self, site: Site, nursery: trio.Nursery) -> None:
        self.site = site
        self.nursery = nursery
        self._epoll = select.epoll()
        #: Every connection the hub owns by descriptor: idle ones, and those
        #: whose request is being answered from callbacks.
        self._owned: dict[int, HubClient] = {}

    def __len__(self) -> int:
        return len(self._owned)

    def take(self, conn: HubClient) -> None:
        """Own a new connection, before its first read (``hub_readable``), which arms it if need be."""
        self._owned[conn.fd] = conn
        conn.in_hub = True

    def adopt(self, conn: HubClient) -> None:
        """Take ``conn`` (idle, or holding part of a head) and wake when it is readable or due."""
        fd = conn.fd
        self._owned[fd] = conn
        conn.in_hub = True
        self.site.deadlines.watch_read(conn, trio.current_time() + conn.idle_timeout())  # type: ignore[arg-type]
        if conn.armed:
            self._epoll.modify(fd, _ARM)
        else:
            self._epoll.register(fd, _ARM)
            conn.armed = True

    def release(self, conn: HubClient) -> None:
        """Give ``conn`` back to a task of its own (the hub no longer watches or closes it)."""
        self._owned.pop(conn.fd, None)
        self.site.deadlines.forget_read(conn)  # type: ignore[arg-type]
        conn.in_hub = False

    def close(self, conn: HubClient) -> None:
        """Close a connection the hub owns: its answer in progress is dropped, its slot freed."""
        if self._owned.get(conn.fd) is not conn:
            return
        self.release(conn)
        conn.drop_answer()
        try:
            self._epoll.unregister(conn.fd)
        except OSError:
            pass
        self.site.connections.release()
        conn.close_socket()

    def expire(self, conn: HubClient) -> None:
        """A deadline passed: a client that sent part of a head gets 408, an idle one is just closed."""
        answer = conn.timeout_answer()
        if answer:
            try:
                os.write(conn.fd, answer)
            except OSError:
                pass
        self.close(conn)

    async def run(self) -> None:
        """Watch the adopted connections until cancelled; then close them."""
        epoll = self._epoll
        owned = self._owned
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll)
                for fd, _ in epoll.poll(0):
                    conn = owned.get(fd)
                    if conn is None:
                        continue
                    try:
                        conn.hub_readable()
                    except Exception:
                        # A bug of ours costs this connection only.
                        log.exception("client connection failed")
                        self.close(conn)
        finally:
            for conn in list(owned.values()):
                self.close(conn)
            epoll.close()
