"""FastCGI transport throughput: our worker vs flup (and php-fpm when installed).

No HTTP: load generators built on our client send FastCGI requests straight to
each contender. ``core`` drives the sans-IO ``fcgi_cluster.protocol.ClientConnection``
with one task per connection (cheap enough that the contender, not the generator,
is measured); ``client`` uses the trio ``fcgi_cluster.client.Connection`` with a
task per request in flight (what an application would write; it shows the
client's own cost). Three ways of sending:

* ``mpx``: many requests in flight multiplexed over 1-2 connections;
* ``keepalive``: 8 connections, one request at a time each (nginx's way);
* ``new-conn``: a new connection per request, 8 at a time.

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
import datetime
import json
import os
import pathlib
import platform
import socket
import statistics
import subprocess
import sys
import time

import trio

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _progress import Progress  # noqa: E402

from fcgi_cluster.client import cgi_params, open_connection  # noqa: E402
from fcgi_cluster.protocol import NEED_DATA, ClientConnection, EndRequest, Request, Stdin, Stdout  # noqa: E402

PARAMS = cgi_params("GET", "/hello")
GENERATORS = ("core", "client")

SCENARIOS = {
    # name: (connections, in flight per connection, new connection per request)
    "mpx 1x32": (1, 32, False),
    "mpx 2x16": (2, 16, False),
    "keepalive 8x1": (8, 1, False),
    "new-conn 8": (8, 1, True),
}


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


async def load_core(port: int, connections: int, inflight: int, new_conn: bool, seconds: float) -> tuple[int, int]:
    """Requests answered (and failed) in ``seconds``, driving the sans-IO core."""
    done = [0, 0]
    deadline = trio.current_time() + seconds

    async def connection() -> None:
        core = ClientConnection()
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def one() -> bytes:
            rid = core.new_request_id()
            return core.send(Request(rid, PARAMS, keep_conn=not new_conn)) + core.send(Stdin(rid, b""))

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
                        head_ok[event.request_id] = event.data.startswith(b"Status: 200")
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

    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(fresh if new_conn else connection)
    return done[0], done[1]


async def load_client(port: int, connections: int, inflight: int, new_conn: bool, seconds: float) -> tuple[int, int]:
    """Requests answered (and failed) in ``seconds``, through ``fcgi_cluster.client``."""
    done = [0, 0]
    deadline = trio.current_time() + seconds
    address = f"127.0.0.1:{port}"

    async def keep(conn) -> None:
        while trio.current_time() < deadline:
            response = await conn.request(PARAMS)
            done[0 if response.status == 200 else 1] += 1

    async def fresh() -> None:
        while trio.current_time() < deadline:
            async with open_connection(address) as conn:
                response = await conn.request(PARAMS, keep_conn=False)
            done[0 if response.status == 200 else 1] += 1

    async def connection() -> None:
        async with open_connection(address) as conn, trio.open_nursery() as inner:
            for _ in range(inflight):
                inner.start_soon(keep, conn)

    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(fresh if new_conn else connection)
    return done[0], done[1]


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "flup": _version("flup"),
        "trio": _version("trio"),
    }


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def steps(rounds: int, generators: tuple[str, ...] = GENERATORS) -> int:
    """How many load runs ``run`` makes: for the progress display."""
    return len(SCENARIOS) * len(generators) * rounds * len(contenders("workers.hello:app"))


def run(seconds: float, rounds: int, progress: Progress, app: str = "workers.hello:app",
        generators: tuple[str, ...] = GENERATORS) -> dict:
    """Load every contender with every scenario; the part of results.json it makes.

    Resource handling: the contenders are stopped before it returns, even on failure.
    """
    runs = []
    names = list(contenders(app))
    with contextlib.ExitStack() as stack:
        ports = {}
        for name, (argv, port, env) in contenders(app).items():
            stack.enter_context(started(argv, port, env))
            ports[name] = port
        for name, port in ports.items():  # warm up
            trio.run(load_core, port, 1, 8, False, 0.5)
        for generator in generators:
            load = load_core if generator == "core" else load_client
            for scenario, (conns, inflight, new_conn) in SCENARIOS.items():
                for round_no in range(rounds):
                    order = names if round_no % 2 == 0 else names[::-1]
                    for name in order:
                        ok, failed = trio.run(load, ports[name], conns, inflight, new_conn, seconds)
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
    table = report(part)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = pathlib.Path(args.out) / f"{stamp}-transport"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"machine": machine(), "transport": part}, indent=2))
    (out / "report.md").write_text(table)
    print()
    print(table)
    print(f"results: {out}")
    return 0


def report(part: dict) -> str:
    """A markdown table: median req/s per generator and scenario, and the ratio to flup."""
    runs, names = part["runs"], part["contenders"]
    baseline = names[1]
    lines = [
        "| generator | scenario | " + " | ".join(f"{n} req/s" for n in names) + f" | ratio to {baseline} |",
        "|---" * (len(names) + 3) + "|",
    ]
    for generator in part["generators"]:
        for scenario in SCENARIOS:
            medians = {
                n: statistics.median(r["rps"] for r in runs
                                     if (r["generator"], r["scenario"], r["contender"]) == (generator, scenario, n))
                for n in names
            }
            ratio = medians[names[0]] / medians[baseline] if medians[baseline] else float("inf")
            lines.append(f"| {generator} | {scenario} | " + " | ".join(f"{medians[n]:,.0f}" for n in names)
                         + f" | {ratio:.2f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
