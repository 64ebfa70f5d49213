"""The ASGI 3 adapter: http scope, lifespan, and a real anyio framework under trio."""

from __future__ import annotations

import hashlib

import trio
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from fcgi_cluster.worker._asgi import Lifespan
from workers import hello_asgi

from ._harness import params, serving


async def test_plain_asgi_hello():
    async with serving(hello_asgi.app, interface="asgi") as web:
        answer = await web.request(params("/"))
    assert answer.status == 200
    assert answer.body == b"hello"


async def test_scope_from_params():
    seen = {}

    async def app(scope, receive, send):
        seen.update(scope)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    p = params("/a%20b/c?x=1", method="PUT", HTTP_X_THING="v", CONTENT_TYPE="text/plain",
               HTTPS="on", SERVER_ADDR="10.0.0.1", SERVER_PORT="443")
    async with serving(app, interface="asgi") as web:
        answer = await web.request(p)
    assert answer.status == 204
    assert seen["method"] == "PUT"
    assert seen["path"] == "/a b/c" and seen["raw_path"] == b"/a%20b/c"
    assert seen["query_string"] == b"x=1"
    assert seen["scheme"] == "https"
    assert (b"x-thing", b"v") in seen["headers"] and (b"content-type", b"text/plain") in seen["headers"]
    assert seen["client"] == ("127.0.0.1", 40000) and seen["server"] == ("10.0.0.1", 443)
    assert seen["asgi"]["version"] == "3.0"


async def test_request_body_arrives_in_order():
    async def app(scope, receive, send):
        digest, size = hashlib.sha256(), 0
        while True:
            message = await receive()
            digest.update(message["body"])
            size += len(message["body"])
            if not message["more_body"]:
                break
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": f"{size} {digest.hexdigest()}".encode()})

    body = bytes(range(256)) * 4000
    async with serving(app, interface="asgi") as web:
        answer = await web.request(params("/", method="POST"), body)
    assert answer.body == f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode()


async def test_asgi_app_error_gives_500_and_next_request_is_served():
    async def app(scope, receive, send):
        if scope["path"] == "/boom":
            raise KeyError("secret-detail")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"fine"})

    async with serving(app, interface="asgi") as web:
        failed = await web.request(params("/boom"))
        after = await web.request(params("/"))
    assert failed.status == 500 and b"secret-detail" not in failed.stdout
    assert b"KeyError" in failed.stderr
    assert after.body == b"fine"


def starlette_app(events: list) -> Starlette:
    async def home(request: StarletteRequest):
        return PlainTextResponse(f"hi {request.query_params.get('name', '')} {request.app.state.ready}")

    async def echo(request: StarletteRequest):
        data = await request.json()
        return JSONResponse({"got": data, "path": request.url.path})

    async def stream(request: StarletteRequest):
        async def gen():
            for i in range(3):
                await trio.sleep(0)
                yield f"part{i};".encode()
        return StreamingResponse(gen(), media_type="text/plain")

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        events.append("startup")
        app.state.ready = "yes"
        yield
        events.append("shutdown")

    return Starlette(routes=[Route("/", home), Route("/echo", echo, methods=["POST"]), Route("/stream", stream)],
                     lifespan=lifespan)


async def test_starlette_runs_under_trio_with_lifespan():
    events: list = []
    app = starlette_app(events)
    lifespan = Lifespan(app)
    async with trio.open_nursery() as nursery:
        await nursery.start(lifespan.run)
        assert events == ["startup"]
        async with serving(app, interface="asgi", state=lifespan.state) as web:
            home = await web.request(params("/?name=ann"))
            echoed = await web.request(params("/echo", method="POST", CONTENT_TYPE="application/json"), b'{"k": [1, 2]}')
            streamed = await web.request(params("/stream"))
            missing = await web.request(params("/nowhere"))
        await lifespan.shutdown(5)
        nursery.cancel_scope.cancel()
    assert events == ["startup", "shutdown"]
    assert home.body == b"hi ann yes"
    assert echoed.status == 200 and b'"got":{"k":[1,2]}' in echoed.body.replace(b" ", b"")
    assert streamed.body == b"part0;part1;part2;"
    assert missing.status == 404


async def test_lifespan_unsupported_app_still_serves():
    async def app(scope, receive, send):
        if scope["type"] != "http":
            raise RuntimeError("only http here")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    lifespan = Lifespan(app)
    async with trio.open_nursery() as nursery:
        await nursery.start(lifespan.run)
        assert lifespan.supported is False
        nursery.cancel_scope.cancel()


async def test_abort_cancels_an_asgi_request():
    cancelled = trio.Event()

    async def app(scope, receive, send):
        if scope["path"] == "/slow":
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                cancelled.set()
                raise
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"next"})

    async with serving(app, interface="asgi") as web:
        rid = await web.start(params("/slow"))
        await trio.sleep(0.05)
        await web.abort(rid)
        with trio.fail_after(5):
            await cancelled.wait()
        after = await web.request(params("/"))
    assert after.body == b"next"
