"""The whole benchmark suite in one run: `make bench` (about 10 minutes), `make bench-quick` (about 1).

Parts, each our stack beside its peers in the same run, interleaved:

* ``hello``: the headline: workers/hello.py through our stack as the CLI and README start
  it, beside nginx -> uWSGI (FastCGI and uwsgi), nginx -> gunicorn, granian and nginx ->
  php-fpm hello.php with and without keep-alive, CPU per request split front door /
  workers (benchmarks/hello_world.py);
* ``transport``: FastCGI requests/s into one worker process, no HTTP (benchmarks/transport.py);
* ``http``: wrk through every front door x worker pairing, answers of 5 B / 16 KiB /
  1 MiB, with CPU seconds per 10,000 requests (benchmarks/end_to_end.py);
* ``scaling``: the same, 5 B answers, as client connections go from 1 to 1,024;
* ``pool``: a pool of 1, 2 and 4 children, ours and php-fpm, and memory per idle child
  (benchmarks/pool.py);
* ``sessions``: sessions in one Redis under wrk, ours vs nginx -> php-fpm + phpredis,
  with a lost-update check (benchmarks/sessions.py);
* ``idle``: front-door memory per idle keep-alive client, 10,000 of them (1,000 quick),
  ours vs nginx vs HAProxy (benchmarks/idle.py);
* ``slow``: small requests beside 0, 8 and 64 clients that read large answers at 20 KB/s,
  ours vs nginx in front of one worker process (benchmarks/slow_readers.py);
* ``compress``: the front door's CPU per request with compression off, gzip, br and zstd, on
  echo's JSON answer (benchmarks/compression.py).
* ``microcache``: workers/hello.py through our front door uncached and cached for 1 s,
  req/s and the worker's CPU (benchmarks/microcache.py).
* ``http2``: h2load over h2c, our front door vs nginx (``http2``) in front of the same two
  workers, answers of 5 B and 16 KiB (benchmarks/http2.py).

Writes ``benchmarks/results/<UTC timestamp>/``: ``results.json`` (every run, the machine,
the version of every peer), ``report.md`` (the headline, the goals, every table) and PNG
plots (throughput vs client connections, latency percentiles, CPU per request).

Usage: python benchmarks/suite.py [--quick] [--only PART ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import compression  # noqa: E402
import end_to_end  # noqa: E402
import hello_world  # noqa: E402
import http2  # noqa: E402
import idle  # noqa: E402
import microcache  # noqa: E402
import pool  # noqa: E402
import sessions  # noqa: E402
import slow_readers  # noqa: E402
import transport  # noqa: E402
from _common import Unavailable, machine, stamp  # noqa: E402
from _progress import Progress  # noqa: E402

from tests._peers import PeerStartError  # noqa: E402

PARTS = ("hello", "transport", "http", "scaling", "pool", "sessions", "idle", "slow", "compress", "microcache", "http2")
# The stacks of the scaling sweep: every front door before our workers, and the PHP reference.
SCALING_STACKS = ("ours -> ours", "nginx -> ours", "haproxy -> ours", "nginx -> php-fpm")
# Where the headline figures are read: small answers at a moderate load.
HEADLINE = ("5 B", 64)


def plan(quick: bool) -> dict:
    """The settings of every part, full or quick."""
    if quick:
        return {
            "hello": hello_world.Settings(1.0, 1),
            "transport": {"seconds": 0.5, "rounds": 1, "generators": ("core",)},
            "http": end_to_end.Settings(1.0, 1, (64,), ("5 B",)),
            "scaling": end_to_end.Settings(1.0, 1, (1, 64, 256), ("5 B",), SCALING_STACKS[:3]),
            "pool": {"seconds": 0.5, "rounds": 1},
            "sessions": sessions.Settings(1.0, 1),
            "idle": idle.Settings(idle.QUICK_CLIENTS),
            "slow": slow_readers.Settings(1.0, (0, 8), 1),
            "compress": compression.Settings(1.0, 1),
            "microcache": microcache.Settings(1.0, 1),
            "http2": http2.QUICK,
        }
    return {
        "hello": hello_world.Settings(5.0, 2),
        "transport": {"seconds": 2.0, "rounds": 3, "generators": transport.GENERATORS},
        "http": end_to_end.Settings(3.0, 2, (64,), ("5 B", "16 KiB", "1 MiB", "1 MiB up")),
        "scaling": end_to_end.Settings(3.0, 2, (1, 16, 64, 256, 1024), ("5 B",), SCALING_STACKS),
        "pool": {"seconds": 2.0, "rounds": 2},
        "sessions": sessions.Settings(3.0, 2),
        "idle": idle.Settings(idle.CLIENTS),
        "slow": slow_readers.Settings(4.0, (0, 8, 64), 2),
        "compress": compression.Settings(3.0, 2),
        "microcache": microcache.Settings(3.0, 2),
        "http2": http2.Settings(),
    }


def run(parts: tuple[str, ...], quick: bool, out: pathlib.Path) -> dict:
    """Run ``parts``; the whole of results.json. A part that fails is recorded with its error."""
    settings = plan(quick)
    progress = Progress()
    counts = {
        "hello": lambda: hello_world.steps(settings["hello"]),
        "transport": lambda: transport.steps(settings["transport"]["rounds"], settings["transport"]["generators"]),
        "http": lambda: end_to_end.steps(settings["http"]),
        "scaling": lambda: end_to_end.steps(settings["scaling"]),
        "pool": lambda: pool.steps(settings["pool"]["rounds"]),
        "sessions": lambda: sessions.steps(settings["sessions"]),
        "idle": lambda: idle.steps(settings["idle"]),
        "slow": lambda: slow_readers.steps(settings["slow"]),
        "compress": lambda: compression.steps(settings["compress"]),
        "microcache": lambda: microcache.steps(settings["microcache"]),
        "http2": lambda: http2.steps(settings["http2"]),
    }
    for part in parts:
        progress.add(counts[part]())
    results: dict = {"quick": quick, "machine": machine(), "parts": {}}
    for part in parts:
        progress.note(f"--- {part} ---")
        try:
            if part == "hello":
                results["parts"][part] = hello_world.run(settings[part], out / part, progress)
            elif part == "transport":
                results["parts"][part] = transport.run(progress=progress, **settings["transport"])
            elif part in ("http", "scaling"):
                results["parts"][part] = end_to_end.run(settings[part], out / part, progress)
            elif part == "sessions":
                results["parts"][part] = sessions.run(settings[part], out / part, progress)
            elif part == "idle":
                results["parts"][part] = idle.run(settings[part], out / part, progress)
            elif part == "slow":
                results["parts"][part] = slow_readers.run(settings[part], out / part, progress)
            elif part == "compress":
                results["parts"][part] = compression.run(settings[part], out / part, progress)
            elif part == "microcache":
                results["parts"][part] = microcache.run(settings[part], out / part, progress)
            elif part == "http2":
                results["parts"][part] = http2.run(settings[part], out / part, progress)
            else:
                results["parts"][part] = pool.run(progress=progress, **settings["pool"])
        except (Unavailable, PeerStartError, RuntimeError, OSError, ValueError) as exc:
            results["parts"][part] = {"error": f"{type(exc).__name__}: {exc}"}
            progress.note(f"{part}: failed: {exc}")
        except Exception as exc:  # a fault in one part (a load generator's, say) costs that part only
            import traceback

            results["parts"][part] = {"error": f"{type(exc).__name__}: {exc}"}
            progress.note(f"{part}: failed:\n{traceback.format_exc()}")
    return results


# --- the report ----------------------------------------------------------------------


def headline_rows(results: dict) -> dict[str, dict]:
    """Per stack, the medians of every run of the headline scenario, in the http and scaling parts.

    Both parts run it (the scaling part for its four stacks), minutes apart:
    on a shared machine whose speed drifts over minutes, the median of four
    runs decides a goal more surely than that of one part's two.
    """
    import statistics

    runs: dict[str, list[dict]] = {}
    for name in ("http", "scaling"):
        for one in results["parts"].get(name, {}).get("runs", ()):
            if (one["scenario"], one["connections"]) == HEADLINE and one.get("rps") is not None:
                runs.setdefault(one["stack"], []).append(one)
    rows = {}
    for stack, mine in runs.items():
        cpu = [one["cpu_per_10k_s"] for one in mine if one.get("cpu_per_10k_s") is not None]
        rows[stack] = {"rps": statistics.median(one["rps"] for one in mine),
                       "cpu_per_10k_s": statistics.median(cpu) if cpu else None, "runs": len(mine)}
    return rows


def goals(results: dict) -> list[str]:
    """The issue's goals, each with the figures of this run and whether it is met."""
    lines = []
    headline = headline_rows(results)

    def check(label: str, mine: float | None, theirs: float | None, at_least: bool = True, factor: float = 1.0):
        if mine is None or theirs is None:
            lines.append(f"| {label} | - | - | not measured |")
            return
        met = mine >= theirs * factor if at_least else mine <= theirs * factor
        lines.append(f"| {label} | {mine:,.2f} | {theirs:,.2f} | {'met' if met else 'not met'} "
                     f"({mine / theirs:.2f}x) |")

    lines += ["| goal | ours | peer | |", "|---|---:|---:|---|"]
    transport_part = results["parts"].get("transport", {})
    if "runs" in transport_part:
        medians = transport_medians(transport_part)
        mine = medians.get(("core", "mpx 1x32", transport_part["contenders"][0]))
        theirs = medians.get(("core", "mpx 1x32", transport_part["contenders"][1]))
        check("one worker process, mpx 1x32 req/s, at least 3x flup", mine, theirs, factor=3.0)
    php = headline.get("nginx -> php-fpm")
    # Our workers as they start by default (the app in threads), then as php-fpm runs
    # its children (the app on the event loop, one request at a time: --threads 0).
    for workers in ("ours", end_to_end.INLINE):
        mine = headline.get(f"ours -> {workers}")
        same = headline.get(f"nginx -> {workers}")
        check(f"ours -> {workers} req/s at least nginx -> {workers} (5 B, 64 clients)",
              mine and mine["rps"], same and same["rps"])
        check(f"ours -> {workers} req/s at least nginx -> php-fpm (5 B, 64 clients)",
              mine and mine["rps"], php and php["rps"])
        check(f"CPU s / 10k req of ours -> {workers} within 1.5x nginx -> php-fpm",
              mine and mine["cpu_per_10k_s"], php and php["cpu_per_10k_s"], at_least=False, factor=1.5)
    rows = {row["stack"]: row for row in results["parts"].get("sessions", {}).get("summary", ())}
    theirs = rows.get("nginx -> php-fpm")
    for name in ("ours", "ours (threads 0)"):
        mine = rows.get(name)
        check(f"Redis sessions: {name} at least nginx -> php-fpm + phpredis (req/s)",
              mine and mine["rps"], theirs and theirs["rps"])
    slow = {(row["stack"], row["slow"]): row for row in slow_readers.rows(results["parts"]["slow"])} if (
        "runs" in results["parts"].get("slow", {})) else {}
    most = max((count for _, count in slow), default=None)
    if most:
        mine, calm = slow.get(("ours -> ours", most)), slow.get(("ours -> ours", 0))
        nginx = slow.get(("nginx -> ours", most))
        check(f"slow readers: small requests' p99 with {most} slow readers within 3x of none (ms)",
              mine and mine["p99_ms"], calm and max(calm["p99_ms"], 1.0), at_least=False, factor=3.0)
        check(f"slow readers: small req/s with {most} slow readers at least 0.5x nginx's",
              mine and mine["rps"], nginx and nginx["rps"], factor=0.5)
        lines.append(f"| slow readers: failed small requests, ours | {mine['failed'] if mine else '-'} | 0 | "
                     f"{'met' if mine and not mine['failed'] else 'not met'} |")
    if headline:
        counts = ", ".join(f"{stack} {row['runs']}" for stack, row in headline.items())
        lines += ["", "End to end (5 B, 64 clients): the median of every run of it in the http and "
                  f"scaling parts (runs per stack: {counts})."]
    return lines


