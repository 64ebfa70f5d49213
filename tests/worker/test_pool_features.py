"""Pool features inside one worker process, served by the real server on loopback sockets.

allowed_clients, ping and status pages, the request hooks, request_terminate_timeout,
the slow log and the access log.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
import urllib.request
from contextlib import asynccontextmanager

import pytest
import trio

from fcgi_cluster.worker import WorkerConfig, serve
from fcgi_cluster.worker._features import PoolFeatures, _AllowList
from fcgi_cluster.worker._request_logs import reopen_logs
from fcgi_cluster.worker._status import PoolStatus, RequestHooks, RequestInfo
from tests._peers import REPO_ROOT, cgi_fcgi_request, free_port, nginx_fastcgi, python_executable, run_process
from workers import hello

from ._harness import WebServer, params


class Recorder(RequestHooks):
    """Hooks that keep what they were told."""

    def __init__(self) -> None:
        self.connections = 0
        self.started: list[RequestInfo] = []
        self.finished: list[RequestInfo] = []
        self.slow: list[RequestInfo] = []
        self.stuck: list[RequestInfo] = []

    def connection_accepted(self) -> None:
        self.connections += 1

    def request_started(self, info: RequestInfo) -> None:
        self.started.append(info)

    def request_finished(self, info: RequestInfo) -> None:
        self.finished.append(info)

    def slow_request(self, info: RequestInfo) -> None:
        self.slow.append(info)

    def request_stuck(self, info: RequestInfo) -> None:
        self.stuck.append(info)

    def assert_paired(self) -> None:
        assert len(self.started) == len(self.finished)
        assert {id(i) for i in self.started} == {id(i) for i in self.finished}


class CountingApp:
    """A WSGI app that counts its calls (to prove the worker answered alone)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, environ, start_response):
        self.calls += 1
        return hello.app(environ, start_response)


@asynccontextmanager
async def worker(app, config: WorkerConfig, listen: str | socket.socket = "127.0.0.1:0"):
    """Serve ``app``; yield (address, nursery)."""
    async with trio.open_nursery() as nursery:
        where = await nursery.start(lambda task_status: serve(app, listen, config, task_status=task_status))
        yield where, nursery
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def connect(where: str, nursery: trio.Nursery, source: str | None = None):
    """A web-server end (tests/_harness.WebServer) on a real TCP connection."""
    if where.startswith("/"):
        sock = trio.socket.socket(socket.AF_UNIX)
        await sock.connect(where)
    else:
        host, _, port = where.rpartition(":")
        host = host.strip("[]")
        sock = trio.socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        if source is not None:
            await sock.bind((source, 0))
        await sock.connect((host, int(port)))
    stream = trio.SocketStream(sock)
    web = WebServer(stream)
    try:
        async with trio.open_nursery() as reading:
            reading.start_soon(web.reader)
            yield web
            reading.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)


# --- listen.allowed_clients ------------------------------------------------


async def refused(where: str, source: str) -> bool:
    """Connect from ``source``, send a request: True when closed without an answer."""
    host, _, port = where.rpartition(":")
    host = host.strip("[]")
    sock = trio.socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    await sock.bind((source, 0))
    await sock.connect((host, int(port)))
    stream = trio.SocketStream(sock)
    async with stream:
        web = WebServer(stream)
        try:
            await web.start(params("/"))
            with trio.fail_after(5):
                data = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            return True
        return data == b""


async def test_client_not_in_allowed_clients_is_closed_before_the_app(caplog: pytest.LogCaptureFixture) -> None:
    app, hooks = CountingApp(), Recorder()
    config = WorkerConfig(allowed_clients=("127.0.0.1",), hooks=hooks)
    async with worker(app, config) as (where, nursery):
        assert await refused(where, "127.0.0.2")
        assert app.calls == 0 and hooks.connections == 0 and hooks.started == []
        async with connect(where, nursery, "127.0.0.1") as web:
            answer = await web.request(params("/"))
        assert answer.body == b"hello" and app.calls == 1 and hooks.connections == 1
    assert "connection from 127.0.0.2 refused: not in listen.allowed_clients" in caplog.text


