"""A reference FastCGI codec for the tests, written from the 1.0 specification.

Deliberately independent of ``fcgi_cluster.protocol``: the tests read the core's
output and build its input with these, so a misunderstanding shared by the core
and its own decoder cannot make a round trip pass. Section numbers refer to the
FastCGI 1.0 specification.
"""

from __future__ import annotations

from dataclasses import dataclass

# Record types (spec 8).
BEGIN, ABORT, END, PARAMS, STDIN, STDOUT, STDERR, DATA, GET_VALUES, GET_VALUES_RESULT, UNKNOWN_TYPE = range(1, 12)


@dataclass(frozen=True)
class Rec:
    """One record as found on the wire."""

    type: int
    request_id: int
    content: bytes
    padding: int = 0


def make_record(
    rtype: int, request_id: int, content: bytes = b"", padding: int | None = None, version: int = 1
) -> bytes:
    """Header, content and padding (spec 3.3); padding defaults to aligning on 8 bytes."""
    if padding is None:
        padding = -len(content) % 8
    n = len(content)
    header = bytes([version, rtype, request_id >> 8, request_id & 0xFF, n >> 8, n & 0xFF, padding, 0])
    return header + content + bytes(padding)


def parse_records(data: bytes) -> list[Rec]:
    """Split ``data`` into records, failing on anything truncated or malformed."""
    records = []
    pos = 0
    while pos < len(data):
        header = data[pos : pos + 8]
        assert len(header) == 8, f"truncated header at offset {pos}"
        assert header[0] == 1, "version must be 1"
        assert header[7] == 0, "reserved header byte must be 0"
        content_length = header[4] << 8 | header[5]
        padding_length = header[6]
        body = data[pos + 8 : pos + 8 + content_length + padding_length]
        assert len(body) == content_length + padding_length, f"truncated record at offset {pos}"
        records.append(Rec(header[1], header[2] << 8 | header[3], body[:content_length], padding_length))
        pos += 8 + content_length + padding_length
    return records


def records(data: bytes) -> list[tuple[int, int, bytes]]:
    """(type, request id, content) of each record in ``data``, each checked to be 8-aligned."""
    out = []
    for r in parse_records(data):
        assert (8 + len(r.content) + r.padding) % 8 == 0, "record not aligned on 8 bytes"
        out.append((r.type, r.request_id, r.content))
    return out


def encode_length(n: int, long_form: bool = False) -> bytes:
    """Spec 3.4: one byte below 128, else four bytes with the top bit set."""
    if n < 128 and not long_form:
        return bytes([n])
    return (n | 0x80000000).to_bytes(4, "big")


def pairs(*items: tuple[bytes, bytes], long_forms: list[tuple[bool, bool]] | None = None) -> bytes:
    """A name-value pairs block; ``long_forms`` forces 4-byte lengths where a peer may choose them."""
    forms = long_forms or [(False, False)] * len(items)
    out = b""
    for (name, value), (long_name, long_value) in zip(items, forms, strict=True):
        out += encode_length(len(name), long_name) + encode_length(len(value), long_value) + name + value
    return out


def decode_pairs(block: bytes) -> list[tuple[bytes, bytes]]:
    """Decode a pairs block, insisting that every length uses the shortest form."""
    out = []
    pos = 0

    def length() -> int:
        nonlocal pos
        if block[pos] < 128:
            pos += 1
            return block[pos - 1]
        assert len(block) - pos >= 4, "4-byte length cut short"
        n = int.from_bytes(block[pos : pos + 4], "big") & 0x7FFFFFFF
        assert n >= 128, "4-byte length used for a length below 128"
        pos += 4
        return n

    while pos < len(block):
        name_length = length()
        value_length = length()
        name = block[pos : pos + name_length]
        value = block[pos + name_length : pos + name_length + value_length]
        assert (len(name), len(value)) == (name_length, value_length), "pair runs past the block"
        out.append((name, value))
        pos += name_length + value_length
    return out


def begin_body(role: int, keep_conn: bool = True) -> bytes:
    """BEGIN_REQUEST body (spec 5.1): role, flags, 5 reserved bytes."""
    return role.to_bytes(2, "big") + bytes([int(keep_conn)]) + bytes(5)


def end_body(app_status: int = 0, protocol_status: int = 0) -> bytes:
    """END_REQUEST body (spec 5.5): appStatus, protocolStatus, 3 reserved bytes."""
    return app_status.to_bytes(4, "big") + bytes([protocol_status]) + bytes(3)


def unknown_type_body(rtype: int) -> bytes:
    """UNKNOWN_TYPE body (spec 4.2): the type, 7 reserved bytes."""
    return bytes([rtype]) + bytes(7)
