"""Line numbers in a TOML text: where each key path starts, for error messages.

tomllib reports no positions for values, so ``Locator`` scans the text
(already known to be valid TOML) for the line where each key, table header and
array element starts.
"""

from __future__ import annotations

import bisect
import json
import re
import tomllib

from ._config_model import ConfigError

__all__ = ["KeyPath", "Locator", "dotted", "syntax_error"]

#: Keys and array indices, the way tomllib's result is indexed: ``("route", 1, "upstream")``.
KeyPath = tuple[str | int, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class Locator:
    """The line where each key path starts in a TOML text.

    Paths are tuples of keys and array indices, the way tomllib's result is
    indexed: ``("route", 1, "upstream")``, ``("upstream", "app", "servers", 0,
    "weight")``. The scanner follows table headers (counting the elements of
    each array of tables), ``key = value`` lines, dotted and quoted keys, and
    goes inside arrays and inline tables, so an element or an inline key gets
    its own line when it is on one. It assumes the text is valid TOML: it is
    only run after tomllib accepted it.
    """

    def __init__(self, text: str) -> None:
        self.lines: dict[KeyPath, int] = {}
        self._text = text
        self._pos = 0
        self._newlines = [i for i, char in enumerate(text) if char == "\n"]
        self._arrays: dict[KeyPath, int] = {}
        if text:
            self._scan()

    def line(self, path: KeyPath) -> int | None:
        """The line of ``path``, or of its nearest ancestor in the text, or None."""
        while path:
            found = self.lines.get(path)
            if found is not None:
                return found
            path = path[:-1]
        return None

    def _line_at(self, pos: int) -> int:
        return bisect.bisect_left(self._newlines, pos) + 1

    def _scan(self) -> None:
        text = self._text
        table: KeyPath = ()
        while True:
            self._skip_blank()
            if self._pos >= len(text):
                return
            start = self._pos
            if text.startswith("[[", start):
                self._pos += 2
                table = self._header(self._key(), start, array=True)
                self._skip_blank(newlines=False)
                self._pos += 2  # "]]"
            elif text[start] == "[":
                self._pos += 1
                table = self._header(self._key(), start, array=False)
                self._skip_blank(newlines=False)
                self._pos += 1  # "]"
            else:
                self._key_value(table)

    def _header(self, keys: tuple[str, ...], start: int, *, array: bool) -> KeyPath:
        line = self._line_at(start)
        path: KeyPath = ()
        for i, key in enumerate(keys):
            path += (key,)
            if array and i == len(keys) - 1:
                count = self._arrays.get(path, 0)
                self._arrays[path] = count + 1
                self.lines.setdefault(path, line)
                path += (count,)
            elif path in self._arrays:
                # [route.x] after [[route]] refers to the latest route.
                path += (self._arrays[path] - 1,)
            if i < len(keys) - 1:
                self.lines.setdefault(path, line)
        self.lines[path] = line
        return path

    def _key_value(self, table: KeyPath) -> None:
        start = self._pos
        keys = self._key()
        self._skip_blank(newlines=False)
        self._pos += 1  # "="
        self._skip_blank(newlines=False)
        line = self._line_at(start)
        for i in range(1, len(keys)):
            self.lines.setdefault(table + keys[:i], line)
        path = table + keys
        self.lines[path] = line
        self._value(path)

    def _key(self) -> tuple[str, ...]:
        text = self._text
        keys: list[str] = []
        while True:
            self._skip_blank(newlines=False)
            start = self._pos
            if text[start] == '"':
                self._skip_basic_string()
                # Let tomllib decode the escapes: it is the reference for them.
                keys.append(tomllib.loads(f"k = {text[start:self._pos]}")["k"])
            elif text[start] == "'":
                end = text.index("'", start + 1)
                keys.append(text[start + 1 : end])
                self._pos = end + 1
            else:
                match = _BARE_KEY.match(text, start)
                assert match is not None, "the text was accepted by tomllib"
                keys.append(match.group())
                self._pos = match.end()
            self._skip_blank(newlines=False)
            if self._pos < len(text) and text[self._pos] == ".":
                self._pos += 1
                continue
            return tuple(keys)

    def _value(self, path: KeyPath) -> None:
        text = self._text
        pos = self._pos
        if text.startswith('"""', pos):
            self._pos += 3
            while not text.startswith('"""', self._pos):
                self._pos += 2 if text[self._pos] == "\\" else 1
            self._pos += 3
            self._skip_closing_quotes('"')
        elif text.startswith("'''", pos):
            self._pos = text.index("'''", pos + 3) + 3
            self._skip_closing_quotes("'")
        elif text[pos] == '"':
            self._skip_basic_string()
        elif text[pos] == "'":
            self._pos = text.index("'", pos + 1) + 1
        elif text[pos] == "[":
            self._array(path)
        elif text[pos] == "{":
            self._inline_table(path)
        else:
            # Numbers, booleans, dates (which may hold a space).
            while self._pos < len(text) and text[self._pos] not in ",]}#\r\n":
                self._pos += 1

    def _skip_closing_quotes(self, quote: str) -> None:
        # A multi-line string may end with one or two quotes of its own: """a"""".
        for _ in range(2):
            if self._pos < len(self._text) and self._text[self._pos] == quote:
                self._pos += 1

    def _skip_basic_string(self) -> None:
        text = self._text
        self._pos += 1
        while text[self._pos] != '"':
            self._pos += 2 if text[self._pos] == "\\" else 1
        self._pos += 1

    def _array(self, path: KeyPath) -> None:
        self._pos += 1
        index = 0
        while True:
            self._skip_blank()
            if self._text[self._pos] == "]":
                self._pos += 1
                return
            self.lines[path + (index,)] = self._line_at(self._pos)
            self._value(path + (index,))
            self._skip_blank()
            if self._text[self._pos] == ",":
                self._pos += 1
            index += 1

    def _inline_table(self, path: KeyPath) -> None:
        self._pos += 1
        while True:
            self._skip_blank()
            if self._text[self._pos] == "}":
                self._pos += 1
                return
            self._key_value(path)
            self._skip_blank()
            if self._text[self._pos] == ",":
                self._pos += 1

    def _skip_blank(self, newlines: bool = True) -> None:
        """Skip spaces, tabs and comments, and line breaks when ``newlines``."""
        text = self._text
        while self._pos < len(text):
            char = text[self._pos]
            if char in " \t" or (newlines and char in "\r\n"):
                self._pos += 1
            elif char == "#":
                end = text.find("\n", self._pos)
                self._pos = len(text) if end < 0 else end
            else:
                return


def dotted(path: KeyPath) -> str:
    """A key path as users read it: ``upstream.app.servers[1].weight``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part if _BARE_KEY.fullmatch(part) else json.dumps(part, ensure_ascii=False)
            out += f".{name}" if out else name
    return out


def syntax_error(filename: str, text: str, exc: tomllib.TOMLDecodeError) -> ConfigError:
    message = str(exc)
    # tomllib (Python 3.11-3.13) has no position attributes, only this suffix.
    at = re.search(r" \(at line (\d+), column (\d+)\)$", message)
    if at is not None:
        reason = f"TOML syntax error: {message[: at.start()]} (column {at.group(2)})"
        return ConfigError(filename, int(at.group(1)), None, reason)
    end = message.rfind(" (at end of document)")
    if end >= 0:
        message = message[:end] + " (at the end of the file)"
    return ConfigError(filename, text.count("\n") + 1, None, f"TOML syntax error: {message}")
