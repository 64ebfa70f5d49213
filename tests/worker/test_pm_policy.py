"""The pool's pm policy as a pure object: figures and the clock in, actions out, no process."""

from __future__ import annotations

import pytest

from fcgi_cluster.worker._pm_policy import (MAX_SPAWN_RATE, PENDING_MUTE, PM_INTERVAL, ChildFigures, MaxChildrenReached,
                                            PoolPolicy, SeemsBusy, Spawn, Stop, Unwatch, Watch)
from fcgi_cluster.worker._pool_config import PoolConfig
from fcgi_cluster.worker._scoreboard import FINISHING, IDLE, RUNNING, STARTING, STUCK


def pool(pm: str, **kw) -> PoolConfig:
    return PoolConfig(name="www", listen="127.0.0.1:0", app="workers.hello:app", pm=pm, **kw)


def idle(key: int, since: float = 0.0) -> ChildFigures:
    return ChildFigures(key, IDLE, 0, since)


def busy(key: int, since: float = 0.0) -> ChildFigures:
    return ChildFigures(key, RUNNING, 1, since)


def started(policy: PoolPolicy, now: float = 0.0) -> PoolPolicy:
    policy.start(now)
    return policy


# --- which children count ------------------------------------------------------------


def test_stopping_finishing_and_stuck_children_do_not_count_and_starting_ones_are_idle() -> None:
    assert ChildFigures(1, IDLE).counts and ChildFigures(1, RUNNING, 2).counts
    assert not ChildFigures(1, IDLE, stopping=True).counts
    assert not ChildFigures(1, FINISHING).counts and not ChildFigures(1, STUCK).counts
    assert ChildFigures(1, STARTING).idle and ChildFigures(1, IDLE).idle
    assert not ChildFigures(1, IDLE, 1).idle and not ChildFigures(1, RUNNING).idle


def test_an_unknown_pm_is_refused() -> None:
    with pytest.raises(ValueError, match="pm: 'sometimes'"):
        PoolPolicy(pool("sometimes"))


# --- static -------------------------------------------------------------------------


def test_static_starts_max_children_and_refills_at_every_call() -> None:
    policy = PoolPolicy(pool("static", pm_max_children=4))
    assert policy.start(0.0) == [Spawn(4)]
    assert policy.decide(0.25, [busy(1), idle(2), idle(3), idle(4)]) == []
    # No interval: static refills at every tick, whatever the clock says.
    assert policy.decide(0.25, [busy(1), idle(2)]) == [Spawn(2)]
    assert policy.decide(0.5, [busy(1), idle(2)]) == [Spawn(2)]
    # Children on their way out are replaced while they finish.
    leaving = [ChildFigures(1, FINISHING, 1), ChildFigures(2, STUCK, 1), ChildFigures(3, IDLE, stopping=True), idle(4)]
    assert policy.decide(0.75, leaving) == [Spawn(3)]


def test_static_never_stops_an_idle_child() -> None:
    policy = started(PoolPolicy(pool("static", pm_max_children=2, pm_max_spare_servers=1)))
    assert policy.decide(5.0, [idle(1), idle(2)]) == []


# --- dynamic ------------------------------------------------------------------------


def test_dynamic_starts_start_servers_capped_by_max_children() -> None:
    assert PoolPolicy(pool("dynamic", pm_max_children=5, pm_start_servers=2)).start(0.0) == [Spawn(2)]
    capped = PoolPolicy(pool("dynamic", pm_max_children=1, pm_start_servers=4))
    assert capped.start(0.0) == [Spawn(1)]


def test_dynamic_decides_once_per_interval() -> None:
    policy = PoolPolicy(pool("dynamic", pm_max_children=10, pm_min_spare_servers=2, pm_max_spare_servers=4))
    policy.start(10.0)
    assert policy.next_decision == 10.0 + PM_INTERVAL
    assert policy.decide(10.5, []) == []
    assert policy.decide(11.0, []) == [Spawn(1)]
    assert policy.next_decision == 11.0 + PM_INTERVAL
    assert policy.decide(11.75, []) == []
    assert policy.decide(12.0, []) == [Spawn(2)]


