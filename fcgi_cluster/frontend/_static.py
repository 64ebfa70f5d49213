"""Static files for a front-end route: nginx's ``location /x/ { root ...; }``, as a plan.

``plan_static`` turns one request (method, path below the route's prefix,
headers) into a ``StaticResponse``: the status, the headers, and for a body
either a small generated text or an open file and the byte range to send.
``read_file_range`` streams that range with trio. Everything but the opening
and ``fstat`` of the file is pure, so the rules below are testable with a
temporary directory and plain byte strings.

Rules enforced here:

* Only GET and HEAD; any other method is 405 with ``Allow: GET, HEAD``.
* The path is percent-decoded exactly once, so ``%252e`` stays a literal
  ``%2e`` and never becomes a dot. The request is refused with 400 when the
  raw path holds a space or control byte, or the decoded path holds a control
  character (NUL, CR, LF, ...), a backslash, a ``..`` segment, or bytes that
  are not valid UTF-8 (which covers overlong encodings such as ``%c0%ae``). A
  ``..`` segment is refused even where it would stay inside the root, as nginx
  refuses one that would climb above it: no static asset needs one, and
  refusing them all leaves no normalisation to get wrong. A backslash is a
  directory separator on Windows, so it is refused for the same reason.
* Empty and ``.`` segments are dropped (``//a/./b`` is ``/a/b``), as nginx's
  ``merge_slashes`` does; every segment is then joined below the root, so an
  absolute-looking path can never replace the root.
* The joined path is resolved with ``os.path.realpath`` and must lie inside the
  resolved root (``os.path.commonpath``). A symlink inside the root that
  points inside it is followed; one that points outside is 404, as if the
  file were not there, so that a probe learns nothing about the rest of the
  disk. The final open uses ``O_NOFOLLOW`` and, where ``/proc/self/fd``
  exists, the opened file's own path is checked again, so a symlink swapped in
  between the check and the open is not followed out of the root.
* Hidden names (a segment starting with ``.``, in the request or in the
  resolved path) are 404, unlike nginx, which serves them: a document root
  that is also a checkout holds ``.git``, ``.env``, ``.htpasswd``, and serving
  those is a classic leak. ``.well-known`` (RFC 8615) is the one exception.
* Only regular files are sent. A directory asked for without a trailing slash
  is a 301 to the same path plus ``/``; with one, its index file if there is
  one, otherwise 404 (directory listings are never generated). FIFOs, sockets
  and devices are 404; they are opened with ``O_NONBLOCK`` so a FIFO cannot
  stall the caller.
* A file that cannot be opened is 403 when the OS says permission denied and
  404 otherwise (vanished, not a directory, name too long, symlink loop): an
  error becomes a status, never an exception.
* Validators as nginx makes them: ``ETag: "<mtime hex>-<size hex>"`` (strong)
  and ``Last-Modified``. Preconditions in the order of RFC 9110 section 13.2.2:
  If-Match (strong comparison) else If-Unmodified-Since fail with 412;
  If-None-Match (weak comparison, ``*``) else If-Modified-Since (file not
  newer than the date) give 304.
* Range (RFC 9110 section 14): one ``bytes=a-b``, ``a-`` or ``-n`` gives 206
  with Content-Range; a range that starts past the end (or ``-0``, or any
  range of an empty file) gives 416 with ``Content-Range: bytes */size``. A
  Range that does not parse, uses another unit, or asks for more than one
  range is ignored and the whole file is sent with 200: multipart/byteranges
  is not generated (browsers and download managers ask for one range). An
  If-Range that does not match the current ETag (strong) or Last-Modified
  (exactly) also means the whole file.

Using a plan: send ``status`` and ``headers``, a Content-Length of
``content_length`` unless it is None (a 304 has no body and no length), then
``body``, then, when ``file`` is set, the chunks of ``read_file_range(plan)``.
A HEAD request gets the headers and Content-Length a GET would get, with
``body`` empty and ``file`` None, so the caller needs no HEAD logic of its
own; ``path`` still names the file that a GET would send.
"""

from __future__ import annotations

import errno
import io
import mimetypes
import os
import re
import stat
import typing
from dataclasses import dataclass
from email.utils import formatdate
from typing import AsyncIterator
from urllib.parse import quote_from_bytes, unquote_to_bytes
from collections.abc import Awaitable, Callable

