"""PHP and Python share one session: php-fpm with phpredis and our worker behind our front-end.

``/php/session.php`` goes to php-fpm, everything else to ``workers.counter:app``; both
keep sessions in one password-protected Redis in PHP's ``php`` format under the
``PHPSESSID`` cookie. Needs the store backends (``open_store``) and Debian's php-redis.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json

import pytest

from tests.sessions._php_servers import (
    CookieClient,
    RedisProcess,
    frontend,
    php_fpm_with_redis_sessions,
    php_has_redis,
    session_worker,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not php_has_redis(), reason="PHP's redis extension is missing: apt-get install php-redis"),
]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sessions-php")
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(RedisProcess(directory))
        worker, _ = stack.enter_context(session_worker(
            directory, "save_handler=redis", f"save_path={redis.save_path}", "serialize_handler=php"))
        fpm = stack.enter_context(php_fpm_with_redis_sessions(directory, redis))
        port = stack.enter_context(frontend(directory, [worker], php_port=fpm))
        yield port, redis


def redis_value(redis: RedisProcess, sid: str) -> bytes | None:
    import redis as redis_py

    client = redis_py.Redis(host="127.0.0.1", port=redis.port, password=redis.password)
    try:
        return client.get(f"PHPREDIS_SESSION:{sid}")
    finally:
        client.close()


def get_json(client: CookieClient, target: str) -> dict:
    status, _, body = client.get(target)
    assert status == 200, body
    return json.loads(body)


def test_php_sets_python_sees_and_changes_php_sees_the_change(site):
    port, redis = site
    browser = CookieClient(port)
    try:
        php = get_json(browser, "/php/session.php?set=alice")
        sid = browser.sid
        assert php["id"] == sid and php["user"] == "alice"
        assert redis_value(redis, sid) == b'user|s:5:"alice";'

        assert get_json(browser, "/user")["user"] == "alice"
        assert get_json(browser, "/user?set=bob")["user"] == "bob"
        assert redis_value(redis, sid) == b'user|s:3:"bob";'

        php = get_json(browser, "/php/session.php")
        assert php["user"] == "bob" and php["id"] == sid
        assert browser.sid == sid  # one session throughout
    finally:
        browser.close()


def test_python_sets_php_sees_and_changes_python_sees_the_change(site):
    port, _ = site
    browser = CookieClient(port)
    try:
        assert get_json(browser, "/user?set=carol")["user"] == "carol"
        sid = browser.sid
        assert sid is not None and len(sid) == 32

        # PHP, in strict mode, takes our id: the same session, no new cookie.
        status, headers, body = browser.get("/php/session.php?set=dave")
        php = json.loads(body)
        assert status == 200 and php["id"] == sid and "PHPSESSID" not in headers["set-cookie"]
        assert php["keys"] == ["user"] and php["user"] == "dave"

        assert get_json(browser, "/user")["user"] == "dave"
    finally:
        browser.close()


def test_one_counter_incremented_by_both(site):
    port, _ = site
    browser = CookieClient(port)
    try:
        values = [
            get_json(browser, "/")["n"],
            get_json(browser, "/php/session.php?n=1")["n"],
            get_json(browser, "/")["n"],
            get_json(browser, "/php/session.php?n=1")["n"],
            get_json(browser, "/peek")["n"],
        ]
    finally:
        browser.close()
    assert values == [1, 2, 3, 4, 4]


def test_concurrent_increments_from_php_and_python_lose_nothing(site):
    # phpredis' lock and ours are the same Redis key: 10 browsers through PHP and 10
    # through Python, 5 increments each, on one session: every one counts.
    port, _ = site
    first = CookieClient(port)
    get_json(first, "/user?set=shared")
    sid = first.sid
    statuses: list[int] = []

    def browser(i: int) -> None:
        client = CookieClient(port)
        client.sid = sid
        target = "/php/session.php?n=1" if i % 2 else "/"
        try:
            for _ in range(5):
                statuses.append(client.get(target)[0])
        finally:
            client.close()

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        list(pool.map(browser, range(20)))
    final = get_json(first, "/peek")["n"]
    first.close()
    assert statuses == [200] * 100
    assert final == 100


def test_unknown_id_is_refused_by_both(site):
    port, _ = site
    unknown = "abcdefghijklmnopqrstuv0123456789"
    python = CookieClient(port)
    php = CookieClient(port)
    python.sid = php.sid = unknown
    try:
        assert get_json(python, "/")["n"] == 1
        assert get_json(php, "/php/session.php?n=1")["n"] == 1
        assert python.sid not in (None, unknown) and php.sid not in (None, unknown)
    finally:
        python.close()
        php.close()
