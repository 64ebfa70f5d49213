"""The keys of a pool file and how each value is read: the tables ``_pool_config`` parses by.

``GLOBAL_KEYS`` and ``POOL_KEYS`` map each key to its attribute (the key with
``.`` turned into ``_``) and a value parser ``(text, Context) -> value`` that
raises ``ValueError`` with the reason; ``UNSUPPORTED`` and ``IGNORED`` are the
php-fpm keys refused or accepted-and-ignored, each with why. No I/O: the
parsers only read the text (and the file's directory, for relative paths).
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

from .._address import parse_address
from .._settings import boolean, choice, duration, integer

__all__ = ["Context", "GLOBAL_KEYS", "POOL_KEYS", "UNSUPPORTED", "IGNORED", "IGNORED_IF", "PHP_ARRAYS",
           "UNLIMITED_BACKLOG"]

#: ``listen.backlog = -1`` means "as long as the system allows": the kernel
#: caps any larger value at net.core.somaxconn.
UNLIMITED_BACKLOG = 65535

_APP_REF = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
_LOG_LEVELS = ("alert", "error", "warning", "notice", "debug")


@dataclass(slots=True)
class Context:
    """What a value parser may need: where the file is."""

    directory: str


def _plain(convert: Callable[[str], Any]) -> Callable[[str, Context], Any]:
    """A toolkit converter, which needs no context, in this table's shape."""
    return lambda text, ctx: convert(text)


def _integer(low: int, high: int | None = None) -> Callable[[str, Context], int]:
    return _plain(integer(low, high))


_time = _plain(duration())
_boolean = _plain(boolean)


def _string(text: str, ctx: Context) -> str:
    return text


def _url_path(text: str, ctx: Context) -> str:
    if not text.startswith("/"):
        raise ValueError(f"must start with '/', got {text!r}")
    if any(c.isspace() or ord(c) < 0x20 for c in text):
        raise ValueError(f"must not hold spaces or control characters, got {text!r}")
    return text


def _file(text: str, ctx: Context) -> str:
    if not text:
        raise ValueError("must be a file path")
    return os.path.normpath(os.path.join(ctx.directory, text))


def _log_target(text: str, ctx: Context) -> str:
    if text == "-":
        return text
    if text == "syslog" or text.startswith("syslog:"):
        raise ValueError("syslog is not supported; give a file path or - (standard error)")
    return _file(text, ctx)


def _choice(*choices: str) -> Callable[[str, Context], str]:
    return _plain(choice(choices, fold=False))


def _octal_mode(text: str, ctx: Context) -> int:
    if not re.fullmatch(r"[0-7]{1,4}", text) or int(text, 8) > 0o777:
        raise ValueError(f"must be octal permission bits like 0660, got {text!r}")
    return int(text, 8)


def _backlog(text: str, ctx: Context) -> int:
    value = _integer(-1)(text, ctx)
    return UNLIMITED_BACKLOG if value == -1 else value


def _listen(text: str, ctx: Context) -> str:
    """The address, normalised to what ``parse_address`` reads back the same way.

    A bare port is every IPv4 address, as php-fpm's docs say (php-fpm 7+ also
    takes IPv6 there; our listener is one socket of one family).
    """
    if text.isdigit():
        text = f"0.0.0.0:{text}"
    try:
        address = parse_address(text)
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    if address.is_unix:
        assert address.path is not None
        return os.path.normpath(os.path.join(ctx.directory, address.path))
    if address.port == 0:
        raise ValueError(f"{text!r}: a pool needs a fixed port, not 0")
    return str(address)


