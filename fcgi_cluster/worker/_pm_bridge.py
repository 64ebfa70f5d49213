"""Request hooks from the app's side, for a worker that does not call them itself.

The process manager needs every child to report its requests (idle or busy,
how many served) through ``ChildHooks``. The worker's server calls the hooks
itself when it has that feature; until then this thin WSGI/ASGI wrapper makes
the same calls around the app. It steps aside by itself: the worker calls
``request_started`` before the app runs, which sets ``driven_by_worker``, and
from then on the wrapper only passes requests through. So it is safe either way
and can be removed once every worker calls the hooks.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ._app import app_interface
from ._scoreboard import ChildHooks
from ._status import RequestInfo

__all__ = ["bridge_app"]


def bridge_app(app: Any, hooks: ChildHooks) -> Any:
    """``app`` wrapped so that each request is reported to ``hooks``."""
    if app_interface(app) == "asgi":
        return _asgi(app, hooks)
    return _wsgi(app, hooks)


def _info(method: str, uri: str, length: Any, script: str) -> RequestInfo:
    try:
        content_length = int(length or 0)
    except ValueError:
        content_length = 0
    return RequestInfo(method=method, uri=uri, content_length=content_length, script=script, start=time.monotonic())


def _wsgi(app: Any, hooks: ChildHooks) -> Any:
    # WSGI code runs in the worker's threads, not its trio thread: one lock
    # keeps the hooks' counters whole.
    lock = threading.Lock()

    def finished(info: RequestInfo) -> None:
        with lock:
            hooks._finished(info)

    def bridged(environ: dict, start_response: Any) -> Any:
        if hooks.driven_by_worker:
            return app(environ, start_response)
        info = _info(environ.get("REQUEST_METHOD", ""), environ.get("REQUEST_URI", ""),
                     environ.get("CONTENT_LENGTH"), environ.get("SCRIPT_FILENAME", ""))
        with lock:
            hooks._started(info)
        try:
            result = app(environ, start_response)
        except BaseException:
            finished(info)
            raise
        return _Closing(result, finished, info)

    return bridged


class _Closing:
    """A WSGI response iterable that reports the request finished when closed."""

    def __init__(self, result: Any, finished: Any, info: RequestInfo) -> None:
        self.result, self.finished, self.info = result, finished, info
        self.done = False

    def __iter__(self) -> Any:
        return iter(self.result)

    def close(self) -> None:
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            if not self.done:
                self.done = True
                self.finished(self.info)


def _asgi(app: Any, hooks: ChildHooks) -> Any:
    async def bridged(scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or hooks.driven_by_worker:
            return await app(scope, receive, send)
        headers = dict(scope.get("headers") or ())
        query = scope.get("query_string", b"")
        uri = scope.get("path", "") + ("?" + query.decode("latin-1") if query else "")
        info = _info(scope.get("method", ""), uri, headers.get(b"content-length", b"0").decode("latin-1"), "")
        hooks._started(info)
        try:
            return await app(scope, receive, send)
        finally:
            hooks._finished(info)

    return bridged
