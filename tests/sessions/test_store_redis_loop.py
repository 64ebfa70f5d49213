"""The redis store's client on the trio loop (``LoopRedisStore``) against real redis-servers.

The same keys and scripts as the blocking store (so each sees what the other
wrote), one pipelined connection for many concurrent callers, and the failures:
a wrong password, a server killed and restarted, a hung one, a peer sending
garbage, a caller cancelled while its lock was being taken.
"""

from __future__ import annotations

import contextlib
import os
import signal
import urllib.parse

import pytest
import trio

from fcgi_cluster.sessions import LockTimeout, StoreError, open_store
from tests._peers import LOOPBACK, free_port
from tests.sessions._servers import RedisServer
from tests.sessions.conftest import ACL_PASSWORD, ACL_USER, REDIS_PASSWORD
from tests.sessions.test_store_redis import sid

AUTH = urllib.parse.quote(REDIS_PASSWORD)


@contextlib.asynccontextmanager
async def loop_store(save_path: str, **options):
    """The blocking store of ``save_path`` and its loop client, closed at the end."""
    store = open_store("redis", save_path, check=False, **options)
    try:
        async with trio.open_nursery() as nursery:
            loop = store.loop_store(nursery)
            assert loop is not None
            try:
                yield store, loop
            finally:
                loop.close()
                nursery.cancel_scope.cancel()
    finally:
        store.close()


async def test_locked_request_round_trip_shares_keys_with_the_blocking_store(flushed: RedisServer) -> None:
    key = sid()
    async with loop_store(f"tcp://{flushed.address}?auth={AUTH}&database=2") as (store, loop):
        store.write(key, b"from the blocking store", 60)
        token, data = await loop.lock_and_read(key, expire=5, wait=1, retry_interval=0.01)
        assert data == b"from the blocking store"
        with flushed.client(db=2) as client:
            assert client.get(f"PHPREDIS_SESSION:{key}_LOCK") == token
            # phpredis' lock value shape: hostname|pid|...
            assert token.decode().split("|")[1] == str(os.getpid())
        # Another request waits for the lock, then gives up.
        with pytest.raises(LockTimeout):
            await loop.lock_and_read(key, expire=5, wait=0.1, retry_interval=0.01)
        await loop.write_and_release(key, b"from the loop", 90, token)
        assert store.read(key) == b"from the loop"
        with flushed.client(db=2) as client:
            assert client.get(f"PHPREDIS_SESSION:{key}_LOCK") is None
            assert 85 <= client.ttl(f"PHPREDIS_SESSION:{key}") <= 90
        token, data = await loop.lock_and_read(key, expire=5, wait=1, retry_interval=0.01)
        await loop.touch_and_release(key, 600, token)
        with flushed.client(db=2) as client:
            assert client.ttl(f"PHPREDIS_SESSION:{key}") > 500
            assert client.get(f"PHPREDIS_SESSION:{key}_LOCK") is None
        # The unlocked primitives.
        await loop.write(key, b"plain", 60)
        assert await loop.read(key) == b"plain"
        await loop.touch(key, 700)
        token = store.acquire_lock(key, expire=5, wait=1, retry_interval=0.01)
        await loop.release_lock(key, b"not the owner")
        assert store.exists(key)
        with flushed.client(db=2) as client:
            assert client.get(f"PHPREDIS_SESSION:{key}_LOCK") == token
            assert client.ttl(f"PHPREDIS_SESSION:{key}") > 600
        await loop.release_lock(key, token)
        await loop.destroy(key)
        assert await loop.read(key) is None and not store.exists(key)
        assert await loop.gc(1440) == 0


async def test_a_waiting_request_gets_the_lock_when_it_is_released(flushed: RedisServer) -> None:
    key = sid()
    async with loop_store(f"tcp://{flushed.address}?auth={AUTH}") as (store, loop):
        holder = store.acquire_lock(key, expire=30, wait=1, retry_interval=0.01)
        got = []

        async def wait_for_it() -> None:
            got.append(await loop.lock_and_read(key, expire=5, wait=5, retry_interval=0.01))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_for_it)
            await trio.sleep(0.2)
            assert got == []
            store.write_and_release(key, b"saved by the holder", 60, holder)
        assert got[0][1] == b"saved by the holder"
        await loop.release_lock(key, got[0][0])


async def test_concurrent_callers_share_one_connection_and_get_their_own_replies(flushed: RedisServer) -> None:
    keys = [sid() for _ in range(200)]
    async with loop_store(f"tcp://{flushed.address}?auth={AUTH}") as (store, loop):
        with flushed.client() as client:
            before = client.info("clients")["connected_clients"]
        for key in keys:
            store.write(key, key.encode(), 60)
        answers: dict[str, bytes | None] = {}

        async def one(key: str) -> None:
            token, data = await loop.lock_and_read(key, expire=5, wait=1, retry_interval=0.01)
            answers[key] = data
            await loop.write_and_release(key, data + b"+", 60, token)

        async with trio.open_nursery() as nursery:
            for key in keys:
                nursery.start_soon(one, key)
        assert answers == {key: key.encode() for key in keys}
        assert all(store.read(key) == key.encode() + b"+" for key in keys)
        with flushed.client() as client:
            # The blocking store's one connection plus the loop's one (and this client).
            assert client.info("clients")["connected_clients"] <= before + 2
            assert client.keys("*_LOCK") == []


