"""Pool configuration in php-fpm's INI format: ``[global]`` plus one section per pool.

The data classes here are the contract between the parser (``load_pool_config``)
and the process manager. Every key a php-fpm user knows keeps its name; the
attribute is the key with ``.`` and ``-`` turned into ``_``.

The syntax, as php-fpm reads it (and where we differ, why)::

    ; a comment (also after a value: ``pm = static ; fixed``); "#" at the start of a line too
    [global]                        ; the master's settings, at most once per key
    error_log = /var/log/fcgi-cluster.log
    include = pool.d/*.conf         ; a glob, relative to this file, files in name order; allowed
                                    ; anywhere; an included file starts outside any section

    [www]                           ; a pool; its name is $pool in its values
    listen = 127.0.0.1:9001         ; ip:port, [v6]:port, a bare port (all IPv4 addresses), a unix path
    app = workers.hello:app         ; ours: module:attribute of the WSGI/ASGI app
    slowlog = /var/log/$pool.slow   ; $pool -> www
    env[DB_URL] = ${DB_URL}         ; ${NAME} or ${NAME:-default}: the master's environment
    env[PATH] = $PATH               ; php-fpm's form: a whole value "$NAME" copies that variable
    php_value[session.save_handler] = redis   ; same as session.save_handler = redis
    request_terminate_timeout = 30s ; units s, m, h, d (and ms); a bare number is seconds

Values may be quoted: ``"..."`` (``\\"`` and ``\\\\`` escapes, ``${NAME}`` expanded) or
``'...'`` (taken literally). Booleans are yes/no, on/off, true/false, 1/0.
Relative paths (unix sockets, logs, pid file, includes) are relative to the
directory of the file that names them; php-fpm makes them relative to its
install prefix, which we do not have.

Strictness, where php-fpm is lenient: a key set twice in one section, an
unknown key, an unset ``${NAME}`` and a php-fpm key we do not implement are
errors (the last with the reason, e.g. ``user``: run the master as that user
instead). A few php-fpm keys that change nothing a client can see are accepted
with a logged warning and ignored: see ``_pool_keys.IGNORED``.

Errors: ``PoolConfigError`` whose text is ``file:line: key: reason``.
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

from .._address import Address, parse_address
from .._settings import SettingsError
from ..protocol import DEFAULT_MAX_REQUESTS
from ._config import WorkerConfig
from ._pool_keys import GLOBAL_KEYS, IGNORED, IGNORED_IF, PHP_ARRAYS, POOL_KEYS, UNSUPPORTED, Context

SECONDS = 1.0

__all__ = ["GlobalConfig", "PoolConfig", "PoolFile", "PoolConfigError", "load_pool_config", "parse_pool_config"]

log = logging.getLogger("fcgi_cluster.worker")

#: Nested ``include`` levels before we call it a loop (php-fpm has no limit; a
#: real layout uses one or two).
MAX_INCLUDE_DEPTH = 8


class PoolConfigError(SettingsError):
    """A bad pool file: ``str()`` is ``file:line: key: reason`` (line 0 = the file as a whole).

    Attributes:
        path: the file (also ``filename``, as in every ``SettingsError``).
    """

    def __init__(self, path: str, line: int, key: str, reason: str) -> None:
        super().__init__(path, line, key, reason)

    @property
    def path(self) -> str:
        return self.filename  # type: ignore[return-value]


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
    #: None = everyone; else the IPv4/IPv6 addresses (or networks, ``10.0.0.0/8``) allowed to connect.
    listen_allowed_clients: tuple[str, ...] | None = None
    #: Octal permission bits of a unix socket (php-fpm's listen.mode).
    listen_mode: int = 0o660
    chdir: str | None = None
    pm: str = "dynamic"
    pm_max_children: int = 5
    pm_start_servers: int = 2
    pm_min_spare_servers: int = 1
    pm_max_spare_servers: int = 3
    #: Children started per second at most when the pool grows (dynamic).
    pm_max_spawn_rate: int = 32
    pm_process_idle_timeout: float = 10 * SECONDS
    #: Recycle a child after this many requests (0 = never).
    pm_max_requests: int = 0
    pm_status_path: str | None = None
    ping_path: str | None = None
    ping_response: str = "pong"
    request_terminate_timeout: float = 0.0
    request_slowlog_timeout: float = 0.0
    #: Stack frames written per slow request (innermost first).
    request_slowlog_trace_depth: int = 20
    slowlog: str | None = None
    access_log: str | None = None
    catch_workers_output: bool = False
    clear_env: bool = True
    env: dict[str, str] = field(default_factory=dict)
    #: Requests in flight per child connection, advertised as FCGI_MAX_REQS (our key: fcgi.max_reqs).
    fcgi_max_reqs: int = DEFAULT_MAX_REQUESTS
    #: Connections served at once by the pool, advertised as FCGI_MAX_CONNS (fcgi.max_conns).
    fcgi_max_conns: int = 1024
    #: Threads per child running WSGI code (threads); 0 = on the child's event loop, one request at a time.
    threads: int = 16
    #: Run an app proven quick on the child's loop (threads.inline).
    threads_inline: bool = True
    #: ``session.*`` keys, raw; checked by ``fcgi_cluster.sessions`` when the pool starts.
    session: dict[str, str] = field(default_factory=dict)
    #: SCRIPT_NAME of the app when the web server sends no PATH_INFO (no INI key: set by
    #: ``fcgi-cluster up`` from a cluster file's pool).
    root_path: str = ""
    #: key -> line number in the file, so that checks made later can still name the line.
    lines: dict[str, int] = field(default_factory=dict)
    #: The file this pool came from.
    path: str = ""

    def error(self, key: str, reason: str) -> PoolConfigError:
        """An error about ``key`` of this pool, naming its file and line (for checks made later:
        an app that fails to import, a bad ``session.*`` value, an address in use).

        Example: ``raise pool.error("app", "cannot import workers.nope")``.
        """
        return PoolConfigError(self.path, self.lines.get(key, 0), key, reason)

    def worker_config(self, global_: GlobalConfig | None = None, **extra: Any) -> WorkerConfig:
        """The settings of one child process of this pool.

        Args:
            global_: the file's ``[global]``: its process_control_timeout is the
                children's graceful stop deadline.
            extra: further ``WorkerConfig`` fields (``hooks``, ``status_source``,
                ``session``) that only the process manager can give.
        """
        fields: dict[str, Any] = dict(
            max_requests=self.fcgi_max_reqs,
            max_conns=self.fcgi_max_conns,
            processes=self.pm_max_children,
            threads=self.threads,
            inline_quick=self.threads_inline,
            backlog=self.listen_backlog,
            allowed_clients=self.listen_allowed_clients,
            ping_path=self.ping_path,
            ping_response=self.ping_response,
            status_path=self.pm_status_path,
            request_terminate_timeout=self.request_terminate_timeout,
            request_slowlog_timeout=self.request_slowlog_timeout,
            slowlog=self.slowlog,
            request_slowlog_trace_depth=self.request_slowlog_trace_depth,
            access_log=self.access_log,
            pool_name=self.name,
            root_path=self.root_path,
        )
        if global_ is not None:
            fields["graceful_timeout"] = global_.process_control_timeout
        fields.update(extra)
        return WorkerConfig(**fields)


@dataclass(frozen=True, slots=True)
class PoolFile:
    """A whole pool file: the global section and the pools in file order."""

    path: str
    global_: GlobalConfig
    pools: tuple[PoolConfig, ...]
    #: ``file:line: key: ...`` notes about accepted-but-ignored keys (also logged).
    warnings: tuple[str, ...] = ()


# --------------------------------------------------------------------------
# Names the reader checks (the keys' value parsers are in _pool_keys)
# --------------------------------------------------------------------------

_POOL_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SESSION_KEY = re.compile(r"session\.[a-z0-9_.]+")

_ARRAY_KEY = re.compile(r"([A-Za-z_][\w.]*)\[([^\]]*)\]")
_EXPANSION = re.compile(r"\$\{([^}]*)\}")


# --------------------------------------------------------------------------
# The reader: lines -> (section, key, value, path, line) items
# --------------------------------------------------------------------------


@dataclass(slots=True)
class _Section:
    name: str  # "global" or a pool name
    path: str
    line: int
    values: dict[str, tuple[Any, int]] = field(default_factory=dict)  # attribute -> (value, line)
    env: dict[str, str] = field(default_factory=dict)
    session: dict[str, str] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)  # key as written -> line


class _Parser:
    def __init__(self, environ: dict[str, str]) -> None:
        self.environ = environ
        self.global_ = None  # type: _Section | None
        self.pools: dict[str, _Section] = {}
        self.warnings: list[str] = []
        self.including: list[str] = []

    # --- files ---------------------------------------------------------------

    def parse_text(self, text: str, path: str) -> None:
        directory = os.path.dirname(os.path.abspath(path)) if not path.startswith("<") else os.getcwd()
        section: _Section | None = None
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith((";", "#")):
                continue
            if line.startswith("["):
                section = self._section(line, path, number)
                continue
            key, sep, rest = line.partition("=")
            key = key.strip()
            if not sep or not key:
                raise PoolConfigError(path, number, "", f"expected 'key = value' or '[section]', got {line!r}")
            value = self._value(rest, path, number, key)
            if key == "include":
                self._include(value, path, number, directory)
                continue
            if section is None:
                raise PoolConfigError(path, number, key, "set outside any section; put it under [global] or a [pool] section")
            if section.name != "global":
                value = value.replace("$pool", section.name)
            self._set(section, key, value, path, number, directory)

    def parse_file(self, path: str, line: int = 0, including: str = "") -> None:
        real = os.path.realpath(path)
        if real in self.including:
            raise PoolConfigError(including or path, line, "include" if including else "", f"{path} includes itself")
        if len(self.including) >= MAX_INCLUDE_DEPTH:
            raise PoolConfigError(including or path, line, "include", f"more than {MAX_INCLUDE_DEPTH} nested includes")
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            if including:
                raise PoolConfigError(including, line, "include", f"cannot read {path}: {reason}") from None
            raise PoolConfigError(path, 0, "", f"cannot read the file: {reason}") from None
        self.including.append(real)
        try:
            self.parse_text(text, path)
        finally:
            self.including.pop()

    def _include(self, pattern: str, path: str, number: int, directory: str) -> None:
        if path.startswith("<"):
            raise PoolConfigError(path, number, "include", "only a file on disk can include others")
        full = os.path.join(directory, pattern)
        if glob.has_magic(full):
            matches = sorted(glob.glob(full))
            if not matches:
                self._warn(path, number, "include", f"nothing matches {pattern!r}")
        else:
            matches = [full]
        for match in matches:
            self.parse_file(match, number, path)

    def _section(self, line: str, path: str, number: int) -> _Section:
        body, closed, rest = line[1:].partition("]")
        rest = rest.strip()
        if not closed or (rest and not rest.startswith((";", "#"))):
            raise PoolConfigError(path, number, "", f"expected a section header like [www], got {line!r}")
        name = body.strip()
        if name == "global":
            if self.global_ is None:
                self.global_ = _Section("global", path, number)
            return self.global_
        if not _POOL_NAME.fullmatch(name):
            raise PoolConfigError(path, number, f"[{name}]", "a pool name is letters, digits, '_', '-' and '.'")
        if name in self.pools:
            first = self.pools[name]
            raise PoolConfigError(path, number, f"[{name}]", f"duplicate pool name (first defined at {first.path}:{first.line})")
        section = _Section(name, path, number)
        self.pools[name] = section
        return section

    def _value(self, rest: str, path: str, number: int, key: str) -> str:
        """The value after ``=``: quotes removed, ``${NAME}`` expanded, comment dropped."""
        text = rest.strip()
        if text[:1] == "'":
            end = text.find("'", 1)
            if end < 0:
                raise PoolConfigError(path, number, key, "unterminated ' quote")
            value, tail = text[1:end], text[end + 1 :]
        elif text[:1] == '"':
            out, i = [], 1
            while i < len(text) and text[i] != '"':
                if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in '"\\':
                    i += 1
                out.append(text[i])
                i += 1
            if i >= len(text):
                raise PoolConfigError(path, number, key, 'unterminated " quote')
            value, tail = self._expand("".join(out), path, number, key), text[i + 1 :]
        else:
            value, tail = self._expand(text.partition(";")[0].strip(), path, number, key), ""
        tail = tail.strip()
        if tail and not tail.startswith(";"):
            raise PoolConfigError(path, number, key, f"unexpected text after the quoted value: {tail!r}")
        return value

    def _expand(self, text: str, path: str, number: int, key: str) -> str:
        def replace(match: re.Match[str]) -> str:
            name, sep, default = match.group(1).partition(":-")
            if not _ENV_NAME.fullmatch(name):
                raise PoolConfigError(path, number, key, f"${{{match.group(1)}}}: not an environment variable name")
            if name in self.environ:
                return self.environ[name]
            if sep:
                return default
            raise PoolConfigError(path, number, key, f"environment variable {name} is not set (write ${{{name}:-default}} for a default)")

        return _EXPANSION.sub(replace, text) if "${" in text else text

    # --- keys ----------------------------------------------------------------

    def _set(self, section: _Section, key: str, value: str, path: str, number: int, directory: str) -> None:
        if key in section.lines:
            raise PoolConfigError(path, number, key, f"set twice in [{section.name}] (first at line {section.lines[key]})")
        array = _ARRAY_KEY.fullmatch(key)
        is_pool = section.name != "global"
        ctx = Context(directory)
        if array is not None and is_pool:
            self._set_array(section, key, array.group(1), array.group(2), value, path, number)
        elif is_pool and _SESSION_KEY.fullmatch(key):
            self._set_session(section, key, key, value, path, number)
        elif key in (POOL_KEYS if is_pool else GLOBAL_KEYS):
            attribute, parse = (POOL_KEYS if is_pool else GLOBAL_KEYS)[key]
            try:
                parsed = parse(value, ctx)
            except ValueError as exc:
                raise PoolConfigError(path, number, key, str(exc)) from None
            section.values[attribute] = (parsed, number)
        elif key in UNSUPPORTED:
            raise PoolConfigError(path, number, key, UNSUPPORTED[key])
        elif key in IGNORED:
            if IGNORED_IF.get(key) != value.lower():
                self._warn(path, number, key, IGNORED[key])
        else:
            raise PoolConfigError(path, number, key, self._unknown(key, is_pool))
        section.lines[key] = number

    def _set_array(self, section: _Section, key: str, name: str, inner: str, value: str, path: str, number: int) -> None:
        if name == "env":
            if not _ENV_NAME.fullmatch(inner):
                raise PoolConfigError(path, number, key, f"{inner!r} is not an environment variable name")
            if value.startswith("$") and _ENV_NAME.fullmatch(value[1:]):
                # php-fpm's env[X] = $Y: the master's own variable.
                if value[1:] not in self.environ:
                    raise PoolConfigError(path, number, key, f"environment variable {value[1:]} is not set")
                value = self.environ[value[1:]]
            section.env[inner] = value
        elif name in PHP_ARRAYS:
            if not _SESSION_KEY.fullmatch(inner):
                raise PoolConfigError(path, number, key, "not supported: PHP ini settings mean nothing to a Python app "
                                      "(only session.* settings are read, for fcgi_cluster.sessions)")
            self._set_session(section, key, inner, value, path, number)
        else:
            raise PoolConfigError(path, number, key, "unknown key; the [] keys are env[], php_value[], "
                                  "php_admin_value[], php_flag[], php_admin_flag[]")

    def _set_session(self, section: _Section, key: str, name: str, value: str, path: str, number: int) -> None:
        if name in section.session:
            raise PoolConfigError(path, number, key, f"{name} set twice in [{section.name}] (first at line {section.lines[name]})")
        section.session[name] = value
        section.lines[name] = number

    def _unknown(self, key: str, is_pool: bool) -> str:
        known = list(POOL_KEYS if is_pool else GLOBAL_KEYS)
        other = list(GLOBAL_KEYS if is_pool else POOL_KEYS)
        if key in other:
            return f"belongs in {'[global]' if is_pool else 'a pool section'}, not {'a pool' if is_pool else '[global]'}"
        close = difflib.get_close_matches(key, known + list(UNSUPPORTED) + list(IGNORED), n=1, cutoff=0.75)
        hint = f'; did you mean "{close[0]}"?' if close else ""
        return f"unknown key{hint}"

    def _warn(self, path: str, number: int, key: str, reason: str) -> None:
        text = str(PoolConfigError(path, number, key, reason))
        self.warnings.append(text)
        log.warning("%s", text)

    # --- the result ----------------------------------------------------------

    def result(self, path: str) -> PoolFile:
        global_ = GlobalConfig()
        if self.global_ is not None:
            global_ = GlobalConfig(**{k: v for k, (v, _) in self.global_.values.items()})
        if not self.pools:
            raise PoolConfigError(path, 0, "", "no pool defined: add at least one [name] section with listen and app")
        pools = []
        listens: dict[str, tuple[Address, str, int]] = {}
        for section in self.pools.values():
            pool = _pool(section)
            address = parse_address(pool.listen)
            line = pool.lines["listen"]
            for other, (other_address, other_path, other_line) in listens.items():
                if _same_socket(address, other_address):
                    raise PoolConfigError(section.path, line, "listen", f"{pool.listen} is already the listen address "
                                          f"of pool {other} ({other_path}:{other_line})")
            listens[pool.name] = (address, section.path, line)
            pools.append(pool)
        return PoolFile(path, global_, tuple(pools), tuple(self.warnings))


def _same_socket(a: Address, b: Address) -> bool:
    """True when binding both would collide (same path, or same port with an overlapping host)."""
    if a.is_unix or b.is_unix:
        return a.is_unix and b.is_unix and a.path == b.path
    if a.port != b.port or a.family != b.family:
        return False
    wildcard = ("0.0.0.0", "::")
    return a.host == b.host or a.host in wildcard or b.host in wildcard


def _pool(section: _Section) -> PoolConfig:
    """Check one pool's values together (php-fpm's rules) and build its PoolConfig."""
    values = {attribute: value for attribute, (value, _) in section.values.items()}
    lines = dict(section.lines)
    path = section.path

    def fail(key: str, reason: str) -> PoolConfigError:
        return PoolConfigError(path, lines.get(key, section.line), key, reason)

    for key in ("listen", "app"):
        if key not in values:
            raise fail(key, f"missing in [{section.name}] (every pool needs {key})")
    pool = PoolConfig(name=section.name, env=dict(section.env), session=dict(section.session), lines=lines, path=path, **values)
    if pool.pm == "dynamic":
        if pool.pm_min_spare_servers > pool.pm_max_spare_servers:
            raise fail("pm.min_spare_servers", f"({pool.pm_min_spare_servers}) must not be greater than "
                       f"pm.max_spare_servers ({pool.pm_max_spare_servers})")
        for key, value in (("pm.min_spare_servers", pool.pm_min_spare_servers), ("pm.max_spare_servers", pool.pm_max_spare_servers)):
            if value > pool.pm_max_children:
                if key not in lines:  # blame the key the user wrote
                    raise fail("pm.max_children", f"({pool.pm_max_children}) must not be less than {key} "
                               f"({value}, its default)")
                raise fail(key, f"({value}) must not be greater than pm.max_children ({pool.pm_max_children})")
        start = pool.pm_start_servers
        if "pm.start_servers" not in lines:
            # php-fpm's default: halfway between the spare bounds.
            start = pool.pm_min_spare_servers + (pool.pm_max_spare_servers - pool.pm_min_spare_servers) // 2
            pool = dataclasses.replace(pool, pm_start_servers=start)
        elif not pool.pm_min_spare_servers <= start <= pool.pm_max_spare_servers:
            raise fail("pm.start_servers", f"({start}) must be from pm.min_spare_servers ({pool.pm_min_spare_servers}) "
                       f"to pm.max_spare_servers ({pool.pm_max_spare_servers})")
    elif pool.pm == "ondemand" and pool.pm_process_idle_timeout <= 0:
        raise fail("pm.process_idle_timeout", "must be more than 0 with pm = ondemand")
    if pool.request_slowlog_timeout > 0 and pool.slowlog is None:
        raise fail("request_slowlog_timeout", "slowlog must be set too (the file the slow requests' stacks go to)")
    if pool.ping_path is not None and pool.ping_path == pool.pm_status_path:
        raise fail("ping.path", "must differ from pm.status_path")
    return pool


def parse_pool_config(text: str, path: str = "<string>", *, environ: dict[str, str] | None = None) -> PoolFile:
    """Parse a php-fpm style INI text.

    Args:
        text: the file's content.
        path: its name in error messages; relative paths in values and
            ``include`` are relative to its directory (the current directory
            for a name in angle brackets, which cannot include).
        environ: for ``${NAME}`` and ``env[X] = $NAME``; default ``os.environ``.

    Returns:
        The global settings and the pools in file order.

    Raises:
        PoolConfigError: naming the file, line and key.
    """
    parser = _Parser(dict(os.environ if environ is None else environ))
    parser.parse_text(text, path)
    return parser.result(path)


def load_pool_config(path: str, *, environ: dict[str, str] | None = None) -> PoolFile:
    """Read and parse the pool file at ``path`` (``include`` globs resolved).

    Args:
        path: the file.
        environ: as for ``parse_pool_config``.

    Raises:
        PoolConfigError: unreadable file, or bad content.
    """
    parser = _Parser(dict(os.environ if environ is None else environ))
    parser.parse_file(path)
    return parser.result(path)
