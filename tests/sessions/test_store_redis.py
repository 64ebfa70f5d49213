"""The redis store against real redis-servers: passwords and ACL users, phpredis' keys,
several hosts, Sentinel, and a server killed, hung and restarted under a live store."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
import urllib.parse

import pytest

from fcgi_cluster.sessions import StoreError, open_store
from fcgi_cluster.sessions._redis_lease import LEASE
from fcgi_cluster.sessions._redis_scripts import RELEASE_SCRIPT, pick_server
from tests._peers import free_port, run_process
from tests.sessions._servers import RedisServer, redis_sentinel
from tests.sessions.conftest import ACL_PASSWORD, ACL_USER, REDIS_PASSWORD

SLACK = 3.0
AUTH = urllib.parse.quote(REDIS_PASSWORD)
# phpredis' LOCK_RELEASE_SHA_STR: the same script, so PHP and Python share one cached script.
PHPREDIS_RELEASE_SHA = "b70c2384248f88e6b75b9f89241a180f856ad852"


def sid() -> str:
    return secrets.token_hex(16)


def test_wrong_password_is_a_clear_error_at_open(redis_server: RedisServer) -> None:
    with pytest.raises(StoreError) as info:
        open_store("redis", f"tcp://{redis_server.address}?auth=not-the-password")
    message = str(info.value)
    assert message == f"redis {redis_server.address}: authentication failed: wrong user or password"
    assert "not-the-password" not in message


def test_missing_password_is_a_clear_error_at_open(redis_server: RedisServer) -> None:
    with pytest.raises(StoreError, match="authentication required"):
        open_store("redis", f"tcp://{redis_server.address}")


def test_acl_user_and_password(flushed: RedisServer) -> None:
    key = sid()
    store = open_store("redis", f"tcp://{flushed.address}?auth[]={ACL_USER}&auth[]={ACL_PASSWORD}")
    try:
        store.write(key, b"via acl", 60)
        with flushed.client() as client:
            assert client.get(f"PHPREDIS_SESSION:{key}") == b"via acl"
            # The connection really is alice's.
            names = {entry.get("user") for entry in client.client_list()}
            assert ACL_USER in names
    finally:
        store.close()
    url_store = open_store("redis", f"redis://{ACL_USER}:{ACL_PASSWORD}@{flushed.address}")
    try:
        assert url_store.read(key) == b"via acl"
    finally:
        url_store.close()
    with pytest.raises(StoreError, match="authentication failed"):
        open_store("redis", f"tcp://{flushed.address}?auth[]={ACL_USER}&auth[]=wrong")


def test_phpredis_keys_lock_and_release_script(flushed: RedisServer) -> None:
    store = open_store("redis", f"tcp://{flushed.address}?auth={AUTH}")
    key = sid()
    try:
        store.write(key, b'n|i:1;', 600)
        token = store.acquire_lock(key, expire=7, wait=1, retry_interval=0.01)
        with flushed.client() as client:
            assert client.get(f"PHPREDIS_SESSION:{key}") == b"n|i:1;"
            assert client.get(f"PHPREDIS_SESSION:{key}_LOCK") == token
            assert 6000 < client.pttl(f"PHPREDIS_SESSION:{key}_LOCK") <= 7000
            hostname, pid, secret = token.decode().split("|")
            assert pid == str(os.getpid()) and len(secret) == 32
            store.release_lock(key, token)
            assert client.get(f"PHPREDIS_SESSION:{key}_LOCK") is None
            assert client.script_exists(PHPREDIS_RELEASE_SHA) == [True]
    finally:
        store.close()
    import hashlib

    assert hashlib.sha1(RELEASE_SCRIPT.encode()).hexdigest() == PHPREDIS_RELEASE_SHA


def test_a_locked_request_is_two_round_trips_of_phpredis_commands(flushed: RedisServer) -> None:
    """lock_and_read and write/touch_and_release: one EVALSHA each, running phpredis'
    own commands on its keys (the lock value as acquire_lock writes it), and
    loading the scripts again after a SCRIPT FLUSH."""
    store = open_store("redis", f"tcp://{flushed.address}?auth={AUTH}")
    key = sid()
    data_key, lock_key = f"PHPREDIS_SESSION:{key}", f"PHPREDIS_SESSION:{key}_LOCK"
    try:
        store.write(key, b"n|i:1;", 600)
        with flushed.client() as client:
            client.script_flush()
            client.config_resetstat()
            token, data = store.lock_and_read(key, expire=7, wait=1, retry_interval=0.01)
            assert data == b"n|i:1;"
            assert client.get(lock_key) == token
            # A lease (renewed while held), not the whole of expire: see _redis_lease.
            assert LEASE * 1000 - 1000 < client.pttl(lock_key) <= LEASE * 1000
            hostname, pid, secret = token.decode().split("|")
            assert pid == str(os.getpid()) and len(secret) == 32
            store.write_and_release(key, b"n|i:2;", 900, token)
            assert client.get(lock_key) is None
            assert client.get(data_key) == b"n|i:2;"
            assert 890 < client.ttl(data_key) <= 900
            token, data = store.lock_and_read(key, expire=7, wait=1, retry_interval=0.01)
            assert data == b"n|i:2;"
            store.touch_and_release(key, 1200, token)
            assert client.get(lock_key) is None
            assert 1190 < client.ttl(data_key) <= 1200
            stats = client.info("commandstats")
            # Four EVALSHAs (after the flush, the first of each script meets
            # NOSCRIPT and is sent again once SCRIPT LOAD answered).
            evalsha = stats["cmdstat_evalsha"]
            assert evalsha["calls"] - evalsha.get("rejected_calls", 0) - evalsha.get("failed_calls", 0) >= 4
            # The scripts' own commands are phpredis': SET NX PX, GET, SETEX, EXPIRE, DEL.
            assert stats["cmdstat_setex"]["calls"] == 1 and stats["cmdstat_expire"]["calls"] == 1
    finally:
        store.close()


def test_prefix_database_and_unix_socket(flushed: RedisServer) -> None:
    key = sid()
    store = open_store("redis", f"unix://{flushed.unix_socket}?auth={AUTH}&database=5&prefix=APP:")
    try:
        store.write(key, b"in db 5", 60)
        with flushed.client(db=5) as client:
            assert client.get(f"APP:{key}") == b"in db 5"
        with flushed.client(db=0) as client:
            assert client.dbsize() == 0
    finally:
        store.close()


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("two")
    with RedisServer(base / "a") as first, RedisServer(base / "b") as second:
        yield first, second


def test_two_hosts_share_sessions_like_phpredis(two_servers) -> None:
    first, second = two_servers
    save_path = f"tcp://{first.address}?weight=1, tcp://{second.address}?weight=2"
    store = open_store("redis", save_path)
    ids = [sid() for _ in range(60)]
    try:
        for key in ids:
            store.write(key, key.encode(), 600)
    finally:
        store.close()
    placed = {first.address: 0, second.address: 0}
    with first.client() as a, second.client() as b:
        for key in ids:
            expected = (first, second)[pick_server(key, [1, 2])]
            on_first = a.exists(f"PHPREDIS_SESSION:{key}")
            on_second = b.exists(f"PHPREDIS_SESSION:{key}")
            assert (on_first, on_second) == ((1, 0) if expected is first else (0, 1)), key
            placed[expected.address] += 1
    assert placed[first.address] > 0 and placed[second.address] > 0
    # A new store (another worker, another day) finds every session where it was put.
    again = open_store("redis", save_path)
    try:
        assert [again.read(key) for key in ids] == [key.encode() for key in ids]
        assert {again.server_for(key) for key in ids} == {first.address, second.address}
    finally:
        again.close()


def test_sentinel(flushed: RedisServer, tmp_path) -> None:
    with redis_sentinel(tmp_path / "sentinel", flushed, name="sessions") as (host, port):
        store = open_store("redis", f"sentinel://{host}:{port}/sessions?auth={AUTH}&timeout=2")
        key = sid()
        try:
            store.write(key, b"through sentinel", 60)
            assert store.read(key) == b"through sentinel"
            token = store.acquire_lock(key, expire=5, wait=1, retry_interval=0.01)
            store.release_lock(key, token)
            token, data = store.lock_and_read(key, expire=5, wait=1, retry_interval=0.01)
            assert data == b"through sentinel"
            store.touch_and_release(key, 60, token)
            token, _ = store.lock_and_read(key, expire=5, wait=1, retry_interval=0.01)
            store.write_and_release(key, b"through sentinel, locked", 60, token)
        finally:
            store.close()
    with flushed.client() as client:
        assert client.get(f"PHPREDIS_SESSION:{key}") == b"through sentinel, locked"
        assert client.get(f"PHPREDIS_SESSION:{key}_LOCK") is None


def test_server_killed_and_restarted_under_a_live_store(tmp_path) -> None:
    server = RedisServer(tmp_path / "r", password="pw")
    server.start()
    try:
        store = open_store("redis", f"tcp://{server.address}?auth=pw", timeout=1)
        key = sid()
        store.write(key, b"before", 60)
        server.kill()
        started = time.monotonic()
        with pytest.raises(StoreError, match=f"redis {server.address}: connection refused"):
            store.read(key)
        with pytest.raises(StoreError):
            store.acquire_lock(key, expire=5, wait=1, retry_interval=0.01)
        with pytest.raises(StoreError, match=f"redis {server.address}: connection refused"):
            store.lock_and_read(key, expire=5, wait=1, retry_interval=0.01)
        with pytest.raises(StoreError, match=f"redis {server.address}: connection refused"):
            store.write_and_release(key, b"lost", 60, b"token")
        assert time.monotonic() - started < 3 + SLACK
        server.start()  # same port, empty (no persistence), no scripts loaded
        assert store.read(key) is None
        store.write(key, b"after", 60)
        assert store.read(key) == b"after"
        token, data = store.lock_and_read(key, expire=5, wait=1, retry_interval=0.01)
        assert data == b"after"
        store.write_and_release(key, b"again", 60, token)
        assert store.read(key) == b"again"
        store.close()
    finally:
        server.stop()


def test_hung_server_times_out_and_recovers(tmp_path) -> None:
    server = RedisServer(tmp_path / "r")
    server.start()
    try:
        store = open_store("redis", f"tcp://{server.address}?read_timeout=0.5")
        key = sid()
        store.write(key, b"x", 60)
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(StoreError, match="timed out"):
                store.read(key)
            assert time.monotonic() - started < 0.5 + SLACK
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        assert store.read(key) == b"x"
        store.close()
    finally:
        server.stop()


_PHP_SESSIONS = r"""
// Output before a session_start() would stop it ("headers already sent"): buffer it.
ob_start();
$mode = $argv[1];
foreach (array_slice($argv, 2) as $id) {
    session_id($id);
    if (!session_start()) {
        echo $id, " failed\n";
        continue;
    }
    if ($mode === 'write') {
        $_SESSION['from'] = 'php';
    } else {
        echo $id, ' ', json_encode($_SESSION), "\n";
    }
    session_write_close();
}
"""


def test_phpredis_finds_sessions_on_the_same_hosts(two_servers) -> None:
    """phpredis and this store agree on which of two weighted hosts holds each session."""
    php = shutil.which("php")
    assert php is not None, "the php CLI is missing: run `make deps`"
    first, second = two_servers
    save_path = f"tcp://{first.address}?weight=1, tcp://{second.address}?weight=2"
    php_ids = [secrets.token_hex(13) for _ in range(12)]
    our_ids = [secrets.token_hex(13) for _ in range(12)]

    def run_php(mode: str, ids: list[str]) -> str:
        result = subprocess.run(
            [php, "-d", "session.save_handler=redis",
             "-d", f'session.save_path="{save_path}"', "-d", "session.serialize_handler=php",
             "-d", "session.use_strict_mode=0", "-d", "session.gc_maxlifetime=600",
             "-r", _PHP_SESSIONS, mode, *ids],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 0 and "Warning" not in result.stdout, result.stdout + result.stderr
        return result.stdout

    run_php("write", php_ids)
    store = open_store("redis", save_path)
    try:
        for key in php_ids:
            assert store.read(key) == b'from|s:3:"php";', key
        for key in our_ids:
            store.write(key, b'from|s:6:"python";', 600)
    finally:
        store.close()
    lines = run_php("read", our_ids).splitlines()
    assert [line.split(" ", 1) for line in lines if line] == [[key, '{"from":"python"}'] for key in our_ids]
    with first.client() as a, second.client() as b:
        homes = {(a.exists(f"PHPREDIS_SESSION:{key}"), b.exists(f"PHPREDIS_SESSION:{key}")) for key in php_ids + our_ids}
        assert homes == {(1, 0), (0, 1)}, "each session on one host, and both hosts used"


def test_rediss_tls(tmp_path) -> None:
    """rediss:// with the server's CA verifies it; without it the handshake fails clearly."""
    openssl = shutil.which("openssl")
    assert openssl is not None, "openssl is missing"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    port = free_port()
    argv = [
        "redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
        "--tls-auth-clients", "no", "--requirepass", "pw", "--dir", str(tmp_path),
    ]
    with run_process(argv, ready_port=port, name="redis-tls", log_path=tmp_path / "redis-tls.log"):
        store = open_store("redis", f"rediss://:pw@127.0.0.1:{port}?ssl_ca_certs={cert}")
        try:
            store.write("tlssession0000", b"secret data", 60)
            assert store.read("tlssession0000") == b"secret data"
        finally:
            store.close()
        with pytest.raises(StoreError, match=f"redis 127.0.0.1:{port}: .*certificate verify failed"):
            open_store("redis", f"rediss://:pw@127.0.0.1:{port}")
        with pytest.raises(StoreError):
            open_store("redis", f"tcp://127.0.0.1:{port}?auth=pw", timeout=1)


