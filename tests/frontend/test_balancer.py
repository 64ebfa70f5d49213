"""Upstream server selection: nginx's methods, failure windows, backups and limits."""

from __future__ import annotations

import collections
import random
import time

import pytest

from fcgi_cluster.frontend._balancer import (
    IP_HASH_REHASHES,
    MAX_WEIGHT,
    Balancer,
    ServerSpec,
)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def specs(*weights: int, **options: object) -> list[ServerSpec]:
    return [ServerSpec(f"10.0.0.{i + 1}:9000", weight=w, **options) for i, w in enumerate(weights)]


def picks(balancer: Balancer, count: int, **kwargs: object) -> list[int | None]:
    return [balancer.choose(**kwargs) for _ in range(count)]


# The upstreams nginx 1.22.1 was run with to record the expected answers below
# (each "server" a loopback port; ip_hash clients set through the realip module).
NGINX_SERVERS = [
    ServerSpec("127.0.0.1:18081"),
    ServerSpec("127.0.0.1:18082", weight=2),
    ServerSpec("127.0.0.1:18083"),
    ServerSpec("127.0.0.1:18084"),
]
NGINX_SERVERS_ONE_DOWN = [
    NGINX_SERVERS[0],
    ServerSpec("127.0.0.1:18082", weight=2, down=True),
    *NGINX_SERVERS[2:],
]
# nginx hashed $arg_k, which it does not URL-decode: hence "hello%20world".
NGINX_HASH = {
    "abc": 1, "key1": 0, "key2": 2, "key3": 2, "/index.php": 0, "session-42": 1, "user:1001": 2,
    "x": 1, "hello%20world": 1, "key7": 0, "key8": 2, "key9": 1, "key10": 3, "key11": 2,
}  # fmt: skip
NGINX_HASH_ONE_DOWN = {
    "abc": 2, "key1": 0, "key2": 2, "key3": 2, "/index.php": 0, "session-42": 0, "user:1001": 2,
    "x": 3, "hello%20world": 3, "key7": 0, "key8": 2, "key9": 0, "key10": 3, "key11": 2,
}  # fmt: skip
NGINX_IP_HASH = {
    "10.1.2.3": 0, "192.168.7.200": 0, "203.0.113.9": 1, "198.51.100.1": 1, "8.8.8.8": 2,
    "2001:db8::1": 0, "fe80::1": 2, "2001:db8::2": 1, "127.0.0.1": 0, "100.64.3.4": 1,
    "9.9.9.9": 3, "4.4.4.4": 3, "45.1.1.1": 2, "77.7.7.7": 0,
}  # fmt: skip
NGINX_IP_HASH_ONE_DOWN = {
    "10.1.2.3": 0, "192.168.7.200": 0, "203.0.113.9": 0, "198.51.100.1": 3, "8.8.8.8": 2,
    "2001:db8::1": 0, "fe80::1": 2, "2001:db8::2": 2, "127.0.0.1": 0, "100.64.3.4": 2,
    "9.9.9.9": 3, "4.4.4.4": 3, "45.1.1.1": 2, "77.7.7.7": 0,
}  # fmt: skip


# -- round robin ----------------------------------------------------------------


def test_smooth_interleaving_matches_nginx() -> None:
    balancer = Balancer(specs(5, 1, 1))
    # nginx's own example: a a b a c a a, not a a a a a b c.
    assert picks(balancer, 14) == [0, 0, 1, 0, 2, 0, 0] * 2


def test_sequence_recorded_from_nginx() -> None:
    balancer = Balancer(specs(5, 1, 3, 2))
    assert picks(balancer, 11) == [0, 2, 3, 0, 1, 0, 2, 0, 3, 2, 0]


