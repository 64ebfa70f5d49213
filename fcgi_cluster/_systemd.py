"""systemd integration without a dependency: readiness notification and socket activation.

Readiness (``Type=notify`` / ``Type=notify-reload``): ``notify("READY=1")``
sends one datagram to the unix socket named by ``$NOTIFY_SOCKET`` (a path, or
``@name`` in the abstract namespace). Without the variable it does nothing,
so the servers call it unconditionally. The messages the servers send:

- ``READY=1`` and ``STATUS=...`` once they accept connections, and again after
  a reload;
- ``RELOADING=1`` with ``MONOTONIC_USEC=<CLOCK_MONOTONIC in µs>`` when a
  reload begins (what systemd >= 253 expects of ``Type=notify-reload``);
- ``STOPPING=1`` when a stop begins.

Socket activation: ``listen_sockets()`` takes the descriptors systemd passed
(``LISTEN_FDS`` from fd 3 on, for this process only: ``LISTEN_PID``; their
names from ``LISTEN_FDNAMES``) and unsets the variables, so that a child does
not take them too. ``take_listener(sockets, text)`` picks the one for a
configured address: by name (``FileDescriptorName=`` equal to the pool's
name, or to a unix socket path) or else by the address it is bound to.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
import typing
from dataclasses import dataclass

from ._address import parse_address

__all__ = ["notify", "reloading", "listen_sockets", "take_listener", "close_unused", "is_inherited", "Inherited",
           "hand_on"]

log = logging.getLogger("fcgi_cluster.systemd")

#: The first descriptor systemd passes (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3

#: Descriptors taken from systemd in this process: their unix socket paths
#: belong to systemd and are not unlinked when closed.
_inherited: set[int] = set()


def notify(*fields: str) -> bool:
    """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) to ``$NOTIFY_SOCKET``; True if sent.

    Never raises: a notification socket that is gone is logged once at debug level.
    """
    target = os.environ.get("NOTIFY_SOCKET")
    if not target or not fields:
        return False
    if target.startswith("@"):
        target = "\0" + target[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(fields).encode("utf-8", "replace"), target)
    except OSError as exc:
        log.debug("cannot notify systemd at %r: %s", target, exc)
        return False
    return True


def reloading() -> bool:
    """``RELOADING=1`` with the ``MONOTONIC_USEC`` that ``Type=notify-reload`` wants."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")


@dataclass(eq=False)
class Inherited:
    """A listening socket systemd passed, with its ``LISTEN_FDNAMES`` name."""

    sock: socket.socket
    name: str


def listen_sockets() -> list[Inherited]:
    """The listening sockets systemd passed to this process (none: an empty list).

    The ``LISTEN_*`` variables are removed from the environment either way.
    """
    pid = os.environ.pop("LISTEN_PID", "")
    count = os.environ.pop("LISTEN_FDS", "")
    names = os.environ.pop("LISTEN_FDNAMES", "")
    if not count or pid != str(os.getpid()):
        return []
    try:
        n = int(count)
    except ValueError:
        log.warning("LISTEN_FDS=%r is not a number; no socket taken from systemd", count)
        return []
    labels = names.split(":") if names else []
    result = []
    for i in range(n):
        fd = LISTEN_FDS_START + i
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            log.warning("descriptor %d from systemd is not a socket: %s", fd, exc)
            continue
        _inherited.add(fd)
        result.append(Inherited(sock, labels[i] if i < len(labels) else ""))
    return result


def is_inherited(sock: socket.socket) -> bool:
    """True for a socket taken from systemd (its unix path is not ours to unlink)."""
    return sock.fileno() in _inherited


def _bound_to(sock: socket.socket, text: str) -> bool:
    address = parse_address(text)
    try:
        name = sock.getsockname()
    except OSError:
        return False
    if address.path is not None:
        if sock.family != socket.AF_UNIX or not isinstance(name, str):
            return False
        return os.path.abspath(name) == os.path.abspath(address.path)
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or name[1] != address.port:
        return False
    host = address.host or "0.0.0.0"
    try:
        wanted = socket.inet_pton(sock.family, host)
        actual = socket.inet_pton(sock.family, name[0])
    except OSError:
        return False
    return wanted == actual


def take_listener(sockets: list[Inherited], text: str, names: tuple[str, ...] = ()) -> socket.socket | None:
    """Remove and return the socket of ``sockets`` for the address ``text`` (None: not passed).

    A socket whose ``FileDescriptorName=`` is one of ``names`` or ``text``
    wins (systemd names cannot hold ":", so a TCP address is matched by a
    pool's name, or by what it is bound to); else one bound to that address.
    """
    wanted = {*names, text}
    for match in (lambda item: item.name in wanted, lambda item: _bound_to(item.sock, text)):
        for item in sockets:
            if match(item):
                sockets.remove(item)
                return item.sock
    return None


def close_unused(sockets: list[Inherited], what: str) -> None:
    """Close the sockets no configured address wanted, saying so."""
    for item in sockets:
        try:
            where = str(item.sock.getsockname())
        except OSError:
            where = "?"
        log.warning("%s: socket %s from systemd (name %r) matches no listen address; closed",
                    what, where, item.name)
        item.sock.close()
    sockets.clear()


def hand_on(items: list[Inherited]) -> tuple[tuple[int, ...], typing.Callable[[], None]]:
    """How a process started by ``subprocess.Popen`` gets ``items`` as systemd's own: ``(pass_fds, preexec_fn)``.

    In the child, before its exec, the sockets are moved to descriptors 3, 4,
    ... and ``LISTEN_FDS`` / ``LISTEN_PID`` (the child's pid) /
    ``LISTEN_FDNAMES`` set, as systemd does (``NOTIFY_SOCKET`` is removed: the
    parent speaks to systemd). Start it with ``env=None`` (the child's
    environment is the one this sets) while the descriptors 3 and up that
    systemd gave this process are still open, so the child's own pipes lie
    above them.
    """
    fds = [item.sock.fileno() for item in items]
    names = ":".join(item.name for item in items)
    targets = tuple(range(LISTEN_FDS_START, LISTEN_FDS_START + len(fds)))

    def in_child() -> None:
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 256) for fd in fds]  # out of the way of the moves
        for target, fd in zip(targets, high):
            os.dup2(fd, target)
            os.close(fd)
        os.environ["LISTEN_FDS"] = str(len(fds))
        os.environ["LISTEN_PID"] = str(os.getpid())
        if names.strip(":"):
            os.environ["LISTEN_FDNAMES"] = names
        os.environ.pop("NOTIFY_SOCKET", None)

    return targets, in_child
