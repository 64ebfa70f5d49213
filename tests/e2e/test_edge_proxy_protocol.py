"""The PROXY protocol on a listener, through a real front-end: raw headers, HAProxy, TLS after the header.

A listener with ``proxy_protocol = true`` reads a v1 or v2 header before
anything else; a trusted peer's header sets REMOTE_ADDR/REMOTE_PORT. A
malformed header, or none in time, closes that connection (logged) and the
front-end serves on. HAProxy's ``send-proxy`` and ``send-proxy-v2`` are the
real senders; TLS is checked on a connection whose header came first.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import struct
import subprocess
import textwrap
import time

import pytest

from tests._peers import free_port, run_process

from ._edge import edge_cluster, environ_of, exchange, get_bytes, split_response

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

CLUSTER = """
[frontend]
listen = ["127.0.0.1:{fe}", {{ address = "127.0.0.1:{pp}", proxy_protocol = true }},
          {{ address = "127.0.0.1:{p2}", proxy_protocol = true, real_ip_from = ["10.0.0.0/8"] }}]
access_log = false
header_timeout = "2s"
real_ip_from = ["127.0.0.0/8"]
{tls}
[upstream.app]
servers = ["127.0.0.1:{p1}"]
[pool.a]
listen = "127.0.0.1:{p1}"
app = "workers.echo:app"
"""


def v2_header(command: int, family: int, body: bytes) -> bytes:
    return SIGNATURE + bytes([0x20 | command, (family << 4) | 1]) + struct.pack("!H", len(body)) + body


def v2_inet(source: str, sport: int, tlvs: bytes = b"") -> bytes:
    body = socket.inet_aton(source) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", sport, 80) + tlvs
    return v2_header(1, 1, body)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("proxy")
    with edge_cluster(tmp, CLUSTER, tls="") as (ports, process):
        yield ports, process


def test_v1_and_v2_headers_set_the_client_address(cluster) -> None:
    ports, _ = cluster
    env = environ_of(exchange(ports["pp"], b"PROXY TCP4 192.0.2.10 127.0.0.1 40001 80\r\n" + get_bytes("/v1")))
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("192.0.2.10", "40001")
    env = environ_of(exchange(ports["pp"], b"PROXY TCP6 2001:db8::5 ::1 40002 80\r\n" + get_bytes("/v1")))
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("2001:db8::5", "40002")
    tlvs = b"\x02\x00\x08edge.tst" + b"\x04\x00\x03\x00\x00\x00"  # AUTHORITY and NOOP
    env = environ_of(exchange(ports["pp"], v2_inet("198.51.100.20", 40003, tlvs) + get_bytes("/v2")))
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("198.51.100.20", "40003")
    assert "HTTPS" not in env and env["wsgi.url_scheme"] == "http"
    # PP2_TYPE_SSL with the client bit: the client spoke TLS to the balancer.
    ssl = b"\x20\x00\x0f\x01\x00\x00\x00\x00" + b"\x21\x00\x07TLSv1.3"
    env = environ_of(exchange(ports["pp"], v2_inet("198.51.100.21", 40005, tlvs + ssl) + get_bytes("/v2")))
    assert (env["REMOTE_ADDR"], env["HTTPS"], env["REQUEST_SCHEME"]) == ("198.51.100.21", "on", "https")
    v6 = socket.inet_pton(socket.AF_INET6, "2001:db8::9") + socket.inet_pton(socket.AF_INET6, "::1") + struct.pack("!HH", 40004, 80)
    env = environ_of(exchange(ports["pp"], v2_header(1, 2, v6) + get_bytes("/v2")))
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("2001:db8::9", "40004")


def test_local_unknown_and_untrusted_keep_the_peer(cluster) -> None:
    ports, _ = cluster
    for header in (v2_header(0, 1, b"\0" * 12), v2_header(1, 0, b""), b"PROXY UNKNOWN\r\n"):
        with socket.create_connection(("127.0.0.1", ports["pp"]), timeout=15) as sock:
            local_port = sock.getsockname()[1]
            sock.sendall(header + get_bytes("/local"))
            env = environ_of(_read_all(sock))
        assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("127.0.0.1", str(local_port))
    # A listener that trusts 10.0.0.0/8 only: the loopback peer's header is read, and believed in nothing.
    env = environ_of(exchange(ports["p2"], b"PROXY TCP4 192.0.2.10 127.0.0.1 40001 80\r\n" + get_bytes("/u")))
    assert env["REMOTE_ADDR"] == "127.0.0.1"


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # plain HTTP on a PROXY listener
    b"PROXY TCP4 300.1.1.1 127.0.0.1 1 2\r\n" + get_bytes("/"),
    b"PROXY " + b"9" * 200 + b"\r\n",
    SIGNATURE + b"\x21\x11\x00\x05" + b"\0" * 5 + get_bytes("/"),
    SIGNATURE + b"\x2f\x11\x00\x0c" + b"\0" * 12,  # unknown command
    SIGNATURE + b"\x21\x11\x00\x10" + b"\0" * 12 + b"\x02\x00\x09x" + get_bytes("/"),  # TLV past the end
])
def test_a_malformed_header_closes_that_connection_only(cluster, garbage) -> None:
    ports, process = cluster
    answer = exchange(ports["pp"], garbage)
    assert answer == b""  # closed, no HTTP answer
    env = environ_of(exchange(ports["pp"], b"PROXY TCP4 192.0.2.77 127.0.0.1 5 80\r\n" + get_bytes("/after")))
    assert env["REMOTE_ADDR"] == "192.0.2.77"
    assert split_response(exchange(ports["fe"], get_bytes("/plain")))[0] == 200
    assert "PROXY protocol:" in process.log_path.read_text()
    assert "Traceback" not in process.log_path.read_text()


def test_no_header_in_time_closes_the_connection(cluster) -> None:
    ports, _ = cluster
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", ports["pp"]), timeout=20) as sock:
        sock.sendall(b"PROXY TCP4 192.0")
        assert _read_all(sock) == b""
    assert 1.5 < time.monotonic() - started < 15  # header_timeout = 2s
    env = environ_of(exchange(ports["pp"], b"PROXY TCP4 192.0.2.78 127.0.0.1 5 80\r\n" + get_bytes("/after")))
    assert env["REMOTE_ADDR"] == "192.0.2.78"


def test_pipelined_requests_after_the_header(cluster) -> None:
    ports, _ = cluster
    raw = b"PROXY TCP4 192.0.2.79 127.0.0.1 6 80\r\n" + get_bytes("/one", close=False) + get_bytes("/two")
    answer = exchange(ports["pp"], raw)
    assert answer.count(b"HTTP/1.1 200") == 2 and answer.count(b'"REMOTE_ADDR": "192.0.2.79"') == 2


HAPROXY = """\
global
    log stderr format raw local0 info
