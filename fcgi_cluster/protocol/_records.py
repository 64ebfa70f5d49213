"""Record framing and name-value pairs: the byte-level layer of FastCGI.

Pure functions over bytes. Encoders pad every record to a multiple of 8 bytes
(the spec's advice; peers' parsers are tuned for it) and split streams longer
than one record. Decoders take what the peer sends, padding included, and raise
``RemoteProtocolError`` for anything malformed.
"""

from __future__ import annotations

import struct
from typing import Iterable, Mapping

from ._constants import MAX_CHUNK, MAX_CONTENT_LENGTH, VERSION, RecordType
from ._errors import LocalProtocolError, RemoteProtocolError

#: version, type, requestId, contentLength, paddingLength, reserved
HEADER = struct.Struct("!BBHHBx")
_BEGIN_BODY = struct.Struct("!HB5x")
_END_BODY = struct.Struct("!IB3x")
_UNKNOWN_TYPE_BODY = struct.Struct("!B7x")
_LONG_LENGTH = struct.Struct("!I")
_unpack_long = _LONG_LENGTH.unpack_from

_PADDING = [bytes(n) for n in range(8)]
_pack_header = HEADER.pack


def encode_record(record_type: int, request_id: int, content: bytes = b"") -> bytes:
    """One record: header, content (at most 65535 bytes) and padding to 8 bytes."""
    length = len(content)
    if length > MAX_CONTENT_LENGTH:
        raise LocalProtocolError(f"record content of {length} bytes exceeds 65535")
    padding = -length & 7
    return _pack_header(VERSION, record_type, request_id, length, padding) + content + _PADDING[padding]


def encode_stream(record_type: int, request_id: int, data: bytes) -> bytes:
    """``data`` as one or more records of a stream (no end-of-stream record).

    Returns b"" for empty data: an empty record would end the stream.
    """
    length = len(data)
    if length <= MAX_CHUNK:
        if not length:
            return b""
        padding = -length & 7
        return _pack_header(VERSION, record_type, request_id, length, padding) + data + _PADDING[padding]
    view = memoryview(data)
    parts = []
    for start in range(0, length, MAX_CHUNK):
        chunk = view[start : start + MAX_CHUNK]
        padding = -len(chunk) & 7
        parts.append(_pack_header(VERSION, record_type, request_id, len(chunk), padding))
        parts.append(chunk)
        parts.append(_PADDING[padding])
    return b"".join(parts)


def encode_begin_request(request_id: int, role: int, flags: int) -> bytes:
    if not 0 <= role <= 0xFFFF:
        raise LocalProtocolError(f"role {role} does not fit 16 bits")
    return encode_record(RecordType.BEGIN_REQUEST, request_id, _BEGIN_BODY.pack(role, flags))


def decode_begin_request(content: bytes) -> tuple[int, int]:
    """(role, flags) from a BEGIN_REQUEST body."""
    if len(content) != _BEGIN_BODY.size:
        raise RemoteProtocolError(f"BEGIN_REQUEST body must be 8 bytes, got {len(content)}")
    return _BEGIN_BODY.unpack(content)


def encode_end_request(request_id: int, app_status: int, protocol_status: int) -> bytes:
    if not 0 <= app_status <= 0xFFFFFFFF:
        raise LocalProtocolError(f"app_status {app_status} does not fit 32 bits")
    if not 0 <= protocol_status <= 0xFF:
        raise LocalProtocolError(f"protocol_status {protocol_status} does not fit 8 bits")
    return encode_record(RecordType.END_REQUEST, request_id, _END_BODY.pack(app_status, protocol_status))


def decode_end_request(content: bytes) -> tuple[int, int]:
    """(app_status, protocol_status) from an END_REQUEST body."""
    if len(content) != _END_BODY.size:
        raise RemoteProtocolError(f"END_REQUEST body must be 8 bytes, got {len(content)}")
    return _END_BODY.unpack(content)


def encode_unknown_type(record_type: int) -> bytes:
    return encode_record(RecordType.UNKNOWN_TYPE, 0, _UNKNOWN_TYPE_BODY.pack(record_type))


def decode_unknown_type(content: bytes) -> int:
    if len(content) != _UNKNOWN_TYPE_BODY.size:
        raise RemoteProtocolError(f"UNKNOWN_TYPE body must be 8 bytes, got {len(content)}")
    return content[0]


def _encode_length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    if n > 0x7FFFFFFF:
        raise LocalProtocolError(f"name or value of {n} bytes is too long for FastCGI")
    return _LONG_LENGTH.pack(n | 0x80000000)


#: The two length bytes of a pair whose name and value are both shorter than
#: 128 bytes (nearly every CGI param), by name length then value length.
_SHORT_LENGTHS = [[bytes((n, v)) for v in range(0x80)] for n in range(0x80)]


def encode_pairs(pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Name-value pairs: 1-byte lengths below 128, 4-byte lengths (top bit set) above."""
    parts: list[bytes] = []
    append = parts.append
    for name, value in pairs:
        nlen, vlen = len(name), len(value)
        if nlen < 0x80 and vlen < 0x80:
            append(_SHORT_LENGTHS[nlen][vlen])
        else:
            append(_encode_length(nlen))
            append(_encode_length(vlen))
        append(name)
        append(value)
    return b"".join(parts)


def as_bytes(text: str | bytes) -> bytes:
    """Params given as str are sent as UTF-8 (FastCGI itself carries bytes)."""
    return text if isinstance(text, bytes) else text.encode("utf-8")


def encode_params(params: Mapping[str | bytes, str | bytes]) -> bytes:
    try:
        # Web servers build params as bytes: encode them as they are, and
        # convert only when a str turns up (bytearray += str raises).
        return encode_pairs(params.items())  # type: ignore[arg-type]
    except TypeError:
        return encode_pairs((as_bytes(k), as_bytes(v)) for k, v in params.items())


def _read_length(data: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
    """A pair's name or value length at ``pos`` (1 byte, or 4 with the top bit set), and the position after it."""
    length = data[pos]
    if not length & 0x80:
        return length, pos + 1
    if pos + 4 > end:
        raise RemoteProtocolError(f"name-value pair truncated in a {what} length")
    return _unpack_long(data, pos)[0] & 0x7FFFFFFF, pos + 4


def decode_pairs(data: bytes | bytearray | memoryview) -> dict[bytes, bytes]:
    """Parse a complete block of name-value pairs (a whole PARAMS stream).

    Raises:
        RemoteProtocolError: a length runs past the end of the block.
    """
    data = bytes(data)
    result: dict[bytes, bytes] = {}
    pos = 0
    end = len(data)
    try:
        while pos < end:
            nlen = data[pos]
            vlen = data[pos + 1]  # IndexError: a name length with nothing after it
            if (nlen | vlen) < 0x80:  # two 1-byte lengths: nearly every pair
                pos += 2
            else:
                nlen, pos = _read_length(data, pos, end, "name")
                if pos >= end:
                    raise RemoteProtocolError("name-value pair truncated before its value length")
                vlen, pos = _read_length(data, pos, end, "value")
            mid = pos + nlen
            stop = mid + vlen
            if stop > end:
                raise RemoteProtocolError("name-value pair runs past the end of its stream")
            result[data[pos:mid]] = data[mid:stop]
            pos = stop
    except IndexError:
        raise RemoteProtocolError("name-value pair truncated before its value length") from None
    return result
