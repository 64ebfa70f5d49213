"""HTTP/2 connections closing gracefully, and a stream ended early, through a real front-end and worker.

The client here writes and reads frames itself (hyperframe, hpack): python's
h2 client side refuses every frame after it has read a GOAWAY, so it cannot
show the streams in flight finishing after one.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import socket
import subprocess
import time

import hpack
import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import (DataFrame, Frame, GoAwayFrame, HeadersFrame, PingFrame, RstStreamFrame, SettingsFrame,
                              WindowUpdateFrame)

from tests._peers import LOOPBACK

from ._worker import worker_process
from .test_edge_http2 import TIMEOUT, frontend, neighbour_served

pytestmark = pytest.mark.e2e

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class FrameClient:
    """h2c with prior knowledge, frame by frame: what arrives is kept in ``frames``, in order."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=TIMEOUT)
        self.encoder, self.decoder = hpack.Encoder(), hpack.Decoder()
        self.frames: list[Frame] = []
        self.closed = False  # the front-end closed the connection
        self._buffer = b""
        #: Each stream's first header block, decoded as it came (HPACK state is per connection).
        self.heads: dict[int, dict[str, str]] = {}
        self.send(PREFACE, SettingsFrame(0, settings={}), WindowUpdateFrame(0, window_increment=2**30))

    def send(self, *frames: object) -> None:
        self.sock.sendall(b"".join(f if isinstance(f, bytes) else f.serialize() for f in frames))

    def request(self, stream_id: int, path: str, method: str = "GET", end: bool = True,
                extra: tuple[tuple[str, str], ...] = ()) -> None:
        block = self.encoder.encode([(":method", method), (":path", path), (":scheme", "http"),
                                     (":authority", "127.0.0.1"), *extra])
        flags = {"END_HEADERS", "END_STREAM"} if end else {"END_HEADERS"}
        self.send(HeadersFrame(stream_id, data=block, flags=flags))

    def read_until(self, done, deadline: float = TIMEOUT) -> None:
        """Read frames until ``done(self)`` holds, the connection closes, or the deadline passes."""
        stop = time.monotonic() + deadline
        while not done(self) and not self.closed and time.monotonic() < stop:
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                data = b""
            if not data:
                self.closed = True
                return
            self._buffer += data
            while len(self._buffer) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(self._buffer[:9]))
                if len(self._buffer) < 9 + length:
                    break
                frame.parse_body(memoryview(self._buffer[9 : 9 + length]))
                self._buffer = self._buffer[9 + length :]
                self.frames.append(frame)
                if isinstance(frame, HeadersFrame):
                    fields = dict(self.decoder.decode(frame.data))
                    self.heads.setdefault(frame.stream_id, fields)
                if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                    self._reply(SettingsFrame(0, flags={"ACK"}))
                elif isinstance(frame, DataFrame) and frame.flow_controlled_length:
                    self._reply(WindowUpdateFrame(frame.stream_id, window_increment=frame.flow_controlled_length))

    def _reply(self, frame: Frame) -> None:
        try:
            self.send(frame)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the front-end closed after its last frame: what it sent is read on

    def of(self, kind: type, stream_id: int | None = None) -> list:
        return [f for f in self.frames if isinstance(f, kind) and (stream_id is None or f.stream_id == stream_id)]

    def ended(self, stream_id: int) -> bool:
        return any("END_STREAM" in f.flags for f in self.frames
                   if isinstance(f, (HeadersFrame, DataFrame)) and f.stream_id == stream_id)

    def index(self, predicate) -> int:
        return next(i for i, f in enumerate(self.frames) if predicate(f))

    def end_index(self, stream_id: int) -> int:
        return self.index(lambda f: isinstance(f, (HeadersFrame, DataFrame)) and f.stream_id == stream_id
                          and "END_STREAM" in f.flags)

    def status(self, stream_id: int) -> int:
        return int(self.heads[stream_id][":status"])

    def body(self, stream_id: int) -> bytes:
        return b"".join(f.data for f in self.of(DataFrame, stream_id))

    def close(self) -> None:
        self.sock.close()


def frontend_pid(log: pathlib.Path) -> int:
    return int(re.search(r"frontend\[(\d+)\]", log.read_text()).group(1))


def test_a_stopping_front_end_says_goaway_at_once_answers_streams_in_flight_and_refuses_later_ones(
        tmp_path: pathlib.Path) -> None:
    (tmp_path / "www").mkdir()
    with worker_process("workers.echo:app") as (worker, _), \
            frontend(tmp_path, "stopping", worker, "http2 = true\n") as port:
        client = FrameClient(port)
        try:
            client.request(1, "/slow?sleep_ms=2500")
            client.send(PingFrame(0, opaque_data=b"12345678"))
            client.read_until(lambda c: any("ACK" in f.flags for f in c.of(PingFrame)))  # stream 1 is read
            time.sleep(0.3)  # and reaches the worker, which sleeps
            os.kill(frontend_pid(tmp_path / "stopping.log"), signal.SIGTERM)
            client.read_until(lambda c: c.of(GoAwayFrame) or c.ended(1))
            # The GOAWAY comes at once, naming the stream in flight, before its answer.
            goaways = client.of(GoAwayFrame)
            assert goaways and not client.ended(1)
            assert (goaways[0].last_stream_id, goaways[0].error_code) == (1, ErrorCodes.NO_ERROR)
            # A stream begun after it is refused, and the connection goes on.
            client.request(3, "/late")
            client.read_until(lambda c: c.of(RstStreamFrame, 3))
            assert [f.error_code for f in client.of(RstStreamFrame, 3)] == [ErrorCodes.REFUSED_STREAM]
            assert not client.ended(1)
            # The stream in flight is answered whole; then the connection closes (no stream left).
            client.read_until(lambda c: False)
            assert client.closed
            assert client.ended(1) and client.status(1) == 200
            assert b'"REQUEST_URI": "/slow?sleep_ms=2500"' in client.body(1)
            assert not client.of(HeadersFrame, 3)
        finally:
            client.close()
    assert "Traceback" not in (tmp_path / "stopping.log").read_text()


