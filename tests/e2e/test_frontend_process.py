"""`fcgi-cluster frontend` and `fcgi-cluster up` as real processes, with real workers and peers."""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import os
import pathlib
import resource
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests._peers import REPO_ROOT, flup_responder, free_port, python_executable, run_process

from ._frontend import frontend_argv
from ._worker import LOW_NOFILE, run_out_of_descriptors, worker_process


@contextlib.contextmanager
def frontend_process(*args: str, port: int | None = None) -> Iterator[tuple[int, subprocess.Popen]]:
    port = port or free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    argv = frontend_argv("--listen", f"127.0.0.1:{port}", "--access-log", "off", *args)
    with run_process(argv, cwd=REPO_ROOT, env=env, ready_port=port, name="fcgi-frontend") as process:
        yield port, process


def http_get(port: int, target: str, *, method: str = "GET", body: bytes | None = None,
             headers: dict[str, str] | None = None, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_frontend_command_serves_two_workers_round_robin() -> None:
    with worker_process() as (w1, _), worker_process() as (w2, _):
        # Round robin is per process (as nginx's without a zone): one process here.
        argv = ("--processes", "1", "--upstream", f"127.0.0.1:{w1}", "--upstream", f"127.0.0.1:{w2}")
        with frontend_process(*argv) as (port, process):
            workers = [json.loads(http_get(port, "/who")[2])["worker"].split()[0] for _ in range(10)]
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0
    assert workers.count(f"127.0.0.1:{w1}") == 5
    assert workers.count(f"127.0.0.1:{w2}") == 5


def test_a_killed_worker_costs_no_failed_get() -> None:
    # Bounded load (600 requests, 4 at a time) while one of two workers is
    # SIGKILLed: every GET must still get its 200 from the survivor.
    with worker_process() as (w1, victim), worker_process() as (w2, _):
        with frontend_process("--upstream", f"127.0.0.1:{w1}", "--upstream", f"127.0.0.1:{w2}") as (port, _):
            statuses: list[int] = []

            def client(n: int) -> None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                for i in range(150):
                    conn.request("GET", f"/load/{n}/{i}")
                    response = conn.getresponse()
                    response.read()
                    statuses.append(response.status)
                    if n == 0 and i == 30:
                        victim.kill()
                conn.close()

            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                list(pool.map(client, range(4)))
    assert len(statuses) == 600
    assert set(statuses) == {200}


def test_worker_back_after_fail_timeout_is_used_again() -> None:
    port_w1 = free_port()
    with worker_process() as (w2, _):
        config = (
            "[frontend]\naccess_log = false\n[upstream.app]\n"
            f'servers = [{{ address = "127.0.0.1:{port_w1}", fail_timeout = "1s" }}, "127.0.0.1:{w2}"]\n'
        )
        path = REPO_ROOT / ".pytest_cache" / f"fail-timeout-{os.getpid()}.toml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(config)
        try:
            with frontend_process("-c", str(path)) as (port, _):
                first = {json.loads(http_get(port, "/")[2])["worker"].split()[0] for _ in range(4)}
                assert first == {f"127.0.0.1:{w2}"}  # the dead one is skipped, no 502
                with worker_process(port=port_w1):
                    time.sleep(1.2)
                    later = {json.loads(http_get(port, "/")[2])["worker"].split()[0] for _ in range(6)}
        finally:
            path.unlink()
    assert f"127.0.0.1:{port_w1}" in later


@pytest.mark.parametrize("multiplexed", [True, False], ids=["flup-mpx", "flup-single"])
def test_flup_workers_behind_the_frontend(multiplexed: bool) -> None:
    with flup_responder("workers.echo:app", multiplexed=multiplexed) as flup:
        # Stock flup serves with 5 threads, and a kept connection holds one: one
        # front-end process with 4 clients opens at most 4; two could open 8, and
        # the sixth would wait for a thread forever (FIELD-NOTES: flup starves).
        with frontend_process("--upstream", f"127.0.0.1:{flup.port}", "--processes", "1") as (port, _):
            results = []
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                results = list(pool.map(lambda i: http_get(port, f"/f{i}?x={i}"), range(12)))
    for i, (status, _, body) in enumerate(results):
        assert status == 200
        assert json.loads(body)["environ"]["QUERY_STRING"] == f"x={i}"


def test_bad_config_names_file_line_and_key(tmp_path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text('[frontend]\nlisten = "127.0.0.1:8080"\n\n[upstream.app]\nservers = ["127.0.0.1:9001"]\nbalanse = "x"\n')
    result = subprocess.run(frontend_argv("-c", str(path)), capture_output=True, text=True, cwd=REPO_ROOT, timeout=30)
    assert result.returncode == 2
    assert f"{path}:6: upstream.app.balanse" in result.stderr
    assert "Traceback" not in result.stderr


def test_address_in_use_is_one_line() -> None:
    with worker_process() as (w1, _):
        result = subprocess.run(
            frontend_argv("--listen", f"127.0.0.1:{w1}", "--upstream", f"127.0.0.1:{w1}"),
            capture_output=True, text=True, cwd=REPO_ROOT, timeout=30,
        )
    assert result.returncode == 1
    assert "address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_processes_share_the_port_and_a_dead_one_is_replaced() -> None:
    with worker_process() as (w1, _):
        with frontend_process("--upstream", f"127.0.0.1:{w1}", "--processes", "2") as (port, parent):
            deadline = time.monotonic() + 10
            children: list[int] = []
            while time.monotonic() < deadline and len(children) < 2:
                children = _children(parent.pid)
                time.sleep(0.05)
            assert len(children) == 2
            os.kill(children[0], signal.SIGKILL)
            statuses = [http_get(port, f"/p{i}")[0] for i in range(20)]
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                now = _children(parent.pid)
                if len(now) == 2 and children[0] not in now:
                    break
                time.sleep(0.05)
            assert len(now) == 2 and children[0] not in now
            parent.send_signal(signal.SIGTERM)
            assert parent.wait(15) == 0
    assert set(statuses) == {200}


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def test_up_starts_the_cluster_and_stops_it(tmp_path) -> None:
    fe, p1, p2 = free_port(), free_port(), free_port()
    path = tmp_path / "cluster.toml"
    path.write_text(
        f'[frontend]\nlisten = "127.0.0.1:{fe}"\naccess_log = false\n'
        f'[upstream.app]\nservers = ["127.0.0.1:{p1}", "127.0.0.1:{p2}"]\n'
        f'[pool.a]\nlisten = "127.0.0.1:{p1}"\napp = "workers.echo:app"\n'
        f'[pool.b]\nlisten = "127.0.0.1:{p2}"\napp = "workers.echo:app"\n'
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    argv = [python_executable(), "-m", "fcgi_cluster.cli", "up", "-c", str(path)]
    with run_process(argv, cwd=REPO_ROOT, env=env, ready_port=fe, name="fcgi-up", timeout=60) as up:
        seen = {json.loads(http_get(fe, "/")[2])["worker"].split()[0] for _ in range(4)}
        # `up` prints the URL once it has seen the front-end listen itself.
        deadline = time.monotonic() + 10
        while f"http://127.0.0.1:{fe}/" not in up.log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        descendants = _children(up.pid)
        assert len(descendants) == 3
        up.send_signal(signal.SIGTERM)
        assert up.wait(30) == 0
        log = up.log_path.read_text()
    assert seen == {f"127.0.0.1:{p1}", f"127.0.0.1:{p2}"}
    assert f"http://127.0.0.1:{fe}/" in log
    for pid in descendants:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def _open_file_limit(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-file limit in /proc")


@pytest.mark.parametrize("hard", [4096, 512])
@pytest.mark.parametrize("role", ["frontend", "worker"])
def test_servers_raise_their_open_file_limit_to_the_hard_limit(tmp_path: pathlib.Path, role: str, hard: int) -> None:
    # Started with the common soft limit far below the hard one, as from a
    # shell: the server takes all the hard limit allows, and says when that
    # is less than its configuration may need (1,024 connections by default).
    port = free_port()
    if role == "frontend":
        argv = frontend_argv("--listen", f"127.0.0.1:{port}", "--upstream", "127.0.0.1:9")
    else:
        argv = [python_executable(), "-m", "fcgi_cluster.cli", "worker", "workers.hello:app", "--listen", f"127.0.0.1:{port}"]

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(argv, cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
                                   stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                   preexec_fn=low_limit)
    try:
        deadline = time.monotonic() + 15
        while "listening on" not in log_path.read_text() and "serving" not in log_path.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        assert _open_file_limit(process.pid) == hard
    finally:
        process.terminate()
        process.wait(15)
    warned = "open-file limit is 512" in log_path.read_text()
    assert warned is (hard == 512), log_path.read_text()


def test_out_of_file_descriptors_pauses_accepting_and_the_front_end_serves_on(tmp_path) -> None:
    # A hard limit the front-end cannot raise, and more idle clients than it
    # allows: accept() fails with EMFILE. It logs that, pauses accepting and
    # serves on once descriptors are free, instead of ending.
    with worker_process() as (worker_port, _):
        port = free_port()
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        argv = ["prlimit", f"--nofile={LOW_NOFILE}:{LOW_NOFILE}", *frontend_argv(
            "--listen", f"127.0.0.1:{port}", "--processes", "1", "--access-log", "off", "--upstream", f"127.0.0.1:{worker_port}")]
        log_path = tmp_path / "frontend.log"
        with run_process(argv, cwd=REPO_ROOT, env=env, ready_port=port, name="fcgi-frontend",
                         log_path=log_path) as process:
            run_out_of_descriptors(port, log_path, process)
            status, _, body = http_get(port, "/after")
            assert status == 200
            assert json.loads(body)["environ"]["PATH_INFO"] == "/after"
            assert process.poll() is None
