"""The settings toolkit: one error type and the value converters every settings format uses.

A converter takes the raw value as the format gives it and returns the Python
value, or raises ``ValueError`` with the reason in a few words. The format's
reader catches that and raises ``SettingsError``, which names the file, the
line and the key in the same words for every format: ``file:line: key: reason``.

Two kinds of format give values: INI pool files and ``--session KEY=VALUE``
give strings, read in php-fpm's spellings (``yes``, ``5m``); TOML gives typed
values (int, float, bool, str). The factories take ``typed=True`` for TOML:
numbers and booleans must then be TOML's own, since ``"4"`` in quotes is a
string and most likely a mistake, and a message shows the value as TOML
writes it (``true``, ``"4"``). One grammar serves both for durations and
sizes (``parse_duration``, ``parse_size``); an INI duration also takes the
front-end's compound forms (``1h30m``) and weeks (``w``), which is more than
php-fpm reads and harmless.

This module imports nothing from the front-end, the worker or sessions; they
import it.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "REQUIRED", "Convert", "Key", "SettingsError", "boolean", "choice", "duration", "integer",
    "parse_duration", "parse_size", "show", "size", "text", "typed_boolean",
]  # fmt: skip

#: A converter: the value as the format gives it in, the Python value out (or ValueError).
Convert = Callable[[object], object]

# php-fpm's spellings (PHP's ini parser); "" is off, as PHP reads an empty value.
_TRUE = ("1", "on", "true", "yes")
_FALSE = ("0", "off", "false", "no", "")
_WHOLE_NUMBER = re.compile(r"[+-]?\d{1,12}")
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d|w)?")
_DURATION_UNITS = {"w": 7 * 86400.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_SIZE = re.compile(r"\s*(\d+)\s*([kKmMgG]?)\s*")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


class SettingsError(ValueError):
    """A setting that cannot be used: ``str()`` is ``file:line: key: reason``.

    Each part that is unknown is left out with its colon: the line when the
    key is not in the file (a required key that is missing), the file when
    the value came from elsewhere (``--session`` on a command line), the key
    when the error is about the file as a whole (a syntax error).

    Attributes:
        filename: the file, or None.
        line: 1-based line number, or None.
        key: the key as the user wrote it, or None.
        reason: what is wrong, for a human.
    """

    def __init__(self, filename: str | None, line: int | None, key: str | None, reason: str) -> None:
        self.filename = filename
        self.line = line
        self.key = key
        self.reason = reason
        super().__init__(": ".join(part for part in (_where(filename, line), key, reason) if part))

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        # The default pickling passes str(self) back to __init__, which takes
        # four arguments; `fcgi-cluster up` and a pool master report errors
        # from child processes.
        return (type(self), (self.filename, self.line, self.key, self.reason))


def _where(filename: str | None, line: int | None) -> str | None:
    if filename is None:
        return None
    return f"{filename}:{line}" if line else filename


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: The default of a key that has none: the reader reports it missing.
REQUIRED: object = _Required()


@dataclass(frozen=True)
class Key:
    """One key of a settings table: its name, converter, default and a one-line doc.

    A reader checks a table's keys against its ``Key`` tuple (an unknown key is
    an error), converts each value present with ``convert`` and fills in
    ``default`` for the others; a key whose ``default`` is ``REQUIRED`` must be
    there. ``convert`` None: the value is a table, an array or depends on other
    keys, and the section's reader handles it; the key is still checked and
    documented.

    Attributes:
        name: the key as the user writes it.
        convert: the converter, or None (see above).
        default: the Python value used when the key is absent, or ``REQUIRED``.
        doc: one line for the reference documentation.
        unit: how the documentation writes the default: "s" (seconds, as
            ``"60s"``), "bytes" (as ``"128k"``), or "" (as the value is).
    """

    name: str
    convert: Convert | None
    default: object
    doc: str
    unit: str = ""

    @property
    def required(self) -> bool:
        """Whether the key must be written."""
        return self.default is REQUIRED


def show(value: object) -> str:
    """A typed (TOML) value as the user wrote it, for a message: ``true``, ``"4"``, ``an array``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return str(value)  # dates and times


def _is_number(value: object) -> bool:
    # bool is a subclass of int, and `timeout = true` is a mistake, not 1 second.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer(low: int, high: int | None = None, *, typed: bool = False) -> Callable[[object], int]:
    """A whole number from ``low`` to ``high`` (no upper bound when None).

    Untyped: an int or a string of digits (INI). Typed: an int only (TOML).
    """
    wanted = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"

    def convert(value: object) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif typed or not isinstance(value, str):
            raise ValueError(f"must be {wanted}, got {show(value)}")
        elif _WHOLE_NUMBER.fullmatch(value.strip()):
            number = int(value.strip())
        else:
            raise ValueError(f"must be an integer, got {value!r}")
        if number < low or (high is not None and number > high):
            if typed:
                raise ValueError(f"must be {wanted}, got {show(value)}")
            bounds = f"{low} or more" if high is None else f"from {low} to {high}"
            raise ValueError(f"must be {bounds}, got {number}")
        return number

    return convert


def boolean(value: object) -> bool:
    """php-fpm's spellings: yes/no, on/off, true/false, 1/0 (any case); empty is off, as in PHP.

    A bool is taken as it is.
    """
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower() if isinstance(value, str) else None
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"must be yes/no, on/off, true/false or 1/0, got {value!r}")


def typed_boolean(value: object) -> bool:
    """TOML's ``true`` or ``false``; a string (``"yes"``) is refused."""
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {show(value)}")
    return value


