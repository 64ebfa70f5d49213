"""One request's side of a multiplexed connection: what the reader task feeds
it, and the response objects a caller reads from it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
import tempfile
from typing import Callable

import outcome
import trio

from ._buffer import DEFAULT_BUFFERING, Buffering, SpillFile
from ._cgi import parse_cgi_head
from ._errors import ResponseOverflow, UpstreamProtocolError

__all__ = ["RequestState", "Response", "ResponseStream", "MAX_STDERR_SIZE"]

#: STDERR bytes kept per request. STDERR is the application's log, not its
#: answer: past this much the rest is dropped rather than held in memory.
MAX_STDERR_SIZE = 1024 * 1024


class RequestState:
    """What the connection tracks for one request until it ends or is given up.

    Two sides meet here: the connection's reader task feeds STDOUT in, the
    caller takes it out. The reader never waits for the caller (unless
    ``Buffering.wait`` says it may): what the caller has not taken is held in
    memory up to ``Buffering.memory`` bytes, then in a ``SpillFile``, in order.
    A caller's task that waits for data parks itself, with no channel or lot
    allocated per request; a caller without a task (the front-end's callback
    answers) sets ``callback`` instead.
    """

    __slots__ = (
        "request_id", "chunks", "buffered", "spill", "buffering", "stderr", "app_status", "error", "finished",
        "forgotten", "body_scope", "head_buffer", "_reader", "_feeder", "callback", "_due", "_queued", "deferred", "borrowed",
    )

    def __init__(
        self, request_id: int, buffering: Buffering = DEFAULT_BUFFERING, due: list[RequestState] | None = None
    ) -> None:
        self.request_id = request_id
        #: STDOUT in memory, oldest first, and its size in bytes.
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        #: Bytes of ``buffered`` borrowed from ``Buffering.pool``.
        self.borrowed = 0
        #: STDOUT past the memory bound, once there is some; it follows ``chunks``.
        self.spill: SpillFile | None = None
        #: A record held back for one turn of the scheduler (``feed_stdout``).
        self.deferred: bytes | None = None
        self.buffering = buffering
        self.stderr: bytes | bytearray = b""  # a bytearray once STDERR arrives
        self.app_status: int | None = None
        self.error: BaseException | None = None
        #: Ended, failed or given up: nothing more may be sent for it.
        self.finished = False
        #: The caller is done with it: drop whatever arrives.
        self.forgotten = False
        #: Covers the task sending an async-iterable body, if there is one.
        self.body_scope: trio.CancelScope | None = None
        #: STDOUT read while looking for the end of the CGI header block,
        #: when it spans records (None while it does not).
        self.head_buffer: bytearray | None = None
        self._reader: trio.lowlevel.Task | None = None
        self._feeder: trio.lowlevel.Task | None = None
        #: Called instead of waking a reader, when STDOUT arrives or the
        #: request ends, while no task reads the response: for a caller that
        #: answers without a task of its own. A connection calls it once the
        #: records it read in one go are all dispatched (``due``), so an
        #: answer that came whole is seen whole, and a piece of a streamed one
        #: is seen the moment it arrived.
        self.callback: Callable[[], None] | None = None
        #: The connection's list of states whose callback is due (None: call at once).
        self._due = due
        self._queued = False

    @property
    def has_data(self) -> bool:
        """STDOUT has arrived that the caller has not taken."""
        return bool(self.chunks) or (self.spill is not None and self.spill.pending > 0)

    def feed_stdout(self, data: bytes) -> bool:
        """Hold body bytes for the caller; True when the reader should now ``wait_for_room``.

        With ``Buffering.wait`` that is a wait for the caller. Otherwise it is
        one turn of the scheduler: when the memory is full and nothing is in
        the file yet, ``data`` is held back (``deferred``) while the caller,
        woken already, takes what it can (a client that keeps up empties the
        memory in that turn, and nothing goes to disk); ``feed_deferred`` then
        puts it in memory, or in the file if the caller did not keep up.

        Raises:
            ResponseOverflow: the answer outgrew its memory and file bounds (or
                the file could not be written); the connection aborts it.
        """
        if self.forgotten:
            return False
        spill = self.spill
        if spill is not None and spill.pending:
            self._spill(data)  # after what is in the file already, in order
        elif self._fits(len(data)):
            self.chunks.append(data)
            self.buffered += len(data)
        elif self.buffering.wait:
            self.chunks.append(data)
            self.buffered += len(data)
            self._signal()
            return True
        else:
            self.deferred = data
            return True
        self._signal()
        return False

    def feed_deferred(self) -> None:
        """After the caller's turn: the bytes ``feed_stdout`` held back, to memory if it made room, else to the file.

        Raises:
            ResponseOverflow: as ``feed_stdout``.
        """
        data, self.deferred = self.deferred, None
        if data is None or self.forgotten or self.finished:
            return
        if self._fits(len(data)):
            self.chunks.append(data)
            self.buffered += len(data)
        else:
            self._spill(data)
        self._signal()

    def _fits(self, size: int) -> bool:
        """Whether ``size`` more bytes may be held in memory: within the request's own, or borrowed from the pool."""
        buffering = self.buffering
        need = self.buffered + size - buffering.memory - self.borrowed
        if need <= 0 or not self.chunks:
            return True
        pool = buffering.pool
        if pool is None or self.borrowed + need > pool.per_request or pool.used + need > pool.limit:
            return False
        pool.used += need
        self.borrowed += need
        return True

    def _give_back(self) -> None:
        """Return to the pool what the memory held no longer needs."""
        excess = self.borrowed - max(0, self.buffered - self.buffering.memory)
        if excess > 0:
            self.borrowed -= excess
            self.buffering.pool.used -= excess  # type: ignore[union-attr]

    def _spill(self, data: bytes) -> None:
        buffering = self.buffering
        limit = buffering.max_file
        spill = self.spill
        if spill is None or spill.size + len(data) > limit:
            if not limit:
                raise ResponseOverflow(
                    f"the answer outgrew its {buffering.memory}-byte buffer (no temporary file allowed) "
                    "before it was read"
                )
            if spill is not None:
                raise ResponseOverflow(
                    f"the answer outgrew its {buffering.memory}-byte buffer and its {limit}-byte temporary file "
                    "(max_temp_file_size) before it was read"
                )
        try:
            if spill is None:
                spill = self.spill = SpillFile(buffering.temp_path)
            spill.write(data)
        except OSError as exc:
            raise ResponseOverflow(
                f"the answer could not be written to a temporary file in {buffering.temp_path or tempfile.gettempdir()}: "
                f"{exc.strerror or exc}"
            ) from exc

    def overflowed(self, error: ResponseOverflow) -> None:
        """The connection aborted the request for ``error``: drop what it holds, fail it."""
        self._drop()
        self.fail(error)

    async def wait_for_room(self) -> None:
        """After ``feed_stdout`` said so: the caller's turn (then ``feed_deferred``), or with
        ``Buffering.wait`` until the caller takes from the full buffer or gives the request up."""
        if self.deferred is not None:
            await trio.lowlevel.checkpoint()
        elif not self.forgotten:
            await _park(self, "_feeder")

    def feed_stderr(self, data: bytes) -> None:
        room = MAX_STDERR_SIZE - len(self.stderr)
        if room > 0:
            if not self.stderr:
                self.stderr = bytearray()
            self.stderr += data[:room]

    def complete(self, app_status: int) -> None:
        self.app_status = app_status
        self._finish()

    def fail(self, error: BaseException) -> None:
        if not self.finished:
            self.error = error
        self._finish()

    def _finish(self) -> None:
        self.finished = True
        if self.body_scope is not None:
            self.body_scope.cancel()
        self._signal()

    def _signal(self) -> None:
        reader = self._reader
        if reader is not None:
            self._reader = None
            _reschedule(reader)
        elif self.callback is not None:
            due = self._due
            if due is None:
                self.callback()
            elif not self._queued:
                self._queued = True
                due.append(self)

    def run_callback(self) -> None:
        """The connection's turn to call ``callback``, queued by ``_signal``."""
        self._queued = False
        callback = self.callback
        if callback is not None:
            callback()

    def forget(self) -> None:
        """The caller is done with this request: drop whatever is still buffered."""
        self.callback = None
        self.forgotten = True
        self._finish()
        self._drop()
        if self._feeder is not None:
            _wake(self, "_feeder")

    def _drop(self) -> None:
        self.chunks.clear()
        self.buffered = 0
        if self.borrowed:
            self._give_back()
        if self.spill is not None:
            self.spill.close()
            self.spill = None

    def take(self) -> bytes | None:
        """The next buffered STDOUT chunk, or None when nothing is buffered now."""
        chunks = self.chunks
        if chunks:
            chunk = chunks.popleft()
            self.buffered -= len(chunk)
            if self.borrowed:
                self._give_back()
            if self._feeder is not None and self.buffered < self.buffering.memory:
                _wake(self, "_feeder")
            return chunk
        spill = self.spill
        if spill is not None and spill.pending:
            try:
                return spill.read()
            except OSError as exc:
                self._drop()
                self.fail(ResponseOverflow(f"the answer's temporary file could not be read: {exc.strerror or exc}"))
        return None

    async def receive(self) -> bytes | None:
        """The next STDOUT chunk, or None at the end of a completed request.

        Raises:
            FastCGIError: the request failed (refused, or its connection died).
        """
        while True:
            chunk = self.take()
            if chunk is not None:
                return chunk
            if self.finished:
                if self.error is not None:
                    raise self.error from self.error.__cause__
                return None
            # _park, inlined: every response waits here at least once.
            self._reader = _current_task()
            await _wait_task_rescheduled(self._abort_reader)

    async def wait_ready(self) -> None:
        """Return once STDOUT the caller has not taken is here, or the request ended."""
        while not self.finished and not self.has_data:
            self._reader = _current_task()
            await _wait_task_rescheduled(self._abort_reader)

    def _abort_reader(self, _: object) -> trio.lowlevel.Abort:
        self._reader = None
        return trio.lowlevel.Abort.SUCCEEDED


