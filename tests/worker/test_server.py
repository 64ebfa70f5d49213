"""The worker server over real sockets: listen forms, graceful stop."""

from __future__ import annotations

import socket

import pytest
import trio

from fcgi_cluster.protocol import NEED_DATA, ClientConnection, EndRequest, Request, Stdin, Stdout
from fcgi_cluster.worker import ListenError, WorkerConfig, serve
from workers import echo, hello

from ._harness import params


async def fetch(address: str, p: dict[bytes, bytes], sent: trio.Event | None = None) -> bytes:
    """One request over a real socket; returns STDOUT. ``sent`` is set once the request is written."""
    if address.startswith("/"):
        sock = trio.socket.socket(socket.AF_UNIX)
        await sock.connect(address)
        stream = trio.SocketStream(sock)
    else:
        host, _, port = address.rpartition(":")
        stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
    core = ClientConnection()
    out = b""
    async with stream:
        await stream.send_all(core.send(Request(1, p)) + core.send(Stdin(1, b"")))
        if sent is not None:
            sent.set()
        while True:
            data = await stream.receive_some(65536)
            assert data, "worker closed the connection early"
            core.receive_data(data)
            while (event := core.next_event()) is not NEED_DATA:
                if type(event) is Stdout:
                    out += event.data
                elif type(event) is EndRequest:
                    return out


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "[::1]:0", "unix"])
async def test_listen_forms(listen, tmp_path):
    if listen == "unix":
        listen = str(tmp_path / "w.sock")
    async with trio.open_nursery() as nursery:
        where = await nursery.start(serve, hello.app, listen)
        assert (await fetch(where, params("/"))).endswith(b"hello")
        nursery.cancel_scope.cancel()


async def test_address_in_use_is_a_listen_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ListenError, match="already in use"):
            await serve(hello.app, f"127.0.0.1:{port}")


async def test_graceful_stop_finishes_in_flight_and_refuses_new():
    stop = trio.Event()
    results = []
    async with trio.open_nursery() as nursery:
        where = await nursery.start(lambda task_status: serve(echo.app, "127.0.0.1:0", WorkerConfig(threads=4), stop=stop, task_status=task_status))

        sent = trio.Event()

        async def slow():
            results.append(await fetch(where, params("/?sleep_ms=300&status=202"), sent))

        nursery.start_soon(slow)
        # In flight before the stop, however long connecting took.
        await sent.wait()
        await trio.sleep(0.1)
        stop.set()
        await trio.sleep(0.05)
        host, _, port = where.rpartition(":")
        with pytest.raises(OSError):
            await trio.open_tcp_stream(host, int(port))
    assert len(results) == 1 and b"Status: 202" in results[0]


async def test_graceful_stop_deadline_cancels_stragglers():
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        config = WorkerConfig(threads=2, graceful_timeout=0.2)
        where = await nursery.start(lambda task_status: serve(echo.app, "127.0.0.1:0", config, stop=stop, task_status=task_status))
        host, _, port = where.rpartition(":")
        stream = await trio.open_tcp_stream(host, int(port))
        core = ClientConnection()
        await stream.send_all(core.send(Request(1, params("/?sleep_ms=3000"))) + core.send(Stdin(1, b"")))
        await trio.sleep(0.1)
        start = trio.current_time()
        stop.set()
    # serve() returned once the deadline passed, not after the 3 s request.
    assert trio.current_time() - start < 2.9
    await stream.aclose()


async def test_too_many_requests_while_others_run_closes_that_connection_only() -> None:
    # FCGI_MAX_REQS is 2; a third request while two slow ones run is a
    # protocol violation: that connection closes, the running requests end
    # into nothing, and the worker serves the next client.
    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve, echo.app, "127.0.0.1:0", WorkerConfig(max_requests=2))
        host, _, port = address.rpartition(":")
        stream = await trio.open_tcp_stream(host, int(port))
        core = ClientConnection()
        slow = params("/slow?sleep_ms=200")
        out = b"".join(core.send(Request(rid, slow)) + core.send(Stdin(rid, b"")) for rid in (1, 2, 3))
        await stream.send_all(out)
        with trio.fail_after(5):
            while await stream.receive_some(65536):
                pass  # until the worker closes it
        await stream.aclose()
        await trio.sleep(0.3)  # the two slow requests finish meanwhile
        with trio.fail_after(5):
            assert b'"worker"' in await fetch(address, params("/"))
        nursery.cancel_scope.cancel()
