"""The response cache as nginx's: ranges of a HIT, min_uses, and clients that leave the lock's wait.

A cache HIT answers a Range with 206 and the part, 416, or the whole 200.
The worker is ``tests/e2e/_cache_app.py``; its ``size=N`` answers are N bytes
of "y", its JSON answers differ per request, so a part is checked against
the whole entry the MISS gave.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import json
import pathlib
import socket
import time

from tests._peers import free_port

from ._frontend import frontend_from_file
from ._worker import worker_process
from .test_edge_cache import APP, calls
from .test_frontend_process import http_get

LAST_MODIFIED = "Tue, 01 Dec 2026 10:00:00 GMT"


def _cluster(port: int, worker: int) -> str:
    return (f'[frontend]\nlisten = "127.0.0.1:{port}"\nprocesses = 1\naccess_log = false\n'
            f'[upstream.app]\nservers = ["127.0.0.1:{worker}"]\n'
            '[[route]]\nprefix = "/c/"\nupstream = "app"\ngzip = true\n'
            '[route.cache]\nstatus_header = true\nvalid = { 200 = "1m" }\n'
            '[[route]]\nprefix = "/"\nupstream = "app"\n')


def test_a_hit_answers_a_range_with_its_part(tmp_path: pathlib.Path) -> None:
    port = free_port()
    path = tmp_path / "cluster.toml"
    target = f"/c/doc?etag=v1&lm={LAST_MODIFIED.replace(' ', '%20')}"
    with worker_process(APP) as (worker, _):
        path.write_text(_cluster(port, worker))
        with frontend_from_file(path, port):
            status, headers, whole = http_get(port, target, timeout=30)
            assert (status, headers["x-cache-status"]) == (200, "MISS")
            size = len(whole)
            assert size > 40
            cases = {"bytes=0-9": (0, 9), "bytes=10-": (10, size - 1), "bytes=-7": (size - 7, size - 1),
                     f"bytes=5-{size + 100}": (5, size - 1)}
            for asked, (first, last) in cases.items():
                status, headers, body = http_get(port, target, headers={"Range": asked, "Accept-Encoding": "gzip"},
                                                 timeout=30)
                assert (status, headers["x-cache-status"]) == (206, "HIT"), asked
                assert headers["content-range"] == f"bytes {first}-{last}/{size}", asked
                assert body == whole[first : last + 1], asked
                assert "content-encoding" not in headers and int(headers["content-length"]) == len(body)
            # HEAD of a range: the part's headers, no body.
            status, headers, body = http_get(port, target, method="HEAD", headers={"Range": "bytes=0-3"}, timeout=30)
            assert (status, headers["content-range"], headers["content-length"], body) == (
                206, f"bytes 0-3/{size}", "4", b"")
            # Unsatisfiable: 416 naming the length.
            status, headers, _ = http_get(port, target, headers={"Range": f"bytes={size}-"}, timeout=30)
            assert (status, headers["content-range"], headers["x-cache-status"]) == (416, f"bytes */{size}", "HIT")
            # If-Range: the entry's strong ETag or its exact Last-Modified gives the part; anything else the whole.
            for validator, part in (('"v1"', True), (LAST_MODIFIED, True), ('"v2"', False), ('W/"v1"', False),
                                    ("Tue, 01 Dec 2026 10:00:01 GMT", False)):
                status, headers, body = http_get(port, target, headers={"Range": "bytes=0-1", "If-Range": validator},
                                                 timeout=30)
                assert (status, body) == ((206, whole[:2]) if part else (200, whole)), validator
            # Two ranges, another unit, or garbage: the whole 200 (no multipart), compressed as any hit.
            for asked in ("bytes=0-1,4-5", "items=0-1", "bytes=x"):
                status, headers, body = http_get(port, target, headers={"Range": asked}, timeout=30)
                assert (status, body, headers["x-cache-status"]) == (200, whole, "HIT"), asked
            status, headers, body = http_get(port, target, headers={"Accept-Encoding": "gzip"}, timeout=30)
            assert headers.get("content-encoding") == "gzip" and gzip.decompress(body) == whole
            assert calls(port) == 1


def test_a_large_entry_on_disk_serves_a_part_from_the_middle(tmp_path: pathlib.Path) -> None:
    port = free_port()
    path = tmp_path / "cluster.toml"
    size = 600_000  # over memory_entry_size: served from its file, piece by piece
    with worker_process(APP) as (worker, _):
        text = _cluster(port, worker).replace('valid = { 200 = "1m" }', f'valid = {{ 200 = "1m" }}\npath = "{tmp_path / "cache"}"')
        path.write_text(text)
        with frontend_from_file(path, port):
            status, headers, whole = http_get(port, f"/c/big?size={size}", timeout=30)
            assert (status, headers["x-cache-status"], len(whole)) == (200, "MISS", size)
            status, headers, body = http_get(port, f"/c/big?size={size}", headers={"Range": "bytes=300000-300099"},
                                             timeout=30)
            assert (status, headers["x-cache-status"], headers["content-range"]) == (206, "HIT", f"bytes 300000-300099/{size}")
            assert body == b"y" * 100
            assert calls(port) == 1


def test_min_uses_stores_an_answer_on_the_nth_request_of_its_key(tmp_path: pathlib.Path) -> None:
    port = free_port()
    path = tmp_path / "cluster.toml"
    with worker_process(APP) as (worker, _):
        path.write_text(_cluster(port, worker).replace('valid = { 200 = "1m" }', 'valid = { 200 = "1m" }\nmin_uses = 3\nlock = true'))
        with frontend_from_file(path, port):
            answers = [http_get(port, "/c/rare", timeout=30) for _ in range(3)]
            assert [(status, headers["x-cache-status"]) for status, headers, _ in answers] == [(200, "MISS")] * 3
            numbers = [json.loads(body)["n"] for _, _, body in answers]
            assert numbers == sorted(set(numbers))  # each one the worker's
            status, headers, body = http_get(port, "/c/rare", timeout=30)
            assert (status, headers["x-cache-status"], body) == (200, "HIT", answers[2][2])
            # Another key counts for itself.
            assert http_get(port, "/c/other", timeout=30)[1]["x-cache-status"] == "MISS"
            assert http_get(port, "/c/other", timeout=30)[1]["x-cache-status"] == "MISS"
            assert calls(port) == 5


def test_a_client_hanging_up_while_waiting_on_the_lock_stops_waiting(tmp_path: pathlib.Path) -> None:
    port = free_port()
    path = tmp_path / "cluster.toml"
    with worker_process(APP) as (worker, _):
        # The key leaves the query out, and the filling answer is not stored: a waiter still
        # there when the fill ends goes to the worker itself.
        cache = 'key = "$scheme$host$uri"\nvalid = { 200 = "1m" }\nlock = true\nlock_timeout = "60s"'
        path.write_text(_cluster(port, worker).replace('valid = { 200 = "1m" }', cache))
        with frontend_from_file(path, port):
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                filling = pool.submit(http_get, port, "/c/slow?sleep_ms=3000&cc=no-store", timeout=60)
                time.sleep(0.5)
                with socket.create_connection(("127.0.0.1", port), timeout=30) as waiter:
                    waiter.sendall(b"GET /c/slow HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port)
                    time.sleep(0.5)  # it waits on the lock
                status, headers, _ = filling.result(60)
                assert (status, headers["x-cache-status"]) == (200, "MISS")
            time.sleep(1.5)  # a waiter still waiting would have gone to the worker by now
            assert calls(port) == 1
            # A waiter that stays gets its own answer from the worker once the fill ends.
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                filling = pool.submit(http_get, port, "/c/slow?sleep_ms=1500&cc=no-store", timeout=60)
                time.sleep(0.5)
                status, headers, _ = pool.submit(http_get, port, "/c/slow?cc=no-store", timeout=60).result(60)
                assert (status, headers["x-cache-status"]) == (200, "MISS")
                assert filling.result(60)[0] == 200
            assert calls(port) == 3
