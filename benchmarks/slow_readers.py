"""Slow readers: small requests beside clients that read large answers at a few KB/s.

A front door that multiplexes requests over one worker connection must never let one
client's pace set the pace of the others. Each run starts ``slow`` clients that ask for
a large answer (``?size=N`` of workers.echo) over a socket with a small receive buffer
and read it at ``rate`` bytes/s, then measures small requests with wrk beside them
(4 connections): their p99 and failures, with 0, 8 and 64 slow readers. Our front-end
and nginx (upstream ``keepalive``, ``fastcgi_keep_conn on``: it buffers answers in
memory, then in a temporary file) stand in front of the same single worker process.
The front door's memory (RSS) is read before the slow readers start and at the end.

Usage: python benchmarks/slow_readers.py [--quick] [--seconds S]
(the full suite, benchmarks/suite.py, runs this as its ``slow`` part).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pathlib
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _measure  # noqa: E402
from _common import fcgi_cluster_command, parse_wrk  # noqa: E402
from _progress import Progress  # noqa: E402

from tests._peers import LOOPBACK, Peers, free_port  # noqa: E402

#: Bytes each slow reader asks for: far more than it reads in a run.
LARGE = 8 * 1024 * 1024
#: Its pace, and the receive buffer that keeps the kernel from reading ahead for it.
RATE = 20 * 1024
RECEIVE_BUFFER = 4096
#: The small requests' clients, and how long wrk waits for one answer before it counts a timeout.
SMALL_CLIENTS = 4
SMALL_TIMEOUT = 5.0
#: How long the slow readers run before the small requests start. Their answers
#: (count x LARGE, 512 MiB at 64) leave the worker at once and reach the front door
#: over the one multiplexed connection in the first one or two seconds, and small
#: answers queued behind them in that burst wait tens of milliseconds more; the
#: scenario measures the steady state that follows, while the slow readers read on.
SETTLE = 3.0
STACKS = ("ours", "nginx")
APP = "workers.echo:app"


@dataclasses.dataclass
class Settings:
    seconds: float = 6.0
    counts: tuple[int, ...] = (0, 8, 64)
    rounds: int = 1


QUICK = Settings(seconds=2.0, counts=(0, 8), rounds=1)


class SlowReader(threading.Thread):
    """One client reading a large answer at ``rate`` bytes/s until ``stop`` is set (or ``seconds`` pass)."""

    def __init__(self, port: int, path: str, stop: threading.Event, *, rate: int = RATE,
                 seconds: float = 60.0) -> None:
        super().__init__(daemon=True)
        self.port, self.path, self.stop, self.rate, self.seconds = port, path, stop, rate, seconds
        self.received = 0
        self.status = b""
        self.error: str | None = None

    def run(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.settimeout(10)
            sock.connect((LOOPBACK, self.port))
            sock.sendall(f"GET {self.path} HTTP/1.1\r\nHost: slow\r\n\r\n".encode())
            started = time.monotonic()
            deadline = started + self.seconds
            piece = max(512, self.rate // 10)
            while not self.stop.is_set() and time.monotonic() < deadline:
                data = sock.recv(piece)
                if not data:
                    break
                if not self.status:
                    self.status = data.split(b"\r\n", 1)[0]
                self.received += len(data)
                # Sleep off what the pace allows for the bytes read so far.
                ahead = started + self.received / self.rate - time.monotonic()
                if ahead > 0:
                    self.stop.wait(min(ahead, 1.0))
        except OSError as exc:
            self.error = str(exc)
        finally:
            sock.close()


@contextlib.contextmanager
def slow_readers(port: int, count: int, *, size: int = LARGE, rate: int = RATE,
                 seconds: float = 60.0) -> Iterator[list[SlowReader]]:
    """``count`` slow readers of ``?size=size`` answers on ``port``, stopped and joined on exit."""
    stop = threading.Event()
    readers = [SlowReader(port, f"/big?size={size}", stop, rate=rate, seconds=seconds) for _ in range(count)]
    try:
        for reader in readers:
            reader.start()
        yield readers
    finally:
        stop.set()
        for reader in readers:
            reader.join(timeout=15)


def small_requests(port: int, seconds: float, clients: int = SMALL_CLIENTS) -> dict:
    """wrk's figures for small GETs (echo's JSON) on ``port`` over ``seconds``."""
    argv = ["wrk", "-t1", f"-c{clients}", f"-d{seconds:g}s", "--latency",
            f"--timeout={SMALL_TIMEOUT:g}s", f"http://{LOOPBACK}:{port}/small"]
    import subprocess

    result = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {result.returncode}: {result.stderr.strip()}")
    figures = parse_wrk(result.stdout)
    figures["failed"] = figures["non_2xx"] + sum(figures["socket_errors"].values())
    return figures


def scenario(port: int, front_pid: int, count: int, seconds: float) -> dict:
    """One run: ``count`` slow readers started, then small requests beside them."""
    rss_before = _measure.rss_kib(_measure.tree([front_pid]))
    with slow_readers(port, count, seconds=seconds + 30) as readers:
        time.sleep(SETTLE if count else 0.0)
        figures = small_requests(port, seconds)
        rss_after = _measure.rss_kib(_measure.tree([front_pid]))
    started = sum(1 for reader in readers if reader.status.startswith(b"HTTP/1.1 200"))
    return {
        "slow": count, "slow_started": started, "slow_bytes": sum(r.received for r in readers),
        "rss_growth_kib": rss_after - rss_before,
        **{key: figures[key] for key in ("requests", "rps", "p50_ms", "p99_ms", "failed", "socket_errors", "non_2xx")},
    }


def start_front(name: str, peers: Peers, worker_port: int, directory: pathlib.Path) -> tuple[int, int]:
    """The front door ``name`` in front of the worker: ``(port, pid)``."""
    if name == "nginx":
        peer = peers.nginx(LOOPBACK, worker_port, keepalive=True, access_log=False)
        return peer.port, peer.process.pid
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "frontend.toml"
    config.write_text(textwrap.dedent(f"""\
        [frontend]
        listen = "{LOOPBACK}:{port}"
        access_log = false
        [upstream.app]
        servers = ["{LOOPBACK}:{worker_port}"]
        """))
    process = peers.process([*fcgi_cluster_command(), "frontend", "-c", config], name="fcgi-frontend",
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), ready_port=port)
    return port, process.pid


def steps(settings: Settings) -> int:
    """How many measurements ``run`` makes: for the progress display."""
    return settings.rounds * len(settings.counts) * len(STACKS)


def run(settings: Settings, directory: pathlib.Path, progress: Progress | None = None) -> dict:
    """Every stack at every count of slow readers, interleaved by round; the part of results.json.

    Resource handling: every process and client it starts is stopped before it
    returns, even on failure; configs and logs stay under ``directory``.
    """
    runs = []
    with contextlib.ExitStack() as stack:
        peers = Peers(stack, directory)
        worker_port = free_port()
        peers.process([*fcgi_cluster_command(), "worker", APP, "--listen",
                       f"{LOOPBACK}:{worker_port}", "--log-level", "warning"],
                      name="fcgi-worker", cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                      ready_port=worker_port)
        fronts = {name: start_front(name, peers, worker_port, directory / name) for name in STACKS}
        for round_ in range(settings.rounds):
            for count in settings.counts:
                for name, (port, pid) in fronts.items():
                    result = scenario(port, pid, count, settings.seconds)
                    runs.append({"stack": f"{name} -> ours", "round": round_, **result})
                    line = (f"slow {name:6} readers={count:3} requests={result['requests']:6} "
                            f"failed={result['failed']:4} p99={result['p99_ms']:.1f} ms "
                            f"rss+={result['rss_growth_kib'] / 1024:.1f} MiB")
                    if progress is not None:
                        progress.step(line)
                    else:
                        print(line, flush=True)
    return {"settings": dataclasses.asdict(settings), "app": APP, "large": LARGE, "rate": RATE, "runs": runs}


def rows(part: dict) -> list[dict]:
    """One row per stack and count of slow readers: the medians over rounds."""
    import statistics

    grouped: dict[tuple[str, int], list[dict]] = {}
    for entry in part["runs"]:
        grouped.setdefault((entry["stack"], entry["slow"]), []).append(entry)
    out = []
    for (stack, count), entries in grouped.items():
        out.append({
            "stack": stack, "slow": count,
            "requests": statistics.median(e["requests"] for e in entries),
            "rps": statistics.median(e["rps"] for e in entries),
            "p99_ms": statistics.median(e["p99_ms"] for e in entries),
            "failed": sum(e["failed"] for e in entries),
            "rss_growth_mib": statistics.median(e["rss_growth_kib"] for e in entries) / 1024,
        })
    return out


def report(part: dict) -> str:
    """A markdown table: small requests' throughput and p99 beside N slow readers, each front door."""
    lines = [f"Small GETs (wrk, {SMALL_CLIENTS} connections) beside N clients reading "
             f"{part['large'] // (1024 * 1024)} MiB answers at {part['rate'] // 1024} KiB/s through a "
             f"{RECEIVE_BUFFER} B receive buffer; one worker process ({part['app']}), multiplexed.", "",
             "| front door | slow readers | small req/s | p99 ms | failed | front-door RSS growth MiB |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in sorted(rows(part), key=lambda r: (r["slow"], r["stack"])):
        lines.append(f"| {row['stack']} | {row['slow']} | {row['rps']:,.0f} | {row['p99_ms']:.1f} "
                     f"| {row['failed']} | {row['rss_growth_mib']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results" / "slow-readers")
    args = parser.parse_args()
    settings = QUICK if args.quick else Settings()
    if args.seconds:
        settings = dataclasses.replace(settings, seconds=args.seconds)
    args.out = args.out.absolute()  # peers' configs name paths under it; run from anywhere
    args.out.mkdir(parents=True, exist_ok=True)
    part = run(settings, args.out)
    (args.out / "results.json").write_text(json.dumps(part, indent=2))
    print(report(part))
    return 0


if __name__ == "__main__":
    sys.exit(main())
