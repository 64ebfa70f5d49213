"""Property tests of whole conversations between ClientConnection and ServerConnection.

* A connection pair: events pushed through one side come out of the other side
  exactly, in both directions, with aborts, management queries and KEEP_CONN.
* Splits: the same bytes fed in any pieces give the same events.
* Garbage: any bytes give events or ``RemoteProtocolError``, nothing else, and
  the connection then stays in ERROR.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fcgi_cluster.protocol import (
    NEED_DATA,
    AbortRequest,
    ClientConnection,
    ConnectionClosed,
    ConnectionState,
    Data,
    EndRequest,
    Event,
    GetValues,
    GetValuesResult,
    LocalProtocolError,
    ProtocolStatus,
    RemoteProtocolError,
    Request,
    Role,
    ServerConnection,
    Stderr,
    Stdin,
    Stdout,
    UnknownType,
)

from ._spec import (
    BEGIN,
    END,
    GET_VALUES_RESULT,
    STDERR,
    STDIN,
    STDOUT,
    UNKNOWN_TYPE,
    begin_body,
    end_body,
    make_record,
    pairs,
    records,
    unknown_type_body,
)

# --- helpers ------------------------------------------------------------------------


def drain(conn: ServerConnection | ClientConnection) -> list[Event]:
    """Every event available now; stops at NEED_DATA or ConnectionClosed."""
    events: list[Event] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            return events
        assert isinstance(event, Event), f"next_event returned {event!r}"
        events.append(event)
        if isinstance(event, ConnectionClosed):
            return events


def coalesce(events: list[Event]) -> list[Event]:
    """Join neighbouring non-empty chunks of one stream (a long chunk travels as
    several records). Empty chunks end a stream and are never joined."""
    out: list[Event] = []
    for event in events:
        if (
            out
            and isinstance(event, (Stdin, Data, Stdout, Stderr))
            and type(out[-1]) is type(event)
            and out[-1].request_id == event.request_id
            and out[-1].data
            and event.data
        ):
            out[-1] = type(event)(event.request_id, out[-1].data + event.data)
        else:
            out.append(event)
    return out


def _blob(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


#: Stream chunks: mostly small, sometimes empty (end of stream), sometimes larger than a record.
chunks = st.one_of(
    st.just(b""),
    st.binary(min_size=1, max_size=40),
    st.builds(_blob, st.integers(1, 300), st.integers(0, 9)),
    st.builds(_blob, st.integers(65_000, 140_000), st.integers(0, 9)),
)
param_fields = st.one_of(st.binary(max_size=12), st.builds(_blob, st.integers(100, 300), st.integers(0, 9)))
param_dicts = st.dictionaries(param_fields, param_fields, max_size=6)

KNOWN_VALUES = {b"FCGI_MAX_CONNS": b"7", b"FCGI_MAX_REQS": b"40", b"FCGI_MPXS_CONNS": b"1"}
QUERY_NAMES = [*KNOWN_VALUES, b"FCGI_MAX_CONN", b"", b"X" * 200]


# --- the connection pair ---------------------------------------------------------


@dataclass
class Tracked:
    """What the test expects of one request in flight."""

    role: Role
    keep_conn: bool
    stdin_open: bool = True
    data_open: bool = False
    aborted: bool = False
    stdout_open: bool = True
    stderr_used: bool = False


class Pair:
    """A client and a server wired back to back, with the events each should see."""

    def __init__(self) -> None:
        self.client = ClientConnection()
        self.server = ServerConnection(max_requests=40, max_conns=7, roles=frozenset({Role.RESPONDER, Role.FILTER}))
        self.requests: dict[int, Tracked] = {}
        self.should_close = False

    def client_sends(self, event: Event, server_expects: list[Event], client_expects: list[Event] = ()) -> None:
        out = self.client.send(event)
        if out:
            self.server.receive_data(out)
        assert coalesce(drain(self.server)) == server_expects
        # The server answers management records itself; deliver its answer
        # (only when there is one: b"" would tell the client the server closed).
        answer = self.server.data_to_send()
        if answer:
            self.client.receive_data(answer)
        assert drain(self.client) == list(client_expects)

    def server_sends(self, event: Event, client_expects: list[Event]) -> None:
        out = self.server.send(event)
        if out:
            self.client.receive_data(out)
        assert coalesce(drain(self.client)) == client_expects
        assert self.server.data_to_send() == b""

    def check_bookkeeping(self) -> None:
        assert self.client.requests_in_flight == len(self.requests)
        assert self.server.requests_in_flight == len(self.requests)
        assert self.server.should_close is self.should_close
        assert self.client.state is self.server.state is ConnectionState.OPEN


def _step(pair: Pair, data: st.DataObject) -> None:
    reqs = pair.requests
    # Requests each action may apply to. An aborted request may still be "sent"
    # stdin or data: the client drops it.
    candidates = {
        "get_values": [0],
        "request": [0],
        "stdin": sorted(r for r, t in reqs.items() if t.stdin_open or t.aborted),
        "data": sorted(r for r, t in reqs.items() if t.role is Role.FILTER and (t.data_open or t.aborted)),
        "abort": sorted(reqs),
        "stdout": sorted(r for r, t in reqs.items() if t.stdout_open),
        "stderr": sorted(reqs),
        "end": sorted(reqs),
    }
    # "request" twice, so that several requests are often in flight at once.
    action = data.draw(st.sampled_from(["request", *(a for a, rids in candidates.items() if rids)]), label="action")
    rid = data.draw(st.sampled_from(candidates[action]), label="rid")

    if action == "request":
        rid = pair.client.new_request_id()
        assert rid not in reqs and 1 <= rid <= 0xFFFF
        picked = data.draw(st.none() | st.integers(1, 0xFFFF), label="picked id")
        if picked is not None and picked not in reqs:
            rid = picked
        params = data.draw(param_dicts, label="params")
        role = data.draw(st.sampled_from([Role.RESPONDER, Role.FILTER]), label="role")
        keep_conn = data.draw(st.booleans(), label="keep_conn")
        event = Request(rid, params, role, keep_conn)
        pair.client_sends(event, [event])
        reqs[rid] = Tracked(role, keep_conn, data_open=role is Role.FILTER)
    elif action == "stdin":
        chunk = data.draw(chunks, label="stdin")
        tracked = reqs[rid]
        pair.client_sends(Stdin(rid, chunk), [] if tracked.aborted else [Stdin(rid, chunk)])
        if not tracked.aborted and not chunk:
            tracked.stdin_open = False
    elif action == "data":
        chunk = data.draw(chunks, label="data")
        tracked = reqs[rid]
        pair.client_sends(Data(rid, chunk), [] if tracked.aborted else [Data(rid, chunk)])
        if not tracked.aborted and not chunk:
            tracked.data_open = False
    elif action == "abort":
        tracked = reqs[rid]
        pair.client_sends(AbortRequest(rid), [] if tracked.aborted else [AbortRequest(rid)])
        tracked.aborted = True
    elif action == "get_values":
        names = data.draw(st.lists(st.sampled_from(QUERY_NAMES), max_size=5), label="names")
        answer = GetValuesResult({n: KNOWN_VALUES[n] for n in names if n in KNOWN_VALUES})
        pair.client_sends(GetValues(tuple(names)), [], [answer])
    elif action == "stdout":
        chunk = data.draw(chunks, label="stdout")
        tracked = reqs[rid]
        pair.server_sends(Stdout(rid, chunk), [] if tracked.aborted else [Stdout(rid, chunk)])
        if not chunk:
            tracked.stdout_open = False
    elif action == "stderr":
        chunk = data.draw(chunks, label="stderr")
        tracked = reqs[rid]
        # Stderr(b"") sends nothing: EndRequest ends STDERR if it was used.
        pair.server_sends(Stderr(rid, chunk), [] if tracked.aborted or not chunk else [Stderr(rid, chunk)])
        tracked.stderr_used |= bool(chunk)
    elif action == "end":
        app_status = data.draw(st.integers(0, 2**32 - 1), label="app_status")
        status = data.draw(st.sampled_from(list(ProtocolStatus)), label="protocol_status")
        tracked = reqs.pop(rid)
        expected: list[Event] = []
        if not tracked.aborted:
            if tracked.stdout_open:
                expected.append(Stdout(rid, b""))
            if tracked.stderr_used:
                expected.append(Stderr(rid, b""))
            expected.append(EndRequest(rid, app_status, status))
        pair.server_sends(EndRequest(rid, app_status, status), expected)
        pair.should_close |= not tracked.keep_conn
    pair.check_bookkeeping()


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_connection_pair_delivers_exactly_the_events_sent(data: st.DataObject) -> None:
    pair = Pair()
    for _ in range(data.draw(st.integers(1, 30), label="steps")):  # at most 30 requests: under max_requests
        _step(pair, data)
    # Both sides close cleanly between records.
    pair.server.receive_data(b"")
    pair.client.receive_data(b"")
    assert drain(pair.server) == [ConnectionClosed()]
    assert drain(pair.client) == [ConnectionClosed()]


# --- splits -------------------------------------------------------------------------


def _cut(stream: bytes, points: list[int]) -> list[bytes]:
    """``stream`` cut at ``points``; no piece is empty, since b"" would mean EOF."""
    edges = [0, *sorted(points), len(stream)]
    return [stream[a:b] for a, b in zip(edges, edges[1:]) if b > a]


def feed(conn: ServerConnection | ClientConnection, pieces: list[bytes]) -> tuple[list[Event], bytes]:
    """Events from feeding ``pieces`` then EOF, and the server's own answers."""
    events: list[Event] = []
    answers = b""
    for piece in pieces:
        conn.receive_data(piece)
        events += drain(conn)
        answers += conn.data_to_send()
    conn.receive_data(b"")
    events += drain(conn)
    answers += conn.data_to_send()
    return events, answers


