"""The rediscluster store against a real Redis Cluster of three masters (with a password):
keys spread over the nodes, redirections followed, phpredis' cluster keys, bad credentials,
and ``hash_tag=1``: a session's data and lock keys in one slot, its lock a lease."""

from __future__ import annotations

import secrets
import time

import pytest
import redis

from fcgi_cluster.sessions import StoreError, open_store
from fcgi_cluster.sessions._redis_lease import LEASE
from tests.sessions._servers import RedisServer
from tests.sessions.conftest import CLUSTER_PASSWORD

PREFIX = "PHPREDIS_CLUSTER_SESSION:"


def _save_path(nodes: list[RedisServer], **options: str) -> str:
    parts = [f"seed[]={node.address}" for node in nodes[:2]]  # two seeds find the third
    parts.append(f"auth={CLUSTER_PASSWORD}")
    parts += [f"{name}={value}" for name, value in options.items()]
    return "&".join(parts)


def _owner(nodes: list[RedisServer], key: str) -> RedisServer:
    """The node that serves ``key``'s slot now, asked of the cluster itself."""
    with nodes[0].client() as client:
        slot = client.execute_command("CLUSTER", "KEYSLOT", key)
        for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                port = master[1]
                return next(node for node in nodes if node.port == port)
    raise AssertionError(f"slot of {key} not covered")


def test_sessions_spread_over_all_nodes(redis_cluster_servers: list[RedisServer]) -> None:
    nodes = redis_cluster_servers
    store = open_store("rediscluster", _save_path(nodes))
    ids = [secrets.token_hex(16) for _ in range(60)]
    try:
        for sid in ids:
            store.write(sid, sid.encode(), 600)
        owners = set()
        for sid in ids:
            owner = _owner(nodes, PREFIX + sid)
            with owner.client() as client:
                assert client.get(PREFIX + sid) == sid.encode()
            owners.add(owner.port)
        assert owners == {node.port for node in nodes}
        assert [store.read(sid) for sid in ids] == [sid.encode() for sid in ids]
    finally:
        store.close()


def test_reads_follow_a_moved_slot(redis_cluster_servers: list[RedisServer]) -> None:
    """Move a session's slot to another node behind the store's back: it follows MOVED."""
    nodes = redis_cluster_servers
    store = open_store("rediscluster", _save_path(nodes))
    sid = secrets.token_hex(16)
    key = PREFIX + sid
    try:
        store.write(sid, b"before the move", 600)
        assert store.read(sid) == b"before the move"  # the slot map is cached now
        source = _owner(nodes, key)
        target = next(node for node in nodes if node is not source)
        _move_slot(nodes, source, target, key)
        with source.client() as client:
            with pytest.raises(redis.exceptions.MovedError, match=f"{target.port}"):
                client.get(key)
        assert store.read(sid) == b"before the move"
        store.write(sid, b"after the move", 600)
        with target.client() as client:
            assert client.get(key) == b"after the move"
        token = store.acquire_lock(sid, expire=5, wait=1, retry_interval=0.01)
        # The lock key hashes to its own slot, wherever that lives.
        with _owner(nodes, key + "_LOCK").client() as client:
            assert client.get(key + "_LOCK") == token
        store.release_lock(sid, token)
    finally:
        store.close()


def _move_slot(nodes: list[RedisServer], source: RedisServer, target: RedisServer, key: str) -> None:
    """The steps of ``redis-cli --cluster reshard`` for one slot."""
    with source.client() as src, target.client() as dst:
        slot = src.execute_command("CLUSTER", "KEYSLOT", key)
        source_id = src.execute_command("CLUSTER", "MYID").decode()
        target_id = dst.execute_command("CLUSTER", "MYID").decode()
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            src.execute_command(
                "MIGRATE", target.host, target.port, "", 0, 5000, "AUTH", CLUSTER_PASSWORD, "KEYS", *keys
            )
        for node in nodes:
            with node.client() as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)


def test_wrong_password(redis_cluster_servers: list[RedisServer]) -> None:
    seeds = "&".join(f"seed[]={node.address}" for node in redis_cluster_servers)
    with pytest.raises(StoreError, match="authentication failed: wrong user or password") as info:
        open_store("rediscluster", f"{seeds}&auth=wrong")
    assert "wrong" not in str(info.value).split(":", 1)[0]


def test_custom_prefix(redis_cluster_servers: list[RedisServer]) -> None:
    nodes = redis_cluster_servers
    store = open_store("rediscluster", _save_path(nodes, prefix="APP:"))
    sid = secrets.token_hex(16)
    try:
        store.write(sid, b"x", 60)
        with _owner(nodes, "APP:" + sid).client() as client:
            assert client.get("APP:" + sid) == b"x"
    finally:
        store.close()


def test_hash_tag_keeps_a_session_and_its_lock_in_one_slot(redis_cluster_servers: list[RedisServer]) -> None:
    nodes = redis_cluster_servers
    store = open_store("rediscluster", _save_path(nodes, hash_tag="1"))
    sids = [secrets.token_hex(16) for _ in range(30)]
    try:
        owners = set()
        for sid in sids:
            key = PREFIX + "{" + sid + "}"
            token, data = store.lock_and_read(sid, expire=30, wait=1, retry_interval=0.01)
            assert data is None
            owner = _owner(nodes, key)
            owners.add(owner.port)
            with owner.client() as client:
                # Both keys on the node the id's slot names; the lock a lease, not lock_expire.
                assert client.get(key + "_LOCK") == token
                assert 0 < client.pttl(key + "_LOCK") <= LEASE * 1000
            store.write_and_release(sid, sid.encode(), 600, token)
            with owner.client() as client:
                assert client.get(key) == sid.encode() and client.get(key + "_LOCK") is None
        # Still spread over the cluster, by the id.
        assert owners == {node.port for node in nodes}
        assert [store.read(sid) for sid in sids] == [sid.encode() for sid in sids]
    finally:
        store.close()


def test_hash_tag_lock_is_renewed_while_held_and_lapses_once_let_go(redis_cluster_servers: list[RedisServer]) -> None:
    nodes = redis_cluster_servers
    store = open_store("rediscluster", _save_path(nodes, hash_tag="1"))
    sid = secrets.token_hex(16)
    key = PREFIX + "{" + sid + "}_LOCK"
    try:
        token, _ = store.lock_and_read(sid, expire=30, wait=1, retry_interval=0.01)
        with _owner(nodes, key).client() as client:
            first = client.pttl(key)
            # Past two renewal rounds (every LEASE / 3): renewed, not run down.
            time.sleep(LEASE * 0.8)
            assert client.get(key) == token and client.pttl(key) > first - LEASE * 1000 * 0.8 + 500
        store.touch_and_release(sid, 600, token)
        with _owner(nodes, key).client() as client:
            assert client.get(key) is None
    finally:
        store.close()
