"""The protocol's rules, one at a time, each in a few lines of bytes.

Expected bytes are written out by hand from the FastCGI 1.0 specification, not
produced by the code under test.
"""

from __future__ import annotations

import struct

import pytest

from fcgi_cluster.protocol import (
    DEFAULT_MAX_PARAMS_SIZE,
    DEFAULT_MAX_REQUESTS,
    NEED_DATA,
    AbortRequest,
    ClientConnection,
    ConnectionClosed,
    ConnectionState,
    Data,
    EndRequest,
    GetValuesResult,
    LocalProtocolError,
    ProtocolError,
    ProtocolStatus,
    RemoteProtocolError,
    Request,
    Role,
    ServerConnection,
    Stderr,
    Stdin,
    Stdout,
)

from ._spec import (
    ABORT,
    BEGIN,
    DATA,
    END,
    GET_VALUES,
    GET_VALUES_RESULT,
    PARAMS,
    STDERR,
    STDIN,
    STDOUT,
    UNKNOWN_TYPE,
    begin_body,
    end_body,
    make_record,
    records,
    unknown_type_body,
)
from ._spec import pairs as nv

# --- bytes by hand -------------------------------------------------------------


def rec(rtype: int, rid: int, content: bytes = b"", version: int = 1) -> bytes:
    """One record, aligned on 8 bytes."""
    return make_record(rtype, rid, content, version=version)


def begin(rid: int, role: int = 1, keep_conn: bool = True) -> bytes:
    return rec(BEGIN, rid, begin_body(role, keep_conn))


def end_request(rid: int, app_status: int = 0, protocol_status: int = 0) -> bytes:
    return rec(END, rid, end_body(app_status, protocol_status))


def request(rid: int, params: bytes = nv((b"A", b"1")), keep_conn: bool = True) -> bytes:
    """BEGIN_REQUEST and a whole PARAMS stream."""
    return begin(rid, keep_conn=keep_conn) + rec(PARAMS, rid, params) + rec(PARAMS, rid)


def events(conn: ServerConnection | ClientConnection, data: bytes = b"") -> list:
    if data:
        conn.receive_data(data)
    out = []
    while (event := conn.next_event()) is not NEED_DATA:
        out.append(event)
        if isinstance(event, ConnectionClosed):
            break
    return out


def assert_remote_error(
    conn: ServerConnection | ClientConnection, data: bytes, match: str | None = None
) -> RemoteProtocolError:
    conn.receive_data(data)
    with pytest.raises(RemoteProtocolError, match=match) as info:
        events(conn)
    assert conn.state is ConnectionState.ERROR
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    return info.value


def server_with_request(rid: int = 1, **kwargs) -> ServerConnection:
    server = ServerConnection(**kwargs)
    assert events(server, request(rid)) == [Request(rid, {b"A": b"1"})]
    return server


# --- management records ----------------------------------------------------------


def test_get_values_is_answered_inside_the_core_with_known_names_only() -> None:
    server = ServerConnection(max_conns=12, max_requests=34)
    query = nv((b"FCGI_MAX_CONNS", b""), (b"NOT_A_VARIABLE", b""), (b"FCGI_MAX_REQS", b""), (b"FCGI_MPXS_CONNS", b""))
    assert events(server, rec(GET_VALUES, 0, query)) == []
    assert server.data_to_send() == rec(
        GET_VALUES_RESULT, 0, nv((b"FCGI_MAX_CONNS", b"12"), (b"FCGI_MAX_REQS", b"34"), (b"FCGI_MPXS_CONNS", b"1"))
    )
    assert server.data_to_send() == b""


def test_get_values_with_an_empty_or_unknown_query_gets_an_empty_result() -> None:
    server = ServerConnection()
    assert events(server, rec(GET_VALUES, 0) + rec(GET_VALUES, 0, nv((b"FCGI_WHATEVER", b"")))) == []
    assert server.data_to_send() == rec(GET_VALUES_RESULT, 0) * 2


