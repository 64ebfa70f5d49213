"""Draining a worker connection: the pure policy, then one connection driven through it."""

from __future__ import annotations

import math

import trio

from fcgi_cluster.protocol import ProtocolStatus
from fcgi_cluster.worker._drain import DRAIN_QUIET, DrainPolicy

from ._harness import params, serving

# --- the policy alone ---------------------------------------------------------


def test_one_at_a_time_peer_is_served_then_closed_at_once() -> None:
    policy = DrainPolicy(quiet=1.0)
    assert policy.admit(0)
    policy.start(10.0)
    assert policy.close_at(1, served_one=True) is None  # its request runs on
    assert policy.close_at(0, served_one=True) == -math.inf
    # A connection that never had its request waits for it, and serves it.
    assert policy.close_at(0, served_one=False) is None
    assert policy.admit(0)
    assert not policy.multiplexed


def test_multiplexing_peer_is_refused_and_closed_once_quiet() -> None:
    policy = DrainPolicy(quiet=1.0)
    assert policy.admit(0) and policy.admit(1)  # before the drain both are served
    assert policy.multiplexed
    policy.start(10.0)
    assert not policy.admit(0)  # nothing in flight: still refused, the peer may send more
    assert not policy.admit(3)
    assert policy.close_at(2, served_one=True) is None
    assert policy.close_at(0, served_one=True) == 11.0
    policy.heard(10.5)
    assert policy.close_at(0, served_one=True) == 11.5


def test_a_second_request_in_flight_while_draining_is_refused_and_marks_the_peer() -> None:
    policy = DrainPolicy()
    policy.start(0.0)
    assert policy.admit(0)
    assert not policy.admit(1)
    assert policy.multiplexed
    assert policy.close_at(0, served_one=True) == DRAIN_QUIET


# --- one connection, in memory ------------------------------------------------


def held_app(release: trio.Event):
    """An ASGI app whose ``/hold`` answers once ``release`` is set."""

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["path"] == "/hold":
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


async def test_draining_multiplexed_connection_refuses_new_requests_until_quiet(autojump_clock) -> None:
    release = trio.Event()
    async with serving(held_app(release), interface="asgi") as web:
        first = await web.start(params("/hold"))
        second = await web.start(params("/hold"))
        await trio.sleep(0.1)
        web.worker.drain()
        release.set()
        for rid in (first, second):
            with trio.fail_after(5):
                await web.answers[rid].done.wait()
            assert web.answers[rid].end.protocol_status is ProtocolStatus.REQUEST_COMPLETE
            assert web.answers[rid].body == b"ok"
        # Idle and draining: a request that was on the wire is refused, not cut.
        await trio.sleep(DRAIN_QUIET / 2)
        assert not web.closed.is_set()
        late = await web.request(params("/"))
        assert late.end.protocol_status is ProtocolStatus.OVERLOADED
        assert late.stdout == b""
        refused_at = trio.current_time()
        # Closed once the peer has said nothing for DRAIN_QUIET, not before.
        with trio.fail_after(DRAIN_QUIET * 3):
            await web.closed.wait()
        assert trio.current_time() - refused_at >= DRAIN_QUIET * 0.99


async def test_draining_one_at_a_time_connection_serves_and_closes_at_once(autojump_clock) -> None:
    release = trio.Event()
    async with serving(held_app(release), interface="asgi") as web:
        assert (await web.request(params("/"))).body == b"ok"
        held = await web.start(params("/hold"))
        await trio.sleep(0.1)
        web.worker.drain()
        drained_at = trio.current_time()
        release.set()
        with trio.fail_after(5):
            await web.answers[held].done.wait()
            await web.closed.wait()
        assert web.answers[held].end.protocol_status is ProtocolStatus.REQUEST_COMPLETE
        assert trio.current_time() - drained_at < DRAIN_QUIET / 2  # no linger for nginx's kind
