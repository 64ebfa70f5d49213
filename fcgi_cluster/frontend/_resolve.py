"""Servers given by host name, re-resolved: each address a server of its own.

As nginx's ``server NAME resolve`` and HAProxy's ``server-template``: a
server whose address is ``host:port`` with a host name and a ``resolve``
interval (its own or its upstream's) is asked of the DNS resolver every
interval, and each A and AAAA address of the answer becomes a server of the
upstream, with the same port and settings. A changed list goes the way of a
reload: servers still listed keep their ``Server`` and its connections, a
removed one takes no new request and its requests in flight finish. A name
that fails to resolve keeps its last good list; the failure is logged once,
not every interval.

A host name of the form ``_service._proto.name`` is an SRV name (RFC 2782),
as HAProxy's ``server-template``: each target of its records, resolved, is
a server at the record's port (the port written is not used), with the
record's weight (0 counts as 1, capped at ``MAX_WEIGHT``); the targets of
the lowest priority are the primaries, those of higher priorities
``backup`` servers (left out with ``ip_hash`` and ``hash``, which have none).

The DNS messages (RFC 1035; AAAA RFC 3596; SRV) are a small sans-IO codec here:
``encode_query`` and ``decode_answer``; ``query`` sends one over UDP (trio),
again over TCP when the answer is truncated (RFC 7766). The nameservers are
``[frontend] resolver`` (one or more, each asked ``resolver_timeout``, the list
twice), else the ``nameserver`` lines of /etc/resolv.conf with its
``timeout`` and ``attempts`` options, tried in order as glibc does.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import struct
import typing

import trio

from ._balancer import MAX_WEIGHT

__all__ = [
    "DNSError", "Resolutions", "TYPE_A", "TYPE_AAAA", "TYPE_SRV", "decode_answer", "encode_query",
    "expand_config", "query", "resolve_host", "resolve_service", "system_resolvers",
]

log = logging.getLogger("fcgi_cluster.frontend")

TYPE_A = 1
TYPE_AAAA = 28
TYPE_SRV = 33
_CLASS_IN = 1
_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
#: Names that are no host names: the system's own resolution handles them.
_LOCAL = ("localhost",)


class DNSError(Exception):
    """No usable answer: a timeout, an error code (NXDOMAIN...), or a message that does not parse."""


def encode_query(name: str, qtype: int, ident: int) -> bytes:
    """A standard query, recursion desired, for ``name`` of type ``qtype``."""
    labels = [label.encode("idna") for label in name.rstrip(".").split(".")]
    if any(not label or len(label) > 63 for label in labels):
        raise DNSError(f"{name!r} is not a host name")
    qname = b"".join(bytes([len(label)]) + label for label in labels) + b"\0"
    return _HEADER.pack(ident, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", qtype, _CLASS_IN)


def _skip_name(data: bytes, offset: int) -> int:
    """The offset past the (possibly compressed) name at ``offset``."""
    while True:
        if offset >= len(data):
            raise DNSError("truncated name")
        length = data[offset]
        if length & 0xC0 == 0xC0:
            return offset + 2
        if length == 0:
            return offset + 1
        offset += 1 + length


def _read_name(data: bytes, offset: int) -> str:
    """The (possibly compressed) name at ``offset``, dotted."""
    labels: list[str] = []
    for _ in range(128):  # a loop of pointers ends here
        if offset >= len(data):
            raise DNSError("truncated name")
        length = data[offset]
        if length & 0xC0 == 0xC0:
            offset = ((length & 0x3F) << 8) | data[offset + 1]
            continue
        if length == 0:
            return ".".join(labels)
        labels.append(data[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    raise DNSError("name compression loops")


def decode_answer(data: bytes, ident: int, qtype: int) -> list[str] | None:
    """The addresses (text) of type ``qtype`` in an answer to query ``ident``.

    Returns None for a message that is not that answer (another id, not a
    response): the caller waits on for the right one.

    Raises:
        DNSError: the answer is an error (its RCODE) or does not parse.
    """
    if len(data) < _HEADER.size:
        return None
    rid, flags, qdcount, ancount, _, _ = _HEADER.unpack_from(data)
    if rid != ident or not flags & 0x8000:
        return None
    rcode = flags & 0xF
    if rcode:
        names = {1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
        raise DNSError(names.get(rcode, f"RCODE {rcode}"))
    offset = _HEADER.size
    try:
        for _ in range(qdcount):
            offset = _skip_name(data, offset) + 4
        out: list[str] = []
        for _ in range(ancount):
            offset = _skip_name(data, offset)
            rtype, rclass, _ttl, length = _RR.unpack_from(data, offset)
            offset += _RR.size
            rdata = data[offset : offset + length]
            offset += length
            if len(rdata) != length:
                raise DNSError("truncated record")
            if rclass == _CLASS_IN and rtype == qtype == TYPE_A and length == 4:
                out.append(str(ipaddress.IPv4Address(rdata)))
            elif rclass == _CLASS_IN and rtype == qtype == TYPE_AAAA and length == 16:
                out.append(str(ipaddress.IPv6Address(rdata)))
            elif rclass == _CLASS_IN and rtype == qtype == TYPE_SRV and length > 6:
                # In the zone file's order: "priority weight port target".
                priority, weight, port = struct.unpack_from("!HHH", rdata)
                out.append(f"{priority} {weight} {port} {_read_name(data, offset - length + 6)}")
    except (struct.error, IndexError) as exc:
        raise DNSError(f"malformed answer: {exc}") from None
    return out


#: As glibc's resolv.h: at most three nameservers, 5 s a query, 2 rounds.
MAXNS = 3
RES_TIMEOUT = 5.0
RES_ATTEMPTS = 2
_FINAL = ("NXDOMAIN",)  # an answer every nameserver would give: asking the next is no use


def system_resolvers(path: str = "/etc/resolv.conf") -> tuple[str, float, int]:
    """resolv.conf's nameservers (``host:port`` each, space-separated), ``timeout`` and ``attempts``.

    As glibc: the first ``MAXNS`` ``nameserver`` lines, in order (127.0.0.1:53
    when none); ``options timeout:n attempts:n`` (defaults 5 and 2, capped at
    30 and 5), the last one written winning.
    """
    servers: list[str] = []
    timeout, attempts = RES_TIMEOUT, RES_ATTEMPTS
    try:
        with open(path, encoding="utf-8") as file:
            for line in file:
                words = line.split("#", 1)[0].split(";", 1)[0].split()
                if len(words) >= 2 and words[0] == "nameserver" and len(servers) < MAXNS:
                    servers.append(f"[{words[1]}]:53" if ":" in words[1] else f"{words[1]}:53")
                elif words and words[0] == "options":
                    for option in words[1:]:
                        key, _, value = option.partition(":")
                        if key == "timeout" and value.isdigit():
                            timeout = float(min(30, max(1, int(value))))
                        elif key == "attempts" and value.isdigit():
                            attempts = min(5, max(1, int(value)))
    except OSError:
        pass
    return " ".join(servers) or "127.0.0.1:53", timeout, attempts


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _truncated(data: bytes, ident: int) -> bool:
    """True for the response to ``ident`` with the TC bit: the whole answer is over TCP."""
    if len(data) < _HEADER.size:
        return False
    rid, flags = struct.unpack_from("!HH", data)
    return rid == ident and bool(flags & 0x8000) and bool(flags & 0x0200)


async def _receive_exactly(stream: trio.SocketStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        if not chunk:
            raise DNSError("the resolver closed the TCP connection mid-answer")
        data += chunk
    return data


async def _ask_tcp(host: str, port: int, message: bytes, ident: int, qtype: int) -> list[str]:
    """The answer over TCP, each message after its two-byte length (RFC 1035 4.2.2, RFC 7766)."""
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(struct.pack("!H", len(message)) + message)
        while True:
            (length,) = struct.unpack("!H", await _receive_exactly(stream, 2))
            answer = decode_answer(await _receive_exactly(stream, length), ident, qtype)
            if answer is not None:
                return answer


async def _ask(resolver: str, message: bytes, ident: int, qtype: int) -> list[str]:
    """One nameserver's answer over UDP, again over TCP when the UDP answer is truncated."""
    host, port = _split(resolver)
    family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
    with trio.socket.socket(family, trio.socket.SOCK_DGRAM) as sock:
        await sock.connect((host, port))
        await sock.send(message)
        while True:
            data = await sock.recv(65535)
            if _truncated(data, ident):
                return await _ask_tcp(host, port, message, ident, qtype)
            answer = decode_answer(data, ident, qtype)
            if answer is not None:
                return answer