def test_get_values_result_reaches_the_client_as_an_event() -> None:
    client = ClientConnection()
    reply = rec(GET_VALUES_RESULT, 0, nv((b"FCGI_MPXS_CONNS", b"0")))
    assert events(client, reply) == [GetValuesResult({b"FCGI_MPXS_CONNS": b"0"})]


@pytest.mark.parametrize("rtype", [0, END, STDOUT, GET_VALUES_RESULT, UNKNOWN_TYPE, 12, 200, 255])
def test_unknown_management_type_gets_unknown_type_carrying_the_type(rtype: int) -> None:
    server = ServerConnection()
    assert events(server, rec(rtype, 0, b"whatever")) == []
    assert server.data_to_send() == rec(UNKNOWN_TYPE, 0, unknown_type_body(rtype))


# --- roles and multiplexing ---------------------------------------------------------


@pytest.mark.parametrize("role", [Role.AUTHORIZER, Role.FILTER, 99])
def test_unsupported_role_is_refused_inside_the_core(role: int) -> None:
    server = ServerConnection(roles=frozenset({Role.RESPONDER}))
    wire = begin(1, role) + rec(PARAMS, 1, nv((b"A", b"1"))) + rec(PARAMS, 1) + rec(STDIN, 1)
    assert events(server, wire) == []
    assert server.data_to_send() == end_request(1, 0, ProtocolStatus.UNKNOWN_ROLE)
    assert server.requests_in_flight == 0


def test_without_multiplexing_a_second_request_gets_cant_mpx_conn() -> None:
    server = server_with_request(1, multiplex=False)
    assert events(server, request(2) + rec(STDIN, 2, b"x")) == []
    assert server.data_to_send() == end_request(2, 0, ProtocolStatus.CANT_MPX_CONN)
    # The advertised values say so too.
    assert events(server, rec(GET_VALUES, 0, nv((b"FCGI_MPXS_CONNS", b""), (b"FCGI_MAX_REQS", b"")))) == []
    assert server.data_to_send() == rec(GET_VALUES_RESULT, 0, nv((b"FCGI_MPXS_CONNS", b"0"), (b"FCGI_MAX_REQS", b"1")))
    # Once the first request ends, the next one is served.
    server.send(EndRequest(1))
    assert events(server, request(2)) == [Request(2, {b"A": b"1"})]


def test_with_multiplexing_requests_interleave() -> None:
    server = ServerConnection()
    wire = begin(1) + begin(2) + rec(PARAMS, 2, nv((b"B", b"2"))) + rec(PARAMS, 1, nv((b"A", b"1")))
    wire += rec(PARAMS, 2) + rec(STDIN, 2, b"two") + rec(PARAMS, 1)
    assert events(server, wire) == [Request(2, {b"B": b"2"}), Stdin(2, b"two"), Request(1, {b"A": b"1"})]


# --- aborts ---------------------------------------------------------------------------


def test_abort_after_params_is_an_event_and_swallows_later_stdin() -> None:
    server = server_with_request(1)
    assert events(server, rec(ABORT, 1) + rec(STDIN, 1, b"late") + rec(STDIN, 1) + rec(ABORT, 1)) == [AbortRequest(1)]
    assert server.data_to_send() == b""
    # The application still ends it.
    assert records(server.send(EndRequest(1))) == [(STDOUT, 1, b""), (END, 1, bytes(8))]


def test_abort_before_params_end_is_answered_inside_the_core() -> None:
    server = ServerConnection(max_params_size=100, max_buffer_size=150)
    wire = begin(1, keep_conn=False) + rec(PARAMS, 1, b"\x01" * 90) + rec(ABORT, 1)
    assert events(server, wire) == []
    assert server.data_to_send() == end_request(1)
    assert server.requests_in_flight == 0
    assert server.should_close
    # The rest of that request is ignored, and its id is free again.
    assert events(server, rec(PARAMS, 1) + rec(STDIN, 1)) == []
    # Its 90 bytes of params are no longer held: 90 more fit under max_buffer_size=150.
    assert events(server, begin(1) + rec(PARAMS, 1, nv((b"P", b"x" * 88))) + rec(PARAMS, 1)) == [
        Request(1, {b"P": b"x" * 88})
    ]