async def test_allowed_clients_on_a_dual_stack_socket_sees_ipv4_mapped_peers() -> None:
    sock = socket.socket(socket.AF_INET6)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    app = CountingApp()
    async with worker(app, WorkerConfig(allowed_clients=("127.0.0.1", "::1")), sock) as (_, nursery):
        assert await refused(f"127.0.0.1:{port}", "127.0.0.2")  # seen as ::ffff:127.0.0.2
        async with connect(f"127.0.0.1:{port}", nursery, "127.0.0.1") as web:  # ::ffff:127.0.0.1
            assert (await web.request(params("/"))).body == b"hello"
        async with connect(f"[::1]:{port}", nursery) as web:
            assert (await web.request(params("/"))).body == b"hello"
    assert app.calls == 2


def test_allow_list_rules() -> None:
    allow = _AllowList(("127.0.0.1", "::1", "10.1.0.0/16", "::ffff:192.0.2.1"))
    assert allow.allows("127.0.0.1") and allow.allows("::ffff:127.0.0.1") and allow.allows("::1")
    assert allow.allows("10.1.200.3") and allow.allows("::ffff:10.1.0.9") and allow.allows("192.0.2.1")
    assert not allow.allows("127.0.0.2") and not allow.allows("10.2.0.1") and not allow.allows("::2")
    assert not allow.allows("not-an-address")


async def test_unix_socket_peers_are_always_allowed(tmp_path) -> None:
    config = WorkerConfig(allowed_clients=("192.0.2.1",))
    async with worker(hello.app, config, str(tmp_path / "w.sock")) as (where, nursery):
        async with connect(where, nursery) as web:
            assert (await web.request(params("/"))).body == b"hello"


# --- ping and status ----------------------------------------------------------


async def test_ping_and_status_are_answered_without_the_app() -> None:
    app, hooks = CountingApp(), Recorder()
    config = WorkerConfig(ping_path="/ping", ping_response="alive", status_path="/status", hooks=hooks, pool_name="site")
    async with worker(app, config) as (where, nursery):
        async with connect(where, nursery) as web:
            assert (await web.request(params("/x"))).body == b"hello"
            ping = await web.request(params("/ping"))
            # nginx's fastcgi_params send the path as SCRIPT_NAME; without it, REQUEST_URI counts.
            ping2 = await web.request(params("/ping?probe=1", SCRIPT_NAME=""))
            # A web server that split the path: SCRIPT_NAME + PATH_INFO.
            ping3 = await web.request(params("/ping", SCRIPT_NAME="", PATH_INFO="/ping"))
            mounted = await web.request(params("/app/ping", SCRIPT_NAME="/app", PATH_INFO="/ping"))
            head = await web.request(params("/ping", method="HEAD"))
            status = await web.request(params("/status?json&full"))
            text = await web.request(params("/status"))
    assert app.calls == 2 and mounted.body == b"hello"
    assert ping.status == 200 and ping.body == b"alive" and ping2.body == b"alive" and ping3.body == b"alive"
    assert b"Content-Type: text/plain;charset=UTF-8" in ping.head
    assert b"Expires: Thu, 01 Jan 1970 00:00:00 GMT" in ping.head
    assert b"Cache-Control: no-cache, no-store, must-revalidate, max-age=0" in ping.head
    assert head.status == 200 and head.body == b""
    assert b"Content-Type: application/json" in status.head and b"Cache-Control: no-cache" in status.head
    doc = json.loads(status.body)
    assert (doc["pool"], doc["process manager"], doc["total processes"], doc["active processes"]) == ("site", "static", 1, 1)
    assert doc["accepted conn"] == 7  # the app's 2 requests, 4 pings, this status request
    (proc,) = doc["processes"]
    assert proc["pid"] == os.getpid() and proc["requests"] == 2 and proc["request uri"] == "/app/ping"
    assert text.body.startswith(b"pool:                 site\n")
    hooks.assert_paired()
    assert len(hooks.started) == 8


