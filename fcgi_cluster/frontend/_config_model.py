"""The cluster configuration as Python sees it: one frozen dataclass per TOML table, and its error.

Each dataclass lists its keys with their defaults, in the units the program
uses (seconds, bytes), with why each default was chosen; the schema
(``_config_schema``) takes its defaults from here, and the reader
(``_config_read``) fills them in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

from .._settings import SettingsError
from ..client._cgi import DEFAULT_DOCUMENT_ROOT
from ..protocol import DEFAULT_MAX_REQUESTS
from ._balancer import Balancer, ServerSpec
from .edge._cache_config import CacheConfig

__all__ = [
    "BALANCE_METHODS", "DEFAULT_STATIC_INDEX", "DEFAULT_UPSTREAM", "ClusterConfig", "ClusterPoolConfig",
    "ConfigError", "DEFAULT_GZIP_TYPES", "FrontendConfig", "HealthCheck", "LimitConn", "LimitConnZone", "LimitReq",
    "LimitReqZone", "ListenerConfig", "RouteConfig", "TLSConfig", "UpstreamConfig",
]  # fmt: skip

SECONDS = 1.0
KiB = 1024
MiB = 1024 * KiB

#: Load-balancing methods an upstream may name, as nginx spells them.
BALANCE_METHODS: tuple[str, ...] = Balancer.METHODS

#: Index file of a static route when none is given: nginx's ``index`` default.
DEFAULT_STATIC_INDEX = "index.html"

#: Media types compressed when a route sets no ``gzip_types``: text and the
#: text-like formats of the web (nginx's default is text/html alone).
DEFAULT_GZIP_TYPES: tuple[str, ...] = (
    "text/*", "application/json", "application/*+json", "application/javascript", "application/xml",
    "application/*+xml", "image/svg+xml",
)  # fmt: skip


#: The upstream name ``simple_config`` gives its one pool (``fcgi-cluster frontend --upstream ...``).
DEFAULT_UPSTREAM = "default"


class ConfigError(SettingsError):
    """A configuration file (or command line) that cannot be used.

    ``str(error)`` is ``"<file>:<line>: <key>: <reason>"``, the settings
    toolkit's wording for every format; the line is omitted when unknown (a
    key missing from a table that is not in the file either), the key when
    the error is not about one key (a TOML syntax error, an unreadable file).

    Attributes:
        filename: the file named in the message ("<config>" for text without
            a file, "<command line>" for ``simple_config``).
        line: 1-based line number, or None.
        key: the dotted key path, e.g. ``route[0].upstream``, or None.
        reason: what is wrong, for a human.
    """

    def __init__(self, filename: str, line: int | None, key: str | None, reason: str) -> None:
        super().__init__(filename, line, key, reason)


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
class ListenerConfig:
    """One listening address's own settings (a table in ``[frontend] listen``).

    Attributes:
        address: the address, normalised as ``FrontendConfig.listen``'s.
        proxy_protocol: every connection starts with a PROXY header (v1 or v2).
        real_ip_from, real_ip_header, real_ip_recursive: the
            ``FrontendConfig`` keys for this listener; None: the
            [frontend]'s (``real_ip_header``: "proxy_protocol" on a
            listener with ``proxy_protocol``).
    """

    address: str
    proxy_protocol: bool = False  # nginx's listen ... proxy_protocol is off unless asked
    real_ip_from: tuple[str, ...] | None = None
    real_ip_header: str | None = None
    real_ip_recursive: bool | None = None


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
        http2: HTTP/2 to clients: "auto" (by ALPN when TLS is on), True
            (also h2c with prior knowledge on a cleartext listener), False (off).
        http2_max_concurrent_streams: streams one HTTP/2 client may have open.
        control: the control and status listener (``_control``); "" for none.
        control_allow: CIDR networks whose clients the control listener serves.
        control_token_file: a file holding the secret control requests must carry
            (``_control_token``); "" for none.
        server_state_file: where runtime server states are kept ("" for memory only).
        pool_status_path: the worker pools' status path the dashboard fetches ("" for none).
        resolver: the DNS server (``host:port``) asked for servers' host names
            (``_resolve``); "" for the first nameserver of /etc/resolv.conf.
        resolver_timeout: seconds one DNS query may take.
        real_ip_from: CIDR networks (and "unix:") whose peers may say who
            the client is (``edge._real_ip``); empty: nobody.
        real_ip_header: where trusted peers say it: "X-Forwarded-For",
            "X-Real-IP" or "proxy_protocol".
        real_ip_recursive: skip trusted addresses from the right of X-Forwarded-For.
        sendfile_root: the directory below which a worker's ``X-Sendfile``
            may name files (``edge._accel``); "" for X-Sendfile off.
        listen_options: each of ``listen``'s own settings, in its order
            (empty: none has any).
    """

    listen: tuple[str, ...] = ("127.0.0.1:8080",)  # loopback: exposing a server is a decision
    processes: int | str = "auto"  # one per CPU, as nginx's packaged worker_processes auto
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
    http2: bool | str = "auto"  # as nginx: offered by ALPN where TLS is on; h2c only when asked
    http2_max_concurrent_streams: int = 128  # nginx http2_max_concurrent_streams
    control: str = ""  # off: runtime control is a decision, as HAProxy's stats socket
    control_allow: tuple[str, ...] = ("127.0.0.0/8", "::1/128")  # loopback only
    control_token_file: str = ""  # none: control_allow (or the socket's permissions) alone decide
    server_state_file: str = ""
    pool_status_path: str = ""  # pools set pm.status_path themselves; php-fpm has no default
    resolver: str = ""  # nginx has no default; the system's is what getaddrinfo would ask
    resolver_timeout: float = 5 * SECONDS  # nginx resolver_timeout is 30s; 5s keeps a reload's names fresh
    real_ip_from: tuple[str, ...] = ()  # nginx set_real_ip_from: none, nobody is believed
    real_ip_header: str = "X-Forwarded-For"  # nginx's real_ip_header default is X-Real-IP; XFF is what balancers send
    real_ip_recursive: bool = False  # nginx real_ip_recursive off
    sendfile_root: str = ""  # off: a worker naming any file on the disk is a decision
    listen_options: tuple[ListenerConfig, ...] = ()


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
        dead_host_timeout: seconds of silence from a server's host (TCP
            keepalive probes unanswered, data unacknowledged) after which its
            connection and the requests in flight on it fail; 0 leaves the
            system's TCP settings.
        ping_interval: seconds a multiplexed connection with requests in
            flight may read nothing before the server is pinged
            (FCGI_GET_VALUES); 0 turns pings off. Never sent to servers that
            do not multiplex (php-fpm answers nothing while busy).
        ping_timeout: seconds the ping's answer may take; past it the server's
            process is taken as hung and its requests fail over.
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
        status_path: the pm.status_path of this upstream's pools, which the
            dashboard fetches; "": the front-end's ``pool_status_path``.
        resolve: seconds between two resolutions of servers given by host
            name, each address a server of its own (``_resolve``); 0: resolved
            by the system at each connection, as written.
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
    # nginx has only fastcgi_socket_keepalive on (the system's 2 h): a request
    # in flight on a host whose link is cut would wait read_timeout.
    dead_host_timeout: float = 2 * SECONDS
    # A hung worker process (stopped, loop stuck) keeps its host answering TCP;
    # our worker answers GET_VALUES from its loop while apps run in threads.
    ping_interval: float = 2 * SECONDS
    ping_timeout: float = 3 * SECONDS
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
    resolve: float = 0 * SECONDS  # off, as nginx's server without "resolve"
    status_path: str = ""  # the dashboard's: [frontend] pool_status_path unless set


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
        internal: a static route only reached through a worker's
            ``X-Accel-Redirect``; a client asking for it directly gets 404 (nginx ``internal``).
        gzip: compress answers (``edge._compress``); gzip_comp_level,
            gzip_min_length, gzip_types, gzip_proxied, brotli,
            brotli_comp_level, zstd, zstd_comp_level: how (nginx's names;
            brotli and zstd those of their nginx modules).
        limit_req, limit_req_status, limit_conn, limit_conn_status: the
            route's request-rate and concurrency limits (``edge._limits``).
        cache: the route's response cache (``edge._cache_config.CacheConfig``); None: off.
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
    internal: bool = False
    gzip: bool = False  # nginx's default: compression is CPU, spent where asked
    gzip_comp_level: int = 1  # nginx's default: most of the gain for the least CPU
    gzip_min_length: int = 20  # nginx's default (bytes)
    gzip_types: tuple[str, ...] = DEFAULT_GZIP_TYPES
    gzip_proxied: str = "off"  # nginx's default: not for requests that came through a proxy (Via)
    brotli: bool = True  # when gzip is on and the client prefers it
    # ngx_brotli uses 6; on the fly 4 still beats gzip's size at a fraction of 6's CPU.
    brotli_comp_level: int = 4
    zstd: bool = True  # when gzip is on and the client prefers it
    zstd_comp_level: int = 3  # zstd's own default
    limit_req: LimitReq | None = None
    # nginx answers 503; 429 Too Many Requests tells a client what happened.
    limit_req_status: int = 429
    limit_conn: LimitConn | None = None
    limit_conn_status: int = 429
    cache: CacheConfig | None = None

    def match(self, path: str) -> bool:
        """Whether this route takes a request for ``path`` (the decoded URI path)."""
        if self.prefix is not None:
            return path.startswith(self.prefix)
        return self.regex is not None and self.regex.search(path) is not None


