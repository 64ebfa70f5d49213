"""The process's open-file limit, raised as servers need it.

Each client or upstream connection is a file descriptor, and the usual soft
limit (1,024) is far below what a front-end is configured for. As nginx's
``worker_rlimit_nofile`` and Go's runtime do, a server raises its soft limit
to the hard one at start; only the administrator can raise the hard limit.
"""

from __future__ import annotations

import logging
import resource

__all__ = ["raise_open_file_limit"]

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
