"""End-to-end HTTP throughput and latency with wrk: our front-end vs nginx and haproxy.

HTTP in, FastCGI behind: ``wrk`` loads each contender's HTTP port with
``wrk -t2 -c<N> -d<S>s --latency``. The front-ends under test share ONE worker
pool, two ``fcgi-cluster worker workers.hello:app`` processes, so only the
front-end differs:

* ``ours``: ``fcgi-cluster frontend`` with both workers as upstreams;
* ``nginx``: an upstream of both workers, ``keepalive`` and ``fastcgi_keep_conn on``
  (the baseline every ratio is taken against);
* ``haproxy``: an ``fcgi-app`` with ``option mpxs-conns`` and ``http-reuse always``.

Two references bring their own back-end, to place the numbers among what users run:

* ``nginx+php-fpm``: ``hello.php`` on php-fpm (``pm = static``, 4 children);
* ``nginx+flup``: two flup workers (benchmarks/_flup_worker.py, tuned) running the same app.

Every front-end gets one core's worth of processes (nginx ``worker_processes 1``,
haproxy ``nbthread 1``) and logs no requests. The machine's cores are shared with
wrk and the workers, equally for every contender. A contender that cannot start,
or does not answer its page correctly, is reported as not available and skipped.

Each contender gets a warm-up run, then the rounds interleave (A B C A B C ...)
so drift hits all alike; the report gives the median of the rounds. Any non-2xx/3xx
answer or socket error is printed next to the figure it taints.

Usage: python benchmarks/end_to_end.py [--quick] [--duration S] [--connections N] [--rounds R]
Writes benchmarks/results/<UTC timestamp>-http/results.json and table.md; the peers'
configs and logs are kept beside them, under peers/.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import http.client
import json
import os
import pathlib
import platform
import re
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests._peers import (  # noqa: E402
    LOOPBACK,
    PHP_PAGES,
    Peers,
    PeerStartError,
    find_php_fpm,
    free_port,
    python_executable,
)

BASELINE = "nginx"
APP = "workers.hello:app"
# What each back-end answers to its page: the check that a contender serves the app
# (a fast 404 would otherwise look like a win).
APP_BODY = b"hello"
PHP_BODY = b"Hello, World!"
# The workers in the shared pool, and the flup workers of the reference.
POOL_SIZE = 2
# php-fpm children for the reference: a small static pool, the common starting point.
PHP_CHILDREN = 4
# wrk threads: one per core of a 2-core machine; more only adds context switches.
WRK_THREADS = 2
# Seconds of the warm-up run: long enough to open every connection, fill php-fpm's
# opcache and let the pools fork their children.
WARMUP_SECONDS = 1.0
# Seconds a whole wrk run may take beyond its duration before it counts as hung.
WRK_GRACE_SECONDS = 30.0

@dataclasses.dataclass(frozen=True)
class Settings:
    """What every contender is run with."""

    duration: float
    connections: int
    rounds: int
    workers: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class Target:
    """A contender ready for load: the URL wrk hits and the body it must answer."""

    url: str
    body: bytes


class Unavailable(Exception):
    """A contender cannot be run here; the message says why, in one line."""


# --- the contenders --------------------------------------------------------------------


def fcgi_cluster_command() -> list[str]:
    """The ``fcgi-cluster`` console script beside our Python, or ``python -m`` as a fallback."""
    script = pathlib.Path(sys.executable).parent / "fcgi-cluster"
    if script.exists():
        return [str(script)]
    return [python_executable(), "-m", "fcgi_cluster.cli"]


def start_pool(peers: Peers) -> tuple[int, ...]:
    """Start the shared pool of ``fcgi-cluster worker`` processes; their ports."""
    ports = []
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for _ in range(POOL_SIZE):
        port = free_port()
        peers.process(
            [*fcgi_cluster_command(), "worker", APP, "--listen", f"{LOOPBACK}:{port}",
             "--log-level", "warning"],
            name="fcgi-worker", cwd=ROOT, env=env, ready_port=port,
        )
        ports.append(port)
    return tuple(ports)


def ours(peers: Peers, settings: Settings) -> Target:
    command = fcgi_cluster_command()
    try:
        probe = subprocess.run([*command, "frontend", "--help"], cwd=ROOT, capture_output=True,
                               text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"`fcgi-cluster frontend --help` failed: {exc}") from None
    if probe.returncode != 0:
        raise Unavailable(_last_line(probe.stderr or probe.stdout) or f"exit status {probe.returncode}")
    port = free_port()
    upstreams = [arg for worker in settings.workers for arg in ("--upstream", f"{LOOPBACK}:{worker}")]
    peers.process(
        [*command, "frontend", "--listen", f"{LOOPBACK}:{port}", *upstreams],
        name="fcgi-frontend", cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), ready_port=port,
    )
    return Target(f"http://{LOOPBACK}:{port}/hello", APP_BODY)


def nginx(peers: Peers, settings: Settings) -> Target:
    first, *more = settings.workers
    peer = peers.nginx(
        LOOPBACK, first, keepalive=True, more_upstreams=[(LOOPBACK, port) for port in more],
        # Room to keep every connection open: at most one per client connection.
        keepalive_connections=settings.connections, access_log=False,
    )
    return Target(peer.url("/hello"), APP_BODY)


def haproxy(peers: Peers, settings: Settings) -> Target:
    first, *more = settings.workers
    peer = peers.haproxy(
        LOOPBACK, first, mpxs=True, more_upstreams=[(LOOPBACK, port) for port in more],
        access_log=False, nbthread=1,
    )
    return Target(peer.url("/hello"), APP_BODY)


def nginx_php_fpm(peers: Peers, settings: Settings) -> Target:
    find_php_fpm()  # raises PeerStartError, reported as not available
    fpm = peers.php_fpm(pm="static", max_children=PHP_CHILDREN)
    # Without keep-alive, as nginx is set up by default: a php-fpm child serves one
    # connection until nginx closes it, so kept-alive connections beyond the 4 children
    # would wait in php-fpm's listen queue behind idle ones, and time out.
    peer = peers.nginx_php(fpm.port, PHP_PAGES, keepalive=False, access_log=False)
    return Target(peer.url("/hello.php"), PHP_BODY)


def nginx_flup(peers: Peers, settings: Settings) -> Target:
    ports = []
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for _ in range(POOL_SIZE):
        port = free_port()
        peers.process(
            [python_executable(), ROOT / "benchmarks" / "_flup_worker.py", APP, LOOPBACK, str(port), "0"],
            name="flup", cwd=ROOT, env=env, ready_port=port,
        )
        ports.append(port)
    first, *more = ports
    peer = peers.nginx(
        LOOPBACK, first, keepalive=True, more_upstreams=[(LOOPBACK, port) for port in more],
        keepalive_connections=settings.connections, access_log=False,
    )
    return Target(peer.url("/hello"), APP_BODY)


CONTENDERS: dict[str, Callable[[Peers, Settings], Target]] = {
    "ours": ours,
    "nginx": nginx,
    "haproxy": haproxy,
    "nginx+php-fpm": nginx_php_fpm,
    "nginx+flup": nginx_flup,
}


def check_answer(target: Target) -> None:
    """One GET of the target; raises ``Unavailable`` unless it is 200 with the right body."""
    url = target.url.removeprefix("http://")
    address, _, path = url.partition("/")
    host, _, port = address.partition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", "/" + path)
        response = connection.getresponse()
        body = response.read()
    except OSError as exc:
        raise Unavailable(f"GET {target.url} failed: {exc}") from None
    finally:
        connection.close()
    if (response.status, body) != (200, target.body):
        raise Unavailable(f"GET {target.url} answered {response.status} {body[:80]!r}")


# --- wrk -------------------------------------------------------------------------------

_UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}
_REQUESTS_PER_SEC = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_PERCENTILE = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_TOTAL = re.compile(r"^\s+(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.M)
_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def parse_wrk(output: str) -> dict:
    """The figures of one ``wrk --latency`` run.

    Returns:
        ``rps``, ``requests``, ``p50_ms``, ``p75_ms``, ``p90_ms``, ``p99_ms``,
        ``non_2xx`` (wrk counts statuses of 400 and up) and ``socket_errors``
        (``connect``, ``read``, ``write``, ``timeout``; zero when wrk prints no such line).

    Raises:
        ValueError: the output has no Requests/sec or no latency distribution.
    """
    rps = _REQUESTS_PER_SEC.search(output)
    total = _TOTAL.search(output)
    percentiles = {int(p): float(value) * _UNITS_US[unit] / 1e3
                   for p, value, unit in _PERCENTILE.findall(output)}
    if rps is None or total is None or not {50, 99} <= percentiles.keys():
        raise ValueError(f"cannot read wrk's output:\n{output}")
    errors = _SOCKET_ERRORS.search(output)
    non_2xx = _NON_2XX.search(output)
    return {
        "rps": float(rps[1]),
        "requests": int(total[1]),
        **{f"p{p}_ms": percentiles[p] for p in sorted(percentiles)},
        "non_2xx": int(non_2xx[1]) if non_2xx else 0,
        "socket_errors": dict(zip(("connect", "read", "write", "timeout"),
                                  map(int, errors.groups()) if errors else (0, 0, 0, 0))),
    }


def run_wrk(wrk: str, url: str, seconds: float, connections: int) -> dict:
    """Run wrk once against ``url``; its parsed figures, with the raw output under ``raw``."""
    argv = [wrk, f"-t{WRK_THREADS}", f"-c{connections}", f"-d{seconds:g}s", "--latency", url]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + WRK_GRACE_SECONDS)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {result.returncode}: {result.stderr.strip()}")
    return {**parse_wrk(result.stdout), "raw": result.stdout}


def trouble(run: dict) -> str:
    """What went wrong in a run, for printing beside its figure; "" when nothing did."""
    parts = []
    if run["non_2xx"]:
        parts.append(f"{run['non_2xx']} non-2xx/3xx")
    errors = {kind: n for kind, n in run["socket_errors"].items() if n}
    if errors:
        parts.append("socket errors " + ", ".join(f"{kind} {n}" for kind, n in errors.items()))
    return "; ".join(parts)


# --- the run ---------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of one wrk run (default %(default)s)")
    parser.add_argument("--connections", type=int, default=64, help="wrk's open connections (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    if args.quick:
        args.duration, args.rounds = 2.0, 1
    if args.connections < WRK_THREADS:
        parser.error(f"--connections must be at least {WRK_THREADS} (one per wrk thread)")
    wrk = shutil.which("wrk")
    if wrk is None:
        print("end_to_end.py: wrk is not installed: run `make deps` (scripts/install-deps.sh)", file=sys.stderr)
        return 1

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = pathlib.Path(args.out) / f"{stamp}-http"
    out.mkdir(parents=True, exist_ok=True)
    runs: list[dict] = []
    status: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        peers = Peers(stack, out / "peers")
        settings = Settings(args.duration, args.connections, args.rounds, start_pool(peers))
        targets: dict[str, Target] = {}
        for name, start in CONTENDERS.items():
            try:
                targets[name] = start(peers, settings)
                check_answer(targets[name])
                warmup = run_wrk(wrk, targets[name].url, WARMUP_SECONDS, args.connections)
            except (Unavailable, PeerStartError, RuntimeError, ValueError) as exc:
                targets.pop(name, None)
                reason = _last_line(str(exc)) if isinstance(exc, Unavailable) else _first_line(str(exc))
                status[name] = {"available": False, "reason": reason}
                print(f"{name}: not available ({reason})", flush=True)
                continue
            status[name] = {"available": True, "url": targets[name].url}
            note = trouble(warmup)
            print(f"{name}: warm-up {warmup['rps']:,.0f} req/s" + (f"  [{note}]" if note else ""),
                  flush=True)

        total = args.rounds * len(targets)
        step = 0
        for round_no in range(args.rounds):
            for name, target in targets.items():
                step += 1
                run = run_wrk(wrk, target.url, args.duration, args.connections)
                runs.append({"contender": name, "round": round_no, "url": target.url,
                             "seconds": args.duration, "connections": args.connections, **run})
                note = trouble(run)
                print(f"[{step}/{total}] {name:14} {run['rps']:10,.0f} req/s  p50 {run['p50_ms']:7.2f} ms"
                      f"  p99 {run['p99_ms']:7.2f} ms" + (f"  [{note}]" if note else ""), flush=True)

    summary = summarize(runs, status)
    table = report(summary, status)
    (out / "results.json").write_text(json.dumps({
        "benchmark": "http",
        "machine": machine(wrk),
        "settings": {"duration": args.duration, "connections": args.connections, "rounds": args.rounds,
                     "wrk_threads": WRK_THREADS, "pool_size": POOL_SIZE, "php_children": PHP_CHILDREN,
                     "app": APP, "baseline": BASELINE},
        "contenders": status,
        "summary": summary,
        "runs": runs,
    }, indent=2))
    (out / "table.md").write_text(table)
    print()
    print(table)
    print(f"results: {out}")
    return 0


def summarize(runs: list[dict], status: dict[str, dict]) -> dict[str, dict]:
    """Per contender: the medians over its rounds, and its errors summed."""
    summary = {}
    for name, state in status.items():
        mine = [run for run in runs if run["contender"] == name]
        if not state["available"] or not mine:
            continue
        summary[name] = {
            "rps": statistics.median(run["rps"] for run in mine),
            "p50_ms": statistics.median(run["p50_ms"] for run in mine),
            "p99_ms": statistics.median(run["p99_ms"] for run in mine),
            "requests": sum(run["requests"] for run in mine),
            "non_2xx": sum(run["non_2xx"] for run in mine),
            "socket_errors": {kind: sum(run["socket_errors"][kind] for run in mine)
                              for kind in ("connect", "read", "write", "timeout")},
        }
    return summary


def report(summary: dict[str, dict], status: dict[str, dict]) -> str:
    """A markdown table: medians, ratios to the baseline, and any errors."""
    base = summary.get(BASELINE)

    def ratio(name: str, key: str) -> str:
        if base is None or not base[key]:
            return "-"
        return f"{summary[name][key] / base[key]:.2f}x"

    lines = [
        f"| contender | req/s | p50 ms | p99 ms | req/s vs {BASELINE} | p50 vs {BASELINE} "
        f"| p99 vs {BASELINE} | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, state in status.items():
        if name not in summary:
            lines.append(f"| {name} | not available: {state.get('reason', 'no runs')} | | | | | | |")
            continue
        figures = summary[name]
        errors = trouble(figures) or "none"
        lines.append(
            f"| {name} | {figures['rps']:,.0f} | {figures['p50_ms']:.2f} | {figures['p99_ms']:.2f} "
            f"| {ratio(name, 'rps')} | {ratio(name, 'p50_ms')} | {ratio(name, 'p99_ms')} | {errors} |"
        )
    return "\n".join(lines) + "\n"


def machine(wrk: str) -> dict:
    versions = {}
    for name, argv in {
        "wrk": [wrk, "-v"],
        "nginx": ["nginx", "-v"],
        "haproxy": ["haproxy", "-v"],
        "php-fpm": ["php-fpm", "-v"],
    }.items():
        try:
            if name == "php-fpm":
                argv[0] = find_php_fpm()
            binary = shutil.which(argv[0]) or shutil.which(argv[0], path="/usr/sbin:/sbin") or argv[0]
            result = subprocess.run([binary, *argv[1:]], capture_output=True, text=True, timeout=10)
            versions[name] = _first_line(result.stdout or result.stderr)
        except (OSError, PeerStartError, subprocess.TimeoutExpired) as exc:
            versions[name] = f"unknown ({exc})"
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        **versions,
    }


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _last_line(text: str) -> str:
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")


if __name__ == "__main__":
    sys.exit(main())
