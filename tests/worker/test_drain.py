"""Draining a worker connection: the pure policy, then one connection driven through it."""

from __future__ import annotations

import math

import trio

from fcgi_cluster.protocol import ClientConnection, ProtocolStatus
from fcgi_cluster.worker._drain import DRAIN_QUIET, DrainPolicy

from ._harness import params, serving

# --- the policy alone ---------------------------------------------------------


def test_id_one_peer_is_served_then_closed_at_once() -> None:
    # nginx: request ID 1 each time, one at a time.
    policy = DrainPolicy(quiet=1.0, linger=3.0)
    assert policy.admit(1, 0)
    policy.start(10.0)
    # Idle at the drain: its next request may be on the wire; wait for it, or for quiet.
    assert policy.close_at(0, served_one=True) == 11.0
    assert policy.admit(1, 0)  # served, not refused
    assert policy.close_at(1, served_one=True) is None  # it runs on
    assert policy.close_at(0, served_one=True) == -math.inf  # answered: close now
    assert not policy.multiplexed and not policy.numbered


def test_id_one_peer_with_a_request_running_at_the_drain_lingers_once_it_is_answered() -> None:
    # Our front-end's connection after one request looks the same: its next may be on the wire.
    policy = DrainPolicy(quiet=1.0)
    assert policy.admit(1, 0)
    policy.start(10.0)
    assert policy.close_at(1, served_one=True) is None
    assert policy.close_at(0, served_one=True) == 11.0
    assert policy.admit(2, 0)  # it was ours: served, and the connection waits for quiet
    assert policy.close_at(0, served_one=True) == 11.0


def test_a_connection_without_its_first_request_waits_for_it_then_lingers() -> None:
    policy = DrainPolicy(quiet=1.0)
    policy.start(0.0)
    assert policy.close_at(0, served_one=False) is None
    assert policy.admit(1, 0)
    policy.heard(0.5)
    # One request says nothing of the peer: ours sends its next (ID 2) at once, nginx its next ID 1.
    assert policy.close_at(0, served_one=True) == 1.5
    assert policy.admit(1, 0) and policy.reuses_one
    assert policy.close_at(0, served_one=True) == -math.inf


def test_multiplexing_peer_is_refused_and_closed_once_quiet() -> None:
    policy = DrainPolicy(quiet=1.0, linger=3.0)
    assert policy.admit(1, 0) and policy.admit(2, 1)  # before the drain both are served
    assert policy.multiplexed
    policy.start(10.0)
    assert not policy.admit(3, 0)  # nothing in flight: still refused, the peer may send more
    assert not policy.admit(4, 3)
    assert policy.close_at(2, served_one=True) is None
    assert policy.close_at(0, served_one=True) == 11.0
    policy.heard(10.5)
    assert policy.close_at(0, served_one=True) == 11.5
    # A peer that keeps talking is not waited for past the linger.
    policy.heard(12.9)
    assert policy.close_at(0, served_one=True) == 13.0


def test_numbering_peer_seen_one_at_a_time_is_served_and_closed_once_quiet() -> None:
    # Our front-end on a quiet connection: IDs 1, 2, 3..., never two at once yet.
    policy = DrainPolicy(quiet=1.0, linger=3.0)
    assert policy.admit(1, 0) and policy.admit(2, 0)
    assert policy.numbered and not policy.multiplexed
    policy.start(10.0)
    assert policy.admit(3, 0)  # alone: served
    policy.heard(10.2)
    assert policy.close_at(0, served_one=True) == 11.2  # not at once: the next may be on the wire
    # A burst that arrives together: the second shows it multiplexes, and is refused.
    assert policy.admit(4, 0)
    assert not policy.admit(5, 1)
    assert not policy.admit(6, 0)


def test_a_second_request_in_flight_while_draining_is_refused_and_marks_the_peer() -> None:
    policy = DrainPolicy()
    policy.start(0.0)
    assert policy.admit(1, 0)
    assert not policy.admit(2, 1)
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


async def test_draining_connection_of_an_id_one_peer_serves_the_next_and_closes_at_once(autojump_clock) -> None:
    # nginx's way: every request is ID 1, the next sent once the last is answered.
    release = trio.Event()
    async with serving(held_app(release), interface="asgi") as web:
        held = await web.start(params("/hold"))
        assert held == 1
        await trio.sleep(0.1)
        web.worker.drain()
        release.set()
        with trio.fail_after(5):
            await web.answers[held].done.wait()
        assert web.answers[held].end.protocol_status is ProtocolStatus.REQUEST_COMPLETE
        # Answered, the connection waits a moment for a request on the wire...
        await trio.sleep(DRAIN_QUIET / 2)
        assert not web.closed.is_set()
        web.core = ClientConnection()  # numbers from 1 again, as nginx does
        late = await web.request(params("/"))
        answered_at = trio.current_time()
        # ...serves it, and closes once it is answered: nginx sends no other meanwhile.
        assert late.end.protocol_status is ProtocolStatus.REQUEST_COMPLETE and late.body == b"ok"
        with trio.fail_after(DRAIN_QUIET * 3):
            await web.closed.wait()
        assert trio.current_time() - answered_at < DRAIN_QUIET / 2
