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

The README's "Configuration reference" lists every key with its default; the
keys are described once, in ``_config_schema``, the dataclasses of
``_config_model`` give the defaults, and ``_config_read`` reads a file's
tables against them. Values a user writes:

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
tomllib reports no positions for values, so ``Locator`` (``_config_locate``)
scans the text for the line where each key, table header and array element
starts. ``ConfigError`` is the settings toolkit's ``SettingsError``, the
error of the INI pool files and session settings too.
"""


from __future__ import annotations

import os
import tomllib
from typing import Any

from .._settings import parse_duration, parse_size
from ._config_locate import Locator, syntax_error
from ._config_model import BALANCE_METHODS as BALANCE_METHODS
from ._config_model import DEFAULT_STATIC_INDEX as DEFAULT_STATIC_INDEX
from ._config_model import DEFAULT_UPSTREAM as DEFAULT_UPSTREAM
from ._config_model import ClusterConfig as ClusterConfig
from ._config_model import ClusterPoolConfig as ClusterPoolConfig
from ._config_model import ConfigError as ConfigError
from ._config_model import FrontendConfig as FrontendConfig
from ._config_model import HealthCheck as HealthCheck
from ._config_model import RouteConfig as RouteConfig
from ._config_model import TLSConfig as TLSConfig
from ._config_model import UpstreamConfig as UpstreamConfig
from ._config_read import Context, read_cluster, read_frontend, read_servers
from ._config_schema import UPSTREAM

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

_DEFAULT_BALANCE = next(key.default for key in UPSTREAM if key.name == "balance")


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
        raise syntax_error(filename, text, exc) from None
    ctx = Context(filename, Locator(text), base_dir)
    return read_cluster(ctx, data, filename if is_path else None)


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
    ctx = Context("<command line>", Locator(""), os.getcwd())
    options = dict(frontend_overrides)
    if listen:
        options["listen"] = list(listen)
    if root is not None:
        options["root"] = root
    frontend = read_frontend(ctx, (), options)
    if not upstreams:
        ctx.fail(("upstream",), "at least one upstream address is required")
    servers = read_servers(ctx, ("upstream",), list(upstreams), _DEFAULT_BALANCE)
    return ClusterConfig(
        frontend=frontend,
        upstreams={DEFAULT_UPSTREAM: UpstreamConfig(servers=servers)},
        routes=(RouteConfig(prefix="/", upstream=DEFAULT_UPSTREAM, root=frontend.root),),
        pools={},
        path=None,
    )

