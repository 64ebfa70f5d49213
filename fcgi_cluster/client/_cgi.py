"""CGI/1.1 on top of FastCGI, web-server side: the params a request carries
and the header block a response starts with.

Pure functions, no I/O. The params follow nginx's ``fastcgi_params`` file, so
an application sees what it would see behind nginx; the header rules follow
RFC 3875 section 6 as nginx applies them.
"""

from __future__ import annotations

import re
from importlib import metadata
from typing import Iterable, Mapping
from urllib.parse import unquote_to_bytes

from ._errors import UpstreamProtocolError

__all__ = ["MAX_HEADER_SIZE", "DEFAULT_DOCUMENT_ROOT", "parse_cgi_headers", "cgi_params"]

#: Largest CGI header block accepted from a worker, its blank line included. nginx gives the whole
#: response header one buffer (``fastcgi_buffer_size``, 4 or 8 KiB) and answers
#: 502 "upstream sent too big header" past it; 64 KiB is eight times that, room
#: for many large Set-Cookie headers, while a worker that never ends its header
#: block cannot make us hold its whole body in memory.
MAX_HEADER_SIZE = 64 * 1024

#: DOCUMENT_ROOT when the caller gives none: Debian's and Ubuntu's nginx root.
#: WSGI and ASGI workers ignore it; php-fpm builds SCRIPT_FILENAME from it.
DEFAULT_DOCUMENT_ROOT = "/var/www/html"

# RFC 9110 token: the characters allowed in a header field name.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HTTP_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A whole header block of well-formed lines (token, colon, a value without CR
# or NUL, LF or CRLF): checked in one regex call, so the common case needs no
# per-line checks. Anything else takes the line-by-line path, which says what
# is wrong.
_WELL_FORMED_BLOCK = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\r\n\0]*\r?\n)*")


def _software() -> str:
    try:
        return f"fcgi-cluster/{metadata.version('fcgi-cluster')}"
    except metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "fcgi-cluster/dev"


SERVER_SOFTWARE = _software()


def _find_blank_line(data: bytes | bytearray) -> tuple[int, int] | None:
    """(end of the header block, start of the body), or None if not there yet."""
    # CGI scripts end lines with LF or CRLF, and some mix them: accept both.
    if data[:1] == b"\n":
        return 0, 1
    if data[:2] == b"\r\n":
        return 0, 2
    # The usual end first; the other is then looked for only before it, so a
    # first STDOUT record of 64 KiB is not scanned to its end for nothing.
    lf_crlf = data.find(b"\n\r\n")
    lf_lf = data.find(b"\n\n", 0, lf_crlf + 1) if lf_crlf >= 0 else data.find(b"\n\n")
    if lf_lf >= 0:
        return lf_lf + 1, lf_lf + 2
    if lf_crlf >= 0:
        return lf_crlf + 1, lf_crlf + 3
    return None


def parse_cgi_headers(data: bytes | bytearray) -> tuple[int, list[tuple[str, str]], bytes] | None:
    """Parse the CGI header block at the start of a worker's STDOUT.

    ``Status: 404 Not Found`` gives the status (and is not returned as a
    header); a ``Location`` without ``Status`` means 302; otherwise 200. Lines
    may end with LF or CRLF. Call again with more data while this returns None.

    Args:
        data: STDOUT received so far.

    Returns:
        ``(status, headers, rest)`` once the blank line ending the block has
        arrived: ``headers`` as latin-1 strings in the worker's order, ``rest``
        the body bytes that followed. None while the block is incomplete.

    Raises:
        UpstreamProtocolError: the block exceeds ``MAX_HEADER_SIZE``, a line is
            not ``Name: value``, a value holds CR or NUL (a response-splitting
            attempt), or the Status is not a 3-digit code.
    """
    parsed = parse_cgi_head(data)
    if parsed is None:
        return None
    status, headers, rest = parsed
    return status, [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers], rest


def parse_cgi_head(data: bytes | bytearray) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
    """``parse_cgi_headers`` with the headers left as bytes (what a proxy passes on as they are)."""
    found = _find_blank_line(data)
    if found is None:
        # Without its blank line in the first MAX_HEADER_SIZE bytes, the block
        # cannot end within the limit.
        if len(data) >= MAX_HEADER_SIZE:
            raise UpstreamProtocolError(f"CGI header block exceeds {MAX_HEADER_SIZE} bytes")
        return None
    end, body_start = found
    if body_start > MAX_HEADER_SIZE:
        raise UpstreamProtocolError(f"CGI header block exceeds {MAX_HEADER_SIZE} bytes")
    block = bytes(data[:end])
    known = _parsed_heads.get(block)
    if known is not None:
        return known[0], list(known[1]), bytes(data[body_start:])
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = []
    has_location = False
    # The usual block passes one regex, and its lines need no checks of their
    # own (the regex allows CR only right before LF); any other is checked line
    # by line, to say what is wrong.
    checked = _WELL_FORMED_BLOCK.fullmatch(block) is not None
    for line in block.split(b"\n")[:-1]:
        if checked:
            name, _, value = line.partition(b":")
            value = value.strip(b" \t\r")
        else:
            name, value = _checked_line(line)
        lower = name.lower()
        if lower == b"status":
            if status is not None:
                raise UpstreamProtocolError("more than one CGI Status header")
            status = _status_code(value)
            continue
        if lower == b"location":
            has_location = True
        headers.append((name, value))
    if status is None:
        status = 302 if has_location else 200
    if len(_parsed_heads) >= _PARSED_HEADS_SIZE:
        _parsed_heads.clear()
    _parsed_heads[block] = (status, tuple(headers))
    return status, headers, bytes(data[body_start:])


