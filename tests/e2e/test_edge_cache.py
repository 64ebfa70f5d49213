"""The response cache (``[route.cache]``) through a real front-end and a real worker that counts its calls.

The worker (``tests/e2e/_cache_app.py``) tells through an uncached route how
many requests reached it, so each test asserts what the cache kept from it.
"""

from __future__ import annotations

import concurrent.futures
import json
import pathlib
import signal
import time

from prometheus_client.openmetrics.parser import text_string_to_metric_families

from tests._peers import free_port

from ._worker import worker_process
from .test_frontend_control import ctl, status
from .test_frontend_process import http_get
from ._frontend import frontend_from_file
from .test_frontend_reload import wait_for

APP = "tests.e2e._cache_app:app"


def cluster_file(port: int, worker: int, cache: str, *, processes: int = 1, control: str = "") -> str:
    text = (f'[frontend]\nlisten = "127.0.0.1:{port}"\nprocesses = {processes}\naccess_log = false\n'
            f'max_request_line = "16k"\n')
    if control:
        text += f'control = "{control}"\n'
    return text + (
        f'[upstream.app]\nservers = ["127.0.0.1:{worker}"]\n'
        '[[route]]\nprefix = "/c/"\nupstream = "app"\n'
        f'[route.cache]\nstatus_header = true\n{cache}\n'
        '[[route]]\nprefix = "/"\nupstream = "app"\n'
    )


def calls(port: int) -> int:
    status, _, body = http_get(port, "/calls", timeout=30)
    assert status == 200, body
    return int(body)


def get(port: int, target: str, **kwargs) -> tuple[int, str, bytes]:
    """(status, X-Cache-Status, body)."""
    status, headers, body = http_get(port, target, timeout=30, **kwargs)
    return status, headers.get("x-cache-status", ""), body


def test_a_hit_does_not_reach_the_worker_and_an_entry_expires(tmp_path: pathlib.Path) -> None:
    port = free_port()
    path = tmp_path / "cluster.toml"
    with worker_process(APP) as (worker, _):
        path.write_text(cluster_file(port, worker, 'valid = { 200 = "1s" }'))
        with frontend_from_file(path, port) as process:
            first = get(port, "/c/page")
            assert first[:2] == (200, "MISS")
            for _ in range(5):
                assert get(port, "/c/page") == (200, "HIT", first[2])
            status, headers, body = http_get(port, "/c/page", method="HEAD")
            assert (status, headers["x-cache-status"], body) == (200, "HIT", b"")
            assert int(headers["content-length"]) == len(first[2])
            assert calls(port) == 1
            time.sleep(1.2)
            again = get(port, "/c/page")
            assert again[1] == "EXPIRED" and json.loads(again[2])["n"] == 2
            assert get(port, "/c/page") == (200, "HIT", again[2])
            # A HEAD that misses fills the GET entry.
            assert get(port, "/c/head-first", method="HEAD")[:2] == (200, "MISS")
            assert get(port, "/c/head-first")[1] == "HIT"
            assert calls(port) == 3
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0


