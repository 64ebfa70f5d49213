"""The sans-IO HTTP/2 server side (``_h2``), driven by python-hyper's h2 client side with byte strings."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import ContinuationFrame, Frame, GoAwayFrame, HeadersFrame

from fcgi_cluster.frontend._h2 import Data, EndStream, H2Limits, H2Refused, H2Server, Request, Reset, WindowOpened
from fcgi_cluster.frontend._http import HTTPLimits


class Pair:
    """A client h2 connection and our server, moving bytes between them on ``pump``."""

    def __init__(self, limits: H2Limits = H2Limits(), http: HTTPLimits = HTTPLimits(), clock=lambda: 0.0) -> None:
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False))
        self.client.initiate_connection()
        self.server = H2Server(limits, http, clock=clock)
        self.client_events: list[h2.events.Event] = []

    def pump(self) -> list[object]:
        """Client's bytes to the server (its events returned); the server's bytes back to the client."""
        events = self.server.receive_data(self.client.data_to_send())
        self.back()
        return events

    def back(self) -> None:
        self.client_events += self.client.receive_data(self.server.data_to_send())

    def request(self, path: bytes = b"/", extra=(), end: bool = True, authority: bool = True) -> int:
        stream = self.client.get_next_available_stream_id()
        fields = [(b":method", b"GET"), (b":path", path), (b":scheme", b"https")]
        if authority:
            fields.append((b":authority", b"example.org"))
        self.client.send_headers(stream, fields + list(extra), end_stream=end)
        return stream


def test_a_request_becomes_the_http1_sides_head_with_version_2() -> None:
    pair = Pair()
    pair.pump()
    stream = pair.request(b"/a/b?x=1", extra=[(b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"x-one", b"1")])
    events = pair.pump()
    assert [type(e) for e in events] == [Request, EndStream]
    head = events[0].head
    assert events[0].stream_id == stream and events[0].refusal is None and events[0].ended
    assert (head.method, head.target, head.path, head.query, head.http_version) == (
        b"GET", b"/a/b?x=1", b"/a/b", b"x=1", b"2.0")
    assert (b"host", b"example.org") in head.headers
    assert (b"cookie", b"a=1; b=2") in head.headers
    assert not head.chunked and head.content_length is None


def test_a_body_without_length_is_read_as_chunked_and_its_data_costs_window() -> None:
    pair = Pair()
    pair.pump()
    stream = pair.request(b"/up", end=False)
    pair.client.send_data(stream, b"hello", end_stream=True)
    events = pair.pump()
    assert events[0].head.chunked and not events[0].ended
    assert events[1] == Data(stream, b"hello", 5)
    assert events[2] == EndStream(stream)


@pytest.mark.parametrize("extra, authority, status", [
    ([(b"content-length", b"2000000")], True, 413),
    ([(b"x-%d" % i, b"v") for i in range(101)], True, 431),
])
def test_a_requests_own_fault_is_a_refusal_answered_on_its_stream(extra, authority, status) -> None:
    pair = Pair()
    pair.pump()
    pair.request(b"/", extra=extra, authority=authority, end=False)
    event = pair.pump()[0]
    assert isinstance(event, Request) and event.refusal is not None and event.refusal[0] == status


@pytest.mark.parametrize("extra, authority", [
    ([(b"content-length", b"x1")], True),
    ([], False),  # neither :authority nor Host
])
def test_malformed_requests_are_h2s_connection_errors(extra, authority) -> None:
    pair = Pair()
    pair.pump()
    pair.request(b"/", extra=extra, authority=authority, end=False)
    with pytest.raises(H2Refused) as caught:
        pair.pump()
    assert caught.value.error_code == ErrorCodes.PROTOCOL_ERROR


def test_a_header_block_over_its_bound_ends_the_connection_before_it_completes() -> None:
    pair = Pair(H2Limits(max_header_block=1000))
    pair.pump()
    block = pair.client.encoder.encode([(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http")])
    raw = HeadersFrame(1, data=block).serialize() + ContinuationFrame(1, data=b"\x00" * 600).serialize() * 2
    with pytest.raises(H2Refused) as caught:
        pair.server.receive_data(raw)
    assert caught.value.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    pair.back()
    assert any(isinstance(e, h2.events.ConnectionTerminated) and e.error_code == ErrorCodes.ENHANCE_YOUR_CALM
               for e in pair.client_events)
    with pytest.raises(H2Refused):  # refuses more work after the error
        pair.server.receive_data(b"\x00" * 9)


def test_pings_are_counted_per_window() -> None:
    now = [0.0]
    pair = Pair(H2Limits(max_pings=3, flood_window=10), clock=lambda: now[0])
    pair.pump()
    for second in range(6):  # one a second x 6 is over 3 per 10 s
        now[0] = second * 4.0  # ... but spread over windows of 10 s it is not
        pair.client.ping(b"%08d" % second)
        pair.pump()
    for i in range(4):
        pair.client.ping(b"%08d" % i)
    with pytest.raises(H2Refused) as caught:
        pair.pump()
    assert caught.value.reason == "PING flood"


def test_resets_past_the_bound_are_a_goaway() -> None:
    pair = Pair(H2Limits(max_resets=5))
    pair.pump()
    for _ in range(5):
        pair.client.reset_stream(pair.request())
    assert [type(e) for e in pair.pump()].count(Reset) == 5
    pair.client.reset_stream(pair.request())
    with pytest.raises(H2Refused) as caught:
        pair.pump()
    assert caught.value.reason == "too many stream resets"


def test_data_is_sent_as_the_clients_window_allows() -> None:
    pair = Pair()
    pair.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 100})
    pair.pump()
    stream = pair.request()
    pair.pump()
    pair.server.send_head(stream, 200, [(b"content-type", b"text/plain")], False)
    assert pair.server.send_data(stream, memoryview(b"x" * 500)) == 100
    assert pair.server.send_data(stream, memoryview(b"x" * 400)) == 0
    pair.back()
    pair.client.increment_flow_control_window(400, stream)
    assert WindowOpened(stream) in pair.pump()
    assert pair.server.send_data(stream, memoryview(b"x" * 400)) == 400
    assert pair.server.end_stream(stream)
    pair.back()
    received = sum(len(e.data) for e in pair.client_events if isinstance(e, h2.events.DataReceived))
    assert received == 500
    assert any(isinstance(e, h2.events.StreamEnded) for e in pair.client_events)


# --- its configuration --------------------------------------------------------------------


def test_http2_keys_default_and_errors_name_file_line_and_key() -> None:
    from fcgi_cluster.frontend._config import ConfigError, parse_config

    base = '[upstream.app]\nservers = ["127.0.0.1:9001"]\n'
    config = parse_config(base, "cluster.toml")
    assert (config.frontend.http2, config.frontend.http2_max_concurrent_streams) == ("auto", 128)
    config = parse_config('[frontend]\nhttp2 = true\nhttp2_max_concurrent_streams = 16\n' + base, "cluster.toml")
    assert (config.frontend.http2, config.frontend.http2_max_concurrent_streams) == (True, 16)
    for bad in ('http2 = "yes"', "http2_max_concurrent_streams = 0"):
        with pytest.raises(ConfigError) as info:
            parse_config(f"[frontend]\n{bad}\n" + base, "cluster.toml")
        assert str(info.value).startswith(f"cluster.toml:2: frontend.{bad.split()[0]}:"), str(info.value)


def test_a_graceful_goaway_keeps_streams_in_flight_and_refuses_later_ones() -> None:
    pair = Pair()
    pair.pump()
    first = pair.request(b"/up", end=False)
    pair.pump()
    pair.server.goaway("stopping")
    goaway = pair.server.data_to_send()
    # The client, before it reads the GOAWAY, sends more body and a new stream.
    pair.client.send_data(first, b"rest", end_stream=True)
    late = pair.request(b"/late")
    events = pair.pump()
    assert events[:2] == [Data(first, b"rest", 4), EndStream(first)]
    assert pair.server.error is None
    assert not pair.server.refuses(first) and pair.server.refuses(late)
    # The GOAWAY frame as sent (the client side's h2 would take nothing after it).
    frame, length = Frame.parse_frame_header(memoryview(goaway[:9]))
    frame.parse_body(memoryview(goaway[9 : 9 + length]))
    assert isinstance(frame, GoAwayFrame) and (frame.last_stream_id, frame.error_code) == (first, 0)
    # A second call says nothing more; a later close names the same last stream.
    pair.server.goaway("again")
    assert not pair.server.has_output
    pair.server.close()
    pair.back()
    terminated = [e for e in pair.client_events if isinstance(e, h2.events.ConnectionTerminated)]
    assert terminated and terminated[-1].last_stream_id == first


def test_a_body_ended_short_after_the_answer_is_not_a_connection_error() -> None:
    pair = Pair(http=HTTPLimits(max_body_size=100))
    pair.pump()
    stream = pair.request(b"/up", extra=[(b"content-length", b"1000")], end=False)
    pair.client.send_data(stream, b"x" * 10)
    request = pair.pump()[0]
    assert request.refusal is not None and request.refusal[0] == 413
    pair.server.send_head(stream, 413, [], end=True)
    pair.back()
    pair.client.end_stream(stream)  # 10 bytes of a declared 1000
    events = pair.pump()
    assert EndStream(stream) in events and pair.server.error is None
