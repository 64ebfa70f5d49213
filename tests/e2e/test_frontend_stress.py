"""`fcgi-cluster frontend` under stress, as a real process with real workers.

What is checked (the memory and descriptor figures each come from a front-end
started for that test alone, so no other test blurs them; the protocol tests
share one front-end, which must stay healthy through all of them):

* 100 MB request bodies (Content-Length and chunked) and a 100 MB response
  pass through byte for byte, and the front-end's peak memory (VmHWM) stays
  far below the size of the body: it streams, it does not buffer.
* A client that stops reading a 200 MB download holds the front-end's memory
  to a bounded amount (it stops reading from the worker while it cannot write
  to the client), then gets every byte.
* Smuggling and malformed requests over raw sockets: each gets its one error
  response, the connection closes, and no request hidden behind one reaches a
  worker (the access log proves it).
* Slow clients (a byte at a time) and pipelined clients are served in order.
* 300 concurrent keep-alive clients are all served, and their sockets are
  released afterwards.
* 64 wrk clients uploading 1 MiB bodies over multiplexed worker connections:
  every answer is a 200 and the front-end logs no failure (an answer that
  ends before the worker's connection has taken the last of the body must
  not leave the next request's bytes to the wrong reader).
* ``fcgi-cluster up`` with the built-in demo answers through both pools and
  stops cleanly on SIGINT, leaving no process behind.

Figures (peak memory, times, descriptor counts) are printed; run pytest with
``-s`` to see them.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from fcgi_cluster._up import DEMO_CONFIG
from tests._peers import LOOPBACK, REPO_ROOT, free_port, python_executable, run_process

from ._worker import worker_process
from .test_frontend_process import frontend_argv, frontend_process, http_get

MiB = 1024 * 1024

#: The big transfers: large enough that buffering one would show in the front-end's
#: memory at once, small enough to pass through two Python processes in seconds.
BIG_BODY = 100 * MiB

#: Pieces the test client sends and reads: the test itself never holds a whole body.
PIECE = 1 * MiB

#: Bound on the front-end's peak resident memory (VmHWM) over the big transfers.
#: Measured 32.5 MiB (31.5 MiB idle: a Python process with trio and httptools);
#: buffering one body would need 100 MiB more than idle.
STREAMING_PEAK_LIMIT = 100 * MiB

#: Growth of the front-end's VmRSS allowed while a client stalls a 200 MB download:
#: what sits in its buffers, not what the worker could produce meanwhile (at the
#: measured 200+ MiB/s, the whole body within the stall). Measured under 1 MiB.
STALL_GROWTH_LIMIT = 32 * MiB

#: How long the stalled client reads nothing.
STALL_SECONDS = 2.0

#: Seconds to wait for a front-end to answer a malformed request and close.
REFUSAL_TIMEOUT = 5.0

#: Concurrent keep-alive clients, and requests each sends.
CLIENTS = 300
REQUESTS_PER_CLIENT = 5

#: FCGI_MAX_REQS of the worker behind the many clients: small enough that their
#: requests in flight at once overflow the front-end's connections to it, so the
#: test also sees the connections opened for a burst being let go afterwards.
BURST_WORKER_MAX_REQS = 32

#: Descriptors the front-end may hold after the clients left, beyond those it held
#: before: its connections to a multiplexing worker (the upstream ``connections``
#: default is 2, one of them open before) and a couple of its own.
FD_SLACK = 4

#: The ports `fcgi-cluster up` uses without -c (see DEMO_CONFIG).
DEMO_PORTS = (8080, 9001, 9002)


# --- helpers ---------------------------------------------------------------------------


def proc_status_kib(pid: int, field: str) -> int:
    """A ``kB`` figure (VmHWM, VmRSS) from /proc/<pid>/status, in KiB."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0])
    raise KeyError(f"{field} not in /proc/{pid}/status")