def client_with_requests() -> ClientConnection:
    """A client with requests 1 and 2 in flight and request 3 aborted."""
    client = ClientConnection()
    for rid in (1, 2, 3):
        client.send(Request(rid, {b"SCRIPT_NAME": b"/"}))
    client.send(AbortRequest(3))
    return client


def server_bound_stream(stdin_size: int = 5, value_size: int = 130) -> bytes:
    """What a web server might send: two requests, a query, an abort, odd records."""
    client = ClientConnection()
    return b"".join(
        [
            client.send(Request(1, {b"A": b"1", b"HTTP_COOKIE": _blob(value_size, 1)})),
            client.send(GetValues()),
            client.send(Request(2, {b"B": b""}, Role.FILTER, keep_conn=False)),
            make_record(BEGIN, 9, begin_body(2)),  # AUTHORIZER: refused inside the core
            make_record(200, 0, b"?"),  # unknown management type: answered inside the core
            make_record(STDIN, 77, b"stray"),  # a request not in flight: ignored
            client.send(Stdin(1, _blob(stdin_size, 2))),
            client.send(Data(2, b"d")),
            client.send(AbortRequest(2)),
            client.send(Stdin(1, b"")),
            make_record(STDIN, 2, b"after abort", padding=3),
        ]
    )


