"""``session.save_path`` strings as data: pure parsers, one per save handler.

Each parser turns the string a user writes (PHP's syntax where PHP has one) into a
frozen dataclass the store is built from; nothing here opens a socket or a file, so
every rule is testable with plain strings. Query options are cast by read-only
tables of parsers (redis-py's ``parse_url`` style), with one difference: an
unknown or repeated option is an error, never a value passed through silently.

The forms accepted:

``files``
    ``/path``, ``N;/path`` or ``N;MODE;/path`` (PHP's files handler): N levels of
    one-character subdirectories, MODE the octal mode of session files.

``redis`` (phpredis' ``session.save_path``, plus redis-py's URLs)
    A comma- or space-separated list of servers, each one of::

        tcp://host:port?weight=1&timeout=2.5&read_timeout=2.5&auth=secret&database=0&prefix=P
        unix:///run/redis.sock?auth=secret
        host:port?...                   (no scheme: tcp)
        redis://[[user]:password@]host[:port][/db]?...   (a lone ``secret@`` is a password)
        rediss://...                     (TLS; ssl_* options below)

    ``auth`` is a password, or (phpredis 5.3+, Redis 6 ACLs) ``auth[]=user&auth[]=pass``.
    ``read_timeout=0`` means "same as timeout" (phpredis). ``persistent``,
    ``persistent_id`` and ``retry_interval`` are accepted for phpredis' sake and
    have no effect: our connections are always pooled, and a failed one is replaced
    on the next command. Sessions are spread over the servers as phpredis spreads
    them (see ``fcgi_cluster.sessions._redis.pick_server``). ``rediss://`` takes
    ``ssl_cert_reqs`` (none/optional/required), ``ssl_ca_certs``, ``ssl_certfile``,
    ``ssl_keyfile`` and ``ssl_check_hostname``, as redis-py names them.

    Or one Redis Sentinel deployment (our form; phpredis has none for sessions)::

        sentinel://[[user]:password@]host:port[,host:port...]/master_name?...

    where the userinfo and ``auth`` authenticate to the master, and
    ``sentinel_auth`` (same syntax as ``auth``) to the sentinels.

``rediscluster`` (phpredis' cluster handler)
    ``seed[]=host:port&seed[]=host:port&timeout=2&read_timeout=2&auth=pass&prefix=P&failover=none``;
    ``hash_tag=1`` (ours) keys a session ``P{id}`` and its lock ``P{id}_LOCK``: one slot, so a
    locked request costs two round trips, and its lock is a lease (PHP's keys have no braces).

``memcached`` (php-memcached's ``host:port,host:port``)
    ``host[:port][,host[:port]...][?prefix=P&timeout=2&connect_timeout=1]``; a unix
    socket is a path starting with ``/``. A leading ``PERSISTENT=id `` is accepted and
    ignored (our clients always pool).

Errors: a bad string raises ``ValueError`` whose text names the save handler and
the option (``"redis save_path: tcp://h:1?wieght=2: unknown option 'wieght'; expected
one of: ..."``).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "DEFAULT_CLUSTER_PREFIX",
    "DEFAULT_MEMCACHED_PORT",
    "DEFAULT_MEMCACHED_PREFIX",
    "DEFAULT_REDIS_PORT",
    "DEFAULT_REDIS_PREFIX",
    "DEFAULT_SENTINEL_PORT",
    "FilesPath",
    "MemcachedPath",
    "MemcachedServer",
    "RedisClusterPath",
    "RedisPath",
    "RedisServer",
    "SentinelPath",
    "parse_files_path",
    "parse_memcached_path",
    "parse_redis_path",
    "parse_rediscluster_path",
]

DEFAULT_REDIS_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
DEFAULT_MEMCACHED_PORT = 11211
# The key prefixes of phpredis (redis_session.c) and php-memcached
# (memcached.sess_prefix): the same keys let PHP and Python share sessions.
DEFAULT_REDIS_PREFIX = "PHPREDIS_SESSION:"
DEFAULT_CLUSTER_PREFIX = "PHPREDIS_CLUSTER_SESSION:"
DEFAULT_MEMCACHED_PREFIX = "memc.sess.key."
# PHP's session.save_path mode default for session files.
DEFAULT_FILE_MODE = 0o600
# Deeper than this is a typo: 3 levels of 64 characters is already 262,144 directories.
MAX_FILE_LEVELS = 8
# phpredis' largest weight is an int; a ring this large would still be exact, but a
# weight past it is surely a mistake.
MAX_WEIGHT = 1000
# memcached's limit on a key (protocol.txt); the prefix must leave room for ids.
MEMCACHED_MAX_KEY = 250


@dataclasses.dataclass(frozen=True)
class FilesPath:
    """Where the ``files`` handler keeps sessions.

    Attributes:
        directory: The directory holding the session files.
        levels: How many levels of one-character subdirectories (PHP's N).
        mode: The mode of new session files (PHP's MODE, octal).
    """

    directory: str
    levels: int = 0
    mode: int = DEFAULT_FILE_MODE


@dataclasses.dataclass(frozen=True)
class RedisServer:
    """One Redis server of a ``redis`` save_path.

    Attributes:
        host: Host name or address; None for a unix socket.
        port: TCP port; None for a unix socket.
        unix_path: The unix socket's path, or None for TCP.
        tls: Whether to speak TLS (``rediss://``).
        username: ACL user, or None for the default user.
        password: Password, or None when the server needs none.
        database: The database number to SELECT.
        prefix: The session key prefix on this server.
        timeout: Connect timeout in seconds; None = the store's default.
        read_timeout: Per-command timeout in seconds; None = ``timeout``.
        weight: Share of the sessions this server gets (phpredis' weight).
        tls_options: redis-py ``ssl_*`` connection arguments, for ``rediss://``.
    """

    host: str | None
    port: int | None
    unix_path: str | None = None
    tls: bool = False
    username: str | None = None
    password: str | None = None
    database: int = 0
    prefix: str = DEFAULT_REDIS_PREFIX
    timeout: float | None = None
    read_timeout: float | None = None
    weight: int = 1
    tls_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def describe(self) -> str:
        """``host:port`` or the socket path, for error messages (never the password)."""
        if self.unix_path is not None:
            return self.unix_path
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class RedisPath:
    """A ``redis`` save_path: the servers, in the order written."""

    servers: tuple[RedisServer, ...]


@dataclasses.dataclass(frozen=True)
class SentinelPath:
    """A ``sentinel://`` save_path: where the sentinels are and which master to ask for.

    Attributes:
        sentinels: ``(host, port)`` of each sentinel.
        master: The master's name as the sentinels know it.
        username: ACL user for the master.
        password: Password for the master.
        sentinel_username: ACL user for the sentinels.
        sentinel_password: Password for the sentinels.
        database: The database number to SELECT on the master.
        prefix: The session key prefix.
        timeout: Connect timeout in seconds; None = the store's default.
        read_timeout: Per-command timeout; None = ``timeout``.
    """

    sentinels: tuple[tuple[str, int], ...]
    master: str
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    database: int = 0
    prefix: str = DEFAULT_REDIS_PREFIX
    timeout: float | None = None
    read_timeout: float | None = None


@dataclasses.dataclass(frozen=True)
class RedisClusterPath:
    """A ``rediscluster`` save_path (phpredis' cluster handler).

    Attributes:
        seeds: ``(host, port)`` of the nodes to learn the cluster's slot map from.
        username: ACL user, or None.
        password: Password, or None.
        prefix: The session key prefix (phpredis' cluster default differs from redis').
        timeout: Connect timeout; None = the store's default.
        read_timeout: Per-command timeout; None = ``timeout``.
        failover: phpredis' read failover (``none``, ``error``, ``distribute``):
            ``none`` reads from masters; the others also read from replicas.
        hash_tag: Keys ``<prefix>{<sid>}`` and ``<prefix>{<sid>}_LOCK`` (one slot).
    """

    seeds: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    prefix: str = DEFAULT_CLUSTER_PREFIX
    timeout: float | None = None
    read_timeout: float | None = None
    failover: str = "none"
    hash_tag: bool = False


@dataclasses.dataclass(frozen=True)
class MemcachedServer:
    """One memcached server: ``(host, port)``, or a unix socket path with port None."""

    host: str
    port: int | None

    def describe(self) -> str:
        """``host:port`` or the socket path, for messages."""
        if self.port is None:
            return self.host
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class MemcachedPath:
    """A ``memcached`` save_path.

    Attributes:
        servers: The servers, in the order written.
        prefix: The key prefix (php-memcached's ``memcached.sess_prefix``).
        timeout: Per-command timeout; None = the store's default.
        connect_timeout: Connect timeout; None = ``timeout``.
    """

    servers: tuple[MemcachedServer, ...]
    prefix: str = DEFAULT_MEMCACHED_PREFIX
    timeout: float | None = None
    connect_timeout: float | None = None


# ---------------------------------------------------------------------------
# Value parsers: each takes the raw option value (a str, or a list for ``x[]=``)
# and returns the typed value, or raises ValueError saying what was expected.


def _scalar(value: str | list[str]) -> str:
    if isinstance(value, list):
        raise ValueError("expected a single value, not a list")
    return value


def _positive_float(value: str | list[str]) -> float:
    text = _scalar(value)
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"expected a positive number of seconds, got {text!r}")
    return number


def _read_timeout(value: str | list[str]) -> float | None:
    # phpredis treats read_timeout=0 as "same as timeout"; we do too.
    text = _scalar(value)
    if text.strip() in ("0", "0.0"):
        return None
    return _positive_float(text)


def _int_in(low: int, high: int) -> Callable[[str | list[str]], int]:
    def parse(value: str | list[str]) -> int:
        text = _scalar(value)
        try:
            number = int(text, 10)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
        if not low <= number <= high:
            raise ValueError(f"expected an integer from {low} to {high}, got {number}")
        return number

    return parse


def _boolean(value: str | list[str]) -> bool:
    # phpredis' session_conf_bool: true/yes/1 are true, 0/false/no false.
    text = _scalar(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected 0/1/true/false, got {text!r}")


def _text(value: str | list[str]) -> str:
    return _scalar(value)


def _auth(value: str | list[str]) -> tuple[str | None, str]:
    """``auth=pass``, ``auth[]=pass`` or ``auth[]=user&auth[]=pass`` -> (user, pass)."""
    if isinstance(value, str):
        return None, value
    if len(value) == 1:
        return None, value[0]
    if len(value) == 2:
        return value[0] or None, value[1]
    raise ValueError(f"expected auth[]=password or auth[]=user&auth[]=password, got {len(value)} values")


def _failover(value: str | list[str]) -> str:
    text = _scalar(value).strip().lower()
    if text not in ("none", "error", "distribute"):
        raise ValueError(f"expected none, error or distribute, got {text!r}")
    return text


def _cert_reqs(value: str | list[str]) -> str:
    text = _scalar(value).strip().lower()
    if text not in ("none", "optional", "required"):
        raise ValueError(f"expected none, optional or required, got {text!r}")
    return text


# The option tables. Read-only, so a caller cannot widen what a save_path may say.
# Each maps an option name to its parser; the field it fills is given by _FIELD.

_REDIS_SERVER_OPTIONS: Mapping[str, Callable[[Any], Any]] = types.MappingProxyType(
    {
        "weight": _int_in(1, MAX_WEIGHT),
        "timeout": _positive_float,
        "read_timeout": _read_timeout,
        "persistent": _boolean,
        "persistent_id": _text,
        "retry_interval": _int_in(0, 3_600_000),
        "prefix": _text,
        "auth": _auth,
        "database": _int_in(0, 1_000_000),
        # rediss:// only (checked below).
        "ssl_cert_reqs": _cert_reqs,
        "ssl_ca_certs": _text,
        "ssl_certfile": _text,
        "ssl_keyfile": _text,
        "ssl_check_hostname": _boolean,
    }
)

_SENTINEL_OPTIONS: Mapping[str, Callable[[Any], Any]] = types.MappingProxyType(
    {
        "timeout": _positive_float,
        "read_timeout": _read_timeout,
        "prefix": _text,
        "auth": _auth,
        "sentinel_auth": _auth,
        "database": _int_in(0, 1_000_000),
    }
)

_CLUSTER_OPTIONS: Mapping[str, Callable[[Any], Any]] = types.MappingProxyType(
    {
        "seed": lambda value: value,  # checked by parse_rediscluster_path
        "timeout": _positive_float,
        "read_timeout": _read_timeout,
        "persistent": _boolean,
        "prefix": _text,
        "auth": _auth,
        "failover": _failover,
        "hash_tag": _boolean,
    }
)

_MEMCACHED_OPTIONS: Mapping[str, Callable[[Any], Any]] = types.MappingProxyType(
    {
        "prefix": _text,
        "timeout": _positive_float,
        "connect_timeout": _positive_float,
    }
)

_TLS_OPTIONS = frozenset({"ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname"})


_AUTH_VALUE = re.compile(r"((?:sentinel_auth|auth)(?:\[\]|%5B%5D)?=)[^&\s,]*", re.IGNORECASE)
_USERINFO = re.compile(r"(://)([^@/\s,?]*)@")


def _redact(text: str) -> str:
    """``text`` with its passwords (``auth=``, ``user:password@``) shown as ``***``.

    Error messages quote the save_path, and a startup error ends up in logs.
    """

    def userinfo(match: re.Match[str]) -> str:
        user, colon, _ = match.group(2).partition(":")
        return f"{match.group(1)}{user}:***@" if colon else f"{match.group(1)}***@"

    return _USERINFO.sub(userinfo, _AUTH_VALUE.sub(r"\1***", text))


def _query_options(
    handler: str, where: str, query: str, table: Mapping[str, Callable[[Any], Any]]
) -> dict[str, Any]:
    """Parse ``a=1&b[]=x&b[]=y`` (PHP's parse_str shape) and cast each value by ``table``.

    Raises:
        ValueError: an unknown option, a repeated one, or a value its parser refuses.
    """
    raw: dict[str, str | list[str]] = {}
    for pair in query.split("&"):
        if not pair:
            continue
        name, equals, value = pair.partition("=")
        name = urllib.parse.unquote_plus(name)
        value = urllib.parse.unquote_plus(value)
        is_list = name.endswith("[]")
        if is_list:
            name = name[:-2]
        if name not in table:
            expected = ", ".join(sorted(table))
            raise ValueError(f"{handler} save_path: {where}: unknown option {name!r}; expected one of: {expected}")
        if not equals:
            raise ValueError(f"{handler} save_path: {where}: option {name!r} has no value (write {name}=...)")
        previous = raw.get(name)
        if is_list:
            if isinstance(previous, str):
                raise ValueError(f"{handler} save_path: {where}: option {name!r} given both as {name}= and {name}[]=")
            raw[name] = [*(previous or []), value]
        elif previous is not None:
            raise ValueError(f"{handler} save_path: {where}: option {name!r} given twice")
        else:
            raw[name] = value
    options = {}
    for name, value in raw.items():
        try:
            options[name] = table[name](value)
        except ValueError as exc:
            raise ValueError(f"{handler} save_path: {where}: option {name!r}: {exc}") from None
    return options


def _host_port(handler: str, where: str, text: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` -> (host, port)."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^:\[\]/\s]+)(?::(\d+))?", text)
    if not match:
        raise ValueError(f"{handler} save_path: {where}: expected host:port, got {text!r}")
    host = match.group(1) or match.group(3)
    port_text = match.group(2) or match.group(4)
    port = int(port_text) if port_text else default_port
    if not 0 < port < 65536:
        raise ValueError(f"{handler} save_path: {where}: port {port} out of range 1..65535")
    return host, port


# ---------------------------------------------------------------------------
# files


def parse_files_path(save_path: str) -> FilesPath:
    """Parse the ``files`` handler's ``[N;[MODE;]]/path``.

    Raises:
        ValueError: an empty path, a bad N or a bad octal MODE.
    """
    parts = save_path.split(";")
    if len(parts) > 3:
        raise ValueError(f"files save_path: {save_path!r}: expected /path, N;/path or N;MODE;/path")
    directory = parts[-1]
    if not directory:
        raise ValueError("files save_path: empty directory")
    levels, mode = 0, DEFAULT_FILE_MODE
    if len(parts) >= 2:
        try:
            levels = int(parts[0], 10)
        except ValueError:
            raise ValueError(f"files save_path: {save_path!r}: levels {parts[0]!r} is not an integer") from None
        if not 0 <= levels <= MAX_FILE_LEVELS:
            raise ValueError(f"files save_path: {save_path!r}: levels must be 0..{MAX_FILE_LEVELS}, got {levels}")
    if len(parts) == 3:
        try:
            mode = int(parts[1], 8)
        except ValueError:
            raise ValueError(f"files save_path: {save_path!r}: mode {parts[1]!r} is not octal (like 600)") from None
        if not 0 < mode <= 0o777 or not mode & 0o600 == 0o600:
            raise ValueError(
                f"files save_path: {save_path!r}: mode {parts[1]} must be 1..777 and let the owner read and write"
            )
    return FilesPath(directory=directory, levels=levels, mode=mode)


# ---------------------------------------------------------------------------
# redis


def _split_list(save_path: str) -> list[str]:
    # phpredis: entries are separated by commas and/or whitespace.
    return [entry for entry in re.split(r"[\s,]+", save_path) if entry]


def parse_redis_path(save_path: str) -> RedisPath | SentinelPath:
    """Parse a ``redis`` save_path: phpredis' server list, redis-py URLs, or a sentinel URL.

    Raises:
        ValueError: no server, an unknown scheme, a bad host/port or option (the
            message quotes the save_path with its passwords as ``***``).
    """
    stripped = save_path.strip()
    if stripped.lower().startswith("sentinel://"):
        return _parse_sentinel(stripped)
    entries = _split_list(stripped)
    if not entries:
        raise ValueError("redis save_path: no server given (expected tcp://host:port, ...)")
    return RedisPath(servers=tuple(_parse_redis_server(entry) for entry in entries))


def _parse_redis_server(raw_entry: str) -> RedisServer:
    entry = _redact(raw_entry)  # for messages
    scheme, has_scheme, rest = raw_entry.partition("://")
    if not has_scheme:
        scheme, rest = "tcp", raw_entry
    scheme = scheme.lower()
    if scheme not in ("tcp", "unix", "redis", "rediss"):
        raise ValueError(f"redis save_path: {entry}: unknown scheme {scheme!r}; expected tcp, unix, redis or rediss")
    location, _, query = rest.partition("?")
    options = _query_options("redis", entry, query, _REDIS_SERVER_OPTIONS)
    tls_given = _TLS_OPTIONS & options.keys()
    if tls_given and scheme != "rediss":
        raise ValueError(f"redis save_path: {entry}: option {sorted(tls_given)[0]!r} needs a rediss:// URL")

    username = password = None
    database = 0
    if scheme == "unix":
        if not location.startswith("/"):
            raise ValueError(f"redis save_path: {entry}: expected unix:///absolute/path")
        host = port = None
        unix_path: str | None = urllib.parse.unquote(location)
    else:
        netloc, slash, path = location.partition("/")
        userinfo, at, hostport = netloc.rpartition("@")
        if at:
            if scheme == "tcp":
                raise ValueError(f"redis save_path: {entry}: tcp:// takes no user:password@; use ?auth=")
            user_text, colon, password_text = userinfo.partition(":")
            username = urllib.parse.unquote(user_text) or None if colon else None
            password = urllib.parse.unquote(password_text if colon else user_text) or None
        if slash and path:
            if scheme == "tcp":
                raise ValueError(f"redis save_path: {entry}: tcp:// takes no /path; use ?database=")
            try:
                database = _int_in(0, 1_000_000)(path)
            except ValueError as exc:
                raise ValueError(f"redis save_path: {entry}: database path /{path}: {exc}") from None
        host, port = _host_port("redis", entry, hostport, DEFAULT_REDIS_PORT)
        unix_path = None

    if "auth" in options:
        if password is not None:
            raise ValueError(f"redis save_path: {entry}: password given both in the URL and as auth=")
        username, password = options["auth"]
    if "database" in options:
        if database:
            raise ValueError(f"redis save_path: {entry}: database given both as /N and database=")
        database = options["database"]
    tls_options = {}
    for name in sorted(tls_given):
        tls_options[name] = options[name]
    return RedisServer(
        host=host,
        port=port,
        unix_path=unix_path,
        tls=scheme == "rediss",
        username=username,
        password=password,
        database=database,
        prefix=options.get("prefix", DEFAULT_REDIS_PREFIX),
        timeout=options.get("timeout"),
        read_timeout=options.get("read_timeout"),
        weight=options.get("weight", 1),
        tls_options=types.MappingProxyType(tls_options),
    )


def _parse_sentinel(raw: str) -> SentinelPath:
    save_path = _redact(raw)  # for messages
    rest = raw[len("sentinel://") :]
    location, _, query = rest.partition("?")
    netloc, slash, master = location.partition("/")
    if not master or "/" in master:
        raise ValueError(f"redis save_path: {save_path}: expected sentinel://host:port[,host:port]/master_name")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user_text, colon, password_text = userinfo.partition(":")
        username = urllib.parse.unquote(user_text) or None if colon else None
        password = urllib.parse.unquote(password_text if colon else user_text) or None
    sentinels = tuple(
        _host_port("redis", save_path, host, DEFAULT_SENTINEL_PORT) for host in hosts.split(",") if host
    )
    if not sentinels:
        raise ValueError(f"redis save_path: {save_path}: no sentinel host given")
    options = _query_options("redis", save_path, query, _SENTINEL_OPTIONS)
    if "auth" in options:
        if password is not None:
            raise ValueError(f"redis save_path: {save_path}: password given both in the URL and as auth=")
        username, password = options["auth"]
    sentinel_username, sentinel_password = options.get("sentinel_auth", (None, None))
    return SentinelPath(
        sentinels=sentinels,
        master=urllib.parse.unquote(master),
        username=username,
        password=password,
        sentinel_username=sentinel_username,
        sentinel_password=sentinel_password,
        database=options.get("database", 0),
        prefix=options.get("prefix", DEFAULT_REDIS_PREFIX),
        timeout=options.get("timeout"),
        read_timeout=options.get("read_timeout"),
    )


# ---------------------------------------------------------------------------
# rediscluster


def parse_rediscluster_path(save_path: str) -> RedisClusterPath:
    """Parse phpredis' cluster save_path ``seed[]=host:port&...&auth=...``.

    Raises:
        ValueError: no ``seed[]``, a bad seed, an unknown option or value.
    """
    shown = _redact(save_path)
    options = _query_options("rediscluster", shown, save_path.strip(), _CLUSTER_OPTIONS)
    seeds_value = options.get("seed")
    if not seeds_value:
        raise ValueError("rediscluster save_path: no seed given (expected seed[]=host:port&seed[]=...)")
    if isinstance(seeds_value, str):
        seeds_value = [seeds_value]
    seeds = tuple(_host_port("rediscluster", shown, seed, DEFAULT_REDIS_PORT) for seed in seeds_value)
    username, password = options.get("auth", (None, None))
    prefix = options.get("prefix") or DEFAULT_CLUSTER_PREFIX
    return RedisClusterPath(seeds=seeds, username=username, password=password, prefix=prefix,
                            timeout=options.get("timeout"), read_timeout=options.get("read_timeout"),
                            failover=options.get("failover", "none"), hash_tag=options.get("hash_tag", False))


# ---------------------------------------------------------------------------
# memcached


def parse_memcached_path(save_path: str) -> MemcachedPath:
    """Parse php-memcached's ``host:port,host:port`` (plus our ``?option=`` tail).

    Raises:
        ValueError: no server, a bad host/port, an unknown option or a prefix too long.
    """
    text = save_path.strip()
    if text.startswith("PERSISTENT="):
        # php-memcached: "PERSISTENT=id host:port,..."; the id names a persistent
        # libmemcached handle, which our pooled clients make moot.
        _, space, text = text.partition(" ")
        if not space:
            raise ValueError("memcached save_path: PERSISTENT=id must be followed by a space and the servers")
    servers_text, _, query = text.partition("?")
    options = _query_options("memcached", save_path, query, _MEMCACHED_OPTIONS)
    servers = []
    for entry in _split_list(servers_text):
        if entry.startswith("/"):
            servers.append(MemcachedServer(host=entry, port=None))
            continue
        if "--SERVER" in entry.upper():
            raise ValueError(f"memcached save_path: {entry}: libmemcached --SERVER= strings are not supported")
        # libmemcached accepts host:port:weight; a weight is not supported here.
        if entry.count(":") == 2 and not entry.startswith("["):
            raise ValueError(f"memcached save_path: {entry}: server weights (host:port:weight) are not supported")
        host, port = _host_port("memcached", entry, entry, DEFAULT_MEMCACHED_PORT)
        servers.append(MemcachedServer(host=host, port=port))
    if not servers:
        raise ValueError("memcached save_path: no server given (expected host:port[,host:port])")
    prefix = options.get("prefix", DEFAULT_MEMCACHED_PREFIX)
    # Room for "lock." and a 128-character id after the prefix.
    if len(prefix.encode()) > MEMCACHED_MAX_KEY - 5 - 128 or any(c.isspace() or ord(c) < 33 for c in prefix):
        raise ValueError(f"memcached save_path: option 'prefix': {prefix!r} is too long or has spaces/control characters")
    return MemcachedPath(
        servers=tuple(servers),
        prefix=prefix,
        timeout=options.get("timeout"),
        connect_timeout=options.get("connect_timeout"),
    )

