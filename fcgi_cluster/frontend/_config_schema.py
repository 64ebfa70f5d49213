"""The keys of every cluster.toml table: one ``Key`` (name, converter, default, doc) each.

The reader (``_config_read``) checks a table's keys against its tuple here,
converts the values with the converters and fills in the defaults; the README's
"Configuration reference" is these tables, and a test keeps the two equal.
Defaults are the dataclasses' (``_config_model``), where they are justified.
Converters are the settings toolkit's, in its typed (TOML) form, plus the few
syntaxes only this file has (addresses, regular expressions, app references).
"""

from __future__ import annotations

import dataclasses
import json
import os
import ipaddress
import re
from typing import Any, Callable

from .._address import parse_address
from .._settings import REQUIRED, Key, choice, duration, integer, show, size, typed_boolean
from ._balancer import MAX_WEIGHT, ServerSpec
from .edge._cache_config import CACHE
from ._config_model import (
    BALANCE_METHODS,
    DEFAULT_STATIC_INDEX,
    KiB,
    ClusterPoolConfig,
    FrontendConfig,
    HealthCheck,
    ListenerConfig,
    LimitReq,
    LimitReqZone,
    RouteConfig,
    UpstreamConfig,
)
from .edge._real_ip import REAL_IP_HEADERS, UNIX

__all__ = [
    "BUFFERING", "FRONTEND", "HEALTH_CHECK", "LIMIT_CONN", "LIMIT_CONN_ZONE", "LIMIT_REQ", "LIMIT_REQ_ZONE", "LISTENER",
    "POOL", "ROUTE", "SECTIONS", "SERVER", "TLS", "TOP", "UPSTREAM", "NAME", "UPSTREAM_ROUTE_ONLY", "EDGE_ROUTE_KEYS",
    "address", "default_text", "names", "string",
]  # fmt: skip

# Names of upstreams and pools: they appear in TOML table headers, logs and
# status pages, so only characters that need no quoting anywhere.
NAME = re.compile(r"[A-Za-z0-9_-]+")
# A WSGI/ASGI app reference, "package.module:attribute.path".
_APP_REF = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
_HASH_KEY = re.compile(r"(?:uri|remote_addr|(?:cookie|header|arg):.+)")

# --------------------------------------------------------------------------
# Converters of this file's own syntaxes: the TOML value in, the Python value
# out, or ValueError with the reason shown after the key.
# --------------------------------------------------------------------------


def string(value: object) -> str:
    """Any TOML string, as written."""
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {show(value)}")
    return value


def http2_mode(value: object) -> bool | str:
    """``true``, ``false`` or ``"auto"``."""
    if value == "auto" or isinstance(value, bool):
        return value  # type: ignore[return-value]
    raise ValueError(f'must be true, false or "auto", got {show(value)}')


def nonempty_string(value: object) -> str:
    """A TOML string that is not empty."""
    if string(value) == "":
        raise ValueError("must not be empty")
    return value  # type: ignore[return-value]


def url_path(value: object) -> str:
    """A URL path: a string starting with "/"."""
    if not string(value).startswith("/"):
        raise ValueError(f'must be a path starting with "/", got {show(value)}')
    return value  # type: ignore[return-value]


def address(value: object) -> str:
    """A listening or server address, normalised (``"9000"`` is ``"127.0.0.1:9000"``)."""
    if not isinstance(value, str):
        raise ValueError(f'must be an address like "127.0.0.1:9000", got {show(value)}')
    try:
        parsed = parse_address(value)
    except ValueError as exc:
        raise ValueError(f"bad address: {exc}") from None
    text = str(parsed)
    # str() drops "unix:", which a relative socket path needs to parse again.
    if parsed.is_unix and not text.startswith(("/", "./", "../")):
        text = f"unix:{text}"
    return text


def resolver_address(value: object) -> str:
    """DNS servers' ``host:port`` (a list, or one string space-separated, asked in order), or "" for the system's."""
    if value == "" or value == []:
        return ""
    items = value.split() if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ValueError(f"a resolver is a host:port or a list of them, got {show(value)}")
    out = []
    for item in items:
        text = address(item)
        if text.startswith(("unix:", "/", ".")):
            raise ValueError(f"a resolver is a host:port, got {show(item)}")
        out.append(text)
    return " ".join(out)


