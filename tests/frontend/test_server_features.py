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
import time
from pathlib import Path

import trio

from fcgi_cluster.protocol import AbortRequest, ConnectionClosed, EndRequest, Request, Stdin, Stdout
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
        for target in (
            "/static/../secret",
            "/static/%2e%2e/secret",
            "/static/..%2fsecret",
            "/static/%2e%2e%2fsecret",
            "/static/%2e%2e/%2e%2e/etc/passwd",
            "/static/%252e%252e/secret",
            "/static/link",
            "/static/sub/up/secret",
        ):
            response = await get(port, target)
            assert 400 <= response.status < 500, (target, response.status)
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
