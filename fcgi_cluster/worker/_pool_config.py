"""Pool configuration in php-fpm's INI format: ``[global]`` plus one section per pool.

The data classes here are the contract between the parser (``load_pool_config``)
and the process manager. Every key a php-fpm user knows keeps its name; the
attribute is the key with ``.`` and ``-`` turned into ``_``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SECONDS = 1.0

__all__ = ["GlobalConfig", "PoolConfig", "PoolFile", "PoolConfigError", "load_pool_config", "parse_pool_config"]


class PoolConfigError(Exception):
    """A bad pool file: ``str()`` is ``file:line: key: reason`` (line 0 = the file as a whole)."""

    def __init__(self, path: str, line: int, key: str, reason: str) -> None:
        self.path, self.line, self.key, self.reason = path, line, key, reason
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {key}: {reason}" if key else f"{where}: {reason}")


@dataclass(frozen=True, slots=True)
class GlobalConfig:
    """The ``[global]`` section: settings of the master process."""

    pid: str | None = None
    error_log: str = "-"
    log_level: str = "notice"
    #: Restart every child when this many died abnormally within the interval (0 = never).
    emergency_restart_threshold: int = 0
    emergency_restart_interval: float = 0.0
    #: How long children have to finish on a graceful stop or reload before being killed.
    process_control_timeout: float = 10 * SECONDS


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """One ``[name]`` pool section."""

    name: str
    listen: str
    app: str
    listen_backlog: int = 511
    #: None = everyone; else the IPv4/IPv6 addresses allowed to connect.
    listen_allowed_clients: tuple[str, ...] | None = None
    #: Octal permission bits of a unix socket (php-fpm's listen.mode).
    listen_mode: int = 0o660
    chdir: str | None = None
    pm: str = "dynamic"
    pm_max_children: int = 5
    pm_start_servers: int = 2
    pm_min_spare_servers: int = 1
    pm_max_spare_servers: int = 3
    pm_process_idle_timeout: float = 10 * SECONDS
    #: Recycle a child after this many requests (0 = never).
    pm_max_requests: int = 0
    pm_status_path: str | None = None
    ping_path: str | None = None
    ping_response: str = "pong"
    request_terminate_timeout: float = 0.0
    request_slowlog_timeout: float = 0.0
    slowlog: str | None = None
    access_log: str | None = None
    catch_workers_output: bool = False
    clear_env: bool = True
    env: dict[str, str] = field(default_factory=dict)
    #: Requests in flight per child connection, advertised as FCGI_MAX_REQS (our key: fcgi.max_reqs).
    fcgi_max_reqs: int = 100
    #: Connections served at once by the pool, advertised as FCGI_MAX_CONNS (fcgi.max_conns).
    fcgi_max_conns: int = 1024
    #: Threads per child running WSGI code (threads).
    threads: int = 16
    #: ``session.*`` keys, raw; checked by ``fcgi_cluster.sessions`` when the pool starts.
    session: dict[str, str] = field(default_factory=dict)
    #: key -> line number in the file, so that checks made later can still name the line.
    lines: dict[str, int] = field(default_factory=dict)
    #: The file this pool came from.
    path: str = ""


@dataclass(frozen=True, slots=True)
class PoolFile:
    """A whole pool file: the global section and the pools in file order."""

    path: str
    global_: GlobalConfig
    pools: tuple[PoolConfig, ...]


def parse_pool_config(text: str, path: str = "<string>") -> PoolFile:
    """Parse a php-fpm style INI text.

    Raises:
        PoolConfigError: naming the file, line and key.
    """
    raise NotImplementedError


def load_pool_config(path: str) -> PoolFile:
    """Read and parse the pool file at ``path`` (``include`` globs resolved).

    Raises:
        PoolConfigError: unreadable file, or bad content.
    """
    raise NotImplementedError
