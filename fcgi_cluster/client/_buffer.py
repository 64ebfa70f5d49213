"""What a connection holds of one answer for a consumer slower than the worker.

FastCGI has no flow control: a connection's reader either takes every record
the worker sends or stops reading the socket, and stopping stalls every
request multiplexed on it. So the reader never stops for one consumer. Each
request's STDOUT goes to memory up to ``Buffering.memory`` bytes, then to an
unlinked temporary file up to ``Buffering.max_file`` bytes (nginx's
``fastcgi_buffers``, ``fastcgi_temp_path`` and ``fastcgi_max_temp_file_size``),
and the consumer reads it back in order at its own pace. An answer that
outgrows both is aborted alone (``ResponseOverflow``).

``Buffering.wait`` is the other answer, for a connection that carries one
request at a time (a worker that does not multiplex): there the reader may
wait for its one consumer, since no other request shares the connection, and
the worker is slowed down instead of the answer being cut.
"""

from __future__ import annotations

import errno
import os
import tempfile
from dataclasses import dataclass

__all__ = ["Buffering", "MemoryPool", "SpillFile", "DEFAULT_BUFFERING", "SPILL_READ"]

KiB = 1024

#: Bytes read back from a temporary file at a time: a few socket writes' worth.
SPILL_READ = 256 * KiB
#: A drained file up to this size is written over from its start, its pages
#: kept; a larger one is truncated, its disk given back.
SPILL_KEEP = 1024 * KiB


class MemoryPool:
    """Memory that answers may borrow past their own ``Buffering.memory`` before they use a file.

    Shared by every request that names it (a front-end process has one): an
    answer whose client is only a little behind (a fast client of large
    answers on a busy machine) stays in memory, and the total memory held
    stays bounded whatever the number of clients. A request borrows at most
    ``per_request`` and gives back as its consumer takes.

    Attributes:
        limit: bytes lent in all.
        per_request: bytes one request may borrow.
        used: bytes lent now.
    """

    __slots__ = ("limit", "per_request", "used")

    def __init__(self, limit: int, per_request: int) -> None:
        self.limit = limit
        self.per_request = per_request
        self.used = 0


@dataclass(frozen=True, slots=True)
class Buffering:
    """How much of one answer a connection holds for its consumer, and where.

    Attributes:
        memory: bytes of an answer held in memory before the rest goes to a
            temporary file (one record is always taken, however large). nginx
            holds 64 KiB (``fastcgi_buffers 8 8k``); 128 KiB keeps answers of
            that size off the disk, and 100 slow consumers at 12.5 MiB.
        max_file: bytes the temporary file of one answer may grow to; past it
            the request is aborted (``ResponseOverflow``). 0: no file, the
            memory is all. nginx's ``fastcgi_max_temp_file_size`` default.
        temp_path: directory of the temporary files; None for
            ``tempfile.gettempdir()`` ($TMPDIR, else /tmp).
        wait: when the memory is full, the reader waits for the consumer
            instead of spilling or aborting. Only for a connection that
            carries this request alone: on a shared one it stalls the others.
        pool: memory to borrow past ``memory`` before the file; None: none.
    """

    memory: int = 128 * KiB
    max_file: int = 1024 * 1024 * KiB
    temp_path: str | None = None
    wait: bool = False
    pool: MemoryPool | None = None


#: What a request gets unless it asks otherwise.
DEFAULT_BUFFERING = Buffering()


class SpillFile:
    """A temporary file read in the order it was written: the part of an answer past its memory.

    The file has no name from the start (O_TMPFILE, else unlinked at once), so
    it is gone when it is closed or its process dies, whatever happens. Once
    everything written has been read, the next write starts again at its
    beginning (over pages already there: cheaper than new ones), and a file
    past ``SPILL_KEEP`` is truncated, so disk is given back while the answer
    goes on.

    Disk I/O here is synchronous, as nginx's (without ``aio``): writes and
    reads of a file just written hit the page cache.

    Raises (every method): OSError from the file system (ENOSPC, EIO).
    """

    __slots__ = ("_fd", "_read", "_end")

    def __init__(self, directory: str | None = None) -> None:
        directory = directory or tempfile.gettempdir()
        try:
            self._fd = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except (AttributeError, OSError):
            # No O_TMPFILE here (not Linux, or a file system without it).
            fd, path = tempfile.mkstemp(prefix="fcgi-cluster-answer-", dir=directory)
            os.unlink(path)
            self._fd = fd
        self._read = 0  # offset read up to
        self._end = 0  # offset written up to: the file's size

    @property
    def pending(self) -> int:
        """Bytes written and not read yet."""
        return self._end - self._read

    @property
    def size(self) -> int:
        """Bytes the file holds on disk (read ones included, until it is emptied)."""
        return self._end

    def write(self, data: bytes) -> None:
        """Append ``data``."""
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, self._end)
            self._end += written
            view = view[written:]

    def read(self, limit: int = SPILL_READ) -> bytes:
        """Up to ``limit`` of the oldest bytes not read yet (b"" when none are)."""
        size = min(limit, self._end - self._read)
        if size <= 0:
            return b""
        data = os.pread(self._fd, size, self._read)
        if not data:  # shortened behind our back
            raise OSError(errno.EIO, "temporary answer file shorter than what was written to it")
        self._read += len(data)
        if self._read == self._end:
            if self._end > SPILL_KEEP:
                os.ftruncate(self._fd, 0)
            self._read = self._end = 0
        return data

    def close(self) -> None:
        """Close the file (its disk space is freed); further calls do nothing."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
