"""The seed's topology on separate hosts: network namespaces on one bridge.

Every host runs ``fcgi-cluster up -c cluster.toml --only ...`` from one cluster
file, as README's recipe: host ``lb`` the front-end, hosts ``php1`` and ``php2``
their pool (``pool.php1``, ``pool.php2``: the counter with Redis sessions), host
``redis`` a redis-server with a password (and one in
protected mode, for its DENIED text). The test itself sits on the bridge
(10.231.N.1) as the users' browser. Faults: a worker host's link cut and mended,
every process of a worker host killed with SIGKILL, the Redis host restarted.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import os
import pathlib
import signal
import subprocess
import threading
import time

import pytest
import redis as redis_client
import trio

from fcgi_cluster.sessions._open import open_store
from fcgi_cluster.sessions._store import StoreError
from tests._peers import REPO_ROOT, python_executable, run_process, stop_process, wait_for_port
from tests.e2e import _netns

pytestmark = pytest.mark.e2e

PASSWORD = "hosts-s3cret"
REDIS_PORT = 6379
DENIED_PORT = 6380
WORKER_PORT = 9000
HTTP_PORT = 8080
#: The front-end's read_timeout: a request stuck on a cut host would wait this long.
READ_TIMEOUT = 30
WORKER_HOSTS = ("php1", "php2")


@pytest.fixture(scope="module")
def hosts():
    reason = _netns.unavailable_reason()
    if reason is not None:
        print(f"multi-host tests skipped: {reason}")
        pytest.skip(reason)
    with _netns.Hosts(["lb", "php1", "php2", "redis"]) as made:
        yield made


class Redis:
    """redis-server on host ``redis`` with a password and an fsync'd append-only file."""

    def __init__(self, hosts: _netns.Hosts, directory) -> None:
        self.hosts = hosts
        self.address = hosts.address("redis")
        self.argv = hosts.exec_argv("redis", [
            "redis-server", "--bind", self.address, "--port", str(REDIS_PORT), "--requirepass", PASSWORD,
            "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--dir", str(directory),
        ])
        self.log_path = directory / "redis.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port(self.address, REDIS_PORT, process=self.process)
        # Accepting is not serving: it answers LOADING while it reads its append-only file.
        deadline = time.monotonic() + 30
        with redis_client.Redis(host=self.address, port=REDIS_PORT, password=PASSWORD, socket_timeout=5) as client:
            while True:
                try:
                    client.ping()
                    return
                except redis_client.exceptions.BusyLoadingError:
                    assert time.monotonic() < deadline, "redis still loading after 30 s"
                    time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


def cluster_file(hosts: _netns.Hosts, directory) -> pathlib.Path:
    """The one cluster file of every host: the front-end on ``lb``, pool ``php1`` and ``php2`` on theirs."""
    lb = hosts.address("lb")
    save_path = f"tcp://{hosts.address('redis')}:{REDIS_PORT}?auth={PASSWORD}"
    servers = ", ".join(f'"{hosts.address(n)}:{WORKER_PORT}"' for n in WORKER_HOSTS)
    text = (
        f'[frontend]\nlisten = "{lb}:{HTTP_PORT}"\naccess_log = false\n'
        f'[upstream.app]\nservers = [{servers}]\nread_timeout = "{READ_TIMEOUT}s"\nconnect_timeout = "2s"\n'
        '[[route]]\nprefix = "/"\nupstream = "app"\n'
    )
    for name in WORKER_HOSTS:
        text += (
            f'[pool.{name}]\nlisten = "{hosts.address(name)}:{WORKER_PORT}"\napp = "workers.counter:app"\n'
            f'session = {{ save_handler = "redis", save_path = "{save_path}" }}\n'
        )
    path = directory / "cluster.toml"
    path.write_text(text)
    return path


def up(stack: contextlib.ExitStack, hosts: _netns.Hosts, name: str, only: str, port: int, config, directory) -> subprocess.Popen:
    """``fcgi-cluster up -c FILE --only ONLY`` on host ``name``, once it listens on ``port``."""
    argv = hosts.exec_argv(name, [python_executable(), "-m", "fcgi_cluster.cli", "up", "-c", str(config),
                                  "--only", only])
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return stack.enter_context(run_process(argv, cwd=REPO_ROOT, env=env, ready_host=hosts.address(name),
                                           ready_port=port, name=f"up-{name}", log_path=directory / f"up-{name}.log"))


