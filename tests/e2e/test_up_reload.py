"""`fcgi-cluster up` runs its pools as pool masters: SIGUSR2 and SIGHUP reload them under load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

from tests._peers import REPO_ROOT, free_port, python_executable, run_process

from .test_frontend_process import http_get

# Generous for a loaded 2-core machine.
RELOAD_SECONDS = 30.0


def _served_by(fe: int) -> str:
    status, _, body = http_get(fe, "/")
    assert status == 200
    return json.loads(body)["worker"].split()[1]


def _cluster_file(path, fe: int, p1: int) -> None:
    path.write_text(
        f'[frontend]\nlisten = "127.0.0.1:{fe}"\naccess_log = false\n'
        f'[upstream.app]\nservers = ["127.0.0.1:{p1}"]\n'
        f'[pool.a]\nlisten = "127.0.0.1:{p1}"\napp = "workers.echo:app"\ngraceful_timeout = 10\n'
    )


def _reload_under_load(tmp_path, signum: int) -> tuple[str, str, list[str], int]:
    fe, p1 = free_port(), free_port()
    path = tmp_path / "cluster.toml"
    _cluster_file(path, fe, p1)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    argv = [python_executable(), "-m", "fcgi_cluster.cli", "up", "-c", str(path)]
    failures: list[str] = []
    done = 0
    stop = threading.Event()
    lock = threading.Lock()

    def client() -> None:
        nonlocal done
        # Bounded: at most 2000 requests each, and the main thread stops them.
        for _ in range(2000):
            if stop.is_set():
                return
            try:
                status, _, _ = http_get(fe, "/?sleep_ms=20", timeout=30)
                if status != 200:
                    failures.append(f"status {status}")
            except OSError as exc:
                failures.append(repr(exc))
            with lock:
                done += 1

    with run_process(argv, cwd=REPO_ROOT, env=env, ready_port=fe, name="fcgi-up", timeout=60,
                     log_path=tmp_path / "up.log") as up:
        before = _served_by(fe)
        threads = [threading.Thread(target=client) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(1.0)
            up.send_signal(signum)
            deadline = time.monotonic() + RELOAD_SECONDS
            after = before
            while after == before and time.monotonic() < deadline:
                time.sleep(0.2)
                after = _served_by(fe)
            time.sleep(0.5)
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
        log = up.log_path.read_text()
        alive = up.poll() is None
    assert alive, log
    return before, after, failures, done


def test_sigusr2_to_up_replaces_the_pool_children_with_no_failed_request(tmp_path) -> None:
    before, after, failures, done = _reload_under_load(tmp_path, signal.SIGUSR2)
    assert after != before, "the pool's child was not replaced"
    assert failures == []
    assert done > 0


def test_sighup_to_up_reloads_the_pools_too(tmp_path) -> None:
    before, after, failures, done = _reload_under_load(tmp_path, signal.SIGHUP)
    assert after != before, "SIGHUP did not reach the pool"
    assert failures == []
    assert done > 0


def test_worker_cluster_pool_errors_are_one_line(tmp_path) -> None:
    path = tmp_path / "cluster.toml"
    _cluster_file(path, free_port(), free_port())
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    argv = [python_executable(), "-m", "fcgi_cluster.cli", "worker", "--cluster", str(path)]
    missing = subprocess.run([*argv, "--pool", "nope"], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, env=env)
    assert missing.returncode == 2
    assert f"{path}: pool.nope: no such table (pools: a)" in missing.stderr
    assert "Traceback" not in missing.stderr
    alone = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, env=env)
    assert alone.returncode == 2 and "--cluster FILE and --pool NAME go together" in alone.stderr
    checked = subprocess.run([*argv, "--pool", "a", "-t"], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, env=env)
    assert checked.returncode == 0 and "test is successful" in checked.stdout
