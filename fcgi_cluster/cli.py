"""The ``fcgi-cluster`` command: ``worker`` and ``request``.

Every failure a user can cause (a bad address, an app that does not import, an
address in use, an unreachable worker) ends with one line on stderr naming what
is wrong, and a non-zero exit status: never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__

__all__ = ["main"]


def _worker_main(argv: list[str]) -> int:
    from ._address import parse_address
    from .worker import AppLoadError, ListenError, WorkerConfig, load_app, run_worker

    parser = argparse.ArgumentParser(
        prog="fcgi-cluster worker",
        description="Serve a WSGI or ASGI app over FastCGI (the php-fpm role).",
    )
    parser.add_argument("app", metavar="APP", help="module:attribute, importable from the current directory")
    parser.add_argument("--listen", "-l", default="127.0.0.1:9000",
                        help="host:port, [v6addr]:port or a unix socket path (default %(default)s)")
    defaults = WorkerConfig()
    parser.add_argument("--threads", type=int, default=defaults.threads,
                        help="threads running WSGI code at once (default %(default)s)")
    parser.add_argument("--max-requests", type=int, default=defaults.max_requests,
                        help="requests in flight per connection, FCGI_MAX_REQS (default %(default)s)")
    parser.add_argument("--max-conns", type=int, default=defaults.max_conns,
                        help="connections served at once, FCGI_MAX_CONNS (default %(default)s)")
    parser.add_argument("--graceful-timeout", type=float, default=defaults.graceful_timeout,
                        help="seconds in-flight requests may run after SIGTERM (default %(default)s)")
    parser.add_argument("--root-path", default="", help="SCRIPT_NAME of the app when the web server sends no PATH_INFO")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    for name, value in (("--threads", args.threads), ("--max-requests", args.max_requests), ("--max-conns", args.max_conns)):
        if value < 1:
            parser.error(f"{name} must be at least 1")
    try:
        address = parse_address(args.listen)
        app = load_app(args.app)
    except (ValueError, AppLoadError) as exc:
        print(f"fcgi-cluster worker: {exc}", file=sys.stderr)
        return 2
    config = WorkerConfig(
        threads=args.threads,
        max_requests=args.max_requests,
        max_conns=args.max_conns,
        graceful_timeout=args.graceful_timeout,
        root_path=args.root_path.rstrip("/"),
    )
    try:
        run_worker(app, address, config)
    except ListenError as exc:
        print(f"fcgi-cluster worker: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        print(f"fcgi-cluster worker: {exc}", file=sys.stderr)
        return 1
    return 0


def _request_main(argv: list[str]) -> int:
    from .client._cli import request_main

    return request_main(argv)


COMMANDS = {
    "worker": (_worker_main, "serve a WSGI/ASGI app over FastCGI"),
    "request": (_request_main, "send one FastCGI request and print the answer"),
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fcgi-cluster`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: fcgi-cluster COMMAND [ARGS]\n\ncommands:")
        for name, (_, summary) in COMMANDS.items():
            print(f"  {name:10} {summary}")
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"fcgi-cluster {__version__}")
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"fcgi-cluster: unknown command {argv[0]!r} (try: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    try:
        return command[0](argv[1:])
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