from ._ranges import UNSATISFIABLE, content_range, if_range_matches, parse_http_date, parse_range

import trio

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_INDEX",
    "FileTruncatedError",
    "StaticResponse",
    "plan_static",
    "read_file_range",
    "send_static",
]

#: Bytes read from disk per chunk. Each read is one hop to a worker thread,
#: which costs tens of microseconds: at 256 KiB that is a few percent of
#: copying the chunk, and each write hands the socket more than a LAN's TCP
#: window. A thousand downloads in flight still hold at most 256 MiB.
DEFAULT_CHUNK_SIZE = 256 * 1024

#: The file served for a request ending in ``/``: nginx's ``index`` default.
DEFAULT_INDEX = "index.html"

#: Types for extensions that Python's table lacks or gets wrong for the web,
#: following nginx's mime.types and the IANA registry. They are fixed here
#: rather than read from /etc/mime.types, so that a file gets the same type on
#: every host the front-end runs on, as with nginx, which ships its own table.
_EXTRA_TYPES = {
    # RFC 9239 makes text/javascript the one type for JavaScript; Python 3.11
    # still says application/javascript and 3.12 does not.
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".json": "application/json",
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".wasm": "application/wasm",
    ".svg": "image/svg+xml",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".ico": "image/x-icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".md": "text/markdown",
    ".gz": "application/gzip",
}


def _build_types() -> dict[str, str]:
    # MimeTypes() starts from Python's built-in table only. Built once, here,
    # because reading a table per request would put file I/O on every request.
    table = dict(mimetypes.MimeTypes().types_map[True])
    table.update(_EXTRA_TYPES)
    return table


_TYPES = _build_types()

_DEFAULT_TYPE = "application/octet-stream"

# Textual types that are not text/*: they get "; charset=utf-8" too, so a
# browser does not guess the encoding of a UTF-8 script or document.
_CHARSET_TYPES = frozenset(
    {
        "application/javascript",
        "application/json",
        "application/manifest+json",
        "application/xml",
        "image/svg+xml",
    }
)

_ALLOWED_METHODS = frozenset({b"GET", b"HEAD"})
_ALLOW = b"GET, HEAD"

# Hidden names that are nonetheless public by design (RFC 8615).
_PUBLIC_DOT_NAMES = frozenset({".well-known"})

# O_NOFOLLOW: realpath has already resolved every symlink, so a symlink found
# at open time was swapped in since, and is refused (ELOOP -> 404).
# O_NONBLOCK: opening a FIFO for reading would block until a writer appears.
# It changes nothing for regular files.
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

_REASONS = {
    301: "Moved Permanently",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    412: "Precondition Failed",
    416: "Range Not Satisfiable",
}

_TEXT_PLAIN = b"text/plain; charset=utf-8"

# Bytes that may not appear raw in a request path: controls, space, DEL.
_RAW_FORBIDDEN = re.compile(rb"[\x00-\x20\x7f]")
# Characters refused once decoded: controls, DEL, and the Windows separator.
_DECODED_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\\]")
# Bytes to percent-encode when a request path is echoed in a Location header.
_LOCATION_UNSAFE = re.compile(rb"[^\x21-\x7e]")

# An entity tag (RFC 9110 section 8.8.3), weak or strong.
_ETAG = re.compile(rb'\s*((?:W/)?"[\x21\x23-\x7e\x80-\xff]*")\s*(?:,|$)')




class FileTruncatedError(OSError):
    """The file shrank after its plan was made, so the promised range cannot be sent.

    The status line and Content-Length have gone out by then; the only honest
    thing left is to close the connection, so the client sees a short body
    instead of a wrong one.
    """


