"""The client connection against an in-process worker built on our ServerConnection.

Each worker misbehaves in one chosen way: closes mid-request, sends garbage,
refuses, never answers. Sockets are real loopback TCP unless a test needs
trio's autojump clock or to count writes, where a socketpair or memory
streams stand in for the wire.
"""

from __future__ import annotations

import hashlib
import socket
import struct

import pytest
import trio
import trio.testing

from fcgi_cluster.client import (
    ConnectError,
    ConnectionLost,
    PeerUnresponsive,
    RequestRefused,
    UpstreamProtocolError,
    open_connection,
)
from fcgi_cluster.client._connection import _attach
from fcgi_cluster.protocol import (
    AbortRequest,
    ClientConnection,
    EndRequest,
    ProtocolStatus,
    RecordType,
    RemoteProtocolError,
    Request,
    Stdin,
    Stdout,
    encode_record,
)
from fcgi_cluster.protocol._records import encode_unknown_type
from tests.client._fake_worker import Peer, fake_worker, ok

pytestmark = pytest.mark.trio

PARAMS = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "/"}


def tagged(tag: object) -> dict[str, str]:
    return {**PARAMS, "TAG": str(tag)}


async def echo_handler(stream: trio.SocketStream) -> None:
    """Answer each request with its TAG param, its body's length and its body."""
    peer = Peer(stream)
    while (got := await peer.next_request()) is not None:
        request, body = got
        tag = request.params.get(b"TAG", b"").decode()
        await peer.respond(request.request_id, ok(body, f"X-Tag: {tag}", f"X-Length: {len(body)}"))


# --- connecting -----------------------------------------------------------------


async def test_tcp_connection_sets_nodelay_and_serves_a_request() -> None:
    async with fake_worker(echo_handler) as address, open_connection(address) as conn:
        sock = conn._stream.socket  # type: ignore[attr-defined]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        response = await conn.request(tagged("a"), b"body")
        assert (response.status, response.body, response.app_status) == (200, b"body", 0)
        assert ("X-Tag", "a") in response.headers
        assert conn.is_usable and conn.requests_in_flight == 0


async def test_refused_port_is_a_connect_error() -> None:
    # A bound socket that does not listen: connecting to it is refused, and no
    # other test can take the port meanwhile.
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        port = blocker.getsockname()[1]
        with pytest.raises(ConnectError, match="refused"):
            async with open_connection(f"127.0.0.1:{port}"):
                pass  # pragma: no cover


async def test_missing_unix_socket_is_a_connect_error(tmp_path) -> None:
    with pytest.raises(ConnectError, match="No such file"):
        async with open_connection(f"unix:{tmp_path}/nothing.sock"):
            pass  # pragma: no cover


async def test_an_error_in_the_block_comes_out_as_itself() -> None:
    async with fake_worker(echo_handler) as address:
        with pytest.raises(KeyError):
            async with open_connection(address):
                raise KeyError("mine")