def transport_medians(part: dict) -> dict:
    import statistics

    groups: dict[tuple, list[float]] = {}
    for one in part["runs"]:
        groups.setdefault((one["generator"], one["scenario"], one["contender"]), []).append(one["rps"])
    return {key: statistics.median(values) for key, values in groups.items()}


def report(results: dict, plots: list[str]) -> str:
    """report.md: the headline table, the goals, then every part's tables and the plots."""
    lines = ["# fcgi-cluster benchmark report", ""]
    facts = results["machine"]
    lines.append(f"{facts.get('cpus')} CPUs ({facts.get('cpu', '?')}), Python {facts['python']}, "
                 f"commit {facts.get('commit', '?')[:12]}; {'quick' if results['quick'] else 'full'} run. "
                 "wrk, the front doors and the workers share the machine's cores.")
    hello = results["parts"].get("hello")
    if hello is not None:  # the headline comes first
        lines += ["", "## Headline: hello, ours as shipped beside what Python and PHP sites run", "",
                  f"failed: {hello['error']}" if "error" in hello else hello_world.report(hello).strip()]
    lines += ["", "## Goals (workers.echo:app, the parts below)", "", *goals(results)]
    names = {"transport": "Transport: FastCGI into one worker process",
             "http": "End to end: front doors x workers (64 client connections)",
             "scaling": "Scaling: client connections", "pool": "Pool: children and memory",
             "sessions": "Sessions in Redis: ours vs nginx -> php-fpm + phpredis",
             "idle": "Idle keep-alive clients: front-door memory per client",
             "slow": "Slow readers: small requests beside clients that read large answers slowly",
             "compress": "Compression: the front door's CPU per request",
             "microcache": "Microcaching: workers/hello.py uncached and cached for 1 s",
             "http2": "HTTP/2: h2load over h2c, ours vs nginx in front of the same workers"}
    for part, data in results["parts"].items():
        if part == "hello":
            continue
        lines += ["", f"## {names[part]}", ""]
        if "error" in data:
            lines.append(f"failed: {data['error']}")
        elif part == "transport":
            lines.append(transport.report(data).strip())
        elif part == "pool":
            lines.append(pool.report(data).strip())
        elif part == "sessions":
            lines.append(sessions.report(data).strip())
        elif part == "idle":
            lines.append(idle.report(data).strip())
        elif part == "slow":
            lines.append(slow_readers.report(data).strip())
        elif part == "compress":
            lines.append(compression.report(data).strip())
        elif part == "microcache":
            lines.append(microcache.report(data).strip())
        elif part == "http2":
            lines.append(http2.report(data).strip())
        else:
            lines.append(end_to_end.report(data).strip())
    if plots:
        lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in plots]
    return "\n".join(lines) + "\n"