SERVER_EXPECTS = [
    Request(1, {b"A": b"1", b"HTTP_COOKIE": _blob(130, 1)}),
    Request(2, {b"B": b""}, Role.FILTER, keep_conn=False),
    Stdin(1, _blob(5, 2)),
    Data(2, b"d"),
    AbortRequest(2),
    Stdin(1, b""),
    ConnectionClosed(),
]
SERVER_ANSWERS = (
    make_record(
        GET_VALUES_RESULT,
        0,
        pairs((b"FCGI_MAX_CONNS", b"1024"), (b"FCGI_MAX_REQS", b"256"), (b"FCGI_MPXS_CONNS", b"1")),
    )
    + make_record(END, 9, end_body(0, 3))
    + make_record(UNKNOWN_TYPE, 0, unknown_type_body(200))
)


def new_server() -> ServerConnection:
    return ServerConnection(roles=frozenset({Role.RESPONDER, Role.FILTER}))


CLIENT_BOUND_STREAM = b"".join(
    [
        make_record(STDOUT, 1, b"Status: 200 OK\r\n\r\nhi"),
        make_record(STDERR, 2, b"oops", padding=0),
        make_record(STDOUT, 3, b"aborted: swallowed"),
        make_record(GET_VALUES_RESULT, 0, pairs((b"FCGI_MPXS_CONNS", b"0"))),
        make_record(UNKNOWN_TYPE, 0, unknown_type_body(42)),
        make_record(STDOUT, 1, b""),
        make_record(END, 1, end_body(0, 0)),
        make_record(STDOUT, 2, b"", padding=255),
        make_record(STDERR, 2, b""),
        make_record(END, 2, end_body(70000, 2)),
        make_record(END, 3, end_body(0, 0)),
    ]
)
CLIENT_EXPECTS = [
    Stdout(1, b"Status: 200 OK\r\n\r\nhi"),
    Stderr(2, b"oops"),
    GetValuesResult({b"FCGI_MPXS_CONNS": b"0"}),
    UnknownType(42),
    Stdout(1, b""),
    EndRequest(1),
    Stdout(2, b""),
    Stderr(2, b""),
    EndRequest(2, 70000, ProtocolStatus.OVERLOADED),
    ConnectionClosed(),
]


