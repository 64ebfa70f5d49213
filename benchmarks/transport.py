"""FastCGI transport throughput: our worker vs flup and php-fpm (when installed).

No HTTP: load generators built on our client send FastCGI requests straight to
each contender. ``core`` drives the sans-IO ``fcgi_cluster.protocol.ClientConnection``
with one task per connection (cheap enough that the contender, not the generator,
is measured); ``client`` uses the trio ``fcgi_cluster.client.Connection`` with a
task per request in flight (what an application would write; it shows the
client's own cost). Three ways of sending:

* ``mpx``: many requests in flight multiplexed over 1-2 connections;
* ``keepalive``: 8 connections, one request at a time each (nginx's way);
* ``new-conn``: a new connection per request, 8 at a time.

php-fpm (``hello.php``, ``tests/_peers.py:php_fpm``, ``pm = static`` with one child:
one process, like the others) does not multiplex (it answers FCGI_MPXS_CONNS=0), so it
runs the ``keepalive`` and ``new-conn`` scenarios only. Its one child serves one
connection at a time until that connection closes: in ``keepalive 8x1`` the other 7
connections wait in its listen queue, so the figure is one connection's.

Contenders run one after the other, interleaved (A B A B ...) so drift hits all,
for ``--rounds`` rounds; the report gives the median requests/s and the ratio to
flup. The load generator shares the machine's cores with the contender, equally
for every contender.

Usage: python benchmarks/transport.py [--seconds 3] [--rounds 3] [--quick]
Writes benchmarks/results/<UTC timestamp>-transport/results.json and report.md (the
full suite, benchmarks/suite.py, runs this as one of its parts).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import time

import trio

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import stamp, write_part  # noqa: E402
from _progress import Progress  # noqa: E402

from fcgi_cluster.client import FastCGIError, cgi_params, open_connection  # noqa: E402
from fcgi_cluster.protocol import NEED_DATA, ClientConnection, EndRequest, Request, Stdin, Stdout  # noqa: E402
from tests._peers import PHP_PAGES, PeerStartError, find_php_fpm, php_fpm  # noqa: E402

PARAMS = cgi_params("GET", "/hello")
# SCRIPT_FILENAME is the document root plus the path: the hello.php the helper serves.
PHP_PARAMS = cgi_params("GET", "/hello.php", document_root=str(PHP_PAGES))
PHP_FPM = "php-fpm (1 child)"
GENERATORS = ("core", "client")
# Seconds a load run may take past its length (answers still in flight) before it is cut.
GRACE_SECONDS = 10.0

SCENARIOS = {
    # name: (connections, in flight per connection, new connection per request)
    "mpx 1x32": (1, 32, False),
    "mpx 2x16": (2, 16, False),
    "keepalive 8x1": (8, 1, False),
    "new-conn 8": (8, 1, True),
}
# The scenarios a contender that does not multiplex (php-fpm) runs.
UNMULTIPLEXED = ("keepalive 8x1", "new-conn 8")


def answered_ok(head: bytes) -> bool:
    """Whether the first FCGI_STDOUT bytes of an answer are a 200.

    A CGI answer without a ``Status`` header is a 200: PHP sends none for one.
    """
    for line in head.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line[:7].lower() == b"status:":
            return line[7:].strip().startswith(b"200")
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, process: subprocess.Popen, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"contender exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@contextlib.contextmanager
def started(argv: list[str], port: int, env: dict | None = None):
    log = open(os.devnull, "wb")
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        wait_port(port, process)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def contenders(app: str) -> dict[str, tuple[list[str], int, dict | None]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = {}
    port = free_port()
    out["fcgi-cluster worker"] = (
        [sys.executable, "-m", "fcgi_cluster.cli", "worker", app, "--listen", f"127.0.0.1:{port}",
         "--log-level", "warning"], port, env)
    port = free_port()
    out["flup (mpx, tuned)"] = (
        [sys.executable, str(ROOT / "benchmarks" / "_flup_worker.py"), app, "127.0.0.1", str(port), "1"], port, env)
    return out


async def load_core(port: int, connections: int, inflight: int, new_conn: bool, seconds: float,
                    params: dict | None = None) -> tuple[int, int]:
    """Requests answered (and failed) in ``seconds``, driving the sans-IO core.

    ``params`` default to the module's PARAMS (read at each call).
    """
    params = PARAMS if params is None else params
    done = [0, 0]
    deadline = trio.current_time() + seconds

    async def connection() -> None:
        # A connection the contender refuses or resets costs its requests in flight
        # (counted as failed), not the run.
        core = ClientConnection()
        try:
            await exchange(core)
        except (OSError, trio.BrokenResourceError):
            done[1] += max(1, core.requests_in_flight)

    async def exchange(core: ClientConnection) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def one() -> bytes:
            rid = core.new_request_id()
            return core.send(Request(rid, params, keep_conn=not new_conn)) + core.send(Stdin(rid, b""))

        async with stream:
            await stream.send_all(b"".join(one() for _ in range(inflight)))
            head_ok: dict[int, bool] = {}
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                core.receive_data(data)
                out = []
                while (event := core.next_event()) is not NEED_DATA:
                    if type(event) is Stdout and event.data and event.request_id not in head_ok:
                        head_ok[event.request_id] = answered_ok(event.data)
                    elif type(event) is EndRequest:
                        done[0 if head_ok.pop(event.request_id, False) else 1] += 1
                        if new_conn:
                            return
                        if trio.current_time() < deadline:
                            out.append(one())
                if out:
                    await stream.send_all(b"".join(out))
                elif not core.requests_in_flight:
                    return

    async def fresh() -> None:
        while trio.current_time() < deadline:
            await connection()

    with trio.move_on_after(seconds + GRACE_SECONDS):
        async with trio.open_nursery() as nursery:
            for _ in range(connections):
                nursery.start_soon(fresh if new_conn else connection)
    return done[0], done[1]


async def load_client(port: int, connections: int, inflight: int, new_conn: bool, seconds: float,
                      params: dict | None = None) -> tuple[int, int]:
    """Requests answered (and failed) in ``seconds``, through ``fcgi_cluster.client``."""
    params = PARAMS if params is None else params
    done = [0, 0]
    deadline = trio.current_time() + seconds
    address = f"127.0.0.1:{port}"

    # A refused or reset connection counts as a failed request, not as the run's end.
    async def keep(conn) -> None:
        while trio.current_time() < deadline:
            try:
                response = await conn.request(params)
            except FastCGIError:
                done[1] += 1
                return  # the connection is gone
            done[0 if response.status == 200 else 1] += 1

    async def fresh() -> None:
        while trio.current_time() < deadline:
            try:
                async with open_connection(address) as conn:
                    response = await conn.request(params, keep_conn=False)
            except FastCGIError:
                done[1] += 1
                continue
            done[0 if response.status == 200 else 1] += 1

    async def connection() -> None:
        try:
            async with open_connection(address) as conn, trio.open_nursery() as inner:
                for _ in range(inflight):
                    inner.start_soon(keep, conn)
        except FastCGIError:
            done[1] += 1

    with trio.move_on_after(seconds + GRACE_SECONDS):
        async with trio.open_nursery() as nursery:
            for _ in range(connections):
                nursery.start_soon(fresh if new_conn else connection)
    return done[0], done[1]


def php_fpm_installed() -> bool:
    """Whether php-fpm is here to be measured."""
    try:
        find_php_fpm()
    except PeerStartError:
        return False
    return True


def steps(rounds: int, generators: tuple[str, ...] = GENERATORS) -> int:
    """How many load runs ``run`` makes: for the progress display."""
    runs = len(SCENARIOS) * len(contenders("workers.hello:app"))
    if php_fpm_installed():
        runs += len(UNMULTIPLEXED)
    return runs * len(generators) * rounds


def run(seconds: float, rounds: int, progress: Progress, app: str = "workers.hello:app",
        generators: tuple[str, ...] = GENERATORS) -> dict:
    """Load every contender with every scenario; the part of results.json it makes.

    Resource handling: the contenders are stopped before it returns, even on failure.
    """
    runs = []
    names = list(contenders(app))
    params = {name: PARAMS for name in names}
    with contextlib.ExitStack() as stack:
        ports = {}
        for name, (argv, port, env) in contenders(app).items():
            stack.enter_context(started(argv, port, env))
            ports[name] = port
        if php_fpm_installed():
            peer = stack.enter_context(php_fpm(pm="static", max_children=1))
            names.append(PHP_FPM)
            ports[PHP_FPM], params[PHP_FPM] = peer.port, PHP_PARAMS
        for name, port in ports.items():  # warm up (and fill php-fpm's opcache)
            ok, _ = trio.run(load_core, port, 1, 1 if name == PHP_FPM else 8, False, 0.5, params[name])
            if not ok:
                raise RuntimeError(f"{name} answered no request with a 200")
        for generator in generators:
            load = load_core if generator == "core" else load_client
            for scenario, (conns, inflight, new_conn) in SCENARIOS.items():
                for round_no in range(rounds):
                    order = names if round_no % 2 == 0 else names[::-1]
                    for name in order:
                        if name == PHP_FPM and scenario not in UNMULTIPLEXED:
                            continue
                        ok, failed = trio.run(load, ports[name], conns, inflight, new_conn, seconds, params[name])
                        rate = ok / seconds
                        runs.append({"generator": generator, "scenario": scenario, "contender": name,
                                     "round": round_no, "requests": ok, "failed": failed,
                                     "seconds": seconds, "rps": rate})
                        progress.step(f"{generator:6} {scenario:14} {name:22} {rate:9.0f} req/s"
                                      + (f"  ({failed} failed)" if failed else ""))
    return {"app": app, "contenders": names, "generators": list(generators), "runs": runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per scenario")
    parser.add_argument("--quick", action="store_true", help="1 s runs, 2 rounds")
    parser.add_argument("--app", default="workers.hello:app")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 1.0, 2
    part = run(args.seconds, args.rounds, Progress(steps(args.rounds)), args.app)
    out = pathlib.Path(args.out).absolute() / f"{stamp()}-transport"
    out.mkdir(parents=True, exist_ok=True)
    write_part(out, "transport", part, report(part))
    return 0


def report(part: dict) -> str:
    """A markdown table: median req/s per generator and scenario, and ours' ratio to flup (and php-fpm).

    php-fpm's cell of a multiplexed scenario says it was not run: it does not multiplex.
    """
    runs, names = part["runs"], part["contenders"]
    baselines = names[1:]
    lines = [
        "| generator | scenario | " + " | ".join(f"{n} req/s" for n in names) + " | "
        + " | ".join(f"ours / {b}" for b in baselines) + " |",
        "|---" * (2 + len(names) + len(baselines)) + "|",
    ]
    for generator in part["generators"]:
        for scenario in SCENARIOS:
            medians = {}
            for n in names:
                values = [r["rps"] for r in runs
                          if (r["generator"], r["scenario"], r["contender"]) == (generator, scenario, n)]
                medians[n] = statistics.median(values) if values else None
            cells = [f"{medians[n]:,.0f}" if medians[n] is not None else "not run (no multiplexing)"
                     for n in names]
            ratios = [f"{medians[names[0]] / medians[b]:.2f}x" if medians[b] and medians[names[0]] else "-"
                      for b in baselines]
            lines.append(f"| {generator} | {scenario} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    if PHP_FPM in names:
        lines.append(f"\n{PHP_FPM}: hello.php, `pm = static`, one child (one process, like the others); "
                     "it answers FCGI_MPXS_CONNS=0, so it runs the keep-alive and new-connection scenarios "
                     "only, and in keepalive 8x1 serves one of the 8 connections at a time.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
