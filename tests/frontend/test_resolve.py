"""The DNS codec and the expansion of re-resolved servers (sans-IO), and a query to a real dnsmasq."""

from __future__ import annotations

import ipaddress
import pathlib
import shutil
import socket
import struct
import time

import pytest
import trio

from fcgi_cluster.frontend import ConfigError, parse_config
from fcgi_cluster.frontend._resolve import (
    TYPE_A, TYPE_AAAA, TYPE_SRV, DNSError, Resolutions, decode_answer, encode_query, query,
    resolve_host, resolve_service, system_resolvers,
)
from tests._peers import free_port, run_process


def answer(ident: int, qtype: int, rdatas: list[bytes], rcode: int = 0) -> bytes:
    """An answer as a DNS server writes it: the question, then records whose names point at it."""
    question = encode_query("app.example", qtype, ident)[12:]
    head = struct.pack("!HHHHHH", ident, 0x8180 | rcode, 1, len(rdatas), 0, 0)
    records = b"".join(struct.pack("!HHHIH", 0xC00C, qtype, 1, 30, len(r)) + r for r in rdatas)
    return head + question + records


def test_query_is_a_standard_recursive_question() -> None:
    message = encode_query("app.example", TYPE_AAAA, 0x1234)
    assert message[:12] == struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    assert message[12:] == b"\x03app\x07example\x00" + struct.pack("!HH", TYPE_AAAA, 1)
    with pytest.raises(DNSError):
        encode_query("bad..name", TYPE_A, 1)


def test_answer_gives_the_addresses_of_its_records() -> None:
    v4 = [ipaddress.IPv4Address("10.0.0.7").packed, ipaddress.IPv4Address("10.0.0.8").packed]
    assert decode_answer(answer(7, TYPE_A, v4), 7, TYPE_A) == ["10.0.0.7", "10.0.0.8"]
    v6 = [ipaddress.IPv6Address("fd00::5").packed]
    assert decode_answer(answer(8, TYPE_AAAA, v6), 8, TYPE_AAAA) == ["fd00::5"]
    # Another query's answer, or no answer at all: not this one.
    assert decode_answer(answer(9, TYPE_A, v4), 7, TYPE_A) is None
    assert decode_answer(encode_query("app.example", TYPE_A, 7), 7, TYPE_A) is None
    with pytest.raises(DNSError, match="NXDOMAIN"):
        decode_answer(answer(7, TYPE_A, [], rcode=3), 7, TYPE_A)
    with pytest.raises(DNSError):
        decode_answer(answer(7, TYPE_A, v4)[:-3], 7, TYPE_A)


def test_srv_answer_gives_target_and_port_through_name_compression() -> None:
    # priority 0, weight 5, port 9100, target "w1" then a pointer to "app.example" (offset 16).
    rdata = struct.pack("!HHH", 0, 5, 9100) + b"\x02w1\xc0\x10"
    assert decode_answer(answer(3, TYPE_SRV, [rdata]), 3, TYPE_SRV) == ["0 5 9100 w1.example"]
    # A target that points at itself: an error, not a hang.
    here = len(answer(3, TYPE_SRV, [struct.pack("!HHH", 0, 5, 9100) + b"\xc0\x00"])) - 2
    looping = struct.pack("!HHH", 0, 5, 9100) + struct.pack("!H", 0xC000 | here)
    with pytest.raises(DNSError, match="loops"):
        decode_answer(answer(3, TYPE_SRV, [looping]), 3, TYPE_SRV)


def test_system_resolvers_reads_the_nameservers_in_order_with_timeout_and_attempts(tmp_path: pathlib.Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nsearch example\nnameserver 10.1.2.3\nnameserver fd00::53 # v6\n"
                    "options ndots:2 timeout:3\nnameserver 10.3.3.3\nnameserver 10.4.4.4\noptions attempts:4\n")
    # As glibc: the first three nameservers; options on any line.
    assert system_resolvers(str(conf)) == ("10.1.2.3:53 [fd00::53]:53 10.3.3.3:53", 3.0, 4)
    conf.write_text("nameserver 10.1.2.3\noptions timeout:0 attempts:99\n")
    assert system_resolvers(str(conf)) == ("10.1.2.3:53", 1.0, 5)
    assert system_resolvers(str(tmp_path / "absent")) == ("127.0.0.1:53", 5.0, 2)


def test_a_resolver_list_is_kept_in_order() -> None:
    config = parse_config('[frontend]\nresolver = ["127.0.0.1:5300", "[::1]:5301"]\n'
                          '[upstream.app]\nservers = ["127.0.0.1:9000"]\n', "cluster.toml")
    assert config.frontend.resolver == "127.0.0.1:5300 [::1]:5301"