async def test_acl_user_unix_socket_and_wrong_password(flushed: RedisServer) -> None:
    key = sid()
    path = f"unix://{flushed.unix_socket}?auth[]={ACL_USER}&auth[]={ACL_PASSWORD}&prefix=acl:"
    async with loop_store(path) as (store, loop):
        await loop.write(key, b"as alice", 60)
        assert store.read(key) == b"as alice"
        with flushed.client() as client:
            assert client.get(f"acl:{key}") == b"as alice"
    async with loop_store(f"tcp://{flushed.address}?auth=wrong") as (_, loop):
        with pytest.raises(StoreError, match=f"redis {flushed.address}: authentication failed"):
            await loop.read(key)
    async with loop_store(f"tcp://{flushed.address}") as (_, loop):
        with pytest.raises(StoreError, match="authentication required"):
            await loop.read(key)


async def test_cancelled_while_taking_the_lock_leaves_it_released(flushed: RedisServer) -> None:
    key = sid()
    async with loop_store(f"tcp://{flushed.address}?auth={AUTH}") as (store, loop):
        await loop.write(key, b"x", 60)  # the connection is open: the next call sends at once
        with trio.move_on_after(0) as scope:
            await loop.lock_and_read(key, expire=30, wait=1, retry_interval=0.01)
        assert scope.cancelled_caught
        with flushed.client() as client:
            with trio.fail_after(5):
                while client.exists(f"PHPREDIS_SESSION:{key}_LOCK"):
                    await trio.sleep(0.01)
        # The connection is still in step: the next reply is this call's own.
        token, data = await loop.lock_and_read(key, expire=30, wait=1, retry_interval=0.01)
        assert data == b"x"
        await loop.release_lock(key, token)


async def test_server_killed_and_restarted_under_a_live_loop_store(tmp_path) -> None:
    server = RedisServer(tmp_path / "r", password="pw")
    server.start()
    try:
        async with loop_store(f"tcp://{server.address}?auth=pw", timeout=1) as (_, loop):
            key = sid()
            await loop.write(key, b"before", 60)
            server.kill()
            with pytest.raises(StoreError, match=f"redis {server.address}: connection refused"):
                await loop.read(key)
            with pytest.raises(StoreError, match="connection refused"):
                await loop.lock_and_read(key, expire=5, wait=1, retry_interval=0.01)
            server.start()  # same port, empty, no scripts loaded: EVALSHA falls back to EVAL
            assert await loop.read(key) is None
            token, data = await loop.lock_and_read(key, expire=5, wait=1, retry_interval=0.01)
            assert data is None
            await loop.write_and_release(key, b"after", 60, token)
            assert await loop.read(key) == b"after"
            # Redis closes the idle connection (a restart, CLIENT KILL): the next
            # command is sent again on a new one.
            with server.client() as client:
                client.client_kill_filter(_type="normal", skipme=True)
            assert await loop.read(key) == b"after"
    finally:
        server.stop()


async def test_hung_server_times_out_and_recovers(tmp_path) -> None:
    server = RedisServer(tmp_path / "r")
    server.start()
    try:
        async with loop_store(f"tcp://{server.address}?read_timeout=0.5") as (_, loop):
            key = sid()
            await loop.write(key, b"x", 60)
            os.kill(server.process.pid, signal.SIGSTOP)
            try:
                started = trio.current_time()
                with pytest.raises(StoreError, match="timed out"):
                    await loop.read(key)
                assert trio.current_time() - started < 0.5 + 3
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
            assert await loop.read(key) == b"x"
    finally:
        server.stop()


async def test_a_peer_sending_garbage_fails_its_commands_and_the_next_connection_works() -> None:
    port = free_port()
    connections = 0

    async def garbage_then_redis_like(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        await stream.receive_some(65536)
        if connections == 1:
            await stream.send_all(b"?this is not RESP\r\n")
        else:
            await stream.send_all(b"$2\r\nok\r\n")
        await stream.aclose()

    async with trio.open_nursery() as servers:
        listeners = await trio.open_tcp_listeners(port, host=LOOPBACK)
        servers.start_soon(trio.serve_listeners, garbage_then_redis_like, listeners)
        async with loop_store(f"tcp://{LOOPBACK}:{port}") as (_, loop):
            with pytest.raises(StoreError, match=f"redis {LOOPBACK}:{port}: protocol error"):
                await loop.read(sid())
            assert await loop.read(sid()) == b"ok"
        servers.cancel_scope.cancel()


def test_no_loop_store_behind_sentinel_with_tls_or_for_files(tmp_path) -> None:
    for path in ("sentinel://127.0.0.1:1/sessions", "rediss://127.0.0.1:1"):
        store = open_store("redis", path, check=False)
        try:
            assert store.loop_store(None) is None
        finally:
            store.close()
    store = open_store("files", str(tmp_path), check=False)
    assert store.loop_store(None) is None
