"""``fcgi-cluster worker -c FILE`` and ``-t`` with a real php-fpm style INI file.

These go through ``load_pool_config``; until the INI reader is in this tree they
skip, with the reason, instead of failing on its stub.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import signal
import subprocess
import sys

import pytest
import trio

from fcgi_cluster.client import cgi_params, open_connection
from fcgi_cluster.worker import load_pool_config
from tests._peers import REPO_ROOT, free_port, run_process
from tests.e2e.test_pool_master import children, wait_until
from tests.worker.test_status import parse_openmetrics


def _ini(tmp_path, port: int, app: str = "workers.echo:app", extra: str = "") -> str:
    path = tmp_path / "pool.conf"
    path.write_text(
        "[global]\n"
        f"error_log = {tmp_path / 'fpm.log'}\n"
        "\n"
        "[www]\n"
        f"listen = 127.0.0.1:{port}\n"
        f"app = {app}\n"
        "pm = static\n"
        "pm.max_children = 2\n"
        "clear_env = no\n" + extra)
    return str(path)


def _parser_ready(path: str) -> None:
    try:
        load_pool_config(path)
    except NotImplementedError:
        pytest.skip("the INI reader (load_pool_config) is not in this tree yet")


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-m", "fcgi_cluster.cli", "worker", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60, start_new_session=True)


def test_test_flag_checks_a_good_file(tmp_path):
    path = _ini(tmp_path, free_port())
    _parser_ready(path)
    result = _cli("-t", "-c", path)
    assert result.returncode == 0, result.stderr
    assert f"configuration file {path} test is successful" in result.stdout


def test_test_flag_names_the_apps_line(tmp_path):
    path = _ini(tmp_path, free_port(), app="no_such_module_here:app")
    _parser_ready(path)
    result = _cli("-t", "-c", path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"fcgi-cluster worker: {path}:6: app: cannot import 'no_such_module_here'")
    assert result.stderr.count("\n") == 1


def test_a_pool_file_serves_and_stops(tmp_path):
    port = free_port()
    path = _ini(tmp_path, port)
    _parser_ready(path)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    argv = [sys.executable, "-m", "fcgi_cluster.cli", "worker", "-c", path]
    with run_process(argv, cwd=REPO_ROOT, env=env, ready_port=port, name="pool-cli") as process:
        result = subprocess.run([sys.executable, "-m", "fcgi_cluster.cli", "request", f"127.0.0.1:{port}", "/"],
                                cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and '"worker"' in result.stdout
        process.send_signal(signal.SIGQUIT)
        assert process.wait(10) == 0
    assert "fpm is running" in (tmp_path / "fpm.log").read_text()


def test_app_and_c_together_is_a_usage_error(tmp_path):
    result = _cli("workers.echo:app", "-c", str(tmp_path / "x.conf"))
    assert result.returncode == 2 and "APP goes in the pool file" in result.stderr


@contextlib.contextmanager
def _pool_cli(path: str, port: int | None, name: str = "pool-cli", ready_unix: str | None = None):
    """``fcgi-cluster worker -c path`` until the block ends (SIGQUIT, then checked gone)."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    argv = [sys.executable, "-m", "fcgi_cluster.cli", "worker", "-c", path]
    with run_process(argv, cwd=REPO_ROOT, env=env, ready_port=port, ready_unix=ready_unix, name=name) as process:
        try:
            yield process
        finally:
            if process.poll() is None:
                kids = children(process.pid)
                process.send_signal(signal.SIGQUIT)
                assert process.wait(15) == 0
                assert not any(os.path.exists(f"/proc/{pid}/stat") and _alive(pid) for pid in kids)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_status_page_of_a_real_pool_shows_every_childs_requests(tmp_path):
    """Requests counted by each child's worker reach the pool's status page, from any child.

    fcgi.max_conns = 1 makes each child hold one connection, so two kept
    connections are served by the two children, one each (the third request
    would wait in the backlog): every status request below knows which child
    answers it.
    """
    port = free_port()
    path = _ini(tmp_path, port, extra="pm.status_path = /status\nfcgi.max_conns = 1\n")
    n = 10
    uri = "/status?json&full"

    async def scenario() -> tuple[list[int], list[dict], str]:
        pids: list[int] = []
        docs: list[dict] = []
        async with open_connection(f"127.0.0.1:{port}") as one, open_connection(f"127.0.0.1:{port}") as two:
            for i in range(n):
                answer = await (one, two)[i % 2].request(cgi_params("GET", f"/echo?i={i}"))
                assert answer.status == 200
                pids.append(int(json.loads(answer.body)["worker"].rsplit(" ", 1)[1]))
            for conn in (one, two):
                answer = await conn.request(cgi_params("GET", uri))
                assert answer.status == 200 and ("Content-Type", "application/json") in answer.headers
                docs.append(json.loads(answer.body))
            metrics = await one.request(cgi_params("GET", "/status?openmetrics&full"))
        return pids, docs, metrics.body.decode()

    with _pool_cli(path, port) as master:
        wait_until(lambda: len(children(master.pid)) == 2, what="two children")
        kids = children(master.pid)
        pids, docs, metrics = trio.run(scenario)
        assert children(master.pid) == kids

    # Both children served the app, alternately (one connection each).
    assert set(pids) == kids and pids[0::2] == [pids[0]] * (n // 2) and pids[1::2] == [pids[1]] * (n // 2)
    for k, (doc, answering) in enumerate(zip(docs, pids[:2]), start=1):
        # At the k-th status request: the n app requests and k-1 status requests
        # have finished, this one is accepted and running in the child answering it.
        assert doc["pool"] == "www" and doc["process manager"] == "static"
        assert doc["accepted conn"] == n + k
        assert sum(p["requests"] for p in doc["processes"]) == n + k - 1
        assert (doc["idle processes"], doc["active processes"], doc["total processes"]) == (1, 1, len(kids))
        assert {p["pid"] for p in doc["processes"]} == kids
        (running,) = [p for p in doc["processes"] if p["state"] == "Running"]
        assert running["pid"] == answering and running["request uri"] == uri
        assert doc["max active processes"] >= 1 and doc["listen queue len"] == 511
    types, samples = parse_openmetrics(metrics)
    pool = frozenset({("pool", "www")})
    assert samples[("fcgi_cluster_accepted_connections_total", pool)] == n + 3
    assert samples[("fcgi_cluster_total_processes", pool)] == 2
    per_child = {dict(labels)["pid"]: value for (name, labels), value in samples.items()
                 if name == "fcgi_cluster_process_requests_total"}
    assert {int(pid) for pid in per_child} == kids and sum(per_child.values()) == n + 2
    assert types["fcgi_cluster_accepted_connections"] == "counter"


def _sample(tmp_path: pathlib.Path, name: str, replacements: dict[str, str]) -> str:
    """A copy of ``workers/<name>`` with its fixed addresses and files replaced."""
    text = (REPO_ROOT / "workers" / name).read_text()
    for old, new in replacements.items():
        assert old in text, f"{name} no longer has {old!r}"
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text)
    return str(path)


