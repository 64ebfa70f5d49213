"""The cluster configuration file: the samples, defaults, and every kind of error with its line."""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fcgi_cluster._settings import SettingsError
from fcgi_cluster.frontend._balancer import ServerSpec
from fcgi_cluster.frontend._config import (
    ClusterConfig,
    ConfigError,
    FrontendConfig,
    HealthCheck,
    ClusterPoolConfig,
    RouteConfig,
    TLSConfig,
    UpstreamConfig,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
    simple_config,
)
from fcgi_cluster.frontend._config_locate import Locator
from fcgi_cluster.worker import WorkerConfig

WORKERS = Path(__file__).resolve().parents[2] / "workers"

# The smallest valid file; tests append the table they are about.
UPSTREAM = '[upstream.app]\nservers = ["127.0.0.1:9001"]\n'


def toml(text: str) -> str:
    """Test TOML written as an indented triple-quoted string; line 1 is the first line."""
    return textwrap.dedent(text).lstrip("\n")


def error_of(text: str, filename: str = "cluster.toml") -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(toml(text), filename)
    return str(info.value)


# --------------------------------------------------------------------------
# The sample files
# --------------------------------------------------------------------------


def test_the_one_machine_sample_loads() -> None:
    config = load_config(WORKERS / "cluster.toml")
    assert config.path == str(WORKERS / "cluster.toml")
    assert config.frontend.listen == ("127.0.0.1:8080",)
    assert list(config.upstreams) == ["echo"]
    servers = config.upstreams["echo"].servers
    assert servers == (ServerSpec("127.0.0.1:9001"), ServerSpec("127.0.0.1:9002"))
    assert config.routes == (RouteConfig(prefix="/", upstream="echo"),)
    assert {name: (p.listen, p.app) for name, p in config.pools.items()} == {
        "echo-1": ("127.0.0.1:9001", "workers.echo:app"),
        "echo-2": ("127.0.0.1:9002", "workers.echo:app"),
    }


def test_the_three_host_sample_has_the_same_shape_with_other_addresses() -> None:
    local = load_config(WORKERS / "cluster.toml")
    hosts = load_config(WORKERS / "three-hosts.toml")
    assert hosts.frontend.listen == ("10.0.0.1:80",)
    assert [s.address for s in hosts.upstreams["echo"].servers] == ["10.0.0.2:9000", "10.0.0.3:9000"]
    assert [p.listen for p in hosts.pools.values()] == ["10.0.0.2:9000", "10.0.0.3:9000"]
    # Apart from addresses, nothing differs.
    assert hosts.routes == local.routes
    assert [dataclasses.replace(p, listen="") for p in hosts.pools.values()] == [
        dataclasses.replace(p, listen="") for p in local.pools.values()
    ]
    upstream = hosts.upstreams["echo"]
    assert dataclasses.replace(upstream, servers=()) == dataclasses.replace(local.upstreams["echo"], servers=())


# --------------------------------------------------------------------------
# Defaults and the implicit route
# --------------------------------------------------------------------------


def test_defaults_fill_every_key_not_written() -> None:
    config = parse_config(UPSTREAM)
    assert config.frontend == FrontendConfig()
    front = config.frontend
    assert front.listen == ("127.0.0.1:8080",)
    assert (front.processes, front.root, front.server_name) == ("auto", "/var/www/html", "")
    assert (front.access_log, front.error_log, front.tls) == ("-", "-", None)
    assert (front.header_timeout, front.body_timeout, front.keepalive_timeout, front.send_timeout) == (60, 60, 75, 60)
    assert (front.max_request_line, front.max_header_size, front.max_body_size) == (8192, 32768, 1048576)
    assert (front.max_connections, front.keepalive_requests, front.max_headers) == (1024, 1000, 100)
    assert front.underscores_in_headers is False
    upstream = config.upstreams["app"]
    assert upstream == UpstreamConfig(servers=(ServerSpec("127.0.0.1:9001"),))
    assert (upstream.balance, upstream.hash_key, upstream.multiplex) == ("round_robin", "", "auto")
    assert (upstream.connections, upstream.keepalive, upstream.tries) == ("auto", 32, 0)
    assert (upstream.connect_timeout, upstream.send_timeout, upstream.read_timeout) == (5, 60, 60)
    assert upstream.next_upstream_timeout == 0 and upstream.next_upstream_non_idempotent is False
    assert upstream.health_check is None
    assert config.pools == {} and config.path is None


