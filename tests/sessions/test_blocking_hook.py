"""The ``blocking`` hook of ``WSGISessionMiddleware``: entered around each store call of an app thread.

The worker passes its thread pool's ``waits_for_loop`` there, so a thread waiting
on Redis counts as blocked on the network and queued requests get another
thread. Against a real Redis.
"""

from __future__ import annotations

import threading
import urllib.parse

from fcgi_cluster.sessions import WSGISessionMiddleware, open_store, parse_session_settings
from tests.sessions._servers import RedisServer
from tests.sessions.conftest import REDIS_PASSWORD

AUTH = urllib.parse.quote(REDIS_PASSWORD)


class Blocked:
    """Counts entries, and how many threads are inside at the moment."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entered = 0
        self.inside = 0

    def __enter__(self) -> None:
        with self.lock:
            self.entered += 1
            self.inside += 1

    def __exit__(self, *exc) -> None:
        with self.lock:
            self.inside -= 1


def counter_app(environ, start_response):
    session = environ["fcgi_cluster.session"]
    session["n"] = session.get("n", 0) + 1
    body = str(session["n"]).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def call(app, cookie: str | None) -> tuple[list, bytes]:
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/"}
    if cookie:
        environ["HTTP_COOKIE"] = cookie
    got: dict = {}

    def start_response(status, headers, exc_info=None):
        got["headers"] = headers
        return lambda data: None

    result = app(environ, start_response)
    body = b"".join(result)
    getattr(result, "close", lambda: None)()
    return got["headers"], body


def test_each_store_call_of_a_locked_request_is_inside_the_hook(flushed: RedisServer) -> None:
    settings = parse_session_settings({
        "session.save_handler": "redis",
        "session.save_path": f"tcp://{flushed.address}?auth={AUTH}&database=3",
    })
    store = open_store("redis", settings.save_path, check=False)
    blocked = Blocked()
    try:
        app = WSGISessionMiddleware(counter_app, store, settings, blocking=blocked)
        headers, body = call(app, None)
        # A new session: no lock or read, one write.
        assert body == b"1" and blocked.entered == 1
        cookie = next(v for k, v in headers if k == "Set-Cookie").split(";")[0]
        _, body = call(app, cookie)
        # Lock and read in one call, write and release in another.
        assert body == b"2" and blocked.entered == 3
        assert blocked.inside == 0
    finally:
        store.close()


def test_a_request_that_never_uses_its_session_never_enters_it(flushed: RedisServer) -> None:
    settings = parse_session_settings({
        "session.save_handler": "redis",
        "session.save_path": f"tcp://{flushed.address}?auth={AUTH}",
    })
    store = open_store("redis", settings.save_path, check=False)
    blocked = Blocked()

    def hello(environ, start_response):
        start_response("200 OK", [("Content-Length", "2")])
        return [b"hi"]

    try:
        app = WSGISessionMiddleware(hello, store, settings, blocking=blocked)
        assert call(app, "PHPSESSID=" + "a" * 32)[1] == b"hi"
        assert blocked.entered == 0
    finally:
        store.close()