def test_client_swallows_an_aborted_requests_output() -> None:
    client = ClientConnection()
    client.send(Request(1, {}))
    client.send(Stdin(1, b""))
    assert records(client.send(AbortRequest(1))) == [(ABORT, 1, b"")]
    assert client.send(AbortRequest(1)) == b""  # only once
    assert client.send(Stdin(1, b"ignored")) == b""
    wire = rec(STDOUT, 1, b"Status: 200\r\n\r\n") + rec(STDERR, 1, b"e") + rec(STDOUT, 1) + end_request(1)
    assert events(client, wire) == []
    assert client.requests_in_flight == 0
    # Its id is no longer in flight: more records for it are the server's error.
    assert_remote_error(client, rec(STDOUT, 1, b"x"), "not in flight")


def test_abort_racing_end_request_is_harmless() -> None:
    client = ClientConnection()
    server = ServerConnection()
    server.receive_data(client.send(Request(1, {b"A": b"1"})))
    assert events(server) == [Request(1, {b"A": b"1"})]
    in_transit = server.send(EndRequest(1))
    server.receive_data(client.send(AbortRequest(1)))  # the client gives up meanwhile
    assert events(server) == [] and server.data_to_send() == b""
    assert events(client, in_transit) == []
    assert client.requests_in_flight == 0


# --- request state ----------------------------------------------------------------------


def test_duplicate_begin_request_is_a_remote_error() -> None:
    server = server_with_request(1)
    assert_remote_error(server, begin(1), "already in flight")


def test_duplicate_begin_request_before_params_end_is_a_remote_error() -> None:
    assert_remote_error(ServerConnection(), begin(5) + begin(5))


def test_stdin_before_params_end_is_a_remote_error() -> None:
    assert_remote_error(ServerConnection(), begin(1) + rec(PARAMS, 1, nv((b"A", b"1"))) + rec(STDIN, 1, b"x"), "before")


def test_stdin_after_its_end_is_a_remote_error() -> None:
    server = server_with_request(1)
    assert events(server, rec(STDIN, 1, b"body") + rec(STDIN, 1)) == [Stdin(1, b"body"), Stdin(1, b"")]
    assert_remote_error(server, rec(STDIN, 1, b"more"), "after its end")


def test_params_after_their_end_is_a_remote_error() -> None:
    assert_remote_error(server_with_request(1), rec(PARAMS, 1, nv((b"B", b"2"))))


def test_data_for_a_responder_is_a_remote_error() -> None:
    assert_remote_error(server_with_request(1), rec(DATA, 1, b"x"))


def test_server_ignores_records_for_requests_not_in_flight() -> None:
    server = server_with_request(1)
    wire = rec(STDIN, 7, b"x") + rec(PARAMS, 7, b"junk") + rec(DATA, 7, b"d") + rec(ABORT, 7) + rec(STDIN, 7)
    assert events(server, wire) == []
    assert server.data_to_send() == b""
    assert server.state is ConnectionState.OPEN
    # Including a request the application has already finished.
    server.send(EndRequest(1))
    assert events(server, rec(STDIN, 1, b"late")) == []


def test_server_refuses_a_record_type_a_web_server_never_sends() -> None:
    assert_remote_error(server_with_request(1), rec(STDOUT, 1, b"x"))


def test_client_raises_on_records_for_ids_it_never_sent() -> None:
    for wire in (rec(STDOUT, 5, b"x"), rec(STDERR, 5, b"x"), end_request(5)):
        client = ClientConnection()
        client.send(Request(1, {}))
        assert_remote_error(client, wire, "not in flight")


def test_client_refuses_output_after_its_end() -> None:
    client = ClientConnection()
    client.send(Request(1, {}))
    assert events(client, rec(STDOUT, 1, b"x") + rec(STDOUT, 1)) == [Stdout(1, b"x"), Stdout(1, b"")]
    assert_remote_error(client, rec(STDOUT, 1, b"y"), "after its end")


