"""Processes for the end-to-end session tests: redis-server with a password, our
workers and front-end with session settings, php-fpm with phpredis sessions.

Every process is started by the caller's ``with`` block (or ``ExitStack``) and
stopped by its id when the block ends, on success or failure (``tests._peers``).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import pathlib
import shutil
import subprocess
from collections.abc import Iterator

from tests._peers import (
    LOOPBACK,
    REPO_ROOT,
    PeerStartError,
    free_port,
    php_fpm,
    python_executable,
    run_process,
    stop_process,
    wait_for_port,
)

REDIS_PASSWORD = "s3cret-sessions"
#: The directory the front-end maps /php/... into: tests/e2e/php/session.php is /php/session.php.
PHP_ROOT = REPO_ROOT / "tests" / "e2e"
#: php-fpm's pm.max_children, and the front-end's max_conns to it.
PHP_CHILDREN = 4


class RedisProcess:
    """A ``redis-server`` on a loopback port with ``requirepass``, no persistence; restartable.

    ``kill()`` (SIGKILL, as a crash) and ``start()`` again on the same port let a test
    take the store away under load and bring it back (empty).
    """

    def __init__(self, directory: pathlib.Path, password: str = REDIS_PASSWORD) -> None:
        binary = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin:/sbin")
        if binary is None:
            raise PeerStartError("redis-server is not installed: run `make deps`")
        self.port = free_port()
        self.password = password
        self.directory = directory
        self.log_path = directory / f"redis-{self.port}.log"
        self.argv = [
            binary, "--port", str(self.port), "--bind", LOOPBACK, "--requirepass", password,
            "--save", "", "--appendonly", "no", "--dir", str(directory), "--daemonize", "no",
        ]
        self.process: subprocess.Popen | None = None

    @property
    def save_path(self) -> str:
        """phpredis' save_path syntax, as both PHP and our workers take it."""
        return f"tcp://{LOOPBACK}:{self.port}?auth={self.password}"

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_port(LOOPBACK, self.port, process=self.process)
        except BaseException:
            self.stop()
            raise

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def __enter__(self) -> RedisProcess:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def worker_argv(app: str, port: int, *sessions: str) -> list[str]:
    argv = [python_executable(), "-m", "fcgi_cluster.cli", "worker", app, "--listen", f"{LOOPBACK}:{port}",
            "--log-level", "warning"]
    for setting in sessions:
        argv += ["--session", setting]
    return argv


