"""HTTP/2 at the front door, through a real front-end process and a real worker, with real clients.

Two front-ends share one echo worker: one with TLS (HTTP/2 offered by ALPN,
the default) and one cleartext with ``http2 = true`` (h2c by its preface, and
HTTP/1.1 on the same port). The clients are curl (``--http2``,
``--http2-prior-knowledge``), h2load (nghttp2) for a bounded load, httpx and
python-hyper's ``h2`` driven by hand over a socket.
"""

from __future__ import annotations

import contextlib
import hashlib
import gzip
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import textwrap
import time
from collections.abc import Iterator

import h2.connection
import h2.config
import h2.events
import h2.errors
import h2.exceptions
import h2.settings
import httpx
import pytest

from tests._peers import LOOPBACK, REPO_ROOT, free_port, python_executable, run_process

from ._worker import worker_process

pytestmark = pytest.mark.e2e

#: Generous: the machine is shared, the assertions are about behaviour.
TIMEOUT = 30


def make_certificate(directory: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A self-signed certificate for 127.0.0.1, made by the openssl command."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


@contextlib.contextmanager
def frontend(directory: pathlib.Path, name: str, worker: int, frontend_extra: str) -> Iterator[int]:
    port = free_port()
    www = directory / "www"
    config = directory / f"{name}.toml"
    config.write_text(textwrap.dedent(f"""\
        [frontend]
        listen = "{LOOPBACK}:{port}"
        processes = 1
        access_log = "{directory / (name + '.access.log')}"
        """) + textwrap.dedent(frontend_extra) + textwrap.dedent(f"""\
        [upstream.app]
        servers = ["{LOOPBACK}:{worker}"]
        [[route]]
        prefix = "/static/"
        static = "{www}"
        [[route]]
        prefix = "/"
        upstream = "app"
        """))
    argv = [python_executable(), "-m", "fcgi_cluster.cli", "frontend", "-c", str(config)]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    with run_process(argv, cwd=REPO_ROOT, env=env, ready_port=port, name=f"fcgi-frontend-{name}",
                     log_path=directory / f"{name}.log"):
        yield port


class Site:
    def __init__(self, directory: pathlib.Path, tls_port: int, h2c_port: int, h1_only_port: int) -> None:
        self.directory = directory
        self.tls_port = tls_port
        self.h2c_port = h2c_port
        self.h1_only_port = h1_only_port

    def log(self, name: str) -> str:
        return (self.directory / f"{name}.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    directory = tmp_path_factory.mktemp("http2")
    (directory / "www" / "static").mkdir(parents=True)
    for where in ("www", "www/static"):  # the route's directory, whether or not it strips the prefix
        (directory / where / "page.txt").write_bytes(b"static over two\n" * 1000)
    cert, key = make_certificate(directory)
    with worker_process("workers.echo:app") as (worker, _):
        tls = f'[frontend.tls]\ncert = "{cert}"\nkey = "{key}"\n'
        with frontend(directory, "tls", worker, tls) as tls_port, \
                frontend(directory, "h2c", worker, "http2 = true\n") as h2c_port, \
                frontend(directory, "h1", worker, "http2 = false\n" + tls) as h1_only_port:
            yield Site(directory, tls_port, h2c_port, h1_only_port)
    # Whatever the clients and attacks did, nothing was a failure of ours.
    for name in ("tls", "h2c", "h1"):
        assert "Traceback" not in (directory / f"{name}.log").read_text(), name


def curl(*args: str) -> tuple[str, bytes]:
    """curl's ``%{http_version}`` and the body it got."""
    marker = b"\n--version:"
    done = subprocess.run(["curl", "-sS", "-k", "--max-time", str(TIMEOUT), "-w", marker.decode() + "%{http_version}",
                           *args], capture_output=True, check=True, timeout=TIMEOUT + 5)
    body, _, version = done.stdout.rpartition(marker)
    return version.decode(), body


# --- real clients ------------------------------------------------------------------------


def test_curl_over_tls_negotiates_h2_and_the_worker_sees_http_2(site: Site) -> None:
    version, body = curl("--http2", f"https://127.0.0.1:{site.tls_port}/app/x?y=1", "-H", "X-Thing: one")
    assert version == "2"
    environ = json.loads(body)["environ"]
    assert environ["SERVER_PROTOCOL"] == "HTTP/2.0"
    assert environ["HTTPS"] == "on"
    assert environ["REQUEST_URI"] == "/app/x?y=1"
    assert environ["QUERY_STRING"] == "y=1"
    assert environ["HTTP_X_THING"] == "one"
    assert environ["HTTP_HOST"] == f"127.0.0.1:{site.tls_port}"
    # A client without h2 in its ALPN gets HTTP/1.1 on the same port.
    version, body = curl("--http1.1", f"https://127.0.0.1:{site.tls_port}/again")
    assert version == "1.1"
    assert json.loads(body)["environ"]["SERVER_PROTOCOL"] == "HTTP/1.1"
    log = (site.directory / "tls.access.log").read_text()
    assert '"GET /app/x?y=1 HTTP/2.0" 200' in log


def test_http2_false_offers_only_http1_over_tls(site: Site) -> None:
    version, body = curl("--http2", f"https://127.0.0.1:{site.h1_only_port}/off")
    assert version == "1.1"
    assert json.loads(body)["environ"]["SERVER_PROTOCOL"] == "HTTP/1.1"


def test_limits_of_the_http1_side_hold_per_stream(site: Site, tmp_path: pathlib.Path) -> None:
    (tmp_path / "big.bin").write_bytes(b"z" * (1024 * 1024 + 1))
    done = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code} %{http_version}",
                           "--data-binary", f"@{tmp_path / 'big.bin'}", f"http://127.0.0.1:{site.h2c_port}/too-big"],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.stdout == "413 2"
    done = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}",
                           *[arg for i in range(101) for arg in ("-H", f"x-f{i}: v")],
                           f"http://127.0.0.1:{site.h2c_port}/many"], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.stdout == "431"
    neighbour_served(site.h2c_port)


