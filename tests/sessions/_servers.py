"""Real session servers for the store tests: redis-server, a Redis Cluster, redis-sentinel, memcached.

Each runs on a free loopback port in a directory of its own, through
``tests._peers.run_process``, so it is stopped (by its pid, then its process
group) when its ``with`` block ends, on success or failure. Redis starts in a few
milliseconds, so the tests share one server per module and empty it between tests.

``RedisServer`` can also be killed and started again on the same port, for the
tests of a store that outlives its server.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence

import redis

from tests._peers import LOOPBACK, _require_binary, free_port, run_process

# A cluster converges in well under a second on loopback; the slack is for a loaded CI.
CLUSTER_READY_SECONDS = 20.0


class RedisServer:
    """A redis-server on loopback that a test can kill and start again on the same port.

    Args:
        directory: Its working directory (config, log, nodes.conf).
        password: ``requirepass`` (the default user's password), or None.
        acl_users: ``user`` directives, e.g. ``"alice on >secret ~* &* +@all"``.
        extra: More ``--option value`` arguments.
        port: The port; a free one by default.
    """

    def __init__(
        self,
        directory: pathlib.Path,
        *,
        password: str | None = None,
        acl_users: Sequence[str] = (),
        extra: Sequence[str] = (),
        port: int | None = None,
        name: str = "redis-server",
    ) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.host = LOOPBACK
        self.port = port or free_port()
        self.password = password
        self.name = name
        self._argv = [
            _require_binary("redis-server"),
            "--port", str(self.port),
            "--bind", LOOPBACK,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(directory),
            "--daemonize", "no",
            "--protected-mode", "no",
        ]
        if password is not None:
            self._argv += ["--requirepass", password, "--masterauth", password]
        for user in acl_users:
            self._argv += ["--user", *user.split()]
        self._argv += list(extra)
        self._stack: contextlib.ExitStack | None = None
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        """``127.0.0.1:port``."""
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        """Start it and wait until it accepts connections."""
        assert self._stack is None, "already running"
        stack = contextlib.ExitStack()
        self.process = stack.enter_context(
            run_process(self._argv, cwd=self.directory, ready_port=self.port, name=self.name,
                        log_path=self.directory / f"{self.name}-{self.port}.log")
        )
        self._stack = stack

    def kill(self) -> None:
        """SIGKILL it (a crash, not a shutdown) and wait until it is gone."""
        assert self.process is not None and self._stack is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self.stop()

    def stop(self) -> None:
        """Stop it (idempotent)."""
        if self._stack is not None:
            stack, self._stack = self._stack, None
            stack.close()

    def client(self, **kwargs) -> redis.Redis:
        """A plain redis-py client with the server's password, for assertions."""
        return redis.Redis(host=self.host, port=self.port, password=self.password, **kwargs)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


@contextlib.contextmanager
def redis_cluster(directory: pathlib.Path, *, nodes: int = 3, password: str | None = None) -> Iterator[list[RedisServer]]:
    """Three (``nodes``) masters in cluster mode, joined by ``redis-cli --cluster create``.

    Yields:
        The servers, once every node reports ``cluster_state:ok``.
    """
    with contextlib.ExitStack() as stack:
        servers = []
        for index in range(nodes):
            server = RedisServer(
                directory / f"node{index}",
                password=password,
                # The bus port is given, not derived (port + 10000 fails past 55535).
                extra=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                       "--cluster-node-timeout", "5000", "--cluster-port", str(free_port())],
                name=f"redis-node{index}",
            )
            stack.enter_context(server)
            servers.append(server)
        argv = [_require_binary("redis-cli")]
        if password is not None:
            argv += ["--no-auth-warning", "-a", password]
        argv += ["--cluster", "create", *(server.address for server in servers),
                 "--cluster-replicas", "0", "--cluster-yes"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{result.stdout}\n{result.stderr}")
        deadline = time.monotonic() + CLUSTER_READY_SECONDS
        for server in servers:
            with server.client() as client:
                while client.execute_command("CLUSTER", "INFO").decode().find("cluster_state:ok") < 0:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"cluster not ready on {server.address}")
                    time.sleep(0.05)
        yield servers


@contextlib.contextmanager
def redis_sentinel(directory: pathlib.Path, master: RedisServer, *, name: str = "mymaster") -> Iterator[tuple[str, int]]:
    """One redis-sentinel watching ``master`` under ``name``.

    Yields:
        ``(host, port)`` of the sentinel, once it knows the master.
    """
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = directory / "sentinel.conf"
    lines = [
        f"port {port}",
        f"bind {LOOPBACK}",
        f"dir {directory}",
        f"sentinel monitor {name} {master.host} {master.port} 1",
        f"sentinel down-after-milliseconds {name} 5000",
    ]
    if master.password is not None:
        quoted = master.password.replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'sentinel auth-pass {name} "{quoted}"')
    config.write_text("\n".join(lines) + "\n")
    with run_process([_require_binary("redis-sentinel"), str(config)], cwd=directory, ready_port=port,
                     name="redis-sentinel", log_path=directory / "sentinel.log"):
        with redis.Redis(host=LOOPBACK, port=port) as client:
            deadline = time.monotonic() + CLUSTER_READY_SECONDS
            while client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", name) is None:
                if time.monotonic() > deadline:
                    raise RuntimeError("sentinel does not know the master")
                time.sleep(0.05)
        yield LOOPBACK, port


@contextlib.contextmanager
def memcached(directory: pathlib.Path, *, port: int | None = None) -> Iterator[tuple[str, int]]:
    """A memcached on loopback (TCP only, 16 MB), on ``port`` or a free one.

    Yields:
        ``(host, port)``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    argv = [_require_binary("memcached"), "-l", LOOPBACK, "-p", str(port), "-U", "0", "-m", "16", "-t", "2"]
    if os.geteuid() == 0:
        # memcached refuses to run as root unless told which user to be.
        argv += ["-u", "root"]
    with run_process(argv, cwd=directory, ready_port=port, name="memcached",
                     log_path=directory / f"memcached-{port}.log") as process:
        try:
            yield LOOPBACK, port
        finally:
            # memcached takes ~0.7 s to exit on SIGTERM and keeps nothing worth a
            # clean shutdown: kill it (run_process then reaps it).
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait(10)