@dataclass(slots=True)
class StaticResponse:
    """What to answer to one static-file request.

    Attributes:
        status: the HTTP status code.
        headers: response headers, excluding Content-Length: Content-Type,
            ETag, Last-Modified, Accept-Ranges, Content-Range, Location,
            Allow, Cache-Control, as the status calls for.
        content_length: the Content-Length to send; None for a 304, which
            has no body and whose length would describe the full response.
        path: the resolved file that a GET sends, also for HEAD; None when
            no file is sent (errors, redirects, 304, 412, 416).
        offset: where the range to send starts in the file.
        length: how many bytes of the file to send.
        body: a small generated body (error and redirect texts); empty for
            HEAD and when the file is the body.
        file: the file opened at planning time, the one the validators
            describe, so the body cannot come from a file swapped in since.
            Set only when there are file bytes to send.

    Resource handling:
        While ``file`` is set the plan holds an open descriptor. Exhausting
        ``read_file_range`` closes it; a caller that does not (client gone,
        request cancelled) must call ``close()``, which is idempotent.
        ``with plan:`` does that too.
    """

    status: int
    headers: list[tuple[bytes, bytes]]
    content_length: int | None
    path: str | None
    offset: int = 0
    length: int = 0
    body: bytes = b""
    file: io.FileIO | None = None

    def close(self) -> None:
        """Close the file, if one is open. Safe to call more than once.

        Do not call it while ``read_file_range`` is iterating over this plan
        in another task: the iterator closes the file itself when it ends.
        """
        file, self.file = self.file, None
        if file is not None:
            file.close()

    def __enter__(self) -> StaticResponse:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def plan_static(
    root: str | bytes | os.PathLike[str] | os.PathLike[bytes],
    rel_path: bytes,
    method: bytes,
    headers: list[tuple[bytes, bytes]],
    *,
    index: str | None = DEFAULT_INDEX,
    prefix: bytes | None = None,
    cache_control: bytes | None = None,
) -> StaticResponse:
    """Decide the answer to a request for a file below ``root``.

    Blocks only on ``realpath``, ``open`` and ``fstat`` of local files, which
    are fast enough to run on the event loop, as nginx does without
    ``aio``.

    Args:
        root: the directory the route serves; nothing outside it is ever sent.
        rel_path: the request path below the route's prefix, still
            percent-encoded, query excluded, e.g. ``b"/css/a%20b.css"``. An
            empty path means the root directory itself.
        method: the request method, case-sensitive as RFC 9110 says.
        headers: the request headers; names in any case.
        index: the file sent for a path ending in ``/``; None sends 404 there.
        prefix: the encoded path the caller stripped from the front of the
            request path. When given, a directory redirect's Location is
            ``prefix + rel_path + "/"``; when None it is the relative
            reference ``./<last segment>/``, which resolves to the same URL
            without knowing the prefix. The caller appends the query string,
            if it wants to keep it.
        cache_control: a Cache-Control value for 200, 206 and 304
            responses; none is sent by default, as with nginx.

    Returns:
        The plan. When its ``file`` is set it holds an open file: see
        ``StaticResponse`` for who closes it.

    Raises:
        ValueError: ``index`` is not a plain file name (the caller's
            configuration is wrong, not the request).
    """
    if index is not None and (not index or "/" in index or "\0" in index or index in (".", "..")):
        raise ValueError(f"index must be a plain file name, not {index!r}")
    if method not in _ALLOWED_METHODS:
        return _error(405, head=False, extra=[(b"Allow", _ALLOW)])
    head = method == b"HEAD"

    decoded = _decode_path(rel_path)
    if isinstance(decoded, int):
        return _error(decoded, head)
    segments, wants_directory = decoded

    root_real = os.path.realpath(os.fsdecode(os.fspath(root)))
    candidate = os.path.join(root_real, *segments) if segments else root_real
    opened = _open_inside(root_real, candidate)
    if isinstance(opened, int):
        return _error(opened, head)
    fd, info, real = opened
    name = segments[-1] if segments else ""

    if stat.S_ISDIR(info.st_mode):
        os.close(fd)
        if not wants_directory:
            return _redirect(rel_path, prefix, head)
        if index is None:
            return _error(404, head)
        opened = _open_inside(root_real, os.path.join(real, index))
        if isinstance(opened, int):
            return _error(opened, head)
        fd, info, real = opened
        name = index
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            return _error(404, head)
    elif not stat.S_ISREG(info.st_mode) or wants_directory:
        # A FIFO, socket or device; or a file asked for as a directory,
        # which open(2) would refuse with ENOTDIR.
        os.close(fd)
        return _error(404, head)

    try:
        plan = _plan_file(info, real, name, headers, head, cache_control)
    except BaseException:
        os.close(fd)
        raise
    if plan.path is not None and plan.length > 0 and not head:
        plan.file = io.FileIO(fd, "rb", closefd=True)
    else:
        # Nothing to read: HEAD, an empty file, or a status without the file.
        os.close(fd)
    return plan


