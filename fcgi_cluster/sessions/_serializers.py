"""Session data to bytes and back: json, and PHP's ``php`` and ``php_serialize`` formats.

PHP's ``serialize()`` format, the subset sessions hold:

    N;                 null                  b:1;     bool
    i:-12;             int (64-bit)          d:0.5;   float (also INF, -INF, NAN)
    s:5:"héllo";       string: the length is in BYTES of its UTF-8 (or raw) form
    a:2:{i:0;s:1:"x";s:1:"k";N;}            array: count, then key/value pairs

A PHP array whose keys are 0, 1, 2... in order becomes a Python list, any other a
dict (keys int or str); an empty array is ``[]``. A string that is not valid UTF-8
becomes ``bytes`` (PHP strings are bytes), and ``bytes`` serialize as strings.

Objects (``O:``, ``C:``), enums (``E:``) and references (``r:``, ``R:``) are refused
with ``SerializationError``: building a PHP object's state into a Python dict and
writing it back as an array would silently change PHP's data, and instantiating
anything from stored data is how unserialize exploits start.

The ``php`` session format is ``name|<serialize(value)>`` repeated; ``php_serialize``
is ``serialize()`` of the whole ``$_SESSION`` array.

Limits: every declared length and count is checked against the bytes that are left
before anything is allocated, and nesting is capped at ``MAX_DEPTH``, so a few bytes
of hostile input cannot make us allocate gigabytes or recurse until the stack ends.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable

__all__ = [
    "SerializationError",
    "Serializer",
    "get_serializer",
    "php_serialize",
    "php_unserialize",
]

#: Nested arrays deeper than this are refused (PHP's own limit is its stack).
MAX_DEPTH = 64
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
# Longest int (sign + 19 digits) and float texts we accept.
_MAX_NUMBER_TEXT = 32
_FLOAT_TEXT = re.compile(rb"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|INF|-INF|NAN")
_INT_TEXT = re.compile(rb"[+-]?\d{1,19}")
_LENGTH_TEXT = re.compile(rb"\d{1,10}")


class SerializationError(ValueError):
    """Session data cannot be encoded (a value of an unsupported type) or decoded (bad bytes)."""


# --- serialize ------------------------------------------------------------------


def php_serialize(value: Any) -> bytes:
    """``value`` in PHP's ``serialize()`` format.

    Raises:
        SerializationError: a value of another type than None, bool, int (64-bit),
            float, str, bytes, list, tuple or dict (keys int or str), or nested
            deeper than ``MAX_DEPTH``.
    """
    out: list[bytes] = []
    _encode(value, out, 0)
    return b"".join(out)


def _encode(value: Any, out: list[bytes], depth: int) -> None:
    if value is None:
        out.append(b"N;")
    elif value is True:
        out.append(b"b:1;")
    elif value is False:
        out.append(b"b:0;")
    elif isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise SerializationError(f"int {value} does not fit PHP's 64-bit integers")
        out.append(b"i:%d;" % value)
    elif isinstance(value, float):
        out.append(b"d:" + _float_text(value) + b";")
    elif isinstance(value, str):
        try:
            # surrogateescape: non-UTF-8 keys read from PHP data go back as they came.
            data = value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise SerializationError(f"string holds a lone surrogate: {value!r:.80}") from None
        out.append(b's:%d:"%s";' % (len(data), data))
    elif isinstance(value, (bytes, bytearray)):
        out.append(b's:%d:"%s";' % (len(value), bytes(value)))
    elif isinstance(value, (list, tuple, dict)):
        if depth >= MAX_DEPTH:
            raise SerializationError(f"nested deeper than {MAX_DEPTH} arrays")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        out.append(b"a:%d:{" % len(value))
        for key, item in items:
            if isinstance(key, bool) or not isinstance(key, (int, str)):
                raise SerializationError(f"array keys must be int or str, got {type(key).__name__} {key!r}")
            _encode(key, out, depth + 1)
            _encode(item, out, depth + 1)
        out.append(b"}")
    else:
        raise SerializationError(f"cannot store a {type(value).__name__} in a PHP session: {value!r:.80}")


def _float_text(value: float) -> bytes:
    if math.isnan(value):
        return b"NAN"
    if math.isinf(value):
        return b"INF" if value > 0 else b"-INF"
    # repr is the shortest text that reads back to the same double, like PHP
    # with serialize_precision = -1 (its default since 7.1).
    return repr(value).encode("ascii")


# --- unserialize -----------------------------------------------------------------


class _Reader:
    """A cursor over the bytes being decoded; every error names the offset."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def fail(self, reason: str) -> SerializationError:
        return SerializationError(f"bad PHP serialized data at byte {self.pos}: {reason}")

    def expect(self, token: bytes) -> None:
        end = self.pos + len(token)
        if self.data[self.pos:end] != token:
            got = self.data[self.pos:end + 8]
            raise self.fail(f"expected {token.decode()!r}, got {got!r}")
        self.pos = end

    def until(self, stop: bytes, pattern: re.Pattern[bytes], what: str) -> bytes:
        """The text before the next ``stop`` byte, which must match ``pattern`` (bounded length)."""
        end = self.data.find(stop, self.pos, self.pos + _MAX_NUMBER_TEXT + 1)
        if end < 0:
            raise self.fail(f"unterminated {what}")
        text = self.data[self.pos:end]
        if not pattern.fullmatch(text):
            raise self.fail(f"bad {what} {text!r}")
        self.pos = end + 1
        return text

    def remaining(self) -> int:
        return len(self.data) - self.pos


