"""A Flask ``SessionInterface`` that puts ``flask.session`` in the cluster's store.

Usage, in the app served by ``fcgi-cluster worker`` with ``--session ...``::

    from fcgi_cluster.sessions import ClusterSessionInterface
    app = flask.Flask(__name__)
    app.session_interface = ClusterSessionInterface()

``flask.session`` is then the worker's per-request ``Session`` (through a thin
``SessionMixin`` view): loaded on first use, locked, saved and given its cookie
by the session middleware, so Flask's own cookie and ``secret_key`` play no part.
``session.regenerate()`` and ``session.invalidate()`` work as on ``Session``.

Flask is an optional dependency: importing this module needs it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask.sessions import SessionInterface, SessionMixin

from ._middleware import SESSION_KEY
from ._session import Session

__all__ = ["ClusterSessionInterface", "FlaskSession"]


class FlaskSession(SessionMixin):
    """``flask.session``: a view of the request's cluster ``Session``.

    Attributes:
        session: the underlying ``Session`` (for ``regenerate``, ``invalidate``, ``save``).
    """

    def __init__(self, session: Session) -> None:
        self.session = session

    def __getitem__(self, key: str) -> Any:
        return self.session[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.session[key] = value

    def __delitem__(self, key: str) -> None:
        del self.session[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.session)

    def __len__(self) -> int:
        return len(self.session)

    # Flask's SessionMixin flags (``accessed`` and ``modified`` are plain
    # attributes Flask sets): the cluster session tracks changes itself, by
    # comparing the serialized data, so they decide nothing here.
    @property
    def new(self) -> bool:  # type: ignore[override]
        return self.session.is_new

    def regenerate(self, *, delete_old: bool = True) -> str:
        """See ``Session.regenerate``."""
        return self.session.regenerate(delete_old=delete_old)

    def invalidate(self) -> None:
        """See ``Session.invalidate``."""
        self.session.invalidate()

    def save(self) -> None:
        """See ``Session.save`` (releases the lock early)."""
        self.session.save()


class ClusterSessionInterface(SessionInterface):
    """Flask's session interface backed by the cluster's session middleware."""

    def open_session(self, app: Any, request: Any) -> FlaskSession:
        """The request's cluster session, as Flask's session object.

        Raises:
            RuntimeError: the app does not run behind the session middleware
                (a worker started without session settings).
        """
        session = request.environ.get(SESSION_KEY)
        if session is None:
            raise RuntimeError(
                "no cluster session in the WSGI environ: run the app in fcgi-cluster worker "
                "with session settings (--session ...), or wrap it in WSGISessionMiddleware"
            )
        return FlaskSession(session)

    def save_session(self, app: Any, session: Any, response: Any) -> None:
        """Nothing: the middleware saves the session and sets its cookie after the response."""
