"""One client's HTTP/2 connection in trio: a reader, a writer, and a task per stream.

The reader feeds the sans-IO ``H2Server`` (``_h2``) and hands each stream's
events to its ``StreamIO``; each request is a task that answers it through the
same request-level code as HTTP/1.1 (``ClientConnection.respond``: routes,
static files, upstreams, limits, the access log), with a ``StreamHTTP`` and
a ``StreamIO`` in place of the connection's parser and socket. The writer
alone writes the socket: what the protocol object queued, in one write.

Resource handling: a stream task lives no longer than the connection (the
connection's nursery holds them); the socket closes in ``drive``'s
``finally``, after a GOAWAY when the client broke a rule.

Error handling: a client's protocol error or flood ends its connection with
GOAWAY (logged as a warning naming the client and the rule); a request's own
fault is answered 4xx on its stream; a failure of ours is logged with its
traceback and the stream answered 500 or reset. Nothing leaves a task.
"""

from __future__ import annotations

import contextlib
import logging
import time
import typing
from collections.abc import Callable

import trio
from h2.errors import ErrorCodes

from ._client import ClientConnection
from ._client_io import RECEIVE_SIZE, ClientGone
from ._h2 import PREFACE, Closed, Data, EndStream, H2Limits, H2Refused, H2Server, Request, Reset, WindowOpened
from ._h2_stream import StreamHTTP, StreamIO
from ._http import HTTPError

__all__ = ["H2Connection", "choose_protocol"]

log = logging.getLogger("fcgi_cluster.frontend")

#: Bytes waiting for the socket below which a stream's send does not wait for
#: the writer: the connection holds at most this much more than the client's
#: windows allow (one 64 KiB read's worth; a slow client fills it, then waits).
DRAIN_BELOW = 64 * 1024