def test_dynamic_replaces_children_recycling_on_their_own_at_once_and_once() -> None:
    policy = started(PoolPolicy(pool("dynamic", pm_max_children=4, pm_start_servers=2, pm_min_spare_servers=1,
                                     pm_max_spare_servers=3)), 10.0)
    # Both children reach pm.max_requests together, between two decisions:
    # each gets its replacement at the next call, not at the next interval.
    both = [ChildFigures(1, FINISHING, 3), ChildFigures(2, FINISHING, 1)]
    assert policy.decide(10.1, both) == [Spawn(2)]
    # Replaced once: the same finishing children, and their new ones starting, ask nothing more.
    assert policy.decide(10.2, [*both, ChildFigures(3, STARTING), ChildFigures(4, STARTING)]) == []
    # A child asked to stop (an idle spare) is not replaced; nor above max_children.
    assert policy.decide(10.3, [ChildFigures(5, FINISHING, stopping=True), busy(3), busy(4)]) == []
    full = [busy(3), busy(4), busy(6), ChildFigures(7, FINISHING, 1), ChildFigures(8, FINISHING, 1)]
    assert policy.decide(10.4, full) == [Spawn(1)]
    # When they exit: replaced already, so nothing more.
    assert policy.exited(1, True, [busy(3), busy(4)]) == []


@pytest.mark.parametrize("pm", ["static", "dynamic"])
def test_a_child_recycled_between_two_ticks_is_replaced_when_it_exits(pm: str) -> None:
    policy = started(PoolPolicy(pool(pm, pm_max_children=2, pm_start_servers=2)))
    # Never seen finishing (it finished between ticks): replaced on exit, once.
    assert policy.exited(1, True, [busy(2)]) == [Spawn(1)]
    # Not recycled (asked to stop, crashed), or the pool is full: no replacement here.
    assert policy.exited(3, False, [busy(2)]) == []
    assert policy.exited(4, True, [busy(2), busy(5)]) == []
    ondemand = started(PoolPolicy(pool("ondemand", pm_max_children=2)))
    assert ondemand.exited(1, True, []) == []


def test_dynamic_spawn_rate_doubles_up_to_32_says_busy_from_8_and_resets() -> None:
    policy = started(PoolPolicy(pool("dynamic", pm_max_children=1000, pm_min_spare_servers=500,
                                     pm_max_spare_servers=600, pm_start_servers=500)))
    counts = []
    busy_said = []
    for second in range(1, 9):
        actions = policy.decide(float(second), [])
        counts.append(next(a.count for a in actions if isinstance(a, Spawn)))
        busy_said.append([a for a in actions if isinstance(a, SeemsBusy)])
    assert counts == [1, 2, 4, 8, 16, 32, 32, 32]
    assert MAX_SPAWN_RATE == 32 and policy.spawn_rate == 32
    assert busy_said[:3] == [[], [], []]
    assert busy_said[3] == [SeemsBusy(8, 0, 0)] and busy_said[5] == [SeemsBusy(32, 0, 0)]
    # Enough idle children: the rate goes back to 1, and the next shortage starts from 1 again.
    assert policy.decide(9.0, [idle(k) for k in range(500)]) == []
    assert policy.spawn_rate == 1
    assert policy.decide(10.0, []) == [Spawn(1)]


def test_dynamic_spawns_no_more_than_the_spares_missing_nor_above_max_children() -> None:
    policy = started(PoolPolicy(pool("dynamic", pm_max_children=100, pm_min_spare_servers=40,
                                     pm_max_spare_servers=50, pm_start_servers=40)))
    for second in range(1, 6):
        policy.decide(float(second), [])  # rate 1, 2, 4, 8, 16 -> 32
    assert policy.spawn_rate == 32
    # 37 idle of min 40: three are missing, not 32 (the rate says busy, with the count spawned).
    assert policy.decide(6.0, [idle(k) for k in range(37)]) == [SeemsBusy(3, 37, 37), Spawn(3)]
    # 95 children, none idle: five below max_children.
    assert policy.decide(7.0, [busy(k) for k in range(95)]) == [SeemsBusy(5, 0, 95), Spawn(5)]


