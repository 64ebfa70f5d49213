"""Slow clients through the real front-end: they cost disk, never their neighbours' time.

One worker process (multiplexing: every request of the front-end shares its
connections) serves ``tests/e2e/_slow_apps.py``. A slow reader is a socket with
a 4 KiB receive buffer that reads a few KB at a time; the answers it asks for
are far larger than any socket buffer, so the front-end must hold them.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import pathlib
import socket
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator

from tests._peers import LOOPBACK, free_port, nginx_fastcgi

from fcgi_cluster.frontend._upstream import ANSWER_POOL

from ._frontend import frontend_from_file
from ._slow_apps import blob
from ._worker import worker_process

APP = "tests.e2e._slow_apps:app"
MiB = 1024 * 1024


@contextlib.contextmanager
def slow_worker(log: pathlib.Path) -> Iterator[int]:
    os.environ["SLOW_APPS_LOG"] = str(log)  # inherited by the worker process
    try:
        with worker_process(APP, "--log-level", "warning") as (port, _):
            yield port
    finally:
        os.environ.pop("SLOW_APPS_LOG", None)


@contextlib.contextmanager
def frontend(directory: pathlib.Path, worker: int, upstream_extra: str = "") -> Iterator[tuple[int, subprocess.Popen]]:
    """Our front-end from a cluster file (its log at ``directory/frontend.log``)."""
    port = free_port()
    config = directory / "frontend.toml"
    config.write_text(textwrap.dedent(f"""\
        [frontend]
        listen = "{LOOPBACK}:{port}"
        processes = 1
        access_log = false
        [upstream.app]
        servers = ["{LOOPBACK}:{worker}"]
        """) + textwrap.dedent(upstream_extra))
    with frontend_from_file(config, port, log_path=directory / "frontend.log") as process:
        yield port, process


class SlowReader:
    """A client that asks for ``target`` and reads it at ``rate`` bytes/s (or not at all: rate 0)."""

    def __init__(self, port: int, target: str, rate: int = 20_000) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect((LOOPBACK, port))
        self.sock.sendall(f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        self.rate = rate
        self.data = bytearray()
        self.stop = threading.Event()
        self.eof = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        deadline = time.monotonic() + 120
        while not self.stop.is_set() and time.monotonic() < deadline:
            if not self.rate:
                time.sleep(0.05)
                continue
            try:
                piece = self.sock.recv(2048)
            except (socket.timeout, BlockingIOError):
                continue
            except OSError:
                break
            if not piece:
                self.eof = True
                break
            self.data += piece
            time.sleep(len(piece) / self.rate)

    def read_all(self, timeout: float = 60) -> bytes:
        """Stop pacing and read the rest: to its Content-Length, or to the end of the connection."""
        self.stop.set()
        self.thread.join(5)
        self.sock.settimeout(timeout)
        while not self.eof and not self._complete():
            piece = self.sock.recv(1 << 20)
            if not piece:
                self.eof = True
                break
            self.data += piece
        return bytes(self.data)

    def _complete(self) -> bool:
        head, found, body = bytes(self.data).partition(b"\r\n\r\n")
        if not found:
            return False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                return len(body) >= int(value)
        return False

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def body_of(raw: bytes) -> bytes:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    return body


def small_requests(port: int, seconds: float, clients: int = 4) -> tuple[list[float], int]:
    """Small GETs from ``clients`` keep-alive clients for ``seconds``: (latencies, failures)."""
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()

    def client() -> None:
        nonlocal failures
        end = time.monotonic() + seconds
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=3)
        try:
            for _ in range(100_000):
                if time.monotonic() >= end:
                    break
                started = time.monotonic()
                try:
                    conn.request("GET", "/small")
                    response = conn.getresponse()
                    ok = response.status == 200 and response.read() == b"ok"
                except (OSError, http.client.HTTPException):
                    ok = False
                    conn.close()
                    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=3)
                with lock:
                    latencies.append(time.monotonic() - started)
                    failures += not ok
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    return latencies, failures


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[int(len(ordered) * 0.99)]


def temp_files(pid: int, directory: pathlib.Path) -> list[str]:
    """The front-end's open files in ``directory`` (unlinked ones included)."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith(str(directory) + "/"):
                found.append(target)
    return found


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_slow_readers_do_not_stall_small_requests_on_the_same_worker_connection(tmp_path) -> None:
    """8 clients reading 8 MiB answers at 20 KB/s beside small requests: ours, then nginx as the reference."""
    with slow_worker(tmp_path / "app.log") as worker:
        results = {}
        with frontend(tmp_path, worker) as (port, _):
            calm, calm_failures = small_requests(port, 1.5)
            readers = [SlowReader(port, f"/blob?size={8 * MiB}&seed={n}") for n in range(8)]
            try:
                time.sleep(0.5)
                busy, busy_failures = small_requests(port, 3.0)
            finally:
                for reader in readers:
                    reader.close()
            results["ours"] = (p99(calm), p99(busy), len(busy), busy_failures + calm_failures)
        with nginx_fastcgi(LOOPBACK, worker, keepalive=True, directory=tmp_path / "nginx", access_log=False) as peer:
            readers = [SlowReader(peer.port, f"/blob?size={8 * MiB}&seed={n}") for n in range(8)]
            try:
                time.sleep(0.5)
                busy, failures = small_requests(peer.port, 3.0)
            finally:
                for reader in readers:
                    reader.close()
            results["nginx"] = (None, p99(busy), len(busy), failures)
    print(f"p99 (s), requests, failures: {results}")
    calm_p99, busy_p99, count, failures = results["ours"]
    assert failures == 0
    assert results["nginx"][3] == 0
    # Before the answer buffering, no small request was served at all (each
    # waited behind a slow reader's answer on the shared connection).
    assert count > 200
    assert busy_p99 <= 5 * calm_p99 + 0.05, results


