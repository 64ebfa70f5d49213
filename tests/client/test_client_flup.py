"""The client against a real FastCGI server written by someone else: flup.

flup runs in a subprocess (see conftest.py and _flup_runner.py), multiplexing
and not. Request counts stay small: flup serves each connection with a thread
from a small pool.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time

import pytest
import trio

from fcgi_cluster.client import cgi_params, open_connection

pytestmark = [pytest.mark.trio, pytest.mark.e2e]


async def test_get_values_flup_answers_empty(flup: str) -> None:
    # flup looks the asked names (bytes) up in a dict keyed by str, finds
    # none, and answers an empty GET_VALUES_RESULT: empty, but an answer.
    async with open_connection(flup) as conn:
        with trio.fail_after(5):
            assert await conn.get_values(timeout=30) == {}
        assert (await conn.request(cgi_params("GET", "/hello"))).status == 200


async def test_get(flup: str) -> None:
    async with open_connection(flup) as conn:
        response = await conn.request(cgi_params("GET", "/hello"))
    assert response.status == 200
    assert response.headers == [("Content-Type", "text/plain"), ("Content-Length", "6")]
    assert (response.body, response.stderr, response.app_status) == (b"hello\n", b"", 0)


async def test_status_header_gives_404(flup: str) -> None:
    async with open_connection(flup) as conn:
        response = await conn.request(cgi_params("GET", "/missing"))
    assert response.status == 404
    assert response.body == b"no such thing\n"


async def test_post_one_megabyte(flup: str) -> None:
    body = os.urandom(1024 * 1024)
    params = cgi_params("POST", "/echo", headers=[("Content-Type", "application/octet-stream")], body_length=len(body))
    async with open_connection(flup) as conn:
        with trio.fail_after(20):
            response = await conn.request(params, body)
    headers = dict(response.headers)
    assert response.status == 200
    assert headers["X-Method"] == "POST"
    assert headers["X-Body-Length"] == str(len(body))
    assert headers["X-Body-SHA256"] == hashlib.sha256(body).hexdigest()
    assert hashlib.sha256(response.body).digest() == hashlib.sha256(body).digest()


async def test_post_streamed_body(flup: str) -> None:
    parts = [os.urandom(50_000) for _ in range(5)]

    async def body():
        for part in parts:
            yield part

    async with open_connection(flup) as conn:
        with trio.fail_after(20):
            response = await conn.request(cgi_params("POST", "/echo"), body())
    assert response.body == b"".join(parts)


async def test_stream_reads_the_response_in_pieces(flup: str) -> None:
    body = os.urandom(300_000)  # flup writes 8 KiB records
    async with open_connection(flup) as conn:
        async with conn.stream(cgi_params("POST", "/echo", body_length=len(body)), body) as response:
            assert response.status == 200
            chunks = [chunk async for chunk in response]
    assert len(chunks) > 1
    assert b"".join(chunks) == body


async def test_params_reach_the_application_as_sent(flup: str) -> None:
    params = cgi_params(
        "GET",
        "/environ?x=1",
        headers=[("Proxy", "http://evil:3128"), ("X-Multi", "a"), ("X-Multi", "b"), ("Host", "example.org")],
        extra={"APP_SETTING": "on"},
    )
    async with open_connection(flup) as conn:
        environ = json.loads((await conn.request(params)).body)
    assert "HTTP_PROXY" not in environ
    assert environ["HTTP_X_MULTI"] == "a, b"
    assert environ["HTTP_HOST"] == "example.org"
    assert environ["QUERY_STRING"] == "x=1"
    assert environ["SCRIPT_NAME"] == "/environ" and environ["PATH_INFO"] == ""
    assert environ["APP_SETTING"] == "on"
    assert environ["SERVER_SOFTWARE"].startswith("fcgi-cluster/")


async def test_stderr_and_a_crashing_app(flup: str) -> None:
    async with open_connection(flup) as conn:
        logged = await conn.request(cgi_params("GET", "/stderr"))
        crashed = await conn.request(cgi_params("GET", "/boom"))
    assert (logged.body, logged.stderr) == (b"logged\n", b"worker says hi\n")
    assert crashed.status == 500
    assert b"RuntimeError: boom" in crashed.stderr


async def test_unix_socket(flup_unix: str) -> None:
    async with open_connection(f"unix:{flup_unix}") as conn:
        assert (await conn.request(cgi_params("GET", "/hello"))).body == b"hello\n"


async def test_multiplexed_requests_run_concurrently(flup_mpx: str) -> None:
    count, ms = 20, 300
    answers: dict[int, bytes] = {}

    async def one(conn, i: int) -> None:
        answers[i] = (await conn.request(cgi_params("GET", f"/slow?ms={ms}&tag={i}"))).body

    async with open_connection(flup_mpx) as conn:
        start = time.monotonic()
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for i in range(count):
                    nursery.start_soon(one, conn, i)
        elapsed = time.monotonic() - start
    assert answers == {i: str(i).encode() for i in range(count)}
    assert elapsed < count * ms / 1000 / 2  # in sequence it would take 6 s


async def test_non_multiplexing_flup_serves_concurrent_requests_one_by_one(flup_single: str) -> None:
    # flup without multiplexing reads nothing more from the connection while a
    # request runs, so the next BEGIN_REQUEST waits in the socket instead of
    # being refused with CANT_MPX_CONN: the requests succeed, in sequence.
    answers: dict[int, bytes] = {}

    async def one(conn, i: int) -> None:
        answers[i] = (await conn.request(cgi_params("GET", f"/slow?ms=100&tag={i}"))).body

    async with open_connection(flup_single) as conn:
        start = time.monotonic()
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for i in range(3):
                    nursery.start_soon(one, conn, i)
        assert time.monotonic() - start >= 0.3
    assert answers == {i: str(i).encode() for i in range(3)}


async def test_cancelled_request_leaves_the_connection_usable(flup: str) -> None:
    async with open_connection(flup) as conn:
        with trio.move_on_after(0.1) as scope:
            await conn.request(cgi_params("GET", "/slow?ms=500&tag=abandoned"))
        assert scope.cancelled_caught
        with trio.fail_after(10):
            response = await conn.request(cgi_params("GET", "/slow?tag=next"))
        assert response.body == b"next"
        assert conn.is_usable
        # flup cannot stop a running request: it finishes it and sends its
        # END_REQUEST, which the client swallows.
        with trio.fail_after(10):
            while conn.requests_in_flight:
                await trio.sleep(0.05)


async def test_kept_alive_connection_has_no_delayed_ack_stall(flup_mpx: str) -> None:
    # flup writes each response as several small sends without TCP_NODELAY;
    # without TCP_QUICKACK on our side every request after the first waited
    # 40 ms for Linux's delayed ACK (10 requests: about 440 ms).
    if not hasattr(socket, "TCP_QUICKACK"):
        pytest.skip("TCP_QUICKACK is Linux-only")
    async with open_connection(flup_mpx) as conn:
        await conn.request(cgi_params("GET", "/hello"))
        start = time.monotonic()
        for _ in range(10):
            await conn.request(cgi_params("GET", "/hello"))
        elapsed = time.monotonic() - start
    assert elapsed < 0.25