def test_phpredis_respects_our_lock(two_servers) -> None:
    """With phpredis' locking on, a PHP request cannot write a session we hold locked."""
    php = shutil.which("php")
    assert php is not None, "the php CLI is missing: run `make deps`"
    first, second = two_servers
    save_path = f"tcp://{first.address}, tcp://{second.address}"
    store = open_store("redis", save_path)
    ids = [secrets.token_hex(13) for _ in range(6)]
    try:
        for key in ids:
            store.write(key, b'from|s:6:"python";', 600)
        # Both ways of taking the lock: alone, and with the read in one round trip.
        tokens = {key: store.acquire_lock(key, expire=30, wait=1, retry_interval=0.01) for key in ids[:3]}
        for key in ids[3:]:
            tokens[key], data = store.lock_and_read(key, expire=30, wait=1, retry_interval=0.01)
            assert data == b'from|s:6:"python";'
        result = subprocess.run(
            [php, "-d", "session.save_handler=redis", "-d", f'session.save_path="{save_path}"',
             "-d", "session.use_strict_mode=0", "-d", "redis.session.locking_enabled=1",
             "-d", "redis.session.lock_retries=2", "-d", "redis.session.lock_wait_time=10000",
             "-r", _PHP_SESSIONS, "write", *ids],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 0, result.stderr
        assert [store.read(key) for key in ids] == [b'from|s:6:"python";'] * len(ids)
        for key in ids[:3]:
            store.release_lock(key, tokens[key])
        for key in ids[3:]:
            store.touch_and_release(key, 600, tokens[key])
        subprocess.run(
            [php, "-d", "session.save_handler=redis", "-d", f'session.save_path="{save_path}"',
             "-d", "session.use_strict_mode=0", "-d", "redis.session.locking_enabled=1",
             "-r", _PHP_SESSIONS, "write", *ids],
            check=True, capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
        )
        assert [store.read(key) for key in ids] == [b'from|s:3:"php";'] * len(ids)
    finally:
        store.close()


def test_open_without_check_starts_while_redis_is_down(tmp_path) -> None:
    """check=False: the store opens with Redis down, fails per call, and works once it is up."""
    server = RedisServer(tmp_path / "late", password="pw")
    store = open_store("redis", f"tcp://{server.address}?auth=pw", timeout=1, check=False)
    try:
        with pytest.raises(StoreError, match="connection refused"):
            store.read("latesession0000")
        with server:
            store.write("latesession0000", b"now", 60)
            assert store.read("latesession0000") == b"now"
    finally:
        store.close()
    # With the check (the default) the same situation is an error at open.
    with pytest.raises(StoreError, match="connection refused"):
        open_store("redis", f"tcp://{server.address}?auth=pw", timeout=1)


def test_lock_values_are_unique_across_threads_and_forks() -> None:
    """Each acquisition's value differs: from many threads, and in a forked child
    (which must not repeat its parent's values)."""
    import threading

    from fcgi_cluster.sessions._redis_scripts import lock_value

    values: list[bytes] = []

    def draw() -> None:
        values.extend(lock_value() for _ in range(2000))

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(set(values)) == len(values) == 8000
    assert all(len(value.decode().split("|")[2]) == 32 for value in values)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        os.write(write_end, lock_value())
        os._exit(0)
    os.close(write_end)
    try:
        from_child = os.read(read_end, 4096)
    finally:
        os.close(read_end)
        os.waitpid(child, 0)
    hostname, pid, secret = from_child.decode().split("|")
    assert pid == str(child) and len(secret) == 32
    assert secret[:16] != values[0].decode().split("|")[2][:16]


def test_a_forked_child_never_uses_its_parents_connection(flushed: RedisServer) -> None:
    """The scripts run on a connection of the calling thread: after a fork the
    child opens its own (the inherited socket is the parent's too), and both
    processes go on working."""
    store = open_store("redis", f"tcp://{flushed.address}?auth={AUTH}")
    key = sid()
    try:
        store.write(key, b"n|i:1;", 600)
        token, _ = store.lock_and_read(key, expire=5, wait=1, retry_interval=0.01)
        store.write_and_release(key, b"n|i:2;", 600, token)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: one locked request of its own, then report which connection served it
            status = 1
            try:
                token, data = store.lock_and_read(key, expire=5, wait=1, retry_interval=0.01)
                store.write_and_release(key, b"n|i:3;", 600, token)
                conn = store._servers[0]._local.conn
                os.write(write, f"{data.decode()} {conn._sock.getsockname()[1]}".encode())
                status = 0
            finally:
                os._exit(status)
        os.close(write)
        # Bounded: a child stuck on a lock inherited mid-use must fail the test, not hang it.
        deadline = time.monotonic() + 20
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssertionError("the forked child did not finish in 20 s")
            time.sleep(0.01)
        reply = os.read(read, 200).decode()
        os.close(read)
        assert os.waitstatus_to_exitcode(done[1]) == 0
        data, child_port = reply.split()
        assert data == "n|i:2;"
        parent_port = store._servers[0]._local.conn._sock.getsockname()[1]
        assert int(child_port) != parent_port
        # The parent's connection still works and sees the child's write.
        token, data = store.lock_and_read(key, expire=5, wait=1, retry_interval=0.01)
        assert data == b"n|i:3;"
        store.touch_and_release(key, 600, token)
    finally:
        store.close()


def test_threads_keep_at_most_half_the_pool_and_the_others_share_it(flushed: RedisServer) -> None:
    """Each thread's scripts run on a connection it keeps, up to half the pool
    (here 1 of 2); more threads than that still work, on pooled connections."""
    import threading

    store = open_store("redis", f"tcp://{flushed.address}?auth={AUTH}", max_connections=2)
    keys = [sid() for _ in range(4)]
    errors: list[BaseException] = []

    def visitor(key: str) -> None:
        try:
            for n in range(20):
                token, data = store.lock_and_read(key, expire=5, wait=2, retry_interval=0.005)
                assert data == (None if n == 0 else b"n|i:%d;" % n)
                store.write_and_release(key, b"n|i:%d;" % (n + 1), 600, token)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    try:
        threads = [threading.Thread(target=visitor, args=(key,)) for key in keys]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in threads)
        assert not errors
        assert store._servers[0]._kept == 1
        for key in keys:
            assert store.read(key) == b"n|i:20;"
    finally:
        store.close()