def test_client_refuses_an_unknown_protocol_status() -> None:
    client = ClientConnection()
    client.send(Request(1, {}))
    assert_remote_error(client, end_request(1, 0, 9), "protocol status")


@pytest.mark.parametrize(
    "wire",
    [
        rec(END, 1, b"short"),
        rec(GET_VALUES_RESULT, 1),
        rec(UNKNOWN_TYPE, 0, b"\x05"),
        rec(BEGIN, 1, bytes(8)),
    ],
    ids=["bad END_REQUEST body", "GET_VALUES_RESULT with an id", "short UNKNOWN_TYPE", "BEGIN_REQUEST to a client"],
)
def test_client_refuses_malformed_records(wire: bytes) -> None:
    client = ClientConnection()
    client.send(Request(1, {}))
    assert_remote_error(client, wire)


# --- KEEP_CONN -------------------------------------------------------------------------------


def test_should_close_only_after_end_of_a_request_without_keep_conn() -> None:
    server = ServerConnection()
    assert events(server, request(1, keep_conn=False) + request(2, keep_conn=True)) == [
        Request(1, {b"A": b"1"}, keep_conn=False),
        Request(2, {b"A": b"1"}, keep_conn=True),
    ]
    server.send(Stdout(1, b"Status: 200\r\n\r\n"))
    server.send(EndRequest(2))
    assert not server.should_close
    server.send(EndRequest(1))
    assert server.should_close


def test_keep_conn_requests_never_ask_to_close() -> None:
    server = ServerConnection()
    for rid in (1, 2, 3):
        events(server, request(rid))
        server.send(EndRequest(rid))
    assert not server.should_close


# --- framing --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [0, 2, 255])
def test_version_other_than_1_is_a_remote_error(version: int) -> None:
    error = assert_remote_error(ServerConnection(), rec(GET_VALUES, 0, version=version), "version")
    assert error.error_status_hint == 502
    assert_remote_error(ClientConnection(), rec(GET_VALUES_RESULT, 0, version=version), "version")


@pytest.mark.parametrize("cut", [1, 7, 8, 9, 15])
def test_eof_in_the_middle_of_a_record_is_a_remote_error(cut: int) -> None:
    server = ServerConnection()
    server.receive_data(rec(GET_VALUES, 0, b"12345678")[:cut])
    assert events(server) == []
    server.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="middle of a record"):
        server.next_event()
    assert server.state is ConnectionState.ERROR


def test_eof_between_records_closes_cleanly() -> None:
    server = ServerConnection()
    server.receive_data(request(1))
    server.receive_data(b"")
    assert events(server) == [Request(1, {b"A": b"1"}), ConnectionClosed()]
    assert server.state is ConnectionState.CLOSED
    assert server.next_event() == ConnectionClosed()
    with pytest.raises(LocalProtocolError):
        server.receive_data(b"more")
    # Half-closed: the application may still answer.
    assert records(server.send(EndRequest(1)))[-1] == (END, 1, bytes(8))


def test_padding_is_ignored_whatever_its_length_or_content() -> None:
    server = ServerConnection()
    # Headers by hand: padding lengths 255 and 3 (not the aligning ones), padding bytes not zero.
    wire = struct.pack("!BBHHBx", 1, BEGIN, 1, 8, 255) + begin_body(1) + b"\xff" * 255
    wire += struct.pack("!BBHHBx", 1, PARAMS, 1, 4, 3) + nv((b"A", b"1")) + b"pad"
    wire += struct.pack("!BBHHBx", 1, PARAMS, 1, 0, 0)
    assert events(server, wire) == [Request(1, {b"A": b"1"})]


# --- limits ---------------------------------------------------------------------------------


def test_params_at_the_limit_pass_and_one_byte_more_is_431() -> None:
    block = nv((b"N", b"")) + b"\x01\x7f" + b"K" + b"v" * 127
    limit = len(block)
    server = ServerConnection(max_params_size=limit)
    assert events(server, begin(1) + rec(PARAMS, 1, block) + rec(PARAMS, 1)) == [
        Request(1, {b"N": b"", b"K": b"v" * 127})
    ]
    server = ServerConnection(max_params_size=limit - 1)
    error = assert_remote_error(server, begin(1) + rec(PARAMS, 1, block), "PARAMS")
    assert error.error_status_hint == 431


