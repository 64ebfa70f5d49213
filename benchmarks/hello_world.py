"""Hello, end to end: our stack as a newcomer starts it, beside what users actually run.

The app is the smallest one (workers/hello.py, tests/e2e/php/hello.php for php-fpm), so
the servers are measured, not the app. Stacks, each configured as its docs advise:

* ``ours -> ours``: ``fcgi-cluster frontend --upstream ADDR`` (the CLI's defaults: one
  process per CPU, the access log on stdout) in front of ``fcgi-cluster worker -c`` with the
  shipped workers/www.conf (pm = dynamic, 2 to 4 children), only its listen address and
  slowlog path changed;
* ``nginx -> ours``: nginx with upstream ``keepalive`` and ``fastcgi_keep_conn on``;
* ``nginx -> uWSGI (FastCGI)``, ``nginx -> uWSGI (uwsgi)``: uWSGI, 2 processes;
* ``nginx -> gunicorn``: 2 * cores + 1 sync workers (gunicorn's docs);
* ``granian``: WSGI, one worker per core, no front door;
* ``nginx -> php-fpm`` (the seed: nginx's default, a connection per request) and
  ``nginx -> php-fpm (keep-alive)`` (``keepalive N`` = the children shared out over
  nginx's processes, ``fastcgi_keep_conn on``), php-fpm ``pm = static``, 4 children.

nginx runs ``worker_processes auto`` (one per CPU) with its access log off. Every run
reads the CPU seconds of every process of each stack from /proc, split into the front
door's (its process tree) and the rest, the workers'. Stacks interleave within a round.

Usage: python benchmarks/hello_world.py [--quick] [--duration S] [--rounds R] [--stack NAME ...]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import pathlib
import re
import shutil
import statistics
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _python_peers  # noqa: E402
from _common import (  # noqa: E402
    FRONT_PROCESSES,
    LUA_PERCENTILE,
    PHP_CHILDREN,
    WARMUP_SECONDS,
    Unavailable,
    fcgi_cluster_command,
    ms,
    run_wrk,
    stamp,
    trouble,
    write_part,
)
from _progress import Progress  # noqa: E402

from tests._peers import LOOPBACK, PHP_PAGES, Peers, PeerStartError, free_port  # noqa: E402

APP = "workers.hello:app"
CORES = FRONT_PROCESSES
# uWSGI's processes: as many as our shipped pool starts with, the hand-measured setup.
UWSGI_PROCESSES = 2
# gunicorn's docs: "(2 x $num_cores) + 1" sync workers.
GUNICORN_WORKERS = 2 * CORES + 1
SEED = "nginx -> php-fpm"
STACKS = ("ours -> ours", "nginx -> ours", "nginx -> uWSGI (FastCGI)",
          "nginx -> uWSGI (uwsgi)", "nginx -> gunicorn", "granian", SEED, "nginx -> php-fpm (keep-alive)")


@dataclasses.dataclass(frozen=True)
class Settings:
    """How long and how often every stack is loaded."""

    duration: float
    rounds: int
    connections: int = 64
    stacks: tuple[str, ...] = STACKS


@dataclasses.dataclass
class Stack:
    """A stack ready for load: its URL and its processes (the front door's first, if any)."""

    url: str
    pids: list[int]
    has_front: bool = True


class Starter:
    """Starts each stack of ``STACKS``; our worker pool is shared by our two front-ends and nginx."""

    def __init__(self, peers: Peers, directory: pathlib.Path) -> None:
        self._peers = peers
        self._directory = directory
        self._ours: tuple[int, int] | None = None

    def start(self, name: str) -> Stack:
        """Start stack ``name``; raises ``Unavailable`` or ``PeerStartError`` when it cannot."""
        if name == "granian":
            port, process = _python_peers.granian(self._peers, APP, CORES)
            return Stack(f"http://{LOOPBACK}:{port}/", [process.pid], has_front=False)
        front, _, back = name.partition(" -> ")
        if back.startswith("php-fpm"):
            return self._php(keepalive="keep-alive" in back)
        if back.startswith("uWSGI"):
            protocol = "fastcgi" if "FastCGI" in back else "uwsgi"
            worker_port, worker = _python_peers.uwsgi(self._peers, APP, UWSGI_PROCESSES, protocol)
            if protocol == "fastcgi":
                return self._nginx_fastcgi(worker_port, worker.pid, keepalive=False)
            port, nginx = _python_peers.nginx_proxy(self._peers, self._directory, "uwsgi", worker_port, CORES)
            return Stack(f"http://{LOOPBACK}:{port}/", [nginx.pid, worker.pid])
        if back == "gunicorn":
            worker_port, worker = _python_peers.gunicorn(self._peers, APP, GUNICORN_WORKERS)
            port, nginx = _python_peers.nginx_proxy(self._peers, self._directory, "http", worker_port, CORES)
            return Stack(f"http://{LOOPBACK}:{port}/", [nginx.pid, worker.pid])
        worker_port, worker_pid = self._our_pool()
        if front == "nginx":
            return self._nginx_fastcgi(worker_port, worker_pid, keepalive=True)
        port = free_port()
        argv = [*fcgi_cluster_command(), "frontend", "--listen", f"{LOOPBACK}:{port}",
                "--upstream", f"{LOOPBACK}:{worker_port}"]
        process = self._peers.process(argv, name="fcgi-frontend", cwd=ROOT, env=_python_peers.env(),
                                      ready_port=port)
        return Stack(f"http://{LOOPBACK}:{port}/", [process.pid, worker_pid])

    def _our_pool(self) -> tuple[int, int]:
        """The shipped workers/www.conf on a free port: its port and master's PID."""
        if self._ours is None:
            port = free_port()
            text = (ROOT / "workers" / "www.conf").read_text()
            text = re.sub(r"(?m)^listen = .*$", f"listen = {LOOPBACK}:{port}", text)
            text = re.sub(r"(?m)^slowlog = .*$", f"slowlog = {self._directory}/$pool.slow.log", text)
            self._directory.mkdir(parents=True, exist_ok=True)
            config = self._directory / "www.conf"
            config.write_text(text)
            process = self._peers.process([*fcgi_cluster_command(), "worker", "-c", config], name="fcgi-worker",
                                          cwd=ROOT, env=_python_peers.env(), ready_port=port)
            self._ours = (port, process.pid)
        return self._ours

    def _nginx_fastcgi(self, worker_port: int, worker_pid: int, keepalive: bool) -> Stack:
        # keepalive N is per nginx process: together they keep as many idle connections as clients.
        peer = self._peers.nginx(LOOPBACK, worker_port, keepalive=keepalive, access_log=False,
                                 keepalive_connections=max(1, 64 // CORES), worker_processes=CORES)
        return Stack(f"http://{LOOPBACK}:{peer.port}/", [peer.process.pid, worker_pid])

    def _php(self, keepalive: bool) -> Stack:
        # Each nginx gets a php-fpm of its own: a child is pinned to a kept connection.
        fpm = self._peers.php_fpm(pm="static", max_children=PHP_CHILDREN)
        peer = self._peers.nginx_php(fpm.port, PHP_PAGES, keepalive=keepalive, access_log=False,
                                     keepalive_connections=max(1, PHP_CHILDREN // CORES), worker_processes=CORES)
        return Stack(f"http://{LOOPBACK}:{peer.port}/hello.php", [peer.process.pid, fpm.process.pid])


def check_answer(stack: Stack) -> None:
    """One GET; raises ``Unavailable`` unless it is 200 with a body."""
    host_port = stack.url.split("/")[2]
    connection = http.client.HTTPConnection(host_port, timeout=10)
    try:
        connection.request("GET", "/" + stack.url.split("/", 3)[3])
        response = connection.getresponse()
        body = response.read()
    except OSError as exc:
        raise Unavailable(f"{stack.url} failed: {exc}") from None
    finally:
        connection.close()
    if response.status != 200 or not body:
        raise Unavailable(f"{stack.url} answered {response.status}: {body[:80]!r}")


def steps(settings: Settings) -> int:
    """wrk runs ``run`` makes, warm-ups included."""
    return len(settings.stacks) * (1 + settings.rounds)


def run(settings: Settings, out: pathlib.Path, progress: Progress) -> dict:
    """Load every stack with wrk, interleaved; the part of results.json it makes.

    Resource handling: every process started is stopped (by PID) before it returns.
    Error handling: a stack that cannot start or answers wrongly is reported as not
    available, with the reason; the others still run.
    """
    wrk = shutil.which("wrk")
    if wrk is None:
        raise Unavailable("wrk is not installed: run `make deps` (scripts/install-deps.sh)")
    out.mkdir(parents=True, exist_ok=True)
    script = out / "wrk.lua"
    script.write_text(LUA_PERCENTILE)
    status: dict[str, dict] = {}
    runs: list[dict] = []
    with contextlib.ExitStack() as exits:
        starter = Starter(Peers(exits, out / "peers"), out / "peers")
        stacks: dict[str, Stack] = {}
        for name in settings.stacks:
            try:
                stack = starter.start(name)
                check_answer(stack)
                warm = run_wrk(wrk, stack.url, WARMUP_SECONDS, settings.connections, script, stack.pids)
            except (Unavailable, PeerStartError, RuntimeError, ValueError, OSError) as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                status[name] = {"available": False, "reason": reason}
                progress.skip(1 + settings.rounds, f"{name}: not available ({reason})")
                continue
            stacks[name] = stack
            status[name] = {"available": True, "url": stack.url, "front_door": stack.has_front}
            progress.step(f"{name}: warm-up {warm['rps']:,.0f} req/s")
        for round_no in range(settings.rounds):
            for name, stack in stacks.items():
                try:
                    result = run_wrk(wrk, stack.url, settings.duration, settings.connections, script, stack.pids)
                except (RuntimeError, ValueError) as exc:
                    status[name].setdefault("failed", []).append(str(exc).splitlines()[0])
                    progress.step(f"{name}: run failed ({exc})")
                    continue
                result.pop("raw")
                runs.append({"stack": name, "round": round_no, **result})
                note = trouble(result)
                progress.step(f"hello  {name:30} {result['rps']:9,.0f} req/s  "
                              f"cpu {(result['cpu_per_10k_s'] or 0) * 100:5.0f} us/req" + (f"  [{note}]" if note else ""))
    return {"settings": dataclasses.asdict(settings), "app": APP, "uwsgi_processes": UWSGI_PROCESSES,
            "gunicorn_workers": GUNICORN_WORKERS, "php_children": PHP_CHILDREN, "nginx_processes": CORES,
            "stacks": status, "summary": summarize(runs, status), "runs": runs}


def summarize(runs: list[dict], status: dict[str, dict]) -> list[dict]:
    """Per stack: medians over its rounds (CPU in µs per request, front door and workers), errors summed."""
    summary = []
    for name in dict.fromkeys(one["stack"] for one in runs):
        mine = [one for one in runs if one["stack"] == name]
        total = statistics.median(one["cpu_per_10k_s"] * 100 for one in mine)
        row = {"stack": name, "rps": statistics.median(one["rps"] for one in mine),
               "p50_ms": statistics.median(one["p50_ms"] for one in mine),
               "p99_ms": statistics.median(one["p99_ms"] for one in mine),
               "cpu_us": total, "front_cpu_us": None, "worker_cpu_us": None,
               "requests": sum(one["requests"] for one in mine),
               "non_2xx": sum(one["non_2xx"] for one in mine),
               "socket_errors": {kind: sum(one["socket_errors"][kind] for one in mine)
                                 for kind in ("connect", "read", "write", "timeout")}}
        if status[name]["front_door"]:
            row["front_cpu_us"] = statistics.median(one["front_cpu_per_10k_s"] * 100 for one in mine)
            row["worker_cpu_us"] = statistics.median(
                (one["cpu_per_10k_s"] - one["front_cpu_per_10k_s"]) * 100 for one in mine)
        summary.append(row)
    return summary


def ratios(summary: list[dict]) -> list[tuple[str, float | None, float | None]]:
    """The issue's comparisons: (label, ours, theirs); ours / theirs is the ratio."""
    rows = {row["stack"]: row for row in summary}

    def get(stack: str, key: str) -> float | None:
        return rows[stack][key] if stack in rows else None

    ours, nginx_ours = "ours -> ours", "nginx -> ours"
    uwsgi = "nginx -> uWSGI (FastCGI)"
    return [
        (f"{ours} vs {SEED} (seed), req/s", get(ours, "rps"), get(SEED, "rps")),
        (f"{ours} vs {SEED} (seed), CPU us/req", get(ours, "cpu_us"), get(SEED, "cpu_us")),
        (f"{ours} vs {uwsgi}, req/s", get(ours, "rps"), get(uwsgi, "rps")),
        (f"{ours} vs {uwsgi}, CPU us/req", get(ours, "cpu_us"), get(uwsgi, "cpu_us")),
        (f"{nginx_ours} vs {SEED}, req/s", get(nginx_ours, "rps"), get(SEED, "rps")),
        ("front door CPU us/req: ours (ours -> ours) vs nginx (nginx -> ours)",
         get(ours, "front_cpu_us"), get(nginx_ours, "front_cpu_us")),
        ("worker CPU us/req: ours (nginx -> ours) vs uWSGI (nginx -> uWSGI FastCGI)",
         get(nginx_ours, "worker_cpu_us"), get(uwsgi, "worker_cpu_us")),
    ]


def report(part: dict) -> str:
    """The headline table (hello, 64 clients) and the ratios of the goals."""
    lines = [f"**hello, {part['settings']['connections']} client connections, "
             f"{part['settings']['rounds']} rounds of {part['settings']['duration']:g} s (medians)**", "",
             "| stack | req/s | vs seed | CPU us / req | of it, front door | workers | p50 ms | p99 ms | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    seed = next((row for row in part["summary"] if row["stack"] == SEED), None)
    for row in sorted(part["summary"], key=lambda row: -row["rps"]):
        vs = f"{row['rps'] / seed['rps']:.2f}x" if seed else "-"
        front = "-" if row["front_cpu_us"] is None else f"{row['front_cpu_us']:.0f}"
        workers = "-" if row["worker_cpu_us"] is None else f"{row['worker_cpu_us']:.0f}"
        lines.append(f"| {row['stack']} | {row['rps']:,.0f} | {vs} | {row['cpu_us']:.0f} | {front} | {workers} "
                     f"| {ms(row['p50_ms'])} | {ms(row['p99_ms'])} | {trouble(row) or 'none'} |")
    lines += ["", "| comparison | ours | theirs | ratio |", "|---|---:|---:|---:|"]
    for label, mine, theirs in ratios(part["summary"]):
        if mine is None or not theirs:
            lines.append(f"| {label} | - | - | not measured |")
        else:
            lines.append(f"| {label} | {mine:,.0f} | {theirs:,.0f} | {mine / theirs:.2f}x |")
    for name, state in part["stacks"].items():
        if not state["available"]:
            lines.append(f"- {name}: not available: {state['reason']}")
        for reason in state.get("failed", ()):
            lines.append(f"- {name}: a run failed: {reason}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of one wrk run (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default %(default)s)")
    parser.add_argument("--stack", action="append", choices=STACKS, help="only these stacks")
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    if args.quick:
        args.duration, args.rounds = 1.0, 1
    settings = Settings(args.duration, args.rounds, stacks=tuple(args.stack or STACKS))
    out = pathlib.Path(args.out).absolute() / f"{stamp()}-hello"
    progress = Progress(steps(settings))
    try:
        part = run(settings, out, progress)
    except Unavailable as exc:
        print(f"hello_world.py: {exc}", file=sys.stderr)
        return 1
    write_part(out, "hello", part, report(part))
    return 0 if all(state["available"] for state in part["stacks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
