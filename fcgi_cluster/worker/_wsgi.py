"""Run WSGI (PEP 3333) apps for the worker, in pool threads.

Per request: the environ is built in trio, then one pool thread calls the app
and iterates its response. A cancelled request (aborted by the web server, or a
stop past its deadline) is answered at once; its thread stops at the app's next
hand-off or body read and calls ``close()``. Output is batched in the thread and handed to trio
when the response ends (usually the only hand-off) or when ``BATCH_SIZE`` has piled up;
the thread then waits until trio has queued the batch for sending, which gives
the app backpressure from a slow web server. Output an app leaves waiting longer
than ``FLUSH_DELAY`` (it yields a little, then works or blocks before its next
block) is taken and sent by the loop (``OutputFlusher``): PEP 3333 forbids a
server to hold a yielded block back.

With ``threads = 0`` the app runs on the event loop's own thread instead,
php-fpm's model: one request at a time per process, no hand-offs (about half
the worker's CPU per small request), and a pool of processes for concurrency.
The app must then not block for long (nothing else runs meanwhile), its
request body is read whole first (a body larger than ``input_buffer`` goes to
a thread after all), and its response is held whole before it leaves.

With threads, an app whose calls prove short and small runs on the loop's
thread too, for requests whose body is buffered, until a call turns out slow
(``_inline.InlinePolicy``).

Error handling: an exception from the app before any body byte was sent gives a
500 with a fixed body; after that the request ends with app status 1 (the web
server sees a truncated answer). Either way the traceback goes to the worker's
log and one line to the web server's error log (STDERR), never to the client.
``close()`` of the app's iterable is always called.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import traceback
from typing import Any, Callable, Iterable

import trio


from ._body import BodyAborted, RequestBody
from ._config import WorkerConfig
from ._connection import RequestCancelled, RequestContext
from ._environ import cgi_environ, split_path
from ._inline import InlinePolicy
from ._threads import Handoff, ThreadPool, waits_for_loop

__all__ = ["WSGIHandler"]

log = logging.getLogger("fcgi_cluster.worker")

#: Output piled up in a thread before it is handed to trio mid-response. Each
#: hand-off costs two thread switches: with 64 KiB batches a 1 MiB answer cost
#: the stack about 1.4 times the CPU it costs with 256 KiB ones.
BATCH_SIZE = 256 * 1024

#: Seconds output may wait in a thread's batch before the loop sends it anyway.
FLUSH_DELAY = 0.02

_ERROR_500 = (
    b"Status: 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 22\r\n\r\nInternal Server Error\n"
)

# Messages from the thread to trio: (kind, payload, stderr bytes)
_CHUNK, _DONE, _FAILED, _ABORTED = range(4)


def _cgi_head(status: str | None, headers: list[tuple[str, str]]) -> bytes:
    """The CGI header block of a response (Status line, fields, blank line)."""
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return f"Status: {status}\r\n{head}\r\n".encode("latin-1")


class _Aborted(Exception):
    """Raised inside the app's thread when the request is aborted."""


class WSGIInput:
    """``wsgi.input``: the request body, read with blocking calls from the app thread."""

    __slots__ = ("_body",)

    def __init__(self, body: RequestBody) -> None:
        self._body = body

    def read(self, size: int | None = -1) -> bytes:
        return self._body.read_blocking(-1 if size is None else size)

    def readline(self, size: int | None = -1) -> bytes:
        return self._body.readline_blocking(-1 if size is None else size)

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines, total = [], 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


