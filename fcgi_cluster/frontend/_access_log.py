"""The access log, in nginx's ``combined`` format.

    127.0.0.1 - - [25/Nov/2026:10:00:00 +0000] "GET /hello HTTP/1.1" 200 13 "-" "curl/7.88.1"

Whole lines only, each ``os.write`` a run of them, so lines from several
front-end processes sharing one file (opened with O_APPEND) never interleave.
While ``run`` runs, the lines of one scheduling round (every request that
ended on one wake-up of the event loop) go out in one write, in the round
after: a line is on disk within a loop turn of its request's end, and a busy
process makes one system call per round rather than one per request. The
timestamp text is rebuilt at most once a second.
"""

from __future__ import annotations

import os
import sys
import time

import trio

__all__ = ["AccessLog"]

#: Lines held at most before they are written, whatever the round.
_BATCH_LINES = 128

#: Bytes of whole lines in one write at most: what a pipe (stdout under a
#: supervisor, the journal) writes atomically, so processes sharing it never
#: split each other's lines.
_ATOMIC_WRITE = 4096

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _quote(value: bytes) -> bytes:
    # A client chooses these bytes: escape what would break the line format,
    # as nginx does with \xHH.
    if not value:
        return b"-"
    if all(0x20 <= b < 0x7F and b not in (0x22, 0x5C) for b in value):
        return value
    return b"".join(bytes([b]) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else b"\\x%02X" % b for b in value)


class AccessLog:
    """Writes one combined-format line per request to a file descriptor."""

    def __init__(self, fd: int, *, owned: bool) -> None:
        self._fd = fd
        self._owned = owned
        self._second = -1
        self._stamp = b""
        self._pending: list[bytes] = []
        self._wake: trio.Event | None = None  # set while ``run`` batches
        self._scope: trio.CancelScope | None = None
        self._closed = False

    @classmethod
    def open(cls, target: str | bool | None) -> AccessLog | None:
        """The log for a config value: "-" (stdout), a path, or False/None/"off" (no log).

        Raises:
            OSError: the file cannot be opened for appending.
        """
        if target in (False, None, "", "off"):
            return None
        if target == "-":
            return cls(sys.stdout.fileno(), owned=False)
        fd = os.open(str(target), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        return cls(fd, owned=True)

    def _timestamp(self, now: float) -> bytes:
        second = int(now)
        if second != self._second:
            t = time.localtime(second)
            offset = t.tm_gmtoff or 0
            sign = "+" if offset >= 0 else "-"
            offset = abs(offset) // 60
            self._stamp = (
                f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} "
                f"{sign}{offset // 60:02d}{offset % 60:02d}"
            ).encode()
            self._second = second
        return self._stamp

    def write(self, remote_addr: bytes, head: object, status: int, body_bytes: int, started: float) -> None:
        """Log one finished request.

        Args:
            remote_addr: the client's address.
            head: the request's ``RequestHead``.
            status: the status sent.
            body_bytes: body bytes sent (nginx's ``$body_bytes_sent``).
            started: when the request began (time.time()), for the timestamp.
        """
        referer = agent = b""
        for name, value in head.headers:  # type: ignore[attr-defined]
            if name == b"referer":
                referer = value
            elif name == b"user-agent":
                agent = value
        line = b'%s - - [%s] "%s %s HTTP/%s" %d %d "%s" "%s"\n' % (
            remote_addr, self._timestamp(started), _quote(head.method), _quote(head.target),  # type: ignore[attr-defined]
            head.http_version, status, body_bytes, _quote(referer), _quote(agent),  # type: ignore[attr-defined]
        )
        wake = self._wake
        if wake is None:
            self._write(line)
            return
        pending = self._pending
        pending.append(line)
        if len(pending) == 1:
            wake.set()
        elif len(pending) >= _BATCH_LINES:
            self.flush()

    def _write(self, data: bytes) -> None:
        try:
            os.write(self._fd, data)
        except OSError:
            pass  # a full disk or closed stdout must not fail the request

    def flush(self) -> None:
        """Write the lines held."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        chunk: list[bytes] = []
        size = 0
        for line in pending:
            if size + len(line) > _ATOMIC_WRITE and chunk:
                self._write(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        self._write(b"".join(chunk))

    async def run(self) -> None:
        """Batch the lines of each scheduling round until ``close`` (or cancelled)."""
        if self._closed:
            return
        with trio.CancelScope() as self._scope:
            try:
                while True:
                    self._wake = wake = trio.Event()
                    if self._pending:
                        wake.set()
                    await wake.wait()
                    # One more turn: the requests ending in this round log first.
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    self.flush()
            finally:
                self._wake = None
                self.flush()

    def close(self) -> None:
        self._closed = True
        if self._scope is not None:
            self._scope.cancel()
        self._wake = None
        self.flush()
        if self._owned:
            os.close(self._fd)
            self._owned = False
