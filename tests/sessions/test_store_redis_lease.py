"""Session locks as leases (``fcgi_cluster.sessions._redis_lease``), against a real redis-server.

A live holder keeps its lock past the lease; a holder killed with SIGKILL leaves
a lock that lapses within the lease, not lock_expire; a holder whose lease
lapsed and was taken over saves nothing over the new owner's data.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.parse

import pytest
import trio

from fcgi_cluster.sessions import StoreError, open_store
from fcgi_cluster.sessions._redis_lease import LEASE
from fcgi_cluster.sessions._store import LockTimeout
from tests._peers import REPO_ROOT
from tests.sessions._servers import RedisServer
from tests.sessions.conftest import REDIS_PASSWORD

AUTH = urllib.parse.quote(REDIS_PASSWORD)


def save_path(server: RedisServer) -> str:
    return f"tcp://{server.address}?auth={AUTH}"


def test_a_live_holder_keeps_its_lock_past_the_lease(flushed: RedisServer) -> None:
    holder, other = open_store("redis", save_path(flushed)), open_store("redis", save_path(flushed))
    sid = secrets.token_hex(16)
    try:
        token, _ = holder.lock_and_read(sid, expire=30, wait=1, retry_interval=0.01)
        time.sleep(LEASE * 1.6)  # past the lease: only renewals keep it
        with pytest.raises(LockTimeout):
            other.lock_and_read(sid, expire=30, wait=0.2, retry_interval=0.02)
        holder.write_and_release(sid, b"n|i:1;", 600, token)
        token, data = other.lock_and_read(sid, expire=30, wait=1, retry_interval=0.01)
        assert data == b"n|i:1;"
        other.release_lock(sid, token)
    finally:
        holder.close()
        other.close()


HOLDER = """
import sys, time
from fcgi_cluster.sessions import open_store
store = open_store("redis", sys.argv[1])
store.lock_and_read(sys.argv[2], expire=30, wait=1, retry_interval=0.01)
print("locked", flush=True)
time.sleep(120)
"""


def test_a_killed_holders_lock_lapses_within_the_lease(flushed: RedisServer) -> None:
    sid = secrets.token_hex(16)
    process = subprocess.Popen([sys.executable, "-c", HOLDER, save_path(flushed), sid], cwd=REPO_ROOT,
                               env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), stdout=subprocess.PIPE,
                               start_new_session=True)
    store = open_store("redis", save_path(flushed))
    try:
        assert process.stdout.readline().strip() == b"locked"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        started = time.monotonic()
        token, _ = store.lock_and_read(sid, expire=30, wait=25, retry_interval=0.05)
        waited = time.monotonic() - started
        store.release_lock(sid, token)
        # lock_expire is 30 s: the lease let it go in at most LEASE.
        assert waited <= LEASE + 2, waited
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        process.stdout.close()
        store.close()


def test_a_holder_whose_lease_lapsed_saves_nothing_over_the_next_owner(flushed: RedisServer) -> None:
    stale_store, store = open_store("redis", save_path(flushed)), open_store("redis", save_path(flushed))
    sid = secrets.token_hex(16)
    try:
        stale, _ = stale_store.lock_and_read(sid, expire=30, wait=1, retry_interval=0.01)
        with flushed.client() as client:
            client.delete(f"PHPREDIS_SESSION:{sid}_LOCK")  # as when its renewals could not reach Redis
        fresh, _ = store.lock_and_read(sid, expire=30, wait=1, retry_interval=0.01)
        store.write_and_release(sid, b"n|i:2;", 600, fresh)
        with pytest.raises(StoreError, match="not saved: its lock lapsed"):
            stale_store.write_and_release(sid, b"n|i:1;", 600, stale)
        assert store.read(sid) == b"n|i:2;"
    finally:
        stale_store.close()
        store.close()


async def test_the_loop_store_renews_its_leases_and_refuses_a_lapsed_save(flushed: RedisServer) -> None:
    store = open_store("redis", save_path(flushed))
    sid, lapsed = secrets.token_hex(16), secrets.token_hex(16)
    try:
        async with trio.open_nursery() as nursery:
            loop = store.loop_store(nursery)
            try:
                token, _ = await loop.lock_and_read(sid, expire=30, wait=1, retry_interval=0.01)
                await trio.sleep(LEASE * 1.6)  # past the lease: only renewals keep it
                with pytest.raises(LockTimeout):
                    store.lock_and_read(sid, expire=30, wait=0.1, retry_interval=0.02)
                await loop.write_and_release(sid, b"n|i:1;", 600, token)
                assert store.read(sid) == b"n|i:1;"
                stale, _ = await loop.lock_and_read(lapsed, expire=30, wait=1, retry_interval=0.01)
                with flushed.client() as client:
                    client.delete(f"PHPREDIS_SESSION:{lapsed}_LOCK")
                fresh, _ = store.lock_and_read(lapsed, expire=30, wait=1, retry_interval=0.01)
                store.write_and_release(lapsed, b"n|i:2;", 600, fresh)
                with pytest.raises(StoreError, match="not saved: its lock lapsed"):
                    await loop.write_and_release(lapsed, b"n|i:1;", 600, stale)
                assert store.read(lapsed) == b"n|i:2;"
            finally:
                loop.close()
    finally:
        store.close()