@pytest.fixture(scope="module")
def cluster(hosts, tmp_path_factory):
    directory = tmp_path_factory.mktemp("hosts")
    redis = Redis(hosts, directory)
    config = cluster_file(hosts, directory)
    with contextlib.ExitStack() as stack:
        redis.start()
        stack.callback(redis.stop)
        workers = {name: up(stack, hosts, name, f"pool.{name}", WORKER_PORT, config, directory)
                   for name in WORKER_HOSTS}
        up(stack, hosts, "lb", "frontend", HTTP_PORT, config, directory)
        yield {"lb": hosts.address("lb"), "redis": redis, "workers": workers, "directory": directory}


class User:
    """One browser with its own session: GET / and the counter it answers."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.sid: str | None = None
        self.values: list[int] = []
        self.failures: list[str] = []
        self.servers: list[str] = []
        self.slowest = 0.0

    def visit(self) -> None:
        headers = {"Cookie": f"PHPSESSID={self.sid}"} if self.sid else {}
        started = time.monotonic()
        conn = http.client.HTTPConnection(self.host, HTTP_PORT, timeout=READ_TIMEOUT + 30)
        try:
            conn.request("GET", "/", headers=headers)
            response = conn.getresponse()
            body = response.read()
        except OSError as exc:
            self.failures.append(f"{type(exc).__name__}: {exc}")
            return
        finally:
            conn.close()
            self.slowest = max(self.slowest, time.monotonic() - started)
        if response.status != 200:
            self.failures.append(f"{response.status}: {body[:200]!r}")
            return
        for value in response.headers.get_all("Set-Cookie") or []:
            if value.startswith("PHPSESSID="):
                self.sid = value.split("=", 1)[1].split(";")[0]
        answer = json.loads(body)
        self.values.append(answer["n"])
        self.servers.append(answer["worker"].split()[0])


class Crowd:
    """``users`` browsers visiting in a loop, in threads, until ``stop()`` (at most ``limit`` seconds)."""

    def __init__(self, host: str, users: int, limit: float = 120) -> None:
        self.users = [User(host) for _ in range(users)]
        self._until = threading.Event()
        self._limit = limit
        self._pool = concurrent.futures.ThreadPoolExecutor(users)
        self._futures = [self._pool.submit(self._browse, user) for user in self.users]

    def _browse(self, user: User) -> None:
        deadline = time.monotonic() + self._limit
        while not self._until.is_set() and time.monotonic() < deadline and len(user.values) < 2000:
            user.visit()
            time.sleep(0.05)

    def stop(self) -> None:
        self._until.set()
        for future in self._futures:
            future.result(timeout=200)
        self._pool.shutdown()


def assert_counted(user: User, *, retried_at_most: int = 0) -> None:
    """The user's counter went up by one per answer; a request retried after its write may skip one."""
    steps = [b - a for a, b in zip(user.values, user.values[1:])]
    assert all(step in (1, 2) for step in steps), user.values
    assert steps.count(2) <= retried_at_most, user.values
    assert user.values and user.values[0] == 1


def test_a_session_counter_alternates_between_the_two_hosts(cluster, hosts):
    user = User(cluster["lb"])
    for _ in range(20):
        user.visit()
    assert user.failures == []
    assert user.values == list(range(1, 21))
    assert set(user.servers) == {f"{hosts.address(n)}:{WORKER_PORT}" for n in ("php1", "php2")}


def test_a_cut_link_fails_no_request_and_holds_none_for_long(cluster, hosts):
    crowd = Crowd(cluster["lb"], 4)
    users = crowd.users
    try:
        time.sleep(2)
        hosts.cut("php1")
        try:
            time.sleep(READ_TIMEOUT * 2 / 3)
        finally:
            hosts.mend("php1")
        time.sleep(3)
    finally:
        crowd.stop()
    slowest = max(user.slowest for user in users)
    print(f"link of php1 cut for {READ_TIMEOUT * 2 / 3:.0f} s under 4 users: "
          f"{sum(len(u.values) for u in users)} answers, slowest request {slowest:.1f} s")
    for user in users:
        assert user.failures == []
        assert_counted(user, retried_at_most=1)
    # Without liveness a request in flight on the cut host waits until the link returns;
    # with it, and no resend to the vanished host, no user waits more than 5 s.
    assert slowest < 5


