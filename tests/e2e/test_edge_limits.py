"""limit_req and limit_conn through the real front-end and a real worker: counts of 200 and 429.

Rates are chosen so that the counts do not depend on the machine's speed
("1r/m": no request of a test drains the bucket), except where a delay is
the point, and then only lower bounds of time are asserted.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import signal
import time

import pytest

from tests._peers import LOOPBACK

from ._worker import worker_process
from .test_frontend_slow_clients import frontend

pytestmark = pytest.mark.e2e

ROUTES = """
[limit_req_zone.per_minute]
key = "$remote_addr"
rate = "1r/m"
[limit_req_zone.per_second]
key = "$remote_addr"
rate = "1r/s"
[limit_req_zone.per_second_too]
key = "$remote_addr"
rate = "1r/s"
[limit_req_zone.api_key]
key = "$http_x_api_key"
rate = "1r/m"
[limit_req_zone.session]
key = "$cookie_session"
rate = "1r/m"
[limit_conn_zone.addr]
key = "$remote_addr"

[[route]]
prefix = "/burst/"
upstream = "app"
limit_req = { zone = "per_minute", burst = 2, nodelay = true }
[[route]]
prefix = "/delayed/"
upstream = "app"
limit_req = { zone = "per_second", burst = 3 }
[[route]]
prefix = "/nodelay/"
upstream = "app"
limit_req = { zone = "per_second_too", burst = 3, nodelay = true }
limit_req_status = 503
[[route]]
prefix = "/api/"
upstream = "app"
limit_req = { zone = "api_key" }
[[route]]
prefix = "/session/"
upstream = "app"
limit_req = { zone = "session" }
[[route]]
prefix = "/conn/"
upstream = "app"
limit_conn = { zone = "addr", max = 2 }
[[route]]
prefix = "/"
upstream = "app"
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("edge-limits")
    with worker_process("tests.e2e._edge_apps:app") as (worker, _):
        with frontend(directory, worker, ROUTES) as (front, process):
            yield front, directory / "frontend.log"
            assert process.poll() is None, "the front-end died"


def status_of(port: int, target: str, headers: dict[str, str] | None = None) -> int:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=60)
    try:
        conn.request("GET", target, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def many(port: int, target: str, count: int, headers: dict[str, str] | None = None) -> list[tuple[int, float]]:
    """``count`` requests at once: (status, seconds until its answer) each."""
    start = time.monotonic()

    def one(_: int) -> tuple[int, float]:
        status = status_of(port, target, headers)
        return status, time.monotonic() - start

    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_beyond_rate_and_burst_requests_get_429_and_a_bounded_log(served) -> None:
    port, log = served
    statuses = [status_of(port, "/burst/x") for _ in range(12)]
    assert statuses.count(200) == 3 and statuses.count(429) == 9  # 1 + burst 2, in order
    assert statuses[:3] == [200, 200, 200]
    # Another route has its own limits.
    assert status_of(port, "/other") == 200
    text = log.read_text()
    lines = [line for line in text.splitlines() if "limiting requests" in line and "per_minute" in line]
    assert 1 <= len(lines) < 9  # logged, but not one line per refusal within a second
    assert "/burst/" in lines[0]


def test_without_nodelay_the_burst_waits_its_turn(served) -> None:
    port, _ = served
    results = many(port, "/delayed/x", 5)
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 200, 200, 200, 429]
    # Served at 1 r/s: the last of the burst waited about 3 s.
    assert max(at for status, at in results if status == 200) >= 2.8
    assert min(at for status, at in results if status == 429) < max(at for status, at in results)


def test_nodelay_serves_the_burst_at_once_and_its_own_status(served) -> None:
    port, _ = served
    results = many(port, "/nodelay/x", 5)
    assert sorted(status for status, _ in results) == [200, 200, 200, 200, 503]
    # None waited for the bucket (2.8 s, above, when delayed); 2.5 s is room for a busy machine.
    assert max(at for _, at in results) < 2.5


def test_limit_conn_refuses_past_max_requests_in_progress(served) -> None:
    port, _ = served
    results = many(port, "/conn/slow?ms=3000", 5)
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 200, 429, 429, 429]
    # The refused ones were answered while the two were still running.
    assert max(at for status, at in results if status == 429) < min(at for status, at in results if status == 200)
    # Their ends freed the count.
    assert [status for status, _ in many(port, "/conn/slow?ms=10", 2)] == [200, 200]