async def test_through_real_nginx(tmp_path) -> None:
    """nginx (the test peers' FastCGI site: SCRIPT_NAME "" and the path in PATH_INFO) in front."""
    app = CountingApp()
    config = WorkerConfig(ping_path="/ping", status_path="/status", allowed_clients=("127.0.0.1",))
    async with worker(app, config) as (where, _):
        host, _, port = where.rpartition(":")
        with nginx_fastcgi(host, int(port), keepalive=True, directory=tmp_path) as nginx:

            def get(path: str) -> tuple[int, bytes]:
                with urllib.request.urlopen(nginx.url(path), timeout=10) as response:
                    return response.status, response.read()

            assert await trio.to_thread.run_sync(get, "/ping") == (200, b"pong")
            status, body = await trio.to_thread.run_sync(get, "/status?json")
            assert await trio.to_thread.run_sync(get, "/hello") == (200, b"hello")
    assert status == 200 and json.loads(body)["pool"] == "www"
    assert app.calls == 1


async def test_status_comes_from_status_source_when_given() -> None:
    pool = PoolStatus("www", "dynamic", time.time() - 5, 77, 0, 3, 511, 2, 1, 3, 3, 1, 4)
    async with worker(hello.app, WorkerConfig(status_path="/fpm-status", status_source=lambda: pool)) as (where, nursery):
        async with connect(where, nursery) as web:
            answer = await web.request(params("/fpm-status?openmetrics"))
    assert b"Content-Type: application/openmetrics-text" in answer.head
    assert 'fcgi_cluster_accepted_connections_total{pool="www"} 77' in answer.body.decode()
    assert 'fcgi_cluster_max_listen_queue{pool="www"} 3' in answer.body.decode()


# --- request_terminate_timeout -------------------------------------------------


def sleepy_wsgi(environ, start_response):
    seconds = float(environ["QUERY_STRING"] or 0)
    if environ["PATH_INFO"] == "/partial":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"x" * 70000)  # past the batch size: sent before the sleep
        time.sleep(seconds)
        return [b"never"]
    time.sleep(seconds)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"woke"]


async def sleepy_asgi(scope, receive, send):
    if scope["type"] != "http":
        return
    seconds = float(scope["query_string"] or 0)
    if scope["path"] == "/partial":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
    await trio.sleep(seconds)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"woke"})


async def test_terminate_timeout_wsgi_answers_504_and_reports_the_stuck_thread() -> None:
    hooks = Recorder()
    config = WorkerConfig(threads=2, request_terminate_timeout=0.3, hooks=hooks)
    async with worker(sleepy_wsgi, config) as (where, nursery):
        async with connect(where, nursery) as web:
            before = time.monotonic()
            answer = await web.request(params("/?8"))
            took = time.monotonic() - before
            assert answer.status == 504 and answer.body == b"Gateway Timeout\n" and answer.end.app_status == 0
            assert took < 6  # answered long before the app's 8 s sleep ends
            # The connection and the worker go on serving (the second thread).
            assert (await web.request(params("/?0"))).body == b"woke"
            with trio.fail_after(5):
                while not hooks.stuck:
                    await trio.sleep(0.05)
    assert [i.uri for i in hooks.stuck] == ["/?8"]
    assert hooks.started[0].timed_out and hooks.started[0].status == 504
    hooks.assert_paired()


async def test_terminate_timeout_after_the_head_cuts_the_answer_short() -> None:
    config = WorkerConfig(request_terminate_timeout=0.3)
    async with worker(sleepy_wsgi, config) as (where, nursery):
        async with connect(where, nursery) as web:
            answer = await web.request(params("/partial?2"))
    assert answer.status == 200 and answer.end.app_status == 1
    assert answer.body == b"x" * 70000


@pytest.mark.parametrize(("path", "status", "app_status"), [("/?10", 504, 0), ("/partial?10", 200, 1)])
async def test_terminate_timeout_asgi(path: str, status: int, app_status: int) -> None:
    hooks = Recorder()
    config = WorkerConfig(request_terminate_timeout=0.3, hooks=hooks)
    async with worker(sleepy_asgi, config) as (where, nursery):
        async with connect(where, nursery) as web:
            answer = await web.request(params(path))
            assert (await web.request(params("/?0"))).body == b"woke"
    assert answer.status == status and answer.end.app_status == app_status
    assert hooks.stuck == []  # a task stops at its next await
    hooks.assert_paired()


