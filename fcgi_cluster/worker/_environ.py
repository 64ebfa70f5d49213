"""CGI params -> the WSGI environ and the ASGI scope (shared rules)."""

from __future__ import annotations

from typing import Mapping
from urllib.parse import unquote_to_bytes

__all__ = ["cgi_environ", "split_path"]


def cgi_environ(params: Mapping[bytes, bytes]) -> dict[str, str]:
    """The CGI variables as native strings (latin-1, lossless, as PEP 3333 asks)."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in params.items()}


def split_path(env: Mapping[str, str], root_path: str) -> tuple[str, str]:
    """(SCRIPT_NAME, PATH_INFO) for a Python app.

    A web server that splits the path itself (sends a non-empty PATH_INFO, as our
    front-end and ``fastcgi_split_path_info`` do) is trusted. nginx's stock
    ``fastcgi_params`` send the whole path as SCRIPT_NAME and no PATH_INFO, which
    would route every request of an app to "/": then the path is taken from
    REQUEST_URI and the app is mounted at ``root_path``.
    """
    path_info = env.get("PATH_INFO", "")
    if path_info:
        return env.get("SCRIPT_NAME", ""), path_info
    uri = env.get("REQUEST_URI")
    if uri is None:
        return "", env.get("SCRIPT_NAME", "")
    path = unquote_to_bytes(uri.partition("?")[0]).decode("latin-1")
    if root_path and (path == root_path or path.startswith(root_path + "/")):
        return root_path, path[len(root_path) :]
    return "", path
