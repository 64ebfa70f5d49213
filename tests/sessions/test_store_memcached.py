"""The memcached store against real memcached servers: php-memcached's keys and its
choice of server (shared with PHP over three servers), and a server that stops and
comes back under a live store."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time

import pytest
from pymemcache.client.base import Client

from fcgi_cluster.sessions import StoreError, open_store
from fcgi_cluster.sessions._memcached import KetamaRing, one_at_a_time
from fcgi_cluster.sessions._save_path import MemcachedServer
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


_PHP_SESSIONS = r"""
// Output before a session_start() would stop it ("headers already sent"): buffer it.
ob_start();
$mode = $argv[1];
foreach (array_slice($argv, 2) as $id) {
    session_id($id);
    if (!@session_start()) {
        echo $id, " locked\n";
        continue;
    }
    if ($mode === 'write') {
        $_SESSION['from'] = 'php';
    } else {
        echo $id, ' ', json_encode($_SESSION), "\n";
    }
    session_write_close();
}
"""


def _run_php(save_path: str, mode: str, ids: list[str]) -> list[list[str]]:
    php = shutil.which("php")
    assert php is not None, "the php CLI is missing: run `make deps`"
    result = subprocess.run(
        [php, "-d", "session.save_handler=memcached", "-d", f'session.save_path="{save_path}"',
         "-d", "session.serialize_handler=php", "-d", "session.use_strict_mode=0",
         "-d", "memcached.sess_lock_retries=2", "-d", "memcached.sess_lock_wait_min=50",
         "-d", "memcached.sess_lock_wait_max=50", "-r", _PHP_SESSIONS, mode, *ids],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return [line.split(" ", 1) for line in result.stdout.splitlines() if line]


def test_php_memcached_shares_sessions_and_locks_over_servers(tmp_path, memcached_servers) -> None:
    """php-memcached and this store pick the same server (libmemcached's ketama) for
    each session and each lock, over three servers."""
    with memcached(tmp_path / "third") as third:
        servers = [*memcached_servers, third]
        save_path = ",".join(f"{host}:{port}" for host, port in servers)
        php_ids = [secrets.token_hex(13) for _ in range(15)]
        our_ids = [secrets.token_hex(13) for _ in range(15)]
        _run_php(save_path, "write", php_ids)
        store = open_store("memcached", save_path)
        try:
            assert [store.read(key) for key in php_ids] == [b'from|s:3:"php";'] * len(php_ids)
            assert len({store.server_for(key) for key in php_ids + our_ids}) == 3
            for key in our_ids:
                store.write(key, b'from|s:6:"python";', 600)
            assert _run_php(save_path, "read", our_ids) == [[key, '{"from":"python"}'] for key in our_ids]
            # While we hold a session's lock, PHP cannot start that session.
            tokens = {key: store.acquire_lock(key, expire=30, wait=1, retry_interval=0.01) for key in our_ids[:6]}
            assert _run_php(save_path, "read", our_ids[:6]) == [[key, "locked"] for key in our_ids[:6]]
            for key, token in tokens.items():
                store.release_lock(key, token)
            assert _run_php(save_path, "read", our_ids[:6]) == [[key, '{"from":"python"}'] for key in our_ids[:6]]
        finally:
            store.close()


def test_one_at_a_time_known_values() -> None:
    # The published test vectors of Jenkins' one-at-a-time hash.
    assert one_at_a_time(b"a") == 0xCA2E9442
    assert one_at_a_time(b"The quick brown fox jumps over the lazy dog") == 0x519E91F5


def test_ketama_names_default_port_servers_without_the_port() -> None:
    """libmemcached names a server on 11211 ``host-N``, any other ``host:port-N``:
    moving a server off the default port changes its points."""
    on_default = KetamaRing([MemcachedServer("10.0.0.1", 11211), MemcachedServer("10.0.0.2", 11211)])
    elsewhere = KetamaRing([MemcachedServer("10.0.0.1", 11212), MemcachedServer("10.0.0.2", 11212)])
    keys = [f"k{n}" for n in range(200)]
    assert [on_default.index_for(k) for k in keys] != [elsewhere.index_for(k) for k in keys]
    assert {on_default.index_for(k) for k in keys} == {0, 1}
