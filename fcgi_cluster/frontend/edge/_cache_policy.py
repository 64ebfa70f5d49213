"""The response cache's rules, sans-IO: keys, bypass, freshness, Vary and stale answers.

Given a request head, a worker's status and headers and the clock, these
functions answer what the cache does; the store (``_cache_store``) keeps
entries and the glue (``_cache_serve``) moves bytes. The rules are nginx's
``fastcgi_cache``:

* Only GET and HEAD are cached; a HEAD is answered from (and fills) the GET
  entry, as nginx's ``fastcgi_cache_convert_head``.
* Freshness, first that speaks: ``X-Accel-Expires`` (seconds, ``@`` a Unix
  time, 0 not cached), then ``Cache-Control`` (``no-store``, ``no-cache``,
  ``private`` not cached; ``s-maxage`` over ``max-age``), then ``Expires``,
  then the route's ``valid`` by status. Nothing said: not cached. Each can be
  silenced by ``ignore_headers``.
* 206, 304, 412 and 416 (answers to one client's Range or condition) are
  never cached.
* An answer with ``Set-Cookie`` is not cached (unless ``Set-Cookie`` is
  ignored: it is then cached without the header, so one client's cookie never
  reaches another). ``Vary: *`` is not cached; other ``Vary`` names make the
  request's values of those headers part of the key.
* A bypass value (cookie, header or argument) present, non-empty and not "0"
  skips the lookup; the answer is still stored, as nginx's ``cache_bypass``.
"""

from __future__ import annotations

import email.utils
import hashlib
import re
from urllib.parse import parse_qsl

from ._cache_config import CacheConfig

__all__ = [
    "MISS", "HIT", "EXPIRED", "STALE", "UPDATING", "BYPASS", "CACHED_METHODS",
    "request_key", "bypassed", "freshness", "vary_names", "variant_key", "stale_on_failure", "stale_on_status",
    "stored_headers", "key_hash", "not_modified", "NOT_MODIFIED_HEADERS",
]  # fmt: skip

MISS, HIT, EXPIRED, STALE, UPDATING, BYPASS = b"MISS", b"HIT", b"EXPIRED", b"STALE", b"UPDATING", b"BYPASS"
#: Methods answered from the cache.
CACHED_METHODS = frozenset({b"GET", b"HEAD"})

_DIRECTIVE = re.compile(rb"\s*([A-Za-z-]+)\s*(?:=\s*\"?(\d+)\"?)?\s*")
_NOT_CACHED = frozenset({b"no-store", b"no-cache", b"private"})
#: Statuses answering one client's own condition or range, never another's: never stored.
_ONE_CLIENTS = frozenset({206, 304, 412, 416})
#: Headers that belong to one answer only: never stored (Date: each answer from the cache gets its own).
_NOT_STORED = frozenset({b"set-cookie", b"x-accel-expires", b"date"})


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of a (lower-case) header name; names compared case-blind."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _cookie(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == b"cookie":
            for pair in value.split(b";"):
                left, eq, right = pair.strip().partition(b"=")
                if eq and left == name:
                    return right
    return None


def _arg(query: bytes, name: str) -> bytes | None:
    for left, right in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if left == name:
            return right.encode("latin-1")
    return None


def _host(headers: list[tuple[bytes, bytes]]) -> bytes:
    """nginx's $host: the Host header lower-cased, without its port."""
    host = (_header(headers, b"host") or b"").lower()
    if host.startswith(b"["):
        return host.partition(b"]")[0] + b"]"
    return host.rpartition(b":")[0] if b":" in host else host


def request_key(config: CacheConfig, head: object, scheme: bytes, remote_addr: bytes = b"") -> bytes:
    """The cache key of a request (``config.key`` filled in), as bytes.

    Args:
        head: a ``RequestHead``.
        scheme: b"http" or b"https".
    """
    headers = head.headers  # type: ignore[attr-defined]
    out = []
    for kind, name in config.key:
        if kind == "text":
            out.append(name.encode("utf-8", "surrogateescape"))
        elif kind == "scheme":
            out.append(scheme)
        elif kind == "host":
            out.append(_host(headers))
        elif kind == "request_uri":
            out.append(head.target)  # type: ignore[attr-defined]
        elif kind == "uri":
            out.append(head.path)  # type: ignore[attr-defined]
        elif kind == "args":
            out.append(head.query)  # type: ignore[attr-defined]
        elif kind == "request_method":
            out.append(b"GET")  # HEAD shares GET's entry
        elif kind == "remote_addr":
            out.append(remote_addr)
        elif kind == "http":
            out.append(_header(headers, name.replace("_", "-").encode("latin-1")) or b"")
        elif kind == "cookie":
            out.append(_cookie(headers, name.encode("latin-1")) or b"")
        else:
            out.append(_arg(head.query, name) or b"")  # type: ignore[attr-defined]
    return b"".join(out)


def key_hash(key: bytes) -> str:
    """A key's name on disk: its SHA-256, hex (any key, of any length or byte, maps to 64 safe characters)."""
    return hashlib.sha256(key).hexdigest()


def bypassed(config: CacheConfig, head: object) -> bool:
    """Whether the request skips the lookup: a bypass value present, non-empty and not "0"."""
    for kind, name in config.bypass:
        if kind == "cookie":
            value = _cookie(head.headers, name.encode("latin-1"))  # type: ignore[attr-defined]
        elif kind == "header":
            value = _header(head.headers, name.encode("latin-1"))  # type: ignore[attr-defined]
        else:
            value = _arg(head.query, name)  # type: ignore[attr-defined]
        if value is not None and value not in (b"", b"0"):
            return True
    return False