def test_pool_defaults_are_the_worker_defaults() -> None:
    pool = parse_config(UPSTREAM + '[pool.a]\nlisten = "9001"\napp = "workers.echo:app"\n').pools["a"]
    worker = WorkerConfig()
    assert pool.listen == "127.0.0.1:9001"
    for name in ("threads", "max_requests", "max_conns", "graceful_timeout", "root_path"):
        assert getattr(pool, name) == getattr(worker, name), name
    assert pool.env == {}


def test_a_single_upstream_without_routes_gets_the_implicit_route() -> None:
    config = parse_config(UPSTREAM + '[frontend]\nroot = "/srv/app"\n')
    assert config.routes == (RouteConfig(prefix="/", upstream="app", root="/srv/app"),)
    assert config.route_for("/anything?x") is config.routes[0]


def test_several_upstreams_without_routes_are_an_error() -> None:
    text = UPSTREAM + '[upstream.api]\nservers = ["127.0.0.1:9002"]\n'
    assert error_of(text) == (
        "cluster.toml: route: several upstreams (app, api) and no [[route]] to choose between them"
    )


def test_a_file_with_nothing_to_serve_names_no_line() -> None:
    assert error_of("[frontend]\nlisten = '127.0.0.1:80'\n") == (
        "cluster.toml: upstream: the front-end has nothing to serve: define an [upstream.NAME] or a static [[route]]"
    )


def test_a_full_file_gives_every_value() -> None:
    text = """\
        [frontend]
        listen = ["127.0.0.1:8080", "[::1]:8080", "unix:run/front.sock"]
        processes = "auto"
        access_log = false
        error_log = "logs/error.log"
        header_timeout = "1m30s"
        body_timeout = 2.5
        max_request_line = "4K"
        max_body_size = 0
        underscores_in_headers = true

        [upstream.php]
        servers = [
            "127.0.0.1:9001",
            { address = "127.0.0.1:9002", weight = 2, max_fails = 3, fail_timeout = "30s", max_conns = 8 },
            { address = "127.0.0.1:9003", down = true },
        ]
        balance = "hash"
        hash_key = "cookie:PHPSESSID"
        multiplex = "off"
        next_upstream_timeout = "150ms"
        [upstream.php.health_check]
        path = "/ping"
        interval = "1s"
        expect_status = 204

        [[route]]
        regex = '\\.php(/|$)'
        upstream = "php"
        index = "index.php"
        root = "/var/www/site"
        split_path_info = '^(.+\\.php)(/.*)$'
        params = { APP_ENV = "production", "X.Y" = "1" }

        [pool.a]
        listen = "127.0.0.1:9001"
        app = "workers.echo:app"
        threads = 4
        graceful_timeout = "1m"
        root_path = "/app/"
        env = { APP_ENV = "production" }
    """
    config = parse_config(toml(text), "/etc/fcgi/cluster.toml")
    front = config.frontend
    assert front.listen == ("127.0.0.1:8080", "[::1]:8080", "unix:run/front.sock")
    assert front.processes == (os.cpu_count() or 1)
    assert front.access_log is None
    assert front.error_log == "/etc/fcgi/logs/error.log"
    assert (front.header_timeout, front.body_timeout) == (90.0, 2.5)
    assert (front.max_request_line, front.max_body_size) == (4096, 0)
    assert front.underscores_in_headers is True
    php = config.upstreams["php"]
    assert php.servers == (
        ServerSpec("127.0.0.1:9001"),
        ServerSpec("127.0.0.1:9002", weight=2, max_fails=3, fail_timeout=30.0, max_conns=8),
        ServerSpec("127.0.0.1:9003", down=True),
    )
    assert (php.balance, php.hash_key, php.multiplex, php.next_upstream_timeout) == (
        "hash", "cookie:PHPSESSID", "off", 0.15,
    )  # fmt: skip
    assert php.health_check == HealthCheck(path="/ping", interval=1.0, timeout=2.0, expect_status=204)
    (route,) = config.routes
    assert route.regex is not None and route.regex.pattern == r"\.php(/|$)"
    assert (route.upstream, route.index, route.root) == ("php", "index.php", "/var/www/site")
    assert route.params == {"APP_ENV": "production", "X.Y": "1"}
    assert route.match("/index.php/a/b") and route.match("/x.php") and not route.match("/x.phpx")
    assert route.split_path_info is not None
    # A newline (%0a) in the path must not defeat the split (CVE-2019-11043).
    split = route.split_path_info.match("/index.php/a\nb")
    assert split is not None and split.groups() == ("/index.php", "/a\nb")
    pool = config.pools["a"]
    assert (pool.threads, pool.graceful_timeout, pool.root_path) == (4, 60.0, "/app")
    assert pool.env == {"APP_ENV": "production"}
    assert config.path == "/etc/fcgi/cluster.toml"


