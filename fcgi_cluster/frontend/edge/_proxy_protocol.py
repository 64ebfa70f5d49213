"""The PROXY protocol header (HAProxy's spec, versions 1 and 2), sans-IO.

A load balancer that speaks it sends, before anything else on a connection,
who its client is. Rules kept here:

* Version 1 is one text line: ``PROXY TCP4|TCP6 src dst sport dport\\r\\n``
  or ``PROXY UNKNOWN ...\\r\\n`` (the addresses are then the connection's).
  At most 107 bytes with its CRLF (``V1_MAX``): longer is an error, so a
  peer cannot make us hold an endless line.
* Version 2 is binary: the 12-byte signature, version/command, family,
  a 2-byte length, then the addresses and TLVs. Command LOCAL (a health
  check of the balancer's own) and family UNSPEC keep the connection's
  addresses; PROXY with INET / INET6 / UNIX gives them. Of the TLVs that
  follow the addresses, PP2_TYPE_AUTHORITY (the host name the client asked
  for, its TLS SNI) and PP2_TYPE_SSL (whether the client spoke TLS to the
  balancer, and its version) are kept; the others are skipped. A TLV whose
  length runs past the header (or bytes too few for a TLV, or an SSL TLV
  shorter than its 5 fixed bytes, or whose sub-TLVs run past it) is an error.
  At most 16 + 65535 bytes (``V2_MAX``), the format's own bound.
* Anything else (a client that speaks HTTP straight away, garbage, a DGRAM
  transport) is a ``ProxyProtocolError``: the caller closes that connection.

The parser never reads past the header: ``receive_data`` says how many of
the bytes given belong to it, so an I/O layer that peeks at the socket can
consume exactly those and leave the rest (the HTTP request, or a TLS
ClientHello) where it is.
"""

from __future__ import annotations

import ipaddress
import struct
import typing
from dataclasses import dataclass

__all__ = ["NEED_DATA", "ProxyHeader", "ProxyHeaderParser", "ProxyProtocolError", "V1_MAX", "V2_MAX"]

#: The text header's longest form, CRLF included (the spec's 107).
V1_MAX = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: The binary header: 16 fixed bytes and at most 65535 after them.
V2_MAX = 16 + 65535
_V1_PREFIX = b"PROXY "

_FAMILIES = {0x0: None, 0x1: (4, 12), 0x2: (16, 36), 0x3: ("unix", 216)}
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
#: The PP2_TYPE_SSL ``client`` bit saying the client connected over TLS.
PP2_CLIENT_SSL = 0x01


class ProxyProtocolError(ValueError):
    """The peer's PROXY header is malformed (or missing): close its connection."""


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


#: ``ProxyHeaderParser.next_event``: more bytes are needed.
NEED_DATA = _NeedData()


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """What a PROXY header says.

    Attributes:
        version: 1 or 2.
        local: the connection's own addresses stand (v1 UNKNOWN, v2 LOCAL or UNSPEC).
        source: the client's address (text bytes; b"unix:" for a unix socket), or None when ``local``.
        source_port: its port as decimal bytes (b"0" for unix), or None when ``local``.
        destination, destination_port: where the client connected, likewise.
        length: the header's bytes on the wire.
        authority: v2's PP2_TYPE_AUTHORITY (the client's SNI host name), or None.
        ssl: v2's PP2_TYPE_SSL says the client spoke TLS to the balancer.
        ssl_version: its PP2_SUBTYPE_SSL_VERSION (b"TLSv1.3"), or None.
    """

    version: int
    local: bool
    source: bytes | None = None
    source_port: bytes | None = None
    destination: bytes | None = None
    destination_port: bytes | None = None
    length: int = 0
    authority: bytes | None = None
    ssl: bool = False
    ssl_version: bytes | None = None


