"""The access log, in nginx's ``combined`` format.

    127.0.0.1 - - [25/Nov/2026:10:00:00 +0000] "GET /hello HTTP/1.1" 200 13 "-" "curl/7.88.1"

One line per request, written with a single ``os.write`` so lines from
several front-end processes sharing one file (opened with O_APPEND) never
interleave. The timestamp text is rebuilt at most once a second.
"""

from __future__ import annotations

import os
import sys
import time

__all__ = ["AccessLog"]

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
        try:
            os.write(self._fd, line)
        except OSError:
            pass  # a full disk or closed stdout must not fail the request

    def close(self) -> None:
        if self._owned:
            os.close(self._fd)
            self._owned = False