# --------------------------------------------------------------------------
# Routes and relative paths
# --------------------------------------------------------------------------


def test_static_paths_are_relative_to_the_config_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "site" / "static").mkdir(parents=True)
    config_file = tmp_path / "site" / "cluster.toml"
    config_file.write_text('[[route]]\nprefix = "/static/"\nstatic = "static"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(config_file)
    assert config.routes == (
        RouteConfig(prefix="/static/", static=str(tmp_path / "site" / "static"), index="index.html"),
    )
    assert config.upstreams == {}


def test_a_missing_static_directory_is_an_error(tmp_path: Path) -> None:
    config_file = tmp_path / "cluster.toml"
    config_file.write_text('[[route]]\nprefix = "/static/"\n\nstatic = "nope"\n')
    with pytest.raises(ConfigError) as info:
        load_config(config_file)
    assert str(info.value) == f"{config_file}:4: route[0].static: no such directory: {tmp_path / 'nope'}"


def test_routes_keep_their_order_and_the_first_match_wins(tmp_path: Path) -> None:
    text = UPSTREAM + toml(
        """\
        [[route]]
        prefix = "/static/"
        static = "."
        [[route]]
        regex = "^/static/x"
        upstream = "app"
        [[route]]
        prefix = "/"
        upstream = "app"
        """
    )
    config = parse_config(text, base_dir=str(tmp_path))
    first, second, third = config.routes
    assert (first.static, first.index, second.upstream) == (str(tmp_path), "index.html", "app")
    assert config.route_for("/static/x") is first
    assert config.route_for("/other") is third
    assert not first.match("/stat") and second.match("/static/xyz") and not second.match("/a/static/x")


def test_upstream_only_keys_are_refused_in_static_routes() -> None:
    text = """\
        [[route]]
        prefix = "/s/"
        static = "."
        params = { A = "b" }
    """
    assert error_of(text) == (
        "cluster.toml:4: route[0].params: only used by upstream routes; a static route serves its directory"
    )


def test_tls_files_must_exist(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("x")
    (tmp_path / "key.pem").write_text("x")
    text = UPSTREAM + '[frontend.tls]\ncert = "cert.pem"\nkey = "key.pem"\n'
    config = parse_config(text, str(tmp_path / "cluster.toml"))
    assert config.frontend.tls == TLSConfig(cert=str(tmp_path / "cert.pem"), key=str(tmp_path / "key.pem"))
    text = UPSTREAM + '[frontend.tls]\ncert = "cert.pem"\nkey = "missing.pem"\n'
    with pytest.raises(ConfigError) as info:
        parse_config(text, str(tmp_path / "cluster.toml"))
    assert str(info.value) == f"{tmp_path / 'cluster.toml'}:5: frontend.tls.key: no such file: {tmp_path / 'missing.pem'}"
    assert error_of(UPSTREAM + '\n[frontend.tls]\ncert = "cert.pem"\n') == (
        "cluster.toml:4: frontend.tls.key: required key is missing"
    )


# --------------------------------------------------------------------------
# Errors: exact text and line
# --------------------------------------------------------------------------


def test_syntax_errors_carry_tomllib_line() -> None:
    assert error_of("[frontend]\nlisten = \n") == "cluster.toml:2: TOML syntax error: Invalid value (column 10)"
    assert error_of('[frontend]\nroot = "x\n') == (
        "cluster.toml:2: TOML syntax error: Illegal character '\\n' (column 10)"
    )
    assert error_of('a = "x') == "cluster.toml:1: TOML syntax error: Unterminated string (at the end of the file)"


def test_unknown_top_level_key_suggests_the_close_one() -> None:
    text = UPSTREAM + '\n[upstreams.api]\nservers = ["127.0.0.1:9002"]\n'
    assert error_of(text) == (
        'cluster.toml:4: upstreams: unknown key; expected one of: frontend, upstream, route, pool, limit_req_zone, limit_conn_zone; did you mean "upstream"?'
    )


def test_unknown_frontend_key() -> None:
    text = """\
        [frontend]
        listen = "127.0.0.1:8080"
        # a comment with a fake key = 1
        keepalive_timout = "10s"
    """
    reason = error_of(text).split(": ", 2)
    assert reason[:2] == ["cluster.toml:4", "frontend.keepalive_timout"]
    assert reason[2].startswith("unknown key; expected one of: listen, processes, root, ")
    assert reason[2].endswith('; did you mean "keepalive_timeout"?')


def test_unknown_key_without_a_close_match_lists_the_keys() -> None:
    assert error_of(UPSTREAM + "[pool.a]\nxyzzy = 1\n") == (
        "cluster.toml:4: pool.a.xyzzy: unknown key; expected one of: "
        "listen, app, threads, threads_inline, max_requests, max_conns, graceful_timeout, root_path, env, session"
    )


def test_unknown_key_in_a_server_inline_table_points_at_its_line() -> None:
    text = """\
        [upstream.app]
        servers = [
            "127.0.0.1:9001",  # the first
            { address = "127.0.0.1:9002", wieght = 2 },
        ]
    """
    assert error_of(text) == (
        "cluster.toml:4: upstream.app.servers[1].wieght: unknown key; expected one of: "
        'address, weight, max_fails, fail_timeout, backup, down, max_conns, resolve; did you mean "weight"?'
    )


def test_unknown_key_in_the_second_route() -> None:
    text = UPSTREAM + toml(
        """\
        [[route]]
        prefix = "/a/"
        upstream = "app"

        [[route]]
        prefix = "/b/"
        upstrem = "app"
        """
    )
    assert error_of(text) == (
        "cluster.toml:9: route[1].upstrem: unknown key; expected one of: prefix, regex, upstream, "
        'static, index, root, split_path_info, params, buffering, buffer_size, max_temp_file_size, temp_path, internal, gzip, gzip_comp_level, gzip_min_length, gzip_types, gzip_proxied, brotli, brotli_comp_level, zstd, '
        'zstd_comp_level, limit_req, limit_req_status, limit_conn, limit_conn_status, cache; '
            'did you mean "upstream"?'
    )


def test_missing_required_key_points_at_its_table() -> None:
    text = UPSTREAM + '\n[pool.a]\nlisten = "127.0.0.1:9001"\n'
    assert error_of(text) == "cluster.toml:4: pool.a.app: required key is missing"
    assert error_of("[upstream.app]\nbalance = 'least_conn'\n") == (
        "cluster.toml:1: upstream.app.servers: required key is missing"
    )
    text = UPSTREAM + "[upstream.app.health_check]\ninterval = 1\n"
    assert error_of(text) == "cluster.toml:3: upstream.app.health_check.path: required key is missing"


def test_wrong_types() -> None:
    assert error_of(UPSTREAM + '[frontend]\nprocesses = "4"\n') == (
        'cluster.toml:4: frontend.processes: must be an integer >= 1 or "auto", got "4"'
    )
    assert error_of(UPSTREAM + '[frontend]\nunderscores_in_headers = "yes"\n') == (
        'cluster.toml:4: frontend.underscores_in_headers: must be true or false, got "yes"'
    )
    assert error_of(UPSTREAM + "[frontend]\nmax_headers = true\n") == (
        "cluster.toml:4: frontend.max_headers: must be an integer >= 1, got true"
    )
    assert error_of(UPSTREAM + "[frontend]\nroot = ['/a']\n") == (
        "cluster.toml:4: frontend.root: must be a string, got an array"
    )
    assert error_of("frontend = 3\n" + UPSTREAM) == "cluster.toml:1: frontend: must be a table ([frontend]), got 3"
    assert error_of(UPSTREAM + "[[route]]\nprefix = '/'\nupstream = 'app'\n[[route]]\n[route.x]\ny = 1\n") == (
        "cluster.toml:7: route[1].x: unknown key; expected one of: prefix, regex, upstream, static, index, "
        "root, split_path_info, params, buffering, buffer_size, max_temp_file_size, temp_path, internal, gzip, gzip_comp_level, gzip_min_length, gzip_types, gzip_proxied, brotli, brotli_comp_level, zstd, "
        "zstd_comp_level, limit_req, limit_req_status, limit_conn, limit_conn_status, cache"
    )
    assert error_of(UPSTREAM + "route = 1\n") == (
        "cluster.toml:3: upstream.app.route: unknown key; expected one of: servers, balance, hash_key, multiplex, "
        "connections, keepalive, connect_timeout, send_timeout, read_timeout, dead_host_timeout, ping_interval, ping_timeout, "
        "tries, next_upstream_timeout, "
        "next_upstream_non_idempotent, health_check, resolve, buffering, buffer_size, max_temp_file_size, temp_path, status_path"
    )
    assert error_of("route = 1\n" + UPSTREAM) == "cluster.toml:1: route: must be an array of tables ([[route]]), got 1"
    assert error_of(UPSTREAM + "[frontend]\naccess_log = true\n") == (
        'cluster.toml:4: frontend.access_log: must be "-", a file path or false, got true'
    )
    assert error_of('[upstream.app]\nservers = "127.0.0.1:9001"\n') == (
        'cluster.toml:2: upstream.app.servers: must be a non-empty array of addresses or server tables, got "127.0.0.1:9001"'
    )
    assert error_of('[upstream.app]\nservers = ["127.0.0.1:9001", 9002]\n') == (
        'cluster.toml:2: upstream.app.servers[1]: must be an address or a table like { address = "..." }, got 9002'
    )


def test_bad_values() -> None:
    assert error_of(UPSTREAM + '[upstream.app.health_check]\npath = "/ping"\nexpect_status = 700\n') == (
        "cluster.toml:5: upstream.app.health_check.expect_status: must be an integer from 100 to 599, got 700"
    )
    assert error_of(UPSTREAM + 'balance = "least_con"\n') == (
        "cluster.toml:3: upstream.app.balance: must be one of: round_robin, least_conn, ip_hash, hash; "
        'got "least_con"; did you mean "least_conn"?'
    )
    assert error_of('[upstream.app]\nservers = [{ address = "127.0.0.1:9001", weight = 101 }]\n') == (
        "cluster.toml:2: upstream.app.servers[0].weight: must be an integer from 1 to 100, got 101"
    )
    assert error_of(UPSTREAM + '[pool.a]\nlisten = "9001"\napp = "workers/echo.py"\n') == (
        'cluster.toml:5: pool.a.app: must be "module:attribute", like "workers.echo:app", got "workers/echo.py"'
    )
    assert error_of(UPSTREAM + 'hash_key = "uri"\n') == (
        'cluster.toml:3: upstream.app.hash_key: only used with balance = "hash", not "round_robin"'
    )
    assert error_of(UPSTREAM + '[upstream.app.health_check]\npath = "ping"\n') == (
        'cluster.toml:4: upstream.app.health_check.path: must be a path starting with "/", got "ping"'
    )


def test_bad_duration() -> None:
    assert error_of(UPSTREAM + "[frontend]\nheader_timeout = -3\n") == (
        'cluster.toml:4: frontend.header_timeout: must be a duration like "10s", got -3'
    )
    assert error_of(UPSTREAM + 'connect_timeout = "5 sec"\n') == (
        'cluster.toml:3: upstream.app.connect_timeout: must be a duration like "10s", got "5 sec" '
        '(units ms, s, m, h, d, w, largest first, as in "1m30s")'
    )
    assert error_of(UPSTREAM + 'read_timeout = "0s"\n') == (
        'cluster.toml:3: upstream.app.read_timeout: must be a duration above 0, got "0s"'
    )


def test_bad_size() -> None:
    assert error_of(UPSTREAM + '[frontend]\n\nmax_body_size = "1x"\n') == (
        'cluster.toml:5: frontend.max_body_size: must be a size like "32k" or a number of bytes, got "1x" (units k, m, g)'
    )
    assert error_of(UPSTREAM + "[frontend]\nmax_header_size = 0\n") == (
        "cluster.toml:4: frontend.max_header_size: must be at least 1 byte, got 0"
    )


def test_bad_address() -> None:
    assert error_of('[frontend]\nlisten = ["127.0.0.1:8080", "localhost"]\n' + UPSTREAM) == (
        "cluster.toml:2: frontend.listen[1]: bad address: 'localhost': "
        "expected host:port, [ipv6]:port or a unix socket path"
    )
    text = """\
        [upstream.app]
        servers = [
            "127.0.0.1:9001",
            "127.0.0.1:99999",
        ]
    """
    assert error_of(text) == (
        "cluster.toml:4: upstream.app.servers[1]: bad address: '127.0.0.1:99999': port must be a number from 0 to 65535"
    )
    assert error_of(UPSTREAM + "[pool.a]\nlisten = 9001\n") == (
        'cluster.toml:4: pool.a.listen: must be an address like "127.0.0.1:9000", got 9001'
    )


def test_bad_regex_names_the_regex_error() -> None:
    text = UPSTREAM + '[[route]]\nregex = "[a-"\nupstream = "app"\n'
    assert error_of(text) == (
        "cluster.toml:4: route[0].regex: bad regular expression: unterminated character set at position 0"
    )


def test_split_path_info_needs_two_groups() -> None:
    text = UPSTREAM + toml(
        """\
        [[route]]
        prefix = "/"
        upstream = "app"
        split_path_info = '^(.+\\.php)/.*$'
        """
    )
    assert error_of(text) == (
        "cluster.toml:6: route[0].split_path_info: must have exactly 2 groups (the script name, then PATH_INFO), has 1"
    )


def test_route_to_an_unknown_upstream_points_at_its_line() -> None:
    text = UPSTREAM + '[[route]]\nprefix = "/"\nupstream = "ap"\n'
    assert error_of(text) == (
        'cluster.toml:5: route[0].upstream: no such upstream; defined: app; did you mean "app"?'
    )
    assert error_of('route = [{ prefix = "/", upstream = "x" }]\n') == (
        "cluster.toml:1: route[0].upstream: no such upstream; the file defines no [upstream.NAME] table"
    )


def test_route_with_both_prefix_and_regex_or_neither() -> None:
    text = UPSTREAM + '[[route]]\nprefix = "/"\nregex = "x"\nupstream = "app"\n'
    assert error_of(text) == "cluster.toml:5: route[0].regex: give prefix or regex, not both"
    text = UPSTREAM + '\n[[route]]\nupstream = "app"\n'
    assert error_of(text) == "cluster.toml:4: route[0]: needs a prefix or a regex to match paths with"
    text = UPSTREAM + '[[route]]\nprefix = "/"\nupstream = "app"\nstatic = "."\n'
    assert error_of(text) == "cluster.toml:6: route[0].static: give upstream or static, not both"


def test_hash_without_hash_key() -> None:
    text = '[upstream.app]\nservers = ["127.0.0.1:9001"]\nbalance = "hash"\n'
    assert error_of(text) == 'cluster.toml:1: upstream.app.hash_key: required when balance = "hash"'
    assert error_of(text + 'hash_key = "cookie:"\n') == (
        'cluster.toml:4: upstream.app.hash_key: must be "uri", "remote_addr", "cookie:NAME", '
        '"header:NAME" or "arg:NAME", got "cookie:"'
    )


def test_backup_servers_are_refused_with_hashing() -> None:
    text = """\
        [upstream.app]
        balance = "ip_hash"
        servers = ["127.0.0.1:9001",
                   { address = "127.0.0.1:9002", backup = true }]
    """
    assert error_of(text) == (
        'cluster.toml:4: upstream.app.servers[1].backup: backup servers cannot be used with balance = "ip_hash", '
        "which must keep sending a key to the same server"
    )
    text = '[upstream.app]\nservers = [{ address = "127.0.0.1:9001", backup = true }]\n'
    assert error_of(text) == "cluster.toml:2: upstream.app.servers: every server is a backup; at least one must be a primary"


def test_duplicate_server() -> None:
    text = """\
        [upstream.app]
        servers = [
            "127.0.0.1:9001",
            "127.0.0.1:9002",
            { address = "9001", weight = 3 },
        ]
    """
    assert error_of(text) == (
        'cluster.toml:5: upstream.app.servers[2]: duplicate server "127.0.0.1:9001"; already listed at [0]'
    )


def test_two_pools_cannot_share_an_address() -> None:
    text = UPSTREAM + toml(
        """\
        [pool.a]
        listen = "127.0.0.1:9001"
        app = "workers.echo:app"
        [pool.b]
        app = "workers.echo:app"
        listen = "9001"
        """
    )
    assert error_of(text) == 'cluster.toml:8: pool.b.listen: "127.0.0.1:9001" is already the address of pool.a'


def test_bad_table_names() -> None:
    assert error_of('[upstream."my app"]\nservers = ["9000"]\n') == (
        "cluster.toml:1: upstream.\"my app\": names may hold only letters, digits, '_' and '-'"
    )


def test_params_values_must_be_strings() -> None:
    text = UPSTREAM + '[[route]]\nprefix = "/"\nupstream = "app"\nparams = { A = "x", PORT = 80 }\n'
    assert error_of(text) == "cluster.toml:6: route[0].params.PORT: must be a string, got 80"


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert str(info.value) == f"{tmp_path / 'nope.toml'}: cannot read the file: No such file or directory"
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b'[frontend]\nserver_name = "caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_config(latin1)
    assert str(info.value) == f"{latin1}:2: not UTF-8 text (TOML files are UTF-8)"


def test_config_error_is_a_value_error_and_survives_pickling() -> None:
    error = ConfigError("c.toml", 3, "frontend.listen", "bad")
    assert isinstance(error, ValueError) and isinstance(error, SettingsError)
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.filename, copy.line, copy.key, copy.reason) == (
        "c.toml:3: frontend.listen: bad", "c.toml", 3, "frontend.listen", "bad",
    )  # fmt: skip
    assert str(ConfigError("c.toml", None, None, "gone")) == "c.toml: gone"


# --------------------------------------------------------------------------
# The line locator
# --------------------------------------------------------------------------


def test_locator_follows_headers_dotted_keys_and_inline_values() -> None:
    text = toml(
        '''\
        # comment [not.a.table]
        title = """
        fake = "key" \\"""
        [also.not]
        """
        frontend.listen = "x"     # dotted key at the top level

        [[route]]
        prefix = "/a"
        [route.params]
        A = 'b'

        [[route]]
        "quoted key" = { inner = [1,
          2, { deep = 3 }] }
        [upstream.app]
        servers = [
          'a', # comment, with ] and }
          { address = "b" },
        ]
        '''
    )
    lines = Locator(text).lines
    assert lines[("title",)] == 2
    assert ("fake",) not in lines and ("also", "not") not in lines
    assert lines[("frontend",)] == lines[("frontend", "listen")] == 6
    assert lines[("route",)] == lines[("route", 0)] == 8
    assert lines[("route", 0, "prefix")] == 9
    assert lines[("route", 0, "params")] == 10 and lines[("route", 0, "params", "A")] == 11
    assert lines[("route", 1)] == 13
    assert lines[("route", 1, "quoted key", "inner", 0)] == 14
    assert lines[("route", 1, "quoted key", "inner", 2, "deep")] == 15
    assert lines[("upstream", "app", "servers", 0)] == 18
    assert lines[("upstream", "app", "servers", 1, "address")] == 19
    assert Locator(text).line(("route", 1, "quoted key", "missing")) == 14
    assert Locator(text).line(("pool", "x")) is None


# --------------------------------------------------------------------------
# Value syntaxes
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(10, 10.0), (2.5, 2.5), (0, 0.0), ("0", 0.0), ("10", 10.0), ("150ms", 0.15), ("10s", 10.0), ("2m", 120.0),
     ("1h", 3600.0), ("1m30s", 90.0), ("1h 30m", 5400.0), ("1.5s", 1.5), ("1d", 86400.0), ("1w", 604800.0),
     (" 5s ", 5.0)],
)  # fmt: skip
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [-1, -0.5, True, None, [], "", "s", "10x", "30s1m", "1m1m", "1m30", "-5s", float("inf"), "1 0s"])
def test_parse_duration_refuses(value: object) -> None:
    with pytest.raises(ValueError, match=re.escape('must be a duration like "10s"')):
        parse_duration(value)


