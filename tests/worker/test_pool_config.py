"""The php-fpm style pool file: syntax, values, php-fpm's checks, and errors naming file:line: key."""

from __future__ import annotations

import pathlib
import pickle

import pytest

from fcgi_cluster.protocol import DEFAULT_MAX_REQUESTS
from fcgi_cluster.worker._pool_config import (
    GlobalConfig,
    PoolConfig,
    PoolConfigError,
    load_pool_config,
    parse_pool_config,
)
from fcgi_cluster.worker._pool_keys import UNLIMITED_BACKLOG

REPO = pathlib.Path(__file__).resolve().parents[2]
POOL = "[www]\nlisten = 127.0.0.1:9001\napp = workers.hello:app\n"


def parse(text: str, **kw):
    return parse_pool_config(text, "/etc/pools/pool.conf", environ=kw.pop("environ", {"HOME": "/home/u"}), **kw)


def one(text: str, **kw) -> PoolConfig:
    (pool,) = parse(POOL + text, **kw).pools
    return pool


def error_of(text: str, **kw) -> str:
    with pytest.raises(PoolConfigError) as info:
        parse(text, **kw)
    return str(info.value)


def test_defaults_of_a_minimal_pool() -> None:
    result = parse(POOL)
    assert result.global_ == GlobalConfig()
    (pool,) = result.pools
    assert (pool.name, pool.listen, pool.app, pool.pm) == ("www", "127.0.0.1:9001", "workers.hello:app", "dynamic")
    assert pool.fcgi_max_reqs == DEFAULT_MAX_REQUESTS == 256
    assert pool.listen_allowed_clients is None
    assert pool.lines == {"listen": 2, "app": 3}
    assert pool.path == "/etc/pools/pool.conf"


def test_the_issue_example_parses() -> None:
    text = """
[www]
listen = 127.0.0.1:9001
app = workers.echo:app
pm = dynamic
pm.max_children = 8
pm.start_servers = 2
pm.min_spare_servers = 1
pm.max_spare_servers = 3
pm.max_requests = 10000
listen.allowed_clients = 127.0.0.1
pm.status_path = /status
ping.path = /ping
request_terminate_timeout = 30s
request_slowlog_timeout = 5s
slowlog = /tmp/www.slow.log
env[APP_ENV] = production
"""
    (pool,) = parse(text).pools
    assert pool.pm_max_children == 8 and pool.pm_max_requests == 10000
    assert pool.listen_allowed_clients == ("127.0.0.1",)
    assert (pool.pm_status_path, pool.ping_path, pool.ping_response) == ("/status", "/ping", "pong")
    assert (pool.request_terminate_timeout, pool.request_slowlog_timeout) == (30.0, 5.0)
    assert pool.slowlog == "/tmp/www.slow.log"
    assert pool.env == {"APP_ENV": "production"}
    assert pool.lines["env[APP_ENV]"] == 17


def test_comments_quotes_and_spacing() -> None:
    pool = one(
        "; a comment\n"
        "# another\n"
        "   ping.path=/ping   ; trailing comment\n"
        'ping.response = "a ; b \\" c"\n'
        "env[X] = 'lit ${NOT_EXPANDED} ; kept'\n"
        'env[Y] = ""\n'
    )
    assert pool.ping_path == "/ping"
    assert pool.ping_response == 'a ; b " c'
    assert pool.env == {"X": "lit ${NOT_EXPANDED} ; kept", "Y": ""}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30", 30.0), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("1d", 86400.0), ("0", 0.0), ("0.5s", 0.5), ("250ms", 0.25)],
)
def test_time_units(text: str, seconds: float) -> None:
    assert one(f"request_terminate_timeout = {text}\n").request_terminate_timeout == seconds


@pytest.mark.parametrize(("text", "value"), [(t, True) for t in ("yes", "on", "true", "1", "YES")] + [(t, False) for t in ("no", "off", "false", "0")])
def test_booleans(text: str, value: bool) -> None:
    assert one(f"catch_workers_output = {text}\n").catch_workers_output is value


