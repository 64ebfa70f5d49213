"""The memcached store against real memcached servers: php-memcached's keys, two servers,
and a server that stops and comes back under a live store."""

from __future__ import annotations

import secrets
import time

import pytest
from pymemcache.client.base import Client

from fcgi_cluster.sessions import StoreError, open_store
from tests.sessions._servers import memcached

SLACK = 3.0


def sid() -> str:
    return secrets.token_hex(16)


def test_php_memcached_keys(memcached_servers) -> None:
    (host, port), _ = memcached_servers
    store = open_store("memcached", f"{host}:{port}")
    raw = Client((host, port))
    key = sid()
    try:
        store.write(key, b"user|s:5:\"alice\";", 600)
        assert raw.get(f"memc.sess.key.{key}") == b"user|s:5:\"alice\";"
        token = store.acquire_lock(key, expire=10, wait=1, retry_interval=0.01)
        assert raw.get(f"memc.sess.key.lock.{key}") == token
        store.release_lock(key, token)
        assert raw.get(f"memc.sess.key.lock.{key}") is None
        # A lock PHP took (value "1", not ours) is not released by us.
        raw.add(f"memc.sess.key.lock.{key}", b"1", expire=10)
        store.release_lock(key, token)
        assert raw.get(f"memc.sess.key.lock.{key}") == b"1"
        raw.delete(f"memc.sess.key.lock.{key}")
    finally:
        store.close()
        raw.close()


def test_prefix_option(memcached_servers) -> None:
    (host, port), _ = memcached_servers
    store = open_store("memcached", f"{host}:{port}?prefix=app.s.")
    raw = Client((host, port))
    key = sid()
    try:
        store.write(key, b"x", 60)
        assert raw.get(f"app.s.{key}") == b"x"
    finally:
        store.close()
        raw.close()


def test_sessions_spread_over_two_servers(memcached_servers) -> None:
    save_path = ",".join(f"{host}:{port}" for host, port in memcached_servers)
    store = open_store("memcached", save_path)
    ids = [sid() for _ in range(60)]
    raws = {f"{host}:{port}": Client((host, port)) for host, port in memcached_servers}
    try:
        for key in ids:
            store.write(key, key.encode(), 600)
        used = set()
        for key in ids:
            home = store.server_for(key)
            used.add(home)
            for name, raw in raws.items():
                found = raw.get(f"memc.sess.key.{key}")
                assert found == (key.encode() if name == home else None), (key, name)
        assert used == set(raws)
        again = open_store("memcached", save_path)
        try:
            assert [again.server_for(key) for key in ids] == [store.server_for(key) for key in ids]
        finally:
            again.close()
    finally:
        store.close()
        for raw in raws.values():
            raw.close()


def test_server_stopped_and_restarted_under_a_live_store(tmp_path, memcached_servers) -> None:
    """Sessions of the stopped server fail fast; nothing moves to the other server."""
    other_host, other_port = memcached_servers[0]
    with memcached(tmp_path / "m") as (host, port):
        save_path = f"{host}:{port},{other_host}:{other_port}?timeout=1"
        store = open_store("memcached", save_path)
        ids = [sid() for _ in range(20)]
        for key in ids:
            store.write(key, b"v", 600)
        on_stopped = [key for key in ids if store.server_for(key) == f"{host}:{port}"]
        on_other = [key for key in ids if key not in on_stopped]
        assert on_stopped and on_other
    # Stopped now.
    started = time.monotonic()
    for key in on_stopped[:3]:
        with pytest.raises(StoreError, match=f"memcached {host}:{port}: "):
            store.read(key)
    assert time.monotonic() - started < 3 * (1 + SLACK)
    assert [store.read(key) for key in on_other] == [b"v"] * len(on_other)
    with memcached(tmp_path / "m2", port=port):
        # Back (empty): the same store object uses it again, same placement.
        assert store.read(on_stopped[0]) is None
        store.write(on_stopped[0], b"again", 60)
        assert store.read(on_stopped[0]) == b"again"
        assert store.server_for(on_stopped[0]) == f"{host}:{port}"
    store.close()


def test_long_ttl_is_sent_as_a_unix_time(memcached_servers) -> None:
    """memcached reads an expiry over 30 days as a unix time: a 40-day session still lives."""
    (host, port), _ = memcached_servers
    store = open_store("memcached", f"{host}:{port}")
    key = sid()
    try:
        store.write(key, b"long", 40 * 24 * 3600)
        assert store.read(key) == b"long"
        store.touch(key, 40 * 24 * 3600)
        assert store.read(key) == b"long"
    finally:
        store.close()
