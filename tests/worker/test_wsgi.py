"""The WSGI adapter (PEP 3333) behind a real FastCGI exchange."""

from __future__ import annotations

import hashlib
import json
import sys
import threading

import pytest
import trio

from fcgi_cluster.protocol import ProtocolStatus, Stdin
from fcgi_cluster.worker import WorkerConfig
from workers import echo, hello

from ._harness import params, serving


async def test_hello_answers_cgi_response():
    async with serving(hello.app) as web:
        answer = await web.request(params("/"))
    assert answer.head.split(b"\r\n")[0] == b"Status: 200 OK"
    assert b"Content-Type: text/plain" in answer.head
    assert answer.body == b"hello"
    assert answer.end.app_status == 0
    assert answer.end.protocol_status is ProtocolStatus.REQUEST_COMPLETE


async def test_environ_from_params():
    seen = {}

    def app(environ, start_response):
        seen.update(environ)
        start_response("200 OK", [])
        return []

    p = params("/shop/cart%20x?a=1", method="POST", HTTPS="on", HTTP_X_TEST="yes", CONTENT_TYPE="text/plain")
    async with serving(app, config=WorkerConfig(threads=2, root_path="/shop")) as web:
        await web.request(p)
    assert seen["REQUEST_METHOD"] == "POST"
    assert seen["QUERY_STRING"] == "a=1"
    assert seen["HTTP_X_TEST"] == "yes"
    assert seen["CONTENT_TYPE"] == "text/plain"
    # nginx's stock params carry no PATH_INFO: the path comes from REQUEST_URI, mounted at root_path.
    assert (seen["SCRIPT_NAME"], seen["PATH_INFO"]) == ("/shop", "/cart x")
    assert seen["wsgi.url_scheme"] == "https"
    assert seen["wsgi.version"] == (1, 0)
    assert seen["wsgi.multithread"] is True and seen["wsgi.run_once"] is False
    assert seen["fcgi_cluster.listen"] == "memory"
    assert all(type(v) is str for k, v in seen.items() if k.isupper())


async def test_path_info_from_web_server_is_trusted():
    seen = {}

    def app(environ, start_response):
        seen.update(environ)
        start_response("200 OK", [])
        return []

    async with serving(app) as web:
        await web.request(params("/index.py/a/b", SCRIPT_NAME="/index.py", PATH_INFO="/a/b"))
    assert (seen["SCRIPT_NAME"], seen["PATH_INFO"]) == ("/index.py", "/a/b")


async def test_non_ascii_params_are_latin1_native_strings():
    seen = {}

    def app(environ, start_response):
        seen.update(environ)
        start_response("200 OK", [])
        return []

    p = params("/")
    p[b"HTTP_X_NAME"] = "héllo".encode("utf-8")
    async with serving(app) as web:
        await web.request(p)
    # PEP 3333: bytes as latin-1 code points; the app re-encodes to get UTF-8 back.
    assert seen["HTTP_X_NAME"].encode("latin-1").decode("utf-8") == "héllo"


async def test_large_body_is_streamed_to_wsgi_input_in_order():
    chunks = [bytes([i]) * 50_000 for i in range(40)]  # 2 MB
    expected = hashlib.sha256(b"".join(chunks)).hexdigest()
    config = WorkerConfig(threads=2, input_buffer=64 * 1024)
    async with serving(echo.app, config=config) as web:
        rid = await web.start(params("/", method="POST", CONTENT_LENGTH=str(2_000_000)), end_body=False)
        for chunk in chunks:
            await web.send_body(rid, chunk)
            # The worker holds at most input_buffer bytes plus one chunk per request.
            assert web.worker.requests[rid].body._size <= 64 * 1024 + 50_000 if rid in web.worker.requests else True
        await web.send_body(rid, b"")
        answer = web.answers[rid]
        with trio.fail_after(10):
            await answer.done.wait()
    doc = json.loads(answer.body)
    assert doc["body_length"] == 2_000_000
    assert doc["body_sha256"] == expected


