"""Reading cluster.toml's tables against their schema into the configuration dataclasses.

Each table is checked against its ``Key`` tuple (``_config_schema``): an
unknown key is an error naming the keys expected and the nearest one; the
values present are converted and the absent ones get their defaults. What a
schema cannot say (one key requiring or excluding another, references between
tables, files that must exist) is the code of each section below. Every error
is a ``ConfigError`` at the line of the key (``_config_locate``).
"""

from __future__ import annotations

import difflib
import os
from typing import Any, Iterable, Mapping, NoReturn

from .._settings import Key, show
from ._balancer import ServerSpec
from ._config_locate import KeyPath, Locator, dotted
from ._control_token import read_token
from ._config_model import (
    DEFAULT_STATIC_INDEX,
    ClusterConfig,
    ClusterPoolConfig,
    ConfigError,
    FrontendConfig,
    HealthCheck,
    ListenerConfig,
    LimitConn,
    LimitConnZone,
    LimitReq,
    LimitReqZone,
    RouteConfig,
    TLSConfig,
    UpstreamConfig,
)
from .edge._cache_config import CACHE, CacheConfig
from ._config_schema import (
    FRONTEND,
    EDGE_ROUTE_KEYS,
    HEALTH_CHECK,
    LISTENER,
    LIMIT_CONN,
    LIMIT_CONN_ZONE,
    LIMIT_REQ,
    LIMIT_REQ_ZONE,
    NAME,
    POOL,
    ROUTE,
    SERVER,
    TLS,
    TOP,
    UPSTREAM,
    UPSTREAM_ROUTE_ONLY,
    address,
    hash_key,
    names,
    nonempty_string,
    string,
)

__all__ = ["Context", "read_cluster", "read_frontend", "read_servers"]


class Context:
    """What every error needs: the file name, the line finder, the base directory."""

    def __init__(self, filename: str, locator: Locator, base_dir: str) -> None:
        self.filename = filename
        self.locator = locator
        self.base_dir = base_dir

    def fail(self, path: KeyPath, reason: str, *, missing: bool = False) -> NoReturn:
        """Raise ConfigError for ``path``; a missing key points at its table."""
        line = self.locator.line(path[:-1] if missing else path)
        raise ConfigError(self.filename, line, dotted(path) or None, reason)

    def convert(self, path: KeyPath, value: object, convert: Any) -> Any:
        """``convert(value)``, with its ValueError turned into a ConfigError at ``path``."""
        try:
            return convert(value)
        except ValueError as exc:
            self.fail(path, str(exc))

    def file_path(self, value: str) -> str:
        """An absolute path: relative ones are relative to the configuration file."""
        return os.path.normpath(os.path.join(self.base_dir, os.path.expanduser(value)))


def _unknown_key(key: str, allowed: tuple[str, ...]) -> str:
    reason = "unknown key; expected one of: " + ", ".join(allowed)
    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        reason += f'; did you mean "{close[0]}"?'
    return reason


class _Table:
    """One TOML table read against its schema."""

    def __init__(self, ctx: Context, path: KeyPath, data: Mapping[str, Any], schema: tuple[Key, ...]) -> None:
        self.ctx = ctx
        self.path = path
        self.data = data
        self.schema = {key.name: key for key in schema}
        allowed = names(schema)
        for key in data:
            if key not in self.schema:
                ctx.fail(path + (key,), _unknown_key(key, allowed))

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def values(self) -> dict[str, Any]:
        """Every key that has a converter: converted when present, its default when not."""
        out = {}
        for key in self.schema.values():
            if key.convert is not None:
                out[key.name] = self.get(key.name)
        return out

    def get(self, name: str, convert: Any = None) -> Any:
        """The value of ``name`` converted by ``convert`` or its schema converter; the default when absent."""
        key = self.schema[name]
        if name not in self.data:
            if key.required:
                self.ctx.fail(self.path + (name,), "required key is missing", missing=True)
            return key.default
        return self.ctx.convert(self.path + (name,), self.data[name], convert or key.convert)

    def table(self, key: str, what: str) -> Mapping[str, Any] | None:
        """The sub-table ``key``, or None when absent; ``what`` names it in errors."""
        value = self.data.get(key)
        if value is not None and not isinstance(value, dict):
            self.ctx.fail(self.path + (key,), f"must be a table ({what}), got {show(value)}")
        return value


