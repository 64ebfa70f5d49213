"""HTTP/2 throughput with h2load: our front-end vs nginx (``listen ... http2``), in front of the same workers.

Both front doors speak h2c with prior knowledge on a cleartext port (TLS would
measure OpenSSL as much as the front door) and pass every stream to the same two
``fcgi-cluster worker workers.echo:app`` processes over FastCGI: nginx with
upstream ``keepalive``, ours multiplexing. One front-door process each, no access
log. h2load opens ``--connections`` connections of ``--streams`` concurrent
streams each and sends ``--requests`` requests per scenario (answers of 5 B and
16 KiB, ``?size=N``); each row is the median of ``--rounds`` rounds, the two front
doors interleaved.

The suite runs it as its ``http2`` part (``benchmarks/suite.py --only http2``).

Usage: python benchmarks/http2.py [--quick] [--requests N] [--connections C] [--streams M] [--rounds R]
Writes benchmarks/results/<UTC timestamp>-http2/results.json and report.md (``write_part``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import Unavailable, fcgi_cluster_command, stamp, write_part  # noqa: E402
from _progress import Progress  # noqa: E402

from tests._peers import LOOPBACK, free_port, run_process  # noqa: E402

SCENARIOS = {"5 B": 5, "16 KiB": 16 * 1024}
FRONT_DOORS = ("ours", "nginx")
_RESULT = re.compile(r"finished in ([\d.]+)(ms|s), ([\d.]+) req/s")
_COUNTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed")
#: Streams per connection for both front doors: more than h2load sends on one (nginx's
#: default of 1000, and ours, the same key, would end its connections early and h2load
#: counts their unsent requests as failed).
KEEPALIVE_REQUESTS = 1_000_000


@dataclasses.dataclass(frozen=True)
class Settings:
    """h2load's load per run (``-n``, ``-c``, ``-m``) and the rounds of every row."""

    requests: int = 20000
    connections: int = 10
    streams: int = 10
    rounds: int = 3


QUICK = Settings(requests=2000, rounds=1)


def steps(settings: Settings) -> int:
    """h2load runs ``run`` makes."""
    return settings.rounds * len(SCENARIOS) * len(FRONT_DOORS)


def our_front_door(stack: contextlib.ExitStack, directory: pathlib.Path, workers: list[int]) -> int:
    port = free_port()
    servers = ", ".join(f'"{LOOPBACK}:{p}"' for p in workers)
    config = directory / "ours.toml"
    config.write_text(textwrap.dedent(f"""\
        [frontend]
        listen = "{LOOPBACK}:{port}"
        processes = 1
        access_log = false
        http2 = true
        http2_max_concurrent_streams = 128
        keepalive_requests = {KEEPALIVE_REQUESTS}
        [upstream.app]
        servers = [{servers}]
        """))
    stack.enter_context(run_process([*fcgi_cluster_command(), "frontend", "-c", str(config)], cwd=ROOT,
                                    env=dict(os.environ, PYTHONPATH=str(ROOT)), ready_port=port,
                                    name="fcgi-frontend", log_path=directory / "ours.log"))
    return port


def nginx_front_door(stack: contextlib.ExitStack, directory: pathlib.Path, workers: list[int]) -> int:
    port = free_port()
    work = directory / "nginx"
    work.mkdir(exist_ok=True)
    for temp in ("client_body", "fastcgi", "proxy", "uwsgi", "scgi"):
        (work / f"{temp}_temp").mkdir(exist_ok=True)
    servers = "\n".join(f"server {LOOPBACK}:{p};" for p in workers)
    user = "user root root;" if os.geteuid() == 0 else ""
    (work / "nginx.conf").write_text(textwrap.dedent(f"""\
        {user}
        worker_processes 1;
        daemon off;
        pid {work}/nginx.pid;
        error_log {work}/error.log warn;
        events {{ worker_connections 4096; }}
        http {{
            access_log off;
            keepalive_requests {KEEPALIVE_REQUESTS};
            client_body_temp_path {work}/client_body_temp;
            fastcgi_temp_path {work}/fastcgi_temp;
            proxy_temp_path {work}/proxy_temp;
            uwsgi_temp_path {work}/uwsgi_temp;
            scgi_temp_path {work}/scgi_temp;
            upstream app {{
                {servers}
                keepalive 16;
            }}
            server {{
                listen {LOOPBACK}:{port} http2;  # nginx before 1.25.1 (Debian 12): "http2 on" later
                http2_max_concurrent_streams 128;
                location / {{
                    fastcgi_pass app;
                    fastcgi_keep_conn on;
                    include /etc/nginx/fastcgi_params;
                    fastcgi_param SCRIPT_NAME "";
                    fastcgi_param PATH_INFO $uri;
                }}
            }}
        }}
        """))
    stack.enter_context(run_process(["nginx", "-p", f"{work}/", "-e", str(work / "error.log"), "-c",
                                     str(work / "nginx.conf")], cwd=work, ready_port=port, name="nginx",
                                    log_path=work / "nginx.out"))
    return port


