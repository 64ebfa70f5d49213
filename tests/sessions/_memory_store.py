"""An in-memory ``SessionStore`` for unit tests of the session layer (not a backend).

It records every call, so tests can assert that an untouched session costs no
store call and that garbage cookies never reach the store; ``down`` makes every
call raise ``StoreError`` like a dead server.
"""

from __future__ import annotations

import secrets
import threading
import time

from fcgi_cluster.sessions import LockTimeout, SessionStore, StoreError


class MemoryStore(SessionStore):
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.ttl: dict[str, int] = {}
        self.locks: dict[str, tuple[bytes, float]] = {}
        self.calls: list[tuple[str, str]] = []
        self.down = False
        self.closed = False
        self._mutex = threading.Lock()

    def _call(self, name: str, sid: str = "") -> None:
        self.calls.append((name, sid))
        if self.down:
            raise StoreError("memory store is down")

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def read(self, sid: str) -> bytes | None:
        self._call("read", sid)
        return self.data.get(sid)

    def write(self, sid: str, data: bytes, ttl: int) -> None:
        self._call("write", sid)
        self.data[sid] = data
        self.ttl[sid] = ttl

    def touch(self, sid: str, ttl: int) -> None:
        self._call("touch", sid)
        if sid in self.data:
            self.ttl[sid] = ttl

    def destroy(self, sid: str) -> None:
        self._call("destroy", sid)
        self.data.pop(sid, None)

    def exists(self, sid: str) -> bool:
        self._call("exists", sid)
        return sid in self.data

    def gc(self, max_lifetime: int) -> int:
        self._call("gc")
        return 0

    def acquire_lock(self, sid: str, *, expire: float, wait: float, retry_interval: float) -> bytes:
        self._call("acquire_lock", sid)
        deadline = time.monotonic() + wait
        token = secrets.token_bytes(8)
        while True:
            with self._mutex:
                held = self.locks.get(sid)
                if held is None or held[1] < time.monotonic():
                    self.locks[sid] = (token, time.monotonic() + expire)
                    return token
            if time.monotonic() >= deadline:
                raise LockTimeout(f"session {sid[:6]}... still locked after {wait:g} s")
            time.sleep(retry_interval)

    def release_lock(self, sid: str, token: bytes) -> None:
        self._call("release_lock", sid)
        with self._mutex:
            if self.locks.get(sid, (None,))[0] == token:
                del self.locks[sid]

    def close(self) -> None:
        self.closed = True