def test_dynamic_stops_only_the_child_idle_the_longest_and_resets_the_rate() -> None:
    policy = started(PoolPolicy(pool("dynamic", pm_max_children=20, pm_min_spare_servers=1,
                                     pm_max_spare_servers=2, pm_start_servers=2)))
    policy.decide(1.0, [])
    policy.decide(2.0, [])
    assert policy.spawn_rate == 4
    children = [
        idle(1, since=5.0),
        busy(2, since=0.5),  # older, but working
        ChildFigures(3, IDLE, 0, 0.1, stopping=True),  # older, but already going
        idle(4, since=3.0),  # the longest idle of those that count
        ChildFigures(5, STARTING, 0, 4.0),
    ]
    assert policy.decide(3.0, children) == [Stop(4)]
    assert policy.spawn_rate == 1
    # Within max_spare_servers: nobody goes.
    assert policy.decide(4.0, [idle(1), busy(2), idle(4)]) == []


def test_dynamic_warns_once_at_max_children_until_it_spawns_again() -> None:
    policy = started(PoolPolicy(pool("dynamic", pm_max_children=3, pm_min_spare_servers=1,
                                     pm_max_spare_servers=2, pm_start_servers=1)))
    full = [busy(1), busy(2), busy(3)]
    assert policy.decide(1.0, full) == [MaxChildrenReached(3)]
    assert policy.spawn_rate == 1
    assert policy.decide(2.0, full) == []
    assert policy.decide(3.0, full) == []
    # One went: a spawn re-arms the warning.
    assert policy.decide(4.0, full[:2]) == [Spawn(1)]
    assert policy.decide(5.0, full) == [MaxChildrenReached(3)]


# --- ondemand -----------------------------------------------------------------------


def test_ondemand_starts_no_child_and_watches_the_socket() -> None:
    policy = PoolPolicy(pool("ondemand", pm_max_children=5, pm_start_servers=2))
    assert policy.start(0.0) == [Watch()]


def test_ondemand_stops_idle_children_past_the_idle_timeout() -> None:
    policy = started(PoolPolicy(pool("ondemand", pm_max_children=5, pm_process_idle_timeout=10.0)))
    children = [
        idle(1, since=0.0),  # 11 s idle: goes
        idle(2, since=1.0),  # exactly 10 s: stays
        ChildFigures(3, IDLE, 1, 0.0),  # a request in flight
        ChildFigures(4, STARTING, 0, 0.0),  # not idle yet
        busy(5, since=0.0),
        idle(6, since=-30.0),  # idle the longest: goes too (all of them, not one a second)
    ]
    assert policy.decide(11.0, children) == [Stop(1), Stop(6), Watch()]
    assert policy.decide(11.5, children) == []  # within the interval


def test_ondemand_pending_connection_spawns_one_unless_a_child_is_idle() -> None:
    policy = started(PoolPolicy(pool("ondemand", pm_max_children=2)))
    assert policy.pending(0.1, []) == [Spawn(1), Unwatch()]
    assert policy.pending(0.2, [ChildFigures(1, STARTING)]) == [Unwatch()]
    assert policy.pending(0.3, [busy(1)]) == [Spawn(1), Unwatch()]
    # At max_children: the warning, once, and no spawn.
    assert policy.pending(0.4, [busy(1), busy(2)]) == [MaxChildrenReached(2), Unwatch()]
    assert policy.pending(0.5, [busy(1), busy(2)]) == [Unwatch()]
    # A child on its way out does not count: a replacement starts.
    assert policy.pending(0.6, [busy(1), ChildFigures(2, FINISHING, 1)]) == [Spawn(1), Unwatch()]


def test_ondemand_watches_again_after_the_mute_at_the_next_decision() -> None:
    policy = started(PoolPolicy(pool("ondemand", pm_max_children=2)), now=0.0)
    assert policy.next_decision == PM_INTERVAL
    policy.pending(0.3, [])
    # The next decision comes as soon as the mute ends, not a whole interval later.
    assert policy.next_decision == pytest.approx(0.3 + PENDING_MUTE)
    assert policy.decide(0.5, [ChildFigures(1, STARTING)]) == []
    assert policy.decide(0.3 + PENDING_MUTE, [ChildFigures(1, STARTING)]) == [Watch()]
    assert policy.next_decision == pytest.approx(0.3 + PENDING_MUTE + PM_INTERVAL)
    # A decision due inside a mute does not watch; the one after it does.
    due = policy.next_decision
    policy.pending(due - 0.05, [])
    assert policy.next_decision == due  # already sooner than the mute's end
    assert policy.decide(due, []) == []
    assert policy.decide(due + PM_INTERVAL, []) == [Watch()]