async def query(resolver: str, name: str, qtype: int, timeout: float, attempts: int = 1) -> list[str]:
    """Ask the nameservers of ``resolver`` (``host:port`` each, space-separated) for ``qtype`` records of ``name``.

    As glibc's resolver: each nameserver in order, ``timeout`` seconds each,
    the whole list ``attempts`` times; one that does not answer, refuses or
    fails (SERVFAIL) passes the question on to the next, an NXDOMAIN is the
    answer. A UDP answer with the TC bit is asked again over TCP.

    Raises:
        DNSError: no nameserver answered, or the answer is an error.
    """
    ident = int.from_bytes(os.urandom(2), "big")
    message = encode_query(name, qtype, ident)
    errors: dict[str, str] = {}
    for _ in range(max(1, attempts)):
        for server in resolver.split():
            with trio.move_on_after(timeout):
                try:
                    return await _ask(server, message, ident, qtype)
                except OSError as exc:
                    errors[server] = f"resolver {server}: {exc.strerror or exc}"
                except DNSError as exc:
                    if str(exc) in _FINAL:
                        raise
                    errors[server] = f"resolver {server}: {exc}"
                continue
            errors[server] = f"resolver {server} did not answer within {timeout:g} s"
    raise DNSError("; ".join(errors.values()) or "no resolver")


