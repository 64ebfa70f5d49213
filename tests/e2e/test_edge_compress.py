"""Compression through the real front-end and a real worker: gzip, br and zstd, streamed and whole.

The worker serves ``tests/e2e/_edge_apps.py``; the front-end's route ``/z/``
compresses, ``/plain/`` does not. Every compressed body is decompressed here
with the coding's own library and compared with the bytes the app wrote.
"""

from __future__ import annotations

import http.client
import socket
import time
import zlib

import brotli
import pytest
import zstandard

from tests._peers import LOOPBACK

from ._edge_apps import text
from ._worker import worker_process
from .test_frontend_slow_clients import frontend

pytestmark = pytest.mark.e2e

ROUTES = """
[[route]]
prefix = "/z/"
upstream = "app"
gzip = true
gzip_comp_level = 6
[[route]]
prefix = "/plain/"
upstream = "app"
[[route]]
prefix = "/s/"
static = "site"
gzip = true
"""

CSS = b"".join(b".rule-%d { color: #%06x; margin: %dpx; }\n" % (i, i * 7919 % 2**24, i % 50) for i in range(20000))

DECODERS = {
    "gzip": lambda: zlib.decompressobj(31).decompress,
    "br": lambda: brotli.Decompressor().process,
    "zstd": lambda: zstandard.ZstdDecompressor().decompressobj().decompress,
}


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("edge-compress")
    (directory / "site").mkdir()
    (directory / "site" / "app.css").write_bytes(CSS)
    (directory / "site" / "logo.png").write_bytes(CSS)
    with worker_process("tests.e2e._edge_apps:app") as (worker, _):
        with frontend(directory, worker, ROUTES) as (front, process):
            yield front
            assert process.poll() is None, "the front-end died"


