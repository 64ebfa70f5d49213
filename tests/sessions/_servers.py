"""Real session servers for the store tests: redis-server, a Redis Cluster, redis-sentinel, memcached.

Also replicas and a group of sentinels, for the failover tests (``tests/e2e/test_redis_failover.py``).

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
def redis_cluster(
    directory: pathlib.Path,
    *,
    nodes: int = 3,
    password: str | None = None,
    replicas: int = 0,
    node_timeout_ms: int = 5000,
) -> Iterator[list[RedisServer]]:
    """Three (``nodes``) masters in cluster mode, joined by ``redis-cli --cluster create``.

    Args:
        replicas: ``--cluster-replicas``: ``nodes`` counts masters and replicas
            together (6 nodes with 1 replica = 3 masters + 3 replicas).
        node_timeout_ms: ``cluster-node-timeout``: how long a master may be
            unreachable before its replica takes over.

    Yields:
        The servers, once every node reports ``cluster_state:ok`` (and, with
        replicas, every replica's link to its master is up).
    """
    with contextlib.ExitStack() as stack:
        servers = []
        for index in range(nodes):
            server = RedisServer(
                directory / f"node{index}",
                password=password,
                # The bus port is given, not derived (port + 10000 fails past 55535).
                extra=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                       "--cluster-node-timeout", str(node_timeout_ms), "--cluster-port", str(free_port())],
                name=f"redis-node{index}",
            )
            stack.enter_context(server)
            servers.append(server)
        argv = [_require_binary("redis-cli")]
        if password is not None:
            argv += ["--no-auth-warning", "-a", password]
        argv += ["--cluster", "create", *(server.address for server in servers),
                 "--cluster-replicas", str(replicas), "--cluster-yes"]
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
        for server in servers if replicas else ():
            _wait_replication(server, deadline)
        yield servers


def _wait_replication(server: RedisServer, deadline: float) -> None:
    """Until ``server``, if it is a replica, has its master link up and the first sync done."""
    with server.client() as client:
        while True:
            info = client.info("replication")
            if info.get("role") != "slave" or (
                    info.get("master_link_status") == "up" and not info.get("master_sync_in_progress")):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica {server.address} not in sync: {info}")
            time.sleep(0.05)


def redis_replica(directory: pathlib.Path, master: RedisServer, *, name: str = "redis-replica") -> RedisServer:
    """A (not yet started) redis-server replicating ``master``, with its password.

    ``wait_in_sync(replica)`` after ``start()`` waits for the first sync.
    """
    return RedisServer(directory, password=master.password, name=name,
                       extra=["--replicaof", master.host, str(master.port)])


def wait_in_sync(replica: RedisServer) -> None:
    """Until ``replica`` has its master link up and the first sync done."""
    _wait_replication(replica, time.monotonic() + CLUSTER_READY_SECONDS)


@contextlib.contextmanager
def redis_sentinels(
    directory: pathlib.Path,
    master: RedisServer,
    *,
    count: int = 3,
    quorum: int = 2,
    down_after_ms: int = 1000,
    failover_timeout_ms: int = 10000,
    replicas: int = 1,
    name: str = "mymaster",
) -> Iterator[list[tuple[str, int]]]:
    """``count`` redis-sentinels watching ``master``, ``quorum`` of them needed to call it down.

    Yields:
        ``(host, port)`` of every sentinel, once each one knows the master, the
        other sentinels and ``replicas`` replicas (so a failover can happen at once).
    """
    ports = [free_port() for _ in range(count)]
    with contextlib.ExitStack() as stack:
        for index, port in enumerate(ports):
            home = directory / f"sentinel{index}"
            home.mkdir(parents=True, exist_ok=True)
            lines = [
                f"port {port}",
                f"bind {LOOPBACK}",
                f"dir {home}",
                f"sentinel monitor {name} {master.host} {master.port} {quorum}",
                f"sentinel down-after-milliseconds {name} {down_after_ms}",
                f"sentinel failover-timeout {name} {failover_timeout_ms}",
                f"sentinel parallel-syncs {name} 1",
            ]
            if master.password is not None:
                quoted = master.password.replace("\\", "\\\\").replace('"', '\\"')
                lines.append(f'sentinel auth-pass {name} "{quoted}"')
            # A sentinel rewrites its config file (what it learns): one file each.
            config = home / "sentinel.conf"
            config.write_text("\n".join(lines) + "\n")
            stack.enter_context(run_process([_require_binary("redis-sentinel"), str(config)], cwd=home,
                                            ready_port=port, name=f"redis-sentinel{index}",
                                            log_path=home / "sentinel.log"))
        deadline = time.monotonic() + CLUSTER_READY_SECONDS
        for port in ports:
            with redis.Redis(host=LOOPBACK, port=port, decode_responses=True) as client:
                while True:
                    known = client.execute_command("SENTINEL", "MASTER", name)
                    fields = dict(zip(known[::2], known[1::2])) if isinstance(known, list) else known
                    if (int(fields.get("num-other-sentinels", 0)) >= count - 1
                            and int(fields.get("num-slaves", 0)) >= replicas):
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"sentinel {port} does not see the others: {fields}")
                    time.sleep(0.1)
        yield [(LOOPBACK, port) for port in ports]


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
