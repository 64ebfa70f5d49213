"""The per-request session: a lazy mapping over one store, with its id, lock and cookie.

Life of a session in one request (the middleware drives the ends)::

    UNLOADED --first use--> LOADED --save()/end of request--> CLOSED
        \\                      \\--abort() (the app failed)--> CLOSED
         \\--store down, on_store_error = proceed--> DETACHED (empty, never saved)

- Nothing touches the store until the app first uses the session; an app that
  never does costs no round trip.
- The id comes from the cookie only if it looks like an id: ``[A-Za-z0-9,-]``,
  22 to 256 characters (PHP's rules). Anything else (garbage, 10 KB, other
  characters) gets a new id, without asking the store about it.
- First use: lock the id (when locking is on), read it. An id the store does not
  know gets a new id in strict mode (and its lock is let go at once).
- Saving: the data is serialized and compared with what was read (so changes
  inside nested values count); unchanged -> ``touch`` (lazy write), changed ->
  ``write``; then ids left behind by ``regenerate``/``invalidate`` are destroyed
  and the lock is released (in the same store call as the write or touch when
  no old id is left to destroy). A new session that stays empty is not stored and
  gets no cookie.
- ``save()``/``close()`` may be called early to let other requests of the same
  session run (PHP's ``session_write_close``); the data stays readable.

Error handling: ``StoreError`` and ``LockTimeout`` from the store reach the app
(which normally lets them through to the middleware: 503); with
``on_store_error = proceed`` a store failure on first use gives an empty,
detached session instead. ``failure`` keeps the store error either way, so the
middleware answers 503 even if the app swallowed it.
"""

from __future__ import annotations

import logging
import random
import re
import secrets
import time
from collections.abc import Generator, Iterator, MutableMapping
from email.utils import formatdate
from typing import Any, Awaitable, Callable

from ._serializers import Serializer, get_serializer
from ._settings import MAX_SID_LENGTH, MIN_SID_LENGTH, SessionSettings
from ._store import LockToken, SessionStore, StoreError

__all__ = ["Session", "new_session_id", "valid_session_id", "session_id_from_cookies"]

log = logging.getLogger("fcgi_cluster.sessions")

# PHP's alphabet for ids (ext/session bin_to_readable): 4 bits per character use
# the first 16, 5 bits the first 32, 6 bits all 64.
_SID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ,-"
# What PHP accepts as an id (php_session_valid_key), with its length bounds.
_VALID_SID = re.compile(r"[A-Za-z0-9,-]{%d,%d}" % (MIN_SID_LENGTH, MAX_SID_LENGTH))
# A Cookie header longer than this is not looked into (browsers send at most ~8 KB).
MAX_COOKIE_HEADER = 16 * 1024

_UNLOADED, _LOADED, _DETACHED, _CLOSED = "unloaded", "loaded", "detached", "closed"

#: Loading, saving and unlocking are written once, as generators of the store
#: calls they need: each yields ``(method name, args, kwargs)`` and is sent the
#: result (or thrown its exception). ``Session._run`` makes the calls on the
#: blocking store, ``Session._arun`` awaits them on a loop store.
_Steps = Generator[tuple[str, tuple, dict], Any, None]


def new_session_id(settings: SessionSettings) -> str:
    """A fresh id: ``sid_length`` characters of ``sid_bits_per_character`` bits from ``secrets``."""
    alphabet = _SID_ALPHABET[: 1 << settings.sid_bits_per_character]
    return "".join(secrets.choice(alphabet) for _ in range(settings.sid_length))


def valid_session_id(sid: str) -> bool:
    """Whether ``sid`` may be looked up in a store: PHP's charset, 22-256 characters."""
    return _VALID_SID.fullmatch(sid) is not None


def session_id_from_cookies(header: str | None, name: str) -> str | None:
    """The first cookie called ``name`` in a ``Cookie`` header, if it is a valid id.

    Returns:
        The id, or None when there is no such cookie or its value is not a valid
        id (malformed, too long, other characters): the caller starts a new session.
    """
    if not header or len(header) > MAX_COOKIE_HEADER:
        return None
    for part in header.split(";"):
        key, eq, value = part.partition("=")
        if eq and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            # The first one wins, as in PHP: a second cookie of the same name is
            # usually a stale one with a narrower path.
            return value if valid_session_id(value) else None
    return None