def choice(choices: Sequence[str], *, fold: bool = True, typed: bool = False) -> Callable[[object], str]:
    """One of ``choices``, returned as spelled there; ``fold``: written in any case.

    Typed (TOML): spelled exactly, and a near miss is named ("did you mean").
    """
    shown = ", ".join(option or "''" for option in choices)

    def convert(value: object) -> str:
        if typed:
            if isinstance(value, str) and value in choices:
                return value
            reason = f"must be one of: {', '.join(choices)}; got {show(value)}"
            close = difflib.get_close_matches(value, choices, n=1) if isinstance(value, str) else []
            if close:
                reason += f'; did you mean "{close[0]}"?'
            raise ValueError(reason)
        text = value.strip() if isinstance(value, str) else None
        for option in choices:
            if text == option or (fold and text is not None and text.lower() == option.lower()):
                return option
        raise ValueError(f"must be one of {shown}, got {value!r}")

    return convert


def _seconds(text: str) -> float | None:
    """The duration grammar, shared by every format; None when ``text`` is not in it.

    One or more ``<number><unit>`` parts, largest unit first and each unit
    once, optionally separated by spaces: ``"150ms"``, ``"10s"``, ``"1m30s"``,
    ``"1h 30m"``, ``".5s"``. A number without a unit is seconds, only on its
    own: in ``"1m30"`` it is more likely a typo than an intended 30 seconds.
    """
    text = text.strip()
    if not text:
        return None
    total = 0.0
    pos = 0
    previous = math.inf
    while pos < len(text):
        part = _DURATION_PART.match(text, pos)
        if part is None:
            return None
        number, unit = part.groups()
        if unit is None:
            if pos or part.end() != len(text):
                return None
            unit = "s"
        scale = _DURATION_UNITS[unit]
        if scale >= previous:
            return None
        previous = scale
        total += float(number) * scale
        pos = part.end()
    return total


def parse_duration(value: object) -> float:
    """Seconds from a number or a duration string (nginx's syntax).

    Args:
        value: an int or float of seconds, or a string of ``<number><unit>``
            parts, largest first: ``"150ms"``, ``"10s"``, ``"1m30s"``,
            ``"1h 30m"``, ``"1.5s"``. Units: ms, s, m (minutes), h, d, w. A
            string holding only a number is seconds (``"0"``), as in nginx.

    Returns:
        The duration in seconds, >= 0.

    Raises:
        ValueError: the value is negative, not finite, a bool, another type,
            or a string in another syntax; the message shows the value.
    """
    error = f'must be a duration like "10s", got {show(value)}'
    if _is_number(value):
        if not math.isfinite(value) or value < 0:  # type: ignore[arg-type]
            raise ValueError(error)
        return float(value)  # type: ignore[arg-type]
    if not isinstance(value, str):
        raise ValueError(error)
    seconds = _seconds(value)
    if seconds is None:
        raise ValueError(f'{error} (units ms, s, m, h, d, w, largest first, as in "1m30s")')
    return seconds


def duration(
    low: float = 0.0, *, allow_zero: bool = False, above: float | None = None, typed: bool = False
) -> Callable[[object], float]:
    """Seconds (see ``parse_duration``): at least ``low`` (or 0 if allowed), more than ``above`` if set.

    Untyped (INI): ``2``, ``0.5``, ``5ms``, ``10s``, ``5m``, ``1h``, ``1d``
    (and the compound forms). Typed (TOML): a number or such a string.
    """

    def convert(value: object) -> float:
        if typed:
            seconds = parse_duration(value)
        elif _is_number(value) and math.isfinite(value) and value >= 0:  # type: ignore[operator]
            seconds = float(value)  # type: ignore[arg-type]
        else:
            found = _seconds(value) if isinstance(value, str) else None
            if found is None:
                raise ValueError(f"must be a time like 30s, 5m, 1h, 1d (a bare number is seconds), got {value!r}")
            seconds = found
        if above is not None and seconds <= above:
            shown = show(value) if typed else repr(value)
            raise ValueError(f"must be a duration above {above:g}, got {shown}")
        if not (seconds >= low or (allow_zero and seconds == 0)):
            shown = show(value) if typed else repr(value)
            raise ValueError(f"must be at least {low:g} s, got {shown}")
        return seconds

    return convert


def parse_size(value: object) -> int:
    """Bytes from a number or a size string (nginx's syntax).

    Args:
        value: an int of bytes, or a string ``"<digits>[k|m|g]"`` (either
            case, powers of 1024): ``"32k"``, ``"1m"``, ``"1g"``, ``"0"``.

    Returns:
        The size in bytes, >= 0. Whether 0 makes sense (it means "unlimited"
        for ``max_body_size``) is up to the caller.

    Raises:
        ValueError: negative, a float, a bool, another type, or another syntax.
    """
    error = f'must be a size like "32k" or a number of bytes, got {show(value)}'
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(error)
        return value
    if not isinstance(value, str):
        raise ValueError(error)
    match = _SIZE.fullmatch(value)
    if match is None:
        raise ValueError(f"{error} (units k, m, g)")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def size(low: int = 0) -> Callable[[object], int]:
    """Bytes (see ``parse_size``), at least ``low``."""

    def convert(value: object) -> int:
        number = parse_size(value)
        if number < low:
            raise ValueError(f"must be at least {low} byte{'s' if low > 1 else ''}, got {show(value)}")
        return number

    return convert


def text(value: object) -> str:
    """Any string, without the spaces around it."""
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {value!r}")
    return value.strip()
