"""Shared sessions: a store client in every worker, interoperable with PHP."""

from ._open import SAVE_HANDLERS as SAVE_HANDLERS
from ._open import open_store as open_store
from ._store import LockTimeout as LockTimeout
from ._store import LockToken as LockToken
from ._store import SessionStore as SessionStore
from ._store import StoreError as StoreError

__all__ = ["LockTimeout", "LockToken", "SAVE_HANDLERS", "SessionStore", "StoreError", "open_store"]