CONFIG = """
[frontend]
resolver = "127.0.0.1:5353"
[upstream.app]
resolve = "30s"
servers = ["app.example:9000", { address = "static.example:9001", resolve = "5s", weight = 3 }, "127.0.0.1:9002"]
[upstream.other]
servers = ["other.example:9000"]
[[route]]
prefix = "/"
upstream = "app"
"""


def test_names_and_expansion_keep_each_server_settings() -> None:
    config = parse_config(CONFIG)
    assert config.frontend.resolver == "127.0.0.1:5353"
    assert Resolutions.names(config) == {"app.example": 30.0, "static.example": 5.0}
    resolutions = Resolutions()
    resolutions.addresses = {"app.example": ("10.0.0.1", "10.0.0.2"), "static.example": ("fd00::1",),
                             "other.example": ("10.0.0.9",)}
    expanded = resolutions.expand(config)
    servers = expanded.upstreams["app"].servers
    assert [spec.address for spec in servers] == ["10.0.0.1:9000", "10.0.0.2:9000", "[fd00::1]:9001", "127.0.0.1:9002"]
    assert [spec.weight for spec in servers] == [1, 1, 3, 1]
    # Without resolve, a name stays as written.
    assert [spec.address for spec in expanded.upstreams["other"].servers] == ["other.example:9000"]


@pytest.mark.parametrize("balance", ["round_robin", "ip_hash"])
def test_an_srv_expansion_takes_weights_and_priorities_from_the_records(balance: str) -> None:
    config = parse_config(f'[upstream.app]\nbalance = "{balance}"\n'
                          'servers = [{ address = "_fcgi._tcp.app.example:1", resolve = "5s" }]\n'
                          '[[route]]\nprefix = "/"\nupstream = "app"\n')
    resolutions = Resolutions()
    name = "_fcgi._tcp.app.example"
    resolutions.addresses = {name: ("10.0.0.1:9001", "10.0.0.2:9002", "10.0.0.3:9003")}
    resolutions.terms = {name: {"10.0.0.1:9001": (3, False), "10.0.0.2:9002": (1, False), "10.0.0.3:9003": (1, True)}}
    servers = resolutions.expand(config).upstreams["app"].servers
    got = [(spec.address, spec.weight, spec.backup) for spec in servers]
    primaries = [("10.0.0.1:9001", 3, False), ("10.0.0.2:9002", 1, False)]
    # ip_hash has no backup servers: a higher priority's targets are left out.
    assert got == primaries + ([] if balance == "ip_hash" else [("10.0.0.3:9003", 1, True)])


def test_a_bad_resolver_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"cluster.toml:2: frontend.resolver"):
        parse_config('[frontend]\nresolver = "unix:/run/dns"\n[upstream.app]\nservers = ["127.0.0.1:9000"]\n', "cluster.toml")


def test_resolve_host_asks_a_real_dnsmasq(tmp_path: pathlib.Path) -> None:
    binary = shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")
    if binary is None:
        pytest.skip("dnsmasq is not installed (scripts/install-deps.sh installs dnsmasq-base)")
    port = free_port()
    argv = [binary, "--no-daemon", f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces",
            "--no-resolv", "--no-hosts", "--pid-file=", "--user=root", "--log-facility=-",
            "--host-record=two.test,127.0.0.5,::5", "--host-record=one.test,127.0.0.6",
            "--host-record=two.test,127.0.0.4",
            "--srv-host=_fcgi._tcp.svc.test,one.test,9100,0,5", "--srv-host=_fcgi._tcp.svc.test,two.test,9200,10,0"]
    with run_process(argv, ready_port=port, name="dnsmasq"):
        resolver = f"127.0.0.1:{port}"
        assert trio.run(resolve_host, resolver, "two.test", 2.0) == ["127.0.0.4", "127.0.0.5", "::5"]
        assert trio.run(resolve_host, resolver, "one.test", 2.0) == ["127.0.0.6"]
        with pytest.raises(DNSError):
            trio.run(resolve_host, resolver, "missing.test", 2.0)
        assert trio.run(resolve_service, resolver, "_fcgi._tcp.svc.test", 2.0) == [
            ("127.0.0.4:9200", 10, 0), ("127.0.0.5:9200", 10, 0), ("127.0.0.6:9100", 0, 5), ("[::5]:9200", 10, 0),
        ]
        # The lowest priority's targets are the primaries, with the records' weights.
        resolutions = Resolutions()
        assert trio.run(resolutions.refresh, "_fcgi._tcp.svc.test", resolver, 2.0)
        assert resolutions.terms["_fcgi._tcp.svc.test"] == {
            "127.0.0.4:9200": (1, True), "127.0.0.5:9200": (1, True), "127.0.0.6:9100": (5, False),
            "[::5]:9200": (1, True),
        }
        assert not trio.run(resolutions.refresh, "_fcgi._tcp.svc.test", resolver, 2.0)  # unchanged
        with pytest.raises(DNSError):
            trio.run(resolve_service, resolver, "_fcgi._tcp.missing.test", 2.0)
    # Nobody answers: the timeout, not a hang.
    with pytest.raises(DNSError, match="did not answer|refused"):
        trio.run(resolve_host, resolver, "one.test", 0.5)


