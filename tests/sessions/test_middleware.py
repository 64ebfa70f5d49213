"""The session middleware behind a real FastCGI exchange (the worker's WSGI/ASGI adapters)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import types

import pytest
import trio

from fcgi_cluster.sessions import (
    SESSION_KEY,
    STORE_KEY,
    ASGISessionMiddleware,
    SessionSettings,
    StoreError,
    WSGISessionMiddleware,
)
from fcgi_cluster.worker import WorkerConfig
from fcgi_cluster.worker._server import serve
from tests.worker._harness import params, serving
from workers import counter

from ._memory_store import MemoryStore

SETTINGS = SessionSettings(gc_probability=0, lock_wait=0.2, lock_retry_interval=0.01)
KNOWN = "k" * 32


def cookie_of(answer) -> str | None:
    for line in answer.head.split(b"\r\n"):
        if line.lower().startswith(b"set-cookie:"):
            return line.split(b":", 1)[1].strip().decode()
    return None


def with_cookie(uri: str, sid: str | None, **extra: str):
    if sid is not None:
        extra["HTTP_COOKIE"] = f"PHPSESSID={sid}"
    return params(uri, **extra)


@pytest.fixture(params=["lazy", "auto_start", "auto_start, threads 0"])
def wsgi(request):
    """``wsgi(app, store, settings)``: a worker connection serving ``app`` with sessions,
    loaded on first use from the app's thread (lazy), or by the worker's loop before
    the app and saved there after it (auto_start), with app threads or on the loop."""
    auto_start = request.param.startswith("auto_start")
    config = WorkerConfig(threads=0 if request.param.endswith("threads 0") else 8)

    def start(app, store, settings=SETTINGS):
        settings = dataclasses.replace(settings, auto_start=auto_start)
        return serving(WSGISessionMiddleware(app, store, settings), config=config)

    return start


async def test_counter_through_wsgi_keeps_counting_with_its_cookie(wsgi):
    store = MemoryStore()
    async with wsgi(counter.app, store, SETTINGS) as web:
        first = await web.request(params("/"))
        cookie = cookie_of(first)
        sid = cookie.split(";")[0].split("=")[1]
        seen = [json.loads(first.body)["n"]]
        for _ in range(3):
            answer = await web.request(with_cookie("/", sid))
            assert cookie_of(answer) is None
            seen.append(json.loads(answer.body)["n"])
    assert seen == [1, 2, 3, 4]
    assert store.data[sid] == b'{"n":4}'
    assert not store.locks


async def test_environ_has_session_and_store_and_untouched_means_no_store_call():
    store = MemoryStore()
    seen = {}

    def app(environ, start_response):
        seen.update(environ)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    async with serving(WSGISessionMiddleware(app, store, SETTINGS)) as web:
        answer = await web.request(with_cookie("/", KNOWN))
    assert answer.status == 200 and answer.body == b"ok"
    assert seen[STORE_KEY] is store and not seen[SESSION_KEY].loaded
    assert store.calls == []


@pytest.mark.parametrize("cookie", ["garbage", "x" * 10_000, "\xe4" * 30, "../../../../etc/passwd"])
async def test_bad_cookies_get_a_new_session_not_an_error(cookie, wsgi):
    store = MemoryStore()
    async with wsgi(counter.app, store, SETTINGS) as web:
        answer = await web.request(params("/", HTTP_COOKIE=f"PHPSESSID={cookie}"))
    assert answer.status == 200 and json.loads(answer.body)["n"] == 1
    assert cookie_of(answer).startswith("PHPSESSID=")
    assert [name for name, sid in store.calls] == ["write"]


async def test_locked_session_gives_503(wsgi):
    store = MemoryStore()
    store.data[KNOWN] = b'{"n":1}'
    store.locks[KNOWN] = (b"other", float("inf"))
    async with wsgi(counter.app, store, SETTINGS) as web:
        answer = await web.request(with_cookie("/", KNOWN))
    assert answer.status == 503
    assert b"Retry-After: 1" in answer.head
    assert b"session busy" in answer.body and b"Traceback" not in answer.body
    assert store.data[KNOWN] == b'{"n":1}'


async def test_store_down_gives_503_even_when_the_app_swallows_the_error(wsgi):
    store = MemoryStore()
    store.down = True

    def app(environ, start_response):
        try:
            environ[SESSION_KEY].get("n")
        except StoreError:
            pass
        start_response("200 OK", [])
        return [b"pretending all is well"]

    async with wsgi(app, store, SETTINGS) as web:
        plain = await web.request(with_cookie("/", KNOWN))
    async with wsgi(counter.app, store, SETTINGS) as web:
        counted = await web.request(with_cookie("/", KNOWN))
    assert plain.status == 503 and counted.status == 503
    assert b"session store unavailable" in counted.body


async def test_store_down_with_proceed_serves_without_a_session(wsgi):
    store = MemoryStore()
    store.down = True
    settings = SessionSettings(gc_probability=0, on_store_error="proceed")
    async with wsgi(counter.app, store, settings) as web:
        answer = await web.request(with_cookie("/", KNOWN))
    assert answer.status == 200 and json.loads(answer.body)["n"] == 1
    assert cookie_of(answer) is None


async def test_store_failing_at_save_gives_503_before_the_response_leaves(wsgi):
    class FailingWrites(MemoryStore):
        def write(self, sid, data, ttl):
            raise StoreError("write refused")

    store = FailingWrites()
    store.data[KNOWN] = b'{"n":1}'
    async with wsgi(counter.app, store, SETTINGS) as web:
        answer = await web.request(with_cookie("/", KNOWN))
    assert answer.status == 503
    assert not store.locks


async def test_app_exception_releases_the_lock_unsaved(wsgi):
    store = MemoryStore()
    store.data[KNOWN] = b'{"n":1}'

    def app(environ, start_response):
        environ[SESSION_KEY]["n"] = 99
        raise RuntimeError("boom")

    async with wsgi(app, store, SETTINGS) as web:
        answer = await web.request(with_cookie("/", KNOWN))
    assert answer.status == 500
    assert store.data[KNOWN] == b'{"n":1}' and not store.locks


async def test_early_save_releases_the_lock_before_the_body_ends(wsgi):
    store = MemoryStore()
    store.data[KNOWN] = b'{"n":1}'
    locked_during_body = []

    def app(environ, start_response):
        session = environ[SESSION_KEY]
        session["n"] += 1
        session.close()
        start_response("200 OK", [])

        def body():
            locked_during_body.append(KNOWN in store.locks)
            yield b"x" * 10

        return body()

    async with wsgi(app, store, SETTINGS) as web:
        answer = await web.request(with_cookie("/", KNOWN))
    assert answer.status == 200 and locked_during_body == [False]
    assert store.data[KNOWN] == b'{"n":2}'


async def test_streamed_response_past_the_hold_limit_still_saves_and_sets_cookie(wsgi):
    store = MemoryStore()

    def app(environ, start_response):
        environ[SESSION_KEY]["big"] = True
        start_response("200 OK", [])
        return (b"y" * 32768 for _ in range(8))

    async with wsgi(app, store, SETTINGS) as web:
        answer = await web.request(params("/"))
    sid = cookie_of(answer).split(";")[0].split("=")[1]
    assert len(answer.body) == 8 * 32768
    assert store.data[sid] == b'{"big":true}'


async def test_write_callable_sends_the_cookie_first(wsgi):
    store = MemoryStore()

    def app(environ, start_response):
        environ[SESSION_KEY]["w"] = 1
        write = start_response("200 OK", [])
        write(b"written")
        return [b"+returned"]

    async with wsgi(app, store, SETTINGS) as web:
        answer = await web.request(params("/"))
    assert answer.body == b"written+returned" and cookie_of(answer) is not None
    assert list(store.data.values()) == [b'{"w":1}']


# --- ASGI -------------------------------------------------------------------------------


async def asgi_counter(scope, receive, send):
    session = scope["extensions"][SESSION_KEY]
    assert scope["state"]["session"] is session
    assert scope["extensions"][STORE_KEY] is scope["state"]["session_store"]
    await session.aload()
    session["n"] = session.get("n", 0) + 1
    body = json.dumps({"n": session["n"]}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


async def test_asgi_counter_saves_and_sets_cookie():
    store = MemoryStore()
    app = ASGISessionMiddleware(asgi_counter, store, SETTINGS)
    async with serving(app, interface="asgi") as web:
        first = await web.request(params("/"))
        sid = cookie_of(first).split(";")[0].split("=")[1]
        second = await web.request(with_cookie("/", sid))
    assert json.loads(first.body) == {"n": 1} and json.loads(second.body) == {"n": 2}
    assert cookie_of(second) is None
    assert store.data[sid] == b'{"n":2}' and not store.locks


async def test_asgi_lock_timeout_gives_503_and_the_loop_keeps_running():
    store = MemoryStore()
    store.data[KNOWN] = b'{"n":1}'
    store.locks[KNOWN] = (b"other", float("inf"))
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0.01)

    app = ASGISessionMiddleware(asgi_counter, store, SessionSettings(lock_wait=0.3, lock_retry_interval=0.01))
    async with serving(app, interface="asgi") as web:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            answer = await web.request(with_cookie("/", KNOWN))
            nursery.cancel_scope.cancel()
    assert answer.status == 503 and b"session busy" in answer.body
    # The store waited in a thread: the event loop ran meanwhile.
    assert ticks >= 5


async def test_starlette_app_sees_the_session_in_request_state():
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def endpoint(request):
        session = request.state.session
        await session.aload()
        session["hits"] = session.get("hits", 0) + 1
        return JSONResponse({"hits": session["hits"]})

    store = MemoryStore()
    app = ASGISessionMiddleware(Starlette(routes=[Route("/", endpoint)]), store, SETTINGS)
    async with serving(app, interface="asgi") as web:
        first = await web.request(params("/"))
        sid = cookie_of(first).split(";")[0].split("=")[1]
        second = await web.request(with_cookie("/", sid))
    assert json.loads(second.body) == {"hits": 2}


# --- the worker's injection ---------------------------------------------------------------


async def test_serve_opens_one_store_wraps_the_app_and_closes_the_store(monkeypatch):
    # The store factory is swapped for one returning the in-memory store, so this
    # checks serve()'s wiring alone; the real stores are in tests/e2e.
    opened = []

    def open_store(save_handler, save_path, *, timeout=None, max_lifetime=1440, check=True):
        store = MemoryStore()
        opened.append((save_handler, save_path, timeout, store))
        return store

    fake = types.ModuleType("fcgi_cluster.sessions._open")
    fake.open_store = open_store
    monkeypatch.setitem(sys.modules, "fcgi_cluster.sessions._open", fake)
    settings = SessionSettings(save_handler="redis", save_path="tcp://x:1", store_timeout=2.0, gc_probability=0)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        where = await nursery.start(lambda task_status: serve(counter.app, "127.0.0.1:0", WorkerConfig(session=settings), stop=stop, task_status=task_status))
        answers = [await _fcgi_get(where, None)]
        sid = answers[0][0]
        answers.append(await _fcgi_get(where, sid))
        stop.set()
    assert [(h, p, t) for h, p, t, _ in opened] == [("redis", "tcp://x:1", 2.0)]
    store = opened[0][3]
    assert store.closed
    assert [n for _, n in answers] == [1, 2]


async def _fcgi_get(where: str, sid: str | None) -> tuple[str, int]:
    from tests.worker._harness import WebServer

    host, _, port = where.rpartition(":")
    stream = await trio.open_tcp_stream(host, int(port))
    web = WebServer(stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(web.reader)
        answer = await web.request(with_cookie("/", sid))
        nursery.cancel_scope.cancel()
    await stream.aclose()
    cookie = cookie_of(answer)
    return (cookie.split(";")[0].split("=")[1] if cookie else sid), json.loads(answer.body)["n"]


async def test_counter_on_redis_waits_for_a_held_lock_then_counts_on_fresh_data(redis_server):
    """The real redis store through the middleware: a lock held by another request
    gives 503 after lock_wait; held briefly, the request waits, then reads what the
    holder saved (the lock and the read are one round trip)."""
    import urllib.parse

    from fcgi_cluster.sessions import open_store
    from tests.sessions.conftest import REDIS_PASSWORD

    store = open_store("redis", f"tcp://{redis_server.address}?auth={urllib.parse.quote(REDIS_PASSWORD)}")
    sid = "r" * 32
    settings = SessionSettings(gc_probability=0, lock_wait=0.3, lock_retry_interval=0.01, serialize_handler="php")
    try:
        store.write(sid, b"n|i:1;", 600)
        holder = store.acquire_lock(sid, expire=30, wait=1, retry_interval=0.01)
        async with serving(WSGISessionMiddleware(counter.app, store, settings)) as web:
            busy = await web.request(with_cookie("/", sid))
            assert busy.status == 503 and b"session busy" in busy.body
            waiting_settings = SessionSettings(gc_probability=0, lock_wait=10, lock_retry_interval=0.01,
                                               serialize_handler="php")
        async with serving(WSGISessionMiddleware(counter.app, store, waiting_settings)) as web:
            answers = []

            async def ask() -> None:
                answers.append(await web.request(with_cookie("/", sid)))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask)
                await trio.sleep(0.3)
                assert answers == []
                await trio.to_thread.run_sync(store.write_and_release, sid, b"n|i:41;", 600, holder)
        assert answers[0].status == 200 and json.loads(answers[0].body)["n"] == 42
        assert store.read(sid) == b"n|i:42;"
        token, _ = store.lock_and_read(sid, expire=30, wait=0.5, retry_interval=0.01)  # left unlocked
        store.release_lock(sid, token)
    finally:
        store.close()


# --- auto_start on the loop store ----------------------------------------------------------


@contextlib.asynccontextmanager
async def redis_sessions(redis_server, settings: SessionSettings, config: WorkerConfig):
    """A worker connection serving the counter with sessions in the real Redis, loaded and
    saved by the loop store; the blocking store refuses the calls the loop makes."""
    import urllib.parse

    from fcgi_cluster.sessions import open_store
    from tests.sessions.conftest import REDIS_PASSWORD

    store = open_store("redis", f"tcp://{redis_server.address}?auth={urllib.parse.quote(REDIS_PASSWORD)}")

    def not_from_a_thread(*args, **kwargs):
        raise AssertionError("a blocking store call for a session the loop loads")

    try:
        async with trio.open_nursery() as nursery:
            loop_store = store.loop_store(nursery)
            app = WSGISessionMiddleware(counter.app, store, settings, loop_store)
            async with serving(app, config=config) as web:
                web.store = store
                for name in ("lock_and_read", "write_and_release", "touch_and_release", "release_lock"):
                    setattr(store, name, not_from_a_thread)
                yield web
            loop_store.close()
            nursery.cancel_scope.cancel()
    finally:
        store.close()


@pytest.mark.parametrize("threads", [8, 0])
async def test_auto_start_counts_concurrent_requests_of_one_session_on_the_loop(redis_server, threads):
    sid = "c" * 32
    settings = SessionSettings(gc_probability=0, lock_wait=10, lock_retry_interval=0.002,
                               serialize_handler="php", auto_start=True)
    async with redis_sessions(redis_server, settings, WorkerConfig(threads=threads)) as web:
        web.store.write(sid, b"n|i:0;", 600)
        # All 30 on the connection at once, before any answer.
        rids = [await web.start(with_cookie("/", sid)) for _ in range(30)]
        answers = [web.answers[rid] for rid in rids]
        with trio.fail_after(10):
            for answer in answers:
                await answer.done.wait()
        stored = web.store.read(sid)
    assert {answer.status for answer in answers} == {200}
    assert sorted(json.loads(answer.body)["n"] for answer in answers) == list(range(1, 31))
    assert stored == b"n|i:30;"
    with redis_server.client() as client:
        assert client.keys("*_LOCK") == []


async def test_auto_start_an_aborted_request_stops_waiting_for_the_lock(redis_server):
    sid = "a" * 32
    settings = SessionSettings(gc_probability=0, lock_wait=10, lock_retry_interval=0.01,
                               serialize_handler="php", auto_start=True)
    async with redis_sessions(redis_server, settings, WorkerConfig(threads=8)) as web:
        store = web.store
        store.write(sid, b"n|i:5;", 600)
        holder = type(store).acquire_lock(store, sid, expire=30, wait=1, retry_interval=0.01)
        rid = await web.start(with_cookie("/", sid))
        await trio.sleep(0.2)
        assert not web.answers[rid].done.is_set()
        await web.abort(rid)
        # (The web server's core drops the END_REQUEST of a request it aborted.)
        with trio.fail_after(2):  # not lock_wait's 10 s
            while web.worker.requests:
                await trio.sleep(0.01)
        type(store).release_lock(store, sid, holder)
        # The lock is free and the session untouched: the next request counts on.
        answer = await web.request(with_cookie("/", sid))
    assert json.loads(answer.body)["n"] == 6
    with redis_server.client() as client:
        assert client.keys("*_LOCK") == []


async def test_auto_start_loads_before_the_app_and_saves_after_its_response():
    store = MemoryStore()
    store.data[KNOWN] = b'{"n":1}'
    seen = {}

    def app(environ, start_response):
        session = environ[SESSION_KEY]
        seen["loaded"] = session.loaded
        seen["locked"] = KNOWN in store.locks
        seen["calls"] = store.names()
        start_response("200 OK", [])
        return [b"did not touch the session"]

    settings = dataclasses.replace(SETTINGS, auto_start=True)
    async with serving(WSGISessionMiddleware(app, store, settings)) as web:
        answer = await web.request(with_cookie("/", KNOWN))
    assert answer.status == 200
    assert seen["loaded"] and seen["locked"] and "acquire_lock" in seen["calls"]
    # Unchanged: touched, and the lock let go, once the response was complete.
    assert "touch" in store.names()[len(seen["calls"]):] and not store.locks


async def test_asgi_sessions_use_the_loop_store_when_there_is_one(redis_server):
    import urllib.parse

    from fcgi_cluster.sessions import open_store
    from tests.sessions.conftest import REDIS_PASSWORD

    store = open_store("redis", f"tcp://{redis_server.address}?auth={urllib.parse.quote(REDIS_PASSWORD)}")

    def not_from_a_thread(*args, **kwargs):
        raise AssertionError("a blocking store call with a loop store at hand")

    for name in ("lock_and_read", "write", "write_and_release", "touch_and_release", "release_lock"):
        setattr(store, name, not_from_a_thread)
    try:
        async with trio.open_nursery() as nursery:
            app = ASGISessionMiddleware(asgi_counter, store, SETTINGS, store.loop_store(nursery))
            async with serving(app, interface="asgi") as web:
                first = await web.request(params("/"))
                sid = cookie_of(first).split(";")[0].split("=")[1]
                second = await web.request(with_cookie("/", sid))
            nursery.cancel_scope.cancel()
    finally:
        store.close()
    assert json.loads(first.body) == {"n": 1} and json.loads(second.body) == {"n": 2}
    with redis_server.client() as client:
        assert client.get(f"PHPREDIS_SESSION:{sid}") == b'{"n":2}'
        assert client.keys("*_LOCK") == []


async def test_lazy_sessions_of_pages_that_use_them_are_loaded_by_the_loop_once_learned(redis_server):
    """Without auto_start: a page seen using its session has the next requests that bring
    a cookie locked and read in the loop's pipeline, and the new sessions of those without
    one saved there; other pages never lock for it, nor get a session they do not use."""
    import urllib.parse

    from fcgi_cluster.sessions import open_store
    from tests.sessions.conftest import REDIS_PASSWORD

    def app(environ, start_response):
        body = {}
        if environ["PATH_INFO"] == "/count":
            session = environ[SESSION_KEY]
            session["n"] = session.get("n", 0) + 1
            body["n"] = session["n"]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]

    store = open_store("redis", f"tcp://{redis_server.address}?auth={urllib.parse.quote(REDIS_PASSWORD)}")
    blocking: list[str] = []
    for name in ("lock_and_read", "write", "write_and_release", "touch_and_release", "release_lock"):
        def counted(*args, _call=getattr(store, name), _name=name, **kwargs):
            blocking.append(_name)
            return _call(*args, **kwargs)
        setattr(store, name, counted)
    settings = SessionSettings(gc_probability=0, lock_wait=2, lock_retry_interval=0.01)
    try:
        async with trio.open_nursery() as nursery:
            loop_store = store.loop_store(nursery)
            middleware = WSGISessionMiddleware(app, store, settings, loop_store)
            async with serving(middleware, config=WorkerConfig(threads=8)) as web:
                first = await web.request(params("/count"))  # a new session, from the app's thread
                sid = cookie_of(first).split(";")[0].split("=")[1]
                assert blocking and not middleware.preloads(params("/other", HTTP_COOKIE=f"PHPSESSID={sid}"))
                assert middleware.preloads(params("/count"))  # no cookie: its new session saved by the loop
                assert middleware.preloads(params("/count?x=1", HTTP_COOKIE=f"PHPSESSID={sid}"))
                blocking.clear()
                answers = [await web.request(with_cookie("/count", sid)) for _ in range(3)]
                plain = await web.request(with_cookie("/other", sid))
                newcomer = await web.request(params("/count"))
                passer_by = await web.request(params("/other"))
            loop_store.close()
            nursery.cancel_scope.cancel()
    finally:
        store.close()
    assert [json.loads(a.body)["n"] for a in answers] == [2, 3, 4]
    assert json.loads(plain.body) == {} and blocking == []
    assert json.loads(newcomer.body) == {"n": 1} and cookie_of(newcomer)
    new_sid = cookie_of(newcomer).split(";")[0].split("=")[1]
    assert new_sid != sid and not cookie_of(passer_by)
    with redis_server.client() as client:
        assert client.keys("*_LOCK") == []
        assert client.get(f"PHPREDIS_SESSION:{new_sid}") is not None
