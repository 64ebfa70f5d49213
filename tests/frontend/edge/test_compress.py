"""Accept-Encoding negotiation, which answers are compressed, and the encoders' streams."""

from __future__ import annotations

import gzip
import zlib

import brotli
import pytest
import zstandard

from fcgi_cluster.frontend import parse_config
from fcgi_cluster.frontend._http import RequestHead
from fcgi_cluster.frontend.edge._compress import ENCODINGS, accepted_coding, compression_of, new_encoder

ALL = (b"zstd", b"br", b"gzip")


@pytest.mark.parametrize(
    "header, expected",
    [
        (b"gzip", b"gzip"),
        (b"gzip, deflate, br", b"br"),  # equal q: our preference
        (b"gzip, deflate, br, zstd", b"zstd"),
        (b"br;q=0.5, gzip", b"gzip"),  # q-values honoured
        (b"br;q=0.9, gzip;q=0.8, zstd;q=0", b"br"),
        (b"GZIP", b"gzip"),
        (b"x-gzip", b"gzip"),
        (b"*", b"zstd"),
        (b"*;q=0.5, br;q=0", b"zstd"),  # "*" is any coding not named
        (b"", None),
        (b"identity", None),
        (b"deflate", None),
        (b"gzip;q=0", None),
        (b"gzip;q=0.5, identity", None),  # identity ranked higher
        (b"gzip;q=0.5, identity;q=0.5", b"gzip"),
        (b"gzip, identity;q=0", b"gzip"),
        (b"gzip;q=2, br;q=abc", None),  # elements that do not parse are ignored
        (b" gzip ; q=0.7 ,  br ; q=0.6 ", b"gzip"),
    ],
)
def test_accept_encoding_negotiation(header: bytes, expected: bytes | None) -> None:
    assert accepted_coding(header, ALL) == expected


def test_only_the_codings_offered_are_chosen() -> None:
    assert accepted_coding(b"br, zstd, gzip;q=0.1", (b"gzip",)) == b"gzip"
    assert accepted_coding(b"br, zstd", (b"gzip",)) is None


def _head(headers: list[tuple[bytes, bytes]], method: bytes = b"GET", version: bytes = b"1.1") -> RequestHead:
    return RequestHead(method=method, target=b"/", path=b"/", query=b"", headers=headers, http_version=version,
                       content_length=None, chunked=False, keep_alive=True, expect_continue=False)


def _compression(extra: str = ""):
    config = parse_config(f'[upstream.app]\nservers = ["127.0.0.1:9001"]\n[[route]]\nprefix = "/"\nupstream = "app"\ngzip = true\n{extra}')
    return compression_of(config.routes[0])


JSON = [(b"Content-Type", b"application/json; charset=utf-8")]
ACCEPT = [(b"Accept-Encoding", b"gzip")]


def test_an_eligible_answer_gets_vary_content_encoding_and_a_weak_etag() -> None:
    encoder, headers = _compression().choose(_head(ACCEPT), 200, JSON + [(b"ETag", b'"abc"')], 5000)
    assert encoder is not None and encoder.coding == b"gzip"
    assert (b"Vary", b"Accept-Encoding") in headers
    assert (b"Content-Encoding", b"gzip") in headers
    assert (b"ETag", b'W/"abc"') in headers


def test_vary_is_added_even_when_this_client_gets_identity() -> None:
    encoder, headers = _compression().choose(_head([]), 200, JSON, 5000)
    assert encoder is None and (b"Vary", b"Accept-Encoding") in headers
    _, headers = _compression().choose(_head([]), 200, JSON + [(b"Vary", b"Cookie")], 5000)
    assert [v for n, v in headers if n == b"Vary"] == [b"Cookie, Accept-Encoding"]
    _, headers = _compression().choose(_head([]), 200, JSON + [(b"vary", b"accept-encoding")], 5000)
    assert [v for n, v in headers if n.lower() == b"vary"] == [b"accept-encoding"]