#: Header blocks parsed before, by their bytes: an app sends the same few
#: heads again and again. Emptied when full, so heads that never repeat
#: (a cookie per response) cost memory only up to the bound.
_parsed_heads: dict[bytes, tuple[int, tuple[tuple[bytes, bytes], ...]]] = {}
_PARSED_HEADS_SIZE = 256


def _checked_line(line: bytes) -> tuple[bytes, bytes]:
    if line.endswith(b"\r"):
        line = line[:-1]
    name, sep, value = line.partition(b":")
    if not sep or not _TOKEN.fullmatch(name):
        raise UpstreamProtocolError(f"malformed CGI header line {line[:80]!r}")
    value = value.strip(b" \t")
    if b"\r" in value or b"\0" in value:
        raise UpstreamProtocolError(f"CGI header {name.decode('latin-1')} holds CR or NUL")
    return name, value


def _status_code(value: bytes) -> int:
    code = value[:3]
    if len(code) != 3 or not code.isdigit() or code[:1] == b"0" or value[3:4] not in (b"", b" "):
        raise UpstreamProtocolError(f"CGI Status {value[:40]!r} does not start with a 3-digit code")
    return int(code)


def cgi_params(
    method: str,
    uri: str,
    *,
    headers: Iterable[tuple[str, str]] | Mapping[str, str] = (),
    body_length: int | None = None,
    extra: Mapping[str, str] | None = None,
    remote_addr: str = "127.0.0.1",
    remote_port: int = 0,
    server: tuple[str, int] = ("127.0.0.1", 80),
    scheme: str = "http",
    document_root: str = DEFAULT_DOCUMENT_ROOT,
) -> dict[str, str]:
    """The params nginx's ``fastcgi_params`` would send for one HTTP request.

    SCRIPT_NAME and DOCUMENT_URI are the percent-decoded path, REQUEST_URI
    the URI as given, SCRIPT_FILENAME the document root plus the path, and
    PATH_INFO is empty (no path splitting: that is how CVE-2019-11043 began).
    Each header becomes ``HTTP_<NAME>``, except that Content-Type and
    Content-Length fill CONTENT_TYPE and CONTENT_LENGTH (empty when absent, as
    with nginx), a ``Proxy`` header is dropped (httpoxy: it would become
    HTTP_PROXY, which CGI programs read as their proxy setting), and a name
    holding ``_`` is dropped as nginx does, so ``X_Forwarded_For`` cannot pose
    as ``X-Forwarded-For``. Repeated headers are joined with ", " (Cookie with
    "; ", the one header with its own separator).

    Args:
        method: the HTTP method, e.g. "GET".
        uri: the request target, ``/path?query``.
        headers: (name, value) pairs, or a mapping.
        body_length: bytes of body that will be sent as STDIN; overrides a
            Content-Length header.
        extra: params to add or override last (e.g. ``{"HTTPS": "on"}``).
        remote_addr: the HTTP client's address (REMOTE_ADDR).
        remote_port: the HTTP client's port (REMOTE_PORT).
        server: (SERVER_ADDR and SERVER_NAME, SERVER_PORT) of the HTTP server.
        scheme: REQUEST_SCHEME; "https" also sets HTTPS=on.
        document_root: DOCUMENT_ROOT, the prefix of SCRIPT_FILENAME.

    Returns:
        The params as a new dict of strings.

    Raises:
        ValueError: ``uri`` does not start with "/", its path decodes to
            something other than UTF-8, or it holds a NUL byte.
    """
    if not uri.startswith("/"):
        raise ValueError(f"request URI {uri[:80]!r} must start with '/'")
    path, _, query = uri.partition("?")
    try:
        decoded = unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"request path {path[:80]!r} is not UTF-8 once percent-decoded") from None
    if "\0" in decoded:
        raise ValueError(f"request path {path[:80]!r} holds a NUL byte")
    params = {
        "QUERY_STRING": query,
        "REQUEST_METHOD": method,
        "CONTENT_TYPE": "",
        "CONTENT_LENGTH": "",
        "SCRIPT_NAME": decoded,
        "REQUEST_URI": uri,
        "DOCUMENT_URI": decoded,
        "DOCUMENT_ROOT": document_root,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REQUEST_SCHEME": scheme,
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_SOFTWARE": SERVER_SOFTWARE,
        "REMOTE_ADDR": remote_addr,
        "REMOTE_PORT": str(remote_port),
        "SERVER_ADDR": server[0],
        "SERVER_PORT": str(server[1]),
        "SERVER_NAME": server[0],
        "REDIRECT_STATUS": "200",
        "SCRIPT_FILENAME": document_root.rstrip("/") + decoded,
        "PATH_INFO": "",
    }
    if scheme == "https":
        params["HTTPS"] = "on"
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    joined: dict[str, list[str]] = {}
    for name, value in pairs:
        if "_" in name or not _HTTP_TOKEN.fullmatch(name):
            continue
        key = name.upper().replace("-", "_")
        if key == "PROXY":
            continue
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        joined.setdefault(key, []).append(value)
    for key, values in joined.items():
        params[key] = ("; " if key == "HTTP_COOKIE" else ", ").join(values)
    if body_length is not None:
        params["CONTENT_LENGTH"] = str(body_length)
    if extra:
        params.update(extra)
    return params