@pytest.mark.parametrize(
    ("text", "listen"),
    [
        ("127.0.0.1:9000", "127.0.0.1:9000"),
        ("[::1]:9000", "[::1]:9000"),
        ("9000", "0.0.0.0:9000"),  # php-fpm: a bare port is every address
        ("/run/www.sock", "/run/www.sock"),
        ("unix:/run/www.sock", "/run/www.sock"),
        ("./www.sock", "/etc/pools/www.sock"),  # relative to the file
    ],
)
def test_listen_forms(text: str, listen: str) -> None:
    (pool,) = parse(f"[www]\nlisten = {text}\napp = a:b\n").pools
    assert pool.listen == listen


def test_listen_mode_backlog_and_clients() -> None:
    pool = one("listen.mode = 0666\nlisten.backlog = -1\nlisten.allowed_clients = 127.0.0.1, ::1,10.0.0.0/8\n")
    assert pool.listen_mode == 0o666
    assert pool.listen_backlog == UNLIMITED_BACKLOG
    assert pool.listen_allowed_clients == ("127.0.0.1", "::1", "10.0.0.0/8")
    assert one("listen.allowed_clients = any\n").listen_allowed_clients is None


def test_pool_name_and_environment_substitution() -> None:
    pool = one(
        "slowlog = /var/log/$pool.slow\n"
        "access.log = log/$pool.access\n"
        "env[HOME] = $HOME\n"
        "env[A] = ${HOME}/x\n"
        'env[B] = "${UNSET:-fallback}"\n',
        environ={"HOME": "/home/u"},
    )
    assert pool.slowlog == "/var/log/www.slow"
    assert pool.access_log == "/etc/pools/log/www.access"
    assert pool.env == {"HOME": "/home/u", "A": "/home/u/x", "B": "fallback"}


def test_session_keys_and_their_php_aliases() -> None:
    pool = one(
        "session.save_handler = redis\n"
        'php_value[session.save_path] = "tcp://127.0.0.1:6379?weight=1"\n'
        "php_admin_value[session.gc_maxlifetime] = 1440\n"
        "php_flag[session.use_strict_mode] = on\n"
    )
    assert pool.session == {
        "session.save_handler": "redis",
        "session.save_path": "tcp://127.0.0.1:6379?weight=1",
        "session.gc_maxlifetime": "1440",
        "session.use_strict_mode": "on",
    }
    assert pool.lines["session.save_path"] == 5


def test_start_servers_default_is_php_fpms() -> None:
    pool = one("pm.max_children = 10\npm.min_spare_servers = 2\npm.max_spare_servers = 7\n")
    assert pool.pm_start_servers == 4  # min + (max - min) / 2


def test_static_pool_ignores_spare_bounds() -> None:
    pool = one("pm = static\npm.max_children = 2\npm.min_spare_servers = 5\npm.max_spare_servers = 1\n")
    assert (pool.pm, pool.pm_max_children) == ("static", 2)


def test_harmless_php_fpm_keys_are_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    result = parse("[global]\ndaemonize = yes\nsystemd_interval = 10\n" + POOL + "access.format = %R\ndecorate_workers_output = yes\n")
    assert result.warnings == (
        "/etc/pools/pool.conf:2: daemonize: ignored: the master always runs in the foreground (use systemd or a supervisor)",
        "/etc/pools/pool.conf:3: systemd_interval: ignored: no systemd watchdog notifications",
        "/etc/pools/pool.conf:7: access.format: ignored: the access log format is fixed "
        "(php-fpm's default plus the duration in ms)",
    )
    assert "daemonize: ignored" in caplog.text


def test_global_section() -> None:
    result = parse(
        "[global]\npid = run/fpm.pid\nerror_log = /var/log/e.log\nlog_level = debug\n"
        "emergency_restart_threshold = 10\nemergency_restart_interval = 1m\nprocess_control_timeout = 5s\n" + POOL
    )
    assert result.global_ == GlobalConfig(
        pid="/etc/pools/run/fpm.pid", error_log="/var/log/e.log", log_level="debug",
        emergency_restart_threshold=10, emergency_restart_interval=60.0, process_control_timeout=5.0,
    )


