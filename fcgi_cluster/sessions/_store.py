"""The session store interface: what every backend (files, redis, memcached) provides.

Modelled on PHP's ``SessionHandlerInterface`` (read, write, destroy, gc) plus
``updateTimestamp`` (touch) and ``validateId`` (exists), and explicit locking.
The API is synchronous: WSGI apps call it from their threads; ASGI apps through
a thread. One store object per worker process, shared by its threads, so every
backend is thread-safe and keeps its own connection pool.
"""

from __future__ import annotations

import abc

__all__ = ["SessionStore", "StoreError", "LockTimeout", "LockToken"]

#: An opaque value proving ownership of a lock (released only by its owner).
LockToken = bytes


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

    @abc.abstractmethod
    def close(self) -> None:
        """Close the store's connections; the store is not used afterwards."""