def optional_url_path(value: object) -> str:
    """A URL path, or "" for none."""
    return "" if value == "" else url_path(value)


def control_address(value: object) -> str:
    """An address, or "" for none."""
    return "" if value == "" else address(value)


def networks(value: object) -> tuple[str, ...]:
    """An array of CIDR networks (``"10.0.0.0/8"``, ``"::1/128"``), normalised."""
    if not isinstance(value, list):
        raise ValueError(f"must be an array of CIDR networks, got {show(value)}")
    out = []
    for item in value:
        try:
            out.append(str(ipaddress.ip_network(string(item), strict=False)))
        except ValueError as exc:
            raise ValueError(f"bad network {show(item)}: {exc}") from None
    return tuple(out)


def trusted_networks(value: object) -> tuple[str, ...]:
    """``networks``, where "unix:" may stand for peers on unix sockets."""
    if isinstance(value, list) and UNIX in value:
        return (*networks([item for item in value if item != UNIX]), UNIX)
    return networks(value)


def real_ip_header(value: object) -> str:
    """One of ``REAL_IP_HEADERS``, its case as written there."""
    for name in REAL_IP_HEADERS:
        if isinstance(value, str) and value.lower() == name.lower():
            return name
    raise ValueError(f"must be one of {', '.join(REAL_IP_HEADERS)}, got {show(value)}")


def regex(value: object) -> re.Pattern[str]:
    """A regular expression (Python's syntax)."""
    try:
        return re.compile(string(value))
    except re.error as exc:
        raise ValueError(f"bad regular expression: {exc}") from None


def split_path_info(value: object) -> re.Pattern[str]:
    """A regular expression with two groups: the script name, then PATH_INFO."""
    # DOTALL: a "%0a" in the URL decodes to a newline, which "." would not
    # match; the split would then fail and leave PATH_INFO empty, which is how
    # CVE-2019-11043 reached php-fpm. With DOTALL the pattern splits such paths
    # like any other.
    try:
        pattern = re.compile(string(value), re.DOTALL)
    except re.error as exc:
        raise ValueError(f"bad regular expression: {exc}") from None
    if pattern.groups != 2:
        raise ValueError(f"must have exactly 2 groups (the script name, then PATH_INFO), has {pattern.groups}")
    return pattern


def hash_key(value: object) -> str:
    """What ``balance = "hash"`` hashes."""
    if not isinstance(value, str) or _HASH_KEY.fullmatch(value) is None:
        raise ValueError(
            f'must be "uri", "remote_addr", "cookie:NAME", "header:NAME" or "arg:NAME", got {show(value)}'
        )
    return value


def app_ref(value: object) -> str:
    """A WSGI or ASGI app, "module:attribute"."""
    if _APP_REF.fullmatch(string(value)) is None:
        raise ValueError(f'must be "module:attribute", like "workers.echo:app", got {show(value)}')
    return value  # type: ignore[return-value]


def root_path(value: object) -> str:
    """SCRIPT_NAME of an app: "" or a path starting with "/", without a trailing "/"."""
    text = string(value)
    if text and not text.startswith("/"):
        raise ValueError(f'must be "" or a path starting with "/", got {show(value)}')
    # SCRIPT_NAME never ends with "/": the slash belongs to PATH_INFO.
    return text.rstrip("/")


def processes(value: object) -> int:
    """A number of processes, or "auto" for one per CPU."""
    if value == "auto":
        return os.cpu_count() or 1
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f'must be an integer >= 1 or "auto", got {show(value)}')
    return value


def integer_or_auto(low: int) -> Callable[[object], int | str]:
    """An integer >= ``low``, or the string "auto"."""
    number = integer(low, typed=True)

    def convert(value: object) -> int | str:
        if value == "auto":
            return "auto"
        try:
            return number(value)
        except ValueError:
            raise ValueError(f'must be "auto" or an integer >= {low}, got {show(value)}') from None

    return convert


_LIMIT_KEY = re.compile(r"\$(?:remote_addr|http_[A-Za-z0-9_-]+|cookie_[!#-'*+.0-9A-Z^-z|~-]+)")
_RATE = re.compile(r"(\d+(?:\.\d+)?)r/([sm])")
_MEDIA_TYPE = re.compile(r"[a-z0-9*][a-z0-9!#$&^_.+*-]*/[a-z0-9*][a-z0-9!#$&^_.+*-]*")