class ProxyHeaderParser:
    """One connection's PROXY header, read incrementally.

    ``receive_data(data)`` takes bytes and returns how many of them are the
    header's (the rest are not kept); ``next_event()`` returns
    ``NEED_DATA`` or the ``ProxyHeader``, or raises ``ProxyProtocolError``.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._needed: int | None = None  # v2: the whole header's length, once known
        self._error: str | None = None
        self._done: ProxyHeader | None = None

    def receive_data(self, data: bytes) -> int:
        """Take bytes from the connection; returns how many of them belong to the header."""
        if self._done is not None or self._error is not None:
            return 0
        if not data:
            self._error = "the connection closed before its PROXY header ended"
            return 0
        buffer = self._buffer
        if (buffer or data)[:1] == b"P":
            end = (buffer + data).find(b"\r\n", max(len(buffer) - 1, 0))
            take = len(data) if end < 0 else end + 2 - len(buffer)
            take = min(take, V1_MAX - len(buffer))
        else:
            if self._needed is None and len(buffer) + len(data) >= 16:
                self._needed = 16 + struct.unpack_from("!H", (buffer + data)[14:16])[0]
            take = len(data) if self._needed is None else min(len(data), self._needed - len(buffer))
        self._buffer = buffer + data[:take]
        self._check()
        return take

    def next_event(self) -> ProxyHeader | _NeedData:
        """The header once whole; ``NEED_DATA`` before.

        Raises:
            ProxyProtocolError: the bytes are not a PROXY header.
        """
        if self._error is not None:
            raise ProxyProtocolError(self._error)
        if self._done is not None:
            return self._done
        return NEED_DATA

    def _check(self) -> None:
        buffer = self._buffer
        try:
            if buffer[:1] == b"P":
                if not _V1_PREFIX.startswith(buffer[:6]):
                    raise ProxyProtocolError("not a PROXY header")
                if buffer.endswith(b"\r\n"):
                    self._done = _parse_v1(buffer)
                elif len(buffer) >= V1_MAX or b"\n" in buffer or b"\r" in buffer[:-1]:
                    raise ProxyProtocolError(f"PROXY v1 line longer than {V1_MAX} bytes or badly ended")
            else:
                if not V2_SIGNATURE.startswith(buffer[:12]):
                    raise ProxyProtocolError("not a PROXY header")
                if self._needed is not None and len(buffer) == self._needed:
                    self._done = _parse_v2(buffer)
        except ProxyProtocolError as exc:
            self._error = str(exc)


def _v1_address(text: bytes, version: int) -> bytes:
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyProtocolError(f"PROXY v1: bad address {text[:50]!r}") from None
    if address.version != version:
        raise ProxyProtocolError(f"PROXY v1: {text[:50]!r} is not an IPv{version} address")
    return str(address).encode()


def _v1_port(text: bytes) -> bytes:
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[:1] == b"0") or int(text) > 65535:
        raise ProxyProtocolError(f"PROXY v1: bad port {text[:10]!r}")
    return text


def _parse_v1(line: bytes) -> ProxyHeader:
    parts = line[:-2].split(b" ")
    if len(parts) >= 2 and parts[1] == b"UNKNOWN":
        return ProxyHeader(1, True, length=len(line))
    if len(parts) != 6 or parts[1] not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError(f"PROXY v1: malformed line {line[:V1_MAX]!r}")
    version = 4 if parts[1] == b"TCP4" else 6
    return ProxyHeader(
        1, False, _v1_address(parts[2], version), _v1_port(parts[4]),
        _v1_address(parts[3], version), _v1_port(parts[5]), length=len(line),
    )


def _parse_v2(header: bytes) -> ProxyHeader:
    version, command = header[12] >> 4, header[12] & 0xF
    if version != 2:
        raise ProxyProtocolError(f"PROXY v2: unknown version {version}")
    if command not in (0, 1):
        raise ProxyProtocolError(f"PROXY v2: unknown command {command}")
    family, transport = header[13] >> 4, header[13] & 0xF
    if family not in _FAMILIES:
        raise ProxyProtocolError(f"PROXY v2: unknown address family {family}")
    if transport not in (0, 1):
        raise ProxyProtocolError("PROXY v2: not a stream transport")
    shape = _FAMILIES[family]
    if command == 0 or shape is None:
        return ProxyHeader(2, True, length=len(header))  # LOCAL, or UNSPEC: TLVs and all skipped
    body = header[16:]
    size, needed = shape
    if len(body) < needed:
        raise ProxyProtocolError(f"PROXY v2: {len(body)} bytes of addresses, {needed} needed")
    kept: dict[str, typing.Any] = {}
    for kind, value in _tlvs(body, needed):
        if kind == PP2_TYPE_AUTHORITY:
            kept["authority"] = value
        elif kind == PP2_TYPE_SSL:
            if len(value) < 5:
                raise ProxyProtocolError(f"PROXY v2: SSL TLV of {len(value)} bytes, 5 at least")
            kept["ssl"] = bool(value[0] & PP2_CLIENT_SSL)
            for sub, text in _tlvs(value, 5):
                if sub == PP2_SUBTYPE_SSL_VERSION:
                    kept["ssl_version"] = text
    if size == "unix":
        return ProxyHeader(2, False, b"unix:", b"0", b"unix:", b"0", length=len(header), **kept)
    assert isinstance(size, int)
    source = ipaddress.ip_address(body[:size])
    destination = ipaddress.ip_address(body[size : 2 * size])
    sport, dport = struct.unpack_from("!HH", body, 2 * size)
    return ProxyHeader(
        2, False, str(source).encode(), b"%d" % sport, str(destination).encode(), b"%d" % dport, length=len(header),
        **kept,
    )


def _tlvs(data: bytes, at: int) -> typing.Iterator[tuple[int, bytes]]:
    """The (type, value) TLVs of ``data`` from ``at`` to its end; a length past the end is an error."""
    while at < len(data):
        if len(data) - at < 3:
            raise ProxyProtocolError(f"PROXY v2: {len(data) - at} bytes left, too few for a TLV")
        kind, length = data[at], struct.unpack_from("!H", data, at + 1)[0]
        at += 3
        if length > len(data) - at:
            raise ProxyProtocolError(f"PROXY v2: TLV {kind:#04x} of {length} bytes, {len(data) - at} left")
        yield kind, data[at : at + length]
        at += length
