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
    "greeting_words",
    "lock_value",
    "pick_server",
    "server_greeting",
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


#: How long ``server_greeting`` waits for a line the server sends unprompted.
GREETING_WAIT = 0.5
_GREETING_MAX = 4096


def server_greeting(where: str, timeout: float = GREETING_WAIT) -> str | None:
    """The error line a Redis server sends on accepting, before any command; None if it sends none.

    A Redis in protected mode answers a connection from another host with
    ``-DENIED Redis is running in protected mode...`` and closes it; one at
    maxclients with ``-ERR max number of clients reached``. A client that writes
    its first command meanwhile sees only a reset ("Broken pipe"), so after a
    connection error the store asks again and reads what the server says.

    Args:
        where: ``host:port`` (``[v6]:port``), as ``RedisServer.describe`` writes it;
            anything else (a socket path) gives None.
        timeout: Seconds to wait for the connection and the line.

    Returns:
        The server's words on one line (the text after ``-``, its first two
        sentences), or None.
    """
    host, sep, port = where.rpartition(":")
    if not sep or not port.isdigit():
        return None
    data = b""
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock:
            while b"\n" not in data and len(data) < _GREETING_MAX:
                chunk = sock.recv(_GREETING_MAX)
                if not chunk:
                    break
                data += chunk
    except OSError:
        pass  # a timeout (nothing said) or no connection at all
    if not data.startswith(b"-"):
        return None
    return greeting_words(data[1:].split(b"\r\n")[0].decode("utf-8", "replace"))


def greeting_words(line: str) -> str:
    """An error line a server sent unprompted, on one line: its first two sentences."""
    sentences = " ".join(line.split()).split(". ")
    return ". ".join(sentences[:2]).rstrip(".") + "."


def failure_reason(exc: BaseException, said: str | None = None) -> str:
    """One line saying why a Redis call failed, without a traceback or a password.

    Args:
        exc: What the call raised.
        said: What the server said unprompted (``server_greeting``), when known: it
            names the cause better than the socket's error.
    """
    if said is not None:
        if said.startswith("DENIED"):
            return f"refused by the server: {said} (give it a password, or protected-mode no)"
        return f"refused by the server: {said}"
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
