"""The ``redis`` and ``rediscluster`` stores, on redis-py (hiredis parser), keyed as phpredis keys.

Keys and commands are phpredis' (redis_session.c), so a PHP page with phpredis and
a Python app share sessions:

* data at ``<prefix><sid>`` (``PHPREDIS_SESSION:`` by default,
  ``PHPREDIS_CLUSTER_SESSION:`` for the cluster handler), written with ``SETEX``
  (TTL = gc_maxlifetime), read with ``GET``; touch is ``EXPIRE``, exists is
  ``EXISTS``, destroy is ``DEL``; gc does nothing (Redis expires keys itself);
* the lock at ``<data key>_LOCK``, taken with ``SET key value NX PX expire_ms``,
  retried every ``retry_interval`` until ``wait`` runs out, and released with
  phpredis' own Lua compare-and-delete (same script, so same SHA1). phpredis
  writes ``hostname|pid`` as the lock value; one of our processes runs many
  requests at once, so we write ``hostname|pid|<32 hex digits>`` (64 random bits
  drawn once per process, then a 64-bit counter): the same shape for whoever
  reads it in ``redis-cli``, unique per acquisition.

A locked request costs two round trips, not four: ``lock_and_read`` sends the
lock's ``SET NX PX`` and the ``GET`` in one Lua script, and saving sends the
``SETEX`` (or ``EXPIRE``) and the compare-and-delete in another. The commands,
keys and values are the ones above, so PHP sees no difference. The cluster
store keeps the four separate commands: the data key and its lock key hash to
different slots (phpredis' key names have no hash tag), and a script may only
touch keys of one slot. With ``hash_tag=1`` (ours, for clusters without PHP)
the keys are ``<prefix>{<sid>}`` and ``<prefix>{<sid>}_LOCK``, one slot, and
the cluster store takes the two round trips and the leased lock too
(``TaggedRedisClusterStore``).

Several servers (phpredis' comma-separated save_path) share the sessions as
phpredis shares them, so both pick the same server for an id: see
``_redis_scripts.pick_server``.

Connections: each server has a ``BlockingConnectionPool`` (thread-safe; a
thread waits up to the timeout for a free connection rather than opening
unbounded ones). A connection that fails is dropped and the next command opens a
new one, so the store recovers by itself when Redis returns. A command is retried
once, at once, on a connection error (a pooled connection the server closed);
timeouts are not retried, so no call takes much longer than its timeout.

Error handling: every redis-py exception becomes ``StoreError`` with a one-line
reason naming the server (``redis 127.0.0.1:6379: connection refused``).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, LoadBalancingStrategy, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from ._redis_lease import LEASE_TOUCH_RELEASE_SCRIPT, LEASE_WRITE_RELEASE_SCRIPT, RENEW_SCRIPT, Leases, lapsed_save
from ._redis_loop import LoopRedisStore
from ._redis_scripts import (
    LOCK_READ_SCRIPT,
    LOCK_SUFFIX,
    RELEASE_SCRIPT,
    TOUCH_RELEASE_SCRIPT,
    WRITE_RELEASE_SCRIPT,
    failure_reason,
    server_greeting,
    lock_value,
    pick_server,
)
from ._save_path import RedisClusterPath, RedisPath, RedisServer, SentinelPath
from ._store import LockToken, SessionStore, StoreError, poll_lock

__all__ = ["RedisClusterStore", "RedisStore", "TaggedRedisClusterStore"]

# A session store that answers in more than a couple of seconds is down for a web
# request's purposes; phpredis' default (86400 s) would hang a worker's thread.
DEFAULT_TIMEOUT = 2.0
# Per server, per worker process: at least the worker's request threads, so a
# thread waits for a connection only when the process is saturated.
DEFAULT_MAX_CONNECTIONS = 64
def _retry() -> Retry:
    # One immediate retry on a connection error (a pooled connection the server
    # closed); no retry on a timeout, which would double the time to fail.
    return Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,))


class _RedisLikeStore(SessionStore):
    """What the single-server, multi-server, sentinel and cluster stores share.

    A subclass provides ``_locate(sid) -> (client, data key, where, release script)``.
    """

    _name = "redis"

    def _locate(self, sid: str) -> tuple[Any, str, str, Any]:
        raise NotImplementedError

    @contextlib.contextmanager
    def _errors(self, where: str) -> Iterator[None]:
        try:
            yield
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
            said = None
            if isinstance(exc, (redis.exceptions.ConnectionError, OSError)) and not isinstance(
                exc, redis.exceptions.TimeoutError
            ) and "refused" not in str(exc).lower():
                said = server_greeting(where)  # e.g. a protected-mode DENIED
            raise StoreError(f"{self._name} {where}: {failure_reason(exc, said)}") from None

    def read(self, sid: str) -> bytes | None:
        """``GET <prefix><sid>``."""
        client, key, where, _ = self._locate(sid)
        with self._errors(where):
            return client.get(key)

    def write(self, sid: str, data: bytes, ttl: int) -> None:
        """``SETEX <prefix><sid> ttl data``."""
        client, key, where, _ = self._locate(sid)
        with self._errors(where):
            # phpredis' exact command (redis-py deprecates its setex() helper).
            client.execute_command("SETEX", key, max(1, int(ttl)), data)

    def touch(self, sid: str, ttl: int) -> None:
        """``EXPIRE <prefix><sid> ttl`` (nothing happens when the key is gone)."""
        client, key, where, _ = self._locate(sid)
        with self._errors(where):
            client.expire(key, max(1, int(ttl)))

    def destroy(self, sid: str) -> None:
        """``DEL <prefix><sid>``."""
        client, key, where, _ = self._locate(sid)
        with self._errors(where):
            client.delete(key)

    def exists(self, sid: str) -> bool:
        """``EXISTS <prefix><sid>``."""
        client, key, where, _ = self._locate(sid)
        with self._errors(where):
            return bool(client.exists(key))

    def gc(self, max_lifetime: int) -> int:
        """Nothing to do: Redis expires session keys itself."""
        return 0

    def acquire_lock(self, sid: str, *, expire: float, wait: float, retry_interval: float) -> LockToken:
        """``SET <key>_LOCK <value> NX PX <expire ms>``, retried until ``wait`` runs out.

        Raises:
            LockTimeout: someone else held it for all of ``wait``.
            StoreError: Redis cannot be used.
        """
        client, key, where, _ = self._locate(sid)
        token = lock_value()
        expire_ms = max(1, int(expire * 1000))
        with self._errors(where):
            return poll_lock(
                lambda: token if client.set(key + LOCK_SUFFIX, token, nx=True, px=expire_ms) else None,
                sid, wait, retry_interval,
            )

    def release_lock(self, sid: str, token: LockToken) -> None:
        """phpredis' compare-and-delete script: deletes the lock only if ``token`` holds it."""
        _, key, where, release = self._locate(sid)
        with self._errors(where):
            release(keys=[key + LOCK_SUFFIX], args=[token])


