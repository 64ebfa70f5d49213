"""Our worker as a process: bad peers, signals, command-line errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

from fcgi_cluster.protocol import NEED_DATA, ClientConnection, EndRequest, Request, Stdin, Stdout
from tests._peers import LOOPBACK, REPO_ROOT, free_port, python_executable, run_process

from ._worker import LOW_NOFILE, run_out_of_descriptors, worker_argv, worker_process

pytestmark = pytest.mark.e2e

GOOD_PARAMS = {b"REQUEST_METHOD": b"GET", b"REQUEST_URI": b"/?x=1", b"QUERY_STRING": b"x=1"}


def roundtrip(port: int, params=GOOD_PARAMS, timeout: float = 5) -> bytes:
    """One well-formed request; returns STDOUT."""
    core = ClientConnection()
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(core.send(Request(1, params)) + core.send(Stdin(1, b"")))
        out = b""
        while True:
            data = sock.recv(65536)
            assert data, "worker closed the connection"
            core.receive_data(data)
            while (event := core.next_event()) is not NEED_DATA:
                if type(event) is Stdout:
                    out += event.data
                elif type(event) is EndRequest:
                    return out


def closed_by_peer(sock: socket.socket, timeout: float = 5) -> bool:
    """True when the worker closes (EOF or reset) within ``timeout``, reading what it sends."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except socket.timeout:
        return False
    return True


def record(rtype: int, rid: int, content: bytes) -> bytes:
    return struct.pack("!BBHHBx", 1, rtype, rid, len(content), 0) + content


@pytest.fixture(scope="module")
def worker():
    with worker_process("workers.echo:app") as (port, process):
        yield port, process


def garbage_cases():
    begin = record(1, 1, struct.pack("!HB5x", 1, 1))
    ten_mb_params = begin + b"".join(record(4, 1, b"\x7f" * 65528) for _ in range(160))
    many_ids = b"".join(record(1, rid, struct.pack("!HB5x", 1, 1)) for rid in range(1, 10_001))
    return {
        "http-instead-of-fastcgi": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "random-bytes": os.urandom(4096),
        "bad-version": b"\x02" + record(1, 1, b"\x00" * 8)[1:],
        "truncated-params-pair": begin + record(4, 1, b"\x05\x7fabc") + record(4, 1, b""),
        "stdin-before-params": begin + record(5, 1, b"body"),
        "ten-mb-params": ten_mb_params,
        "ten-thousand-ids": many_ids,
    }


@pytest.mark.parametrize("name", list(garbage_cases()))
def test_garbage_closes_that_connection_and_others_are_served(worker, name):
    port, process = worker
    payload = garbage_cases()[name]
    with socket.create_connection((LOOPBACK, port)) as bad:
        try:
            bad.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it hung up on us while we were still sending: just as good
        # A second client is served at once, while the bad one is being dealt with.
        assert json.loads(roundtrip(port).partition(b"\r\n\r\n")[2])["environ"]["QUERY_STRING"] == "x=1"
        assert closed_by_peer(bad), f"{name}: the worker kept the connection open"
    assert process.poll() is None


def test_truncated_record_then_eof_is_harmless(worker):
    port, process = worker
    with socket.create_connection((LOOPBACK, port)) as bad:
        bad.sendall(record(1, 1, struct.pack("!HB5x", 1, 1))[:5])
    assert roundtrip(port).startswith(b"Status: 200")
    assert process.poll() is None


def test_app_that_exits_mid_request_kills_only_that_process():
    with worker_process("workers.echo:app") as (port, process):
        with pytest.raises(AssertionError, match="closed"):
            roundtrip(port, {**GOOD_PARAMS, b"QUERY_STRING": b"exit=1"})
        process.wait(5)
        assert process.returncode == 1


def test_sigterm_finishes_in_flight_requests_then_exits():
    with worker_process("workers.echo:app") as (port, process):
        answers = []
        thread = threading.Thread(
            target=lambda: answers.append(roundtrip(port, {**GOOD_PARAMS, b"QUERY_STRING": b"sleep_ms=700&status=203"})))
        thread.start()
        time.sleep(0.3)
        os.kill(process.pid, signal.SIGTERM)
        thread.join(10)
        process.wait(10)
    assert answers and answers[0].startswith(b"Status: 203")
    assert process.returncode == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["workers.nothere:app"], "cannot import 'workers.nothere'"),
        (["workers.echo:nope"], "has no attribute 'nope'"),
        (["workers.echo:app", "--listen", "[::1:9000"], "expected [ipv6-address]:port"),
        (["workers.echo:app", "--listen", "127.0.0.1:99999"], "port must be"),
    ],
)
def test_bad_command_line_is_one_line_and_non_zero(args, message):
    result = subprocess.run([python_executable(), "-m", "fcgi_cluster.cli", "worker", *args],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_address_in_use_is_one_line_and_non_zero():
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(worker_argv("workers.echo:app", f"127.0.0.1:{port}"),
                                cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "address already in use" in result.stderr and "Traceback" not in result.stderr


def test_asgi_app_served_by_process():
    with worker_process("workers.hello_asgi:app") as (port, process):
        assert roundtrip(port).endswith(b"hello")


def test_out_of_file_descriptors_pauses_accepting_and_the_worker_serves_on(tmp_path):
    # A hard limit the worker cannot raise, and more idle connections than it
    # allows: accept() fails with EMFILE. The worker logs it, pauses accepting
    # and serves on once descriptors are free, instead of ending.
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    argv = ["prlimit", f"--nofile={LOW_NOFILE}:{LOW_NOFILE}", *worker_argv("workers.echo:app", f"127.0.0.1:{port}")]
    log_path = tmp_path / "worker.log"
    with run_process(argv, cwd=REPO_ROOT, env=env, ready_port=port, name="fcgi-worker", log_path=log_path) as process:
        run_out_of_descriptors(port, log_path, process)
        assert json.loads(roundtrip(port).split(b"\r\n\r\n", 1)[1])["environ"]["QUERY_STRING"] == "x=1"
        assert process.poll() is None
