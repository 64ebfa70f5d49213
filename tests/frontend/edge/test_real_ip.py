"""The real client address decision: nginx's realip rules, with forged and odd header fields."""

from __future__ import annotations

import pytest

from fcgi_cluster.frontend._cgi import ConnectionParams
from fcgi_cluster.frontend.edge._listeners import ListenerPlan, client_params, listener_plans
from fcgi_cluster.frontend.edge._proxy_protocol import ProxyHeader
from fcgi_cluster.frontend.edge._real_ip import ClientAddress, RealIP, parse_networks, split_address
from fcgi_cluster.frontend import parse_config

TRUSTED = parse_networks(["10.0.0.0/8", "2001:db8::/32", "unix:"])


def xff(*values: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"host", b"x")] + [(b"x-forwarded-for", value) for value in values]


def test_trust() -> None:
    policy = RealIP(TRUSTED)
    assert policy.is_trusted(b"10.1.2.3") and policy.is_trusted(b"2001:db8::5") and policy.is_trusted(b"unix:")
    assert policy.is_trusted(b"::ffff:10.0.0.1")  # a v4 peer on a v6 socket
    assert not policy.is_trusted(b"11.0.0.1") and not policy.is_trusted(b"garbage")
    assert not RealIP(parse_networks(["10.0.0.0/8"])).is_trusted(b"unix:")


def test_not_recursive_takes_the_last_address() -> None:
    policy = RealIP(TRUSTED)
    assert policy.from_request(xff(b"203.0.113.9, 10.0.0.2")) == (b"10.0.0.2", b"")
    assert policy.from_request(xff(b"203.0.113.9")) == (b"203.0.113.9", b"")


def test_recursive_skips_trusted_hops_from_the_right() -> None:
    policy = RealIP(TRUSTED, recursive=True)
    assert policy.from_request(xff(b"198.51.100.1, 203.0.113.9, 10.0.0.2, 10.0.0.3")) == (b"203.0.113.9", b"")
    # Several fields are one list, in order.
    assert policy.from_request(xff(b"198.51.100.1, 203.0.113.9", b"10.0.0.2")) == (b"203.0.113.9", b"")
    # Every hop trusted: the leftmost.
    assert policy.from_request(xff(b"10.0.0.9, 10.0.0.2")) == (b"10.0.0.9", b"")


def test_garbage_keeps_the_peer() -> None:
    policy = RealIP(TRUSTED, recursive=True)
    assert policy.from_request(xff(b"203.0.113.9, unknown")) is None
    assert policy.from_request(xff(b"")) is None
    assert policy.from_request(xff(b" , ,")) is None
    assert policy.from_request([(b"host", b"x")]) is None
    assert policy.from_request(xff(b"\xff\xfe")) is None


def test_addresses_with_ports_and_x_real_ip() -> None:
    assert split_address(b"[2001:db8::1]:8080") == (b"2001:db8::1", b"8080")
    assert split_address(b"192.0.2.1:443") == (b"192.0.2.1", b"443")
    assert split_address(b"2001:db8::1") == (b"2001:db8::1", b"")
    assert split_address(b"192.0.2.1:0") is None and split_address(b"[::1]x") is None
    policy = RealIP(TRUSTED, header="X-Real-IP")
    assert policy.from_request([(b"x-real-ip", b"192.0.2.44:5000")]) == (b"192.0.2.44", b"5000")
    assert policy.from_request(xff(b"192.0.2.1")) is None


def peer(addr: bytes) -> ConnectionParams:
    return ConnectionParams(remote_addr=addr, remote_port=b"4000", server_addr=b"10.9.9.9", server_port=b"80",
                            server_name=b"x")


class Conn:
    """What ``ClientAddress.apply`` sets: a connection's address, params and their encoding."""

    def __init__(self, params: ConnectionParams) -> None:
        self.params, self.remote_addr, self.base_block = params, params.remote_addr, b""


def test_an_untrusted_peer_gets_no_client_address_at_all() -> None:
    plan = ListenerPlan(False, RealIP(TRUSTED))
    params, address = client_params(plan, peer(b"203.0.113.50"), None)
    assert address is None and params.remote_addr == b"203.0.113.50"
    assert client_params(ListenerPlan(), peer(b"10.0.0.1"), None) == (peer(b"10.0.0.1"), None)


def test_a_trusted_peer_sets_each_request_and_falls_back_to_itself() -> None:
    params, address = client_params(ListenerPlan(False, RealIP(TRUSTED)), peer(b"10.0.0.1"), None)
    assert isinstance(address, ClientAddress)
    conn = Conn(params)
    address.apply(conn, type("Head", (), {"headers": xff(b"203.0.113.9")})())
    assert conn.remote_addr == b"203.0.113.9" and conn.params.remote_port == b""
    assert b"\x0b\x0bREMOTE_ADDR203.0.113.9" in conn.base_block
    address.apply(conn, type("Head", (), {"headers": []})())
    assert conn.remote_addr == b"10.0.0.1" and conn.params.remote_port == b"4000"


def test_proxy_protocol_address_only_from_a_trusted_peer() -> None:
    plan = ListenerPlan(True, RealIP(TRUSTED, header="proxy_protocol"))
    header = ProxyHeader(2, False, b"192.0.2.5", b"777", b"10.9.9.9", b"443")
    params, address = client_params(plan, peer(b"10.0.0.1"), header)
    assert (params.remote_addr, params.remote_port, address) == (b"192.0.2.5", b"777", None)
    params, _ = client_params(plan, peer(b"203.0.113.50"), header)
    assert params.remote_addr == b"203.0.113.50"
    params, _ = client_params(plan, peer(b"10.0.0.1"), ProxyHeader(2, True))
    assert params.remote_addr == b"10.0.0.1"


def test_listener_plans_inherit_the_frontend() -> None:
    config = parse_config(
        '[frontend]\nlisten = ["127.0.0.1:1", { address = "127.0.0.1:2", proxy_protocol = true },'
        ' { address = "127.0.0.1:3", real_ip_from = [], real_ip_header = "X-Real-IP" }]\n'
        'real_ip_from = ["127.0.0.0/8"]\nreal_ip_recursive = true\n'
        '[upstream.app]\nservers = ["127.0.0.1:9001"]\n'
    )
    plans = listener_plans(config.frontend)
    assert plans[0] == ListenerPlan(False, RealIP(parse_networks(["127.0.0.0/8"]), "X-Forwarded-For", True))
    assert plans[1].proxy_protocol and plans[1].real_ip.header == "proxy_protocol"
    assert plans[2] == ListenerPlan(False, None)


@pytest.mark.parametrize("bad,where", [
    ('real_ip_header = "X-Client"', "frontend.real_ip_header"),
    ('real_ip_from = ["10.0.0.0/33"]', "frontend.real_ip_from"),
    ('listen = [{ address = "127.0.0.1:1", real_ip_header = "proxy_protocol" }]', "frontend.listen[0].real_ip_header"),
    ('listen = [{ address = "127.0.0.1:1", proxy_protocl = true }]', "frontend.listen[0].proxy_protocl"),
    ('listen = [{ proxy_protocol = true }]', "frontend.listen[0]"),
    ('real_ip_recursive = "yes"', "frontend.real_ip_recursive"),
])
def test_bad_settings_name_their_key(bad, where) -> None:
    from fcgi_cluster.frontend._config_model import ConfigError

    with pytest.raises(ConfigError) as info:
        parse_config(f'[frontend]\n{bad}\n[upstream.app]\nservers = ["127.0.0.1:9001"]\n')
    assert where in str(info.value) and ":2:" in str(info.value)