def test_the_workers_headers_decide_and_set_cookie_is_never_shared(tmp_path: pathlib.Path) -> None:
    port = free_port()
    path = tmp_path / "cluster.toml"
    with worker_process(APP) as (worker, _):
        path.write_text(cluster_file(port, worker, 'valid = { 200 = "1m" }\nbypass = ["cookie:nocache", "header:X-Fresh"]'))
        with frontend_from_file(path, port):
            for query in ("cc=no-store", "cc=private,max-age=60", "xae=0", "cookie=1", "vary=*", "status=500"):
                words = [get(port, f"/c/x?{query}")[1] for _ in range(2)]
                assert words == ["MISS", "MISS"], query
            assert calls(port) == 12
            # X-Accel-Expires wins over Cache-Control, and is not shown to the client.
            status, headers, _ = http_get(port, "/c/x?xae=60&cc=no-store")
            assert "x-accel-expires" not in headers and headers["x-cache-status"] == "MISS"
            assert get(port, "/c/x?xae=60&cc=no-store")[1] == "HIT"
            # A cookie answer given to one client never reaches another.
            one = http_get(port, "/c/x?cookie=1")[1]["set-cookie"]
            other = http_get(port, "/c/x?cookie=1")[1]["set-cookie"]
            assert one.startswith("session=s") and other.startswith("session=s") and one != other
            # Vary: each Accept-Language is its own entry.
            en = get(port, "/c/v?vary=Accept-Language", headers={"Accept-Language": "en"})
            fr = get(port, "/c/v?vary=Accept-Language", headers={"Accept-Language": "fr"})
            assert (en[1], fr[1]) == ("MISS", "MISS")
            assert get(port, "/c/v?vary=Accept-Language", headers={"Accept-Language": "en"}) == (200, "HIT", en[2])
            assert json.loads(get(port, "/c/v?vary=Accept-Language", headers={"Accept-Language": "fr"})[2])["lang"] == "fr"
            # Bypass: the lookup is skipped while the value is set and not "0"; the answer still refills.
            before = calls(port)
            assert get(port, "/c/v?vary=Accept-Language", headers={"Cookie": "nocache=1", "Accept-Language": "en"})[1] == "BYPASS"
            assert get(port, "/c/v?vary=Accept-Language", headers={"Cookie": "nocache=0", "Accept-Language": "en"})[1] == "HIT"
            assert get(port, "/c/v?vary=Accept-Language", headers={"X-Fresh": "yes", "Accept-Language": "en"})[1] == "BYPASS"
            assert calls(port) == before + 2
            # A conditional request that matches the entry gets a 304 from the cache.
            assert get(port, "/c/e?etag=v1")[1] == "MISS"
            status, headers, body = http_get(port, "/c/e?etag=v1", headers={"If-None-Match": '"v1"'})
            assert (status, headers["x-cache-status"], headers["etag"], body) == (304, "HIT", '"v1"', b"")
            assert get(port, "/c/e?etag=v1", headers={"If-None-Match": '"v0"'})[:2] == (200, "HIT")
            before += 1
            # Only GET and HEAD are cached.
            assert http_get(port, "/c/x?xae=60&cc=no-store", method="POST", body=b"a=1")[0] == 200
            assert calls(port) == before + 3


def test_stale_entries_serve_while_the_worker_is_down(tmp_path: pathlib.Path) -> None:
    port = free_port()
    path = tmp_path / "cluster.toml"
    with worker_process(APP) as (worker, process):
        path.write_text(cluster_file(port, worker, 'valid = { 200 = "1s" }\nuse_stale = ["error", "timeout"]'))
        with frontend_from_file(path, port):
            first = get(port, "/c/page")
            assert first[1] == "MISS"
            process.send_signal(signal.SIGTERM)
            process.wait(15)
            time.sleep(1.2)
            assert get(port, "/c/page") == (200, "STALE", first[2])
            assert get(port, "/c/never-cached")[0] == 502
            assert get(port, "/c/page") == (200, "STALE", first[2])


def test_a_listed_worker_status_is_met_by_the_stale_entry(tmp_path: pathlib.Path) -> None:
    port = free_port()
    path = tmp_path / "cluster.toml"
    with worker_process(APP) as (worker, _):
        # The key leaves the query out, so one URI path can answer 200, then 503.
        cache = 'key = "$scheme$host$uri"\nvalid = { 200 = "1s" }\nuse_stale = ["http_503"]'
        path.write_text(cluster_file(port, worker, cache))
        with frontend_from_file(path, port):
            first = get(port, "/c/s?status=200")
            assert first[:2] == (200, "MISS")
            time.sleep(1.2)
            assert get(port, "/c/s?status=503") == (200, "STALE", first[2])
            assert get(port, "/c/other?status=503")[:2] == (503, "MISS")
            assert get(port, "/c/s?status=200")[1] == "EXPIRED"
            assert calls(port) == 4


