"""Serve a small WSGI echo app with flup's threaded FastCGI server (a real peer).

    python tests/client/_flup_runner.py [--multiplexed] [--unix PATH]

Listens on 127.0.0.1 on a port the OS picks (or on a unix socket) and prints
that port (or path) on one line once it is listening, so the tests never race
for a "free" port. Runs until killed.

Routes (flup leaves PATH_INFO empty and puts the path in SCRIPT_NAME):
    /hello     200, "hello\\n"
    /echo      200, the request body back, with X-Method, X-Body-Length, X-Body-SHA256
    /missing   404 Not Found
    /environ   200, the CGI/WSGI environ's string values as JSON
    /stderr    200, and "worker says hi" on FastCGI STDERR
    /slow      ?ms=N&tag=T: sleeps N milliseconds, answers T
    /boom      the app raises: flup's own 500 page and a traceback on STDERR
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from urllib.parse import parse_qs

from flup.server.fcgi import WSGIServer


def app(environ, start_response):
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    if path == "/hello":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello\n"]
    if path == "/echo":
        body = environ["wsgi.input"].read()
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/octet-stream"),
                ("X-Method", environ["REQUEST_METHOD"]),
                ("X-Body-Length", str(len(body))),
                ("X-Body-SHA256", hashlib.sha256(body).hexdigest()),
            ],
        )
        return [body]
    if path == "/missing":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no such thing\n"]
    if path == "/environ":
        start_response("200 OK", [("Content-Type", "application/json")])
        values = {k: v for k, v in environ.items() if isinstance(v, str)}
        return [json.dumps(values).encode()]
    if path == "/stderr":
        environ["wsgi.errors"].write("worker says hi\n")
        environ["wsgi.errors"].flush()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"logged\n"]
    if path == "/slow":
        query = parse_qs(environ["QUERY_STRING"])
        time.sleep(int(query.get("ms", ["0"])[0]) / 1000)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [query.get("tag", [""])[0].encode()]
    if path == "/boom":
        raise RuntimeError("boom")
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"unknown route\n"]


class _ReportingServer(WSGIServer):
    def _setupSocket(self):
        sock = super()._setupSocket()
        where = sock.getsockname()
        print(where if isinstance(where, str) else where[1], flush=True)
        return sock


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--multiplexed", action="store_true")
    parser.add_argument("--unix", metavar="PATH")
    args = parser.parse_args()
    bind = args.unix if args.unix else ("127.0.0.1", 0)
    _ReportingServer(app, bindAddress=bind, multiplexed=args.multiplexed).run()


if __name__ == "__main__":
    sys.exit(main())
