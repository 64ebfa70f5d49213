"""`fcgi-cluster frontend -s reload|stop` (with --pid-file or --pid) and restart-only keys on reload."""

from __future__ import annotations

import os
import pathlib
import subprocess

import pytest

from tests._peers import REPO_ROOT, free_port, python_executable, run_process

from ._worker import worker_process
from .test_frontend_process import http_get
from .test_frontend_reload import cluster_file, wait_for

CLI = [python_executable(), "-m", "fcgi_cluster.cli", "frontend"]
ENV = dict(os.environ, PYTHONPATH=str(REPO_ROOT))


def _signal(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=30, cwd=REPO_ROOT, env=ENV)


def _log(process) -> str:
    return pathlib.Path(process.log_path).read_text()


@pytest.mark.parametrize("how", ["pid-file", "pid"])
def test_dash_s_reload_then_stop(tmp_path: pathlib.Path, how: str) -> None:
    port = free_port()
    path = tmp_path / "cluster.toml"
    pid_file = tmp_path / "frontend.pid"
    with worker_process() as (w1, _):
        path.write_text(cluster_file(port, [w1]))
        argv = [*CLI, "-c", str(path), "--pid-file", str(pid_file)]
        with run_process(argv, cwd=REPO_ROOT, env=ENV, ready_port=port, name="fcgi-frontend") as process:
            assert int(pid_file.read_text()) == process.pid
            target = ["--pid-file", str(pid_file)] if how == "pid-file" else ["--pid", str(process.pid)]
            assert http_get(port, "/new/x")[0] == 404
            path.write_text(cluster_file(port, [w1], extra_route=True))
            reload = _signal("-s", "reload", *target)
            assert reload.returncode == 0, reload.stderr
            wait_for(lambda: http_get(port, "/new/x")[0] == 200, timeout=30)
            assert "configuration reloaded" in _log(process)
            stop = _signal("-s", "stop", *target)
            assert stop.returncode == 0, stop.stderr
            assert process.wait(30) == 0
        assert not pid_file.exists()


def test_dash_s_without_a_running_front_end_is_one_line(tmp_path: pathlib.Path) -> None:
    missing = _signal("-s", "reload", "--pid-file", str(tmp_path / "none.pid"))
    assert missing.returncode != 0
    assert str(tmp_path / "none.pid") in missing.stderr and "Traceback" not in missing.stderr
    neither = _signal("-s", "stop")
    assert neither.returncode == 2 and "--pid-file" in neither.stderr


def test_changing_listen_on_reload_says_it_needs_a_restart_and_applies_the_rest(tmp_path: pathlib.Path) -> None:
    port, other = free_port(), free_port()
    path = tmp_path / "cluster.toml"
    with worker_process() as (w1, _):
        path.write_text(cluster_file(port, [w1]))
        argv = [*CLI, "-c", str(path)]
        with run_process(argv, cwd=REPO_ROOT, env=ENV, ready_port=port, name="fcgi-frontend") as process:
            path.write_text(cluster_file(other, [w1], extra_route=True))
            assert _signal("-s", "reload", "--pid", str(process.pid)).returncode == 0
            wait_for(lambda: "configuration reloaded" in _log(process), timeout=30)
            log = _log(process)
            assert "listen changed: the front-end must be restarted for it; the rest is applied" in log
            # Still on the old address, with the new route.
            assert http_get(port, "/new/x")[0] == 200
            with pytest.raises(OSError):
                http_get(other, "/new/x", timeout=2)
            assert process.poll() is None