def test_background_update_serves_the_old_answer_and_refreshes_it(tmp_path: pathlib.Path) -> None:
    port = free_port()
    path = tmp_path / "cluster.toml"
    with worker_process(APP) as (worker, _):
        cache = 'valid = { 200 = "1s" }\nuse_stale = ["updating"]\nbackground_update = true'
        path.write_text(cluster_file(port, worker, cache))
        with frontend_from_file(path, port):
            first = get(port, "/c/page?sleep_ms=300")
            time.sleep(1.2)
            assert get(port, "/c/page?sleep_ms=300") == (200, "UPDATING", first[2])
            deadline = time.monotonic() + 20
            while True:
                word, body = get(port, "/c/page?sleep_ms=300")[1:]
                if word == "HIT" and body != first[2]:
                    break
                assert word == "UPDATING" and time.monotonic() < deadline, word
                time.sleep(0.1)
            assert json.loads(body)["n"] == 2
            assert calls(port) == 2


def test_the_lock_sends_one_of_20_concurrent_misses_to_the_worker(tmp_path: pathlib.Path) -> None:
    port = free_port()
    path = tmp_path / "cluster.toml"
    with worker_process(APP) as (worker, _):
        path.write_text(cluster_file(port, worker, 'valid = { 200 = "1m" }\nlock = true\nlock_timeout = "30s"'))
        with frontend_from_file(path, port):
            with concurrent.futures.ThreadPoolExecutor(20) as pool:
                results = list(pool.map(lambda _: get(port, "/c/hot?sleep_ms=700"), range(20)))
            assert calls(port) == 1
            assert sorted(word for _, word, _ in results) == ["HIT"] * 19 + ["MISS"]
            assert len({body for _, _, body in results}) == 1


def test_huge_and_odd_uris_are_keys_like_any_other(tmp_path: pathlib.Path) -> None:
    port = free_port()
    path = tmp_path / "cluster.toml"
    with worker_process(APP) as (worker, _):
        cache = f'valid = {{ 200 = "1m" }}\npath = "{tmp_path / "cache"}"\nmemory_entry_size = "1k"'
        path.write_text(cluster_file(port, worker, cache))
        with frontend_from_file(path, port):
            targets = ["/c/" + "a" * 8192, "/c/nul?x=%00%00", "/c/x/%2e%2e/y%2fz", "/c/%C3%A9t%C3%A9?q=%FF",
                       "/c/" + "%41" * 2000, "/c/big?size=300000", "/c/a?h=%0d%0aSet-Cookie:%20x=1"]
            firsts = {}
            for target in targets:
                status, word, body = get(port, target)
                assert (status, word) == (200, "MISS"), target
                firsts[target] = body
            for target in targets:
                assert get(port, target) == (200, "HIT", firsts[target]), target
            assert len(set(firsts.values())) == len(targets)
            assert calls(port) == len(targets)
            assert len(list((tmp_path / "cache").glob("??/*"))) == len(targets)
            # A NUL in the path is refused before any cache (400), and the front-end serves on.
            assert get(port, "/c/%00")[0] == 400
            assert get(port, targets[0]) == (200, "HIT", firsts[targets[0]])