def open_fds(pid: int) -> int:
    """Open file descriptors of a process."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def pattern_pieces(total: int, digest: hashlib._Hash) -> Iterator[bytes]:
    """``total`` bytes of a non-repeating pattern, in PIECE-sized pieces, hashed as they go.

    Each piece differs from the others, so a lost, doubled or reordered piece changes
    the digest; only one piece exists at a time.
    """
    sent = 0
    index = 0
    while sent < total:
        seed = hashlib.sha256(index.to_bytes(8, "big")).digest()
        piece = (seed * (PIECE // len(seed)))[: total - sent]
        digest.update(piece)
        sent += len(piece)
        index += 1
        yield piece


def filler_sha256(size: int) -> str:
    """SHA-256 of ``size`` bytes of b"x": what ``workers.echo`` serves for ``?size=``."""
    digest = hashlib.sha256()
    block = b"x" * PIECE
    full, rest = divmod(size, PIECE)
    for _ in range(full):
        digest.update(block)
    digest.update(block[:rest])
    return digest.hexdigest()


def read_all_hashed(response: http.client.HTTPResponse) -> tuple[int, str]:
    """Read a response body piece by piece: its length and SHA-256."""
    digest = hashlib.sha256()
    length = 0
    while piece := response.read(PIECE):
        digest.update(piece)
        length += len(piece)
    return length, digest.hexdigest()


def raw_exchange(port: int, data: bytes, timeout: float = REFUSAL_TIMEOUT) -> tuple[bytes, bool]:
    """Send raw bytes on a new connection and read until the server closes it.

    Returns:
        Everything received, and whether the server closed the connection within
        ``timeout`` (a reset counts as closed).
    """
    received = b""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(data)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
        except socket.timeout:
            return received, False
    return received, True


def status_of(response: bytes) -> int:
    """The status code of the first response in ``response``."""
    line = response.split(b"\r\n", 1)[0]
    assert line.startswith(b"HTTP/1.1 "), line
    return int(line.split()[1])


def read_response(stream) -> tuple[int, dict[str, str], bytes]:
    """One response from a buffered socket file (Content-Length or chunked framing)."""
    status_line = stream.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers: dict[str, str] = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = stream.read(int(headers["content-length"]))
    else:
        assert headers.get("transfer-encoding") == "chunked", headers
        body = b""
        while (size := int(stream.readline().split(b";")[0], 16)) != 0:
            body += stream.read(size)
            assert stream.readline() == b"\r\n"
        while stream.readline() not in (b"\r\n", b""):
            pass
    return int(status_line.split()[1]), headers, body


def echo_report(body: bytes) -> dict:
    """The JSON ``workers.echo`` answers."""
    return json.loads(body)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...)."""
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(parent)], capture_output=True, text=True).stdout
        children = [int(x) for x in out.split()]
        found += children
        frontier += children
    return found


def connections_to(port: int) -> int:
    """Established TCP connections to 127.0.0.1:``port``, from any process."""
    out = subprocess.run(["ss", "-tnH", "state", "established", f"( dport = :{port} )"],
                         capture_output=True, text=True).stdout
    return len(out.splitlines())


def closing_at(port: int) -> int:
    """Connections to 127.0.0.1:``port`` that the client closed and the server has not yet."""
    out = subprocess.run(["ss", "-tnH", "state", "close-wait", f"( sport = :{port} )"],
                         capture_output=True, text=True).stdout
    return len(out.splitlines())


