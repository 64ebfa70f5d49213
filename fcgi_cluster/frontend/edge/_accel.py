"""X-Accel-Redirect and X-Sendfile: a worker hands a file download to the front door.

The worker checks access, then answers with a header instead of the file:

* ``X-Accel-Redirect: /protected/report.pdf`` (nginx): a URI, matched
  against the routes as a request would be. It must land on a static route,
  usually one marked ``internal = true`` (which a client asking directly
  gets 404 from, as nginx's ``internal``). Its query, if any, is ignored.
* ``X-Sendfile: /srv/files/report.pdf`` (lighttpd, Apache mod_xsendfile): a
  filesystem path, honoured only below ``[frontend] sendfile_root``.

The file is then served as the static route serves any file, for the
client's request: ranges, If-None-Match / If-Modified-Since, HEAD, and the
Content-Type of the file unless the worker sent one (nginx keeps the
upstream's); the method becomes GET unless it was HEAD, as nginx's internal
redirect does. Of the worker's answer, the header fields nginx carries over
are kept (Content-Type, Content-Disposition, Set-Cookie, Cache-Control,
Expires); its status, body and every ``X-Accel-*`` field are dropped (the
last from every answer: ``_relay``).

Paths are checked before any route or file is looked at: a target holding
a NUL, a backslash, an encoded slash (``%2f``, ``%5c``), or a ``..``
segment (also as ``%2e%2e``) is 404, logged; so is one that lands on no
static route, or outside ``sendfile_root``. The static route's own checks
then apply (symlinks out of its root are 404, hidden files 404).

The handling is on only when the site has an internal route or a
``sendfile_root`` (``Accel.for_site``); otherwise the headers are dropped
and the worker's answer is sent as it is.
"""

from __future__ import annotations

import logging
import re
import typing
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from .._cgi import BadPath, normalize_path
from .._http import error_page
from .._static import send_static

__all__ = ["Accel", "accel_uri", "sendfile_path", "send_accel"]

log = logging.getLogger("fcgi_cluster.frontend")

#: The worker's header fields an X-Accel-Redirect answer keeps (nginx's list,
#: less Accept-Ranges, which the file's answer sets; Content-Type apart, as it
#: replaces the file's only when a file is sent).
INHERITED = frozenset({b"content-disposition", b"set-cookie", b"cache-control", b"expires"})

_ENCODED_SEPARATOR = re.compile(rb"%(?:2f|5c|00)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class _SendfileRoute:
    """The ``sendfile_root`` directory, in the shape ``send_static`` serves."""

    static: str
    prefix: None = None
    index: str = ""


class Accel:
    """A site's X-Accel-Redirect / X-Sendfile handling.

    Args:
        sendfile_root: the directory X-Sendfile paths must lie below; "" for X-Sendfile off.
    """

    __slots__ = ("sendfile_root",)

    def __init__(self, sendfile_root: str) -> None:
        self.sendfile_root = sendfile_root

    @classmethod
    def for_site(cls, config: typing.Any) -> Accel | None:
        """The handling a configuration asks for; None when it has no internal route and no sendfile_root."""
        root = config.frontend.sendfile_root
        if root or any(getattr(route, "internal", False) for route in config.routes):
            return cls(root)
        return None

    def target(self, response: typing.Any) -> tuple[bytes, bytes] | None:
        """The answer's (lower-cased header name, value) that hands it to the front door; None for an ordinary answer."""
        for name, value in response.raw_headers:
            if len(name) in (10, 16):  # the two names' lengths: most fields are passed over here
                lower = name.lower()
                if lower == b"x-accel-redirect" or (lower == b"x-sendfile" and self.sendfile_root):
                    return lower, value
        return None


def accel_uri(value: bytes) -> bytes | None:
    """The normalised path an X-Accel-Redirect value names; None when it is unsafe or not a path."""
    uri = value.strip().partition(b"?")[0]
    if not uri.startswith(b"/") or b"\0" in uri or b"\\" in uri or _ENCODED_SEPARATOR.search(uri):
        return None
    decoded = unquote_to_bytes(uri)
    if b"\0" in decoded or b"\\" in decoded or b".." in decoded.split(b"/"):
        return None
    try:
        return normalize_path(uri)
    except BadPath:
        return None


def sendfile_path(value: bytes, root: str) -> bytes | None:
    """The part below ``root`` of an X-Sendfile path; None when unsafe or outside it."""
    path = value.strip()
    base = root.encode("utf-8", "surrogateescape").rstrip(b"/")
    if not path.startswith(base + b"/") or b"\0" in path or b"\\" in path:
        return None
    rel = path[len(base):]
    if b".." in rel.split(b"/"):
        return None
    return rel


async def send_accel(conn: typing.Any, head: typing.Any, result: typing.Any, started: float) -> None:
    """Answer ``head`` with the file a worker's X-Accel-Redirect / X-Sendfile names (``result``: its answer).

    The worker's answer is finished first (its body, if any, is not sent; a
    request still sending one is aborted). The file's answer is logged.
    """
    site = conn.server.site
    response = result.response
    name, value = site.accel.target(response)
    kept = [(field, text) for field, text in response.raw_headers if field.lower() in INHERITED]
    types = [text for field, text in response.raw_headers if field.lower() == b"content-type"]
    result.finish(False, started)
    route: typing.Any = None
    path: bytes | None
    if name == b"x-accel-redirect":
        path = accel_uri(value)
        if path is not None:
            route = site.route_of(path)[1]
    else:
        path = sendfile_path(value, site.accel.sendfile_root)
        route = _SendfileRoute(site.accel.sendfile_root)
    if route is None or route.static is None or path is None:
        log.warning("upstream %s: %s %r names no file it may serve; 404", result.upstream.name, name.decode(),
                    value[:200])
        body = b"" if head.method == b"HEAD" else error_page(404)
        http = conn.http
        out = http.send_head(404, [(b"Content-Type", b"text/html")], content_length=len(error_page(404)))
        await conn.io.send(out + http.send_body(body) + http.send_end())
        status, sent = 404, len(body)
    else:
        method = head.method if head.method == b"HEAD" else b"GET"
        status, sent = await send_static(route, path, head._replace(method=method), conn.http, conn.io.send, extra=kept,
                                         content_type=types[-1] if types else None)
    conn.server.log_request(conn.remote_addr, head, status, sent, started)
