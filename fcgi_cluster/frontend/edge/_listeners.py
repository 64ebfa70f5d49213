"""Each listener's client-address settings, and the reading of a PROXY header off a new connection.

``listener_plans(frontend)`` makes, once per configuration, what every
accepted connection of a listener needs: whether a PROXY header comes first,
and the ``RealIP`` policy (None when nobody is trusted). ``client_params``
then decides a new connection's addresses: the peer's, the PROXY header's
(``real_ip_header = "proxy_protocol"`` and a trusted peer), or the peer's
for now with a ``ClientAddress`` that reads each request's header fields.

``read_proxy_header`` peeks at the socket and consumes exactly the header's
bytes, so what follows (an HTTP request, a TLS ClientHello) stays in the
socket for the code that serves the connection, whichever it is.

Error handling: a malformed or missing header, or none within
``header_timeout``, closes that connection with a warning naming the peer;
the listener serves on.
"""

from __future__ import annotations

import logging
import socket
import typing
from dataclasses import dataclass, replace

import trio

from ._proxy_protocol import NEED_DATA, V2_MAX, ProxyHeader, ProxyHeaderParser, ProxyProtocolError
from ._real_ip import ClientAddress, RealIP, parse_networks

__all__ = ["ListenerPlan", "accept_proxied", "client_params", "listener_plan", "listener_plans", "read_proxy_header"]

log = logging.getLogger("fcgi_cluster.frontend")


@dataclass(frozen=True, slots=True)
class ListenerPlan:
    """What one listener's connections need from the configuration.

    Attributes:
        proxy_protocol: a PROXY header comes first on every connection.
        real_ip: whom to believe about the client address, and where they
            say it; None when ``real_ip_from`` is empty.
    """

    proxy_protocol: bool = False
    real_ip: RealIP | None = None


def listener_plans(frontend: typing.Any) -> tuple[ListenerPlan, ...]:
    """One ``ListenerPlan`` per ``frontend.listen`` address, in its order."""
    options = frontend.listen_options or [None] * len(frontend.listen)
    plans = []
    for option in options:
        proxy = bool(option is not None and option.proxy_protocol)

        def own(name: str, fallback: typing.Any, option: typing.Any = option) -> typing.Any:
            value = None if option is None else getattr(option, name)
            return fallback if value is None else value

        trusted = own("real_ip_from", frontend.real_ip_from)
        header = own("real_ip_header", "proxy_protocol" if proxy else frontend.real_ip_header)
        policy = RealIP(parse_networks(trusted), header, own("real_ip_recursive", frontend.real_ip_recursive))
        plans.append(ListenerPlan(proxy, policy if trusted else None))
    return tuple(plans)


#: A listener a reload added while the process keeps its old sockets: the
#: [frontend]-wide settings only (a new listener's own need a restart).
_PLAIN = ListenerPlan()


def listener_plan(plans: tuple[ListenerPlan, ...], index: int) -> ListenerPlan:
    """The plan of the ``index``-th listening socket (``_PLAIN`` past the end)."""
    return plans[index] if index < len(plans) else _PLAIN


def client_params(plan: ListenerPlan, params: typing.Any, proxied: ProxyHeader | None) -> tuple[typing.Any, ClientAddress | None]:
    """A new connection's ``ConnectionParams``, and its ``ClientAddress`` when requests' header fields decide.

    Args:
        plan: its listener's.
        params: the addresses of its socket.
        proxied: its PROXY header, if the listener reads one.
    """
    policy = plan.real_ip
    if policy is None or not policy.is_trusted(params.remote_addr):
        return params, None
    if policy.from_headers:
        return params, ClientAddress(policy, params)
    if proxied is None or proxied.local:
        return params, None
    https = params.https or proxied.ssl  # the client spoke TLS to the balancer (PP2_TYPE_SSL)
    return replace(params, remote_addr=proxied.source, remote_port=proxied.source_port, https=https), None


async def read_proxy_header(sock: typing.Any, timeout: float) -> ProxyHeader:
    """Read a connection's PROXY header, and nothing after it.

    Args:
        sock: the connection's trio socket.
        timeout: seconds the whole header may take.

    Raises:
        ProxyProtocolError: the bytes are not a PROXY header (or the peer closed first).
        trio.TooSlowError: ``timeout`` passed first.
        OSError: the connection failed.
    """
    parser = ProxyHeaderParser()
    with trio.fail_after(timeout):
        while True:
            data = await sock.recv(V2_MAX, socket.MSG_PEEK)
            taken = parser.receive_data(data)
            while taken:
                # Those bytes are in the socket already: these reads do not wait.
                taken -= len(await sock.recv(taken))
            event = parser.next_event()
            if event is not NEED_DATA:
                return event  # type: ignore[return-value]


async def accept_proxied(server: typing.Any, stream: trio.SocketStream, take: typing.Callable[[ProxyHeader], None]) -> None:
    """Read a new connection's PROXY header, then hand it on (``take``); close it if the header is bad.

    Args:
        server: the ``FrontendServer`` (its ``frontend`` and ``connections``).
        stream: the accepted connection.
        take: serves the connection on, given its header.
    """
    try:
        header = await read_proxy_header(stream.socket, server.frontend.header_timeout)
    except (ProxyProtocolError, trio.TooSlowError, OSError) as exc:
        try:
            name = stream.socket.getpeername()
            peer = f"{name[0]}:{name[1]}" if isinstance(name, tuple) else "a unix socket"
        except OSError:
            peer = "?"
        reason = "no PROXY header in time" if isinstance(exc, trio.TooSlowError) else str(exc) or type(exc).__name__
        log.warning("PROXY protocol: %s from %s; connection closed", reason, peer)
        server.connections.release()
        await trio.aclose_forcefully(stream)
        return
    take(header)
