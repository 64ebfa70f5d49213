"""A request's body (FastCGI STDIN): fed by the connection, read by the app.

The connection's reader task feeds chunks; the app reads them either from a
pool thread (WSGI's blocking ``wsgi.input``) or from a trio task (ASGI's
``receive``). FastCGI has no flow control, so when a request whose app is
reading has ``limit`` bytes buffered, the connection stops reading until the
app catches up.

A request whose app has not started reading (it waits for a free thread)
cannot be waited for: the apps that hold the threads may be waiting for their
own bodies, which are behind it on the same connection. Such a body goes to
an unlinked temporary file past ``limit`` (nginx's client_body_temp_path) and
the connection reads on; the app later reads the memory part, then the file.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections import deque

import trio

from ._threads import waits_for_loop

__all__ = ["RequestBody", "BodyAborted"]

#: One lock for every body in the process. Its critical sections are a few
#: deque operations; a Condition and a Lock made for every request cost more
#: than all of them. A body gets a Condition (on this lock) only when a thread
#: has to wait for it.
_LOCK = threading.Lock()


#: Bytes read from a spool file at a time.
SPOOL_READ = 256 * 1024


def _open_spool() -> int:
    """An unlinked temporary file in $TMPDIR: nothing is left behind, whatever happens."""
    handle = tempfile.TemporaryFile(prefix="fcgi-body-")
    fd = os.dup(handle.fileno())
    handle.close()
    return fd


class BodyAborted(OSError):
    """The web server aborted the request (its client went away)."""


class RequestBody:
    """STDIN of one request, bounded to ``limit`` buffered bytes."""

    __slots__ = (
        "_chunks", "_size", "_ended", "_aborted", "_cond", "_token", "_trio_waiter", "_room",
        "_reading", "_spool", "_spool_read", "_spool_end", "limit",
    )  # fmt: skip

    def __init__(self, limit: int) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._ended = False
        self._aborted = False
        self._cond: threading.Condition | None = None
        self._token = trio.lowlevel.current_trio_token()
        self._trio_waiter: trio.Event | None = None
        self._room: trio.Event | None = None
        # The app has started reading: from now on a full buffer is waited for.
        self._reading = False
        # The file part of a body that overflowed before its app read: an fd
        # and the offsets read up to and written up to.
        self._spool: int | None = None
        self._spool_read = 0
        self._spool_end = 0
        self.limit = limit

    # --- the connection's side (trio) -------------------------------------

    def feed(self, data: bytes) -> None:
        """Append a chunk; b"" marks the end of the body."""
        with _LOCK:
            if self._aborted:
                return
            if not data:
                self._ended = True
            elif self._spool is not None:
                self._spool_write(data)
            elif self._size + len(data) > self.limit and not self._reading:
                self._spool = _open_spool()
                self._spool_write(data)
            else:
                self._chunks.append(data)
                self._size += len(data)
            if self._cond is not None:
                self._cond.notify_all()
        if self._trio_waiter is not None:
            self._trio_waiter.set()

    def _spool_write(self, data: bytes) -> None:
        # Caller holds the lock. Page-cache writes: the reader task does not
        # wait on the disk in practice, and os errors (a full disk) end the
        # connection like any other I/O failure.
        view = memoryview(data)
        while view:
            written = os.pwrite(self._spool, view, self._spool_end)  # type: ignore[arg-type]
            self._spool_end += written
            view = view[written:]

    @property
    def full(self) -> bool:
        """True when the connection must wait for the app to read (only an app that reads can)."""
        return self._size >= self.limit and self._reading and not self._aborted

    @property
    def spooled(self) -> int:
        """Bytes of this body that went to its temporary file."""
        return self._spool_end

    async def wait_for_room(self) -> None:
        """Wait until the app has read enough, the request is over, or nobody reads it for now."""
        while self.full:
            self._room = trio.Event()
            await self._room.wait()

    def abort(self) -> None:
        """The request is over: wake every reader and writer for good."""
        with _LOCK:
            self._aborted = True
            self._chunks.clear()
            self._size = 0
            if self._spool is not None:
                os.close(self._spool)
                self._spool = None
            if self._cond is not None:
                self._cond.notify_all()
        self._release_room()
        if self._trio_waiter is not None:
            self._trio_waiter.set()

    def _release_room(self) -> None:
        room = self._room
        if room is not None:
            self._room = None
            room.set()

    @property
    def _available(self) -> bool:
        # Caller holds the lock.
        return bool(self._chunks) or self._spool_read < self._spool_end

    def _take(self, size: int) -> bytes:
        # Caller holds the lock and has checked _available. The memory part
        # came before the file part: everything fed after the spool opened
        # went to the file.
        if not self._chunks:
            left = self._spool_end - self._spool_read
            chunk = os.pread(self._spool, min(left, size if size >= 0 else left, SPOOL_READ), self._spool_read)  # type: ignore[arg-type]
            self._spool_read += len(chunk)
            return chunk
        chunk = self._chunks.popleft()
        if 0 <= size < len(chunk):
            self._chunks.appendleft(chunk[size:])
            chunk = chunk[:size]
        self._size -= len(chunk)
        return chunk

    # --- the app's side: a trio task (ASGI) ---------------------------------

    async def receive(self, size: int = -1) -> bytes:
        """The next chunk (at most ``size`` bytes if >= 0); b"" at the end."""
        while True:
            with _LOCK:
                self._reading = True
                if self._aborted:
                    raise BodyAborted("request aborted by the web server")
                if self._available:
                    chunk = self._take(size)
                    self._after_read()
                    return chunk
                if self._ended:
                    return b""
                self._trio_waiter = waiter = trio.Event()
            await waiter.wait()
            self._trio_waiter = None

    async def wait_buffered(self) -> bool:
        """Wait until the whole body is here, or ``limit`` bytes of it; True for the whole.

        For apps run on the event loop's thread, which cannot wait for more.
        """
        self._reading = True  # a waiting consumer: a full buffer is its answer
        while not self._ended and not self._aborted and self._size < self.limit:
            self._trio_waiter = waiter = trio.Event()
            await waiter.wait()
            self._trio_waiter = None
        whole = self._ended and not self._spool_end  # a body in a file is read from a thread
        if not whole:
            # Its app goes to a thread, which may be busy with an app whose
            # body comes after this one's: until the app reads, the rest of
            # this body goes to the file and the connection reads on.
            with _LOCK:
                self._reading = False
            self._release_room()
        return whole

    @property
    def buffered_whole(self) -> bool:
        """The whole body is here, in memory (an app on the loop's thread can read it without waiting)."""
        return self._ended and not self._aborted and self._spool is None

    @property
    def at_end(self) -> bool:
        """True when everything was received and read."""
        return self._ended and not self._available

    # --- the app's side: a pool thread (WSGI) -------------------------------

    def read_blocking(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all remaining when negative); b"" at the end.

        Runs in a worker thread; blocks until data, the end, or an abort.
        """
        out = []
        wanted = size
        with _LOCK:
            self._reading = True
            while wanted != 0:
                if self._aborted:
                    raise BodyAborted("request aborted by the web server")
                if self._available:
                    chunk = self._take(wanted)
                    out.append(chunk)
                    if wanted > 0:
                        wanted -= len(chunk)
                    continue
                if self._ended:
                    break
                if out and size > 0:
                    break  # a short read is fine; do not wait with data in hand
                self._wake_room_from_thread()
                self._wait_locked()
            self._wake_room_from_thread()
        return b"".join(out)

    def readline_blocking(self, limit: int = -1) -> bytes:
        """One line (up to ``limit`` bytes) from a worker thread."""
        out = bytearray()
        with _LOCK:
            self._reading = True
            while limit < 0 or len(out) < limit:
                if self._aborted:
                    raise BodyAborted("request aborted by the web server")
                if self._available:
                    if not self._chunks:  # the file part: one read, then the line in it
                        self._chunks.append(self._take(-1))
                        self._size += len(self._chunks[0])
                    chunk = self._chunks[0]
                    stop = chunk.find(b"\n") + 1 or len(chunk)
                    if limit >= 0:
                        stop = min(stop, limit - len(out))
                    out += self._take(stop)
                    if out.endswith(b"\n"):
                        break
                    continue
                if self._ended:
                    break
                self._wake_room_from_thread()
                self._wait_locked()
            self._wake_room_from_thread()
        return bytes(out)

    def _wait_locked(self) -> None:
        # Called with _LOCK held, from an app thread.
        if self._cond is None:
            self._cond = threading.Condition(_LOCK)
        with waits_for_loop:
            self._cond.wait()

    def _after_read(self) -> None:
        if self._room is not None and self._size < self.limit:
            self._release_room()

    def _wake_room_from_thread(self) -> None:
        if self._room is not None and self._size < self.limit:
            try:
                self._token.run_sync_soon(self._release_room)
            except trio.RunFinishedError:
                pass