# --- slow log ---------------------------------------------------------------------


def slow_function_for_the_log(seconds: float) -> None:
    time.sleep(seconds)


def slow_wsgi(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        slow_function_for_the_log(0.8)
    start_response("200 OK", [])
    return [b"done"]


async def slow_coroutine_for_the_log() -> None:
    await trio.sleep(0.8)


async def slow_asgi(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        await slow_coroutine_for_the_log()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"done"})


@pytest.mark.parametrize(("app", "innermost"), [(slow_wsgi, "slow_function_for_the_log"), (slow_asgi, "slow_coroutine_for_the_log")])
async def test_slowlog_holds_the_stack_of_the_slow_request(tmp_path, app, innermost: str) -> None:
    slowlog = tmp_path / "www.slow"
    hooks = Recorder()
    config = WorkerConfig(request_slowlog_timeout=0.2, slowlog=str(slowlog), hooks=hooks, pool_name="www")
    async with worker(app, config) as (where, nursery):
        async with connect(where, nursery) as web:
            answer = await web.request(params("/slow?q=1", SCRIPT_FILENAME="/srv/app.py"))
            fast = await web.request(params("/fast", SCRIPT_FILENAME="/srv/app.py"))
    assert answer.body == b"done" and fast.body == b"done"
    text = slowlog.read_text()
    assert text.startswith("\n[")  # php-fpm starts each entry with a blank line
    assert len(re.findall(r"(?m)^\[\d\d-\w\w\w-", text)) == 1  # one entry: the fast request is not in it
    lines = text.strip("\n").splitlines()
    assert re.fullmatch(rf"\[\d\d-\w\w\w-\d{{4}} \d\d:\d\d:\d\d\]  \[pool www\] pid {os.getpid()}", lines[0])
    assert lines[1] == "script_filename = /srv/app.py"
    assert lines[2] == "request = GET /slow?q=1"
    frames = lines[3:]
    assert all(re.fullmatch(r"\[0x[0-9a-f]{16}\] \S+\(\) \S+:\d+", f) for f in frames), frames
    names = [f.split()[1] for f in frames]
    # Innermost first, down to the app's entry point (the worker's own frames left out).
    assert innermost + "()" in names
    assert names[-1] == app.__name__ + "()"
    assert names.index(innermost + "()") < names.index(app.__name__ + "()")
    assert [i.uri for i in hooks.slow] == ["/slow?q=1"]


def test_slowlog_trace_depth_bounds_the_entry(tmp_path) -> None:
    from fcgi_cluster.worker._request_logs import SlowLog

    log = SlowLog(str(tmp_path / "s.log"))
    import sys

    frame = sys._getframe()
    log.write("www", "", "GET", "/", [frame] * 30, 5)
    log.close()
    lines = (tmp_path / "s.log").read_text().splitlines()
    assert len(lines) == 4 + 5 + 1 and lines[-1] == "... (request_slowlog_trace_depth reached)"


# --- access log ---------------------------------------------------------------------


async def test_access_log_one_line_per_request_and_reopen(tmp_path) -> None:
    path = tmp_path / "access.log"
    config = WorkerConfig(access_log=str(path), ping_path="/ping")
    async with worker(sleepy_wsgi, config) as (where, nursery):
        async with connect(where, nursery) as web:
            await web.request(params("/a?0.1", REMOTE_ADDR="192.0.2.7", REMOTE_USER="bob"))
            await web.request(params("/ping"))
            await web.request(params('/q"uote?0', method="POST"))
            os.rename(path, tmp_path / "access.log.1")
            reopen_logs()  # what SIGUSR1 does
            await web.request(params("/after?0"))
    old = (tmp_path / "access.log.1").read_text().splitlines()
    line = re.compile(r'(\S+) - (\S+) (\d\d/\w\w\w/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}) "(\S+) (\S+)" (\d{3}|-) (\d+\.\d{3})')
    parsed = [line.fullmatch(x) for x in old]
    assert all(parsed), old
    first, ping, quoted = (m.groups() for m in parsed)  # type: ignore[union-attr]
    assert first[:2] == ("192.0.2.7", "bob") and first[3:6] == ("GET", "/a?0.1", "200")
    assert float(first[6]) >= 100.0  # the app slept 0.1 s
    assert ping[3:6] == ("GET", "/ping", "200") and ping[1] == "-"
    assert quoted[3:5] == ("POST", "/q\\x22uote?0")
    new = path.read_text().splitlines()
    assert len(new) == 1 and '"GET /after?0" 200' in new[0]


