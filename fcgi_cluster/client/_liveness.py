"""How a connection to a worker notices that the worker's host vanished.

A host whose link is cut or that loses power sends no RST and no FIN: without
help a request in flight would wait read_timeout (60 s, as in nginx). TCP
keepalive with short intervals and TCP_USER_TIMEOUT make the kernel give the
connection up within a few seconds instead.
"""

from __future__ import annotations

import socket

import trio

#: Seconds of silence from the peer's host (not its app) after which a TCP
#: connection is given up: keepalive probes start after a third of it, every
#: third, and TCP_USER_TIMEOUT bounds unacknowledged data to all of it.
DEFAULT_DEAD_PEER_TIMEOUT = 2.0


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
