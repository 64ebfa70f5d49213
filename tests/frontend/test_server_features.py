"""The front-end's features end to end, in process: routes, balancing, failures, limits, TLS.

Every test runs the real front-end (``serve_frontend``) in front of real
workers (``fcgi_cluster.worker.serve``) or of a scripted FastCGI peer
(``tests/client/_fake_worker.py``) on loopback, and talks raw HTTP to it.
Timeouts in the configurations are a few tenths of a second, so the tests
that wait for one wait that long for real: the sockets and worker threads
are real, which ``autojump_clock`` cannot fast-forward.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import random
import re
import ssl
from pathlib import Path

import trio

from fcgi_cluster.protocol import AbortRequest, ConnectionClosed, EndRequest, Request, Stdin
from fcgi_cluster.worker import WorkerConfig, serve
from tests.client._fake_worker import Peer, fake_worker, ok
from workers.echo import app as echo

from ._harness import (
    HTTPResponse,
    RawClient,
    dead_address,
    frontend,
    get,
    request_bytes,
    stoppable_worker,
    tls_connect,
    upstream_config,
    workers,
)

MiB = 1024 * 1024


def echo_json(response: HTTPResponse) -> dict:
    assert response.status == 200, (response.status, response.body[:300])
    return json.loads(response.body)


def served_by(response: HTTPResponse) -> str:
    """The listen address of the echo worker that answered."""
    return echo_json(response)["worker"].split()[0]


def assert_no_traceback(response: HTTPResponse) -> None:
    assert b"Traceback" not in response.body
    assert b"Traceback" not in response.raw_head


def servers_line(*entries: str) -> str:
    return "servers = [" + ", ".join(entries) + "]\n"


# --------------------------------------------------------------------------
# 1. Static routes
# --------------------------------------------------------------------------


def make_site(tmp_path: Path) -> tuple[Path, Path]:
    """A static directory, and a secret file beside it that must never be served."""
    www = tmp_path / "www"
    (www / "sub").mkdir(parents=True)
    (www / "hello.txt").write_bytes(b"hello, static world\n")
    (www / "sub" / "index.html").write_bytes(b"<p>sub index</p>\n")
    secret = tmp_path / "secret"
    secret.write_bytes(b"TOP-SECRET-CONTENT\n")
    (www / "link").symlink_to(secret)
    (www / "sub" / "up").symlink_to(tmp_path)  # a directory link out of the root
    return www, secret


def static_config(www: Path, address: str) -> str:
    return (
        "[frontend]\naccess_log = false\n"
        f'[upstream.app]\nservers = ["{address}"]\n'
        f'[[route]]\nprefix = "/static/"\nstatic = "{www}"\n'
        '[[route]]\nprefix = "/app/"\nupstream = "app"\n'
    )


async def test_static_file_with_validators_ranges_and_head(tmp_path: Path) -> None:
    www, _ = make_site(tmp_path)
    info = os.stat(www / "hello.txt")
    etag = b'"%x-%x"' % (int(info.st_mtime), info.st_size)
    async with workers(echo) as addresses, frontend(static_config(www, addresses[0])) as (port, _):
        whole = await get(port, "/static/hello.txt")
        assert whole.status == 200
        assert whole.body == b"hello, static world\n"
        assert whole.header(b"content-type") == b"text/plain; charset=utf-8"
        assert whole.header(b"content-length") == b"20"
        assert whole.header(b"etag") == etag
        assert whole.header(b"last-modified") == email.utils.formatdate(int(info.st_mtime), usegmt=True).encode()

        cached = await get(port, "/static/hello.txt", headers=[("If-None-Match", etag.decode())])
        assert cached.status == 304 and cached.body == b""
        assert cached.header(b"etag") == etag
        stale = await get(port, "/static/hello.txt", headers=[("If-None-Match", '"0-0"')])
        assert stale.status == 200 and stale.body == b"hello, static world\n"

        part = await get(port, "/static/hello.txt", headers=[("Range", "bytes=7-12")])
        assert part.status == 206
        assert part.body == b"static"
        assert part.header(b"content-range") == b"bytes 7-12/20"
        tail = await get(port, "/static/hello.txt", headers=[("Range", "bytes=-6")])
        assert tail.status == 206 and tail.body == b"world\n"

        # HEAD: the GET's headers and no body; the next response on the same
        # connection must start right after the head.
        async with RawClient.connect(port) as client:
            await client.send(request_bytes("/static/hello.txt", method="HEAD"))
            head = await client.response(head_request=True)
            await client.send(request_bytes("/static/sub/index.html"))
            after = await client.response()
        assert head.status == 200 and head.header(b"content-length") == b"20"
        assert head.header(b"etag") == etag
        assert after.status == 200 and after.body == b"<p>sub index</p>\n"


async def test_static_never_leaves_its_directory(tmp_path: Path) -> None:
    www, secret = make_site(tmp_path)
    async with workers(echo) as addresses, frontend(static_config(www, addresses[0])) as (port, _):
        # "/static/../secret" is "/secret" once normalised, as nginx makes
        # $uri: no longer under /static/, and no other route takes it.
        for target, status in (
            ("/static/../secret", 404),
            ("/static/%2e%2e/secret", 404),
            ("/static/..%2fsecret", 404),
            ("/static/%2e%2e%2fsecret", 404),
            ("/static/%2e%2e/%2e%2e/etc/passwd", 400),  # climbs above "/"
            ("/static/%252e%252e/secret", 404),  # decoded once: a literal "%2e%2e" directory
            ("/static/link", 404),  # a symlink to the secret file
            ("/static/sub/up/secret", 404),  # a symlinked directory leading out
        ):
            response = await get(port, target)
            assert response.status == status, (target, response.status)
            assert b"TOP-SECRET" not in response.body, target
        assert secret.read_bytes() == b"TOP-SECRET-CONTENT\n"  # it was there to be found

        moved = await get(port, "/static/sub")
        assert moved.status == 301
        assert moved.header(b"location") == b"/static/sub/"
        index = await get(port, "/static/sub/")
        assert index.status == 200 and index.body == b"<p>sub index</p>\n"
        missing = await get(port, "/static/nope.txt")
        assert missing.status == 404
        post = await get(port, "/static/hello.txt", method="POST", body=b"x")
        assert post.status == 405

        env = echo_json(await get(port, "/app/dynamic?q=1"))["environ"]
        assert env["REQUEST_URI"] == "/app/dynamic?q=1"


# --------------------------------------------------------------------------
# 2. Routes: order, regex, params, root, split_path_info
# --------------------------------------------------------------------------

ROUTES = r"""
[[route]]
regex = '^/api/v2/'
upstream = "app"
params = { ROUTE = "v2" }