@given(st.integers(0, 99), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999))
def test_parse_duration_adds_up_its_parts(h: int, m: int, s: int, ms: int) -> None:
    assert parse_duration(f"{h}h{m}m{s}s{ms}ms") == pytest.approx(h * 3600 + m * 60 + s + ms / 1000)


@pytest.mark.parametrize(
    ("value", "size"),
    [(0, 0), ("0", 0), (512, 512), ("512", 512), ("32k", 32768), ("32K", 32768), ("1m", 1 << 20), ("1M", 1 << 20),
     ("1g", 1 << 30), ("2G", 2 << 30)],
)  # fmt: skip
def test_parse_size(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", [-1, 1.5, True, None, "", "k", "1kb", "1.5m", "1t", "-1k"])
def test_parse_size_refuses(value: object) -> None:
    with pytest.raises(ValueError, match=re.escape('must be a size like "32k"')):
        parse_size(value)


# --------------------------------------------------------------------------
# simple_config (the command line)
# --------------------------------------------------------------------------


def test_simple_config_builds_one_default_upstream() -> None:
    config = simple_config(["127.0.0.1:8081"], ["9001", "127.0.0.1:9002"], root="/srv", header_timeout="10s")
    assert config == ClusterConfig(
        frontend=FrontendConfig(listen=("127.0.0.1:8081",), root="/srv", header_timeout=10.0),
        upstreams={"default": UpstreamConfig(servers=(ServerSpec("127.0.0.1:9001"), ServerSpec("127.0.0.1:9002")))},
        routes=(RouteConfig(prefix="/", upstream="default", root="/srv"),),
        pools={},
        path=None,
    )
    assert simple_config([], ["9001"]).frontend.listen == ("127.0.0.1:8080",)


def test_simple_config_errors_name_the_option() -> None:
    with pytest.raises(ConfigError) as info:
        simple_config([], [])
    assert str(info.value) == "<command line>: upstream: at least one upstream address is required"
    with pytest.raises(ConfigError) as info:
        simple_config([], ["9001", "nope"])
    assert str(info.value) == (
        "<command line>: upstream[1]: bad address: 'nope': expected host:port, [ipv6]:port or a unix socket path"
    )
    with pytest.raises(ConfigError) as info:
        simple_config([], ["9001"], max_body_sise="1m")
    assert str(info.value).startswith("<command line>: max_body_sise: unknown key; expected one of: listen, ")
    assert str(info.value).endswith('did you mean "max_body_size"?')


def test_configs_are_frozen() -> None:
    config = parse_config(UPSTREAM + '[pool.a]\nlisten = "9001"\napp = "m:a"\n')
    for obj in (config.frontend, config.upstreams["app"], config.routes[0], config.pools["a"], config):
        name = dataclasses.fields(obj)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, name, None)
    assert isinstance(config.pools["a"], ClusterPoolConfig)