async def test_leaving_the_block_fails_requests_still_waiting() -> None:
    async def silent(stream: trio.SocketStream) -> None:
        peer = Peer(stream)
        while await peer.next_request() is not None:
            pass

    errors = []

    async def waiter(conn, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            await conn.request(PARAMS)
        except ConnectionLost as exc:
            errors.append(exc)

    async with fake_worker(silent) as address, trio.open_nursery() as nursery:
        async with open_connection(address) as conn:
            await nursery.start(waiter, conn)
            await trio.sleep(0.01)
        # Leaving the block closed the connection: the waiter is released, not hung.
    assert len(errors) == 1


# --- multiplexing ---------------------------------------------------------------


async def test_100_concurrent_requests_each_get_their_own_answer() -> None:
    count = 100
    peer_seen = []

    async def scrambler(stream: trio.SocketStream) -> None:
        # Wait for all the requests, then answer them interleaved: every
        # header block first, in reverse order, then every body.
        peer = Peer(stream)
        requests = []
        while len(requests) < count:
            got = await peer.next_request()
            assert got is not None
            requests.append(got)
        peer_seen.append(peer.max_in_flight)
        requests.reverse()
        for request, body in requests:
            tag = request.params[b"TAG"].decode()
            await peer.send(Stdout(request.request_id, f"X-Tag: {tag}\r\n\r\n".encode()))
        for request, body in requests:
            await peer.send(Stdout(request.request_id, b"body of " + request.params[b"TAG"] + b":" + body))
        for request, _ in requests:
            await peer.send(EndRequest(request.request_id, app_status=int(request.params[b"TAG"])))
        while await peer.next_request() is not None:
            pass

    results: dict[int, object] = {}

    async def one(conn, i: int) -> None:
        results[i] = await conn.request(tagged(i), f"payload {i}".encode())

    async with fake_worker(scrambler) as address, open_connection(address) as conn:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for i in range(count):
                    nursery.start_soon(one, conn, i)
        assert conn.requests_in_flight == 0
    assert peer_seen == [count]  # all in flight at once, on one connection
    for i in range(count):
        response = results[i]
        assert response.headers == [("X-Tag", str(i))]  # type: ignore[attr-defined]
        assert response.body == f"body of {i}:payload {i}".encode()  # type: ignore[attr-defined]
        assert response.app_status == i  # type: ignore[attr-defined]


async def test_request_queued_with_its_body_leaves_in_one_write() -> None:
    client_send, peer_receive = trio.testing.memory_stream_one_way_pair()
    peer_send, client_receive = trio.testing.memory_stream_one_way_pair()
    writes: list[int] = []

    async def deliver() -> None:  # called once per send_all
        data = client_send.get_data_nowait()
        writes.append(len(data))
        peer_receive.put_data(data)

    client_send.send_all_hook = deliver
    peer = Peer(trio.StapledStream(peer_send, peer_receive))
    body = b"x" * 10_000

    async def serve_one() -> None:
        got = await peer.next_request()
        assert got is not None
        await peer.respond(got[0].request_id, ok(got[1]))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_one)
        async with _attach(trio.StapledStream(client_send, client_receive), "memory") as conn:
            response = await conn.request(PARAMS, body)
    assert response.body == body
    reference = ClientConnection()
    whole = reference.send(Request(1, PARAMS)) + reference.send(Stdin(1, body)) + reference.send(Stdin(1, b""))
    # BEGIN_REQUEST, PARAMS and its end, STDIN and its end: one write in all.
    assert writes == [len(whole)]


# --- failures of the connection -------------------------------------------------


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_connection_lost_mid_request_fails_every_pending_request(how: str) -> None:
    async def dies(stream: trio.SocketStream) -> None:
        peer = Peer(stream)
        requests = [await peer.next_request() for _ in range(3)]
        # Start one response, then go away.
        await peer.send(Stdout(requests[0][0].request_id, ok(b"partial")))  # type: ignore[index]
        await trio.sleep(0.05)
        if how == "reset":  # SO_LINGER 0: close sends RST, not FIN
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await stream.aclose()

    outcomes: list[BaseException] = []

    async def plain(conn) -> None:
        try:
            await conn.request(PARAMS)
        except ConnectionLost as exc:
            outcomes.append(exc)

    async def streamed(conn) -> None:
        async with conn.stream(PARAMS) as response:
            assert response.status == 200
            try:
                async for _ in response:
                    pass
            except ConnectionLost as exc:
                outcomes.append(exc)

    async with fake_worker(dies) as address, open_connection(address) as conn:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(streamed, conn)
                await trio.sleep(0.01)  # the streamed one gets the first request ID
                nursery.start_soon(plain, conn)
                nursery.start_soon(plain, conn)
        assert len(outcomes) == 3
        assert not conn.is_usable
        with pytest.raises(ConnectionLost):
            await conn.request(PARAMS)


async def test_garbage_from_the_worker_is_an_upstream_protocol_error() -> None:
    async def garbage(stream: trio.SocketStream) -> None:
        peer = Peer(stream)
        await peer.next_request()
        await peer.next_request()
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await trio.sleep_forever()

    errors: list[UpstreamProtocolError] = []

    async def one(conn) -> None:
        with pytest.raises(UpstreamProtocolError) as info:
            await conn.request(PARAMS)
        errors.append(info.value)

    async with fake_worker(garbage) as address, open_connection(address) as conn:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(one, conn)
                nursery.start_soon(one, conn)
        assert not conn.is_usable
    assert len(errors) == 2
    assert all(isinstance(e.__cause__, RemoteProtocolError) for e in errors)
    assert "version 72" in str(errors[0])  # 'H'


async def test_stdout_for_a_request_never_sent_is_a_protocol_error() -> None:
    async def stray(stream: trio.SocketStream) -> None:
        peer = Peer(stream)
        await peer.next_request()
        await stream.send_all(encode_record(RecordType.STDOUT, 999, b"Status: 200\r\n\r\n"))
        await trio.sleep_forever()

    async with fake_worker(stray) as address, open_connection(address) as conn:
        with trio.fail_after(10), pytest.raises(UpstreamProtocolError, match="999"):
            await conn.request(PARAMS)


# --- one request failing, the connection serving on ---------------------------------


