"""Socket addresses as users write them: ``host:port``, ``[v6]:port``, a unix path."""

from __future__ import annotations

import socket
from dataclasses import dataclass

__all__ = ["Address", "bound_address", "parse_address"]


@dataclass(frozen=True, slots=True)
class Address:
    """Where to listen or connect: a TCP host and port, or a unix socket path."""

    host: str | None = None
    port: int | None = None
    path: str | None = None

    @property
    def is_unix(self) -> bool:
        return self.path is not None

    @property
    def family(self) -> int:
        if self.path is not None:
            return socket.AF_UNIX
        return socket.AF_INET6 if ":" in (self.host or "") else socket.AF_INET

    def __str__(self) -> str:
        if self.path is not None:
            return self.path
        if ":" in (self.host or ""):
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """Parse ``host:port``, ``[v6addr]:port``, ``port``, ``unix:/path`` or ``/path``.

    A bare port means 127.0.0.1, as php-fpm's ``listen = 9000`` does.

    Raises:
        ValueError: the text is none of those forms; the message says why.
    """
    text = text.strip()
    if not text:
        raise ValueError("empty address")
    if text.startswith("unix:"):
        text = text[5:]
        if not text:
            raise ValueError("unix: address without a path")
        return Address(path=text)
    if text.startswith(("/", "./", "../")):
        return Address(path=text)
    if text.isdigit():
        return Address(host="127.0.0.1", port=_port(text, text))
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep or not host:
            raise ValueError(f"{text!r}: expected [ipv6-address]:port")
        try:
            socket.inet_pton(socket.AF_INET6, host)
        except OSError:
            raise ValueError(f"{text!r}: {host!r} is not an IPv6 address") from None
        return Address(host=host, port=_port(port, text))
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r}: expected host:port, [ipv6]:port or a unix socket path")
    if ":" in host:
        raise ValueError(f"{text!r}: write IPv6 addresses in brackets, as [{host}]:{port}")
    return Address(host=host, port=_port(port, text))


def _port(port: str, text: str) -> int:
    # Port 0 is allowed: a listener then takes any free port and reports it.
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r}: port must be a number from 0 to 65535")
    return int(port)


def bound_address(sock: socket.socket) -> str:
    """The address a listening socket is bound to, as users write it."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return name if isinstance(name, str) else name.decode()
    if sock.family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    return f"{name[0]}:{name[1]}"