def port_is_free(port: int) -> tuple[bool, str]:
    """Whether a server could listen on 127.0.0.1:``port`` now, and if not, why."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As servers do (ours too): connections in TIME_WAIT do not hold the port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError as exc:
            return False, f"127.0.0.1:{port}: {exc.strerror}"
    return True, ""


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def echo_worker() -> Iterator[int]:
    """One ``workers.echo`` worker for the whole module; yields its port."""
    with worker_process() as (port, _):
        yield port


@pytest.fixture(scope="module")
def guarded(echo_worker: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, pathlib.Path]]:
    """A front-end with the default limits and an access log; yields (port, log path)."""
    log_path = tmp_path_factory.mktemp("guarded") / "access.log"
    with frontend_process("--upstream", f"127.0.0.1:{echo_worker}", "--access-log", str(log_path)) as (port, _):
        yield port, log_path


# --- 1. big bodies stream ---------------------------------------------------------------


def test_100mb_bodies_stream_through_in_bounded_memory(echo_worker: int) -> None:
    with frontend_process("--upstream", f"127.0.0.1:{echo_worker}", "--max-body-size", "200m") as (port, process):
        status, _, _ = http_get(port, "/warm-up")
        assert status == 200
        idle_peak = proc_status_kib(process.pid, "VmHWM")
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=60)
        timings: dict[str, float] = {}
        try:
            # Content-Length upload.
            sent = hashlib.sha256()
            started = time.monotonic()
            conn.request("POST", "/upload-length", body=pattern_pieces(BIG_BODY, sent),
                         headers={"Content-Length": str(BIG_BODY)})
            response = conn.getresponse()
            length_report = echo_report(response.read())
            timings["upload, Content-Length"] = time.monotonic() - started
            assert response.status == 200

            # Chunked upload: http.client frames an iterable body without a length.
            sent_chunked = hashlib.sha256()
            started = time.monotonic()
            conn.request("POST", "/upload-chunked", body=pattern_pieces(BIG_BODY, sent_chunked))
            response = conn.getresponse()
            chunked_report = echo_report(response.read())
            timings["upload, chunked"] = time.monotonic() - started
            assert response.status == 200

            # Download.
            started = time.monotonic()
            conn.request("GET", f"/download?size={BIG_BODY}")
            response = conn.getresponse()
            assert response.status == 200
            assert response.getheader("Content-Length") == str(BIG_BODY)
            received, received_sha = read_all_hashed(response)
            timings["download"] = time.monotonic() - started
        finally:
            conn.close()
        peak = proc_status_kib(process.pid, "VmHWM")

    print(f"\nfront-end VmHWM: {idle_peak / 1024:.1f} MiB idle, {peak / 1024:.1f} MiB after 3 x 100 MiB")
    for name, seconds in timings.items():
        print(f"  {name}: {seconds:.2f} s ({BIG_BODY / MiB / seconds:.0f} MiB/s)")
    assert length_report["environ"]["REQUEST_URI"] == "/upload-length"
    assert length_report["environ"]["CONTENT_LENGTH"] == str(BIG_BODY)
    assert length_report["body_length"] == BIG_BODY
    assert length_report["body_sha256"] == sent.hexdigest()
    assert chunked_report["environ"]["REQUEST_URI"] == "/upload-chunked"
    # Spooled to a temporary file first, so the worker is told its length.
    assert chunked_report["environ"]["CONTENT_LENGTH"] == str(BIG_BODY)
    assert chunked_report["body_length"] == BIG_BODY
    assert chunked_report["body_sha256"] == sent_chunked.hexdigest()
    assert received == BIG_BODY
    assert received_sha == filler_sha256(BIG_BODY)
    assert peak * 1024 < STREAMING_PEAK_LIMIT


# --- 2. backpressure to a stalled reader ---------------------------------------------------


def test_stalled_download_holds_memory_bounded_then_completes(echo_worker: int) -> None:
    size = 200_000_000
    with frontend_process("--upstream", f"127.0.0.1:{echo_worker}") as (port, process):
        assert http_get(port, "/warm-up")[0] == 200
        idle = proc_status_kib(process.pid, "VmRSS")
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=60)
        try:
            conn.request("GET", f"/stall?size={size}")
            response = conn.getresponse()
            assert response.status == 200
            samples = []
            deadline = time.monotonic() + STALL_SECONDS
            while time.monotonic() < deadline:
                samples.append(proc_status_kib(process.pid, "VmRSS"))
                time.sleep(0.05)
            started = time.monotonic()
            received, received_sha = read_all_hashed(response)
            read_seconds = time.monotonic() - started
        finally:
            conn.close()
    growth = max(samples) - idle
    print(f"\nfront-end VmRSS: {idle / 1024:.1f} MiB idle, at most {max(samples) / 1024:.1f} MiB "
          f"during a {STALL_SECONDS:g} s stall (+{growth / 1024:.1f} MiB); "
          f"then {size / 1e6:.0f} MB read in {read_seconds:.2f} s")
    assert growth * 1024 < STALL_GROWTH_LIMIT
    assert received == size
    assert received_sha == filler_sha256(size)


# --- 3. smuggling and malformed requests ------------------------------------------------------

_POST = b"POST /m HTTP/1.1\r\nHost: x\r\n"
_GET = b"GET /m HTTP/1.1\r\nHost: x\r\n"

# (id, bytes, the status the front-end answers). Each is followed by a harmless
# request, which must never be answered: the connection closes after the error.
REFUSED = [
    ("content-length-and-chunked", _POST + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("chunked-twice-two-lines",
     _POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("chunked-twice-one-line", _POST + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
    ("chunked-then-gzip", _POST + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400),
    ("gzip-then-chunked", _POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400),
    ("xchunked", _POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
    # A header line that starts with a space continues the previous one (obs-fold).
    ("folded-transfer-encoding", _POST + b" Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("vertical-tab-before-chunked", _POST + b"Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n", 400),
    ("space-before-colon-transfer-encoding", _POST + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    ("chunked-on-http-1.0", b"POST /m HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("two-content-lengths", _POST + b"Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", 400),
    ("same-content-length-twice", _POST + b"Content-Length: 4\r\nContent-Length: 4\r\n\r\nabcd", 400),
    ("content-length-list", _POST + b"Content-Length: 4, 4\r\n\r\nabcd", 400),
    ("content-length-plus", _POST + b"Content-Length: +4\r\n\r\nabcd", 400),
    ("content-length-minus", _POST + b"Content-Length: -4\r\n\r\nabcd", 400),
    ("content-length-inner-space", _POST + b"Content-Length: 1 0\r\n\r\nabcdefghij", 400),
    ("chunk-size-not-hex", _POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-size-overflow", _POST + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nabc\r\n0\r\n\r\n", 400),
    ("obs-fold", _GET + b"X-A: one\r\n two\r\n\r\n", 400),
    ("space-before-colon", _GET + b"X-A : one\r\n\r\n", 400),
    ("nul-in-value", _GET + b"X-A: o\x00ne\r\n\r\n", 400),
    ("missing-host", b"GET /m HTTP/1.1\r\n\r\n", 400),
    ("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    ("request-line-over-8k", b"GET /" + b"a" * (8 * 1024) + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    ("200-headers", _GET + b"".join(b"X-H%d: v\r\n" % i for i in range(200)) + b"\r\n", 431),
    ("2gb-content-length", _POST + b"Content-Length: 2147483648\r\n\r\n", 413),
    ("newline-in-path", b"GET /%0a HTTP/1.1\r\nHost: x\r\n\r\n", 400),
]

_FOLLOW_UP = b"GET /follow-up HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize("payload,expected", [(p, s) for _, p, s in REFUSED], ids=[name for name, _, _ in REFUSED])
def test_malformed_request_is_refused_and_closed(guarded: tuple[int, pathlib.Path], payload: bytes,
                                                 expected: int) -> None:
    port, _ = guarded
    response, closed = raw_exchange(port, payload + _FOLLOW_UP)
    assert status_of(response) == expected
    assert closed, "the connection stayed open after an error response"
    assert response.count(b"HTTP/1.1 ") == 1, "a request after the refused one was answered"
    assert b"connection: close\r\n" in response.lower()
    assert b"Traceback" not in response
    # The front-end is unharmed.
    assert http_get(port, "/after")[0] == 200


# Spellings a parser could read two ways, which RFC 9110 makes plain chunked
# (optional whitespace around the value, a case-insensitive coding name). The
# body says "hello", then a second request follows on the same connection:
# answering both, in order, shows where the front-end found the boundary.
ACCEPTED_CHUNKED = [
    ("two-spaces", b"Transfer-Encoding:  chunked\r\n"),
    ("tab", b"Transfer-Encoding:\tchunked\r\n"),
    ("trailing-space", b"Transfer-Encoding: chunked \r\n"),
    ("upper-case", b"Transfer-Encoding: CHUNKED\r\n"),
]


@pytest.mark.parametrize("field", [f for _, f in ACCEPTED_CHUNKED], ids=[name for name, _ in ACCEPTED_CHUNKED])
def test_chunked_spellings_frame_the_body_as_chunked(guarded: tuple[int, pathlib.Path], field: bytes) -> None:
    port, _ = guarded
    request = _POST + field + b"\r\n5\r\nhello\r\n0\r\n\r\n" + b"GET /second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.sendall(request)
        stream = sock.makefile("rb")
        first = read_response(stream)
        second = read_response(stream)
    assert first[0] == 200
    assert echo_report(first[2])["body_length"] == 5
    assert echo_report(first[2])["body_sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert second[0] == 200
    assert echo_report(second[2])["environ"]["REQUEST_URI"] == "/second"


def test_smuggled_request_never_reaches_the_worker(guarded: tuple[int, pathlib.Path]) -> None:
    port, log_path = guarded
    smuggling = (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    response, closed = raw_exchange(port, smuggling)
    assert status_of(response) == 400
    assert closed
    assert response.count(b"HTTP/1.1 ") == 1
    # The same with the lengths the other way round (TE first) and on one
    # keep-alive connection after a good request.
    reversed_order = (
        b"GET /before-smuggling HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    response, closed = raw_exchange(port, reversed_order)
    assert closed
    assert response.count(b"HTTP/1.1 ") == 2
    assert response.startswith(b"HTTP/1.1 200 ")
    assert b"HTTP/1.1 400 " in response
    status, _, body = http_get(port, "/after-smuggling")
    assert status == 200
    assert echo_report(body)["environ"]["REQUEST_URI"] == "/after-smuggling"
    # A request is logged once its response is sent, so just after the client has it.
    deadline = time.monotonic() + 5
    while "/after-smuggling" not in (log := log_path.read_text()) and time.monotonic() < deadline:
        time.sleep(0.01)
    # The log is written: the requests that were served are in it...
    assert '"GET /before-smuggling HTTP/1.1" 200' in log
    assert '"GET /after-smuggling HTTP/1.1" 200' in log
    # ...and the one hidden behind a refused request is not.
    assert "/smuggled" not in log


# --- 4. slow and pipelining clients --------------------------------------------------------------


def _trickle(sock: socket.socket, data: bytes, pause: float) -> None:
    for i in range(len(data)):
        sock.sendall(data[i:i + 1])
        time.sleep(pause)


def test_head_sent_a_byte_every_20ms_is_served(guarded: tuple[int, pathlib.Path]) -> None:
    port, _ = guarded
    request = b"GET /slow-head HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    started = time.monotonic()
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _trickle(sock, request, 0.02)
        status, _, body = read_response(sock.makefile("rb"))
    print(f"\n{len(request)} bytes of head sent over {time.monotonic() - started:.2f} s")
    assert status == 200
    assert echo_report(body)["environ"]["REQUEST_URI"] == "/slow-head"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_sent_a_byte_at_a_time_is_served(guarded: tuple[int, pathlib.Path], chunked: bool) -> None:
    port, _ = guarded
    payload = b"a body, one byte at a time"
    if chunked:
        framing = b"Transfer-Encoding: chunked\r\n"
        body = b"".join(b"1\r\n%b\r\n" % payload[i:i + 1] for i in range(len(payload))) + b"0\r\n\r\n"
    else:
        framing = b"Content-Length: %d\r\n" % len(payload)
        body = payload
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"POST /slow-body HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + framing + b"\r\n")
        _trickle(sock, body, 0.005)
        status, _, answer = read_response(sock.makefile("rb"))
    assert status == 200
    report = echo_report(answer)
    assert report["body_length"] == len(payload)
    assert report["body_sha256"] == hashlib.sha256(payload).hexdigest()


def test_50_pipelined_requests_are_answered_in_order(guarded: tuple[int, pathlib.Path]) -> None:
    port, _ = guarded
    requests = b"".join(b"GET /pipelined/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(50))
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.sendall(requests)
        stream = sock.makefile("rb")
        answers = [read_response(stream) for _ in range(50)]
    assert [status for status, _, _ in answers] == [200] * 50
    assert [echo_report(body)["environ"]["REQUEST_URI"] for _, _, body in answers] == [
        f"/pipelined/{i}" for i in range(50)
    ]


# --- 5. many clients ------------------------------------------------------------------------------


def test_300_keepalive_clients_are_served_and_released() -> None:
    with (
        worker_process("workers.echo:app", "--max-requests", str(BURST_WORKER_MAX_REQS)) as (worker, _),
        # One process: the descriptors counted are that process's.
        frontend_process("--processes", "1", "--upstream", f"127.0.0.1:{worker}") as (port, process),
    ):
        assert http_get(port, "/warm-up")[0] == 200
        # The warm-up client has closed; wait for the front-end to close its end too.
        deadline = time.monotonic() + 5
        while closing_at(port) and time.monotonic() < deadline:
            time.sleep(0.02)
        fds_before = open_fds(process.pid)
        upstream_before = connections_to(worker)
        # Every client connects, then waits for all the others, so all are open at once.
        everyone_connected = threading.Barrier(CLIENTS + 1, timeout=30)
        busy: list[tuple[int, int]] = []
        # Counted when every client has its answers and none has closed yet:
        # the front-end's descriptors, and how many of them are worker connections
        # (a burst may open a few more for a while).
        all_done = threading.Barrier(
            CLIENTS + 1, action=lambda: busy.append((open_fds(process.pid), connections_to(worker))), timeout=60,
        )

        def client(n: int) -> list[tuple[int, str]]:
            conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
            try:
                conn.connect()
                everyone_connected.wait()
                answers = []
                for i in range(REQUESTS_PER_CLIENT):
                    conn.request("GET", f"/many/{n}/{i}")
                    response = conn.getresponse()
                    body = response.read()
                    answers.append((response.status, echo_report(body)["environ"]["REQUEST_URI"]))
                all_done.wait()
                return answers
            finally:
                conn.close()

        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(client, n) for n in range(CLIENTS)]
            everyone_connected.wait()
            started = time.monotonic()
            all_done.wait()
            elapsed = time.monotonic() - started
            results = [future.result() for future in futures]
        deadline = time.monotonic() + 5
        while (fds_after := open_fds(process.pid)) > fds_before + FD_SLACK and time.monotonic() < deadline:
            time.sleep(0.05)
        worker_connections = connections_to(worker)
    print(f"\n{CLIENTS} clients x {REQUESTS_PER_CLIENT} requests in {elapsed:.2f} s; "
          f"front-end fds: {fds_before} before, {busy[0][0]} with all connected, {fds_after} after")
    for n, answers in enumerate(results):
        assert answers == [(200, f"/many/{n}/{i}") for i in range(REQUESTS_PER_CLIENT)]
    busy_fds, busy_upstream = busy[0]
    assert busy_fds - busy_upstream >= fds_before - upstream_before + CLIENTS
    assert fds_after <= fds_before + FD_SLACK, (
        f"{fds_after - fds_before} descriptors more than before the clients came; "
        f"{worker_connections} connections to the worker are open"
    )
    assert elapsed < 30


# --- 6. the built-in demo ----------------------------------------------------------------------------


def test_uploads_under_load_all_answered_and_the_connections_stay_in_step(tmp_path: pathlib.Path) -> None:
    wrk = shutil.which("wrk")
    if wrk is None:
        pytest.fail("wrk is not installed: run `make deps`")
    script = tmp_path / "upload.lua"
    script.write_text('wrk.method = "POST"\nwrk.body = string.rep("u", 1048576)\n')
    log_path = tmp_path / "frontend.log"
    with worker_process() as (w1, _), worker_process() as (w2, _):
        port = free_port()
        argv = frontend_argv("--listen", f"127.0.0.1:{port}", "--access-log", "off",
                             "--upstream", f"127.0.0.1:{w1}", "--upstream", f"127.0.0.1:{w2}")
        with run_process(argv, cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), ready_port=port,
                         name="fcgi-frontend", log_path=log_path):
            result = subprocess.run([wrk, "-t2", "-c64", "-d3s", "-s", str(script), f"http://127.0.0.1:{port}/?size=2"],
                                    capture_output=True, text=True, timeout=60)
            status, _, body = http_get(port, "/after?size=3")
    print(result.stdout)
    assert result.returncode == 0, result.stderr
    done = int(re.search(r"(\d+) requests in", result.stdout).group(1))
    assert done > 64  # each client got answers, not just one
    assert "Non-2xx" not in result.stdout and "Socket errors" not in result.stdout, result.stdout
    assert (status, body) == (200, b"xxx")
    assert "Traceback" not in log_path.read_text()


def test_up_demo_serves_both_pools_and_stops_on_sigint(tmp_path: pathlib.Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    argv = [python_executable(), "-m", "fcgi_cluster.cli", "up"]
    busy = [reason for free, reason in map(port_is_free, DEMO_PORTS) if not free]
    if busy:
        # The demo's own ports are taken on this machine: run the same shape on free ones.
        print(f"\nthe demo's ports are busy ({'; '.join(busy)}): running its config on free ports")
        ports = [free_port() for _ in DEMO_PORTS]
        config = DEMO_CONFIG
        for demo_port, port in zip(DEMO_PORTS, ports):
            config = config.replace(f"127.0.0.1:{demo_port}", f"127.0.0.1:{port}")
        path = tmp_path / "demo.toml"
        path.write_text(config)
        argv += ["-c", str(path)]
    else:
        ports = list(DEMO_PORTS)
    front, pool_a, pool_b = ports
    with run_process(argv, cwd=REPO_ROOT, env=env, ready_port=front, name="fcgi-up", timeout=60) as up:
        served_by = [echo_report(http_get(front, f"/demo/{i}")[2])["worker"].split()[0] for i in range(8)]
        children = descendants(up.pid)
        # As Ctrl-C in a terminal: SIGINT to the foreground process group.
        os.killpg(up.pid, signal.SIGINT)
        status = up.wait(30)
        log = up.log_path.read_text()
    assert set(served_by) == {f"127.0.0.1:{pool_a}", f"127.0.0.1:{pool_b}"}
    # Two pool masters with a child each, and the front-end, whose processes = "auto"
    # forks one child per CPU when there are several.
    cpus = os.cpu_count() or 1
    assert len(children) == 5 + (cpus if cpus > 1 else 0), log
    assert status == 0, log
    assert "Traceback" not in log
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    for port in ports:
        assert port_is_free(port) == (True, "")
