"""Session locks as leases for ``RedisStore``: a dead holder's lock expires in seconds.

A lock is taken for ``LEASE`` seconds (not lock_expire), and a thread of the
holding process renews every lock it holds every ``LEASE / 3`` with a
compare-and-PEXPIRE, for at most lock_expire in all. A holder that vanishes
(its host cut off, its process killed) stops renewing, so the next request of
that user waits at most ``LEASE`` for the lock instead of lock_expire (30 s).

The other half is the write: a holder that lost its lease (it was cut off
longer than the lease, and someone else may have taken the lock and saved
since) must not overwrite that newer data. ``LEASE_WRITE_RELEASE_SCRIPT`` and
``LEASE_TOUCH_RELEASE_SCRIPT`` save only while the lock is still the holder's,
and answer -1 otherwise, which the store raises as ``StoreError``. No update is
lost either way.
"""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Any

__all__ = ["LEASE", "LEASE_TOUCH_RELEASE_SCRIPT", "LEASE_WRITE_RELEASE_SCRIPT", "RENEW_SCRIPT", "Leases", "lapsed_save"]

#: Seconds a lock lives without renewal: a vanished holder's user waits at most this.
LEASE = 5.0

RENEW_SCRIPT = (
    'if redis.call("get",KEYS[1]) == ARGV[1] then return redis.call("pexpire",KEYS[1],ARGV[2]) else return 0 end'
)
# KEYS[1] = data key, KEYS[2] = lock key; ARGV = token, ttl[, data].
LEASE_WRITE_RELEASE_SCRIPT = (
    'if redis.call("get",KEYS[2]) ~= ARGV[1] then return -1 end'
    ' redis.call("setex",KEYS[1],ARGV[2],ARGV[3]) return redis.call("del",KEYS[2])'
)
LEASE_TOUCH_RELEASE_SCRIPT = (
    'if redis.call("get",KEYS[2]) ~= ARGV[1] then return -1 end'
    ' redis.call("expire",KEYS[1],ARGV[2]) return redis.call("del",KEYS[2])'
)


def lapsed_save(where: str, sid: str) -> str:
    """The error of a save refused because its lease lapsed (the script answered -1)."""
    return (f"redis {where}: session {sid} not saved: its lock lapsed and may be someone else's now "
            "(the request ran past its lease unrenewed)")


class Leases:
    """The locks this process holds, renewed by one daemon thread until released or lock_expire.

    Args:
        lease: Seconds a lock lives between two renewals.

    Error handling: a failed renewal (Redis unreachable) is tried again at the
    next round; a renewal answered 0 (the lock is someone else's now) drops it.
    """

    def __init__(self, lease: float = LEASE) -> None:
        self.lease = lease
        self._held: dict[tuple[int, str, bytes], tuple[Any, Any, float]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pid = 0

    def hold(self, server: Any, lock_key: str, token: bytes, expire: float) -> None:
        """Renew ``lock_key`` (held with ``token``) until ``release`` or ``expire`` seconds from now."""
        with self._lock:
            self._held[(id(server), lock_key, token)] = (server, server.renew, time.monotonic() + expire)
            if self._pid != os.getpid():  # none yet, or the parent's (threads do not survive a fork)
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="session-lock-leases", daemon=True).start()

    def release(self, server: Any, lock_key: str, token: bytes) -> bool:
        """No more renewals; True when the lock was a lease (its save must check it still holds it)."""
        with self._lock:
            return self._held.pop((id(server), lock_key, token), None) is not None

    def _lapse(self, key: tuple[int, str, bytes]) -> None:
        # Kept until released, so the save still knows it was a lease, but no
        # longer renewed (until == -inf).
        with self._lock:
            if key in self._held:
                server, renew, _ = self._held[key]
                self._held[key] = (server, renew, -math.inf)

    def _run(self) -> None:
        pid = os.getpid()
        while self._pid == pid:
            self._wake.wait(self.lease / 3)
            now = time.monotonic()
            with self._lock:
                due = list(self._held.items())
            for key, (_, renew, until) in due:
                if now >= until:
                    self._lapse(key)  # lock_expire reached (or lost): let it lapse
                    continue
                try:
                    renewed = renew(keys=[key[1]], args=[key[2], int(self.lease * 1000)])
                except Exception:
                    continue  # Redis away for now: try again next round
                if not renewed:
                    self._lapse(key)
