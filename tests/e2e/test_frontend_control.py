"""Runtime control of a real front-end (`[frontend] control`, `fcgi-cluster ctl`) and its status.

Real front-end and worker processes; commands through the `ctl` command line.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

from prometheus_client.openmetrics.parser import text_string_to_metric_families

from tests._peers import REPO_ROOT, free_port, python_executable

from ._worker import worker_process
from .test_frontend_process import http_get
from ._frontend import frontend_from_file
from .test_frontend_reload import wait_for


def cluster_file(port: int, control: str, workers: list[int], *, processes: int = 1, state: str = "") -> str:
    servers = ", ".join(f'"127.0.0.1:{w}"' for w in workers)
    text = (f'[frontend]\nlisten = "127.0.0.1:{port}"\nprocesses = {processes}\naccess_log = false\n'
            f'control = "{control}"\n')
    if state:
        text += f'server_state_file = "{state}"\n'
    return text + f'\n[upstream.app]\nservers = [{servers}]\n'


def ctl(control: str, *words: str, config: pathlib.Path | None = None) -> subprocess.CompletedProcess:
    where = ["-c", str(config)] if config is not None else ["--control", control]
    argv = [python_executable(), "-m", "fcgi_cluster.cli", "ctl", *where, *words]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=REPO_ROOT, env=env)


def who(port: int, query: str = "") -> str:
    status, _, body = http_get(port, "/who" + query, timeout=30)
    assert status == 200, body
    return json.loads(body)["worker"].split()[0]


def status(control: str) -> dict:
    done = ctl(control, "status")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def servers(control: str) -> dict[str, dict]:
    return {s["address"]: s for up in status(control)["upstreams"] for s in up["servers"]}


@contextlib.contextmanager
def two_workers_under_control(tmp_path: pathlib.Path, **options) -> Iterator[tuple[int, str, str, str, object]]:
    """Two real workers behind a front-end with a control listener (``cluster_file`` options).

    Yields (port, control address, worker a, worker b, front-end process).
    """
    port, cport = free_port(), free_port()
    control = f"127.0.0.1:{cport}"
    path = tmp_path / "cluster.toml"
    with worker_process() as (w1, _), worker_process() as (w2, _):
        path.write_text(cluster_file(port, control, [w1, w2], **options))
        with frontend_from_file(path, port) as process:
            yield port, control, f"127.0.0.1:{w1}", f"127.0.0.1:{w2}", process


def test_drain_lets_in_flight_requests_finish_and_sends_no_new_one(tmp_path: pathlib.Path) -> None:
    with two_workers_under_control(tmp_path) as (port, control, a, b, process):
        assert sorted(who(port) for _ in range(4)) == sorted([a, a, b, b])
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            # Slow requests (6 s each: room for the commands on a busy machine) on both servers, then drain b.
            slow = [pool.submit(who, port, "?sleep_ms=6000") for _ in range(4)]
            wait_for(lambda: servers(control)[b]["in_flight"] == 2)
            done = ctl(control, "drain", "app", b)
            assert done.returncode == 0, done.stderr
            drained = servers(control)[b]
            assert drained["state"] == "drain" and drained["since"] > 0
            # New requests go to a only, while b's slow ones run on.
            assert {who(port) for _ in range(6)} == {a}
            assert servers(control)[b]["in_flight"] == 2
            assert sorted(f.result() for f in slow) == sorted([a, a, b, b])
        before = servers(control)[b]["requests"]
        assert {who(port) for _ in range(4)} == {a}
        assert servers(control)[b]["requests"] == before
        assert ctl(control, "up", "app", b).returncode == 0
        assert sorted(who(port) for _ in range(4)) == sorted([a, a, b, b])
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0


def test_down_closes_the_servers_connections_drain_keeps_them(tmp_path: pathlib.Path) -> None:
    with two_workers_under_control(tmp_path) as (port, control, a, b, process):
        assert sorted(who(port) for _ in range(4)) == sorted([a, a, b, b])
        assert servers(control)[b]["connections"] >= 1
        # Drained: no new request, the kept connection stays open (warm for `up`).
        assert ctl(control, "drain", "app", b).returncode == 0
        assert {who(port) for _ in range(4)} == {a}
        assert servers(control)[b]["connections"] >= 1
        assert ctl(control, "up", "app", b).returncode == 0
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            # Equal weights alternate: of two slow requests, one runs on b.
            slow = [pool.submit(who, port, "?sleep_ms=4000") for _ in range(2)]
            wait_for(lambda: servers(control)[b]["in_flight"] == 1)
            # Down: the slow request on b finishes on its connection, then none is left.
            assert ctl(control, "down", "app", b).returncode == 0
            assert sorted(f.result() for f in slow) == sorted([a, b])
        wait_for(lambda: servers(control)[b]["connections"] == 0)
        assert {who(port) for _ in range(4)} == {a}
        assert servers(control)[b]["connections"] == 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0


def test_commands_take_effect_survive_a_reload_and_bad_ones_are_refused(tmp_path: pathlib.Path) -> None:
    port, cport = free_port(), free_port()
    control = f"127.0.0.1:{cport}"
    path = tmp_path / "cluster.toml"
    state = tmp_path / "servers.state"
    with worker_process() as (w1, _), worker_process() as (w2, _), worker_process() as (w3, _):
        a, b, c = (f"127.0.0.1:{w}" for w in (w1, w2, w3))
        path.write_text(cluster_file(port, control, [w1, w2], state=str(state)))
        with frontend_from_file(path, port) as process:
            assert ctl(control, "down", "app", b, config=path).returncode == 0  # the address from the file
            assert {who(port) for _ in range(4)} == {a}
            assert ctl(control, "add", "app", c, "3").returncode == 0
            assert sorted(who(port) for _ in range(8)) == sorted([a, a, c, c, c, c, c, c])
            assert ctl(control, "weight", "app", c, "1").returncode == 0
            assert sorted(who(port) for _ in range(4)) == sorted([a, a, c, c])
            assert ctl(control, "remove", "app", a).returncode == 0
            assert {who(port) for _ in range(4)} == {c}
            # Errors: a clear message, a non-zero exit, and the front-end serves on.
            for words, message in [
                (("drain", "nope", a), "no upstream 'nope'"),
                (("drain", "app", "127.0.0.1:1"), "has no server 127.0.0.1:1"),
                (("frobnicate", "app", a), "unknown command 'frobnicate'"),
                (("weight", "app", c, "x"), "weight must be an integer"),
                (("add", "app", c), "already has server"),
                (("remove", "app", a), "has no server"),
            ]:
                done = ctl(control, *words)
                assert done.returncode == 1, (words, done.stdout)
                assert message in done.stderr, (words, done.stderr)
            assert {who(port) for _ in range(4)} == {c}
            # A SIGHUP re-reads the file; what was set stays.
            process.send_signal(signal.SIGHUP)
            wait_for(lambda: "configuration reloaded" in pathlib.Path(process.log_path).read_text())
            assert {who(port) for _ in range(4)} == {c}
            table = servers(control)
            assert table[b]["state"] == "down" and a not in table
            assert json.loads(state.read_text())["removed"] == [["app", a]]
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0
        # The state file is read at start: a restart keeps the servers as set.
        with frontend_from_file(path, port) as process:
            assert {who(port) for _ in range(4)} == {c}
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0


def test_control_refuses_addresses_outside_control_allow(tmp_path: pathlib.Path) -> None:
    port, cport = free_port(), free_port()
    control = f"127.0.0.1:{cport}"
    path = tmp_path / "cluster.toml"
    with worker_process() as (w1, _):
        text = cluster_file(port, control, [w1])
        path.write_text(text.replace("control = ", 'control_allow = ["10.0.0.0/8"]\ncontrol = '))
        with frontend_from_file(path, port) as process:
            done = ctl(control, "drain", "app", f"127.0.0.1:{w1}")
            assert done.returncode == 1
            assert "forbidden" in done.stderr
            assert who(port) == f"127.0.0.1:{w1}"
            # Garbage on the control port closes that connection only.
            with socket.create_connection(("127.0.0.1", cport), timeout=10) as sock:
                sock.sendall(b"\x00\xff garbage\r\n\r\n")
                assert sock.recv(100).startswith(b"HTTP/1.1 403")
            assert process.poll() is None
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0


def test_status_json_and_openmetrics_count_requests(tmp_path: pathlib.Path) -> None:
    with two_workers_under_control(tmp_path) as (port, control, a, b, process):
        before = servers(control)
        assert set(before) == {a, b}
        for _ in range(6):
            who(port)
        after = servers(control)
        for address in (a, b):
            assert after[address]["requests"] - before[address]["requests"] == 3
            assert after[address]["state"] == "up"
            assert after[address]["connections"] >= 1
        report = status(control)
        assert report["process"]["accepted"] >= 6
        assert report["process"]["requests"] >= 6
        done = ctl(control, "metrics")
        assert done.returncode == 0, done.stderr
        families = {f.name: f for f in text_string_to_metric_families(done.stdout)}
        requests = {s.labels["server"]: s.value for s in families["fcgi_cluster_server_requests"].samples
                    if s.name == "fcgi_cluster_server_requests_total"}
        assert requests == {a: after[a]["requests"], b: after[b]["requests"]}
        counts = {s.labels["server"]: s.value for s in families["fcgi_cluster_server_latency_seconds"].samples
                  if s.name == "fcgi_cluster_server_latency_seconds_count"}
        assert counts == {a: after[a]["requests"], b: after[b]["requests"]}
        assert sum(after[a]["latency"]["counts"]) == after[a]["requests"]
        states = [s for s in families["fcgi_cluster_server_state"].samples if s.value == 1]
        assert sorted((s.labels["server"], s.labels["fcgi_cluster_server_state"]) for s in states) == sorted([(a, "up"), (b, "up")])
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0


def test_two_processes_both_apply_a_command(tmp_path: pathlib.Path) -> None:
    with two_workers_under_control(tmp_path, processes=2) as (port, control, a, b, process):
        wait_for(lambda: ctl(control, "status").returncode == 0, timeout=20)
        assert ctl(control, "drain", "app", b).returncode == 0
        # New connections land on either process: none goes to b.
        wait_for(lambda: {who(port) for _ in range(20)} == {a}, timeout=20)
        assert {who(port) for _ in range(40)} == {a}
        # The status sums both processes: a row each, every request counted once.
        wait_for(lambda: len(status(control)["processes"]) == 2, timeout=20)
        # The other process's figures are up to a second old: count from
        # a total that no longer moves.
        counts = [servers(control)[a]["requests"]]

        def settled() -> bool:
            time.sleep(1.2)
            counts.append(servers(control)[a]["requests"])
            return counts[-1] == counts[-2]

        wait_for(settled, timeout=20)
        before = counts[-1]
        for _ in range(30):
            who(port)
        wait_for(lambda: servers(control)[a]["requests"] - before == 30, timeout=20)
        report = status(control)
        assert sum(p["accepted"] for p in report["processes"]) >= 60 + 30
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0


def test_a_unix_control_socket_without_a_file_and_bad_requests(tmp_path: pathlib.Path) -> None:
    from fcgi_cluster.frontend._ctl import control_request

    from .test_frontend_process import frontend_process

    control = f"unix:{tmp_path / 'control.sock'}"
    with worker_process() as (w1, _), worker_process() as (w2, _):
        a, b = f"127.0.0.1:{w1}", f"127.0.0.1:{w2}"
        # One process: the round robin counted below is per process.
        argv = ("--processes", "1", "--upstream", a, "--upstream", b, "--control", control)
        with frontend_process(*argv) as (port, process):
            wait_for(lambda: (tmp_path / "control.sock").exists())
            done = ctl(control, "drain", "default", a)
            assert done.returncode == 0, done.stderr
            assert {who(port) for _ in range(4)} == {b}
            # Wrong method, unknown path, an oversized command: 4xx, and it serves on.
            assert control_request(control, "GET", "/control")[0] == 405
            assert control_request(control, "POST", "/status")[0] == 405
            assert control_request(control, "GET", "/nowhere")[0] == 404
            assert control_request(control, "POST", "/control", "x" * 10_000)[0] == 400
            assert ctl(control, "up", "default", a).returncode == 0
            assert sorted(who(port) for _ in range(4)) == sorted([a, a, b, b])
            assert process.poll() is None
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0
    assert not (tmp_path / "control.sock").exists()  # removed at exit
    # Nobody listens any more: ctl says so and exits 1.
    done = ctl(control, "status")
    assert done.returncode == 1
    assert "cannot reach the control listener" in done.stderr


def test_reload_under_load_adds_then_removes_a_server_as_status_shows(tmp_path: pathlib.Path) -> None:
    port, cport = free_port(), free_port()
    control = f"127.0.0.1:{cport}"
    path = tmp_path / "cluster.toml"
    stop = threading.Event()
    with worker_process() as (w1, _), worker_process() as (w2, _):
        a, b = f"127.0.0.1:{w1}", f"127.0.0.1:{w2}"
        path.write_text(cluster_file(port, control, [w1]))
        with frontend_from_file(path, port) as process:
            assert set(servers(control)) == {a}

            def load(_: int) -> list[tuple[int, str]]:
                seen = []
                deadline = time.monotonic() + 60
                while not stop.is_set() and len(seen) < 3000 and time.monotonic() < deadline:
                    status, _, body = http_get(port, "/who", timeout=30)
                    seen.append((status, json.loads(body)["worker"].split()[0] if status == 200 else ""))
                return seen

            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                running = [pool.submit(load, i) for i in range(4)]
                try:
                    wait_for(lambda: servers(control)[a]["requests"] >= 20, timeout=30)
                    path.write_text(cluster_file(port, control, [w1, w2]))
                    process.send_signal(signal.SIGHUP)
                    wait_for(lambda: set(servers(control)) == {a, b}, timeout=30)
                    wait_for(lambda: servers(control)[b]["requests"] >= 20, timeout=30)
                    path.write_text(cluster_file(port, control, [w2]))
                    process.send_signal(signal.SIGHUP)
                    wait_for(lambda: set(servers(control)) == {b}, timeout=30)
                    after = servers(control)[b]["requests"]
                    wait_for(lambda: servers(control)[b]["requests"] >= after + 20, timeout=30)
                finally:
                    stop.set()
                seen = [item for f in running for item in f.result()]
            # Every request under both reloads answered, by the servers of its time.
            assert [s for s, _ in seen if s != 200] == []
            order = [w for _, w in seen]
            assert order.count(a) >= 20 and order.count(b) >= 40
            assert {who(port) for _ in range(6)} == {b}
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0
