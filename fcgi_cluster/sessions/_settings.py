"""The ``session.*`` settings of a worker pool, under PHP's names, parsed and checked.

The pool config (and ``fcgi-cluster worker --session KEY=VALUE``) hands over raw
strings; ``parse_session_settings`` turns them into one frozen ``SessionSettings``
or raises ``SessionConfigError`` naming the key, which the config parser wraps
with its file and line.

Where our defaults differ from PHP's, it is for safety, and PHP can be set to
match for sharing (see ``SessionSettings``):

- ``use_strict_mode`` is on (PHP: off): an id the store does not know is
  never adopted, which defeats session fixation.
- ``cookie_httponly`` is on and ``cookie_samesite`` is ``Lax`` (PHP: off, unset).
- locking is on (phpredis: off): without it concurrent requests of one session
  lose updates. Its waits are short (5 ms retries) so that parallel requests of
  one user are serialized, not stalled.
- ``serialize_handler`` is ``json`` (PHP: ``php``); set ``php`` to share
  sessions with PHP pages.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace

from .._settings import SettingsError, boolean, choice, duration, integer, text

__all__ = ["SessionSettings", "SessionConfigError", "parse_session_settings"]

SECONDS = 1.0
MINUTES = 60 * SECONDS

#: Backends ``open_store`` knows.
SAVE_HANDLERS = ("files", "redis", "rediscluster", "memcached")
SERIALIZE_HANDLERS = ("json", "php", "php_serialize")
SAMESITE_VALUES = ("", "Lax", "Strict", "None")
ON_STORE_ERROR = ("fail", "proceed")

#: PHP's limits on ``session.sid_length`` (ext/session): 22..256 characters.
MIN_SID_LENGTH = 22
MAX_SID_LENGTH = 256
#: Ids are never weaker than this, whatever length and alphabet are configured.
MIN_SID_ENTROPY_BITS = 128

# A cookie name is an RFC 6265 token; PHP also refuses names made of digits only.
_COOKIE_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
# Cookie path and domain go into a header: no separators or control characters.
_COOKIE_ATTR = re.compile(r"[\x21-\x3a\x3c-\x7e]*")
class SessionConfigError(SettingsError):
    """A ``session.*`` setting is unknown or its value is wrong.

    ``str()`` is ``key: reason``; the pool config reader names the file and
    line around it.

    Attributes:
        key: the setting as written (``session.lock_wait``).
        reason: why, in a few words.
    """

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(None, None, key, reason)

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return (type(self), (self.key, self.reason))


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """How sessions behave in one worker pool; PHP's ``session.*`` names without the prefix.

    Attributes:
        save_handler: the backend: files, redis, rediscluster, memcached.
        save_path: where: a directory (files), phpredis' ``tcp://host:port?auth=...``
            list or a ``redis://`` URL, ``host:port`` list (memcached). For files,
            empty means the system's temporary directory.
        store_timeout: seconds a store operation may take (None: the backend's default
            or the ``timeout=`` of the save_path).
        name: the cookie's name. PHP's ``PHPSESSID`` by default, so a PHP page
            behind the same front-end finds the same session with no setting.
        gc_maxlifetime: seconds an idle session lives (the store's TTL).
        gc_probability / gc_divisor: chance, per request that saved a session, of
            collecting expired sessions (only the files backend has work to do).
        cookie_lifetime: the cookie's Max-Age in seconds; 0 = until the browser closes.
        cookie_path / cookie_domain / cookie_secure / cookie_httponly / cookie_samesite:
            the cookie's attributes.
        use_strict_mode: an id the store does not know gets a new id instead of
            being adopted.
        lazy_write: an unchanged session is only touched (TTL refreshed), not rewritten.
        serialize_handler: json, php (PHP's default format: ``key|value``), php_serialize.
        sid_length / sid_bits_per_character: new ids' length and alphabet (4: 0-9a-f,
            5: 0-9a-v, 6: 0-9a-zA-Z,-), as in PHP; together at least 128 bits.
        lock: lock a session from its first use in a request to its save.
        lock_expire: seconds after which a lock left by a dead worker is broken.
        lock_wait: seconds a request waits for a lock before it gets a 503.
        lock_retry_interval: seconds between tries while waiting.
        on_store_error: ``fail``: the request gets a 503 when the store is down;
            ``proceed``: the app runs with an empty session that is not saved.
        auto_start: every request's session is loaded before the app runs and
            saved after its response, by the worker's event loop (PHP's
            ``session.auto_start``). With Redis the commands of all the
            process's requests share one pipelined connection and no app thread
            waits on the store. Off: a session is loaded on first use, from
            the app's thread (a request that never uses it costs no round trip).
    """

    save_handler: str = "files"
    save_path: str = ""
    store_timeout: float | None = None
    name: str = "PHPSESSID"
    gc_maxlifetime: int = 1440
    gc_probability: int = 1
    gc_divisor: int = 100
    cookie_lifetime: int = 0
    cookie_path: str = "/"
    cookie_domain: str = ""
    cookie_secure: bool = False
    cookie_httponly: bool = True
    cookie_samesite: str = "Lax"
    use_strict_mode: bool = True
    lazy_write: bool = True
    serialize_handler: str = "json"
    sid_length: int = 32
    sid_bits_per_character: int = 5
    lock: bool = True
    lock_expire: float = 30 * SECONDS
    lock_wait: float = 10 * SECONDS
    lock_retry_interval: float = 0.005 * SECONDS
    on_store_error: str = "fail"
    auto_start: bool = False


def _cookie_name(value: str) -> str:
    stripped = value.strip()
    if not _COOKIE_NAME.fullmatch(stripped) or stripped.isdigit():
        raise ValueError(f"not a cookie name (letters, digits, _ . -; not only digits): {value!r}")
    return stripped


def _cookie_attr(value: str) -> str:
    stripped = value.strip()
    if not _COOKIE_ATTR.fullmatch(stripped):
        raise ValueError(f"no spaces, semicolons or control characters allowed: {value!r}")
    return stripped


# The read-only table of parsers, one per setting (redis-py's URL options style).
_PARSERS = {
    "save_handler": choice(SAVE_HANDLERS),
    "save_path": text,
    "store_timeout": duration(0.001),
    "name": _cookie_name,
    "gc_maxlifetime": integer(1),
    "gc_probability": integer(0),
    "gc_divisor": integer(1),
    "cookie_lifetime": integer(0),
    "cookie_path": _cookie_attr,
    "cookie_domain": _cookie_attr,
    "cookie_secure": boolean,
    "cookie_httponly": boolean,
    "cookie_samesite": choice(SAMESITE_VALUES),
    "use_strict_mode": boolean,
    "lazy_write": boolean,
    "serialize_handler": choice(SERIALIZE_HANDLERS),
    "sid_length": integer(MIN_SID_LENGTH, MAX_SID_LENGTH),
    "sid_bits_per_character": integer(4, 6),
    "lock": boolean,
    "lock_expire": duration(0.1),
    "lock_wait": duration(0.0, allow_zero=True),
    "lock_retry_interval": duration(0.0005),
    "on_store_error": choice(ON_STORE_ERROR),
    "auto_start": boolean,
}


def parse_session_settings(mapping: Mapping[str, str]) -> SessionSettings:
    """Check the raw ``session.*`` settings and build ``SessionSettings``.

    Args:
        mapping: setting name (``session.lock_wait``, or without the ``session.``
            prefix) to its raw string value. Unset names keep their default.

    Returns:
        The settings, every value checked.

    Raises:
        SessionConfigError: an unknown name, a bad value, or settings that do not
            go together (ids under 128 bits, SameSite=None without Secure, a
            network store without save_path). Its ``key`` is the name as given.
    """
    values: dict[str, object] = {}
    keys: dict[str, str] = {}
    for key, raw in mapping.items():
        name = key[len("session."):] if key.startswith("session.") else key
        parser = _PARSERS.get(name)
        if parser is None:
            raise SessionConfigError(key, "unknown session setting")
        if not isinstance(raw, str):
            raise SessionConfigError(key, f"expected a string value, got {type(raw).__name__}")
        try:
            values[name] = parser(raw)
        except ValueError as exc:
            raise SessionConfigError(key, str(exc)) from None
        keys[name] = key

    def where(name: str) -> str:
        return keys.get(name, f"session.{name}")

    settings = SessionSettings(**values)  # type: ignore[arg-type]
    bits = settings.sid_length * settings.sid_bits_per_character
    if bits < MIN_SID_ENTROPY_BITS:
        name = "sid_length" if "sid_length" in keys else "sid_bits_per_character"
        raise SessionConfigError(
            where(name),
            f"ids of {settings.sid_length} characters of {settings.sid_bits_per_character} bits "
            f"hold {bits} bits; at least {MIN_SID_ENTROPY_BITS} are needed",
        )
    if settings.cookie_samesite == "None" and not settings.cookie_secure:
        raise SessionConfigError(where("cookie_samesite"), "SameSite=None needs session.cookie_secure = on")
    if settings.gc_probability > settings.gc_divisor:
        raise SessionConfigError(where("gc_probability"), "must not exceed session.gc_divisor")
    if settings.lock_retry_interval > max(settings.lock_wait, 0.0005) and settings.lock_wait > 0:
        raise SessionConfigError(where("lock_retry_interval"), "must not exceed session.lock_wait")
    if settings.save_handler == "files":
        if not settings.save_path:
            settings = replace(settings, save_path=tempfile.gettempdir())
    elif not settings.save_path:
        raise SessionConfigError(where("save_path"), f"required with session.save_handler = {settings.save_handler}")
    return settings