def test_ten_megabyte_params_fail_before_they_are_buffered() -> None:
    # One pair whose value claims 10 MiB, sent record by record as a peer would.
    server = ServerConnection()
    value_length = 10 * 1024 * 1024
    head = [begin(1), rec(PARAMS, 1, bytes([11]) + (value_length | 0x80000000).to_bytes(4, "big") + b"HTTP_COOKIE")]
    body = [rec(PARAMS, 1, b"c" * 65528)] * (value_length // 65528)
    fed = 0
    with pytest.raises(RemoteProtocolError) as info:
        for wire in head + body:
            server.receive_data(wire)
            fed += len(wire)
            events(server)
    assert info.value.error_status_hint == 431
    largest_record = 8 + 0xFFFF + 255
    assert fed <= len(b"".join(head)) + DEFAULT_MAX_PARAMS_SIZE + largest_record


def test_more_than_max_requests_in_flight_is_a_remote_error() -> None:
    server = ServerConnection()
    wire = b"".join(begin(rid) for rid in range(1, 10_001))
    assert_remote_error(server, wire, "requests in flight")
    assert server.requests_in_flight == DEFAULT_MAX_REQUESTS


def test_max_requests_is_exact() -> None:
    server = ServerConnection(max_requests=3)
    assert events(server, b"".join(request(rid) for rid in (1, 2, 3))) == [Request(r, {b"A": b"1"}) for r in (1, 2, 3)]
    assert_remote_error(server, begin(4))


def test_params_held_across_requests_are_capped_by_max_buffer_size() -> None:
    server = ServerConnection(max_params_size=1000, max_buffer_size=2500)
    block = nv((b"K", b"v" * 894))  # 900 bytes: lengths 1 + 4, name 1, value 894
    # Completed params are released: three of 900 bytes, one after the other, are fine.
    for rid in (1, 2, 3):
        wire = begin(rid) + rec(PARAMS, rid, block) + rec(PARAMS, rid)
        assert events(server, wire) == [Request(rid, {b"K": b"v" * 894})]
    # Held at once, they are not.
    assert events(server, begin(4) + rec(PARAMS, 4, block) + begin(5) + rec(PARAMS, 5, block)) == []
    error = assert_remote_error(server, begin(6) + rec(PARAMS, 6, block), "exceed 2500")
    assert error.error_status_hint == 502


# --- sending ------------------------------------------------------------------------------


def test_stdout_over_65535_bytes_is_split_and_end_request_ends_streams_once() -> None:
    server = server_with_request(1)
    body = (bytes(range(256)) * 782)[:200_000]
    out = records(server.send(Stdout(1, body)))
    assert len(out) == 4
    assert all(rtype == STDOUT and rid == 1 and 0 < len(content) <= 65535 for rtype, rid, content in out)
    assert b"".join(content for _, _, content in out) == body
    assert records(server.send(Stderr(1, b"warning"))) == [(STDERR, 1, b"warning")]
    assert records(server.send(EndRequest(1, 3))) == [
        (STDOUT, 1, b""),
        (STDERR, 1, b""),
        (END, 1, end_body(3, 0)),
    ]


def test_end_request_does_not_repeat_an_ended_stdout_or_an_unused_stderr() -> None:
    server = server_with_request(1)
    assert records(server.send(Stdout(1, b""))) == [(STDOUT, 1, b"")]
    assert server.send(Stderr(1, b"")) == b""
    assert records(server.send(EndRequest(1))) == [(END, 1, bytes(8))]


def test_client_sees_each_stream_end_exactly_once() -> None:
    client = ClientConnection()
    server = ServerConnection()
    server.receive_data(client.send(Request(1, {})))
    events(server)
    wire = server.send(Stdout(1, b"a" * 70_000)) + server.send(Stderr(1, b"e")) + server.send(EndRequest(1))
    got = events(client, wire)
    assert [e for e in got if isinstance(e, Stdout) and not e.data] == [Stdout(1, b"")]
    assert [e for e in got if isinstance(e, Stderr) and not e.data] == [Stderr(1, b"")]
    assert got[-1] == EndRequest(1)
    assert b"".join(e.data for e in got if isinstance(e, Stdout)) == b"a" * 70_000


def test_local_errors_for_misusing_the_server() -> None:
    server = ServerConnection()
    events(server, begin(2) + rec(PARAMS, 2, nv((b"A", b"1"))))  # params not yet complete
    with pytest.raises(LocalProtocolError):
        server.send(Stdout(9, b"x"))  # never began
    with pytest.raises(LocalProtocolError):
        server.send(Stdout(2, b"x"))  # not yet surfaced to the application
    events(server, rec(PARAMS, 2))
    server.send(Stdout(2, b""))
    with pytest.raises(LocalProtocolError, match="already ended"):
        server.send(Stdout(2, b"late"))
    server.send(EndRequest(2))
    with pytest.raises(LocalProtocolError):
        server.send(EndRequest(2))  # ended
    with pytest.raises(LocalProtocolError):
        server.send(Stdin(2, b"x"))  # an application does not send STDIN
    assert server.state is ConnectionState.OPEN


def test_local_errors_for_misusing_the_client() -> None:
    client = ClientConnection()
    client.send(Request(1, {}))
    with pytest.raises(LocalProtocolError, match="already in flight"):
        client.send(Request(1, {}))
    for rid in (0, 65536):
        with pytest.raises(LocalProtocolError):
            client.send(Request(rid, {}))
    with pytest.raises(LocalProtocolError):
        client.send(Stdin(2, b"x"))
    client.send(Stdin(1, b""))
    with pytest.raises(LocalProtocolError, match="already ended"):
        client.send(Stdin(1, b"late"))
    with pytest.raises(LocalProtocolError):
        client.send(Stdout(1, b"x"))  # a web server does not send STDOUT


def test_a_connection_in_error_refuses_work() -> None:
    server = server_with_request(1)
    assert_remote_error(server, rec(STDIN, 1, b"ok") + rec(PARAMS, 1, b"x"))
    with pytest.raises(LocalProtocolError):
        server.send(Stdout(1, b"x"))
    with pytest.raises(LocalProtocolError):
        server.receive_data(b"x")
    client = ClientConnection()
    client.send(Request(1, {}))
    assert_remote_error(client, rec(STDOUT, 2, b"x"))
    with pytest.raises(LocalProtocolError):
        client.send(Stdin(1, b"x"))


def test_protocol_error_is_abstract() -> None:
    with pytest.raises(TypeError):
        ProtocolError("boom")
    assert isinstance(RemoteProtocolError("x"), ProtocolError)
    assert RemoteProtocolError("x").error_status_hint == 502
    assert LocalProtocolError("x").error_status_hint == 500
    assert RemoteProtocolError("x", 431).error_status_hint == 431


# --- request ids --------------------------------------------------------------------------


def test_new_request_id_skips_ids_in_flight_and_wraps_after_65535() -> None:
    client = ClientConnection()
    for rid in (1, 2, 4):
        client.send(Request(rid, {}))
    assert [client.new_request_id() for _ in range(2)] == [3, 5]
    # Run up to the top of the range, then wrap past the ids still in flight.
    while (rid := client.new_request_id()) != 65535:
        assert rid not in (1, 2, 4)
    assert client.new_request_id() == 3
    client.send(Request(3, {}))
    assert client.new_request_id() == 5


def test_new_request_id_wraps_when_65535_itself_is_in_flight() -> None:
    client = ClientConnection()
    client.send(Request(65535, {}))
    while client.new_request_id() != 65534:
        pass
    assert client.new_request_id() == 1


def test_new_request_id_when_every_id_is_in_flight() -> None:
    client = ClientConnection()
    for _ in range(65535):
        client.send(Request(client.new_request_id(), {}))
    assert client.requests_in_flight == 65535
    with pytest.raises(LocalProtocolError):
        client.new_request_id()
    # Ending one frees exactly that id.
    client.receive_data(end_request(777))
    assert events(client) == [EndRequest(777)]
    assert client.new_request_id() == 777


# --- odds and ends ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "block",
    [
        b"\x80\x00",  # a 4-byte name length cut short
        b"\x01",  # no value length
        b"\x01\x80\x00\x00",  # a 4-byte value length cut short
        b"\x01\x05a",  # the value runs past the end
        b"\xff\xff\xff\xff\x00",  # a 2 GB name in a 5-byte block
    ],
)
def test_malformed_params_are_a_remote_error(block: bytes) -> None:
    assert_remote_error(ServerConnection(), begin(1) + rec(PARAMS, 1, block) + rec(PARAMS, 1))


