"""A Django session engine over the cluster's session store.

Usage, in the settings of a Django project served by ``fcgi-cluster worker``
with session settings (``--session ...`` or the pool's ``session.*`` keys)::

    SESSION_ENGINE = "fcgi_cluster.sessions.django"
    SESSION_COOKIE_NAME = "PHPSESSID"   # the pool's session.name

``request.session`` is then a view of the request's cluster ``Session``: the
same store, id, lock, format (``session.serialize_handler``) and cookie as the
Flask, plain WSGI and PHP pages of the cluster, so a login made by
``django.contrib.auth`` on one pool is seen on every other. The cluster's
middleware loads the session on first use (locking it when ``session.lock`` is
on), saves it once the response is complete, releases the lock and sets the
cookie; Django's own ``save()`` has nothing left to do, and ``modified`` is
always False (Django's middleware then adds no second cookie).

What Django's API does here:

- ``cycle_key()`` (called by ``login``): ``Session.regenerate()``, the old id
  destroyed at save.
- ``flush()`` (``logout``): ``Session.invalidate()``.
- ``exists(key)``, ``delete(key)`` of another id: the store directly.
- ``set_expiry``/``get_expiry_age``: Django's ``_session_expiry`` key in the
  data, as with every engine; the store's own expiry is the pool's
  ``session.gc_maxlifetime``.

Data: with the ``php`` or ``php_serialize`` formats a value must be one PHP can
hold (str, int, float, bool, None, lists and dicts of them); ``django.contrib.auth``
stores only strings. Django's ``SESSION_SERIALIZER`` plays no part.

Limits: WSGI only (the engine finds the request's session through the WSGI
middleware); under ASGI or outside the worker it raises ``ImproperlyConfigured``.
"""

from __future__ import annotations

from typing import Any

from django.contrib.sessions.backends.base import SessionBase
from django.core.exceptions import ImproperlyConfigured

from ._middleware import SESSION_KEY, STORE_KEY, current_environ
from ._session import Session, valid_session_id

__all__ = ["SessionStore"]


def _request_environ() -> dict:
    environ = current_environ.get()
    if environ is None or SESSION_KEY not in environ:
        raise ImproperlyConfigured(
            "fcgi_cluster.sessions.django needs the cluster's session middleware: serve the "
            "project with `fcgi-cluster worker` (WSGI) and session settings (--session ...)"
        )
    return environ


class SessionStore(SessionBase):
    """``request.session``: Django's session API over the request's cluster ``Session``.

    Args:
        session_key: the id Django read from its cookie; the cluster session's
            own id (from the pool's ``session.name`` cookie) is the one used.

    Raises:
        ImproperlyConfigured: no cluster session in this request (see the module's "Limits").
    """

    def __init__(self, session_key: str | None = None) -> None:
        environ = _request_environ()
        self._cluster: Session = environ[SESSION_KEY]
        self._store = environ[STORE_KEY]
        super().__init__(session_key)

    # The data is the cluster session itself: no copy to keep in step.
    def _get_session(self, no_load: bool = False) -> Any:
        self.accessed = True
        return self._cluster

    _session = property(_get_session)

    async def _aget_session(self, no_load: bool = False) -> Any:
        return self._get_session(no_load)

    @property
    def _session_cache(self) -> Any:  # type: ignore[override]
        return self._cluster

    # The id is the cluster session's; Django's assignments (in __init__,
    # flush) are ignored: regenerate/invalidate change it.
    def _get_session_key(self) -> str | None:
        if not self._cluster.loaded and not self._cluster_cookie():
            return None
        return self._cluster.id

    def _set_session_key(self, value: str | None) -> None:
        pass

    session_key = property(_get_session_key)
    _session_key = property(_get_session_key, _set_session_key)

    # Django's SessionMiddleware saves and sets its cookie when ``modified``:
    # here the cluster's middleware does both (it sees changes by comparing the
    # serialized data, nested ones included), so ``modified`` stays False and
    # the response carries one Set-Cookie only.
    @property
    def modified(self) -> bool:
        return False

    @modified.setter
    def modified(self, value: bool) -> None:
        pass

    def _cluster_cookie(self) -> bool:
        # Whether the request came with a usable id (no store call to know it).
        return self._cluster._incoming is not None

    def clear(self) -> None:
        self._cluster.clear()
        self.accessed = True

    def is_empty(self) -> bool:
        if not self._cluster.loaded:
            return not self._cluster_cookie()
        return len(self._cluster) == 0

    def cycle_key(self) -> None:
        self._cluster.regenerate()

    async def acycle_key(self) -> None:
        self.cycle_key()

    def flush(self) -> None:
        self._cluster.invalidate()
        self.accessed = True

    async def aflush(self) -> None:
        self.flush()

    # --- SessionBase's backend methods ------------------------------------------

    def load(self) -> dict[str, Any]:
        return dict(self._cluster)

    def exists(self, session_key: str) -> bool:
        if not valid_session_id(session_key):
            return False
        return self._store.exists(session_key)

    def create(self) -> None:
        """A new id for this request's session (it is stored at save if it holds anything)."""
        self._cluster.regenerate()

    def save(self, must_create: bool = False) -> None:
        """Nothing now: the cluster's middleware saves the session after the response."""

    def delete(self, session_key: str | None = None) -> None:
        if session_key is None or (self._cluster.loaded and session_key == self._cluster.id):
            self._cluster.invalidate()
        elif valid_session_id(session_key):
            self._store.destroy(session_key)

    @classmethod
    def clear_expired(cls) -> None:
        """Nothing: the store expires sessions itself (``session.gc_maxlifetime``)."""