@pytest.mark.parametrize(
    "request_headers, method, version, status, headers, length",
    [
        (ACCEPT, b"HEAD", b"1.1", 200, JSON, 5000),
        (ACCEPT, b"GET", b"1.0", 200, JSON, 5000),
        (ACCEPT + [(b"Range", b"bytes=0-10")], b"GET", b"1.1", 200, JSON, 5000),
        (ACCEPT + [(b"Via", b"1.1 proxy")], b"GET", b"1.1", 200, JSON, 5000),
        (ACCEPT, b"GET", b"1.1", 206, JSON + [(b"Content-Range", b"bytes 0-10/100")], 11),
        (ACCEPT, b"GET", b"1.1", 204, JSON, None),
        (ACCEPT, b"GET", b"1.1", 304, JSON, None),
        (ACCEPT, b"GET", b"1.1", 500, JSON, 5000),
        (ACCEPT, b"GET", b"1.1", 200, JSON + [(b"Content-Encoding", b"br")], 5000),
        (ACCEPT, b"GET", b"1.1", 200, JSON + [(b"Cache-Control", b"public, no-transform")], 5000),
        (ACCEPT, b"GET", b"1.1", 200, [(b"Content-Type", b"image/png")], 5000),
        (ACCEPT, b"GET", b"1.1", 200, [], 5000),
        (ACCEPT, b"GET", b"1.1", 200, JSON, 19),  # under gzip_min_length (20)
    ],
)
def test_answers_that_are_never_compressed(request_headers, method, version, status, headers, length) -> None:
    encoder, out = _compression().choose(_head(request_headers, method, version), status, headers, length)
    assert encoder is None
    assert out == headers  # no Vary, no Content-Encoding of ours


def test_types_min_length_proxied_and_levels_are_the_routes() -> None:
    compression = _compression('gzip_types = ["text/csv"]\ngzip_min_length = 1000\ngzip_proxied = "any"\nbrotli = false\nzstd_comp_level = 9\n')
    via = _head([(b"Accept-Encoding", b"br, zstd;q=0.9, gzip;q=0.1"), (b"Via", b"1.1 cdn")])
    csv = [(b"Content-Type", b"text/csv")]
    assert compression.choose(via, 200, JSON, 5000)[0] is None
    assert compression.choose(via, 200, csv, 999)[0] is None
    encoder, _ = compression.choose(via, 200, csv, None)  # a streamed answer: no length, compressed
    assert encoder is not None and encoder.coding == b"zstd"
    assert compression.levels == {b"zstd": 9, b"gzip": 1}


def test_gzip_off_means_no_compression_object_at_all() -> None:
    config = parse_config('[upstream.app]\nservers = ["127.0.0.1:9001"]\n')
    assert compression_of(config.routes[0]) is None


def _decoders():
    return {
        b"gzip": lambda: zlib.decompressobj(31).decompress,
        b"br": lambda: brotli.Decompressor().process,
        b"zstd": lambda: zstandard.ZstdDecompressor().decompressobj().decompress,
    }


@pytest.mark.parametrize("coding", [b"gzip", b"br", b"zstd"])
def test_each_flush_makes_what_was_fed_readable_and_the_whole_decodes_exactly(coding: bytes) -> None:
    assert coding in ENCODINGS
    encoder = new_encoder(coding, 3)
    decode = _decoders()[coding]()
    pieces = [b"tick %d " % i * 20 for i in range(5)] + [bytes(range(256)) * 40]
    for piece in pieces:
        out = encoder.feed(piece) + encoder.flush()
        assert decode(out) == piece  # a streamed tick is readable on arrival
    assert decode(encoder.finish()) == b""


@pytest.mark.parametrize("coding", [b"gzip", b"br", b"zstd"])
@pytest.mark.parametrize("length", [1, 300, 5000, 70000])
def test_a_window_fitted_to_the_declared_length_still_decodes(coding: bytes, length: int) -> None:
    data = bytes(range(256)) * (length // 256) + b"z" * (length % 256)
    encoder = new_encoder(coding, 5, length)
    assert _decoders()[coding]()(encoder.feed(data) + encoder.finish()) == data


def test_gzip_stream_is_a_gzip_file() -> None:
    encoder = new_encoder(b"gzip", 6)
    data = b"hello " * 1000
    assert gzip.decompress(encoder.feed(data) + encoder.finish()) == data
