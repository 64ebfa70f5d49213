"""End-to-end HTTP throughput, latency and CPU per request with wrk: front doors x workers.

HTTP in, FastCGI behind. Every stack is a front door in front of a worker pool:

* front doors: ``ours`` (``fcgi-cluster frontend``), ``nginx`` (upstream ``keepalive``,
  ``fastcgi_keep_conn on``) and ``haproxy`` (``fcgi-app``; ``option mpxs-conns`` to
  workers that multiplex);
* workers: ``ours`` (two ``fcgi-cluster worker workers.echo:app`` processes, as they
  start by default: the app in threads), ``ours (threads 0)`` (the same two with
  ``--threads 0``: the app on each process's event loop, one request at a time, as a
  php-fpm child runs its script; behind ours and nginx only), ``flup`` (two tuned flup
  processes, benchmarks/_flup_worker.py, the same app) and ``php-fpm`` (``pm =
  static``, 4 children, tests/e2e/php/big.php and upload.php).

haproxy -> php-fpm is left out: the fcgi-app of tests/_peers.py mounts the app at the
root and sends no SCRIPT_FILENAME. nginx and ours talk to php-fpm without multiplexing
(it answers FCGI_MPXS_CONNS=0); nginx without keep-alive (its default: a php-fpm child
pins a kept connection, and connections past the children would wait behind idle
ones), ours with keep-alive and ``max_conns`` = the children, so extra requests queue.

Scenarios: answers of 5 B, 16 KiB and 1 MiB (``?size=N`` of workers.echo,
``big.php?n=N``) and 1 MiB uploads (a POST, answered with a few bytes). Every front
door runs as it ships, one process (haproxy: thread) per CPU: nginx
``worker_processes auto`` (Debian's nginx.conf), haproxy's default ``nbthread``, ours
``processes = "auto"`` (``--front-processes N`` gives all three N). None logs
requests. wrk, the front door and the workers share the machine's cores, equally for
every stack. The scheduler gives each busy process its turn: a front door of one
process that needs more than one turn of CPU waits for it (ours, in front of
``ours (threads 0)``: 0.82x nginx in front of the same workers with one process
each, 0.92x with two; nginx needs a quarter of ours and gains nothing).

Each run also reads the CPU seconds (user+sys, /proc) of every process of the stack,
front door and workers, and reports them per 10,000 requests: the figure that stays
honest on a busy machine. Stacks interleave within each round (A B C A B C) so drift
hits all alike; the report gives medians over the rounds.

Usage: python benchmarks/end_to_end.py [--quick] [--duration S] [--connections N] [--rounds R]
Writes benchmarks/results/<UTC timestamp>-http/results.json and report.md (the full
suite, benchmarks/suite.py, runs this as one of its parts).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import (  # noqa: E402
    FRONT_PROCESSES,
    LUA_PERCENTILE,
    PHP_CHILDREN,
    POOL_SIZE,
    WARMUP_SECONDS,
    WRK_THREADS,
    Unavailable,
    fcgi_cluster_command,
    ms,
    our_front_door,
    run_wrk,
    stamp,
    trouble,
    write_part,
)
from _progress import Progress  # noqa: E402

from tests._peers import (  # noqa: E402
    LOOPBACK,
    PHP_PAGES,
    Peers,
    PeerStartError,
    find_php_fpm,
    free_port,
    python_executable,
)

APP = "workers.echo:app"
FRONT_DOORS = ("ours", "nginx", "haproxy")
# Our workers with the app on the event loop: php-fpm's model, for an app that never blocks.
INLINE = "ours (threads 0)"
WORKERS = ("ours", INLINE, "flup", "php-fpm")
# Every pairing but haproxy -> php-fpm (see the module docstring) and haproxy -> INLINE.
STACKS = tuple(f"{front} -> {back}" for front in FRONT_DOORS for back in WORKERS
               if (front, back) not in (("haproxy", "php-fpm"), ("haproxy", INLINE)))
# Ratios are taken against nginx in front of the same workers as ours: only the front
# door differs.
BASELINE = "nginx -> ours"
# scenario: (bytes answered, bytes uploaded)
SCENARIOS = {
    "5 B": (5, 0),
    "16 KiB": (16 * 1024, 0),
    "1 MiB": (1024 * 1024, 0),
    "1 MiB up": (2, 1024 * 1024),
}
#: Streams per multiplexed connection for HAProxy (see start_stack).
HAPROXY_MAX_REQS = 32
# Seconds given a front door to die after a run before the run counts as sound.
CRASH_GRACE = 0.2


@dataclasses.dataclass(frozen=True)
class Settings:
    """What every stack is run with."""

    duration: float
    rounds: int
    connections: tuple[int, ...] = (64,)
    scenarios: tuple[str, ...] = tuple(SCENARIOS)
    stacks: tuple[str, ...] = STACKS
    #: Processes (haproxy: threads) of every front door.
    front_processes: int = FRONT_PROCESSES


@dataclasses.dataclass
class Target:
    """A stack ready for load: its HTTP port, how its workers spell a page, its processes.

    ``front`` is the front door's process and ``logs`` its logs, to tell a crash
    (``crash``) from a wrong answer.
    """

    port: int
    php: bool
    pids: list[int]
    front: subprocess.Popen | None = None
    logs: tuple[pathlib.Path, ...] = ()

    def crash(self, grace: float = 0.0) -> str | None:
        """Why the front door is gone (its fatal log line, or its exit status), or None while it runs.

        Args:
            grace: seconds to wait for it to die first: a front door can die of the
                clients' hang-up at the end of a run (HAProxy 2.6.12 does), just after wrk
                has returned.
        """
        if self.front is None:
            return None
        try:
            self.front.wait(grace)
        except subprocess.TimeoutExpired:
            return None
        if self.front.poll() is None:
            return None
        for path in self.logs:
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                if "FATAL" in line or "ALERT" in line or "Traceback" in line:
                    return f"the front door crashed: {line.strip()}"
        return f"the front door exited with status {self.front.returncode}"

    def path(self, scenario: str) -> str:
        size, upload = SCENARIOS[scenario]
        if self.php:
            return "/upload.php" if upload else f"/big.php?n={size}"
        return f"/?size={size}"

    def url(self, scenario: str) -> str:
        return f"http://{LOOPBACK}:{self.port}{self.path(scenario)}"


# --- the workers and the front doors ------------------------------------------------


class Pools:
    """The worker pools, each started on first use.

    Our workers are shared by every front door: they take any number of connections.
    flup and php-fpm give each front door a pool of its own, because each of their
    threads or children is pinned to one connection while it stays open: the idle
    kept-alive connections of one front door would otherwise hold every thread or child,
    and the next front door's requests would wait behind them (measured: resets from
    flup, timeouts from php-fpm).
    """

    def __init__(self, peers: Peers) -> None:
        self._peers = peers
        self._started: dict[tuple[str, str], tuple[list[int], list[int]]] = {}

    def get(self, kind: str, front: str) -> tuple[list[int], list[int]]:
        """``(ports, pids)`` of the pool of ``kind`` (one of ``WORKERS``) for ``front``."""
        ours = kind in ("ours", INLINE)
        key = (kind, "" if ours else front)
        if key not in self._started:
            start = {"ours": self._ours, INLINE: self._ours_inline, "flup": self._flup, "php-fpm": self._php_fpm}
            self._started[key] = start[kind]()
        return self._started[key]

    def _python_pool(self, argv: Callable[[int], list], name: str) -> tuple[list[int], list[int]]:
        ports, pids = [], []
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        for _ in range(POOL_SIZE):
            port = free_port()
            process = self._peers.process(argv(port), name=name, cwd=ROOT, env=env, ready_port=port)
            ports.append(port)
            pids.append(process.pid)
        return ports, pids

    def _ours(self, *options: str) -> tuple[list[int], list[int]]:
        return self._python_pool(
            lambda port: [*fcgi_cluster_command(), "worker", APP, "--listen", f"{LOOPBACK}:{port}",
                          "--log-level", "warning", *options], "fcgi-worker")

    def _ours_inline(self) -> tuple[list[int], list[int]]:
        return self._ours("--threads", "0")

    def _flup(self) -> tuple[list[int], list[int]]:
        return self._python_pool(
            lambda port: [python_executable(), ROOT / "benchmarks" / "_flup_worker.py", APP, LOOPBACK,
                          str(port), "0"], "flup")

    def _php_fpm(self) -> tuple[list[int], list[int]]:
        find_php_fpm()  # raises PeerStartError, reported as not available
        fpm = self._peers.php_fpm(pm="static", max_children=PHP_CHILDREN)
        return [fpm.port], [fpm.process.pid]


def start_stack(name: str, peers: Peers, pools: Pools, settings: Settings, directory: pathlib.Path) -> Target:
    """Start the front door of stack ``name`` (and its workers, when not yet running)."""
    front, _, back = name.partition(" -> ")
    ports, worker_pids = pools.get(back, front)
    php = back == "php-fpm"
    first, *more = ports
    keep = max(settings.connections)
    logs: tuple[pathlib.Path, ...] = ()
    if front == "ours":
        port, process = our_front_door(peers, ports, php, directory, max(4096, keep * 2), settings.front_processes)
        logs = (pathlib.Path(process.log_path),)  # type: ignore[attr-defined]
        return Target(port, php, [process.pid, *worker_pids], process, logs)
    if front == "nginx" and php:
        peer = peers.nginx_php(first, PHP_PAGES, keepalive=False, access_log=False,
                               worker_processes=settings.front_processes)
    elif front == "nginx":
        # keepalive N is per nginx worker process: the processes together keep as many
        # idle connections as there are clients (flup's threads are counted for that).
        peer = peers.nginx(LOOPBACK, first, keepalive=True, more_upstreams=[(LOOPBACK, p) for p in more],
                           keepalive_connections=max(1, keep // settings.front_processes), access_log=False,
                           worker_processes=settings.front_processes)
    else:
        # HAProxy 2.6's FastCGI mux answers some requests with its own 500 (state "IH",
        # internal error) once a connection carries more than about 32 streams, with
        # flup as with ours (haproxy issue #2568, fixed in later versions): 32 is the
        # most it serves cleanly here. Debian 12's 2.6.12 can also die of a failed
        # assertion in that mux on large answers (issue #2150, fixed in 2.6.14): the run
        # then reports the crash for that scenario and goes on with a new HAProxy.
        peer = peers.haproxy(LOOPBACK, first, mpxs=back in ("ours", INLINE), more_upstreams=[(LOOPBACK, p) for p in more],
                             access_log=False, nbthread=settings.front_processes, max_reqs=HAPROXY_MAX_REQS)
    return Target(peer.port, php, [peer.process.pid, *worker_pids], peer.process, tuple(peer.log_paths))


def check_answer(target: Target, scenario: str) -> None:
    """One request of ``scenario``; raises ``Unavailable`` unless it is 200 with the right body."""
    size, upload = SCENARIOS[scenario]
    connection = http.client.HTTPConnection(LOOPBACK, target.port, timeout=10)
    try:
        connection.request("POST" if upload else "GET", target.path(scenario),
                           body=b"u" * upload if upload else None)
        response = connection.getresponse()
        body = response.read()
    except OSError as exc:
        raise Unavailable(f"{scenario}: {target.url(scenario)} failed: {exc}") from None
    finally:
        connection.close()
    # An upload is answered with the worker's own few bytes; a download with exactly size.
    if response.status != 200 or (not upload and len(body) != size):
        raise Unavailable(f"{scenario}: {target.url(scenario)} answered {response.status} "
                          f"with {len(body)} bytes: {body[:80]!r}")


# --- wrk -------------------------------------------------------------------------------


def wrk_script(directory: pathlib.Path, scenario: str) -> pathlib.Path:
    """The Lua script of ``scenario``: the 99.9th percentile, and the upload body if any."""
    _, upload = SCENARIOS[scenario]
    script = directory / f"wrk-{upload}.lua"
    if not script.exists():
        body = ""
        if upload:
            body = ('wrk.method = "POST"\n'
                    f'wrk.body = string.rep("u", {upload})\n'
                    'wrk.headers["Content-Type"] = "application/octet-stream"\n')
        directory.mkdir(parents=True, exist_ok=True)
        script.write_text(body + LUA_PERCENTILE)
    return script


# --- the run ---------------------------------------------------------------------------


def steps(settings: Settings) -> int:
    """How many wrk runs ``run`` makes, warm-ups included: for the progress display."""
    return len(settings.stacks) * len(settings.scenarios) * (1 + len(settings.connections) * settings.rounds)


def run(settings: Settings, out: pathlib.Path, progress: Progress) -> dict:
    """Load every stack of ``settings`` with wrk; the part of results.json it makes.

    Resource handling: every process it starts is stopped before it returns, even when a
    run fails; the peers' configs and logs stay under ``out/peers``.

    Error handling: a stack that cannot start is reported as not available (with the
    reason) and the others still run. A scenario a stack answers wrongly, or during which
    its front door dies, is reported as not measured for that stack (with the reason: the
    front door's fatal log line when it crashed), and a crashed front door is started
    again for the scenarios left.
    """
    wrk = shutil.which("wrk")
    if wrk is None:
        raise Unavailable("wrk is not installed: run `make deps` (scripts/install-deps.sh)")
    runs: list[dict] = []
    status: dict[str, dict] = {}
    per_scenario = 1 + len(settings.connections) * settings.rounds
    with contextlib.ExitStack() as stack:
        peers = Peers(stack, out / "peers")
        pools = Pools(peers)
        targets: dict[str, Target] = {}

        def failed(name: str, scenario: str, exc: Exception | None, steps: int) -> None:
            """Record that ``scenario`` of stack ``name`` failed; a crashed front door is started again."""
            target = targets[name]
            crash = target.crash()
            reason = crash or (_last_line(str(exc)) if isinstance(exc, Unavailable) else _first_line(str(exc)))
            status[name]["failed"][scenario] = reason
            progress.skip(steps, f"{name}: {scenario}: not measured ({reason})")
            if crash:
                try:
                    targets[name] = start_stack(name, peers, pools, settings, out / "peers")
                except (Unavailable, PeerStartError, RuntimeError, ValueError):
                    pass  # each scenario left fails with the same reason, and tries again

        for name in settings.stacks:
            try:
                targets[name] = start_stack(name, peers, pools, settings, out / "peers")
            except (Unavailable, PeerStartError, RuntimeError, ValueError) as exc:
                reason = _last_line(str(exc)) if isinstance(exc, Unavailable) else _first_line(str(exc))
                status[name] = {"available": False, "reason": reason}
                progress.skip(len(settings.scenarios) * per_scenario, f"{name}: not available ({reason})")
                continue
            status[name] = {"available": True, "port": targets[name].port, "failed": {}}
            for scenario in settings.scenarios:
                target = targets[name]
                try:
                    check_answer(target, scenario)
                    warm = run_wrk(wrk, target.url(scenario), WARMUP_SECONDS, max(settings.connections),
                                   wrk_script(out, scenario), target.pids)
                    if target.crash(CRASH_GRACE):
                        raise RuntimeError("the front door died during the warm-up")  # failed() says why
                    progress.step(f"{name}: warm-up {scenario} {warm['rps']:,.0f} req/s")
                except (Unavailable, RuntimeError, ValueError) as exc:
                    failed(name, scenario, exc, per_scenario)
        for round_no in range(settings.rounds):
            for scenario in settings.scenarios:
                for connections in settings.connections:
                    for name, target in list(targets.items()):
                        if scenario in status[name]["failed"]:
                            continue
                        error: Exception | None = None
                        try:
                            result = run_wrk(wrk, target.url(scenario), settings.duration, connections,
                                             wrk_script(out, scenario), target.pids)
                        except (RuntimeError, ValueError) as exc:
                            error = exc
                        if error is not None or target.crash(CRASH_GRACE):
                            # wrk may end "well" with only socket errors to show for a front door
                            # that died under it. The stack's runs of this scenario are dropped
                            # with the scenario: a crash in it leaves no figure to trust.
                            runs[:] = [one for one in runs if (one["stack"], one["scenario"]) != (name, scenario)]
                            left = (settings.rounds - round_no) * len(settings.connections)
                            failed(name, scenario, error, left)
                            continue
                        runs.append({"stack": name, "scenario": scenario, "connections": connections,
                                     "round": round_no, "seconds": settings.duration, **result})
                        note = trouble(result)
                        progress.step(
                            f"{scenario:8} c{connections:<4} {name:20} {result['rps']:9,.0f} req/s"
                            f"  p99 {result['p99_ms']:7.2f} ms  cpu/10k {result['cpu_per_10k_s'] or 0:5.2f} s"
                            + (f"  [{note}]" if note else ""))
    return {"settings": dataclasses.asdict(settings), "app": APP, "pool_size": POOL_SIZE,
            "php_children": PHP_CHILDREN, "wrk_threads": WRK_THREADS, "baseline": BASELINE,
            "stacks": status, "summary": summarize(runs), "runs": runs}


def summarize(runs: list[dict]) -> list[dict]:
    """Per (scenario, connections, stack): the medians over its rounds, errors summed."""
    groups: dict[tuple, list[dict]] = {}
    for one in runs:
        groups.setdefault((one["scenario"], one["connections"], one["stack"]), []).append(one)
    summary = []
    for (scenario, connections, name), mine in groups.items():
        row = {"scenario": scenario, "connections": connections, "stack": name}
        for key in ("rps", "p50_ms", "p99_ms", "p99.9_ms", "cpu_per_10k_s", "front_cpu_per_10k_s"):
            values = [one[key] for one in mine if one.get(key) is not None]
            row[key] = statistics.median(values) if values else None
        row["requests"] = sum(one["requests"] for one in mine)
        row["non_2xx"] = sum(one["non_2xx"] for one in mine)
        row["socket_errors"] = {kind: sum(one["socket_errors"][kind] for one in mine)
                                for kind in ("connect", "read", "write", "timeout")}
        summary.append(row)
    return summary


def report(part: dict) -> str:
    """Markdown tables: one per scenario and client count, with ratios to the baseline."""
    lines = []
    for name, state in part["stacks"].items():
        if not state["available"]:
            lines.append(f"- {name}: not available: {state['reason']}")
        for scenario, reason in state.get("failed", {}).items():
            lines.append(f"- {name}, {scenario}: not measured: {reason}")
    keys = dict.fromkeys((row["scenario"], row["connections"]) for row in part["summary"])
    for scenario, connections in keys:
        rows = [row for row in part["summary"] if (row["scenario"], row["connections"]) == (scenario, connections)]
        base = next((row for row in rows if row["stack"] == BASELINE), None)
        best_peer = max((row["rps"] for row in rows if not row["stack"].startswith("ours ")), default=None)
        lines += ["", f"**{scenario}, {connections} client connections**", "",
                  f"| stack | req/s | vs {BASELINE} | vs best peer | p50 ms | p99 ms | p99.9 ms "
                  "| CPU s / 10k req | of it, front door | errors |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for row in sorted(rows, key=lambda row: -row["rps"]):
            ratio = f"{row['rps'] / base['rps']:.2f}x" if base and base["rps"] else "-"
            vs_best = f"{row['rps'] / best_peer:.2f}x" if best_peer else "-"
            lines.append(
                f"| {row['stack']} | {row['rps']:,.0f} | {ratio} | {vs_best} | {ms(row['p50_ms'])} "
                f"| {ms(row['p99_ms'])} | {ms(row.get('p99.9_ms'))} | {ms(row['cpu_per_10k_s'])} "
                f"| {ms(row.get('front_cpu_per_10k_s'))} | {trouble(row) or 'none'} |")
    return "\n".join(lines).strip() + "\n"


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _last_line(text: str) -> str:
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of one wrk run (default %(default)s)")
    parser.add_argument("--connections", type=int, nargs="+", default=[64],
                        help="wrk's open connections; several values sweep (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default %(default)s)")
    parser.add_argument("--scenario", action="append", choices=list(SCENARIOS), help="only these scenarios")
    parser.add_argument("--stack", action="append", choices=list(STACKS), help="only these stacks")
    parser.add_argument("--front-processes", type=int, default=FRONT_PROCESSES,
                        help="processes (haproxy: threads) of every front door (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    if args.quick:
        args.duration, args.rounds = 2.0, 1
    settings = Settings(args.duration, args.rounds, tuple(args.connections),
                        tuple(args.scenario or SCENARIOS), tuple(args.stack or STACKS), args.front_processes)
    out = pathlib.Path(args.out).absolute() / f"{stamp()}-http"
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress(steps(settings))
    try:
        part = run(settings, out, progress)
    except Unavailable as exc:
        print(f"end_to_end.py: {exc}", file=sys.stderr)
        return 1
    write_part(out, "http", part, report(part))
    return 0


if __name__ == "__main__":
    sys.exit(main())