async def test_cancelled_request_is_aborted_and_the_connection_serves_on() -> None:
    got_slow = trio.Event()
    peer_aborts: list[int] = []

    async def handler(stream: trio.SocketStream) -> None:
        peer = Peer(stream)
        slow = await peer.next_request()
        assert slow is not None
        got_slow.set()
        # The next event must be the abort of the slow request.
        event = await peer.next_event()
        assert event == AbortRequest(slow[0].request_id)
        peer_aborts.append(event.request_id)
        await peer.send(EndRequest(slow[0].request_id))  # the app gives up: the END is swallowed
        await echo_handler_on(peer)

    async with fake_worker(handler) as address, open_connection(address) as conn:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.request, tagged("slow"))
                await got_slow.wait()
                nursery.cancel_scope.cancel()
            response = await conn.request(tagged("next"))
        assert response.headers[0] == ("X-Tag", "next")
        assert conn.is_usable
        assert conn.requests_in_flight == 0
    assert peer_aborts == [1]


async def echo_handler_on(peer: Peer) -> None:
    while (got := await peer.next_request()) is not None:
        request, body = got
        await peer.respond(request.request_id, ok(body, f"X-Tag: {request.params.get(b'TAG', b'').decode()}"))


async def test_leaving_a_stream_early_aborts_it() -> None:
    aborted = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        peer = Peer(stream)
        got = await peer.next_request()
        assert got is not None
        rid = got[0].request_id
        await peer.send(Stdout(rid, ok(b"first chunk")))
        assert await peer.next_event() == AbortRequest(rid)
        aborted.set()
        await peer.send(Stdout(rid, b"more, swallowed by the client"), EndRequest(rid))
        await echo_handler_on(peer)

    async with fake_worker(handler) as address, open_connection(address) as conn:
        with trio.fail_after(10):
            async with conn.stream(PARAMS) as response:
                async for chunk in response:
                    assert chunk == b"first chunk"
                    break
            await aborted.wait()
            assert (await conn.request(tagged("after"))).body == b""


async def test_stream_gives_the_body_as_it_arrives() -> None:
    go_on = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        peer = Peer(stream)
        got = await peer.next_request()
        assert got is not None
        rid = got[0].request_id
        await peer.send(Stdout(rid, b"Content-Type: text/plain\r\n\r\npart one;"))
        await go_on.wait()
        await peer.send(Stdout(rid, b"part two"), EndRequest(rid, app_status=3))

    async with fake_worker(handler) as address, open_connection(address) as conn:
        with trio.fail_after(10):
            async with conn.stream(PARAMS) as response:
                assert response.status == 200
                assert response.headers == [("Content-Type", "text/plain")]
                assert await response.__anext__() == b"part one;"  # before the worker sent more
                assert response.app_status is None
                go_on.set()
                assert [chunk async for chunk in response] == [b"part two"]
                assert response.app_status == 3


@pytest.mark.parametrize(
    "status", [ProtocolStatus.OVERLOADED, ProtocolStatus.UNKNOWN_ROLE, ProtocolStatus.CANT_MPX_CONN]
)
async def test_refusal_is_request_refused_and_the_connection_serves_on(status: ProtocolStatus) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        peer = Peer(stream)
        got = await peer.next_request()
        assert got is not None
        await peer.send(EndRequest(got[0].request_id, 0, status))
        await echo_handler_on(peer)

    async with fake_worker(handler) as address, open_connection(address) as conn:
        with trio.fail_after(10):
            with pytest.raises(RequestRefused) as info:
                await conn.request(PARAMS)
            assert info.value.protocol_status is status
            assert (await conn.request(tagged("next"))).headers == [("X-Tag", "next")]


async def test_a_worker_that_does_not_multiplex_refuses_the_second_request() -> None:
    holding = trio.Event()
    release = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        peer = Peer(stream, multiplex=False)  # the core refuses with CANT_MPX_CONN
        first = await peer.next_request()
        assert first is not None
        holding.set()
        async with trio.open_nursery() as nursery:
            # Keep reading meanwhile: the refusal is sent as the BEGIN is read.
            nursery.start_soon(peer.next_event)
            await release.wait()
            nursery.cancel_scope.cancel()
        await peer.respond(first[0].request_id, ok(b"first"))
        await echo_handler_on(peer)

    async with fake_worker(handler) as address, open_connection(address) as conn:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                results = []

                async def first() -> None:
                    results.append(await conn.request(PARAMS))

                nursery.start_soon(first)
                await holding.wait()
                with pytest.raises(RequestRefused) as info:
                    await conn.request(PARAMS)
                assert info.value.protocol_status is ProtocolStatus.CANT_MPX_CONN
                release.set()
            assert results[0].body == b"first"