# --------------------------------------------------------------------------
# Answer buffering
# --------------------------------------------------------------------------


def test_answer_buffering_defaults_are_nginx_s_and_a_route_overrides_its_upstream(tmp_path: Path) -> None:
    from fcgi_cluster.frontend._upstream import answer_buffering

    (tmp_path / "spill").mkdir()
    text = UPSTREAM + textwrap.dedent("""\
        [[route]]
        prefix = "/export/"
        upstream = "app"
        buffer_size = "16k"
        temp_path = "spill"
        [[route]]
        prefix = "/events/"
        upstream = "app"
        buffering = false
        [[route]]
        prefix = "/"
        upstream = "app"
        """)
    config = parse_config(text, str(tmp_path / "cluster.toml"))
    upstream = config.upstreams["app"]
    assert (upstream.buffering, upstream.buffer_size, upstream.max_temp_file_size, upstream.temp_path) == (
        True, 128 * 1024, 1024 * 1024 * 1024, "")
    export, events, rest = config.routes
    # Paths are relative to the file's directory; unset keys stay None (the upstream's).
    assert (export.buffer_size, export.temp_path, export.buffering) == (16 * 1024, str(tmp_path / "spill"), None)
    assert events.buffering is False and rest.buffering is None

    shared, alone = answer_buffering(upstream)
    assert (shared.memory, shared.max_file, shared.temp_path, shared.wait) == (128 * 1024, 1 << 30, None, False)
    assert alone == shared
    # Unbuffered: nothing goes to a file; a connection of its own waits for the client.
    shared, alone = answer_buffering(dataclasses.replace(upstream, buffering=False))
    assert (shared.max_file, shared.wait, alone.max_file, alone.wait) == (0, False, 0, True)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('buffer_size = "1k"\n', "cluster.toml:3: upstream.app.buffer_size: must be at least 4096 bytes, got \"1k\""),
        ('max_temp_file_size = "lots"\n', "cluster.toml:3: upstream.app.max_temp_file_size: must be a size like"),
        ('buffering = "yes"\n', "cluster.toml:3: upstream.app.buffering: "),
        ('temp_path = "/no/such/dir"\n', "cluster.toml:3: upstream.app.temp_path: no such directory: /no/such/dir"),
    ],
)
def test_bad_buffering_keys_name_file_line_and_key(extra: str, message: str) -> None:
    assert error_of(UPSTREAM + extra).startswith(message)


