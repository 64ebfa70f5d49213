"""Upstream TCP connections notice a vanished host: the socket options open_connection sets.

The end-to-end proof (a link cut under load, no request held past a few seconds)
is tests/e2e/test_hosts.py; here, that the knob reaches the socket.
"""

from __future__ import annotations

import socket

import pytest
import trio

from fcgi_cluster.client import open_connection

pytestmark = pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="TCP_USER_TIMEOUT is Linux-only")


async def options_of(dead_peer_timeout: float | None) -> tuple[int, int, int, int, int]:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    kwargs = {} if dead_peer_timeout is None else {"dead_peer_timeout": dead_peer_timeout}
    try:
        async with open_connection(f"127.0.0.1:{port}", **kwargs) as conn:
            sock = conn._stream.socket
            return (
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
            )
    finally:
        await listener.aclose()


async def test_the_default_gives_a_silent_host_up_in_about_three_seconds():
    keepalive, idle, interval, count, user_timeout = await options_of(None)
    assert keepalive == 1 and idle == 1 and interval == 1 and count == 3
    assert user_timeout == 2000


async def test_a_longer_timeout_spaces_the_probes():
    keepalive, idle, interval, count, user_timeout = await options_of(9)
    assert (keepalive, idle, interval, count, user_timeout) == (1, 3, 3, 3, 9000)


async def test_zero_leaves_the_system_settings():
    keepalive, *_, user_timeout = await options_of(0)
    assert keepalive == 0 and user_timeout == 0
