"""Shared sessions: a store client in every worker, interoperable with PHP."""

from typing import Any

from ._middleware import SESSION_KEY as SESSION_KEY
from ._middleware import STORE_KEY as STORE_KEY
from ._middleware import ASGISessionMiddleware as ASGISessionMiddleware
from ._middleware import WSGISessionMiddleware as WSGISessionMiddleware
from ._middleware import open_session_store as open_session_store
from ._middleware import session_middleware as session_middleware
from ._open import SAVE_HANDLERS as SAVE_HANDLERS
from ._open import open_store as open_store
from ._serializers import SerializationError as SerializationError
from ._serializers import Serializer as Serializer
from ._serializers import get_serializer as get_serializer
from ._serializers import php_serialize as php_serialize
from ._serializers import php_unserialize as php_unserialize
from ._session import Session as Session
from ._settings import SessionConfigError as SessionConfigError
from ._settings import SessionSettings as SessionSettings
from ._settings import parse_session_settings as parse_session_settings
from ._store import LockTimeout as LockTimeout
from ._store import LockToken as LockToken
from ._store import SessionStore as SessionStore
from ._store import StoreError as StoreError

__all__ = [
    "ASGISessionMiddleware",
    "ClusterSessionInterface",
    "LockTimeout",
    "LockToken",
    "SAVE_HANDLERS",
    "SESSION_KEY",
    "STORE_KEY",
    "SerializationError",
    "Serializer",
    "Session",
    "SessionConfigError",
    "SessionSettings",
    "SessionStore",
    "StoreError",
    "WSGISessionMiddleware",
    "get_serializer",
    "open_session_store",
    "open_store",
    "parse_session_settings",
    "php_serialize",
    "php_unserialize",
    "session_middleware",
]


def __getattr__(name: str) -> Any:
    # Flask is optional: its adapter is imported only when asked for.
    if name == "ClusterSessionInterface":
        from ._flask import ClusterSessionInterface

        return ClusterSessionInterface
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