def freshness(config: CacheConfig, status: int, headers: list[tuple[bytes, bytes]], now: float) -> float | None:
    """Seconds the worker's answer stays fresh from ``now``; None when it must not be cached.

    Args:
        headers: the answer's header fields, (name, value), any case.
        now: the wall clock, ``time.time()``.
    """
    if status in _ONE_CLIENTS:
        return None
    ignore = config.ignore_headers
    if "set-cookie" not in ignore and _header(headers, b"set-cookie") is not None:
        return None
    if "vary" not in ignore and vary_names(headers) is None:
        return None
    if "x-accel-expires" not in ignore:
        value = _header(headers, b"x-accel-expires")
        if value is not None:
            value = value.strip()
            if value.startswith(b"@") and value[1:].isdigit():
                left = int(value[1:]) - now
                return left if left > 0 else None
            if value.isdigit():
                return int(value) or None
    if "cache-control" not in ignore:
        seen = False
        s_maxage = max_age = None
        for key, value in headers:
            if key.lower() != b"cache-control":
                continue
            seen = True
            for part in value.split(b","):
                match = _DIRECTIVE.fullmatch(part)
                if match is None:
                    continue
                word = match.group(1).lower()
                if word in _NOT_CACHED:
                    return None
                if match.group(2) is not None:
                    if word == b"s-maxage":
                        s_maxage = int(match.group(2))
                    elif word == b"max-age":
                        max_age = int(match.group(2))
        if seen and (s_maxage is not None or max_age is not None):
            seconds = s_maxage if s_maxage is not None else max_age
            return seconds or None
    if "expires" not in ignore:
        value = _header(headers, b"expires")
        if value is not None:
            try:
                when = email.utils.parsedate_to_datetime(value.decode("latin-1")).timestamp()
            except (TypeError, ValueError, IndexError, OverflowError):
                return None  # an invalid date means "already expired" (RFC 9111 5.3)
            left = when - now
            return left if left > 0 else None
    for code, seconds in config.valid:
        if code == status or code == 0:
            return seconds or None
    return None


def vary_names(headers: list[tuple[bytes, bytes]]) -> tuple[bytes, ...] | None:
    """The request header names an answer varies on, lower-cased and sorted; None for ``Vary: *``."""
    names: set[bytes] = set()
    for key, value in headers:
        if key.lower() == b"vary":
            for name in value.split(b","):
                name = name.strip().lower()
                if name == b"*":
                    return None
                if name:
                    names.add(name)
    return tuple(sorted(names))


def variant_key(key: bytes, names: tuple[bytes, ...], request_headers: list[tuple[bytes, bytes]]) -> bytes:
    """The key of one variant of ``key``: the request's values of the ``Vary`` names appended.

    Repeated headers are joined as one value (in order), so ``a, b`` and two
    headers ``a`` and ``b`` are the same variant.
    """
    parts = [key, b"vary"]
    for name in names:
        values = [value for field, value in request_headers if field == name]
        parts.append(name + b"=" + b", ".join(values))
    return b"\0".join(parts)


def stale_on_failure(config: CacheConfig, status: int) -> bool:
    """Whether an upstream failure answered ``status`` (502/503 error, 504 timeout) may be met by a stale entry."""
    return ("timeout" if status == 504 else "error") in config.use_stale


def stale_on_status(config: CacheConfig, status: int) -> bool:
    """Whether a worker's answer with ``status`` may be replaced by a stale entry (``http_NNN``)."""
    return bool(config.use_stale) and f"http_{status}" in config.use_stale


def stored_headers(headers: list[tuple[bytes, bytes]]) -> tuple[tuple[bytes, bytes], ...]:
    """The header fields an entry keeps: the answer's but those of one answer only (Set-Cookie, X-Accel-Expires, Date)."""
    return tuple((name, value) for name, value in headers if name.lower() not in _NOT_STORED)


#: The header fields a 304 from the cache repeats of its entry (RFC 9110 15.4.5).
NOT_MODIFIED_HEADERS = frozenset({b"etag", b"last-modified", b"cache-control", b"expires", b"vary", b"content-location", b"date"})


def _etags(value: bytes) -> list[bytes]:
    return [tag.strip().removeprefix(b"W/") for tag in value.split(b",") if tag.strip()]


def not_modified(request_headers: list[tuple[bytes, bytes]], status: int, headers: tuple[tuple[bytes, bytes], ...]) -> bool:
    """Whether a cached 200 answers a conditional GET/HEAD with 304 (RFC 9110 13.2.2).

    ``If-None-Match`` (weak comparison, ``*`` any) decides when sent; else
    ``If-Modified-Since`` against the entry's ``Last-Modified``.
    """
    if status != 200:
        return False
    match = _header(request_headers, b"if-none-match")
    etag = _header(list(headers), b"etag")
    if match is not None:
        if match.strip() == b"*":
            return True
        return etag is not None and etag.strip().removeprefix(b"W/") in _etags(match)
    since = _header(request_headers, b"if-modified-since")
    modified = _header(list(headers), b"last-modified")
    if since is None or modified is None:
        return False
    try:
        asked = email.utils.parsedate_to_datetime(since.decode("latin-1"))
        changed = email.utils.parsedate_to_datetime(modified.decode("latin-1"))
        return changed <= asked
    except (TypeError, ValueError, IndexError, OverflowError):
        return False
