"""The settings toolkit: one error type and the value converters every settings format uses.

A converter takes the raw value as the format gives it (a string from an INI
pool file or ``--session KEY=VALUE``) and returns the Python value, or raises
``ValueError`` with the reason in a few words. The format's reader catches
that and raises ``SettingsError``, which names the file, the line and the key
in the same words for every format: ``file:line: key: reason``.

This module imports nothing from the front-end, the worker or sessions; they
import it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

__all__ = ["SettingsError", "boolean", "choice", "duration", "integer", "text"]

Convert = Callable[[str], object]

# php-fpm's spellings (PHP's ini parser); "" is off, as PHP reads an empty value.
_TRUE = ("1", "on", "true", "yes")
_FALSE = ("0", "off", "false", "no", "")
_WHOLE_NUMBER = re.compile(r"[+-]?\d{1,12}")
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?")
_DURATION_UNITS = {None: 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "h": 3600.0, "d": 86400.0}


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


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    """A whole number from ``low`` to ``high`` (no upper bound when None)."""

    def convert(value: str) -> int:
        text = value.strip()
        if not _WHOLE_NUMBER.fullmatch(text):
            raise ValueError(f"must be an integer, got {value!r}")
        number = int(text)
        if number < low or (high is not None and number > high):
            bounds = f"{low} or more" if high is None else f"from {low} to {high}"
            raise ValueError(f"must be {bounds}, got {number}")
        return number

    return convert


def boolean(value: str) -> bool:
    """php-fpm's spellings: yes/no, on/off, true/false, 1/0 (any case); empty is off, as in PHP."""
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"must be yes/no, on/off, true/false or 1/0, got {value!r}")


def choice(choices: Sequence[str], *, fold: bool = True) -> Callable[[str], str]:
    """One of ``choices``, returned as spelled there; ``fold``: written in any case."""
    shown = ", ".join(option or "''" for option in choices)

    def convert(value: str) -> str:
        text = value.strip()
        for option in choices:
            if text == option or (fold and text.lower() == option.lower()):
                return option
        raise ValueError(f"must be one of {shown}, got {value!r}")

    return convert


def duration(low: float = 0.0, *, allow_zero: bool = False) -> Callable[[str], float]:
    """Seconds: ``2``, ``0.5``, ``5ms``, ``10s``, ``5m``, ``1h``, ``1d``; at least ``low`` (or 0 if allowed)."""

    def convert(value: str) -> float:
        match = _DURATION.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"must be a time like 30s, 5m, 1h, 1d (a bare number is seconds), got {value!r}")
        seconds = float(match[1]) * _DURATION_UNITS[match[2]]
        if not (seconds >= low or (allow_zero and seconds == 0)):
            raise ValueError(f"must be at least {low:g} s, got {value!r}")
        return seconds

    return convert


def text(value: str) -> str:
    """Any string, without the spaces around it."""
    return value.strip()