def wait_both_in_rotation(cluster, hosts, limit: float = 30) -> None:
    """Visit until both hosts answer again (a failed host is out for fail_timeout, 10 s)."""
    expected = {f"{hosts.address(n)}:{WORKER_PORT}" for n in ("php1", "php2")}
    probe = User(cluster["lb"])
    deadline = time.monotonic() + limit
    while set(probe.servers[-2:]) != expected:
        assert time.monotonic() < deadline, f"both hosts not back in rotation in {limit} s: {probe.servers[-6:]}"
        probe.visit()
        time.sleep(0.2)


def test_a_worker_host_killed_with_sigkill_fails_no_request(cluster, hosts):
    wait_both_in_rotation(cluster, hosts)
    crowd = Crowd(cluster["lb"], 4)
    users = crowd.users
    victim = cluster["workers"]["php2"]
    try:
        time.sleep(2)
        # Every process of the host at once, as when it loses power: up, the
        # pool master (a session of its own) and its child.
        pids = hosts.pids("php2")
        assert victim.pid in pids and len(pids) >= 3, pids
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        victim.wait(10)
        time.sleep(3)
    finally:
        crowd.stop()
    for user in users:
        assert user.failures == []
        assert_counted(user, retried_at_most=1)
        assert user.servers[-1] == f"{hosts.address('php1')}:{WORKER_PORT}"


def test_the_redis_host_restarted_keeps_every_counter(cluster):
    users = [User(cluster["lb"]) for _ in range(3)]
    for user in users:
        for _ in range(3):
            user.visit()
    redis: Redis = cluster["redis"]
    redis.stop()
    down = User(cluster["lb"])
    down.visit()
    redis.start()
    for user in users:
        for _ in range(3):
            user.visit()
    # While the store is down a request fails cleanly; after, every count continues.
    assert down.failures and down.failures[0].startswith("503"), down.failures
    for user in users:
        assert user.failures == []
        assert user.values == list(range(1, 7))


def test_a_protected_mode_redis_is_reported_in_its_own_words(hosts, tmp_path):
    address = hosts.address("redis")
    argv = hosts.exec_argv("redis", ["redis-server", "--port", str(DENIED_PORT), "--save", "", "--appendonly", "no",
                                     "--dir", str(tmp_path)])
    with run_process(argv, ready_host=address, ready_port=DENIED_PORT, name="redis-protected",
                     log_path=tmp_path / "redis.log"):
        store = open_store("redis", f"tcp://{address}:{DENIED_PORT}", check=False)
        try:
            with pytest.raises(StoreError) as caught:
                store.read("a" * 26)
            # The worker's loop client (auto_start, learned pages) says the same.
            on_loop = trio.run(_loop_read, store)
        finally:
            store.close()
        # A worker on another host stops at start, saying why.
        argv = hosts.exec_argv("php1", [
            python_executable(), "-m", "fcgi_cluster.cli", "worker", "workers.counter:app",
            "--listen", f"{hosts.address('php1')}:{WORKER_PORT + 1}", "--session", "save_handler=redis",
            "--session", f"save_path=tcp://{address}:{DENIED_PORT}",
        ])
        started = subprocess.run(argv, cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
                                 capture_output=True, text=True, timeout=60)
    assert started.returncode != 0
    assert f"redis {address}:{DENIED_PORT}: refused by the server: DENIED Redis is running in protected mode" in started.stderr
    assert "Traceback" not in started.stderr
    assert isinstance(on_loop, StoreError)
    for message in (str(caught.value), str(on_loop)):
        assert f"{address}:{DENIED_PORT}" in message
        assert "refused by the server: DENIED Redis is running in protected mode" in message
        assert "Broken pipe" not in message


async def _loop_read(store) -> StoreError | None:
    """What the loop client of ``store`` raises on a read (None: it read)."""
    async with trio.open_nursery() as nursery:
        loop_store = store.loop_store(nursery)
        try:
            await loop_store.read("a" * 26)
        except StoreError as exc:
            return exc
        finally:
            loop_store.close()
            nursery.cancel_scope.cancel()
    return None
