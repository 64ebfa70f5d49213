"""What both Redis stores (redis-py's and the trio loop's) send and how they read it.

The lock key's suffix and the lock value's format (``hostname|pid|<32 hex digits>``,
phpredis' shape), the Lua scripts (phpredis' compare-and-delete byte for byte, and the
two one-round-trip ends of a locked request), the server phpredis picks for an id,
and the one-line reason for a failed call. ``_redis.RedisStore`` and
``_redis_loop.LoopRedisStore`` both import them, so the two speak to Redis (and to
PHP) alike.
"""

from __future__ import annotations

import itertools
import os
import secrets
import socket
from collections.abc import Iterator, Sequence

import redis.exceptions

__all__ = [
    "LOCK_READ_SCRIPT",
    "LOCK_SUFFIX",
    "RELEASE_SCRIPT",
    "TOUCH_RELEASE_SCRIPT",
    "WRITE_RELEASE_SCRIPT",
    "failure_reason",
    "lock_value",
    "pick_server",
]

LOCK_SUFFIX = "_LOCK"
# phpredis' LOCK_RELEASE_LUA_STR, byte for byte (its SHA1 is b70c2384...).
RELEASE_SCRIPT = (
    'if redis.call("get",KEYS[1]) == ARGV[1] then return redis.call("del",KEYS[1]) else return 0 end'
)
# The two ends of a locked request, one round trip each (KEYS[1] = data key,
# KEYS[2] = lock key, on one server). Taking the lock is phpredis' SET NX PX; when
# it is taken the data comes back in a one-element array (empty: no session),
# otherwise the integer 0 and the caller retries as phpredis does.
LOCK_READ_SCRIPT = (
    'if redis.call("set",KEYS[2],ARGV[1],"NX","PX",ARGV[2]) then'
    ' return {redis.call("get",KEYS[1])} else return 0 end'
)
# phpredis' SETEX (or EXPIRE for an unchanged session), then its compare-and-delete.
WRITE_RELEASE_SCRIPT = (
    'redis.call("setex",KEYS[1],ARGV[2],ARGV[3])'
    ' if redis.call("get",KEYS[2]) == ARGV[1] then return redis.call("del",KEYS[2]) else return 0 end'
)
TOUCH_RELEASE_SCRIPT = (
    'redis.call("expire",KEYS[1],ARGV[2])'
    ' if redis.call("get",KEYS[2]) == ARGV[1] then return redis.call("del",KEYS[2]) else return 0 end'
)


# (pid, "hostname|pid|<64 random bits>", counter): built once per process (a forked
# child builds its own), so a lock value costs no system call.
_lock_owner: tuple[int, str, Iterator[int]] = (0, "", itertools.count())


def lock_value() -> bytes:
    """A new lock value, ``hostname|pid|<32 hex digits>``: phpredis' shape, unique per acquisition."""
    global _lock_owner
    pid = os.getpid()
    if _lock_owner[0] != pid:
        _lock_owner = (pid, f"{socket.gethostname()}|{pid}|{secrets.token_hex(8)}", itertools.count())
    # next() on a count is atomic under the GIL: unique across the process's threads.
    return f"{_lock_owner[1]}{next(_lock_owner[2]):016x}".encode()


def pick_server(sid: str, weights: Sequence[int]) -> int:
    """The index of the server phpredis would pick for ``sid`` (redis_pool_get_sock).

    phpredis reads the id's first four bytes as a native (little-endian on x86 and
    ARM) unsigned int, takes it modulo the total weight, and walks its server list,
    each server owning ``weight`` consecutive positions. Its list is built by
    prepending, so it walks the servers in reverse of the order written. Matching
    this exactly is what lets PHP and Python agree on where a session lives.

    Args:
        sid: The session id (PHP's ids are at least 22 characters; a shorter one is
            padded with zero bytes).
        weights: The servers' weights, in the order written in the save_path.

    Returns:
        The index into ``weights`` (order written).
    """
    position = int.from_bytes(sid.encode()[:4].ljust(4, b"\0"), "little") % sum(weights)
    start = 0
    for index in range(len(weights) - 1, -1, -1):
        if position < start + weights[index]:
            return index
        start += weights[index]
    raise AssertionError("unreachable: position < total weight")


def failure_reason(exc: BaseException) -> str:
    """One line saying why a Redis call failed, without a traceback or a password."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    lowered = text.lower()
    # NOAUTH first: redis-py raises it as an AuthenticationError too.
    if "noauth" in lowered or "authentication required" in lowered or "already authenticated" in lowered:
        return "authentication required: the server has a password and none was given (auth=...)"
    if isinstance(exc, redis.exceptions.AuthenticationError) or "wrongpass" in lowered or (
        "invalid" in lowered and "password" in lowered
    ):
        return "authentication failed: wrong user or password"
    if isinstance(exc, redis.exceptions.NoPermissionError) or "noperm" in lowered:
        return f"permission denied for this user: {text}"
    if isinstance(exc, redis.exceptions.TimeoutError) or "timed out" in lowered:
        return "timed out"
    if "connection refused" in lowered:
        return "connection refused"
    if isinstance(exc, (redis.exceptions.ClusterDownError, redis.exceptions.SlotNotCoveredError)):
        return f"cluster down: {text}"
    if isinstance(exc, redis.exceptions.ConnectionError):
        return f"connection failed: {text}"
    return f"{type(exc).__name__}: {text}"
