"""Real peer processes for the tests: nginx, haproxy, php-fpm, cgi-fcgi and flup, on loopback.

The house rule is that no mock stands in for a component a user would run for real, so the
end-to-end tests put our code between the programs it has to work with. Everything here is
synchronous and blocking: call it from sync fixtures or before entering trio.

Every process is started in its own session (process group) and stopped by its id:
SIGTERM, then after STOP_GRACE_SECONDS a SIGKILL to its group, so a test that fails or is
interrupted never leaves a server behind on a port. Each peer writes its config, pid file,
temp files and logs in one directory (a pytest ``tmp_path``, or a temporary one).

Resource handling: ``run_process`` and the peer context managers own their process; leaving
the ``with`` block stops it, on success or failure.

Error handling: a process that exits or does not listen within START_TIMEOUT_SECONDS raises
``PeerStartError`` carrying its log; a test that fails while a process runs gets the tail of
that log on stderr, which pytest shows in the failure report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Mapping, Sequence

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"

# Long enough for a cold nginx/haproxy/python start on a loaded 2-core CI machine; short
# enough that a peer that will never listen fails the test quickly.
START_TIMEOUT_SECONDS = 10.0
# nginx and haproxy finish in-flight requests on SIGTERM; none of ours take seconds.
STOP_GRACE_SECONDS = 5.0
# How much of a log to print when a test fails: the end is where the reason is.
LOG_TAIL_BYTES = 8 * 1024

# Debian's file of standard FastCGI params (QUERY_STRING, REQUEST_METHOD, ...).
NGINX_FASTCGI_PARAMS = pathlib.Path("/etc/nginx/fastcgi_params")

# Servers live in sbin, which a non-root PATH often lacks.
_SBIN_PATH = os.pathsep.join(["/usr/local/sbin", "/usr/sbin", "/sbin"])

# Distributions install php-fpm under its PHP version: php-fpm8.2, php-fpm7.4.
_PHP_FPM_VERSIONED = re.compile(r"php-fpm(\d+)\.(\d+)")

# The PHP pages the tests and benchmarks serve through php-fpm (hello.php, env.php, ...).
PHP_PAGES = REPO_ROOT / "tests" / "e2e" / "php"


class PeerStartError(RuntimeError):
    """A peer process exited, or did not listen, before it was ready."""


@dataclasses.dataclass(frozen=True)
class Peer:
    """A running peer: where it listens, its process and its files.

    Attributes:
        name: Short name used in messages and log file names ("nginx", "haproxy", ...).
        host: The address it listens on.
        port: The TCP port it listens on.
        directory: Where its config, pid file, temp files and logs are.
        process: The process (the nginx master, haproxy, the flup server).
        config_path: Its configuration file, or None when it has none.
        log_paths: Every log it writes, in the order worth reading them.
    """

    name: str
    host: str
    port: int
    directory: pathlib.Path
    process: subprocess.Popen
    config_path: pathlib.Path | None
    log_paths: tuple[pathlib.Path, ...]

    def url(self, path: str = "/") -> str:
        """The ``http://host:port/path`` URL of ``path`` on this peer."""
        return f"http://{self.host}:{self.port}{path}"

    def logs(self) -> str:
        """All its logs, each under a header line, for assertion messages."""
        return "\n".join(
            f"--- {path.name} ---\n{_read_text(path)}" for path in self.log_paths
        )


def python_executable() -> str:
    """The Python running the tests (the one whose site-packages have the test extras)."""
    return sys.executable