def test_a_changed_answer_keeps_the_server_objects_of_addresses_still_listed() -> None:
    from fcgi_cluster.frontend._server import FrontendServer

    config = parse_config(
        '[frontend]\naccess_log = false\n[upstream.app]\nresolve = "30s"\nservers = ["app.example:9000"]\n'
    )

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = FrontendServer(config, nursery, state_file="")
            server.resolutions.addresses["app.example"] = ("10.0.0.1", "10.0.0.2")
            server.reload_resolved()
            first = {s.address: s for s in server.upstreams["app"].servers}
            assert sorted(first) == ["10.0.0.1:9000", "10.0.0.2:9000"]
            server.resolutions.addresses["app.example"] = ("10.0.0.2", "10.0.0.3")
            server.reload_resolved()
            second = {s.address: s for s in server.upstreams["app"].servers}
            assert sorted(second) == ["10.0.0.2:9000", "10.0.0.3:9000"]
            assert second["10.0.0.2:9000"] is first["10.0.0.2:9000"]
            assert second["10.0.0.3:9000"] is not first["10.0.0.1:9000"]
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_silent_first_nameserver_passes_on_and_a_truncated_answer_is_asked_over_tcp(tmp_path: pathlib.Path) -> None:
    binary = shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")
    if binary is None:
        pytest.skip("dnsmasq is not installed (scripts/install-deps.sh installs dnsmasq-base)")
    # 60 A records: 60 x 16 bytes do not fit the 512 bytes of a UDP answer.
    many = [f"127.0.1.{i}" for i in range(1, 61)]
    hosts = tmp_path / "hosts"
    hosts.write_text("".join(f"{ip} many.test\n" for ip in many))
    port = free_port()
    argv = [binary, "--no-daemon", f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces",
            "--no-resolv", "--no-hosts", f"--addn-hosts={hosts}", "--pid-file=", "--user=root",
            "--log-queries", "--log-facility=-", "--local=/test/", "--host-record=one.test,127.0.0.6"]
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # reads every question, answers none
    silent.bind(("127.0.0.1", 0))
    try:
        dead = f"127.0.0.1:{silent.getsockname()[1]}"
        with run_process(argv, ready_port=port, name="dnsmasq"):
            live = f"127.0.0.1:{port}"

            async def ask_both() -> tuple[list[str], list[str], float]:
                started = trio.current_time()
                one = await resolve_host(f"{dead} {live}", "one.test", 1.0)
                waited = trio.current_time() - started
                return one, await resolve_host(live, "many.test", 2.0), waited

            one, got, waited = trio.run(ask_both)
            assert one == ["127.0.0.6"]
            assert waited >= 0.9  # the silent one had its timeout before the next was asked
            assert got == sorted(many, key=ipaddress.ip_address)
            # The UDP answer came truncated: the raw answer has the TC bit and fewer records.
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
                raw.settimeout(5)
                raw.sendto(encode_query("many.test", TYPE_A, 7), ("127.0.0.1", port))
                data = raw.recv(65535)
            assert struct.unpack_from("!H", data, 2)[0] & 0x0200
            assert len(data) <= 512
            # An NXDOMAIN of the first is the answer: the second is not asked.
            with pytest.raises(DNSError, match="NXDOMAIN"):
                trio.run(resolve_host, f"{live} {dead}", "missing.test", 1.0)
            # Two rounds through the list when nobody answers: each server timed out twice.
            started = time.monotonic()
            with pytest.raises(DNSError, match="did not answer"):
                trio.run(query, dead, "one.test", TYPE_A, 0.3, 2)
            assert time.monotonic() - started >= 0.55
    finally:
        silent.close()