def php_unserialize(data: bytes) -> Any:
    """Decode one value written by PHP's ``serialize()``; nothing may follow it.

    Raises:
        SerializationError: malformed data, trailing bytes, a declared length or
            count larger than the data, an object or reference, or nesting deeper
            than ``MAX_DEPTH``.
    """
    reader = _Reader(bytes(data))
    value = _decode(reader, 0)
    if reader.remaining():
        raise reader.fail("trailing bytes after the value")
    return value


def _decode(reader: _Reader, depth: int) -> Any:
    data = reader.data
    if reader.remaining() < 2:
        raise reader.fail("data ends where a value should start")
    kind = data[reader.pos:reader.pos + 1]
    if kind == b"N":
        reader.expect(b"N;")
        return None
    reader.pos += 1
    reader.expect(b":")
    if kind == b"b":
        flag = reader.until(b";", re.compile(rb"[01]"), "bool")
        return flag == b"1"
    if kind == b"i":
        number = int(reader.until(b";", _INT_TEXT, "int"))
        if not _INT_MIN <= number <= _INT_MAX:
            raise reader.fail(f"int {number} out of 64-bit range")
        return number
    if kind == b"d":
        text = reader.until(b";", _FLOAT_TEXT, "float")
        return float(text.replace(b"INF", b"inf").replace(b"NAN", b"nan"))
    if kind == b"s":
        length = int(reader.until(b":", _LENGTH_TEXT, "string length"))
        # The quotes and ';' need 3 more bytes: a length past the end is refused
        # before anything is sliced.
        if length + 3 > reader.remaining():
            raise reader.fail(f"string of {length} bytes declared, {max(reader.remaining() - 3, 0)} left")
        reader.expect(b'"')
        raw = data[reader.pos:reader.pos + length]
        reader.pos += length
        reader.expect(b'";')
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw
    if kind == b"a":
        count = int(reader.until(b":", _LENGTH_TEXT, "array count"))
        # Each element takes at least 6 bytes ("i:0;N;"): a count the data cannot
        # hold is refused before the loop.
        if count * 6 > reader.remaining():
            raise reader.fail(f"array of {count} elements declared, data too short")
        if depth >= MAX_DEPTH:
            raise reader.fail(f"nested deeper than {MAX_DEPTH} arrays")
        reader.expect(b"{")
        result: dict[int | str, Any] = {}
        for _ in range(count):
            key_kind = data[reader.pos:reader.pos + 1]
            if key_kind not in (b"i", b"s"):
                raise reader.fail(f"array keys must be int or string, got {key_kind!r}")
            key = _decode(reader, depth + 1)
            if isinstance(key, bytes):
                key = key.decode("utf-8", "surrogateescape")
            result[key] = _decode(reader, depth + 1)
        reader.expect(b"}")
        if list(result) == list(range(len(result))):
            return list(result.values())
        return result
    if kind in (b"O", b"C", b"E"):
        raise reader.fail("PHP objects and enums are not supported in sessions shared with Python")
    if kind in (b"r", b"R"):
        raise reader.fail("PHP references are not supported")
    raise reader.fail(f"unknown type {kind!r}")