def get(port: int, target: str, headers: dict[str, str] | None = None, method: str = "GET"):
    """(status, headers with lower-case names, body as sent)."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
    try:
        conn.request(method, target, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
@pytest.mark.parametrize("size", [2000, 3 * 1024 * 1024])  # whole from the hub's callback; streamed by a task
def test_compressed_answers_decode_to_the_workers_exact_bytes(port: int, coding: str, size: int) -> None:
    status, headers, body = get(port, f"/z/text?size={size}&etag=1", {"Accept-Encoding": coding})
    assert status == 200
    assert headers["content-encoding"] == coding
    assert headers["vary"] == "Accept-Encoding"
    assert "content-length" not in headers and headers["transfer-encoding"] == "chunked"
    assert headers["etag"] == 'W/"v1"'
    assert DECODERS[coding]()(body) == text(size)
    assert len(body) < size / 3


def test_the_clients_preference_picks_the_coding(port: int) -> None:
    for accept, coding in (("gzip, deflate, br, zstd", "zstd"), ("br;q=1, zstd;q=0.5, gzip;q=0.1", "br"),
                           ("zstd;q=0, br;q=0, gzip", "gzip"), ("gzip;q=0.2, identity", None)):
        status, headers, body = get(port, "/z/text?size=5000", {"Accept-Encoding": accept})
        assert status == 200 and headers.get("content-encoding") == coding, accept
        assert (DECODERS[coding]()(body) if coding else body) == text(5000)


@pytest.mark.parametrize(
    "target, request_headers, method",
    [
        ("/z/text?size=5000", {"Range": "bytes=0-99"}, "GET"),
        ("/z/text?size=5000", {}, "HEAD"),
        ("/z/text?size=10", {}, "GET"),  # under gzip_min_length
        ("/z/text?size=5000&type=image/png", {}, "GET"),
        ("/plain/text?size=5000", {}, "GET"),  # gzip off on this route
        ("/z/text?size=5000", {"Via": "1.1 some-proxy"}, "GET"),  # gzip_proxied off
    ],
)
def test_answers_sent_as_they_are(port: int, target: str, request_headers: dict[str, str], method: str) -> None:
    status, headers, body = get(port, target, {"Accept-Encoding": "gzip, br, zstd", **request_headers}, method)
    assert status == 200 and "content-encoding" not in headers
    size = int(target.split("size=")[1].split("&")[0])
    if method == "HEAD":
        assert body == b"" and headers["content-length"] == str(size)
    else:
        assert body == text(size) and headers["content-length"] == str(size)


def test_an_answer_the_worker_encoded_is_not_encoded_again(port: int) -> None:
    status, headers, body = get(port, "/z/text?size=5000&encoding=identity-test", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "identity-test" and body == text(5000)


def test_without_accept_encoding_the_answer_is_plain_but_varies(port: int) -> None:
    status, headers, body = get(port, "/z/text?size=5000")
    assert status == 200 and "content-encoding" not in headers and body == text(5000)
    assert headers["vary"] == "Accept-Encoding"


def _read_chunks(sock: socket.socket, on_chunk) -> None:
    """Read a chunked HTTP/1.1 answer after its head, calling ``on_chunk(data)`` for each chunk as it arrives."""
    buffer = b""

    def need(count: int) -> None:
        nonlocal buffer
        while len(buffer) < count:
            piece = sock.recv(65536)
            if not piece:
                raise ConnectionError("closed mid-answer")
            buffer += piece

    while b"\r\n\r\n" not in buffer:
        need(len(buffer) + 1)
    head, buffer = buffer.split(b"\r\n\r\n", 1)
    assert b"Content-Encoding: gzip" in head and b"Transfer-Encoding: chunked" in head, head
    while True:
        while b"\r\n" not in buffer:
            need(len(buffer) + 1)
        line, buffer = buffer.split(b"\r\n", 1)
        length = int(line, 16)
        need(length + 2)
        data, buffer = buffer[:length], buffer[length + 2:]
        if not length:
            return
        on_chunk(data)


def test_streamed_ticks_arrive_compressed_one_by_one(port: int) -> None:
    with socket.create_connection((LOOPBACK, port), timeout=30) as sock:
        sock.sendall(b"GET /z/ticks?n=4&every_ms=400 HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n")
        decode = zlib.decompressobj(31)
        seen: list[tuple[float, bytes]] = []
        _read_chunks(sock, lambda data: seen.append((time.monotonic(), decode.decompress(data))))
    lines = b"".join(piece for _, piece in seen)
    assert lines == b"tick 0\ntick 1\ntick 2\ntick 3\n"
    # Each tick was readable when it arrived: tick 0 long before the last one
    # (the app sleeps 3 x 400 ms between them).
    first = next(at for at, piece in seen if b"tick 0" in piece)
    last = next(at for at, piece in seen if b"tick 3" in piece)
    assert last - first >= 1.0
    assert len([piece for _, piece in seen if b"tick" in piece]) >= 4


def test_a_client_cutting_a_compressed_stream_short_leaves_the_front_end_serving(port: int) -> None:
    for _ in range(3):
        with socket.create_connection((LOOPBACK, port), timeout=30) as sock:
            sock.sendall(b"GET /z/endless HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n")
            got = b""
            while len(got) < 20000:
                piece = sock.recv(65536)
                assert piece
                got += piece
            assert b"Content-Encoding: gzip" in got
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # a reset
    status, headers, body = get(port, "/z/text?size=100000", {"Accept-Encoding": "gzip"})
    assert status == 200 and DECODERS["gzip"]()(body) == text(100000)


@pytest.mark.parametrize("size", [3000, 500_000])
@pytest.mark.parametrize("lie", [-100, 100])
def test_a_body_that_does_not_match_its_content_length_is_cut_not_passed_as_whole(port: int, size: int, lie: int) -> None:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
    try:
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            conn.request("GET", f"/z/text?size={size}&lie={lie}", headers={"Accept-Encoding": "gzip"})
            response = conn.getresponse()
            response.read()
    finally:
        conn.close()
    status, _, body = get(port, "/z/text?size=5000", {"Accept-Encoding": "gzip"})
    assert status == 200 and DECODERS["gzip"]()(body) == text(5000)


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_static_files_are_compressed_and_keep_their_conditional_and_range_answers(port: int, coding: str) -> None:
    status, headers, body = get(port, "/s/app.css", {"Accept-Encoding": coding})
    assert status == 200 and headers["content-encoding"] == coding and headers["vary"] == "Accept-Encoding"
    assert DECODERS[coding]()(body) == CSS and len(body) < len(CSS) / 3
    etag = headers["etag"]
    assert etag.startswith('W/"')
    status, headers, body = get(port, "/s/app.css", {"Accept-Encoding": coding, "If-None-Match": etag})
    assert status == 304 and body == b""
    status, headers, body = get(port, "/s/app.css", {"Accept-Encoding": coding, "Range": "bytes=10-19"})
    assert status == 206 and "content-encoding" not in headers and body == CSS[10:20]
    status, headers, body = get(port, "/s/logo.png", {"Accept-Encoding": coding})
    assert status == 200 and "content-encoding" not in headers and body == CSS
    status, headers, body = get(port, "/s/app.css", {"Accept-Encoding": coding}, method="HEAD")
    assert status == 200 and "content-encoding" not in headers and headers["content-length"] == str(len(CSS))


def test_a_compressed_route_serves_many_requests_on_one_connection(port: int) -> None:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
    try:
        for size in (100, 70000, 30, 5000, 1_000_000):
            conn.request("GET", f"/z/text?size={size}", headers={"Accept-Encoding": "br"})
            response = conn.getresponse()
            body = response.read()
            coded = response.getheader("Content-Encoding")
            assert (DECODERS["br"]()(body) if coded == "br" else body) == text(size)
            assert (coded == "br") == (size >= 20)
    finally:
        conn.close()