@dataclass(frozen=True, slots=True)
class LimitReqZone:
    """A ``[limit_req_zone.NAME]``: a request rate per key (nginx ``limit_req_zone``).

    Attributes:
        key: what identifies a client: "$remote_addr", "$http_NAME" (a
            request header, "-" as "_") or "$cookie_NAME".
        rate: requests per second allowed per key ("10r/s", "60r/m").
        max_keys: keys remembered at once per process; past it the least
            recently seen is forgotten (nginx bounds its zone by size).
    """

    key: str
    rate: float
    max_keys: int = 100_000  # about 250 bytes each (measured, IPv4 keys): 25 MB at most per process


@dataclass(frozen=True, slots=True)
class LimitConnZone:
    """A ``[limit_conn_zone.NAME]``: requests in progress per key (nginx ``limit_conn_zone``).

    Attributes:
        key: as ``LimitReqZone.key``.
    """

    key: str


@dataclass(frozen=True, slots=True)
class LimitReq:
    """A route's ``limit_req = { ... }``.

    Attributes:
        zone: the ``[limit_req_zone.NAME]``.
        burst: requests past the rate held (delayed) or let through (nodelay).
        delay: requests of the burst served at once before the rest are delayed.
        nodelay: serve the whole burst at once (``delay`` = ``burst``).
    """

    zone: str
    burst: int = 0  # nginx's default: no excess at all
    delay: int = 0  # nginx's default: every excess request is delayed
    nodelay: bool = False