def test_h2c_prior_knowledge_and_http1_share_a_cleartext_port(site: Site) -> None:
    version, body = curl("--http2-prior-knowledge", f"http://127.0.0.1:{site.h2c_port}/h2c")
    assert version == "2"
    assert json.loads(body)["environ"]["SERVER_PROTOCOL"] == "HTTP/2.0"
    assert "HTTPS" not in json.loads(body)["environ"]
    version, body = curl(f"http://127.0.0.1:{site.h2c_port}/plain")
    assert version == "1.1"
    assert json.loads(body)["environ"]["SERVER_PROTOCOL"] == "HTTP/1.1"


def test_request_body_static_file_and_large_answer_over_h2(site: Site, tmp_path: pathlib.Path) -> None:
    upload = os.urandom(300_000)
    (tmp_path / "up.bin").write_bytes(upload)
    version, body = curl("--http2-prior-knowledge", "--data-binary", f"@{tmp_path / 'up.bin'}",
                         f"http://127.0.0.1:{site.h2c_port}/upload")
    answer = json.loads(body)
    assert version == "2"
    assert answer["body_length"] == len(upload)
    assert answer["body_sha256"] == hashlib.sha256(upload).hexdigest()
    assert answer["environ"]["CONTENT_LENGTH"] == str(len(upload))
    version, body = curl("--http2", f"https://127.0.0.1:{site.tls_port}/static/page.txt")
    assert (version, body) == ("2", b"static over two\n" * 1000)
    version, body = curl("--http2", f"https://127.0.0.1:{site.tls_port}/big?size=3000000")
    assert version == "2"
    assert body == b"x" * 3_000_000


def test_httpx_multiplexes_concurrent_streams_on_one_connection(site: Site) -> None:
    import asyncio

    # The async client: its sync one shares an ssl socket between threads, which OpenSSL
    # does not allow (writes then fail with "EOF occurred in violation of protocol").
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(http2=True, verify=False, timeout=TIMEOUT) as client:
            first = await client.get(f"https://127.0.0.1:{site.tls_port}/first")
            assert first.http_version == "HTTP/2"
            return await asyncio.gather(*[client.get(f"https://127.0.0.1:{site.tls_port}/n?i={i}&sleep_ms=50")
                                          for i in range(16)])

    answers = asyncio.run(run())
    assert [a.status_code for a in answers] == [200] * 16
    assert sorted(json.loads(a.content)["environ"]["QUERY_STRING"] for a in answers) == sorted(
        f"i={i}&sleep_ms=50" for i in range(16))
    assert {a.http_version for a in answers} == {"HTTP/2"}
    missing = httpx.get(f"https://127.0.0.1:{site.tls_port}/static/none.txt", verify=False, timeout=TIMEOUT)
    assert missing.status_code == 404


