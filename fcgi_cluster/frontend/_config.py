"""The cluster configuration file (TOML): the front-end, its upstreams, routes and pools.

``fcgi-cluster frontend -c cluster.toml`` and ``fcgi-cluster up -c cluster.toml``
read one file of this shape (every table is optional)::

    [frontend]                  # the HTTP side (nginx's http/server blocks)
    listen = "127.0.0.1:8080"
    [frontend.tls]              # optional TLS termination
    cert = "cert.pem"
    key = "key.pem"

    [upstream.app]              # one table per worker pool the front-end talks to
    servers = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 2 }]
    [upstream.app.health_check] # optional active checks
    path = "/ping"

    [[route]]                   # ordered; the first match wins
    prefix = "/"
    upstream = "app"

    [pool.a]                    # worker pools that ``fcgi-cluster up`` starts
    listen = "127.0.0.1:9001"
    app = "workers.echo:app"

The dataclasses below list every key with its default. Values a user writes:

* durations: a number of seconds, or nginx's syntax ``"150ms"``, ``"10s"``,
  ``"2m"``, ``"1h"``, ``"1m30s"`` (units ms, s, m, h, d, w, largest first);
* sizes: a number of bytes, or ``"32k"``, ``"1m"``, ``"1g"`` (powers of 1024,
  any case), as nginx writes them;
* addresses: ``host:port``, ``[v6]:port``, a bare port, ``unix:/path`` or ``/path``.

Relative file paths (static directories, TLS files, log files) are relative to
the directory of the configuration file. DOCUMENT_ROOT values (``root``) are
not: they name directories on the worker's machine and are passed on as written.

Errors: every mistake raises ``ConfigError`` whose text is
``"<file>:<line>: <key>: <reason>"``, e.g.
``cluster.toml:7: upstream.app.servers[1].wieght: unknown key; expected one of:
address, weight, ...; did you mean "weight"?``. The line is left out only
when the key is missing and its table does not appear in the file either.
Array elements are shown with their 0-based index, as ``route[2].upstream``.
tomllib reports no positions for values, so ``_Locator`` scans the text
(already known to be valid TOML) for the line where each key, table header and
array element starts.
"""

from __future__ import annotations

import bisect
import difflib
import json
import math
import os
import re
import tomllib
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable, Iterable, Mapping, NoReturn, Sequence

from .._address import parse_address
from ..client._cgi import DEFAULT_DOCUMENT_ROOT
from ..protocol import DEFAULT_MAX_REQUESTS
from ._balancer import MAX_WEIGHT, Balancer, ServerSpec

__all__ = [
    "BALANCE_METHODS",
    "DEFAULT_STATIC_INDEX",
    "DEFAULT_UPSTREAM",
    "ClusterConfig",
    "ConfigError",
    "FrontendConfig",
    "HealthCheck",
    "ClusterPoolConfig",
    "RouteConfig",
    "TLSConfig",
    "UpstreamConfig",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_size",
    "simple_config",
]

SECONDS = 1.0
KiB = 1024
MiB = 1024 * KiB

#: Load-balancing methods an upstream may name, as nginx spells them.
BALANCE_METHODS: tuple[str, ...] = Balancer.METHODS

#: Index file of a static route when none is given: nginx's ``index`` default.
DEFAULT_STATIC_INDEX = "index.html"

#: The upstream name ``simple_config`` gives its one pool (``fcgi-cluster frontend --upstream ...``).
DEFAULT_UPSTREAM = "default"

