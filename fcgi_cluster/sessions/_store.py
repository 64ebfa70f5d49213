"""The session store interface: what every backend (files, redis, memcached) provides.

Modelled on PHP's ``SessionHandlerInterface`` (read, write, destroy, gc) plus
``updateTimestamp`` (touch) and ``validateId`` (exists), and explicit locking.
The API is synchronous: WSGI apps call it from their threads; ASGI apps through
a thread. One store object per worker process, shared by its threads, so every
backend is thread-safe and keeps its own connection pool. A backend may also
offer a client on the worker's trio loop (``loop_store``), which sessions loaded
and saved by the loop use instead (redis: ``_redis_loop.LoopRedisStore``).

A locked request uses the store at its two ends only: ``lock_and_read`` when the
session is first used, ``write_and_release`` or ``touch_and_release`` when it is
saved. Their defaults here are the primitives called one after the other; a
backend that can do either end in one round trip (redis) overrides them.
"""

from __future__ import annotations

import abc
import logging
import time
from typing import Any, Callable, TypeVar

__all__ = ["SessionStore", "StoreError", "LockTimeout", "LockToken"]

#: An opaque value proving ownership of a lock (released only by its owner).
LockToken = bytes

log = logging.getLogger("fcgi_cluster.sessions")

T = TypeVar("T")


def poll_lock(attempt: Callable[[], T | None], sid: str, wait: float, retry_interval: float) -> T:
    """Call ``attempt`` every ``retry_interval`` until it returns something, for ``wait`` seconds.

    The retry loop of the lock-taking backends (phpredis' and php-memcached's).

    Raises:
        LockTimeout: ``attempt`` returned None until ``wait`` ran out.
    """
    deadline = time.monotonic() + wait
    while True:
        got = attempt()
        if got is not None:
            return got
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LockTimeout(f"session {sid} is locked by another request (waited {wait:g}s)")
        time.sleep(min(retry_interval, remaining))


class StoreError(Exception):
    """The store cannot be used now: server down, timeout, refused, wrong password."""


class LockTimeout(Exception):
    """The session's lock could not be had within the wait time."""


class SessionStore(abc.ABC):
    """A place where sessions live. Session ids are checked by the caller (safe characters only).

    Error handling: every method raises ``StoreError`` when the server cannot be
    used (never a backend-specific exception); ``acquire_lock`` raises ``LockTimeout``.
    """

    @abc.abstractmethod
    def read(self, sid: str) -> bytes | None:
        """The session's data, or None when there is no such session."""

    @abc.abstractmethod
    def write(self, sid: str, data: bytes, ttl: int) -> None:
        """Store ``data`` for ``sid``, to expire ``ttl`` seconds from now."""

    @abc.abstractmethod
    def touch(self, sid: str, ttl: int) -> None:
        """Push the expiry of an existing session to ``ttl`` seconds from now."""

    @abc.abstractmethod
    def destroy(self, sid: str) -> None:
        """Delete the session (no error when it does not exist)."""

    @abc.abstractmethod
    def exists(self, sid: str) -> bool:
        """Whether the session exists (for strict mode)."""

    @abc.abstractmethod
    def gc(self, max_lifetime: int) -> int:
        """Remove sessions idle longer than ``max_lifetime`` s; returns how many (0 where the server expires keys)."""

    @abc.abstractmethod
    def acquire_lock(self, sid: str, *, expire: float, wait: float, retry_interval: float) -> LockToken:
        """Lock the session for at most ``expire`` s, waiting up to ``wait`` s.

        Raises:
            LockTimeout: still locked by someone else after ``wait``.
        """

    @abc.abstractmethod
    def release_lock(self, sid: str, token: LockToken) -> None:
        """Release the lock if ``token`` still owns it (compare-and-delete)."""

    def lock_and_read(
        self, sid: str, *, expire: float, wait: float, retry_interval: float
    ) -> tuple[LockToken, bytes | None]:
        """``acquire_lock`` then ``read``: the lock's token and the session's data.

        Raises:
            LockTimeout: as ``acquire_lock``.
            StoreError: the store failed; the lock, if it was taken, is let go
                (or left to expire when the store is down).
        """
        token = self.acquire_lock(sid, expire=expire, wait=wait, retry_interval=retry_interval)
        try:
            return token, self.read(sid)
        except BaseException:
            self._release_after_save(sid, token)
            raise

    def write_and_release(self, sid: str, data: bytes, ttl: int, token: LockToken) -> None:
        """``write`` then ``release_lock``.

        Raises:
            StoreError: the write failed (the caller still owns the lock and
                releases it). A failed release is only logged: the lock expires
                by itself.
        """
        self.write(sid, data, ttl)
        self._release_after_save(sid, token)

    def touch_and_release(self, sid: str, ttl: int, token: LockToken) -> None:
        """``touch`` then ``release_lock`` (an unchanged session under lazy_write).

        Raises:
            StoreError: as ``write_and_release``.
        """
        self.touch(sid, ttl)
        self._release_after_save(sid, token)

    def _release_after_save(self, sid: str, token: LockToken) -> None:
        """Release the lock; a failure is only logged (the lock expires by itself)."""
        try:
            self.release_lock(sid, token)
        except StoreError as exc:
            log.warning("session lock not released: %s", exc)

    def loop_store(self, nursery: Any) -> Any:
        """This store's client on the running trio loop, or None (the default) when it has none.

        A loop store has the methods a session's load and save call
        (``lock_and_read``, ``read``, ``write``, ``write_and_release``, ``touch``,
        ``touch_and_release``, ``release_lock``, ``destroy``, ``gc``) as coroutines;
        its connections' tasks run in ``nursery``. Without one, sessions loaded
        on the loop go through a thread.
        """
        return None

    @abc.abstractmethod
    def close(self) -> None:
        """Close the store's connections; the store is not used afterwards."""
