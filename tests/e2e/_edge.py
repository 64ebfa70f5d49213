"""A real cluster (``fcgi-cluster up``) for the edge tests, and raw HTTP over a socket.

``edge_cluster`` writes a cluster file whose ``{name}`` placeholders are free
loopback ports (``fe``, ``pp`` for a second listener, ``p1``, ``p2`` for
pools), runs ``fcgi-cluster up -c`` on it from the worktree, and stops it
(SIGTERM, then its group killed) however the test ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import time
from collections.abc import Iterator

from tests._peers import REPO_ROOT, free_port, python_executable, run_process, wait_for_port

PORT_NAMES = ("fe", "pp", "p1", "p2")


@contextlib.contextmanager
def edge_cluster(tmp_path: pathlib.Path, text: str, **more: str) -> Iterator[tuple[dict[str, int], object]]:
    """Run ``up`` on ``text`` (``{fe}``... filled with free ports, ``more`` with strings); yields (ports, process)."""
    ports = {name: free_port() for name in PORT_NAMES}
    path = tmp_path / "cluster.toml"
    path.write_text(text.format(**ports, **more))
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    argv = [python_executable(), "-m", "fcgi_cluster.cli", "up", "-c", str(path)]
    with run_process(argv, cwd=REPO_ROOT, env=env, ready_port=ports["fe"], name="fcgi-up", timeout=60,
                     log_path=tmp_path / "up.log") as process:
        if "{pp}" in text:
            wait_for_port("127.0.0.1", ports["pp"], timeout=30)
        yield ports, process


def exchange(port: int, data: bytes, timeout: float = 15.0) -> bytes:
    """Send ``data`` on a new connection and read until the server closes it (or ``timeout``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        return received


def get_bytes(target: str, headers: dict[str, str] | None = None, *, close: bool = True) -> bytes:
    """A GET request's bytes."""
    lines = [f"GET {target} HTTP/1.1", "Host: edge.test", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers lower-cased, body) of one whole HTTP/1.1 response with a Content-Length."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def environ_of(raw: bytes) -> dict[str, str]:
    """The echo app's environ from its raw HTTP answer."""
    status, _, body = split_response(raw)
    assert status == 200, raw[:300]
    return json.loads(body)["environ"]