async def _park(state: RequestState, slot: str) -> None:
    """Sleep until ``_wake(state, slot)``; a cancelled sleeper leaves the slot empty."""
    setattr(state, slot, trio.lowlevel.current_task())

    def abort(_: object) -> trio.lowlevel.Abort:
        setattr(state, slot, None)
        return trio.lowlevel.Abort.SUCCEEDED

    await trio.lowlevel.wait_task_rescheduled(abort)


_current_task = trio.lowlevel.current_task
_reschedule = trio.lowlevel.reschedule
_wait_task_rescheduled = trio.lowlevel.wait_task_rescheduled


def _wake(state: RequestState, slot: str) -> None:
    task = getattr(state, slot)
    setattr(state, slot, None)
    trio.lowlevel.reschedule(task)


@dataclass(frozen=True, slots=True)
class Response:
    """A complete response, as returned by ``Connection.request``.

    Attributes:
        status: the HTTP status from the CGI headers (200 unless they say otherwise).
        headers: the CGI headers but Status, as (name, value) in the worker's order.
        body: everything after the header block.
        stderr: what the application wrote to FastCGI STDERR (its log).
        app_status: the application's exit status from END_REQUEST.
    """

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    stderr: bytes
    app_status: int


class ResponseStream:
    """A response being received: status and headers now, the body as it comes.

    Made by ``Connection.stream`` (usable inside its ``async with`` block) or
    ``Connection.start_request`` (usable until ``close``); iterate it
    (``async for chunk in response``) for the body.

    Attributes:
        status: the HTTP status from the CGI headers (0 until they arrived).
        headers: the CGI headers but Status, as (name, value).
    """

    __slots__ = ("_state", "_close", "status", "raw_headers", "_pending")

    def __init__(self, state: RequestState, close: Callable[[RequestState], None]) -> None:
        self._state = state
        self._close = close
        self.status = 0
        #: The CGI headers but Status as the worker sent them, (name, value) bytes.
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self._pending = b""

    @property
    def headers(self) -> list[tuple[str, str]]:
        """The CGI headers but Status, as latin-1 (name, value) strings."""
        return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in self.raw_headers]

    @property
    def stderr(self) -> bytes:
        """STDERR received so far; all of it once the body has been read."""
        return bytes(self._state.stderr)

    @property
    def has_stderr(self) -> bool:
        """True when the worker wrote to STDERR (cheaper than testing ``stderr``, a copy)."""
        return bool(self._state.stderr)

    @property
    def app_status(self) -> int | None:
        """The application's exit status, or None until the body has been read."""
        return self._state.app_status

    @property
    def complete(self) -> bool:
        """True once the worker ended the request (END_REQUEST arrived, or it failed)."""
        return self._state.finished

    @property
    def failed(self) -> bool:
        """True once the request failed: its connection broke, or its answer overflowed its buffering."""
        return self._state.error is not None

    def call_on_records(self, callback: Callable[[], None] | None) -> None:
        """Have ``callback`` called in the connection's reader after each read that brought this request
        records, instead of waking a task (None: no more calls). For callers without a task of their own."""
        self._state.callback = callback

    async def read_head(self) -> ResponseStream:
        """Receive STDOUT until the CGI header block is complete; fills ``status`` and ``headers``.

        May be cancelled and called again: what arrived is kept, and the
        request stays in flight until ``close``.

        Raises:
            UpstreamProtocolError: the header block is malformed or too large, or
                the request ended before it was complete.
            FastCGIError: the request was refused or its connection died.
        """
        if self.status:
            return self  # parsed already (``head_ready``): what follows is body
        state = self._state
        while True:
            # take() first: most heads have arrived already, and need no await.
            chunk = state.take()
            if chunk is None:
                chunk = await state.receive()
            if chunk is None:
                raise self._no_head()
            if self._feed_head(chunk):
                return self

    def head_ready(self) -> bool:
        """``read_head`` without waiting: True once the head is parsed from what has arrived.

        Raises: as ``read_head``, when what arrived shows it cannot succeed.
        """
        if self.status:
            return True
        state = self._state
        chunk = state.take()
        while chunk is not None:
            if self._feed_head(chunk):
                return True
            chunk = state.take()
        if state.finished:
            self.raise_if_failed()
            raise self._no_head()
        return False

    def _feed_head(self, chunk: bytes) -> bool:
        state = self._state
        buf = state.head_buffer
        if buf is None:
            # The usual case, the whole head in the first record: parse it
            # where it is rather than copy the record into a buffer.
            parsed = parse_cgi_head(chunk)
            if parsed is None:
                state.head_buffer = bytearray(chunk)
        else:
            buf += chunk
            parsed = parse_cgi_head(buf)
        if parsed is None:
            return False
        self.status, self.raw_headers, self._pending = parsed
        state.head_buffer = None
        return True

    def _no_head(self) -> UpstreamProtocolError:
        return UpstreamProtocolError(
            "the worker ended the request before the end of its CGI headers"
            if self._state.head_buffer
            else "the worker ended the request without a response"
        )

    def take_ready(self) -> bytes | None:
        """Body bytes that have already arrived, without waiting (None if none have)."""
        if self._pending:
            chunk, self._pending = self._pending, b""
            return chunk
        return self._state.take()

    @property
    def has_ready(self) -> bool:
        """True when ``take_ready`` has bytes now."""
        return bool(self._pending) or self._state.has_data

    async def wait_ready(self) -> None:
        """Wait until ``take_ready`` has bytes, or the response is ``complete``.

        For a caller that relays at its own pace: it waits here, then takes
        all that arrived. ``interrupt`` ends the wait too.
        """
        if not self._pending:
            await self._state.wait_ready()

    def raise_if_failed(self) -> None:
        """Raise the request's error if it failed (refused, or its connection died).

        For a caller that found the response ``complete`` and took all of its
        body with ``take_ready``: what the end of ``async for`` would raise.
        """
        error = self._state.error
        if error is not None:
            raise error from error.__cause__

    def interrupt(self, error: BaseException) -> bool:
        """Make a ``read_head`` or body read parked on this response raise ``error`` now.

        For a supervisor enforcing deadlines without a cancel scope per wait.
        The response stays usable (``read_head`` resumes where it stopped).

        Returns:
            True if a reader was parked and now raises; False if none was
            (it is running, or already woken by data), which leaves it alone.
        """
        state = self._state
        task = state._reader
        if task is None:
            return False
        state._reader = None
        trio.lowlevel.reschedule(task, outcome.Error(error))
        return True

    def close(self) -> None:
        """Done with this response: abort the request if it has not ended, drop what is buffered."""
        self._close(self._state)

    def __aiter__(self) -> ResponseStream:
        return self

    async def __anext__(self) -> bytes:
        """The next piece of the body.

        Raises:
            StopAsyncIteration: the request has ended.
            FastCGIError: the connection died or the worker broke the protocol.
        """
        if self._pending:
            chunk, self._pending = self._pending, b""
            return chunk
        chunk = await self._state.receive()
        if chunk is None:
            raise StopAsyncIteration
        return chunk
