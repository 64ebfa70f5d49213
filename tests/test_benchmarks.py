"""Smoke test of the benchmark suite: `make bench-quick` runs and writes a well-formed results.json.

Not a speed test: no figure is compared with a threshold. It checks that every part ran
against real peers, that every run measured something, and that the report and plots
were written.
"""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_bench_quick_writes_results(tmp_path):
    result = subprocess.run(["make", "--no-print-directory", "bench-quick", f"BENCH_OUT={tmp_path}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [run_dir] = [path for path in tmp_path.iterdir() if path.is_dir()]
    results = json.loads((run_dir / "results.json").read_text())

    assert results["quick"] is True
    for fact in ("python", "cpus", "nginx", "haproxy", "wrk", "php-fpm", "flup", "trio"):
        assert results["machine"].get(fact), fact
    parts = results["parts"]
    assert set(parts) == {"hello", "transport", "http", "scaling", "pool", "sessions", "idle", "slow", "compress",
                          "microcache", "http2"}
    for name, part in parts.items():
        assert "error" not in part, (name, part.get("error"))
    check_hello(parts["hello"])
    # Both front doors answered every HTTP/2 request.
    http2_rows = {(row["scenario"], row["front"]): row for row in parts["http2"]["rows"]}
    assert set(http2_rows) == {(s, f) for s in ("5 B", "16 KiB") for f in ("ours", "nginx")}
    assert all(row["failed"] == 0 and row["req_per_s"] > 0 for row in http2_rows.values()), http2_rows
    # Each compression case answered in its coding, smaller than the plain answer.
    compress = {row["case"]: row for row in parts["compress"]["summary"]}
    assert {case: row["coding"] for case, row in compress.items()} == {
        "off": "identity", "gzip1": "gzip", "gzip6": "gzip", "br4": "br", "zstd3": "zstd"}
    assert all(row["rps"] > 0 and row["bytes"] < compress["off"]["bytes"] for case, row in compress.items() if case != "off")

    transport_runs = parts["transport"]["runs"]
    assert {run["contender"] for run in transport_runs} == set(parts["transport"]["contenders"])
    assert all(run["requests"] > 0 and run["failed"] == 0 for run in transport_runs)

    for name in ("http", "scaling"):
        stacks = parts[name]["stacks"]
        unavailable = {stack: state["reason"] for stack, state in stacks.items() if not state["available"]}
        assert not unavailable, unavailable
        summary = parts[name]["summary"]
        assert {row["stack"] for row in summary} == set(stacks)
        for row in summary:
            assert row["rps"] > 0 and row["requests"] > 0, row
            assert row["p50_ms"] <= row["p99_ms"], row
            # Every process of the stack was found and charged: serving costs CPU.
            assert row["cpu_per_10k_s"] > 0, row
            # Our front-end answers every request, whatever its workers do: no reset, no
            # timeout. A peer worker's failures reach the client as 502s (flup, out of
            # threads, closes connections; nginx in front of it shows the same), and the
            # report shows them beside the figure; in front of our own workers there are none.
            if row["stack"].startswith("ours -> "):
                assert not any(row["socket_errors"].values()), row
            if row["stack"].startswith("ours -> ours"):
                assert row["non_2xx"] == 0, row
    sweep = {row["connections"] for row in parts["scaling"]["summary"]}
    assert len(sweep) >= 3

    pool_runs = parts["pool"]["runs"]
    assert {run["children"] for run in pool_runs} == set(parts["pool"]["sizes"])
    assert all(run["requests"] > 0 for run in pool_runs)
    assert all(figures["children"] >= 1 and figures["rss_kib"] > 0 for figures in parts["pool"]["memory"].values())

    session_part = parts["sessions"]
    unavailable = {stack: state["reason"] for stack, state in session_part["stacks"].items() if not state["available"]}
    assert not unavailable, unavailable
    assert {row["stack"] for row in session_part["summary"]} == {
        "ours", "ours (auto_start)", "ours (threads 0)", "nginx -> php-fpm", "nginx -> php-fpm (locking)"}
    for row in session_part["summary"]:
        assert row["rps"] > 0 and row["ok"] > 0 and row["cpu_per_10k_s"] > 0, row
    for stack, figures in session_part["checks"].items():
        # Locking is on in every stack but the seed's (phpredis' defaults, no lock, where
        # concurrent visits may overwrite each other): every acknowledged increment is in Redis.
        if stack != "nginx -> php-fpm":
            assert figures["lost"] == 0 and figures["consistent"], (stack, figures)

    front_doors = parts["idle"]["front_doors"]
    assert set(front_doors) == {"ours", "nginx", "haproxy"}
    for name, row in front_doors.items():
        assert row["available"], (name, row.get("reason"))
        # Every client stayed open and idle, and the sampled ones were still served.
        assert row["still_open"] == row["clients"] > 0, (name, row)
        assert row["sample_answered"] == row["sample"] > 0, (name, row)
        assert row["loaded"]["rss_kib"] > 0, (name, row)

    slow_runs = parts["slow"]["runs"]
    assert {(run["stack"], run["slow"]) for run in slow_runs} == {
        (stack, count) for stack in ("ours -> ours", "nginx -> ours") for count in (0, 8)}
    for run in slow_runs:
        # Small requests go on beside the slow readers, none lost, in front of either front door.
        assert run["requests"] > 0 and run["failed"] == 0, run
        if run["slow"]:
            assert run["slow_started"] == run["slow"], run

    report = (run_dir / "report.md").read_text()
    assert "## Goals" in report and "ours -> ours" in report
    for plot in ("hello-cpu.png", "throughput.png", "latency.png", "cpu.png"):
        assert (run_dir / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot


def check_hello(part: dict) -> None:
    """Every stack of the hello part started, answered and was charged CPU, without errors."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import hello_world

    unavailable = {stack: state["reason"] for stack, state in part["stacks"].items() if not state["available"]}
    assert not unavailable, unavailable
    rows = {row["stack"]: row for row in part["summary"]}
    assert set(rows) == set(hello_world.STACKS)
    pool = {key.strip(): int(value) for key, _, value in (
        line.partition("=") for line in (ROOT / "workers" / "www.conf").read_text().splitlines())
        if key.strip() in ("pm.max_children", "pm.max_requests")}
    for name, row in rows.items():
        assert row["rps"] > 0 and row["requests"] > 0, row
        assert row["cpu_us"] > 0, row
        # The front door's and the workers' shares, where there is a front door, add up.
        if name != "granian":
            assert row["front_cpu_us"] > 0 and abs(row["front_cpu_us"] + row["worker_cpu_us"] - row["cpu_us"]) < 1.0, row
        errors = dict(row["socket_errors"])
        if name == "nginx -> php-fpm (keep-alive)":
            # nginx's documented keep-alive in front of 4 children: a child stays pinned to
            # a kept connection, so under 64 clients the rest wait in php-fpm's listen queue
            # and some pass wrk's 2 s timeout (p99 above 1 s in every run here). That is the
            # peer's behaviour, reported beside its figure; no other error is.
            errors.pop("timeout")
        assert not any(errors.values()), row
        if name.startswith("ours -> "):
            # The shipped www.conf recycles each child after pm.max_requests, and a child
            # that retires drops the requests multiplexed on its connections: the front-end
            # answers those with 502 (a known defect, in the report). At most the clients'
            # requests in flight are lost per retirement; everything else is answered.
            retirements = pool["pm.max_children"] + row["requests"] // pool["pm.max_requests"]
            assert row["non_2xx"] <= part["settings"]["connections"] * retirements, row
        else:
            assert row["non_2xx"] == 0, row
    report = hello_world.report(part)
    assert "ours -> ours vs nginx -> php-fpm (seed), req/s" in report and "not measured" not in report


def test_hello_quick_every_stack_answers(tmp_path):
    # uWSGI, gunicorn and granian come with the test extra; nginx and php-fpm with `make deps`.
    # A relative --out, as `make bench-hello` gives (BENCH_OUT): the peers' configs must
    # still name their files where they are (a pool's slowlog once landed under itself).
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "hello_world.py"), "--quick",
                             "--out", "results"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [run_dir] = [path for path in (tmp_path / "results").iterdir() if path.is_dir()]
    check_hello(json.loads((run_dir / "results.json").read_text())["hello"])
    assert "| granian |" in (run_dir / "report.md").read_text()


def test_microcache_quick_takes_the_worker_out_of_the_request_path(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "microcache.py"), "--quick",
                             "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [results] = tmp_path.glob("*/microcache/results.json")
    rows = {row["row"]: row for row in json.loads(results.read_text())["summary"]}
    assert set(rows) == {"uncached", "cached 1 s"}
    for row in rows.values():
        assert row["rps"] > 0 and row["non_2xx"] == 0, row
    # Cached for 1 s, the worker answers about one request a second whatever the load:
    # its CPU per request falls by far more than any busy machine's noise.
    assert rows["cached 1 s"]["worker_cpu_us"] * 5 < rows["uncached"]["worker_cpu_us"], rows


async def test_the_fastcgi_load_generators_count_reset_connections_as_failed():
    # php-fpm reset one of the transport part's new connections once and the whole
    # suite stopped: a contender's reset costs requests, not the run.
    import functools
    import socket
    import struct

    import trio

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import transport

    async def reset(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.socket.close()  # with linger 0: a reset

    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(functools.partial(trio.serve_tcp, reset, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        for load in (transport.load_core, transport.load_client):
            for new_conn in (True, False):
                ok, failed = await load(port, 2, 2, new_conn, 0.3)
                assert ok == 0 and failed > 0, (load.__name__, new_conn)
        nursery.cancel_scope.cancel()


def test_the_cpu_of_a_tree_counts_children_started_and_reaped_during_the_reading():
    # A pool that recycles children (pm.max_requests) starts and reaps some during a run:
    # their CPU must stay charged to the stack.
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import _measure

    burn = "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass"
    parent_code = (f"import subprocess, sys, time\ntime.sleep(0.5)\n"
                   f"subprocess.run([sys.executable, '-c', {burn!r}])\nprint('reaped', flush=True)\ntime.sleep(30)")
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True)
    try:
        before = _measure.cpu_seconds(_measure.tree([parent.pid]))
        assert parent.stdout.readline().strip() == "reaped"
        after = _measure.cpu_seconds(_measure.tree([parent.pid]))
        # The child is gone from the tree; its half second is in the parent's reaped time.
        assert _measure.tree([parent.pid]) == [parent.pid]
        assert _measure.cpu_between(before, after) >= 0.4
    finally:
        parent.kill()
        parent.wait(10)