def test_purge_through_the_control_channel(tmp_path: pathlib.Path) -> None:
    port, cport = free_port(), free_port()
    control = f"127.0.0.1:{cport}"
    path = tmp_path / "cluster.toml"
    with worker_process(APP) as (worker, _):
        path.write_text(cluster_file(port, worker, 'valid = { 200 = "1m" }', control=control))
        with frontend_from_file(path, port):
            for target in ("/c/a", "/c/b", "/c/b2"):
                assert get(port, target)[1] == "MISS"
            done = ctl(control, "purge", "http127.0.0.1/c/a")
            assert done.returncode == 0 and "1 entries" in done.stdout, (done.stdout, done.stderr)
            assert [get(port, t)[1] for t in ("/c/a", "/c/b", "/c/b2")] == ["MISS", "HIT", "HIT"]
            done = ctl(control, "purge", "http127.0.0.1/c/b*")
            assert done.returncode == 0 and "2 entries" in done.stdout, done.stdout
            assert [get(port, t)[1] for t in ("/c/a", "/c/b", "/c/b2")] == ["HIT", "MISS", "MISS"]
            done = ctl(control, "purge", "/c/")
            assert done.returncode == 0 and "purged route /c/" in done.stdout, done.stdout
            assert [get(port, t)[1] for t in ("/c/a", "/c/b")] == ["MISS", "MISS"]
            bad = ctl(control, "purge")
            assert bad.returncode == 1 and "usage: purge" in bad.stderr
            assert get(port, "/c/a")[1] == "HIT"
            # The status page counts each route's answers by X-Cache-Status; so do the metrics.
            [row] = status(control)["caches"]
            assert row["route"] == "/c/" and row["entries"] == 2
            assert (row["answers"]["hit"], row["answers"]["miss"]) == (4, 8)
            metrics = ctl(control, "metrics").stdout
            samples = {(s.labels.get("status"), s.value) for family in text_string_to_metric_families(metrics)
                       if family.name == "fcgi_cluster_cache_answers" for s in family.samples}
            assert ("hit", 4) in samples and ("miss", 8) in samples


def test_with_a_path_two_processes_share_the_lock(tmp_path: pathlib.Path) -> None:
    # Each request comes on a new connection, so both processes get some of
    # them; the lock file makes one fill for the whole front-end.
    port = free_port()
    path = tmp_path / "cluster.toml"
    with worker_process(APP) as (worker, _):
        cache = f'valid = {{ 200 = "1m" }}\nlock = true\nlock_timeout = "30s"\npath = "{tmp_path / "cache"}"'
        path.write_text(cluster_file(port, worker, cache, processes=2))
        with frontend_from_file(path, port):
            with concurrent.futures.ThreadPoolExecutor(20) as pool:
                results = list(pool.map(lambda _: get(port, "/c/hot?sleep_ms=700"), range(20)))
            assert calls(port) == 1
            assert sorted(word for _, word, _ in results) == ["HIT"] * 19 + ["MISS"]
            assert not list((tmp_path / "cache" / "locks").iterdir())  # the filler let go


def test_two_processes_share_the_directory_and_its_purge(tmp_path: pathlib.Path) -> None:
    port, cport = free_port(), free_port()
    control = f"127.0.0.1:{cport}"
    path = tmp_path / "cluster.toml"
    with worker_process(APP) as (worker, _):
        cache = f'valid = {{ 200 = "1m" }}\npath = "{tmp_path / "cache"}"'
        path.write_text(cluster_file(port, worker, cache, processes=2, control=control))
        with frontend_from_file(path, port):
            assert get(port, "/c/shared")[1] == "MISS"
            # New connections land on either process: every one is a hit.
            words = [get(port, "/c/shared")[1] for _ in range(30)]
            assert words == ["HIT"] * 30
            assert calls(port) == 1
            assert ctl(control, "purge", "http127.0.0.1/c/shared").returncode == 0
            words = [get(port, "/c/shared")[1] for _ in range(30)]
            assert words == ["MISS"] + ["HIT"] * 29
            assert calls(port) == 2


def test_entries_survive_a_reload_of_an_unchanged_route(tmp_path: pathlib.Path) -> None:
    port = free_port()
    path = tmp_path / "cluster.toml"
    with worker_process(APP) as (worker, _):
        path.write_text(cluster_file(port, worker, 'valid = { 200 = "1m" }'))
        with frontend_from_file(path, port) as process:
            first = get(port, "/c/kept")
            assert first[1] == "MISS"
            log = pathlib.Path(process.log_path)
            process.send_signal(signal.SIGHUP)
            wait_for(lambda: "configuration reloaded" in log.read_text())
            assert get(port, "/c/kept") == (200, "HIT", first[2])
            # A changed cache starts empty.
            path.write_text(cluster_file(port, worker, 'valid = { 200 = "2m" }'))
            process.send_signal(signal.SIGHUP)
            wait_for(lambda: log.read_text().count("configuration reloaded") == 2)
            assert get(port, "/c/kept")[1] == "MISS"
            assert calls(port) == 2
