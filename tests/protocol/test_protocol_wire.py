"""Property tests of the byte layer: records, streams and name-value pairs.

Output of the code under test is read back with the reference codec in
``_spec`` (written from the FastCGI 1.0 specification), never with the core's
own decoder, so a shared misunderstanding cannot make a round trip pass.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fcgi_cluster.protocol import (
    NEED_DATA,
    LocalProtocolError,
    RemoteProtocolError,
    Request,
    Role,
    ServerConnection,
    Stdin,
    decode_pairs,
    encode_pairs,
    encode_record,
)
from fcgi_cluster.protocol._records import encode_stream

from ._spec import begin_body, encode_length, make_record, parse_records
from ._spec import decode_pairs as ref_decode_pairs
from ._spec import pairs as encode_ref

# --- strategies ----------------------------------------------------------------

#: Sizes where framing can go wrong: padding edges, one record's limit, two records.
EDGE_SIZES = [0, 1, 7, 8, 9, 127, 128, 65527, 65528, 65529, 65535, 65536, 65537, 131056, 131071]


def _blob(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def blobs(max_size: int) -> st.SearchStrategy[bytes]:
    """Bytes of any size up to ``max_size``: small ones, edge sizes and large ones.

    Large values are made from a drawn size and seed: drawing 70 KB byte by byte
    would be slow and would not shrink any better.
    """
    return st.one_of(
        st.binary(max_size=64),
        st.builds(_blob, st.sampled_from([n for n in EDGE_SIZES if n <= max_size]), st.integers(0, 99)),
        st.builds(_blob, st.integers(0, max_size), st.integers(0, 99)),
    )


#: Names and values of 0..300 bytes, so both length forms are common.
pair_fields = st.one_of(st.binary(max_size=20), st.binary(min_size=120, max_size=300), st.binary(max_size=300))
pair_dicts = st.dictionaries(pair_fields, pair_fields, max_size=12)

record_types = st.integers(0, 255)
request_ids = st.integers(0, 0xFFFF)


# --- records -------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(rtype=record_types, request_id=request_ids, content=blobs(0xFFFF))
def test_record_round_trips_and_is_aligned(rtype: int, request_id: int, content: bytes) -> None:
    out = encode_record(rtype, request_id, content)
    assert len(out) % 8 == 0
    [rec] = parse_records(out)
    assert (rec.type, rec.request_id, rec.content) == (rtype, request_id, content)
    assert rec.padding < 8


@settings(max_examples=20, deadline=None)
@given(content=st.builds(_blob, st.integers(0x10000, 70_000), st.integers(0, 99)))
def test_record_refuses_content_over_65535(content: bytes) -> None:
    with pytest.raises(LocalProtocolError):
        encode_record(6, 1, content)


@settings(max_examples=100, deadline=None)
@given(rtype=st.sampled_from([4, 5, 6, 7, 8]), request_id=st.integers(1, 0xFFFF), data=blobs(200_000))
def test_stream_splits_into_aligned_records_and_reassembles(rtype: int, request_id: int, data: bytes) -> None:
    out = encode_stream(rtype, request_id, data)
    records = parse_records(out)
    if not data:
        # An empty record would end the stream, so empty data sends nothing.
        assert out == b""
        return
    assert b"".join(r.content for r in records) == data
    for r in records:
        assert (r.type, r.request_id) == (rtype, request_id)
        assert r.content, "an empty record in the middle would end the stream"
        assert (8 + len(r.content) + r.padding) % 8 == 0
    # As few records as alignment allows: 65528 is the largest multiple of 8
    # that fits the 16-bit length, so full records carry no padding.
    assert len(records) == -(-len(data) // 65528)
    if len(data) > 0xFFFF:
        assert len(records) >= 2


# --- name-value pairs ----------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(pairs=pair_dicts)
def test_pairs_round_trip_with_shortest_lengths(pairs: dict[bytes, bytes]) -> None:
    block = encode_pairs(pairs.items())
    assert ref_decode_pairs(block) == list(pairs.items())
    assert decode_pairs(block) == pairs


@settings(max_examples=150, deadline=None)
@given(pairs=pair_dicts, data=st.data())
def test_pairs_decode_accepts_either_length_form(pairs: dict[bytes, bytes], data: st.DataObject) -> None:
    # A peer may use the 4-byte form for any length; the decoder must accept it.
    n = len(pairs)
    long_forms = data.draw(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=n, max_size=n))
    block = encode_ref(*pairs.items(), long_forms=long_forms)
    assert decode_pairs(block) == pairs


@pytest.mark.parametrize(
    ("name_size", "value_size"),
    [(0, 0), (127, 127), (127, 128), (128, 127), (128, 128), (255, 256), (200, 70_000), (70_000, 3)],
)
def test_pairs_round_trip_at_length_edges(name_size: int, value_size: int) -> None:
    pairs = {b"n" * name_size: _blob(value_size, 1), b"SHORT": b"v"}
    block = encode_pairs(pairs.items())
    assert ref_decode_pairs(block) == list(pairs.items())
    assert decode_pairs(block) == pairs
    expected_header = encode_length(name_size) + encode_length(value_size)
    assert block.startswith(expected_header)


@settings(max_examples=100, deadline=None)
@given(pairs=pair_dicts.filter(bool), data=st.data())
def test_truncated_pairs_block_is_a_remote_error(pairs: dict[bytes, bytes], data: st.DataObject) -> None:
    items = list(pairs.items())
    block = encode_pairs(items)
    boundaries = {len(encode_pairs(items[:k])): k for k in range(len(items) + 1)}
    cut = data.draw(st.integers(0, len(block)))
    if cut in boundaries:
        assert decode_pairs(block[:cut]) == dict(items[: boundaries[cut]])
    else:
        with pytest.raises(RemoteProtocolError):
            decode_pairs(block[:cut])


def _split_params(block: bytes, cuts: list[int], paddings: list[int]) -> list[bytes]:
    """PARAMS records carrying ``block``, cut at ``cuts`` (and wherever a record would overflow)."""
    edges = sorted({0, len(block), *(c for c in cuts if 0 < c < len(block))})
    chunks = []
    for start, stop in zip(edges, edges[1:]):
        for sub in range(start, stop, 0xFFFF):
            chunks.append(block[sub : min(stop, sub + 0xFFFF)])
    return [make_record(4, 1, chunk, paddings[i % len(paddings)]) for i, chunk in enumerate(chunks)]


#: Sometimes with one value of ~70 KB: it needs two records whatever the cuts.
params_with_a_big_one = st.one_of(
    pair_dicts,
    st.builds(
        lambda d, big: {**d, b"HTTP_COOKIE": big}, pair_dicts, st.builds(_blob, st.integers(65_000, 70_000), st.just(3))
    ),
)


@settings(max_examples=150, deadline=None)
@given(pairs=params_with_a_big_one, data=st.data(), keep_conn=st.booleans())
def test_params_pairs_straddling_records_decode(
    pairs: dict[bytes, bytes], data: st.DataObject, keep_conn: bool
) -> None:
    block = encode_pairs(pairs.items())
    cuts = data.draw(st.lists(st.integers(0, len(block)), max_size=12))
    paddings = data.draw(st.lists(st.integers(0, 255), min_size=1, max_size=4))
    wire = (
        make_record(1, 1, begin_body(Role.RESPONDER, keep_conn))
        + b"".join(_split_params(block, cuts, paddings))
        + make_record(4, 1)
        + make_record(5, 1)
    )
    server = ServerConnection()
    server.receive_data(wire)
    assert server.next_event() == Request(1, pairs, Role.RESPONDER, keep_conn)
    assert server.next_event() == Stdin(1, b"")
    assert server.next_event() is NEED_DATA
