"""``fcgi-cluster up``: a whole cluster on one machine, from one cluster.toml.

Starts every ``[pool.NAME]`` as a ``fcgi-cluster worker`` process, waits until
each listens, then starts the front-end (``fcgi-cluster frontend -c FILE``),
prints the URL, and waits. Ctrl-C or SIGTERM stops everything: SIGTERM to
each process, then SIGKILL to any still running after ``STOP_GRACE``
seconds. If any process exits by itself, the others are stopped too and the
exit status says so: a half-running cluster is worse than none.

Without ``-c``, the built-in demo: the front-end on 127.0.0.1:8080 and two
pools on 127.0.0.1:9001 and 127.0.0.1:9002 running ``workers.echo:app``.
Each pool runs as a pool master (``fcgi-cluster worker --cluster FILE --pool
NAME``: one static child, the pool's settings from the file). Reloading:

- SIGUSR2 is passed to every pool master: each re-reads its ``[pool.NAME]`` and
  replaces its child gracefully (the new one starts on the same socket, the old
  one finishes its requests: no connection refused, no request lost);
- SIGHUP reloads everything: the front-end re-reads the file (its own SIGHUP)
  and every pool gets SIGUSR2 as above.

For several hosts, the same file runs on each with ``--only``: the front
door's host starts ``--only frontend``, each worker host ``--only pool.NAME``.

Under systemd (``Type=notify`` or ``notify-reload``) ``up`` speaks for the
whole cluster on ``$NOTIFY_SOCKET``: READY=1 once every part listens,
RELOADING=1 then READY=1 around a SIGHUP or SIGUSR2, STOPPING=1 at the
stop; its processes do not get the socket (systemd's ``NotifyAccess=main``
would drop their messages). Sockets systemd passes to ``up`` (socket
activation) are handed on to the part that listens on their address (or, for
a pool, whose name is their ``FileDescriptorName=``), each part seeing them
as systemd's own; one no part listens on is closed with a warning.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from ._systemd import Inherited, close_unused, hand_on, listen_sockets, notify, reloading, take_listener

__all__ = ["up_main", "DEMO_CONFIG", "STOP_GRACE"]

#: Seconds a process gets to finish after SIGTERM before SIGKILL.
STOP_GRACE = 10.0

#: Seconds to wait for each process to start listening.
START_TIMEOUT = 30.0

DEMO_CONFIG = """\
# The demo cluster of `fcgi-cluster up`: one front door, two worker pools.
[frontend]
listen = "127.0.0.1:8080"

[upstream.app]
servers = ["127.0.0.1:9001", "127.0.0.1:9002"]

[pool.a]
listen = "127.0.0.1:9001"
app = "workers.echo:app"