def test_a_spilled_answer_is_byte_exact_and_its_file_lives_as_long_as_the_answer(tmp_path) -> None:
    spill = tmp_path / "spill"
    spill.mkdir()
    size = 6 * MiB + 4321
    with slow_worker(tmp_path / "app.log") as worker, frontend(tmp_path, worker, f"""\
            buffer_size = "64k"
            temp_path = "{spill}"
            """) as (port, process):
        reader = SlowReader(port, f"/blob?size={size}&seed=7", rate=0)
        try:
            # The worker's whole answer arrives while the client reads nothing:
            # beyond 64 KiB it is in an unlinked file in temp_path.
            assert wait_until(lambda: temp_files(process.pid, spill)), "no temporary file opened"
            assert all(name.endswith("(deleted)") for name in temp_files(process.pid, spill))
            assert list(spill.iterdir()) == []
            got = body_of(reader.read_all())
        finally:
            reader.close()
        assert len(got) == size
        assert hashlib.sha256(got).digest() == hashlib.sha256(b"".join(blob(size, 7))).digest()
        assert wait_until(lambda: not temp_files(process.pid, spill)), temp_files(process.pid, spill)


def test_a_client_that_hangs_up_mid_answer_leaves_no_file_and_aborts_the_request(tmp_path) -> None:
    spill = tmp_path / "spill"
    spill.mkdir()
    log = tmp_path / "app.log"
    log.touch()
    with slow_worker(log) as worker, frontend(tmp_path, worker, f'temp_path = "{spill}"\n') as (port, process):
        reader = SlowReader(port, "/endless?tag=gone", rate=0)
        assert wait_until(lambda: temp_files(process.pid, spill))
        reader.close()  # hangs up, having read nothing
        # The front-end sent ABORT_REQUEST: the worker closed the app's iterable.
        assert wait_until(lambda: "gone closed" in log.read_text()), log.read_text()
        assert wait_until(lambda: not temp_files(process.pid, spill))
        status, _, body = _get(port, "/after")
        assert (status, body) == (200, b"ok")


def test_past_max_temp_file_size_only_that_request_is_aborted(tmp_path) -> None:
    log = tmp_path / "app.log"
    log.touch()
    with slow_worker(log) as worker, frontend(tmp_path, worker, """\
            buffer_size = "64k"
            max_temp_file_size = "1m"
            """) as (port, process):
        stalled = SlowReader(port, "/endless?tag=stalled", rate=0)
        try:
            assert wait_until(lambda: "stalled closed" in log.read_text(), 20), log.read_text()
            # Its neighbours on the worker connection were served meanwhile, and still are.
            latencies, failures = small_requests(port, 1.0, clients=2)
            assert failures == 0 and len(latencies) > 20
            # What was held for it is dropped at once (its disk given back),
            # and its connection closes after what its socket had taken: a
            # chunked answer with no last chunk, which the client sees is cut.
            raw = stalled.read_all(timeout=20)
        finally:
            stalled.close()
        assert stalled.eof
        body = body_of(raw)
        assert 0 < len(body) < 1 * MiB
        assert not body.endswith(b"\r\n0\r\n\r\n")
    assert "aborted for a slow client" in (tmp_path / "frontend.log").read_text()


