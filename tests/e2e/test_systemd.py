"""systemd integration as systemd drives it: readiness on $NOTIFY_SOCKET, socket activation.

The test plays systemd's notification side (a unix datagram socket it reads),
launches servers with Debian's real ``systemd-socket-activate`` (which binds
the socket, then execs the server with ``LISTEN_FDS``), and, for restarts,
holds the listening socket itself as systemd does, so that connections made
while no server runs queue in its backlog.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import pathlib
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests._peers import REPO_ROOT, cgi_fcgi_request, free_port, parse_cgi_response, python_executable, wait_for_port

from .test_frontend_process import http_get

#: Generous for a loaded 2-core machine.
WAIT_SECONDS = 30.0

CLI = [python_executable(), "-m", "fcgi_cluster.cli"]


class Notifications:
    """A NOTIFY_SOCKET: a datagram socket at a path, or in the abstract namespace."""

    def __init__(self, where: str) -> None:
        self.name = where
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + where[1:] if where.startswith("@") else where)
        # As systemd: the kernel says which process sent each message.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        #: The pid of every message's sender, in order.
        self.senders: list[int] = []

    def next(self, timeout: float = WAIT_SECONDS) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                self.senders.append(struct.unpack("=iII", value[:12])[0])
        return dict(line.split("=", 1) for line in data.decode().splitlines())

    def pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        return True

    def wait_for(self, key: str) -> dict[str, str]:
        """The next message with ``key`` (STATUS-only ones are skipped)."""
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            message = self.next(max(0.1, deadline - time.monotonic()))
            if key in message:
                return message
            assert set(message) == {"STATUS"}, message


def _cluster_file(path: pathlib.Path, fe: int, pool: int, processes: int = 1) -> pathlib.Path:
    path.write_text(
        f'[frontend]\nlisten = "127.0.0.1:{fe}"\naccess_log = false\nprocesses = {processes}\n'
        f'[upstream.app]\nservers = ["127.0.0.1:{pool}"]\n'
        f'[pool.a]\nlisten = "127.0.0.1:{pool}"\napp = "workers.echo:app"\ngraceful_timeout = 5\n'
    )
    return path


def _pool_argv(cluster: pathlib.Path) -> list[str]:
    return CLI + ["worker", "--cluster", str(cluster), "--pool", "a"]


def _frontend_argv(cluster: pathlib.Path) -> list[str]:
    return CLI + ["frontend", "-c", str(cluster)]


@contextlib.contextmanager
def _started(argv: list[str], log: pathlib.Path, env: dict[str, str] | None = None,
             listen: socket.socket | None = None) -> Iterator[subprocess.Popen]:
    """``argv`` running; with ``listen``, given that socket as systemd does (fd 3, LISTEN_*)."""
    env = dict(env or os.environ, PYTHONPATH=str(REPO_ROOT))
    fd = listen.fileno() if listen is not None else -1

    def as_systemd() -> None:
        # In the child, before exec: the socket at fd 3 and this process's pid.
        os.dup2(fd, 3)
        os.environ.update(env, LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
    preexec = as_systemd if listen is not None else None
    with open(log, "ab") as out:
        process = subprocess.Popen(argv, cwd=REPO_ROOT, env=None if listen is not None else env,
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   preexec_fn=preexec, close_fds=listen is None, start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _wait_connectable(port: int, process: subprocess.Popen, log: pathlib.Path) -> None:
    """Until a connection to ``port`` is accepted (by whoever listens: systemd's socket too)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.01)


def _listening(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


def _fcgi_pid(port: int) -> int:
    status, _, body = parse_cgi_response(cgi_fcgi_request("127.0.0.1", port, {}, timeout=WAIT_SECONDS))
    assert status == 200
    return int(json.loads(body)["worker"].split()[1])


def _http_pid(port: int) -> int:
    status, _, body = http_get(port, "/", timeout=WAIT_SECONDS)
    assert status == 200
    return int(json.loads(body)["worker"].split()[1])


@pytest.mark.parametrize("role", ["frontend", "pool", "up"])
def test_ready_reloading_stopping_in_order(tmp_path: pathlib.Path, role: str) -> None:
    fe, pool = free_port(), free_port()
    cluster = _cluster_file(tmp_path / "cluster.toml", fe, pool)
    where = f"@fcgi-cluster-test-{os.getpid()}-{role}" if role == "pool" else str(tmp_path / "notify")
    notes = Notifications(where)
    env = dict(os.environ, NOTIFY_SOCKET=where)
    argv = {"frontend": _frontend_argv(cluster), "pool": _pool_argv(cluster),
            "up": CLI + ["up", "-c", str(cluster)]}[role]
    with _started(argv, tmp_path / "server.log", env) as process:
        ready = notes.wait_for("READY")
        assert ready["READY"] == "1" and ready["STATUS"].startswith("serving")
        if role == "up":  # ready means the whole cluster answers
            assert _http_pid(fe) > 0
        process.send_signal(signal.SIGUSR2 if role == "pool" else signal.SIGHUP)
        reloading = notes.wait_for("RELOADING")
        usec = int(reloading["MONOTONIC_USEC"])
        assert abs(usec - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < WAIT_SECONDS * 1e6
        assert notes.wait_for("READY")["READY"] == "1"
        process.send_signal(signal.SIGTERM)
        assert notes.wait_for("STOPPING")["STOPPING"] == "1"
        assert process.wait(WAIT_SECONDS) == 0
    # Only the main process spoke (systemd's NotifyAccess=main drops the others').
    assert notes.senders and set(notes.senders) == {process.pid}


def _socket_activate() -> str:
    found = shutil.which("systemd-socket-activate")
    if found is None:
        pytest.skip("systemd-socket-activate is not installed (Debian package systemd; scripts/install-deps.sh)")
    return found


@pytest.mark.parametrize("role", ["frontend", "pool"])
def test_socket_activation_serves_a_connection_made_before_ready(tmp_path: pathlib.Path, role: str) -> None:
    activate = _socket_activate()
    fe, pool = free_port(), free_port()
    cluster = _cluster_file(tmp_path / "cluster.toml", fe, pool)
    notes = Notifications(str(tmp_path / "notify"))
    port = fe if role == "frontend" else pool
    argv = _frontend_argv(cluster) if role == "frontend" else _pool_argv(cluster)
    # The pool's socket is found by its name; the front-end's by its address.
    named = ["--fdname", "a"] if role == "pool" else []
    launcher = [activate, "-l", f"127.0.0.1:{port}", *named,
                "-E", f"PYTHONPATH={REPO_ROOT}", "-E", f"PATH={os.environ['PATH']}",
                "-E", f"NOTIFY_SOCKET={notes.name}", *argv]
    with contextlib.ExitStack() as stack:
        if role == "frontend":
            pool_process = stack.enter_context(_started(_pool_argv(cluster), tmp_path / "pool.log"))
            wait_for_port("127.0.0.1", pool, WAIT_SECONDS, process=pool_process)
        process = stack.enter_context(_started(launcher, tmp_path / "server.log"))
        _wait_connectable(port, process, tmp_path / "server.log")
        # systemd-socket-activate listens; the server is still starting.
        early = notes.pending() is False
        with concurrent.futures.ThreadPoolExecutor(1) as executor:
            answer = executor.submit(_http_pid if role == "frontend" else _fcgi_pid, port)
            assert notes.wait_for("READY")["READY"] == "1"
            assert answer.result(WAIT_SECONDS) > 0
    assert early, "the server was ready before the first connection: nothing was shown"
    assert "socket from systemd" in (tmp_path / "server.log").read_text()


def test_up_hands_systemds_sockets_on_to_the_front_end_and_the_pool(tmp_path: pathlib.Path) -> None:
    # Both sockets bound by systemd-socket-activate before `up` starts; a
    # connection made at once waits in the front door's backlog and is served
    # by the pool through the pool's handed-on socket, and `up` binds nothing.
    activate = _socket_activate()
    fe, pool, spare = free_port(), free_port(), free_port()
    cluster = _cluster_file(tmp_path / "cluster.toml", fe, pool)
    notes = Notifications(str(tmp_path / "notify"))
    launcher = [activate, "-l", f"127.0.0.1:{fe}", "-l", f"127.0.0.1:{pool}", "-l", f"127.0.0.1:{spare}",
                "-E", f"PYTHONPATH={REPO_ROOT}", "-E", f"PATH={os.environ['PATH']}",
                "-E", f"NOTIFY_SOCKET={notes.name}", *CLI, "up", "-c", str(cluster)]
    log = tmp_path / "up.log"
    with _started(launcher, log) as process:
        _wait_connectable(fe, process, log)
        with concurrent.futures.ThreadPoolExecutor(1) as executor:
            answer = executor.submit(_http_pid, fe)
            assert notes.wait_for("READY")["READY"] == "1"
            assert answer.result(WAIT_SECONDS) > 0
        assert _fcgi_pid(pool) > 0
        text = log.read_text()
        assert text.count("socket from systemd") == 2, text  # the front-end's and the pool's
        assert "matches no listen address; closed" in text  # the spare one
        assert process.poll() is None


@pytest.mark.parametrize("role", ["frontend", "frontend-2-processes", "pool"])
def test_connections_queue_across_a_restart(tmp_path: pathlib.Path, role: str) -> None:
    fe, pool = free_port(), free_port()
    cluster = _cluster_file(tmp_path / "cluster.toml", fe, pool, 2 if role.endswith("processes") else 1)
    role = role.split("-")[0]
    port = fe if role == "frontend" else pool
    ask = _http_pid if role == "frontend" else _fcgi_pid
    argv = _frontend_argv(cluster) if role == "frontend" else _pool_argv(cluster)
    listen = _listening(port)
    with contextlib.ExitStack() as stack:
        stack.callback(listen.close)
        if role == "frontend":
            pool_process = stack.enter_context(_started(_pool_argv(cluster), tmp_path / "pool.log"))
            wait_for_port("127.0.0.1", pool, WAIT_SECONDS, process=pool_process)
        with _started(argv, tmp_path / "first.log", listen=listen) as first:
            first_pid = ask(port)
            first.send_signal(signal.SIGTERM)
            assert first.wait(WAIT_SECONDS) == 0
        # Nobody serves the port now; systemd (here: the test) still holds it.
        executor = stack.enter_context(concurrent.futures.ThreadPoolExecutor(4))
        queued = [executor.submit(ask, port) for _ in range(4)]
        time.sleep(0.5)
        assert not any(future.done() for future in queued)
        with _started(argv, tmp_path / "second.log", listen=listen):
            pids = [future.result(WAIT_SECONDS) for future in queued]  # each asserted a 200
            assert len(pids) == 4
            if role == "pool":  # a new master's child served them (the front-end's answers name the pool's)
                assert first_pid not in pids
    assert "socket from systemd" in (tmp_path / "second.log").read_text()


def test_the_example_unit_files_verify(tmp_path: pathlib.Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd; scripts/install-deps.sh)")
    program = pathlib.Path(python_executable()).with_name("fcgi-cluster")
    assert program.exists(), f"{program}: the package's console script is not installed"
    units = []
    for unit in sorted((REPO_ROOT / "deploy").glob("*.s*")):
        # The paths of this machine, so that verify can check the programs exist.
        (tmp_path / unit.name).write_text(unit.read_text().replace("/usr/local/bin/fcgi-cluster", str(program)))
        units.append(str(tmp_path / unit.name))
    assert {pathlib.Path(u).suffix for u in units} == {".service", ".socket"}
    result = subprocess.run([analyze, "verify", "--man=no", *units], capture_output=True, text=True, timeout=60)
    if "System has not been booted with systemd" in result.stderr or "Failed to connect to bus" in result.stderr:
        pytest.skip(f"systemd-analyze verify cannot run in this container: {result.stderr.strip()}")
    assert result.returncode == 0 and result.stderr == "", result.stderr
