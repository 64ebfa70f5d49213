"""Front-end memory with many idle keep-alive clients: bytes per idle client, ours vs nginx vs HAProxy.

Each front door stands in front of the same worker (one ``fcgi-cluster worker
workers.echo:app``):

* ``ours``: ``fcgi-cluster frontend -c`` from a generated TOML, ``max_connections``
  above the clients, ``keepalive_timeout`` longer than the run;
* ``nginx``: ``worker_processes 1``, upstream ``keepalive``, ``worker_connections``
  above the clients (``worker_rlimit_nofile`` raised to match);
* ``haproxy``: ``nbthread 1``, ``fcgi-app`` with ``option mpxs-conns``, ``maxconn``
  above the clients (haproxy raises its descriptor limit from it).

This process opens ``--clients`` TCP connections to the front door, at most
CONNECT_BATCH at a time, sends one keep-alive ``GET /?size=5`` on each, reads the
answer and leaves the connection open and idle. Then it reads the memory of the front
door's whole process tree from /proc (``VmRSS``, and ``Pss`` and USS = private clean +
private dirty from ``smaps_rollup``) and compares it with the reading taken before the
clients connected, after a few warm-up requests: bytes per idle client = (memory with N
clients - memory with 0) / N. Last, it checks every connection is still open (none has
become readable: an EOF or a reset would be) and sends one more request on a sample of
them, which must be answered.

haproxy 2.6 will not start unless it can have two descriptors per connection of its
``maxconn``: where the hard limit is below that (20,000 allows 9,968), it serves the
most clients that fit, and the report says how many.

Descriptors: this process raises its own RLIMIT_NOFILE soft limit to the hard limit,
and the front doors started after that inherit it. ``fcgi-cluster frontend`` does not
raise its own limit: it serves as many clients as the limit it inherits allows.

Usage: python benchmarks/idle.py [--quick] [--clients N]
Writes benchmarks/results/<UTC timestamp>-idle/results.json and report.md (the full
suite, benchmarks/suite.py, runs this as its part ``idle``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import pathlib
import resource
import select
import sys
import textwrap
import time

import trio

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _measure  # noqa: E402
from _common import fcgi_cluster_command, stamp, write_part  # noqa: E402
from _progress import Progress  # noqa: E402

from tests._peers import LOOPBACK, Peers, PeerStartError, free_port  # noqa: E402

APP = "workers.echo:app"
FRONT_DOORS = ("ours", "nginx", "haproxy")
# The figure; a quick run uses a tenth of it.
CLIENTS = 10_000
QUICK_CLIENTS = 1_000
# Connections being opened at once: below every front door's listen backlog (nginx's
# and ours are 511 or more), so no SYN is dropped and retried a second later.
CONNECT_BATCH = 256
# Connections the final check sends one more request on, spread evenly over all of them.
SAMPLE = 100
# The keep-alive timeout given to every front door: far longer than any run.
IDLE_TIMEOUT_SECONDS = 600
# Room above the clients in every front door's connection limit: upstream connections,
# the warm-up and the readiness probes.
HEADROOM = 512
# nginx closes idle keep-alive connections to make room once fewer than a 16th of its
# worker_connections are free (ngx_drain_connections): give it that 16th on top.
NGINX_RESERVE = 1 / 15
# Descriptors haproxy 2.6 wants beyond two per connection (listeners, pollers, logs: it
# computed 14 here), with a margin; and the connections kept free of clients for the
# warm-up and the readiness probe.
HAPROXY_SPARE_FDS = 64
HAPROXY_HEADROOM = 16
# Seconds to let the front door settle (free the warm-up's buffers, finish accepting)
# before its memory is read.
SETTLE_SECONDS = 0.5
# Bounds of the load: opening all the clients, and any one request.
OPEN_TIMEOUT_SECONDS = 120.0
REQUEST_TIMEOUT_SECONDS = 10.0
WARMUP_REQUESTS = 16

REQUEST = b"GET /?size=5 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
BODY = b"xxxxx"


@dataclasses.dataclass(frozen=True)
class Settings:
    """What every front door is measured with."""

    clients: int
    front_doors: tuple[str, ...] = FRONT_DOORS


def raise_nofile() -> tuple[int, int]:
    """Raise this process's RLIMIT_NOFILE soft limit to its hard limit; the limits now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# --- memory ------------------------------------------------------------------------------


def memory_kib(roots: list[int]) -> dict:
    """RSS, PSS and USS (KiB) of ``roots`` and their descendants, and how many processes."""
    pids = _measure.tree(roots)
    pss = uss = 0
    for pid in pids:
        try:
            lines = pathlib.Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        except OSError:  # gone, or no smaps_rollup on this kernel
            continue
        for line in lines:
            key, _, value = line.partition(":")
            if key == "Pss":
                pss += int(value.split()[0])
            elif key in ("Private_Clean", "Private_Dirty"):
                uss += int(value.split()[0])
    return {"processes": len(pids), "rss_kib": _measure.rss_kib(pids), "pss_kib": pss, "uss_kib": uss}


