"""A WSGI app for the compression and limit tests, served by a real worker process.

The last segment of the request path picks the answer (any prefix routes to it):

- ``.../text?size=N&type=T&encoding=E&etag=1&nolength=1``: ``text(N)`` with
  Content-Type T (default text/plain), Content-Length unless ``nolength``,
  Content-Encoding E if given, an ETag if asked; ``lie=D`` declares D bytes more
  (or fewer) than it sends.
- ``.../ticks?n=N&every_ms=M``: N lines ``tick I``, one every M ms, streamed
  (no Content-Length).
- ``.../endless``: lines of text, 16 KiB at a time, until the request is aborted
  (bounded: 64 MiB).
- ``.../slow?ms=M``: ``ok`` after M ms.
- anything else: ``ok``.
"""

from __future__ import annotations

import time
import urllib.parse


def text(size: int) -> bytes:
    """Compressible, not trivially repetitive text of ``size`` bytes."""
    out = bytearray()
    number = 0
    while len(out) < size:
        out += b"line %d of the answer, %x\n" % (number, number * 2654435761 % 2**32)
        number += 1
    return bytes(out[:size])


def _ticks(count: int, every: float):
    for number in range(count):
        if number:
            time.sleep(every)
        yield b"tick %d\n" % number


def _endless():
    piece = text(16 * 1024)
    for _ in range(4096):
        yield piece


def app(environ, start_response):
    query = dict(urllib.parse.parse_qsl(environ.get("QUERY_STRING", "")))
    uri = environ.get("REQUEST_URI", "/")
    name = urllib.parse.urlsplit(uri).path.rsplit("/", 1)[-1]
    if name == "text":
        body = text(int(query.get("size", "1000")))
        headers = [("Content-Type", query.get("type", "text/plain"))]
        if "nolength" not in query:
            headers.append(("Content-Length", str(len(body) + int(query.get("lie", "0")))))
        if "encoding" in query:
            headers.append(("Content-Encoding", query["encoding"]))
        if "etag" in query:
            headers.append(("ETag", '"v1"'))
        start_response("200 OK", headers)
        return [body]
    if name == "ticks":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _ticks(int(query.get("n", "5")), int(query.get("every_ms", "100")) / 1000)
    if name == "endless":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _endless()
    if name == "slow":
        time.sleep(int(query.get("ms", "1000")) / 1000)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
