"""The front-end in process: HTTP in, FastCGI out to real workers, and back."""

from __future__ import annotations

import hashlib
import json

import trio

from workers.echo import app as echo

from ._harness import RawClient, frontend, get, upstream_config, workers


def echo_json(response) -> dict:
    assert response.status == 200, (response.status, response.body[:300])
    return json.loads(response.body)


async def test_get_passes_the_nginx_params() -> None:
    async with workers(echo) as addresses, frontend(upstream_config(addresses)) as (port, _):
        response = await get(port, "/some/path?x=1&y=2", headers=[("X-Custom", "yes"), ("Cookie", "a=1"), ("Cookie", "b=2")])
        env = echo_json(response)["environ"]
    assert env["REQUEST_METHOD"] == "GET"
    assert env["REQUEST_URI"] == "/some/path?x=1&y=2"
    assert env["QUERY_STRING"] == "x=1&y=2"
    assert env["DOCUMENT_URI"] == "/some/path"
    assert env["SCRIPT_FILENAME"] == "/var/www/html/some/path"
    assert env["PATH_INFO"] == "/some/path"  # our worker maps REQUEST_URI when no PATH_INFO is sent
    assert env["HTTP_X_CUSTOM"] == "yes"
    assert env["HTTP_COOKIE"] == "a=1; b=2"
    assert env["HTTP_HOST"] == "test.local"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["SERVER_PORT"] == str(port)
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["GATEWAY_INTERFACE"] == "CGI/1.1"
    assert env["REDIRECT_STATUS"] == "200"
    assert response.header(b"content-type") == b"application/json"


async def test_header_params_follow_each_request_of_a_kept_connection() -> None:
    # The params of a connection's header fields are reused while the fields stay the
    # same: a field that changes, appears or goes must show in that very request.
    heads = [
        "Host: t\r\nCookie: a=1\r\nX-Step: one\r\n",
        "Host: t\r\nCookie: a=1\r\nX-Step: one\r\n",
        "Host: t\r\nCookie: a=2\r\nX-Step: one\r\n",
        "Host: t\r\nCookie: a=2\r\n",
        "Host: t\r\nCookie: a=2\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n",
        "Host: t\r\nCookie: a=2\r\n",
    ]
    async with workers(echo) as addresses, frontend(upstream_config(addresses)) as (port, _):
        async with RawClient.connect(port) as client:
            envs = []
            for number, head in enumerate(heads):
                body = "abc" if "Content-Length" in head else ""
                method = "POST" if body else "GET"
                await client.send(f"{method} /r{number} HTTP/1.1\r\n{head}\r\n{body}".encode())
                envs.append(echo_json(await client.response())["environ"])
    assert [env["REQUEST_URI"] for env in envs] == [f"/r{number}" for number in range(len(heads))]
    assert [env.get("HTTP_COOKIE") for env in envs] == ["a=1", "a=1", "a=2", "a=2", "a=2", "a=2"]
    assert [env.get("HTTP_X_STEP") for env in envs] == ["one", "one", "one", None, None, None]
    assert [env.get("CONTENT_TYPE") for env in envs] == ["", "", "", "", "text/plain", ""]
    assert [env.get("CONTENT_LENGTH") for env in envs] == ["", "", "", "", "3", ""]


async def test_keep_alive_and_pipelining_answer_in_order() -> None:
    async with workers(echo) as addresses, frontend(upstream_config(addresses)) as (port, _):
        async with RawClient.connect(port) as client:
            burst = b"".join(
                f"GET /n{i}?sleep_ms={30 - 10 * i} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for i in range(3)
            )
            await client.send(burst)
            paths = [echo_json(await client.response())["environ"]["REQUEST_URI"] for _ in range(3)]
            await client.send(b"GET /again HTTP/1.1\r\nHost: t\r\n\r\n")
            again = echo_json(await client.response())["environ"]["REQUEST_URI"]
    assert paths == ["/n0?sleep_ms=30", "/n1?sleep_ms=20", "/n2?sleep_ms=10"]
    assert again == "/again"