def test_a_static_route_takes_no_buffering_key(tmp_path: Path) -> None:
    (tmp_path / "www").mkdir()
    text = UPSTREAM + f'[[route]]\nprefix = "/"\nstatic = "{tmp_path / "www"}"\nbuffer_size = "64k"\n'
    with pytest.raises(ConfigError) as info:
        parse_config(text, str(tmp_path / "cluster.toml"))
    assert str(info.value) == (
        f"{tmp_path / 'cluster.toml'}:6: route[0].buffer_size: only used by upstream routes; "
        "a static route serves its directory"
    )


def test_pool_session_table_gives_the_pool_its_session_settings() -> None:
    text = UPSTREAM + ('[pool.a]\nlisten = "9001"\napp = "m:a"\n'
                       'session = { save_handler = "redis", save_path = "tcp://127.0.0.1:6379", lock_wait = 2, '
                       'use_strict_mode = true }\n')
    assert parse_config(text).pools["a"].session == {
        "save_handler": "redis", "save_path": "tcp://127.0.0.1:6379", "lock_wait": "2", "use_strict_mode": "1"}


def test_pool_session_bad_values_name_the_key() -> None:
    head = UPSTREAM + '[pool.a]\nlisten = "9001"\napp = "m:a"\n'
    assert error_of(head + 'session = { xyzzy = "1" }\n').startswith("cluster.toml:")
    assert "pool.a.session.xyzzy: unknown session setting" in error_of(head + 'session = { xyzzy = "1" }\n')
    assert "pool.a.session.save_handler" in error_of(head + 'session = { save_handler = "nope" }\n')
    assert "pool.a.session: must be a table" in error_of(head + 'session = "redis"\n')
    assert "pool.a.session.save_handler: must be a string" in error_of(head + 'session = { save_handler = ["a"] }\n')