#: Every port ``free_port`` handed out in this test run: the kernel may pick the same
#: free port twice, and a test that takes two (a worker's, then its front-end's) before
#: starting both would point its client at the wrong server.
_HANDED_OUT: set[int] = set()


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that nothing listens on right now, never the same one twice.

    The kernel picks it (bind to port 0), and the socket is closed before returning, so
    another process could take it in between: the callers start their server at once.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_for_port(
    host: str,
    port: int | None,
    timeout: float = START_TIMEOUT_SECONDS,
    *,
    process: subprocess.Popen | None = None,
) -> None:
    """Block until a connection to ``host:port`` succeeds.

    Args:
        host: Address to connect to; with ``port=None``, the path of a unix socket.
        port: TCP port, or None for a unix socket.
        timeout: Seconds to keep trying.
        process: The process expected to listen; if it exits, give up at once.

    Raises:
        PeerStartError: ``process`` exited first.
        TimeoutError: Nothing accepted a connection within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    last_error: OSError | None = None
    while True:
        if process is not None and process.poll() is not None:
            raise PeerStartError(
                f"exited with status {process.returncode} before listening on "
                f"{_describe(host, port)}"
            )
        try:
            _connect(host, port, timeout=0.5).close()
            return
        except OSError as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"nothing listening on {_describe(host, port)} after {timeout:g}s: {last_error}"
            )
        time.sleep(0.02)


@contextlib.contextmanager
def run_process(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    ready_port: int | None = None,
    ready_host: str = LOOPBACK,
    ready_unix: str | os.PathLike[str] | None = None,
    name: str | None = None,
    log_path: str | os.PathLike[str] | None = None,
    extra_logs: Sequence[str | os.PathLike[str]] = (),
    timeout: float = START_TIMEOUT_SECONDS,
) -> Iterator[subprocess.Popen]:
    """Run a process for the duration of a ``with`` block.

    Its stdout and stderr go to one log file; stdin is /dev/null.

    Args:
        argv: The command line.
        cwd: Its working directory.
        env: Its whole environment (None: inherit ours).
        ready_port: If given, wait until ``ready_host:ready_port`` accepts connections.
        ready_host: See ``ready_port``.
        ready_unix: If given, wait until the unix socket at this path accepts connections.
        name: Name for messages and the log file; defaults to the program's name.
        log_path: Where to write the log; it is kept. By default a temporary file, deleted
            when the block ends.
        extra_logs: Log files the program writes itself (nginx's error.log), shown with
            its output when it fails.
        timeout: Seconds to wait for the port.

    Yields:
        The ``subprocess.Popen``, with two extra attributes: ``name`` and ``log_path``.

    Raises:
        PeerStartError: The program cannot be run, exits, or does not listen in time. The
            message holds its log.
    """
    argv = [os.fspath(arg) for arg in argv]
    name = name or pathlib.Path(argv[0]).name
    keep_log = log_path is not None
    if log_path is None:
        fd, log_path = tempfile.mkstemp(prefix=f"{name}-", suffix=".log")
        os.close(fd)
    log_path = pathlib.Path(log_path)

    with open(log_path, "wb") as log:
        try:
            process = subprocess.Popen(
                argv,
                cwd=cwd,
                env=None if env is None else dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group, so stop_process can reach children it forked.
                start_new_session=True,
            )
        except OSError as exc:
            if not keep_log:
                log_path.unlink(missing_ok=True)
            raise PeerStartError(f"{name}: cannot run {argv[0]!r}: {exc}") from exc
    process.name = name
    process.log_path = log_path

    ready = None
    if ready_unix is not None:
        ready = (os.fspath(ready_unix), None)
    elif ready_port is not None:
        ready = (ready_host, ready_port)
    if ready is not None:
        try:
            wait_for_port(*ready, timeout, process=process)
        except BaseException as exc:
            stop_process(process)
            logs = "".join(
                f"\n--- {path} ---\n{_read_text(pathlib.Path(path))}"
                for path in (log_path, *extra_logs)
            )
            if not keep_log:
                log_path.unlink(missing_ok=True)
            if isinstance(exc, (PeerStartError, TimeoutError)):
                raise PeerStartError(
                    f"{name} did not start: {exc}\ncommand: {' '.join(argv)}{logs}"
                ) from None
            raise

    try:
        yield process
    except GeneratorExit:
        raise
    except BaseException:
        # The test failed while the process ran: its logs are the first thing to read.
        stop_process(process)
        for path in (log_path, *extra_logs):
            tail = _read_text(pathlib.Path(path), LOG_TAIL_BYTES)
            sys.stderr.write(f"--- tail of {name} log {path} ---\n{tail}\n")
        raise
    finally:
        stop_process(process)
        if not keep_log:
            log_path.unlink(missing_ok=True)


def stop_process(process: subprocess.Popen, grace: float = STOP_GRACE_SECONDS) -> None:
    """Stop a process started by ``run_process``, and anything left in its process group.

    SIGTERM to its pid, up to ``grace`` seconds to exit, then SIGKILL to its group. Safe to
    call again, and on a process that has already exited.
    """
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            _kill_group(process.pid)
            process.wait()
    # Children that outlived the leader (nginx workers after a killed master). Linux does
    # not reuse a pid while a process group of that id has members, so this group is ours.
    _kill_group(process.pid)


@contextlib.contextmanager
def nginx_fastcgi(
    upstream_host: str,
    upstream_port: int | None,
    keepalive: bool = False,
    *,
    directory: str | os.PathLike[str] | None = None,
    port: int | None = None,
    more_upstreams: Sequence[tuple[str, int | None]] = (),
    keepalive_connections: int = 8,
    access_log: bool = True,
    worker_connections: int = 4096,
    keepalive_timeout: float | None = None,
    worker_processes: int = 1,
    http_extra: str = "",
    location_extra: str = "",
) -> Iterator[Peer]:
    """Run nginx as an HTTP front-end passing every request to a FastCGI upstream.

    The app is mounted at the root, as WSGI expects: SCRIPT_NAME is "" and PATH_INFO the
    whole decoded path. Request bodies of any size are accepted (``client_max_body_size
    0``) and buffered by nginx before the upstream sees them, as nginx does by default.

    Args:
        upstream_host: The FastCGI server's address; with ``upstream_port=None``, the path
            of its unix socket.
        upstream_port: Its TCP port, or None for a unix socket.
        keepalive: Keep FastCGI connections open between requests (``keepalive N`` in the
            upstream block and ``fastcgi_keep_conn on``); otherwise nginx opens one
            connection per request and the worker closes it.
        directory: Where to write nginx.conf, the pid file, temp paths and logs
            (``error.log``, ``access.log``). Default: a temporary directory, removed after.
        port: The HTTP port to listen on, on 127.0.0.1. Default: a free one.
        more_upstreams: Further FastCGI servers, ``(host, port)`` (port None: unix
            socket), shared round robin with the first.
        keepalive_connections: The ``N`` of ``keepalive N``: idle upstream connections
            kept; nginx closes the least recently used past it.
        access_log: Log each request (with its upstream) to ``access.log``. Off for
            benchmarks, where the disk write would be measured too.
        worker_connections: nginx's ``worker_connections``: client and upstream
            connections of each worker process together. Above the default, the worker's
            descriptor limit is raised to match (``worker_rlimit_nofile``).
        keepalive_timeout: Seconds an idle client connection stays open
            (``keepalive_timeout``); None for nginx's default, 75.
        worker_processes: nginx's ``worker_processes``: processes sharing the clients.
        http_extra: directives added to the ``http`` block (``limit_req_zone ...;``).
        location_extra: directives added to the ``location /`` block (``limit_req ...;``).

    Yields:
        The running nginx, as a ``Peer``; ``peer.port`` is its HTTP port.

    Raises:
        PeerStartError: nginx is missing or did not start (the message has its logs).
    """
    locations = f"""\
        location / {{
            include {NGINX_FASTCGI_PARAMS};
            # Mount the app at the root: an empty script name (so SCRIPT_NAME
            # is "") and the whole path as PATH_INFO.
            fastcgi_split_path_info ^()(.*)$;
            fastcgi_param PATH_INFO $fastcgi_path_info;
            fastcgi_pass fcgi_app;
            {location_extra}
        }}
        """
    upstreams = [(upstream_host, upstream_port), *more_upstreams]
    with _nginx(
        "nginx_fastcgi",
        [_nginx_server(host, port_) for host, port_ in upstreams],
        locations,
        keepalive_connections if keepalive else 0,
        directory=directory,
        port=port,
        access_log=access_log,
        worker_connections=worker_connections,
        keepalive_timeout=keepalive_timeout,
        worker_processes=worker_processes,
        http_extra=http_extra,
    ) as peer:
        yield peer


@contextlib.contextmanager
def nginx_php(
    fpm_port: int | None,
    root: str | os.PathLike[str],
    *,
    host: str = LOOPBACK,
    keepalive: bool = True,
    directory: str | os.PathLike[str] | None = None,
    port: int | None = None,
    keepalive_connections: int = 8,
    access_log: bool = True,
    worker_processes: int = 1,
) -> Iterator[Peer]:
    """Run nginx in front of php-fpm, configured the way PHP sites are.

    The classic server block: ``root`` holds the site, ``.php`` URIs go to php-fpm with
    ``SCRIPT_FILENAME $document_root$fastcgi_script_name``, and anything else is a static
    file (``try_files $uri $uri/ =404``). A ``.php`` URI with no such file still reaches
    php-fpm, which answers 404 "File not found." itself. php-fpm's status and ping pages
    are at ``/fpm-status`` and ``/fpm-ping`` (see ``php_fpm``).

    Keep-alive caveat: a php-fpm child serves one connection until the front-end closes
    it, so with ``keepalive`` and more concurrent requests than ``pm.max_children``, the
    connections beyond the children wait in php-fpm's listen queue behind idle kept-alive
    ones. Use ``keepalive=False`` (the nginx default) for concurrent load.

    Args:
        fpm_port: php-fpm's TCP port; None when ``host`` is the path of its unix socket.
        root: The document root: the directory of the .php files, as php-fpm sees it.
        host: php-fpm's address (see ``fpm_port``).
        keepalive: Keep FastCGI connections to php-fpm open (``keepalive N`` and
            ``fastcgi_keep_conn on``).
        directory: Where to write nginx.conf, the pid file, temp paths and logs.
            Default: a temporary directory, removed after.
        port: The HTTP port to listen on, on 127.0.0.1. Default: a free one.
        keepalive_connections: The ``N`` of ``keepalive N``.
        access_log: Log each request to ``access.log``.
        worker_processes: nginx's ``worker_processes``.

    Yields:
        The running nginx, as a ``Peer``; ``peer.port`` is its HTTP port.

    Raises:
        PeerStartError: nginx is missing or did not start (the message has its logs).
    """
    root = pathlib.Path(root).resolve()
    locations = f"""\
        root {root};
        index index.php index.html;

        location / {{
            try_files $uri $uri/ =404;
        }}

        location ~ \\.php$ {{
            include {NGINX_FASTCGI_PARAMS};
            fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;
            fastcgi_pass fcgi_app;
        }}

        # php-fpm's own pages (pm.status_path, ping.path), for loopback clients only.
        location ~ ^/fpm-(status|ping)$ {{
            allow 127.0.0.1;
            deny all;
            include {NGINX_FASTCGI_PARAMS};
            # No such file, but without a SCRIPT_FILENAME php-fpm answers 404 before it
            # looks at the path.
            fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;
            fastcgi_pass fcgi_app;
        }}
        """
    with _nginx(
        "nginx_php",
        [_nginx_server(host, fpm_port)],
        locations,
        keepalive_connections if keepalive else 0,
        directory=directory,
        port=port,
        access_log=access_log,
        worker_processes=worker_processes,
    ) as peer:
        yield peer


@contextlib.contextmanager
def _nginx(
    function: str,
    servers: Sequence[str],
    locations: str,
    keepalive: int,
    *,
    directory: str | os.PathLike[str] | None,
    port: int | None,
    access_log: bool,
    worker_connections: int = 4096,
    keepalive_timeout: float | None = None,
    worker_processes: int = 1,
    http_extra: str = "",
) -> Iterator[Peer]:
    """nginx with an upstream ``fcgi_app`` of ``servers`` and a server block's body.

    ``locations`` is the inside of the ``server`` block after ``listen``; its locations
    pass to ``fcgi_app``. ``keepalive`` is the upstream's ``keepalive`` count, 0 for a
    connection per request. ``worker_connections``, ``keepalive_timeout`` and
    ``worker_processes`` are as in ``nginx_fastcgi``.
    """
    nginx = _require_binary("nginx")
    with _peer_directory(directory, "nginx") as workdir:
        port = port or free_port()
        for temp in ("client_body", "fastcgi", "proxy", "uwsgi", "scgi"):
            (workdir / f"{temp}_temp").mkdir(exist_ok=True)
        # As root, nginx workers switch to "nobody", who cannot enter a 0700 pytest tmp dir
        # to write request-body temp files. Keep them as the user we are.
        user_line = "user root root;" if os.geteuid() == 0 else ""
        server_lines = "\n".join(f"server {server};" for server in servers)
        keepalive_upstream = f"keepalive {keepalive};" if keepalive else ""
        keep_conn = "on" if keepalive else "off"
        access_log_line = f"access_log {workdir}/access.log upstream;" if access_log else "access_log off;"
        # Each connection is a descriptor, plus a few for logs and the listening socket.
        rlimit_line = f"worker_rlimit_nofile {worker_connections + 64};" if worker_connections > 4096 else ""
        keepalive_timeout_line = (
            "" if keepalive_timeout is None else f"keepalive_timeout {keepalive_timeout:g}s;")
        config = textwrap.dedent(
            """\
            # Written by tests/_peers.py:{function}.
            daemon off;
            master_process on;
            worker_processes {worker_processes};
            {rlimit_line}
            {user_line}
            pid {workdir}/nginx.pid;
            error_log {workdir}/error.log info;

            events {{
                # By default, room for a benchmark's 1,024 clients plus as many upstream
                # connections.
                worker_connections {worker_connections};
            }}

            http {{
                default_type application/octet-stream;
                log_format upstream '$remote_addr "$request" $status $body_bytes_sent '
                                    'upstream=$upstream_addr status=$upstream_status '
                                    'connect=$upstream_connect_time time=$request_time';
                {access_log_line}
                client_body_temp_path {workdir}/client_body_temp;
                fastcgi_temp_path {workdir}/fastcgi_temp;
                proxy_temp_path {workdir}/proxy_temp;
                uwsgi_temp_path {workdir}/uwsgi_temp;
                scgi_temp_path {workdir}/scgi_temp;
                client_max_body_size 0;
                fastcgi_keep_conn {keep_conn};
                {keepalive_timeout_line}
                {http_extra}

                upstream fcgi_app {{
            {server_lines}
                    {keepalive_upstream}
                }}

                server {{
                    listen {listen};
                    server_name localhost;

            {locations}
                }}
            }}
            """
        ).format(
            function=function,
            rlimit_line=rlimit_line,
            worker_processes=worker_processes,
            worker_connections=worker_connections,
            keepalive_timeout_line=keepalive_timeout_line,
            http_extra=http_extra,
            user_line=user_line,
            workdir=workdir,
            access_log_line=access_log_line,
            keep_conn=keep_conn,
            server_lines=textwrap.indent(server_lines, " " * 8),
            keepalive_upstream=keepalive_upstream,
            listen=f"{LOOPBACK}:{port}",
            locations=textwrap.indent(textwrap.dedent(locations), " " * 8).rstrip(),
        )
        config_path = workdir / "nginx.conf"
        config_path.write_text(config)
        error_log = workdir / "error.log"
        argv = [
            nginx,
            "-p", f"{workdir}/",
            # -e: the log nginx writes before it has read the config (else /var/log/nginx).
            "-e", str(error_log),
            "-c", str(config_path),
        ]
        with run_process(
            argv,
            cwd=workdir,
            ready_port=port,
            name="nginx",
            log_path=workdir / "nginx.out",
            extra_logs=(error_log,),
        ) as process:
            log_paths = (process.log_path, error_log)
            if access_log:
                log_paths += (workdir / "access.log",)
            yield Peer(
                name="nginx",
                host=LOOPBACK,
                port=port,
                directory=workdir,
                process=process,
                config_path=config_path,
                log_paths=log_paths,
            )


def _nginx_server(host: str, port: int | None) -> str:
    """An upstream ``server`` address: ``host:port``, or ``unix:path`` when port is None."""
    return f"unix:{host}" if port is None else f"{host}:{port}"


@contextlib.contextmanager
def haproxy_fastcgi(
    upstream_host: str,
    upstream_port: int | None,
    mpxs: bool = False,
    *,
    get_values: bool = False,
    max_reqs: int = 64,
    directory: str | os.PathLike[str] | None = None,
    port: int | None = None,
    more_upstreams: Sequence[tuple[str, int | None]] = (),
    access_log: bool = True,
    nbthread: int | None = None,
    maxconn: int = 4096,
    client_timeout: float = 60.0,
) -> Iterator[Peer]:
    """Run haproxy (2.6) as an HTTP front-end to FastCGI servers (``proto fcgi``).

    The ``fcgi-app`` keeps connections open (``option keep-conn``) and mounts the app at
    the root (``path-info``: SCRIPT_NAME "", PATH_INFO the path). haproxy runs in the
    foreground (``-db``) and logs requests, and the app's FCGI_STDERR, to its stderr.

    Args:
        upstream_host: The FastCGI server's address; with ``upstream_port=None``, the path
            of its unix socket.
        upstream_port: Its TCP port, or None for a unix socket.
        mpxs: Multiplex requests on one connection (``option mpxs-conns`` and
            ``option max-reqs``); otherwise one request per connection at a time.
        get_values: Ask the server with FCGI_GET_VALUES on each new connection
            (``option get-values``); its FCGI_MPXS_CONNS / FCGI_MAX_REQS answers then
            override ``mpxs`` / ``max_reqs``.
        max_reqs: Concurrent requests per connection when multiplexing.
        directory: Where to write haproxy.cfg and its log. Default: a temporary
            directory, removed after.
        port: The HTTP port to listen on, on 127.0.0.1. Default: a free one.
        more_upstreams: Further FastCGI servers, ``(host, port)`` (port None: unix
            socket), balanced round robin with the first.
        access_log: Log each request to stderr (``option httplog``). Off for
            benchmarks; the app's FCGI_STDERR is logged either way.
        nbthread: haproxy's threads; None for its default, one per CPU.
        maxconn: The global ``maxconn``: client connections at once. haproxy raises its
            own descriptor limit to match, within the hard limit it inherits.
        client_timeout: Seconds a client connection may stay silent (``timeout
            client``); with no ``timeout http-keep-alive`` set, also how long an idle
            kept-alive connection stays open.

    Yields:
        The running haproxy, as a ``Peer``; ``peer.port`` is its HTTP port.

    Raises:
        PeerStartError: haproxy is missing or did not start (the message has its log).
    """
    haproxy = _require_binary("haproxy")
    with _peer_directory(directory, "haproxy") as workdir:
        port = port or free_port()
        servers = [(upstream_host, upstream_port), *more_upstreams]
        server_lines = "\n    ".join(
            f"server worker{number} {host if port_ is None else f'{host}:{port_}'} proto fcgi"
            for number, (host, port_) in enumerate(servers, 1)
        )
        nbthread_line = f"nbthread {nbthread}" if nbthread else ""
        access_log_lines = (
            "option httplog\n    # No log line for the connect-and-close probes of "
            "wait_for_port.\n    option dontlognull"
            if access_log
            else "no log"
        )
        mpxs_lines = (
            f"option mpxs-conns\n    option max-reqs {max_reqs}"
            if mpxs
            else "no option mpxs-conns"
        )
        get_values_line = "option get-values" if get_values else "no option get-values"
        # The default ("safe") gives each client connection's first request a connection
        # of its own, so concurrent clients would never share one: nothing to multiplex.
        reuse_line = "http-reuse always" if mpxs else "http-reuse safe"
        config = textwrap.dedent(
            """\
            # Written by tests/_peers.py:haproxy_fastcgi.
            global
                log stderr format raw local0 info
                # By default, room for a benchmark's 1,024 clients plus their upstream
                # connections.
                maxconn {maxconn}
                {nbthread_line}

            defaults
                mode http
                log global
                {access_log_lines}
                timeout connect 5s
                timeout client {client_timeout:g}s
                timeout server 60s

            fcgi-app app
                # Only used to build SCRIPT_FILENAME / PATH_TRANSLATED; must exist in config.
                docroot /tmp
                log-stderr global
                option keep-conn
                {mpxs_lines}
                {get_values_line}
                # Mount the app at the root: SCRIPT_NAME "" and the whole path as PATH_INFO.
                path-info ^()(/.*)$

            frontend http
                bind {host}:{port}
                default_backend fcgi

            backend fcgi
                use-fcgi-app app
                {reuse_line}
                {server_lines}
            """
        ).format(
            mpxs_lines=mpxs_lines,
            get_values_line=get_values_line,
            reuse_line=reuse_line,
            host=LOOPBACK,
            port=port,
            server_lines=server_lines,
            nbthread_line=nbthread_line,
            access_log_lines=access_log_lines,
            maxconn=maxconn,
            client_timeout=client_timeout,
        )
        config_path = workdir / "haproxy.cfg"
        config_path.write_text(config)
        argv = [haproxy, "-db", "-f", str(config_path)]
        with run_process(
            argv, cwd=workdir, ready_port=port, name="haproxy", log_path=workdir / "haproxy.out"
        ) as process:
            yield Peer(
                name="haproxy",
                host=LOOPBACK,
                port=port,
                directory=workdir,
                process=process,
                config_path=config_path,
                log_paths=(process.log_path,),
            )


@contextlib.contextmanager
def flup_responder(
    app: str = "workers.echo:app",
    *,
    host: str = LOOPBACK,
    port: int | None = None,
    multiplexed: bool = False,
    directory: str | os.PathLike[str] | None = None,
) -> Iterator[Peer]:
    """Serve a WSGI app over FastCGI with flup: a FastCGI responder that is not ours.

    For checking our front-end and client against an independent implementation. flup is
    threaded, answers FCGI_GET_VALUES, and with ``multiplexed=True`` accepts several
    requests on one connection. Its WSGI environ has no ``fcgi_cluster.listen``, so the
    listen address reaches ``workers.echo`` through ``FCGI_CLUSTER_LISTEN``.

    Args:
        app: ``module:attribute``, importable from the repository root.
        host: Address to listen on.
        port: TCP port. Default: a free one.
        multiplexed: Let one connection carry concurrent requests.
        directory: Where to write its log. Default: a temporary directory.

    Yields:
        The running flup server, as a ``Peer``.

    Raises:
        PeerStartError: flup is not installed here, or the server did not start.
    """
    with _peer_directory(directory, "flup") as workdir:
        port = port or free_port(host)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")])
        )
        env["FCGI_CLUSTER_LISTEN"] = f"{host}:{port}"
        argv = [
            python_executable(),
            "-c",
            _FLUP_MAIN,
            app,
            host,
            str(port),
            "1" if multiplexed else "0",
        ]
        with run_process(
            argv,
            cwd=REPO_ROOT,
            env=env,
            ready_host=host,
            ready_port=port,
            name="flup",
            log_path=workdir / "flup.log",
        ) as process:
            yield Peer(
                name="flup",
                host=host,
                port=port,
                directory=workdir,
                process=process,
                config_path=None,
                log_paths=(process.log_path,),
            )


_FLUP_MAIN = """\
import importlib, sys
from flup.server.fcgi import WSGIServer
spec, host, port, multiplexed = sys.argv[1:]
module_name, _, attribute = spec.partition(":")
app = getattr(importlib.import_module(module_name), attribute or "app")
# debug=False: errors become a plain 500, never a traceback sent to the client.
WSGIServer(app, bindAddress=(host, int(port)), multiplexed=multiplexed == "1", debug=False).run()
"""


def find_php_fpm() -> str:
    """The php-fpm binary: ``php-fpm``, else the newest versioned ``php-fpmX.Y``.

    Debian installs it only under its version (``/usr/sbin/php-fpm8.2`` on Debian 12), in
    sbin, which a non-root PATH often lacks; both PATH and the sbin directories are looked
    in.

    Raises:
        PeerStartError: No php-fpm is installed.
    """
    found = shutil.which("php-fpm") or shutil.which("php-fpm", path=_SBIN_PATH)
    if found is not None:
        return found
    versions: list[tuple[tuple[int, int], str]] = []
    directories = os.environ.get("PATH", "").split(os.pathsep) + _SBIN_PATH.split(os.pathsep)
    for directory in filter(None, directories):
        for path in pathlib.Path(directory).glob("php-fpm*"):
            match = _PHP_FPM_VERSIONED.fullmatch(path.name)
            if match and os.access(path, os.X_OK):
                versions.append(((int(match[1]), int(match[2])), str(path)))
    if not versions:
        raise PeerStartError(
            "php-fpm is not installed: run `make deps` (scripts/install-deps.sh)"
        )
    return max(versions)[1]


@contextlib.contextmanager
def php_fpm(
    *,
    host: str = LOOPBACK,
    port: int | None = None,
    pm: str = "static",
    max_children: int = 4,
    directory: str | os.PathLike[str] | None = None,
    extra_pool: Mapping[str, str | int] | None = None,
) -> Iterator[Peer]:
    """Run php-fpm with a config of its own: one pool, ``www``, on a loopback port.

    Nothing of the system's php-fpm setup is used (not its php-fpm.conf, pools, pid file,
    logs or service), except php.ini, so PHP itself is configured as the machine's
    php-fpm would be (opcache included). php-fpm stays in the foreground (``-F``).

    The pool keeps the environment (``clear_env = no``), sends its children's output to
    the log (``catch_workers_output = yes``) and answers ``/fpm-status`` and ``/fpm-ping``
    (as SCRIPT_NAME). As root it runs its children as root (``-R``), so they can read
    files in a test's 0700 temporary directory.

    Args:
        host: The address to listen on.
        port: The TCP port. Default: a free one.
        pm: The process manager: ``static``, ``dynamic`` or ``ondemand``. ``dynamic``
            starts one child and keeps 1 to ``max_children`` idle; ``extra_pool`` can
            change that.
        max_children: ``pm.max_children``: requests php-fpm serves at once.
        directory: Where to write php-fpm.conf, its pid file and its log
            (``php-fpm.log``). Default: a temporary directory, removed after.
        extra_pool: More pool settings, or overrides (``{"pm.max_requests": 100}``).

    Yields:
        The running php-fpm master, as a ``Peer``; its ``port`` is the FastCGI port.

    Raises:
        PeerStartError: php-fpm is missing or did not start (the message has its log).
    """
    binary = find_php_fpm()
    with _peer_directory(directory, "php-fpm") as workdir:
        port = port or free_port(host)
        error_log = workdir / "php-fpm.log"
        pool: dict[str, str | int] = {
            "listen": f"{host}:{port}",
            "pm": pm,
            "pm.max_children": max_children,
            "clear_env": "no",
            "catch_workers_output": "yes",
            "pm.status_path": "/fpm-status",
            "ping.path": "/fpm-ping",
        }
        if pm == "dynamic":
            # php-fpm refuses a dynamic pool without its spare-server bounds.
            pool.update({
                "pm.start_servers": 1,
                "pm.min_spare_servers": 1,
                "pm.max_spare_servers": max_children,
            })
        if os.geteuid() == 0:
            # Elsewhere php-fpm ignores these, with a notice.
            pool.update({"user": "root", "group": "root"})
        pool.update(extra_pool or {})
        pool_lines = "\n".join(f"{key} = {value}" for key, value in pool.items())
        config = (
            "; Written by tests/_peers.py:php_fpm.\n"
            "[global]\n"
            f"pid = {workdir}/php-fpm.pid\n"
            f"error_log = {error_log}\n"
            "log_level = notice\n"
            "daemonize = no\n"
            "\n"
            "[www]\n"
            f"{pool_lines}\n"
        )
        config_path = workdir / "php-fpm.conf"
        config_path.write_text(config)
        argv = [binary, "-F", "-y", str(config_path)]
        if os.geteuid() == 0:
            argv.append("-R")
        with run_process(
            argv,
            cwd=workdir,
            ready_host=host,
            ready_port=port,
            name="php-fpm",
            log_path=workdir / "php-fpm.out",
            extra_logs=(error_log,),
        ) as process:
            yield Peer(
                name="php-fpm",
                host=host,
                port=port,
                directory=workdir,
                process=process,
                config_path=config_path,
                log_paths=(process.log_path, error_log),
            )


def cgi_fcgi_request(
    host: str,
    port: int | None,
    env: Mapping[str, str],
    stdin: bytes = b"",
    *,
    timeout: float = 30.0,
) -> bytes:
    """Send one request to a FastCGI server with ``cgi-fcgi -bind -connect``.

    cgi-fcgi (from libfcgi, the reference C library) sends its whole process environment
    as FCGI_PARAMS, so the environment is exactly: CGI defaults for a ``GET /`` (
    GATEWAY_INTERFACE, REQUEST_METHOD, SCRIPT_NAME, PATH_INFO, QUERY_STRING, SERVER_NAME,
    SERVER_PORT, SERVER_PROTOCOL, REMOTE_ADDR, and CONTENT_LENGTH when there is a body),
    overridden by ``env``. Nothing of the test process's environment leaks in.

    Args:
        host: The FastCGI server's address; with ``port=None``, its unix socket path.
        port: Its TCP port, or None for a unix socket.
        env: CGI params, e.g. ``{"REQUEST_METHOD": "POST", "PATH_INFO": "/x"}``.
        stdin: The request body (FCGI_STDIN).
        timeout: Seconds before giving up on the server.

    Returns:
        cgi-fcgi's stdout: the raw CGI response (headers, blank line, body). See
        ``parse_cgi_response``.

    Raises:
        PeerStartError: cgi-fcgi is not installed.
        subprocess.CalledProcessError: cgi-fcgi failed (cannot connect, ...); its stderr
            is on the exception.
        subprocess.TimeoutExpired: No answer within ``timeout``.
    """
    cgi_fcgi = _require_binary("cgi-fcgi")
    connect = host if port is None else f"{host}:{port}"
    params = {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": LOOPBACK,
    }
    if stdin:
        # cgi-fcgi reads exactly CONTENT_LENGTH bytes of its stdin, and none without it.
        params["CONTENT_LENGTH"] = str(len(stdin))
    params.update(env)
    result = subprocess.run(
        [cgi_fcgi, "-bind", "-connect", connect],
        input=stdin,
        env=params,
        capture_output=True,
        timeout=timeout,
        check=True,
    )
    return result.stdout


def parse_cgi_response(raw: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """Split a CGI response (as ``cgi_fcgi_request`` returns it) into its parts.

    Returns:
        ``(status, headers, body)``: the status from the ``Status`` header (200 when
        absent), the headers in order (``Status`` included), the body.

    Raises:
        ValueError: There is no blank line ending the headers, or a header line has no
            colon.
    """
    for separator in (b"\r\n\r\n", b"\n\n"):
        head, found, body = raw.partition(separator)
        if found:
            break
    else:
        raise ValueError(f"no end of headers in CGI response: {raw[:200]!r}")
    headers = []
    status = 200
    for line in head.decode("latin-1").splitlines():
        name, colon, value = line.partition(":")
        if not colon:
            raise ValueError(f"bad header line in CGI response: {line!r}")
        name, value = name.strip(), value.strip()
        headers.append((name, value))
        if name.lower() == "status":
            status = int(value.split()[0])
    return status, headers, body


class Peers:
    """Starts peers for one test (or module) and stops them all when its stack closes.

    Each peer gets its own subdirectory of ``base``, so their files never collide and stay
    behind for reading after a failure. Used by the ``peers`` fixture in conftest.py::

        def test_x(peers):
            flup = peers.flup("workers.echo:app")
            nginx = peers.nginx(flup.host, flup.port, keepalive=True)
    """

    def __init__(self, stack: contextlib.ExitStack, base: str | os.PathLike[str]) -> None:
        self._stack = stack
        self._base = pathlib.Path(base)
        self._count = 0

    def _directory(self, name: str) -> pathlib.Path:
        self._count += 1
        return self._base / f"{name}-{self._count}"

    def nginx(self, upstream_host: str, upstream_port: int | None, keepalive: bool = False,
              **options) -> Peer:
        """``nginx_fastcgi`` in a fresh subdirectory; see there for the options."""
        return self._stack.enter_context(nginx_fastcgi(
            upstream_host, upstream_port, keepalive, directory=self._directory("nginx"),
            **options))

    def haproxy(self, upstream_host: str, upstream_port: int | None, mpxs: bool = False,
                **options) -> Peer:
        """``haproxy_fastcgi`` in a fresh subdirectory; see there for the options."""
        return self._stack.enter_context(haproxy_fastcgi(
            upstream_host, upstream_port, mpxs, directory=self._directory("haproxy"),
            **options))

    def flup(self, app: str = "workers.echo:app", **options) -> Peer:
        """``flup_responder`` in a fresh subdirectory; see there for the options."""
        return self._stack.enter_context(flup_responder(
            app, directory=self._directory("flup"), **options))

    def php_fpm(self, **options) -> Peer:
        """``php_fpm`` in a fresh subdirectory; see there for the options."""
        return self._stack.enter_context(php_fpm(directory=self._directory("php-fpm"), **options))

    def nginx_php(self, fpm_port: int | None, root: str | os.PathLike[str] = PHP_PAGES,
                  **options) -> Peer:
        """``nginx_php`` in a fresh subdirectory; see there for the options."""
        return self._stack.enter_context(nginx_php(
            fpm_port, root, directory=self._directory("nginx"), **options))

    def process(self, argv: Sequence[str | os.PathLike[str]], *, name: str | None = None,
                **options) -> subprocess.Popen:
        """``run_process`` with its log kept in a fresh subdirectory."""
        name = name or pathlib.Path(os.fspath(argv[0])).name
        directory = self._directory(name)
        directory.mkdir(parents=True, exist_ok=True)
        return self._stack.enter_context(run_process(
            argv, name=name, log_path=directory / f"{name}.log", **options))


# --- helpers -------------------------------------------------------------------------


def _require_binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=_SBIN_PATH)
    if found is None:
        raise PeerStartError(f"{name} is not installed: run `make deps` (scripts/install-deps.sh)")
    return found


@contextlib.contextmanager
def _peer_directory(
    directory: str | os.PathLike[str] | None, name: str
) -> Iterator[pathlib.Path]:
    if directory is not None:
        path = pathlib.Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        yield path.resolve()
        return
    with tempfile.TemporaryDirectory(prefix=f"fcgi-cluster-{name}-") as temporary:
        yield pathlib.Path(temporary)


def _connect(host: str, port: int | None, timeout: float) -> socket.socket:
    if port is None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(host)
        except OSError:
            sock.close()
            raise
        return sock
    return socket.create_connection((host, port), timeout=timeout)


def _describe(host: str, port: int | None) -> str:
    return host if port is None else f"{host}:{port}"


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _read_text(path: pathlib.Path, tail: int | None = None) -> str:
    try:
        with open(path, "rb") as file:
            if tail is not None:
                file.seek(0, os.SEEK_END)
                file.seek(max(0, file.tell() - tail))
            return file.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
