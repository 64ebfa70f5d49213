"""Shared sessions across real processes: our front-end, two workers, a password-protected Redis.

Needs the store backends (``fcgi_cluster.sessions._open.open_store``) of the session
stores work; every process here is real and stopped by its fixture.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.cookiejar
import json
import subprocess
import time
import urllib.request

import pytest

from tests.sessions._php_servers import CookieClient, RedisProcess, frontend, session_worker

pytestmark = pytest.mark.e2e


def redis_settings(redis: RedisProcess, *more: str) -> tuple[str, ...]:
    return ("save_handler=redis", f"save_path={redis.save_path}", *more)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Redis, two counter workers with locking on (the defaults), the front-end before them."""
    directory = tmp_path_factory.mktemp("sessions-cluster")
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(RedisProcess(directory))
        w1, _ = stack.enter_context(session_worker(directory, *redis_settings(redis)))
        w2, _ = stack.enter_context(session_worker(directory, *redis_settings(redis)))
        port = stack.enter_context(frontend(directory, [w1, w2]))
        yield port, (w1, w2), directory


def test_twenty_sequential_requests_with_a_cookie_jar_count_on_both_workers(cluster):
    port, workers, _ = cluster
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    answers = []
    for _ in range(20):
        with opener.open(f"http://127.0.0.1:{port}/", timeout=15) as response:
            answers.append(json.loads(response.read()))
    assert [a["n"] for a in answers] == list(range(1, 21))
    served = {a["worker"].split()[0] for a in answers}
    assert served == {f"127.0.0.1:{w}" for w in workers}
    cookie = next(iter(jar))
    assert cookie.name == "PHPSESSID" and len(cookie.value) == 32
    assert cookie.has_nonstandard_attr("HttpOnly")


def concurrent_increments(port: int, sid: str, clients: int = 20, each: int = 5) -> tuple[list[int], list[int], set[str]]:
    """``clients`` browsers sharing one session id, ``each`` increments apiece.

    Returns:
        (statuses, n values answered, the workers that answered).
    """
    statuses: list[int] = []
    values: list[int] = []
    served: set[str] = set()

    def browser(_: int) -> None:
        client = CookieClient(port)
        client.sid = sid
        try:
            for _ in range(each):
                status, _, body = client.get("/")
                statuses.append(status)
                if status == 200:
                    answer = json.loads(body)
                    values.append(answer["n"])
                    served.add(answer["worker"].split()[0])
        finally:
            client.close()

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(browser, range(clients)))
    return statuses, values, served


def new_session(port: int) -> tuple[CookieClient, str]:
    """A session that exists in the store with no counter yet (via /user?set=)."""
    client = CookieClient(port)
    status, _, _ = client.get("/user?set=load")
    assert status == 200 and client.sid is not None
    return client, client.sid


def test_hundred_concurrent_increments_lose_nothing_with_locking(cluster):
    port, workers, _ = cluster
    client, sid = new_session(port)
    statuses, values, served = concurrent_increments(port, sid)
    status, _, body = client.get("/peek")
    client.close()
    assert statuses == [200] * 100
    assert served == {f"127.0.0.1:{w}" for w in workers}
    # Every increment saw the one before it: each value from 1 to 100 exactly once.
    assert sorted(values) == list(range(1, 101))
    assert json.loads(body)["n"] == 100


def test_without_locking_concurrent_increments_are_lost(tmp_path):
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(RedisProcess(tmp_path))
        settings = redis_settings(redis, "lock=off")
        w1, _ = stack.enter_context(session_worker(tmp_path, *settings))
        w2, _ = stack.enter_context(session_worker(tmp_path, *settings))
        port = stack.enter_context(frontend(tmp_path, [w1, w2]))
        finals = []
        # A lost update is a race: all but certain with 20 clients on 2 workers, but
        # it is given three tries before the test calls it absent.
        for _ in range(3):
            client, sid = new_session(port)
            statuses, _, _ = concurrent_increments(port, sid)
            final = json.loads(client.get("/peek")[2])["n"]
            client.close()
            assert statuses == [200] * 100
            finals.append(final)
            if final < 100:
                break
    assert finals[-1] < 100, f"no update lost in {len(finals)} tries: {finals}"


@pytest.mark.parametrize(
    "cookie",
    [
        "PHPSESSID=garbage!!;",
        "PHPSESSID=" + "a" * 10_000,
        "PHPSESSID=\xe9t\xe9" * 12,
        "PHPSESSID=../../../../etc/passwd",
        "PHPSESSID=%00%00%00%00%00%00%00%00%00%00%00%00",
    ],
    ids=["garbage", "10KB", "latin1", "path", "nul"],
)
def test_bad_cookies_get_a_new_session_not_an_error(cluster, cookie):
    port, _, _ = cluster
    client = CookieClient(port)
    try:
        status, headers, body = client.get("/", cookie=cookie)
    finally:
        client.close()
    assert status == 200, body
    assert json.loads(body)["n"] == 1
    assert headers["set-cookie"].startswith("PHPSESSID=") and client.sid not in cookie


def test_unknown_id_in_strict_mode_gets_a_new_id(cluster):
    port, _, _ = cluster
    unknown = "0123456789abcdefghijklmnopqrstuv"
    client = CookieClient(port)
    client.sid = unknown
    try:
        status, _, body = client.get("/")
        again = client.get("/")
    finally:
        client.close()
    assert status == 200 and json.loads(body)["n"] == 1
    assert client.sid is not None and client.sid != unknown
    assert json.loads(again[2])["n"] == 2