# Names of upstreams and pools: they appear in TOML table headers, logs and
# status pages, so only characters that need no quoting anywhere.
_NAME = re.compile(r"[A-Za-z0-9_-]+")
_BARE_KEY = _NAME
# A WSGI/ASGI app reference, "package.module:attribute.path".
_APP_REF = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
_HASH_KEY = re.compile(r"(?:uri|remote_addr|(?:cookie|header|arg):.+)")


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class ConfigError(ValueError):
    """A configuration file (or command line) that cannot be used.

    ``str(error)`` is ``"<file>:<line>: <key>: <reason>"``; the line is
    omitted when unknown (a key missing from a table that is not in the file
    either), the key when the error is not about one key (a TOML syntax error,
    an unreadable file).

    Attributes:
        filename: the file named in the message ("<config>" for text without
            a file, "<command line>" for ``simple_config``).
        line: 1-based line number, or None.
        key: the dotted key path, e.g. ``route[0].upstream``, or None.
        reason: what is wrong, for a human.
    """

    def __init__(self, filename: str, line: int | None, key: str | None, reason: str) -> None:
        self.filename = filename
        self.line = line
        self.key = key
        self.reason = reason
        where = filename if line is None else f"{filename}:{line}"
        super().__init__(f"{where}: {reason}" if key is None else f"{where}: {key}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, int | None, str | None, str]]:
        # The default pickling passes str(self) back to __init__, which takes four
        # arguments; `fcgi-cluster up` may report errors from child processes.
        return (type(self), (self.filename, self.line, self.key, self.reason))


# --------------------------------------------------------------------------
# Value syntaxes
# --------------------------------------------------------------------------

_DURATION_UNITS = {"w": 7 * 86400.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?")
_SIZE = re.compile(r"\s*(\d+)\s*([kKmMgG]?)\s*")
_SIZE_UNITS = {"": 1, "k": KiB, "m": MiB, "g": 1024 * MiB}


def _show(value: object) -> str:
    """A value as a TOML user would recognise it in an error message."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return str(value)  # dates and times


def _is_number(value: object) -> bool:
    # bool is a subclass of int, and `timeout = true` is a mistake, not 1 second.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_duration(value: object) -> float:
    """Seconds from a number or an nginx-style duration string.

    Strings are one or more ``<number><unit>`` parts, largest unit first and
    each unit once, optionally separated by spaces: ``"150ms"``, ``"10s"``,
    ``"1m30s"``, ``"1h 30m"``, ``"1.5s"``. Units: ms, s, m (minutes), h, d, w.
    A string holding only a number is seconds (``"0"``), as in nginx.

    Args:
        value: an int or float of seconds, or a string as above.

    Returns:
        The duration in seconds, >= 0.

    Raises:
        ValueError: the value is negative, not finite, a bool, another type,
            or a string in another syntax; the message shows the value.
    """
    error = f'must be a duration like "10s", got {_show(value)}'
    if _is_number(value):
        if not math.isfinite(value) or value < 0:  # type: ignore[arg-type]
            raise ValueError(error)
        return float(value)  # type: ignore[arg-type]
    if not isinstance(value, str):
        raise ValueError(error)
    text = value.strip()
    hint = f'{error} (units ms, s, m, h, d, w, largest first, as in "1m30s")'
    if not text:
        raise ValueError(hint)
    total = 0.0
    pos = 0
    previous = math.inf
    while pos < len(text):
        part = _DURATION_PART.match(text, pos)
        if part is None:
            raise ValueError(hint)
        number, unit = part.groups()
        if unit is None:
            # A unitless number is seconds only on its own: in "1m30" it is
            # more likely a typo than an intended 30 seconds.
            if pos or part.end() != len(text):
                raise ValueError(hint)
            unit = "s"
        scale = _DURATION_UNITS[unit]
        if scale >= previous:
            raise ValueError(hint)
        previous = scale
        total += float(number) * scale
        pos = part.end()
    return total


def parse_size(value: object) -> int:
    """Bytes from a number or an nginx-style size string.

    Args:
        value: an int of bytes, or a string ``"<digits>[k|m|g]"`` (either
            case, powers of 1024): ``"32k"``, ``"1m"``, ``"1g"``, ``"0"``.

    Returns:
        The size in bytes, >= 0. Whether 0 makes sense (it means "unlimited"
        for ``max_body_size``) is up to the caller.

    Raises:
        ValueError: negative, a float, a bool, another type, or another syntax.
    """
    error = f'must be a size like "32k" or a number of bytes, got {_show(value)}'
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(error)
        return value
    if not isinstance(value, str):
        raise ValueError(error)
    match = _SIZE.fullmatch(value)
    if match is None:
        raise ValueError(f"{error} (units k, m, g)")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


# --------------------------------------------------------------------------
# The configuration, as Python sees it
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """TLS termination at the front-end.

    Attributes:
        cert: path of the PEM certificate chain (absolute once loaded).
        key: path of the PEM private key (absolute once loaded).
    """

    cert: str
    key: str


@dataclass(frozen=True, slots=True)
class FrontendConfig:
    """The HTTP side: where to listen, limits and timeouts per client.

    Attributes:
        listen: addresses to accept HTTP connections on, normalised
            (``"9000"`` becomes ``"127.0.0.1:9000"``).
        processes: front-end processes sharing the listening sockets
            (``"auto"`` in the file becomes ``os.cpu_count()``).
        root: DOCUMENT_ROOT sent to workers for routes that set none.
        server_name: SERVER_NAME; "" means the address the request came in on.
        access_log: "-" for stdout, a file path, or None (off).
        error_log: "-" for stderr, or a file path.
        max_connections: client connections open at once, per process.
        header_timeout: seconds a client may take to send the request head.
        body_timeout: seconds allowed between two reads of the request body.
        keepalive_timeout: seconds an idle kept-alive connection stays open.
        send_timeout: seconds allowed between two writes to the client.
        keepalive_requests: requests served on one connection before closing it.
        max_request_line: bytes in the request line.
        max_header_size: bytes in the whole request head.
        max_headers: header fields in one request.
        max_body_size: bytes of request body; 0 means unlimited.
        underscores_in_headers: pass header names holding "_" to workers.
        tls: TLS termination, or None for plain HTTP.
    """

    listen: tuple[str, ...] = ("127.0.0.1:8080",)  # loopback: exposing a server is a decision
    processes: int = 1  # one trio loop handles thousands of connections
    root: str = DEFAULT_DOCUMENT_ROOT  # Debian's and Ubuntu's nginx root
    server_name: str = ""
    access_log: str | None = "-"
    error_log: str = "-"
    max_connections: int = 1024  # nginx worker_connections is 512 but counts upstream sockets too
    header_timeout: float = 60 * SECONDS  # nginx client_header_timeout
    body_timeout: float = 60 * SECONDS  # nginx client_body_timeout
    keepalive_timeout: float = 75 * SECONDS  # nginx keepalive_timeout
    send_timeout: float = 60 * SECONDS  # nginx send_timeout
    keepalive_requests: int = 1000  # nginx keepalive_requests: bounds per-connection memory growth
    max_request_line: int = 8 * KiB  # bytes; one nginx large_client_header_buffers buffer
    max_header_size: int = 32 * KiB  # bytes; nginx's 4 such buffers
    max_headers: int = 100  # Apache's LimitRequestFields (nginx counts bytes only)
    max_body_size: int = 1 * MiB  # bytes; nginx client_max_body_size
    # nginx drops them by default so that X_Forwarded_For cannot pose as
    # X-Forwarded-For: both become HTTP_X_FORWARDED_FOR.
    underscores_in_headers: bool = False
    tls: TLSConfig | None = None


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Active health checks of an upstream's servers: a GET every ``interval``.

    Attributes:
        path: the request path sent to each server (e.g. the worker's ping path).
        interval: seconds between two checks of one server.
        timeout: seconds a check may take before it counts as failed.
        expect_status: the HTTP status a healthy server answers.
    """

    path: str
    interval: float = 5 * SECONDS  # nginx plus health_check interval
    # HAProxy's default check timeout; a ping answers in milliseconds, so a
    # worker silent for 2s is stuck, not busy.
    timeout: float = 2 * SECONDS
    expect_status: int = 200


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """One pool of FastCGI servers that routes can send requests to.

    Attributes:
        servers: the servers, in the order written.
        balance: one of ``BALANCE_METHODS``.
        hash_key: what ``balance = "hash"`` hashes: "uri", "remote_addr",
            "cookie:NAME", "header:NAME" or "arg:NAME" (a query argument);
            "" for the other methods.
        multiplex: "auto" (multiplex when a server says FCGI_MPXS_CONNS=1) or "off".
        connections: connections per server when multiplexing: a number, or
            "auto" for one per process behind the address when the worker
            says how many (FCGI_CLUSTER_PROCESSES), else ``AUTO_CONNECTIONS``.
        keepalive: idle connections kept per server when not multiplexing.
        connect_timeout: seconds to establish a connection to a server.
        send_timeout: seconds allowed between two writes to a server.
        read_timeout: seconds allowed between two reads from a server.
        tries: servers tried for one request; 0 means all of them.
        next_upstream_timeout: seconds spent trying servers for one request;
            0 means no limit.
        next_upstream_non_idempotent: retry POST, PATCH, LOCK on another server.
        health_check: active checks, or None (passive checks only).
        buffering: hold an answer the client reads slower than the worker
            writes, so the worker's connection reads on (nginx
            ``fastcgi_buffering``). Off: a connection the request has alone
            waits for its client (the worker is slowed); on a multiplexed
            one the answer may not outgrow ``buffer_size`` and is aborted past it.
        buffer_size: bytes of one answer held in memory; the rest goes to a
            temporary file.
        max_temp_file_size: bytes that file may grow to (nginx
            ``fastcgi_max_temp_file_size``); past it the request is aborted
            (ABORT_REQUEST), its neighbours served on. 0: no file.
        temp_path: directory of the temporary files (nginx
            ``fastcgi_temp_path``); "" for $TMPDIR, else /tmp. The files have
            no name: they vanish when the answer ends or the process dies.
    """

    servers: tuple[ServerSpec, ...]
    balance: str = "round_robin"  # nginx's default
    hash_key: str = ""
    multiplex: str = "auto"
    # One connection per worker process: each process's requests then arrive in
    # batches as large as they can be (measured: 10% less CPU per request, front-end
    # and worker together, than two connections to one process).
    connections: int | str = "auto"
    # nginx has no default (off unless set) and its docs' examples use 8-16; 32
    # per server lets a burst reuse connections, and each idle one costs a worker
    # only a socket (pool max_conns is 1024).
    keepalive: int = 32
    # nginx waits 60s; on a LAN a connect that takes 5s means a dead host, and
    # failing fast lets the request move on to the next server.
    connect_timeout: float = 5 * SECONDS
    send_timeout: float = 60 * SECONDS  # nginx fastcgi_send_timeout
    read_timeout: float = 60 * SECONDS  # nginx fastcgi_read_timeout
    tries: int = 0  # nginx fastcgi_next_upstream_tries
    next_upstream_timeout: float = 0 * SECONDS  # nginx fastcgi_next_upstream_timeout
    # A repeated POST may charge a card twice: nginx retries them only when asked.
    next_upstream_non_idempotent: bool = False
    health_check: HealthCheck | None = None
    buffering: bool = True  # nginx fastcgi_buffering
    # nginx holds 64 KiB in memory (fastcgi_buffers 8 8k) before its temporary
    # file; 128 KiB keeps answers of that size off the disk, and 100 slow
    # clients at 12.5 MiB of memory.
    buffer_size: int = 128 * KiB
    max_temp_file_size: int = 1024 * MiB  # nginx fastcgi_max_temp_file_size
    temp_path: str = ""


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """Which requests go where: a path prefix or regex, then a pool or a directory.

    Exactly one of ``prefix`` / ``regex`` and one of ``upstream`` / ``static``
    is set. The loader gives a static route ``index = "index.html"`` unless
    the file says otherwise.

    Attributes:
        prefix: matches paths that start with it.
        regex: matches paths it finds a match in (``re.search``, as nginx's
            ``location ~``).
        upstream: name of the ``UpstreamConfig`` serving the route.
        static: absolute directory served as files.
        index: file served for a directory (static) or appended to paths
            ending in "/" (nginx ``fastcgi_index``); "" for none.
        root: DOCUMENT_ROOT for an upstream route; SCRIPT_FILENAME is root
            plus the script name.
        split_path_info: a pattern with two groups splitting the path into
            the script name and PATH_INFO (nginx ``fastcgi_split_path_info``).
        params: extra FastCGI params sent with every request of the route.
        buffering, buffer_size, max_temp_file_size, temp_path: the
            upstream's (``UpstreamConfig``), for this route; None: the upstream's.
    """

    prefix: str | None = None
    regex: re.Pattern[str] | None = None
    upstream: str | None = None
    static: str | None = None
    index: str = ""
    root: str = DEFAULT_DOCUMENT_ROOT
    split_path_info: re.Pattern[str] | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    buffering: bool | None = None
    buffer_size: int | None = None
    max_temp_file_size: int | None = None
    temp_path: str | None = None

    def match(self, path: str) -> bool:
        """Whether this route takes a request for ``path`` (the decoded URI path)."""
        if self.prefix is not None:
            return path.startswith(self.prefix)
        return self.regex is not None and self.regex.search(path) is not None


@dataclass(frozen=True, slots=True)
class ClusterPoolConfig:
    """A worker pool that ``fcgi-cluster up`` starts (the php-fpm role).

    The defaults are those of ``fcgi_cluster.worker.WorkerConfig``.

    Attributes:
        listen: the FastCGI address the pool serves, normalised.
        app: the WSGI or ASGI app, "module:attribute".
        threads: threads running sync (WSGI) app code at once.
        max_requests: requests in flight per connection (FCGI_MAX_REQS).
        max_conns: connections served at once (FCGI_MAX_CONNS).
        graceful_timeout: seconds in-flight requests may run after SIGTERM.
        root_path: SCRIPT_NAME of the app when the web server sends no PATH_INFO.
        env: environment variables set for the pool's processes.
    """

    listen: str
    app: str
    threads: int = 16  # sync code must not block the loop; bounds its parallelism
    max_requests: int = DEFAULT_MAX_REQUESTS  # keeps a multiplexed connection busy across a LAN
    max_conns: int = 1024  # further connections wait in the listen backlog
    graceful_timeout: float = 30 * SECONDS  # ordinary requests finish; a deploy still moves on
    root_path: str = ""
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """A whole configuration file.

    Attributes:
        frontend: the HTTP side.
        upstreams: pools the front-end sends requests to, by name.
        routes: in order; the first that matches a path wins. A file with no
            ``[[route]]`` and exactly one upstream gets one implicit route,
            ``prefix = "/"`` to that upstream.
        pools: worker pools for ``fcgi-cluster up``, by name.
        path: the file it was read from, or None.
    """

    frontend: FrontendConfig
    upstreams: dict[str, UpstreamConfig]
    routes: tuple[RouteConfig, ...]
    pools: dict[str, ClusterPoolConfig]
    path: str | None = None

    def route_for(self, path: str) -> RouteConfig | None:
        """The first route that matches ``path``, or None."""
        for route in self.routes:
            if route.match(path):
                return route
        return None


# --------------------------------------------------------------------------
# Line numbers
# --------------------------------------------------------------------------

_KeyPath = tuple[str | int, ...]


class _Locator:
    """The line where each key path starts in a TOML text.

    Paths are tuples of keys and array indices, the way tomllib's result is
    indexed: ``("route", 1, "upstream")``, ``("upstream", "app", "servers", 0,
    "weight")``. The scanner follows table headers (counting the elements of
    each array of tables), ``key = value`` lines, dotted and quoted keys, and
    goes inside arrays and inline tables, so an element or an inline key gets
    its own line when it is on one. It assumes the text is valid TOML: it is
    only run after tomllib accepted it.
    """

    def __init__(self, text: str) -> None:
        self.lines: dict[_KeyPath, int] = {}
        self._text = text
        self._pos = 0
        self._newlines = [i for i, char in enumerate(text) if char == "\n"]
        self._arrays: dict[_KeyPath, int] = {}
        if text:
            self._scan()

    def line(self, path: _KeyPath) -> int | None:
        """The line of ``path``, or of its nearest ancestor in the text, or None."""
        while path:
            found = self.lines.get(path)
            if found is not None:
                return found
            path = path[:-1]
        return None

    def _line_at(self, pos: int) -> int:
        return bisect.bisect_left(self._newlines, pos) + 1

    def _scan(self) -> None:
        text = self._text
        table: _KeyPath = ()
        while True:
            self._skip_blank()
            if self._pos >= len(text):
                return
            start = self._pos
            if text.startswith("[[", start):
                self._pos += 2
                table = self._header(self._key(), start, array=True)
                self._skip_blank(newlines=False)
                self._pos += 2  # "]]"
            elif text[start] == "[":
                self._pos += 1
                table = self._header(self._key(), start, array=False)
                self._skip_blank(newlines=False)
                self._pos += 1  # "]"
            else:
                self._key_value(table)

    def _header(self, keys: tuple[str, ...], start: int, *, array: bool) -> _KeyPath:
        line = self._line_at(start)
        path: _KeyPath = ()
        for i, key in enumerate(keys):
            path += (key,)
            if array and i == len(keys) - 1:
                count = self._arrays.get(path, 0)
                self._arrays[path] = count + 1
                self.lines.setdefault(path, line)
                path += (count,)
            elif path in self._arrays:
                # [route.x] after [[route]] refers to the latest route.
                path += (self._arrays[path] - 1,)
            if i < len(keys) - 1:
                self.lines.setdefault(path, line)
        self.lines[path] = line
        return path

    def _key_value(self, table: _KeyPath) -> None:
        start = self._pos
        keys = self._key()
        self._skip_blank(newlines=False)
        self._pos += 1  # "="
        self._skip_blank(newlines=False)
        line = self._line_at(start)
        for i in range(1, len(keys)):
            self.lines.setdefault(table + keys[:i], line)
        path = table + keys
        self.lines[path] = line
        self._value(path)

    def _key(self) -> tuple[str, ...]:
        text = self._text
        keys: list[str] = []
        while True:
            self._skip_blank(newlines=False)
            start = self._pos
            if text[start] == '"':
                self._skip_basic_string()
                # Let tomllib decode the escapes: it is the reference for them.
                keys.append(tomllib.loads(f"k = {text[start:self._pos]}")["k"])
            elif text[start] == "'":
                end = text.index("'", start + 1)
                keys.append(text[start + 1 : end])
                self._pos = end + 1
            else:
                match = _BARE_KEY.match(text, start)
                assert match is not None, "the text was accepted by tomllib"
                keys.append(match.group())
                self._pos = match.end()
            self._skip_blank(newlines=False)
            if self._pos < len(text) and text[self._pos] == ".":
                self._pos += 1
                continue
            return tuple(keys)

    def _value(self, path: _KeyPath) -> None:
        text = self._text
        pos = self._pos
        if text.startswith('"""', pos):
            self._pos += 3
            while not text.startswith('"""', self._pos):
                self._pos += 2 if text[self._pos] == "\\" else 1
            self._pos += 3
            self._skip_closing_quotes('"')
        elif text.startswith("'''", pos):
            self._pos = text.index("'''", pos + 3) + 3
            self._skip_closing_quotes("'")
        elif text[pos] == '"':
            self._skip_basic_string()
        elif text[pos] == "'":
            self._pos = text.index("'", pos + 1) + 1
        elif text[pos] == "[":
            self._array(path)
        elif text[pos] == "{":
            self._inline_table(path)
        else:
            # Numbers, booleans, dates (which may hold a space).
            while self._pos < len(text) and text[self._pos] not in ",]}#\r\n":
                self._pos += 1

    def _skip_closing_quotes(self, quote: str) -> None:
        # A multi-line string may end with one or two quotes of its own: """a"""".
        for _ in range(2):
            if self._pos < len(self._text) and self._text[self._pos] == quote:
                self._pos += 1

    def _skip_basic_string(self) -> None:
        text = self._text
        self._pos += 1
        while text[self._pos] != '"':
            self._pos += 2 if text[self._pos] == "\\" else 1
        self._pos += 1

    def _array(self, path: _KeyPath) -> None:
        self._pos += 1
        index = 0
        while True:
            self._skip_blank()
            if self._text[self._pos] == "]":
                self._pos += 1
                return
            self.lines[path + (index,)] = self._line_at(self._pos)
            self._value(path + (index,))
            self._skip_blank()
            if self._text[self._pos] == ",":
                self._pos += 1
            index += 1

    def _inline_table(self, path: _KeyPath) -> None:
        self._pos += 1
        while True:
            self._skip_blank()
            if self._text[self._pos] == "}":
                self._pos += 1
                return
            self._key_value(path)
            self._skip_blank()
            if self._text[self._pos] == ",":
                self._pos += 1

    def _skip_blank(self, newlines: bool = True) -> None:
        """Skip spaces, tabs and comments, and line breaks when ``newlines``."""
        text = self._text
        while self._pos < len(text):
            char = text[self._pos]
            if char in " \t" or (newlines and char in "\r\n"):
                self._pos += 1
            elif char == "#":
                end = text.find("\n", self._pos)
                self._pos = len(text) if end < 0 else end
            else:
                return


def _dotted(path: _KeyPath) -> str:
    """A key path as users read it: ``upstream.app.servers[1].weight``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part if _BARE_KEY.fullmatch(part) else json.dumps(part, ensure_ascii=False)
            out += f".{name}" if out else name
    return out


def _syntax_error(filename: str, text: str, exc: tomllib.TOMLDecodeError) -> ConfigError:
    message = str(exc)
    # tomllib (Python 3.11-3.13) has no position attributes, only this suffix.
    at = re.search(r" \(at line (\d+), column (\d+)\)$", message)
    if at is not None:
        reason = f"TOML syntax error: {message[: at.start()]} (column {at.group(2)})"
        return ConfigError(filename, int(at.group(1)), None, reason)
    end = message.rfind(" (at end of document)")
    if end >= 0:
        message = message[:end] + " (at the end of the file)"
    return ConfigError(filename, text.count("\n") + 1, None, f"TOML syntax error: {message}")


# --------------------------------------------------------------------------
# Reading tables against their schema
# --------------------------------------------------------------------------

_MISSING: Any = object()
_Convert = Callable[[Any], Any]


class _Context:
    """What every error needs: the file name, the line finder, the base directory."""

    def __init__(self, filename: str, locator: _Locator, base_dir: str) -> None:
        self.filename = filename
        self.locator = locator
        self.base_dir = base_dir

    def fail(self, path: _KeyPath, reason: str, *, missing: bool = False) -> NoReturn:
        """Raise ConfigError for ``path``; a missing key points at its table."""
        line = self.locator.line(path[:-1] if missing else path)
        raise ConfigError(self.filename, line, _dotted(path) or None, reason)

    def convert(self, path: _KeyPath, value: object, convert: _Convert) -> Any:
        """``convert(value)``, with its ValueError turned into a ConfigError at ``path``."""
        try:
            return convert(value)
        except ValueError as exc:
            self.fail(path, str(exc))

    def file_path(self, value: str) -> str:
        """An absolute path: relative ones are relative to the configuration file."""
        return os.path.normpath(os.path.join(self.base_dir, os.path.expanduser(value)))


def _unknown_key(key: str, allowed: Sequence[str]) -> str:
    reason = "unknown key; expected one of: " + ", ".join(allowed)
    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        reason += f'; did you mean "{close[0]}"?'
    return reason


class _Table:
    """One TOML table read against the keys it may hold."""

    def __init__(self, ctx: _Context, path: _KeyPath, data: Mapping[str, Any], allowed: Sequence[str]) -> None:
        self.ctx = ctx
        self.path = path
        self.data = data
        for key in data:
            if key not in allowed:
                ctx.fail(path + (key,), _unknown_key(key, allowed))

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str, convert: _Convert, default: Any = _MISSING) -> Any:
        """The converted value of ``key``; ``default`` when absent (required without one)."""
        if key not in self.data:
            if default is _MISSING:
                self.ctx.fail(self.path + (key,), "required key is missing", missing=True)
            return default
        return self.ctx.convert(self.path + (key,), self.data[key], convert)

    def table(self, key: str, what: str) -> Mapping[str, Any] | None:
        """The sub-table ``key``, or None when absent; ``what`` names it in errors."""
        value = self.data.get(key)
        if value is not None and not isinstance(value, dict):
            self.ctx.fail(self.path + (key,), f"must be a table ({what}), got {_show(value)}")
        return value


def _table_at(ctx: _Context, path: _KeyPath, value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        ctx.fail(path, f"must be a table ({what}), got {_show(value)}")
    return value


def _defaults(cls: type) -> dict[str, Any]:
    """The default of each field of a dataclass that has one."""
    out = {}
    for f in fields(cls):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out


# Converters: each takes the TOML value and returns the Python one, or raises
# ValueError with the reason shown after the key.


def _integer(minimum: int, maximum: int | None = None) -> _Convert:
    wanted = f"an integer >= {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"

    def convert(value: object) -> int:
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or value < minimum
            or (maximum is not None and value > maximum)
        ):
            raise ValueError(f"must be {wanted}, got {_show(value)}")
        return value

    return convert


def _integer_or_auto(minimum: int) -> _Convert:
    number = _integer(minimum)

    def convert(value: object) -> int | str:
        if value == "auto":
            return "auto"
        try:
            return number(value)
        except ValueError:
            raise ValueError(f'must be "auto" or an integer >= {minimum}, got {_show(value)}') from None

    return convert


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {_show(value)}")
    return value


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {_show(value)}")
    return value


def _nonempty_string(value: object) -> str:
    if _string(value) == "":
        raise ValueError("must not be empty")
    return value  # type: ignore[return-value]


def _url_path(value: object) -> str:
    if not _string(value).startswith("/"):
        raise ValueError(f'must be a path starting with "/", got {_show(value)}')
    return value  # type: ignore[return-value]


def _choice(options: Sequence[str]) -> _Convert:
    def convert(value: object) -> str:
        if not isinstance(value, str) or value not in options:
            reason = f"must be one of: {', '.join(options)}; got {_show(value)}"
            close = difflib.get_close_matches(value, options, n=1) if isinstance(value, str) else []
            if close:
                reason += f'; did you mean "{close[0]}"?'
            raise ValueError(reason)
        return value

    return convert


def _duration(minimum_exclusive: float | None = None) -> _Convert:
    def convert(value: object) -> float:
        seconds = parse_duration(value)
        if minimum_exclusive is not None and seconds <= minimum_exclusive:
            raise ValueError(f"must be a duration above 0, got {_show(value)}")
        return seconds

    return convert


def _size(minimum: int) -> _Convert:
    def convert(value: object) -> int:
        size = parse_size(value)
        if size < minimum:
            raise ValueError(f"must be at least {minimum} byte{'s' if minimum > 1 else ''}, got {_show(value)}")
        return size

    return convert


def _address(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f'must be an address like "127.0.0.1:9000", got {_show(value)}')
    try:
        address = parse_address(value)
    except ValueError as exc:
        raise ValueError(f"bad address: {exc}") from None
    text = str(address)
    # str() drops "unix:", which a relative socket path needs to parse again.
    if address.is_unix and not text.startswith(("/", "./", "../")):
        text = f"unix:{text}"
    return text


def _regex(value: object) -> re.Pattern[str]:
    try:
        return re.compile(_string(value))
    except re.error as exc:
        raise ValueError(f"bad regular expression: {exc}") from None


def _split_path_info(value: object) -> re.Pattern[str]:
    # DOTALL: a "%0a" in the URL decodes to a newline, which "." would not
    # match; the split would then fail and leave PATH_INFO empty, which is how
    # CVE-2019-11043 reached php-fpm. With DOTALL the pattern splits such paths
    # like any other.
    try:
        pattern = re.compile(_string(value), re.DOTALL)
    except re.error as exc:
        raise ValueError(f"bad regular expression: {exc}") from None
    if pattern.groups != 2:
        raise ValueError(
            f"must have exactly 2 groups (the script name, then PATH_INFO), has {pattern.groups}"
        )
    return pattern


def _hash_key(value: object) -> str:
    if not isinstance(value, str) or _HASH_KEY.fullmatch(value) is None:
        raise ValueError(
            f'must be "uri", "remote_addr", "cookie:NAME", "header:NAME" or "arg:NAME", got {_show(value)}'
        )
    return value


def _root_path(value: object) -> str:
    text = _string(value)
    if text and not text.startswith("/"):
        raise ValueError(f'must be "" or a path starting with "/", got {_show(value)}')
    # SCRIPT_NAME never ends with "/": the slash belongs to PATH_INFO.
    return text.rstrip("/")


def _processes(value: object) -> int:
    if value == "auto":
        return os.cpu_count() or 1
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f'must be an integer >= 1 or "auto", got {_show(value)}')
    return value


def _string_table(ctx: _Context, path: _KeyPath, value: object) -> dict[str, str]:
    """A table of string values (FastCGI params, environment variables)."""
    table = _table_at(ctx, path, value, "of strings")
    for name, item in table.items():
        if not name:
            ctx.fail(path + (name,), "names must not be empty")
        ctx.convert(path + (name,), item, _string)
    return dict(table)


# --------------------------------------------------------------------------
# The sections
# --------------------------------------------------------------------------

_FRONTEND_KEYS = (
    "listen", "processes", "root", "server_name", "access_log", "error_log", "max_connections",
    "header_timeout", "body_timeout", "keepalive_timeout", "send_timeout", "keepalive_requests",
    "max_request_line", "max_header_size", "max_headers", "max_body_size",
    "underscores_in_headers", "tls",
)  # fmt: skip
_TLS_KEYS = ("cert", "key")
#: An upstream's answer buffering, which a route may set for itself.
_BUFFERING_KEYS = ("buffering", "buffer_size", "max_temp_file_size", "temp_path")
_SERVER_KEYS = ("address", "weight", "max_fails", "fail_timeout", "backup", "down", "max_conns")
_UPSTREAM_KEYS = (
    "servers", "balance", "hash_key", "multiplex", "connections", "keepalive", "connect_timeout",
    "send_timeout", "read_timeout", "tries", "next_upstream_timeout",
    "next_upstream_non_idempotent", "health_check", *_BUFFERING_KEYS,
)  # fmt: skip
_HEALTH_KEYS = ("path", "interval", "timeout", "expect_status")
_ROUTE_KEYS = ("prefix", "regex", "upstream", "static", "index", "root", "split_path_info", "params", *_BUFFERING_KEYS)
_UPSTREAM_ROUTE_ONLY = ("root", "split_path_info", "params", *_BUFFERING_KEYS)
_POOL_KEYS = ("listen", "app", "threads", "max_requests", "max_conns", "graceful_timeout", "root_path", "env")
_TOP_KEYS = ("frontend", "upstream", "route", "pool")


def _addresses(ctx: _Context, path: _KeyPath, value: object) -> tuple[str, ...]:
    """One address or a non-empty array of distinct ones."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        ctx.fail(path, f'must be an address or a non-empty array of addresses, got {_show(value)}')
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        item_path = path + (index,) if isinstance(value, list) else path
        address = ctx.convert(item_path, item, _address)
        if address in seen:
            ctx.fail(item_path, f"duplicate address {_show(address)}; already listed at [{seen[address]}]")
        seen[address] = index
    return tuple(seen)


def _frontend(ctx: _Context, path: _KeyPath, data: Mapping[str, Any]) -> FrontendConfig:
    table = _Table(ctx, path, data, _FRONTEND_KEYS)
    d = _defaults(FrontendConfig)
    values: dict[str, Any] = {}
    if "listen" in table:
        values["listen"] = _addresses(ctx, path + ("listen",), data["listen"])
    values["processes"] = table.get("processes", _processes, d["processes"])
    values["root"] = table.get("root", _nonempty_string, d["root"])
    values["server_name"] = table.get("server_name", _string, d["server_name"])
    if "access_log" in table:
        log = data["access_log"]
        if log is not False and (not isinstance(log, str) or not log):
            ctx.fail(path + ("access_log",), f'must be "-", a file path or false, got {_show(log)}')
        values["access_log"] = None if log is False else log if log == "-" else ctx.file_path(log)
    error_log = table.get("error_log", _nonempty_string, d["error_log"])
    values["error_log"] = error_log if error_log == "-" else ctx.file_path(error_log)
    for key in ("max_connections", "keepalive_requests", "max_headers"):
        values[key] = table.get(key, _integer(1), d[key])
    for key in ("header_timeout", "body_timeout", "keepalive_timeout", "send_timeout"):
        values[key] = table.get(key, _duration(0.0), d[key])
    for key in ("max_request_line", "max_header_size"):
        values[key] = table.get(key, _size(1), d[key])
    values["max_body_size"] = table.get("max_body_size", _size(0), d["max_body_size"])
    values["underscores_in_headers"] = table.get("underscores_in_headers", _boolean, d["underscores_in_headers"])
    tls = table.table("tls", "[frontend.tls]")
    if tls is not None:
        values["tls"] = _tls(ctx, path + ("tls",), tls)
    return FrontendConfig(**values)


def _tls(ctx: _Context, path: _KeyPath, data: Mapping[str, Any]) -> TLSConfig:
    table = _Table(ctx, path, data, _TLS_KEYS)
    # Both keys first: a missing key is the mistake to report before a missing file.
    files = {key: ctx.file_path(table.get(key, _nonempty_string)) for key in _TLS_KEYS}
    for key, name in files.items():
        if not os.path.isfile(name):
            ctx.fail(path + (key,), f"no such file: {name}")
    return TLSConfig(**files)


def _servers(ctx: _Context, path: _KeyPath, value: object, balance: str) -> tuple[ServerSpec, ...]:
    """An upstream's ``servers`` array, checked against the rules ``Balancer`` enforces."""
    if not isinstance(value, list) or not value:
        ctx.fail(path, f"must be a non-empty array of addresses or server tables, got {_show(value)}")
    servers: list[ServerSpec] = []
    seen: dict[str, int] = {}
    d = _defaults(ServerSpec)
    for index, item in enumerate(value):
        item_path = path + (index,)
        if isinstance(item, dict):
            table = _Table(ctx, item_path, item, _SERVER_KEYS)
            fields_ = {
                "address": table.get("address", _address),
                "weight": table.get("weight", _integer(1, MAX_WEIGHT), d["weight"]),
                "max_fails": table.get("max_fails", _integer(0), d["max_fails"]),
                # 0 would make the failure-counting window empty; max_fails = 0
                # is how to turn failure counting off.
                "fail_timeout": table.get("fail_timeout", _duration(0.0), d["fail_timeout"]),
                "backup": table.get("backup", _boolean, d["backup"]),
                "down": table.get("down", _boolean, d["down"]),
                "max_conns": table.get("max_conns", _integer(0), d["max_conns"]),
            }
            if fields_["backup"] and balance in ("ip_hash", "hash"):
                ctx.fail(
                    item_path + ("backup",),
                    f'backup servers cannot be used with balance = "{balance}", '
                    "which must keep sending a key to the same server",
                )
        elif isinstance(item, str):
            fields_ = {"address": ctx.convert(item_path, item, _address)}
        else:
            ctx.fail(item_path, f'must be an address or a table like {{ address = "..." }}, got {_show(item)}')
        address = fields_["address"]
        if address in seen:
            # Two entries would share hash points and status lines; a bigger
            # weight is how to give a server more traffic.
            ctx.fail(item_path, f"duplicate server {_show(address)}; already listed at [{seen[address]}]")
        seen[address] = index
        servers.append(ctx.convert(item_path, fields_, lambda kwargs: ServerSpec(**kwargs)))
    if all(server.backup for server in servers):
        ctx.fail(path, "every server is a backup; at least one must be a primary")
    return tuple(servers)


def _upstream(ctx: _Context, path: _KeyPath, data: Mapping[str, Any]) -> UpstreamConfig:
    table = _Table(ctx, path, data, _UPSTREAM_KEYS)
    if "servers" not in table:
        ctx.fail(path + ("servers",), "required key is missing", missing=True)
    d = _defaults(UpstreamConfig)
    balance = table.get("balance", _choice(BALANCE_METHODS), d["balance"])
    servers = _servers(ctx, path + ("servers",), data["servers"], balance)
    if balance == "hash":
        if "hash_key" not in table:
            ctx.fail(path + ("hash_key",), 'required when balance = "hash"', missing=True)
        hash_key = table.get("hash_key", _hash_key)
    elif "hash_key" in table:
        ctx.fail(path + ("hash_key",), f'only used with balance = "hash", not {_show(balance)}')
    else:
        hash_key = ""
    health = table.table("health_check", f"[{_dotted(path + ('health_check',))}]")
    return UpstreamConfig(
        servers=servers,
        balance=balance,
        hash_key=hash_key,
        multiplex=table.get("multiplex", _choice(("auto", "off")), d["multiplex"]),
        connections=table.get("connections", _integer_or_auto(1), d["connections"]),
        keepalive=table.get("keepalive", _integer(0), d["keepalive"]),
        connect_timeout=table.get("connect_timeout", _duration(0.0), d["connect_timeout"]),
        send_timeout=table.get("send_timeout", _duration(0.0), d["send_timeout"]),
        read_timeout=table.get("read_timeout", _duration(0.0), d["read_timeout"]),
        tries=table.get("tries", _integer(0), d["tries"]),
        next_upstream_timeout=table.get("next_upstream_timeout", _duration(), d["next_upstream_timeout"]),
        next_upstream_non_idempotent=table.get(
            "next_upstream_non_idempotent", _boolean, d["next_upstream_non_idempotent"]
        ),
        health_check=None if health is None else _health_check(ctx, path + ("health_check",), health),
        **_buffering(ctx, path, table, d),
    )


def _buffering(ctx: _Context, path: _KeyPath, table: _Table, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The buffering keys of an upstream or route table (absent ones from ``defaults``)."""
    values = {
        "buffering": table.get("buffering", _boolean, defaults["buffering"]),
        "buffer_size": table.get("buffer_size", _size(4 * KiB), defaults["buffer_size"]),
        "max_temp_file_size": table.get("max_temp_file_size", _size(0), defaults["max_temp_file_size"]),
        "temp_path": defaults["temp_path"],
    }
    if "temp_path" in table:
        directory = table.get("temp_path", _string)
        if directory:
            directory = ctx.file_path(directory)
            if not os.path.isdir(directory):
                ctx.fail(path + ("temp_path",), f"no such directory: {directory}")
            if not os.access(directory, os.W_OK | os.X_OK):
                ctx.fail(path + ("temp_path",), f"not writable by this user: {directory}")
        values["temp_path"] = directory
    return values


def _health_check(ctx: _Context, path: _KeyPath, data: Mapping[str, Any]) -> HealthCheck:
    table = _Table(ctx, path, data, _HEALTH_KEYS)
    d = _defaults(HealthCheck)
    return HealthCheck(
        path=table.get("path", _url_path),
        interval=table.get("interval", _duration(0.0), d["interval"]),
        timeout=table.get("timeout", _duration(0.0), d["timeout"]),
        expect_status=table.get("expect_status", _integer(100, 599), d["expect_status"]),
    )


def _route(
    ctx: _Context, path: _KeyPath, data: Mapping[str, Any], upstreams: Mapping[str, UpstreamConfig], root: str
) -> RouteConfig:
    table = _Table(ctx, path, data, _ROUTE_KEYS)
    if "prefix" in table and "regex" in table:
        ctx.fail(path + ("regex",), "give prefix or regex, not both")
    if "prefix" not in table and "regex" not in table:
        ctx.fail(path, "needs a prefix or a regex to match paths with")
    if "upstream" in table and "static" in table:
        ctx.fail(path + ("static",), "give upstream or static, not both")
    if "upstream" not in table and "static" not in table:
        ctx.fail(path, "needs an upstream or a static directory to send requests to")
    values: dict[str, Any] = {
        "prefix": table.get("prefix", _url_path, None),
        "regex": table.get("regex", _regex, None),
    }
    if "static" in table:
        for key in _UPSTREAM_ROUTE_ONLY:
            if key in table:
                ctx.fail(path + (key,), "only used by upstream routes; a static route serves its directory")
        directory = ctx.file_path(table.get("static", _nonempty_string))
        if not os.path.isdir(directory):
            ctx.fail(path + ("static",), f"no such directory: {directory}")
        values["static"] = directory
        values["index"] = table.get("index", _string, DEFAULT_STATIC_INDEX)
        return RouteConfig(**values)
    name = table.get("upstream", _string)
    if name not in upstreams:
        if upstreams:
            reason = f"no such upstream; defined: {', '.join(upstreams)}"
            close = difflib.get_close_matches(name, list(upstreams), n=1)
            if close:
                reason += f'; did you mean "{close[0]}"?'
        else:
            reason = "no such upstream; the file defines no [upstream.NAME] table"
        ctx.fail(path + ("upstream",), reason)
    values["upstream"] = name
    values["index"] = table.get("index", _string, "")
    values["root"] = table.get("root", _nonempty_string, root)
    values["split_path_info"] = table.get("split_path_info", _split_path_info, None)
    if "params" in table:
        values["params"] = _string_table(ctx, path + ("params",), data["params"])
    values.update(_buffering(ctx, path, table, dict.fromkeys(_BUFFERING_KEYS)))
    return RouteConfig(**values)


def _pool(ctx: _Context, path: _KeyPath, data: Mapping[str, Any]) -> ClusterPoolConfig:
    table = _Table(ctx, path, data, _POOL_KEYS)
    listen = table.get("listen", _address)
    app = table.get("app", _string)
    if _APP_REF.fullmatch(app) is None:
        ctx.fail(path + ("app",), f'must be "module:attribute", like "workers.echo:app", got {_show(app)}')
    d = _defaults(ClusterPoolConfig)
    return ClusterPoolConfig(
        listen=listen,
        app=app,
        threads=table.get("threads", _integer(1), d["threads"]),
        max_requests=table.get("max_requests", _integer(1), d["max_requests"]),
        max_conns=table.get("max_conns", _integer(1), d["max_conns"]),
        graceful_timeout=table.get("graceful_timeout", _duration(), d["graceful_timeout"]),
        root_path=table.get("root_path", _root_path, d["root_path"]),
        env=_string_table(ctx, path + ("env",), data["env"]) if "env" in table else {},
    )


def _named_tables(ctx: _Context, top: _Table, key: str) -> Iterable[tuple[str, _KeyPath, Mapping[str, Any]]]:
    """(name, path, table) for each ``[key.NAME]`` table."""
    section = top.table(key, f"[{key}.NAME] tables")
    for name, value in (section or {}).items():
        path = (key, name)
        if _NAME.fullmatch(name) is None:
            ctx.fail(path, "names may hold only letters, digits, '_' and '-'")
        yield name, path, _table_at(ctx, path, value, f"[{key}.{_dotted((name,))}]")


def _cluster(ctx: _Context, data: Mapping[str, Any], path: str | None) -> ClusterConfig:
    top = _Table(ctx, (), data, _TOP_KEYS)
    frontend = _frontend(ctx, ("frontend",), top.table("frontend", "[frontend]") or {})
    upstreams = {name: _upstream(ctx, where, table) for name, where, table in _named_tables(ctx, top, "upstream")}

    route_list = data.get("route", [])
    if not isinstance(route_list, list):
        ctx.fail(("route",), f"must be an array of tables ([[route]]), got {_show(route_list)}")
    routes = tuple(
        _route(ctx, ("route", i), _table_at(ctx, ("route", i), item, "[[route]]"), upstreams, frontend.root)
        for i, item in enumerate(route_list)
    )
    if not routes:
        if len(upstreams) > 1:
            ctx.fail(("route",), f"several upstreams ({', '.join(upstreams)}) and no [[route]] to choose between them")
        if not upstreams:
            ctx.fail(("upstream",), "the front-end has nothing to serve: define an [upstream.NAME] or a static [[route]]")
        routes = (RouteConfig(prefix="/", upstream=next(iter(upstreams)), root=frontend.root),)

    pools: dict[str, ClusterPoolConfig] = {}
    listeners: dict[str, str] = {}
    for name, where, table in _named_tables(ctx, top, "pool"):
        pool = _pool(ctx, where, table)
        if pool.listen in listeners:
            ctx.fail(where + ("listen",), f"{_show(pool.listen)} is already the address of pool.{listeners[pool.listen]}")
        listeners[pool.listen] = name
        pools[name] = pool
    return ClusterConfig(frontend=frontend, upstreams=upstreams, routes=routes, pools=pools, path=path)


# --------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------


def parse_config(text: str, filename: str = "<config>", *, base_dir: str | None = None) -> ClusterConfig:
    """Read a cluster configuration from TOML text.

    With no ``[[route]]`` and exactly one ``[upstream.NAME]``, the routes are
    one implicit ``prefix = "/"`` route to it; with several upstreams, routes
    are required.

    Args:
        text: the TOML document.
        filename: the name errors show; a real path also becomes
            ``ClusterConfig.path`` and, unless ``base_dir`` is given, the base
            of relative file paths. Names in angle brackets ("<config>") are
            not paths.
        base_dir: directory relative file paths are resolved against; by
            default the directory of ``filename``, or the current directory.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: a TOML syntax error, an unknown key, a missing required
            key, a value of the wrong type or syntax, a reference to something
            not defined, or a file or directory that does not exist. The
            message names the file, the line and the key.
    """
    is_path = not (filename.startswith("<") and filename.endswith(">"))
    if base_dir is None:
        base_dir = os.path.dirname(os.path.abspath(filename)) if is_path else os.getcwd()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(filename, text, exc) from None
    ctx = _Context(filename, _Locator(text), base_dir)
    return _cluster(ctx, data, filename if is_path else None)


def load_config(path: str | os.PathLike[str]) -> ClusterConfig:
    """Read a cluster configuration file (see ``parse_config``).

    Args:
        path: the TOML file. Relative paths inside it are resolved against its
            directory.

    Returns:
        The validated configuration, with ``path`` set.

    Raises:
        ConfigError: the file cannot be read or is not UTF-8, or any error
            ``parse_config`` reports.
    """
    filename = os.fspath(path)
    try:
        with open(filename, "rb") as file:
            raw = file.read()
    except OSError as exc:
        raise ConfigError(filename, None, None, f"cannot read the file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(filename, line, None, "not UTF-8 text (TOML files are UTF-8)") from None
    return parse_config(text, filename)


def simple_config(
    listen: list[str], upstreams: list[str], root: str | None = None, **frontend_overrides: Any
) -> ClusterConfig:
    """A configuration from command-line options, without a file.

    For ``fcgi-cluster frontend --listen X --upstream A --upstream B --root DIR``:
    one upstream named "default" holding the given servers, the implicit route
    ``prefix = "/"`` to it, and no pools.

    Args:
        listen: addresses to listen on; empty means the default, 127.0.0.1:8080.
        upstreams: worker addresses, at least one.
        root: DOCUMENT_ROOT, or None for the default.
        frontend_overrides: other ``[frontend]`` keys, with the values a file
            could hold (``header_timeout="10s"`` or ``10``, ``max_body_size="8m"``).

    Returns:
        The configuration.

    Raises:
        ConfigError: a bad address, no upstream, an unknown or bad override;
            the file name in the message is "<command line>".
    """
    ctx = _Context("<command line>", _Locator(""), os.getcwd())
    options = dict(frontend_overrides)
    if listen:
        options["listen"] = list(listen)
    if root is not None:
        options["root"] = root
    frontend = _frontend(ctx, (), options)
    if not upstreams:
        ctx.fail(("upstream",), "at least one upstream address is required")
    servers = _servers(ctx, ("upstream",), list(upstreams), _defaults(UpstreamConfig)["balance"])
    return ClusterConfig(
        frontend=frontend,
        upstreams={DEFAULT_UPSTREAM: UpstreamConfig(servers=servers)},
        routes=(RouteConfig(prefix="/", upstream=DEFAULT_UPSTREAM, root=frontend.root),),
        pools={},
        path=None,
    )