defaults
    mode tcp
    log global
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend v1
    bind 127.0.0.1:{h1}
    default_backend v1
backend v1
    server fe 127.0.0.1:{pp} send-proxy
frontend v2
    bind 127.0.0.1:{h2}
    default_backend v2
backend v2
    server fe 127.0.0.1:{pp} send-proxy-v2
"""


def haproxy(tmp_path, pp: int):
    binary = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    assert binary, "haproxy is missing: scripts/install-deps.sh installs it"
    h1, h2 = free_port(), free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(HAPROXY.format(h1=h1, h2=h2, pp=pp))
    return h1, h2, run_process([binary, "-db", "-f", str(config)], cwd=tmp_path, ready_port=h2, name="haproxy",
                               log_path=tmp_path / "haproxy.log")


def test_haproxy_send_proxy_v1_and_v2(cluster, tmp_path) -> None:
    ports, _ = cluster
    h1, h2, running = haproxy(tmp_path, ports["pp"])
    with running:
        for port in (h1, h2):
            for _ in range(3):
                with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
                    client_port = sock.getsockname()[1]
                    sock.sendall(get_bytes("/via-haproxy"))
                    env = environ_of(_read_all(sock))
                # The address HAProxy's client had, not HAProxy's own connection's.
                assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("127.0.0.1", str(client_port))


def make_certificate(directory) -> tuple[str, str]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return str(cert), str(key)


def test_tls_after_the_header_raw_and_through_haproxy(tmp_path) -> None:
    cert, key = make_certificate(tmp_path)
    tls = textwrap.dedent(f"""
        [frontend.tls]
        cert = "{cert}"
        key = "{key}"
    """)
    context = ssl.create_default_context(cafile=cert)
    with edge_cluster(tmp_path, CLUSTER, tls=tls) as (ports, _):
        with socket.create_connection(("127.0.0.1", ports["pp"]), timeout=15) as sock:
            sock.sendall(v2_inet("203.0.113.44", 41000))
            with context.wrap_socket(sock, server_hostname="localhost") as secure:
                secure.sendall(get_bytes("/tls"))
                env = environ_of(_read_all(secure))
        assert (env["REMOTE_ADDR"], env["REMOTE_PORT"], env["HTTPS"]) == ("203.0.113.44", "41000", "on")
        h1, h2, running = haproxy(tmp_path, ports["pp"])
        with running:
            for port in (h1, h2):
                with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
                    client_port = sock.getsockname()[1]
                    with context.wrap_socket(sock, server_hostname="localhost") as secure:
                        secure.sendall(get_bytes("/tls-haproxy"))
                        env = environ_of(_read_all(secure))
                assert (env["REMOTE_PORT"], env["HTTPS"]) == (str(client_port), "on")


def _read_all(sock) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            break
        if not chunk:
            break
        data += chunk
    return data


def test_a_unix_socket_listener_trusting_unix_peers(tmp_path) -> None:
    path = tmp_path / "edge.sock"
    text = """
[frontend]
listen = ["127.0.0.1:{fe}", {{ address = "unix:{sock}", proxy_protocol = true }}]
access_log = false
real_ip_from = ["unix:"]
[upstream.app]
servers = ["127.0.0.1:{p1}"]
[pool.a]
listen = "127.0.0.1:{p1}"
app = "workers.echo:app"
"""
    with edge_cluster(tmp_path, text, sock=str(path)) as (ports, process):
        deadline = time.monotonic() + 30
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        for header, expected in ((v2_inet("192.0.2.200", 42000), ("192.0.2.200", "42000")),
                                 (b"PROXY TCP4 192.0.2.201 127.0.0.1 42001 80\r\n", ("192.0.2.201", "42001")),
                                 (v2_header(0, 0, b""), ("unix:", "0"))):
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(15)
                sock.connect(str(path))
                sock.sendall(header + get_bytes("/unix"))
                env = environ_of(_read_all(sock))
            assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == expected
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(15)
            sock.connect(str(path))
            sock.sendall(get_bytes("/no-header"))
            assert _read_all(sock) == b""
        assert "PROXY protocol: not a PROXY header from a unix socket" in process.log_path.read_text()
