"""The ``fcgi-cluster`` command: ``up``, ``frontend``, ``worker`` and ``request``.

Every failure a user can cause (a bad address, an app that does not import, an
address in use, an unreachable worker) ends with one line on stderr naming what
is wrong, and a non-zero exit status: never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from . import __version__

__all__ = ["main"]


def _worker_main(argv: list[str]) -> int:
    from ._address import parse_address
    from .worker import AppLoadError, ListenError, WorkerConfig, load_app, run_worker

    parser = argparse.ArgumentParser(
        prog="fcgi-cluster worker",
        description="Serve a WSGI or ASGI app over FastCGI (the php-fpm role): "
                    "one process for APP, or a managed pool of processes per [pool] of a -c file.",
    )
    parser.add_argument("app", metavar="APP", nargs="?", help="module:attribute, importable from the current directory")
    parser.add_argument("-c", "--config", metavar="FILE",
                        help="a php-fpm style pool file: [global] and one [pool] section per pool")
    parser.add_argument("-t", "--test", action="store_true",
                        help="with -c: check the file (keys, listen addresses, app imports) and exit")
    parser.add_argument("--cluster", metavar="FILE",
                        help="with --pool: run the [pool.NAME] of a cluster.toml as a pool master (what `up` runs)")
    parser.add_argument("--pool", metavar="NAME", help="with --cluster: the pool to run")
    parser.add_argument("--listen", "-l", default="127.0.0.1:9000",
                        help="host:port, [v6addr]:port or a unix socket path (default %(default)s)")
    defaults = WorkerConfig()
    parser.add_argument("--threads", type=int, default=defaults.threads,
                        help="threads running WSGI code at once; 0 = on the event loop, one request "
                             "at a time, as a php-fpm child (default %(default)s)")
    parser.add_argument("--max-requests", type=int, default=defaults.max_requests,
                        help="requests in flight per connection, FCGI_MAX_REQS (default %(default)s)")
    parser.add_argument("--max-conns", type=int, default=defaults.max_conns,
                        help="connections served at once, FCGI_MAX_CONNS (default %(default)s)")
    parser.add_argument("--graceful-timeout", type=float, default=defaults.graceful_timeout,
                        help="seconds in-flight requests may run after SIGTERM (default %(default)s)")
    parser.add_argument("--root-path", default="", help="SCRIPT_NAME of the app when the web server sends no PATH_INFO")
    parser.add_argument("--session", action="append", default=[], metavar="KEY=VALUE",
                        help="a session.* setting (PHP's names, e.g. save_handler=redis), repeatable; "
                             "any of them turns sessions on")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    if args.cluster or args.pool:
        if not (args.cluster and args.pool) or args.app or args.config:
            parser.error("--cluster FILE and --pool NAME go together, without APP or -c")
        import functools

        from ._up_pool import cluster_pool_file
        return _pool_main(args.cluster, args.test, functools.partial(cluster_pool_file, pool=args.pool))
    if args.config:
        if args.app:
            parser.error("APP goes in the pool file (app = module:attribute) when -c is given")
        return _pool_main(args.config, args.test)
    if args.test:
        parser.error("--test checks a pool file: give -c FILE")
    if not args.app:
        parser.error("give APP (module:attribute) or -c FILE")
    _setup_logging(args.log_level)
    session = None
    if args.session:
        from .sessions import SessionConfigError, parse_session_settings

        raw: dict[str, str] = {}
        for item in args.session:
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or not key:
                print(f"fcgi-cluster worker: --session {item!r}: expected KEY=VALUE", file=sys.stderr)
                return 2
            raw[key if key.startswith("session.") else f"session.{key}"] = value
        try:
            session = parse_session_settings(raw)
        except SessionConfigError as exc:
            print(f"fcgi-cluster worker: --session {exc}", file=sys.stderr)
            return 2
    if args.threads < 0:
        parser.error("--threads must be 0 or more")
    for name, value in (("--max-requests", args.max_requests), ("--max-conns", args.max_conns)):
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
        session=session,
    )
    from .sessions import SessionConfigError, StoreError

    try:
        run_worker(app, address, config)
    except SessionConfigError as exc:
        print(f"fcgi-cluster worker: --session {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"fcgi-cluster worker: session store: {exc}", file=sys.stderr)
        return 1
    except ListenError as exc:
        print(f"fcgi-cluster worker: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        print(f"fcgi-cluster worker: {exc}", file=sys.stderr)
        return 1
    return 0


def _pool_main(path: str, test: bool, loader: object = None) -> int:
    """``worker -c FILE``: the pool master; every startup failure is one line on stderr."""
    from ._settings import SettingsError
    from .worker import PoolFile, PoolStartError, check_pools, load_pool_config, run_pools

    load = loader or load_pool_config
    try:
        pool_file: PoolFile = load(path)  # type: ignore[operator]
        if test:
            check_pools(pool_file)
            print(f"fcgi-cluster worker: configuration file {path} test is successful")
            return 0
        return run_pools(pool_file, loader=load)  # type: ignore[arg-type]
    except SettingsError as exc:
        print(f"fcgi-cluster worker: {exc}", file=sys.stderr)
        return 2
    except PoolStartError as exc:
        print(f"fcgi-cluster worker: {exc}", file=sys.stderr)
        return exc.status


def _setup_logging(level: str, error_log: str = "-") -> None:
    fmt = "%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s"
    if error_log in ("-", ""):
        logging.basicConfig(level=level.upper(), format=fmt)
    else:
        logging.basicConfig(level=level.upper(), format=fmt, filename=error_log)


def _frontend_main(argv: list[str]) -> int:
    from .frontend import BindError, ConfigError, load_config, run_frontend, simple_config

    parser = argparse.ArgumentParser(
        prog="fcgi-cluster frontend",
        description="Serve HTTP/1.1 and pass requests to FastCGI worker pools (the nginx role).",
    )
    parser.add_argument("-c", "--config", metavar="FILE", help="cluster.toml: front-end, upstreams, routes")
    parser.add_argument("--cluster", metavar="FILE",
                        help="with --pool: run the [pool.NAME] of a cluster.toml as a pool master (what `up` runs)")
    parser.add_argument("--pool", metavar="NAME", help="with --cluster: the pool to run")
    parser.add_argument("--listen", "-l", action="append", default=[],
                        help="address to serve HTTP on, repeatable (default 127.0.0.1:8080)")
    parser.add_argument("--upstream", "-u", action="append", default=[],
                        help="a worker's address, repeatable: one round-robin pool (without -c)")
    parser.add_argument("--root", help="DOCUMENT_ROOT; SCRIPT_FILENAME is it plus the path (without -c)")
    parser.add_argument("--processes", "-p", help='front-end processes sharing the port: a number or "auto"')
    parser.add_argument("--access-log", help='"-" (stdout), a file, or "off"')
    parser.add_argument("--max-body-size", help='largest request body, e.g. "100m"; 0 = unlimited (without -c)')
    parser.add_argument("--control", metavar="ADDRESS",
                        help="control and status listener (host:port or unix:/path), for fcgi-cluster ctl")
    parser.add_argument("-t", "--test", action="store_true",
                        help="with -c: check the file and exit 0 (good) or 1 (the error, as file:line: key)")
    parser.add_argument("-s", "--signal", choices=["reload", "stop"],
                        help="send SIGHUP (reload) or SIGTERM (stop) to the running front-end named by --pid-file or --pid")
    parser.add_argument("--pid-file", metavar="FILE", help="write the front-end's pid here (read by -s)")
    parser.add_argument("--pid", type=int, help="with -s: the front-end's pid")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    if args.signal:
        return _send_signal(args.signal, args.pid, args.pid_file)
    if args.test:
        if not args.config:
            parser.error("-t checks a cluster file: give -c FILE")
        try:
            load_config(args.config)
        except ConfigError as exc:
            print(f"fcgi-cluster frontend: {exc}", file=sys.stderr)
            print(f"fcgi-cluster frontend: configuration file {args.config} test failed", file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"fcgi-cluster frontend: {exc}", file=sys.stderr)
            return 1
        print(f"fcgi-cluster frontend: configuration file {args.config} test is successful")
        return 0
    overrides: dict[str, object] = {}
    if args.processes is not None:
        overrides["processes"] = int(args.processes) if args.processes.isdigit() else args.processes
    if args.access_log is not None:
        overrides["access_log"] = False if args.access_log == "off" else args.access_log
    if args.control is not None:
        overrides["control"] = args.control
    try:
        if args.config:
            if args.upstream or args.root or args.max_body_size:
                parser.error("--upstream, --root and --max-body-size go in the file when -c is given")

            def reload_config() -> object:
                config = load_config(args.config)
                if args.listen or overrides:
                    # Command-line values override the file's [frontend]; they are
                    # checked by the same rules, as if written in a file.
                    checked = simple_config(args.listen, ["127.0.0.1:1"], **overrides).frontend
                    keys = [*overrides, *(["listen"] if args.listen else [])]
                    frontend = dataclasses.replace(config.frontend, **{key: getattr(checked, key) for key in keys})
                    config = dataclasses.replace(config, frontend=frontend)
                return config

            config = reload_config()
        else:
            if not args.upstream:
                parser.error("give -c FILE or at least one --upstream ADDRESS")
            if args.max_body_size is not None:
                overrides["max_body_size"] = args.max_body_size
            config = simple_config(args.listen, args.upstream, args.root, **overrides)
            reload_config = None
    except ConfigError as exc:
        print(f"fcgi-cluster frontend: {exc}", file=sys.stderr)
        return 2
    _setup_logging(args.log_level, config.frontend.error_log)
    try:
        return run_frontend(config, reload_config=reload_config, pid_file=args.pid_file)  # type: ignore[arg-type]
    except BindError as exc:
        print(f"fcgi-cluster frontend: {exc.strerror}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"fcgi-cluster frontend: {exc}", file=sys.stderr)
        return 1


def _send_signal(name: str, pid: int | None, pid_file: str | None) -> int:
    """``frontend -s reload|stop``: signal the running front-end, as ``nginx -s``."""
    import os
    import signal

    if pid is None:
        if not pid_file:
            print("fcgi-cluster frontend: -s needs --pid-file FILE or --pid PID", file=sys.stderr)
            return 2
        try:
            with open(pid_file) as file:
                pid = int(file.read().strip())
        except (OSError, ValueError) as exc:
            print(f"fcgi-cluster frontend: cannot read the pid from {pid_file}: {exc}", file=sys.stderr)
            return 1
    try:
        os.kill(pid, signal.SIGHUP if name == "reload" else signal.SIGTERM)
    except OSError as exc:
        print(f"fcgi-cluster frontend: cannot signal process {pid}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


def _up_main(argv: list[str]) -> int:
    from ._up import up_main

    return up_main(argv)


def _ctl_main(argv: list[str]) -> int:
    from .frontend._ctl import ctl_main

    return ctl_main(argv)


def _request_main(argv: list[str]) -> int:
    from .client._cli import request_main

    return request_main(argv)


COMMANDS = {
    "up": (_up_main, "start a whole cluster on this machine: front-end and worker pools"),
    "frontend": (_frontend_main, "serve HTTP and balance requests over FastCGI workers"),
    "worker": (_worker_main, "serve a WSGI/ASGI app over FastCGI"),
    "request": (_request_main, "send one FastCGI request and print the answer"),
    "ctl": (_ctl_main, "drain, down, up, reweigh, add or remove a running front-end's server; its status"),
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
