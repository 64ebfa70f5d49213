"""The ``memcached`` store, on pymemcache, keyed as php-memcached keys.

Keys are php-memcached's (php_memcached_session.c): data at ``<prefix><sid>``
(``memc.sess.key.`` by default), the lock at ``<prefix>lock.<sid>``, taken with
``add`` (which fails when the key exists) with an expiry, retried every
``retry_interval`` until ``wait`` runs out. php-memcached stores ``"1"`` as the
lock value and deletes the lock unconditionally; we store a random token and
release by compare: ``gets`` the lock, and only if it still holds our token,
``cas`` it to an already-expired item (memcached expires an item stored with a
negative expiry at once). The cas fails if anyone changed the lock in between, so
a lock that expired and was taken over is never released by its old owner.
memcached's text protocol has no compare-and-delete; this is the same thing.

Servers: each server has a pymemcache ``PooledClient`` (thread-safe, a pool of
connections). A key goes to the server php-memcached would pick, so PHP and Python
share sessions over several servers: php-memcached turns on libmemcached's
consistent (ketama) distribution for sessions (``memcached.sess_consistent_hash``,
on by default, type ``ketama``), which puts 100 points per server on a ring, at
the one-at-a-time (Jenkins) hash of ``host:port-N`` (``host-N`` on port 11211),
N = 0..99, and sends a key to the first point at or after the key's own hash. The
hash is of the key without the prefix (``<sid>``, ``lock.<sid>``), as libmemcached
hashes keys without their namespace. See ``KetamaRing``. Why not pymemcache's
HashClient: on a failure it takes the server out of the ring, so its sessions
silently move to another server and come back stale when it returns (an old
session resurrected over newer writes). Here a server that is down gives
``StoreError`` for its sessions and nothing moves.

Expiry: memcached reads an expiry over 30 days as a unix time; longer TTLs are
sent as one.

Error handling: every pymemcache and socket error becomes ``StoreError`` with a
one-line reason naming the server.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import os
import secrets
import socket
import time
from collections.abc import Iterator
from typing import Any

import pymemcache.exceptions
from pymemcache.client.base import PooledClient

from ._save_path import MemcachedPath, MemcachedServer
from ._store import LockToken, SessionStore, StoreError, poll_lock

__all__ = ["KetamaRing", "MemcachedStore", "one_at_a_time"]

# See _redis.DEFAULT_TIMEOUT: a store slower than this is down for a web request.
DEFAULT_TIMEOUT = 2.0
DEFAULT_MAX_CONNECTIONS = 64
LOCK_INFIX = "lock."
# memcached: an expiry larger than this is an absolute unix time.
_RELATIVE_EXPIRY_LIMIT = 30 * 24 * 3600


# libmemcached's MEMCACHED_POINTS_PER_SERVER (unweighted ketama) and default port.
POINTS_PER_SERVER = 100
_DEFAULT_PORT = 11211
_MASK = 0xFFFFFFFF


def one_at_a_time(data: bytes) -> int:
    """Bob Jenkins' one-at-a-time hash, libmemcached's default key hash (hashkit_one_at_a_time)."""
    value = 0
    for byte in data:
        value = (value + byte) & _MASK
        value = (value + (value << 10)) & _MASK
        value ^= value >> 6
    value = (value + (value << 3)) & _MASK
    value ^= value >> 11
    return (value + (value << 15)) & _MASK


class KetamaRing:
    """libmemcached's unweighted ketama continuum, as php-memcached uses it for sessions.

    Args:
        servers: The servers in the order written (the order does not matter to the
            ring, only the names).
    """

    def __init__(self, servers: list[MemcachedServer]) -> None:
        points = []
        for index, server in enumerate(servers):
            if server.port == _DEFAULT_PORT:
                name = server.host
            else:
                name = f"{server.host}:{server.port or 0}"
            for point in range(POINTS_PER_SERVER):
                points.append((one_at_a_time(f"{name}-{point}".encode()), index))
        points.sort()
        self._values = [value for value, _ in points]
        self._owners = [owner for _, owner in points]

    def index_for(self, key: str) -> int:
        """The index (into ``servers``) of the server that holds ``key`` (unprefixed)."""
        position = bisect.bisect_left(self._values, one_at_a_time(key.encode()))
        return self._owners[position if position < len(self._values) else 0]


def _expiry(ttl: float) -> int:
    seconds = max(1, int(ttl))
    if seconds > _RELATIVE_EXPIRY_LIMIT:
        return int(time.time()) + seconds
    return seconds


def _reason(exc: BaseException) -> str:
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError):
        return f"connection failed: {exc.strerror or exc}"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class MemcachedStore(SessionStore):
    """Sessions on one or more memcached servers.

    Args:
        path: The parsed save_path (servers, prefix, timeouts).
        timeout: Default command timeout when the save_path gives none.
        max_connections: Connections per server in this process's pool.
        check: Ask every server its ``version`` at open; False connects on first use.

    Raises:
        StoreError: with ``check``, a server does not answer.
    """

    def __init__(
        self,
        path: MemcachedPath,
        *,
        timeout: float | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        check: bool = True,
    ) -> None:
        command_timeout = path.timeout if path.timeout is not None else (timeout or DEFAULT_TIMEOUT)
        connect_timeout = path.connect_timeout if path.connect_timeout is not None else command_timeout
        self._prefix = path.prefix
        self._clients: list[tuple[PooledClient, str]] = [
            (self._client(server, connect_timeout, command_timeout, max_connections), server.describe())
            for server in path.servers
        ]
        self._ring = KetamaRing(list(path.servers))
        # One server: no hashing (the hash is pure Python).
        self._single = self._clients[0] if len(self._clients) == 1 else None
        try:
            for client, name in self._clients if check else ():
                with self._errors(name):
                    client.version()
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _client(server: MemcachedServer, connect_timeout: float, timeout: float, max_connections: int) -> PooledClient:
        spec: Any = server.host if server.port is None else (server.host, server.port)
        return PooledClient(
            spec,
            connect_timeout=connect_timeout,
            timeout=timeout,
            no_delay=True,
            max_pool_size=max_connections,
            # Results, not fire-and-forget: a failed write must be seen.
            default_noreply=False,
        )

    def __repr__(self) -> str:
        return f"MemcachedStore({', '.join(name for _, name in self._clients)})"

    def _locate(self, unprefixed: str) -> tuple[PooledClient, str]:
        return self._single or self._clients[self._ring.index_for(unprefixed)]

    def server_for(self, sid: str) -> str:
        """Which server (``host:port``) holds ``sid``'s data: for logs and tests."""
        return self._locate(sid)[1]

    @contextlib.contextmanager
    def _errors(self, where: str) -> Iterator[None]:
        try:
            yield
        except (pymemcache.exceptions.MemcacheError, OSError) as exc:
            raise StoreError(f"memcached {where}: {_reason(exc)}") from None

    def read(self, sid: str) -> bytes | None:
        """``get <prefix><sid>``."""
        key = self._prefix + sid
        client, where = self._locate(sid)
        with self._errors(where):
            return client.get(key)

    def write(self, sid: str, data: bytes, ttl: int) -> None:
        """``set <prefix><sid>`` with the TTL as its expiry."""
        key = self._prefix + sid
        client, where = self._locate(sid)
        with self._errors(where):
            if not client.set(key, data, expire=_expiry(ttl)):
                raise StoreError(f"memcached {where}: the server did not store {key}")

    def touch(self, sid: str, ttl: int) -> None:
        """``touch <prefix><sid> ttl`` (nothing happens when the key is gone)."""
        key = self._prefix + sid
        client, where = self._locate(sid)
        with self._errors(where):
            client.touch(key, expire=_expiry(ttl))

    def destroy(self, sid: str) -> None:
        """``delete <prefix><sid>``."""
        key = self._prefix + sid
        client, where = self._locate(sid)
        with self._errors(where):
            client.delete(key)

    def exists(self, sid: str) -> bool:
        """Whether ``get`` finds it (memcached has no exists command)."""
        return self.read(sid) is not None

    def gc(self, max_lifetime: int) -> int:
        """Nothing to do: memcached expires items itself."""
        return 0

    def acquire_lock(self, sid: str, *, expire: float, wait: float, retry_interval: float) -> LockToken:
        """``add <prefix>lock.<sid> <token>`` with expiry ``expire``, retried until ``wait``.

        memcached's clock is whole seconds, updated by a timer once a second,
        so an item given N seconds can live a little less than N-1 (a 2 s item
        was seen gone after 0.91 s); the lock is stored with ``ceil(expire) + 2``
        so it lives at least ``expire`` (php-memcached adds one second, which
        is not always enough).

        Raises:
            LockTimeout: someone else held it for all of ``wait``.
            StoreError: the server cannot be used.
        """
        key = self._prefix + LOCK_INFIX + sid
        client, where = self._locate(LOCK_INFIX + sid)
        token = f"{socket.gethostname()}|{os.getpid()}|{secrets.token_hex(16)}".encode()
        expiry = _expiry(math.ceil(expire) + 2)
        with self._errors(where):
            return poll_lock(lambda: token if client.add(key, token, expire=expiry) else None,
                             sid, wait, retry_interval)

    def release_lock(self, sid: str, token: LockToken) -> None:
        """Expire the lock at once if ``token`` still holds it (``gets`` + ``cas``)."""
        key = self._prefix + LOCK_INFIX + sid
        client, where = self._locate(LOCK_INFIX + sid)
        with self._errors(where):
            value, cas = client.gets(key)
            if value == token:
                client.cas(key, b"", cas, expire=-1)

    def close(self) -> None:
        """Close every server's connections."""
        for client, _ in self._clients:
            with contextlib.suppress(Exception):
                client.close()
