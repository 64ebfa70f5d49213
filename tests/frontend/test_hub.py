"""Idle keep-alive clients in the hub, and requests answered from callbacks.

An idle plain-TCP client is held by the front-end's hub instead of a task of its
own; the common request (a GET to a multiplexed worker) is answered from the
worker connection's reader, and anything else goes on in a task from where it
is. These tests check that the hand-overs keep every answer whole and in order.
"""

from __future__ import annotations

import json
import logging
import socket

import pytest
import trio

from fcgi_cluster.frontend import _client, _server
from fcgi_cluster.frontend import _relay
from workers.echo import app as echo

from ._harness import RawClient, frontend, request_bytes, upstream_config, workers


async def wait_for(predicate, timeout: float = 2.0) -> bool:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.01)
        return True
    return False


async def test_idle_clients_wait_in_the_hub_and_leave_it_when_they_close() -> None:
    async with workers(echo) as addresses, frontend(upstream_config(addresses)) as (port, server):
        assert server.hub is not None
        async with RawClient.connect(port) as a, RawClient.connect(port) as b, RawClient.connect(port) as c:
            for client in (a, b, c):
                await client.send(request_bytes("/one"))
                assert (await client.response()).status == 200
            assert await wait_for(lambda: len(server.hub) == 3)
            for client in (a, b, c):
                await client.send(request_bytes("/two"))
                response = await client.response()
                assert json.loads(response.body)["environ"]["REQUEST_URI"] == "/two"
            assert await wait_for(lambda: len(server.hub) == 3)
        assert await wait_for(lambda: len(server.hub) == 0)
        assert server.active_requests == 0


async def test_pipelined_requests_of_every_kind_are_answered_in_order() -> None:
    # Small GETs are answered from callbacks; a large answer, a slow one, an
    # upload, a 404 and a failing worker request go through a task. Pipelined
    # together, the hand-overs must keep the answers whole and in request order.
    routes = '[[route]]\nprefix = "/app"\nupstream = "app"\n'
    requests = [
        (request_bytes("/app/a"), 200, None),
        (request_bytes("/app/big?size=300000"), 200, 300000),
        (request_bytes("/app/b"), 200, None),
        (request_bytes("/elsewhere"), 404, None),
        (request_bytes("/app/slow?sleep_ms=120"), 200, None),
        (request_bytes("/app/c", method="POST", body=b"hello"), 200, None),
        (request_bytes("/app/d?status=503"), 503, None),
        (request_bytes("/app/e"), 200, None),
    ]
    async with workers(echo) as addresses, frontend(upstream_config(addresses, routes=routes)) as (port, server):
        async with RawClient.connect(port) as client:
            for _ in range(2):
                await client.send(b"".join(raw for raw, _, _ in requests))
                with trio.fail_after(10):
                    for raw, status, size in requests:
                        response = await client.response()
                        assert response.status == status, (raw, response.status, response.body[:200])
                        if size is not None:
                            assert response.body == b"x" * size
                        elif status == 200:
                            target = raw.split(b" ")[1].decode()
                            assert json.loads(response.body)["environ"]["REQUEST_URI"] == target
            assert await wait_for(lambda: len(server.hub) == 1)
        assert await wait_for(lambda: server.active_requests == 0)


async def test_an_answer_the_client_socket_cannot_take_at_once_is_finished_by_a_task() -> None:
    # 150 kB arrives as three records: answered from the callback, but a client
    # that reads nothing yet (a small receive buffer) leaves most of it unsent.
    size = 150_000
    async with workers(echo) as addresses, frontend(upstream_config(addresses)) as (port, server):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await trio.to_thread.run_sync(sock.connect, ("127.0.0.1", port))
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        client = RawClient(stream)
        try:
            await client.send(request_bytes("/warm"))
            assert (await client.response()).status == 200
            await client.send(request_bytes(f"/big?size={size}"))
            await trio.sleep(0.3)  # the front-end has written what fits, and waits
            with trio.fail_after(5):
                response = await client.response()
            assert response.status == 200
            assert response.body == b"x" * size
            await client.send(request_bytes("/after"))
            after = await client.response()
            assert json.loads(after.body)["environ"]["REQUEST_URI"] == "/after"
        finally:
            await stream.aclose()


