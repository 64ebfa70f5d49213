"""Sessions in Redis under load, with wrk: our stack vs nginx -> php-fpm + phpredis.

Every request increments a counter in the visitor's session and answers it:

* ``ours``: ``fcgi-cluster frontend`` (no access log) in front of two
  ``fcgi-cluster worker workers.counter:app`` processes with
  ``--session save_handler=redis``, ``save_path=tcp://...?auth=...&database=1``
  and ``serialize_handler=php``, otherwise our defaults: locking on, the session
  started lazily, on its first use by the app;
* ``ours (auto_start)``: the same with ``auto_start=1`` (every request's session
  loaded and saved by the worker's loop, as session.php starts its session), in
  database 3;
* ``ours (threads 0)``: ``auto_start=1`` and ``--threads 0`` (the app on each
  worker's event loop, php-fpm's model), in database 2;
* ``nginx -> php-fpm``: the seed as it ships: nginx (no upstream keep-alive; both
  front doors with one process per CPU, as in benchmarks/end_to_end.py) in front of
  php-fpm (``pm = static``, 4 children) serving tests/e2e/php/session.php ``?n=1``
  with ``session.save_handler = redis`` and phpredis' defaults, so no locking
  (updates of one session in two requests at once can be lost), in database 0;
* ``nginx -> php-fpm (locking)``: the same with ``redis.session.locking_enabled=1``
  (our semantics), in database 4 (tests/sessions/_php_servers.py).

The goals, as ratios of the same run (in the report): ``ours`` at least 1.0x
``nginx -> php-fpm`` and at least 2x ``nginx -> php-fpm (locking)``.

The stacks share one redis-server started for the run, with ``requirepass``, each in a
database of its own; both use PHP's ``php`` format and the ``PHPSESSID`` cookie.

The load: wrk with a Lua script (``LUA``) in which every wrk thread keeps a cookie jar
of its share of ``--sessions`` sessions (256 by default). Until its jar is full, a
thread sends requests without a cookie and takes the id of each new session from the
answer's Set-Cookie; after that every request carries one of the jar's ids, round
robin, so the sessions are revisited evenly and a session is rarely in two requests
at once. Every wrk run starts with an empty jar (new visitors). The script counts
answers that are 200, other answers, requests sent and sessions started.

Figures per run: req/s, p50/p99/p99.9 latency, non-2xx answers, socket errors and CPU
seconds per 10,000 requests of the stack's own processes (front door and workers, with
every child; not wrk). Redis serves every stack and is reported on its own (its CPU
per 10,000 requests of the stack that loaded it), not added to the stack's figure.
Stacks interleave within each round (A B A B); the report gives medians.

The lost-update check, after all runs: the counters in a stack's Redis database are
summed and compared with what wrk saw (warm-ups included). Every 200 answer is one
increment the stack acknowledged, so with locking the sum is at least the 200 answers
and at most the requests sent (requests in flight when wrk stops may still be counted
by the server, unanswered). A sum below the 200 answers is updates lost.

Usage: python benchmarks/sessions.py [--quick] [--duration S] [--rounds R]
       [--connections N] [--sessions N] [--out DIR]
Writes <out>/<UTC timestamp>-sessions/results.json and report.md (the full suite,
benchmarks/suite.py, runs this as its part "sessions").
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import os
import pathlib
import re
import shutil
import statistics
import sys
import textwrap
import time
from urllib.parse import urlsplit

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _common  # noqa: E402
import _measure  # noqa: E402
from _common import ms, stamp, write_part  # noqa: E402
from _progress import Progress  # noqa: E402

from tests._peers import LOOPBACK, PHP_PAGES, Peers, PeerStartError, free_port  # noqa: E402
from tests.sessions._php_servers import (  # noqa: E402
    PHP_CHILDREN,
    RedisProcess,
    php_fpm_with_redis_sessions,
    php_has_redis,
)

STACKS = ("ours", "ours (auto_start)", "ours (threads 0)", "nginx -> php-fpm", "nginx -> php-fpm (locking)")
# Our stacks' worker flags beyond the sessions': the defaults (lazy sessions, the app
# in threads), sessions started by the loop, or the app on each process's event loop
# too (php-fpm's model, as the HTTP part's "ours (threads 0)").
WORKER_FLAGS = {
    "ours": (),
    "ours (auto_start)": ("--session", "auto_start=1"),
    "ours (threads 0)": ("--session", "auto_start=1", "--threads", "0"),
}
# The PHP stacks: phpredis' locking off (its default, as the seed ships) or on.
PHP_LOCKING = {"nginx -> php-fpm": False, "nginx -> php-fpm (locking)": True}
# The report's goals: (ours, baseline, at least this ratio of req/s).
GOALS = (("ours", "nginx -> php-fpm", 1.0), ("ours", "nginx -> php-fpm (locking)", 2.0))
APP = "workers.counter:app"
# Our workers: the same pool size as the HTTP part.
POOL_SIZE = _common.POOL_SIZE
# The cookie of both stacks: ours defaults to PHP's name.
COOKIE = "PHPSESSID"
# Redis databases: one per stack, so each stack's counters are summed apart.
DATABASES = {"ours": 1, "ours (threads 0)": 2, "ours (auto_start)": 3, "nginx -> php-fpm": 0,
             "nginx -> php-fpm (locking)": 4}
# Where the data of a session is, in both: phpredis' key prefix.
KEY_PREFIX = "PHPREDIS_SESSION:"
# The counter in PHP's ``php`` format: ``n|i:42;``.
_COUNTER = re.compile(rb"(?:^|[;}])n\|i:(-?\d+);")
_COUNTS = re.compile(r"^sessions: ok (\d+) other (\d+) sent (\d+) started (\d+)$", re.M)
# Keys read per SCAN call when summing the counters.
SCAN_COUNT = 1000

# Each wrk thread has a Lua state of its own: the jar and the counts are per thread, and
# done() (in the main state) sums the threads' counts. wrk keeps one header of each
# name, so a single Set-Cookie is seen; both stacks send only the session's.
LUA = textwrap.dedent("""\
    local cookie = "{cookie}"
    local target = {per_thread}
    local jar, known, turn = {{}}, {{}}, 0
    local threads = {{}}
    ok, other, sent, started = 0, 0, 0, 0

    function setup(thread)
       table.insert(threads, thread)
    end

    function request()
       sent = sent + 1
       if #jar < target then
          return wrk.format(nil, nil, {{}})
       end
       turn = turn % #jar + 1
       return wrk.format(nil, nil, {{Cookie = cookie .. "=" .. jar[turn]}})
    end

    function response(status, headers, body)
       if status == 200 then ok = ok + 1 else other = other + 1 end
       for name, value in pairs(headers) do
          if string.lower(name) == "set-cookie" then
             local sid = string.match(value, "^" .. cookie .. "=([^;]+)")
             if sid and not known[sid] then
                known[sid] = true
                started = started + 1
                if #jar < target then table.insert(jar, sid) end
             end
          end
       end
    end

    function done(summary, latency, requests)
       local t = {{ok = 0, other = 0, sent = 0, started = 0}}
       for _, thread in ipairs(threads) do
          for key in pairs(t) do t[key] = t[key] + thread:get(key) end
       end
       io.write(string.format("sessions: ok %d other %d sent %d started %d\\n",
                              t.ok, t.other, t.sent, t.started))
       io.write(string.format("  99.9%%  %.2fus\\n", latency:percentile(99.9)))
    end
    """)


@dataclasses.dataclass(frozen=True)
class Settings:
    """What both stacks are run with."""

    duration: float
    rounds: int
    connections: int = 64
    sessions: int = 256


@dataclasses.dataclass
class Target:
    """A stack ready for load: its URL, its own processes, its Redis database."""

    url: str
    pids: list[int]
    database: int


def steps(settings: Settings) -> int:
    """How many wrk runs ``run`` makes, warm-ups included: for the progress display."""
    return len(STACKS) * (1 + settings.rounds)


# --- the stacks ------------------------------------------------------------------------


def start_ours(peers: Peers, redis: RedisProcess, directory: pathlib.Path, max_clients: int,
               name: str = "ours") -> Target:
    """Two counter workers with Redis sessions and our front-end before them (flags: ``WORKER_FLAGS``)."""
    save_path = f"{redis.save_path}&database={DATABASES[name]}"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    ports, pids = [], []
    for _ in range(POOL_SIZE):
        port = free_port()
        argv = [*_common.fcgi_cluster_command(), "worker", APP, "--listen", f"{LOOPBACK}:{port}",
                "--log-level", "warning", "--session", "save_handler=redis",
                "--session", f"save_path={save_path}", "--session", "serialize_handler=php",
                "--session", f"name={COOKIE}", *WORKER_FLAGS[name]]
        process = peers.process(argv, name="fcgi-worker", cwd=ROOT, env=env, ready_port=port)
        ports.append(port)
        pids.append(process.pid)
    port, process = _common.our_front_door(peers, ports, False, directory, max_clients,
                                              _common.FRONT_PROCESSES)
    pid = process.pid
    return Target(f"http://{LOOPBACK}:{port}/", [pid, *pids], DATABASES[name])


def start_php(peers: Peers, stack: contextlib.ExitStack, redis: RedisProcess,
              directory: pathlib.Path, name: str = "nginx -> php-fpm") -> Target:
    """php-fpm with phpredis sessions (locking as ``PHP_LOCKING`` says) and nginx before it."""
    if not php_has_redis():
        raise _common.Unavailable("PHP's redis extension is missing: apt-get install php-redis")
    fpm_dir = "php-fpm-locking" if PHP_LOCKING[name] else "php-fpm"
    fpm_port = stack.enter_context(php_fpm_with_redis_sessions(
        directory, redis, locking=PHP_LOCKING[name], database=DATABASES[name], name=fpm_dir))
    # It yields the port only; its master writes its pid where its config says
    # (the port may accept before the file has its text).
    fpm_pid = read_pid(directory / fpm_dir / "php-fpm.pid")
    nginx = peers.nginx_php(fpm_port, PHP_PAGES, keepalive=False, access_log=False,
                            worker_processes=_common.FRONT_PROCESSES)
    return Target(nginx.url("/session.php?n=1"), [nginx.process.pid, fpm_pid], DATABASES[name])


def read_pid(path: pathlib.Path, timeout: float = 10.0) -> int:
    """The pid in ``path``, waiting up to ``timeout`` s for it to be written.

    Raises:
        _common.Unavailable: no pid there in time.
    """
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, ValueError):
            return int(path.read_text().strip())
        if time.monotonic() > deadline:
            raise _common.Unavailable(f"no pid in {path} after {timeout:g}s")
        time.sleep(0.05)


def check_answer(target: Target) -> None:
    """Two requests of one visitor: 200 with n = 1 and a cookie, then n = 2; else ``Unavailable``."""
    parts = urlsplit(target.url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        cookie = None
        for expected in (1, 2):
            connection.request("GET", path, headers={"Cookie": cookie} if cookie else {})
            response = connection.getresponse()
            body = response.read()
            set_cookie = response.headers.get("Set-Cookie") or ""
            if set_cookie.startswith(f"{COOKIE}="):
                cookie = set_cookie.split(";", 1)[0]
            try:
                n = json.loads(body).get("n")
            except ValueError:
                n = None
            if response.status != 200 or n != expected or cookie is None:
                raise _common.Unavailable(
                    f"{target.url} answered {response.status} {body[:120]!r} (Set-Cookie {set_cookie!r}), "
                    f"expected n = {expected} and a {COOKIE} cookie")
    except OSError as exc:
        raise _common.Unavailable(f"{target.url} failed: {exc}") from None
    finally:
        connection.close()


# --- wrk and the check -----------------------------------------------------------------


def lua_script(directory: pathlib.Path, settings: Settings) -> pathlib.Path:
    """The wrk script for ``settings``: a jar of its share of the sessions per wrk thread."""
    threads = min(_common.WRK_THREADS, settings.connections)
    script = directory / f"sessions-{settings.sessions}.lua"
    directory.mkdir(parents=True, exist_ok=True)
    script.write_text(LUA.format(cookie=COOKIE, per_thread=max(1, settings.sessions // threads)))
    return script


def run_wrk(wrk: str, target: Target, seconds: float, settings: Settings, script: pathlib.Path,
            redis_pid: int) -> dict:
    """One wrk run: end_to_end's figures, the script's counts and Redis' CPU beside them."""
    redis_before = _measure.cpu_seconds([redis_pid])
    result = _common.run_wrk(wrk, target.url, seconds, settings.connections, script, target.pids)
    redis_cpu = _measure.cpu_between(redis_before, _measure.cpu_seconds([redis_pid]))
    counts = _COUNTS.search(result["raw"])
    if counts is None:
        raise ValueError(f"no session counts in wrk's output:\n{result['raw']}")
    result.update(zip(("ok", "other", "sent", "started"), map(int, counts.groups())))
    result["redis_cpu_s"] = redis_cpu
    result["redis_cpu_per_10k_s"] = (redis_cpu / result["requests"] * _common.CPU_PER
                                     if result["requests"] else None)
    return result