def test_small_server_stream_gives_the_same_events_at_every_split() -> None:
    stream = server_bound_stream()
    assert feed(new_server(), [stream]) == (SERVER_EXPECTS, SERVER_ANSWERS)
    for cut in range(len(stream) + 1):
        assert feed(new_server(), _cut(stream, [cut])) == (SERVER_EXPECTS, SERVER_ANSWERS), cut
    assert feed(new_server(), [stream[i : i + 1] for i in range(len(stream))]) == (SERVER_EXPECTS, SERVER_ANSWERS)


def test_small_client_stream_gives_the_same_events_at_every_split() -> None:
    stream = CLIENT_BOUND_STREAM
    assert feed(client_with_requests(), [stream]) == (CLIENT_EXPECTS, b"")
    for cut in range(len(stream) + 1):
        assert feed(client_with_requests(), _cut(stream, [cut])) == (CLIENT_EXPECTS, b""), cut
    assert feed(client_with_requests(), [stream[i : i + 1] for i in range(len(stream))]) == (CLIENT_EXPECTS, b"")


LARGE_SERVER_STREAM = server_bound_stream(stdin_size=150_000, value_size=70_000)
LARGE_SERVER_RESULT = feed(new_server(), [LARGE_SERVER_STREAM])


@settings(max_examples=60, deadline=None)
@given(points=st.lists(st.integers(0, len(LARGE_SERVER_STREAM)), max_size=30))
def test_large_server_stream_gives_the_same_events_at_any_splits(points: list[int]) -> None:
    assert feed(new_server(), _cut(LARGE_SERVER_STREAM, points)) == LARGE_SERVER_RESULT


def test_large_server_stream_result() -> None:
    events, answers = LARGE_SERVER_RESULT
    assert answers == SERVER_ANSWERS
    assert events[0] == Request(1, {b"A": b"1", b"HTTP_COOKIE": _blob(70_000, 1)})
    assert coalesce(events)[2] == Stdin(1, _blob(150_000, 2))
    assert len([e for e in events if isinstance(e, Stdin)]) == 4  # 150,000 bytes in 3 records, then the end


LARGE_CLIENT_STREAM = (
    make_record(STDOUT, 1, _blob(0xFFFF, 5), padding=1)
    + make_record(STDOUT, 1, _blob(40_000, 6), padding=200)
    + CLIENT_BOUND_STREAM
)