def test_h2load_bounded_load_has_no_failures(site: Site) -> None:
    h2load = shutil.which("h2load")
    assert h2load, "h2load missing: scripts/install-deps.sh installs nghttp2-client"
    done = subprocess.run([h2load, "-n", "2000", "-c", "10", "-m", "10", f"http://127.0.0.1:{site.h2c_port}/load"],
                          capture_output=True, text=True, timeout=120)
    print(done.stdout)
    found = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed", done.stdout)
    assert found, done.stdout + done.stderr
    assert found.groups() == ("2000", "2000", "2000", "2000", "0")
    assert re.search(r"status codes: (\d+) 2xx", done.stdout).group(1) == "2000"


# --- a client driven by hand ---------------------------------------------------------------


class RawClient:
    """python-hyper's ``h2`` client side over a plain socket (h2c), for what real clients will not do."""

    def __init__(self, port: int, settings: dict[int, int] | None = None) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=TIMEOUT)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        if settings:
            self.h2.update_settings(settings)
        self.flush()
        self.port = port
        #: Streams whose DATA ``events`` gives window back for as it arrives.
        self.acking: set[int] = set()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def headers(self, path: str = "/", end: bool = True, extra: list[tuple[bytes, bytes]] = ()) -> int:
        stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream_id, [(b":method", b"GET"), (b":path", path.encode()), (b":scheme", b"http"),
                                         (b":authority", b"127.0.0.1"), *extra], end_stream=end)
        return stream_id

    def events(self, until: type, deadline: float = TIMEOUT) -> list[h2.events.Event]:
        """Read until an event of type ``until`` arrives, the peer closes, or the deadline passes."""
        got: list[h2.events.Event] = []
        stop = time.monotonic() + deadline
        while time.monotonic() < stop:
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not data:
                break
            try:
                new = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError:
                break
            got.extend(new)
            for event in new:
                if isinstance(event, h2.events.DataReceived) and event.stream_id in self.acking:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            self.flush()
            if any(isinstance(e, until) for e in new):
                break
        return got

    def close(self) -> None:
        self.sock.close()


def neighbour_served(port: int) -> None:
    version, body = curl("--http2-prior-knowledge", f"http://127.0.0.1:{port}/neighbour")
    assert version == "2"
    assert json.loads(body)["environ"]["REQUEST_URI"] == "/neighbour"


def test_a_closed_stream_window_holds_only_its_own_answer(site: Site) -> None:
    client = RawClient(site.h2c_port, {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1024})
    try:
        client.events(h2.events.SettingsAcknowledged)
        blocked = client.headers("/blocked?size=2000000")
        client.flush()
        # The blocked stream gets its 1 KiB; a second stream on the same connection is answered whole.
        other = client.headers("/other?size=200000")
        client.acking.add(other)
        client.flush()
        received = {blocked: 0, other: 0}
        ended: set[int] = set()
        stop = time.monotonic() + TIMEOUT
        while other not in ended and time.monotonic() < stop:
            for event in client.events(h2.events.StreamEnded, 5):
                if isinstance(event, h2.events.DataReceived):
                    received[event.stream_id] += len(event.data)
                if isinstance(event, h2.events.StreamEnded):
                    ended.add(event.stream_id)
            client.flush()
        assert other in ended and received[other] == 200_000
        assert blocked not in ended and received[blocked] <= 1024
        # Opening the window lets the blocked answer finish.
        client.acking.add(blocked)
        client.h2.increment_flow_control_window(4_000_000, blocked)
        client.flush()
        stop = time.monotonic() + TIMEOUT
        while blocked not in ended and time.monotonic() < stop:
            for event in client.events(h2.events.StreamEnded, 5):
                if isinstance(event, h2.events.DataReceived):
                    received[blocked] += len(event.data)
                if isinstance(event, h2.events.StreamEnded):
                    ended.add(event.stream_id)
            client.flush()
        assert received[blocked] == 2_000_000
    finally:
        client.close()


