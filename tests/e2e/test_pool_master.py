"""The pool master as a real process: pm modes, recycling, signals, bad starts, nginx in front.

Child counts are read from the OS (``/proc/<master>/task/*/children``), answers from
real FastCGI requests to ``workers.echo`` (which names the pid that served it). The
pool is given as ``PoolConfig`` objects written to a file as Python literals and read
back by a small runner, so these tests do not depend on the INI parser; the runner
goes through the same CLI function as ``fcgi-cluster worker -c``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import trio

from fcgi_cluster.client import ConnectionLost, cgi_params, open_connection
from fcgi_cluster.client._connection import _attach
from fcgi_cluster.worker._pool_config import GlobalConfig, PoolConfig, PoolFile
from tests._peers import REPO_ROOT, free_port, nginx_fastcgi, run_process, stop_process, wait_for_port

RUNNER = """
import sys
from fcgi_cluster.worker._pool_config import GlobalConfig, PoolConfig, PoolFile
from fcgi_cluster.cli import _pool_main

def load(path):
    with open(path) as f:
        return eval(f.read())

sys.exit(_pool_main(sys.argv[1], sys.argv[2:] == ["-t"], load))
"""

# Generous for a loaded 2-core machine: pm decisions are made once a second.
SETTLE_SECONDS = 10.0


def write_pool_file(path: pathlib.Path, global_: GlobalConfig, *pools: PoolConfig) -> None:
    lines = {"listen": 2, "app": 3, "pm": 4}
    pools = tuple(PoolConfig(**{**{f: getattr(p, f) for f in PoolConfig.__slots__}, "path": str(path),
                                "lines": p.lines or lines}) for p in pools)
    path.write_text(repr(PoolFile(path=str(path), global_=global_, pools=pools)))


def pool(port: int, **options) -> PoolConfig:
    defaults = dict(name="www", listen=f"127.0.0.1:{port}", app="workers.echo:app", clear_env=False)
    return PoolConfig(**{**defaults, **options})


def runner_argv(path: pathlib.Path) -> list[str]:
    return [sys.executable, "-c", RUNNER, str(path)]


def fast_global(**options) -> GlobalConfig:
    return GlobalConfig(**{"process_control_timeout": 5.0, **options})


@contextlib.contextmanager
def master(tmp_path: pathlib.Path, *pools: PoolConfig, global_: GlobalConfig | None = None) -> Iterator[subprocess.Popen]:
    """The master of ``pools``, ready on the first pool's port; stopped (and checked gone) after."""
    config = tmp_path / "pool.conf"
    write_pool_file(config, global_ or fast_global(), *pools)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    port = int(pools[0].listen.rsplit(":", 1)[1])
    with run_process(runner_argv(config), cwd=REPO_ROOT, env=env, ready_port=port, name="pool-master",
                     log_path=tmp_path / "master.log") as process:
        process.config_path = config
        try:
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    stop_process(process)


