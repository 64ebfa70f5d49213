"""The front-end's HTTP/1.1 server protocol, driven with plain byte strings.

* Requests: the head's fields, keep-alive, pipelining gated by start_next_cycle
  (and the cap on held pipelined bytes), bodies split at every byte, 100-continue,
  EOF between and inside requests, Upgrade requests served as plain ones.
* Refusals: every smuggling vector and malformed form, every limit, garbage; the
  ERROR state afterwards.
* Responses: framing for HTTP/1.1, HTTP/1.0, HEAD, 1xx, 204, 304; the headers
  written here; error pages; misuse of the API.
* Properties (hypothesis): any split of a valid pipeline gives the same events;
  random bytes raise nothing but HTTPError.

Expected bytes are written out by hand from RFC 9112, not produced by the code
under test.
"""

from __future__ import annotations


import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fcgi_cluster.frontend._http import (
    NEED_DATA,
    Body,
    ConnectionClosed,
    EndOfMessage,
    HTTPError,
    HTTPLimits,
    HTTPServerConnection,
    HTTPUsageError,
    RequestHead,
)

# 2026-11-25 05:00:00 UTC, a Wednesday.
NOW = 1795582800.0
DATE = b"Date: Wed, 25 Nov 2026 05:00:00 GMT\r\n"

GET = b"GET /a%20b?x=1&y HTTP/1.1\r\nHost: example.com\r\n\r\n"


def connection(limits: HTTPLimits = HTTPLimits(), **kwargs) -> HTTPServerConnection:
    kwargs.setdefault("clock", lambda: NOW)
    return HTTPServerConnection(limits, **kwargs)


def drain(conn: HTTPServerConnection) -> list:
    """Events until NEED_DATA (left out) or ConnectionClosed (kept)."""
    events = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            return events
        events.append(event)
        if isinstance(event, ConnectionClosed):
            return events


def receive(conn: HTTPServerConnection, *pieces: bytes) -> list:
    """Feed each piece and drain after it, as a server loop does."""
    events = []
    for piece in pieces:
        conn.receive_data(piece)
        events += drain(conn)
    return events


def merged(events: list) -> list:
    """Events with consecutive Body events joined, so splits do not matter."""
    out: list = []
    for event in events:
        if isinstance(event, Body) and out and isinstance(out[-1], Body):
            out[-1] = Body(out[-1].data + event.data)
        else:
            out.append(event)
    return out


def respond(conn: HTTPServerConnection, body: bytes = b"hello", **kwargs) -> bytes:
    kwargs.setdefault("content_length", len(body))
    return conn.send_head(200, [(b"Content-Type", b"text/plain")], **kwargs) + conn.send_body(body) + conn.send_end()


def refused(data: bytes, limits: HTTPLimits = HTTPLimits(), *, bytewise: bool = True) -> int:
    """The status the request is refused with, fed whole and (the same) byte by byte."""
    statuses = set()
    splits = [[data]]
    if bytewise:
        splits.append([data[i : i + 1] for i in range(len(data))])
    for pieces in splits:
        conn = connection(limits)
        with pytest.raises(HTTPError) as info:
            receive(conn, *pieces)
        statuses.add(info.value.status)
        # ERROR refuses more work.
        with pytest.raises(HTTPUsageError):
            conn.next_event()
        with pytest.raises(HTTPUsageError):
            conn.receive_data(b"GET / HTTP/1.1\r\n")
        assert not conn.keep_alive
    assert len(statuses) == 1, statuses
    return statuses.pop()


def head_lines(response: bytes) -> list[bytes]:
    head, sep, _ = response.partition(b"\r\n\r\n")
    assert sep
    return head.split(b"\r\n")


# --- requests ---------------------------------------------------------------------


def test_get_head_fields() -> None:
    conn = connection()
    events = receive(conn, b"GET /a%20b?x=1&y HTTP/1.1\r\nHost: example.com\r\nX-Two:  a b \t\r\nx-two: c\r\n\r\n")
    assert events == [
        RequestHead(
            method=b"GET",
            target=b"/a%20b?x=1&y",
            path=b"/a%20b",
            query=b"x=1&y",
            http_version=b"1.1",
            headers=[(b"host", b"example.com"), (b"x-two", b"a b"), (b"x-two", b"c")],
            content_length=None,
            chunked=False,
            expect_continue=False,
            keep_alive=True,
        ),
        EndOfMessage(),
    ]
    assert conn.request_complete
    with pytest.raises(AttributeError):  # events are immutable
        events[0].method = b"POST"  # type: ignore[misc]


def test_request_complete_only_once_end_of_message_is_returned() -> None:
    conn = connection()
    conn.receive_data(GET)
    assert isinstance(conn.next_event(), RequestHead)
    assert not conn.request_complete
    assert conn.next_event() == EndOfMessage()
    assert conn.request_complete
    assert conn.next_event() is NEED_DATA