@pytest.mark.parametrize("threads", [2, 0])
async def test_more_interleaved_uploads_than_threads_on_one_connection_all_finish(threads):
    # Two threads (or the one kept for large bodies by threads = 0), six uploads
    # over one connection, their records interleaved: the apps holding the threads
    # wait for bodies that come after the others'. Those overflow to a temporary
    # file rather than stop the connection, which would leave everyone waiting for
    # good. With threads = 0 every body is first awaited on the loop, to run its
    # app there when whole: one too large for that must stop counting as read.
    config = WorkerConfig(threads=threads, input_buffer=64 * 1024)
    uploads = [[bytes([n, r]) * 32 * 1024 for r in range(5)] for n in range(6)]  # 5 x 64 KiB each
    async with serving(echo.app, config=config) as web:
        size = str(5 * 64 * 1024)
        rids = [await web.start(params("/", method="POST", CONTENT_LENGTH=size), end_body=False) for _ in uploads]
        spooled = 0
        with trio.fail_after(10):
            for r in range(5):
                for rid, chunks in zip(rids, uploads):
                    out = web.core.send(Stdin(rid, chunks[r]))
                    if r == 4:  # the end with the last bytes: the app answers as soon as it has them all
                        out += web.core.send(Stdin(rid, b""))
                    await web.stream.send_all(out)
                await trio.sleep(0.01)
                spooled = max([spooled] + [ctx.body.spooled for ctx in web.worker.requests.values()])
            for rid in rids:
                await web.answers[rid].done.wait()
    assert spooled > 0  # the waiting requests' bodies did go to the file
    for rid, chunks in zip(rids, uploads):
        doc = json.loads(web.answers[rid].body)
        assert doc["body_length"] == 5 * 64 * 1024
        assert doc["body_sha256"] == hashlib.sha256(b"".join(chunks)).hexdigest()


async def test_wsgi_input_readline_from_a_spooled_body():
    lines = [b"line %d " % i + b"x" * 1000 + b"\n" for i in range(400)]  # 400 KB
    seen = []
    running = threading.Event()

    def app(environ, start_response):
        running.set()
        seen.extend(environ["wsgi.input"])
        start_response("200 OK", [])
        return [b"ok"]

    config = WorkerConfig(threads=1, input_buffer=64 * 1024)
    async with serving(app, config=config) as web:
        # The one thread is busy with a first request that waits for its body,
        # so the second request's lines overflow to its file before it reads.
        first = await web.start(params("/", method="POST", CONTENT_LENGTH="3"), end_body=False)
        with trio.fail_after(10):
            while not running.is_set():
                await trio.sleep(0.005)
        second = await web.start(params("/", method="POST", CONTENT_LENGTH=str(sum(map(len, lines)))), b"".join(lines))
        await trio.sleep(0.05)
        assert web.worker.requests[second].body.spooled > 0
        await web.send_body(first, b"abc")
        await web.send_body(first, b"")
        with trio.fail_after(10):
            await web.answers[first].done.wait()
            await web.answers[second].done.wait()
    assert seen == [b"abc"] + lines


async def test_wsgi_input_readline_and_iteration():
    lines_seen = []

    def app(environ, start_response):
        stream = environ["wsgi.input"]
        lines_seen.append(stream.readline())
        lines_seen.append(stream.readline(3))
        lines_seen.extend(stream)
        start_response("200 OK", [])
        return []

    async with serving(app) as web:
        await web.request(params("/", method="POST"), b"first\nsecond\nthird")
    assert lines_seen == [b"first\n", b"sec", b"ond\n", b"third"]


async def test_wsgi_errors_go_to_fcgi_stderr():
    def app(environ, start_response):
        environ["wsgi.errors"].write("something odd\n")
        start_response("200 OK", [])
        return [b"ok"]

    async with serving(app) as web:
        answer = await web.request(params("/"))
    assert answer.stderr == b"something odd\n"
    assert answer.body == b"ok"


async def test_write_callable_and_iterable_both_reach_the_client():
    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"from write, ")
        return [b"from ", b"", b"iterable"]

    async with serving(app) as web:
        answer = await web.request(params("/"))
    assert answer.body == b"from write, from iterable"


async def test_exc_info_replaces_headers_before_body():
    def app(environ, start_response):
        start_response("200 OK", [("X-First", "1")])
        try:
            raise ValueError("late failure")
        except ValueError:
            start_response("503 Service Unavailable", [("X-Second", "1")], sys.exc_info())
        return [b"sorry"]

    async with serving(app) as web:
        answer = await web.request(params("/"))
    assert answer.status == 503
    assert b"X-Second" in answer.head and b"X-First" not in answer.head


class Closing:
    """A response iterable that records close() and can fail midway."""

    def __init__(self, parts, fail_at=None, gate=None):
        self.parts = parts
        self.fail_at = fail_at
        self.gate = gate
        self.closed = threading.Event()

    def __iter__(self):
        for i, part in enumerate(self.parts):
            if i == self.fail_at:
                raise RuntimeError("broken generator")
            if self.gate is not None:
                self.gate.wait(5)
            yield part

    def close(self):
        self.closed.set()