def test_keepalive_requests_bounds_the_streams_of_a_connection(tmp_path: pathlib.Path) -> None:
    (tmp_path / "www").mkdir()
    with worker_process("workers.echo:app") as (worker, _), \
            frontend(tmp_path, "bounded", worker, "http2 = true\nkeepalive_requests = 3\n") as port:
        client = FrameClient(port)
        try:
            # Four streams in one write: the first three are served, the fourth is past the bound.
            client.send(*[HeadersFrame(i, data=client.encoder.encode(
                [(":method", "GET"), (":path", f"/n?i={i}&sleep_ms=300"), (":scheme", "http"),
                 (":authority", "127.0.0.1")]), flags={"END_HEADERS", "END_STREAM"}) for i in (1, 3, 5, 7)])
            client.read_until(lambda c: False)
            assert client.closed, "the connection did not close after its last stream"
            goaways = client.of(GoAwayFrame)
            assert [(g.last_stream_id, g.error_code) for g in goaways][:1] == [(5, ErrorCodes.NO_ERROR)]
            assert [f.error_code for f in client.of(RstStreamFrame, 7)] == [ErrorCodes.REFUSED_STREAM]
            for stream in (1, 3, 5):
                assert client.ended(stream) and client.status(stream) == 200
                # The GOAWAY went before the answers: they were in flight.
                assert client.index(lambda f: isinstance(f, GoAwayFrame)) < client.end_index(stream)
            assert not client.of(HeadersFrame, 7)
        finally:
            client.close()
        # Below the bound, a connection goes on (the HTTP/1.1 side's key, the same count).
        client = FrameClient(port)
        try:
            for stream in (1, 3):
                client.request(stream, "/one")
                client.read_until(lambda c, s=stream: c.ended(s))
                assert client.status(stream) == 200
            assert not client.of(GoAwayFrame) and not client.closed
        finally:
            client.close()


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "streamed"])
def test_an_upload_answered_early_ends_only_its_stream(tmp_path: pathlib.Path, length: bool) -> None:
    (tmp_path / "www").mkdir()
    limit = 100_000
    with worker_process("workers.echo:app") as (worker, _), \
            frontend(tmp_path, "early", worker, f"http2 = true\nmax_body_size = {limit}\n") as port:
        client = FrameClient(port)
        try:
            extra = (("content-length", str(10 * limit)),) if length else ()
            client.request(1, "/up", method="POST", end=False, extra=extra)
            # The body in 16 KiB frames as the windows allow, going on after the answer (a client
            # that does not read it), until the front-end resets the stream.
            sent, window = 0, 65535
            while not client.of(RstStreamFrame, 1) and sent < 10 * limit and not client.closed:
                while window >= 16384 and sent < 10 * limit:
                    client.send(DataFrame(1, data=b"u" * 16384))
                    sent, window = sent + 16384, window - 16384
                client.read_until(lambda c: c.of(RstStreamFrame, 1) or c.of(WindowUpdateFrame, 1), 5)
                window += sum(f.window_increment for f in client.of(WindowUpdateFrame, 1))
                client.frames = [f for f in client.frames if not isinstance(f, WindowUpdateFrame)]
            assert client.status(1) == 413 and client.ended(1)
            # The answer whole, then the stream (only) reset without error: stop sending (RFC 9113 8.1).
            assert [f.error_code for f in client.of(RstStreamFrame, 1)] == [ErrorCodes.NO_ERROR]
            assert client.end_index(1) < client.index(lambda f: isinstance(f, RstStreamFrame))
            # Body bytes already on their way are dropped; the connection serves the next stream.
            client.send(DataFrame(1, data=b"u" * 1000))
            client.request(3, "/after")
            client.read_until(lambda c: c.ended(3))
            assert client.status(3) == 200 and b'"REQUEST_URI": "/after"' in client.body(3)
            assert not client.of(GoAwayFrame) and not client.closed
        finally:
            client.close()
        neighbour_served(port)
    log = (tmp_path / "early.log").read_text()
    assert "Traceback" not in log and "GOAWAY" not in log


def test_curl_gets_an_early_413_every_time(tmp_path: pathlib.Path) -> None:
    """curl stops its upload once it reads the answer and ends the body short: no error, no GOAWAY.

    One upload per run: curl 7.88 fails its next request on a connection
    whose upload it cut short (against nginx 1.22 too, which also fails the
    413 itself by resetting the stream at once).
    """
    (tmp_path / "www").mkdir()
    (tmp_path / "big.bin").write_bytes(b"z" * 1_000_000)
    with worker_process("workers.echo:app") as (worker, _), \
            frontend(tmp_path, "curl413", worker, "http2 = true\nmax_body_size = 100000\n") as port:
        codes = []
        for _ in range(8):
            done = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}",
                                   "--data-binary", f"@{tmp_path / 'big.bin'}", f"http://127.0.0.1:{port}/too-big"],
                                  capture_output=True, text=True, timeout=TIMEOUT)
            codes.append(done.stdout + done.stderr)
        assert codes == ["413"] * 8
        neighbour_served(port)
    assert "GOAWAY" not in (tmp_path / "curl413.log").read_text()
