"""The pool scoreboard: children's hooks, the status summed over slots, the listen queue."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest
import trio

from fcgi_cluster.client import cgi_params, open_connection
from fcgi_cluster.worker import serve
from fcgi_cluster.worker._pool_config import GlobalConfig, PoolConfig
from fcgi_cluster.worker._pm_child import worker_config
from fcgi_cluster.worker._scoreboard import FINISHING, IDLE, RUNNING, STARTING, ChildHooks, Scoreboard, listen_queue
from fcgi_cluster.worker._status import RequestInfo

POOL = PoolConfig(name="www", listen="127.0.0.1:0", app="workers.echo:app", pm="dynamic", listen_backlog=7)


def _info(uri: str = "/a?b=1") -> RequestInfo:
    return RequestInfo(method="POST", uri=uri, content_length=12, script="/srv/app.py", start=time.monotonic())


def test_hooks_fill_the_childs_slot_and_status_sums_the_pool():
    board = Scoreboard(4)
    board.reserve(0)
    board.set_pid(0, 1111)
    board.reserve(2)
    board.set_pid(2, 2222)
    one, two = ChildHooks(board, 0), ChildHooks(board, 2)
    one.ready()
    two.ready()
    # php-fpm's "accepted conn" counts requests: connections alone add nothing.
    one.connection_accepted()
    two.connection_accepted()
    running = _info("/slow?x=1")
    one.request_started(running)
    done = _info()
    two.request_started(done)
    two.request_finished(done)
    two.slow_request(done)

    status = board.status(POOL, None)
    assert (status.pool, status.process_manager) == ("www", "dynamic")
    assert status.accepted_conn == 2
    assert status.slow_requests == 1
    assert (status.idle_processes, status.active_processes, status.total_processes) == (1, 1, 2)
    rows = {row.pid: row for row in status.processes}
    assert rows[1111].state == "Running" and rows[1111].request_uri == "/slow?x=1"
    assert rows[1111].request_method == "POST" and rows[1111].content_length == 12
    assert rows[2222].state == "Idle" and rows[2222].requests == 1 and rows[2222].script == "/srv/app.py"
    assert status.listen_queue_len == 7  # no socket: the configured backlog


def test_a_multiplexing_childs_row_shows_its_oldest_request_in_flight():
    board = Scoreboard(1)
    board.reserve(0)
    board.set_pid(0, 1111)
    hooks = ChildHooks(board, 0)
    hooks.ready()

    def row():
        (only,) = board.status(POOL, None).processes
        return only

    slow, status_page, other = _info("/slow"), _info("/status?json&full"), _info("/other")
    hooks.request_started(slow)
    hooks.request_started(status_page)
    # The status request served beside it does not hide the long one.
    assert (row().state, row().request_uri) == ("Running", "/slow")
    hooks.request_finished(status_page)
    hooks.request_started(other)
    assert row().request_uri == "/slow"
    hooks.request_finished(slow)
    # The oldest still in flight takes its place, with its own start.
    assert (row().state, row().request_uri) == ("Running", "/other")
    assert hooks.req_start == other.start
    hooks.request_finished(other)
    assert (row().state, row().request_uri, row().requests) == ("Idle", "/other", 3)


def test_a_dead_childs_counters_stay_in_the_pool_and_its_slot_is_reused():
    board = Scoreboard(1)
    board.reserve(0)
    board.set_pid(0, 1234)
    hooks = ChildHooks(board, 0)
    hooks.ready()
    for _ in range(3):
        info = _info()
        hooks.request_started(info)
        hooks.request_finished(info)
    assert board.free_slot() is None
    board.release(0)
    assert board.free_slot() == 0
    status = board.status(POOL, None)
    assert status.accepted_conn == 3 and status.total_processes == 0
    board.reserve(0)
    board.set_pid(0, 5678)
    assert board.slot_state(0)[:2] == (5678, STARTING)
    assert board.status(POOL, None).accepted_conn == 3


def test_states_and_max_requests_retire_the_child_once():
    board = Scoreboard(1)
    board.reserve(0)
    board.set_pid(0, 1)
    hooks = ChildHooks(board, 0, max_requests=2)
    retired = []
    hooks.on_retire = lambda: retired.append(True)
    hooks.ready()
    assert board.slot_state(0)[1] == IDLE
    a, b = _info(), _info()
    hooks.request_started(a)
    hooks.request_started(b)
    assert board.slot_state(0)[1:3] == (RUNNING, 2)
    hooks.request_finished(a)
    hooks.request_finished(b)
    assert board.slot_state(0)[1:3] == (IDLE, 0)
    assert retired == [True]
    hooks.finishing()
    c = _info()
    hooks.request_started(c)
    hooks.request_finished(c)
    assert retired == [True]
    assert board.slot_state(0)[1] == FINISHING
    assert board.requests_of(0) == 3


def test_master_maxima_are_reported():
    board = Scoreboard(2)
    board.note(active=2, queue=5)
    board.note(active=1, max_children_reached=True, queue=1)
    status = board.status(POOL, None)
    assert status.max_active_processes == 2
    assert status.max_listen_queue == 5
    assert status.max_children_reached == 1


def test_listen_queue_from_tcp_info():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(9)
    clients = []
    try:
        for _ in range(3):
            client = socket.create_connection(listener.getsockname())
            clients.append(client)
        deadline = time.monotonic() + 5
        while listen_queue(listener, 9)[0] < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert listen_queue(listener, 9) == (3, 9)
        status = Scoreboard(1).status(POOL, listener)
        assert (status.listen_queue, status.listen_queue_len) == (3, 9)
        assert status.max_listen_queue >= 3
        listener.accept()[0].close()
        assert listen_queue(listener, 9) == (2, 9)
    finally:
        for client in clients:
            client.close()
        listener.close()


def test_unix_listener_queue_is_the_backlog():
    path = f"/tmp/fcgi-sb-{os.getpid()}.sock"
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(path)
        listener.listen(4)
        assert listen_queue(listener, 4) == (0, 4)
    finally:
        listener.close()
        os.unlink(path)


def _seen_in_flight(board: Scoreboard, seen: list[int]):
    def app(environ, start_response):
        seen.append(board.slot_state(0)[2])  # in flight, as the status page reads it
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    async def asgi(scope, receive, send):
        if scope["type"] != "http":
            return
        seen.append(board.slot_state(0)[2])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app, asgi


@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
async def test_the_workers_own_hooks_feed_the_scoreboard(interface):
    """A pool child's worker calls its ChildHooks itself: no wrapper around the app."""
    board = Scoreboard(1)
    board.reserve(0)
    board.set_pid(0, os.getpid())
    hooks = ChildHooks(board, 0)
    pool = PoolConfig(name="www", listen="127.0.0.1:0", app="x:app", pm_status_path="/status")
    seen: list[int] = []
    wsgi, asgi = _seen_in_flight(board, seen)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    config = worker_config(pool, GlobalConfig(), board, sock, hooks)
    async with trio.open_nursery() as nursery:
        where = await nursery.start(lambda task_status: serve(wsgi if interface == "wsgi" else asgi, sock, config,
                                                              task_status=task_status))
        hooks.ready()
        async with open_connection(where) as conn:
            for _ in range(3):
                assert (await conn.request(cgi_params("GET", "/x"))).status == 200
            status = await conn.request(cgi_params("GET", "/status?json"))
        nursery.cancel_scope.cancel()
    assert seen == [1, 1, 1]
    assert board.requests_of(0) == 4 and board.slot_state(0)[1:3] == (IDLE, 0)
    doc = json.loads(status.body)
    # Counted at the status request: 3 app requests finished, the status one accepted and running.
    assert (doc["accepted conn"], doc["active processes"], doc["idle processes"]) == (4, 1, 0)


