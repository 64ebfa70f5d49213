"""HTTP request -> FastCGI params, as nginx's ``fastcgi_params`` builds them.

Pure functions over bytes, no I/O. The rules, and why:

* The path is percent-decoded once and normalised (``//`` merged, ``.`` and
  ``..`` resolved) before anything uses it, as nginx does for ``$uri``: routes
  match it, SCRIPT_NAME and DOCUMENT_URI carry it, SCRIPT_FILENAME is the
  route's root plus it. A ``..`` that would climb above ``/`` is refused, so
  SCRIPT_FILENAME never leaves the document root.
* A decoded path holding a control character (NUL, CR, LF, ...) is refused.
  CVE-2019-11043 began with a ``%0a`` that made nginx's
  ``fastcgi_split_path_info`` regex fail and hand php-fpm an empty PATH_INFO;
  no real URL carries one, so refusing them closes the whole class.
  ``split_path_info`` is also matched with DOTALL, so ``.`` cannot stop at one.
* Each header becomes ``HTTP_<NAME>``, except Content-Type and Content-Length
  (CONTENT_TYPE, CONTENT_LENGTH). A ``Proxy`` header is dropped (httpoxy: it
  would become HTTP_PROXY, which CGI programs take as their proxy setting),
  and so is Transfer-Encoding (the worker gets the body already decoded; an
  app that saw "chunked" might decode it again). A name holding ``_`` is
  dropped unless ``underscores_in_headers`` is on, as nginx does: otherwise
  ``X_Forwarded_For`` could pose as ``X-Forwarded-For``. Repeated headers are joined with ", " (Cookie with
  "; ", the one header with its own separator).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from ..client._cgi import SERVER_SOFTWARE
from ..protocol import encode_pairs

__all__ = ["BadPath", "ConnectionParams", "encode_line_params", "header_params", "line_params", "normalize_path",
           "split_path", "request_params"]

#: Distinct header names whose HTTP_* key is remembered. Real traffic uses a
#: few dozen names; the cap keeps a client that invents a new name per request
#: from growing the table without bound.
_HEADER_KEY_CACHE_SIZE = 1024

_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


class BadPath(ValueError):
    """The request path cannot be mapped safely: the client gets 400."""


@dataclass(frozen=True, slots=True)
class ConnectionParams:
    """The params fixed for a whole client connection, built once when it is accepted."""

    remote_addr: bytes
    remote_port: bytes
    server_addr: bytes
    server_port: bytes
    server_name: bytes
    https: bool = False

    def base(self) -> dict[bytes, bytes]:
        """The connection's part of every request's params."""
        params = {
            b"GATEWAY_INTERFACE": b"CGI/1.1",
            b"SERVER_SOFTWARE": _SOFTWARE,
            b"REMOTE_ADDR": self.remote_addr,
            b"REMOTE_PORT": self.remote_port,
            b"SERVER_ADDR": self.server_addr,
            b"SERVER_PORT": self.server_port,
            b"SERVER_NAME": self.server_name,
            b"REQUEST_SCHEME": b"https" if self.https else b"http",
            # PHP built with force-cgi-redirect refuses to run without it.
            b"REDIRECT_STATUS": b"200",
        }
        if self.https:
            params[b"HTTPS"] = b"on"
        return params


_SOFTWARE = SERVER_SOFTWARE.encode("ascii")


def normalize_path(raw: bytes) -> bytes:
    """Percent-decode and normalise a request path, as nginx makes ``$uri``.

    Args:
        raw: the path part of the request target, still percent-encoded.

    Returns:
        The decoded path, starting with "/", with ``//`` merged and ``.``/``..``
        segments resolved.

    Raises:
        BadPath: the path does not start with "/", holds a control character
            once decoded, or climbs above "/".
    """
    if raw[:1] != b"/":
        raise BadPath("the request path must start with '/'")
    path = unquote_to_bytes(raw) if b"%" in raw else raw
    if _CONTROL.search(path):
        raise BadPath("the request path holds a control character")
    if b"/." not in path and b"//" not in path:
        return path
    out: list[bytes] = []
    segments = path.split(b"/")
    for segment in segments[1:-1]:
        if segment == b"..":
            if not out:
                raise BadPath("the request path climbs above the root")
            out.pop()
        elif segment and segment != b".":
            out.append(segment)
    last = segments[-1]
    if last == b"..":
        if not out:
            raise BadPath("the request path climbs above the root")
        out.pop()
        last = b""
    elif last == b".":
        last = b""
    out.append(last)
    return b"/" + b"/".join(out)


def split_path(path: bytes, pattern: re.Pattern[str] | None, index: bytes = b"") -> tuple[bytes, bytes]:
    """(SCRIPT_NAME, PATH_INFO) for a normalised path, as ``fastcgi_split_path_info`` does.

    Args:
        path: from ``normalize_path``.
        pattern: a regex with two groups (script, path info), or None for no
            split (the whole path is the script, PATH_INFO is empty).
        index: ``fastcgi_index``: appended to a script name that ends in "/".

    Returns:
        The two byte strings. When the pattern does not match, the whole path
        is the script name, as nginx does.
    """
    script, info = path, b""
    if pattern is not None:
        text = path.decode("utf-8", "surrogateescape")
        match = pattern.match(text)
        if match is not None:
            # An optional group that did not take part is None: empty, as nginx has it.
            script = (match.group(1) or "").encode("utf-8", "surrogateescape")
            info = (match.group(2) or "").encode("utf-8", "surrogateescape")
    if index and script.endswith(b"/"):
        script += index
    return script, info


_header_keys: dict[bytes, bytes | None] = {}


def _header_key(name: bytes, underscores: bool) -> bytes | None:
    """The param name for a lower-cased header name, or None to drop the header."""
    if underscores:
        return _key_for(name)
    key = _header_keys.get(name, b"")
    if key == b"":
        key = None if b"_" in name else _key_for(name)
        if len(_header_keys) < _HEADER_KEY_CACHE_SIZE:
            _header_keys[name] = key
    return key


def _key_for(name: bytes) -> bytes | None:
    upper = name.upper().replace(b"-", b"_")
    if upper == b"PROXY" or upper == b"TRANSFER_ENCODING":
        return None
    if upper == b"CONTENT_TYPE" or upper == b"CONTENT_LENGTH":
        return upper
    return b"HTTP_" + upper


def request_params(
    base: Mapping[bytes, bytes],
    method: bytes,
    target: bytes,
    query: bytes,
    path: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    *,
    script_name: bytes,
    path_info: bytes,
    document_root: bytes,
    http_version: bytes = b"1.1",
    content_length: int | None = None,
    underscores_in_headers: bool = False,
    extra: Mapping[bytes, bytes] | None = None,
) -> dict[bytes, bytes]:
    """The FastCGI params of one HTTP request.

    Args:
        base: ``ConnectionParams.base()`` of the client's connection, or {} for the
            request's own params only (the caller adds the connection's, encoded once).
        method, target, query: from the request line (target as sent).
        path: the normalised path (``normalize_path``).
        headers: (lower-cased name, value) pairs as received.
        script_name, path_info: from ``split_path``.
        document_root: DOCUMENT_ROOT; SCRIPT_FILENAME is it plus script_name.
        http_version: b"1.1" or b"1.0".
        content_length: the body length when known; overrides the header
            (a chunked body that was read whole gets its real length).
        underscores_in_headers: pass header names holding "_" too.
        extra: params added last (a route's ``params``), overriding any.

    Returns:
        A new dict of bytes: ``line_params`` and ``header_params`` together.
    """
    params = dict(base)
    params.update(line_params(
        method, target, query, path, script_name=script_name, path_info=path_info,
        document_root=document_root, http_version=http_version, content_length=content_length,
    ))
    params.update(header_params(headers, underscores_in_headers))
    if content_length is not None:
        params[b"CONTENT_LENGTH"] = b"%d" % content_length
    if extra:
        params.update(extra)
    return params


#: ``line_params``' names, in its order.
_LINE_NAMES = (b"QUERY_STRING", b"REQUEST_METHOD", b"CONTENT_LENGTH", b"SCRIPT_NAME", b"REQUEST_URI",
               b"DOCUMENT_URI", b"DOCUMENT_ROOT", b"SERVER_PROTOCOL", b"SCRIPT_FILENAME", b"PATH_INFO")
_PROTOCOLS = {b"1.1": b"HTTP/1.1", b"1.0": b"HTTP/1.0"}


def line_params(
    method: bytes,
    target: bytes,
    query: bytes,
    path: bytes,
    *,
    script_name: bytes,
    path_info: bytes,
    document_root: bytes,
    http_version: bytes = b"1.1",
    content_length: int | None = None,
) -> dict[bytes, bytes]:
    """The params of a request that do not come from its header fields (see ``request_params``).

    CONTENT_LENGTH is among them: the body's length when known, else b"" (a
    Content-Length header, in ``header_params``, then says it).
    """
    return dict(zip(_LINE_NAMES, _line_values(
        method, target, query, path, script_name, path_info, document_root, http_version, content_length)))


def _line_values(
    method: bytes, target: bytes, query: bytes, path: bytes, script_name: bytes, path_info: bytes,
    document_root: bytes, http_version: bytes, content_length: int | None,
) -> tuple[bytes, ...]:
    """``line_params``' values, in ``_LINE_NAMES``' order."""
    return (
        query, method, b"" if content_length is None else b"%d" % content_length, script_name, target, path,
        document_root, _PROTOCOLS.get(http_version) or b"HTTP/" + http_version,
        document_root.rstrip(b"/") + script_name, path_info,
    )


def _name_heads(name: bytes) -> list[bytes]:
    """A pair's two length bytes and ``name``, by value length (under 128)."""
    return [bytes((len(name), length)) + name for length in range(0x80)]