def test_a_streamed_answer_reaches_a_fast_client_as_it_is_written(tmp_path) -> None:
    with slow_worker(tmp_path / "app.log") as worker, frontend(tmp_path, worker) as (port, _):
        _get(port, "/warm")
        sock = socket.create_connection((LOOPBACK, port), timeout=5)
        try:
            sock.sendall(b"GET /ticks?n=6&every_ms=100 HTTP/1.1\r\nHost: t\r\n\r\n")
            seen: list[tuple[int, float]] = []  # (tick, delay from the app's write to our read)
            data = b""
            while len(seen) < 6:
                piece = sock.recv(65536)
                assert piece, data
                now = time.time()
                data += piece
                for line in piece.split(b"\n"):
                    if line.startswith(b"tick "):
                        _, number, written = line.split()
                        seen.append((int(number), now - float(written)))
        finally:
            sock.close()
    assert [number for number, _ in seen] == list(range(6))
    # Each tick is passed on as it comes: nothing waits for more of the answer.
    assert max(delay for _, delay in seen) < 0.05, seen


def test_many_slow_readers_cost_disk_not_memory(tmp_path) -> None:
    """100 slow readers of 8 MiB answers: the front-end's RSS grows by a fraction of their 800 MiB."""
    spill = tmp_path / "spill"
    spill.mkdir()
    with slow_worker(tmp_path / "app.log") as worker, frontend(tmp_path, worker, f'temp_path = "{spill}"\n') as (
        port, process
    ):
        _get(port, "/warm")
        before = rss_kib(process.pid)
        readers = [SlowReader(port, f"/blob?size={8 * MiB}&seed={n}", rate=0) for n in range(100)]
        try:
            # Every answer fully received by the front-end: all 8 MiB x 100 held.
            assert wait_until(lambda: len(temp_files(process.pid, spill)) == 100, 60)
            # All but what memory holds (buffer_size each, the shared pool)
            # and the sockets' buffers is on disk.
            expected = 100 * (8 * MiB - 128 * 1024 - 512 * 1024) - ANSWER_POOL
            assert wait_until(lambda: _spilled(process.pid, spill) >= expected, 60), _spilled(process.pid, spill)
            growth = rss_kib(process.pid) - before
            status, _, body = _get(port, "/small")
            assert (status, body) == (200, b"ok")
        finally:
            for reader in readers:
                reader.close()
        print(f"RSS growth with 100 slow readers of 8 MiB: {growth / 1024:.1f} MiB")
        assert growth < 48 * 1024, f"{growth / 1024:.1f} MiB"
        assert wait_until(lambda: not temp_files(process.pid, spill), 20)


def test_a_slow_uploader_does_not_hold_up_other_requests(tmp_path) -> None:
    with slow_worker(tmp_path / "app.log") as worker, frontend(tmp_path, worker) as (port, _):
        sock = socket.create_connection((LOOPBACK, port), timeout=10)
        try:
            total = 200_000
            sock.sendall(f"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {total}\r\n\r\n".encode())
            sent = 0
            started = time.monotonic()
            while time.monotonic() - started < 1.5:  # a trickle: 1 KB per 50 ms
                sock.sendall(b"u" * 1000)
                sent += 1000
                time.sleep(0.05)
                # Meanwhile others' uploads and GETs go through.
                status, _, body = _get(port, "/upload", body=b"v" * 100_000)
                assert (status, body) == (200, b"100000")
            sock.sendall(b"u" * (total - sent))
            sock.settimeout(10)
            raw = b""
            while not raw.endswith(str(total).encode()):
                piece = sock.recv(65536)
                assert piece, raw
                raw += piece
        finally:
            sock.close()
        assert raw.startswith(b"HTTP/1.1 200")


def _spilled(pid: int, directory: pathlib.Path) -> int:
    """Bytes of the front-end's open files in ``directory``."""
    total = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(str(directory) + "/"):
                total += os.stat(f"/proc/{pid}/fd/{fd}").st_size
    return total


def _get(port: int, target: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    try:
        conn.request("POST" if body is not None else "GET", target, body=body)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()