async def test_close_is_called_on_success_and_on_failure():
    ok = Closing([b"a", b"b"])
    broken = Closing([b"a", b"b"], fail_at=1)

    def app(environ, start_response):
        start_response("200 OK", [])
        return ok if environ["PATH_INFO"] == "/ok" else broken

    async with serving(app) as web:
        good = await web.request(params("/ok"))
        bad = await web.request(params("/broken"))
    assert good.body == b"ab" and ok.closed.is_set()
    assert broken.closed.is_set()
    # The failure came before any body was handed over: a clean 500.
    assert bad.status == 500 and b"broken generator" not in bad.stdout
    assert b"RuntimeError" in bad.stderr


async def test_app_exception_gives_500_without_traceback_and_worker_goes_on():
    async with serving(echo.app) as web:
        failed = await web.request(params("/?raise=1"))
        after = await web.request(params("/?status=201"))
    assert failed.status == 500
    assert b"Traceback" not in failed.stdout and b"raise=1" not in failed.stdout
    assert b"RuntimeError" in failed.stderr and b"Traceback" not in failed.stderr
    assert after.status == 201


async def test_large_response_is_split_into_records_and_complete():
    async with serving(echo.app) as web:
        answer = await web.request(params("/?size=3000000"))
    assert len(answer.body) == 3_000_000
    assert set(answer.body) == {ord("x")}


async def test_a_streamed_chunk_leaves_while_the_app_waits_before_its_next_one():
    # PEP 3333: a server must not delay a yielded block. The app yields a few
    # bytes and then waits, inside its generator, until the web server has them.
    seen = threading.Event()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"first "
        if not seen.wait(10):
            yield b"(never seen) "
        yield b"second"

    async with serving(app) as web:
        rid = await web.start(params("/"))
        with trio.fail_after(5):
            while b"first" not in web.answers[rid].stdout:
                await trio.sleep(0.005)
        assert b"second" not in web.answers[rid].stdout
        seen.set()
        with trio.fail_after(5):
            await web.answers[rid].done.wait()
    assert web.answers[rid].body == b"first second"
    assert web.answers[rid].head.startswith(b"Status: 200 OK\r\n")


async def test_abort_cancels_a_streaming_request_and_closes_its_iterable():
    gate = threading.Event()
    slow = Closing([b"x" * 70_000] * 1000, gate=gate)

    def app(environ, start_response):
        start_response("200 OK", [])
        return slow if environ["PATH_INFO"] == "/slow" else [b"next"]

    async with serving(app) as web:
        rid = await web.start(params("/slow"))
        gate.set()
        with trio.fail_after(5):
            while len(web.answers[rid].stdout) < 70_000:
                await trio.sleep(0.01)
        await web.abort(rid)
        with trio.fail_after(5):
            while not slow.closed.is_set():
                await trio.sleep(0.01)
        # The connection serves the next request as usual.
        after = await web.request(params("/next"))
    assert after.body == b"next"
    # It stopped early: far fewer than the 70 MB it would have produced.
    assert len(web.answers[rid].stdout) < 10_000_000


async def test_without_keep_conn_the_worker_closes_after_the_answer():
    async with serving(hello.app) as web:
        answer = await web.request(params("/"), keep_conn=False)
        with trio.fail_after(5):
            await web.closed.wait()
    assert answer.body == b"hello"


async def test_multiplexed_requests_run_concurrently():
    barrier = threading.Barrier(5, timeout=5)

    def app(environ, start_response):
        barrier.wait()  # passes only if five requests are inside the app at once
        start_response("200 OK", [])
        return [environ["QUERY_STRING"].encode()]

    async with serving(app) as web:
        rids = [await web.start(params(f"/?n={i}")) for i in range(5)]
        with trio.fail_after(10):
            for rid in rids:
                await web.answers[rid].done.wait()
    assert sorted(web.answers[r].body for r in rids) == [f"n={i}".encode() for i in range(5)]


async def test_bad_status_from_app_is_a_500():
    def app(environ, start_response):
        start_response("OK", [])
        return [b"never"]

    async with serving(app) as web:
        answer = await web.request(params("/"))
    assert answer.status == 500 and b"never" not in answer.stdout


@pytest.mark.parametrize("header", [("X-Bad", "a\r\nSet-Cookie: x=1"), ("X:Bad", "v")])
async def test_header_injection_from_app_is_refused(header):
    def app(environ, start_response):
        start_response("200 OK", [header])
        return [b"never"]

    async with serving(app) as web:
        answer = await web.request(params("/"))
    assert answer.status == 500 and b"Set-Cookie" not in answer.stdout


# --- threads = 0: the app on the event loop's thread, as a php-fpm child ---

INLINE = WorkerConfig(threads=0, input_buffer=64 * 1024)


