"""A Django project on the cluster's sessions: two pools of one cluster file, our front-end, Redis, php-fpm.

``workers.django_site`` (``SESSION_ENGINE = "fcgi_cluster.sessions.django"``)
runs as two pools of one cluster file under ``fcgi-cluster up``: ``pool.a``
mounted at ``/a`` and ``pool.b`` at ``/b`` (``root_path``), each its own
upstream and route, sharing one SQLite user table and one password-protected
Redis (``php`` format, locking on) through their ``session`` and ``env``
tables; the front-end sends ``/php/`` to php-fpm with phpredis. A login on
pool A's route is seen on pool B's. Every process is real and stopped by its
fixture.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import pathlib
import subprocess

import pytest

from tests._peers import LOOPBACK, REPO_ROOT, free_port, python_executable, run_process
from tests.sessions._php_servers import (
    PHP_CHILDREN,
    PHP_ROOT,
    CookieClient,
    RedisProcess,
    php_fpm_with_redis_sessions,
    php_has_redis,
)

django = pytest.importorskip("django", reason="Django is missing: pip install -e '.[test]'")

pytestmark = pytest.mark.e2e

SECRET = "test-only-django-secret-key-0123456789"
PASSWORD = "correct horse battery"
LOGIN = "login?user=alice&password=" + PASSWORD.replace(" ", "%20")
POOLS = ("a", "b")


def django_env(db: pathlib.Path) -> dict[str, str]:
    return {"FCGI_DJANGO_DB": str(db), "DJANGO_SECRET_KEY": SECRET}


def cluster_file(directory: pathlib.Path, db: pathlib.Path, redis: RedisProcess, http_port: int,
                 php_port: int | None) -> pathlib.Path:
    """Pools ``a`` and ``b`` (the Django site at /a and /b), each its upstream and route; /php/ to php-fpm."""
    session = (f'{{ save_handler = "redis", save_path = {json.dumps(redis.save_path)}, '
               'serialize_handler = "php" }')
    env = "{ " + ", ".join(f"{key} = {json.dumps(value)}" for key, value in django_env(db).items()) + " }"
    text = f'[frontend]\nlisten = "{LOOPBACK}:{http_port}"\nprocesses = 1\naccess_log = false\n'
    for name in POOLS:
        port = free_port()
        text += (
            f'[pool.{name}]\nlisten = "{LOOPBACK}:{port}"\napp = "workers.django_site:app"\n'
            f'root_path = "/{name}"\nsession = {session}\nenv = {env}\n'
            f'[upstream.{name}]\nservers = ["{LOOPBACK}:{port}"]\n'
            f'[[route]]\nprefix = "/{name}/"\nupstream = "{name}"\n'
        )
    if php_port is not None:
        text += (
            f'[upstream.php]\nservers = [{{ address = "{LOOPBACK}:{php_port}", max_conns = {PHP_CHILDREN} }}]\n'
            f'[[route]]\nprefix = "/php/"\nupstream = "php"\nroot = "{PHP_ROOT}"\n'
        )
    path = directory / "cluster.toml"
    path.write_text(text)
    return path


def prepare_database(db: pathlib.Path) -> None:
    for args in (["migrate", "--verbosity", "0"], ["adduser", "alice", PASSWORD]):
        subprocess.run([python_executable(), "-m", "workers.django_site", *args], cwd=REPO_ROOT,
                       env=dict(os.environ, PYTHONPATH=str(REPO_ROOT), **django_env(db)), check=True, timeout=120)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sessions-django")
    db = directory / "site.sqlite3"
    prepare_database(db)
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(RedisProcess(directory))
        php_port = None
        if php_has_redis():
            php_port = stack.enter_context(php_fpm_with_redis_sessions(directory, redis))
        port = free_port()
        config = cluster_file(directory, db, redis, port, php_port)
        stack.enter_context(run_process([python_executable(), "-m", "fcgi_cluster.cli", "up", "-c", str(config)],
                                        cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
                                        ready_port=port, name="fcgi-up", log_path=directory / "up.log"))
        yield port, redis, php_port is not None


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


def test_login_on_pool_a_is_seen_on_pool_b(site):
    port, redis, _ = site
    browser = CookieClient(port)
    try:
        assert get_json(browser, "/b/whoami")["user"] is None
        assert browser.sid is None  # an empty session is neither stored nor given a cookie
        login = get_json(browser, "/a/" + LOGIN)
        assert login["user"] == "alice"
        sid = browser.sid
        assert sid is not None and len(sid) == 32
        stored = redis_value(redis, sid)
        assert stored is not None and b'_auth_user_id|s:1:"1";' in stored
        on_b = [get_json(browser, "/b/whoami") for _ in range(3)]
        assert {answer["user"] for answer in on_b} == {"alice"}
        # Another pool's process answered: the login travelled through Redis only.
        assert {answer["pid"] for answer in on_b} == {on_b[0]["pid"]} != {login["pid"]}
        assert get_json(browser, "/a/whoami") == {"user": "alice", "pid": login["pid"]}
        assert browser.sid == sid
    finally:
        browser.close()


def test_login_gives_a_new_id_and_destroys_the_old_one(site):
    port, redis, _ = site
    browser = CookieClient(port)
    try:
        assert get_json(browser, "/b/visit")["visits"] == 1
        first = browser.sid
        # An anonymous session logging in on pool A: Django cycles the key, keeping the data.
        get_json(browser, "/a/" + LOGIN)
        second = browser.sid
        assert first is not None and second is not None and second != first
        assert redis_value(redis, first) is None
        assert redis_value(redis, second) is not None
        assert get_json(browser, "/b/whoami")["user"] == "alice"
        assert get_json(browser, "/b/visit")["visits"] == 2
    finally:
        browser.close()


def test_wrong_password_is_403_and_stores_nothing(site):
    port, _, _ = site
    browser = CookieClient(port)
    try:
        answer = get_json(browser, "/a/login?user=alice&password=wrong", status=403)
        assert answer["user"] is None and "wrong" in answer["error"]
        assert browser.sid is None
    finally:
        browser.close()


def test_logout_on_pool_b_destroys_the_session_everywhere(site):
    port, redis, _ = site
    browser = CookieClient(port)
    try:
        get_json(browser, "/a/" + LOGIN)
        sid = browser.sid
        assert get_json(browser, "/b/logout")["user"] is None
        assert redis_value(redis, sid) is None
        # The old cookie, replayed on either pool, is no login.
        stale = CookieClient(port)
        stale.sid = sid
        try:
            assert {get_json(stale, f"/{pool}/whoami")["user"] for pool in POOLS} == {None}
        finally:
            stale.close()
    finally:
        browser.close()


def test_a_bad_cookie_is_a_new_anonymous_session_not_an_error(site):
    port, _, _ = site
    browser = CookieClient(port)
    try:
        for pool in POOLS:
            for cookie in ("PHPSESSID=../../etc/passwd", "PHPSESSID=" + "x" * 5000):
                status, _, body = browser.get(f"/{pool}/whoami", cookie=cookie)
                assert status == 200 and json.loads(body)["user"] is None
    finally:
        browser.close()


def test_php_reads_what_django_wrote_and_keeps_it(site):
    port, _, has_php = site
    if not has_php:
        pytest.skip("PHP's redis extension is missing: apt-get install php-redis")
    browser = CookieClient(port)
    try:
        get_json(browser, "/a/" + LOGIN)
        sid = browser.sid
        php = get_json(browser, "/php/session.php?set=from-php")
        assert php["id"] == sid
        assert {"_auth_user_id", "_auth_user_backend", "_auth_user_hash", "user"} <= set(php["keys"])
        # PHP's write kept Django's keys: still logged in, on both pools.
        assert {get_json(browser, f"/{pool}/whoami")["user"] for pool in POOLS} == {"alice"}
        assert browser.sid == sid
    finally:
        browser.close()


def test_concurrent_visits_on_both_pools_lose_nothing(site):
    port, _, _ = site
    browser = CookieClient(port)
    try:
        assert get_json(browser, "/a/visit")["visits"] == 1
        sid = browser.sid
        answers: list[tuple[str, dict]] = []

        def visitor(index: int) -> None:
            client = CookieClient(port)
            client.sid = sid
            pool = POOLS[index % 2]
            try:
                for _ in range(5):
                    answers.append((pool, get_json(client, f"/{pool}/visit")))
            finally:
                client.close()

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(visitor, range(8)))
        # Locking on: each of the 40 visits saw the one before it, whichever pool ran it.
        assert sorted(answer["visits"] for _, answer in answers) == list(range(2, 42))
        pids = {name: {answer["pid"] for pool, answer in answers if pool == name} for name in POOLS}
        assert pids["a"] and pids["b"] and not pids["a"] & pids["b"]
    finally:
        browser.close()