[[route]]
prefix = "/api/"
upstream = "app"
params = { ROUTE = "api", APP_ENV = "x" }

[[route]]
regex = '^/api/v2/never'
upstream = "app"
params = { ROUTE = "shadowed" }

[[route]]
regex = '\.php(/|$)'
upstream = "app"
root = "/srv/php"
split_path_info = '^(.+?\.php)(/.*)$'
params = { ROUTE = "php" }

[[route]]
prefix = "/site/"
upstream = "app"
root = "/srv/site"
"""


async def test_routes_first_match_wins_and_shape_the_params() -> None:
    async with workers(echo) as addresses, frontend(upstream_config(addresses, routes=ROUTES)) as (port, _):
        v2 = echo_json(await get(port, "/api/v2/never"))["environ"]
        api = echo_json(await get(port, "/api/users?id=3"))["environ"]
        php = echo_json(await get(port, "/shop/index.php/cart/42?x=1"))["environ"]
        bare_php = echo_json(await get(port, "/info.php"))["environ"]
        site = echo_json(await get(port, "/site/a/b.html"))["environ"]
        unrouted = await get(port, "/elsewhere")

    assert v2["ROUTE"] == "v2"  # the earlier regex route, not the prefix nor the shadowed one
    assert "APP_ENV" not in v2

    assert api["ROUTE"] == "api"
    assert api["APP_ENV"] == "x"
    assert api["QUERY_STRING"] == "id=3"

    assert php["ROUTE"] == "php"
    assert php["DOCUMENT_ROOT"] == "/srv/php"
    assert php["SCRIPT_NAME"] == "/shop/index.php"
    assert php["PATH_INFO"] == "/cart/42"
    assert php["SCRIPT_FILENAME"] == "/srv/php/shop/index.php"
    assert php["DOCUMENT_URI"] == "/shop/index.php/cart/42"
    assert php["REQUEST_URI"] == "/shop/index.php/cart/42?x=1"

    # No PATH_INFO part: the split does not match and the whole path is the script.
    assert bare_php["SCRIPT_FILENAME"] == "/srv/php/info.php"

    assert site["DOCUMENT_ROOT"] == "/srv/site"
    assert site["SCRIPT_FILENAME"] == "/srv/site/site/a/b.html"
    assert "ROUTE" not in site

    assert unrouted.status == 404
    assert b"404" in unrouted.body


# --------------------------------------------------------------------------
# 3. Balancing through the server
# --------------------------------------------------------------------------


async def test_least_conn_sends_new_requests_to_the_idle_worker() -> None:
    async with workers(echo, count=2) as addresses, frontend(
        upstream_config(addresses, upstream='balance = "least_conn"')
    ) as (port, server):
        balancer = server.upstreams["app"].balancer
        slow: list[str] = []
        async with trio.open_nursery() as nursery:

            async def slow_request() -> None:
                slow.append(served_by(await get(port, "/slow?sleep_ms=600")))

            nursery.start_soon(slow_request)
            with trio.fail_after(2):
                while sum(entry["active"] for entry in balancer.snapshot()) == 0:
                    await trio.sleep(0.005)
            fast = [served_by(await get(port, f"/fast{i}")) for i in range(6)]
            busy = [entry["address"] for entry in balancer.snapshot() if entry["active"]]
    assert len(busy) == 1
    assert slow == busy
    assert set(fast) == set(addresses) - set(busy)


async def test_ip_hash_keeps_a_client_on_one_worker() -> None:
    async with workers(echo, count=3) as addresses, frontend(
        upstream_config(addresses, upstream='balance = "ip_hash"')
    ) as (port, _):
        seen = {served_by(await get(port, f"/i{i}")) for i in range(12)}
    assert len(seen) == 1
    assert seen <= set(addresses)


async def test_hash_on_a_cookie_is_sticky_and_spreads() -> None:
    async with workers(echo, count=2) as addresses, frontend(
        upstream_config(addresses, upstream='balance = "hash"\nhash_key = "cookie:sid"')
    ) as (port, _):
        homes: dict[str, str] = {}
        for sid in (f"user{n}" for n in range(24)):
            cookie = [("Cookie", f"theme=dark; sid={sid}; lang=en")]
            first = served_by(await get(port, "/h", headers=cookie))
            again = {served_by(await get(port, f"/h{n}", headers=cookie)) for n in range(3)}
            assert again == {first}, sid
            homes[sid] = first
        # The cookie is the key, not the connection or the rest of the header.
        other_cookies = {served_by(await get(port, "/h", headers=[("Cookie", f"sid=user0; x={n}")])) for n in range(4)}
    assert set(homes.values()) == set(addresses)
    assert other_cookies == {homes["user0"]}


async def test_backup_takes_over_only_when_the_primary_is_dead() -> None:
    async with workers(echo) as backup, stoppable_worker(echo) as (primary, stop_primary):
        config = (
            "[frontend]\naccess_log = false\n[upstream.app]\n"
            + servers_line(f'"{primary}"', f'{{ address = "{backup[0]}", backup = true }}')
        )
        async with frontend(config) as (port, _):
            alive = {served_by(await get(port, f"/b{i}")) for i in range(8)}
            await stop_primary()  # type: ignore[operator]
            after = [await get(port, f"/a{i}") for i in range(6)]
    assert alive == {primary}
    assert [response.status for response in after] == [200] * 6
    assert {served_by(response) for response in after} == {backup[0]}


async def test_down_server_is_never_used() -> None:
    async with workers(echo, count=3) as addresses:
        config = (
            "[frontend]\naccess_log = false\n[upstream.app]\n"
            + servers_line(f'"{addresses[0]}"', f'{{ address = "{addresses[1]}", down = true }}', f'"{addresses[2]}"')
        )
        async with frontend(config) as (port, _):
            seen = [served_by(await get(port, f"/d{i}")) for i in range(12)]
    assert addresses[1] not in seen
    assert seen.count(addresses[0]) == 6 and seen.count(addresses[2]) == 6


# --------------------------------------------------------------------------
# 4. Failures
# --------------------------------------------------------------------------


async def test_a_worker_not_listening_is_skipped_without_an_error() -> None:
    dead = dead_address()
    async with workers(echo) as addresses, frontend(upstream_config([dead, addresses[0]])) as (port, server):
        responses = [await get(port, f"/r{i}") for i in range(4)]
        # A connect error is safe to retry even for a POST: the worker never saw it.
        post = await get(port, "/p", method="POST", body=b"payload")
        snapshot = server.upstreams["app"].balancer.snapshot()
    assert [served_by(response) for response in responses] == [addresses[0]] * 4
    assert echo_json(post)["body_length"] == 7
    assert snapshot[0]["total_fails"] == 1  # tried once, then left out for fail_timeout
    assert snapshot[0]["available"] is False


async def test_a_retry_with_every_other_server_out_tries_the_one_due_back_first() -> None:
    # B failed while it was away and sits out its 30 s; when A fails now, the
    # request goes to B (back since) rather than answering 502.
    a, b = dead_address(), dead_address()
    config = ("[frontend]\naccess_log = false\n[upstream.app]\n"
              + servers_line(f'{{ address = "{a}", fail_timeout = "0.3s" }}', f'{{ address = "{b}", fail_timeout = "30s" }}'))
    async with frontend(config) as (port, server), trio.open_nursery() as nursery:
        assert (await get(port, "/both-away")).status == 502
        await nursery.start(serve, echo, b, WorkerConfig())
        # Every server out: a first attempt is answered at once.
        assert (await get(port, "/all-out")).status == 502
        await trio.sleep(0.4)  # A's trial is due; B still out
        served = await get(port, "/served")
        snapshot = server.upstreams["app"].balancer.snapshot()
        nursery.cancel_scope.cancel()
    assert served_by(served) == b
    assert snapshot[1]["available"] is True  # its trial restored it
    assert snapshot[0]["available"] is False


def garbage_worker(received: list[bytes]):
    """A worker that answers GET_VALUES properly, then sends noise as its response."""
    noise = bytes([0x7F]) + random.Random(1234).randbytes(300)  # version byte 0x7F: never a record

    async def handler(stream: trio.SocketStream) -> None:
        peer = Peer(stream)
        got = await peer.next_request()
        if got is None:
            return
        request, _ = got
        received.append(request.params[b"REQUEST_URI"])
        await peer.send_bytes(noise)
        await trio.sleep_forever()

    return fake_worker(handler)


async def test_garbage_from_a_worker_is_a_502_and_that_worker_is_left_out() -> None:
    received: list[bytes] = []
    async with garbage_worker(received) as bad, workers(echo) as good:
        async with frontend(upstream_config([bad, good[0]])) as (port, server):
            # A POST that reached the worker is not sent again (it may have acted on it).
            post = await get(port, "/charge", method="POST", body=b"card=1")
            later = [await get(port, f"/after{i}") for i in range(5)]
            snapshot = server.upstreams["app"].balancer.snapshot()
    assert post.status == 502
    assert_no_traceback(post)
    assert received == [b"/charge"]
    assert [served_by(response) for response in later] == [good[0]] * 5
    assert snapshot[0]["available"] is False


async def test_garbage_answer_to_a_get_is_retried_on_the_next_worker() -> None:
    received: list[bytes] = []
    async with garbage_worker(received) as bad, workers(echo) as good:
        async with frontend(upstream_config([bad, good[0]])) as (port, _):
            response = await get(port, "/idempotent")
    assert received == [b"/idempotent"]
    assert served_by(response) == good[0]


async def test_a_silent_worker_times_out_with_504() -> None:
    seen: list[object] = []

    async def silent(stream: trio.SocketStream) -> None:
        peer = Peer(stream)
        while True:
            event = await peer.next_event()
            seen.append(type(event))
            if isinstance(event, ConnectionClosed):
                return

    async with fake_worker(silent) as address, frontend(
        upstream_config([address], upstream='read_timeout = "0.3s"')
    ) as (port, _):
        started = trio.current_time()
        with trio.fail_after(3):
            response = await get(port, "/never")
        elapsed = trio.current_time() - started
        with trio.fail_after(2):
            while AbortRequest not in seen and ConnectionClosed not in seen:
                await trio.sleep(0.01)
    assert response.status == 504
    assert_no_traceback(response)
    assert 0.25 <= elapsed < 1.0, elapsed
    assert Request in seen  # the worker did get the request it never answered


async def test_every_server_down_is_a_quick_502() -> None:
    async with frontend(upstream_config([dead_address(), dead_address()])) as (port, _):
        started = trio.current_time()
        first = await get(port, "/")
        second = await get(port, "/")  # both servers are out now: no connect attempt at all
        elapsed = trio.current_time() - started
    assert first.status == 502 and second.status == 502
    assert_no_traceback(first)
    assert elapsed < 1.0


async def test_tries_1_gives_up_after_one_server() -> None:
    dead = dead_address()
    async with workers(echo) as addresses, frontend(
        upstream_config([dead, addresses[0]], upstream="tries = 1")
    ) as (port, _):
        first = await get(port, "/one")
        second = await get(port, "/two")
    # tries = 1: the dead server was the one try (round robin starts at the
    # first server), so the live one is not asked, as nginx's
    # fastcgi_next_upstream_tries 1.
    assert first.status == 502
    assert_no_traceback(first)
    assert served_by(second) == addresses[0]


# --------------------------------------------------------------------------
# 5. A client that hangs up aborts its request upstream
# --------------------------------------------------------------------------


async def test_client_disconnect_sends_abort_request_and_serving_goes_on() -> None:
    slow_arrived = trio.Event()
    gave_up = trio.Event()  # the worker was told, one way or another, to drop /slow
    aborted: list[bytes] = []
    closed_with_slow_pending: list[bool] = []

    async def handler(stream: trio.SocketStream) -> None:
        peer = Peer(stream)
        uris: dict[int, bytes] = {}
        pending: set[int] = set()
        while True:
            event = await peer.next_event()
            if isinstance(event, ConnectionClosed):
                if pending:
                    closed_with_slow_pending.append(True)
                    gave_up.set()
                return
            if isinstance(event, Request):
                uris[event.request_id] = event.params[b"REQUEST_URI"]
            elif isinstance(event, Stdin) and not event.data:
                if uris[event.request_id] == b"/slow":
                    pending.add(event.request_id)  # and never answered
                    slow_arrived.set()
                else:
                    await peer.respond(event.request_id, ok(b"fast answer", "Content-Type: text/plain"))
            elif isinstance(event, AbortRequest):
                aborted.append(uris[event.request_id])
                pending.discard(event.request_id)
                # The spec: the application ends an aborted request with END_REQUEST.
                await peer.send(EndRequest(event.request_id, 1))
                gave_up.set()

    async with fake_worker(handler) as address, frontend(upstream_config([address])) as (port, server):
        with trio.fail_after(3):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(request_bytes("/slow"))
            await slow_arrived.wait()
            await stream.aclose()
            await gave_up.wait()
            others = [await get(port, f"/fast{i}") for i in range(3)]
            while server.active_requests:
                await trio.sleep(0.01)
    # Closing the FastCGI connection instead would also end every other
    # request multiplexed on it.
    assert closed_with_slow_pending == []
    assert aborted == [b"/slow"]
    assert [(response.status, response.body) for response in others] == [(200, b"fast answer")] * 3


async def test_a_hang_up_does_not_cut_other_requests_sharing_the_upstream_connection() -> None:
    # connections = 1: both requests are multiplexed over one FastCGI
    # connection, so the hang-up must abort one request, not the connection.
    async with workers(echo) as addresses, frontend(
        upstream_config(addresses, upstream="connections = 1")
    ) as (port, server):
        upstream_server = server.upstreams["app"].servers[0]
        with trio.fail_after(3):
            async with RawClient.connect(port) as patient:
                await patient.send(request_bytes("/patient?sleep_ms=400"))
                leaver = await trio.open_tcp_stream("127.0.0.1", port)
                await leaver.send_all(request_bytes("/leaver?sleep_ms=400"))
                while server.active_requests < 2:
                    await trio.sleep(0.01)
                await trio.sleep(0.1)  # both requests are at the worker
                await leaver.aclose()
                answer = await patient.response()
        connections = upstream_server.connection_count
    assert answer.status == 200, answer.body[:200]
    assert echo_json(answer)["environ"]["REQUEST_URI"] == "/patient?sleep_ms=400"
    assert connections == 1


# --------------------------------------------------------------------------
# 6. Health checks
# --------------------------------------------------------------------------


def health_app(state: dict[str, bool]):
    """echo, except that ``/ping`` answers 200 or 503 as ``state["healthy"]`` says."""

    def app(environ, start_response):
        if environ.get("DOCUMENT_URI") == "/ping":
            status = "200 OK" if state["healthy"] else "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain"), ("Content-Length", "4")])
            return [b"pong"]
        return echo(environ, start_response)

    return app


async def test_health_checks_keep_requests_off_a_failing_worker() -> None:
    sick_state = {"healthy": False}
    checks = '[upstream.app.health_check]\npath = "/ping"\ninterval = "0.2s"\ntimeout = "0.2s"\n'
    async with workers(health_app({"healthy": True})) as well, workers(health_app(sick_state)) as sick:
        async with frontend(upstream_config([sick[0], well[0]], upstream=checks)) as (port, server):
            upstream = server.upstreams["app"]
            with trio.fail_after(2):
                while upstream.unhealthy != {0}:
                    await trio.sleep(0.01)
            while_sick = [served_by(await get(port, f"/s{i}")) for i in range(6)]

            sick_state["healthy"] = True
            with trio.fail_after(2):
                while upstream.unhealthy:
                    await trio.sleep(0.01)
            recovered = [served_by(await get(port, f"/r{i}")) for i in range(6)]
    assert while_sick == [well[0]] * 6
    assert set(recovered) == {sick[0], well[0]}


# --------------------------------------------------------------------------
# 7. Client timeouts
# --------------------------------------------------------------------------

TIMEOUTS = 'header_timeout = "0.3s"\nbody_timeout = "0.3s"\nkeepalive_timeout = "0.3s"'

#: A 0.3 s timeout must fire well before this: loopback and an idle loop add
#: milliseconds, and a timeout applied twice (0.6 s) must not pass.
TIMEOUT_BOUND = 0.5


async def test_header_timeout_answers_408_and_closes() -> None:
    async with workers(echo) as addresses, frontend(upstream_config(addresses, frontend=TIMEOUTS)) as (port, _):
        async with RawClient.connect(port) as client:
            started = trio.current_time()
            await client.send(b"GET /slowloris HTTP/1.1\r\nHost: t\r\nX-Half: ")
            with trio.fail_after(2):
                response = await client.response()
                closed = await client.at_eof()
            elapsed = trio.current_time() - started
    assert response.status == 408
    assert response.header(b"connection") == b"close"
    assert closed
    assert 0.25 <= elapsed < TIMEOUT_BOUND, elapsed


async def test_idle_keepalive_connection_is_closed_silently() -> None:
    frontend_options = 'header_timeout = "5s"\nkeepalive_timeout = "0.3s"'
    async with workers(echo) as addresses, frontend(upstream_config(addresses, frontend=frontend_options)) as (port, _):
        async with RawClient.connect(port) as client:
            await client.send(request_bytes("/first"))
            first = await client.response()
            assert first.header(b"connection") != b"close"
            started = trio.current_time()
            closed = await client.at_eof(timeout=2)  # nothing sent: no 408, just the close
            elapsed = trio.current_time() - started
    assert first.status == 200
    assert closed
    # The keep-alive timeout, not the 5 s header timeout, applies between requests.
    assert 0.25 <= elapsed < TIMEOUT_BOUND, elapsed


async def test_body_timeout_answers_408() -> None:
    async with workers(echo) as addresses, frontend(upstream_config(addresses, frontend=TIMEOUTS)) as (port, _):
        async with RawClient.connect(port) as client:
            await client.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + b"a" * 10)
            started = trio.current_time()
            with trio.fail_after(2):
                small = await client.response()
                small_elapsed = trio.current_time() - started
                small_closed = await client.at_eof()
        # A body too large to be buffered is streamed to the worker as it
        # arrives; a client that stalls in the middle of one is still a 408.
        async with RawClient.connect(port) as client:
            await client.send(
                b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 500000\r\n\r\n" + b"b" * 100_000
            )
            started = trio.current_time()
            with trio.fail_after(2):
                large = await client.response()
                large_elapsed = trio.current_time() - started
                large_closed = await client.at_eof()
        after = await get(port, "/still-serving")
    assert small.status == 408 and small_closed
    assert large.status == 408 and large_closed
    assert 0.25 <= small_elapsed < TIMEOUT_BOUND, small_elapsed
    assert 0.25 <= large_elapsed < TIMEOUT_BOUND, large_elapsed
    assert_no_traceback(large)
    assert after.status == 200


# --------------------------------------------------------------------------
# 8. Limits from the configuration
# --------------------------------------------------------------------------


async def test_body_header_and_request_limits() -> None:
    limits = 'max_body_size = "1k"\nmax_header_size = "1k"\nmax_headers = 5\nkeepalive_requests = 3'
    async with workers(echo) as addresses, frontend(upstream_config(addresses, frontend=limits)) as (port, _):
        too_long = await get(port, "/b", method="POST", body=b"z" * 2000)
        fits = await get(port, "/b", method="POST", body=b"z" * 1024)

        chunked_head = b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunk = b"200\r\n" + b"c" * 0x200 + b"\r\n"  # 512 bytes
        async with RawClient.connect(port) as client:
            # One write: the front-end closes after its 413, and more writes
            # could meet a reset before the answer is read.
            await client.send(chunked_head + chunk * 3)
            chunked = await client.response()
            chunked_closed = await client.at_eof()
        async with RawClient.connect(port) as client:
            await client.send(chunked_head + chunk * 2 + b"0\r\n\r\n")
            chunked_fits = await client.response()

        big_head = await get(port, "/h", headers=[("X-Pad", "p" * 1100)])
        near_head = await get(port, "/h", headers=[("X-Pad", "p" * 800)])
        many = await get(port, "/h", headers=[(f"X-H{i}", "v") for i in range(5)])  # + Host: 6 fields
        enough = await get(port, "/h", headers=[(f"X-H{i}", "v") for i in range(4)])

        async with RawClient.connect(port) as client:
            kept = []
            for i in range(3):
                await client.send(request_bytes(f"/k{i}"))
                kept.append(await client.response())
            kept_closed = await client.at_eof()

    assert too_long.status == 413
    assert echo_json(fits)["body_length"] == 1024
    assert chunked.status == 413 and chunked_closed
    assert echo_json(chunked_fits)["body_length"] == 1024
    assert big_head.status == 431
    assert echo_json(near_head)["environ"]["HTTP_X_PAD"] == "p" * 800
    assert many.status == 431
    assert echo_json(enough)["environ"]["HTTP_X_H3"] == "v"
    assert [response.status for response in kept] == [200, 200, 200]
    # HTTP/1.1 keeps the connection by default: only the last one says otherwise.
    assert [response.header(b"connection") for response in kept] == [None, None, b"close"]
    assert kept_closed


# --------------------------------------------------------------------------
# 9. Access log
# --------------------------------------------------------------------------

COMBINED = re.compile(
    rb'^(?P<addr>\S+) - - \[(?P<time>\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4})\] '
    rb'"(?P<method>\S+) (?P<target>\S+) HTTP/(?P<version>1\.[01])" (?P<status>\d{3}) (?P<bytes>\d+) '
    rb'"(?P<referer>[^"]*)" "(?P<agent>[^"]*)"$'
)


async def test_access_log_in_combined_format(tmp_path: Path) -> None:
    log_path = tmp_path / "access.log"
    config_text = (
        f'[frontend]\naccess_log = "{log_path}"\n'
        "[upstream.app]\nservers = [{servers}]\n"
    )
    async with workers(echo) as addresses:
        servers = ", ".join(f'"{address}"' for address in addresses)
        async with frontend(config_text, servers=servers) as (port, _):
            ok_response = await get(
                port, "/page?x=1&y=2",
                headers=[("Referer", "http://example.test/from"), ("User-Agent", "tester/1.0 (x)")],
            )
            missing = await get(port, "/gone?status=404", headers=[("User-Agent", "other")])
            with trio.fail_after(2):
                while log_path.read_bytes().count(b"\n") < 2:
                    await trio.sleep(0.01)
    lines = log_path.read_bytes().splitlines()
    assert len(lines) == 2
    first, second = (COMBINED.match(line) for line in lines)
    assert first is not None and second is not None, lines
    assert first["addr"] == b"127.0.0.1"
    assert first["method"] == b"GET" and first["target"] == b"/page?x=1&y=2"
    assert first["status"] == b"200" and int(first["bytes"]) == len(ok_response.body)
    assert first["referer"] == b"http://example.test/from"
    assert first["agent"] == b"tester/1.0 (x)"
    assert second["target"] == b"/gone?status=404"
    assert second["status"] == b"404" and int(second["bytes"]) == len(missing.body)
    assert second["referer"] == b"-" and second["agent"] == b"other"


# --------------------------------------------------------------------------
# 10. TLS
# --------------------------------------------------------------------------


async def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, made by the openssl command."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    await trio.run_process(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        capture_stdout=True,
        capture_stderr=True,
    )
    return cert, key


async def test_tls_termination_tells_the_worker_it_is_https(tmp_path: Path) -> None:
    cert, key = await make_certificate(tmp_path)
    tls = f'[frontend.tls]\ncert = "{cert}"\nkey = "{key}"\n'
    context = ssl.create_default_context(cafile=str(cert))  # verifies the chain and the host name
    async with workers(echo) as addresses:
        config_text = upstream_config(addresses).replace("[upstream.app]", tls + "[upstream.app]", 1)
        async with frontend(config_text) as (port, _):
            async with tls_connect(port, context) as client:
                await client.send(request_bytes("/secure?a=b"))
                first = await client.response()
                await client.send(request_bytes("/again", method="POST", body=b"over tls"))
                second = await client.response()
                negotiated = client.stream.selected_alpn_protocol()
            async with RawClient.connect(port) as plain:
                await plain.send(request_bytes("/plain"))
                with trio.fail_after(2):
                    while await plain._fill():
                        pass
                plain_answer = bytes(plain.buffer)
    env = echo_json(first)["environ"]
    assert env["HTTPS"] == "on"
    assert env["REQUEST_SCHEME"] == "https"
    assert env["SERVER_PORT"] == str(port)
    assert echo_json(second)["body_length"] == 8  # kept alive over TLS
    assert negotiated in (None, "http/1.1")
    # Plain HTTP on a TLS port: the handshake fails and the connection closes
    # (at most a TLS alert), with nothing that reads as an HTTP answer.
    assert not plain_answer.startswith(b"HTTP/")


# --------------------------------------------------------------------------
# 11. Large bodies both ways
# --------------------------------------------------------------------------


def unsized_app(environ, start_response):
    """5 MiB in uneven pieces and no Content-Length: the front-end must chunk it."""
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    rng = random.Random(99)
    sent = 0
    while sent < 5 * MiB:
        size = min(rng.randint(1, 200_000), 5 * MiB - sent)
        yield bytes([sent % 251]) * size
        sent += size


async def test_chunked_5_mib_upload_and_downloads() -> None:
    payload = random.Random(7).randbytes(5 * MiB)
    async with workers(echo) as addresses, frontend(
        upstream_config(addresses, frontend='max_body_size = "10m"')
    ) as (port, _):
        async with RawClient.connect(port) as client:
            await client.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            position, sizes = 0, random.Random(3)
            while position < len(payload):
                piece = payload[position:position + sizes.randint(1, 100_000)]
                await client.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                position += len(piece)
            await client.send(b"0\r\n\r\n")
            uploaded = echo_json(await client.response())
            # The same connection serves on after a streamed body.
            await client.send(request_bytes(f"/download?size={5 * MiB}"))
            sized = await client.response()
    async with workers(unsized_app) as addresses, frontend(upstream_config(addresses)) as (port, _):
        unsized = await get(port, "/stream")

    assert uploaded["body_length"] == len(payload)
    assert uploaded["body_sha256"] == hashlib.sha256(payload).hexdigest()
    # A large chunked body is spooled, so the worker gets its true length
    # (PHP reads no further than CONTENT_LENGTH).
    assert uploaded["environ"]["CONTENT_LENGTH"] == str(len(payload))
    assert sized.status == 200 and not sized.chunked
    assert sized.header(b"content-length") == str(5 * MiB).encode()
    assert sized.body == b"x" * (5 * MiB)
    expected = b"".join(unsized_app({}, lambda status, headers: None))
    assert unsized.status == 200 and unsized.chunked
    assert unsized.header(b"content-length") is None
    assert len(unsized.body) == 5 * MiB
    assert hashlib.sha256(unsized.body).digest() == hashlib.sha256(expected).digest()
