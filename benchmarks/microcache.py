"""Microcaching: workers/hello.py behind our front door, uncached and cached for 1 s, in one run.

One worker process (``fcgi-cluster worker workers.hello:app``) behind one
front-end process with two routes to it: ``/cached/`` with a response cache
(``valid = { 200 = "1s" }``, ``lock = true``: nginx's microcaching recipe)
and ``/`` without. wrk loads each in turn (interleaved over the rounds); the
CPU seconds of the front door and of the worker are read from /proc apart,
so the report shows what the cache takes off the worker: with 1 s of
validity it sees about one request a second whatever the load.

Usage: python benchmarks/microcache.py [--quick] [--duration S] [--rounds R]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import pathlib
import shutil
import statistics
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _python_peers  # noqa: E402
from _common import LUA_PERCENTILE, WARMUP_SECONDS, Unavailable, fcgi_cluster_command, run_wrk, stamp, trouble  # noqa: E402
from _progress import Progress  # noqa: E402

from tests._peers import LOOPBACK, Peers, free_port  # noqa: E402

APP = "workers.hello:app"
ROWS = ("uncached", "cached 1 s")
PATHS = {"uncached": "/", "cached 1 s": "/cached/"}


@dataclasses.dataclass(frozen=True)
class Settings:
    """How long and how often each row is loaded."""

    duration: float
    rounds: int
    connections: int = 64


def steps(settings: Settings) -> int:
    """wrk runs ``run`` makes, warm-ups included."""
    return len(ROWS) * (1 + settings.rounds)


def _start(peers: Peers, directory: pathlib.Path) -> tuple[int, int, int]:
    """The worker and the front door; (front door port, front door PID, worker PID)."""
    worker_port, port = free_port(), free_port()
    worker = peers.process([*fcgi_cluster_command(), "worker", APP, "--listen", f"{LOOPBACK}:{worker_port}"],
                           name="fcgi-worker", cwd=ROOT, env=_python_peers.env(), ready_port=worker_port)
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "microcache.toml"
    config.write_text(textwrap.dedent(f"""\
        [frontend]
        listen = "{LOOPBACK}:{port}"
        access_log = false
        processes = 1

        [upstream.app]
        servers = ["{LOOPBACK}:{worker_port}"]

        [[route]]
        prefix = "/cached/"
        upstream = "app"
        [route.cache]
        valid = {{ 200 = "1s" }}
        lock = true
        use_stale = ["updating"]

        [[route]]
        prefix = "/"
        upstream = "app"
        """))
    front = peers.process([*fcgi_cluster_command(), "frontend", "-c", config], name="fcgi-frontend",
                          cwd=ROOT, env=_python_peers.env(), ready_port=port)
    return port, front.pid, worker.pid


def run(settings: Settings, out: pathlib.Path, progress: Progress) -> dict:
    """Load both rows with wrk, interleaved; the part of results.json it makes.

    Resource handling: the worker and the front door are stopped (by PID) before it returns.
    """
    wrk = shutil.which("wrk")
    if wrk is None:
        raise Unavailable("wrk is not installed: run `make deps` (scripts/install-deps.sh)")
    out.mkdir(parents=True, exist_ok=True)
    script = out / "wrk.lua"
    script.write_text(LUA_PERCENTILE)
    runs: list[dict] = []
    with contextlib.ExitStack() as exits:
        port, front, worker = _start(Peers(exits, out / "peers"), out / "peers")
        for row in ROWS:
            warm = run_wrk(wrk, f"http://{LOOPBACK}:{port}{PATHS[row]}", WARMUP_SECONDS, settings.connections,
                           script, [front, worker])
            progress.step(f"microcache {row}: warm-up {warm['rps']:,.0f} req/s")
        for round_no in range(settings.rounds):
            for row in ROWS:
                result = run_wrk(wrk, f"http://{LOOPBACK}:{port}{PATHS[row]}", settings.duration,
                                 settings.connections, script, [front, worker])
                result.pop("raw")
                # Two readings of a clock in ticks: a worker that did nothing may come out a tick below 0.
                result["worker_cpu_s"] = max(0.0, result["cpu_s"] - result["front_cpu_s"])
                runs.append({"row": row, "round": round_no, **result})
                note = trouble(result)
                progress.step(f"microcache {row:12} {result['rps']:9,.0f} req/s  worker cpu "
                              f"{result['worker_cpu_s']:.2f} s of {settings.duration:g} s" + (f"  [{note}]" if note else ""))
    return {"settings": dataclasses.asdict(settings), "app": APP, "summary": summarize(runs), "runs": runs}


def summarize(runs: list[dict]) -> list[dict]:
    """Per row: medians over the rounds (req/s, latency, CPU per request of the front door and the worker)."""
    summary = []
    for row in ROWS:
        mine = [one for one in runs if one["row"] == row]
        if not mine:
            continue
        summary.append({
            "row": row,
            "rps": statistics.median(one["rps"] for one in mine),
            "p50_ms": statistics.median(one["p50_ms"] for one in mine),
            "p99_ms": statistics.median(one["p99_ms"] for one in mine),
            "front_cpu_us": statistics.median(one["front_cpu_s"] / one["requests"] * 1e6 for one in mine),
            "worker_cpu_us": statistics.median(one["worker_cpu_s"] / one["requests"] * 1e6 for one in mine),
            "worker_cpu_share": statistics.median(one["worker_cpu_s"] / settings_seconds(one) for one in mine),
            "requests": sum(one["requests"] for one in mine),
            "non_2xx": sum(one["non_2xx"] for one in mine),
        })
    return summary


def settings_seconds(one: dict) -> float:
    """The wall seconds of one run, from its request count and rate."""
    return one["requests"] / one["rps"] if one["rps"] else 1.0


def report(part: dict) -> str:
    """The part's table, in Markdown."""
    lines = ["| route | req/s | p50 ms | p99 ms | front door µs/req | worker µs/req | worker CPU (share of a core) |",
             "|---|---|---|---|---|---|---|"]
    for row in part["summary"]:
        lines.append(f"| {row['row']} | {row['rps']:,.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
                     f"{row['front_cpu_us']:.0f} | {row['worker_cpu_us']:.1f} | {row['worker_cpu_share'] * 100:.1f}% |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 s per row, one round")
    parser.add_argument("--duration", type=float, default=None, help="seconds per wrk run (default 3)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 2)")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    settings = Settings(args.duration or (1.0 if args.quick else 3.0), args.rounds or (1 if args.quick else 2))
    out = args.out.absolute() / stamp() / "microcache"
    progress = Progress(steps(settings))
    part = run(settings, out, progress)
    (out / "results.json").write_text(json.dumps(part, indent=1))
    print(report(part))
    return 0


if __name__ == "__main__":
    sys.exit(main())
