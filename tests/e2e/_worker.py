"""Start our own worker as a real process, like the peers in tests/_peers.py."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from tests._peers import REPO_ROOT, free_port, python_executable, run_process


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