@settings(max_examples=60, deadline=None)
@given(points=st.lists(st.integers(0, len(LARGE_CLIENT_STREAM)), max_size=30))
def test_large_client_stream_gives_the_same_events_at_any_splits(points: list[int]) -> None:
    expected = [Stdout(1, _blob(0xFFFF, 5)), Stdout(1, _blob(40_000, 6)), *CLIENT_EXPECTS]
    assert feed(client_with_requests(), _cut(LARGE_CLIENT_STREAM, points)) == (expected, b"")


# --- garbage ------------------------------------------------------------------------


def feed_garbage(conn: ServerConnection | ClientConnection, pieces: list[bytes]) -> None:
    """Feed ``pieces`` and EOF: only events or RemoteProtocolError may come out.

    Any other exception (IndexError, struct.error, ValueError, KeyError...)
    propagates and fails the test.
    """
    try:
        for piece in pieces:
            conn.receive_data(piece)
            drain(conn)
            check_answers(conn)
        conn.receive_data(b"")
        assert drain(conn)[-1:] == [ConnectionClosed()]
        assert conn.state is ConnectionState.CLOSED
    except RemoteProtocolError:
        assert conn.state is ConnectionState.ERROR
        for _ in range(3):
            with pytest.raises(RemoteProtocolError):
                conn.next_event()
        with pytest.raises(LocalProtocolError):
            conn.receive_data(b"\x01")
        assert conn.state is ConnectionState.ERROR
    check_answers(conn)


def check_answers(conn: ServerConnection | ClientConnection) -> None:
    """Whatever the core answered by itself is well-formed, aligned, and of an expected type."""
    for rtype, rid, content in records(conn.data_to_send()):
        assert isinstance(conn, ServerConnection)
        if rtype == END:
            assert rid != 0 and len(content) == 8
        else:
            assert rtype in (GET_VALUES_RESULT, UNKNOWN_TYPE) and rid == 0


def any_server_record() -> st.SearchStrategy[bytes]:
    """Records with a valid header and plausible-or-broken bodies, to get past the version check."""
    bodies = st.one_of(
        st.binary(max_size=24),
        st.builds(begin_body, st.integers(0, 4), st.booleans()),
        st.builds(lambda p: pairs(*p), st.lists(st.tuples(st.binary(max_size=140), st.binary(max_size=5)), max_size=3)),
    )
    return st.builds(
        make_record,
        st.one_of(st.integers(0, 12), st.integers(0, 255)),
        st.sampled_from([0, 1, 2, 3, 0xFFFF]),
        bodies,
        st.one_of(st.none(), st.integers(0, 255)),
    )


def any_client_record() -> st.SearchStrategy[bytes]:
    """The same for what an application might send: END_REQUEST bodies and pairs."""
    bodies = st.one_of(
        st.binary(max_size=24),
        st.builds(end_body, st.integers(0, 2**32 - 1), st.integers(0, 5)),
        st.builds(lambda p: pairs(*p), st.lists(st.tuples(st.binary(max_size=140), st.binary(max_size=5)), max_size=3)),
    )
    return st.builds(
        make_record,
        st.one_of(st.integers(0, 12), st.integers(0, 255)),
        st.sampled_from([0, 1, 2, 3, 4]),
        bodies,
        st.one_of(st.none(), st.integers(0, 255)),
    )


def split_by(data: bytes, draw: st.DataObject) -> list[bytes]:
    """``data`` in a few hypothesis-chosen pieces."""
    points = draw.draw(st.lists(st.integers(0, len(data)), max_size=4), label="split points")
    return _cut(data, points)


garbage_settings = settings(max_examples=300, deadline=None)


@garbage_settings
@given(raw=st.binary(max_size=600), data=st.data())
def test_random_bytes_to_server_give_events_or_remote_error(raw: bytes, data: st.DataObject) -> None:
    feed_garbage(new_server(), split_by(raw, data))


@garbage_settings
@given(raw=st.binary(max_size=600), data=st.data())
def test_random_bytes_to_client_give_events_or_remote_error(raw: bytes, data: st.DataObject) -> None:
    feed_garbage(client_with_requests(), split_by(raw, data))


