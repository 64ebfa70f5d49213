"""The worker's per-request log files: the access log and the slow log, as php-fpm writes them.

Access log, one line per request: php-fpm's default ``access.format``
(``%R - %u %t "%m %r" %s``) plus the duration in milliseconds (``%{mili}d``)::

    10.0.0.7 - - 25/Nov/2026:06:17:15 +0000 "GET /slow?a=1" 200 1190.141

REMOTE_ADDR, REMOTE_USER (``-`` when none), the time the request started, the
method and REQUEST_URI (query string included: php-fpm's ``%r`` leaves it out,
but a log without it rarely answers the question asked of it), the status
(``-`` when no response was sent: the request was aborted), the duration.

Slow log, one entry per request past ``request_slowlog_timeout``, laid out as
php-fpm's, with the Python stack innermost frame first::

    <blank line>
    [25-Nov-2026 06:17:16]  [pool www] pid 516
    script_filename = /srv/app.py
    request = GET /slow?a=1
    [0x00007f4282a15130] inner_sleep() /srv/app.py:2
    [0x00007f4282a150c0] outer() /srv/app.py:3

Both are opened once (O_APPEND, so processes sharing a file never interleave a
line or an entry: each is one ``os.write``) and ``reopen()``-ed after log
rotation; ``reopen_logs()`` reopens every such file of the process (SIGUSR1).
A failed write (full disk) is dropped, never failing the request.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import weakref
from types import FrameType
from typing import Iterable

__all__ = ["AccessLog", "SlowLog", "reopen_logs"]

log = logging.getLogger("fcgi_cluster.worker")

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# Every log file open in this process, for reopen_logs().
_open_files: weakref.WeakSet[_LogFile] = weakref.WeakSet()


def reopen_logs() -> None:
    """Reopen every access and slow log of this process (after rotation; php-fpm's SIGUSR1)."""
    for f in list(_open_files):
        f.reopen()


class _LogFile:
    """One append-only file, written a whole record at a time."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = self._open()
        _open_files.add(self)

    def _open(self) -> int:
        if self.path == "-":
            return os.dup(sys.stderr.fileno())
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def write_record(self, data: bytes) -> None:
        try:
            os.write(self._fd, data)
        except OSError:
            pass  # a full disk must not fail the request

    def reopen(self) -> None:
        """Open the path again (the old file was moved away by log rotation).

        Error handling: if the path cannot be opened, the old file is kept and
        the failure logged.
        """
        try:
            fd = self._open()
        except OSError as exc:
            log.error("cannot reopen %s: %s", self.path, exc.strerror or exc)
            return
        old, self._fd = self._fd, fd
        os.close(old)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        _open_files.discard(self)


class AccessLog(_LogFile):
    """One line per request: php-fpm's default format plus the duration in ms."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self._second = -1
        self._stamp = ""

    def _timestamp(self, epoch: float) -> str:
        second = int(epoch)
        if second != self._second:  # rebuilt at most once a second
            t = time.localtime(second)
            offset = (t.tm_gmtoff or 0) // 60
            sign = "+" if offset >= 0 else "-"
            offset = abs(offset)
            self._stamp = (
                f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} "
                f"{sign}{offset // 60:02d}{offset % 60:02d}"
            )
            self._second = second
        return self._stamp

    def write(self, remote_addr: str, user: str, method: str, uri: str, status: int, started: float, duration: float) -> None:
        """Log one finished request.

        Args:
            remote_addr, user, method, uri: from the request's params (REMOTE_USER may be "").
            status: the status sent, 0 when none was.
            started: when the request began (epoch seconds).
            duration: how long it ran, in seconds.
        """
        line = '%s - %s %s "%s %s" %s %.3f\n' % (
            _clean(remote_addr) or "-", _clean(user) or "-", self._timestamp(started), _clean(method) or "-",
            _clean(uri) or "-", status or "-", duration * 1000.0,
        )
        self.write_record(line.encode("utf-8", "backslashreplace"))


def _clean(value: str) -> str:
    # The web server passes the client's bytes: a line break or quote must not
    # forge a log line or break its quoting.
    if value.isprintable() and '"' not in value and "\\" not in value:
        return value
    return "".join(c if c.isprintable() and c not in '"\\' else c.encode("unicode_escape").decode("ascii")
                   if c != '"' else "\\x22" for c in value)


class SlowLog(_LogFile):
    """Stacks of requests that ran past request_slowlog_timeout."""

    def write(self, pool: str, script: str, method: str, uri: str, frames: Iterable[FrameType], depth: int) -> None:
        """Append one entry.

        Args:
            pool: the pool's name.
            script: SCRIPT_FILENAME (or what stands for it), "" when unknown.
            method, uri: the request.
            frames: the request's frames, innermost first.
            depth: at most this many frames are written.
        """
        now = time.localtime()
        stamp = f"{now.tm_mday:02d}-{_MONTHS[now.tm_mon - 1]}-{now.tm_year} {now.tm_hour:02d}:{now.tm_min:02d}:{now.tm_sec:02d}"
        lines = [
            "",
            f"[{stamp}]  [pool {pool}] pid {os.getpid()}",
            f"script_filename = {_clean(script) or '-'}",
            f"request = {_clean(method)} {_clean(uri)}",
        ]
        for i, frame in enumerate(frames):
            if i >= depth:
                lines.append("... (request_slowlog_trace_depth reached)")
                break
            code = frame.f_code
            lines.append(f"[0x{id(frame):016x}] {code.co_qualname}() {code.co_filename}:{frame.f_lineno}")
        self.write_record(("\n".join(lines) + "\n").encode("utf-8", "backslashreplace"))


# --------------------------------------------------------------------------
# Stacks of running requests
# --------------------------------------------------------------------------

_WORKER_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_THREADING_FILE = threading.__file__


def _ours(frame: FrameType) -> bool:
    """A frame of the worker or the thread machinery around the app, not of the app."""
    filename = frame.f_code.co_filename
    return filename.startswith(_WORKER_DIR) or filename == _THREADING_FILE


def _app_frames(outermost_first: list[FrameType]) -> list[FrameType]:
    """The frames from the app's entry point inward, innermost first.

    The worker's own frames around the app (the thread's bootstrap, the pool,
    the adapter) are dropped from the outer end; frames of the worker called by
    the app (``write()``, a body read) are kept, as they say where it waits.
    """
    start = 0
    while start < len(outermost_first) - 1 and _ours(outermost_first[start]):
        start += 1
    return outermost_first[start:][::-1]


def thread_frames(thread_id: int) -> list[FrameType]:
    """The stack of a running thread, innermost first ([] when it is gone)."""
    frame = sys._current_frames().get(thread_id)
    stack = []
    while frame is not None:
        stack.append(frame)
        frame = frame.f_back
    return _app_frames(stack[::-1])


def task_frames(coro: object) -> list[FrameType]:
    """The stack of a suspended coroutine (a trio task's ``coro``), innermost first."""
    stack = []
    seen = 0
    while coro is not None and seen < 1000:  # bounded: a cycle would be a bug elsewhere
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        stack.append(frame)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        seen += 1
    return _app_frames(stack)
