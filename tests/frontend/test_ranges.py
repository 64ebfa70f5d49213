"""``wanted_range``: a request's Range and If-Range against a body's ETag, Last-Modified and size."""

from __future__ import annotations

import pytest

from fcgi_cluster.frontend._ranges import UNSATISFIABLE, content_range, wanted_range

DATE = b"Tue, 01 Dec 2026 10:00:00 GMT"


@pytest.mark.parametrize("headers, expected", [
    ([(b"Range", b"bytes=2-5")], (2, 5)),
    ([(b"range", b" bytes=-3 ")], (7, 9)),
    ([(b"Range", b"bytes=10-")], UNSATISFIABLE),
    ([(b"Range", b"bytes=0-1"), (b"Range", b"bytes=2-3")], None),  # sent twice: ignored
    ([(b"Range", b"bytes=0-1"), (b"If-Range", b'"v1"')], (0, 1)),
    ([(b"Range", b"bytes=0-1"), (b"If-Range", DATE)], (0, 1)),
    ([(b"Range", b"bytes=0-1"), (b"If-Range", b"Tue, 01 Dec 2026 09:59:59 GMT")], None),
    ([(b"Range", b"bytes=0-1"), (b"If-Range", b'"v1"'), (b"If-Range", b'"v1"')], None),
    ([(b"Range", b"bytes=0-1"), (b"If-Range", b'W/"v1"')], None),
    ([], None),
])
def test_wanted_range(headers, expected) -> None:
    assert wanted_range(headers, b'"v1"', DATE, 10) == expected


def test_a_weak_etag_never_matches_and_no_validator_matches_nothing() -> None:
    asked = [(b"Range", b"bytes=0-1"), (b"If-Range", b'W/"v1"')]
    assert wanted_range(asked, b'W/"v1"', None, 10) is None
    assert wanted_range([(b"Range", b"bytes=0-1"), (b"If-Range", DATE)], None, None, 10) is None
    assert content_range(0, 1, 10) == b"bytes 0-1/10"