@contextlib.contextmanager
def session_worker(directory: pathlib.Path, *sessions: str, app: str = "workers.counter:app") -> Iterator[tuple[int, subprocess.Popen]]:
    """``fcgi-cluster worker APP --session ...`` on a free port; yields (port, process)."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    with run_process(worker_argv(app, port, *sessions), cwd=REPO_ROOT, env=env, ready_port=port,
                     name="fcgi-worker", log_path=directory / f"worker-{port}.log") as process:
        yield port, process


@contextlib.contextmanager
def frontend(directory: pathlib.Path, app_ports: list[int], php_port: int | None = None) -> Iterator[int]:
    """Our front-end: ``/php/`` to php-fpm (when given), everything else round robin to the workers."""
    port = free_port()
    servers = ", ".join(f'"{LOOPBACK}:{p}"' for p in app_ports)
    # One process: max_conns below holds per front-end process.
    config = f'[frontend]\nlisten = "{LOOPBACK}:{port}"\nprocesses = 1\naccess_log = false\n[upstream.app]\nservers = [{servers}]\n'
    if php_port is not None:
        config += (
            # max_conns = php-fpm's children: each child holds a kept-alive connection
            # for itself, so a connection past them would wait in its backlog forever.
            f'[upstream.php]\nservers = [{{ address = "{LOOPBACK}:{php_port}", max_conns = {PHP_CHILDREN} }}]\n'
            f'[[route]]\nprefix = "/php/"\nupstream = "php"\nroot = "{PHP_ROOT}"\n'
        )
    config += '[[route]]\nprefix = "/"\nupstream = "app"\n'
    path = directory / f"cluster-{port}.toml"
    path.write_text(config)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    with run_process([python_executable(), "-m", "fcgi_cluster.cli", "frontend", "-c", str(path)],
                     cwd=REPO_ROOT, env=env, ready_port=port, name="fcgi-frontend",
                     log_path=directory / f"frontend-{port}.log"):
        yield port


@contextlib.contextmanager
def php_fpm_with_redis_sessions(directory: pathlib.Path, redis: RedisProcess, *, locking: bool = True,
                                database: int = 0, name: str = "php-fpm") -> Iterator[int]:
    """php-fpm whose sessions live in ``redis`` through phpredis, in PHP's ``php`` format.

    The settings are ``php_admin_value`` lines of the pool, so pages cannot change them.
    Ids: 32 characters of 5 bits, the same as our workers make, and strict mode.

    Args:
        locking: phpredis' ``redis.session.locking_enabled`` (its default is off).
        database: the Redis database of the sessions.
        name: the php-fpm directory under ``directory`` (its config, pid file, logs).
    """
    save_path = redis.save_path + (f"&database={database}" if database else "")
    settings = {
        "session.save_handler": "redis",
        "session.save_path": save_path,
        "session.serialize_handler": "php",
        "session.name": "PHPSESSID",
        "session.use_strict_mode": "1",
        "session.sid_length": "32",
        "session.sid_bits_per_character": "5",
        "session.cookie_path": "/",
        "session.cookie_httponly": "1",
        "session.gc_maxlifetime": "1440",
    }
    if locking:
        # phpredis locks the same key as our workers (<key>_LOCK): with it on, PHP
        # and Python requests of one session take turns. Waits: 5 ms x 2000.
        settings.update({
            "redis.session.locking_enabled": "1",
            "redis.session.lock_wait_time": "5000",
            "redis.session.lock_retries": "2000",
        })
    # Quoted: php-fpm reads the pool file as INI, where "=" and "?" in a value need quotes.
    extra = {f"php_admin_value[{key}]": f'"{value}"' for key, value in settings.items()}
    with php_fpm(directory=directory / name, max_children=PHP_CHILDREN, extra_pool=extra) as fpm:
        yield fpm.port


def php_has_redis() -> bool:
    """Whether PHP has the phpredis extension (Debian's php-redis)."""
    try:
        out = subprocess.run(["php", "-m"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "redis" in out.split()


class CookieClient:
    """One browser: a keep-alive connection to the front-end and a cookie jar of one cookie name."""

    def __init__(self, port: int, name: str = "PHPSESSID", timeout: float = 15) -> None:
        self.port = port
        self.name = name
        self.timeout = timeout
        self.sid: str | None = None
        self.conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)

    def get(self, target: str, *, cookie: str | None = None) -> tuple[int, dict[str, str], bytes]:
        headers = {}
        if cookie is not None:
            headers["Cookie"] = cookie
        elif self.sid is not None:
            headers["Cookie"] = f"{self.name}={self.sid}"
        for attempt in (1, 2):
            try:
                self.conn.request("GET", target, headers=headers)
                response = self.conn.getresponse()
                body = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # A kept-alive connection closed by the front-end between requests.
                self.conn.close()
                self.conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=self.timeout)
                if attempt == 2:
                    raise
        set_cookies = response.headers.get_all("Set-Cookie") or []
        for value in set_cookies:
            name, _, rest = value.partition("=")
            if name == self.name:
                sid = rest.split(";")[0]
                self.sid = None if "Max-Age=0" in rest else sid
        result_headers = {k.lower(): v for k, v in response.getheaders()}
        result_headers["set-cookie"] = "\n".join(set_cookies)
        return response.status, result_headers, body

    def close(self) -> None:
        self.conn.close()
