"""``AccessLog``: the lines of one scheduling round in one write, whole lines only."""

from __future__ import annotations

import socket
from pathlib import Path

import trio
import trio.testing

from fcgi_cluster.frontend._access_log import _ATOMIC_WRITE, AccessLog
from fcgi_cluster.frontend._http import RequestHead


def head(target: bytes) -> RequestHead:
    return RequestHead(method=b"GET", target=target, path=target, query=b"", http_version=b"1.1",
                       headers=[(b"user-agent", b"t")], content_length=None, chunked=False,
                       expect_continue=False, keep_alive=True)


async def test_lines_of_one_round_are_held_then_written_together_in_order(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog.open(str(path))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.run)
        await trio.testing.wait_all_tasks_blocked()
        for number in range(10):
            log.write(b"127.0.0.1", head(b"/%d" % number), 200, number, 0.0)
        # Nothing written while the round runs...
        assert path.read_bytes() == b""
        with trio.fail_after(5):
            while path.read_bytes().count(b"\n") < 10:
                await trio.sleep(0)
        # ...then every line, whole and in order, within a few loop turns.
        lines = path.read_bytes().splitlines()
        assert [line.split(b" ")[6] for line in lines] == [b"/%d" % n for n in range(10)]
        log.write(b"127.0.0.1", head(b"/last"), 200, 0, 0.0)
        log.close()  # what is held is written before the file closes
        nursery.cancel_scope.cancel()
    assert path.read_bytes().splitlines()[-1].split(b" ")[6] == b"/last"


async def test_each_write_is_whole_lines_no_bigger_than_a_pipe_keeps_atomic() -> None:
    # A SEQPACKET socket keeps every write apart: one recv per os.write.
    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    log = AccessLog(writer.detach(), owned=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.run)
        await trio.testing.wait_all_tasks_blocked()
        for number in range(120):  # about 12 KiB in one round
            log.write(b"127.0.0.1", head(b"/" + b"x" * 50 + b"%d" % number), 200, 0, 0.0)
        await trio.testing.wait_all_tasks_blocked()
        log.close()
        nursery.cancel_scope.cancel()
    writes = []
    while chunk := reader.recv(65536):
        writes.append(chunk)
    reader.close()
    assert 3 <= len(writes) <= 5  # batched, in pieces a pipe writes whole
    assert all(w.endswith(b"\n") and len(w) <= _ATOMIC_WRITE for w in writes)
    lines = b"".join(writes).splitlines()
    assert [line.split(b" ")[6][51:] for line in lines] == [b"%d" % n for n in range(120)]


def test_without_run_each_line_is_written_at_once(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog.open(str(path))
    log.write(b"::1", head(b"/now"), 404, 3, 0.0)
    assert path.read_bytes().startswith(b"::1 - - [")
    log.close()