@garbage_settings
@given(garbage=st.lists(any_server_record(), max_size=12), data=st.data())
def test_random_records_to_server_give_events_or_remote_error(garbage: list[bytes], data: st.DataObject) -> None:
    server = ServerConnection(max_requests=2, roles=frozenset(Role), max_params_size=300, max_buffer_size=500)
    feed_garbage(server, split_by(b"".join(garbage), data))


@garbage_settings
@given(garbage=st.lists(any_client_record(), max_size=12), data=st.data())
def test_random_records_to_client_give_events_or_remote_error(garbage: list[bytes], data: st.DataObject) -> None:
    feed_garbage(client_with_requests(), split_by(b"".join(garbage), data))


def mutate(stream: bytes, data: st.DataObject) -> bytes:
    """Flip, insert or drop a few bytes of a valid stream."""
    out = bytearray(stream)
    for _ in range(data.draw(st.integers(1, 6), label="mutations")):
        kind = data.draw(st.sampled_from(["flip", "insert", "drop", "truncate"]), label="kind")
        at = data.draw(st.integers(0, max(len(out) - 1, 0)), label="at")
        if kind == "flip" and out:
            out[at] ^= data.draw(st.integers(1, 255), label="xor")
        elif kind == "insert":
            out[at:at] = data.draw(st.binary(min_size=1, max_size=4), label="inserted")
        elif kind == "drop":
            del out[at : at + data.draw(st.integers(1, 4), label="dropped")]
        elif kind == "truncate":
            del out[at:]
    return bytes(out)


SMALL_SERVER_STREAM = server_bound_stream()


@garbage_settings
@given(data=st.data())
def test_mutated_server_stream_gives_events_or_remote_error(data: st.DataObject) -> None:
    feed_garbage(new_server(), split_by(mutate(SMALL_SERVER_STREAM, data), data))


@garbage_settings
@given(data=st.data())
def test_mutated_client_stream_gives_events_or_remote_error(data: st.DataObject) -> None:
    feed_garbage(client_with_requests(), split_by(mutate(CLIENT_BOUND_STREAM, data), data))


@given(
    params=st.dictionaries(st.binary(min_size=1, max_size=300), st.binary(max_size=300), max_size=8),
    body=st.one_of(st.none(), st.binary(max_size=70_000)),
    keep_conn=st.booleans(),
)
@settings(max_examples=50)
def test_send_request_is_the_same_bytes_as_the_events(params: dict, body: bytes | None, keep_conn: bool) -> None:
    fused, by_events = ClientConnection(), ClientConnection()
    fused.send_request({b"FIRST": b"1"})  # IDs advance the same way on both
    by_events.send(Request(1, {b"FIRST": b"1"}, Role.RESPONDER, True))
    rid, data = fused.send_request(params, body, keep_conn)
    expected = by_events.send(Request(2, params, Role.RESPONDER, keep_conn))
    if body:
        expected += by_events.send(Stdin(2, body))
    if body is not None:
        expected += by_events.send(Stdin(2, b""))
    assert (rid, data) == (2, expected)
    # STDIN is closed exactly when the body was given whole.
    if body is None:
        assert fused.send(Stdin(2, b"more")) == by_events.send(Stdin(2, b"more"))
    else:
        with pytest.raises(LocalProtocolError):
            fused.send(Stdin(2, b"more"))
    # And the worker's side decodes it as one request with that body.
    server = ServerConnection()
    server.receive_data(data)
    request = server.next_event()
    assert isinstance(request, Request) and request.params == params and request.keep_conn == keep_conn


def test_the_process_count_is_answered_only_when_set() -> None:
    from fcgi_cluster.protocol import FCGI_CLUSTER_PROCESSES, GetValues, GetValuesResult

    for processes, expected in ((None, {}), (4, {FCGI_CLUSTER_PROCESSES: b"4"})):
        client, server = ClientConnection(), ServerConnection(processes=processes)
        server.receive_data(client.send(GetValues((FCGI_CLUSTER_PROCESSES,))))
        assert server.next_event() is NEED_DATA
        client.receive_data(server.data_to_send())
        assert client.next_event() == GetValuesResult(expected)
