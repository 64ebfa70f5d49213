"""How a connection to a worker notices that the worker's host vanished, or its process hung.

A host whose link is cut or that loses power sends no RST and no FIN: without
help a request in flight would wait read_timeout (60 s, as in nginx). TCP
keepalive with short intervals and TCP_USER_TIMEOUT make the kernel give the
connection up within a few seconds instead.

A worker process that is alive to the kernel but hung (stopped, its event loop
stuck) keeps its host answering TCP: for a multiplexing worker, a FastCGI
GET_VALUES ping when the connection has been silent with requests in flight
tells the two apart (``ping_loop``).
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import trio

from ._errors import PeerUnresponsive

if TYPE_CHECKING:
    from ._connection import Connection

#: Seconds of silence from the peer's host (not its app) after which a TCP
#: connection is given up: keepalive probes start after a third of it, every
#: third, and TCP_USER_TIMEOUT bounds unacknowledged data to all of it.
DEFAULT_DEAD_PEER_TIMEOUT = 2.0


def ping_due(in_flight: int, reads_then: int, reads_now: int, reader_paused: bool = False) -> bool:
    """The rule, checked every ping interval: requests wait and nothing was read since the last check.

    A reader paused for a caller that reads slowly (``Buffering.wait``) reads
    nothing by choice: that is no silence of the worker's.
    """
    return in_flight > 0 and reads_now == reads_then and not reader_paused


async def ping_loop(conn: Connection, interval: float, timeout: float) -> None:
    """Every ``interval`` s, ping a silent connection with requests in flight; no answer in ``timeout`` s kills it.

    Silence is counted in whole checks, so a ping leaves between ``interval``
    and twice ``interval`` after the last bytes read. A worker that answers
    proves its loop alive (its apps may still be slow: nothing is failed); one
    that does not gets the connection failed with ConnectionLost, and every
    request in flight on it fails over as next_upstream allows.

    Only for a worker that multiplexes (FCGI_MPXS_CONNS=1): it answers
    management records from its event loop while requests run, so an answer
    proves the loop alive however slow the app. A non-multiplexing worker
    (php-fpm) answers nothing while busy: it must never be pinged.
    """
    seen = conn._reads
    while True:
        await trio.sleep(interval)
        if not ping_due(len(conn._requests), seen, conn._reads, conn._reader_paused):
            seen = conn._reads
            continue
        answered = conn._ping()
        with trio.move_on_after(timeout):
            await answered.wait()
        # Bytes read meanwhile, or a reader that paused, prove nothing against
        # the worker: its answer is simply not read yet.
        if ping_due(len(conn._requests), seen, conn._reads, conn._reader_paused) and not answered.is_set():
            pending = len(conn._requests)
            conn._fail(
                PeerUnresponsive,
                f"{conn.address} did not answer a FastCGI ping within {timeout:g} s"
                f" with {pending} request(s) in flight: its process is hung",
            )
            return
        seen = conn._reads


def set_dead_peer_timeout(stream: trio.SocketStream, seconds: float) -> None:
    """Make a vanished host (no RST, no FIN: a cut link, a powered-off box) fail the connection in ``seconds``.

    The kernel sends keepalive probes once the connection has been silent for
    ``seconds / 3`` and then every ``seconds / 3``; three unanswered probes, or
    data unacknowledged for ``seconds`` (TCP_USER_TIMEOUT), reset it, and every
    request in flight on it gets ConnectionLost (retried elsewhere when
    next_upstream allows). The probes are answered by the peer's kernel, so a
    slow app on a live host is never mistaken for a dead one, and they carry no
    FastCGI bytes, so a non-multiplexing peer (php-fpm) is safe. Where an
    option does not exist (not Linux) the system's defaults stay.
    """
    interval = max(1, int(seconds / 3))
    options = [
        (trio.socket.SOL_SOCKET, trio.socket.SO_KEEPALIVE, 1),
        (trio.socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), interval),
        (trio.socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), interval),
        (trio.socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), 3),
        (trio.socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), int(seconds * 1000)),
    ]
    for level, option, value in options:
        if option is not None:
            stream.setsockopt(level, option, value)