def test_a_key_from_a_header_or_a_cookie(served) -> None:
    port, _ = served
    assert status_of(port, "/api/x", {"X-Api-Key": "alice"}) == 200
    assert status_of(port, "/api/x", {"X-Api-Key": "alice"}) == 429
    assert status_of(port, "/api/x", {"X-Api-Key": "bob"}) == 200
    # No key: not limited, as nginx.
    assert [status_of(port, "/api/x") for _ in range(3)] == [200, 200, 200]
    assert status_of(port, "/session/x", {"Cookie": "a=1; session=s1"}) == 200
    assert status_of(port, "/session/x", {"Cookie": "session=s1"}) == 429
    assert status_of(port, "/session/x", {"Cookie": "session=s2"}) == 200


SAME_AS_NGINX = """
[limit_req_zone.slow]
key = "$http_x_api_key"
rate = "1r/m"
[limit_req_zone.second]
key = "$http_x_api_key"
rate = "1r/s"
[[route]]
prefix = "/nodelay/"
upstream = "app"
limit_req = { zone = "slow", burst = 3, nodelay = true }
[[route]]
prefix = "/delay/"
upstream = "app"
limit_req = { zone = "second", burst = 2, delay = 1 }
"""
NGINX_HTTP = """
limit_req_zone $http_x_api_key zone=slow:1m rate=1r/m;
limit_req_zone $http_x_api_key zone=second:1m rate=1r/s;
limit_req_status 429;
"""
# Nested in nginx_fastcgi's "location /", whose fastcgi_params they inherit.
NGINX_LOCATION = """
location /nodelay/ {
    fastcgi_pass fcgi_app;
    limit_req zone=slow burst=3 nodelay;
}
location /delay/ {
    fastcgi_pass fcgi_app;
    limit_req zone=second burst=2 delay=1;
}
"""


def test_the_same_requests_are_served_refused_and_delayed_as_by_nginx(tmp_path, peers) -> None:
    with worker_process("tests.e2e._edge_apps:app") as (worker, _):
        nginx = peers.nginx(LOOPBACK, worker, keepalive=True, location_extra=NGINX_LOCATION, http_extra=NGINX_HTTP)
        with frontend(tmp_path, worker, SAME_AS_NGINX) as (ours, _):
            seen = {}
            for name, port in (("nginx", nginx.port), ("ours", ours)):
                key = {"X-Api-Key": name}
                sequential = [status_of(port, "/nodelay/x", key) for _ in range(8)]
                at_once = many(port, "/delay/x", 6, key)
                seen[name] = (sequential, sorted(status for status, _ in at_once),
                              max(at for status, at in at_once if status == 200) >= 0.9)
    assert seen["nginx"][0] == [200] * 4 + [429] * 4
    assert seen["nginx"][1] == [200] * 3 + [429] * 3 and seen["nginx"][2]
    assert seen["ours"] == seen["nginx"]


def _reload(process, log, count: int) -> None:
    """SIGHUP, then wait for the ``count``-th "configuration reloaded" line."""
    process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while log.read_text().count("configuration reloaded") < count:
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.05)


def test_a_reload_keeps_an_unchanged_zones_buckets_and_starts_a_changed_one_afresh(tmp_path) -> None:
    routes = """
[limit_req_zone.z]
key = "$remote_addr"
rate = "1r/m"
[[route]]
prefix = "/r/"
upstream = "app"
limit_req = { zone = "z", burst = 1, nodelay = true }
"""
    with worker_process("tests.e2e._edge_apps:app") as (worker, _):
        with frontend(tmp_path, worker, routes) as (port, process):
            log = tmp_path / "frontend.log"
            assert [status_of(port, "/r/x") for _ in range(3)] == [200, 200, 429]
            config = tmp_path / "frontend.toml"
            config.write_text(config.read_text() + '[[route]]\nprefix = "/other/"\nupstream = "app"\n')
            _reload(process, log, 1)
            assert status_of(port, "/r/x") == 429  # the zone is unchanged: its bucket is still full
            config.write_text(config.read_text().replace('rate = "1r/m"', 'rate = "2r/m"'))
            _reload(process, log, 2)
            assert [status_of(port, "/r/x") for _ in range(3)] == [200, 200, 429]