def test_keep_alive_sequence() -> None:
    conn = connection()
    for n in range(3):
        events = receive(conn, b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % n)
        assert [type(e) for e in events] == [RequestHead, EndOfMessage]
        assert events[0].path == b"/%d" % n
        out = respond(conn)
        assert out == (
            b"HTTP/1.1 200 OK\r\n" + DATE + b"Server: fcgi-cluster\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 5\r\n\r\nhello"
        )
        assert conn.keep_alive
        conn.start_next_cycle()
        assert not conn.request_complete
    conn.receive_data(b"")
    assert drain(conn) == [ConnectionClosed()]
    assert conn.next_event() == ConnectionClosed()


def test_leading_empty_lines_are_ignored() -> None:
    conn = connection(HTTPLimits(max_header_size=len(GET)))
    events = receive(conn, b"\r\n\r\n\n" + GET)
    assert events[0].target == b"/a%20b?x=1&y"


@pytest.mark.parametrize(
    "request_, keep, connection_header",
    [
        (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", True, None),
        (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", False, b"close"),
        (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, Close\r\n\r\n", False, b"close"),
        (b"GET / HTTP/1.0\r\n\r\n", False, b"close"),
        (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", True, b"keep-alive"),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", False, b"close"),
    ],
)
def test_keep_alive_as_the_client_asked(request_: bytes, keep: bool, connection_header: bytes | None) -> None:
    conn = connection()
    head = receive(conn, request_)[0]
    assert head.keep_alive is keep
    lines = head_lines(respond(conn))
    found = [line for line in lines if line.lower().startswith(b"connection:")]
    assert found == ([b"Connection: " + connection_header] if connection_header else [])
    assert conn.keep_alive is keep
    if keep:
        conn.start_next_cycle()
    else:
        with pytest.raises(HTTPUsageError):
            conn.start_next_cycle()


def test_keep_alive_can_be_turned_off_not_on() -> None:
    conn = connection()
    receive(conn, GET)
    conn.keep_alive = False
    assert b"Connection: close" in head_lines(respond(conn))
    with pytest.raises(HTTPUsageError):
        conn.keep_alive = True
    with pytest.raises(HTTPUsageError):
        conn.start_next_cycle()


# --- pipelining ---------------------------------------------------------------------


def test_pipelined_requests_wait_for_start_next_cycle() -> None:
    conn = connection()
    burst = (
        b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /3 HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    conn.receive_data(burst)
    seen = []
    for expected in ([b"/1"], [b"/2", b"abc"], [b"/3"]):
        events = drain(conn)
        assert events[-1] == EndOfMessage()
        assert [e.path if isinstance(e, RequestHead) else e.data for e in events[:-1]] == expected
        # Nothing of the next request before the cycle ends, however often asked.
        assert conn.next_event() is NEED_DATA
        assert conn.next_event() is NEED_DATA
        seen.append(respond(conn, events[0].path))
        conn.start_next_cycle()
    assert [s[-2:] for s in seen] == [b"/1", b"/2", b"/3"]
    assert drain(conn) == []


def test_a_later_pipelined_request_is_not_parsed_before_its_turn() -> None:
    # llhttp is not fed the bytes after the current request: a broken later
    # request cannot fail the current one.
    conn = connection()
    conn.receive_data(GET + b"BROKEN\x00\r\n\r\n")
    assert [type(e) for e in drain(conn)] == [RequestHead, EndOfMessage]
    respond(conn)
    conn.start_next_cycle()
    with pytest.raises(HTTPError) as info:
        drain(conn)
    assert info.value.status == 400


def test_thousands_of_pipelined_requests_come_out_one_at_a_time() -> None:
    conn = connection()
    one = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"
    conn.receive_data(one * 2000)
    for _ in range(2000):
        events = drain(conn)
        assert [type(e) for e in events] == [RequestHead, EndOfMessage]
        respond(conn)
        conn.start_next_cycle()
    assert drain(conn) == []


def test_pipelined_bytes_over_the_cap_are_dropped_and_the_connection_closes() -> None:
    conn = connection(HTTPLimits(max_pipelined_bytes=100))
    one = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"  # 29 bytes
    receive(conn, one)
    conn.receive_data(one * 3)  # 87 held: under the cap
    assert conn.keep_alive
    conn.receive_data(one)  # 116 held
    assert not conn.keep_alive
    conn.receive_data(one * 1000)  # dropped, not held
    assert conn.next_event() is NEED_DATA
    assert b"Connection: close" in head_lines(respond(conn))
    with pytest.raises(HTTPUsageError):
        conn.start_next_cycle()


def test_pipelined_bytes_under_the_cap_are_all_served() -> None:
    conn = connection(HTTPLimits(max_pipelined_bytes=100))
    one = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"
    receive(conn, one)
    for _ in range(3):
        conn.receive_data(one)
    for _ in range(4):
        respond(conn)
        conn.start_next_cycle()
        if _ < 3:
            assert [type(e) for e in drain(conn)] == [RequestHead, EndOfMessage]
    assert drain(conn) == []


# --- bodies -------------------------------------------------------------------------

POST_LENGTH = b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world"
POST_CHUNKED = (
    b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;name=value\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\nHost: evil\r\n\r\n"
)
# A body holding CRLF CRLF, as multipart bodies do: not an end of message.
POST_CHUNKED_BLANK_LINES = (
    b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"6\r\na\r\n\r\nb\r\n4\r\n\r\n\r\n\r\n0\r\n\r\n"
)
NEXT = b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n"


@pytest.mark.parametrize(
    "request_, body",
    [
        (POST_LENGTH, b"hello world"),
        (POST_CHUNKED, b"hello world"),
        (POST_CHUNKED_BLANK_LINES, b"a\r\n\r\nb\r\n\r\n"),
    ],
    ids=["length", "chunked", "chunked-blank-lines"],
)
def test_bodies_split_at_every_byte(request_: bytes, body: bytes) -> None:
    data = request_ + NEXT
    for cut in range(len(data) + 1):
        for pieces in ([data[:cut], data[cut:]], [data[:cut]] + [data[i : i + 1] for i in range(cut, len(data))]):
            conn = connection()
            events = merged(receive(conn, *[p for p in pieces if p]))
            assert [type(e) for e in events] == [RequestHead, Body, EndOfMessage], cut
            head = events[0]
            assert events[1].data == body
            assert head.chunked is (b"chunked" in request_)
            assert head.content_length == (None if head.chunked else len(body))
            # Trailers are not headers, and do not override them.
            assert head.headers[0] == (b"host", b"h") and len(head.headers) == 2
            respond(conn)
            conn.start_next_cycle()
            assert [e.path for e in drain(conn) if isinstance(e, RequestHead)] == [b"/next"], cut


def test_body_events_are_never_empty() -> None:
    conn = connection()
    events = receive(conn, *[bytes([b]) for b in POST_CHUNKED])
    assert all(e.data for e in events if isinstance(e, Body))


def test_zero_content_length_is_a_bodiless_request() -> None:
    conn = connection()
    events = receive(conn, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
    assert [type(e) for e in events] == [RequestHead, EndOfMessage]
    assert events[0].content_length == 0


def test_a_response_may_come_before_the_body_which_is_then_read_to_its_end() -> None:
    conn = connection()
    events = receive(conn, b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n\r\nab")
    assert [type(e) for e in events] == [RequestHead, Body]
    out = respond(conn, b"early")
    assert b"Connection: close" not in out
    with pytest.raises(HTTPUsageError):
        conn.start_next_cycle()  # the body is not read yet
    assert receive(conn, b"cdef" + NEXT) == [Body(b"cdef"), EndOfMessage()]
    assert conn.keep_alive
    conn.start_next_cycle()
    assert drain(conn)[0].path == b"/next"


# --- 100-continue -------------------------------------------------------------------

EXPECT = b"POST /p HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n"


def test_continue_is_sent_once_then_the_body_comes() -> None:
    conn = connection()
    head = receive(conn, EXPECT)[0]
    assert head.expect_continue
    assert conn.send_continue() == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert conn.send_continue() == b""
    assert receive(conn, b"abc") == [Body(b"abc"), EndOfMessage()]
    assert b"Connection: close" not in respond(conn)
    conn.start_next_cycle()


def test_no_continue_once_the_body_is_here_or_a_response_began() -> None:
    conn = connection()
    receive(conn, EXPECT + b"abc")
    assert conn.send_continue() == b""
    conn = connection()
    receive(conn, EXPECT)
    conn.send_head(200, [], content_length=0)
    assert conn.send_continue() == b""


def test_a_final_response_instead_of_continue_closes_the_connection() -> None:
    conn = connection()
    receive(conn, EXPECT)
    out = conn.send_head(413, [], content_length=0) + conn.send_end()
    assert b"Connection: close" in head_lines(out)
    assert not conn.keep_alive


def test_expect_continue_is_an_http_1_1_feature() -> None:
    conn = connection()
    head = receive(conn, b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")[0]
    assert not head.expect_continue
    assert conn.send_continue() == b""


def test_send_head_100_counts_as_continue() -> None:
    conn = connection()
    receive(conn, EXPECT)
    assert conn.send_head(100, []) == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert conn.send_continue() == b""


# --- EOF ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "partial",
    [
        b"G",
        b"GET / HTTP/1.1\r\nHost: h\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\n\r",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r",
    ],
)
def test_eof_inside_a_request_is_400(partial: bytes) -> None:
    conn = connection()
    receive(conn, partial)
    conn.receive_data(b"")
    with pytest.raises(HTTPError) as info:
        drain(conn)
    assert info.value.status == 400
    assert "closed" in info.value.reason


def test_eof_between_requests_is_connection_closed() -> None:
    conn = connection()
    conn.receive_data(b"\r\n")
    conn.receive_data(b"")
    assert drain(conn) == [ConnectionClosed()]
    with pytest.raises(HTTPUsageError):
        conn.receive_data(b"GET")


def test_pipelined_requests_before_eof_are_all_served() -> None:
    conn = connection()
    conn.receive_data(GET + GET)
    conn.receive_data(b"")
    for _ in range(2):
        assert [type(e) for e in drain(conn)] == [RequestHead, EndOfMessage]
        respond(conn)
        conn.start_next_cycle()
    assert drain(conn) == [ConnectionClosed()]


def test_eof_after_a_complete_request_waits_for_the_cycle() -> None:
    conn = connection()
    receive(conn, GET)
    conn.receive_data(b"")
    assert conn.next_event() is NEED_DATA
    respond(conn)
    conn.start_next_cycle()
    assert conn.next_event() == ConnectionClosed()


# --- refusals: smuggling and malformed input ----------------------------------------------


def _post(*headers: bytes, body: bytes = b"", version: bytes = b"1.1") -> bytes:
    return b"POST / HTTP/" + version + b"\r\nHost: h\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


SMUGGLING = {
    "length-and-chunked": _post(b"Content-Length: 3", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
    "chunked-and-length": _post(b"Transfer-Encoding: chunked", b"Content-Length: 3", body=b"0\r\n\r\n"),
    "chunked-gzip": _post(b"Transfer-Encoding: chunked, gzip", body=b"0\r\n\r\n"),
    "gzip-chunked": _post(b"Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"),
    "xchunked": _post(b"Transfer-Encoding: xchunked", body=b"0\r\n\r\n"),
    "chunked-twice-one-line": _post(b"Transfer-Encoding: chunked, chunked", body=b"0\r\n\r\n"),
    "chunked-twice-two-lines": _post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
    "identity": _post(b"Transfer-Encoding: identity", body=b"0\r\n\r\n"),
    "chunked-on-1.0": _post(b"Transfer-Encoding: chunked", body=b"0\r\n\r\n", version=b"1.0"),
    "two-lengths-differing": _post(b"Content-Length: 1", b"Content-Length: 2", body=b"ab"),
    "two-lengths-equal": _post(b"Content-Length: 1", b"Content-Length: 1", body=b"a"),
    "length-list": _post(b"Content-Length: 1, 1", body=b"a"),
    "length-negative": _post(b"Content-Length: -1", body=b"a"),
    "length-plus": _post(b"Content-Length: +1", body=b"a"),
    "length-hex": _post(b"Content-Length: 0x1", body=b"a"),
    "length-overflow": _post(b"Content-Length: 99999999999999999999999", body=b"a"),
    "length-empty": _post(b"Content-Length: ", body=b"a"),
    "chunk-size-not-hex": _post(b"Transfer-Encoding: chunked", body=b"zz\r\n"),
    "chunk-size-overflow": _post(b"Transfer-Encoding: chunked", body=b"FFFFFFFFFFFFFFFFFF\r\n"),
    "chunk-size-negative": _post(b"Transfer-Encoding: chunked", body=b"-1\r\n"),
    "chunk-size-space": _post(b"Transfer-Encoding: chunked", body=b"3 \r\nabc\r\n0\r\n\r\n"),
    "chunk-size-bare-lf": _post(b"Transfer-Encoding: chunked", body=b"3\nabc\r\n0\r\n\r\n"),
    "chunk-data-no-crlf": _post(b"Transfer-Encoding: chunked", body=b"3\r\nabcX\r\n0\r\n\r\n"),
    "chunk-data-too-long": _post(b"Transfer-Encoding: chunked", body=b"3\r\nabcd\r\n0\r\n\r\n"),
    "obs-fold": b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n",
    "obs-fold-tab": b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n\tb\r\n\r\n",
    "space-in-name": b"GET / HTTP/1.1\r\nHost: h\r\nX A: a\r\n\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "name-not-token": b"GET / HTTP/1.1\r\nHost: h\r\nX(a): a\r\n\r\n",
    "empty-name": b"GET / HTTP/1.1\r\nHost: h\r\n: a\r\n\r\n",
    "nul-in-value": b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n",
    "nul-in-name": b"GET / HTTP/1.1\r\nHost: h\r\nX\x00A: a\r\n\r\n",
    "control-in-value": b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x01b\r\n\r\n",
    "bare-cr-in-value": b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\n\r\n",
    "bare-lf-everywhere": b"GET / HTTP/1.1\nHost: h\n\n",
    "bare-lf-after-header": b"GET / HTTP/1.1\r\nHost: h\n\r\n",
    "bare-lf-blank-line": b"GET / HTTP/1.1\r\nHost: h\r\n\n",
    "target-relative": b"GET a HTTP/1.1\r\nHost: h\r\n\r\n",
    "target-authority": b"GET example.com:80 HTTP/1.1\r\nHost: h\r\n\r\n",
    "target-fragment": b"GET /a#b HTTP/1.1\r\nHost: h\r\n\r\n",
    "target-star-for-get": b"GET * HTTP/1.1\r\nHost: h\r\n\r\n",
    "target-userinfo": b"GET http://user@h/ HTTP/1.1\r\nHost: h\r\n\r\n",
    "target-other-scheme": b"GET ftp://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
    "target-no-authority": b"GET http:///p HTTP/1.1\r\nHost: h\r\n\r\n",
    "target-raw-utf8": b"GET /\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n",
    "target-nul": b"GET /a\x00 HTTP/1.1\r\nHost: h\r\n\r\n",
    "target-tab": b"GET /a\tb HTTP/1.1\r\nHost: h\r\n\r\n",
    "space-in-target": b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",
    "space-after-version": b"GET / HTTP/1.1 \r\nHost: h\r\n\r\n",
    "missing-host": b"GET / HTTP/1.1\r\n\r\n",
    "two-hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "empty-host": b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
    "host-with-slash": b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
    "host-with-space": b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    "host-with-userinfo": b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
    "tls-handshake": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    "binary": b"\x00\xff\xfe garbage\r\n\r\n",
}


@pytest.mark.parametrize("data", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_smuggling_and_malformed_input_is_400(data: bytes) -> None:
    assert refused(data) == 400


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.2\r\nHost: h\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
        b"GET / HTTP/3.0\r\nHost: h\r\n\r\n",
        b"GET / HTTP/0.9\r\n\r\n",
        b"GET /\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ],
    ids=["1.2", "2.0", "3.0", "0.9", "0.9-simple", "h2-preface"],
)
def test_versions_other_than_1_0_and_1_1_are_505(data: bytes) -> None:
    assert refused(data) == 505


@pytest.mark.parametrize(
    "data",
    [
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        b"BREW /pot HTTP/1.1\r\nHost: h\r\n\r\n",
        b"get / HTTP/1.1\r\nHost: h\r\n\r\n",
    ],
    ids=["connect", "unknown", "lower-case"],
)
def test_methods_not_implemented_are_501(data: bytes) -> None:
    # Byte by byte, llhttp fails on the method's first bytes, before the space
    # that shows it was a method: 400 then, and that is fine.
    assert refused(data, bytewise=False) == 501


def test_a_refused_request_after_a_good_one_in_the_same_receive() -> None:
    conn = connection()
    conn.receive_data(GET + SMUGGLING["length-and-chunked"])
    drain(conn)
    respond(conn)
    conn.start_next_cycle()
    with pytest.raises(HTTPError):
        drain(conn)


def test_an_error_mid_body_drops_the_events_queued_with_it() -> None:
    conn = connection()
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n")
    with pytest.raises(HTTPError):
        conn.next_event()
    with pytest.raises(HTTPUsageError):
        conn.next_event()


# --- accepted forms -------------------------------------------------------------


def test_absolute_form_uses_its_authority_as_host() -> None:
    conn = connection()
    head = receive(conn, b"GET HTTP://Example.com:8080/p/q?x=1 HTTP/1.1\r\nHost: other\r\nAccept: */*\r\n\r\n")[0]
    assert (head.target, head.path, head.query) == (b"HTTP://Example.com:8080/p/q?x=1", b"/p/q", b"x=1")
    assert head.headers == [(b"accept", b"*/*"), (b"host", b"Example.com:8080")]


def test_absolute_form_without_path_or_host_header() -> None:
    conn = connection()
    head = receive(conn, b"GET http://h?x HTTP/1.1\r\n\r\n")[0]
    assert (head.path, head.query, head.headers) == (b"/", b"x", [(b"host", b"h")])


def test_options_star() -> None:
    conn = connection()
    head = receive(conn, b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n")[0]
    assert (head.method, head.path, head.query) == (b"OPTIONS", b"*", b"")


def test_http_1_0_needs_no_host() -> None:
    conn = connection()
    head = receive(conn, b"GET / HTTP/1.0\r\n\r\n")[0]
    assert head.http_version == b"1.0" and head.headers == []


def test_host_with_port_and_ipv6_literal() -> None:
    for host in (b"example.com:8080", b"[::1]:80", b"127.0.0.1"):
        conn = connection()
        assert receive(conn, b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")[0].headers == [(b"host", host)]


def test_obs_text_in_values_is_kept() -> None:
    conn = connection()
    head = receive(conn, b"GET / HTTP/1.1\r\nHost: h\r\nX-A: caf\xc3\xa9\r\n\r\n")[0]
    assert head.headers[1] == (b"x-a", b"caf\xc3\xa9")


# --- Upgrade ------------------------------------------------------------------------

UPGRADE = b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"


def test_upgrade_is_served_as_a_plain_request() -> None:
    conn = connection()
    conn.receive_data(UPGRADE + b"\r\n" + NEXT)
    head, end = drain(conn)
    assert head.path == b"/ws" and (b"upgrade", b"websocket") in head.headers
    assert end == EndOfMessage()
    respond(conn)
    conn.start_next_cycle()
    assert drain(conn)[0].path == b"/next"


SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n"


@pytest.mark.parametrize(
    "framing, body",
    [
        (b"Content-Length: %d\r\n" % len(SMUGGLED), SMUGGLED),
        (b"Transfer-Encoding: chunked\r\n", b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)),
    ],
    ids=["length", "chunked"],
)
def test_an_upgrade_requests_body_is_a_body_not_a_request(framing: bytes, body: bytes) -> None:
    data = UPGRADE + framing + b"\r\n" + body + NEXT + NEXT
    for cut in range(len(UPGRADE), len(data) + 1, 7):
        conn = connection()
        events = merged(receive(conn, data[:cut], data[cut:]))
        assert [type(e) for e in events] == [RequestHead, Body, EndOfMessage]
        assert events[1].data == SMUGGLED
        for _ in range(2):
            respond(conn)
            conn.start_next_cycle()
            assert [e.path for e in drain(conn) if isinstance(e, RequestHead)] == [b"/next"]


# --- limits -------------------------------------------------------------------------


def test_request_line_limit() -> None:
    limits = HTTPLimits(max_request_line=100)
    line = b"GET /" + b"a" * 86 + b" HTTP/1.1"
    assert len(line) == 100
    conn = connection(limits)
    assert receive(conn, line + b"\r\nHost: h\r\n\r\n")[0].method == b"GET"
    assert refused(b"GET /" + b"a" * 87 + b" HTTP/1.1\r\nHost: h\r\n\r\n", limits) == 414


def test_an_endless_request_line_is_414_as_soon_as_it_is_too_long() -> None:
    conn = connection(HTTPLimits(max_request_line=1000))
    conn.receive_data(b"GET /")
    for _ in range(99):
        conn.receive_data(b"a" * 10)
        assert conn.next_event() is NEED_DATA
    conn.receive_data(b"a" * 10)
    with pytest.raises(HTTPError) as info:
        conn.next_event()
    assert info.value.status == 414


def test_head_size_limit() -> None:
    request_ = b"GET / HTTP/1.1\r\nHost: h\r\nX-A: " + b"a" * 50 + b"\r\n\r\n"
    conn = connection(HTTPLimits(max_header_size=len(request_)))
    assert isinstance(receive(conn, request_)[0], RequestHead)
    assert refused(request_, HTTPLimits(max_header_size=len(request_) - 1)) == 431


def test_an_endless_header_is_431_before_much_more_than_the_limit_arrives() -> None:
    conn = connection(HTTPLimits(max_header_size=4096))
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: h\r\nX-Endless: ")
    sent = 0
    with pytest.raises(HTTPError) as info:
        for _ in range(100):  # 10 KB: more than twice the limit
            conn.receive_data(b"a" * 100)
            sent += 100
            assert conn.next_event() is NEED_DATA
    assert info.value.status == 431
    assert 4000 < sent + 34 <= 4096 + 100


def test_header_count_limit() -> None:
    limits = HTTPLimits(max_headers=5)
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(4))
    conn = connection(limits)
    assert len(receive(conn, b"GET / HTTP/1.1\r\nHost: h\r\n" + fields + b"\r\n")[0].headers) == 5
    assert refused(b"GET / HTTP/1.1\r\nHost: h\r\n" + fields + b"X-5: v\r\n\r\n", limits) == 431


def test_content_length_over_the_body_limit_is_413_before_the_body() -> None:
    limits = HTTPLimits(max_body_size=10)
    conn = connection(limits)
    assert receive(conn, _post(b"Content-Length: 10", body=b"a" * 10))[1] == Body(b"a" * 10)
    assert refused(_post(b"Content-Length: 11"), limits) == 413


def test_a_chunked_body_is_413_when_it_crosses_the_limit() -> None:
    conn = connection(HTTPLimits(max_body_size=10))
    events = receive(conn, _post(b"Transfer-Encoding: chunked", body=b"6\r\nabcdef\r\n"))
    assert events[1] == Body(b"abcdef")
    with pytest.raises(HTTPError) as info:
        receive(conn, b"6\r\nabc")  # 9 bytes: not yet
        receive(conn, b"def\r\n")
    assert info.value.status == 413


def test_no_body_limit_when_zero() -> None:
    conn = connection(HTTPLimits(max_body_size=0))
    head = receive(conn, _post(b"Content-Length: 10000000000"))[0]
    assert head.content_length == 10_000_000_000


def test_endless_trailers_are_refused() -> None:
    conn = connection(HTTPLimits(max_header_size=4096))
    receive(conn, _post(b"Transfer-Encoding: chunked", body=b"3\r\nabc\r\n0\r\nX-Endless: "))
    with pytest.raises(HTTPError) as info:
        for _ in range(100):
            receive(conn, b"a" * 100)
    assert info.value.status == 400


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="max_headers"):
        HTTPLimits(max_headers=0)
    with pytest.raises(ValueError, match="max_body_size"):
        HTTPLimits(max_body_size=-1)


# --- responses ---------------------------------------------------------------------


def test_chunked_response_to_http_1_1() -> None:
    conn = connection()
    receive(conn, GET)
    out = conn.send_head(200, [(b"Content-Type", b"text/plain")])
    assert out == (
        b"HTTP/1.1 200 OK\r\n" + DATE + b"Server: fcgi-cluster\r\nContent-Type: text/plain\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    assert conn.send_body(b"hello") == b"5\r\nhello\r\n"
    assert conn.send_body(b"") == b""
    assert conn.send_body(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    assert conn.send_end() == b"0\r\n\r\n"
    assert conn.keep_alive


def test_close_delimited_response_to_http_1_0() -> None:
    conn = connection()
    receive(conn, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    out = conn.send_head(200, [])
    assert out == b"HTTP/1.1 200 OK\r\n" + DATE + b"Server: fcgi-cluster\r\nConnection: close\r\n\r\n"
    assert conn.send_body(b"raw") == b"raw"
    assert conn.send_end() == b""
    assert not conn.keep_alive


@pytest.mark.parametrize(
    "method, status, content_length, expected",
    [
        (b"HEAD", 200, 1234, b"Content-Length: 1234"),
        (b"HEAD", 200, None, None),
        (b"GET", 304, 1234, b"Content-Length: 1234"),
        (b"GET", 304, None, None),
        (b"GET", 204, 1234, None),
        (b"GET", 204, None, None),
    ],
)
def test_responses_without_a_body(method: bytes, status: int, content_length: int | None, expected: bytes | None) -> None:
    conn = connection()
    receive(conn, method + b" / HTTP/1.1\r\nHost: h\r\n\r\n")
    lines = head_lines(conn.send_head(status, [], content_length=content_length))
    framing = [line for line in lines if line.startswith((b"Content-Length", b"Transfer-Encoding"))]
    assert framing == ([expected] if expected else [])
    assert conn.send_body(b"body bytes") == b""
    assert conn.send_end() == b""
    assert conn.keep_alive
    conn.start_next_cycle()


def test_headers_owned_by_the_connection_are_dropped() -> None:
    conn = connection(server_header=None)
    receive(conn, GET)
    headers = [
        (b"Connection", b"keep-alive"),
        (b"content-length", b"99"),
        (b"Transfer-Encoding", b"gzip"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
    ]
    out = conn.send_head(201, headers, content_length=2)
    assert out == b"HTTP/1.1 201 Created\r\n" + DATE + b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 2\r\n\r\n"


@pytest.mark.parametrize("bad", [(b"X-A", b"a\r\nX-Injected: 1"), (b"X-A", b"a\nb"), (b"X-A", b"a\rb"), (b"X\r\nA", b"a"), (b"X-A", b"\x00")])
def test_response_splitting_is_refused(bad: tuple[bytes, bytes]) -> None:
    conn = connection()
    receive(conn, GET)
    with pytest.raises(HTTPUsageError):
        conn.send_head(200, [bad])


def test_content_length_is_enforced() -> None:
    conn = connection()
    receive(conn, GET)
    conn.send_head(200, [], content_length=5)
    assert conn.send_body(b"abc") == b"abc"
    with pytest.raises(HTTPUsageError):
        conn.send_body(b"def")
    assert conn.send_body(b"de") == b"de"
    assert conn.send_end() == b""

    conn = connection()
    receive(conn, GET)
    conn.send_head(200, [], content_length=5)
    conn.send_body(b"abc")
    with pytest.raises(HTTPUsageError):
        conn.send_end()
    assert not conn.keep_alive


def test_status_lines() -> None:
    for status, line in [(404, b"HTTP/1.1 404 Not Found"), (599, b"HTTP/1.1 599 Unknown"), (418, b"HTTP/1.1 418 I'm a Teapot")]:
        conn = connection()
        receive(conn, GET)
        assert head_lines(conn.send_head(status, [], content_length=0))[0] == line


def test_interim_responses() -> None:
    conn = connection()
    receive(conn, GET)
    assert conn.send_head(103, [(b"Link", b"</s.css>; rel=preload")]) == (
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
    )
    assert respond(conn).startswith(b"HTTP/1.1 200 OK\r\n")
    conn = connection()
    receive(conn, b"GET / HTTP/1.0\r\n\r\n")
    assert conn.send_head(103, []) == b""
    with pytest.raises(HTTPUsageError):
        conn.send_head(101, [])


def test_date_is_cached_per_second() -> None:
    now = [0.0]
    conn = connection(clock=lambda: now[0])
    dates = []
    for t in (0.0, 0.999, 1.0, 86400.0 * 365 + 3661.5):
        now[0] = t
        receive(conn, GET)
        dates.append(head_lines(respond(conn))[1])
        conn.start_next_cycle()
    assert dates == [
        b"Date: Thu, 01 Jan 1970 00:00:00 GMT",
        b"Date: Thu, 01 Jan 1970 00:00:00 GMT",
        b"Date: Thu, 01 Jan 1970 00:00:01 GMT",
        b"Date: Fri, 01 Jan 1971 01:01:01 GMT",
    ]


def test_api_misuse() -> None:
    conn = connection()
    with pytest.raises(HTTPUsageError):
        conn.send_head(200, [])  # no request yet
    with pytest.raises(HTTPUsageError):
        conn.send_body(b"x")
    with pytest.raises(HTTPUsageError):
        conn.start_next_cycle()
    receive(conn, GET)
    with pytest.raises(HTTPUsageError):
        conn.send_end()
    with pytest.raises(HTTPUsageError):
        conn.send_head(200, [], content_length=-1)
    respond(conn)
    with pytest.raises(HTTPUsageError):
        conn.send_head(200, [])  # already answered


# --- error responses ---------------------------------------------------------------


def test_error_response_without_a_request() -> None:
    conn = connection()
    with pytest.raises(HTTPError) as info:
        receive(conn, b"\x16\x03\x01garbage")
    out = conn.send_error_response(info.value.status)
    head, _, page = out.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 400 Bad Request",
        DATE.rstrip(),
        b"Server: fcgi-cluster",
        b"Content-Type: text/html",
        b"Content-Length: %d" % len(page),
        b"Connection: close",
    ]
    assert b"<title>400 Bad Request</title>" in page and b"<hr><center>fcgi-cluster</center>" in page
    assert not conn.keep_alive


def test_error_response_escapes_its_reason_and_has_no_body_for_head() -> None:
    conn = connection(server_header=None)
    receive(conn, b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
    out = conn.send_error_response(502, reason="<bad> & worse")
    head, _, page = out.partition(b"\r\n\r\n")
    assert page == b"" and b"Content-Length: " in head and b"Server" not in head

    conn = connection()
    receive(conn, GET)
    page = conn.send_error_response(504, reason="<bad> & worse").partition(b"\r\n\r\n")[2]
    assert b"&lt;bad&gt; &amp; worse" in page and b"<bad>" not in page


def test_error_response_after_a_response_began_is_nothing() -> None:
    conn = connection()
    receive(conn, GET)
    conn.send_head(200, [])
    assert conn.send_error_response(502) == b""
    assert not conn.keep_alive
    with pytest.raises(HTTPUsageError):
        conn.send_error_response(200)


def test_timeout_before_a_head_ended() -> None:
    conn = connection()
    receive(conn, b"GET / HTT")
    assert conn.send_error_response(408).startswith(b"HTTP/1.1 408 Request Timeout\r\n")


# --- properties ---------------------------------------------------------------------

PIPELINE = [GET, POST_LENGTH, POST_CHUNKED, UPGRADE + b"Content-Length: 3\r\n\r\nabc", POST_CHUNKED_BLANK_LINES]


def _serve_all(pieces: list[bytes]) -> list:
    conn = connection()
    events: list = []
    for piece in pieces:
        conn.receive_data(piece)
        while True:
            batch = drain(conn)
            events += batch
            if not conn.request_complete:
                break
            respond(conn)
            conn.start_next_cycle()
    return merged(events)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(PIPELINE), min_size=1, max_size=6), st.data())
def test_any_split_of_a_pipeline_gives_the_same_events(requests: list[bytes], data: st.DataObject) -> None:
    whole = b"".join(requests)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(whole)), max_size=12)))
    pieces = [whole[a:b] for a, b in zip([0] + cuts, cuts + [len(whole)]) if b > a]
    expected = _serve_all([whole])
    assert sum(isinstance(e, EndOfMessage) for e in expected) == len(requests)
    assert _serve_all(pieces) == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=64), max_size=6), st.booleans())
def test_random_bytes_raise_only_http_error(pieces: list[bytes], eof: bool) -> None:
    conn = connection(HTTPLimits(max_request_line=64, max_header_size=128))
    try:
        for piece in pieces + ([b""] if eof else []):
            conn.receive_data(piece)
            while True:
                event = conn.next_event()
                if event is NEED_DATA or isinstance(event, ConnectionClosed):
                    break
                if conn.request_complete:
                    respond(conn)
                    if not conn.keep_alive:
                        return
                    conn.start_next_cycle()
    except HTTPError as exc:
        assert exc.status in {400, 413, 414, 431, 501, 505}
        assert conn.send_error_response(exc.status).startswith(b"HTTP/1.1 %d " % exc.status)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([b"GET /p HTTP/1.1\r\nHost: h\r\n", b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"]),
    st.lists(st.sampled_from([b"X-A: v", b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b"\x00", b"0", b"a", b";"]), max_size=12),
)
def test_near_miss_heads_raise_only_http_error(start: bytes, tokens: list[bytes]) -> None:
    conn = connection()
    try:
        receive(conn, start + b"".join(tokens) + b"\r\n\r\n")
    except HTTPError as exc:
        assert 400 <= exc.status < 600
