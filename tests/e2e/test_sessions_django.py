"""A Django project on the cluster's sessions: two workers, our front-end, Redis, php-fpm.

``workers.django_site`` (``SESSION_ENGINE = "fcgi_cluster.sessions.django"``)
runs in two worker processes sharing one SQLite user table and one
password-protected Redis (``php`` format, locking on); the front-end sends
``/php/`` to php-fpm with phpredis and the rest round robin to the workers.
Every process is real and stopped by its fixture.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import pathlib
import subprocess

import pytest

from tests._peers import REPO_ROOT, free_port, python_executable, run_process
from tests.sessions._php_servers import (
    CookieClient,
    RedisProcess,
    frontend,
    php_fpm_with_redis_sessions,
    php_has_redis,
    worker_argv,
)

django = pytest.importorskip("django", reason="Django is missing: pip install -e '.[test]'")

pytestmark = pytest.mark.e2e

SECRET = "test-only-django-secret-key-0123456789"
PASSWORD = "correct horse battery"


def django_env(db: pathlib.Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO_ROOT), FCGI_DJANGO_DB=str(db), DJANGO_SECRET_KEY=SECRET)


@contextlib.contextmanager
def django_worker(directory: pathlib.Path, db: pathlib.Path, redis: RedisProcess):
    port = free_port()
    argv = worker_argv("workers.django_site:app", port, "save_handler=redis", f"save_path={redis.save_path}",
                       "serialize_handler=php")
    with run_process(argv, cwd=REPO_ROOT, env=django_env(db), ready_port=port, name="django-worker",
                     log_path=directory / f"django-worker-{port}.log") as process:
        yield port, process


def prepare_database(db: pathlib.Path) -> None:
    for args in (["migrate", "--verbosity", "0"], ["adduser", "alice", PASSWORD]):
        subprocess.run([python_executable(), "-m", "workers.django_site", *args], cwd=REPO_ROOT,
                       env=django_env(db), check=True, timeout=120)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sessions-django")
    db = directory / "site.sqlite3"
    prepare_database(db)
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(RedisProcess(directory))
        w1, p1 = stack.enter_context(django_worker(directory, db, redis))
        w2, p2 = stack.enter_context(django_worker(directory, db, redis))
        php_port = None
        if php_has_redis():
            php_port = stack.enter_context(php_fpm_with_redis_sessions(directory, redis))
        port = stack.enter_context(frontend(directory, [w1, w2], php_port=php_port))
        yield port, redis, {p1.pid, p2.pid}, php_port is not None


def get_json(client: CookieClient, target: str, status: int = 200) -> dict:
    got, _, body = client.get(target)
    assert got == status, body
    return json.loads(body)


def redis_value(redis: RedisProcess, sid: str) -> bytes | None:
    import redis as redis_py

    client = redis_py.Redis(host="127.0.0.1", port=redis.port, password=redis.password)
    try:
        return client.get(f"PHPREDIS_SESSION:{sid}")
    finally:
        client.close()


def test_login_on_one_worker_is_seen_on_the_other(site):
    port, redis, pids, _ = site
    browser = CookieClient(port)
    try:
        assert get_json(browser, "/whoami")["user"] is None
        assert browser.sid is None  # an empty session is neither stored nor given a cookie
        login = get_json(browser, "/login?user=alice&password=" + PASSWORD.replace(" ", "%20"))
        assert login["user"] == "alice" and login["pid"] in pids
        sid = browser.sid
        assert sid is not None and len(sid) == 32
        stored = redis_value(redis, sid)
        assert stored is not None and b'_auth_user_id|s:1:"1";' in stored
        seen = [get_json(browser, "/whoami") for _ in range(4)]
        assert {answer["user"] for answer in seen} == {"alice"}
        # Round robin: both worker processes answered, the one that did not log in too.
        assert {answer["pid"] for answer in seen} == pids
        assert browser.sid == sid
    finally:
        browser.close()


def test_login_gives_a_new_id_and_destroys_the_old_one(site):
    port, redis, _, _ = site
    browser = CookieClient(port)
    try:
        assert get_json(browser, "/visit")["visits"] == 1
        first = browser.sid
        # An anonymous session logging in: Django cycles the key, keeping the data.
        get_json(browser, "/login?user=alice&password=" + PASSWORD.replace(" ", "%20"))
        second = browser.sid
        assert first is not None and second is not None and second != first
        assert redis_value(redis, first) is None
        assert redis_value(redis, second) is not None
        assert get_json(browser, "/whoami")["user"] == "alice"
        assert get_json(browser, "/visit")["visits"] == 2
    finally:
        browser.close()


def test_wrong_password_is_403_and_stores_nothing(site):
    port, _, _, _ = site
    browser = CookieClient(port)
    try:
        answer = get_json(browser, "/login?user=alice&password=wrong", status=403)
        assert answer["user"] is None and "wrong" in answer["error"]
        assert browser.sid is None
    finally:
        browser.close()


def test_logout_destroys_the_session_everywhere(site):
    port, redis, _, _ = site
    browser = CookieClient(port)
    try:
        get_json(browser, "/login?user=alice&password=" + PASSWORD.replace(" ", "%20"))
        sid = browser.sid
        assert get_json(browser, "/logout")["user"] is None
        assert redis_value(redis, sid) is None
        # The old cookie, replayed on either worker, is no login.
        stale = CookieClient(port)
        stale.sid = sid
        try:
            assert {get_json(stale, "/whoami")["user"] for _ in range(2)} == {None}
        finally:
            stale.close()
    finally:
        browser.close()


def test_a_bad_cookie_is_a_new_anonymous_session_not_an_error(site):
    port, _, _, _ = site
    browser = CookieClient(port)
    try:
        for cookie in ("PHPSESSID=../../etc/passwd", "PHPSESSID=" + "x" * 5000):
            status, _, body = browser.get("/whoami", cookie=cookie)
            assert status == 200 and json.loads(body)["user"] is None
    finally:
        browser.close()


def test_php_reads_what_django_wrote_and_keeps_it(site):
    port, _, _, has_php = site
    if not has_php:
        pytest.skip("PHP's redis extension is missing: apt-get install php-redis")
    browser = CookieClient(port)
    try:
        get_json(browser, "/login?user=alice&password=" + PASSWORD.replace(" ", "%20"))
        sid = browser.sid
        php = get_json(browser, "/php/session.php?set=from-php")
        assert php["id"] == sid
        assert {"_auth_user_id", "_auth_user_backend", "_auth_user_hash", "user"} <= set(php["keys"])
        # PHP's write kept Django's keys: still logged in, on both workers.
        assert {get_json(browser, "/whoami")["user"] for _ in range(2)} == {"alice"}
        assert browser.sid == sid
    finally:
        browser.close()


def test_concurrent_visits_on_both_workers_lose_nothing(site):
    port, _, pids, _ = site
    browser = CookieClient(port)
    try:
        assert get_json(browser, "/visit")["visits"] == 1
        sid = browser.sid
        answers: list[dict] = []

        def visitor(_: int) -> None:
            client = CookieClient(port)
            client.sid = sid
            try:
                for _ in range(5):
                    answers.append(get_json(client, "/visit"))
            finally:
                client.close()

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(visitor, range(8)))
        # Locking on: each of the 40 visits saw the one before it.
        assert sorted(a["visits"] for a in answers) == list(range(2, 42))
        assert {a["pid"] for a in answers} == pids
    finally:
        browser.close()
