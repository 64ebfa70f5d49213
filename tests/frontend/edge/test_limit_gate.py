"""A route's limits around its requests: delays on trio's clock, counts released, zones kept over a reload."""

from __future__ import annotations

import pytest
import trio

from fcgi_cluster.frontend import parse_config
from fcgi_cluster.frontend.edge._limit_gate import LimitZones, route_limits

BASE = """
[upstream.app]
servers = ["127.0.0.1:9001"]
[limit_req_zone.one]
key = "$remote_addr"
rate = "{rate}"
[limit_conn_zone.c]
key = "$http_x_user"
[[route]]
prefix = "/"
upstream = "app"
limit_req = {{ zone = "one", burst = 2{nodelay} }}
limit_conn = {{ zone = "c", max = 1 }}
[[route]]
prefix = "/free/"
upstream = "app"
"""


def limits_of(rate: str = "2r/s", previous: LimitZones | None = None, nodelay: bool = False):
    config = parse_config(BASE.format(rate=rate, nodelay=", nodelay = true" if nodelay else ""))
    zones = LimitZones(config, previous)
    return zones, [route_limits(route, zones) for route in config.routes]


def test_a_route_without_limits_has_none() -> None:
    _, (limited, free) = limits_of()
    assert limited is not None and free is None


async def test_the_burst_is_delayed_at_the_rate_then_refused(autojump_clock: trio.abc.Clock) -> None:
    _, (limits, _) = limits_of()
    start = trio.current_time()
    results: list[tuple[int, float]] = []

    async def one() -> None:
        async with limits.admit(b"10.0.0.1", []) as refused:
            results.append((refused, round(trio.current_time() - start, 3)))

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(one)
    # Four at one instant, at 2 r/s with burst 2: one at once, two 0.5 s
    # apart, the fourth refused at once.
    assert sorted(results) == [(0, 0.0), (0, 0.5), (0, 1.0), (429, 0.0)]


async def test_limit_conn_counts_until_the_block_ends_even_on_error() -> None:
    _, (limits, _) = limits_of("100r/s")
    user = [(b"x-user", b"u1")]
    async with limits.admit(b"10.0.0.1", user) as first:
        assert first == 0
        async with limits.admit(b"10.0.0.2", user) as second:
            assert second == 429  # the same key, already one in progress
        async with limits.admit(b"10.0.0.3", [(b"x-user", b"u2")]) as other:
            assert other == 0
    with pytest.raises(RuntimeError):
        async with limits.admit(b"10.0.0.1", user) as again:
            assert again == 0
            raise RuntimeError("the request failed")
    async with limits.admit(b"10.0.0.1", user) as after:
        assert after == 0  # the failed one was released


async def test_a_reload_keeps_an_unchanged_zones_state_and_resets_a_changed_one() -> None:
    zones, (limits, _) = limits_of("1r/m", nodelay=True)
    async with limits.admit(b"10.0.0.1", []) as refused:
        assert refused == 0
    kept, (after_reload, _) = limits_of("1r/m", previous=zones, nodelay=True)
    assert kept.zones["req", "one"] is zones.zones["req", "one"]
    for _ in range(2):  # burst 2 left
        async with after_reload.admit(b"10.0.0.1", []) as refused:
            assert refused == 0
    async with after_reload.admit(b"10.0.0.1", []) as refused:
        assert refused == 429
    changed, (fresh, _) = limits_of("2r/m", previous=kept, nodelay=True)
    assert changed.zones["req", "one"] is not zones.zones["req", "one"]
    assert changed.zones["conn", "c"] is zones.zones["conn", "c"]
    async with fresh.admit(b"10.0.0.1", []) as refused:
        assert refused == 0
