"""Start our own worker as a real process, like the peers in tests/_peers.py; and run one out of descriptors."""

from __future__ import annotations

import contextlib
import os
import pathlib
import socket
import time
from collections.abc import Iterator

from tests._peers import LOOPBACK, REPO_ROOT, free_port, python_executable, run_process


def worker_argv(app: str, listen: str, *extra: str) -> list[str]:
    return [python_executable(), "-m", "fcgi_cluster.cli", "worker", app, "--listen", listen, *extra]


@contextlib.contextmanager
def worker_process(app: str = "workers.echo:app", *extra: str, port: int | None = None) -> Iterator[tuple[int, object]]:
    """Run ``fcgi-cluster worker APP`` on a free loopback port; yields (port, process)."""
    port = port or free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    with run_process(worker_argv(app, f"127.0.0.1:{port}", *extra), cwd=REPO_ROOT, env=env,
                     ready_port=port, name="fcgi-worker") as process:
        yield port, process


#: The descriptor limit ``run_out_of_descriptors`` wants a server started under
#: (``prlimit --nofile``): room for its own files, not for 60 more clients.
LOW_NOFILE = 48


def run_out_of_descriptors(port: int, log_path: pathlib.Path, process: object) -> None:
    """Open 60 idle connections to a server started under ``LOW_NOFILE``, then close them.

    Checks, while they are open, that the server logged the failed accept
    with its reason (EMFILE) and is still running.
    """
    held = []
    try:
        for _ in range(60):
            held.append(socket.create_connection((LOOPBACK, port), timeout=5))
        deadline = time.monotonic() + 10
        while "cannot accept connections" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "Too many open files" in log_path.read_text()
        assert process.poll() is None  # type: ignore[attr-defined]
    finally:
        for sock in held:
            sock.close()