async def read_file_range(
    plan: StaticResponse, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> AsyncIterator[bytes]:
    """Stream the byte range a plan names, in chunks of at most ``chunk_size``.

    Each read runs in a worker thread (``trio.to_thread``), so a slow disk
    stalls only this download. Reads use ``pread`` at explicit offsets, so
    nothing depends on the file position.

    Args:
        plan: a plan from ``plan_static``; yields nothing when its ``file``
            is None.
        chunk_size: the largest chunk to yield, in bytes.

    Yields:
        Non-empty bytes, ``plan.length`` of them in all.

    Raises:
        ValueError: ``chunk_size`` is not positive.
        FileTruncatedError: the file ended before the range did.
        OSError: reading failed (I/O error).

    Resource handling:
        The file is closed (``plan.close()``) when the iteration ends, however
        it ends. A caller that stops early should iterate inside
        ``contextlib.aclosing(...)`` so that happens at once rather than when
        the generator is collected.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, not {chunk_size}")
    try:
        if plan.file is None:
            return
        fd = plan.file.fileno()
        offset = plan.offset
        remaining = plan.length
        while remaining > 0:
            data = await trio.to_thread.run_sync(os.pread, fd, min(chunk_size, remaining), offset)
            if not data:
                raise FileTruncatedError(
                    errno.EIO,
                    f"file ended at byte {offset}, {remaining} bytes before the planned range did",
                    plan.path,
                )
            offset += len(data)
            remaining -= len(data)
            yield data
    finally:
        plan.close()


def _decode_path(rel_path: bytes) -> tuple[list[str], bool] | int:
    """The path's segments below the root and whether it names a directory, or a status."""
    if _RAW_FORBIDDEN.search(rel_path):
        return 400
    try:
        text = unquote_to_bytes(rel_path).decode("utf-8")
    except UnicodeDecodeError:
        return 400
    if _DECODED_FORBIDDEN.search(text):
        return 400
    parts = text.split("/")
    segments = []
    for part in parts:
        if part in ("", "."):
            continue
        if part == "..":
            return 400
        if part.startswith(".") and part not in _PUBLIC_DOT_NAMES:
            return 404
        segments.append(part)
    return segments, parts[-1] in ("", ".")


def _is_inside(root: str, path: str) -> bool:
    return os.path.commonpath([root, path]) == root


def _is_hidden(root: str, path: str) -> bool:
    """Whether a name below ``root`` on the way to ``path`` is hidden."""
    relative = os.path.relpath(path, root)
    if relative == ".":
        return False
    return any(
        part.startswith(".") and part not in _PUBLIC_DOT_NAMES for part in relative.split(os.sep)
    )


def _opened_path(fd: int) -> str | None:
    """The path the kernel has for an open descriptor, or None if it will not say."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        # No /proc (macOS, BSD, a chroot): the realpath check has to do.
        return None


def _open_inside(root: str, candidate: str) -> tuple[int, os.stat_result, str] | int:
    """Open ``candidate`` if it resolves inside ``root``: ``(fd, stat, real path)`` or a status."""
    real = os.path.realpath(candidate)
    if not _is_inside(root, real) or _is_hidden(root, real):
        return 404
    try:
        fd = os.open(real, _OPEN_FLAGS)
    except OSError as exc:
        return 403 if exc.errno in (errno.EACCES, errno.EPERM) else 404
    opened = _opened_path(fd)
    # A directory on the way may have become a symlink since realpath ran;
    # the kernel's own path for what was opened settles it.
    if opened is not None and (
        not os.path.isabs(opened) or not _is_inside(root, opened) or _is_hidden(root, opened)
    ):
        os.close(fd)
        return 404
    try:
        info = os.fstat(fd)
    except OSError:
        os.close(fd)
        return 404
    return fd, info, real


def _plan_file(
    info: os.stat_result,
    real: str,
    name: str,
    headers: list[tuple[bytes, bytes]],
    head: bool,
    cache_control: bytes | None,
) -> StaticResponse:
    """The plan for a regular file: 200, 206, 304, 412 or 416, without its ``file``."""
    size = info.st_size
    mtime = int(info.st_mtime)
    etag = b'"%x-%x"' % (mtime, size)
    validators = [
        (b"ETag", etag),
        (b"Last-Modified", formatdate(mtime, usegmt=True).encode("ascii")),
    ]
    if cache_control is not None:
        validators.append((b"Cache-Control", cache_control))
    request = _RequestHeaders(headers)

    status = _preconditions(request, etag, mtime)
    if status == 412:
        return _error(412, head)
    if status == 304:
        return StaticResponse(304, validators, None, None)

    entity = [(b"Content-Type", _content_type(name)), *validators, (b"Accept-Ranges", b"bytes")]
    wanted = _wanted_range(request, etag, mtime, size)
    if wanted is UNSATISFIABLE:
        return _error(416, head, extra=[(b"Content-Range", b"bytes */%d" % size)])
    if wanted is None:
        return StaticResponse(200, entity, size, real, 0, size)
    start, end = wanted
    entity.append((b"Content-Range", content_range(start, end, size)))
    return StaticResponse(206, entity, end - start + 1, real, start, end - start + 1)


class _RequestHeaders:
    """The request headers this module reads, each joined over repeated lines."""

    __slots__ = ("_values",)

    _NAMES = frozenset(
        {b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since", b"if-range", b"range"}
    )

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self._values: dict[bytes, list[bytes]] = {}
        for name, value in headers:
            lower = name.lower()
            if lower in self._NAMES:
                self._values.setdefault(lower, []).append(value.strip(b" \t"))

    def list(self, name: bytes) -> bytes | None:
        """A list-valued header, repeated lines joined with commas (RFC 9110 5.3)."""
        values = self._values.get(name)
        return None if values is None else b", ".join(values)

    def all(self, name: bytes) -> list[bytes] | None:
        """Every line of a header, in order; None when absent."""
        return self._values.get(name)

    def single(self, name: bytes) -> bytes | None:
        """A header that may appear once; None when absent or repeated (then invalid)."""
        values = self._values.get(name)
        return values[0] if values is not None and len(values) == 1 else None


def _preconditions(request: _RequestHeaders, etag: bytes, mtime: int) -> int | None:
    """412, 304, or None to go on, in the order of RFC 9110 section 13.2.2."""
    if_match = request.list(b"if-match")
    if if_match is not None:
        if not _etag_matches(if_match, etag, weak=False):
            return 412
    else:
        since = parse_http_date(request.single(b"if-unmodified-since"))
        if since is not None and mtime > since:
            return 412
    if_none_match = request.list(b"if-none-match")
    if if_none_match is not None:
        # For GET and HEAD a match means "you have it already": 304, not 412.
        return 304 if _etag_matches(if_none_match, etag, weak=True) else None
    since = parse_http_date(request.single(b"if-modified-since"))
    if since is not None and mtime <= since:
        return 304
    return None


def _etag_matches(field: bytes, etag: bytes, *, weak: bool) -> bool:
    """Whether an If-Match / If-None-Match field matches ``etag`` (always strong here)."""
    if field.strip() == b"*":
        return True
    position = 0
    while position < len(field):
        found = _ETAG.match(field, position)
        if found is None:
            # A malformed list matches nothing, so the request goes ahead
            # as if it were unconditional rather than being served a 304.
            return False
        tag = found.group(1)
        if tag.startswith(b"W/"):
            if weak and tag[2:] == etag:
                return True
        elif tag == etag:
            return True
        position = found.end()
    return False


def _wanted_range(
    request: _RequestHeaders, etag: bytes, mtime: int, size: int
) -> tuple[int, int] | object | None:
    """``(first, last)`` byte to send, ``UNSATISFIABLE``, or None for the whole file."""
    value = request.single(b"range")
    if value is None:
        return None
    if_range = request.all(b"if-range")
    if if_range is not None:
        if len(if_range) != 1 or not if_range_matches(if_range[0], etag, mtime):
            return None
    return parse_range(value, size)


def _content_type(name: str) -> bytes:
    # The type follows the name in the URL (or the index name), as with nginx,
    # not a symlink's target: it is the name the client and caches see.
    content_type = _TYPES.get(os.path.splitext(name)[1].lower(), _DEFAULT_TYPE)
    if content_type.startswith("text/") or content_type in _CHARSET_TYPES:
        content_type += "; charset=utf-8"
    return content_type.encode("ascii")


def _error(
    status: int, head: bool, extra: list[tuple[bytes, bytes]] | None = None
) -> StaticResponse:
    """A short text/plain response; its body is dropped for HEAD, its length kept."""
    body = f"{status} {_REASONS[status]}\n".encode("ascii")
    headers = [(b"Content-Type", _TEXT_PLAIN), *(extra or ())]
    return StaticResponse(status, headers, len(body), None, body=b"" if head else body)


def _redirect(rel_path: bytes, prefix: bytes | None, head: bool) -> StaticResponse:
    """301 to the directory's URL with a trailing slash."""
    if prefix is not None:
        location = prefix + rel_path + b"/"
    else:
        # rel_path holds a segment here: the root itself has no last one, and
        # an empty rel_path counts as "/".
        location = b"./" + rel_path.rsplit(b"/", 1)[-1] + b"/"
    location = _LOCATION_UNSAFE.sub(lambda byte: b"%%%02X" % byte.group()[0], location)
    return _error(301, head, extra=[(b"Location", location)])


async def send_static(route: typing.Any, path: bytes, head: typing.Any, http: typing.Any,
                      send: Callable[[bytes], Awaitable[None]],
                      extra: list[tuple[bytes, bytes]] | None = None, compression: typing.Any = None,
                      content_type: bytes | None = None) -> tuple[int, int]:
    """Answer a request for a static route's file through ``send``: its status and the body bytes sent.

    ``path`` is the normalised request path; a prefix route maps its prefix
    onto the directory (nginx's alias): /static/css/a.css under prefix
    "/static/" is <dir>/css/a.css. ``http`` frames the answer. ``extra``
    header fields replace the plan's of the same names (an X-Accel-Redirect
    worker's Cache-Control, Content-Disposition); ``content_type`` replaces
    the file's type when a file is sent (an X-Accel-Redirect worker's own,
    as nginx keeps it), never an error page's; ``compression``
    (``edge._compress.Compression``) compresses it if the route does and the
    answer qualifies.
    """
    stripped = b""
    prefix = getattr(route, "prefix", None)
    if prefix:
        raw_prefix = prefix.encode("utf-8", "surrogateescape").rstrip(b"/")
        if path.startswith(raw_prefix):
            stripped = raw_prefix
    rel = path[len(stripped):]
    # plan_static wants the path percent-encoded (it decodes and checks it
    # itself): give it the canonical encoding of the normalised path.
    plan = plan_static(
        route.static, quote_from_bytes(rel, safe="/").encode(), head.method, head.headers,
        index=route.index or None, prefix=quote_from_bytes(stripped, safe="/").encode(),
    )
    headers, length, encoder = plan.headers, plan.content_length, None
    if extra:
        names = {name.lower() for name, _ in extra}
        headers = [field for field in headers if field[0].lower() not in names] + extra
    if content_type is not None and plan.path is not None:
        headers = [field for field in headers if field[0].lower() != b"content-type"] + [(b"Content-Type", content_type)]
    if compression is not None and plan.path is not None:
        encoder, headers = compression.choose(head, plan.status, headers, length)
        length = None if encoder is not None else length
    try:
        out = http.send_head(plan.status, headers, content_length=length)
        sent = 0
        if encoder is not None and head.method != b"HEAD":
            await send(out)
            async for chunk in read_file_range(plan):
                data = encoder.feed(chunk)
                if data:
                    await send(http.send_body(data))
                    sent += len(data)
            data = encoder.finish()
            await send(http.send_body(data) + http.send_end())
            sent += len(data)
        elif plan.path is None or head.method == b"HEAD":
            out += http.send_body(plan.body) + http.send_end()
            sent = len(plan.body)
            await send(out)
        else:
            await send(out)
            async for chunk in read_file_range(plan):
                await send(http.send_body(chunk))
                sent += len(chunk)
            await send(http.send_end())
    finally:
        plan.close()  # read_file_range closes it too; twice is harmless
    return plan.status, sent