#: Forks this process has been through: a thread's own connection belongs to
#: the process that opened it.
_forks = 0


def _count_fork() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_count_fork)


class _Server:
    """One Redis server of a store: its client, prefix, scripts, and name for messages.

    ``run`` sends the scripts of every locked request (two per request) on a
    connection kept by the calling thread: redis-py's ``Script`` call takes a
    pooled connection, wraps the command in its retry and callback machinery
    and gives the connection back, which cost more CPU than the round trip
    itself (86 against 38 us a call, measured on loopback). Only for a server
    at a fixed address (``own_connections``): behind Sentinel the pool must
    follow the master when it moves.
    """

    __slots__ = ("client", "prefix", "where", "release", "lock_read", "write_release", "touch_release",
                 "renew", "lease_write", "lease_touch", "_local", "_own_connections", "_kept", "_kept_forks", "_kept_lock")

    def __init__(self, client: redis.Redis, prefix: str, where: str, *, own_connections: bool = False) -> None:
        self.client = client
        self.prefix = prefix
        self.where = where
        # EVALSHA, loading the script on NOSCRIPT (redis-py's Script), like phpredis.
        self.release = client.register_script(RELEASE_SCRIPT)
        self.lock_read = client.register_script(LOCK_READ_SCRIPT)
        self.write_release = client.register_script(WRITE_RELEASE_SCRIPT)
        self.touch_release = client.register_script(TOUCH_RELEASE_SCRIPT)
        self.renew = client.register_script(RENEW_SCRIPT)
        self.lease_write = client.register_script(LEASE_WRITE_RELEASE_SCRIPT)
        self.lease_touch = client.register_script(LEASE_TOUCH_RELEASE_SCRIPT)
        self._local = threading.local()
        self._own_connections = own_connections
        #: Connections kept by threads, at most half the pool's: the rest stay
        #: for the other commands and for threads past that many.
        self._kept = 0
        self._kept_forks = _forks
        self._kept_lock = threading.Lock()

    def run(self, script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """``script(keys=keys, args=args)``, on this thread's own connection when the server allows.

        As redis-py's ``Script``: EVALSHA, and on NOSCRIPT the script is loaded
        and run again; a connection error is retried once on a new connection
        (the store's retry policy); a timeout is not retried. A connection that
        failed mid-command is closed, so no reply is ever read out of turn.
        """
        if not self._own_connections:
            return script(keys=keys, args=args)
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or local.forks != _forks:
            # Taken from the pool for good: the pool's bound still counts it, and
            # close() (the pool's disconnect) closes it. One inherited from the
            # parent process is left alone: its socket is the parent's too.
            pool = self.client.connection_pool
            with self._kept_lock:
                if self._kept_forks != _forks:  # a child keeps none of its parent's
                    self._kept, self._kept_forks = 0, _forks
                if self._kept >= max(1, pool.max_connections // 2):
                    return script(keys=keys, args=args)
                self._kept += 1
            try:
                conn = pool.get_connection()
            except BaseException:
                with self._kept_lock:
                    self._kept -= 1
                raise
            local.conn, local.forks = conn, _forks
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        for attempt in (1, 2):
            try:
                conn.send_command(*command, check_health=False)
                return conn.read_response()
            except redis.exceptions.NoScriptError:
                return script(keys=keys, args=args)  # loads it, on a pooled connection
            except redis.exceptions.ResponseError:
                raise  # an error reply: the connection is in step
            except redis.exceptions.ConnectionError:
                conn.disconnect()
                if attempt == 2:
                    raise
            except BaseException:
                conn.disconnect()
                raise
        raise AssertionError("unreachable")


def _connection_kwargs(timeout: float | None, read_timeout: float | None, default: float) -> dict[str, Any]:
    connect = timeout if timeout is not None else default
    return {
        "socket_connect_timeout": connect,
        "socket_timeout": read_timeout if read_timeout is not None else connect,
        "retry": _retry(),
        "health_check_interval": 0,
        # RESP2, as phpredis speaks: works with every Redis (HELLO needs 6+), and the
        # replies we use are the same bytes either way.
        "protocol": 2,
    }


class _LeasedRedisStore(_RedisLikeStore):
    """A locked request in two round trips, its lock a lease: where a session's data and lock keys share a node.

    A plain server, a Sentinel master, or a cluster slot (``hash_tag``). A
    subclass provides ``_keyed(sid) -> (_Server, data key)`` and ``_leases``.
    """

    _leases: Leases

    def _keyed(self, sid: str) -> tuple[_Server, str]:
        raise NotImplementedError

    def lock_and_read(
        self, sid: str, *, expire: float, wait: float, retry_interval: float
    ) -> tuple[LockToken, bytes | None]:
        """Take the lock and read the data in one round trip (``LOCK_READ_SCRIPT``).

        The same lock as ``acquire_lock`` (phpredis' key, value and expiry), retried
        every ``retry_interval`` until ``wait`` runs out; the data read is the one
        stored when the lock was taken.

        Raises:
            LockTimeout: someone else held the lock for all of ``wait``.
            StoreError: Redis cannot be used.
        """
        server, key = self._keyed(sid)
        keys = (key, key + LOCK_SUFFIX)
        token = lock_value()
        # A lease, renewed while the request runs (``_redis_lease``): a holder
        # that vanished stops renewing and its lock lapses in seconds.
        leased = expire > self._leases.lease
        args = (token, max(1, int(min(expire, self._leases.lease) * 1000)))

        def attempt() -> tuple[LockToken, bytes | None] | None:
            reply = server.run(server.lock_read, keys, args)
            return None if reply == 0 else (token, reply[0] if reply else None)

        with self._errors(server.where):
            taken = poll_lock(attempt, sid, wait, retry_interval)
        if leased:
            self._leases.hold(server, keys[1], token, expire)
        return taken

    def _save_and_release(self, sid: str, plain: str, leased: str, args: tuple[Any, ...], token: LockToken) -> None:
        # A leased lock's save checks the lock is still its own; an unleased one
        # (expire <= the lease) writes regardless, as phpredis does.
        server, key = self._keyed(sid)
        script = leased if self._leases.release(server, key + LOCK_SUFFIX, token) else plain
        with self._errors(server.where):
            reply = server.run(getattr(server, script), (key, key + LOCK_SUFFIX), (token, *args))
        if reply == -1:
            raise StoreError(lapsed_save(server.where, sid))

    def release_lock(self, sid: str, token: LockToken) -> None:
        """phpredis' compare-and-delete, and no more renewals of this lock."""
        server, key = self._keyed(sid)
        self._leases.release(server, key + LOCK_SUFFIX, token)
        super().release_lock(sid, token)

    def write_and_release(self, sid: str, data: bytes, ttl: int, token: LockToken) -> None:
        """``SETEX`` the data and release the lock if ``token`` holds it, in one round trip.

        Raises:
            StoreError: Redis cannot be used (the write may or may not have been
                done; the caller releases the lock again, which is harmless).
        """
        self._save_and_release(sid, "write_release", "lease_write", (max(1, int(ttl)), data), token)

    def touch_and_release(self, sid: str, ttl: int, token: LockToken) -> None:
        """``EXPIRE`` the data and release the lock if ``token`` holds it, in one round trip.

        Raises:
            StoreError: as ``write_and_release``.
        """
        self._save_and_release(sid, "touch_release", "lease_touch", (max(1, int(ttl)),), token)


class RedisStore(_LeasedRedisStore):
    """Sessions on one or more Redis servers (phpredis' save_path), or behind Sentinel.

    Args:
        path: The parsed save_path.
        timeout: Default connect/command timeout when the save_path gives none.
        max_connections: Connections per server in this process's pool.
        check: PING every server at open (so a wrong password or a server that
            is down fails the worker's start); False connects on first use.

    Raises:
        StoreError: with ``check``, a server cannot be reached or refuses the
            credentials.
    """

    def __init__(
        self,
        path: RedisPath | SentinelPath,
        *,
        timeout: float | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        check: bool = True,
    ) -> None:
        default = DEFAULT_TIMEOUT if timeout is None else timeout
        #: The locks this process holds, renewed while their requests run.
        self._leases = Leases()
        self._servers: list[_Server] = []
        self._weights: list[int] = []
        self._default_timeout = default
        #: What ``loop_store`` connects to: servers at fixed addresses, without TLS.
        self._loop_servers = None if isinstance(path, SentinelPath) or any(
            server.tls for server in path.servers) else tuple(path.servers)
        try:
            if isinstance(path, SentinelPath):
                self._open_sentinel(path, default, max_connections)
            else:
                for server in path.servers:
                    self._servers.append(self._open_server(server, default, max_connections))
                    self._weights.append(server.weight)
            for server in self._servers if check else ():
                with self._errors(server.where):
                    server.client.ping()
        except BaseException:
            self.close()
            raise
        self._single = self._servers[0] if len(self._servers) == 1 else None

    def _open_server(self, server: RedisServer, default: float, max_connections: int) -> _Server:
        kwargs = _connection_kwargs(server.timeout, server.read_timeout, default)
        kwargs.update(db=server.database, username=server.username, password=server.password)
        if server.unix_path is not None:
            kwargs.update(connection_class=redis.UnixDomainSocketConnection, path=server.unix_path)
        else:
            kwargs.update(host=server.host, port=server.port)
            if server.tls:
                kwargs.update(connection_class=redis.SSLConnection, **server.tls_options)
        pool = redis.BlockingConnectionPool(max_connections=max_connections, timeout=kwargs["socket_connect_timeout"], **kwargs)
        client = redis.Redis(connection_pool=pool)
        return _Server(client, server.prefix, server.describe(), own_connections=True)

    def _open_sentinel(self, path: SentinelPath, default: float, max_connections: int) -> None:
        kwargs = _connection_kwargs(path.timeout, path.read_timeout, default)
        sentinel_kwargs = {
            "socket_connect_timeout": kwargs["socket_connect_timeout"],
            "socket_timeout": kwargs["socket_timeout"],
            "username": path.sentinel_username,
            "password": path.sentinel_password,
        }
        where = f"sentinel {path.master}@" + ",".join(f"{host}:{port}" for host, port in path.sentinels)
        with self._errors(where):
            sentinel = Sentinel(list(path.sentinels), sentinel_kwargs=sentinel_kwargs, **kwargs)
            # SentinelConnectionPool asks the sentinels for the master's address on
            # each new connection and drops its connections when the master moves.
            client = sentinel.master_for(
                path.master,
                connection_pool_class=SentinelConnectionPool,
                db=path.database,
                username=path.username,
                password=path.password,
                max_connections=max_connections,
            )
        self._servers.append(_Server(client, path.prefix, where))
        self._weights.append(1)

    def __repr__(self) -> str:
        return f"RedisStore({', '.join(server.where for server in self._servers)})"

    def _server(self, sid: str) -> _Server:
        return self._single or self._servers[pick_server(sid, self._weights)]

    def _locate(self, sid: str) -> tuple[Any, str, str, Any]:
        server = self._server(sid)
        return server.client, server.prefix + sid, server.where, server.release

    def _keyed(self, sid: str) -> tuple[_Server, str]:
        server = self._server(sid)
        return server, server.prefix + sid

    def loop_store(self, nursery: Any) -> Any:
        """The same servers' client on the running trio loop (``LoopRedisStore``), or None.

        None behind Sentinel (the master moves; redis-py follows it) and with TLS:
        sessions then load and save in a thread.
        """
        if self._loop_servers is None:
            return None
        return LoopRedisStore(self._loop_servers, self._default_timeout, nursery)

    def server_for(self, sid: str) -> str:
        """Which server (``host:port``) holds ``sid``: for logs and tests."""
        return self._locate(sid)[2]

    def close(self) -> None:
        """Close every server's connections."""
        for server in self._servers:
            with contextlib.suppress(Exception):
                server.client.close()
                server.client.connection_pool.disconnect()


class RedisClusterStore(_RedisLikeStore):
    """Sessions in a Redis Cluster (phpredis' ``rediscluster`` handler).

    redis-py's ``RedisCluster`` learns the slot map from the seeds, sends each
    command to the slot's master, follows MOVED/ASK redirections and refreshes the
    map after a MOVED. Thread-safe: each node has its own connection pool. It
    always connects at open (the slot map is needed before any command).

    Args:
        path: The parsed save_path (seeds, auth, prefix, timeouts, failover).
        timeout: Default connect/command timeout when the save_path gives none.
        max_connections: Connections per node in this process's pool.

    Raises:
        StoreError: no seed answers, the credentials are refused, or the cluster
            does not cover every slot.
    """

    _name = "rediscluster"

    def __init__(
        self,
        path: RedisClusterPath,
        *,
        timeout: float | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        default = DEFAULT_TIMEOUT if timeout is None else timeout
        kwargs = _connection_kwargs(path.timeout, path.read_timeout, default)
        # For RedisCluster, ``retry`` is the cluster-level policy (redirections,
        # reconnects to other nodes): one more attempt, so a down cluster fails
        # within a few timeouts rather than redis-py's default of several.
        kwargs["retry"] = Retry(NoBackoff(), 1)
        self._where = ",".join(f"{host}:{port}" for host, port in path.seeds)
        self._prefix = path.prefix
        with self._errors(self._where):
            self._client = RedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in path.seeds],
                username=path.username,
                password=path.password,
                # phpredis' failover=error/distribute read from replicas too.
                load_balancing_strategy=None if path.failover == "none" else LoadBalancingStrategy.ROUND_ROBIN,
                max_connections=max_connections,
                **kwargs,
            )
            try:
                self._client.ping(target_nodes=RedisCluster.ALL_NODES)
            except BaseException:
                self._client.close()
                raise
        self._release = self._client.register_script(RELEASE_SCRIPT)

    def __repr__(self) -> str:
        return f"RedisClusterStore({self._where})"

    def _locate(self, sid: str) -> tuple[Any, str, str, Any]:
        return self._client, self._prefix + sid, self._where, self._release

    def close(self) -> None:
        """Close the connections to every node."""
        with contextlib.suppress(Exception):
            self._client.close()


class TaggedRedisClusterStore(_LeasedRedisStore, RedisClusterStore):
    """The cluster store with ``hash_tag=1``: a session's keys in one slot, locked requests in two round trips.

    Keys are ``<prefix>{<sid>}`` and ``<prefix>{<sid>}_LOCK``: Redis Cluster hashes
    only the part in braces, so both live on one node and one script takes the
    lock and reads the data (and one saves and releases), as ``RedisStore`` does.
    The lock is a lease (``_redis_lease``): one left on a master that died, and
    replicated to the replica that took over, lapses in seconds. PHP's cluster
    handler has no braces in its keys: a session shared with PHP needs the plain
    ``rediscluster`` store.
    """

    def __init__(self, path: RedisClusterPath, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self._leases = Leases()
        self._tagged = _Server(self._client, self._prefix, self._where)

    def __repr__(self) -> str:
        return f"TaggedRedisClusterStore({self._where})"

    def _key(self, sid: str) -> str:
        return f"{self._prefix}{{{sid}}}"

    def _locate(self, sid: str) -> tuple[Any, str, str, Any]:
        return self._client, self._key(sid), self._where, self._release

    def _keyed(self, sid: str) -> tuple[_Server, str]:
        return self._tagged, self._key(sid)
