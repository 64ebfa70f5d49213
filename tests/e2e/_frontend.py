"""Start our front-end as a real process, like the peers in tests/_peers.py."""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess

from tests._peers import REPO_ROOT, python_executable, run_process


def frontend_argv(*args: str) -> list[str]:
    """The command line of ``fcgi-cluster frontend ARGS`` run from this checkout."""
    return [python_executable(), "-m", "fcgi_cluster.cli", "frontend", *args]


def frontend_from_file(config: pathlib.Path, port: int, *,
                       log_path: pathlib.Path | None = None) -> contextlib.AbstractContextManager[subprocess.Popen]:
    """Run ``fcgi-cluster frontend -c CONFIG`` for a ``with`` block; ready once ``port`` accepts.

    Args:
        config: the cluster file (its ``[frontend] listen`` is ``port``).
        port: the loopback port it listens on.
        log_path: where its output goes, kept (default: a temporary file,
            shown if it fails to start).

    Yields the process (``run_process``), stopped by PID when the block ends.
    """
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return run_process(frontend_argv("-c", str(config)), cwd=REPO_ROOT, env=env, ready_port=port,
                       name="fcgi-frontend", log_path=log_path)