def plot(results: dict, out: pathlib.Path) -> list[str]:
    """PNG plots of the run; the file names written (none when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plots: matplotlib is not installed (`make bench` installs it)", file=sys.stderr)
        return []
    written = []
    hello = results["parts"].get("hello", {})
    if hello.get("summary"):
        rows = sorted(hello["summary"], key=lambda row: row["cpu_us"])
        labels = [row["stack"] for row in rows]
        figure, axis = plt.subplots(figsize=(8, 4.5))
        front = [row["front_cpu_us"] or 0 for row in rows]
        axis.bar(labels, front, label="front door")
        axis.bar(labels, [row["cpu_us"] - f for row, f in zip(rows, front)], bottom=front,
                 label="workers (the whole server where there is no front door)")
        axis.set_xticks(range(len(rows)), labels, rotation=30, ha="right")
        axis.set(ylabel="CPU µs per request", title="CPU per request, hello (64 clients)")
        axis.legend()
        figure.tight_layout()
        figure.savefig(out / "hello-cpu.png", dpi=100)
        plt.close(figure)
        written.append("hello-cpu.png")
    scaling = results["parts"].get("scaling", {})
    if scaling.get("summary"):
        figure, axis = plt.subplots(figsize=(7, 4.5))
        for stack in dict.fromkeys(row["stack"] for row in scaling["summary"]):
            rows = sorted((row for row in scaling["summary"] if row["stack"] == stack),
                          key=lambda row: row["connections"])
            axis.plot([row["connections"] for row in rows], [row["rps"] for row in rows], marker="o", label=stack)
        axis.set(xscale="log", xlabel="client connections", ylabel="requests/s",
                 title="Throughput vs client connections (5 B answers)")
        axis.grid(True, alpha=0.3)
        axis.legend()
        figure.tight_layout()
        figure.savefig(out / "throughput.png", dpi=100)
        plt.close(figure)
        written.append("throughput.png")
    http = results["parts"].get("http", {})
    rows = [row for row in http.get("summary", ()) if (row["scenario"], row["connections"]) == HEADLINE]
    if rows:
        rows.sort(key=lambda row: -row["rps"])
        labels = [row["stack"] for row in rows]
        figure, axis = plt.subplots(figsize=(8, 4.5))
        width = 0.27
        for index, key in enumerate(("p50_ms", "p99_ms", "p99.9_ms")):
            axis.bar([i + (index - 1) * width for i in range(len(rows))],
                     [row.get(key) or 0 for row in rows], width, label=key.removesuffix("_ms"))
        axis.set_xticks(range(len(rows)), labels, rotation=30, ha="right")
        axis.set(ylabel="ms", yscale="log", title="Latency percentiles (5 B answers, 64 clients)")
        axis.legend()
        figure.tight_layout()
        figure.savefig(out / "latency.png", dpi=100)
        plt.close(figure)
        written.append("latency.png")
        figure, axis = plt.subplots(figsize=(8, 4.5))
        axis.bar(labels, [(row["cpu_per_10k_s"] or 0) * 100 for row in rows])
        axis.set_xticks(range(len(rows)), labels, rotation=30, ha="right")
        axis.set(ylabel="CPU µs per request (front door + workers)",
                 title="CPU per request (5 B answers, 64 clients)")
        figure.tight_layout()
        figure.savefig(out / "cpu.png", dpi=100)
        plt.close(figure)
        written.append("cpu.png")
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs of every part: about a minute")
    parser.add_argument("--only", action="append", choices=PARTS, help="run only these parts")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"),
                        help="the folder under which the run's own folder is made")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("suite.py: wrk is not installed: run `make deps` (scripts/install-deps.sh)", file=sys.stderr)
        return 1
    out = pathlib.Path(args.out).absolute() / stamp()
    out.mkdir(parents=True, exist_ok=True)
    results = run(tuple(args.only or PARTS), args.quick, out)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plots = plot(results, out)
    text = report(results, plots)
    (out / "report.md").write_text(text)
    print()
    print(text)
    print(f"results: {out}")
    failed = [part for part, data in results["parts"].items() if "error" in data]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
