"""A route's response cache settings: the ``[route.cache]`` table, nginx's ``fastcgi_cache_*`` names.

``CACHE`` is the table's schema (the reader checks keys against it, the
README's reference documents it); ``CacheConfig`` is what it reads into.
Converters raise ``ValueError`` with the reason, which the reader shows
after the file, line and key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..._settings import Key, choice, duration, integer, parse_duration, show, size, typed_boolean

__all__ = ["CACHE", "CacheConfig", "STALE_REASONS", "IGNORABLE_HEADERS", "KEY_VARIABLES", "parse_key"]

#: When a stale entry may be served (nginx's ``fastcgi_cache_use_stale``).
STALE_REASONS = (
    "error", "timeout", "updating", "http_500", "http_502", "http_503", "http_504", "http_403", "http_404", "http_429",
)  # fmt: skip
#: Worker headers whose say on caching can be ignored (nginx's ``fastcgi_ignore_headers``).
IGNORABLE_HEADERS = ("X-Accel-Expires", "Expires", "Cache-Control", "Set-Cookie", "Vary")
#: Variables of a cache key; ``$http_NAME``, ``$cookie_NAME`` and ``$arg_NAME`` besides.
KEY_VARIABLES = ("scheme", "host", "request_uri", "uri", "args", "request_method", "remote_addr")
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
_NAMED = re.compile(r"(http|cookie|arg)_(\w+)")
_BYPASS = re.compile(r"(cookie|header|arg):(.+)")

#: One part of a key: ("text", literal) or (variable, name or "").
KeyPart = tuple[str, str]


def parse_key(value: object) -> tuple[KeyPart, ...]:
    """A cache key template, ``"$scheme$host$request_uri"``: literal text and variables, in order."""
    if not isinstance(value, str) or not value:
        raise ValueError(f'must be a non-empty string like "$scheme$host$request_uri", got {show(value)}')
    parts: list[KeyPart] = []
    at = 0
    for match in _VARIABLE.finditer(value):
        if match.start() > at:
            parts.append(("text", value[at : match.start()]))
        name = match.group(1) or match.group(2)
        named = _NAMED.fullmatch(name)
        if named is not None:
            parts.append((named.group(1), named.group(2).lower() if named.group(1) != "arg" else named.group(2)))
        elif name in KEY_VARIABLES:
            parts.append((name, ""))
        else:
            raise ValueError(
                f"unknown variable ${name}; expected ${', $'.join(KEY_VARIABLES)}, $http_NAME, $cookie_NAME or $arg_NAME"
            )
        at = match.end()
    if at < len(value):
        parts.append(("text", value[at:]))
    return tuple(parts)


def valid_table(value: object) -> tuple[tuple[int, float], ...]:
    """``{ 200 = "10s", 404 = "1m", any = "5s" }``: seconds an answer of that status stays fresh (0: ``any``)."""
    if not isinstance(value, dict):
        raise ValueError(f'must be a table like {{ 200 = "10s", any = "1m" }}, got {show(value)}')
    out = []
    for status, seconds in value.items():
        if status == "any":
            code = 0
        elif status.isdigit() and 100 <= int(status) <= 599:
            code = int(status)
        else:
            raise ValueError(f'bad status {status!r}: a number 100 to 599, or "any"')
        try:
            out.append((code, parse_duration(seconds)))
        except ValueError as exc:
            raise ValueError(f"status {status}: {exc}") from None
    return tuple(sorted(out, key=lambda item: item[0] == 0))  # "any" last


def _words(choices: tuple[str, ...], what: str):  # type: ignore[no-untyped-def]
    one = choice(choices, typed=True)

    def convert(value: object) -> frozenset[str]:
        if not isinstance(value, list):
            raise ValueError(f"must be an array of {what}, got {show(value)}")
        return frozenset(one(item) for item in value)

    return convert


def bypass_list(value: object) -> tuple[tuple[str, str], ...]:
    """``["cookie:nocache", "header:X-No-Cache", "arg:nocache"]``: where a bypassing value may be."""
    if not isinstance(value, list):
        raise ValueError(f'must be an array like ["cookie:NAME", "header:NAME", "arg:NAME"], got {show(value)}')
    out = []
    for item in value:
        match = _BYPASS.fullmatch(item) if isinstance(item, str) else None
        if match is None:
            raise ValueError(f'bad entry {show(item)}: "cookie:NAME", "header:NAME" or "arg:NAME"')
        kind, name = match.groups()
        out.append((kind, name.lower() if kind == "header" else name))
    return tuple(out)


def ignore_list(value: object) -> frozenset[str]:
    """Header names (any case) from ``IGNORABLE_HEADERS``, lower-cased."""
    lowered = {name.lower(): name for name in IGNORABLE_HEADERS}
    if not isinstance(value, list):
        raise ValueError(f"must be an array of header names ({', '.join(IGNORABLE_HEADERS)}), got {show(value)}")
    out = set()
    for item in value:
        if not isinstance(item, str) or item.lower() not in lowered:
            raise ValueError(f"cannot ignore {show(item)}; expected some of: {', '.join(IGNORABLE_HEADERS)}")
        out.add(item.lower())
    return frozenset(out)


DEFAULT_KEY = "$scheme$host$request_uri"


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """A route's response cache (``[route.cache]``); see ``CACHE`` for each key's meaning."""

    key: tuple[KeyPart, ...] = parse_key(DEFAULT_KEY)
    valid: tuple[tuple[int, float], ...] = ()
    use_stale: frozenset[str] = frozenset()
    lock: bool = False
    lock_timeout: float = 5.0
    background_update: bool = False
    bypass: tuple[tuple[str, str], ...] = ()
    ignore_headers: frozenset[str] = frozenset()
    status_header: bool = False
    max_size: int = 10 * 1024 * 1024
    memory_entry_size: int = 256 * 1024
    path: str = ""
    max_disk: int = 100 * 1024 * 1024
    inactive: float = 600.0
    min_uses: int = 1

    @property
    def max_entry_size(self) -> int:
        """Bytes of the largest body kept: in memory, or a share of the directory when there is one."""
        return max(self.memory_entry_size, self.max_disk // 8) if self.path else self.memory_entry_size


_D = CacheConfig()
CACHE: tuple[Key, ...] = (
    Key("key", parse_key, DEFAULT_KEY, "the cache key: text and $scheme, $host, $request_uri, $uri, $args, $request_method, $remote_addr, $http_NAME, $cookie_NAME, $arg_NAME"),
    Key("valid", valid_table, {}, 'seconds an answer stays fresh by status when the worker says nothing, like { 200 = "10s", any = "1m" }'),
    Key("use_stale", _words(STALE_REASONS, "reasons"), [], "serve an expired entry when the worker fails: error, timeout, updating, http_500, http_502, http_503, http_504, http_403, http_404, http_429"),
    Key("lock", typed_boolean, _D.lock, "one request per key fills a missing entry while the others wait for it (nginx cache_lock)"),
    Key("lock_timeout", duration(above=0.0, typed=True), _D.lock_timeout, "time the others wait; then they go to the worker, uncached", "s"),
    Key("background_update", typed_boolean, _D.background_update, 'refresh an expired entry in the background, serving it stale meanwhile (needs use_stale "updating")'),
    Key("bypass", bypass_list, [], 'cookie:NAME, header:NAME or arg:NAME: a present value but "" and "0" skips the cache (the answer is still stored)'),
    Key("ignore_headers", ignore_list, [], "worker headers that have no say: X-Accel-Expires, Expires, Cache-Control, Set-Cookie (then cached, without it), Vary"),
    Key("status_header", typed_boolean, _D.status_header, "add X-Cache-Status: MISS, HIT, EXPIRED, STALE, UPDATING or BYPASS"),
    Key("max_size", size(0), _D.max_size, "bytes of entries held in memory per process; least recently used ones go first", "bytes"),
    Key("memory_entry_size", size(0), _D.memory_entry_size, "bodies up to this are held in memory; larger ones on disk only (path), or not cached", "bytes"),
    Key("path", None, _D.path, 'directory shared by the front-end\'s processes, relative to the cluster file; "" for memory only'),
    Key("max_disk", size(0), _D.max_disk, "bytes the directory may hold; the oldest entries go first", "bytes"),
    Key("inactive", duration(above=0.0, typed=True), _D.inactive, "an expired entry not served for this long is dropped (until then use_stale may serve it)", "s"),
    Key("min_uses", integer(1, typed=True), _D.min_uses, "an answer is stored once its key was asked this many times (counted per process, forgotten after inactive)"),
)  # fmt: skip