# --- the clients -------------------------------------------------------------------------


async def exchange(sock: trio.socket.SocketType) -> None:
    """Send REQUEST on ``sock`` and read its whole answer; raises unless it is 200 with BODY."""
    with trio.fail_after(REQUEST_TIMEOUT_SECONDS):
        await sock.send(REQUEST)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before the answer's head ended: {data[:200]!r}")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *fields = head.decode("latin-1").split("\r\n")
        if status_line.split()[1:2] != ["200"]:
            raise ConnectionError(f"answer {status_line!r}")
        length = next((int(value) for name, _, value in (f.partition(":") for f in fields)
                       if name.strip().lower() == "content-length"), None)
        if length is None:
            raise ConnectionError(f"no Content-Length: {head!r}")
        while len(body) < length:
            chunk = await sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed in the answer's body")
            body += chunk
        if body != BODY:
            raise ConnectionError(f"body {body[:50]!r}")


async def open_clients(port: int, count: int) -> list[trio.socket.SocketType]:
    """``count`` connections to ``port``, each having had one answered request.

    Resource handling: on failure every socket opened so far is closed.
    """
    socks: list[trio.socket.SocketType] = []
    limiter = trio.CapacityLimiter(CONNECT_BATCH)

    async def one() -> None:
        async with limiter:
            sock = trio.socket.socket()
            socks.append(sock)
            await sock.connect((LOOPBACK, port))
            await exchange(sock)

    try:
        with trio.fail_after(OPEN_TIMEOUT_SECONDS):
            async with trio.open_nursery() as nursery:
                for _ in range(count):
                    nursery.start_soon(one)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def still_open(socks: list[trio.socket.SocketType]) -> int:
    """How many of ``socks`` have nothing to read: an idle connection the peer has not closed."""
    poller = select.epoll(len(socks))
    try:
        for sock in socks:
            poller.register(sock.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
        readable = {fd for fd, _ in poller.poll(0, len(socks))}
    finally:
        poller.close()
    return len(socks) - len(readable)


async def hold(port: int, count: int, roots: list[int]) -> dict:
    """Open ``count`` idle clients, read the front door's memory, check them; the figures."""
    started = time.monotonic()
    socks = await open_clients(port, count)
    try:
        opened = time.monotonic() - started
        await trio.sleep(SETTLE_SECONDS)
        loaded = memory_kib(roots)
        open_now = still_open(socks)
        sample = socks[::max(1, len(socks) // SAMPLE)][:SAMPLE]
        answered = 0
        for sock in sample:
            with contextlib.suppress(OSError, ConnectionError, trio.TooSlowError, IndexError, ValueError):
                await exchange(sock)
                answered += 1
    finally:
        for sock in socks:
            sock.close()
    return {"open_seconds": opened, "loaded": loaded, "still_open": open_now,
            "sample": len(sample), "sample_answered": answered}


async def warm_up(port: int) -> None:
    """A few requests on fresh connections, closed after: the front door's pools fill up."""
    for _ in range(WARMUP_REQUESTS):
        sock = trio.socket.socket()
        with sock:
            await sock.connect((LOOPBACK, port))
            await exchange(sock)


# --- the front doors ---------------------------------------------------------------------


def start_front_door(name: str, peers: Peers, worker_port: int, clients: int,
                     directory: pathlib.Path) -> tuple[int, int, int]:
    """Start front door ``name`` in front of ``worker_port``; its HTTP port, pid and clients to serve."""
    limit = max(4096, clients + HEADROOM)
    if name == "ours":
        port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / f"frontend-{port}.toml"
        config.write_text(textwrap.dedent(f"""\
            [frontend]
            listen = "{LOOPBACK}:{port}"
            access_log = false
            max_connections = {limit}
            keepalive_timeout = {IDLE_TIMEOUT_SECONDS}

            [upstream.app]
            servers = [{{ address = "{LOOPBACK}:{worker_port}" }}]
            """))
        process = peers.process([*fcgi_cluster_command(), "frontend", "-c", config], name="fcgi-frontend",
                                cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), ready_port=port)
        return port, process.pid, clients
    if name == "nginx":
        peer = peers.nginx(LOOPBACK, worker_port, keepalive=True, access_log=False,
                           worker_connections=max(4096, int(limit * (1 + NGINX_RESERVE))),
                           keepalive_timeout=IDLE_TIMEOUT_SECONDS)
    else:
        # haproxy refuses to start unless it can have two descriptors per connection of
        # maxconn (client and server side), plus HAPROXY_SPARE_FDS: under a hard limit
        # too low for that, it gets the largest maxconn that fits, and serves that many
        # clients less a few for the probes.
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        maxconn = min(limit, (soft - HAPROXY_SPARE_FDS) // 2)
        clients = min(clients, maxconn - HAPROXY_HEADROOM)
        peer = peers.haproxy(LOOPBACK, worker_port, mpxs=True, access_log=False, nbthread=1,
                             max_reqs=32, maxconn=maxconn, client_timeout=IDLE_TIMEOUT_SECONDS)
    return peer.port, peer.process.pid, clients


def steps(settings: Settings) -> int:
    """How many measurements ``run`` makes: for the progress display."""
    return len(settings.front_doors)


def run(settings: Settings, out: pathlib.Path, progress: Progress) -> dict:
    """Measure every front door of ``settings``; the part of results.json it makes.

    Resource handling: every process it starts, and every client socket, is closed
    before it returns, even on failure; the peers' configs and logs stay under
    ``out/peers``.

    Error handling: a front door that cannot start, or fails while the clients connect,
    is reported with the reason and the others still run.
    """
    soft, hard = raise_nofile()
    if soft < settings.clients + HEADROOM:
        raise RuntimeError(f"RLIMIT_NOFILE is {soft} (hard {hard}): too low for {settings.clients} clients")
    results: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        peers = Peers(stack, out / "peers")
        worker_port = free_port()
        worker = peers.process([*fcgi_cluster_command(), "worker", APP, "--listen", f"{LOOPBACK}:{worker_port}",
                                "--log-level", "warning"], name="fcgi-worker", cwd=ROOT,
                               env=dict(os.environ, PYTHONPATH=str(ROOT)), ready_port=worker_port)
        for name in settings.front_doors:
            with contextlib.ExitStack() as front_stack:
                try:
                    port, pid, clients = start_front_door(name, Peers(front_stack, out / "peers" / name),
                                                          worker_port, settings.clients, out / "peers" / name)
                    trio.run(warm_up, port)
                    time.sleep(SETTLE_SECONDS)
                    idle = memory_kib([pid])
                    figures = trio.run(hold, port, clients, [pid])
                except (PeerStartError, OSError, ConnectionError, trio.TooSlowError, RuntimeError) as exc:
                    reason = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
                    results[name] = {"available": False, "reason": f"{type(exc).__name__}: {reason}"}
                    progress.step(f"idle {name}: failed: {reason}")
                    continue
            loaded = figures.pop("loaded")
            row = {"available": True, "clients": clients, "idle": idle, "loaded": loaded, **figures}
            for key in ("rss", "pss", "uss"):
                row[f"{key}_bytes_per_client"] = (loaded[f"{key}_kib"] - idle[f"{key}_kib"]) * 1024 / clients
            results[name] = row
            progress.step(f"idle {name:8} {clients:,} clients: RSS {row['rss_bytes_per_client']:,.0f} B "
                          f"/ client, PSS {row['pss_bytes_per_client']:,.0f}, USS {row['uss_bytes_per_client']:,.0f}; "
                          f"{row['still_open']:,} still open, sample {row['sample_answered']}/{row['sample']}")
        worker_memory = memory_kib([worker.pid])
    return {"settings": dataclasses.asdict(settings), "app": APP, "nofile": [soft, hard],
            "worker": worker_memory, "front_doors": results}


def report(part: dict) -> str:
    """A markdown table: each front door's memory before and with the clients, per client."""
    lines = ["| front door | clients | RSS MiB, 0 clients | RSS MiB, N clients | RSS B / client "
             "| PSS B / client | USS B / client | still open | sample answered | seconds to open |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in part["front_doors"].items():
        if not row["available"]:
            lines.append(f"| {name} | not measured: {row['reason']} |" + " |" * 8)
            continue
        lines.append(
            f"| {name} | {row['clients']:,} | {row['idle']['rss_kib'] / 1024:,.1f} "
            f"| {row['loaded']['rss_kib'] / 1024:,.1f} | {row['rss_bytes_per_client']:,.0f} "
            f"| {row['pss_bytes_per_client']:,.0f} | {row['uss_bytes_per_client']:,.0f} "
            f"| {row['still_open']:,} | {row['sample_answered']}/{row['sample']} | {row['open_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=CLIENTS, help="idle clients (default %(default)s)")
    parser.add_argument("--front-door", action="append", choices=FRONT_DOORS, help="only these front doors")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_CLIENTS:,} clients")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    settings = Settings(QUICK_CLIENTS if args.quick else args.clients, tuple(args.front_door or FRONT_DOORS))
    out = pathlib.Path(args.out).absolute() / f"{stamp()}-idle"
    out.mkdir(parents=True, exist_ok=True)
    part = run(settings, out, Progress(steps(settings)))
    write_part(out, "idle", part, report(part))
    return 0 if all(row["available"] for row in part["front_doors"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