def _table_at(ctx: Context, path: KeyPath, value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        ctx.fail(path, f"must be a table ({what}), got {show(value)}")
    return value


def _string_table(ctx: Context, path: KeyPath, value: object) -> dict[str, str]:
    """A table of string values (FastCGI params, environment variables)."""
    table = _table_at(ctx, path, value, "of strings")
    for name, item in table.items():
        if not name:
            ctx.fail(path + (name,), "names must not be empty")
        ctx.convert(path + (name,), item, string)
    return dict(table)


def _addresses(ctx: Context, path: KeyPath, value: object) -> tuple[tuple[str, ...], tuple[ListenerConfig, ...]]:
    """One address or a non-empty array of distinct ones (or listener tables), and each one's settings."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        ctx.fail(path, f"must be an address or a non-empty array of addresses, got {show(value)}")
    seen: dict[str, int] = {}
    options: list[ListenerConfig] = []
    for index, item in enumerate(items):
        item_path = path + (index,) if isinstance(value, list) else path
        if isinstance(item, dict) and isinstance(value, list):
            options.append(ListenerConfig(**_Table(ctx, item_path, item, LISTENER).values()))
            found = options[-1].address
        else:
            found = ctx.convert(item_path, item, address)
            options.append(ListenerConfig(found))
        if found in seen:
            ctx.fail(item_path, f"duplicate address {show(found)}; already listed at [{seen[found]}]")
        seen[found] = index
    # Plain addresses only: no settings of their own to keep.
    return tuple(seen), tuple(options) if any(isinstance(item, dict) for item in items) else ()


def _check_listeners(ctx: Context, path: KeyPath, frontend: dict[str, Any]) -> None:
    """A listener whose client address comes from a PROXY header must have one."""
    listeners = frontend.get("listen_options") or [ListenerConfig(a) for a in FrontendConfig().listen]
    for index, listener in enumerate(listeners):
        if listener.proxy_protocol:
            continue
        own = listener.real_ip_header is not None
        if (listener.real_ip_header if own else frontend["real_ip_header"]) == "proxy_protocol":
            where = path + ("listen", index, "real_ip_header") if own else path + ("real_ip_header",)
            ctx.fail(where, f'"proxy_protocol" needs proxy_protocol = true on the listener {listener.address}')


def read_frontend(ctx: Context, path: KeyPath, data: Mapping[str, Any]) -> FrontendConfig:
    """The ``[frontend]`` table (or command-line options in its shape)."""
    table = _Table(ctx, path, data, FRONTEND)
    values = table.values()
    if "listen" in table:
        values["listen"], values["listen_options"] = _addresses(ctx, path + ("listen",), data["listen"])
    _check_listeners(ctx, path, values)
    if "sendfile_root" in table:
        root = ctx.file_path(table.get("sendfile_root", string)) if data["sendfile_root"] else ""
        if root and not os.path.isdir(root):
            ctx.fail(path + ("sendfile_root",), f"no such directory: {root}")
        values["sendfile_root"] = root
    if "access_log" in table:
        log = data["access_log"]
        if log is not False and (not isinstance(log, str) or not log):
            ctx.fail(path + ("access_log",), f'must be "-", a file path or false, got {show(log)}')
        values["access_log"] = None if log is False else log if log == "-" else ctx.file_path(log)
    if values["error_log"] != "-":
        values["error_log"] = ctx.file_path(values["error_log"])
    if values["server_state_file"]:
        values["server_state_file"] = ctx.file_path(values["server_state_file"])
    if values["control_token_file"]:
        token_file = values["control_token_file"] = ctx.file_path(values["control_token_file"])
        try:
            read_token(token_file)  # readable, by its owner only, and not empty
        except OSError as exc:
            ctx.fail(path + ("control_token_file",), f"cannot read {token_file}: {exc.strerror or exc}")
        except ValueError as exc:
            ctx.fail(path + ("control_token_file",), str(exc))
    tls = table.table("tls", "[frontend.tls]")
    if tls is not None:
        values["tls"] = _tls(ctx, path + ("tls",), tls)
    return FrontendConfig(**values)


def _tls(ctx: Context, path: KeyPath, data: Mapping[str, Any]) -> TLSConfig:
    # Both keys first: a missing key is the mistake to report before a missing file.
    files = {key: ctx.file_path(name) for key, name in _Table(ctx, path, data, TLS).values().items()}
    for key, name in files.items():
        if not os.path.isfile(name):
            ctx.fail(path + (key,), f"no such file: {name}")
    return TLSConfig(**files)


def read_servers(ctx: Context, path: KeyPath, value: object, balance: str) -> tuple[ServerSpec, ...]:
    """An upstream's ``servers`` array, checked against the rules ``Balancer`` enforces."""
    if not isinstance(value, list) or not value:
        ctx.fail(path, f"must be a non-empty array of addresses or server tables, got {show(value)}")
    servers: list[ServerSpec] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(value):
        item_path = path + (index,)
        if isinstance(item, dict):
            fields_ = _Table(ctx, item_path, item, SERVER).values()
            if fields_["backup"] and balance in ("ip_hash", "hash"):
                ctx.fail(
                    item_path + ("backup",),
                    f'backup servers cannot be used with balance = "{balance}", '
                    "which must keep sending a key to the same server",
                )
        elif isinstance(item, str):
            fields_ = {"address": ctx.convert(item_path, item, address)}
        else:
            ctx.fail(item_path, f'must be an address or a table like {{ address = "..." }}, got {show(item)}')
        found = fields_["address"]
        if found in seen:
            # Two entries would share hash points and status lines; a bigger
            # weight is how to give a server more traffic.
            ctx.fail(item_path, f"duplicate server {show(found)}; already listed at [{seen[found]}]")
        seen[found] = index
        servers.append(ctx.convert(item_path, fields_, lambda kwargs: ServerSpec(**kwargs)))
    if all(server.backup for server in servers):
        ctx.fail(path, "every server is a backup; at least one must be a primary")
    return tuple(servers)


def _upstream(ctx: Context, path: KeyPath, data: Mapping[str, Any]) -> UpstreamConfig:
    table = _Table(ctx, path, data, UPSTREAM)
    if "servers" not in table:
        ctx.fail(path + ("servers",), "required key is missing", missing=True)
    values = table.values()
    balance = values["balance"]
    values["servers"] = read_servers(ctx, path + ("servers",), data["servers"], balance)
    if balance == "hash":
        if "hash_key" not in table:
            ctx.fail(path + ("hash_key",), 'required when balance = "hash"', missing=True)
        values["hash_key"] = table.get("hash_key", hash_key)
    elif "hash_key" in table:
        ctx.fail(path + ("hash_key",), f'only used with balance = "hash", not {show(balance)}')
    health = table.table("health_check", f"[{dotted(path + ('health_check',))}]")
    if health is not None:
        values["health_check"] = _health_check(ctx, path + ("health_check",), health)
    values["temp_path"] = _temp_path(ctx, table)
    return UpstreamConfig(**values)


def _temp_path(ctx: Context, table: _Table) -> str | None:
    """``temp_path`` of an upstream or route: an existing writable directory, or ""; the default when absent."""
    if "temp_path" not in table:
        return table.get("temp_path")
    directory = table.get("temp_path", string)
    if directory:
        where = table.path + ("temp_path",)
        directory = ctx.file_path(directory)
        if not os.path.isdir(directory):
            ctx.fail(where, f"no such directory: {directory}")
        if not os.access(directory, os.W_OK | os.X_OK):
            ctx.fail(where, f"not writable by this user: {directory}")
    return directory


def read_cache(ctx: Context, path: KeyPath, data: Mapping[str, Any]) -> CacheConfig:
    """A ``[route.cache]`` table; ``path`` made absolute (relative to the file) and checked creatable."""
    table = _Table(ctx, path, data, CACHE)
    values = {name: value for name, value in table.values().items() if name in data}
    if "path" in data:
        directory = table.get("path", string)
        if directory:
            directory = ctx.file_path(directory)
            existing = directory
            while not os.path.isdir(existing) and os.path.dirname(existing) != existing:
                existing = os.path.dirname(existing)
            if os.path.exists(directory) and not os.path.isdir(directory):
                ctx.fail(path + ("path",), f"not a directory: {directory}")
            if not os.access(existing, os.W_OK | os.X_OK):
                ctx.fail(path + ("path",), f"not writable by this user: {existing}")
        values["path"] = directory
    config = CacheConfig(**values)
    if config.background_update and "updating" not in config.use_stale:
        ctx.fail(path + ("background_update",), 'needs use_stale to hold "updating" (the stale entry is served meanwhile)')
    return config


def _health_check(ctx: Context, path: KeyPath, data: Mapping[str, Any]) -> HealthCheck:
    return HealthCheck(**_Table(ctx, path, data, HEALTH_CHECK).values())


def _reference(ctx: Context, path: KeyPath, name: object, defined: Mapping[str, Any], what: str) -> str:
    """The name of a ``[what.NAME]`` table that must exist."""
    name = ctx.convert(path, name, string)
    if name not in defined:
        reason = f"no such {what}; defined: {', '.join(defined)}" if defined else f"no such {what}; the file defines no [{what}.NAME] table"
        close = difflib.get_close_matches(name, list(defined), n=1)
        if close:
            reason += f'; did you mean "{close[0]}"?'
        ctx.fail(path, reason)
    return name


def _route_limits(ctx: Context, table: _Table, zones: tuple[Mapping[str, Any], Mapping[str, Any]]) -> dict[str, Any]:
    """A route's ``limit_req`` and ``limit_conn`` tables, naming zones that exist."""
    out: dict[str, Any] = {}
    for key, schema, cls, defined in (("limit_req", LIMIT_REQ, LimitReq, zones[0]), ("limit_conn", LIMIT_CONN, LimitConn, zones[1])):
        data = table.table(key, 'like { zone = "NAME" }')
        if data is None:
            continue
        path = table.path + (key,)
        values = _Table(ctx, path, data, schema).values()
        if "zone" not in data:
            ctx.fail(path + ("zone",), "required key is missing", missing=True)
        values["zone"] = _reference(ctx, path + ("zone",), data["zone"], defined, f"{key}_zone")
        if key == "limit_req" and values["delay"] and values["nodelay"]:
            ctx.fail(path + ("delay",), "give delay or nodelay, not both")
        out[key] = cls(**values)
    return out


def _route(
    ctx: Context, path: KeyPath, data: Mapping[str, Any], upstreams: Mapping[str, UpstreamConfig], root: str,
    zones: tuple[Mapping[str, Any], Mapping[str, Any]] = ({}, {}),
) -> RouteConfig:
    table = _Table(ctx, path, data, ROUTE)
    if "prefix" in table and "regex" in table:
        ctx.fail(path + ("regex",), "give prefix or regex, not both")
    if "prefix" not in table and "regex" not in table:
        ctx.fail(path, "needs a prefix or a regex to match paths with")
    if "upstream" in table and "static" in table:
        ctx.fail(path + ("static",), "give upstream or static, not both")
    if "upstream" not in table and "static" not in table:
        ctx.fail(path, "needs an upstream or a static directory to send requests to")
    values: dict[str, Any] = {"prefix": table.get("prefix"), "regex": table.get("regex")}
    if "static" in table:
        for key in UPSTREAM_ROUTE_ONLY:
            if key in table:
                ctx.fail(path + (key,), "only used by upstream routes; a static route serves its directory")
        directory = ctx.file_path(table.get("static", nonempty_string))
        if not os.path.isdir(directory):
            ctx.fail(path + ("static",), f"no such directory: {directory}")
        values["static"] = directory
        values["index"] = table.get("index", string) if "index" in table else DEFAULT_STATIC_INDEX
        values["internal"] = table.get("internal")
        values.update(_route_limits(ctx, table, zones))
        values.update((key, table.get(key)) for key in EDGE_ROUTE_KEYS)
        return RouteConfig(**values)
    if "internal" in table:
        ctx.fail(path + ("internal",), "only a static route can be internal (the target of X-Accel-Redirect)")
    name = _reference(ctx, path + ("upstream",), data["upstream"], upstreams, "upstream")
    values.update(table.values())
    values.pop("internal")
    values["upstream"] = name
    values["index"] = table.get("index", string)
    values["root"] = values["root"] or root
    if "params" in table:
        values["params"] = _string_table(ctx, path + ("params",), data["params"])
    values["temp_path"] = _temp_path(ctx, table)
    values.update(_route_limits(ctx, table, zones))
    cache = table.table("cache", f"[{dotted(path + ('cache',))}]")
    if cache is not None:
        values["cache"] = read_cache(ctx, path + ("cache",), cache)
    return RouteConfig(**values)


def _pool(ctx: Context, path: KeyPath, data: Mapping[str, Any]) -> ClusterPoolConfig:
    table = _Table(ctx, path, data, POOL)
    values = table.values()
    if "env" in table:
        values["env"] = _string_table(ctx, path + ("env",), data["env"])
    if "session" in table:
        values["session"] = _session_table(ctx, path + ("session",), data["session"])
    return ClusterPoolConfig(**values)


def _session_setting(value: object) -> str:
    """A session setting's TOML value as the raw string a pool file would hold."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise ValueError(f"must be a string, a number or a boolean, got {show(value)}")


def _session_table(ctx: Context, path: KeyPath, value: object) -> dict[str, str]:
    """A pool's ``session`` table, checked as ``php_value[session.*]`` lines of a pool file are."""
    from ..sessions._settings import SessionConfigError, parse_session_settings

    table = _table_at(ctx, path, value, "of session settings, like { save_handler = \"redis\" }")
    settings = {}
    for name, item in table.items():
        if name.startswith("session."):
            ctx.fail(path + (name,), f'write the name without "session.": {name[len("session."):]}')
        settings[name] = ctx.convert(path + (name,), item, _session_setting)
    try:
        parse_session_settings(settings)
    except SessionConfigError as exc:
        # A reason about keys together (save_path missing for redis) may name
        # a key that is not in the table: point at the table then.
        ctx.fail(path + (exc.key,) if exc.key in settings else path, exc.reason)
    return settings


def _named_tables(ctx: Context, top: _Table, key: str) -> Iterable[tuple[str, KeyPath, Mapping[str, Any]]]:
    """(name, path, table) for each ``[key.NAME]`` table."""
    section = top.table(key, f"[{key}.NAME] tables")
    for name, value in (section or {}).items():
        path = (key, name)
        if NAME.fullmatch(name) is None:
            ctx.fail(path, "names may hold only letters, digits, '_' and '-'")
        yield name, path, _table_at(ctx, path, value, f"[{key}.{dotted((name,))}]")


def read_cluster(ctx: Context, data: Mapping[str, Any], path: str | None) -> ClusterConfig:
    """A whole cluster file, as tomllib read it; ``path`` becomes ``ClusterConfig.path``."""
    top = _Table(ctx, (), data, TOP)
    frontend = read_frontend(ctx, ("frontend",), top.table("frontend", "[frontend]") or {})
    upstreams = {name: _upstream(ctx, where, table) for name, where, table in _named_tables(ctx, top, "upstream")}

    zones = (
        {name: LimitReqZone(**_Table(ctx, where, table, LIMIT_REQ_ZONE).values())
         for name, where, table in _named_tables(ctx, top, "limit_req_zone")},
        {name: LimitConnZone(**_Table(ctx, where, table, LIMIT_CONN_ZONE).values())
         for name, where, table in _named_tables(ctx, top, "limit_conn_zone")},
    )
    route_list = data.get("route", [])
    if not isinstance(route_list, list):
        ctx.fail(("route",), f"must be an array of tables ([[route]]), got {show(route_list)}")
    routes = tuple(
        _route(ctx, ("route", i), _table_at(ctx, ("route", i), item, "[[route]]"), upstreams, frontend.root, zones)
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
            ctx.fail(where + ("listen",), f"{show(pool.listen)} is already the address of pool.{listeners[pool.listen]}")
        listeners[pool.listen] = name
        pools[name] = pool
    return ClusterConfig(frontend=frontend, upstreams=upstreams, routes=routes, pools=pools, path=path,
                         limit_req_zones=zones[0], limit_conn_zones=zones[1])