(_QUERY, _METHOD, _LENGTH, _SCRIPT, _URI, _DOC_URI, _ROOT, _PROTOCOL, _FILENAME, _INFO) = (
    _name_heads(name) for name in _LINE_NAMES)


def encode_line_params(
    method: bytes,
    target: bytes,
    query: bytes,
    path: bytes,
    *,
    script_name: bytes,
    path_info: bytes,
    document_root: bytes,
    http_version: bytes = b"1.1",
    content_length: int | None = None,
) -> bytes:
    """``encode_pairs(line_params(...).items())``, made for every proxied request.

    Every name is known, so each pair whose value is under 128 bytes (nearly
    all) is its name's ready-made head and the value, joined in one call: no
    dict, and a third of the calls of the general encoder.
    """
    values = _line_values(
        method, target, query, path, script_name, path_info, document_root, http_version, content_length)
    query, method, length, script_name, target, path, document_root, protocol, filename, path_info = values
    try:
        return b"".join((
            _QUERY[len(query)], query, _METHOD[len(method)], method, _LENGTH[len(length)], length,
            _SCRIPT[len(script_name)], script_name, _URI[len(target)], target, _DOC_URI[len(path)], path,
            _ROOT[len(document_root)], document_root, _PROTOCOL[len(protocol)], protocol,
            _FILENAME[len(filename)], filename, _INFO[len(path_info)], path_info,
        ))
    except IndexError:  # a value of 128 bytes or more: a 4-byte length
        return encode_pairs(zip(_LINE_NAMES, values))


def header_params(headers: Iterable[tuple[bytes, bytes]], underscores_in_headers: bool = False) -> dict[bytes, bytes]:
    """The params of a request's header fields: CONTENT_TYPE (b"" when absent),
    CONTENT_LENGTH (when sent) and HTTP_*. Repeated fields are joined with ", "
    (Cookie with "; ").
    """
    params = {b"CONTENT_TYPE": b""}
    seen: set[bytes] = set()
    for name, value in headers:
        key = _header_key(name, underscores_in_headers)
        if key is None:
            continue
        if key in seen:
            params[key] += (b"; " if key == b"HTTP_COOKIE" else b", ") + value
        else:
            seen.add(key)
            params[key] = value
    return params
