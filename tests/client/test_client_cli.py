"""``fcgi-cluster request``, run as a real process against flup and against
misbehaving in-process workers.

The command is started through ``request_main`` (cli.py's dispatch belongs to
another module); trio.run_process kills it if a test is cancelled or times out.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import trio

from tests.client._fake_worker import Peer, fake_worker

pytestmark = [pytest.mark.trio, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
COMMAND = [
    sys.executable,
    "-c",
    "import sys; from fcgi_cluster.client._cli import request_main; sys.exit(request_main(sys.argv[1:]))",
]


async def run_request(*args: str, stdin: bytes = b"") -> trio.Process:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with trio.fail_after(30):
        return await trio.run_process(
            [*COMMAND, *args], stdin=stdin, capture_stdout=True, capture_stderr=True, check=False, cwd=ROOT, env=env
        )


def assert_one_line_failure(result: trio.Process, *fragments: str) -> None:
    err = result.stderr.decode()
    assert result.returncode != 0, err
    assert result.stdout == b""
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("fcgi-cluster request: "), err
    for fragment in fragments:
        assert fragment in err


async def test_include_prints_the_status_line_and_headers(flup_mpx: str) -> None:
    result = await run_request(flup_mpx, "/missing", "-i")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n\r\nno such thing\n"
    )


async def test_body_only_without_include(flup_mpx: str) -> None:
    result = await run_request(flup_mpx, "/hello")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"hello\n", b"")


async def test_binary_body_from_a_file_round_trips(flup_mpx: str, tmp_path: Path) -> None:
    payload = bytes(range(256)) * 1000
    (tmp_path / "body.bin").write_bytes(payload)
    result = await run_request(flup_mpx, "/echo", "-d", f"@{tmp_path / 'body.bin'}")
    assert result.returncode == 0, result.stderr
    assert result.stdout == payload


async def test_data_from_stdin_and_method_header_and_param(flup_mpx: str) -> None:
    result = await run_request(
        flup_mpx, "http://example.org/environ?q=1", "-X", "PUT", "-d", "@-", "-H", "X-Test: yes",
        "--param", "APP_MODE=test", stdin=b"abc",
    )
    assert result.returncode == 0, result.stderr
    environ = json.loads(result.stdout)
    assert environ["REQUEST_METHOD"] == "PUT"
    assert environ["CONTENT_LENGTH"] == "3"
    assert environ["CONTENT_TYPE"] == "application/x-www-form-urlencoded"
    assert environ["HTTP_X_TEST"] == "yes"
    assert environ["HTTP_HOST"] == "example.org"
    assert environ["QUERY_STRING"] == "q=1"
    assert environ["APP_MODE"] == "test"


async def test_default_method_is_post_with_data(flup_mpx: str) -> None:
    result = await run_request(flup_mpx, "/echo", "-d", "a=1", "-d", "b=2", "-i")
    assert result.returncode == 0
    assert b"X-Method: POST\r\n" in result.stdout
    assert result.stdout.endswith(b"\r\n\r\na=1&b=2")


async def test_worker_stderr_goes_to_stderr_and_a_500_exits_0(flup_mpx: str) -> None:
    logged = await run_request(flup_mpx, "/stderr")
    assert (logged.returncode, logged.stdout, logged.stderr) == (0, b"logged\n", b"worker says hi\n")
    crashed = await run_request(flup_mpx, "/boom", "-i")
    assert crashed.returncode == 0
    assert crashed.stdout.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert b"RuntimeError: boom" in crashed.stderr


async def test_unreachable_worker_is_one_line_and_nonzero() -> None:
    with socket.socket() as blocker:  # bound, not listening: refused
        blocker.bind(("127.0.0.1", 0))
        result = await run_request(f"127.0.0.1:{blocker.getsockname()[1]}", "/hello")
    assert_one_line_failure(result, "cannot connect", "refused")


async def test_missing_unix_socket_is_one_line(tmp_path: Path) -> None:
    result = await run_request(f"unix:{tmp_path}/none.sock", "/hello")
    assert_one_line_failure(result, "cannot connect")


async def test_silent_worker_times_out_in_one_line() -> None:
    async def silent(stream: trio.SocketStream) -> None:
        peer = Peer(stream)
        while await peer.next_request() is not None:
            pass

    async with fake_worker(silent) as address:
        result = await run_request(address, "/hello", "--timeout", "0.5")
    assert_one_line_failure(result, "within 0.5 s")


async def test_worker_breaking_the_protocol_is_one_line() -> None:
    async def garbage(stream: trio.SocketStream) -> None:
        await stream.receive_some()
        await stream.send_all(b"<html>not FastCGI</html>\n")
        await trio.sleep(5)

    async with fake_worker(garbage) as address:
        result = await run_request(address, "/hello")
    assert_one_line_failure(result, "broke the FastCGI protocol")


async def test_bad_cgi_headers_are_one_line() -> None:
    async def headerless(stream: trio.SocketStream) -> None:
        peer = Peer(stream)
        got = await peer.next_request()
        assert got is not None
        await peer.respond(got[0].request_id, b"just a body, no headers")
        await trio.sleep(5)

    async with fake_worker(headerless) as address:
        result = await run_request(address, "/hello")
    assert_one_line_failure(result, "CGI headers")


async def test_usage_errors_exit_2() -> None:
    result = await run_request("127.0.0.1:9000", "no-slash")
    assert result.returncode == 2
    assert b"Traceback" not in result.stderr
    assert b"must start with '/'" in result.stderr
