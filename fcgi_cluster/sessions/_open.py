"""``open_store``: a session store from PHP's ``session.save_handler`` and ``session.save_path``."""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping

from ._save_path import (
    parse_files_path,
    parse_memcached_path,
    parse_redis_path,
    parse_rediscluster_path,
)
from ._store import SessionStore

__all__ = ["SAVE_HANDLERS", "open_store"]

# Enough connections per server for a worker's request threads (see _redis).
DEFAULT_MAX_CONNECTIONS = 64
# PHP's default session.gc_maxlifetime: how long a file session lives (see _files).
DEFAULT_MAX_LIFETIME = 1440


@dataclasses.dataclass(frozen=True)
class _Options:
    """open_store's keyword options, passed whole to the handler's opener."""

    timeout: float | None
    max_connections: int
    max_lifetime: int
    check: bool


def _open_files(save_path: str, options: _Options) -> SessionStore:
    from ._files import FileStore

    return FileStore(parse_files_path(save_path), max_lifetime=options.max_lifetime)


def _open_redis(save_path: str, options: _Options) -> SessionStore:
    from ._redis import RedisStore

    return RedisStore(
        parse_redis_path(save_path),
        timeout=options.timeout,
        max_connections=options.max_connections,
        check=options.check,
    )


def _open_rediscluster(save_path: str, options: _Options) -> SessionStore:
    from ._redis import RedisClusterStore, TaggedRedisClusterStore

    path = parse_rediscluster_path(save_path)
    store_class = TaggedRedisClusterStore if path.hash_tag else RedisClusterStore
    return store_class(path, timeout=options.timeout, max_connections=options.max_connections)


def _open_memcached(save_path: str, options: _Options) -> SessionStore:
    from ._memcached import MemcachedStore

    return MemcachedStore(
        parse_memcached_path(save_path),
        timeout=options.timeout,
        max_connections=options.max_connections,
        check=options.check,
    )


#: ``session.save_handler`` values and the function opening each store. The client
#: libraries are imported only by the handler that needs them.
SAVE_HANDLERS: Mapping[str, Callable[[str, _Options], SessionStore]] = types.MappingProxyType(
    {
        "files": _open_files,
        "memcached": _open_memcached,
        "redis": _open_redis,
        "rediscluster": _open_rediscluster,
    }
)


def open_store(
    save_handler: str,
    save_path: str,
    *,
    timeout: float | None = None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    max_lifetime: int = DEFAULT_MAX_LIFETIME,
    check: bool = True,
) -> SessionStore:
    """Open the session store a worker process shares among its threads.

    Args:
        save_handler: ``files``, ``redis``, ``rediscluster`` or ``memcached``.
        save_path: Where the sessions live, in the handler's syntax (see
            ``fcgi_cluster.sessions._save_path``).
        timeout: Connect and command timeout in seconds for servers whose
            save_path gives none (default 2 s).
        max_connections: Connections per server in this process's pool (the
            worker's thread count is a good value).
        max_lifetime: ``files`` only: seconds after its last write that a session
            file expires (give ``session.gc_maxlifetime``).
        check: One round trip per server at open (PING, memcached's version), so
            a wrong password or a server that is down stops the worker at start.
            False opens without connecting (``rediscluster`` always connects: it
            needs the slot map), for a worker that should start while the store
            is down and answer 503 until it returns.

    Returns:
        An open store; call ``close()`` when the worker stops.

    Raises:
        ValueError: an unknown handler, or a bad save_path (the message names the
            option at fault).
        StoreError: the store cannot be used now: a server refuses the connection
            or the password (with ``check``), a directory is not writable.
    """
    try:
        opener = SAVE_HANDLERS[save_handler]
    except KeyError:
        raise ValueError(
            f"unknown session.save_handler {save_handler!r}; expected one of: {', '.join(SAVE_HANDLERS)}"
        ) from None
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    if max_connections < 1:
        raise ValueError(f"max_connections must be at least 1, got {max_connections!r}")
    if max_lifetime < 1:
        raise ValueError(f"max_lifetime must be at least 1, got {max_lifetime!r}")
    return opener(save_path, _Options(timeout, max_connections, max_lifetime, check))
