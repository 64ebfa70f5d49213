"""What the benchmark scenarios share: the machine's facts, the results folder's name,
the ``fcgi-cluster`` command and our front door, wrk's runs and their figures, and the
files a scenario's run ends with (``write_part``).

The scenarios (hello_world.py, end_to_end.py, idle.py, sessions.py, slow_readers.py,
transport.py, pool.py) import this; the suite (suite.py) runs the scenarios.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import textwrap
from importlib.metadata import PackageNotFoundError, version

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _measure  # noqa: E402

from tests._peers import (  # noqa: E402
    LOOPBACK,
    PHP_PAGES,
    Peers,
    PeerStartError,
    find_php_fpm,
    free_port,
    python_executable,
)

# Processes in each pool of Python workers (ours, flup).
POOL_SIZE = 2
# php-fpm children: a small static pool, the common starting point.
PHP_CHILDREN = 4
# wrk threads: one per core of a 2-core machine; more only adds context switches.
WRK_THREADS = 2
# Seconds of the warm-up run: long enough to open every connection, fill php-fpm's
# opcache and let the pools start their threads.
WARMUP_SECONDS = 1.0
# Seconds a whole wrk run may take beyond its duration before it counts as hung.
WRK_GRACE_SECONDS = 30.0
# Requests per CPU figure: "CPU seconds per 10,000 requests".
CPU_PER = 10_000
# Processes (haproxy: threads) of every front door: each one's own default, one per CPU.
FRONT_PROCESSES = os.cpu_count() or 1


class Unavailable(Exception):
    """A stack cannot be run here; the message says why, in one line."""


# --- the machine and the results folder ----------------------------------------------


def stamp() -> str:
    """The UTC timestamp that names a results folder."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def machine() -> dict:
    """The machine and the version of every program and package measured."""
    facts = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                facts["cpu"] = line.split(":", 1)[1].strip()
                break
        facts["memory_kib"] = int(pathlib.Path("/proc/meminfo").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        pass
    try:
        facts["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                         text=True, timeout=10).stdout.strip()
    except OSError:
        pass
    programs = {"wrk": ["wrk", "-v"], "nginx": ["nginx", "-v"], "haproxy": ["haproxy", "-v"],
                "php-fpm": [None, "-v"], "redis-server": ["redis-server", "--version"]}
    for name, argv in programs.items():
        try:
            binary = find_php_fpm() if argv[0] is None else (
                shutil.which(argv[0]) or shutil.which(argv[0], path="/usr/sbin:/sbin"))
            if binary is None:
                facts[name] = "not installed"
                continue
            result = subprocess.run([binary, *argv[1:]], capture_output=True, text=True, timeout=10)
            text = result.stdout or result.stderr
            facts[name] = next((line.strip() for line in text.splitlines() if line.strip()), "")
        except (OSError, PeerStartError, subprocess.TimeoutExpired) as exc:
            facts[name] = f"unknown ({exc})"
    for dist in ("fcgi-cluster", "trio", "httptools", "flup", "redis", "pymemcache"):
        try:
            facts[dist] = version(dist)
        except PackageNotFoundError:
            facts[dist] = "not installed"
    return facts


# --- our workers and front door ------------------------------------------------------


def fcgi_cluster_command() -> list[str]:
    """The ``fcgi-cluster`` console script beside our Python, or ``python -m`` as a fallback."""
    script = pathlib.Path(sys.executable).parent / "fcgi-cluster"
    if script.exists():
        return [str(script)]
    return [python_executable(), "-m", "fcgi_cluster.cli"]


def our_front_door(peers: Peers, ports: list[int], php: bool, directory: pathlib.Path,
                   max_clients: int, processes: int = 1) -> tuple[int, subprocess.Popen]:
    """``fcgi-cluster frontend -c`` in front of ``ports``; its port and process."""
    port = free_port()
    # php-fpm children each pin a connection: cap them at the children, and queue the
    # rest. max_conns holds per front-end process (as nginx's without a shared zone), so
    # the children are shared out; past them, a process's connections would wait in
    # php-fpm's listen queue behind the other's idle ones (the 1 MiB uploads timed out).
    cap = f", max_conns = {max(1, PHP_CHILDREN // processes)}" if php else ""
    servers = ", ".join(f'{{ address = "{LOOPBACK}:{p}"{cap} }}' for p in ports)
    config = directory / f"frontend-{port}.toml"
    directory.mkdir(parents=True, exist_ok=True)
    config.write_text(textwrap.dedent(f"""\
        [frontend]
        listen = "{LOOPBACK}:{port}"
        access_log = false
        max_body_size = 0
        max_connections = {max_clients}
        processes = {processes}
        root = "{PHP_PAGES}"

        [upstream.app]
        servers = [{servers}]
        """))
    process = peers.process([*fcgi_cluster_command(), "frontend", "-c", config], name="fcgi-frontend",
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), ready_port=port)
    return port, process


# --- wrk -------------------------------------------------------------------------------

_UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}
_REQUESTS_PER_SEC = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_PERCENTILE = re.compile(r"^\s+(50|75|90|99|99\.9)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_TOTAL = re.compile(r"^\s+(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.M)
_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
# wrk's --latency prints 50/75/90/99; this script adds 99.9 from wrk's own histogram.
LUA_PERCENTILE = textwrap.dedent("""\
    done = function(summary, latency, requests)
       io.write(string.format("  99.9%%  %.2fus\\n", latency:percentile(99.9)))
    end
    """)


def parse_wrk(output: str) -> dict:
    """The figures of one ``wrk --latency`` run.

    Returns:
        ``rps``, ``requests``, ``p50_ms``, ``p75_ms``, ``p90_ms``, ``p99_ms`` (and
        ``p99.9_ms`` when the script printed it), ``non_2xx`` (wrk counts statuses of 400
        and up) and ``socket_errors`` (``connect``, ``read``, ``write``, ``timeout``; zero
        when wrk prints no such line).

    Raises:
        ValueError: the output has no Requests/sec or no latency distribution.
    """
    rps = _REQUESTS_PER_SEC.search(output)
    total = _TOTAL.search(output)
    percentiles = {p: float(value) * _UNITS_US[unit] / 1e3 for p, value, unit in _PERCENTILE.findall(output)}
    if rps is None or total is None or not {"50", "99"} <= percentiles.keys():
        raise ValueError(f"cannot read wrk's output:\n{output}")
    errors = _SOCKET_ERRORS.search(output)
    non_2xx = _NON_2XX.search(output)
    return {
        "rps": float(rps[1]),
        "requests": int(total[1]),
        **{f"p{p}_ms": percentiles[p] for p in percentiles},
        "non_2xx": int(non_2xx[1]) if non_2xx else 0,
        "socket_errors": dict(zip(("connect", "read", "write", "timeout"),
                                  map(int, errors.groups()) if errors else (0, 0, 0, 0))),
    }


def run_wrk(wrk: str, url: str, seconds: float, connections: int, script: pathlib.Path,
            pids: list[int]) -> dict:
    """Run wrk once against ``url``: its figures, the CPU the stack spent, and wrk's output.

    ``pids[0]`` is the front door: its process tree's share of the CPU is
    reported apart too (``front_cpu_per_10k_s``), the rest being the workers'.
    """
    argv = [wrk, f"-t{min(WRK_THREADS, connections)}", f"-c{connections}", f"-d{seconds:g}s",
            "--latency", "-s", str(script), url]
    front_before = _measure.cpu_seconds(_measure.tree(pids[:1]))
    before = _measure.cpu_seconds(_measure.tree(pids))
    result = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + WRK_GRACE_SECONDS)
    # The trees as they are now: a pool may have started and reaped children meanwhile.
    after = _measure.cpu_seconds(_measure.tree(pids))
    cpu = _measure.cpu_between(before, after)
    front_cpu = _measure.cpu_between(front_before, _measure.cpu_seconds(_measure.tree(pids[:1])))
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {result.returncode}: {result.stderr.strip()}")
    figures = parse_wrk(result.stdout)
    figures["cpu_s"] = cpu
    figures["front_cpu_s"] = front_cpu
    figures["cpu_per_10k_s"] = cpu / figures["requests"] * CPU_PER if figures["requests"] else None
    figures["front_cpu_per_10k_s"] = front_cpu / figures["requests"] * CPU_PER if figures["requests"] else None
    return {**figures, "raw": result.stdout}


def trouble(run: dict) -> str:
    """What went wrong in a run, for printing beside its figure; "" when nothing did."""
    parts = []
    if run["non_2xx"]:
        parts.append(f"{run['non_2xx']} non-2xx/3xx")
    errors = {kind: n for kind, n in run["socket_errors"].items() if n}
    if errors:
        parts.append("socket errors " + ", ".join(f"{kind} {n}" for kind, n in errors.items()))
    return "; ".join(parts)


def ms(value: float | None) -> str:
    """A figure in milliseconds for a report's table, "-" when there is none."""
    return "-" if value is None else f"{value:.2f}"


def write_part(out: pathlib.Path, key: str, part: dict, table: str) -> None:
    """End a scenario's run: write its folder's files and print its table.

    Args:
        out: the run's results folder (it exists).
        key: the part's name in results.json (``hello``, ``http``, ``idle``...).
        part: what the scenario's ``run`` returned.
        table: its ``report(part)`` (markdown).

    ``results.json`` holds the machine's facts and the part; ``report.md`` the table.
    """
    (out / "results.json").write_text(json.dumps({"machine": machine(), key: part}, indent=2))
    (out / "report.md").write_text(table)
    print()
    print(table)
    print(f"results: {out}")
