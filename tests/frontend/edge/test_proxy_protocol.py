"""The PROXY header parser: v1 and v2, fed whole and byte by byte, and its bad inputs."""

from __future__ import annotations

import socket
import struct

import pytest

from fcgi_cluster.frontend.edge._proxy_protocol import (
    NEED_DATA,
    V1_MAX,
    V2_SIGNATURE,
    ProxyHeaderParser,
    ProxyProtocolError,
)


def v2(command: int, family: int, body: bytes, transport: int = 1) -> bytes:
    return V2_SIGNATURE + bytes([0x20 | command, (family << 4) | transport]) + struct.pack("!H", len(body)) + body


def parse(data: bytes, step: int | None = None):
    """Feed ``data`` whole or ``step`` bytes at a time; returns (header, bytes not taken)."""
    parser = ProxyHeaderParser()
    step = step or len(data)
    position = 0
    while position < len(data):
        piece = data[position : position + step]
        taken = parser.receive_data(piece)
        position += taken
        event = parser.next_event()
        if event is not NEED_DATA:
            return event, data[position:]
        assert taken == len(piece)
    return parser.next_event(), b""


V1_TCP4 = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\n"
V4_BODY = socket.inet_pton(socket.AF_INET, "192.0.2.7") + socket.inet_pton(socket.AF_INET, "198.51.100.1") + struct.pack("!HH", 56324, 443)
V6_BODY = socket.inet_pton(socket.AF_INET6, "2001:db8::7") + socket.inet_pton(socket.AF_INET6, "2001:db8::1") + struct.pack("!HH", 1234, 80)


@pytest.mark.parametrize("step", [None, 1, 3, 7])
def test_v1_tcp4_leaves_the_request_after_it(step) -> None:
    header, rest = parse(V1_TCP4 + b"GET / HTTP/1.1\r\n\r\n", step)
    assert (header.version, header.local, header.source, header.source_port) == (1, False, b"192.0.2.7", b"56324")
    assert (header.destination, header.destination_port) == (b"198.51.100.1", b"443")
    assert header.length == len(V1_TCP4)
    assert rest == b"GET / HTTP/1.1\r\n\r\n"


def test_v1_tcp6_and_unknown() -> None:
    header, _ = parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 1234 80\r\n")
    assert (header.source, header.source_port) == (b"2001:db8::7", b"1234")
    header, rest = parse(b"PROXY UNKNOWN ffff::1 whatever\r\nX")
    assert header.local and header.source is None and rest == b"X"


@pytest.mark.parametrize("step", [None, 1, 5, 16])
@pytest.mark.parametrize("family,body,source,port", [(1, V4_BODY, b"192.0.2.7", b"56324"), (2, V6_BODY, b"2001:db8::7", b"1234")])
def test_v2_proxy_with_tlvs_kept_and_skipped(step, family, body, source, port) -> None:
    tlvs = b"\x02\x00\x0bexample.com" + b"\x04\x00\x00"  # AUTHORITY, NOOP
    raw = v2(1, family, body + tlvs)
    header, rest = parse(raw + b"\x16\x03\x01", step)  # a TLS ClientHello follows
    assert (header.version, header.local, header.source, header.source_port) == (2, False, source, port)
    assert header.length == len(raw) and rest == b"\x16\x03\x01"
    assert (header.authority, header.ssl, header.ssl_version) == (b"example.com", False, None)


def ssl_tlv(client: int, subs: bytes = b"") -> bytes:
    value = bytes([client]) + b"\0\0\0\0" + subs  # client bits, verify result, sub-TLVs
    return b"\x20" + struct.pack("!H", len(value)) + value


def test_v2_ssl_tlv_says_the_client_spoke_tls() -> None:
    subs = b"\x21\x00\x07TLSv1.3" + b"\x22\x00\x04user"  # VERSION, CN (skipped)
    header, _ = parse(v2(1, 1, V4_BODY + b"\x01\x00\x02h2" + ssl_tlv(0x01 | 0x02, subs) + b"\x05\x00\x01u"), 4)
    assert (header.ssl, header.ssl_version, header.authority, header.source) == (True, b"TLSv1.3", None, b"192.0.2.7")
    # The TLV there, the client bit not set: a plain client.
    header, _ = parse(v2(1, 1, V4_BODY + ssl_tlv(0x00)))
    assert header.ssl is False
    # On a unix socket too; LOCAL skips them all.
    unix = b"/a".ljust(108, b"\0") * 2
    assert parse(v2(1, 3, unix + ssl_tlv(0x01)))[0].ssl is True
    assert parse(v2(0, 1, V4_BODY + ssl_tlv(0x01)))[0].ssl is False


@pytest.mark.parametrize("tlvs", [
    b"\x02\x00\x0cexample.com",  # length one past the end
    b"\x02\x00",  # too few bytes for a TLV
    b"\x04\x00\x00\x04",  # a NOOP, then one stray byte
    b"\x20\x00\x03\x01\x00\x00",  # SSL shorter than its 5 fixed bytes
    b"\x20\x00\x08\x01\x00\x00\x00\x00\x21\x00\x09",  # a sub-TLV past the SSL TLV
    b"\x05\xff\xff",  # 65535 bytes claimed, none there
])
def test_malformed_tlvs_are_errors(tlvs) -> None:
    with pytest.raises(ProxyProtocolError, match="TLV"):
        parse(v2(1, 1, V4_BODY + tlvs))


def test_v2_local_unspec_and_unix() -> None:
    header, _ = parse(v2(0, 1, V4_BODY))
    assert header.local and header.source is None
    header, _ = parse(v2(1, 0, b""))
    assert header.local
    header, _ = parse(v2(1, 3, b"/run/a.sock".ljust(108, b"\0") + b"/run/b.sock".ljust(108, b"\0")))
    assert (header.local, header.source, header.source_port) == (False, b"unix:", b"0")


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\n\r\n",  # a client that does not speak it
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
        b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
        b"PROXY TCP4 1.2.3.4\n5.6.7.8 1 2\r\n",
        b"PROXY " + b"1" * V1_MAX + b"\r\n",  # longer than the spec's 107 bytes
        v2(1, 1, V4_BODY[:5]),  # addresses cut short
        v2(2, 1, V4_BODY),  # unknown command
        v2(1, 1, V4_BODY, transport=2),  # DGRAM
        v2(1, 5, V4_BODY),  # unknown family
        V2_SIGNATURE[:6] + b"XXXXXX" + b"\x21\x11\x00\x0c" + V4_BODY,
        b"\r\n\r\n\x00\r\nQUIT\n\x11\x11\x00\x0c" + V4_BODY,  # version 1 in a v2 header
    ],
)
def test_bad_headers_are_errors(raw) -> None:
    with pytest.raises(ProxyProtocolError):
        parse(raw)


def test_an_overlong_line_fails_without_taking_more_than_the_limit() -> None:
    parser = ProxyHeaderParser()
    taken = parser.receive_data(b"PROXY " + b"x" * 500)
    assert taken <= V1_MAX
    with pytest.raises(ProxyProtocolError):
        parser.next_event()


def test_eof_before_the_end_is_an_error() -> None:
    parser = ProxyHeaderParser()
    parser.receive_data(b"PROXY TCP4 1.2")
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"")
    with pytest.raises(ProxyProtocolError):
        parser.next_event()