class WSGIErrors:
    """``wsgi.errors``: text lines for the web server's error log (FastCGI STDERR)."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, text: str) -> int:
        self._parts.append(text.encode("utf-8", "replace"))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        parts, self._parts = self._parts, []
        return b"".join(parts)


class _Call:
    """One WSGI request, running in a pool thread."""

    __slots__ = (
        "app", "environ", "errors", "handoff", "status", "headers",
        "headers_sent", "batch", "batch_size", "resume", "aborted", "ctx", "batch_limit",
        "lock", "batch_since", "delivering", "streamed", "elapsed", "cpu", "others",
    )

    def __init__(self, app: Callable, environ: dict, errors: WSGIErrors, ctx: RequestContext) -> None:
        self.app = app
        self.ctx = ctx
        self.environ = environ
        self.errors = errors
        self.handoff = Handoff()
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.headers_sent = False
        self.batch: list[bytes] = []
        self.batch_size = 0
        #: Made when the thread first hands output over mid-response.
        self.resume: threading.Event | None = None
        self.aborted = False
        #: Output held before a hand-off to trio; never, on the loop's thread.
        self.batch_limit = BATCH_SIZE
        #: Guards the batch, which the loop's ``OutputFlusher`` may take too.
        self.lock = threading.Lock()
        #: When the oldest byte of the batch arrived (time.monotonic()).
        self.batch_since = 0.0
        #: A batch taken by the thread is on its way to trio: the flusher
        #: waits, or later bytes would overtake it.
        self.delivering = False
        #: Output left before the end of the response (taken when it ends).
        self.streamed = False
        #: Seconds ``run`` spent calling the app and draining its answer.
        self.elapsed = 0.0
        #: Of them, the thread's own CPU seconds; and the other threads' meanwhile.
        self.cpu = 0.0
        self.others = 0.0

    def tell(self, quick: InlinePolicy, kind: int, data: bytes) -> None:
        """Tell ``quick`` how this call went in its thread, from its first outcome (``kind``, ``data``)."""
        size = -1 if kind == _CHUNK or self.streamed else len(data)
        quick.ran_in_thread(self.elapsed, size, self.cpu, self.others)

    # --- PEP 3333 callables ------------------------------------------------

    def start_response(self, status: str, headers: list, exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response called twice without exc_info")
        if type(status) is not str or len(status) < 4 or not status[:3].isdigit() or status[3] != " ":
            raise ValueError(f"WSGI status must be a str like '200 OK', got {status!r}")
        for name, value in headers:
            if type(name) is not str or type(value) is not str:
                raise TypeError(f"WSGI header {name!r}: {value!r} must be a pair of str")
            if "\n" in value or "\r" in value or ":" in name or "\n" in name or "\r" in name:
                raise ValueError(f"WSGI header {name!r}: {value!r} holds a line break or colon")
        self.status = status
        self.headers = headers
        return self.write

    def write(self, data: bytes) -> None:
        if type(data) is not bytes:
            raise TypeError(f"WSGI body chunks must be bytes, got {type(data).__name__}")
        if self.status is None:
            raise AssertionError("write() before start_response()")
        if data:
            self._add(data)

    # --- the thread's side of the hand-off ---------------------------------

    def _add(self, data: bytes) -> None:
        with self.lock:
            if not self.batch:
                self.batch_since = time.monotonic()
            self.batch.append(data)
            self.batch_size += len(data)
            full = self.batch_size >= self.batch_limit
        if full:
            self._emit()

    def _take_output(self) -> bytes:
        """The pending output, preceded by the CGI header block the first time (hold ``lock``)."""
        parts = self.batch
        if not self.headers_sent:
            self.headers_sent = True
            parts.insert(0, _cgi_head(self.status, self.headers))
        self.batch = []
        self.batch_size = 0
        return b"".join(parts)

    def abort(self) -> None:
        """From trio: the request is over; make the thread stop at its next step."""
        self.aborted = True
        resume = self.resume
        if resume is not None:
            resume.set()

    def _emit(self) -> None:
        if self.aborted or self.handoff.closed:
            raise _Aborted
        with self.lock:
            data = self._take_output()
            self.delivering = True
        resume = self.resume
        if resume is None:
            resume = self.resume = threading.Event()
        else:
            resume.clear()
        # abort() may have run before the event existed or was cleared: it
        # then set nothing this wait would see.
        if self.aborted:
            raise _Aborted
        self.handoff.deliver((_CHUNK, data, self.errors.take()))
        with waits_for_loop:
            resume.wait()
        if self.aborted:
            raise _Aborted

    def _stop_flushing(self) -> None:
        # The outcome is on its way: what is still batched belongs to it.
        with self.lock:
            self.delivering = True

    def run(self) -> None:
        """In a pool thread: call the app, drain its response, deliver the outcome."""
        # Published for the slow log (this thread's stack) and the terminate
        # timeout (is the app's code still running after its request ended?).
        self.ctx.app_thread = threading.get_ident()
        began, cpu, process = time.perf_counter(), time.thread_time(), time.process_time()
        try:
            outcome = self._run()
        finally:
            self.elapsed = time.perf_counter() - began
            self.cpu = time.thread_time() - cpu
            self.others = time.process_time() - process - self.cpu
            self.ctx.app_thread = None
        self.handoff.deliver(outcome)

    def _run(self) -> tuple[int, bytes, bytes]:
        try:
            result = self.app(self.environ, self.start_response)
            try:
                for chunk in result:
                    if type(chunk) is not bytes:
                        raise TypeError(f"WSGI body chunks must be bytes, got {type(chunk).__name__}")
                    if chunk:
                        if self.status is None:
                            raise AssertionError("the app returned body before start_response()")
                        self._add(chunk)
                    if self.aborted or self.handoff.closed:
                        raise _Aborted
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
            if self.status is None:
                raise AssertionError("the app returned without calling start_response()")
            with self.lock:
                self.delivering = True
                self.streamed = self.headers_sent
                return (_DONE, self._take_output(), self.errors.take())
        except (_Aborted, BodyAborted):
            self._stop_flushing()
            return (_ABORTED, b"", b"")
        except BaseException as exc:  # the app's failure is reported, never raised in the pool
            self._stop_flushing()
            log.error("WSGI app failed: %s %s\n%s", self.environ.get("REQUEST_METHOD"),
                      self.environ.get("REQUEST_URI", ""), traceback.format_exc().rstrip())
            line = f"fcgi-cluster: app raised {type(exc).__name__}: {exc}\n".encode("utf-8", "replace")
            return (_FAILED, b"", self.errors.take() + line)


class OutputFlusher:
    """Sends the output of app threads that leave it waiting past ``FLUSH_DELAY``.

    An app that yields a block and then works or blocks before its next one
    would otherwise have that block held in its thread's batch. One task for
    all requests looks every half ``FLUSH_DELAY`` while any is running (and
    sleeps otherwise); a request costs a set entry. It leaves alone a batch
    the thread is handing over itself, and a connection already holding more
    than its ``output_buffer`` (the thread's own hand-off then waits for room).
    """

    def __init__(self) -> None:
        self._calls: set[_Call] = set()
        self._lot = trio.lowlevel.ParkingLot()

    def add(self, call: _Call) -> None:
        if not self._calls and self._lot:
            self._lot.unpark()
        self._calls.add(call)

    def discard(self, call: _Call) -> None:
        self._calls.discard(call)

    def flush_due(self, now: float) -> None:
        """Send every batch older than ``FLUSH_DELAY`` at ``now`` that may be sent."""
        for call in self._calls:
            if not call.batch or call.delivering or call.ctx.over_high_water:
                continue
            with call.lock:
                if call.delivering or not call.batch or now - call.batch_since < FLUSH_DELAY:
                    continue
                data = call._take_output()
            call.ctx.send_nowait(data)

    async def run(self) -> None:
        while True:
            while not self._calls:
                await self._lot.park()
            await trio.sleep(FLUSH_DELAY / 2)
            self.flush_due(time.monotonic())


class WSGIHandler:
    """Serve requests of one WSGI app.

    Needs no cancel scope per request: it waits only for its app thread
    (``Handoff.receive``, which ``ctx.interrupt`` stops) or, on the loop's
    thread, for the body (which an abort ends); the session's load under
    ``auto_start`` gets a scope of its own, which ``ctx.interrupt`` cancels.

    Args:
        app: the WSGI callable.
        pool: the threads that run it.
        config: root_path and friends.
        extra_environ: keys added to every environ (e.g. the listen address).
    """

    needs_cancel_scope = False

    def __init__(self, app: Callable, pool: ThreadPool, config: WorkerConfig, extra_environ: dict[str, Any]) -> None:
        self.app = app
        self.pool = pool
        #: The session middleware when it may load and save sessions on this
        #: loop around a request (``session.auto_start``, or a loop store:
        #: it ``preloads`` the requests to), else None.
        self.session_ends = app if getattr(app, "loop_ends", False) else None
        #: Sends output that waits too long in an app thread; run ``flusher.run``.
        self.flusher = OutputFlusher()
        self.root_path = config.root_path
        #: Run the app on the event loop's thread (``threads = 0``).
        self.inline = config.threads == 0
        #: With threads: may this app's next quick call skip them (``_inline``)?
        self.quick = InlinePolicy()
        self.inline_quick = config.inline_quick
        self.base = {
            "wsgi.version": (1, 0),
            "wsgi.multithread": not self.inline,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
            "SCRIPT_NAME": "",
            "PATH_INFO": "",
            "QUERY_STRING": "",
            "REQUEST_METHOD": "GET",
            "SERVER_NAME": "localhost",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            **extra_environ,
        }

    def environ(self, ctx: RequestContext) -> tuple[dict[str, Any], WSGIErrors]:
        env = self.base.copy()
        env.update(cgi_environ(ctx.params))
        env["SCRIPT_NAME"], env["PATH_INFO"] = split_path(env, self.root_path)
        https = env.get("HTTPS", "").lower() in ("on", "1")
        env["wsgi.url_scheme"] = "https" if https else env.get("REQUEST_SCHEME") or "http"
        errors = WSGIErrors()
        env["wsgi.input"] = WSGIInput(ctx.body)
        env["wsgi.errors"] = errors
        return env, errors

    async def __call__(self, ctx: RequestContext) -> None:
        if ctx.cancelled:  # aborted before this task first ran (in the same read as the request)
            raise RequestCancelled()
        environ, errors = self.environ(ctx)
        ends = self.session_ends
        if ends is None or not ends.preloads(ctx.params):
            call, kind, data = await self._run_app(ctx, environ, errors)
            self._finish(ctx, call, kind, data)
            return
        preloaded = None
        with trio.CancelScope() as loading:
            ctx.interrupt = lambda _error: loading.cancel()
            preloaded = await ends.begin(environ)
        ctx.interrupt = None
        try:
            if ctx.cancelled:
                raise RequestCancelled()
            call, kind, data = await self._run_app(ctx, environ, errors)
        except BaseException:
            if preloaded is not None:
                with trio.CancelScope(shield=True):
                    await ends.end(preloaded, False)
            raise
        if kind == _ABORTED:
            with trio.CancelScope(shield=True):
                await ends.end(preloaded, False)
        else:
            try:
                answer = await ends.end(preloaded, kind == _DONE)
            except Exception as exc:
                log.error("WSGI session save failed: %s %s\n%s", environ.get("REQUEST_METHOD"),
                          environ.get("REQUEST_URI", ""), traceback.format_exc().rstrip())
                ctx.log(f"fcgi-cluster: session save raised {type(exc).__name__}: {exc}\n".encode("utf-8", "replace"))
                kind, data = _FAILED, b""
            else:
                if answer is not None:
                    if call.streamed:
                        kind, data = _FAILED, b""  # the head is out: end it short
                    else:
                        status, headers, body = answer
                        data = _cgi_head(status, headers) + body
        self._finish(ctx, call, kind, data)

    def start_nowait(self, ctx: RequestContext, done: Callable[[], None], spawn: Callable[..., object]) -> bool:
        """Start a request in the thread pool with no task of its own; False when it needs one.

        The common request (app threads, no sessions on the loop) needs none:
        its outcome arrives on the loop with the handoff's callback, which
        ends the request there. An answer streamed in pieces goes on in a task
        (``spawn``) from its first piece, as ``_run_app`` would have.

        Args:
            ctx: the request, not yet started.
            done: called once when the request is over, from the loop (the
                connection's bookkeeping, what its task would have done after
                the handler).
            spawn: the connection's ``nursery.start_soon``.
        """
        ends = self.session_ends
        if self.inline or ctx.cancelled or (ends is not None and ends.preloads(ctx.params)):
            return False
        environ, errors = self.environ(ctx)
        call = _Call(self.app, environ, errors, ctx)
        quick = self.quick
        if quick.inline and self.inline_quick and ctx.body.buffered_whole:
            self._run_inline(ctx, call, quick)
            done()
            return True
        handoff = call.handoff
        flusher = self.flusher

        def over() -> None:
            ctx.interrupt = None
            handoff.callback = None
            flusher.discard(call)

        def interrupted(_error: BaseException) -> None:
            # ABORT_REQUEST, or the connection going away: as a cancelled
            # _run_app, answer now; the thread stops at its next step.
            handoff.closed = True
            call.abort()
            over()
            done()

        def delivered(value: tuple[int, bytes, bytes]) -> None:
            try:
                kind, data, stderr = value
                call.tell(quick, kind, data)
                ctx.log(stderr)
                over()
                if kind == _CHUNK:
                    try:
                        spawn(self._stream_rest, ctx, call, data, done)
                        return
                    except RuntimeError:  # the connection is closing: nobody will read the rest
                        call.abort()  # the thread waits for its piece to be taken: let it stop
                        ctx.cancelled = True
                else:
                    self._finish(ctx, call, kind, data)
            except Exception:  # on the loop, outside any task: never raised there
                log.exception("request %d failed inside the worker", ctx.request_id)
            done()

        flusher.add(call)
        ctx.interrupt = interrupted
        handoff.callback = delivered
        self.pool.start(call.run)
        return True

    def _run_inline(self, ctx: RequestContext, call: _Call, quick: InlinePolicy) -> None:
        """Run a call proven quick on the loop's thread and end its request (``_inline``)."""
        call.batch_limit = math.inf
        threads_busy = self.pool.busy > 0
        began = quick.clock()
        kind, data, stderr = call._run()
        quick.ran_inline_since(began, len(data), threads_busy)
        try:
            ctx.log(stderr)
            self._finish(ctx, call, kind, data)
        except Exception:  # on the loop, outside any task: never raised there
            log.exception("request %d failed inside the worker", ctx.request_id)

    async def _stream_rest(self, ctx: RequestContext, call: _Call, first: bytes, done: Callable[[], None]) -> None:
        """``start_nowait``'s request from its first streamed piece on, in a task."""
        try:
            call, kind, data = await self._run_app(ctx, call.environ, call.errors, call=call, first=first)
            self._finish(ctx, call, kind, data)
        except RequestCancelled:
            pass
        except Exception:
            log.exception("request %d failed inside the worker", ctx.request_id)
        finally:
            done()

    async def _run_app(
        self, ctx: RequestContext, environ: dict, errors: WSGIErrors, *, call: _Call | None = None, first: bytes | None = None,
    ) -> tuple[_Call, int, bytes]:
        """Call the app (on this thread, or in a pool thread) and take its outcome.

        ``call`` and ``first``: a call running already, whose first streamed
        piece arrived (``start_nowait``): go on from there.
        """
        if call is None:
            call = _Call(self.app, environ, errors, ctx)
        if self.inline:
            whole = await ctx.body.wait_buffered()
            if ctx.cancelled:
                raise RequestCancelled()
            if whole:
                call.batch_limit = math.inf
                kind, data, stderr = call._run()
                ctx.log(stderr)
                return call, kind, data
        self.flusher.add(call)
        ctx.interrupt = call.handoff.interrupt
        if first is None:
            self.pool.start(call.run)
        try:
            while True:
                if first is not None:
                    kind, data, stderr = _CHUNK, first, b""
                    first = None
                else:
                    kind, data, stderr = await call.handoff.receive()
                if ctx.cancelled:
                    raise RequestCancelled()
                ctx.log(stderr)
                if kind != _CHUNK:
                    break
                ctx.send_nowait(data)
                call.delivering = False  # queued: the flusher may send what follows
                if ctx.over_high_water:
                    # The web server reads slowly (rare): this wait gets a scope of its own.
                    with trio.CancelScope() as waiting:
                        ctx.interrupt = lambda _error: waiting.cancel()
                        await ctx.wait_for_space()
                    ctx.interrupt = call.handoff.interrupt
                    if ctx.cancelled:
                        raise RequestCancelled()
                call.resume.set()  # type: ignore[union-attr]  # made before the chunk
        except BaseException:
            # Cancelled (aborted by the web server, or the worker is stopping):
            # answer now; the thread stops at its next step and closes the app.
            call.abort()
            raise
        finally:
            ctx.interrupt = None
            self.flusher.discard(call)
        return call, kind, data

    @staticmethod
    def _finish(ctx: RequestContext, call: _Call, kind: int, data: bytes) -> None:
        if kind == _DONE:
            ctx.end(0, data)
        elif kind == _FAILED:
            ctx.end(1, b"" if call.headers_sent else _ERROR_500)
        # _ABORTED: the connection ends the request.
