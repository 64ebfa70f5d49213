"""Byte ranges and HTTP-dates (RFC 9110 sections 14 and 5.6.7), pure: for static files and cached answers.

``parse_range`` evaluates one ``Range`` field against a body's size: a single
``bytes=a-b``, ``a-`` or ``-n`` gives ``(first, last)``; one that starts past
the end (or ``-0``, or any range of an empty body) gives ``UNSATISFIABLE``
(416 with ``Content-Range: bytes */size``); anything else (another unit,
several ranges, garbage) gives None, the whole body with 200.
``if_range_matches`` is the If-Range check (strong ETag comparison, or the
exact Last-Modified date). ``wanted_range`` does both over a request's
header list, as nginx serves a range of a cached answer.
"""

from __future__ import annotations

import calendar
import datetime
import re

__all__ = ["UNSATISFIABLE", "content_range", "if_range_matches", "parse_http_date", "parse_range", "wanted_range"]

_MONTHS = {
    name: number
    for number, name in enumerate(
        (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"),
        start=1,
    )
}
# The three HTTP-date forms of RFC 9110 section 5.6.7: IMF-fixdate, then the
# obsolete RFC 850 and asctime forms, which recipients must still accept.
_IMF_FIXDATE = re.compile(rb"[A-Z][a-z]{2}, (\d{2}) ([A-Z][a-z]{2}) (\d{4}) (\d{2}):(\d{2}):(\d{2}) GMT")
_RFC850_DATE = re.compile(rb"[A-Z][a-z]+, (\d{2})-([A-Z][a-z]{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2}) GMT")
_ASCTIME_DATE = re.compile(rb"[A-Z][a-z]{2} ([A-Z][a-z]{2}) ([ \d]\d) (\d{2}):(\d{2}):(\d{2}) (\d{4})")

_SPEC = re.compile(r"([0-9]*)-([0-9]*)")


def parse_http_date(value: bytes | None) -> int | None:
    """Seconds since the epoch for an HTTP-date, or None if absent or invalid."""
    if value is None:
        return None
    if found := _IMF_FIXDATE.fullmatch(value):
        day, month, year, hour, minute, second = found.groups()
    elif found := _RFC850_DATE.fullmatch(value):
        day, month, year, hour, minute, second = found.groups()
        # RFC 9110 5.6.7: a two-digit year more than 50 years in the future
        # is in the past century.
        this_year = datetime.datetime.now(datetime.timezone.utc).year
        full = this_year // 100 * 100 + int(year)
        year = b"%d" % (full - 100 if full > this_year + 50 else full)
    elif found := _ASCTIME_DATE.fullmatch(value):
        month, day, hour, minute, second, year = found.groups()
    else:
        return None
    number = _MONTHS.get(month)
    if number is None:
        return None
    try:
        moment = datetime.datetime(
            int(year), number, int(day.strip()), int(hour), int(minute), int(second)
        )
    except ValueError:  # 31 Feb, hour 25, ...
        return None
    return calendar.timegm(moment.timetuple())


#: What ``parse_range`` answers for a range no byte of the body satisfies (416).
UNSATISFIABLE = object()


def if_range_matches(value: bytes, etag: bytes | None, mtime: int | None) -> bool:
    """Whether an If-Range value names this body: its ETag (strong comparison) or its Last-Modified time."""
    if value.startswith((b'"', b"W/")):
        # RFC 9110 13.1.5: strong comparison, so a weak tag never matches.
        return value == etag and not value.startswith(b"W/")
    return mtime is not None and parse_http_date(value) == mtime


def parse_range(value: bytes, size: int) -> tuple[int, int] | object | None:
    """Evaluate a Range field against a file of ``size`` bytes (RFC 9110 14.1.2)."""
    unit, equals, ranges = value.decode("latin-1").partition("=")
    if not equals or unit.strip().lower() != "bytes":
        return None
    # A list may hold empty elements ("bytes=0-1,"); they count for nothing.
    specs = [spec.strip() for spec in ranges.split(",") if spec.strip()]
    if len(specs) != 1:
        return None
    found = _SPEC.fullmatch(specs[0])
    if found is None:
        return None
    first_text, last_text = found.groups()
    try:
        first = int(first_text) if first_text else None
        last = int(last_text) if last_text else None
    except ValueError:  # more digits than int() accepts: not a range we can honour
        return None
    if first is None:
        if last is None:
            return None
        # "-n": the last n bytes. "-0" and any suffix of an empty file select nothing.
        if last == 0 or size == 0:
            return UNSATISFIABLE
        return max(0, size - last), size - 1
    if last is not None and last < first:
        return None
    if first >= size:
        return UNSATISFIABLE
    return first, size - 1 if last is None else min(last, size - 1)


def wanted_range(request_headers: list[tuple[bytes, bytes]], etag: bytes | None, last_modified: bytes | None,
                 size: int) -> tuple[int, int] | object | None:
    """The range of a ``size``-byte body a request asks for: ``(first, last)``, ``UNSATISFIABLE`` or None (all).

    A Range sent more than once is ignored; so is one whose If-Range (sent
    once) names another ETag or date than ``etag`` / ``last_modified``.
    """
    ranges = [value.strip(b" \t") for name, value in request_headers if name.lower() == b"range"]
    if len(ranges) != 1:
        return None
    conditions = [value.strip(b" \t") for name, value in request_headers if name.lower() == b"if-range"]
    if conditions:
        mtime = parse_http_date(last_modified.strip()) if last_modified is not None else None
        tag = etag.strip() if etag is not None else None
        if len(conditions) != 1 or not if_range_matches(conditions[0], tag, mtime):
            return None
    return parse_range(ranges[0], size)


def content_range(first: int, last: int, size: int) -> bytes:
    """The Content-Range value of a part."""
    return b"bytes %d-%d/%d" % (first, last, size)