def children(pid: int) -> set[int]:
    """Live child pids of ``pid``, from the kernel's process table (zombies excluded)."""
    found: set[int] = set()
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found.update(int(x) for x in f.read().split())
    except FileNotFoundError:
        return set()
    live = set()
    for child in found:
        try:
            with open(f"/proc/{child}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    live.add(child)
        except FileNotFoundError:
            pass
    return live


def wait_until(predicate, timeout: float = SETTLE_SECONDS, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def log_of(process: subprocess.Popen) -> str:
    return pathlib.Path(process.log_path).read_text(errors="replace")


async def _one(port: int, uri: str) -> tuple[int, int]:
    """One request on its own connection (as nginx without keepalive): (status, pid)."""
    async with open_connection(f"127.0.0.1:{port}") as conn:
        path, _, query = uri.partition("?")
        response = await conn.request(cgi_params("GET", uri))
        if response.status != 200:
            return response.status, 0
        return response.status, int(json.loads(response.body)["worker"].rsplit(" ", 1)[1])


async def _load(port: int, uri: str, total: int, concurrency: int, seconds: float) -> tuple[int, list[str], set[int]]:
    """At most ``total`` requests, ``concurrency`` at a time, for at most ``seconds``."""
    ok = 0
    failures: list[str] = []
    pids: set[int] = set()
    left = iter(range(total))
    deadline = trio.current_time() + seconds

    async def loop() -> None:
        nonlocal ok
        for _ in left:
            if trio.current_time() > deadline:
                return
            try:
                with trio.fail_after(30):
                    status, pid = await _one(port, uri)
            except Exception as exc:  # every failure is counted, with its reason
                failures.append(repr(exc))
                continue
            if status == 200:
                ok += 1
                pids.add(pid)
            else:
                failures.append(f"status {status}")

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(loop)
    return ok, failures, pids


def load(port: int, uri: str = "/", total: int = 100, concurrency: int = 1, seconds: float = 20.0):
    return trio.run(_load, port, uri, total, concurrency, seconds)


def assert_gone(process: subprocess.Popen, kids: set[int]) -> None:
    for pid in kids:
        assert not os.path.exists(f"/proc/{pid}") or _zombie_or_gone(pid), f"child {pid} left running"


def _zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


# --- pm modes ---------------------------------------------------------------------------


def test_static_keeps_max_children_and_replaces_a_killed_one(tmp_path):
    port = free_port()
    # A child's status row shows its oldest request in flight: the slow one,
    # whichever child answers the status page.
    cfg = pool(port, pm="static", pm_max_children=3, pm_status_path="/status")
    with master(tmp_path, cfg) as proc:
        first = wait_until(lambda: len(children(proc.pid)) == 3 and children(proc.pid), what="3 children")
        ok, failures, _ = load(port, total=20, concurrency=2)
        assert (ok, failures) == (20, [])
        assert children(proc.pid) == first

        # SIGKILL the child serving a request, while it serves it: the request
        # is lost with its child, the master replaces the child.
        slow = "/?sleep_ms=5000"

        async def killed_mid_request() -> tuple[int, dict]:
            outcome: dict = {}
            async with open_connection(f"127.0.0.1:{port}") as conn:
                async with trio.open_nursery() as nursery:
                    async def request() -> None:
                        try:
                            outcome["status"] = (await conn.request(cgi_params("GET", slow))).status
                        except Exception as exc:  # the connection dies with the child
                            outcome["error"] = exc

                    nursery.start_soon(request)
                    victim = await _serving(port, slow)
                    os.kill(victim, signal.SIGKILL)
                    with trio.fail_after(10):
                        while not outcome:
                            await trio.sleep(0.05)
            return victim, outcome

        victim, outcome = trio.run(killed_mid_request)
        assert victim in first
        assert "status" not in outcome, outcome
        after = wait_until(lambda: len(children(proc.pid)) == 3 and victim not in children(proc.pid)
                           and children(proc.pid), what="a replacement child")
        assert after & first == first - {victim}
        ok, failures, _ = load(port, total=10)
        assert (ok, failures) == (10, [])
        assert f"child {victim} exited on signal 9 (SIGKILL)" in log_of(proc)


async def _serving(port: int, uri: str, timeout: float = 5.0) -> int:
    """The pid of the child running ``uri``, from the pool's status page (``/status``)."""
    with trio.fail_after(timeout):
        while True:
            async with open_connection(f"127.0.0.1:{port}") as conn:
                doc = json.loads((await conn.request(cgi_params("GET", "/status?json&full"))).body)
            running = [p["pid"] for p in doc["processes"] if p["state"] == "Running" and p["request uri"] == uri]
            if running:
                return running[0]
            await trio.sleep(0.05)


def _load_watching(proc: subprocess.Popen, port: int, uri: str, total: int, concurrency: int,
                   seconds: float) -> tuple[int, int, list[str], set[int]]:
    """``_load`` while the master's children are counted every 0.1 s: (peak, ok, failures, pids)."""
    peak = 0

    async def run() -> tuple[int, list[str], set[int]]:
        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, len(children(proc.pid)))
                await trio.sleep(0.1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            result = await _load(port, uri, total, concurrency, seconds)
            nursery.cancel_scope.cancel()
        return result

    ok, failures, pids = trio.run(run)
    return peak, ok, failures, pids


def test_dynamic_grows_under_load_and_shrinks_when_idle(tmp_path):
    port = free_port()
    cfg = pool(port, pm="dynamic", pm_max_children=4, pm_start_servers=1, pm_min_spare_servers=1, pm_max_spare_servers=1)
    with master(tmp_path, cfg) as proc:
        wait_until(lambda: len(children(proc.pid)) == 1, what="start_servers = 1")
        peak, ok, failures, pids = _load_watching(proc, port, "/?sleep_ms=400", 60, 6, 6.0)
        assert failures == [] and ok > 0
        assert 2 <= peak <= 4, peak
        assert len(pids) >= 2  # more than one child served
        # Idle again: one idle child stopped per second down to max_spare_servers.
        wait_until(lambda: len(children(proc.pid)) == 1, what="back to 1 child")
        assert "[pool www] child" in log_of(proc)


def test_ondemand_starts_on_a_connection_and_stops_idle_children(tmp_path):
    port = free_port()
    cfg = pool(port, pm="ondemand", pm_max_children=3, pm_process_idle_timeout=1.0)
    with master(tmp_path, cfg) as proc:
        # The readiness probe's connection started one; idle for a second, it goes.
        wait_until(lambda: children(proc.pid), what="a child for the probe")
        wait_until(lambda: children(proc.pid) == set(), what="no child while idle")
        time.sleep(1.0)
        assert children(proc.pid) == set()
        ok, failures, pids = load(port, total=3)
        assert (ok, failures) == (3, [])
        assert len(children(proc.pid)) >= 1
        wait_until(lambda: children(proc.pid) == set(), what="idle children stopped")
        ok, failures, _ = load(port, total=2)
        assert (ok, failures) == (2, [])
        # Under concurrent load: more children, never above pm.max_children; idle, none.
        peak, ok, failures, pids = _load_watching(proc, port, "/?sleep_ms=400", 60, 6, 6.0)
        assert failures == [] and ok > 0
        assert 2 <= peak <= 3, peak
        assert len(pids) >= 2
        wait_until(lambda: children(proc.pid) == set(), what="idle children stopped after the load")


def test_max_requests_recycles_children_without_losing_a_request(tmp_path):
    port = free_port()
    with master(tmp_path, pool(port, pm="static", pm_max_children=2, pm_max_requests=5)) as proc:
        wait_until(lambda: len(children(proc.pid)) == 2, what="2 children")
        started = time.monotonic()
        # 4 clients, a connection per request (nginx's default): a child that
        # accepted more connections than it serves before it stops would close
        # one unanswered.
        ok, failures, pids = load(port, total=200, concurrency=4, seconds=60)
        # Which of these went wrong, and what the master saw, if one did.
        summary = f"{ok} ok in {time.monotonic() - started:.1f} s, {len(pids)} children; log:\n{log_of(proc)[-3000:]}"
        assert failures == [], summary
        assert ok == 200, summary
        # 200 requests at 5 per child: about 40 children served them.
        assert len(pids) >= 30, summary
        wait_until(lambda: len(children(proc.pid)) == 2, what="2 children again")


def test_our_front_end_loses_nothing_while_children_recycle_under_multiplexed_load(tmp_path):
    # The front-end multiplexes requests over kept connections to each child.
    # A child at pm.max_requests drains: it refuses each new request on such
    # a connection unstarted (OVERLOADED), and closes only once the front-end
    # has gone quiet on it, so a request on the wire is refused and sent
    # again, never cut. Half the clients POST: a cut POST is not sent again
    # (it may have run), so it would be a 502.
    from .test_frontend_process import frontend_process, http_get

    port = free_port()
    with master(tmp_path, pool(port, pm="static", pm_max_children=2, pm_max_requests=40)) as proc:
        wait_until(lambda: len(children(proc.pid)) == 2, what="2 children")
        with frontend_process("--processes", "1", "--upstream", f"127.0.0.1:{port}") as (front, front_proc):
            def client(n: int) -> list[tuple[int, str]]:
                answers = []
                for i in range(100):
                    if n % 2:
                        status, _, body = http_get(front, f"/r/{n}/{i}", method="POST", body=b"x" * 100)
                    else:
                        status, _, body = http_get(front, f"/r/{n}/{i}")
                    answers.append((status, json.loads(body)["worker"] if status == 200 else body.decode()))
                return answers

            with ThreadPoolExecutor(8) as threads:
                answers = [a for result in threads.map(client, range(8)) for a in result]
            front_log = log_of(front_proc)
        statuses = [status for status, _ in answers]
        failed = [a for a in answers if a[0] != 200]
        warnings = "\n".join(line for line in front_log.splitlines() if "sending it again" not in line)
        assert failed == [], f"{len(failed)} of {len(answers)} failed: {failed[:3]}\n{warnings[-3000:]}"
        assert statuses.count(200) == 800
        # 800 requests at 40 per child: the children were recycled many times meanwhile.
        assert len({worker for _, worker in answers}) >= 10
        # How the front-end met the recycling: refusals it sent again, and no
        # request cut with its connection (a resend that is not a refusal).
        resent = [line for line in front_log.splitlines() if "sending it again on a new connection" in line]
        refused = [line for line in resent if "refused the request: OVERLOADED" in line]
        cut = [line for line in resent if "refused the request" not in line]
        assert refused, f"no OVERLOADED refusal while children recycled:\n{front_log[-2000:]}"
        assert cut == [], f"{len(cut)} requests cut, {len(refused)} refused:\n" + "\n".join(cut[:5])


# --- signals ----------------------------------------------------------------------------


def test_reload_under_load_refuses_nothing_and_new_children_serve(tmp_path):
    port = free_port()
    cfg = pool(port, pm="dynamic", pm_max_children=4, pm_start_servers=2, pm_min_spare_servers=1, pm_max_spare_servers=3)
    with master(tmp_path, cfg) as proc:
        before = wait_until(lambda: len(children(proc.pid)) == 2 and children(proc.pid), what="2 children")

        async def load_and_reload():
            async with trio.open_nursery() as nursery:
                async def reload_twice() -> None:
                    for _ in range(2):
                        await trio.sleep(1.0)
                        proc.send_signal(signal.SIGUSR2)
                nursery.start_soon(reload_twice)
                return await _load(port, "/?sleep_ms=20", 1000, 4, 3.5)

        ok, failures, served = trio.run(load_and_reload)
        assert failures == []
        assert ok > 20
        # Both generations served the load: the reloads happened under it.
        assert served & before and served - before
        after = wait_until(lambda: children(proc.pid) and not (children(proc.pid) & before) and children(proc.pid),
                           what="old children gone")
        _, _, pids = load(port, total=10)
        assert pids and pids <= after | children(proc.pid)
        assert not pids & before
        assert "Reloading in progress" in log_of(proc)


def test_reload_reads_the_changed_app_code_under_load(tmp_path):
    port = free_port()
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    module = app_dir / "versioned.py"
    source = ("import os, time\n"
              "VERSION = {!r}\n"
              "def app(environ, start_response):\n"
              "    time.sleep(0.02)\n"
              "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
              "    return [f'{{VERSION}} {{os.getpid()}}'.encode()]\n")
    module.write_text(source.format("one"))
    cfg = pool(port, pm="static", pm_max_children=2, app="versioned:app", chdir=str(app_dir))
    with master(tmp_path, cfg) as proc:
        before = wait_until(lambda: len(children(proc.pid)) == 2 and children(proc.pid), what="2 children")
        seen: list[str] = []
        failures: list[str] = []

        async def loop(deadline: float) -> None:
            for _ in range(2000):
                if trio.current_time() > deadline:
                    return
                try:
                    with trio.fail_after(30):
                        async with open_connection(f"127.0.0.1:{port}") as conn:
                            answer = await conn.request(cgi_params("GET", "/"))
                except Exception as exc:  # every failure is counted, with its reason
                    failures.append(repr(exc))
                    continue
                if answer.status != 200:
                    failures.append(f"status {answer.status}")
                else:
                    seen.append(answer.body.decode().split()[0])

        async def load_and_reload() -> None:
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(loop, trio.current_time() + 3.0)
                await trio.sleep(1.0)
                # Another size than the first text: the bytecode cache compares
                # mtime (in seconds) and size, so it cannot be taken for the old one.
                module.write_text(source.format("second"))
                proc.send_signal(signal.SIGUSR2)

        trio.run(load_and_reload)
        assert failures == []
        assert "one" in seen and "second" in seen
        # Once the old generation answered its last request, only the new code answers.
        assert seen.index("second") > seen.index("one")
        wait_until(lambda: "reload done" in log_of(proc), what="the reload")
        wait_until(lambda: not children(proc.pid) & before, what="old children gone")
        assert {_status_body(port) for _ in range(4)} == {"second"}


def _status_body(port: int) -> str:
    async def one() -> str:
        async with open_connection(f"127.0.0.1:{port}") as conn:
            return (await conn.request(cgi_params("GET", "/"))).body.decode().split()[0]
    return trio.run(one)


def test_reload_with_a_broken_app_keeps_the_old_config(tmp_path):
    port = free_port()
    with master(tmp_path, pool(port, pm="static", pm_max_children=1)) as proc:
        before = wait_until(lambda: children(proc.pid), what="1 child")
        write_pool_file(proc.config_path, fast_global(), pool(port, pm="static", pm_max_children=1, app="no_such_module:app"))
        proc.send_signal(signal.SIGUSR2)
        wait_until(lambda: "reload failed" in log_of(proc), what="the reload error")
        assert "app:" in log_of(proc)
        assert children(proc.pid) == before
        assert load(port, total=3)[0] == 3


def test_graceful_stop_finishes_in_flight_requests(tmp_path):
    port = free_port()
    with master(tmp_path, pool(port, pm="static", pm_max_children=2)) as proc:
        kids = wait_until(lambda: len(children(proc.pid)) == 2 and children(proc.pid), what="2 children")

        async def slow_then_quit():
            async with trio.open_nursery() as nursery:
                async def quit_soon() -> None:
                    await trio.sleep(0.5)
                    proc.send_signal(signal.SIGQUIT)
                nursery.start_soon(quit_soon)
                return await _load(port, "/?sleep_ms=1500", 3, 3, 10.0)

        ok, failures, _ = trio.run(slow_then_quit)
        assert (ok, failures) == (3, [])
        assert proc.wait(10) == 0
        assert_gone(proc, kids)
        assert "Finishing" in log_of(proc)


def test_stop_now_cancels_in_flight_requests(tmp_path):
    port = free_port()
    with master(tmp_path, pool(port, pm="static", pm_max_children=1)) as proc:
        kids = wait_until(lambda: children(proc.pid), what="1 child")
        started = time.monotonic()

        async def slow_then_term():
            async with trio.open_nursery() as nursery:
                async def term_soon() -> None:
                    await trio.sleep(0.5)
                    proc.send_signal(signal.SIGTERM)
                nursery.start_soon(term_soon)
                return await _load(port, "/?sleep_ms=8000", 1, 1, 10.0)

        ok, failures, _ = trio.run(slow_then_term)
        assert ok == 0 and len(failures) == 1
        assert proc.wait(10) == 0
        assert time.monotonic() - started < 7
        assert_gone(proc, kids)


def test_pid_file_output_and_reopened_log(tmp_path):
    port = free_port()
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "talky.py").write_text(
        "import sys\n"
        "def app(environ, start_response):\n"
        "    print('hello from', environ.get('REQUEST_URI'))\n"
        "    sys.stderr.write('to stderr\\n')\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'ok']\n")
    error_log = tmp_path / "error.log"
    pid_file = tmp_path / "fpm.pid"
    cfg = pool(port, pm="static", pm_max_children=1, app="talky:app", chdir=str(app_dir), catch_workers_output=True)
    with master(tmp_path, cfg, global_=fast_global(error_log=str(error_log), pid=str(pid_file))) as proc:
        assert wait_until(lambda: pid_file.exists() and pid_file.read_text().strip()) == str(proc.pid)
        wait_until(lambda: children(proc.pid), what="1 child")

        async def once() -> int:
            async with open_connection(f"127.0.0.1:{port}") as conn:
                return (await conn.request(cgi_params("GET", "/said"))).status

        assert trio.run(once) == 200
        child = next(iter(children(proc.pid)))
        wait_until(lambda: "said into stderr" in error_log.read_text(), what="the child's output")
        text = error_log.read_text()
        assert f'[pool www] child {child} said into stdout: "hello from /said"' in text
        assert f'[pool www] child {child} said into stderr: "to stderr"' in text
        assert "NOTICE: fpm is running, pid" in text
        error_log.rename(tmp_path / "error.log.1")
        proc.send_signal(signal.SIGUSR1)
        wait_until(lambda: error_log.exists(), what="the error log reopened")
        proc.send_signal(signal.SIGQUIT)
        assert proc.wait(10) == 0
    assert not pid_file.exists()


# --- access control ---------------------------------------------------------------------


def test_allowed_clients_refuses_another_address_before_the_app(tmp_path):
    port = free_port()
    access = tmp_path / "access.log"
    cfg = pool(port, pm="static", pm_max_children=1, listen_allowed_clients=("127.0.0.1",),
               access_log=str(access), pm_status_path="/status")

    async def request_from(source: str, uri: str = "/") -> tuple[int, bytes] | None:
        """A request from ``source``: (status, body), or None when the pool closed the connection."""
        sock = trio.socket.socket()
        await sock.bind((source, 0))
        await sock.connect(("127.0.0.1", port))
        stream = trio.SocketStream(sock)
        try:
            async with _attach(stream, f"127.0.0.1:{port}") as conn:
                with trio.fail_after(10):
                    answer = await conn.request(cgi_params("GET", uri))
        except (ConnectionLost, trio.BrokenResourceError):
            return None
        return answer.status, answer.body

    with master(tmp_path, cfg) as proc:
        wait_until(lambda: children(proc.pid), what="a child")
        assert trio.run(request_from, "127.0.0.2") is None
        wait_until(lambda: "connection from 127.0.0.2 refused: not in listen.allowed_clients" in log_of(proc),
                   what="the refusal logged")
        status, body = trio.run(request_from, "127.0.0.1", "/status?json")
        assert status == 200
        # The readiness probe's connection and the refused one were never accepted: this is the first.
        assert json.loads(body)["accepted conn"] == 1
        status, _ = trio.run(request_from, "127.0.0.1")
        assert status == 200
    lines = access.read_text().splitlines()
    assert len(lines) == 2 and all(line.startswith("127.0.0.1 ") for line in lines), lines


# --- bad starts ---------------------------------------------------------------------------


def _run_to_end(tmp_path: pathlib.Path, *pools: PoolConfig, test: bool = False) -> subprocess.CompletedProcess:
    config = tmp_path / "pool.conf"
    write_pool_file(config, fast_global(), *pools)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(runner_argv(config) + (["-t"] if test else []), cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
                          start_new_session=True)


def _no_process_mentions(path: pathlib.Path) -> bool:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if str(path).encode() in f.read():
                        return False
            except OSError:
                pass
    return True


def test_address_in_use_is_one_line_with_file_line_key(tmp_path):
    busy = __import__("socket").socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        other = free_port()
        result = _run_to_end(tmp_path, pool(other), pool(port, name="second"))
    finally:
        busy.close()
    assert result.returncode == 1
    assert result.stderr.strip() == f"fcgi-cluster worker: {tmp_path / 'pool.conf'}:2: listen: cannot listen on 127.0.0.1:{port}: address already in use"
    assert "Traceback" not in result.stdout + result.stderr
    assert _no_process_mentions(tmp_path / "pool.conf")
    # The first pool's socket was closed again.
    wait_for_port_closed(other)


def wait_for_port_closed(port: int) -> None:
    with pytest.raises(OSError):
        __import__("socket").create_connection(("127.0.0.1", port), timeout=1).close()


def test_app_that_fails_to_import_is_one_line_with_file_line_key(tmp_path):
    port = free_port()
    result = _run_to_end(tmp_path, pool(port, app="no_such_module_here:app"))
    assert result.returncode == 2
    line = result.stderr.strip()
    assert line.startswith(f"fcgi-cluster worker: {tmp_path / 'pool.conf'}:3: app: cannot import 'no_such_module_here'")
    assert "\n" not in line and "Traceback" not in result.stdout + result.stderr
    assert _no_process_mentions(tmp_path / "pool.conf")
    wait_for_port_closed(port)


def test_get_values_advertise_the_pool_limits(tmp_path):
    port = free_port()
    with master(tmp_path, pool(port, pm="static", pm_max_children=1, fcgi_max_reqs=9, fcgi_max_conns=77)):
        async def values() -> dict:
            async with open_connection(f"127.0.0.1:{port}") as conn:
                return await conn.get_values()

        got = trio.run(values)
        assert got["FCGI_MAX_REQS"] == "9" and got["FCGI_MAX_CONNS"] == "77"


# --- nginx in front -------------------------------------------------------------------------


def _http_codes(url: str, count: int, deadline: float = math.inf) -> list[int]:
    """The status of each of up to ``count`` GETs of ``url``, one after another, until ``deadline``."""
    codes = []
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        try:
            with urllib.request.urlopen(url, timeout=20) as response:
                codes.append(response.status)
        except urllib.error.HTTPError as exc:
            codes.append(exc.code)
    return codes


def test_nginx_in_front_of_a_dynamic_pool_sees_no_5xx_during_a_reload(tmp_path):
    port = free_port()
    cfg = pool(port, pm="dynamic", pm_max_children=4, pm_start_servers=2, pm_min_spare_servers=1, pm_max_spare_servers=3)
    with master(tmp_path, cfg) as proc, \
            nginx_fastcgi("127.0.0.1", port, keepalive=True, directory=tmp_path / "nginx") as nginx:
        wait_until(lambda: len(children(proc.pid)) == 2, what="2 children")
        url = nginx.url("/?sleep_ms=10")
        deadline = time.monotonic() + 3.5

        with ThreadPoolExecutor(4) as pool_:
            futures = [pool_.submit(_http_codes, url, 400, deadline) for _ in range(4)]
            time.sleep(0.8)
            proc.send_signal(signal.SIGUSR2)
            time.sleep(1.2)
            proc.send_signal(signal.SIGUSR2)
            codes = [code for future in futures for code in future.result()]
        assert len(codes) > 40
        assert [code for code in codes if code >= 500] == []
        assert set(codes) == {200}
        assert log_of(proc).count("reload done") == 2


def test_nginx_keeping_connections_sees_no_error_while_children_are_recycled(tmp_path):
    # A child at pm.max_requests closes the connections nginx keeps to it. A
    # request nginx wrote on one just then is reset (as with php-fpm) and nginx
    # sends it again on a new connection: its clients must see no error.
    port = free_port()
    cfg = pool(port, pm="static", pm_max_children=2, pm_max_requests=5)
    with master(tmp_path, cfg) as proc, \
            nginx_fastcgi("127.0.0.1", port, keepalive=True, directory=tmp_path / "nginx") as nginx:
        first = wait_until(lambda: len(children(proc.pid)) == 2 and children(proc.pid), what="2 children")
        url = nginx.url("/")

        with ThreadPoolExecutor(4) as pool_:
            codes = [code for future in [pool_.submit(_http_codes, url, 50) for _ in range(4)] for code in future.result()]
        assert len(codes) == 200 and set(codes) == {200}
        assert not children(proc.pid) & first
        wait_until(lambda: log_of(proc).count("exited with code 0") >= 20, what="recycled children")


# --- more of the master's duties ---------------------------------------------------------


def test_emergency_restart_after_abnormal_deaths_reloads_the_pool(tmp_path):
    port = free_port()
    glob = fast_global(emergency_restart_threshold=2, emergency_restart_interval=30.0)
    with master(tmp_path, pool(port, pm="static", pm_max_children=1), global_=glob) as proc:
        for _ in range(2):
            victim = wait_until(lambda: len(children(proc.pid)) == 1 and children(proc.pid), what="a child")
            os.kill(next(iter(victim)), signal.SIGKILL)
            wait_until(lambda: children(proc.pid) and children(proc.pid) != victim, what="a replacement")
        wait_until(lambda: "reload done" in log_of(proc), what="the emergency reload")
        assert "failed processes threshold (2 in 30 sec) is reached, initiating reload" in log_of(proc)
        assert load(port, total=3)[0] == 3


def test_a_child_stuck_past_request_terminate_timeout_is_replaced(tmp_path):
    port = free_port()
    with master(tmp_path, pool(port, pm="static", pm_max_children=1, request_terminate_timeout=1.0)) as proc:
        first = wait_until(lambda: children(proc.pid), what="a child")
        started = time.monotonic()
        ok, failures, _ = load(port, "/?sleep_ms=8000", total=1, seconds=15)
        # The worker ends the request with an error answer at the timeout...
        assert (ok, failures) == (0, ["status 504"])
        assert time.monotonic() - started < 4
        # ... and, since a sleeping thread cannot be interrupted, the master
        # replaces the child well before the app's 8 s are over.
        wait_until(lambda: children(proc.pid) and not children(proc.pid) & first, timeout=6.0, what="a replacement")
        assert time.monotonic() - started < 8
        assert "execution timed out (1 sec), terminating" in log_of(proc)
        assert load(port, total=2)[0] == 2


def test_two_pools_one_on_a_unix_socket_with_its_mode(tmp_path):
    port = free_port()
    path = tmp_path / "b.sock"
    tcp = pool(port, pm="static", pm_max_children=1)
    unix = pool(0, name="unix", listen=str(path), pm="ondemand", pm_max_children=2, listen_mode=0o666)
    with master(tmp_path, tcp, unix) as proc:
        wait_for_port(str(path), None)
        assert path.stat().st_mode & 0o777 == 0o666

        async def over_unix() -> int:
            async with open_connection(str(path)) as conn:
                response = await conn.request(cgi_params("GET", "/"))
                return int(json.loads(response.body)["worker"].rsplit(" ", 1)[1])

        pid = trio.run(over_unix)
        assert pid in children(proc.pid)
        assert load(port, total=2)[0] == 2
        assert len(children(proc.pid)) == 2  # one static, one on demand
        proc.send_signal(signal.SIGQUIT)
        assert proc.wait(10) == 0
    assert not path.exists()


def test_config_test_checks_the_app_and_binds_nothing(tmp_path):
    busy = __import__("socket").socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        # -t checks the file, not the machine: a port in use is not its business.
        good = _run_to_end(tmp_path, pool(busy.getsockname()[1]), test=True)
    finally:
        busy.close()
    assert good.returncode == 0 and "test is successful" in good.stdout
    bad = _run_to_end(tmp_path, pool(free_port(), app="workers.echo:no_such_app"), test=True)
    assert bad.returncode == 2
    assert bad.stderr.strip() == (f"fcgi-cluster worker: {tmp_path / 'pool.conf'}:3: app: "
                                  "module 'workers.echo' has no attribute 'no_such_app'")


def _status(port: int, uri: str = "/") -> int:
    """The status of one request on its own connection (for apps that do not name their pid)."""
    async def one() -> int:
        async with open_connection(f"127.0.0.1:{port}") as conn:
            return (await conn.request(cgi_params("GET", uri))).status
    return trio.run(one)


def test_an_asgi_pool_recycles_children_too(tmp_path):
    port = free_port()
    with master(tmp_path, pool(port, pm="static", pm_max_children=1, pm_max_requests=3,
                               app="workers.hello_asgi:app")) as proc:
        seen = {next(iter(wait_until(lambda: children(proc.pid), what="a child")))}
        for _ in range(9):
            assert _status(port) == 200
            seen |= children(proc.pid)
        # 9 requests at 3 per child: the first child was replaced at least twice.
        wait_until(lambda: len(seen | children(proc.pid)) >= 3, what="recycled children")
        assert "exited with code 0" in log_of(proc)


def test_env_and_clear_env_reach_the_app(tmp_path):
    port = free_port()
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "envy.py").write_text(
        "import json, os\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'application/json')])\n"
        "    return [json.dumps({'APP_ENV': os.environ.get('APP_ENV'), 'HOME': os.environ.get('HOME'),\n"
        "                        'cwd': os.getcwd()}).encode()]\n")

    async def fetch(port: int) -> dict:
        async with open_connection(f"127.0.0.1:{port}") as conn:
            return json.loads((await conn.request(cgi_params("GET", "/"))).body)

    cfg = pool(port, pm="static", pm_max_children=1, app="envy:app", chdir=str(app_dir),
               clear_env=True, env={"APP_ENV": "production"})
    with master(tmp_path, cfg):
        got = trio.run(fetch, port)
    assert got == {"APP_ENV": "production", "HOME": None, "cwd": str(app_dir)}