async def test_bodies_content_length_and_chunked() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    async with workers(echo) as addresses, frontend(
        upstream_config(addresses, frontend='max_body_size = "10m"')
    ) as (port, _):
        empty = echo_json(await get(port, "/u", method="POST", body=b""))
        assert empty["body_length"] == 0
        big = echo_json(await get(port, "/u", method="POST", body=body))
        assert big["body_length"] == len(body) and big["body_sha256"] == hashlib.sha256(body).hexdigest()
        async with RawClient.connect(port) as client:
            await client.send(b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            for piece in (b"hello ", b"chunked ", b"world"):
                await client.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            await client.send(b"0\r\n\r\n")
            chunked = echo_json(await client.response())
    assert chunked["body_length"] == 19
    assert chunked["environ"]["CONTENT_LENGTH"] == "19"  # read whole: the worker gets its true length


async def test_an_answer_before_the_body_keeps_the_connection() -> None:
    # As nginx: the rest of the body is read and dropped, and the next
    # request is served on the same connection.
    def early(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"early " + environ["REQUEST_URI"].encode()]

    body = b"u" * (2 * 1024 * 1024)
    async with workers(early) as addresses, frontend(upstream_config(addresses, frontend="max_body_size = 0")) as (port, _):
        async with RawClient.connect(port) as conn:
            for i in range(3):
                await conn.send(f"POST /r{i} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
                response = await conn.response()
                assert (response.status, response.body) == (200, b"early /r%d" % i)
            assert not conn.closed


async def test_large_download_is_streamed_whole() -> None:
    size = 5 * 1024 * 1024
    async with workers(echo) as addresses, frontend(upstream_config(addresses)) as (port, _):
        response = await get(port, f"/big?size={size}")
    assert response.status == 200
    assert response.body == b"x" * size


async def test_head_and_expect_continue() -> None:
    async with workers(echo) as addresses, frontend(upstream_config(addresses)) as (port, _):
        head = await get(port, "/h?size=1000", method="HEAD")
        assert head.status == 200 and head.body == b""
        async with RawClient.connect(port) as client:
            await client.send(b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            interim = await client.response()
            assert interim.status == 100
            await client.send(b"hello")
            final = echo_json(await client.response())
    assert final["body_length"] == 5


async def test_status_headers_and_stderr_from_the_worker() -> None:
    async with workers(echo) as addresses, frontend(upstream_config(addresses)) as (port, _):
        missing = await get(port, "/x?status=404")
        failing = await get(port, "/x?raise=1")
    assert missing.status == 404
    assert failing.status == 500
    assert b"Traceback" not in failing.body


async def test_bad_requests_get_4xx_and_the_server_serves_on() -> None:
    async with workers(echo) as addresses, frontend(upstream_config(addresses)) as (port, _):
        cases = [
            (b"GET /a%0ab HTTP/1.1\r\nHost: t\r\n\r\n", 400),
            (b"GET /../etc/passwd HTTP/1.1\r\nHost: t\r\n\r\n", 400),
            (b"GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: t\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999\r\n\r\n", 413),
            (b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n", 431),
            (b"\x16\x03\x01garbage\r\n\r\n", 400),
        ]
        for raw, expected in cases:
            async with RawClient.connect(port) as client:
                await client.send(raw)
                response = await client.response()
                assert response.status == expected, (raw[:60], response.status)
                assert b"Traceback" not in response.body
        env = echo_json(await get(port, "/ok", headers=[("Proxy", "http://evil:1"), ("X_Foo-Bar", "spoof"), ("X-Foo-Bar", "real")]))["environ"]
    assert "HTTP_PROXY" not in env
    assert env["HTTP_X_FOO_BAR"] == "real"


async def test_no_worker_answers_502_at_once() -> None:
    async with workers(echo) as addresses:
        dead = addresses[0]
    async with frontend(upstream_config([dead])) as (port, _):
        with trio.fail_after(5):
            response = await get(port, "/")
    assert response.status == 502
    assert b"Traceback" not in response.body


async def test_multiplexes_over_one_connection() -> None:
    # 20 concurrent requests of 300 ms each: one worker process, one FastCGI
    # connection (connections = 1): only multiplexing finishes them together.
    async with workers(echo) as addresses, frontend(
        upstream_config(addresses, upstream="connections = 1")
    ) as (port, server):
        with trio.fail_after(3):
            async with trio.open_nursery() as nursery:
                results = []

                async def one(i: int) -> None:
                    results.append(echo_json(await get(port, f"/s{i}?sleep_ms=300")))

                for i in range(20):
                    nursery.start_soon(one, i)
        upstream = server.upstreams["app"]
        assert upstream.servers[0].multiplexed is True
        assert upstream.servers[0].connection_count == 1
    assert len(results) == 20


async def test_weights_and_failover() -> None:
    async with workers(echo, count=2) as addresses:
        config = (
            "[frontend]\naccess_log = false\n[upstream.app]\n"
            f'servers = [{{ address = "{addresses[0]}", weight = 3 }}, "{addresses[1]}"]\n'
        )
        async with frontend(config) as (port, _):
            seen = [echo_json(await get(port, "/w"))["worker"].split()[0] for _ in range(40)]
    assert seen.count(addresses[0]) == 30
    assert seen.count(addresses[1]) == 10


async def test_a_burst_past_fcgi_max_reqs_opens_few_connections_and_closes_the_extra() -> None:
    # The worker takes 4 requests per connection; 24 concurrent slow requests
    # must not open a connection each, and the extras close once idle.
    from fcgi_cluster.worker import WorkerConfig

    async with workers(echo, config=WorkerConfig(max_requests=4)) as addresses, frontend(
        upstream_config(addresses, upstream="connections = 2")
    ) as (port, server):
        upstream = server.upstreams["app"].servers[0]
        peak = 0

        async def one(i: int) -> None:
            nonlocal peak
            echo_json(await get(port, f"/b{i}?sleep_ms=100"))
            peak = max(peak, upstream.connection_count)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for i in range(24):
                    nursery.start_soon(one, i)
        await trio.sleep(0.05)
        assert upstream.max_reqs == 4
        assert 2 <= peak <= 8
        assert upstream.connection_count <= 2


async def test_max_conns_queues_in_order_and_gives_up_after_connect_timeout() -> None:
    # One request per connection and one connection: requests wait in line for
    # it and get it in arrival order; one still waiting after connect_timeout
    # gets a 503 (long before the connection comes back). A busy server is not
    # a failed one: the next request is served, not refused for fail_timeout.
    async with workers(echo) as addresses, frontend(
        upstream_config(addresses, upstream='multiplex = "off"\nconnect_timeout = "0.4s"')
        .replace(f'"{addresses[0]}"', f'{{ address = "{addresses[0]}", max_conns = 1 }}')
    ) as (port, server):
        upstream = server.upstreams["app"].servers[0]
        answers: dict[str, tuple[int, float]] = {}
        began = trio.current_time()

        async def one(name: str, target: str) -> None:
            response = await get(port, target)
            answers[name] = (response.status, trio.current_time() - began)
            if response.status == 200:
                assert echo_json(response)["environ"]["PATH_INFO"] == target.partition("?")[0]

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(one, "first", "/first?sleep_ms=300")
                await trio.sleep(0.1)
                nursery.start_soon(one, "second", "/second?sleep_ms=500")
                await trio.sleep(0.1)
                nursery.start_soon(one, "third", "/third")
        after = await get(port, "/after")
        assert upstream.connection_count == 1
    assert answers["first"][0] == answers["second"][0] == 200
    # second waited 0.2 s for the connection, then ran 0.5 s.
    assert answers["second"][1] >= 0.75
    # third waited behind both: past its 0.4 s, while second still ran.
    assert answers["third"][0] == 503
    assert 0.45 <= answers["third"][1] < answers["second"][1]
    assert echo_json(after)["environ"]["PATH_INFO"] == "/after"


async def test_waiters_in_line_for_a_connection_leave_it_when_cancelled() -> None:
    # The front-end shuts down (its tasks are cancelled) while requests wait
    # in line: each leaves the line, and nothing is left waiting.
    async with workers(echo) as addresses:
        config = upstream_config(addresses, upstream='multiplex = "off"').replace(
            f'"{addresses[0]}"', f'{{ address = "{addresses[0]}", max_conns = 1 }}'
        )
        async with frontend(config) as (port, server):
            upstream = server.upstreams["app"].servers[0]
            async with trio.open_nursery() as nursery:
                for i in range(3):
                    nursery.start_soon(get, port, f"/q{i}?sleep_ms=2000")
                with trio.fail_after(5):
                    while len(upstream._queue) < 2:
                        await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
            # The clients hung up; the front-end's own tasks are cancelled as
            # it stops, and the line empties.
        assert len(upstream._queue) == 0


async def test_max_connections_holds_new_clients_until_one_leaves() -> None:
    async with workers(echo) as addresses, frontend(
        upstream_config(addresses, frontend="max_connections = 2")
    ) as (port, _):
        async with RawClient.connect(port) as first, RawClient.connect(port) as second:
            for client in (first, second):
                await client.send(b"GET /keep HTTP/1.1\r\nHost: t\r\n\r\n")
                echo_json(await client.response())
            # Both slots are taken by idle keep-alive clients: a third waits
            # in the kernel's backlog, unanswered.
            third_stream = await trio.open_tcp_stream("127.0.0.1", port)
            third = RawClient(third_stream)
            await third.send(b"GET /third HTTP/1.1\r\nHost: t\r\n\r\n")
            with trio.move_on_after(0.3) as waited:
                await third.response()
            assert waited.cancelled_caught
            await first.stream.aclose()
            with trio.fail_after(5):
                answer = echo_json(await third.response())
            await third_stream.aclose()
    assert answer["environ"]["REQUEST_URI"] == "/third"


async def _burst_peak(worker_config: object, requests: int = 12) -> tuple[object, int]:
    """Concurrent slow requests through the front-end to one worker: (its Server, peak connections)."""
    async with workers(echo, config=worker_config) as addresses, frontend(upstream_config(addresses)) as (port, server):
        upstream = server.upstreams["app"].servers[0]
        peak = 0

        async def one(i: int) -> None:
            nonlocal peak
            echo_json(await get(port, f"/p{i}?sleep_ms=100"))
            peak = max(peak, upstream.connection_count)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for i in range(requests):
                    nursery.start_soon(one, i)
    return upstream, peak


async def test_auto_connections_open_one_per_process_the_worker_declares() -> None:
    # connections = "auto" (the default): a worker saying FCGI_CLUSTER_PROCESSES=3
    # gets up to three connections under a burst, one saying 1 gets one.
    from fcgi_cluster.worker import WorkerConfig

    for processes in (1, 3):
        upstream, peak = await _burst_peak(WorkerConfig(processes=processes))
        assert upstream.multiplexed is True
        assert peak == processes


async def test_auto_connections_without_a_process_count_use_two() -> None:
    # A multiplexing worker that does not answer FCGI_CLUSTER_PROCESSES (as
    # flup's would not) gets AUTO_CONNECTIONS under a burst.
    from fcgi_cluster.frontend._upstream import AUTO_CONNECTIONS
    from fcgi_cluster.worker import WorkerConfig

    upstream, peak = await _burst_peak(WorkerConfig(processes=None))
    assert upstream.multiplexed is True
    assert peak == AUTO_CONNECTIONS == 2
