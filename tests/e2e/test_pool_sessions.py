"""Sessions in a pool's children: ``session.*`` keys of a pool file, a real Redis with a password.

``fcgi-cluster worker -c FILE`` serves ``workers.counter`` from two children (pm = static);
our front-end is in front; a browser's cookie jar follows one session across both
children. Bad ``session.*`` values stop the master before anything runs, naming the
file, line and key.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest
import trio

from fcgi_cluster.client import cgi_params, open_connection
from tests._peers import LOOPBACK, REPO_ROOT, free_port, run_process
from tests.e2e._frontend import frontend_from_file
from tests.e2e.test_pool_master import children, wait_until
from tests.sessions._servers import RedisServer

pytestmark = pytest.mark.e2e

PASSWORD = "pool-secret"


def pool_file(directory: pathlib.Path, port: int, save_path: str, *extra: str) -> pathlib.Path:
    path = directory / f"pool-{port}.conf"
    path.write_text(
        "[global]\n"
        f"error_log = {directory / f'fpm-{port}.log'}\n"
        "process_control_timeout = 5s\n"
        "\n"
        "[counter]\n"
        f"listen = {LOOPBACK}:{port}\n"
        "app = workers.counter:app\n"
        "pm = static\n"
        "pm.max_children = 2\n"
        "session.save_handler = redis\n"
        f"session.save_path = {save_path}\n" + "".join(f"{line}\n" for line in extra)
    )
    return path


def worker_argv(path: pathlib.Path) -> list[str]:
    return [sys.executable, "-m", "fcgi_cluster.cli", "worker", "-c", str(path)]


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO_ROOT))


@contextlib.contextmanager
def pool_master(directory: pathlib.Path, path: pathlib.Path, port: int) -> Iterator[subprocess.Popen]:
    """The pool master with its two children started; stopped gracefully and checked gone after."""
    with run_process(worker_argv(path), cwd=REPO_ROOT, env=env(), ready_port=port, name="pool-master",
                     log_path=directory / f"master-{port}.log") as process:
        kids: set[int] = set()
        try:
            wait_until(lambda: len(children(process.pid)) == 2, what="two children")
            kids = children(process.pid)
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGQUIT)
                assert process.wait(15) == 0
            for pid in kids:
                assert not os.path.exists(f"/proc/{pid}/cmdline") or _zombie(pid), f"child {pid} left running"


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@contextlib.contextmanager
def frontend(directory: pathlib.Path, upstream_port: int) -> Iterator[int]:
    """Our front-end before the pool, a new upstream connection per request.

    With kept-alive (or multiplexed) upstream connections, one quiet browser's
    requests would all ride one connection, so one child; a connection per
    request (as nginx without ``keepalive``) lets the kernel hand each to
    whichever child accepts first.
    """
    port = free_port()
    config = directory / f"cluster-{port}.toml"
    config.write_text(
        f'[frontend]\nlisten = "{LOOPBACK}:{port}"\naccess_log = false\n'
        f'[upstream.counter]\nservers = ["{LOOPBACK}:{upstream_port}"]\nmultiplex = "off"\nkeepalive = 0\n'
        '[[route]]\nprefix = "/"\nupstream = "counter"\n'
    )
    with frontend_from_file(config, port, log_path=directory / f"frontend-{port}.log"):
        yield port


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("pool-redis"), password=PASSWORD) as server:
        yield server


#: Sessions loaded on first use from the app's thread, or by each child's loop
#: around every request (its Redis commands pipelined), with app threads or none.
MODES = {
    "lazy": (),
    "auto_start": ("session.auto_start = 1",),
    "auto_start, threads 0": ("session.auto_start = 1", "threads = 0"),
}


@pytest.mark.parametrize("mode", MODES)
def test_twenty_requests_of_one_browser_count_on_both_children(tmp_path, redis_server, mode):
    port = free_port()
    path = pool_file(tmp_path, port, f"tcp://{LOOPBACK}:{redis_server.port}?auth={PASSWORD}", *MODES[mode])
    with pool_master(tmp_path, path, port) as master, frontend(tmp_path, port) as http_port:
        kids = children(master.pid)
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        answers = []
        served: set[int] = set()
        # Which child accepts a new connection is the kernel's choice, and an
        # idle machine often gives one child a run of them: go on past 20
        # until both have served (one child 200 times in a row would be a bug).
        while len(answers) < 20 or (served != kids and len(answers) < 200):
            with opener.open(f"http://{LOOPBACK}:{http_port}/", timeout=15) as response:
                answers.append(json.loads(response.read()))
            served.add(int(answers[-1]["worker"].rsplit(" ", 1)[1]))
    assert [a["n"] for a in answers] == list(range(1, len(answers) + 1))
    assert served == kids  # both children, one session
    (cookie,) = list(jar)
    assert cookie.name == "PHPSESSID" and len(cookie.value) == 32
    # The session lives in Redis, where any worker (or PHP) finds it.
    keys = redis_server.client().keys("*")
    assert any(cookie.value.encode() in key for key in keys)


def _start_fails(tmp_path: pathlib.Path, path: pathlib.Path, port: int) -> subprocess.CompletedProcess:
    result = subprocess.run(worker_argv(path), cwd=REPO_ROOT, env=env(), capture_output=True, text=True,
                            timeout=60, start_new_session=True)
    # Nothing left behind: the address is free again, no process serves it.
    with contextlib.closing(socket.socket()) as probe:
        probe.bind((LOOPBACK, port))
    return result


@pytest.mark.parametrize(("extra", "line", "message"), [
    (("session.lock_wait = soon",), 12,
     "session.lock_wait: must be a time like 30s, 5m, 1h, 1d (a bare number is seconds), got 'soon'"),
    (("php_value[session.sid_length] = 8",), 12,
     "session.sid_length: must be from 22 to 256, got 8"),
    (("session.colour = blue",), 12, "session.colour: unknown session setting"),
])
def test_a_bad_session_value_stops_the_master_naming_file_line_and_key(tmp_path, redis_server, extra, line, message):
    port = free_port()
    path = pool_file(tmp_path, port, f"tcp://{LOOPBACK}:{redis_server.port}?auth={PASSWORD}", *extra)
    result = _start_fails(tmp_path, path, port)
    assert result.returncode == 2
    assert result.stderr == f"fcgi-cluster worker: {path}:{line}: {message}\n"


def test_a_bad_save_path_and_a_wrong_password_are_caught_at_start(tmp_path, redis_server):
    port = free_port()
    path = pool_file(tmp_path, port, f"tcp://{LOOPBACK}:{redis_server.port}?auth={PASSWORD}&colour=blue")
    result = _start_fails(tmp_path, path, port)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"fcgi-cluster worker: {path}:11: session.save_path: ")
    assert "unknown option 'colour'" in result.stderr and PASSWORD not in result.stderr

    path = pool_file(tmp_path, port, f"tcp://{LOOPBACK}:{redis_server.port}?auth=wrong-password")
    result = _start_fails(tmp_path, path, port)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"fcgi-cluster worker: {path}:11: session.save_path: ")
    assert "authentication failed" in result.stderr and "wrong-password" not in result.stderr


@pytest.mark.parametrize("mode", ["lazy", "auto_start"])
def test_a_child_started_while_redis_is_down_serves_503_then_recovers(tmp_path, mode):
    """The master checks the store once; children open theirs without a round trip,
    so a child replaced while Redis is down starts (no restart loop) and answers
    503 until Redis is back."""
    async def status(port: int) -> int:
        async with open_connection(f"{LOOPBACK}:{port}") as conn:
            return (await conn.request(cgi_params("GET", "/"))).status

    redis_server = RedisServer(tmp_path / "redis", password=PASSWORD)
    redis_server.start()
    try:
        port = free_port()
        path = pool_file(tmp_path, port, f"tcp://{LOOPBACK}:{redis_server.port}?auth={PASSWORD}&timeout=1",
                         *MODES[mode])
        with pool_master(tmp_path, path, port) as master:
            assert trio.run(status, port) == 200
            redis_server.kill()
            victim = min(children(master.pid))
            os.kill(victim, signal.SIGKILL)
            wait_until(lambda: len(children(master.pid) - {victim}) == 2, what="a replacement child")
            replacement = children(master.pid)
            time.sleep(1.5)  # a child failing at start would have been replaced by now
            assert children(master.pid) == replacement
            assert {trio.run(status, port) for _ in range(6)} == {503}
            redis_server.start()
            wait_until(lambda: trio.run(status, port) == 200, what="answers once Redis is back")
            assert {trio.run(status, port) for _ in range(6)} == {200}
            assert children(master.pid) == replacement
    finally:
        redis_server.stop()


def test_sample_sessions_conf_counts_one_visitor(tmp_path, redis_server):
    """workers/sessions.conf as shipped, but for its fixed port and Redis address."""
    port = free_port()
    text = (REPO_ROOT / "workers" / "sessions.conf").read_text()
    for old, new in (("listen = 127.0.0.1:9003", f"listen = {LOOPBACK}:{port}"),
                     ('session.save_path = "tcp://127.0.0.1:6379?timeout=2"',
                      f'session.save_path = "tcp://{LOOPBACK}:{redis_server.port}?timeout=2&auth={PASSWORD}"')):
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "sessions.conf"
    path.write_text(text)

    async def visit(cookie: str | None) -> tuple[int, str]:
        headers = [("Cookie", cookie)] if cookie else []
        async with open_connection(f"{LOOPBACK}:{port}") as conn:
            answer = await conn.request(cgi_params("GET", "/", headers=headers))
        set_cookie = dict(answer.headers).get("Set-Cookie", "")
        return json.loads(answer.body)["n"], set_cookie.split(";", 1)[0]

    with pool_master(tmp_path, path, port):
        n, cookie = trio.run(visit, None)
        assert n == 1 and cookie.startswith("PHPSESSID=")
        assert [trio.run(visit, cookie)[0] for _ in range(3)] == [2, 3, 4]