# --- the known attacks, each against the real process ------------------------------------


def goaway_of(client: RawClient) -> int | None:
    """The error code of the GOAWAY the front-end sent, None if it sent none before closing."""
    for event in client.events(h2.events.ConnectionTerminated):
        if isinstance(event, h2.events.ConnectionTerminated):
            return event.error_code
    return None


def send_raw(client: RawClient, *frames: object) -> None:
    try:
        client.sock.sendall(b"".join(frame.serialize() for frame in frames))  # type: ignore[attr-defined]
    except (BrokenPipeError, ConnectionResetError):
        pass  # the front-end closed already: its GOAWAY is read next


def attack(site: Site, run, reason: str) -> None:
    """Run ``run(client)`` on a fresh connection: GOAWAY ENHANCE_YOUR_CALM, logged, and a neighbour still served."""
    neighbour = RawClient(site.h2c_port)
    client = RawClient(site.h2c_port)
    try:
        client.events(h2.events.SettingsAcknowledged)
        run(client)
        assert goaway_of(client) == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        # A connection opened before the attack is served on, and so is a new one.
        neighbour.events(h2.events.SettingsAcknowledged)
        stream = neighbour.headers("/still")
        neighbour.flush()
        events = neighbour.events(h2.events.StreamEnded)
        assert any(isinstance(e, h2.events.ResponseReceived) and (b":status", b"200") in e.headers and
                   e.stream_id == stream for e in events)
        neighbour_served(site.h2c_port)
    finally:
        client.close()
        neighbour.close()
    stop = time.monotonic() + TIMEOUT
    while reason not in site.log("h2c") and time.monotonic() < stop:
        time.sleep(0.1)
    assert f"GOAWAY ENHANCE_YOUR_CALM: {reason}" in site.log("h2c")


def test_rapid_reset_is_a_goaway(site: Site) -> None:
    def run(client: RawClient) -> None:
        for _ in range(400):
            stream = client.headers("/reset?sleep_ms=100")
            client.h2.reset_stream(stream)
            try:
                client.flush()
            except (BrokenPipeError, ConnectionResetError):
                return

    attack(site, run, "too many stream resets")


