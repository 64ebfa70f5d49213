"""Fixtures for the client tests: real flup FastCGI servers in subprocesses.

Each server listens on a port the OS picked (or a unix socket) and reports it
on stdout, so there is no race for a free port. Every process is killed by its
PID when the session ends, whatever happened.
"""

from __future__ import annotations

import select
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

RUNNER = Path(__file__).with_name("_flup_runner.py")
ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 20.0


@contextmanager
def run_flup(*args: str, log: Path) -> Iterator[str]:
    """Start ``_flup_runner.py``; yield the address it listens on; kill it after."""
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, str(RUNNER), *args], stdout=subprocess.PIPE, stderr=log_file, stdin=subprocess.DEVNULL
        )
        try:
            assert proc.stdout is not None
            deadline = time.monotonic() + START_TIMEOUT
            line = b""
            while not line.endswith(b"\n"):
                remaining = deadline - time.monotonic()
                ready, _, _ = select.select([proc.stdout], [], [], max(remaining, 0))
                if not ready:
                    pytest.fail(f"flup did not start within {START_TIMEOUT} s; log: {log.read_text()}")
                chunk = proc.stdout.read1(100)  # type: ignore[attr-defined]
                if not chunk:
                    pytest.fail(f"flup exited with {proc.wait()}; log: {log.read_text()}")
                line += chunk
            where = line.decode().strip()
            yield where if where.startswith("/") else f"127.0.0.1:{where}"
        finally:
            proc.kill()
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture(scope="session")
def flup_mpx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A multiplexing flup server on TCP: its address as 'host:port'."""
    with run_flup("--multiplexed", log=tmp_path_factory.mktemp("flup") / "mpx.log") as address:
        yield address


@pytest.fixture(scope="session")
def flup_single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A flup server that does not multiplex (its default), on TCP."""
    with run_flup(log=tmp_path_factory.mktemp("flup") / "single.log") as address:
        yield address


@pytest.fixture(scope="session")
def flup_unix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A multiplexing flup server on a unix socket: its path."""
    where = tmp_path_factory.mktemp("flup")
    with run_flup("--multiplexed", "--unix", str(where / "flup.sock"), log=where / "unix.log") as address:
        yield address


@pytest.fixture(params=["multiplexed", "single"])
def flup(request: pytest.FixtureRequest) -> str:
    """Each flup server in turn (multiplexed, then not)."""
    return request.getfixturevalue("flup_mpx" if request.param == "multiplexed" else "flup_single")