class H2Connection:
    """A client speaking HTTP/2 (ALPN "h2", or h2c with prior knowledge).

    Args:
        conn: the client's connection as accepted (its stream, transport,
            params and site); its HTTP/1.1 parser is not used.
        make_view: a new ``SiteView`` for each stream (a view pins the site
            of one request at a time).
        initial: bytes already read from the client (the preface, on h2c).
        stopping: set when the front-end stops: a GOAWAY at once, the streams
            begun are answered, the connection closes once they are.

    Closing gracefully: at ``stopping``, and after ``keepalive_requests``
    streams (as nginx since 1.19.7), a GOAWAY NO_ERROR names the last stream
    served; later streams are refused (RST_STREAM REFUSED_STREAM, which a
    client retries elsewhere) and the connection closes when no stream is left.
    """

    def __init__(self, conn: ClientConnection, make_view: Callable[[], typing.Any], initial: bytes = b"",
                 stopping: trio.Event | None = None) -> None:
        self.conn = conn
        self._make_view = make_view
        self._initial = initial
        fe = conn.server.frontend
        self.fe = fe
        limits = H2Limits(max_concurrent_streams=fe.http2_max_concurrent_streams,
                          max_header_list_size=fe.max_header_size, max_header_block=4 * fe.max_header_size)
        self.proto = H2Server(limits, conn.server.limits)
        self.streams: dict[int, StreamIO] = {}
        self._wake = trio.lowlevel.ParkingLot()
        self._drained = trio.lowlevel.ParkingLot()
        self._queued = 0  # generations of output queued ...
        self._written = 0  # ... and written
        self._broken = False
        self._sending = False  # the writer is within a write
        self._in_write = 0  # bytes of that write
        self._stopping = stopping
        self._started = 0  # streams begun (keepalive_requests)
        self._closing = False  # the client said GOAWAY
        self._receiving: trio.CancelScope | None = None  # the reader's wait for bytes
        #: Streams answered before their body ended: body bytes dropped since (``_drop``).
        self._dropping: dict[int, int] = {}

    # --- what streams call -------------------------------------------------------------

    def _queued_output(self) -> None:
        self._queued += 1
        self._wake.unpark_all()

    def send_head(self, stream_id: int, status: int, fields: list[tuple[bytes, bytes]], end: bool) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.gone:
            return
        self.proto.send_head(stream_id, status, fields, end)
        self._queued_output()

    def send_data(self, stream_id: int, data: memoryview) -> int:
        taken = self.proto.send_data(stream_id, data)
        if taken > 0:
            self._queued_output()
        return taken

    def end_stream(self, stream_id: int) -> None:
        if self.proto.end_stream(stream_id):
            self._queued_output()

    def ack(self, stream_id: int, flow: int) -> None:
        self.proto.ack(stream_id, flow)
        self._queued_output()

    async def drain(self, timeout: float, below: int = DRAIN_BELOW) -> None:
        """Wait until what is queued now has been written to the socket (unless less than ``below`` waits).

        Raises:
            ClientGone: the connection broke, or the client read nothing for ``timeout``.
        """
        if self._broken:
            raise ClientGone()
        if self.proto.output_size + self._in_write <= below:
            # Little is waiting for the socket: go on without a round trip to the writer.
            await trio.lowlevel.checkpoint()
            return
        target = self._queued
        with trio.move_on_after(timeout):
            while self._written < target and not self._broken:
                await self._drained.park()
        if self._broken or self._written < target:
            raise ClientGone()

    # --- the connection ------------------------------------------------------------------

    async def drive(self) -> None:
        """Serve the connection until it ends; then close it."""
        io = self.conn.io
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                if self._stopping is not None:
                    nursery.start_soon(self._goaway_at_stop, self._stopping)
                try:
                    await self._reader(nursery)
                finally:
                    for stream in self.streams.values():
                        stream.gone = True
                        stream.wake()
                    if not self._broken:
                        # Let the GOAWAY (and what streams queued) leave, briefly.
                        with contextlib.suppress(ClientGone):
                            await self.drain(1, below=-1)
                    nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ClientGone, OSError):
            pass
        except Exception:
            log.exception("HTTP/2 client connection failed")
        finally:
            await self._say_goodbye()
            self.conn.server.connections.release()
            await trio.aclose_forcefully(io.transport if io.stream is io.transport else io.stream)

    @property
    def _draining(self) -> bool:
        """No new streams come (a GOAWAY either way): the connection ends with its last stream."""
        return self._closing or self.proto.last_stream_id is not None

    def _goaway(self, reason: str, last_stream_id: int | None = None) -> None:
        self.proto.goaway(reason, last_stream_id)
        self._queued_output()
        self._end_if_idle()

    def _end_if_idle(self) -> None:
        """Draining and no stream left: stop the reader's wait, so the connection closes now."""
        if self._draining and not self.streams and self._receiving is not None:
            self._receiving.cancel()

    async def _goaway_at_stop(self, stopping: trio.Event) -> None:
        await stopping.wait()
        self._goaway("stopping")

    async def _say_goodbye(self) -> None:
        """A GOAWAY before the close when the connection ends without one (the front-end stops).

        Only between two writes: after a write cut short, a frame would land
        inside another.
        """
        if self._broken or self._sending or self.proto.error is not None:
            return
        self.proto.close(ErrorCodes.NO_ERROR, "closing")
        with trio.CancelScope(shield=True), trio.move_on_after(0.5):
            try:
                await self.conn.io.stream.send_all(self.proto.data_to_send())
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, OSError):
                pass

    async def _writer(self) -> None:
        stream = self.conn.io.stream
        send_timeout = self.fe.send_timeout
        try:
            while True:
                if self.proto.has_output:
                    generation = self._queued
                    data = self.proto.data_to_send()
                    self._sending = True
                    self._in_write = len(data)
                    with trio.fail_after(send_timeout):
                        await stream.send_all(data)
                    self._sending = False
                    self._in_write = 0
                    self._written = max(self._written, generation)
                    self._drained.unpark_all()
                    continue
                self._written = self._queued
                self._drained.unpark_all()
                await self._wake.park()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError):
            self._broken = True
            self._drained.unpark_all()
            for io in self.streams.values():
                io.gone = True
                io.wake()

    async def _reader(self, nursery: trio.Nursery) -> None:
        fe = self.fe
        receive = self.conn.io.stream.receive_some
        data = self._initial
        self._queued_output()  # our SETTINGS
        while not self._broken:
            if data:
                try:
                    events = self.proto.receive_data(data)
                except H2Refused as exc:
                    log.warning("HTTP/2 client %s: GOAWAY %s: %s", self.conn.remote_addr.decode(),
                                _code_name(exc.error_code), exc.reason)
                    self._queued_output()
                    return
                for event in events:
                    self._closing = self._dispatch(event, nursery) or self._closing
                self._queued_output()
            if self._draining and not self.streams:
                return
            idle = fe.keepalive_timeout if not self.streams else float("inf")
            scope = self._receiving = trio.CancelScope(deadline=trio.current_time() + idle)
            try:
                with scope:
                    data = await receive(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return  # reset by the client (or closed by the writer after a failed send)
            finally:
                self._receiving = None
            if scope.cancelled_caught:
                if self._draining:  # ``_end_if_idle``
                    data = b""
                    continue
                self.proto.close(ErrorCodes.NO_ERROR, "idle")
                self._queued_output()
                return
            if not data:
                return

    def _dispatch(self, event: object, nursery: trio.Nursery) -> bool:
        """One protocol event; True when the client said GOAWAY."""
        if isinstance(event, Request):
            self._start(event, nursery)
            return False
        if isinstance(event, Closed):
            return True
        if isinstance(event, WindowOpened) and event.stream_id == 0:
            for io in self.streams.values():
                io.wake()
            return False
        assert isinstance(event, (Data, EndStream, Reset, WindowOpened))
        stream = self.streams.get(event.stream_id)
        if stream is None:
            self._drop(event)
            return False
        if isinstance(event, Data):
            stream.pending.append((event.data, event.flow))
        elif isinstance(event, EndStream):
            stream.client_ended = True
        elif isinstance(event, Reset):
            stream.gone = True
        stream.wake()
        return False

    def _drop(self, event: Data | EndStream | Reset | WindowOpened) -> None:
        """An event of a stream answered already: its body is dropped, its window room given back.

        A client that sends on for more than two stream windows after the
        answer is asked to stop: RST_STREAM NO_ERROR (RFC 9113 8.1). Not at
        once: curl up to 7.88 at least takes an RST_STREAM that comes with
        the answer as a failure and drops the answer; it stops sending on
        its own once it reads it, and ends its body short (no error here).
        """
        stream_id = event.stream_id
        if isinstance(event, Data):
            self.proto.ack(stream_id, event.flow)
            dropped = self._dropping.get(stream_id)
            if dropped is not None:
                dropped += event.flow
                self._dropping[stream_id] = dropped
                if dropped > 2 * self.proto.limits.stream_window:
                    del self._dropping[stream_id]
                    self.proto.reset(stream_id, ErrorCodes.NO_ERROR)
        elif isinstance(event, (EndStream, Reset)):
            self._dropping.pop(stream_id, None)

    def _start(self, event: Request, nursery: trio.Nursery) -> None:
        if self.proto.refuses(event.stream_id):
            self.proto.reset(event.stream_id, ErrorCodes.REFUSED_STREAM)
            return
        if len(self.streams) >= self.proto.limits.max_concurrent_streams:
            # Streams the client reset still being wound down count too: a
            # client cannot have more requests in work than it may have open.
            self.proto.reset(event.stream_id, ErrorCodes.REFUSED_STREAM)
            return
        fe = self.fe
        http = StreamHTTP(self, event.stream_id, event.head, self.conn.server.limits.max_body_size, event.ended)
        io = StreamIO(self, http, fe.send_timeout)
        io.client_ended = event.ended
        self.streams[event.stream_id] = io
        nursery.start_soon(self._serve_stream, io, event)
        self._started += 1
        if self._started >= fe.keepalive_requests:
            self._goaway("keepalive_requests", event.stream_id)

    async def _serve_stream(self, io: StreamIO, event: Request) -> None:
        """Answer one stream's request as any other; reset the stream if its answer could not end."""
        http = io.http
        head = event.head
        client = ClientConnection(self._make_view(), io, self.conn.params, None)  # type: ignore[arg-type]
        client.http = http  # type: ignore[assignment]
        client.real_ip = self.conn.real_ip  # a trusted proxy's X-Forwarded-For, per stream
        try:
            if event.refusal is not None:
                status, reason = event.refusal
                await io.send(http.send_error_response(status, reason=reason))
                client.server.log_request(client.remote_addr, head, status, 0, time.time())
            else:
                await client.respond(head)
            io.finish()
        except HTTPError as exc:
            if not http.head_sent:
                try:
                    await io.send(http.send_error_response(exc.status))
                except ClientGone:
                    pass
        except ClientGone:
            pass
        except Exception:
            log.exception("HTTP/2 request %r failed", head.target)
            if not http.head_sent and not io.gone:
                try:
                    await io.send(http.send_error_response(500))
                except ClientGone:
                    pass
        finally:
            del self.streams[io.stream_id]
            if not io.gone:
                if not http.ended:
                    self.proto.reset(io.stream_id, ErrorCodes.INTERNAL_ERROR)
                elif not io.client_ended:
                    # Answered before the whole body came (an error, a 413): what
                    # the client sends on is dropped, its window given back
                    # (``_dispatch``), this stream only.
                    self._dropping[io.stream_id] = 0
            # Window room of chunks never taken goes back to the connection.
            for _, flow in io.pending:
                self.proto.ack(io.stream_id, flow)
            self._queued_output()
            self._end_if_idle()


def _code_name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return str(code)


async def choose_protocol(conn: ClientConnection, http2: bool, make_view: Callable[[], typing.Any],
                          stopping: trio.Event | None = None) -> object:
    """The connection to drive for a new client: HTTP/2 when it asked for it, else ``conn`` (HTTP/1.1).

    Over TLS the ALPN protocol decides. On a cleartext listener with HTTP/2
    on, the first bytes do, as nginx's ``http2 on`` does: the preface starts
    h2c with prior knowledge; anything else is HTTP/1.1, given to ``conn``'s
    parser.
    """
    io = conn.io
    if not http2:
        return conn
    stream = io.stream
    if isinstance(stream, trio.SSLStream):
        return H2Connection(conn, make_view, stopping=stopping) if stream.selected_alpn_protocol() == "h2" else conn
    data = b""
    with trio.move_on_after(conn.server.frontend.header_timeout):
        while len(data) < len(PREFACE) and PREFACE.startswith(data):
            more = await stream.receive_some(RECEIVE_SIZE)
            if not more:
                break
            data += more
    if data.startswith(PREFACE):
        return H2Connection(conn, make_view, data, stopping)
    conn.feed(data)  # an HTTP/1.1 head begun: header_timeout, then 408, as any other
    return conn