async def test_bad_cgi_headers_fail_that_request_only() -> None:
    async def handler(stream: trio.SocketStream) -> None:
        peer = Peer(stream)
        got = await peer.next_request()
        assert got is not None
        await peer.respond(got[0].request_id, b"Content-Type: text/plain\r\n")  # no blank line
        got = await peer.next_request()
        assert got is not None
        await peer.send(Stdout(got[0].request_id, b"X-Huge: " + b"a" * 70_000))
        assert isinstance(await peer.next_event(), AbortRequest)
        await peer.send(EndRequest(got[0].request_id))
        await echo_handler_on(peer)

    async with fake_worker(handler) as address, open_connection(address) as conn:
        with trio.fail_after(10):
            with pytest.raises(UpstreamProtocolError, match="before the end of its CGI headers"):
                await conn.request(PARAMS)
            with pytest.raises(UpstreamProtocolError, match="exceeds"):
                await conn.request(PARAMS)
            assert conn.is_usable
            assert (await conn.request(tagged("ok"))).status == 200


async def test_location_without_status_and_stderr_over_the_wire() -> None:
    async def handler(stream: trio.SocketStream) -> None:
        peer = Peer(stream)
        got = await peer.next_request()
        assert got is not None
        await peer.respond(got[0].request_id, b"Location: /login\r\n\r\n", stderr=b"PHP Notice: x\n", app_status=7)

    async with fake_worker(handler) as address, open_connection(address) as conn:
        response = await conn.request(PARAMS)
    assert (response.status, response.headers) == (302, [("Location", "/login")])
    assert (response.stderr, response.app_status, response.body) == (b"PHP Notice: x\n", 7, b"")


async def test_keep_conn_false_lets_the_worker_close() -> None:
    async def handler(stream: trio.SocketStream) -> None:
        peer = Peer(stream)
        got = await peer.next_request()
        assert got is not None and got[0].keep_conn is False
        await peer.respond(got[0].request_id, ok(b"bye"))
        assert peer.core.should_close
        await stream.aclose()

    async with fake_worker(handler) as address, open_connection(address) as conn:
        response = await conn.request(PARAMS, keep_conn=False)
        assert response.body == b"bye"
        assert not conn.is_usable


# --- request bodies ---------------------------------------------------------------


async def test_async_iterable_body_is_streamed_with_backpressure() -> None:
    chunk = bytes(range(256)) * 256  # 64 KiB
    total = 64  # 4 MiB: far more than the socket buffers hold
    digest = hashlib.sha256(chunk * total).hexdigest()

    async def body():
        for _ in range(total):
            yield chunk

    async def handler(stream: trio.SocketStream) -> None:
        peer = Peer(stream)
        got = await peer.next_request()
        assert got is not None
        request, received = got
        await peer.respond(request.request_id, ok(hashlib.sha256(received).hexdigest().encode()))

    async with fake_worker(handler) as address, open_connection(address) as conn:
        with trio.fail_after(20):
            response = await conn.request(PARAMS, body())
    assert response.body.decode() == digest


@pytest.mark.parametrize("streamed", [False, True])
async def test_params_given_already_encoded_reach_the_worker_as_a_mapping_would(streamed: bool) -> None:
    from fcgi_cluster.protocol._records import encode_params

    seen: list[dict[bytes, bytes]] = []

    async def handler(stream: trio.SocketStream) -> None:
        peer = Peer(stream)
        while (got := await peer.next_request()) is not None:
            request, received = got
            seen.append(dict(request.params))
            await peer.respond(request.request_id, ok(received))

    async def pieces():
        yield b"streamed "
        yield b"body"

    params = {b"REQUEST_METHOD": b"POST", b"SCRIPT_NAME": b"/", b"X_LONG": b"v" * 300}
    async with fake_worker(handler) as address, open_connection(address) as conn:
        body = pieces() if streamed else b"whole body"
        response = conn.start_request(encode_params(params), body)
        try:
            await response.read_head()
            chunks = [chunk async for chunk in response]
        finally:
            response.close()
    assert seen == [params]
    assert b"".join(chunks) == (b"streamed body" if streamed else b"whole body")


