"""Accepting connections: all that wait, in one wake-up of the listening socket.

trio's ``SocketListener.accept`` ends every call with a checkpoint (a trip
through the scheduler), and so does a ``Semaphore.acquire`` that need not
wait: two task switches per connection, paid on every request by a peer that
opens a connection per request (nginx's FastCGI default, HTTP clients without
keep-alive). ``accept_loop`` reads the listening socket itself, takes the
connections waiting, and waits only when there are none.

Error handling: an accept error that concerns the one connection (it went away
first) is skipped, as trio's listener does; running out of descriptors or
memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) is logged and accepting pauses for
``PAUSE_WHEN_OUT`` seconds, as nginx does, rather than ending the server.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable
from typing import Protocol

import trio

__all__ = ["accept_loop", "Slots", "ACCEPT_BATCH", "PAUSE_WHEN_OUT"]

log = logging.getLogger("fcgi_cluster")

#: Connections taken per wake-up, at most: a burst is taken in a few, and the
#: other tasks get their turn between them.
ACCEPT_BATCH = 32

#: Seconds accepting pauses when the process is out of descriptors or memory.
PAUSE_WHEN_OUT = 0.1

#: accept() errors that concern the connection being accepted, not the
#: listener: the ones trio's own ``SocketListener`` skips.
_PEER_ERRORS = frozenset(
    getattr(errno, name) for name in (
        "EPERM", "ECONNABORTED", "EPROTO", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN", "ENONET",
        "EHOSTUNREACH", "EOPNOTSUPP", "ENETUNREACH", "ENOSR", "ESOCKTNOSUPPORT",
        "EPROTONOSUPPORT", "ETIMEDOUT", "ECONNRESET",
    ) if hasattr(errno, name)
)

_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Slots(Protocol):
    """Where ``accept_loop`` takes each connection's room: a ``trio.Semaphore``, or anything alike."""

    @property
    def value(self) -> int: ...

    def acquire_nowait(self) -> None: ...

    async def acquire(self) -> None: ...

    def release(self) -> None: ...


async def accept_loop(
    sock: socket.socket, slots: Slots, start: Callable[[trio.SocketStream], object]
) -> None:
    """Accept connections on ``sock`` until cancelled, each once ``slots`` has room.

    Args:
        sock: a listening socket (made non-blocking here).
        slots: taken for each connection before it is accepted (at none left,
            new clients wait in the kernel's backlog); whoever serves the
            connection releases it when it ends.
        start: called with each accepted connection; it must not block (it
            starts the connection's task).

    Raises:
        trio.ClosedResourceError: the listening socket was closed (a stop).
        OSError: accepting failed for a reason other than one connection's.
    """
    sock.setblocking(False)
    while True:
        await trio.lowlevel.wait_readable(sock)
        for _ in range(ACCEPT_BATCH):
            if slots.value:
                slots.acquire_nowait()
            else:
                await slots.acquire()
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                slots.release()
                break
            except OSError as exc:
                slots.release()
                if exc.errno == errno.EBADF or sock.fileno() < 0:
                    raise trio.ClosedResourceError("the listening socket was closed") from None
                if exc.errno in _PEER_ERRORS:
                    continue
                if exc.errno in _OUT_OF_RESOURCES:
                    log.warning("cannot accept connections: %s; pausing for %g s", exc.strerror, PAUSE_WHEN_OUT)
                    await trio.sleep(PAUSE_WHEN_OUT)
                    break
                raise
            start(trio.SocketStream(trio.socket.from_stdlib_socket(conn)))