def counters(redis: RedisProcess, database: int) -> dict:
    """The sessions of ``database``: how many, how many hold a counter, the counters' sum."""
    import redis as redis_py

    client = redis_py.Redis(host=LOOPBACK, port=redis.port, password=redis.password, db=database)
    keys = with_counter = total = 0
    try:
        for key in client.scan_iter(match=f"{KEY_PREFIX}*", count=SCAN_COUNT):
            if key.endswith(b"_LOCK"):
                continue
            keys += 1
            match = _COUNTER.search(client.get(key) or b"")
            if match:
                with_counter += 1
                total += int(match[1])
    finally:
        client.close()
    return {"sessions": keys, "with_counter": with_counter, "sum_n": total}


def check(runs: list[dict], stored: dict) -> dict:
    """The lost-update check of one stack: its runs (warm-ups included) against its counters."""
    ok = sum(one["ok"] for one in runs)
    sent = sum(one["sent"] for one in runs)
    started = sum(one["started"] for one in runs)
    lost = max(0, ok - stored["sum_n"])
    return {**stored, "ok": ok, "sent": sent, "started": started, "lost": lost,
            "consistent": ok <= stored["sum_n"] <= sent}


# --- the run ---------------------------------------------------------------------------


def run(settings: Settings, out: pathlib.Path, progress: Progress) -> dict:
    """Load both stacks with wrk in interleaved rounds; the part of results.json it makes.

    Resource handling: Redis and every stack process are stopped before it returns, even
    when a run fails; configs and logs stay under ``out/peers``.

    Error handling: a stack that cannot start or counts wrongly is reported as not
    available (with the reason) and the other still runs; no Redis or no wrk raises
    ``_common.Unavailable``.
    """
    wrk = shutil.which("wrk")
    if wrk is None:
        raise _common.Unavailable("wrk is not installed: run `make deps` (scripts/install-deps.sh)")
    directory = out / "peers"
    directory.mkdir(parents=True, exist_ok=True)
    script = lua_script(out, settings)
    runs: list[dict] = []
    warmups: list[dict] = []
    status: dict[str, dict] = {}
    checks: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        peers = Peers(stack, directory)
        redis = stack.enter_context(RedisProcess(directory))
        targets: dict[str, Target] = {}
        for name in STACKS:
            try:
                if name in WORKER_FLAGS:
                    target = start_ours(peers, redis, directory, max(4096, settings.connections * 2), name)
                else:
                    target = start_php(peers, stack, redis, directory, name)
                check_answer(target)
                warm = run_wrk(wrk, target, _common.WARMUP_SECONDS, settings, script, redis.process.pid)
                warm.update(stack=name, round=-1, seconds=_common.WARMUP_SECONDS)
                warmups.append(warm)
                progress.step(f"sessions {name}: warm-up {warm['rps']:,.0f} req/s")
            except (_common.Unavailable, PeerStartError, RuntimeError, ValueError) as exc:
                reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
                status[name] = {"available": False, "reason": reason}
                progress.skip(1 + settings.rounds, f"sessions {name}: not available ({reason})")
                continue
            targets[name] = target
            status[name] = {"available": True, "url": target.url, "database": target.database}
        for round_no in range(settings.rounds):
            for name, target in targets.items():
                result = run_wrk(wrk, target, settings.duration, settings, script, redis.process.pid)
                result.update(stack=name, round=round_no, seconds=settings.duration)
                runs.append(result)
                note = _common.trouble(result)
                progress.step(
                    f"sessions {name:18} {result['rps']:9,.0f} req/s  p99 {result['p99_ms']:7.2f} ms"
                    f"  cpu/10k {result['cpu_per_10k_s'] or 0:5.2f} s  sessions {result['started']}"
                    + (f"  [{note}]" if note else ""))
        for name, target in targets.items():
            mine = [one for one in warmups + runs if one["stack"] == name]
            checks[name] = check(mine, counters(redis, target.database))
    return {"settings": dataclasses.asdict(settings), "app": APP, "pool_size": POOL_SIZE,
            "php_children": PHP_CHILDREN, "wrk_threads": _common.WRK_THREADS, "cookie": COOKIE,
            "stacks": status, "summary": summarize(runs), "checks": checks, "runs": runs,
            "warmups": warmups}


