"""Run ASGI 3 apps (http and lifespan scopes) for the worker, as trio tasks.

anyio-based apps (Starlette, FastAPI) run unchanged: anyio detects trio.

Error handling: an app that raises before ``http.response.start`` gives a 500
with a fixed body; after it, the request ends with app status 1. The traceback
goes to the worker's log, one line to the web server's error log (STDERR).
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any, Awaitable, Callable

import trio

from ._body import BodyAborted
from ._connection import RequestContext
from ._environ import cgi_environ, split_path

__all__ = ["ASGIHandler", "Lifespan"]

log = logging.getLogger("fcgi_cluster.worker")

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]

_ASGI = {"version": "3.0", "spec_version": "2.3"}
_ERROR_500 = (
    b"Status: 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 22\r\n\r\nInternal Server Error\n"
)
#: Params that are not HTTP headers but carry two of them.
_CONTENT_HEADERS = {b"CONTENT_TYPE": b"content-type", b"CONTENT_LENGTH": b"content-length"}


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class _Exchange:
    """The receive/send pair of one http scope."""

    __slots__ = ("ctx", "body_done", "started", "status", "headers", "finished", "done")

    def __init__(self, ctx: RequestContext) -> None:
        self.ctx = ctx
        self.body_done = False
        self.started = False
        self.status = 200
        self.headers: list = []
        self.finished = False
        self.done = trio.Event()

    async def receive(self) -> dict:
        if not self.body_done and not self.finished:
            body = self.ctx.body
            try:
                chunk = await body.receive()
            except BodyAborted:
                return {"type": "http.disconnect"}
            self.body_done = body.at_end
            return {"type": "http.request", "body": chunk, "more_body": not self.body_done}
        await self.done.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("ASGI: http.response.start sent twice")
            self.started = True
            self.status = int(message["status"])
            self.headers = message.get("headers", [])
        elif kind == "http.response.body":
            if not self.started:
                raise RuntimeError("ASGI: http.response.body before http.response.start")
            if self.finished:
                raise RuntimeError("ASGI: http.response.body after the response ended")
            body = message.get("body", b"")
            if self.headers is not None:
                head = [b"Status: %d %s\r\n" % (self.status, _reason(self.status).encode())]
                for name, value in self.headers:
                    if b"\n" in value or b"\r" in value or b"\n" in name or b"\r" in name:
                        raise ValueError(f"ASGI header {name!r}: {value!r} holds a line break")
                    head.append(bytes(name) + b": " + bytes(value) + b"\r\n")
                head.append(b"\r\n")
                self.headers = None
                body = b"".join(head) + body
            await self.ctx.send(body)
            if not message.get("more_body", False):
                self.finished = True
                self.done.set()
        else:
            raise RuntimeError(f"ASGI: unexpected message type {kind!r} in an http scope")


class ASGIHandler:
    """Serve requests of one ASGI 3 app.

    Args:
        app: the ASGI callable.
        root_path: mount point used when the web server sends no PATH_INFO.
        state: the lifespan state, shallow-copied into every request's scope.
        extensions: added to every scope's ``extensions``.
    """

    def __init__(self, app: ASGIApp, root_path: str, state: dict, extensions: dict[str, Any]) -> None:
        self.app = app
        self.root_path = root_path
        self.state = state
        self.extensions = extensions

    def scope(self, ctx: RequestContext) -> dict:
        env = cgi_environ(ctx.params)
        script_name, path_info = split_path(env, self.root_path)
        headers = []
        for key, value in ctx.params.items():
            if key.startswith(b"HTTP_"):
                headers.append((key[5:].lower().replace(b"_", b"-"), value))
            elif value and key in _CONTENT_HEADERS:
                headers.append((_CONTENT_HEADERS[key], value))
        raw_uri = ctx.params.get(b"REQUEST_URI", b"")
        raw_path, _, _ = raw_uri.partition(b"?")
        full_path = (script_name + path_info).encode("latin-1").decode("utf-8", "surrogateescape")
        https = env.get("HTTPS", "").lower() in ("on", "1")
        protocol = env.get("SERVER_PROTOCOL", "HTTP/1.1")
        return {
            "type": "http",
            "asgi": _ASGI,
            "http_version": protocol.partition("/")[2] or "1.1",
            "method": env.get("REQUEST_METHOD", "GET"),
            "scheme": "https" if https else env.get("REQUEST_SCHEME") or "http",
            "path": full_path,
            "raw_path": raw_path or full_path.encode("utf-8", "surrogateescape"),
            "query_string": ctx.params.get(b"QUERY_STRING", b""),
            "root_path": script_name.encode("latin-1").decode("utf-8", "surrogateescape"),
            "headers": headers,
            "client": _endpoint(env, "REMOTE_ADDR", "REMOTE_PORT"),
            "server": _endpoint(env, "SERVER_ADDR", "SERVER_PORT"),
            "state": self.state.copy(),
            "extensions": dict(self.extensions),
        }

    async def __call__(self, ctx: RequestContext) -> None:
        exchange = _Exchange(ctx)
        try:
            await self.app(self.scope(ctx), exchange.receive, exchange.send)
        except Exception as exc:
            log.exception("ASGI app failed: %s", ctx.params.get(b"REQUEST_URI", b"").decode("latin-1"))
            ctx.log(f"fcgi-cluster: app raised {type(exc).__name__}: {exc}\n".encode("utf-8", "replace"))
            if not exchange.started or exchange.headers is not None:
                ctx.send_nowait(_ERROR_500)
                ctx.end(0)
            else:
                ctx.end(1)
            return
        finally:
            exchange.done.set()
        if not exchange.started:
            log.error("ASGI app returned without a response")
            ctx.send_nowait(_ERROR_500)
        ctx.end(0 if exchange.finished or not exchange.started else 1)


def _endpoint(env: dict[str, str], host_key: str, port_key: str) -> tuple[str, int] | None:
    host = env.get(host_key)
    port = env.get(port_key, "")
    if not host or not port.isdigit():
        return None
    return (host, int(port))


class Lifespan:
    """The ASGI lifespan protocol: startup before serving, shutdown after.

    An app that raises on the lifespan scope is taken not to support it
    (as the spec allows), and serving goes on.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.state: dict = {}
        self.supported = True
        self._to_app_send, self._to_app_recv = trio.open_memory_channel[dict](1)
        self._startup = trio.Event()
        self._shutdown = trio.Event()
        self._failure: str | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the app's lifespan task; ``started`` after startup completes."""
        scope = {"type": "lifespan", "asgi": _ASGI, "state": self.state}

        async def receive() -> dict:
            return await self._to_app_recv.receive()

        async def send(message: dict) -> None:
            kind = message["type"]
            if kind == "lifespan.startup.complete":
                self._startup.set()
            elif kind == "lifespan.startup.failed":
                self._failure = message.get("message", "") or "startup failed"
                self._startup.set()
            elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                self._shutdown.set()

        async def app_task() -> None:
            try:
                await self.app(scope, receive, send)
            except Exception as exc:
                if not self._startup.is_set():
                    self.supported = False
                    log.debug("ASGI app does not support lifespan: %r", exc)
                else:
                    log.exception("ASGI lifespan task failed")
            finally:
                self._startup.set()
                self._shutdown.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(app_task)
            await self._to_app_send.send({"type": "lifespan.startup"})
            await self._startup.wait()
            if self._failure is not None:
                raise RuntimeError(f"ASGI lifespan startup failed: {self._failure}")
            task_status.started()
            await trio.sleep_forever()

    async def shutdown(self, timeout: float) -> None:
        """Send lifespan.shutdown and wait for the app's answer, at most ``timeout``."""
        if not self.supported or self._shutdown.is_set():
            return
        with trio.move_on_after(timeout):
            await self._to_app_send.send({"type": "lifespan.shutdown"})
            await self._shutdown.wait()