def test_child_worker_config_advertises_the_pools_limits():
    pool = PoolConfig(name="www", listen="127.0.0.1:0", app="x:app", fcgi_max_reqs=7, fcgi_max_conns=33,
                      threads=3, listen_backlog=99, ping_path="/ping", pm_status_path="/status")
    board = Scoreboard(2)
    config = worker_config(pool, GlobalConfig(process_control_timeout=4.0), board, None)
    assert (config.max_requests, config.max_conns, config.threads, config.backlog) == (7, 33, 3, 99)
    assert config.graceful_timeout == 4.0
    assert (config.ping_path, config.status_path) == ("/ping", "/status")
    assert config.status_source().pool == "www"


def test_session_keys_become_the_childs_settings_and_errors_name_the_line():
    from fcgi_cluster.sessions import SessionSettings
    from fcgi_cluster.worker import PoolConfigError, parse_pool_config
    from fcgi_cluster.worker._master import check_sessions
    from fcgi_cluster.worker._pm_child import session_settings

    head = "[www]\nlisten = 127.0.0.1:9001\napp = workers.counter:app\n"
    (pool,) = parse_pool_config(head + "session.save_handler = redis\n"
                                "php_value[session.save_path] = tcp://127.0.0.1:1?auth=x\n"
                                "session.lock_wait = 2s\n", "p.conf").pools
    settings = session_settings(pool)
    assert isinstance(settings, SessionSettings) and settings.lock_wait == 2.0
    config = worker_config(pool, GlobalConfig(), None, None, session=settings)
    assert config.session is settings and config.session_check is False
    check_sessions(pool, connect=False)  # parses the save_path, connects to nothing
    (plain,) = parse_pool_config(head, "p.conf").pools
    assert session_settings(plain) is None and worker_config(plain, GlobalConfig(), None, None).session is None

    def error(body: str) -> str:
        (bad,) = parse_pool_config(head + body, "p.conf").pools
        try:
            check_sessions(bad, connect=False)
        except PoolConfigError as exc:
            return str(exc)
        raise AssertionError("no error")

    assert error("\nphp_value[session.cookie_samesite] = Sometimes\n").startswith(
        "p.conf:5: session.cookie_samesite: must be one of")
    # A key missing from the file: the line of the handler that needs it.
    assert error("session.save_handler = memcached\n") == \
        "p.conf:4: session.save_path: required with session.save_handler = memcached"
    assert error("session.save_handler = redis\nsession.save_path = tcp://h:1?colour=red\n").startswith(
        "p.conf:5: session.save_path: redis save_path: tcp://h:1?colour=red: unknown option 'colour'")
