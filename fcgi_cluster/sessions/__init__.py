"""Shared sessions: a store client in every worker, interoperable with PHP."""

from ._store import LockTimeout as LockTimeout
from ._store import LockToken as LockToken
from ._store import SessionStore as SessionStore
from ._store import StoreError as StoreError

__all__ = ["LockTimeout", "LockToken", "SessionStore", "StoreError"]