# --- session formats -------------------------------------------------------------


class Serializer:
    """One session format: a ``dict`` of session data to bytes and back.

    Attributes:
        name: the ``session.serialize_handler`` value.
    """

    __slots__ = ("name", "_dumps", "_loads")

    def __init__(self, name: str, dumps: Callable[[dict], bytes], loads: Callable[[bytes], dict]) -> None:
        self.name = name
        self._dumps = dumps
        self._loads = loads

    def dumps(self, data: dict) -> bytes:
        """Encode the session's data.

        Raises:
            SerializationError: a key or value this format cannot hold.
        """
        return self._dumps(data)

    def loads(self, raw: bytes) -> dict:
        """Decode stored data; empty bytes are an empty session.

        Raises:
            SerializationError: the bytes are not valid data of this format.
        """
        if not raw:
            return {}
        return self._loads(raw)


def _php_dumps(data: dict) -> bytes:
    out: list[bytes] = []
    for key, value in data.items():
        if not isinstance(key, str):
            raise SerializationError(f"php session keys must be str, got {type(key).__name__} {key!r}")
        if "|" in key or "!" in key:
            # PHP's own encoder refuses these: '|' ends the name, '!' marked undefined names.
            raise SerializationError(f"php session keys cannot hold '|' or '!': {key!r}")
        out.append(key.encode("utf-8"))
        out.append(b"|")
        _encode(value, out, 0)
    return b"".join(out)


def _php_loads(raw: bytes) -> dict:
    reader = _Reader(bytes(raw))
    result: dict[str, Any] = {}
    while reader.remaining():
        bar = reader.data.find(b"|", reader.pos)
        if bar < 0:
            raise reader.fail("a name without '|' and value")
        name = reader.data[reader.pos:bar]
        try:
            key = name.decode("utf-8")
        except UnicodeDecodeError:
            raise reader.fail(f"session key {name!r} is not UTF-8") from None
        reader.pos = bar + 1
        result[key] = _decode(reader, 0)
    return result


def _php_serialize_dumps(data: dict) -> bytes:
    return php_serialize(dict(data))


def _php_serialize_loads(raw: bytes) -> dict:
    value = php_unserialize(raw)
    if isinstance(value, list):
        return dict(enumerate(value))
    if not isinstance(value, dict):
        raise SerializationError(f"php_serialize session data must be an array, got {type(value).__name__}")
    return value


def _json_dumps(data: dict) -> bytes:
    try:
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"cannot store in a json session: {exc}") from None


def _json_loads(raw: bytes) -> dict:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise SerializationError(f"bad json session data: {exc}") from None
    if not isinstance(value, dict):
        raise SerializationError(f"json session data must be an object, got {type(value).__name__}")
    return value


_SERIALIZERS = {
    "json": Serializer("json", _json_dumps, _json_loads),
    "php": Serializer("php", _php_dumps, _php_loads),
    "php_serialize": Serializer("php_serialize", _php_serialize_dumps, _php_serialize_loads),
}


def get_serializer(name: str) -> Serializer:
    """The serializer for a ``session.serialize_handler`` value.

    Raises:
        KeyError: no such format (settings are checked before this is called).
    """
    return _SERIALIZERS[name]