def limit_key(value: object) -> str:
    """What a limit zone counts by: "$remote_addr", "$http_NAME" or "$cookie_NAME"."""
    if not isinstance(value, str) or _LIMIT_KEY.fullmatch(value) is None:
        raise ValueError(f'must be "$remote_addr", "$http_NAME" or "$cookie_NAME", got {show(value)}')
    return value


def rate(value: object) -> float:
    """A request rate, "10r/s" or "60r/m", in requests per second."""
    found = _RATE.fullmatch(value) if isinstance(value, str) else None
    number = float(found.group(1)) if found else 0.0
    if not number:
        raise ValueError(f'must be a rate like "10r/s" or "60r/m", above 0, got {show(value)}')
    return number if found.group(2) == "s" else number / 60  # type: ignore[union-attr]


def media_types(value: object) -> tuple[str, ...]:
    """An array of media types, "*" allowed as a wildcard ("text/*", "application/*+json")."""
    if not isinstance(value, list) or not value:
        raise ValueError(f'must be a non-empty array of media types like "text/*", got {show(value)}')
    for item in value:
        if not isinstance(item, str) or _MEDIA_TYPE.fullmatch(item.lower()) is None:
            raise ValueError(f'bad media type {show(item)}: write it as "type/subtype", "*" as a wildcard')
    return tuple(item.lower() for item in value)


_positive_seconds = duration(above=0.0, typed=True)
_any_seconds = duration(typed=True)

# --------------------------------------------------------------------------
# The tables
# --------------------------------------------------------------------------