def h2load(port: int, size: int, requests: int, connections: int, streams: int) -> dict:
    done = subprocess.run(["h2load", "-n", str(requests), "-c", str(connections), "-m", str(streams),
                           f"http://{LOOPBACK}:{port}/bench?size={size}"], capture_output=True, text=True,
                          timeout=600)
    speed, counts = _RESULT.search(done.stdout), _COUNTS.search(done.stdout)
    if speed is None or counts is None:
        raise RuntimeError(f"h2load said: {done.stdout}{done.stderr}")
    return {"req_per_s": float(speed.group(3)), "succeeded": int(counts.group(4)), "failed": int(counts.group(5))}


def run(settings: Settings, out: pathlib.Path, progress: Progress | None = None) -> dict:
    """Load every row with h2load, the front doors interleaved; the part of results.json it makes.

    Raises:
        Unavailable: h2load or nginx is not installed.

    Resource handling: the workers and both front doors are stopped (by PID) before it returns.
    """
    for binary in ("h2load", "nginx"):
        if shutil.which(binary) is None:
            raise Unavailable(f"{binary} is missing (scripts/install-deps.sh installs it)")
    progress = progress or Progress(steps(settings))
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        workers = []
        for _ in range(2):
            port = free_port()
            stack.enter_context(run_process([*fcgi_cluster_command(), "worker", "workers.echo:app", "--listen",
                                             f"{LOOPBACK}:{port}"], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                                            ready_port=port, name="fcgi-worker"))
            workers.append(port)
        ports = {"ours": our_front_door(stack, out, workers), "nginx": nginx_front_door(stack, out, workers)}
        runs: dict[str, dict[str, list[dict]]] = {s: {f: [] for f in FRONT_DOORS} for s in SCENARIOS}
        for _ in range(settings.rounds):
            for scenario, size in SCENARIOS.items():
                for front in FRONT_DOORS:
                    one = h2load(ports[front], size, settings.requests, settings.connections, settings.streams)
                    runs[scenario][front].append(one)
                    progress.step(f"http2 {scenario:7} {front:6} {one['req_per_s']:9,.0f} req/s"
                                  + (f"  [{one['failed']} failed]" if one["failed"] else ""))
    rows = []
    for scenario in SCENARIOS:
        for front in FRONT_DOORS:
            got = runs[scenario][front]
            rows.append({"scenario": scenario, "front": front,
                         "req_per_s": statistics.median(r["req_per_s"] for r in got),
                         "failed": sum(r["failed"] for r in got), "runs": got})
    return {"settings": dataclasses.asdict(settings), "rows": rows}


def report(part: dict) -> str:
    """The part's table, in Markdown."""
    s = part["settings"]
    lines = [f"HTTP/2 over h2c: h2load -n {s['requests']} -c {s['connections']} -m {s['streams']}, "
             f"the median of {s['rounds']} round(s).", "", "| answer | front door | req/s | vs nginx | failed |", "|---|---|---|---|---|"]
    nginx = {r["scenario"]: r["req_per_s"] for r in part["rows"] if r["front"] == "nginx"}
    for row in part["rows"]:
        ratio = row["req_per_s"] / nginx[row["scenario"]] if nginx[row["scenario"]] else 0
        lines.append(f"| {row['scenario']} | {row['front']} | {row['req_per_s']:.0f} | {ratio:.2f}x | {row['failed']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run: 1 round of 2000 requests")
    parser.add_argument("--requests", type=int, default=None, help=f"requests per run (default {Settings.requests})")
    parser.add_argument("--connections", type=int, default=Settings.connections)
    parser.add_argument("--streams", type=int, default=Settings.streams)
    parser.add_argument("--rounds", type=int, default=None, help=f"rounds (default {Settings.rounds})")
    parser.add_argument("--out", type=pathlib.Path, default=None)
    args = parser.parse_args()
    base = QUICK if args.quick else Settings()
    settings = Settings(requests=args.requests or base.requests, connections=args.connections,
                        streams=args.streams, rounds=args.rounds or base.rounds)
    out = (args.out or ROOT / "benchmarks" / "results" / f"{stamp()}-http2").absolute()
    try:
        part = run(settings, out)
    except Unavailable as exc:
        print(f"http2: {exc}", file=sys.stderr)
        return 2
    write_part(out, "http2", part, report(part))
    return 0


if __name__ == "__main__":
    sys.exit(main())
