"""Pool throughput as children grow, and memory per idle child: our pool master vs php-fpm.

FastCGI straight to the pool (no HTTP), with the sans-IO load generator of
``benchmarks/transport.py`` (``load_core``, imported, not copied). For each pool
size (1, 2, 4 children, ``pm = static``):

* ours: ``fcgi-cluster worker -c`` with one pool serving ``workers.hello:app``;
* php-fpm: one pool serving ``hello.php`` (``tests/_peers.py:php_fpm``, opcache as
  the machine's php.ini has it).

Scenarios: ``new-conn 8`` (a new connection per request, 8 at a time: nginx's
default, the only fair one for php-fpm, whose child holds a connection until it
closes) and, for ours only, ``keepalive 8x1`` and ``mpx 2x16`` (our children
multiplex). Runs interleave ours and php-fpm per size; the report gives the
median of ``--rounds`` rounds. The generator shares the 2 cores with the pool,
equally for both.

Memory: after the runs and a second of rest, each child's ``Rss`` and ``Pss`` from
``/proc/<pid>/smaps_rollup`` (Pss shares the pages a child shares with its
siblings and master between them: the figure that adds up).

Usage: python benchmarks/pool.py [--seconds 3] [--rounds 3] [--quick]
Writes benchmarks/results/<UTC timestamp>-pool/results.json and report.md (the full
suite, benchmarks/suite.py, runs this as one of its parts).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import statistics
import sys
import tempfile
import time

import trio

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import transport  # noqa: E402  (the load generator)
from _common import stamp, write_part  # noqa: E402
from _progress import Progress  # noqa: E402

from fcgi_cluster.client import cgi_params, open_connection  # noqa: E402
from fcgi_cluster.worker._pool_config import GlobalConfig, PoolConfig, PoolFile  # noqa: E402
from tests._peers import PHP_PAGES, PeerStartError, find_php_fpm, free_port, php_fpm, run_process  # noqa: E402

SIZES = (1, 2, 4)
SCENARIOS = {
    # name: (connections, in flight per connection, new connection per request, php-fpm too)
    "new-conn 8": (8, 1, True, True),
    "keepalive 8x1": (8, 1, False, False),
    "mpx 2x16": (2, 16, False, False),
}
APP = "workers.hello:app"

# Runs the master from a PoolFile written as a Python literal: the same CLI path
# as ``fcgi-cluster worker -c``, without depending on the INI reader.
RUNNER = """
import sys
from fcgi_cluster.worker._pool_config import GlobalConfig, PoolConfig, PoolFile
from fcgi_cluster.cli import _pool_main
def load(path):
    with open(path) as f:
        return eval(f.read())
