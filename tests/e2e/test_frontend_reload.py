"""`fcgi-cluster frontend` reloads its cluster file on SIGHUP: real front-end and worker processes."""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import signal
import subprocess
import time

from tests._peers import REPO_ROOT, free_port, python_executable

from ._frontend import frontend_from_file
from ._worker import worker_process
from .test_frontend_process import http_get


def cluster_file(port: int, workers: list[int], *, extra_route: bool = False, processes: int = 1) -> str:
    servers = ", ".join(f'"127.0.0.1:{w}"' for w in workers)
    text = (f'[frontend]\nlisten = "127.0.0.1:{port}"\nprocesses = {processes}\naccess_log = false\n\n'
            f'[upstream.app]\nservers = [{servers}]\n\n')
    if extra_route:
        text += '[[route]]\nprefix = "/new/"\nupstream = "app"\n\n'
    text += '[[route]]\nprefix = "/old/"\nupstream = "app"\n'
    return text


def wait_for(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_reload_under_load_adds_a_route_and_drops_nothing(tmp_path: pathlib.Path) -> None:
    port = free_port()
    path = tmp_path / "cluster.toml"
    with worker_process() as (w1, _), worker_process() as (w2, _):
        path.write_text(cluster_file(port, [w1]))
        with frontend_from_file(path, port) as process:
            assert http_get(port, "/new/x")[0] == 404

            def load(_: int) -> list[int]:
                return [http_get(port, "/old/x")[0] for _ in range(60)]

            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                results = pool.map(load, range(4))
                time.sleep(0.2)
                path.write_text(cluster_file(port, [w1, w2], extra_route=True))
                process.send_signal(signal.SIGHUP)
                time.sleep(0.3)
                process.send_signal(signal.SIGHUP)
                statuses = [s for batch in results for s in batch]
            assert statuses == [200] * 240
            wait_for(lambda: http_get(port, "/new/x")[0] == 200)
            # A bad file: logged with its file and line, the running configuration stays.
            path.write_text(cluster_file(port, [w1], extra_route=True) + "\n[upstream.app2]\nservers = 3\n")
            process.send_signal(signal.SIGHUP)
            wait_for(lambda: str(path) in pathlib.Path(process.log_path).read_text())
            log = pathlib.Path(process.log_path).read_text()
            assert "the running configuration stays" in log
            assert http_get(port, "/new/x")[0] == 200
            assert process.poll() is None
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0


def test_reload_with_two_processes_reloads_both(tmp_path: pathlib.Path) -> None:
    port = free_port()
    path = tmp_path / "cluster.toml"
    with worker_process() as (w1, _):
        path.write_text(cluster_file(port, [w1], processes=2))
        with frontend_from_file(path, port) as process:
            path.write_text(cluster_file(port, [w1], processes=2, extra_route=True))
            # One signal, sent as soon as the port listens: children still
            # starting apply it once they serve (or, not forked yet, start
            # with the file the parent read again).
            process.send_signal(signal.SIGHUP)
            # New connections land on either process: every one knows the route.
            wait_for(lambda: [http_get(port, "/new/x")[0] for _ in range(20)] == [200] * 20, timeout=30)
            assert "configuration reloaded" in pathlib.Path(process.log_path).read_text()
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0


def test_dash_t_checks_a_file(tmp_path: pathlib.Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(cluster_file(free_port(), [free_port()]))
    bad = tmp_path / "bad.toml"
    bad.write_text(cluster_file(free_port(), [free_port()]) + "\n[frontend2]\nx = 1\n")
    argv = [python_executable(), "-m", "fcgi_cluster.cli", "frontend", "-t", "-c"]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    ok = subprocess.run([*argv, str(good)], capture_output=True, text=True, timeout=30, cwd=REPO_ROOT, env=env)
    assert ok.returncode == 0
    assert f"configuration file {good} test is successful" in ok.stdout
    failed = subprocess.run([*argv, str(bad)], capture_output=True, text=True, timeout=30, cwd=REPO_ROOT, env=env)
    assert failed.returncode == 1
    assert f"{bad}:" in failed.stderr
