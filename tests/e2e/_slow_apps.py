"""A WSGI app for the slow-client tests, served by a real worker process.

- ``/blob?size=N&seed=S``: N bytes from ``random.Random(S)``, 64 KiB at a time
  (``blob(size, seed)`` gives the same bytes to the test).
- ``/endless?tag=T``: ``z`` 64 KiB at a time until the request is aborted;
  then a line ``T closed`` is appended to the file ``$SLOW_APPS_LOG``.
- ``/ticks?n=N&every_ms=M``: N lines ``tick I <time>``, one every M ms.
- ``/upload``: reads the whole body, answers its length.
- anything else: ``ok``.
"""

from __future__ import annotations

import os
import random
import time
import urllib.parse
from collections.abc import Iterator

CHUNK = 64 * 1024


def blob(size: int, seed: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    while size > 0:
        piece = rng.randbytes(min(CHUNK, size))
        size -= len(piece)
        yield piece


def _endless(tag: str) -> Iterator[bytes]:
    filler = b"z" * CHUNK
    try:
        for _ in range(1_000_000):  # bounded: 64 GB, far past any test
            yield filler
    finally:
        with open(os.environ["SLOW_APPS_LOG"], "a") as log:
            log.write(f"{tag} closed\n")


def _ticks(count: int, every: float) -> Iterator[bytes]:
    for number in range(count):
        time.sleep(every)
        yield f"tick {number} {time.time():.6f}\n".encode()


def app(environ, start_response):
    query = dict(urllib.parse.parse_qsl(environ.get("QUERY_STRING", "")))
    path = environ.get("PATH_INFO", "")
    if path == "/blob":
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", query["size"])])
        return blob(int(query["size"]), int(query.get("seed", "0")))
    if path == "/endless":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return _endless(query.get("tag", "endless"))
    if path == "/ticks":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _ticks(int(query.get("n", "5")), int(query.get("every_ms", "100")) / 1000)
    if path == "/upload":
        stream = environ["wsgi.input"]
        total = 0
        while True:
            piece = stream.read(CHUNK)
            if not piece:
                break
            total += len(piece)
        body = str(total).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