[pool.b]
listen = "127.0.0.1:9002"
app = "workers.echo:app"
"""


def _can_connect(address: str) -> bool:
    from ._address import parse_address

    parsed = parse_address(address)
    try:
        if parsed.path is not None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.5)
                sock.connect(parsed.path)
        else:
            host = parsed.host or "127.0.0.1"
            if host in ("0.0.0.0", "::"):
                host = "127.0.0.1" if host == "0.0.0.0" else "::1"
            socket.create_connection((host, parsed.port), timeout=0.5).close()
    except OSError:
        return False
    return True


class _Cluster:
    def __init__(self) -> None:
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], sockets: list[Inherited] = []) -> subprocess.Popen[bytes]:
        if sockets:  # systemd's, handed on: the child's environment is set in it (hand_on)
            pass_fds, in_child = hand_on(sockets)
            process = subprocess.Popen(argv, start_new_session=True, pass_fds=pass_fds, preexec_fn=in_child)
        else:
            # systemd hears from ``up`` alone: its parts never see the notify socket.
            env = {key: value for key, value in os.environ.items() if key != "NOTIFY_SOCKET"}
            process = subprocess.Popen(argv, env=env, start_new_session=True)
        self.processes.append((name, process))
        return process

    def wait_listening(self, name: str, process: subprocess.Popen[bytes], address: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not _can_connect(address):
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with status {process.returncode} before listening on {address}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} is not listening on {address} after {START_TIMEOUT:g} s")
            time.sleep(0.05)

    def stop(self) -> None:
        for _, process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for name, process in self.processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"fcgi-cluster up: {name} did not stop in {STOP_GRACE:g} s; killing it", file=sys.stderr)
                process.kill()
                process.wait()

    def wait_any_exit(self) -> tuple[str, int]:
        while True:
            for name, process in self.processes:
                code = process.poll()
                if code is not None:
                    return name, code
            time.sleep(0.2)


class _Stop(Exception):
    pass


def up_main(argv: list[str]) -> int:
    """Entry point of ``fcgi-cluster up``; returns the exit status."""
    from .frontend import ConfigError, load_config, parse_config

    parser = argparse.ArgumentParser(
        prog="fcgi-cluster up",
        description="Start a cluster on this machine: the worker pools and the front-end of a cluster.toml.",
    )
    parser.add_argument("-c", "--config", metavar="FILE", help="cluster.toml (default: the built-in demo)")
    parser.add_argument("--only", action="append", default=[], metavar="PART",
                        help='start only this part: "frontend" or "pool.NAME"; repeatable')
    args = parser.parse_args(argv)
    path = args.config
    temp: str | None = None
    try:
        if path is None:
            fd, temp = tempfile.mkstemp(prefix="fcgi-cluster-demo-", suffix=".toml")
            with os.fdopen(fd, "w") as file:
                file.write(DEMO_CONFIG)
            path = temp
            config = parse_config(DEMO_CONFIG, "<demo>", base_dir=os.getcwd())
        else:
            config = load_config(path)
        parts = set(args.only) or {"frontend", *(f"pool.{name}" for name in config.pools)}
        unknown = parts - {"frontend", *(f"pool.{name}" for name in config.pools)}
        if unknown:
            print(f"fcgi-cluster up: --only {sorted(unknown)[0]}: no such part in {path} "
                  f"(parts: frontend, {', '.join('pool.' + n for n in config.pools) or 'no pools'})", file=sys.stderr)
            return 2
        return _run(config, path, parts)
    except ConfigError as exc:
        print(f"fcgi-cluster up: {exc}", file=sys.stderr)
        return 2
    finally:
        if temp is not None:
            os.unlink(temp)


def _run(config: object, path: str, parts: set[str]) -> int:
    cluster = _Cluster()
    inherited = listen_sockets()

    def handed(addresses: list[str], names: tuple[str, ...] = ()) -> list[Inherited]:
        out = []
        for address in addresses:
            sock = take_listener(inherited, address, names)
            if sock is not None:
                out.append(Inherited(sock, names[0] if names else ""))
        return out

    handing = {f"pool.{name}": handed([pool.listen], (name,))  # type: ignore[attr-defined]
               for name, pool in config.pools.items() if f"pool.{name}" in parts}  # type: ignore[attr-defined]
    if "frontend" in parts:
        handing["frontend"] = handed(list(config.frontend.listen))  # type: ignore[attr-defined]
    command = [sys.executable, "-m", "fcgi_cluster.cli"]

    def on_signal(signum: int, _frame: object) -> None:
        raise _Stop()

    def forward(to_frontend: int | None, to_pools: int | None) -> None:
        for name, process in cluster.processes:
            signum = to_frontend if name == "frontend" else to_pools
            if signum is not None and process.poll() is None:
                process.send_signal(signum)

    status = ""  # "STATUS=serving: ..." once every part listens

    def reload(to_frontend: int | None) -> None:
        if status:  # before READY=1, systemd is not told of reloads
            reloading()
        forward(to_frontend, signal.SIGUSR2)
        if status:
            notify("READY=1", status)

    def on_hup(_signum: int, _frame: object) -> None:
        reload(signal.SIGHUP)

    def on_usr2(_signum: int, _frame: object) -> None:
        reload(None)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hup)
    previous[signal.SIGUSR2] = signal.signal(signal.SIGUSR2, on_usr2)
    try:
        for name, pool in config.pools.items():  # type: ignore[attr-defined]
            if f"pool.{name}" not in parts:
                continue
            argv = command + ["worker", "--cluster", path, "--pool", name]
            process = cluster.start(f"pool.{name}", argv, handing[f"pool.{name}"])
            cluster.wait_listening(f"pool.{name}", process, pool.listen)
            print(f"fcgi-cluster up: pool.{name} ({pool.app}) on {pool.listen}, pid {process.pid}", flush=True)
        if "frontend" in parts:
            process = cluster.start("frontend", command + ["frontend", "-c", path], handing["frontend"])
            listen = config.frontend.listen[0]  # type: ignore[attr-defined]
            cluster.wait_listening("frontend", process, listen)
            scheme = "https" if config.frontend.tls is not None else "http"  # type: ignore[attr-defined]
            print(f"fcgi-cluster up: front-end on {scheme}://{listen}/ , pid {process.pid}", flush=True)
            print(f"fcgi-cluster up: try  curl -i {scheme}://{listen}/hello  ; Ctrl-C stops everything", flush=True)
        # Every part has its sockets now: this process keeps none (nor those no part wanted).
        for item in (item for items in handing.values() for item in items):
            item.sock.close()
        close_unused(inherited, "fcgi-cluster up")
        status = "STATUS=serving: " + ", ".join(name for name, _ in cluster.processes)
        notify("READY=1", status)
        name, code = cluster.wait_any_exit()
        print(f"fcgi-cluster up: {name} exited with status {code}; stopping the cluster", file=sys.stderr)
        return 1
    except _Stop:
        print("fcgi-cluster up: stopping", file=sys.stderr, flush=True)
        return 0
    except RuntimeError as exc:
        print(f"fcgi-cluster up: {exc}; stopping the cluster", file=sys.stderr)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_IGN)
        notify("STOPPING=1", "STATUS=stopping")
        cluster.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