def test_includes_are_globs_relative_to_the_file(tmp_path: pathlib.Path) -> None:
    (tmp_path / "pool.d").mkdir()
    (tmp_path / "main.conf").write_text("[global]\nlog_level = error\ninclude = pool.d/*.conf\n")
    (tmp_path / "pool.d" / "b.conf").write_text("[b]\nlisten = 127.0.0.1:9002\napp = a:b\n")
    (tmp_path / "pool.d" / "a.conf").write_text("[a]\nlisten = ./a.sock\napp = a:b\n")
    (tmp_path / "pool.d" / "a.conf.disabled").write_text("[c]\n")
    result = load_pool_config(str(tmp_path / "main.conf"), environ={})
    assert [p.name for p in result.pools] == ["a", "b"]
    assert result.pools[0].listen == str(tmp_path / "pool.d" / "a.sock")
    assert result.pools[1].path == str(tmp_path / "pool.d" / "b.conf")
    assert result.global_.log_level == "error"


def test_error_in_an_included_file_names_that_file(tmp_path: pathlib.Path) -> None:
    (tmp_path / "main.conf").write_text("include = pools.conf\n")
    (tmp_path / "pools.conf").write_text("[a]\nlisten = 9000\napp = a:b\npm.max_children = 0\n")
    with pytest.raises(PoolConfigError) as info:
        load_pool_config(str(tmp_path / "main.conf"), environ={})
    assert str(info.value) == f"{tmp_path}/pools.conf:4: pm.max_children: must be 1 or more, got 0"


def test_include_loop_and_missing_include(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a.conf").write_text("include = b.conf\n")
    (tmp_path / "b.conf").write_text("\ninclude = a.conf\n")
    with pytest.raises(PoolConfigError, match=r"b\.conf:2: include: .*a\.conf includes itself"):
        load_pool_config(str(tmp_path / "a.conf"), environ={})
    (tmp_path / "c.conf").write_text("include = nowhere.conf\n")
    with pytest.raises(PoolConfigError, match=r"c\.conf:1: include: cannot read .*nowhere\.conf"):
        load_pool_config(str(tmp_path / "c.conf"), environ={})


def test_unreadable_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(PoolConfigError) as info:
        load_pool_config(str(tmp_path / "missing.conf"))
    assert str(info.value) == f"{tmp_path}/missing.conf: cannot read the file: No such file or directory"
    assert info.value.line == 0


def test_error_pickles_whole() -> None:
    error = PoolConfigError("a.conf", 3, "pm", "bad")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, copy.line, copy.key, copy.reason, str(copy)) == ("a.conf", 3, "pm", "bad", "a.conf:3: pm: bad")