@dataclass(frozen=True, slots=True)
class LimitConn:
    """A route's ``limit_conn = { ... }``.

    Attributes:
        zone: the ``[limit_conn_zone.NAME]``.
        max: requests of one key in progress at once.
    """

    zone: str
    max: int


@dataclass(frozen=True, slots=True)
class ClusterPoolConfig:
    """A worker pool that ``fcgi-cluster up`` starts (the php-fpm role).

    The defaults are those of ``fcgi_cluster.worker.WorkerConfig``.

    Attributes:
        listen: the FastCGI address the pool serves, normalised.
        app: the WSGI or ASGI app, "module:attribute".
        threads: threads running sync (WSGI) app code at once.
        threads_inline: run an app whose calls prove quick on the loop's thread.
        max_requests: requests in flight per connection (FCGI_MAX_REQS).
        max_conns: connections served at once (FCGI_MAX_CONNS).
        graceful_timeout: seconds in-flight requests may run after SIGTERM.
        root_path: SCRIPT_NAME of the app when the web server sends no PATH_INFO.
        env: environment variables set for the pool's processes.
        session: the pool's ``session.*`` settings, raw strings under their
            names without the prefix (``save_handler``); empty: sessions off.
            Checked when the file is read (``fcgi_cluster.sessions``).
    """

    listen: str
    app: str
    threads: int = 16  # sync code must not block the loop; bounds its parallelism
    threads_inline: bool = True  # an app proven quick runs on the loop (worker/_inline.py)
    max_requests: int = DEFAULT_MAX_REQUESTS  # keeps a multiplexed connection busy across a LAN
    max_conns: int = 1024  # further connections wait in the listen backlog
    graceful_timeout: float = 30 * SECONDS  # ordinary requests finish; a deploy still moves on
    root_path: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    session: Mapping[str, str] = field(default_factory=dict)  # php-fpm: sessions are the app's choice


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
        limit_req_zones, limit_conn_zones: the zones routes' limits name.
    """

    frontend: FrontendConfig
    upstreams: dict[str, UpstreamConfig]
    routes: tuple[RouteConfig, ...]
    pools: dict[str, ClusterPoolConfig]
    path: str | None = None
    limit_req_zones: dict[str, LimitReqZone] = field(default_factory=dict)
    limit_conn_zones: dict[str, LimitConnZone] = field(default_factory=dict)

    def route_for(self, path: str) -> RouteConfig | None:
        """The first route that matches ``path``, or None."""
        for route in self.routes:
            if route.match(path):
                return route
        return None