def test_continuation_flood_is_a_goaway_before_decoding(site: Site) -> None:
    from hyperframe.frame import ContinuationFrame, HeadersFrame

    def run(client: RawClient) -> None:
        block = client.h2.encoder.encode([(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"),
                                          (b":authority", b"x")])
        frames = [HeadersFrame(1, data=block)]  # no END_HEADERS: the block goes on
        frames += [ContinuationFrame(1, data=b"\x40\x01a\x01b" * 3000) for _ in range(40)]
        send_raw(client, *frames)

    attack(site, run, "header block too large")


def test_hpack_bomb_is_a_goaway(site: Site) -> None:
    def run(client: RawClient) -> None:
        # One 4 KiB field in the dynamic table, then referenced in one byte each: ~5 KiB on the
        # wire, 400 KiB decoded.
        client.headers("/bomb", extra=[(b"x-bomb", b"a" * 4000)] * 100)
        client.flush()

    attack(site, run, "decoded header list too large")


def test_ping_flood_is_a_goaway(site: Site) -> None:
    def run(client: RawClient) -> None:
        for i in range(300):
            client.h2.ping(b"%08d" % i)
        client.flush()

    attack(site, run, "PING flood")


def test_settings_flood_is_a_goaway(site: Site) -> None:
    from hyperframe.frame import SettingsFrame

    def run(client: RawClient) -> None:
        send_raw(client, *[SettingsFrame(0, settings={h2.settings.SettingCodes.ENABLE_PUSH: 0}) for _ in range(300)])

    attack(site, run, "SETTINGS flood")


def test_streams_past_the_concurrency_limit_are_refused_and_the_rest_served(site: Site) -> None:
    client = RawClient(site.h2c_port)
    try:
        events = client.events(h2.events.SettingsAcknowledged)
        limit = next(e for e in events if isinstance(e, h2.events.RemoteSettingsChanged)).changed_settings[
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS].new_value
        assert limit == 128
        # The client side's h2 keeps to the limit; write the extra stream's HEADERS past it by hand.
        streams = [client.headers(f"/slow?sleep_ms=1500&i={i}") for i in range(limit)]
        client.flush()
        from hyperframe.frame import HeadersFrame

        extra = HeadersFrame(streams[-1] + 2, data=client.h2.encoder.encode(
            [(b":method", b"GET"), (b":path", b"/extra"), (b":scheme", b"http"), (b":authority", b"x")]),
            flags={"END_HEADERS", "END_STREAM"})
        send_raw(client, extra)
        got = client.events(h2.events.ConnectionTerminated, 10)
        terminated = [e for e in got if isinstance(e, h2.events.ConnectionTerminated)]
        assert terminated and terminated[0].error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    finally:
        client.close()
    neighbour_served(site.h2c_port)


def test_a_reload_reaches_new_streams_of_a_connection_kept_open(tmp_path: pathlib.Path) -> None:
    import signal

    def mark_of(client: RawClient) -> str | None:
        stream = client.headers("/r")
        client.flush()
        body = b""
        for event in client.events(h2.events.StreamEnded):
            if isinstance(event, h2.events.DataReceived) and event.stream_id == stream:
                body += event.data
        return json.loads(body)["environ"].get("ROUTE_MARK")

    (tmp_path / "www").mkdir()
    with worker_process("workers.echo:app") as (worker, _), \
            frontend(tmp_path, "reload", worker, "http2 = true\n") as port:
        config = tmp_path / "reload.toml"
        client = RawClient(port)  # one connection, kept over the reload
        try:
            client.events(h2.events.SettingsAcknowledged)
            assert mark_of(client) is None
            config.write_text(config.read_text().replace('upstream = "app"\n', 'upstream = "app"\nparams = { ROUTE_MARK = "two" }\n'))
            pid = int(re.search(r"frontend\[(\d+)\]", (tmp_path / "reload.log").read_text()).group(1))
            os.kill(pid, signal.SIGHUP)
            stop = time.monotonic() + TIMEOUT
            mark = None
            while mark is None and time.monotonic() < stop:
                time.sleep(0.1)
                mark = mark_of(client)
            assert mark == "two"
        finally:
            client.close()


def test_an_unfinished_http_1_1_head_on_an_h2c_listener_gets_header_timeout_then_408(tmp_path: pathlib.Path) -> None:
    # The bytes read to tell HTTP/1.1 from the h2c preface are a head begun:
    # header_timeout, then 408, as on a listener without HTTP/2.
    (tmp_path / "www").mkdir()
    with frontend(tmp_path, "pieces", free_port(), 'http2 = true\nheader_timeout = "1s"\n') as port:
        with socket.create_connection((LOOPBACK, port), timeout=TIMEOUT) as sock:
            sock.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\n")  # and the rest never comes
            started = time.monotonic()
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert time.monotonic() - started < TIMEOUT


def test_edge_features_apply_to_streams_as_to_http_1_1(tmp_path: pathlib.Path) -> None:
    """A trusted proxy's X-Forwarded-For and a compressed route, over h2c."""
    port = free_port()
    config = tmp_path / "edge.toml"
    with worker_process("workers.echo:app") as (worker, _):
        config.write_text(textwrap.dedent(f"""\
            [frontend]
            listen = "{LOOPBACK}:{port}"
            processes = 1
            access_log = false
            http2 = true
            real_ip_from = ["127.0.0.0/8"]
            [upstream.app]
            servers = ["{LOOPBACK}:{worker}"]
            [[route]]
            prefix = "/"
            upstream = "app"
            gzip = true
            """))
        argv = [python_executable(), "-m", "fcgi_cluster.cli", "frontend", "-c", str(config)]
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        with run_process(argv, cwd=REPO_ROOT, env=env, ready_port=port, name="fcgi-frontend-h2-edge",
                         log_path=tmp_path / "edge.log"):
            version, body = curl("--http2-prior-knowledge", "-H", "X-Forwarded-For: 203.0.113.9",
                                 f"http://127.0.0.1:{port}/who")
            assert version == "2" and json.loads(body)["environ"]["REMOTE_ADDR"] == "203.0.113.9"
            version, body = curl("--http2-prior-knowledge", "-H", "Accept-Encoding: gzip",
                                 f"http://127.0.0.1:{port}/zipped")
            assert version == "2"
            assert json.loads(gzip.decompress(body))["environ"]["REQUEST_URI"] == "/zipped"
