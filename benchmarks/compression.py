"""What compression costs the front door per request: echo's JSON answer, off, gzip, br and zstd.

One front-end process in front of one worker process of ``workers.echo:app``
(its default answer: about 1.5 KB of JSON). Routes differ only in their
compression; wrk asks each with the Accept-Encoding that selects its coding.
Reported per route: requests/s, p99, CPU seconds per 10,000 requests of the
front door alone (what compression adds lands there), and the answer's size on
the wire.

Usage: python benchmarks/compression.py [--seconds S] [--rounds N] [--connections C] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import os
import pathlib
import statistics
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import LUA_PERCENTILE, fcgi_cluster_command, run_wrk, stamp  # noqa: E402
from _progress import Progress  # noqa: E402

from tests._peers import LOOPBACK, Peers, free_port  # noqa: E402

#: (route prefix, its compression keys, the Accept-Encoding wrk sends).
CASES = (
    ("/off/", "", "gzip, br, zstd"),
    ("/gzip1/", "gzip = true\ngzip_comp_level = 1\nbrotli = false\nzstd = false\n", "gzip"),
    ("/gzip6/", "gzip = true\ngzip_comp_level = 6\nbrotli = false\nzstd = false\n", "gzip"),
    ("/br4/", "gzip = true\nbrotli_comp_level = 4\n", "br"),
    ("/zstd3/", "gzip = true\nzstd_comp_level = 3\n", "zstd"),
)


@dataclasses.dataclass(frozen=True)
class Settings:
    """seconds per wrk run, rounds of every case, client connections."""

    seconds: float = 3.0
    rounds: int = 2
    connections: int = 32


def steps(settings: Settings) -> int:
    """The wrk runs of a run, for the progress line."""
    return settings.rounds * len(CASES)


def _config(worker: int, port: int) -> str:
    text = textwrap.dedent(f"""\
        [frontend]
        listen = "{LOOPBACK}:{port}"
        access_log = false
        processes = 1
        [upstream.app]
        servers = ["{LOOPBACK}:{worker}"]
        """)
    for prefix, keys, _ in CASES:
        text += f'[[route]]\nprefix = "{prefix}"\nupstream = "app"\n{keys}'
    return text


def _wire_size(port: int, path: str, accept: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    try:
        conn.request("GET", path, headers={"Accept-Encoding": accept})
        response = conn.getresponse()
        return len(response.read()), response.getheader("Content-Encoding") or "identity"
    finally:
        conn.close()


def run(settings: Settings, out: pathlib.Path, progress: Progress | None = None) -> dict:
    """Every case ``rounds`` times, interleaved; the runs and their medians."""
    seconds, rounds, connections = settings.seconds, settings.rounds, settings.connections
    progress = progress or Progress(steps(settings))
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    with contextlib.ExitStack() as stack:
        peers = Peers(stack, out)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        worker = free_port()
        worker_process = peers.process(
            [*fcgi_cluster_command(), "worker", "workers.echo:app", "--listen", f"{LOOPBACK}:{worker}",
             "--log-level", "warning"], name="fcgi-worker", cwd=ROOT, env=env, ready_port=worker)
        port = free_port()
        config = out / "frontend.toml"
        config.write_text(_config(worker, port))
        front = peers.process([*fcgi_cluster_command(), "frontend", "-c", config], name="fcgi-frontend",
                              cwd=ROOT, env=env, ready_port=port)
        for round_ in range(rounds):
            for prefix, _, accept in CASES:
                script = out / f"wrk-{prefix.strip('/')}.lua"
                script.write_text(f'wrk.headers["Accept-Encoding"] = "{accept}"\n' + LUA_PERCENTILE)
                size, coding = _wire_size(port, prefix + "echo", accept)
                figures = run_wrk("wrk", f"http://{LOOPBACK}:{port}{prefix}echo", seconds, connections, script,
                                  [front.pid, worker_process.pid])
                figures.pop("raw")
                runs.append({"case": prefix.strip("/"), "round": round_, "coding": coding, "bytes": size, **figures})
                progress.step(f"compress {prefix:9} {coding:8} {size:6} B  {figures['rps']:9,.0f} req/s  "
                              f"front CPU {figures['front_cpu_per_10k_s']:.2f} s/10k")
    summary = []
    for prefix, _, _ in CASES:
        mine = [one for one in runs if one["case"] == prefix.strip("/")]
        summary.append({
            "case": prefix.strip("/"), "coding": mine[0]["coding"], "bytes": mine[0]["bytes"],
            "rps": statistics.median(one["rps"] for one in mine),
            "p99_ms": statistics.median(one["p99_ms"] for one in mine),
            "front_cpu_per_10k_s": statistics.median(one["front_cpu_per_10k_s"] for one in mine),
        })
    return {"seconds": seconds, "rounds": rounds, "connections": connections, "runs": runs, "summary": summary}


def report(part: dict) -> str:
    """The part's table in Markdown."""
    base = part["summary"][0]["front_cpu_per_10k_s"]
    lines = [f"Echo's JSON answer, {part['connections']} connections, one front-end and one worker process, "
             f"median of {part['rounds']} runs of {part['seconds']:g} s.", "",
             "| route | coding | bytes on the wire | req/s | p99 ms | front-door CPU s / 10k req | vs off |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for row in part["summary"]:
        lines.append(f"| {row['case']} | {row['coding']} | {row['bytes']} | {row['rps']:,.0f} | {row['p99_ms']:.2f} | "
                     f"{row['front_cpu_per_10k_s']:.2f} | {row['front_cpu_per_10k_s'] / base:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results" / f"compression-{stamp()}")
    args = parser.parse_args()
    args.out = args.out.absolute()  # peers' configs name paths under it; run from anywhere
    part = run(Settings(args.seconds, args.rounds, args.connections), args.out)
    (args.out / "results.json").write_text(json.dumps(part, indent=2))
    text = report(part)
    (args.out / "report.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