# --- hooks -------------------------------------------------------------------------------


def failing_wsgi(environ, start_response):
    raise RuntimeError("boom")


async def test_hooks_are_paired_under_abort_failure_and_disconnect() -> None:
    hooks = Recorder()
    config = WorkerConfig(hooks=hooks, threads=4)

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/fail":
            return failing_wsgi(environ, start_response)
        return sleepy_wsgi(environ, start_response)

    async with worker(app, config) as (where, nursery):
        async with connect(where, nursery) as web:
            assert (await web.request(params("/fail"))).status == 500
            rid = await web.start(params("/?0.5"))
            await trio.sleep(0.1)
            await web.abort(rid)
            with trio.fail_after(5):
                while len(hooks.finished) < 2:
                    await trio.sleep(0.02)
            assert hooks.finished[1].uri == "/?0.5" and hooks.finished[1].status == 0
            # A request left running when the web server hangs up.
            await web.start(params("/?0.5"))
            await trio.sleep(0.1)
        with trio.fail_after(5):
            while len(hooks.finished) < 3:
                await trio.sleep(0.05)
    assert hooks.connections == 1
    hooks.assert_paired()
    assert [i.uri for i in hooks.started] == ["/fail", "/?0.5", "/?0.5"]
    assert hooks.started[0].status == 500