def test_equal_weights_rotate() -> None:
    assert picks(Balancer(specs(1, 1, 1)), 6) == [0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize("weights", [(5, 1, 1), (3, 2, 1, 4), (1, 7), (2, 2, 3, 1, 1, 5, 1, 1, 1, 9)])
def test_each_cycle_matches_weights_exactly(weights: tuple[int, ...]) -> None:
    balancer = Balancer(specs(*weights))
    cycle = sum(weights)
    for _ in range(20):
        counts = collections.Counter(picks(balancer, cycle))
        assert [counts[i] for i in range(len(weights))] == list(weights)


# -- least_conn -----------------------------------------------------------------


def test_least_conn_prefers_the_idle_server() -> None:
    balancer = Balancer(specs(1, 1, 1), "least_conn")
    balancer.started(0)
    balancer.started(0)
    balancer.started(2)
    assert balancer.choose() == 1
    balancer.started(1)
    balancer.started(1)
    assert balancer.choose() == 2
    balancer.finished(0)
    balancer.finished(0)
    assert balancer.choose() == 0


def test_least_conn_keeps_active_requests_in_proportion_to_weight() -> None:
    balancer = Balancer(specs(3, 1), "least_conn")
    for _ in range(40):
        balancer.started(balancer.choose())
    assert [s["active"] for s in balancer.snapshot()] == [30, 10]


def test_least_conn_breaks_ties_by_smooth_round_robin() -> None:
    balancer = Balancer(specs(2, 1), "least_conn")
    # Nobody is busy, so every choice is a tie: smooth round robin's a b a.
    assert picks(balancer, 6) == [0, 1, 0, 0, 1, 0]


# -- ip_hash --------------------------------------------------------------------


def test_ip_hash_matches_nginx() -> None:
    balancer = Balancer(NGINX_SERVERS, "ip_hash")
    assert {ip: balancer.choose(ip.encode()) for ip in NGINX_IP_HASH} == NGINX_IP_HASH
    balancer = Balancer(NGINX_SERVERS_ONE_DOWN, "ip_hash")
    assert {ip: balancer.choose(ip.encode()) for ip in NGINX_IP_HASH_ONE_DOWN} == NGINX_IP_HASH_ONE_DOWN


def test_ip_hash_keeps_a_24_together_and_spreads_others() -> None:
    balancer = Balancer(specs(1, 1, 1, 1), "ip_hash")
    other = Balancer(specs(1, 1, 1, 1), "ip_hash")
    by_network = {}
    for network in range(256):
        servers = {balancer.choose(f"172.{network}.9.{host}".encode()) for host in range(0, 256, 17)}
        assert len(servers) == 1
        by_network[network] = servers.pop()
        # Same answer from another instance: nothing depends on process state.
        assert other.choose(f"172.{network}.9.1".encode()) == by_network[network]
    counts = collections.Counter(by_network.values())
    assert len(counts) == 4
    assert min(counts.values()) > 256 / 4 / 2


def test_ip_hash_uses_the_whole_ipv6_address() -> None:
    balancer = Balancer(specs(1, 1, 1), "ip_hash")
    chosen = {balancer.choose(f"2001:db8::{host:x}".encode()) for host in range(64)}
    assert len(chosen) == 3


def test_ip_hash_maps_v4_mapped_ipv6_to_the_ipv4_24() -> None:
    balancer = Balancer(specs(1, 1, 1, 1, 1), "ip_hash")
    for last in range(20):
        ipv4 = balancer.choose(f"198.51.{last}.7".encode())
        assert balancer.choose(f"::ffff:198.51.{last}.200".encode()) == ipv4


def test_ip_hash_without_an_ip_still_picks_a_server() -> None:
    balancer = Balancer(specs(1, 1, 1), "ip_hash")
    assert balancer.choose(None) == balancer.choose(b"") == balancer.choose(None)
    assert balancer.choose(b"not-an-address") == balancer.choose(b"not-an-address")


def test_ip_hash_rehashes_only_the_clients_of_an_unusable_server() -> None:
    balancer = Balancer(specs(1, 1, 1, 1), "ip_hash")
    clients = [f"10.{i}.{i * 7 % 256}.1".encode() for i in range(200)]
    before = {c: balancer.choose(c) for c in clients}
    victim = before[clients[0]]
    moved = {c: balancer.choose(c, exclude={victim}) for c in clients}
    for client in clients:
        assert moved[client] != victim
        if before[client] != victim:
            assert moved[client] == before[client]


def test_ip_hash_falls_back_to_round_robin_after_rehashes() -> None:
    # One usable server of many: rehashing may miss it, round robin then finds it.
    servers = [ServerSpec(f"10.0.0.{i}:9000", down=i != 7) for i in range(10)]
    balancer = Balancer(servers, "ip_hash")
    assert IP_HASH_REHASHES == 20
    assert {balancer.choose(f"192.0.{i}.1".encode()) for i in range(200)} == {7}


# -- consistent hash ------------------------------------------------------------


def test_hash_matches_nginx_consistent() -> None:
    balancer = Balancer(NGINX_SERVERS, "hash")
    assert {k: balancer.choose(k.encode()) for k in NGINX_HASH} == NGINX_HASH
    balancer = Balancer(NGINX_SERVERS_ONE_DOWN, "hash")
    assert {k: balancer.choose(k.encode()) for k in NGINX_HASH_ONE_DOWN} == NGINX_HASH_ONE_DOWN


KEYS = [f"/session/{i}".encode() for i in range(10_000)]


def addresses_for(servers: list[ServerSpec], keys: list[bytes]) -> list[str]:
    balancer = Balancer(servers, "hash")
    return [servers[balancer.choose(key)].address for key in keys]


def test_hash_is_stable_and_independent_of_list_order() -> None:
    servers = specs(1, 1, 2, 1)
    first = addresses_for(servers, KEYS[:2000])
    assert addresses_for(servers, KEYS[:2000]) == first
    assert addresses_for(servers[::-1], KEYS[:2000]) == first


def test_adding_a_server_moves_about_one_nth_of_keys_all_to_it() -> None:
    four = specs(1, 1, 1, 1)
    five = [*four, ServerSpec("10.0.0.99:9000")]
    before = addresses_for(four, KEYS)
    after = addresses_for(five, KEYS)
    moved = [(b, a) for b, a in zip(before, after) if b != a]
    assert all(a == "10.0.0.99:9000" for _, a in moved)
    # Ideal 1/5; a modulo hash would move about 4/5.
    assert 0.13 < len(moved) / len(KEYS) < 0.27


def test_removing_a_server_moves_only_its_keys() -> None:
    five = specs(1, 1, 1, 1, 1)
    before = addresses_for(five, KEYS)
    after = addresses_for(five[:2] + five[3:], KEYS)
    gone = five[2].address
    for b, a in zip(before, after):
        assert a == b or b == gone
    assert 0.13 < before.count(gone) / len(KEYS) < 0.27


def test_hash_share_follows_weight() -> None:
    counts = collections.Counter(addresses_for(specs(1, 3), KEYS))
    assert 0.65 < counts["10.0.0.2:9000"] / len(KEYS) < 0.85


def test_hash_skips_unusable_servers_to_the_next_point() -> None:
    balancer = Balancer(specs(1, 1, 1), "hash")
    for key in KEYS[:300]:
        first = balancer.choose(key)
        second = balancer.choose(key, exclude={first})
        assert second not in (first, None)
        assert balancer.choose(key, exclude={first, second}) not in (first, second, None)
        assert balancer.choose(key, exclude={0, 1, 2}) is None


# -- failures -------------------------------------------------------------------


def test_max_fails_within_fail_timeout_puts_a_server_out(clock: FakeClock) -> None:
    balancer = Balancer(specs(1, 1, max_fails=2, fail_timeout=10), clock=clock)
    balancer.failed(0)
    assert balancer.is_available(0)
    clock.now += 5
    balancer.failed(0)
    assert not balancer.is_available(0)
    assert set(picks(balancer, 20)) == {1}
    assert balancer.snapshot()[0]["retry_in"] == 10
    clock.now += 9.9
    assert set(picks(balancer, 20)) == {1}


def test_failures_older_than_fail_timeout_are_forgotten(clock: FakeClock) -> None:
    balancer = Balancer(specs(1, 1, max_fails=2, fail_timeout=10), clock=clock)
    balancer.failed(0)
    clock.now += 10.5
    assert balancer.snapshot()[0]["fails"] == 0
    balancer.failed(0)
    assert balancer.is_available(0)
    assert balancer.snapshot()[0]["fails"] == 1


def test_one_trial_after_fail_timeout_and_success_restores(clock: FakeClock) -> None:
    balancer = Balancer(specs(1, 1, fail_timeout=10), clock=clock)
    balancer.failed(0)
    assert not balancer.is_available(0)
    clock.now += 10
    assert balancer.is_available(0)
    chosen = picks(balancer, 10)
    assert chosen.count(0) == 1  # the trial, and nothing else while it runs
    assert not balancer.is_available(0)
    balancer.succeeded(0)
    assert balancer.is_available(0)
    assert balancer.snapshot()[0]["fails"] == 0
    assert collections.Counter(picks(balancer, 10))[0] >= 4


def test_failed_trial_puts_the_server_out_again(clock: FakeClock) -> None:
    balancer = Balancer(specs(1, 1, fail_timeout=10), clock=clock)
    balancer.failed(0)
    clock.now += 11
    assert 0 in picks(balancer, 2)
    clock.now += 3
    balancer.failed(0)
    assert not balancer.is_available(0)
    clock.now += 9.9
    assert set(picks(balancer, 10)) == {1}
    clock.now += 0.2
    # Its effective weight took the failures: it comes back within a few rounds.
    assert 0 in picks(balancer, 4)


def test_trial_without_an_outcome_allows_another_after_fail_timeout(clock: FakeClock) -> None:
    balancer = Balancer(specs(1, 1, fail_timeout=10), clock=clock)
    balancer.failed(0)
    clock.now += 10
    assert picks(balancer, 6).count(0) == 1
    clock.now += 9
    assert 0 not in picks(balancer, 6)
    clock.now += 1
    assert picks(balancer, 6).count(0) == 1


def test_success_of_a_request_older_than_the_failure_does_not_restore(clock: FakeClock) -> None:
    balancer = Balancer(specs(1, 1), clock=clock)
    balancer.failed(0)
    balancer.succeeded(0)
    assert not balancer.is_available(0)


def test_max_fails_zero_never_puts_a_server_out(clock: FakeClock) -> None:
    balancer = Balancer(specs(1, 1, max_fails=0), clock=clock)
    for _ in range(50):
        balancer.failed(0)
    assert balancer.is_available(0)
    assert 0 in picks(balancer, 2)


def test_a_lone_server_is_never_put_out(clock: FakeClock) -> None:
    balancer = Balancer([ServerSpec("10.0.0.1:9000")], clock=clock)
    balancer.failed(0)
    balancer.failed(0)
    assert balancer.is_available(0)
    assert balancer.choose() == 0


def test_failure_lowers_effective_weight_until_it_recovers(clock: FakeClock) -> None:
    balancer = Balancer(specs(10, 10, max_fails=3), clock=clock)
    balancer.failed(0)
    balancer.failed(0)
    assert balancer.snapshot()[0]["effective_weight"] == 10 - 2 * (10 // 3)
    assert balancer.is_available(0)
    first_cycle = collections.Counter(picks(balancer, 20))
    assert first_cycle[0] < first_cycle[1]
    assert balancer.snapshot()[0]["effective_weight"] == 10
    later_cycle = collections.Counter(picks(balancer, 20 * 10))
    assert later_cycle[0] == later_cycle[1]


# -- backup, down, exclude, max_conns -------------------------------------------


def test_backup_only_when_no_primary_can_be_used(clock: FakeClock) -> None:
    servers = [*specs(1, 1), ServerSpec("10.0.0.9:9000", backup=True)]
    balancer = Balancer(servers, clock=clock)
    assert 2 not in picks(balancer, 50)
    assert balancer.choose(exclude={0, 1}) == 2
    balancer.failed(0)
    assert set(picks(balancer, 10)) == {1}
    balancer.failed(1)
    assert set(picks(balancer, 10)) == {2}
    clock.now += 11
    assert 2 not in picks(balancer, 2)


def test_backup_with_least_conn() -> None:
    servers = [ServerSpec("a:1", max_conns=1), ServerSpec("b:1", backup=True), ServerSpec("c:1", backup=True)]
    balancer = Balancer(servers, "least_conn")
    balancer.started(balancer.choose())
    balancer.started(balancer.choose())
    assert balancer.choose() == 2


def test_down_servers_are_never_chosen() -> None:
    servers = [ServerSpec("a:1", down=True), ServerSpec("b:1"), ServerSpec("c:1", down=True)]
    for method in Balancer.METHODS:
        balancer = Balancer(servers, method)
        assert {balancer.choose(f"10.{i}.0.1".encode()) for i in range(100)} == {1}
        assert not balancer.is_available(0)


def test_all_down_gives_none() -> None:
    servers = [ServerSpec("a:1", down=True), ServerSpec("b:1", down=True)]
    for method in Balancer.METHODS:
        assert Balancer(servers, method).choose(b"10.0.0.1") is None


def test_all_out_for_failures_gives_none(clock: FakeClock) -> None:
    balancer = Balancer(specs(1, 1, 1), clock=clock)
    for index in range(3):
        balancer.failed(index)
    assert balancer.choose() is None


@pytest.mark.parametrize("method", Balancer.METHODS)
def test_a_retry_with_every_other_server_out_tries_the_one_due_back_first(method: str, clock: FakeClock) -> None:
    balancer = Balancer(specs(1, 1, 1), method, clock=clock)
    balancer.failed(1)
    clock.now += 3
    balancer.failed(2)
    # A first attempt never goes to a server that is out; a retry does, as its trial.
    assert balancer.choose(b"10.0.0.1", exclude={0}) is None
    assert balancer.choose(b"10.0.0.1", exclude={0}, retry=True) == 1
    balancer.succeeded(1)
    assert balancer.is_available(1)
    assert balancer.choose(b"10.0.0.1", exclude={0, 1}, retry=True) == 2
    balancer.failed(2)
    assert not balancer.is_available(2)
    # Down servers and tried ones never.
    assert balancer.choose(b"10.0.0.1", exclude={0, 1, 2}, retry=True) is None
    down = Balancer([ServerSpec("a:1"), ServerSpec("b:1", down=True)], method, clock=clock)
    assert down.choose(b"10.0.0.1", exclude={0}, retry=True) is None


@pytest.mark.parametrize("method", Balancer.METHODS)
def test_exclude(method: str) -> None:
    balancer = Balancer(specs(1, 2, 1), method)
    for i in range(60):
        assert balancer.choose(f"10.{i}.0.1".encode(), exclude={1}) in (0, 2)
        assert balancer.choose(f"10.{i}.0.1".encode(), exclude=(0, 2)) == 1
        assert balancer.choose(f"10.{i}.0.1".encode(), exclude=range(3)) is None


@pytest.mark.parametrize("method", Balancer.METHODS)
def test_max_conns_skips_a_full_server_without_counting_a_failure(method: str) -> None:
    servers = [ServerSpec("a:1", max_conns=1), ServerSpec("b:1", max_conns=2)]
    balancer = Balancer(servers, method)
    for _ in range(3):
        balancer.started(balancer.choose(b"k"))
    assert balancer.choose(b"k") is None
    assert [s["active"] for s in balancer.snapshot()] == [1, 2]
    assert balancer.is_available(0) and balancer.is_available(1)
    assert [s["fails"] for s in balancer.snapshot()] == [0, 0]
    balancer.finished(0)
    assert balancer.choose(b"k") == 0


def test_finished_without_started_is_an_error() -> None:
    balancer = Balancer(specs(1, 1))
    with pytest.raises(RuntimeError, match="without started"):
        balancer.finished(0)


def test_snapshot_reports_every_server(clock: FakeClock) -> None:
    servers = [ServerSpec("a:1", weight=3, max_conns=5), ServerSpec("b:1", backup=True)]
    balancer = Balancer(servers, clock=clock)
    balancer.started(0)
    balancer.failed(0)
    a, b = balancer.snapshot()
    assert a == {
        "address": "a:1",
        "weight": 3,
        "effective_weight": 0,
        "current_weight": 0,
        "backup": False,
        "down": False,
        "max_conns": 5,
        "active": 1,
        "requests": 1,
        "fails": 1,
        "total_fails": 1,
        "available": False,
        "retry_in": 10.0,
    }
    assert b["backup"] and b["available"] and b["active"] == 0


# -- configuration errors -------------------------------------------------------


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"address": ""}, "non-empty string"),
        ({"weight": 0}, "weight"),
        ({"weight": MAX_WEIGHT + 1}, "weight"),
        ({"weight": 1.5}, "weight"),
        ({"max_fails": -1}, "max_fails"),
        ({"fail_timeout": 0}, "fail_timeout"),
        ({"fail_timeout": float("nan")}, "fail_timeout"),
        ({"max_conns": -2}, "max_conns"),
    ],
)
def test_bad_server_spec(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServerSpec(**{"address": "a:1", **fields})


@pytest.mark.parametrize(
    "servers, method, message",
    [
        ([], "round_robin", "at least one server"),
        ([ServerSpec("a:1")], "random", "unknown balancing method 'random'"),
        ([ServerSpec("a:1", backup=True)], "round_robin", "every server is a backup"),
        ([ServerSpec("a:1"), ServerSpec("a:1")], "round_robin", "'a:1' is listed twice"),
        ([ServerSpec("a:1"), ServerSpec("b:1", backup=True)], "ip_hash", "'b:1': backup servers cannot"),
        ([ServerSpec("a:1"), ServerSpec("b:1", backup=True)], "hash", "'b:1': backup servers cannot"),
    ],
)
def test_bad_balancer_configuration(servers: list[ServerSpec], method: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Balancer(servers, method)


def test_servers_must_be_specs() -> None:
    with pytest.raises(TypeError, match="ServerSpec"):
        Balancer(["a:1"])  # type: ignore[list-item]


# -- cost -----------------------------------------------------------------------


@pytest.mark.parametrize("method", Balancer.METHODS)
def test_choose_stays_cheap_with_most_servers_out(method: str) -> None:
    # Nine of ten servers down: the hash walk and ip_hash's rehashing are at
    # their longest. A few microseconds a choice in practice; the bound is loose
    # so that only a change in complexity (a scan of the whole ring) trips it.
    servers = [ServerSpec(f"10.0.0.{i}:9000", weight=5, down=i != 3) for i in range(10)]
    balancer = Balancer(servers, method)
    keys = [f"10.{random.randrange(256)}.{i % 256}.1".encode() for i in range(2000)]
    start = time.perf_counter()
    for key in keys:
        assert balancer.choose(key) == 3
    assert (time.perf_counter() - start) / len(keys) < 100e-6


def test_hash_gives_up_quickly_when_no_server_can_be_used() -> None:
    # The walk stops once every server has been turned down, instead of
    # visiting all 8,000 points of the ring.
    balancer = Balancer([ServerSpec(f"10.0.0.{i}:9000", weight=5) for i in range(10)], "hash")
    start = time.perf_counter()
    for i in range(500):
        assert balancer.choose(f"k{i}".encode(), exclude=range(10)) is None
    assert (time.perf_counter() - start) / 500 < 300e-6


# -- a reload or control command builds a new balancer ----------------------------


def test_carry_state_goes_on_with_the_round_robin_position() -> None:
    servers = specs(5, 1, 1)
    before = Balancer(servers)
    run = picks(before, 3)
    after = Balancer(servers)
    after.carry_state(before)
    # The whole cycle continues where it stopped, as if nothing was rebuilt.
    assert run + picks(after, 4) == picks(Balancer(servers), 7)


def test_carry_state_keeps_a_failing_server_out_and_its_lowered_weight(clock: FakeClock) -> None:
    servers = specs(1, 1, 1, max_fails=1, fail_timeout=10)
    before = Balancer(servers, clock=clock)
    before.failed(0)
    after = Balancer(servers, clock=clock)
    after.carry_state(before)
    assert not after.is_available(0)
    assert 0 not in picks(after, 6)
    clock.now += 11
    assert after.is_available(0)
    lowered = Balancer(specs(4, 1, max_fails=2), clock=clock)
    lowered.failed(0)
    rebuilt = Balancer(specs(4, 1, max_fails=2), clock=clock)
    rebuilt.carry_state(lowered)
    assert rebuilt.snapshot()[0]["effective_weight"] == lowered.snapshot()[0]["effective_weight"] == 2


def test_carry_state_matches_servers_by_address_and_starts_new_ones_fresh(clock: FakeClock) -> None:
    before = Balancer(specs(1, 1, max_fails=1), clock=clock)
    before.started(1)
    before.finished(1)
    before.failed(1)
    moved = [ServerSpec("10.0.0.9:9000"), ServerSpec("10.0.0.2:9000")]
    after = Balancer(moved, clock=clock)
    after.carry_state(before)
    rows = {row["address"]: row for row in after.snapshot()}
    assert rows["10.0.0.2:9000"]["requests"] == 1 and not rows["10.0.0.2:9000"]["available"]
    assert rows["10.0.0.9:9000"]["requests"] == 0 and rows["10.0.0.9:9000"]["available"]
