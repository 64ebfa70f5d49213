"""A multiplexed connection pings a silent worker (FCGI_GET_VALUES) and gives up one that does not answer.

The worker here is the project's ServerConnection over a real loopback socket
(tests/client/_fake_worker.py): it answers GET_VALUES from its loop, as our
worker does, while its "app" takes its time, or stops reading altogether like
a stopped process. The end-to-end proof with SIGSTOP is tests/e2e/test_worker_liveness.py.
"""

from __future__ import annotations

import struct

import pytest
import trio

from fcgi_cluster.client import Buffering, PeerUnresponsive, open_connection
from fcgi_cluster.client._liveness import ping_due
from fcgi_cluster.frontend._upstream import Server
from fcgi_cluster.protocol import ConnectionClosed, EndRequest, Request, Stdin, Stdout
from tests.client._fake_worker import Peer, fake_worker, ok

GET_VALUES_RESULT = 10
PARAMS = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/"}


def records_of_type(data: bytes, record_type: int) -> int:
    count, offset = 0, 0
    while offset + 8 <= len(data):
        _, kind, _, length, padding = struct.unpack_from(">BBHHB", data, offset)
        count += kind == record_type
        offset += 8 + length + padding
    return count


class CountingPeer(Peer):
    """A Peer that counts the GET_VALUES it answered."""

    answered = 0

    async def send_bytes(self, data: bytes) -> None:
        type(self).answered += records_of_type(data, GET_VALUES_RESULT)
        await super().send_bytes(data)


def slow_handler(delay: float, **options: object):
    """Answer each request after ``delay`` s, reading (and answering pings) meanwhile."""

    async def handler(stream: trio.SocketStream) -> None:
        peer = CountingPeer(stream, **options)

        async def answer(request_id: int) -> None:
            await trio.sleep(delay)
            await peer.respond(request_id, ok(b"slow but alive"))

        async with trio.open_nursery() as nursery:
            while True:
                event = await peer.next_event()
                if isinstance(event, ConnectionClosed):
                    nursery.cancel_scope.cancel()
                    return
                if isinstance(event, Stdin) and not event.data:
                    nursery.start_soon(answer, event.request_id)

    return handler


async def hung_handler(stream: trio.SocketStream) -> None:
    """Take one request, then read nothing more: a stopped process."""
    peer = Peer(stream)
    while not isinstance(await peer.next_event(), (Request, ConnectionClosed)):
        pass
    await trio.sleep(3600)


def test_the_rule_pings_only_a_silent_connection_with_requests_in_flight():
    assert ping_due(in_flight=2, reads_then=7, reads_now=7)
    assert not ping_due(in_flight=2, reads_then=7, reads_now=8)
    assert not ping_due(in_flight=0, reads_then=7, reads_now=7)
    assert not ping_due(in_flight=2, reads_then=7, reads_now=7, reader_paused=True)


async def test_a_worker_that_stops_reading_fails_its_requests_after_the_ping_timeout():
    async with fake_worker(hung_handler) as address, open_connection(address) as conn:
        conn.watch_liveness(0.3, 0.5)
        start = trio.current_time()
        with trio.fail_after(10):  # read_timeout is the caller's; 60 s in the front-end
            with pytest.raises(PeerUnresponsive, match="did not answer a FastCGI ping within 0.5 s"):
                await conn.request(PARAMS)
        assert trio.current_time() - start >= 0.8  # a silent interval, then the whole timeout
        assert not conn.is_usable


async def test_a_slow_app_on_a_live_worker_is_pinged_and_answered_and_kept():
    CountingPeer.answered = 0
    async with fake_worker(slow_handler(2.5)) as address, open_connection(address) as conn:
        conn.watch_liveness(0.3, 0.5)
        response = await conn.request(PARAMS)
        assert response.status == 200 and response.body == b"slow but alive"
        assert CountingPeer.answered >= 2  # pinged while silent, answered every time
        assert conn.is_usable


async def test_an_idle_connection_is_never_pinged():
    CountingPeer.answered = 0
    async with fake_worker(slow_handler(0)) as address, open_connection(address) as conn:
        conn.watch_liveness(0.2, 0.5)
        await trio.sleep(1.5)
        assert CountingPeer.answered == 0 and conn.is_usable


async def test_a_reader_paused_for_a_slow_caller_is_not_taken_for_a_hung_worker():
    # Buffering.wait: the reader stops reading while the caller holds its
    # answer; the worker is blocked sending and cannot read the ping either.
    big = bytes(range(256)) * 4096  # 1 MiB

    async def handler(stream: trio.SocketStream) -> None:
        peer = Peer(stream)
        got = await peer.next_request()
        assert got is not None
        rid = got[0].request_id
        await peer.send(Stdout(rid, ok(b"")))
        for at in range(0, len(big), 32768):
            await peer.send(Stdout(rid, big[at:at + 32768]))
        await peer.send(EndRequest(rid))
        await trio.sleep_forever()

    buffering = Buffering(memory=64 * 1024, wait=True)
    async with fake_worker(handler) as address, open_connection(address, buffering=buffering) as conn:
        conn.watch_liveness(0.2, 0.3)
        with trio.fail_after(20):
            async with conn.stream(PARAMS) as response:
                await trio.sleep(2.0)  # many intervals and timeouts with nothing read
                got = b"".join([chunk async for chunk in response])
    assert got == big


@pytest.mark.parametrize("multiplex", [True, False])
async def test_the_front_end_pings_only_workers_that_multiplex(multiplex):
    # php-fpm and flup's threaded server say FCGI_MPXS_CONNS=0 and answer no
    # management record while busy: a ping would kill every slow request.
    CountingPeer.answered = 0
    async with fake_worker(slow_handler(2.0, multiplex=multiplex)) as address, trio.open_nursery() as nursery:
        server = Server(address, nursery, ping=(0.3, 0.5))
        conn = await server.acquire()
        response = await conn.request(PARAMS)
        assert response.status == 200
        assert server.multiplexed is multiplex
        learning = 1
        if multiplex:
            assert CountingPeer.answered >= learning + 2
        else:
            assert CountingPeer.answered == learning
        nursery.cancel_scope.cancel()