async def test_inline_app_runs_on_the_loop_thread_and_reads_its_whole_body():
    seen = {}

    def app(environ, start_response):
        seen["thread"] = threading.get_ident()
        seen["multithread"] = environ["wsgi.multithread"]
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [hashlib.sha256(body).hexdigest().encode()]

    body = bytes(range(256)) * 100  # 25.6 KB in several records, under input_buffer
    async with serving(app, config=INLINE) as web:
        answer = await web.request(params("/", method="POST", CONTENT_LENGTH=str(len(body))), body)
    assert answer.body == hashlib.sha256(body).hexdigest().encode()
    assert seen == {"thread": threading.get_ident(), "multithread": False}


async def test_inline_body_larger_than_the_buffer_goes_to_a_thread():
    threads = []

    def app(environ, start_response):
        threads.append(threading.get_ident())
        body = environ["wsgi.input"].read()
        start_response("200 OK", [])
        return [b"%d" % len(body)]

    big = b"x" * (1024 * 1024)
    async with serving(app, config=INLINE) as web:
        answer = await web.request(params("/", method="POST", CONTENT_LENGTH=str(len(big))), big)
        small = await web.request(params("/"))
    assert answer.body == b"%d" % len(big) and small.body == b"0"
    assert threads[0] != threading.get_ident() and threads[1] == threading.get_ident()


async def test_inline_large_response_and_failure():
    async with serving(echo.app, config=INLINE) as web:
        big = await web.request(params("/?size=300000"))
    assert big.status == 200 and len(big.body) == 300_000

    def broken(environ, start_response):
        raise RuntimeError("secret detail")

    async with serving(broken, config=INLINE) as web:
        answer = await web.request(params("/"))
        again = await web.request(params("/"))
    assert answer.status == 500 and b"secret" not in answer.body and answer.end.app_status == 1
    assert again.status == 500  # the worker goes on