async def _get(address: str, uri: str) -> tuple[int, bytes]:
    async with open_connection(address) as conn:
        answer = await conn.request(cgi_params("GET", uri))
        return answer.status, answer.body


def test_sample_www_conf_starts_and_answers(tmp_path):
    port = free_port()
    path = _sample(tmp_path, "www.conf", {"listen = 127.0.0.1:9001": f"listen = 127.0.0.1:{port}",
                                          "/tmp/$pool.slow.log": str(tmp_path / "$pool.slow.log")})
    address = f"127.0.0.1:{port}"
    with _pool_cli(path, port, "www-conf") as master:
        wait_until(lambda: len(children(master.pid)) == 2, what="pm.start_servers children")
        assert trio.run(_get, address, "/ping") == (200, b"pong")
        assert trio.run(_get, address, "/") == (200, b"hello")
        status, body = trio.run(_get, address, "/status")
        assert status == 200
        fields = dict(re.findall(r"^([a-z ]+):\s+(.*)$", body.decode(), re.M))
        assert fields["pool"] == "www" and fields["process manager"] == "dynamic"
        assert int(fields["total processes"]) == len(children(master.pid)) == 2  # pm.start_servers


def test_sample_pools_conf_starts_both_pools(tmp_path):
    port = free_port()
    sock = str(tmp_path / "echo.sock")
    path = _sample(tmp_path, "pools.conf", {"listen = 127.0.0.1:9001": f"listen = 127.0.0.1:{port}",
                                            "listen = /tmp/fcgi-cluster-$pool.sock": f"listen = {sock}",
                                            "/tmp/$pool.slow.log": str(tmp_path / "$pool.slow.log")})
    with _pool_cli(path, port, "pools-conf") as master:
        assert trio.run(_get, f"127.0.0.1:{port}", "/ping") == (200, b"pong")
        # www's start_servers; echo is ondemand: none yet.
        wait_until(lambda: len(children(master.pid)) == 2, what="pm.start_servers children")
        status, body = trio.run(_get, sock, "/x")
        assert status == 200 and json.loads(body)["worker"].startswith(sock)
        assert len(children(master.pid)) == 3
        assert oct(os.stat(sock).st_mode & 0o777) == "0o660"
