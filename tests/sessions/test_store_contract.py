"""What every session store promises, checked on each backend against its real server.

files (a directory), redis (redis-server with a password), rediscluster (three
masters) and memcached: read/write/touch/destroy/exists, expiry, locking
(contention, timeout, owner-only release, takeover after expiry) and use from
many threads at once, as a worker process uses its one store.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable

import pytest

from fcgi_cluster.sessions import LockTimeout, SessionStore, StoreError, open_store
from tests.sessions.conftest import CLUSTER_PASSWORD, REDIS_PASSWORD

#: "rediscluster-hash_tag" is the cluster store with hash_tag=1 (its keys in one slot).
BACKENDS = ["files", "redis", "rediscluster", "rediscluster-hash_tag", "memcached"]
# Slack for a loaded 2-core machine on top of any wait the store is given.
SLACK = 3.0


@dataclasses.dataclass
class Backend:
    """A store under test, plus a way to ask its server what TTL a session has left."""

    name: str
    store: SessionStore
    remaining_ttl: Callable[[str], float | None]


def _memcached_ttl(host: str, port: int, key: str) -> float | None:
    """memcached's meta get with the ``t`` flag: the item's remaining TTL, None if absent."""
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(f"mg {key} t\r\n".encode())
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(1024)
            assert chunk, "memcached closed the connection"
            reply += chunk
    if reply.startswith(b"EN"):
        return None
    flags = dict((token[:1], token[1:]) for token in reply.split()[1:])
    return float(flags[b"t"])


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path) -> Backend:
    name = request.param
    if name == "files":
        store = open_store("files", str(tmp_path / "sessions"), max_lifetime=1440)

        def remaining(sid: str) -> float | None:
            path = tmp_path / "sessions" / f"sess_{sid}"
            if not path.exists():
                return None
            return path.stat().st_mtime + 1440 - time.time()

    elif name == "redis":
        server = request.getfixturevalue("redis_server")
        with server.client() as client:
            client.flushall()
        auth = urllib.parse.quote(REDIS_PASSWORD)
        store = open_store("redis", f"tcp://{server.address}?auth={auth}")

        def remaining(sid: str) -> float | None:
            with server.client() as client:
                pttl = client.pttl(f"PHPREDIS_SESSION:{sid}")
            return None if pttl < 0 else pttl / 1000

    elif name.startswith("rediscluster"):
        nodes = request.getfixturevalue("redis_cluster_servers")
        seeds = "&".join(f"seed[]={node.address}" for node in nodes)
        tagged = name.endswith("hash_tag")
        store = open_store("rediscluster", f"{seeds}&auth={CLUSTER_PASSWORD}" + ("&hash_tag=1" if tagged else ""))

        def remaining(sid: str) -> float | None:
            for node in nodes:
                with node.client() as client:
                    key = f"PHPREDIS_CLUSTER_SESSION:{{{sid}}}" if tagged else f"PHPREDIS_CLUSTER_SESSION:{sid}"
                    slot = client.execute_command("CLUSTER", "KEYSLOT", key)
                    if client.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) and client.execute_command(
                        "CLUSTER", "GETKEYSINSLOT", slot, 1000
                    ).count(key.encode()):
                        pttl = client.execute_command("PTTL", key)
                        return None if pttl < 0 else pttl / 1000
            return None

    else:
        servers = request.getfixturevalue("memcached_servers")
        store = open_store("memcached", ",".join(f"{host}:{port}" for host, port in servers))

        def remaining(sid: str) -> float | None:
            key = f"memc.sess.key.{sid}"
            host, port = store.server_for(sid).rsplit(":", 1)
            return _memcached_ttl(host, int(port), key)

    try:
        yield Backend(name, store, remaining)
    finally:
        store.close()


def new_sid() -> str:
    # PHP's default id shape: 32 characters of [a-z0-9].
    return secrets.token_hex(16)


def test_read_write_destroy_exists(backend: Backend) -> None:
    store, sid = backend.store, new_sid()
    assert store.read(sid) is None
    assert not store.exists(sid)
    store.write(sid, b"user|s:5:\"alice\";", 600)
    assert store.read(sid) == b"user|s:5:\"alice\";"
    assert store.exists(sid)
    store.write(sid, b"\x00binary\xff" * 1000, 600)
    assert store.read(sid) == b"\x00binary\xff" * 1000
    store.destroy(sid)
    assert store.read(sid) is None
    assert not store.exists(sid)
    store.destroy(sid)  # destroying what is gone is no error
    assert store.gc(1440) >= 0


def test_write_sets_ttl_and_touch_moves_it(backend: Backend) -> None:
    store, sid = backend.store, new_sid()
    if backend.name == "files":
        store.write(sid, b"x", 1440)
        path = next(p for p in _session_files(store) if p.endswith(sid))
        os.utime(path, (time.time() - 1000, time.time() - 1000))
        before = backend.remaining_ttl(sid)
        assert before is not None and before < 500
        store.touch(sid, 1440)
        after = backend.remaining_ttl(sid)
        assert after is not None and after > 1400
        return
    store.write(sid, b"x", 100)
    first = backend.remaining_ttl(sid)
    assert first is not None and 90 <= first <= 100
    store.touch(sid, 5000)
    moved = backend.remaining_ttl(sid)
    assert moved is not None and 4900 <= moved <= 5000
    assert store.read(sid) == b"x"


def _session_files(store) -> list[str]:
    directory = store._directory
    return [os.path.join(directory, name) for name in os.listdir(directory)]


def test_expired_session_is_absent(backend: Backend, tmp_path) -> None:
    sid = new_sid()
    if backend.name == "files":
        # Files expire by max_lifetime against the mtime (PHP's rule).
        store = open_store("files", str(tmp_path / "short"), max_lifetime=1)
        store.write(sid, b"x", 1)
        assert store.read(sid) == b"x"
        path = tmp_path / "short" / f"sess_{sid}"
        os.utime(path, (time.time() - 5, time.time() - 5))
        assert store.read(sid) is None
        assert not store.exists(sid)
        return
    store = backend.store
    store.write(sid, b"x", 1)
    assert store.read(sid) == b"x"
    # memcached counts whole seconds: an item with a 1 s expiry lives up to 2 s.
    deadline = time.monotonic() + 2.5 + SLACK
    while store.read(sid) is not None:
        assert time.monotonic() < deadline, "a session written with ttl=1 never expired"
        time.sleep(0.1)
    assert not store.exists(sid)


def test_touch_of_missing_session_creates_nothing(backend: Backend) -> None:
    sid = new_sid()
    backend.store.touch(sid, 100)
    assert backend.store.read(sid) is None


def test_threads_on_distinct_sessions(backend: Backend) -> None:
    """8 threads x 50 write/read pairs on their own sessions, through one store object."""
    store = backend.store
    errors: list[BaseException] = []
    mismatches: list[tuple[str, bytes | None, bytes]] = []

    def work(thread: int) -> None:
        try:
            for index in range(50):
                sid = f"t{thread}x{index}" + secrets.token_hex(8)
                data = f"{thread}:{index}".encode() * 10
                store.write(sid, data, 600)
                got = store.read(sid)
                if got != data:
                    mismatches.append((sid, got, data))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert mismatches == []


def _increment_200_times_from_8_threads(store, sid: str, increment: Callable[[], None]) -> None:
    """Run ``increment`` 25 times in each of 8 threads; the counter must end at exactly 200."""
    store.write(sid, b"0", 600)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(25):
                increment()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert store.read(sid) == b"200"


def test_lock_contention_loses_no_update(backend: Backend) -> None:
    """8 threads each do lock-read-increment-write-unlock 25 times: exactly 200."""
    store, sid = backend.store, new_sid()

    def increment() -> None:
        token = store.acquire_lock(sid, expire=30, wait=60, retry_interval=0.002)
        try:
            value = int(store.read(sid) or b"0")
            store.write(sid, str(value + 1).encode(), 600)
        finally:
            store.release_lock(sid, token)

    _increment_200_times_from_8_threads(store, sid, increment)


def test_lock_timeout(backend: Backend) -> None:
    store, sid = backend.store, new_sid()
    token = store.acquire_lock(sid, expire=30, wait=1, retry_interval=0.01)
    try:
        started = time.monotonic()
        with pytest.raises(LockTimeout, match=sid):
            store.acquire_lock(sid, expire=30, wait=0.5, retry_interval=0.05)
        elapsed = time.monotonic() - started
        assert 0.5 <= elapsed < 0.5 + SLACK
    finally:
        store.release_lock(sid, token)
    # Released: free again at once.
    store.release_lock(sid, store.acquire_lock(sid, expire=30, wait=0.5, retry_interval=0.01))


def test_release_by_non_owner_does_nothing(backend: Backend) -> None:
    store, sid = backend.store, new_sid()
    token = store.acquire_lock(sid, expire=30, wait=1, retry_interval=0.01)
    store.release_lock(sid, b"somebody|else|token")
    with pytest.raises(LockTimeout):
        store.acquire_lock(sid, expire=30, wait=0.2, retry_interval=0.02)
    store.release_lock(sid, token)
    store.release_lock(sid, store.acquire_lock(sid, expire=30, wait=0.5, retry_interval=0.01))


def test_expired_lock_is_taken_over(backend: Backend) -> None:
    store, sid = backend.store, new_sid()
    # memcached expiries are whole seconds: 1 s is the shortest lock it can hold.
    started = time.monotonic()
    stale = store.acquire_lock(sid, expire=1, wait=1, retry_interval=0.01)
    fresh = store.acquire_lock(sid, expire=30, wait=5 + SLACK, retry_interval=0.05)
    assert time.monotonic() - started >= 1, "the lock was taken before it expired"
    # The old owner's late release must not free the new owner's lock.
    store.release_lock(sid, stale)
    with pytest.raises(LockTimeout):
        store.acquire_lock(sid, expire=30, wait=0.2, retry_interval=0.02)
    store.release_lock(sid, fresh)
    store.release_lock(sid, store.acquire_lock(sid, expire=30, wait=0.5, retry_interval=0.01))


def test_store_errors_are_store_errors(backend: Backend, tmp_path) -> None:
    """A server that is not there: StoreError at open, one line, naming where."""
    port = _closed_port()
    if backend.name == "files":
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("")
        with pytest.raises(StoreError) as info:
            open_store("files", str(blocker))
    elif backend.name.startswith("rediscluster"):
        with pytest.raises(StoreError) as info:
            open_store("rediscluster", f"seed[]=127.0.0.1:{port}", timeout=1)
    else:
        with pytest.raises(StoreError) as info:
            open_store(backend.name, f"127.0.0.1:{port}", timeout=1)
        assert "connection refused" in str(info.value)
    assert "\n" not in str(info.value)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the two ends of a locked request: lock_and_read, write/touch_and_release ---------


def test_lock_and_read_returns_the_data_and_holds_the_lock(backend: Backend) -> None:
    store, sid = backend.store, new_sid()
    token, data = store.lock_and_read(sid, expire=30, wait=1, retry_interval=0.01)
    assert data is None  # no such session yet: locked all the same
    with pytest.raises(LockTimeout):
        store.acquire_lock(sid, expire=30, wait=0.2, retry_interval=0.02)
    store.write_and_release(sid, b"first", 600, token)
    token, data = store.lock_and_read(sid, expire=30, wait=1, retry_interval=0.01)
    assert data == b"first"
    store.release_lock(sid, token)


def test_lock_and_read_waits_for_the_holder_then_reads_its_write(backend: Backend) -> None:
    """The lock is held by another: wait (not fail), then see what the holder saved."""
    store, sid = backend.store, new_sid()
    store.write(sid, b"old", 600)
    holder = store.acquire_lock(sid, expire=30, wait=1, retry_interval=0.01)
    got: list[tuple[bytes, bytes | None]] = []
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            got.append(store.lock_and_read(sid, expire=30, wait=10 + SLACK, retry_interval=0.01))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.3)
    assert got == [] and thread.is_alive(), "the lock was taken while held"
    store.write_and_release(sid, b"new", 600, holder)
    thread.join(10 + 2 * SLACK)
    assert not thread.is_alive()
    assert errors == []
    token, data = got[0]
    assert data == b"new"
    store.release_lock(sid, token)


def test_lock_and_read_timeout(backend: Backend) -> None:
    store, sid = backend.store, new_sid()
    holder = store.acquire_lock(sid, expire=30, wait=1, retry_interval=0.01)
    started = time.monotonic()
    with pytest.raises(LockTimeout, match=sid):
        store.lock_and_read(sid, expire=30, wait=0.5, retry_interval=0.05)
    assert 0.5 <= time.monotonic() - started < 0.5 + SLACK
    store.release_lock(sid, holder)


def test_touch_and_release_moves_the_ttl_and_frees_the_lock(backend: Backend) -> None:
    store, sid = backend.store, new_sid()
    if backend.name == "files":
        # Files expire by mtime against the one gc_maxlifetime: age the file, then touch it.
        store.write(sid, b"x", 1440)
        path = next(p for p in _session_files(store) if p.endswith(sid))
        os.utime(path, (time.time() - 1000, time.time() - 1000))
        token, data = store.lock_and_read(sid, expire=30, wait=1, retry_interval=0.01)
        assert data == b"x"
        store.touch_and_release(sid, 1440, token)
        moved = backend.remaining_ttl(sid)
        assert moved is not None and moved > 1400
    else:
        store.write(sid, b"x", 100)
        token, data = store.lock_and_read(sid, expire=30, wait=1, retry_interval=0.01)
        assert data == b"x"
        store.touch_and_release(sid, 5000, token)
        moved = backend.remaining_ttl(sid)
        assert moved is not None and 4900 <= moved <= 5000
    assert store.read(sid) == b"x"
    store.release_lock(sid, store.acquire_lock(sid, expire=30, wait=0.5, retry_interval=0.01))


def test_a_late_save_does_not_free_the_next_owners_lock(backend: Backend) -> None:
    """The first owner's lock expired and was taken over: its save still writes
    (phpredis writes without checking the lock) but must not release the new lock."""
    store, sid = backend.store, new_sid()
    stale, _ = store.lock_and_read(sid, expire=1, wait=1, retry_interval=0.01)
    fresh, _ = store.lock_and_read(sid, expire=30, wait=5 + SLACK, retry_interval=0.05)
    store.write_and_release(sid, b"late", 600, stale)
    assert store.read(sid) == b"late"
    with pytest.raises(LockTimeout):
        store.acquire_lock(sid, expire=30, wait=0.2, retry_interval=0.02)
    store.touch_and_release(sid, 600, stale)
    with pytest.raises(LockTimeout):
        store.acquire_lock(sid, expire=30, wait=0.2, retry_interval=0.02)
    store.write_and_release(sid, b"fresh", 600, fresh)
    store.release_lock(sid, store.acquire_lock(sid, expire=30, wait=0.5, retry_interval=0.01))
    assert store.read(sid) == b"fresh"


def test_lock_and_read_contention_loses_no_update(backend: Backend) -> None:
    """As test_lock_contention_loses_no_update, through the calls a session makes."""
    store, sid = backend.store, new_sid()

    def increment() -> None:
        token, data = store.lock_and_read(sid, expire=30, wait=60, retry_interval=0.002)
        store.write_and_release(sid, str(int(data or b"0") + 1).encode(), 600, token)

    _increment_200_times_from_8_threads(store, sid, increment)