class Retiring(Recorder):
    """Hooks of a process that starts ``limit`` requests, then stops (pm.max_requests)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def requests_left(self) -> int | None:
        return self.limit - len(self.started)


async def test_a_process_near_its_last_request_accepts_only_what_it_will_serve() -> None:
    hooks = Retiring(limit=2)
    config = WorkerConfig(hooks=hooks)

    async def settled(count: int) -> None:
        await trio.sleep(0.2)  # time for an accept that should not happen
        assert hooks.connections == count

    async with worker(hello.app, config) as (where, nursery):
        async with connect(where, nursery) as first, connect(where, nursery) as second:
            # Four connections knock; two requests are left: two are taken.
            async with connect(where, nursery) as third, connect(where, nursery):
                await settled(2)
                # One request served on the first: one is left, and the second
                # connection still waits for its own: nothing more is taken.
                assert (await first.request(params("/"))).body == b"hello"
                await settled(2)
                # The second goes away without a request: its room goes to the third.
                second.stream.socket.shutdown(socket.SHUT_WR)
                await settled(3)
                assert (await third.request(params("/"))).body == b"hello"
    assert [i.uri for i in hooks.started] == ["/", "/"]


class SpawnCounter(trio.abc.Instrument):
    def __init__(self) -> None:
        self.spawned = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.spawned += 1


async def test_the_features_keep_the_fast_path_of_a_wsgi_worker(tmp_path) -> None:
    # A pool child's config: hooks, an access log, a terminate timeout. Its
    # requests must still start without a task each (WSGIHandler.start_nowait),
    # and every feature must still see them.
    hooks = Recorder()
    log_path = tmp_path / "access.log"
    config = WorkerConfig(hooks=hooks, access_log=str(log_path), request_terminate_timeout=30.0, threads=2)
    counter = SpawnCounter()
    async with worker(hello.app, config) as (where, nursery):
        async with connect(where, nursery) as web:
            assert (await web.request(params("/warm"))).body == b"hello"
            trio.lowlevel.add_instrument(counter)
            try:
                for i in range(20):
                    assert (await web.request(params(f"/{i}"))).body == b"hello"
            finally:
                trio.lowlevel.remove_instrument(counter)
    # A task per request would be 20.
    assert counter.spawned < 5
    assert [i.uri for i in hooks.started] == ["/warm"] + [f"/{i}" for i in range(20)]
    hooks.assert_paired()
    assert all(i.status == 200 for i in hooks.finished)
    assert len(log_path.read_text().splitlines()) == 21


async def test_plain_config_wraps_nothing() -> None:
    features = PoolFeatures(WorkerConfig())

    async def handler(ctx) -> None:
        pass

    assert features.wrap(handler) is handler and not features.needs_watch
    wrapped = PoolFeatures(WorkerConfig(hooks=Recorder())).wrap(handler)
    assert wrapped is not handler
    # A handler without a fast path gets none; one with it keeps it.
    assert getattr(wrapped, "start_nowait", None) is None

    def start_nowait(ctx, done, spawn) -> bool:
        return False

    handler.start_nowait = start_nowait
    assert callable(PoolFeatures(WorkerConfig(hooks=Recorder())).wrap(handler).start_nowait)


async def test_a_log_that_cannot_be_opened_fails_serve_and_frees_the_port(tmp_path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(FileNotFoundError):
        await serve(hello.app, f"127.0.0.1:{port}", WorkerConfig(access_log=str(tmp_path / "no" / "such" / "dir.log")))
    with socket.socket() as again:  # the listener was closed, not leaked
        again.bind(("127.0.0.1", port))


def test_sigusr1_reopens_the_logs_of_a_worker_process(tmp_path) -> None:
    """run_worker (the process entry point) reopens its access log on SIGUSR1, as php-fpm does."""
    log_path = tmp_path / "access.log"
    port = free_port()
    code = (
        "from fcgi_cluster.worker import WorkerConfig, run_worker\n"
        "from workers import hello\n"
        f"run_worker(hello.app, '127.0.0.1:{port}', WorkerConfig(access_log={str(log_path)!r}))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    with run_process([python_executable(), "-c", code], cwd=REPO_ROOT, env=env, ready_port=port, name="worker") as process:
        request = {"SCRIPT_NAME": "/one", "REQUEST_URI": "/one", "REQUEST_METHOD": "GET"}
        assert cgi_fcgi_request("127.0.0.1", port, request).endswith(b"hello")
        os.rename(log_path, tmp_path / "access.log.1")
        process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not log_path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cgi_fcgi_request("127.0.0.1", port, {**request, "REQUEST_URI": "/two"}).endswith(b"hello")
        assert process.poll() is None  # SIGUSR1 does not stop it
    assert '"GET /one" 200' in (tmp_path / "access.log.1").read_text()
    assert '"GET /two" 200' in log_path.read_text()


async def test_requests_run_inline_are_counted_and_hooked_as_threaded_ones() -> None:
    from fcgi_cluster.worker._inline import PROMOTE_AFTER

    hooks, on_loop = Recorder(), []
    loop_thread = threading.get_ident()

    def app(environ, start_response):
        on_loop.append(threading.get_ident() == loop_thread)
        return hello.app(environ, start_response)

    config = WorkerConfig(status_path="/status", hooks=hooks, pool_name="site", threads=4)
    total = PROMOTE_AFTER + 10  # the last ten run on the loop's thread
    async with worker(app, config) as (where, nursery):
        async with connect(where, nursery) as web:
            for i in range(total):
                answer = await web.request(params(f"/n{i}"))
                assert answer.body == b"hello" and answer.end.app_status == 0
            status = await web.request(params("/status?json&full"))
    assert on_loop == [False] * PROMOTE_AFTER + [True] * 10
    hooks.assert_paired()
    assert [i.uri for i in hooks.finished] == [f"/n{i}" for i in range(total)] + ["/status?json&full"]
    assert all(i.status == 200 for i in hooks.finished)
    doc = json.loads(status.body)
    assert doc["accepted conn"] == total + 1 and doc["active processes"] == 1
    (proc,) = doc["processes"]
    assert proc["requests"] == total and proc["request uri"] == f"/n{total - 1}"