P = "/etc/pools/pool.conf"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (POOL + "pm.max_childrn = 3\n", f'{P}:4: pm.max_childrn: unknown key; did you mean "pm.max_children"?'),
        (POOL + "frobnicate = 1\n", f"{P}:4: frobnicate: unknown key"),
        (POOL + "pm.max_children = 0\n", f"{P}:4: pm.max_children: must be 1 or more, got 0"),
        (POOL + "pm.max_children = many\n", f"{P}:4: pm.max_children: must be an integer, got 'many'"),
        (POOL + "pm = sometimes\n", f"{P}:4: pm: must be one of static, dynamic, ondemand, got 'sometimes'"),
        (POOL + "request_terminate_timeout = 5x\n",
         f"{P}:4: request_terminate_timeout: must be a time like 30s, 5m, 1h, 1d (a bare number is seconds), got '5x'"),
        (POOL + "clear_env = maybe\n", f"{P}:4: clear_env: must be yes/no, on/off, true/false or 1/0, got 'maybe'"),
        (POOL + "listen.mode = 0999\n", f"{P}:4: listen.mode: must be octal permission bits like 0660, got '0999'"),
        (POOL + "listen.allowed_clients = 127.0.0.1, example.com\n",
         f"{P}:4: listen.allowed_clients: 'example.com' is not an IPv4/IPv6 address (or network like 10.0.0.0/8)"),
        (POOL + "pm.status_path = status\n", f"{P}:4: pm.status_path: must start with '/', got 'status'"),
        (POOL + "pm.start_servers = 5\n",
         f"{P}:4: pm.start_servers: (5) must be from pm.min_spare_servers (1) to pm.max_spare_servers (3)"),
        (POOL + "pm.min_spare_servers = 4\npm.max_spare_servers = 2\npm.start_servers = 3\n",
         f"{P}:4: pm.min_spare_servers: (4) must not be greater than pm.max_spare_servers (2)"),
        (POOL + "pm.max_children = 2\n",
         f"{P}:4: pm.max_children: (2) must not be less than pm.max_spare_servers (3, its default)"),
        (POOL + "pm.max_children = 2\npm.max_spare_servers = 3\n",
         f"{P}:5: pm.max_spare_servers: (3) must not be greater than pm.max_children (2)"),
        (POOL + "request_slowlog_timeout = 5s\n",
         f"{P}:4: request_slowlog_timeout: slowlog must be set too (the file the slow requests' stacks go to)"),
        (POOL + "pm = ondemand\npm.process_idle_timeout = 0\n",
         f"{P}:5: pm.process_idle_timeout: must be more than 0 with pm = ondemand"),
        ("[www]\napp = a:b\n", f"{P}:1: listen: missing in [www] (every pool needs listen)"),
        ("[global]\n\n[www]\nlisten = 9000\n", f"{P}:3: app: missing in [www] (every pool needs app)"),
        (POOL.replace("workers.hello:app", "workers/hello.py"),
         f"{P}:3: app: must be module:attribute, like workers.hello:app, got 'workers/hello.py'"),
        (POOL.replace("127.0.0.1:9001", "localhost"),
         f"{P}:2: listen: 'localhost': expected host:port, [ipv6]:port or a unix socket path"),
        (POOL + POOL, f"{P}:4: [www]: duplicate pool name (first defined at {P}:1)"),
        (POOL + "[two]\nlisten = 127.0.0.1:9001\napp = a:b\n",
         f"{P}:5: listen: 127.0.0.1:9001 is already the listen address of pool www ({P}:2)"),
        (POOL + "[two]\nlisten = 9001\napp = a:b\n",
         f"{P}:5: listen: 0.0.0.0:9001 is already the listen address of pool www ({P}:2)"),
        ("pm = static\n" + POOL, f"{P}:1: pm: set outside any section; put it under [global] or a [pool] section"),
        (POOL + "pm = static\npm = dynamic\n", f"{P}:5: pm: set twice in [www] (first at line 4)"),
        (POOL + "session.name = A\nphp_value[session.name] = B\n", f"{P}:5: php_value[session.name]: session.name set twice in [www] (first at line 4)"),
        (POOL + "user = www-data\n",
         f"{P}:4: user: not supported: the master does not switch users; start it as the user the pool should run as"),
        (POOL + "listen.owner = www-data\n",
         f"{P}:4: listen.owner: not supported: create the socket's directory with the owner you need, and use listen.mode"),
        (POOL + "rlimit_files = 1024\n",
         f"{P}:4: rlimit_files: not supported: set the limit where the master starts (ulimit -n, systemd LimitNOFILE=)"),
        (POOL + "security.limit_extensions = .php\n",
         f"{P}:4: security.limit_extensions: not supported: a pool serves one Python app, not script files"),
        (POOL + "php_value[memory_limit] = 128M\n",
         f"{P}:4: php_value[memory_limit]: not supported: PHP ini settings mean nothing to a Python app "
         "(only session.* settings are read, for fcgi_cluster.sessions)"),
        (POOL + "env[1X] = y\n", f"{P}:4: env[1X]: '1X' is not an environment variable name"),
        (POOL + "env[X] = ${NOPE}\n", f"{P}:4: env[X]: environment variable NOPE is not set (write ${{NOPE:-default}} for a default)"),
        (POOL + "env[X] = $NOPE\n", f"{P}:4: env[X]: environment variable NOPE is not set"),
        (POOL + "error_log = x\n", f"{P}:4: error_log: belongs in [global], not a pool"),
        ("[global]\nlisten = 9000\n" + POOL, f"{P}:2: listen: belongs in a pool section, not [global]"),
        ("[global]\nerror_log = syslog\n" + POOL, f"{P}:2: error_log: syslog is not supported; give a file path or - (standard error)"),
        (POOL + "ping.response = \"unterminated\n", f'{P}:4: ping.response: unterminated " quote'),
        (POOL + "ping.response = 'a' b\n", f"{P}:4: ping.response: unexpected text after the quoted value: 'b'"),
        (POOL + "[bad name]\n", f"{P}:4: [bad name]: a pool name is letters, digits, '_', '-' and '.'"),
        (POOL + "[www\n", f"{P}:4: expected a section header like [www], got '[www'"),
        (POOL + "just words\n", f"{P}:4: expected 'key = value' or '[section]', got 'just words'"),
        ("[global]\nlog_level = debug\n", f"{P}: no pool defined: add at least one [name] section with listen and app"),
    ],
)
def test_errors_name_file_line_and_key(text: str, message: str) -> None:
    assert error_of(text) == message


