"""A hung worker process (SIGSTOP: its host still answers TCP) costs a request a few seconds, not read_timeout.

Our front-end pings a multiplexed connection that has been silent with requests
in flight (ping_interval) and gives it up when the worker's loop does not
answer (ping_timeout); the GET then goes to the other worker. A slow app on a
live worker answers the pings from the worker's loop and is left alone.
php-fpm says FCGI_MPXS_CONNS=0 and answers no GET_VALUES while a request runs:
it is never pinged, so its slow scripts are never taken for a hung process.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import pathlib
import signal
import textwrap
import time
from collections.abc import Iterator

from tests._peers import LOOPBACK, PHP_PAGES, Peers, free_port

from ._frontend import frontend_from_file
from ._worker import worker_process

PING_INTERVAL = 1.0
PING_TIMEOUT = 2.0
READ_TIMEOUT = 60.0


@contextlib.contextmanager
def frontend(directory: pathlib.Path, *workers: int) -> Iterator[tuple[int, pathlib.Path]]:
    port = free_port()
    config = directory / "frontend.toml"
    servers = ", ".join(f'"{LOOPBACK}:{worker}"' for worker in workers)
    config.write_text(textwrap.dedent(f"""\
        [frontend]
        listen = "{LOOPBACK}:{port}"
        processes = 1
        access_log = false
        [upstream.app]
        servers = [{servers}]
        read_timeout = "{READ_TIMEOUT:g}s"
        ping_interval = "{PING_INTERVAL:g}s"
        ping_timeout = "{PING_TIMEOUT:g}s"
        """))
    log = directory / "frontend.log"
    with frontend_from_file(config, port, log_path=log):
        yield port, log


def timed_get(port: int, target: str) -> tuple[int, str, float]:
    """(status, the worker that answered, seconds taken)."""
    start = time.monotonic()
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=READ_TIMEOUT + 10)
    try:
        conn.request("GET", target)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    worker = json.loads(body)["worker"].split()[0] if response.status == 200 else ""
    return response.status, worker, time.monotonic() - start


def test_a_stopped_worker_s_get_is_answered_by_the_other_within_the_ping_timeout(tmp_path):
    with worker_process() as (w1, victim), worker_process() as (w2, _):
        with frontend(tmp_path, w1, w2) as (port, log):
            # Both workers answered once: their connections are open and known to multiplex.
            warm = {timed_get(port, "/who")[1] for _ in range(4)}
            assert warm == {f"{LOOPBACK}:{w1}", f"{LOOPBACK}:{w2}"}
            victim.send_signal(signal.SIGSTOP)
            try:
                results = [timed_get(port, f"/who/{i}") for i in range(4)]
            finally:
                victim.send_signal(signal.SIGCONT)
            text = log.read_text()
    assert [status for status, _, _ in results] == [200] * 4
    assert {worker for _, worker, _ in results} == {f"{LOOPBACK}:{w2}"}
    slowest = max(seconds for _, _, seconds in results)
    print(f"GETs with one worker stopped: {', '.join(f'{s:.2f}' for _, _, s in results)} s")
    # Round robin sent at least one GET to the stopped worker: held a silent
    # interval plus the ping's timeout, then retried, far under read_timeout.
    assert PING_INTERVAL + PING_TIMEOUT - 0.5 <= slowest < READ_TIMEOUT / 4
    assert "did not answer a FastCGI ping" in text


def test_a_slow_app_on_a_live_worker_is_not_declared_dead(tmp_path):
    with worker_process() as (w1, _):
        with frontend(tmp_path, w1) as (port, log):
            status, worker, seconds = timed_get(port, "/who?sleep_ms=8000")
            text = log.read_text()
    assert (status, worker) == (200, f"{LOOPBACK}:{w1}")
    assert seconds >= 8.0  # the app's own sleep, many ping intervals long
    assert "did not answer a FastCGI ping" not in text


def test_php_fpm_is_never_pinged_so_a_slow_script_answers(tmp_path):
    with contextlib.ExitStack() as stack:
        fpm = Peers(stack, tmp_path).php_fpm(max_children=1)
        port = free_port()
        config = tmp_path / "cluster.toml"
        # Pings this eager would give up any connection they were sent on:
        # php-fpm's child reads nothing until its script ends.
        config.write_text(
            f'[frontend]\nlisten = "{LOOPBACK}:{port}"\nprocesses = 1\nroot = "{PHP_PAGES}"\naccess_log = false\n'
            f'[upstream.php]\nservers = ["{LOOPBACK}:{fpm.port}"]\nping_interval = "0.3s"\nping_timeout = "0.3s"\n'
        )
        log = tmp_path / "frontend.log"
        stack.enter_context(frontend_from_file(config, port, log_path=log))
        start = time.monotonic()
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
        try:
            conn.request("GET", "/sleep.php?ms=3000")
            response = conn.getresponse()
            status, body = response.status, response.read()
        finally:
            conn.close()
        seconds = time.monotonic() - start
        text = log.read_text()
    assert (status, body) == (200, b"slept")
    assert seconds >= 3.0
    assert "did not answer a FastCGI ping" not in text