def test_reload_moves_a_pool_whose_listen_changed(tmp_path):
    old_port, new_port = free_port(), free_port()
    with master(tmp_path, pool(old_port, pm="static", pm_max_children=1)) as proc:
        wait_until(lambda: children(proc.pid), what="a child")
        write_pool_file(proc.config_path, fast_global(), pool(new_port, pm="static", pm_max_children=1))
        proc.send_signal(signal.SIGUSR2)
        wait_for_port("127.0.0.1", new_port)
        assert load(new_port, total=2)[0] == 2
        wait_until(lambda: "reload done" in log_of(proc), what="the reload")
        wait_until(lambda: len(children(proc.pid)) == 1, what="the old child gone")
        wait_for_port_closed(old_port)


def test_dynamic_pool_at_max_children_says_so(tmp_path):
    port = free_port()
    cfg = pool(port, pm="dynamic", pm_max_children=2, pm_start_servers=1, pm_min_spare_servers=1, pm_max_spare_servers=2)
    with master(tmp_path, cfg) as proc:
        wait_until(lambda: children(proc.pid), what="a child")
        ok, failures, _ = load(port, "/?sleep_ms=300", total=120, concurrency=12, seconds=6.0)
        assert failures == [] and ok > 0
        assert len(children(proc.pid)) == 2
        assert "[pool www] server reached pm.max_children setting (2), consider raising it" in log_of(proc)


def test_children_stop_when_the_master_is_killed(tmp_path):
    port = free_port()
    with master(tmp_path, pool(port, pm="static", pm_max_children=2)) as proc:
        kids = wait_until(lambda: len(children(proc.pid)) == 2 and children(proc.pid), what="2 children")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        wait_until(lambda: all(_zombie_or_gone(pid) for pid in kids), what="orphans gone")