async def test_worker_answering_before_reading_the_body() -> None:
    produced = []

    async def endless():
        i = 0
        while True:
            produced.append(i)
            yield b"x" * 1000
            i += 1
            await trio.sleep(0.001)

    async def handler(stream: trio.SocketStream) -> None:
        peer = Peer(stream)
        event = await peer.next_event()
        assert isinstance(event, Request)
        await peer.respond(event.request_id, ok(b"did not read it"))
        await echo_handler_on(peer)

    async with fake_worker(handler) as address, open_connection(address) as conn:
        with trio.fail_after(10):
            response = await conn.request(PARAMS, endless())
            assert response.body == b"did not read it"
            count = len(produced)
            await trio.sleep(0.05)
            assert len(produced) == count  # the body task stopped with the request
            assert (await conn.request(tagged("next"), b"abc")).body == b"abc"


async def test_a_failing_body_fails_its_request_only() -> None:
    async def broken():
        yield b"start"
        raise OSError("disk on fire")

    async def handler(stream: trio.SocketStream) -> None:
        peer = Peer(stream)
        event = await peer.next_event()
        assert isinstance(event, Request)
        while not isinstance(event := await peer.next_event(), AbortRequest):
            pass
        await peer.send(EndRequest(event.request_id))
        await echo_handler_on(peer)

    async with fake_worker(handler) as address, open_connection(address) as conn:
        with trio.fail_after(10):
            with pytest.raises(OSError, match="disk on fire"):
                await conn.request(PARAMS, broken())
            assert (await conn.request(tagged("next"), b"abc")).body == b"abc"


# --- GET_VALUES -----------------------------------------------------------------


async def test_get_values_from_our_own_worker_core() -> None:
    async with fake_worker(echo_handler) as address, open_connection(address) as conn:
        values = await conn.get_values()
    assert values == {"FCGI_MAX_CONNS": "1024", "FCGI_MAX_REQS": "256", "FCGI_MPXS_CONNS": "1"}


async def test_get_values_answered_with_unknown_type_is_empty() -> None:
    async def old_worker(stream: trio.SocketStream) -> None:
        # A worker that knows no management records at all.
        while await stream.receive_some():
            await stream.send_all(encode_unknown_type(RecordType.GET_VALUES))

    async with fake_worker(old_worker) as address, open_connection(address) as conn:
        with trio.fail_after(2):
            assert await conn.get_values(timeout=30) == {}


async def test_get_values_unanswered_times_out_empty(autojump_clock) -> None:
    client_sock, peer_sock = trio.socket.socketpair()
    peer_stream = trio.SocketStream(peer_sock)
    queries = []

    async def slow_to_answer() -> None:
        queries.append(await peer_stream.receive_some())
        await trio.sleep(60)  # long after the query gave up, the answer arrives
        await peer_stream.send_all(encode_record(RecordType.GET_VALUES_RESULT, 0, b"\x0f\x01FCGI_MPXS_CONNS1"))
        queries.append(await peer_stream.receive_some())  # the second query: never answered
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_to_answer)
        async with _attach(trio.SocketStream(client_sock), "socketpair") as conn:
            start = trio.current_time()
            assert await conn.get_values(timeout=5) == {}
            assert trio.current_time() - start == pytest.approx(5)
            await trio.sleep(120)
            # The late answer was matched to the query that gave up, not to this one.
            assert await conn.get_values(timeout=5) == {}
            assert conn.is_usable
        nursery.cancel_scope.cancel()
    assert [q[1] for q in queries] == [RecordType.GET_VALUES, RecordType.GET_VALUES]


async def test_get_values_fails_when_the_connection_dies() -> None:
    async def closes(stream: trio.SocketStream) -> None:
        await stream.receive_some()
        await stream.aclose()

    async with fake_worker(closes) as address, open_connection(address) as conn:
        with trio.fail_after(10), pytest.raises(ConnectionLost):
            await conn.get_values()


async def test_a_body_that_is_not_iterable_is_refused_before_anything_is_sent() -> None:
    async with fake_worker(echo_handler) as address, open_connection(address) as conn:
        with pytest.raises(TypeError):
            await conn.request(PARAMS, "text is not bytes")  # type: ignore[arg-type]
        assert conn.requests_in_flight == 0 and conn.is_usable
        assert (await conn.request(tagged("ok"), b"fine")).body == b"fine"


async def test_a_worker_that_reads_nothing_drops_the_connection_after_send_timeout() -> None:
    async def never_reads(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    body = b"x" * (32 * 1024 * 1024)  # far more than both socket buffers hold
    async with fake_worker(never_reads) as address, open_connection(address, send_timeout=0.3) as conn:
        started = trio.current_time()
        with trio.fail_after(5), pytest.raises(PeerUnresponsive, match="took none of our data"):
            await conn.request({"REQUEST_METHOD": "POST"}, body)
        assert trio.current_time() - started < 3
        assert not conn.is_usable