async def resolve_host(resolver: str, name: str, timeout: float, attempts: int = 1) -> list[str]:
    """Every A and AAAA address of ``name``, sorted (IPv4 first).

    Raises:
        DNSError: neither query succeeded, or the name has no address.
    """
    found: list[str] = []
    errors: list[str] = []
    for qtype in (TYPE_A, TYPE_AAAA):
        try:
            found += await query(resolver, name, qtype, timeout, attempts)
        except DNSError as exc:
            errors.append(str(exc))
    if not found:
        raise DNSError("; ".join(errors) or "no address")
    return sorted(set(found), key=lambda text: (":" in text, ipaddress.ip_address(text)))


async def resolve_service(resolver: str, name: str, timeout: float,
                          attempts: int = 1) -> list[tuple[str, int, int]]:
    """``(ip:port, priority, weight)`` of every target of the SRV records of ``name``, sorted by address.

    An address two records give is kept once, at its lowest priority.

    Raises:
        DNSError: no SRV record, or none of its targets resolves.
    """
    found: dict[str, tuple[int, int]] = {}
    for record in await query(resolver, name, TYPE_SRV, timeout, attempts):
        priority, weight, port, host = record.split(" ", 3)
        try:
            ips = await resolve_host(resolver, host, timeout, attempts)
        except DNSError:
            continue
        for ip in ips:
            address = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
            terms = (int(priority), int(weight))
            if address not in found or terms[0] < found[address][0]:
                found[address] = terms
    if not found:
        raise DNSError("no SRV record with a target that resolves")
    return [(address, *found[address]) for address in sorted(found, key=lambda text: (text.startswith("["), text))]


def _host_name(address: str) -> str | None:
    """The host name of a ``host:port`` address, None for an IP address or a unix socket."""
    if address.startswith("unix:") or ":" not in address:
        return None
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit() or host in _LOCAL:
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    return None


def _interval(spec: typing.Any, upstream: typing.Any) -> float:
    return spec.resolve or upstream.resolve