def test_redis_killed_and_restarted_under_load(tmp_path):
    """503s (or, with on_store_error = proceed, answers without a session) while Redis is down;
    the workers keep serving and recover by themselves when it is back."""
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(RedisProcess(tmp_path))
        fail = redis_settings(redis, "store_timeout=1")
        w1, p1 = stack.enter_context(session_worker(tmp_path, *fail))
        w2, p2 = stack.enter_context(session_worker(tmp_path, *fail))
        port = stack.enter_context(frontend(tmp_path, [w1, w2]))
        w3, p3 = stack.enter_context(session_worker(tmp_path, *redis_settings(redis, "store_timeout=1", "on_store_error=proceed")))
        proceed_port = stack.enter_context(frontend(tmp_path, [w3]))

        # (started, ended, status) of every request; the kill and restart times split them.
        answers: list[tuple[float, float, int]] = []
        times: dict[str, float] = {}
        proceed_down = []

        def browser(_: int) -> None:
            client = CookieClient(port)
            deadline = time.monotonic() + 40
            try:
                # Bounded: at most 400 requests or 40 s per client; it stops once
                # Redis has been back for 1.5 s.
                for _ in range(400):
                    now = time.monotonic()
                    if now > deadline or ("restarted" in times and now > times["restarted"] + 1.5):
                        return
                    status, _, _ = client.get("/")
                    answers.append((now, time.monotonic(), status))
                    time.sleep(0.01)
            finally:
                client.close()

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(browser, i) for i in range(4)]
            time.sleep(1.0)
            times["killing"] = time.monotonic()
            redis.kill()
            times["killed"] = time.monotonic()
            time.sleep(2.0)
            proceed_client = CookieClient(proceed_port)
            proceed_down = [proceed_client.get("/") for _ in range(3)]
            proceed_client.close()
            times["restarting"] = time.monotonic()
            redis.start()
            times["restarted"] = time.monotonic()
            for future in futures:
                future.result(timeout=60)

        assert all(p.poll() is None for p in (p1, p2, p3)), "a worker died"
        # Requests that overlap a kill or a restart may get either answer: left out.
        before = [s for start, end, s in answers if end < times["killing"]]
        down = [(s, end - start) for start, end, s in answers if start > times["killed"] and end < times["restarting"]]
        after = [s for start, end, s in answers if start > times["restarted"]]
        assert before and set(before) == {200}
        assert down and {s for s, _ in down} == {503}
        # Nothing hung past the store timeout (1 s) plus slack for a loaded machine.
        assert max(t for _, t in down) < 8
        # Back by themselves: the sessions were lost with Redis' memory, so each
        # browser starts a new one, and every request from then on is answered.
        assert after and set(after[-20:]) == {200}
        assert {s for _, _, s in answers} <= {200, 503}
        # proceed: served, without a session (no cookie, the count starts over).
        assert [status for status, _, _ in proceed_down] == [200] * 3
        assert [json.loads(body)["n"] for _, _, body in proceed_down] == [1, 1, 1]
        assert all(headers["set-cookie"] == "" for _, headers, _ in proceed_down)


def test_files_store_shared_by_two_workers_counts_every_increment(tmp_path):
    # The embedded default: one directory, flock locks, no server at all.
    sessions = tmp_path / "sessions"
    sessions.mkdir()
    with contextlib.ExitStack() as stack:
        settings = ("save_handler=files", f"save_path={sessions}")
        w1, _ = stack.enter_context(session_worker(tmp_path, *settings))
        w2, _ = stack.enter_context(session_worker(tmp_path, *settings))
        port = stack.enter_context(frontend(tmp_path, [w1, w2]))
        client, sid = new_session(port)
        statuses, values, _ = concurrent_increments(port, sid, clients=10, each=5)
        final = json.loads(client.get("/peek")[2])["n"]
        client.close()
    assert statuses == [200] * 50
    assert sorted(values) == list(range(1, 51)) and final == 50


@pytest.mark.parametrize(
    "settings, line",
    [
        (("lock_wait=soon",),
         "fcgi-cluster worker: --session session.lock_wait: must be a time like 30s, 5m, 1h, 1d (a bare number is seconds), got 'soon'"),
        (("save_handler=redis", "save_path=tcp://127.0.0.1:1?colour=blue"),
         "fcgi-cluster worker: --session session.save_path: "),
    ],
    ids=["value", "save_path-option"],
)
def test_bad_session_setting_is_one_line_and_exit_2(settings, line):
    from tests._peers import REPO_ROOT, free_port
    from tests.sessions._php_servers import worker_argv

    result = subprocess.run(worker_argv("workers.counter:app", free_port(), *settings), cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith(line), result.stderr


def test_wrong_redis_password_is_a_clear_startup_error(tmp_path):
    from tests._peers import REPO_ROOT, free_port
    from tests.sessions._php_servers import worker_argv

    with RedisProcess(tmp_path) as redis:
        argv = worker_argv("workers.counter:app", free_port(), "save_handler=redis",
                           f"save_path=tcp://127.0.0.1:{redis.port}?auth=wrong")
        result = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("fcgi-cluster worker: session store:") and "password" in last.lower(), result.stderr