sys.exit(_pool_main(sys.argv[1], False, load))
"""


@contextlib.contextmanager
def our_pool(children: int, directory: pathlib.Path):
    port = free_port()
    config = directory / f"pool-{children}.conf"
    pool = PoolConfig(name="www", listen=f"127.0.0.1:{port}", app=APP, pm="static", pm_max_children=children,
                      clear_env=False, path=str(config))
    config.write_text(repr(PoolFile(path=str(config), global_=GlobalConfig(log_level="warning"), pools=(pool,))))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with run_process([sys.executable, "-c", RUNNER, str(config)], cwd=ROOT, env=env, ready_port=port,
                     name="pool-master", log_path=directory / f"pool-{children}.log") as process:
        wait_children(process.pid, children)
        yield port, process.pid


@contextlib.contextmanager
def fpm_pool(children: int, directory: pathlib.Path):
    with php_fpm(pm="static", max_children=children, directory=directory / f"php-fpm-{children}") as peer:
        wait_children(peer.process.pid, children)
        yield peer.port, peer.process.pid


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found.extend(int(x) for x in f.read().split())
    return found


def wait_children(pid: int, count: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while len(children_of(pid)) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{pid} has {len(children_of(pid))} children, expected {count}")
        time.sleep(0.05)


def memory(pid: int) -> dict[str, float]:
    """Mean Rss and Pss (KiB) of the children of ``pid``."""
    rss, pss = [], []
    for child in children_of(pid):
        fields = {}
        with open(f"/proc/{child}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0].endswith(":"):
                    fields[parts[0][:-1]] = parts[1]
        rss.append(int(fields["Rss"]))
        pss.append(int(fields["Pss"]))
    return {"children": len(rss), "rss_kib": statistics.mean(rss), "pss_kib": statistics.mean(pss)}


def run_load(port: int, params: dict, scenario: str, seconds: float, php: bool) -> tuple[int, int]:
    """(answered, failed) in ``seconds``.

    ``load_core`` counts an answer as good when it starts with ``Status: 200``.
    PHP sends no Status line for a 200 (CGI's default), so for php-fpm every
    answer counts, once ``check_answer`` has seen that the page really is served.
    """
    conns, inflight, new_conn, _ = SCENARIOS[scenario]
    # load_core sends the module's PARAMS: php-fpm needs a SCRIPT_FILENAME of its own.
    transport.PARAMS = params
    ok, failed = trio.run(transport.load_core, port, conns, inflight, new_conn, seconds)
    return (ok + failed, 0) if php else (ok, failed)


def check_answer(port: int, params: dict, body: bytes) -> None:
    async def one() -> None:
        async with open_connection(f"127.0.0.1:{port}") as conn:
            response = await conn.request(params)
        if response.status != 200 or response.body != body:
            raise RuntimeError(f"127.0.0.1:{port} answered {response.status} {response.body[:100]!r}")

    trio.run(one)


def steps(rounds: int) -> int:
    """How many load runs ``run`` makes (php-fpm's counted when it is installed)."""
    try:
        find_php_fpm()
        pools = 2
    except PeerStartError:
        pools = 1
    per_size = sum(rounds * (pools if for_fpm else 1) for *_, for_fpm in SCENARIOS.values())
    return len(SIZES) * per_size


def run(seconds: float, rounds: int, progress: Progress) -> dict:
    """Load pools of each size; the part of results.json it makes (runs and idle memory).

    Resource handling: each size's pools are stopped before the next size starts.
    """
    ours_params = cgi_params("GET", "/hello")
    php_params = cgi_params("GET", "/hello.php", document_root=str(PHP_PAGES))
    try:
        find_php_fpm()
        have_fpm = True
    except PeerStartError:
        have_fpm = False
    runs: list[dict] = []
    mem: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="pool-bench-") as tmp:
        directory = pathlib.Path(tmp)
        for size in SIZES:
            with contextlib.ExitStack() as stack:
                targets = {"ours": (stack.enter_context(our_pool(size, directory)), ours_params)}
                if have_fpm:
                    targets["php-fpm"] = (stack.enter_context(fpm_pool(size, directory)), php_params)
                for name, ((port, _), params) in targets.items():  # warm up (php-fpm's opcache, our threads)
                    check_answer(port, params, b"hello" if name == "ours" else b"Hello, World!")
                    run_load(port, params, "new-conn 8", 0.5, name == "php-fpm")
                for scenario, (_, _, _, for_fpm) in SCENARIOS.items():
                    names = [n for n in targets if n == "ours" or for_fpm]
                    for round_no in range(rounds):
                        for name in names if round_no % 2 == 0 else names[::-1]:
                            (port, _), params = targets[name]
                            ok, failed = run_load(port, params, scenario, seconds, name == "php-fpm")
                            runs.append({"pool": name, "children": size, "scenario": scenario, "round": round_no,
                                         "requests": ok, "failed": failed, "rps": ok / seconds})
                            progress.step(f"pool {name:8} {size} children {scenario:14} {ok / seconds:9.0f} req/s"
                                          + (f" ({failed} failed)" if failed else ""))
                time.sleep(1.0)
                for name, ((_, pid), _) in targets.items():
                    mem[f"{name} {size}"] = memory(pid)
    return {"app": APP, "sizes": list(SIZES), "runs": runs, "memory": mem}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 s runs, 1 round")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 1.0, 1
    part = run(args.seconds, args.rounds, Progress(steps(args.rounds)))
    out = pathlib.Path(args.out).absolute() / f"{stamp()}-pool"
    out.mkdir(parents=True, exist_ok=True)
    write_part(out, "pool", part, report(part))
    return 0


def report(part: dict) -> str:
    """Markdown tables: median req/s per pool size and scenario, then memory per idle child."""
    runs, mem = part["runs"], part["memory"]
    lines = ["| pool | scenario | " + " | ".join(f"{n} child{'ren' if n > 1 else ''} req/s" for n in SIZES) + " |",
             "|---|---|" + "---|" * len(SIZES)]
    for name in ("ours", "php-fpm"):
        for scenario in SCENARIOS:
            cells = []
            for size in SIZES:
                rates = [r["rps"] for r in runs if (r["pool"], r["scenario"], r["children"]) == (name, scenario, size)]
                cells.append(f"{statistics.median(rates):,.0f}" if rates else "-")
            if any(cell != "-" for cell in cells):
                lines.append(f"| {name} | {scenario} | " + " | ".join(cells) + " |")
    lines += ["", "| pool | children | Rss per idle child (MiB) | Pss per idle child (MiB) |", "|---|---|---|---|"]
    for key, figures in mem.items():
        name, size = key.rsplit(" ", 1)
        lines.append(f"| {name} | {size} | {figures['rss_kib'] / 1024:.1f} | {figures['pss_kib'] / 1024:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
