"""The CGI layer of the client: params out (nginx's set), header block in."""

from __future__ import annotations

import pytest

import fcgi_cluster.client as client
from fcgi_cluster.client import MAX_HEADER_SIZE, UpstreamProtocolError, cgi_params, parse_cgi_headers

# Plain functions only: pytest-trio refuses its mark on synchronous tests.


# --- the public face ------------------------------------------------------------


def test_exports_are_exactly_the_public_names() -> None:
    assert sorted(client.__all__) == sorted(
        [
            "open_connection", "Connection", "Response", "ResponseStream", "Buffering",
            "cgi_params", "parse_cgi_headers", "MAX_HEADER_SIZE",
            "FastCGIError", "ConnectError", "ConnectionLost", "PeerUnresponsive", "UpstreamProtocolError", "RequestRefused",
            "ResponseOverflow",
        ]
    )
    for name in client.__all__:
        obj = getattr(client, name)
        if callable(obj):
            assert obj.__doc__, f"{name} has no docstring"


def test_errors_form_one_hierarchy() -> None:
    for name in ("ConnectError", "ConnectionLost", "UpstreamProtocolError", "RequestRefused"):
        assert issubclass(getattr(client, name), client.FastCGIError)
    assert issubclass(client.PeerUnresponsive, client.ConnectionLost)


# --- parse_cgi_headers ------------------------------------------------------------