class Resolutions:
    """The last good addresses of each host name to re-resolve, and its resolving loop."""

    def __init__(self) -> None:
        #: host name -> its addresses, as last resolved.
        self.addresses: dict[str, tuple[str, ...]] = {}
        #: SRV name -> {address: (weight, backup)} of its targets, as last resolved.
        self.terms: dict[str, dict[str, tuple[int, bool]]] = {}
        #: host name -> the error last logged (absent: resolving).
        self._failing: dict[str, str] = {}

    @staticmethod
    def names(config: typing.Any) -> dict[str, float]:
        """Host names to re-resolve in ``config``, with the shortest interval any server asks."""
        out: dict[str, float] = {}
        for upstream in config.upstreams.values():
            for spec in upstream.servers:
                name = _host_name(spec.address)
                every = _interval(spec, upstream)
                if name is not None and every > 0:
                    out[name] = min(every, out.get(name, every))
        return out

    async def refresh(self, name: str, resolver: str, timeout: float, attempts: int = 1) -> bool:
        """Resolve ``name`` once; True when its addresses changed."""
        terms: dict[str, tuple[int, bool]] | None = None
        try:
            # "_service._proto.name" is an SRV name (RFC 2782): its records give
            # ports, priorities and weights too.
            if name.startswith("_"):
                records = await resolve_service(resolver, name, timeout, attempts)
                best = min(priority for _, priority, _ in records)
                terms = {address: (min(MAX_WEIGHT, max(1, weight)), priority > best)
                         for address, priority, weight in records}
                found = tuple(terms)
            else:
                found = tuple(await resolve_host(resolver, name, timeout, attempts))
        except (DNSError, OSError, ValueError) as exc:
            if self._failing.get(name) != str(exc):
                self._failing[name] = str(exc)
                kept = ", ".join(self.addresses.get(name, ())) or "the name as it is"
                log.warning("resolve %s: %s; keeping %s", name, exc, kept)
            return False
        if self._failing.pop(name, None) is not None:
            log.warning("resolve %s: resolves again", name)
        if self.addresses.get(name) == found and self.terms.get(name) == terms:
            return False
        shown = ", ".join(address if terms is None else f"{address} weight {terms[address][0]}"
                          + (" backup" if terms[address][1] else "") for address in found)
        log.info("resolve %s: %s", name, shown)
        self.addresses[name] = found
        if terms is not None:
            self.terms[name] = terms
        return True

    async def run(self, server: typing.Any) -> None:
        """Re-resolve the names of ``server``'s configuration forever, reloading it on a change.

        ``server`` is a ``FrontendServer``: its ``file_config`` gives the
        names, intervals and resolver, read again each round; a new one (a
        reload of the file) has every name resolved again at once.
        ``reload_resolved`` applies a change.
        """
        due: dict[str, float] = {}
        last = None
        while True:
            config = server.file_config
            if config is not last:  # started, or reloaded from the file: every name again now
                last = config
                due.clear()
            fe = config.frontend
            if fe.resolver:
                resolver, timeout, attempts = fe.resolver, fe.resolver_timeout, RES_ATTEMPTS
            else:
                resolver, timeout, attempts = system_resolvers()
            names = self.names(config)
            now = trio.current_time()
            changed = False
            for name, every in names.items():
                if due.get(name, 0.0) <= now:
                    changed |= await self.refresh(name, resolver, timeout, attempts)
                    due[name] = trio.current_time() + every
            if changed:
                server.reload_resolved()
            wake = min((due[name] for name in names), default=trio.current_time() + 1.0)
            # Woken at least every second so a reload's new names are seen soon.
            await trio.sleep_until(min(wake, trio.current_time() + 1.0))

    def expand(self, config: typing.Any) -> typing.Any:
        """``config`` with each re-resolved server replaced by one server per address it resolved to."""
        upstreams = {}
        for up_name, upstream in config.upstreams.items():
            specs = []
            seen: set[str] = set()
            for spec in upstream.servers:
                name = _host_name(spec.address)
                found = self.addresses.get(name, ()) if name is not None and _interval(spec, upstream) > 0 else ()
                if not found:
                    if spec.address not in seen:
                        seen.add(spec.address)
                        specs.append(spec)
                    continue
                port = spec.address.rpartition(":")[2]
                terms = self.terms.get(name) if name.startswith("_") else None
                keyed = upstream.balance in ("ip_hash", "hash")  # no backup servers there
                for ip in found:
                    changes: dict[str, typing.Any] = {}
                    if terms is not None:  # an SRV name's addresses have their ports
                        address = ip
                        weight, backup = terms.get(ip, (spec.weight, False))
                        if backup and keyed:
                            continue
                        changes = {"weight": weight, "backup": backup or spec.backup}
                    else:
                        address = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
                    if address not in seen:
                        seen.add(address)
                        specs.append(dataclasses.replace(spec, address=address, **changes))
            upstreams[up_name] = dataclasses.replace(upstream, servers=tuple(specs))
        return dataclasses.replace(config, upstreams=upstreams)


def expand_config(config: typing.Any, resolutions: Resolutions | None) -> typing.Any:
    """``Resolutions.expand``, or ``config`` itself when nothing was resolved."""
    if resolutions is None or not resolutions.addresses:
        return config
    return resolutions.expand(config)
