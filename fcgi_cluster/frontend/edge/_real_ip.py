"""The real client address behind a trusted proxy: nginx's realip module, as a pure decision.

Rules (those of nginx's ``set_real_ip_from`` / ``real_ip_header`` /
``real_ip_recursive``):

* Nothing changes unless the connection's peer is in ``real_ip_from``. A
  client that connects directly can send any ``X-Forwarded-For`` it likes:
  it is passed to the worker as HTTP_X_FORWARDED_FOR and changes nothing else.
* ``X-Real-IP``: its value is the address (``addr``, ``addr:port``,
  ``[v6]:port``).
* ``X-Forwarded-For``: every field of that name, in order, as one
  comma-separated list. Not recursive: the last address of the list.
  Recursive: from the right, trusted addresses are skipped; the first one
  that is not trusted is the client's; if all are trusted, the leftmost.
* An element that is not an address (``unknown``, garbage) stops the walk and
  the peer's own address stays, as nginx declines then.
* ``proxy_protocol``: the address in the PROXY header (``_proxy_protocol``),
  taken once per connection when the peer is trusted.
* The port: the one written with the address, else none (REMOTE_PORT is
  empty, as nginx's ``$remote_port`` is then); a PROXY header's port always.

``ClientAddress`` applies the decision to a connection request by request:
the connection's ``remote_addr`` (bytes) is then the real client's, and the
one value everything else reads (REMOTE_ADDR, ``ip_hash``, the access log,
rate limits).
"""

from __future__ import annotations

import ipaddress
import typing
from dataclasses import dataclass, replace

from ...protocol._records import encode_params

__all__ = ["ClientAddress", "RealIP", "REAL_IP_HEADERS", "parse_networks"]

#: The values ``real_ip_header`` takes.
REAL_IP_HEADERS = ("X-Forwarded-For", "X-Real-IP", "proxy_protocol")

#: Entries of real_ip_from that match unix-socket peers (nginx's "unix:").
UNIX = "unix:"

#: Addresses read from one header at most: a client's list is bounded by
#: max_header_size anyway; this bounds the walk over a list of trusted hops.
MAX_HOPS = 64

_Network = typing.Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def parse_networks(items: typing.Iterable[str]) -> tuple[_Network | str, ...]:
    """CIDR networks (and ``"unix:"``) as ``RealIP`` matches them.

    Raises:
        ValueError: an item is neither a network nor "unix:".
    """
    out: list[_Network | str] = []
    for item in items:
        out.append(UNIX if item == UNIX else ipaddress.ip_network(item, strict=False))
    return tuple(out)


def split_address(text: bytes) -> tuple[bytes, bytes] | None:
    """``addr``, ``addr:port``, ``[v6]`` or ``[v6]:port`` as (normalised address, port or b""); None if not one."""
    try:
        value = text.strip().decode("ascii")
    except UnicodeDecodeError:
        return None
    port = ""
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port = rest[1:]
        if rest and not port:
            return None
    elif value.count(":") == 1:
        host, port = value.split(":")
    else:
        host = value
    if port and (not port.isdigit() or not 0 < int(port) < 65536):
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address).encode(), (str(int(port)).encode() if port else b"")


@dataclass(frozen=True, slots=True)
class RealIP:
    """Where a listener finds the real client address, and whom it believes.

    Attributes:
        trusted: networks (and "unix:") whose peers may set the address.
        header: one of ``REAL_IP_HEADERS``.
        recursive: skip trusted addresses from the right of X-Forwarded-For.
    """

    trusted: tuple[_Network | str, ...]
    header: str = "X-Forwarded-For"
    recursive: bool = False

    def is_trusted(self, address: bytes) -> bool:
        """Whether ``address`` (a peer's, as the socket gives it, or b"unix:") is in ``trusted``."""
        if address == b"unix:":
            return UNIX in self.trusted
        try:
            ip = ipaddress.ip_address(address.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(not isinstance(net, str) and ip.version == net.version and ip in net for net in self.trusted)

    @property
    def from_headers(self) -> bool:
        """The address comes from each request's header fields (not the PROXY header)."""
        return self.header != "proxy_protocol"

    def from_request(self, headers: list[tuple[bytes, bytes]]) -> tuple[bytes, bytes] | None:
        """The client's (address, port) from a trusted peer's request header fields; None to keep the peer's.

        Args:
            headers: ``RequestHead.headers`` (names lower-cased).
        """
        name = self.header.lower().encode()
        values = [value for field, value in headers if field == name]
        if not values:
            return None
        if name == b"x-real-ip":
            return split_address(values[-1])
        hops = [hop for hop in b",".join(values).split(b",") if hop.strip()][-MAX_HOPS:]
        if not hops:
            return None
        found: tuple[bytes, bytes] | None = None
        for hop in reversed(hops):
            found = split_address(hop)
            if found is None:
                return None
            if not self.recursive or not self.is_trusted(found[0]):
                return found
        return found  # every hop trusted: the leftmost, as nginx


class ClientAddress:
    """A trusted peer's connection whose client address comes from each request's header fields.

    ``apply`` sets the connection's ``remote_addr``, ``params`` and
    ``base_block`` for the request about to be answered: the header's
    address, or the peer's when the request has none. Made only for trusted
    peers of listeners that read a header: any other connection has none and
    pays nothing.
    """

    __slots__ = ("policy", "peer", "current")

    def __init__(self, policy: RealIP, peer: typing.Any) -> None:
        self.policy = policy
        #: The connection's own ``ConnectionParams``.
        self.peer = peer
        #: The (address, port) the connection's params hold now.
        self.current = (peer.remote_addr, peer.remote_port)

    def apply(self, conn: typing.Any, head: typing.Any) -> None:
        """Make ``conn``'s client address that of ``head``'s header fields (or the peer's)."""
        found = self.policy.from_request(head.headers) or (self.peer.remote_addr, self.peer.remote_port)
        if found == self.current:
            return
        self.current = found
        conn.params = params = replace(self.peer, remote_addr=found[0], remote_port=found[1])
        conn.base_block = encode_params(params.base())
        conn.remote_addr = found[0]