async def test_half_a_head_on_a_kept_connection_gets_408_from_the_hub() -> None:
    options = 'header_timeout = "0.3s"\nkeepalive_timeout = "5s"'
    async with workers(echo) as addresses, frontend(upstream_config(addresses, frontend=options)) as (port, server):
        async with RawClient.connect(port) as client:
            await client.send(request_bytes("/first"))
            assert (await client.response()).status == 200
            assert await wait_for(lambda: len(server.hub) == 1)
            started = trio.current_time()
            await client.send(b"GET /second HTTP/1.1\r\nHost: t\r\nX-Half: ")
            with trio.fail_after(2):
                response = await client.response()
                closed = await client.at_eof()
            elapsed = trio.current_time() - started
    assert response.status == 408
    assert closed
    # The header timeout (0.3 s), not the keep-alive one (5 s), once a head began.
    assert 0.25 <= elapsed < 1.0, elapsed


async def test_a_failure_inside_a_callback_answer_costs_that_client_only(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A bug of ours while answering from the worker connection's reader must not
    # take down that connection: the requests sharing it are answered.
    real = _relay.response_headers

    def response_headers(headers):
        if any(value == b"boom" for _, value in headers):
            raise RuntimeError("a bug while answering")
        return real(headers)

    monkeypatch.setattr(_relay, "response_headers", response_headers)

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/boom":
            start_response("200 OK", [("Content-Type", "text/plain"), ("X-Trouble", "boom")])
            return [b"never sent"]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["PATH_INFO"].encode()]

    caplog.set_level(logging.ERROR, "fcgi_cluster.frontend")
    async with workers(app) as addresses, frontend(upstream_config(addresses[:1])) as (port, server):
        async with RawClient.connect(port) as victim, RawClient.connect(port) as other:
            for client in (victim, other):
                await client.send(request_bytes("/warm"))
                assert (await client.response()).body == b"/warm"
            await victim.send(request_bytes("/boom"))
            await other.send(request_bytes("/fine"))
            with trio.fail_after(5):
                assert (await other.response()).body == b"/fine"
                assert await victim.at_eof()
            await other.send(request_bytes("/still"))
            assert (await other.response()).body == b"/still"
        assert await wait_for(lambda: server.active_requests == 0)
    assert any("a bug while answering" in (record.exc_text or "") for record in caplog.records)


def one_connection_config(addresses: list[str], upstream: str = "") -> str:
    """A worker spoken to one request per connection, over one connection at most."""
    return upstream_config(addresses, upstream='multiplex = "off"\n' + upstream).replace(
        f'"{addresses[0]}"', f'{{ address = "{addresses[0]}", max_conns = 1 }}'
    )


async def test_kept_clients_wait_in_line_with_callbacks_in_order_and_give_up_at_connect_timeout() -> None:
    # The hub's requests wait in line for a connection at max_conns with a
    # callback instead of a task: in arrival order, and a 503 for one still
    # waiting after connect_timeout.
    async with workers(echo) as addresses, frontend(
        one_connection_config(addresses[:1], 'connect_timeout = "0.4s"')
    ) as (port, server):
        upstream = server.upstreams["app"].servers[0]
        async with RawClient.connect(port) as a, RawClient.connect(port) as b, RawClient.connect(port) as c:
            for client in (a, b, c):
                await client.send(request_bytes("/warm"))
                assert (await client.response()).status == 200
            assert await wait_for(lambda: len(server.hub) == 3)
            began = trio.current_time()
            await a.send(request_bytes("/first?sleep_ms=300"))
            await trio.sleep(0.1)
            await b.send(request_bytes("/second?sleep_ms=500"))
            await trio.sleep(0.1)
            await c.send(request_bytes("/third"))
            await trio.sleep(0.05)
            assert len(upstream._queue) == 2
            assert all(waiter.callback is not None for waiter in upstream._queue)
            with trio.fail_after(5):
                third = await c.response()
                third_at = trio.current_time() - began
                first = await a.response()
                second = await b.response()
                second_at = trio.current_time() - began
            for client, target in ((a, "/again-a"), (c, "/again-c")):
                await client.send(request_bytes(target))
                assert json.loads((await client.response()).body)["environ"]["PATH_INFO"] == target
        assert upstream.connection_count == 1
    assert json.loads(first.body)["environ"]["PATH_INFO"] == "/first"
    assert json.loads(second.body)["environ"]["PATH_INFO"] == "/second"
    assert second_at >= 0.75  # waited 0.2 s for the connection, then ran 0.5 s
    assert third.status == 503
    assert 0.45 <= third_at < second_at