@pytest.mark.parametrize("name", ["www.conf", "pools.conf"])
def test_sample_configs_parse(name: str) -> None:
    result = load_pool_config(str(REPO / "workers" / name), environ={})
    assert result.warnings == ()
    www = result.pools[0]
    assert (www.name, www.listen, www.app, www.pm) == ("www", "127.0.0.1:9001", "workers.hello:app", "dynamic")
    assert (www.pm_status_path, www.ping_path) == ("/status", "/ping")
    if name == "pools.conf":
        assert [p.name for p in result.pools] == ["www", "echo"]
        assert result.pools[1].listen == "/tmp/fcgi-cluster-echo.sock"
        assert result.global_.emergency_restart_threshold == 10


def test_pool_error_names_the_line_of_a_key() -> None:
    pool = one("session.save_path = tcp://x\n")
    assert str(pool.error("app", "cannot import workers.hello")) == f"{P}:3: app: cannot import workers.hello"
    assert str(pool.error("session.save_path", "bad")) == f"{P}:4: session.save_path: bad"
    assert pool.error("pm", "x").line == 0  # a key left to its default


def test_worker_config_of_a_pool() -> None:
    from fcgi_cluster.worker import WorkerConfig

    text = (
        "[global]\nprocess_control_timeout = 7s\n[www]\nlisten = 127.0.0.1:9001\napp = a:b\n"
        "fcgi.max_reqs = 8\nfcgi.max_conns = 9\nthreads = 3\nlisten.backlog = 100\n"
        "listen.allowed_clients = 127.0.0.1\nping.path = /ping\nping.response = ok\npm.status_path = /status\n"
        "request_terminate_timeout = 5s\nrequest_slowlog_timeout = 2s\nslowlog = /tmp/s\n"
        "request_slowlog_trace_depth = 4\naccess.log = /tmp/a\n"
    )
    result = parse(text)
    config = result.pools[0].worker_config(result.global_, threads=5)
    assert config == WorkerConfig(
        max_requests=8, max_conns=9, threads=5, backlog=100, graceful_timeout=7.0, allowed_clients=("127.0.0.1",),
        ping_path="/ping", ping_response="ok", status_path="/status", request_terminate_timeout=5.0,
        request_slowlog_timeout=2.0, slowlog="/tmp/s", request_slowlog_trace_depth=4, access_log="/tmp/a",
        pool_name="www", hooks=config.hooks, processes=5,
    )
