"""``fcgi-cluster ctl``: run a command on a running front-end's control listener, print its answer.

    fcgi-cluster ctl -c cluster.toml drain app 127.0.0.1:9001
    fcgi-cluster ctl --control unix:/run/fcgi-cluster.sock status
    fcgi-cluster ctl --control 127.0.0.1:8081 metrics
    fcgi-cluster ctl --control 127.0.0.1:8081 --token-file /etc/fcgi-cluster/control.token status

With ``-c``, the cluster file's ``control_token_file`` (if set) gives the
token sent as ``Authorization: Bearer``; ``--token-file`` gives or overrides it.

Exit status: 0 when the front-end carried the command out, 1 when it
refused it (its message on stderr) or could not be reached, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import http.client
import socket
import sys

from .._address import parse_address
from ._control_token import bearer, read_token

__all__ = ["ctl_main", "control_request"]

#: Seconds to wait for the front-end's answer.
TIMEOUT = 30.0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def control_request(address: str, method: str, path: str, body: str = "", timeout: float = TIMEOUT,
                    token: str = "") -> tuple[int, str]:
    """One request to a control listener: (HTTP status, body text).

    Raises:
        OSError: the listener cannot be reached or did not answer in time.
        ValueError: ``address`` is not an address.
    """
    parsed = parse_address(address)
    conn: http.client.HTTPConnection
    if parsed.path is not None:
        conn = _UnixConnection(parsed.path, timeout)
    else:
        conn = http.client.HTTPConnection(parsed.host or "127.0.0.1", parsed.port, timeout=timeout)
    try:
        headers = {"Content-Type": "text/plain"}
        if token:
            headers["Authorization"] = bearer(token)
        conn.request(method, path, body=body.encode(), headers=headers)
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    except http.client.HTTPException as exc:
        raise OSError(f"bad answer from {address}: {exc!r}") from None
    finally:
        conn.close()


def ctl_main(argv: list[str]) -> int:
    """The ``ctl`` subcommand."""
    parser = argparse.ArgumentParser(
        prog="fcgi-cluster ctl",
        description="Control a running front-end: drain, down, up, weight, add, remove a server; purge cached answers; "
                    "show its status (JSON) or metrics (OpenMetrics).",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("-c", "--config", metavar="FILE", help="cluster.toml whose [frontend] control to use")
    where.add_argument("--control", metavar="ADDRESS", help="the control listener: host:port or unix:/path")
    parser.add_argument("--token-file", metavar="FILE",
                        help="file holding the control token (default: the cluster file's control_token_file)")
    parser.add_argument("command", nargs="+",
                        help="status | metrics | drain|down|up|remove UPSTREAM ADDRESS | "
                             "weight UPSTREAM ADDRESS N | add UPSTREAM ADDRESS [WEIGHT] | "
                             "purge ROUTE_PREFIX | purge CACHE_KEY | purge KEY_PREFIX*")
    args = parser.parse_args(argv)
    address = args.control
    token_file = args.token_file or ""
    if args.config:
        from ._config import ConfigError, load_config

        try:
            frontend = load_config(args.config).frontend
        except (ConfigError, OSError) as exc:
            print(f"fcgi-cluster ctl: {exc}", file=sys.stderr)
            return 1
        address, token_file = frontend.control, token_file or frontend.control_token_file
        if not address:
            print(f"fcgi-cluster ctl: {args.config} sets no [frontend] control listener", file=sys.stderr)
            return 1
    token = ""
    if token_file:
        try:
            token = read_token(token_file)
        except (OSError, ValueError) as exc:
            print(f"fcgi-cluster ctl: control token: {exc}", file=sys.stderr)
            return 1
    words = args.command
    try:
        if words == ["status"]:
            status, text = control_request(address, "GET", "/status", token=token)
        elif words == ["metrics"]:
            status, text = control_request(address, "GET", "/metrics", token=token)
        else:
            status, text = control_request(address, "POST", "/control", " ".join(words), token=token)
    except (OSError, ValueError) as exc:
        print(f"fcgi-cluster ctl: cannot reach the control listener {address}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"fcgi-cluster ctl: {text.strip()}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0