def _defaults(cls: type) -> dict[str, Any]:
    """The default of each field of a dataclass; ``REQUIRED`` for a field without one."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = REQUIRED
    return out


_F = _defaults(FrontendConfig)
FRONTEND: tuple[Key, ...] = (
    Key("listen", None, _F["listen"], "addresses to accept HTTP on: one, or an array (host:port, [v6]:port, port, unix:/path, or a table as below)"),
    Key("processes", processes, _F["processes"], 'front-end processes sharing the listening sockets, or "auto" (one per CPU)'),
    Key("root", nonempty_string, _F["root"], "DOCUMENT_ROOT sent to workers for routes that set none"),
    Key("server_name", string, _F["server_name"], 'SERVER_NAME; "" for the address the request came in on'),
    Key("access_log", None, _F["access_log"], '"-" for stdout, a file path, or false (off)'),
    Key("error_log", nonempty_string, _F["error_log"], '"-" for stderr, or a file path'),
    Key("max_connections", integer(1, typed=True), _F["max_connections"], "client connections open at once, per process"),
    Key("header_timeout", _positive_seconds, _F["header_timeout"], "time a client may take to send the request head (408)", "s"),
    Key("body_timeout", _positive_seconds, _F["body_timeout"], "time allowed between two reads of the request body (408)", "s"),
    Key("keepalive_timeout", _positive_seconds, _F["keepalive_timeout"], "time an idle kept-alive connection stays open", "s"),
    Key("send_timeout", _positive_seconds, _F["send_timeout"], "time allowed between two writes to the client", "s"),
    Key("keepalive_requests", integer(1, typed=True), _F["keepalive_requests"], "requests served on one connection before closing it (HTTP/2: streams, then GOAWAY)"),
    Key("max_request_line", size(1), _F["max_request_line"], "bytes in the request line (414)", "bytes"),
    Key("max_header_size", size(1), _F["max_header_size"], "bytes in the whole request head (431)", "bytes"),
    Key("max_headers", integer(1, typed=True), _F["max_headers"], "header fields in one request (431)"),
    Key("max_body_size", size(0), _F["max_body_size"], "bytes of request body (413); 0 for no limit", "bytes"),
    Key("underscores_in_headers", typed_boolean, _F["underscores_in_headers"], 'pass header names holding "_" to workers'),
    Key("tls", None, _F["tls"], "the [frontend.tls] table: TLS termination; none is plain HTTP"),
    Key("http2", http2_mode, _F["http2"], 'HTTP/2: "auto" (by ALPN with TLS), true (also h2c by its preface without TLS), false'),
    Key("http2_max_concurrent_streams", integer(1, typed=True), _F["http2_max_concurrent_streams"], "streams one HTTP/2 client may have open at once (SETTINGS)"),
    Key("control", control_address, _F["control"], 'control and status listener (host:port or unix:/path); "" for none'),
    Key("control_allow", networks, _F["control_allow"], "CIDR networks the control listener serves; others are refused"),
    Key("control_token_file", string, _F["control_token_file"],
        'file holding the secret every control request must carry (Bearer); mode 600; "" for none'),
    Key("server_state_file", string, _F["server_state_file"], 'file keeping servers set by control across restarts; "" for none'),
    Key("pool_status_path", optional_url_path, _F["pool_status_path"], 'the pools\' pm.status_path, which the dashboard fetches over FastCGI; "" for none'),
    Key("resolver", resolver_address, _F["resolver"], 'DNS servers (host:port, or a list asked in order) for servers\' host names; "" for /etc/resolv.conf\'s'),
    Key("resolver_timeout", _positive_seconds, _F["resolver_timeout"], "time one DNS query may take at each resolver", "s"),
    Key("real_ip_from", trusted_networks, _F["real_ip_from"], 'CIDR networks (and "unix:") of proxies believed about the client address (nginx set_real_ip_from)'),
    Key("real_ip_header", real_ip_header, _F["real_ip_header"], 'where trusted proxies give the client address: X-Forwarded-For, X-Real-IP or proxy_protocol'),
    Key("real_ip_recursive", typed_boolean, _F["real_ip_recursive"], "skip trusted addresses from the right of X-Forwarded-For (nginx real_ip_recursive)"),
    Key("sendfile_root", None, _F["sendfile_root"], 'directory below which a worker\'s X-Sendfile may name files; "" for X-Sendfile off'),
)  # fmt: skip

_L = _defaults(ListenerConfig)
LISTENER: tuple[Key, ...] = (
    Key("address", address, REQUIRED, "the address to accept HTTP on"),
    Key("proxy_protocol", typed_boolean, _L["proxy_protocol"], "connections begin with a PROXY protocol header (v1 or v2), else are closed"),
    Key("real_ip_from", trusted_networks, _L["real_ip_from"], "[frontend] real_ip_from, for this listener; none: the [frontend]'s"),
    Key("real_ip_header", real_ip_header, _L["real_ip_header"], 'for this listener; none: "proxy_protocol" with proxy_protocol, else the [frontend]\'s'),
    Key("real_ip_recursive", typed_boolean, _L["real_ip_recursive"], "for this listener; none: the [frontend]'s"),
)  # fmt: skip

TLS: tuple[Key, ...] = (
    Key("cert", nonempty_string, REQUIRED, "PEM certificate chain, relative to the cluster file"),
    Key("key", nonempty_string, REQUIRED, "PEM private key, relative to the cluster file"),
)


def _buffering(defaults: dict[str, Any], whose: str) -> tuple[Key, ...]:
    """The answer-buffering keys of an upstream, which a route may set for itself."""
    return (
        Key("buffering", typed_boolean, defaults["buffering"], f"hold answers a client reads slowly (nginx fastcgi_buffering){whose}"),
        Key("buffer_size", size(4 * KiB), defaults["buffer_size"], f"bytes of one answer held in memory before a temporary file{whose}", "bytes"),
        Key("max_temp_file_size", size(0), defaults["max_temp_file_size"], f"bytes that file may grow to; past it the request is aborted; 0: no file{whose}", "bytes"),
        Key("temp_path", None, defaults["temp_path"], f'directory of the temporary files; "" for $TMPDIR, else /tmp{whose}'),
    )  # fmt: skip


_U = _defaults(UpstreamConfig)
#: An upstream's answer buffering, which a route may set for itself.
BUFFERING: tuple[Key, ...] = _buffering(_U, "")
UPSTREAM: tuple[Key, ...] = (
    Key("servers", None, REQUIRED, 'the servers: addresses, or tables like { address = "...", weight = 2 }'),
    Key("balance", choice(BALANCE_METHODS, typed=True), _U["balance"], "round_robin, least_conn, ip_hash or hash"),
    Key("hash_key", None, _U["hash_key"], 'with balance = "hash" (required): uri, remote_addr, cookie:NAME, header:NAME or arg:NAME'),
    Key("multiplex", choice(("auto", "off"), typed=True), _U["multiplex"], 'multiplex requests when a server says FCGI_MPXS_CONNS=1 ("auto"), or "off"'),
    Key("connections", integer_or_auto(1), _U["connections"], 'connections per multiplexing server, or "auto": one per worker process'),
    Key("keepalive", integer(0, typed=True), _U["keepalive"], "idle connections kept per server when not multiplexing"),
    Key("connect_timeout", _positive_seconds, _U["connect_timeout"], "time to establish a connection to a server", "s"),
    Key("send_timeout", _positive_seconds, _U["send_timeout"], "time allowed between two writes to a server", "s"),
    Key("read_timeout", _positive_seconds, _U["read_timeout"], "time allowed between two reads from a server", "s"),
    Key("dead_host_timeout", _any_seconds, _U["dead_host_timeout"], "silence from a server's host (TCP keepalive, TCP_USER_TIMEOUT) after which its requests fail over; 0 for the system's", "s"),
    Key("ping_interval", _any_seconds, _U["ping_interval"], "silence of a multiplexed connection with requests in flight after which the server is pinged (GET_VALUES); 0 for never", "s"),
    Key("ping_timeout", _positive_seconds, _U["ping_timeout"], "time a ping's answer may take before the server's process is taken as hung and its requests fail over", "s"),
    Key("tries", integer(0, typed=True), _U["tries"], "servers tried for one request; 0 for all of them"),
    Key("next_upstream_timeout", _any_seconds, _U["next_upstream_timeout"], "time spent trying servers for one request; 0 for no limit", "s"),
    Key("next_upstream_non_idempotent", typed_boolean, _U["next_upstream_non_idempotent"], "retry POST, PATCH, LOCK on another server"),
    Key("health_check", None, _U["health_check"], "the [upstream.NAME.health_check] table: active checks; none is passive only"),
    Key("resolve", _any_seconds, _U["resolve"], "re-resolve servers given by host name this often, each address a server; 0 for never", "s"),
    *BUFFERING,
    Key("status_path", optional_url_path, _U["status_path"], "this pool's pm.status_path for the dashboard; \"\" for [frontend] pool_status_path"),
)  # fmt: skip

_S = _defaults(ServerSpec)
SERVER: tuple[Key, ...] = (
    Key("address", address, REQUIRED, "where the server listens"),
    Key("weight", integer(1, MAX_WEIGHT, typed=True), _S["weight"], f"share of requests relative to the other servers, 1 to {MAX_WEIGHT}"),
    Key("max_fails", integer(0, typed=True), _S["max_fails"], "failures within fail_timeout that put the server out; 0 never does"),
    # 0 would make the failure-counting window empty; max_fails = 0 is how to
    # turn failure counting off.
    Key("fail_timeout", _positive_seconds, _S["fail_timeout"], "the failure-counting window, and how long the server stays out", "s"),
    Key("backup", typed_boolean, _S["backup"], "take requests only when no primary server can (not with ip_hash or hash)"),
    Key("down", typed_boolean, _S["down"], "never take requests"),
    Key("max_conns", integer(0, typed=True), _S["max_conns"], "requests in flight at once, per front-end process; 0 for no limit"),
    Key("resolve", _any_seconds, _S["resolve"], "re-resolve this server's host name this often; 0 for the upstream's resolve", "s"),
)  # fmt: skip

_H = _defaults(HealthCheck)
HEALTH_CHECK: tuple[Key, ...] = (
    Key("path", url_path, REQUIRED, "the request path sent to each server (the worker's ping path)"),
    Key("interval", _positive_seconds, _H["interval"], "time between two checks of one server", "s"),
    Key("timeout", _positive_seconds, _H["timeout"], "time a check may take before it counts as failed", "s"),
    Key("expect_status", integer(100, 599, typed=True), _H["expect_status"], "the HTTP status a healthy server answers"),
)  # fmt: skip

_R = _defaults(RouteConfig)
ROUTE: tuple[Key, ...] = (
    Key("prefix", url_path, None, "match paths starting with it (or give regex)"),
    Key("regex", regex, None, "match paths it finds a match in, as nginx's location ~ (or give prefix)"),
    Key("upstream", None, None, "the [upstream.NAME] serving the route (or give static)"),
    Key("static", None, None, "a directory served as files, relative to the cluster file (or give upstream)"),
    Key("index", None, "", f'static: the file for a directory ("{DEFAULT_STATIC_INDEX}"); upstream: appended to paths ending in "/"'),
    Key("root", nonempty_string, None, "DOCUMENT_ROOT of an upstream route; none: [frontend] root"),
    Key("split_path_info", split_path_info, None, "a regex with two groups: the script name, then PATH_INFO"),
    Key("params", None, {}, "extra FastCGI params of an upstream route, a table of strings"),
    *_buffering(dict.fromkeys(b.name for b in BUFFERING), "; none: the upstream's"),
    Key("internal", typed_boolean, False, "static: reached only through a worker's X-Accel-Redirect; 404 when asked for directly"),
    Key("gzip", typed_boolean, _R["gzip"], "compress answers for clients that accept it"),
    Key("gzip_comp_level", integer(1, 9, typed=True), _R["gzip_comp_level"], "gzip level, 1 (fastest) to 9 (smallest)"),
    Key("gzip_min_length", size(0), _R["gzip_min_length"], "answers declaring a shorter Content-Length are sent as they are", "bytes"),
    Key("gzip_types", media_types, _R["gzip_types"], 'media types compressed ("*" a wildcard)'),
    Key("gzip_proxied", choice(("off", "any"), typed=True), _R["gzip_proxied"], 'requests with a Via header (through a proxy): "off" not compressed, "any" compressed'),
    Key("brotli", typed_boolean, _R["brotli"], "with gzip: offer br to clients preferring it (the brotli package)"),
    Key("brotli_comp_level", integer(0, 11, typed=True), _R["brotli_comp_level"], "brotli quality, 0 to 11"),
    Key("zstd", typed_boolean, _R["zstd"], "with gzip: offer zstd to clients preferring it (the zstandard package)"),
    Key("zstd_comp_level", integer(1, 22, typed=True), _R["zstd_comp_level"], "zstd level, 1 to 22"),
    Key("limit_req", None, _R["limit_req"], "the [[route]] limit_req = { ... } table: a request rate per key; none: no limit"),
    Key("limit_req_status", integer(400, 599, typed=True), _R["limit_req_status"], "status of a request refused by limit_req (nginx's is 503)"),
    Key("limit_conn", None, _R["limit_conn"], "the [[route]] limit_conn = { ... } table: requests in progress per key; none: no limit"),
    Key("limit_conn_status", integer(400, 599, typed=True), _R["limit_conn_status"], "status of a request refused by limit_conn (nginx's is 503)"),
    Key("cache", None, None, "the [route.cache] table: cache the upstream's answers (nginx fastcgi_cache); none is off"),
)  # fmt: skip
#: Route keys a static route may not hold.
UPSTREAM_ROUTE_ONLY: tuple[str, ...] = ("root", "split_path_info", "params", *(b.name for b in BUFFERING), "cache")
#: Route keys of compression and limits, which static routes have too.
EDGE_ROUTE_KEYS: tuple[str, ...] = (
    "gzip", "gzip_comp_level", "gzip_min_length", "gzip_types", "gzip_proxied", "brotli", "brotli_comp_level",
    "zstd", "zstd_comp_level", "limit_req_status", "limit_conn_status",
)  # fmt: skip

_LR = _defaults(LimitReq)
LIMIT_REQ: tuple[Key, ...] = (
    Key("zone", None, REQUIRED, "the [limit_req_zone.NAME] counting the requests"),
    Key("burst", integer(0, typed=True), _LR["burst"], "requests past the rate that wait (or pass, with nodelay) rather than being refused"),
    Key("delay", integer(0, typed=True), _LR["delay"], "requests of the burst served without waiting"),
    Key("nodelay", typed_boolean, _LR["nodelay"], "serve the whole burst without waiting"),
)  # fmt: skip

LIMIT_CONN: tuple[Key, ...] = (
    Key("zone", None, REQUIRED, "the [limit_conn_zone.NAME] counting the requests"),
    Key("max", integer(1, typed=True), REQUIRED, "requests of one key in progress at once; more are refused"),
)  # fmt: skip

_LZ = _defaults(LimitReqZone)
LIMIT_REQ_ZONE: tuple[Key, ...] = (
    Key("key", limit_key, REQUIRED, 'what a client is: "$remote_addr", "$http_NAME" (a header) or "$cookie_NAME"'),
    Key("rate", rate, REQUIRED, 'requests allowed per key, "10r/s" or "60r/m", per front-end process'),
    Key("max_keys", integer(1, typed=True), _LZ["max_keys"], "keys remembered per process; past it the least recently seen is forgotten"),
)  # fmt: skip

LIMIT_CONN_ZONE: tuple[Key, ...] = (
    Key("key", limit_key, REQUIRED, 'what a client is: "$remote_addr", "$http_NAME" (a header) or "$cookie_NAME"'),
)

_P = _defaults(ClusterPoolConfig)
POOL: tuple[Key, ...] = (
    Key("listen", address, REQUIRED, "the FastCGI address the pool serves"),
    Key("app", app_ref, REQUIRED, 'the WSGI or ASGI app, "module:attribute"'),
    Key("threads", integer(1, typed=True), _P["threads"], "threads running sync (WSGI) app code at once"),
    Key("threads_inline", typed_boolean, _P["threads_inline"], "run a WSGI app whose calls prove quick on the loop, no thread hand-off"),
    Key("max_requests", integer(1, typed=True), _P["max_requests"], "requests in flight per connection (FCGI_MAX_REQS)"),
    Key("max_conns", integer(1, typed=True), _P["max_conns"], "connections served at once (FCGI_MAX_CONNS)"),
    Key("graceful_timeout", _any_seconds, _P["graceful_timeout"], "time requests in flight may run after SIGTERM", "s"),
    Key("root_path", root_path, _P["root_path"], "SCRIPT_NAME of the app when the web server sends no PATH_INFO"),
    Key("env", None, _P["env"], "environment variables of the pool's processes, a table of strings"),
    Key("session", None, _P["session"], 'session.* settings of the pool, a table like { save_handler = "redis", save_path = "tcp://..." }; none: sessions off'),
)  # fmt: skip

TOP: tuple[Key, ...] = (
    Key("frontend", None, {}, "the HTTP side"),
    Key("upstream", None, {}, "pools of FastCGI servers, one [upstream.NAME] each"),
    Key("route", None, [], "[[route]] tables, in order; the first match wins"),
    Key("pool", None, {}, "worker pools that fcgi-cluster up starts, one [pool.NAME] each"),
    Key("limit_req_zone", None, {}, "request-rate zones of routes' limit_req, one [limit_req_zone.NAME] each"),
    Key("limit_conn_zone", None, {}, "concurrency zones of routes' limit_conn, one [limit_conn_zone.NAME] each"),
)

#: Every table, as the reference documentation titles it.
SECTIONS: tuple[tuple[str, tuple[Key, ...]], ...] = (
    ("[frontend]", FRONTEND),
    ("[frontend] listen = [{ ... }]", LISTENER),
    ("[frontend.tls]", TLS),
    ("[upstream.NAME]", UPSTREAM),
    ("[upstream.NAME] servers = [{ ... }]", SERVER),
    ("[upstream.NAME.health_check]", HEALTH_CHECK),
    ("[[route]]", ROUTE),
    ("[[route]] limit_req = { ... }", LIMIT_REQ),
    ("[[route]] limit_conn = { ... }", LIMIT_CONN),
    ("[limit_req_zone.NAME]", LIMIT_REQ_ZONE),
    ("[limit_conn_zone.NAME]", LIMIT_CONN_ZONE),
    ("[route.cache]", CACHE),
    ("[pool.NAME]", POOL),
)


def names(keys: tuple[Key, ...]) -> tuple[str, ...]:
    """The key names of a table, in order."""
    return tuple(key.name for key in keys)


def _size_text(number: int) -> str:
    for suffix, scale in (("g", 1024**3), ("m", 1024**2), ("k", 1024)):
        if number and number % scale == 0:
            return f'"{number // scale}{suffix}"'
    return str(number)


def default_text(key: Key) -> str:
    """The default of ``key`` as the reference documentation writes it (a TOML value, or a word)."""
    value = key.default
    if value is REQUIRED:
        return "required"
    if value is None:
        return "none"
    if key.unit == "s":
        return f'"{value:g}s"'
    if key.unit == "bytes":
        return _size_text(value)  # type: ignore[arg-type]
    if isinstance(value, tuple) and len(value) == 1:
        return show(value[0])
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return show(value)