def test_status_line_gives_the_status_and_is_not_a_header() -> None:
    status, headers, rest = parse_cgi_headers(b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnope")
    assert status == 404
    assert headers == [("Content-Type", "text/plain")]
    assert rest == b"nope"


def test_status_without_reason_phrase() -> None:
    assert parse_cgi_headers(b"Status: 204\r\n\r\n") == (204, [], b"")


def test_location_without_status_is_a_302() -> None:
    status, headers, _ = parse_cgi_headers(b"Location: /elsewhere\r\n\r\n")
    assert status == 302
    assert headers == [("Location", "/elsewhere")]


def test_location_with_status_keeps_the_status() -> None:
    status, _, _ = parse_cgi_headers(b"Location: /x\r\nStatus: 301 Moved Permanently\r\n\r\n")
    assert status == 301


def test_default_status_is_200_and_order_and_repeats_are_kept() -> None:
    data = b"Set-Cookie: a=1\nX-Thing:  spaced \nSet-Cookie: b=2\n\nbody\n\nmore"
    status, headers, rest = parse_cgi_headers(data)
    assert status == 200
    assert headers == [("Set-Cookie", "a=1"), ("X-Thing", "spaced"), ("Set-Cookie", "b=2")]
    assert rest == b"body\n\nmore"


def test_a_head_seen_before_parses_the_same_and_its_headers_are_the_callers_own() -> None:
    from fcgi_cluster.client._cgi import parse_cgi_head

    data = b"Status: 404 Not Found\r\nX-A: 1\r\nX-B: 2\r\n\r\nbody one"
    first = parse_cgi_head(data)
    assert first == (404, [(b"X-A", b"1"), (b"X-B", b"2")], b"body one")
    first[1].append((b"X-Added", b"by the caller"))
    # The same head again (remembered now), with another body after it.
    again = parse_cgi_head(data[:-3] + b"two")
    assert again == (404, [(b"X-A", b"1"), (b"X-B", b"2")], b"body two")
    assert again[1] is not first[1]


def test_remembered_heads_stay_bounded() -> None:
    from fcgi_cluster.client import _cgi

    for n in range(3 * _cgi._PARSED_HEADS_SIZE):
        status, headers, rest = _cgi.parse_cgi_head(b"Set-Cookie: id=%d\r\n\r\nx" % n)  # type: ignore[misc]
        assert (status, headers, rest) == (200, [(b"Set-Cookie", b"id=%d" % n)], b"x")
        assert len(_cgi._parsed_heads) <= _cgi._PARSED_HEADS_SIZE


def test_a_malformed_head_is_refused_every_time_not_remembered() -> None:
    bad = b"Status: 20x\r\n\r\n"
    for _ in range(2):
        with pytest.raises(UpstreamProtocolError):
            parse_cgi_headers(bad)


@pytest.mark.parametrize(
    "data, rest",
    [
        (b"A: 1\r\n\r\nx", b"x"),
        (b"A: 1\n\nx", b"x"),
        (b"A: 1\r\n\nx", b"x"),  # mixed line ends, as some scripts write
        (b"A: 1\n\r\nx", b"x"),
        (b"\r\nx", b"x"),  # an empty header block
        # The first blank line ends the block, whichever its line ending and
        # whatever the body holds after it.
        (b"A: 1\n\nx\n\r\ny", b"x\n\r\ny"),
        (b"A: 1\r\n\r\nx\n\ny", b"x\n\ny"),
        (b"A: 1\nB: 2\n\r\nx" + b"\n\n" * 1000, b"x" + b"\n\n" * 1000),
    ],
)
def test_either_line_ending_ends_the_block(data: bytes, rest: bytes) -> None:
    assert parse_cgi_headers(data)[2] == rest  # type: ignore[index]


@pytest.mark.parametrize("partial", [b"", b"Status: 200 OK", b"Status: 200 OK\r\n", b"A: 1\r\nB: 2\r\n\r"])
def test_missing_blank_line_means_not_yet(partial: bytes) -> None:
    assert parse_cgi_headers(partial) is None


def test_incremental_parse_finds_a_blank_line_split_across_chunks() -> None:
    data = bytearray(b"Status: 200 OK\r\n\r")
    assert parse_cgi_headers(data) is None
    data += b"\nbody"
    assert parse_cgi_headers(data) == (200, [], b"body")


def test_header_block_too_big_without_an_end() -> None:
    with pytest.raises(UpstreamProtocolError, match="exceeds"):
        parse_cgi_headers(b"X-Big: " + b"a" * MAX_HEADER_SIZE)


def test_header_block_too_big_even_when_complete() -> None:
    with pytest.raises(UpstreamProtocolError, match="exceeds"):
        parse_cgi_headers(b"X-Big: " + b"a" * MAX_HEADER_SIZE + b"\r\n\r\n")


def test_header_block_at_the_limit_is_fine_one_more_byte_is_not() -> None:
    block = b"X-Big: " + b"a" * (MAX_HEADER_SIZE - 11) + b"\r\n\r\n"
    assert len(block) == MAX_HEADER_SIZE
    assert parse_cgi_headers(block[:-1]) is None  # still waiting for its last byte
    assert parse_cgi_headers(block + b"body") == (200, [("X-Big", "a" * (MAX_HEADER_SIZE - 11))], b"body")
    with pytest.raises(UpstreamProtocolError):
        parse_cgi_headers(b"X" + block)


@pytest.mark.parametrize(
    "data",
    [
        b"no colon here\r\n\r\n",
        b": no name\r\n\r\n",
        b"Bad Name: x\r\n\r\n",
        b"A: 1\r\n folded continuation\r\n\r\n",
        b"X-Split: a\rInjected: yes\r\n\r\n",  # response splitting
        b"X-Nul: a\0b\r\n\r\n",
        b"Status: abc\r\n\r\n",
        b"Status: 20\r\n\r\n",
        b"Status: 2000\r\n\r\n",
        b"Status: 099 Low\r\n\r\n",
        b"Status: 200 OK\r\nStatus: 404 Not Found\r\n\r\n",
    ],
)
def test_malformed_header_blocks_are_refused(data: bytes) -> None:
    with pytest.raises(UpstreamProtocolError):
        parse_cgi_headers(data)


# --- cgi_params -------------------------------------------------------------------


def test_params_are_nginx_fastcgi_params() -> None:
    params = cgi_params(
        "POST",
        "/app/index.php?a=1&b=2",
        headers=[("Host", "example.com"), ("Content-Type", "text/plain"), ("Content-Length", "5")],
        remote_addr="10.0.0.7",
        remote_port=51234,
        server=("10.0.0.1", 8080),
        document_root="/srv/www/",
    )
    assert params == {
        "QUERY_STRING": "a=1&b=2",
        "REQUEST_METHOD": "POST",
        "CONTENT_TYPE": "text/plain",
        "CONTENT_LENGTH": "5",
        "SCRIPT_NAME": "/app/index.php",
        "REQUEST_URI": "/app/index.php?a=1&b=2",
        "DOCUMENT_URI": "/app/index.php",
        "DOCUMENT_ROOT": "/srv/www/",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REQUEST_SCHEME": "http",
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_SOFTWARE": params["SERVER_SOFTWARE"],
        "REMOTE_ADDR": "10.0.0.7",
        "REMOTE_PORT": "51234",
        "SERVER_ADDR": "10.0.0.1",
        "SERVER_PORT": "8080",
        "SERVER_NAME": "10.0.0.1",
        "REDIRECT_STATUS": "200",
        "SCRIPT_FILENAME": "/srv/www/app/index.php",
        "PATH_INFO": "",
        "HTTP_HOST": "example.com",
    }
    assert params["SERVER_SOFTWARE"].startswith("fcgi-cluster/")


def test_content_type_and_length_are_empty_without_a_body() -> None:
    params = cgi_params("GET", "/")
    assert params["CONTENT_TYPE"] == "" and params["CONTENT_LENGTH"] == ""
    assert params["QUERY_STRING"] == ""
    assert "HTTP_CONTENT_TYPE" not in params and "HTTP_CONTENT_LENGTH" not in params


def test_body_length_overrides_a_content_length_header() -> None:
    params = cgi_params("POST", "/", headers=[("Content-Length", "999")], body_length=3)
    assert params["CONTENT_LENGTH"] == "3"


def test_proxy_header_never_becomes_http_proxy() -> None:
    params = cgi_params("GET", "/", headers=[("Proxy", "http://evil:8080"), ("proxy", "x"), ("PROXY", "y")])
    assert not any("PROXY" in name for name in params)


def test_repeated_headers_are_joined() -> None:
    params = cgi_params(
        "GET",
        "/",
        headers=[("Accept", "text/html"), ("X-Forwarded-For", "1.1.1.1"), ("accept", "*/*"), ("Cookie", "a=1"),
                 ("Cookie", "b=2"), ("X-Forwarded-For", "2.2.2.2")],
    )
    assert params["HTTP_ACCEPT"] == "text/html, */*"
    assert params["HTTP_X_FORWARDED_FOR"] == "1.1.1.1, 2.2.2.2"
    assert params["HTTP_COOKIE"] == "a=1; b=2"


def test_underscore_headers_cannot_pose_as_dashed_ones() -> None:
    params = cgi_params("GET", "/", headers=[("X_Forwarded_For", "6.6.6.6"), ("X-Forwarded-For", "1.1.1.1")])
    assert params["HTTP_X_FORWARDED_FOR"] == "1.1.1.1"


def test_headers_as_a_mapping() -> None:
    assert cgi_params("GET", "/", headers={"User-Agent": "t"})["HTTP_USER_AGENT"] == "t"


def test_path_is_percent_decoded_but_request_uri_is_not() -> None:
    params = cgi_params("GET", "/caf%C3%A9/a%20b?q=%20")
    assert params["SCRIPT_NAME"] == params["DOCUMENT_URI"] == "/café/a b"
    assert params["REQUEST_URI"] == "/caf%C3%A9/a%20b?q=%20"
    assert params["QUERY_STRING"] == "q=%20"


@pytest.mark.parametrize("uri", ["relative", "/%ff", "/a%00b"])
def test_bad_uris_are_refused(uri: str) -> None:
    with pytest.raises(ValueError):
        cgi_params("GET", uri)


def test_https_and_extra() -> None:
    params = cgi_params("GET", "/", scheme="https", extra={"SCRIPT_FILENAME": "/srv/app.py", "APP_ENV": "test"})
    assert params["HTTPS"] == "on" and params["REQUEST_SCHEME"] == "https"
    assert params["SCRIPT_FILENAME"] == "/srv/app.py" and params["APP_ENV"] == "test"