class Session(MutableMapping[str, Any]):
    """One request's session: a mapping loaded from the store on first use.

    Args:
        store: the worker's store client.
        settings: the pool's session settings.
        cookie_header: the request's ``Cookie`` header (None when absent).
        async_mode: True for ASGI apps: the session then never blocks the event
            loop; the app calls ``await session.aload()`` before using it, and
            sync access to an unloaded session raises ``RuntimeError``.
        run_sync: how ``aload``/``asave``/``aabort`` run blocking store calls in
            a thread (None: they block).
        loop_store: the store's client on the running trio loop (its methods are
            the store's, as coroutines); ``aload``/``asave``/``aabort`` then use
            it instead of a thread.

    Attributes:
        failure: the store error met, if any (the middleware answers 503 for it).
        headers_sent: set by the middleware once the response's headers left;
            the id can no longer change afterwards.
    """

    def __init__(
        self,
        store: SessionStore,
        settings: SessionSettings,
        cookie_header: str | None,
        *,
        async_mode: bool = False,
        run_sync: Callable[[Callable[[], Any]], Awaitable[Any]] | None = None,
        loop_store: Any = None,
    ) -> None:
        self._store = store
        self._loop_store = loop_store
        self._settings = settings
        self._serializer: Serializer = get_serializer(settings.serialize_handler)
        self._incoming = session_id_from_cookies(cookie_header, settings.name)
        self._cookie_present = bool(cookie_header) and f"{settings.name}=" in cookie_header
        self._async = async_mode
        self._run_sync = run_sync
        self._state = _UNLOADED
        self._sid: str | None = None
        self._data: dict[str, Any] = {}
        self._read: bytes | None = None  # what the store held; None = nothing
        self._new = False
        self._token: LockToken | None = None
        self._locked_sid: str | None = None
        self._doomed: list[str] = []  # ids to destroy at save (regenerate, invalidate)
        self._invalidated = False
        self.failure: StoreError | None = None
        self.headers_sent = False

    # --- loading ------------------------------------------------------------

    @property
    def incoming_id(self) -> str | None:
        """The session id the request's cookie names (valid in form), or None: loading then reads nothing."""
        return self._incoming

    @property
    def loaded(self) -> bool:
        """Whether the session was used in this request (no store call made to answer)."""
        return self._state != _UNLOADED

    def load(self) -> None:
        """Read the session now (lock it first when locking is on); no-op once loaded.

        Raises:
            LockTimeout: another request holds the lock past ``lock_wait``.
            StoreError: the store failed (``on_store_error = fail``).
            SerializationError: the stored data is not in the configured format.
            RuntimeError: called from an ASGI app (use ``await aload()``).
        """
        if self._state == _UNLOADED:
            if self._async:
                raise RuntimeError("in an ASGI app, `await session.aload()` before using the session")
            self._load()

    async def aload(self) -> None:
        """``load()`` without blocking the loop: on the loop store, else in a thread."""
        if self._state == _UNLOADED:
            await self._acall(self._load_steps)

    def _load(self) -> None:
        self._run(self._load_steps())

    def _load_steps(self) -> _Steps:
        sid = self._incoming
        if sid is None:
            self._start_new()
            return
        settings = self._settings
        try:
            if settings.lock:
                self._token, raw = yield ("lock_and_read", (sid,), {
                    "expire": settings.lock_expire, "wait": settings.lock_wait,
                    "retry_interval": settings.lock_retry_interval,
                })
                self._locked_sid = sid
            else:
                raw = yield ("read", (sid,), {})
        except StoreError as exc:
            yield from self._release_steps()
            self._fail(exc)
            return
        except BaseException:
            yield from self._release_steps()
            raise
        if raw is None and settings.use_strict_mode:
            # An id nobody issued (or long expired): never adopt it.
            yield from self._release_steps()
            self._start_new()
            return
        try:
            data = self._serializer.loads(raw or b"")
        except BaseException:
            yield from self._release_steps()
            raise
        self._sid = sid
        self._data = data
        self._read = raw
        self._state = _LOADED

    def _start_new(self) -> None:
        self._sid = new_session_id(self._settings)
        self._data = {}
        self._read = None
        self._new = True
        self._state = _LOADED

    def _fail(self, exc: StoreError) -> None:
        self.failure = exc
        if self._settings.on_store_error == "proceed":
            log.warning("session store unavailable, serving without a session: %s", exc)
            self._sid = self._incoming or new_session_id(self._settings)
            self._data = {}
            self._state = _DETACHED
            return
        self._state = _CLOSED
        raise exc

    def _loaded(self) -> dict[str, Any]:
        if self._state == _UNLOADED:
            self.load()
        return self._data

    def _writable(self) -> dict[str, Any]:
        data = self._loaded()
        if self._state == _CLOSED:
            raise RuntimeError("the session was already saved in this request; changes would be lost")
        return data

    # --- the mapping ----------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self._loaded()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._writable()[key] = value

    def __delitem__(self, key: str) -> None:
        del self._writable()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaded())

    def __len__(self) -> int:
        return len(self._loaded())

    def __repr__(self) -> str:
        if self._state == _UNLOADED:
            return "<Session (not loaded)>"
        return f"<Session {self._state} {len(self._data)} keys>"

    @property
    def unavailable(self) -> bool:
        """Whether the request must be answered 503: the store failed and ``on_store_error = fail``."""
        return self.failure is not None and self._settings.on_store_error == "fail"

    @property
    def id(self) -> str:
        """The session's id (loads the session: in strict mode it may change)."""
        self._loaded()
        assert self._sid is not None
        return self._sid

    @property
    def is_new(self) -> bool:
        """Whether this session was started by this request (loads the session)."""
        self._loaded()
        return self._new

    # --- id changes -------------------------------------------------------------

    def regenerate(self, *, delete_old: bool = True) -> str:
        """Give the session a new id, keeping its data (after a login: fixation defence).

        Args:
            delete_old: destroy the old id's data at save (PHP's
                ``session_regenerate_id(true)``).

        Returns:
            The new id.

        Raises:
            RuntimeError: the response's headers are already out (the cookie
                could not carry the new id), or the session was saved.
        """
        self._writable()
        self._check_headers()
        old = self._sid
        if delete_old and old is not None and not self._new:
            self._doomed.append(old)
        self._sid = new_session_id(self._settings)
        self._new = False
        self._read = None  # the new id has nothing stored: always written
        return self._sid

    def invalidate(self) -> None:
        """Destroy the session (at save) and continue with a new, empty one (logout).

        Raises:
            RuntimeError: as ``regenerate``.
        """
        self._writable()
        self._check_headers()
        if self._sid is not None and not self._new:
            self._doomed.append(self._sid)
        self._invalidated = True
        self._start_new()

    def _check_headers(self) -> None:
        if self.headers_sent:
            raise RuntimeError("cannot change the session id: the response's headers were already sent")

    # --- saving -----------------------------------------------------------------

    def save(self) -> None:
        """Store the session now and release its lock; it stays readable (no-op if never used).

        Raises:
            StoreError: the store failed (``on_store_error = fail``; with
                ``proceed`` it is logged and kept in ``failure``).
            SerializationError: a value the format cannot hold.
        """
        if self._state == _LOADED:
            self._commit()
        elif self._state == _DETACHED:
            self._state = _CLOSED

    #: PHP's name for it: ``session_write_close``.
    close = save

    async def asave(self) -> None:
        """``save()`` without blocking the loop: on the loop store, else in a thread."""
        if self._state == _LOADED:
            await self._acall(self._commit_steps)
        elif self._state == _DETACHED:
            self._state = _CLOSED

    def abort(self) -> None:
        """Drop this request's changes and release the lock (PHP's ``session_abort``)."""
        if self._state in (_LOADED, _DETACHED):
            self._state = _CLOSED
            self._release_lock()

    async def aabort(self) -> None:
        """``abort()`` without blocking the loop: on the loop store, else in a thread."""
        if self._state in (_LOADED, _DETACHED):
            self._state = _CLOSED
            await self._acall(self._release_steps)

    def _commit(self) -> None:
        self._run(self._commit_steps())

    def _commit_steps(self) -> _Steps:
        settings = self._settings
        sid = self._sid
        assert sid is not None
        try:
            data = self._serializer.dumps(self._data)
        except BaseException:
            self._state = _CLOSED
            yield from self._release_steps()
            raise
        self._state = _CLOSED
        token = self._token
        # Saving and unlocking in one store call is safe only when the lock is
        # this id's and no old id waits to be destroyed: the old id's lock must
        # be held until its data is gone, or a waiting request could read the
        # old data and write it back.
        together = token is not None and self._locked_sid == sid and not self._doomed
        ttl = settings.gc_maxlifetime
        try:
            if self._new and not self._data:
                pass  # never stored, nothing to keep
            elif data != self._read or not settings.lazy_write:
                if together:
                    yield ("write_and_release", (sid, data, ttl, token), {})
                    self._token = self._locked_sid = None
                else:
                    yield ("write", (sid, data, ttl), {})
            elif together:
                yield ("touch_and_release", (sid, ttl, token), {})
                self._token = self._locked_sid = None
            else:
                yield ("touch", (sid, ttl), {})
            for old in self._doomed:
                yield ("destroy", (old,), {})
            if settings.gc_probability and random.randrange(settings.gc_divisor) < settings.gc_probability:
                try:
                    removed = yield ("gc", (ttl,), {})
                except StoreError as exc:
                    log.warning("session garbage collection failed: %s", exc)
                else:
                    if removed:
                        log.info("session garbage collection removed %d sessions", removed)
        except StoreError as exc:
            self.failure = exc
            if settings.on_store_error == "fail":
                raise
            log.warning("session store unavailable, session not saved: %s", exc)
        finally:
            yield from self._release_steps()
        self._read = data

    def _release_lock(self) -> None:
        self._run(self._release_steps())

    def _release_steps(self) -> _Steps:
        token, sid = self._token, self._locked_sid
        self._token = self._locked_sid = None
        if token is not None and sid is not None:
            try:
                yield ("release_lock", (sid, token), {})
            except StoreError as exc:
                # The lock expires by itself after lock_expire.
                log.warning("session lock not released: %s", exc)

    # --- running the steps against a store ----------------------------------------

    def _run(self, steps: _Steps) -> None:
        """Drive ``steps`` with the blocking store: each store call they ask for is made here."""
        store = self._store
        resume, value = steps.send, None
        while True:
            try:
                name, args, kwargs = resume(value)
            except StopIteration:
                return
            try:
                value, resume = getattr(store, name)(*args, **kwargs), steps.send
            except BaseException as exc:
                value, resume = exc, steps.throw

    async def _arun(self, steps: _Steps) -> None:
        """``_run`` with the loop store: its calls are awaited on the event loop."""
        store = self._loop_store
        resume, value = steps.send, None
        while True:
            try:
                name, args, kwargs = resume(value)
            except StopIteration:
                return
            try:
                value, resume = await getattr(store, name)(*args, **kwargs), steps.send
            except BaseException as exc:
                value, resume = exc, steps.throw

    async def _acall(self, steps: Callable[[], _Steps]) -> None:
        """Run the steps that ``steps()`` makes without blocking the loop: on the
        loop store when there is one, else with the blocking store in a thread."""
        if self._loop_store is not None:
            await self._arun(steps())
        elif self._run_sync is None:
            self._run(steps())
        else:
            await self._run_sync(lambda: self._run(steps()))

    # --- the cookie -------------------------------------------------------------

    def cookie(self) -> str | None:
        """The ``Set-Cookie`` value this response needs, or None.

        A cookie is sent when the id the browser must use changed (new session
        with data, regenerate), to delete it after ``invalidate()`` of a session
        left empty, and on every use when ``cookie_lifetime`` is set (to slide it).
        """
        settings = self._settings
        if self._state in (_UNLOADED, _DETACHED) or self.failure is not None or self._sid is None:
            return None
        if self._new and not self._data:
            if self._invalidated and self._cookie_present:
                return self._cookie_text("deleted", delete=True)
            return None
        if self._sid != self._incoming or settings.cookie_lifetime:
            return self._cookie_text(self._sid)
        return None

    def _cookie_text(self, value: str, *, delete: bool = False) -> str:
        settings = self._settings
        parts = [f"{settings.name}={value}"]
        if delete:
            parts.append("Expires=Thu, 01 Jan 1970 00:00:01 GMT; Max-Age=0")
        elif settings.cookie_lifetime:
            expires = formatdate(time.time() + settings.cookie_lifetime, usegmt=True)
            parts.append(f"Expires={expires}; Max-Age={settings.cookie_lifetime}")
        if settings.cookie_path:
            parts.append(f"Path={settings.cookie_path}")
        if settings.cookie_domain:
            parts.append(f"Domain={settings.cookie_domain}")
        if settings.cookie_secure:
            parts.append("Secure")
        if settings.cookie_httponly:
            parts.append("HttpOnly")
        if settings.cookie_samesite:
            parts.append(f"SameSite={settings.cookie_samesite}")
        return "; ".join(parts)
