"""Lazy sessions used from an app thread go through the loop's pipelined client, against a real Redis.

``WSGISessionMiddleware`` made on the trio loop with a loop store hands a
session's load and save to the loop (the app's thread waits); the blocking
store is then not called. The store here is the real one, its calls counted
by a thin wrapper.
"""

from __future__ import annotations

import threading
import urllib.parse

import trio

from fcgi_cluster.sessions import WSGISessionMiddleware, open_store, parse_session_settings
from tests.sessions._servers import RedisServer
from tests.sessions.conftest import REDIS_PASSWORD

AUTH = urllib.parse.quote(REDIS_PASSWORD)


class CountingStore:
    """A real store whose method calls are counted by name (thread-safe)."""

    def __init__(self, store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str):
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        def counted(*args, **kwargs):
            with self._lock:
                self.calls[name] = self.calls.get(name, 0) + 1
            return attr(*args, **kwargs)

        return counted


def counter_app(environ, start_response):
    session = environ["fcgi_cluster.session"]
    session["n"] = session.get("n", 0) + 1
    body = str(session["n"]).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def call(app, cookie: str | None) -> tuple[str, list, bytes]:
    """A WSGI request in this (app) thread: status, headers, body."""
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.input": None}
    if cookie:
        environ["HTTP_COOKIE"] = cookie
    got: dict = {}

    def start_response(status, headers, exc_info=None):
        got["status"], got["headers"] = status, headers
        return lambda data: None

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close:
            close()
    return got["status"], got["headers"], body


def settings_for(server: RedisServer):
    return parse_session_settings({
        "session.save_handler": "redis",
        "session.save_path": f"tcp://{server.address}?auth={AUTH}&database=3",
    })


async def test_thread_sessions_are_loaded_and_saved_on_the_loop(flushed: RedisServer) -> None:
    settings = settings_for(flushed)
    store = CountingStore(open_store("redis", settings.save_path, check=False))
    try:
        async with trio.open_nursery() as nursery:
            loop = store.loop_store(nursery)
            assert loop is not None
            store.calls.clear()
            app = WSGISessionMiddleware(counter_app, store, settings, loop)

            def browser() -> list[bytes]:
                status, headers, body = call(app, None)
                cookie = next(v for k, v in headers if k == "Set-Cookie").split(";")[0]
                bodies = [body]
                for _ in range(9):
                    bodies.append(call(app, cookie)[2])
                return bodies

            results = await trio.to_thread.run_sync(browser)
            assert results == [str(n).encode() for n in range(1, 11)]
            # Locked loads and saves, all through the loop client.
            assert store.calls == {}
            loop.close()
            nursery.cancel_scope.cancel()
    finally:
        store.close()


async def test_concurrent_threads_on_one_session_lose_nothing(flushed: RedisServer) -> None:
    settings = settings_for(flushed)
    store = open_store("redis", settings.save_path, check=False)
    try:
        async with trio.open_nursery() as nursery:
            loop = store.loop_store(nursery)
            app = WSGISessionMiddleware(counter_app, store, settings, loop)
            _, headers, _ = await trio.to_thread.run_sync(call, app, None)
            cookie = next(v for k, v in headers if k == "Set-Cookie").split(";")[0]
            seen: list[int] = []

            def visitor() -> None:
                for _ in range(10):
                    seen.append(int(call(app, cookie)[2]))

            async with trio.open_nursery() as threads:
                for _ in range(6):
                    threads.start_soon(trio.to_thread.run_sync, visitor)
            assert sorted(seen) == list(range(2, 62))
            loop.close()
            nursery.cancel_scope.cancel()
    finally:
        store.close()


def test_made_outside_a_loop_the_middleware_uses_the_blocking_store(flushed: RedisServer) -> None:
    settings = settings_for(flushed)
    store = CountingStore(open_store("redis", settings.save_path, check=False))
    try:
        # A loop store given, but no running loop to hand calls to: the blocking store serves.
        app = WSGISessionMiddleware(counter_app, store, settings, loop_store=object())
        _, headers, body = call(app, None)
        assert body == b"1"
        cookie = next(v for k, v in headers if k == "Set-Cookie").split(";")[0]
        assert call(app, cookie)[2] == b"2"
        assert store.calls.get("lock_and_read") == 1 and store.calls.get("write_and_release") == 1
    finally:
        store.close()