def test_malformed_get_values_is_a_remote_error() -> None:
    assert_remote_error(ServerConnection(), rec(GET_VALUES, 0, b"\x05\x00ab"))


@pytest.mark.parametrize("app_status", [-1, 2**32])
def test_bad_app_status_is_a_local_error_that_leaves_the_request_in_flight(app_status: int) -> None:
    server = server_with_request(1)
    events(server, request(2, keep_conn=False))
    with pytest.raises(LocalProtocolError, match="32 bits"):
        server.send(EndRequest(2, app_status))
    # Nothing was sent, so the request must still be endable.
    assert server.requests_in_flight == 2 and not server.should_close
    assert records(server.send(EndRequest(2, 1))) == [(STDOUT, 2, b""), (END, 2, end_body(1, 0))]
    assert server.should_close


def test_bad_protocol_status_is_a_local_error_that_leaves_the_request_in_flight() -> None:
    server = server_with_request(1)
    with pytest.raises(LocalProtocolError, match="8 bits"):
        server.send(EndRequest(1, 0, 256))
    assert server.requests_in_flight == 1
    assert records(server.send(EndRequest(1)))[-1] == (END, 1, bytes(8))


@pytest.mark.parametrize("role", [-1, 0x10000])
def test_bad_role_is_a_local_error_that_leaves_no_request_in_flight(role: int) -> None:
    client = ClientConnection()
    with pytest.raises(LocalProtocolError):
        client.send(Request(1, {}, role))
    assert client.requests_in_flight == 0
    client.send(Request(1, {}))