def summarize(runs: list[dict]) -> list[dict]:
    """Per stack: the medians over its rounds, errors and counts summed."""
    summary = []
    for name in dict.fromkeys(one["stack"] for one in runs):
        mine = [one for one in runs if one["stack"] == name]
        row: dict = {"stack": name}
        for key in ("rps", "p50_ms", "p99_ms", "p99.9_ms", "cpu_per_10k_s", "redis_cpu_per_10k_s"):
            values = [one[key] for one in mine if one.get(key) is not None]
            row[key] = statistics.median(values) if values else None
        for key in ("requests", "non_2xx", "ok", "other", "started"):
            row[key] = sum(one[key] for one in mine)
        row["socket_errors"] = {kind: sum(one["socket_errors"][kind] for one in mine)
                                for kind in ("connect", "read", "write", "timeout")}
        summary.append(row)
    return summary


def report(part: dict) -> str:
    """Markdown: the figures of both stacks, then the lost-update check."""
    settings = part["settings"]
    lines = [f"{settings['connections']} client connections over about {settings['sessions']} sessions "
             f"per wrk run; CPU of the stack's own processes; Redis (shared) apart."]
    for name, state in part["stacks"].items():
        if not state["available"]:
            lines.append(f"- {name}: not available: {state['reason']}")
    base = next((row for row in part["summary"] if row["stack"] == "nginx -> php-fpm"), None)
    lines += ["", "| stack | req/s | vs nginx -> php-fpm | p50 ms | p99 ms | p99.9 ms | CPU s / 10k req "
              "| Redis CPU s / 10k req | errors |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in part["summary"]:
        ratio = f"{row['rps'] / base['rps']:.2f}x" if base and base["rps"] else "-"
        lines.append(f"| {row['stack']} | {row['rps']:,.0f} | {ratio} | {ms(row['p50_ms'])} | {ms(row['p99_ms'])} "
                     f"| {ms(row.get('p99.9_ms'))} | {ms(row['cpu_per_10k_s'])} "
                     f"| {ms(row['redis_cpu_per_10k_s'])} | {_common.trouble(row) or 'none'} |")
    rows = {row["stack"]: row for row in part["summary"]}
    lines += ["", "Goals (req/s ratios of this run):", ""]
    for mine, theirs, factor in GOALS:
        a, b = rows.get(mine), rows.get(theirs)
        if a and b and b["rps"]:
            ratio = a["rps"] / b["rps"]
            verdict = "met" if ratio >= factor else "NOT met"
            lines.append(f"- {mine} / {theirs}: {ratio:.2f}x (goal {factor:g}x): {verdict}")
        else:
            lines.append(f"- {mine} / {theirs}: not measured (goal {factor:g}x)")
    lines += ["", "Lost updates (all runs, warm-ups included): the counters stored in Redis against the "
              "200 answers wrk got and the requests it sent (nginx -> php-fpm, without locking, may lose "
              "some: that is the seed's behaviour, not a fault of the check).", "",
              "| stack | sessions started | sessions in Redis | 200 answers | sum of n | requests sent "
              "| lost | consistent |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, c in part["checks"].items():
        lines.append(f"| {name} | {c['started']:,} | {c['sessions']:,} | {c['ok']:,} | {c['sum_n']:,} "
                     f"| {c['sent']:,} | {c['lost']:,} | {'yes' if c['consistent'] else 'NO'} |")
    return "\n".join(lines).strip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of one wrk run (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default %(default)s)")
    parser.add_argument("--connections", type=int, default=64, help="wrk's connections (default %(default)s)")
    parser.add_argument("--sessions", type=int, default=256, help="sessions per wrk run (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    if args.quick:
        args.duration, args.rounds = 2.0, 1
    settings = Settings(args.duration, args.rounds, args.connections, args.sessions)
    out = pathlib.Path(args.out).absolute() / f"{stamp()}-sessions"
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress(steps(settings))
    try:
        part = run(settings, out, progress)
    except (_common.Unavailable, PeerStartError) as exc:
        print(f"sessions.py: {exc}", file=sys.stderr)
        return 1
    write_part(out, "sessions", part, report(part))
    return 0


if __name__ == "__main__":
    sys.exit(main())
