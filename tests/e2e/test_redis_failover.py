"""Redis failover under load: a master killed with SIGKILL behind Sentinel and in a Redis Cluster.

A pool of ``workers.counter`` (sessions in Redis, locking on) runs under
``fcgi-cluster up`` behind our front-end; session users count in a loop; the
master that holds their sessions is killed. The sessions must continue on the
promoted replica. Each test prints the error rate, the gap (the longest time
without a successful answer) and the updates lost: Redis replicates
asynchronously, so a write the old master acknowledged and had not yet sent to
its replica is gone after the failover. Those are counted and reported, and
the test checks that every one was acknowledged before the kill: nothing
answered after it is lost. README's "Redis failover" holds the figures.
"""

from __future__ import annotations

import contextlib
import time

import pytest
import redis as redis_py
from redis.cluster import key_slot

from tests.e2e._session_load import Crowd, Tally, session_cluster
from tests.sessions._servers import RedisServer, redis_cluster, redis_replica, redis_sentinels, wait_in_sync

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PASSWORD = "failover-s3cret"
USERS = 4
#: How long the users count before the kill.
WARM_UP = 2.0
#: How long the sessions get to come back after the kill (the failover takes
#: ~2-4 s on an idle machine; with phpredis' cluster keys a lock stranded on the
#: promoted replica holds its user for lock_expire, 30 s; the slack is for a loaded one).
RECOVERY_LIMIT = 45.0


def check_and_report(crowd: Crowd, killed: float, what: str) -> Tally:
    tally = Tally.of(crowd, killed)
    print(f"{what}: {tally.summary()}")
    assert tally.requests > 0 and not set(tally.errors) - {503}, tally.errors
    # Only the replication window loses updates: writes acknowledged before the kill.
    late = [ended for ended in tally.lost if ended > killed]
    assert late == [], f"{len(late)} updates acknowledged after the kill were lost"
    assert tally.user_gap < RECOVERY_LIMIT
    return tally


def run_crowd_through(port: int, kill, *, what: str) -> Tally:
    """Users count, ``kill()`` runs, the users go on until all are served again (and 2 s more)."""
    crowd = Crowd(port, USERS)
    try:
        crowd.wait_until(lambda c: c.every_user_served_since(0.0), limit=30, what="every user served before the kill")
        time.sleep(WARM_UP)
        killed = time.monotonic()
        kill()
        crowd.wait_until(lambda c: c.every_user_served_since(killed, count=5), limit=RECOVERY_LIMIT,
                         what=f"every user served again after {what}")
        print(f"{what}: every user served again {time.monotonic() - killed:.1f} s after the kill")
        time.sleep(2.0)
    finally:
        crowd.stop()
    tally = check_and_report(crowd, killed, what)
    # Sessions continued: after the fault every user's session counts on.
    for mine in crowd.answers:
        assert mine[-1].status == 200 and mine[-1].n > 1
    return tally


def test_sentinel_master_killed_under_load_sessions_continue_on_the_replica(tmp_path):
    with contextlib.ExitStack() as stack:
        master = stack.enter_context(RedisServer(tmp_path / "master", password=PASSWORD, name="redis-master"))
        replica = redis_replica(tmp_path / "replica", master)
        stack.enter_context(replica)
        wait_in_sync(replica)
        sentinels = stack.enter_context(redis_sentinels(tmp_path, master, count=3, quorum=2, down_after_ms=1000))
        hosts = ",".join(f"{host}:{port}" for host, port in sentinels)
        port = stack.enter_context(session_cluster(tmp_path, {
            "save_handler": "redis",
            "save_path": f"sentinel://{hosts}/mymaster?auth={PASSWORD}&timeout=1",
            "store_timeout": "1s",
        }))
        run_crowd_through(port, master.kill, what="sentinel: master killed")
        host, sentinel_port = sentinels[0]
        with redis_py.Redis(host=host, port=sentinel_port, decode_responses=True) as client:
            now = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster")
        assert tuple(now) == (replica.host, str(replica.port))
        with replica.client() as client:
            assert client.info("replication")["role"] == "master"
            assert client.keys("PHPREDIS_SESSION:*"), "no session on the promoted replica"


def cluster_masters(server: RedisServer) -> dict[str, str]:
    """``address -> node id`` of every master that is not failed, as ``server`` sees them."""
    with server.client() as client:
        # The raw text (no parsing callback for the two-word form): "<id>
        # <ip:port@bus> <flags> <master> ..." per node.
        text = client.execute_command("CLUSTER", "NODES")
    text = text.decode() if isinstance(text, bytes) else text
    masters = {}
    for line in text.splitlines():
        node_id, address, flags = line.split()[:3]
        if "master" in flags.split(",") and "fail" not in flags and "fail?" not in flags:
            masters[address.split("@")[0]] = node_id
    return masters


def slot_owner(server: RedisServer, slot: int) -> str:
    """``host:port`` of the master serving ``slot``, as ``server`` sees it."""
    with server.client() as client:
        for start, end, owner, *_ in client.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return f"{owner[0].decode()}:{owner[1]}"
    raise AssertionError(f"slot {slot} served by nobody")


@pytest.mark.parametrize("keys", ["phpredis", "hash_tag"])
def test_cluster_master_killed_under_load_its_replica_takes_over(tmp_path, keys):
    """phpredis' keys (data and lock in two slots, four commands) and ``hash_tag=1`` (one slot, a lease)."""
    with redis_cluster(tmp_path, nodes=6, replicas=1, password=PASSWORD, node_timeout_ms=1000) as servers:
        seeds = "&".join(f"seed[]={server.address}" for server in servers)
        tag = "&hash_tag=1" if keys == "hash_tag" else ""
        with session_cluster(tmp_path, {
            "save_handler": "rediscluster",
            "save_path": f"{seeds}&auth={PASSWORD}&timeout=1{tag}",
            "store_timeout": "1s",
        }) as port:
            before = cluster_masters(servers[0])
            assert len(before) == 3
            masters = [server for server in servers if server.address in before]
            killed: dict[str, object] = {}

            def kill() -> None:
                # The master serving the most of the users' sessions (and locks).
                slots = {}
                for server in masters:
                    with server.client() as client:
                        slots[server] = [key_slot(key) for key in client.scan_iter("PHPREDIS_CLUSTER_SESSION:*")]
                victim = max(masters, key=lambda server: len(slots[server]))
                assert slots[victim], slots
                killed.update(victim=victim, slots=slots[victim])
                victim.kill()

            tally = run_crowd_through(port, kill, what=f"cluster ({keys} keys): a master killed")
        if keys == "hash_tag":
            # A lock stranded on the promoted replica is a lease: no user waits lock_expire (30 s).
            assert tally.user_gap < 15
        victim = killed["victim"]
        survivor = next(server for server in servers if server is not victim)
        after = cluster_masters(survivor)
        assert victim.address not in after and len(after) == 3
        for slot in killed["slots"]:
            assert slot_owner(survivor, slot) in set(after) - set(before)
