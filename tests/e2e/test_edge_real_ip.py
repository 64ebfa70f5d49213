"""Real client addresses through a real front-end: X-Forwarded-For from trusted peers only.

The address a trusted proxy gives becomes REMOTE_ADDR, the ip_hash key and
the access log's; a forged X-Forwarded-For from a peer not in real_ip_from
changes none of them.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from ._edge import edge_cluster, environ_of, exchange, get_bytes, split_response

CLUSTER = """
[frontend]
listen = ["127.0.0.1:{fe}", {{ address = "127.0.0.1:{pp}", real_ip_header = "X-Real-IP" }}]
access_log = "{log}"
real_ip_from = [{trusted}]
real_ip_recursive = true
[upstream.app]
servers = ["127.0.0.1:{p1}", "127.0.0.1:{p2}"]
balance = "ip_hash"
[pool.a]
listen = "127.0.0.1:{p1}"
app = "workers.echo:app"
[pool.b]
listen = "127.0.0.1:{p2}"
app = "workers.echo:app"
"""


@pytest.fixture(scope="module")
def trusted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trusted")
    with edge_cluster(tmp, CLUSTER, log=str(tmp / "access.log"), trusted='"127.0.0.0/8"') as (ports, _):
        yield ports, tmp / "access.log"


@pytest.fixture(scope="module")
def untrusted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("untrusted")
    with edge_cluster(tmp, CLUSTER, log=str(tmp / "access.log"), trusted='"10.0.0.0/8", "::1/128"') as (ports, _):
        yield ports, tmp / "access.log"


def worker_of(raw: bytes) -> str:
    return json.loads(split_response(raw)[2])["worker"].split()[0]


def test_trusted_proxy_sets_remote_addr_recursively(trusted) -> None:
    ports, log = trusted
    raw = exchange(ports["fe"], get_bytes("/who", {"X-Forwarded-For": "198.51.100.1, 203.0.113.9, 127.0.0.5"}))
    env = environ_of(raw)
    assert env["REMOTE_ADDR"] == "203.0.113.9"
    assert env["REMOTE_PORT"] == ""  # nginx's $remote_port when the header gives none
    assert env["HTTP_X_FORWARDED_FOR"] == "198.51.100.1, 203.0.113.9, 127.0.0.5"  # passed on as sent
    # Garbage in the list keeps the peer's own address.
    env = environ_of(exchange(ports["fe"], get_bytes("/who", {"X-Forwarded-For": "203.0.113.9, unknown"})))
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    env = environ_of(exchange(ports["pp"], get_bytes("/who", {"X-Real-IP": "[2001:db8::77]:4242"})))
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("2001:db8::77", "4242")
    assert any(line.startswith("203.0.113.9 ") and "/who" in line for line in _lines(log, "/who"))


def test_each_request_of_a_kept_alive_connection_has_its_own_address(trusted) -> None:
    ports, _ = trusted
    requests = [("203.0.113.1", "203.0.113.1"), ("203.0.113.2", "203.0.113.2"), (None, "127.0.0.1")] * 2
    with socket.create_connection(("127.0.0.1", ports["fe"]), timeout=15) as sock:
        stream = sock.makefile("rb")
        seen = []
        for forwarded, _ in requests:
            sock.sendall(get_bytes("/ka", {"X-Forwarded-For": forwarded} if forwarded else {}, close=False))
            seen.append(_read_one(stream)["REMOTE_ADDR"])
    assert seen == [expected for _, expected in requests]


def test_ip_hash_balances_by_the_real_address(trusted) -> None:
    ports, _ = trusted
    # ip_hash keys on the first three bytes of an IPv4 address, as nginx's.
    by_client = {}
    for third in range(24):
        client = f"198.51.{third}.10"
        served = {worker_of(exchange(ports["fe"], get_bytes("/h", {"X-Forwarded-For": client}))) for _ in range(3)}
        assert len(served) == 1, (client, served)  # one client, one worker
        by_client[client] = served.pop()
    assert len(set(by_client.values())) == 2  # different clients spread over both


def test_forged_forwarded_for_from_an_untrusted_peer_changes_nothing(untrusted) -> None:
    ports, log = untrusted
    for third in range(12):
        forged = f"198.51.{third}.66"
        with socket.create_connection(("127.0.0.1", ports["fe"]), timeout=15) as sock:
            local_port = sock.getsockname()[1]
            sock.sendall(get_bytes("/forged", {"X-Forwarded-For": forged}))
            env = _read_one(sock.makefile("rb"))
        assert env["REMOTE_ADDR"] == "127.0.0.1"
        assert env["REMOTE_PORT"] == str(local_port)
        assert env["HTTP_X_FORWARDED_FOR"] == forged
    env = environ_of(exchange(ports["pp"], get_bytes("/forged", {"X-Real-IP": "192.0.2.1"})))
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    lines = [line for line in _lines(log, "/forged", 13) if "/forged" in line]
    assert len(lines) == 13 and all(line.startswith("127.0.0.1 ") for line in lines)


def test_ip_hash_ignores_a_forged_address(untrusted) -> None:
    ports, _ = untrusted
    served = {worker_of(exchange(ports["fe"], get_bytes("/h", {"X-Forwarded-For": f"198.51.{n}.1"}))) for n in range(24)}
    assert len(served) == 1  # every request is 127.0.0.1's


def _lines(log, needle: str, count: int = 1) -> list[str]:
    """The access log's lines once ``count`` of them hold ``needle`` (or after 5 s).

    A line is written once its answer has left, within a turn of the loop: it
    may come a moment after the client has the answer.
    """
    for _ in range(50):
        lines = (log.read_text() if log.exists() else "").splitlines()
        if sum(needle in line for line in lines) >= count:
            break
        time.sleep(0.1)
    return lines


def _read_one(stream) -> dict[str, str]:
    """One response with a Content-Length off a buffered socket stream: the echo environ."""
    status_line = stream.readline()
    assert status_line.startswith(b"HTTP/1.1 200"), status_line
    length = 0
    while True:
        line = stream.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return json.loads(stream.read(length))["environ"]


def test_sighup_applies_new_real_ip_settings(tmp_path) -> None:
    import signal

    text = CLUSTER.replace("access_log = \"{log}\"", "access_log = false")
    with edge_cluster(tmp_path, text, trusted='"10.0.0.0/8"') as (ports, up):
        forwarded = {"X-Forwarded-For": "203.0.113.60"}
        assert environ_of(exchange(ports["fe"], get_bytes("/r", forwarded)))["REMOTE_ADDR"] == "127.0.0.1"
        path = tmp_path / "cluster.toml"
        path.write_text(path.read_text().replace('real_ip_from = ["10.0.0.0/8"]', 'real_ip_from = ["127.0.0.0/8"]'))
        up.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        seen = "127.0.0.1"
        while seen != "203.0.113.60" and time.monotonic() < deadline:
            time.sleep(0.2)
            seen = environ_of(exchange(ports["fe"], get_bytes("/r", forwarded)))["REMOTE_ADDR"]
        assert seen == "203.0.113.60"
