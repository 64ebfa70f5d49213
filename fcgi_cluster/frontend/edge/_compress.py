"""Compression of upstream answers on the way to the client (nginx's gzip module), sans-IO.

The rules, in the order they are checked (``Compression.choose``):

* Only for a route with ``gzip = true`` (off by default, as nginx: it costs
  CPU, and a route that does not ask for it pays one attribute check).
* Never for HEAD, HTTP/1.0 (nginx's ``gzip_http_version 1.1``: the answer is
  sent chunked), a request with a Range header, a request that came through a
  proxy (a Via header) unless ``gzip_proxied = "any"``.
* Only statuses 200, 403 and 404 (nginx's), so never 206, 204 or 304; never
  an answer already Content-Encoded, with Content-Range, or with
  ``Cache-Control: no-transform``; only media types of ``gzip_types``; only
  over ``gzip_min_length`` when the worker declares a Content-Length (a
  streamed answer without one is compressed).
* Such an answer gets ``Vary: Accept-Encoding`` whether or not this client's
  Accept-Encoding allows a coding, so a cache keeps the two apart.
* The coding is the one the client's Accept-Encoding ranks highest (q-values,
  ``*``, ``identity;q=0``), ties going to zstd, then br, then gzip. br and zstd
  need their PyPI packages (the ``compress`` extra); without them only gzip
  (zlib) is offered.
* A compressed answer loses its Content-Length (it is sent chunked), and its
  strong ETag becomes weak (``W/``), as nginx does.

``Encoder`` compresses one answer as it arrives: ``feed`` takes each piece,
``flush`` ends a batch so that what arrived so far reaches the client (a
streamed tick is not held back), ``finish`` ends the stream.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import zlib
from typing import Any, Callable

__all__ = ["Compression", "Encoder", "ENCODINGS", "accepted_coding", "compression_of", "new_encoder"]

try:
    import brotli as _brotli
except ImportError:  # the compress extra is not installed: gzip only
    _brotli = None
try:
    import zstandard as _zstd
except ImportError:
    _zstd = None

#: Statuses nginx compresses: the answers a cache or browser keeps as pages.
_STATUSES = frozenset({200, 403, 404})


class Encoder:
    """One answer's compressor: pieces in, compressed bytes out (``new_encoder`` makes one).

    Attributes:
        coding: its Content-Encoding token.
    """

    __slots__ = ()
    coding = b""

    def feed(self, data: bytes) -> bytes:
        """Compress ``data``; the bytes may be held back until ``flush`` or ``finish``."""
        raise NotImplementedError

    def flush(self) -> bytes:
        """What is held back, so that everything fed so far can be decompressed now."""
        raise NotImplementedError

    def finish(self) -> bytes:
        """The end of the compressed stream."""
        raise NotImplementedError


class _Gzip(Encoder):
    __slots__ = ("_z",)
    coding = b"gzip"

    def __init__(self, level: int, length: int | None = None) -> None:
        wbits, memlevel = 15, 8
        if length:
            # As nginx: a window no larger than the answer (zlib's is 262
            # bytes smaller than 2**wbits), so a small answer costs less memory
            # to set up. 9 is zlib's least.
            while wbits > 9 and length < (1 << (wbits - 1)) - 262:
                wbits -= 1
                memlevel -= 1
        # +16: the gzip wrapper (header and CRC), which every client reads.
        self._z = zlib.compressobj(level, zlib.DEFLATED, wbits + 16, max(memlevel, 1))

    def feed(self, data: bytes) -> bytes:
        return self._z.compress(data)

    def flush(self) -> bytes:
        return self._z.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._z.flush(zlib.Z_FINISH)


class _Brotli(Encoder):
    __slots__ = ("_c",)
    coding = b"br"

    def __init__(self, level: int, length: int | None = None) -> None:
        # A window no larger than the answer, as for gzip (10 is brotli's least, 22 its default).
        lgwin = max(10, min(22, (length - 1).bit_length())) if length else 22
        self._c = _brotli.Compressor(quality=level, lgwin=lgwin)  # type: ignore[union-attr]

    def feed(self, data: bytes) -> bytes:
        return self._c.process(data)

    def flush(self) -> bytes:
        return self._c.flush()

    def finish(self) -> bytes:
        return self._c.finish()


#: Idle zstd contexts by level. Making one costs about 0.5 ms (measured:
#: ten times the rest of a small answer's compression), and a context serves
#: one stream at a time, so each answer borrows one and gives it back at its
#: end; one abandoned mid-answer is left to the garbage collector.
_ZSTD_IDLE: dict[int, list[Any]] = {}
#: Idle contexts kept per level: as many as answers commonly compressed at once.
ZSTD_IDLE_CONTEXTS = 16


class _Zstd(Encoder):
    __slots__ = ("_ctx", "_c", "_level")
    coding = b"zstd"

    def __init__(self, level: int, length: int | None = None) -> None:
        idle = _ZSTD_IDLE.get(level)
        self._ctx = idle.pop() if idle else _zstd.ZstdCompressor(level=level)  # type: ignore[union-attr]
        self._level = level
        self._c = self._ctx.compressobj()

    def feed(self, data: bytes) -> bytes:
        return self._c.compress(data)

    def flush(self) -> bytes:
        return self._c.flush(_zstd.COMPRESSOBJ_FLUSH_BLOCK)  # type: ignore[union-attr]

    def finish(self) -> bytes:
        out = self._c.flush()
        idle = _ZSTD_IDLE.setdefault(self._level, [])
        if len(idle) < ZSTD_IDLE_CONTEXTS:
            idle.append(self._ctx)
        return out


#: The codings this process can produce, in the order preferred when a client
#: ranks several equally: zstd and br make smaller answers than gzip for the
#: same CPU.
ENCODINGS: dict[bytes, Callable[[int, int | None], Encoder]] = {
    **({b"zstd": _Zstd} if _zstd is not None else {}),
    **({b"br": _Brotli} if _brotli is not None else {}),
    b"gzip": _Gzip,
}


def new_encoder(coding: bytes, level: int, length: int | None = None) -> Encoder:
    """A compressor of ``coding`` (a key of ``ENCODINGS``) at ``level``, for an answer of ``length`` bytes if known."""
    return ENCODINGS[coding](level, length)


def _q(text: bytes) -> float | None:
    """A q-value (0 to 1, three decimals at most); None when it is not one."""
    try:
        q = float(text)
    except ValueError:
        return None
    return q if 0.0 <= q <= 1.0 else None


def accepted_coding(accept_encoding: bytes, offered: tuple[bytes, ...]) -> bytes | None:
    """The coding of ``offered`` a client's Accept-Encoding ranks highest, or None for identity.

    RFC 9110 12.5.3: each coding with an optional ``;q=``; ``*`` stands for any
    coding not named; identity is acceptable unless ``identity;q=0`` (or
    ``*;q=0`` without identity named). A coding ranked below identity is not
    used (identity not named ranks 0: acceptable, never preferred). Ties go
    to the order of ``offered``. An element that does not parse
    is ignored; ``x-gzip`` is gzip.

    Args:
        accept_encoding: the header's value (several joined with ",").
        offered: codings the server can produce, preferred first.
    """
    ranks: dict[bytes, float] = {}
    for element in accept_encoding.split(b","):
        name, _, params = element.partition(b";")
        name = name.strip().lower()
        if not name:
            continue
        q: float | None = 1.0
        for param in params.split(b";"):
            key, _, value = param.partition(b"=")
            if key.strip().lower() == b"q":
                q = _q(value.strip())
        if q is None:
            continue
        if name == b"x-gzip":
            name = b"gzip"
        ranks.setdefault(name, q)
    star = ranks.get(b"*")
    # Identity not named is acceptable but not preferred: any coding ranked
    # above 0 is then chosen over it, as browsers and nginx expect.
    identity = ranks.get(b"identity", 0.0 if star is None else star)
    best, best_q = None, 0.0
    for coding in offered:
        q = ranks.get(coding, star if star is not None else 0.0)
        if q > best_q:
            best, best_q = coding, q
    if best is None or best_q < identity:
        return None
    return best


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """Every value of header ``name`` (lower case) joined with ", "; None when absent."""
    values = [value for key, value in headers if key.lower() == name]
    return b", ".join(values) if values else None


@dataclasses.dataclass(frozen=True, slots=True)
class Compression:
    """A route's compression settings, prepared once (``compression_of``).

    Attributes:
        levels: coding -> level, for the codings offered, preferred first.
        min_length: answers declaring fewer bytes are not compressed.
        types: the media-type patterns (``gzip_types``) as one regular expression.
        proxied: compress requests carrying a Via header.
    """

    levels: dict[bytes, int]
    min_length: int
    types: re.Pattern[str]
    proxied: bool

    def choose(
        self, request: Any, status: int, headers: list[tuple[bytes, bytes]], length: int | None
    ) -> tuple[Encoder | None, list[tuple[bytes, bytes]]]:
        """Whether to compress one answer, and its headers accordingly.

        Args:
            request: the ``RequestHead``.
            status: the answer's status.
            headers: its headers (``response_headers``: no Content-Length).
            length: the Content-Length the worker declared, or None.

        Returns:
            ``(encoder, headers)``: the encoder (None: sent as it is) and the
            headers to send, with Vary, Content-Encoding and a weak ETag as
            the module says; the caller drops the Content-Length when an
            encoder is given.
        """
        if not self._eligible(request, status, headers, length):
            return None, headers
        out = _with_vary(headers)
        coding = accepted_coding(_header(request.headers, b"accept-encoding") or b"", tuple(self.levels))
        if coding is None:
            return None, out
        encoder = new_encoder(coding, self.levels[coding], length)
        out = [(name, b"W/" + value if name.lower() == b"etag" and value.startswith(b'"') else value)
               for name, value in out]
        out.append((b"Content-Encoding", coding))
        return encoder, out

    def _eligible(self, request: Any, status: int, headers: list[tuple[bytes, bytes]], length: int | None) -> bool:
        # HTTP/1.0 has no chunks to carry an answer of unknown length: as nginx's gzip_http_version 1.1.
        if status not in _STATUSES or request.method == b"HEAD" or request.http_version == b"1.0":
            return False
        if length is not None and length < self.min_length:
            return False
        seen: dict[bytes, bytes] = {}
        for name, value in headers:
            lower = name.lower()
            seen[lower] = seen[lower] + b"," + value if lower in seen else value
        encoding = seen.get(b"content-encoding", b"").strip().lower()
        if (encoding and encoding != b"identity") or b"content-range" in seen:
            return False
        if b"no-transform" in seen.get(b"cache-control", b"").lower():
            return False
        media = seen.get(b"content-type", b"").partition(b";")[0].strip().lower().decode("latin-1")
        if not media or self.types.match(media) is None:
            return False
        for name, _ in request.headers:
            lower = name.lower()
            if lower == b"range" or (lower == b"via" and not self.proxied):
                return False
        return True


def _with_vary(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` with Accept-Encoding in Vary (added to the worker's Vary, unless it is "*")."""
    vary = _header(headers, b"vary")
    if vary is None:
        return headers + [(b"Vary", b"Accept-Encoding")]
    fields = {item.strip().lower() for item in vary.split(b",")}
    if b"accept-encoding" in fields or b"*" in fields:
        return headers
    return [(name, value) for name, value in headers if name.lower() != b"vary"] + [(b"Vary", vary + b", Accept-Encoding")]


def compression_of(route: Any) -> Compression | None:
    """A route's ``Compression``, or None when it has ``gzip`` off."""
    if not route.gzip:
        return None
    wanted = {b"zstd": (route.zstd, route.zstd_comp_level), b"br": (route.brotli, route.brotli_comp_level),
              b"gzip": (True, route.gzip_comp_level)}
    levels = {coding: wanted[coding][1] for coding in ENCODINGS if wanted[coding][0]}
    types = re.compile("|".join(fnmatch.translate(pattern) for pattern in route.gzip_types))
    return Compression(levels=levels, min_length=route.gzip_min_length, types=types, proxied=route.gzip_proxied == "any")
