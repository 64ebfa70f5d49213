"""Process settings a server makes at start, and the socket read sizes that suit its allocator.

Each client or upstream connection is a file descriptor, and the usual soft
limit (1,024) is far below what a front-end is configured for. As nginx's
``worker_rlimit_nofile`` and Go's runtime do, a server raises its soft limit
to the hard one at start; only the administrator can raise the hard limit.

glibc's malloc gives each allocation from 128 KiB up (adjusted as it goes)
its own mmap, and returns it at free: the bytes a FastCGI record stream is
joined into, or a large socket read, then cost fresh zeroed pages each time
(measured: a 256 KiB ``os.read`` 3.5x the cost of a 128 KiB one; FastCGI
sockets are read ``READ_SIZE`` at a time, below it, until a large body
streams). The
front-end keeps such buffers on the heap instead (measured on it; the
workers showed no gain and are left with glibc's defaults).
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource

__all__ = ["raise_open_file_limit", "keep_buffers_on_the_heap", "READ_SIZE", "READ_SIZE_LARGE", "next_read_size"]

#: Allocations below this come from the heap, not a mmap of their own
#: (glibc M_MMAP_THRESHOLD): above the joins of a large answer's records.
MMAP_THRESHOLD = 1024 * 1024

#: Bytes asked of a FastCGI socket per read (worker and client). os.read
#: allocates what it is asked for: at 256 KiB, above glibc's default mmap
#: threshold, each read cost an mmap, an mremap, a munmap and page faults,
#: 18 us against 2.5 at 64 KiB (socketpair), paid per request behind a web
#: server that sends one request per connection at a time.
READ_SIZE = 64 * 1024
#: Asked instead after a read that filled ``READ_SIZE``, while a large body
#: or answer streams in: fewer reads, and fewer 64 KiB records split between
#: two (the front-end's CPU per 1 MiB answer: 1.55 ms with 256 KiB reads,
#: 1.96 with 64 KiB ones).
READ_SIZE_LARGE = 256 * 1024


def next_read_size(asked: int, got: int) -> int:
    """The size of the next read, after one of ``asked`` bytes that returned ``got``."""
    return READ_SIZE_LARGE if got == asked else READ_SIZE


#: Free memory at the top of the heap kept, not returned to the kernel
#: (glibc M_TRIM_THRESHOLD): a few large buffers' worth.
TRIM_THRESHOLD = 8 * 1024 * 1024

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_buffers_on_the_heap() -> bool:
    """Set glibc's mmap and trim thresholds for a server; False where that is not possible.

    Left alone when the environment sets them (``MALLOC_MMAP_THRESHOLD_``,
    ``MALLOC_TRIM_THRESHOLD_``) or the C library is not glibc.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # glibc only: other libcs read these numbers differently
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


#: Descriptors a process needs besides its connections: listeners, logs,
#: the event loop's own, files being served.
RESERVED_FILES = 64


def raise_open_file_limit(connections: int = 0, *, log: logging.Logger | None = None) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.

    Args:
        connections: descriptors the configuration may hold open at once;
            when the limit cannot cover them (plus ``RESERVED_FILES``), a
            warning says so on ``log``.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # kept as it was: the warning below still tells
    if log is not None and connections + RESERVED_FILES > soft:
        log.warning(
            "%d connections are allowed but the open-file limit is %d: past about %d, new "
            "connections wait; raise the hard limit (ulimit -Hn, systemd LimitNOFILE)",
            connections, soft, max(soft - RESERVED_FILES, 0),
        )
    return soft
