"""Find the app a worker serves: ``module:attribute``, and whether it is WSGI or ASGI."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any

__all__ = ["AppLoadError", "load_app", "app_interface"]


class AppLoadError(Exception):
    """The app named on the command line or in a config cannot be loaded."""


def load_app(spec: str) -> Any:
    """Import ``module:attribute`` (like gunicorn), from the current directory first.

    ``attribute`` may be dotted (``pkg.mod:factory.app``); without it, ``app``.

    Raises:
        AppLoadError: with a one-line reason (bad spec, import failure, no such name).
    """
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise AppLoadError(f"{spec!r}: expected module:attribute, e.g. workers.hello:app")
    attr = attr or "app"
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise AppLoadError(f"cannot import {module_name!r}: {exc}") from exc
    except Exception as exc:  # the app's own module failed while importing
        raise AppLoadError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise AppLoadError(f"{spec!r} is not callable: {type(obj).__name__}")
    return obj


def app_interface(app: Any) -> str:
    """"asgi" for an ASGI 3 app (an async callable), else "wsgi"."""
    if inspect.iscoroutinefunction(app):
        return "asgi"
    call = getattr(app, "__call__", None)
    if call is not None and inspect.iscoroutinefunction(call):
        return "asgi"
    return "wsgi"