def test_buffered_counts_bytes_not_yet_turned_into_events() -> None:
    server = ServerConnection()
    wire = request(1) + rec(STDIN, 1, b"abc")
    server.receive_data(wire[:-5])
    assert events(server) == [Request(1, {b"A": b"1"})]
    assert server.buffered == len(rec(STDIN, 1, b"abc")) - 5
    server.receive_data(wire[-5:])
    assert events(server) == [Stdin(1, b"abc")]
    assert server.buffered == 0


def test_stream_events_end_when_empty() -> None:
    assert Stdin(1, b"").end and Stdout(1, b"").end
    assert not Stderr(1, b"x").end
    assert repr(NEED_DATA) == "NEED_DATA"


def test_client_data_stream_only_for_filter() -> None:
    client = ClientConnection()
    client.send(Request(1, {}))
    client.send(Request(2, {}, Role.FILTER))
    with pytest.raises(LocalProtocolError):
        client.send(Data(1, b"x"))
    assert records(client.send(Data(2, b"x")) + client.send(Data(2, b""))) == [(DATA, 2, b"x"), (DATA, 2, b"")]
    with pytest.raises(LocalProtocolError):
        client.send(Data(2, b"late"))


def test_client_refuses_stderr_after_its_end() -> None:
    client = ClientConnection()
    client.send(Request(1, {}))
    assert events(client, rec(STDERR, 1, b"e") + rec(STDERR, 1)) == [Stderr(1, b"e"), Stderr(1, b"")]
    assert_remote_error(client, rec(STDERR, 1, b"again"), "after its end")