class _RecordingContext:
    """What OutputFlusher uses of a request context: its sends and the connection's fill."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.over_high_water = False

    def send_nowait(self, data: bytes) -> None:
        self.sent.append(data)


def test_the_flusher_sends_only_old_batches_and_never_past_the_output_buffer():
    from fcgi_cluster.worker._wsgi import FLUSH_DELAY, OutputFlusher, WSGIErrors, _Call

    async def main():
        ctx = _RecordingContext()
        call = _Call(lambda environ, start_response: [], {}, WSGIErrors(), ctx)  # type: ignore[arg-type]
        call.start_response("200 OK", [("X-A", "1")])
        flusher = OutputFlusher()
        flusher.add(call)
        call.write(b"early")
        born = call.batch_since
        flusher.flush_due(born + FLUSH_DELAY / 2)
        assert ctx.sent == []  # not old enough yet
        ctx.over_high_water = True
        flusher.flush_due(born + 2 * FLUSH_DELAY)
        assert ctx.sent == []  # the connection is full: the thread's own hand-off waits for room
        ctx.over_high_water = False
        call.delivering = True
        flusher.flush_due(born + 2 * FLUSH_DELAY)
        assert ctx.sent == []  # the thread is handing a batch over: nothing may overtake it
        call.delivering = False
        flusher.flush_due(born + 2 * FLUSH_DELAY)
        assert ctx.sent == [b"Status: 200 OK\r\nX-A: 1\r\n\r\nearly"]
        call.write(b"later")
        flusher.flush_due(call.batch_since + 2 * FLUSH_DELAY)
        assert ctx.sent[1:] == [b"later"]  # the head goes once
        flusher.discard(call)

    trio.run(main)


async def test_an_abort_while_the_app_waits_for_its_body_on_the_loop_ends_the_request_unrun():
    ran = []

    def app(environ, start_response):
        ran.append(environ["REQUEST_METHOD"])
        start_response("200 OK", [])
        return [b"ran"]

    async with serving(app, config=WorkerConfig(threads=0)) as web:
        rid = await web.start(params("/", method="POST", CONTENT_LENGTH="100"), b"only part", end_body=False)
        await trio.sleep(0.05)
        assert list(web.worker.requests) == [rid]  # type: ignore[union-attr]
        await web.abort(rid)
        # (The web server's core drops the END_REQUEST of a request it aborted.)
        with trio.fail_after(5):
            while web.worker.requests:  # type: ignore[union-attr]
                await trio.sleep(0.01)
        assert web.answers[rid].stdout == b""
        after = await web.request(params("/"))
    assert after.body == b"ran"
    assert ran == ["GET"]  # the aborted POST never reached the app


async def test_an_abort_while_the_answer_waits_for_room_ends_it_and_closes_the_iterable():
    # The answer is far larger than the connection's output buffer and the web
    # server does not read: the handler waits for room when the abort comes.
    slow = Closing([b"x" * 300_000] * 100)

    def app(environ, start_response):
        start_response("200 OK", [])
        return slow if environ["PATH_INFO"] == "/big" else [b"next"]

    async with serving(app, config=WorkerConfig(threads=2, output_buffer=64 * 1024), lockstep=True) as web:
        web.paused = True
        rid = await web.start(params("/big"))
        with trio.fail_after(5):
            while not web.worker.over_high_water:  # type: ignore[union-attr]
                await trio.sleep(0.01)
        await web.abort(rid)
        web.paused = False
        with trio.fail_after(5):
            while not slow.closed.is_set() or web.worker.requests:  # type: ignore[union-attr]
                await trio.sleep(0.01)
        after = await web.request(params("/next"))
    assert after.body == b"next"
    assert len(web.answers[rid].stdout) < 30_000_000


async def test_a_request_aborted_in_the_same_write_as_it_never_reaches_the_app():
    from fcgi_cluster.protocol import AbortRequest, Request

    from ._harness import Answer

    ran = []

    def app(environ, start_response):
        ran.append(environ["PATH_INFO"])
        start_response("200 OK", [])
        return [b"ran"]

    async with serving(app) as web:
        # BEGIN_REQUEST, PARAMS, STDIN and ABORT_REQUEST in one write: the worker
        # reads them together, before the request's task first runs.
        rid = web.core.new_request_id()
        web.answers[rid] = Answer()
        out = web.core.send(Request(rid, params("/aborted")))
        out += web.core.send(Stdin(rid, b""))
        out += web.core.send(AbortRequest(rid))
        await web.stream.send_all(out)
        after = await web.request(params("/next"))  # served after the aborted one, in order
    assert after.body == b"ran"
    assert ran == ["/next"]


async def test_requests_in_app_threads_take_no_task_of_their_own(monkeypatch):
    # With app threads and no sessions on the loop, a request is started from
    # the connection's reader and ended by its thread's outcome: no task per
    # request. Streaming, failures and aborts must answer as they do with one.
    from fcgi_cluster.worker import _connection

    tasks = []
    real = _connection.WorkerConnection._run_request

    async def run_request(self, ctx):
        tasks.append(ctx.request_id)
        await real(self, ctx)

    monkeypatch.setattr(_connection.WorkerConnection, "_run_request", run_request)
    gate = threading.Event()
    blocked = Closing([b"never"], gate=gate)

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/fail":
            raise RuntimeError("app failure")
        start_response("200 OK", [("Content-Type", "text/plain")])
        if path == "/big":
            return [b"y" * 100_000 for _ in range(20)]  # streamed in pieces
        if path == "/blocked":
            return blocked
        return [path.encode()]

    async with serving(app) as web:
        plain = [await web.request(params(f"/n{i}")) for i in range(3)]
        failed = await web.request(params("/fail"))
        big = await web.request(params("/big"))
        rid = await web.start(params("/blocked"))
        await trio.sleep(0.05)
        await web.abort(rid)
        after = await web.request(params("/after"))  # answered while /blocked's thread still waits
        gate.set()
        with trio.fail_after(5):
            while not blocked.closed.is_set():  # the thread was told to stop: its iterable closed
                await trio.sleep(0.01)
    assert [answer.body for answer in plain] == [b"/n0", b"/n1", b"/n2"]
    assert failed.status == 500 and failed.end.app_status == 1
    assert big.body == b"y" * 2_000_000 and big.end.app_status == 0
    assert web.answers[rid].stdout == b""  # nothing of the aborted one was sent
    assert after.body == b"/after"
    assert tasks == []


async def test_a_web_server_that_hangs_up_stops_requests_running_without_a_task(caplog):
    gate = threading.Event()
    blocked = Closing([b"never"] * 3, gate=gate)

    def app(environ, start_response):
        start_response("200 OK", [])
        return blocked

    caplog.set_level("ERROR")
    async with serving(app) as web:
        await web.start(params("/blocked"))
        await trio.sleep(0.05)
        assert len(web.worker.requests) == 1
        await web.stream.send_eof()  # the web server hangs up
        with trio.fail_after(5):
            while web.worker.requests:  # the request was ended when the connection went
                await trio.sleep(0.01)
        gate.set()
        with trio.fail_after(5):
            while not blocked.closed.is_set():  # and its thread stopped at its next step
                await trio.sleep(0.01)
    assert not [record for record in caplog.records if record.levelname == "ERROR"]
