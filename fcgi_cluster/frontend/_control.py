"""The control and status listener: ``[frontend] control``, for scripts, deploys and monitoring.

A small HTTP/1.0-style server (one request per connection), apart from the
client listeners, serving only addresses in ``control_allow`` (a unix socket
is guarded by its file's permissions instead):

* ``GET /``: the dashboard (``_dashboard``), a page that refreshes itself.
* ``GET /pools``: every worker server's pool status page, fetched over FastCGI.
* ``GET /status``: the process's status as JSON (``_status``).
* ``GET /metrics``: the same in OpenMetrics text, for Prometheus.
* ``POST /control``: the body is one command line (``_server_states``):
  200 and what was done, or 400/404 and why; the front-end serves on.

With ``control_token_file`` (``_control_token``) every request but the
dashboard's page itself (which holds no figures; it sends the token given
after ``#`` in its address) must carry ``Authorization: Bearer <token>``:
without one it is 401, with a wrong one 403, both logged.

Anything else is 404; a request head over ``MAX_HEAD`` or a body over
``MAX_BODY`` is 400; a peer outside ``control_allow`` gets 403 and nothing
else. No traceback is ever sent.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import typing

import trio

from ._control_token import authorized, read_token
from ._dashboard import PAGE, pool_statuses
from ._server_states import ControlError
from ._status import OPENMETRICS_TYPE, openmetrics, status
from ._status_share import merge

__all__ = ["serve_control", "MAX_HEAD", "MAX_BODY", "READ_TIMEOUT"]

log = logging.getLogger("fcgi_cluster.frontend")

#: Bytes of a control request's head: a request line and a few headers.
MAX_HEAD = 8 * 1024
#: Bytes of a command line.
MAX_BODY = 4 * 1024
#: Seconds a control client may take to send its request.
READ_TIMEOUT = 10.0
#: Bytes, and seconds, read and dropped after an answer before closing (``_linger``).
LINGER_BYTES = 64 * 1024
LINGER_SECONDS = 1.0

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error"}


def _allowed(peer: object, networks: typing.Sequence[typing.Any]) -> bool:
    if not isinstance(peer, tuple):
        return True  # a unix socket: its file's permissions decide
    try:
        address = ipaddress.ip_address(peer[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


async def serve_control(
    sock: socket.socket, server: typing.Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Answer control and status requests on a bound, listening ``sock`` until cancelled.

    Args:
        server: the ``FrontendServer``; its ``control`` runs commands.
    """
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    async with trio.open_nursery() as nursery:
        task_status.started()
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # out of file descriptors, say: wait, do not spin
                log.warning("control listener: accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            nursery.start_soon(_answer, stream, server)


async def _answer(stream: trio.SocketStream, server: typing.Any) -> None:
    try:
        networks = [ipaddress.ip_network(text) for text in server.frontend.control_allow]
        peer = stream.socket.getpeername()
        if not _allowed(peer, networks):
            await _send(stream, 403, "text/plain", "forbidden: this address may not use the control listener\n")
            return
        with trio.move_on_after(READ_TIMEOUT):
            request = await _read(stream)
            if isinstance(request, int):
                await _send(stream, request, "text/plain", f"{_REASONS[request].lower()}\n")
                return
            method, path, body, authorization = request
            refusal = _refusal(server.frontend.control_token_file, path, authorization, peer)
            if refusal is not None:
                await _send(stream, *refusal)
                return
            code, kind, text = await _dispatch(server, method, path, body)
            await _send(stream, code, kind, text)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    except Exception:
        log.exception("control request failed")
        try:
            await _send(stream, 500, "text/plain", "internal error (see the error log)\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
    finally:
        await _linger(stream)
        await trio.aclose_forcefully(stream)


async def _linger(stream: trio.SocketStream) -> None:
    """Read what the peer still sends, briefly, before closing: closing on unread data resets
    the connection, and the peer could lose the answer (nginx's lingering close)."""
    with trio.move_on_after(LINGER_SECONDS):
        try:
            await stream.send_eof()
            left = LINGER_BYTES
            while left > 0:
                chunk = await stream.receive_some(left)
                if not chunk:
                    return
                left -= len(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


def _refusal(token_file: str, path: str, authorization: str | None, peer: object) -> tuple[int, str, str] | None:
    """The answer refusing a request without the control token, None when it may go on."""
    if not token_file or path.partition("?")[0] == "/":
        return None
    try:
        token = read_token(token_file)
    except (OSError, ValueError) as exc:  # changed since the configuration was read
        log.error("control: control_token_file: %s; every control request is refused", exc)
        return 500, "text/plain", "the control token cannot be read (see the error log)\n"
    if authorized(authorization, token):
        return None
    shown = peer[0] if isinstance(peer, tuple) else "the unix socket"
    if authorization is None:
        log.warning("control: %s from %s refused: no token (401)", path, shown)
        return 401, "text/plain", "unauthorized: send Authorization: Bearer <control token>\n"
    log.warning("control: %s from %s refused: wrong token (403)", path, shown)
    return 403, "text/plain", "forbidden: wrong control token\n"


async def _read(stream: trio.SocketStream) -> tuple[str, str, str, str | None] | int:
    """(method, path, body, Authorization header or None) of one request, or the error status to answer."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD:
            return 400
        chunk = await stream.receive_some(MAX_HEAD)
        if not chunk:
            return 400
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return 400
    length = 0
    authorization = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "authorization":
            authorization = value.strip()
        if name.strip().lower() == "content-length":
            if not value.strip().isdigit():
                return 400
            length = int(value.strip())
    if length > MAX_BODY:
        return 400
    while len(body) < length:
        chunk = await stream.receive_some(MAX_BODY)
        if not chunk:
            return 400
        body += chunk
    return parts[0], parts[1], body[:length].decode("utf-8", "replace"), authorization


async def _dispatch(server: typing.Any, method: str, path: str, body: str) -> tuple[int, str, str]:
    path = path.partition("?")[0]
    if path in ("/", "/pools") and method not in ("GET", "HEAD"):
        return 405, "text/plain", "use GET\n"
    if path == "/":
        return 200, "text/html; charset=utf-8", PAGE
    if path == "/pools":
        return 200, "application/json", json.dumps(await pool_statuses(server), indent=1) + "\n"
    if path in ("/status", "/metrics"):
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", "use GET\n"
        report = status(server, server.states)
        if server.status_share is not None:
            report = merge(report, server.status_share.gather())
        if path == "/status":
            return 200, "application/json", json.dumps(report, indent=1) + "\n"
        return 200, OPENMETRICS_TYPE, openmetrics(report)
    if path == "/control":
        if method != "POST":
            return 405, "text/plain", "use POST with the command as the body\n"
        try:
            return 200, "text/plain", server.control(body.strip()) + "\n"
        except ControlError as exc:
            return exc.status, "text/plain", f"{exc}\n"
    return 404, "text/plain", "not found: try /, /status, /metrics, /pools or POST /control\n"


async def _send(stream: trio.SocketStream, code: int, kind: str, text: str) -> None:
    body = text.encode()
    challenge = 'WWW-Authenticate: Bearer realm="fcgi-cluster control"\r\n' if code == 401 else ""
    head = (f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}\r\nContent-Type: {kind}\r\n{challenge}"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n")
    await stream.send_all(head.encode() + body)