def _clients(text: str, ctx: Context) -> tuple[str, ...] | None:
    if text in ("", "any"):
        return None
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            if "/" in item:
                out.append(str(ipaddress.ip_network(item, strict=False)))
            else:
                out.append(str(ipaddress.ip_address(item)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IPv4/IPv6 address (or network like 10.0.0.0/8)") from None
    if not out:
        raise ValueError("no address given (leave the key out to allow everyone)")
    return tuple(out)


def _app(text: str, ctx: Context) -> str:
    if _APP_REF.fullmatch(text) is None:
        raise ValueError(f"must be module:attribute, like workers.hello:app, got {text!r}")
    return text


# key -> (attribute, parser). The attribute is the key with "." turned into "_".
GLOBAL_KEYS: dict[str, tuple[str, Callable[[str, Context], Any]]] = {
    "pid": ("pid", _file),
    "error_log": ("error_log", _log_target),
    "log_level": ("log_level", _choice(*_LOG_LEVELS)),
    "emergency_restart_threshold": ("emergency_restart_threshold", _integer(0)),
    "emergency_restart_interval": ("emergency_restart_interval", _time),
    "process_control_timeout": ("process_control_timeout", _time),
}

POOL_KEYS: dict[str, tuple[str, Callable[[str, Context], Any]]] = {
    "listen": ("listen", _listen),
    "app": ("app", _app),
    "listen.backlog": ("listen_backlog", _backlog),
    "listen.allowed_clients": ("listen_allowed_clients", _clients),
    "listen.mode": ("listen_mode", _octal_mode),
    "chdir": ("chdir", _file),
    "pm": ("pm", _choice("static", "dynamic", "ondemand")),
    "pm.max_children": ("pm_max_children", _integer(1)),
    "pm.start_servers": ("pm_start_servers", _integer(1)),
    "pm.min_spare_servers": ("pm_min_spare_servers", _integer(1)),
    "pm.max_spare_servers": ("pm_max_spare_servers", _integer(1)),
    "pm.max_spawn_rate": ("pm_max_spawn_rate", _integer(1)),
    "pm.process_idle_timeout": ("pm_process_idle_timeout", _time),
    "pm.max_requests": ("pm_max_requests", _integer(0)),
    "pm.status_path": ("pm_status_path", _url_path),
    "ping.path": ("ping_path", _url_path),
    "ping.response": ("ping_response", _string),
    "request_terminate_timeout": ("request_terminate_timeout", _time),
    "request_slowlog_timeout": ("request_slowlog_timeout", _time),
    "request_slowlog_trace_depth": ("request_slowlog_trace_depth", _integer(1, 1000)),
    "slowlog": ("slowlog", _log_target),
    "access.log": ("access_log", _log_target),
    "catch_workers_output": ("catch_workers_output", _boolean),
    "clear_env": ("clear_env", _boolean),
    "fcgi.max_reqs": ("fcgi_max_reqs", _integer(1, 65535)),
    "fcgi.max_conns": ("fcgi_max_conns", _integer(1, 65535)),
    "threads": ("threads", _integer(0, 1024)),
    "threads.inline": ("threads_inline", _boolean),
}

# php-fpm keys that only matter to PHP or to a root-started master: an error
# with the reason, so nobody believes they are in force.
UNSUPPORTED = {
    "user": "not supported: the master does not switch users; start it as the user the pool should run as",
    "group": "not supported: the master does not switch users; start it as the group the pool should run as",
    "listen.owner": "not supported: create the socket's directory with the owner you need, and use listen.mode",
    "listen.group": "not supported: create the socket's directory with the group you need, and use listen.mode",
    "listen.acl_users": "not supported: use listen.mode",
    "listen.acl_groups": "not supported: use listen.mode",
    "listen.setfib": "not supported",
    "pm.status_listen": "not supported: the status page is served on the pool's own listen address",
    "prefix": "not supported: relative paths are relative to the configuration file",
    "chroot": "not supported",
    "rlimit_files": "not supported: set the limit where the master starts (ulimit -n, systemd LimitNOFILE=)",
    "rlimit_core": "not supported: set the limit where the master starts (ulimit -c, systemd LimitCORE=)",
    "security.limit_extensions": "not supported: a pool serves one Python app, not script files",
    "process.max": "not supported: bound each pool with pm.max_children",
    "syslog.facility": "not supported: error_log is a file or - (standard error)",
    "syslog.ident": "not supported: error_log is a file or - (standard error)",
}

# php-fpm keys accepted and ignored, with a logged warning: they tune php-fpm's
# own mechanics (logging buffers, event loop, core dumps, scheduling) and
# change nothing a client or an operator relies on.
IGNORED = {
    "daemonize": "ignored: the master always runs in the foreground (use systemd or a supervisor)",
    "systemd_interval": "ignored: no systemd watchdog notifications",
    "events.mechanism": "ignored: the event loop is trio's (epoll on Linux)",
    "log_buffering": "ignored: log lines are written whole",
    "log_limit": "ignored: log lines are not truncated",
    "process.priority": "ignored: set the priority where the master starts (nice)",
    "process.dumpable": "ignored",
    "decorate_workers_output": "ignored: caught output is always tagged with pool and pid",
    "request_terminate_timeout_track_finished": "ignored: the timeout always covers the whole request",
    "access.format": "ignored: the access log format is fixed (php-fpm's default plus the duration in ms)",
    "access.suppress_path": "ignored: every request is logged",
}

# Keys whose ignoring is silent when they already say what we do.
IGNORED_IF = {"daemonize": "no", "decorate_workers_output": "yes", "process.dumpable": "no"}

# php_value[...] and friends: PHP ini settings; only session.* mean something here.
PHP_ARRAYS = ("php_value", "php_admin_value", "php_flag", "php_admin_flag")