async def test_kept_clients_in_line_leave_it_when_the_front_end_stops() -> None:
    async with workers(echo) as addresses:
        async with frontend(one_connection_config(addresses[:1])) as (port, server):
            upstream = server.upstreams["app"].servers[0]
            async with RawClient.connect(port) as a, RawClient.connect(port) as b, RawClient.connect(port) as c:
                for client in (a, b, c):
                    await client.send(request_bytes("/warm"))
                    assert (await client.response()).status == 200
                for client in (a, b, c):
                    await client.send(request_bytes("/long?sleep_ms=2000"))
                assert await wait_for(lambda: len(upstream._queue) == 2)
                balancer = server.upstreams["app"].balancer
        # Stopped: every waiter left the line, and the balancer counts no request.
        assert len(upstream._queue) == 0
        assert server.active_requests == 0
        assert [peer.active for peer in balancer._peers] == [0]


async def test_plain_clients_get_no_task_of_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    # A client that sends one GET per connection, and one that keeps its
    # connection, are both served by the hub and callbacks: no connection task
    # is started, and none is started again for a request.
    started: list[str] = []
    real_task = _server.FrontendServer._connection_task
    real_drive = _client.ClientConnection.drive

    async def connection_task(self, *args):
        started.append("connection task")
        await real_task(self, *args)

    async def drive(self, *args):
        started.append("drive")
        await real_drive(self, *args)

    monkeypatch.setattr(_server.FrontendServer, "_connection_task", connection_task)
    monkeypatch.setattr(_client.ClientConnection, "drive", drive)
    async with workers(echo) as addresses, frontend(upstream_config(addresses)) as (port, server):
        # The first request to each worker opens its connection, which takes a task.
        for _ in addresses:
            async with RawClient.connect(port) as client:
                await client.send(request_bytes("/warm"))
                assert (await client.response()).status == 200
        started.clear()
        for number in range(5):
            async with RawClient.connect(port) as client:
                await client.send(request_bytes(f"/new/{number}", headers=[("Connection", "close")]))
                response = await client.response()
                assert json.loads(response.body)["environ"]["REQUEST_URI"] == f"/new/{number}"
                assert await client.at_eof()
        async with RawClient.connect(port) as client:
            for number in range(5):
                await client.send(request_bytes(f"/kept/{number}"))
                response = await client.response()
                assert json.loads(response.body)["environ"]["REQUEST_URI"] == f"/kept/{number}"
        assert started == []
        # A request the callbacks do not answer (one with a body) takes a
        # task, and only then.
        async with RawClient.connect(port) as client:
            await client.send(request_bytes("/upload", method="POST", body=b"abc"))
            assert json.loads((await client.response()).body)["body_length"] == 3
        assert started == ["drive"]


async def test_a_failure_on_a_pipelined_request_closes_that_client(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The answer to the first request is written from the worker connection's
    # reader, which then begins the next request the client pipelined; a bug
    # of ours there must close this client (not leave it held by nobody), and
    # cost nobody else anything.
    real = _client.ClientConnection._upstream_params

    def upstream_params(self, head, *args):
        if head.path == b"/explode":
            raise RuntimeError("a bug while sending")
        return real(self, head, *args)

    monkeypatch.setattr(_client.ClientConnection, "_upstream_params", upstream_params)
    caplog.set_level(logging.ERROR, "fcgi_cluster.frontend")
    async with workers(echo) as addresses, frontend(upstream_config(addresses[:1])) as (port, server):
        async with RawClient.connect(port) as victim, RawClient.connect(port) as other:
            for client in (victim, other):
                await client.send(request_bytes("/warm"))
                assert (await client.response()).status == 200
            await victim.send(request_bytes("/first") + request_bytes("/explode"))
            with trio.fail_after(5):
                first = await victim.response()
                assert await victim.at_eof()
            assert json.loads(first.body)["environ"]["REQUEST_URI"] == "/first"
            await other.send(request_bytes("/still"))
            assert json.loads((await other.response()).body)["environ"]["REQUEST_URI"] == "/still"
            assert await wait_for(lambda: len(server.hub) == 1)
        assert await wait_for(lambda: server.active_requests == 0)
    assert any("a bug while sending" in (record.exc_text or "") for record in caplog.records)
