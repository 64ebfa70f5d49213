"""WSGI and ASGI middleware giving every request its lazy ``Session``.

WSGI apps find the session in ``environ["fcgi_cluster.session"]`` and the store
client in ``environ["fcgi_cluster.session_store"]``; ASGI apps in
``scope["extensions"]`` under the same keys, and in ``scope["state"]`` (when the
server provides one) as ``session`` and ``session_store``, which Starlette shows
as ``request.state.session``.

When the session is saved: once the app's response is complete, before it is
handed to the server, so the next request of the same browser always sees it.
To be able to still answer 503 when the store fails at that point, the response
head (and the first 64 KiB of body) are held back until then; a longer streamed
response is passed on as it comes, and a save failure after that is logged and
ends the response early. ``Set-Cookie`` is added to the head when it is passed on.

Error handling: ``LockTimeout`` or a ``StoreError`` (with ``on_store_error =
fail``) escaping the app, or caught by the app but recorded in
``session.failure``, gives ``503 Service Unavailable`` with ``Retry-After: 1``
and a short text body, never a traceback. Any other exception of the app
releases the session's lock unsaved and propagates (the worker answers 500).
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any, Callable, Iterable, Mapping

from ._session import Session
from ._settings import SessionConfigError, SessionSettings
from ._store import LockTimeout, SessionStore, StoreError

__all__ = [
    "SESSION_KEY", "STORE_KEY", "WSGISessionMiddleware", "ASGISessionMiddleware", "open_session_store", "session_middleware",
]

log = logging.getLogger("fcgi_cluster.sessions")

#: environ / scope["extensions"] keys.
SESSION_KEY = "fcgi_cluster.session"
STORE_KEY = "fcgi_cluster.session_store"
#: Where ``begin`` leaves its ``Preloaded`` for the middleware's ``__call__`` (taken out there).
_PRELOADED_KEY = "fcgi_cluster.session_preloaded"
#: scope["state"] keys (attribute names for Starlette's request.state).
STATE_SESSION_KEY = "session"
STATE_STORE_KEY = "session_store"

#: The WSGI environ of the request whose app is running in this context (read
#: by adapters that are not handed the request, such as Django's session engine).
current_environ: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "fcgi_cluster_session_environ", default=None)

#: Response bytes held back while the session may still fail to save (the
#: worker's own batch size: holding them costs no extra latency).
HOLD_LIMIT = 64 * 1024

#: Pages remembered as using their session (``WSGISessionMiddleware.preloads``):
#: enough for an app's routes; past it, further pages start their sessions lazily.
MAX_SESSION_PAGES = 4096

_UNAVAILABLE_BODY = b"Service Unavailable: session store unavailable, try again\n"
_LOCKED_BODY = b"Service Unavailable: session busy, try again\n"


def _unavailable_head(body: bytes) -> tuple[str, list[tuple[str, str]]]:
    return "503 Service Unavailable", [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Retry-After", "1"),
        ("Cache-Control", "no-store"),
    ]


def _failure_body(exc: BaseException | None) -> bytes:
    return _LOCKED_BODY if isinstance(exc, LockTimeout) else _UNAVAILABLE_BODY


def _is_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, (LockTimeout, StoreError))


def open_session_store(settings: SessionSettings, *, check: bool = True) -> SessionStore:
    """Open the store the settings name (blocking: connects, checks the password).

    Args:
        settings: the pool's session settings.
        check: connect and check the password now (``open_store``'s ``check``);
            False for a process that must start even while the store is down.

    Raises:
        SessionConfigError: the save_path is malformed or has unknown options
            (key ``session.save_path``).
        StoreError: the store cannot be used (down, refused, wrong password).
    """
    from ._open import open_store

    try:
        return open_store(settings.save_handler, settings.save_path, timeout=settings.store_timeout,
                          max_lifetime=settings.gc_maxlifetime, check=check)
    except StoreError:
        raise
    except ValueError as exc:
        raise SessionConfigError("session.save_path", str(exc)) from None


def session_middleware(app: Any, store: SessionStore, settings: SessionSettings, interface: str,
                       loop_store: Any = None) -> Any:
    """Wrap ``app`` (``interface`` "wsgi" or "asgi") with the matching middleware.

    ``loop_store``: the store's client on the worker's trio loop (``store.loop_store``),
    used by ASGI sessions and by WSGI ones under ``auto_start``.
    """
    if interface == "asgi":
        return ASGISessionMiddleware(app, store, settings, loop_store)
    return WSGISessionMiddleware(app, store, settings, loop_store)


# --- WSGI -------------------------------------------------------------------------


class WSGISessionMiddleware:
    """A WSGI app giving ``app`` a session per request.

    With ``session.auto_start`` the worker's loop also calls ``begin`` before the
    app (the session is loaded there) and ``end`` after its response (saved
    there), so the app's thread never waits on the store for them.

    Args:
        app: the WSGI app.
        store: the worker's store client (one per process, thread-safe).
        settings: the pool's session settings.
        loop_store: the store's client on the worker's trio loop, for ``begin``
            and ``end`` (None: they call ``store`` in a thread).
    """

    def __init__(self, app: Callable, store: SessionStore, settings: SessionSettings, loop_store: Any = None) -> None:
        self.app = app
        self.store = store
        self.settings = settings
        self.loop_store = loop_store
        #: Whether the worker is to ask ``preloads`` of each request (and then
        #: call ``begin`` and ``end`` around it).
        self.loop_ends = settings.auto_start or loop_store is not None
        #: Pages (REQUEST_URI before "?") whose requests used their session.
        self._session_pages: set[str] = set()
        self._cookie_mark = f"{settings.name}=".encode("latin-1")

    def preloads(self, params: Mapping[bytes, bytes]) -> bool:
        """Whether this request's session is loaded on the loop before the app (``begin``).

        Every request under ``auto_start``. Otherwise (sessions start when the
        app first uses them), a request to a page whose requests used their
        session before: one that brings a session cookie has it locked and read
        in the loop's pipeline rather than from the app's thread, as under
        ``auto_start`` (which costs a thread a round trip of its own each way);
        one without has nothing to read, and the new session its app may start
        is saved by the loop too (not under ``on_store_error = proceed``).
        Either way the app's call makes no store call, so it may run on the
        loop's thread (``worker._inline``). A page that never uses its session
        is never locked for it.
        """
        if self.settings.auto_start:
            return True
        if not self._session_pages:
            return False
        page = params.get(b"REQUEST_URI", b"").partition(b"?")[0].decode("latin-1")
        if page not in self._session_pages:
            return False
        if self.settings.on_store_error == "proceed":
            # Without a cookie the store is first met at the save: under
            # ``proceed`` a failed one must leave no cookie on the answer, which
            # the app's thread can still see to, and the loop, after the app, not.
            cookie = params.get(b"HTTP_COOKIE")
            return bool(cookie) and self._cookie_mark in cookie
        return True

    def _learn(self, environ: dict) -> None:
        """A request used its session: its page's next requests are preloaded."""
        pages = self._session_pages
        if len(pages) < MAX_SESSION_PAGES:
            pages.add(environ.get("REQUEST_URI", "").partition("?")[0])

    async def begin(self, environ: dict) -> "Preloaded":
        """On the worker's loop, before the app: make the request's session and load it (when it names one).

        A store failure or lock timeout is kept, and the app is not called: the
        request is answered 503.

        Returns:
            What ``end`` needs.
        """
        import trio

        session = Session(self.store, self.settings, environ.get("HTTP_COOKIE"),
                          run_sync=trio.to_thread.run_sync, loop_store=self.loop_store)
        preloaded = Preloaded(session)
        environ[SESSION_KEY] = session
        environ[STORE_KEY] = self.store
        environ[_PRELOADED_KEY] = preloaded
        if self.settings.auto_start or session.incoming_id is not None:
            # Without auto_start and without an id there is nothing to read:
            # the session starts (new, with no store call) if the app uses it.
            try:
                await session.aload()
            except (LockTimeout, StoreError) as exc:
                preloaded.failure = exc
        return preloaded

    async def end(self, preloaded: "Preloaded", completed: bool) -> tuple[str, list[tuple[str, str]], bytes] | None:
        """On the worker's loop, after the app: save the session (``completed``), or let it go.

        Returns:
            None, or the 503 answer to give instead of the app's when the save
            failed (the worker gives it when none of the app's answer left yet).

        Raises:
            Exception: a value the session's format cannot hold (as ``save``).
        """
        session = preloaded.session
        if not completed or preloaded.failure is not None:
            await session.aabort()
            return None
        try:
            await session.asave()
        except Exception as exc:
            if not _is_unavailable(exc):
                raise
            log.warning("session not saved: %s", exc)
        if session.unavailable:
            body = _failure_body(session.failure)
            return (*_unavailable_head(body), body)
        return None

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        preloaded: Preloaded | None = environ.pop(_PRELOADED_KEY, None)
        if preloaded is None:
            session = Session(self.store, self.settings, environ.get("HTTP_COOKIE"))
            environ[SESSION_KEY] = session
            environ[STORE_KEY] = self.store
        else:
            session = preloaded.session
        response = _WSGIResponse(start_response, session, self.settings)
        if preloaded is not None and preloaded.failure is not None:
            log.warning("session unavailable: %s", preloaded.failure)
            return response.unavailable(preloaded.failure)
        context_token = current_environ.set(environ)
        try:
            result = self.app(environ, response.start_response)
        except Exception as exc:
            if preloaded is None:
                session.abort()
            if _is_unavailable(exc) and not response.passed:
                log.warning("session unavailable: %s", exc)
                return response.unavailable(exc)
            raise
        except BaseException:
            if preloaded is None:
                session.abort()
            raise
        finally:
            current_environ.reset(context_token)
        learn = self._learn if preloaded is None and self.loop_store is not None else None
        return _WSGIBody(result, response, session, saved_by_loop=preloaded is not None,
                         learn=(learn, environ) if learn is not None else None)


class Preloaded:
    """A session ``WSGISessionMiddleware.begin`` loaded, for its ``end``.

    Attributes:
        session: the request's session.
        failure: the store error or lock timeout of the load, if any (answer 503).
    """

    __slots__ = ("session", "failure")

    def __init__(self, session: Session) -> None:
        self.session = session
        self.failure: BaseException | None = None


class _WSGIResponse:
    """The app's ``start_response``, held back until the session is saved."""

    def __init__(self, start_response: Callable, session: Session, settings: SessionSettings) -> None:
        self.real_start_response = start_response
        self.session = session
        self.settings = settings
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.exc_info: Any = None
        #: Whether the head went to the server (no 503 possible any more).
        self.passed = False
        self.write_through: Callable[[bytes], Any] | None = None

    def start_response(self, status: str, headers: list, exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info is not None and self.passed:
            # PEP 3333: too late to change the head; let the server see the error.
            return self.real_start_response(status, headers, exc_info)
        self.status, self.headers, self.exc_info = status, list(headers), exc_info
        return self.write

    def write(self, data: bytes) -> None:
        # The old-style write() callable: the head has to go now.
        if not self.passed:
            self.pass_head()
        assert self.write_through is not None
        self.write_through(data)

    def pass_head(self) -> None:
        if self.status is None:
            raise AssertionError("the app sent a body before calling start_response()")
        headers = self.headers
        cookie = self.session.cookie()
        if cookie is not None:
            headers = [*headers, ("Set-Cookie", cookie)]
        self.session.headers_sent = True
        self.passed = True
        self.write_through = self.real_start_response(self.status, headers, self.exc_info)
        self.exc_info = None

    def unavailable(self, exc: BaseException | None) -> list[bytes]:
        body = _failure_body(exc)
        status, headers = _unavailable_head(body)
        self.passed = True
        self.session.headers_sent = True
        self.real_start_response(status, headers)
        return [body]


class _WSGIBody:
    """The app's response iterable, saving the session when it is exhausted.

    ``saved_by_loop``: the worker's loop saves (or lets go) the session after
    the response instead (``begin``/``end``); the head is passed on unsaved.
    """

    def __init__(self, result: Iterable[bytes], response: _WSGIResponse, session: Session, *,
                 saved_by_loop: bool = False, learn: tuple[Callable[[dict], None], dict] | None = None) -> None:
        self.result = result
        self.response = response
        self.session = session
        self.saved_by_loop = saved_by_loop
        #: (``WSGISessionMiddleware._learn``, environ): told at the close when the session was used.
        self.learn = learn

    def __iter__(self):
        response, session = self.response, self.session
        held: list[bytes] = []
        held_size = 0
        try:
            for chunk in self.result:
                if response.passed:
                    if chunk:
                        yield chunk
                    continue
                if chunk:
                    held.append(chunk)
                    held_size += len(chunk)
                    if held_size > HOLD_LIMIT:
                        response.pass_head()
                        yield from held
                        held = []
        except Exception as exc:
            if not self.saved_by_loop:
                session.abort()
            if _is_unavailable(exc) and not response.passed:
                log.warning("session unavailable: %s", exc)
                yield from response.unavailable(exc)
                return
            raise
        except BaseException:
            if not self.saved_by_loop:
                session.abort()
            raise
        if self.saved_by_loop:
            if not response.passed:
                response.pass_head()
            yield from held
            return
        try:
            session.save()
        except Exception as exc:
            if not _is_unavailable(exc):
                raise
            log.warning("session not saved: %s", exc)
            if response.passed:
                raise
        if session.unavailable and not response.passed:
            yield from response.unavailable(session.failure)
            return
        if not response.passed:
            response.pass_head()
        yield from held

    def close(self) -> None:
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            # An aborted request (or an unsaved one) must not keep the lock.
            if not self.saved_by_loop:
                self.session.abort()
            if self.learn is not None and self.session.loaded:
                learn, environ = self.learn
                learn(environ)


# --- ASGI -------------------------------------------------------------------------


async def _run_in_thread(fn: Callable[[], Any]) -> Any:
    """Run a blocking store call off the event loop, under trio or asyncio."""
    try:
        import sniffio

        library = sniffio.current_async_library()
    except Exception:
        library = "trio"
    if library == "trio":
        import trio

        return await trio.to_thread.run_sync(fn)
    import asyncio

    return await asyncio.to_thread(fn)


async def _shielded(fn: Callable[[], Any]) -> None:
    """Await ``fn()`` even when the request is being cancelled (a lock must be released)."""
    try:
        import sniffio

        library = sniffio.current_async_library()
    except Exception:
        library = "trio"
    if library == "trio":
        import trio

        with trio.CancelScope(shield=True):
            await fn()
    else:
        # asyncio.to_thread runs its thread to the end even when cancelled.
        await fn()


class ASGISessionMiddleware:
    """An ASGI 3 app giving ``app`` a session per HTTP request.

    The app must ``await session.aload()`` before using the session; saving
    happens when the response ends. Store calls go to ``loop_store`` when given
    (the worker's trio loop), else to ``store`` in a thread.

    Args:
        app: the ASGI app.
        store: the worker's store client.
        settings: the pool's session settings.
        loop_store: the store's client on the running trio loop, or None.
    """

    def __init__(self, app: Any, store: SessionStore, settings: SessionSettings, loop_store: Any = None) -> None:
        self.app = app
        self.store = store
        self.settings = settings
        self.loop_store = loop_store

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        cookie = None
        for name, value in scope.get("headers") or ():
            if name.lower() == b"cookie":
                cookie = value.decode("latin-1") if cookie is None else f"{cookie}; {value.decode('latin-1')}"
        session = Session(self.store, self.settings, cookie, async_mode=True, run_sync=_run_in_thread,
                          loop_store=self.loop_store)
        scope = dict(scope)
        extensions = dict(scope.get("extensions") or {})
        extensions[SESSION_KEY] = session
        extensions[STORE_KEY] = self.store
        scope["extensions"] = extensions
        if isinstance(scope.get("state"), dict):
            state = dict(scope["state"])
            state[STATE_SESSION_KEY] = session
            state[STATE_STORE_KEY] = self.store
            scope["state"] = state
        response = _ASGIResponse(send, session)
        try:
            await self.app(scope, receive, response.send)
        except Exception as exc:
            if _is_unavailable(exc) and not response.passed:
                log.warning("session unavailable: %s", exc)
                await response.unavailable(exc)
                return
            raise
        finally:
            await _shielded(session.aabort)


class _ASGIResponse:
    """The app's ``send``, holding the response head until the session is saved."""

    def __init__(self, send: Callable, session: Session) -> None:
        self.real_send = send
        self.session = session
        self.start: dict | None = None
        self.held: list[dict] = []
        self.held_size = 0
        self.passed = False

    async def send(self, message: dict) -> None:
        kind = message.get("type")
        if self.passed:
            if kind == "http.response.body" and not message.get("more_body", False):
                await self._save_late()
            await self.real_send(message)
            return
        if kind == "http.response.start":
            self.start = message
            return
        if kind != "http.response.body":
            await self.real_send(message)
            return
        self.held.append(message)
        self.held_size += len(message.get("body", b""))
        if not message.get("more_body", False):
            try:
                await self.session.asave()
            except Exception as exc:
                if not _is_unavailable(exc):
                    raise
                log.warning("session not saved: %s", exc)
            if self.session.unavailable:
                await self.unavailable(self.session.failure)
                return
            await self._pass()
        elif self.held_size > HOLD_LIMIT:
            await self._pass()

    async def _save_late(self) -> None:
        try:
            await self.session.asave()
        except Exception as exc:
            if not _is_unavailable(exc):
                raise
            log.warning("session not saved after the response started: %s", exc)

    async def _pass(self) -> None:
        if self.start is None:
            raise RuntimeError("the ASGI app sent a body before http.response.start")
        start = self.start
        cookie = self.session.cookie()
        if cookie is not None:
            start = dict(start)
            start["headers"] = [*start.get("headers", ()), (b"set-cookie", cookie.encode("latin-1"))]
        self.session.headers_sent = True
        self.passed = True
        await self.real_send(start)
        held, self.held = self.held, []
        for message in held:
            await self.real_send(message)

    async def unavailable(self, exc: BaseException | None) -> None:
        body = _failure_body(exc)
        status, headers = _unavailable_head(body)
        self.passed = True
        self.session.headers_sent = True
        await self.real_send({
            "type": "http.response.start",
            "status": int(status[:3]),
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
        })
        await self.real_send({"type": "http.response.body", "body": body})
