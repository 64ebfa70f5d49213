"""HTTP request -> FastCGI params: path normalisation, path splitting, header mapping."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fcgi_cluster.frontend._cgi import (
    BadPath, ConnectionParams, encode_line_params, line_params, normalize_path, request_params, split_path,
)
from fcgi_cluster.protocol import decode_pairs, encode_pairs

BASE = ConnectionParams(
    remote_addr=b"192.0.2.7", remote_port=b"50000", server_addr=b"127.0.0.1", server_port=b"8080", server_name=b"example.test"
).base()


def params_for(headers, *, path=b"/index.php", target=None, query=b"", script=None, info=b"", **kwargs):
    return request_params(
        BASE, b"GET", target or path, query, path, headers,
        script_name=script if script is not None else path, path_info=info, document_root=b"/srv/www", **kwargs,
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"/", b"/"),
        (b"/a/b", b"/a/b"),
        (b"/a//b///c", b"/a/b/c"),
        (b"/a/./b/.", b"/a/b/"),
        (b"/a/b/../c", b"/a/c"),
        (b"/a/b/..", b"/a/"),
        (b"/a%20b", b"/a b"),
        (b"/a%2Fb", b"/a/b"),
        (b"/x/%2e%2e/y", b"/y"),
        (b"/caf%C3%A9", "/café".encode()),
    ],
)
def test_normalize_path(raw: bytes, expected: bytes) -> None:
    assert normalize_path(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [b"/..", b"/../etc/passwd", b"/a/../../b", b"/%2e%2e/x", b"/a%00b", b"/a%0ab", b"/a%0d", b"/a%7f", b"relative", b""],
)
def test_normalize_path_refuses(raw: bytes) -> None:
    with pytest.raises(BadPath):
        normalize_path(raw)


@given(st.binary(max_size=40))
def test_normalized_paths_never_climb_or_hold_controls(tail: bytes) -> None:
    try:
        path = normalize_path(b"/" + tail)
    except BadPath:
        return
    assert path.startswith(b"/")
    assert b"/../" not in path + b"/" and not path.endswith(b"/..")
    assert not re.search(rb"[\x00-\x1f\x7f]", path)


PHP_SPLIT = re.compile(r"^(.+\.php)(/.*)$", re.DOTALL)


def test_split_path_info_like_nginx() -> None:
    assert split_path(b"/app/index.php/user/42", PHP_SPLIT) == (b"/app/index.php", b"/user/42")
    # No match: the whole path is the script, PATH_INFO empty (nginx's behaviour).
    assert split_path(b"/style.css", PHP_SPLIT) == (b"/style.css", b"")
    assert split_path(b"/dir/", None, b"index.php") == (b"/dir/index.php", b"")
    assert split_path(b"/a.php", None, b"index.php") == (b"/a.php", b"")


def test_cve_2019_11043_newline_cannot_empty_path_info() -> None:
    # The attack: /index.php/PATH%0Ainfo.php. nginx's regex stops at the
    # newline, PATH_INFO comes out empty and php-fpm underflows a buffer.
    # Here the newline never reaches the split: the path is refused first.
    with pytest.raises(BadPath):
        normalize_path(b"/index.php/PATH%0Ainfo.php")
    # Even if a caller split such a path, DOTALL makes the regex span it.
    assert split_path(b"/index.php/a\nb.php", PHP_SPLIT) == (b"/index.php", b"/a\nb.php")


def test_params_nginx_set() -> None:
    params = params_for([(b"host", b"example.test:8080")], target=b"/index.php?x=1", query=b"x=1")
    assert params[b"QUERY_STRING"] == b"x=1"
    assert params[b"REQUEST_URI"] == b"/index.php?x=1"
    assert params[b"SCRIPT_FILENAME"] == b"/srv/www/index.php"
    assert params[b"DOCUMENT_ROOT"] == b"/srv/www"
    assert params[b"REMOTE_ADDR"] == b"192.0.2.7" and params[b"REMOTE_PORT"] == b"50000"
    assert params[b"SERVER_PORT"] == b"8080" and params[b"SERVER_NAME"] == b"example.test"
    assert params[b"GATEWAY_INTERFACE"] == b"CGI/1.1" and params[b"REDIRECT_STATUS"] == b"200"
    assert params[b"SERVER_PROTOCOL"] == b"HTTP/1.1"
    assert params[b"REQUEST_SCHEME"] == b"http" and b"HTTPS" not in params
    assert params[b"HTTP_HOST"] == b"example.test:8080"
    assert params[b"CONTENT_LENGTH"] == b"" and params[b"CONTENT_TYPE"] == b""
    for name in (b"SCRIPT_NAME", b"DOCUMENT_URI", b"PATH_INFO", b"SERVER_ADDR", b"SERVER_SOFTWARE", b"REQUEST_METHOD"):
        assert name in params


def test_https_connection_sets_https_on() -> None:
    base = ConnectionParams(b"::1", b"1", b"::1", b"443", b"h", https=True).base()
    assert base[b"HTTPS"] == b"on" and base[b"REQUEST_SCHEME"] == b"https"


def test_httpoxy_proxy_header_is_never_http_proxy() -> None:
    params = params_for([(b"proxy", b"http://evil.test:3128")])
    assert b"HTTP_PROXY" not in params


def test_underscore_headers_are_dropped_so_they_cannot_spoof() -> None:
    params = params_for([(b"x-foo-bar", b"real"), (b"x_foo-bar", b"spoof"), (b"x-foo_bar", b"spoof2")])
    assert params[b"HTTP_X_FOO_BAR"] == b"real"
    allowed = params_for([(b"x_custom", b"v")], underscores_in_headers=True)
    assert allowed[b"HTTP_X_CUSTOM"] == b"v"


def test_repeated_headers_are_joined() -> None:
    params = params_for([
        (b"accept", b"text/html"), (b"accept", b"*/*"), (b"cookie", b"a=1"), (b"cookie", b"b=2"),
        (b"content-type", b"text/plain"), (b"content-length", b"5"),
    ])
    assert params[b"HTTP_ACCEPT"] == b"text/html, */*"
    assert params[b"HTTP_COOKIE"] == b"a=1; b=2"
    assert params[b"CONTENT_TYPE"] == b"text/plain"
    assert params[b"CONTENT_LENGTH"] == b"5"
    assert b"HTTP_CONTENT_TYPE" not in params


def test_content_length_override_and_extra_params() -> None:
    params = params_for([(b"transfer-encoding", b"chunked")], content_length=11, extra={b"APP_ENV": b"test", b"DOCUMENT_ROOT": b"/x"})
    assert params[b"CONTENT_LENGTH"] == b"11"
    assert params[b"APP_ENV"] == b"test"
    assert params[b"DOCUMENT_ROOT"] == b"/x"


def test_split_with_an_optional_group_that_did_not_match() -> None:
    pattern = re.compile(r"^(.+?\.php)(/.*)?$", re.DOTALL)
    assert split_path(b"/env.php", pattern) == (b"/env.php", b"")
    assert split_path(b"/env.php/x", pattern) == (b"/env.php", b"/x")


def test_transfer_encoding_is_not_passed_to_the_worker() -> None:
    # The worker gets the body decoded; "chunked" would invite decoding it twice.
    assert b"HTTP_TRANSFER_ENCODING" not in params_for([(b"transfer-encoding", b"chunked")])


@given(
    method=st.sampled_from([b"GET", b"HEAD", b"POST", b"PROPFIND"]),
    path=st.binary(max_size=300).map(lambda raw: b"/" + raw),
    query=st.binary(max_size=300),
    info=st.binary(max_size=200),
    root=st.sampled_from([b"", b"/srv/www", b"/srv/www/", b"/" + b"r" * 140]),
    version=st.sampled_from([b"1.1", b"1.0"]),
    length=st.one_of(st.none(), st.integers(min_value=0, max_value=10**12)),
)
def test_encode_line_params_is_line_params_encoded(method, path, query, info, root, version, length) -> None:
    # The proxy's fast encoder: the same bytes as the general one, short values or long.
    target = path + (b"?" + query if query else b"")
    args = (method, target, query, path)
    kwargs = dict(script_name=path, path_info=info, document_root=root, http_version=version, content_length=length)
    expected = line_params(*args, **kwargs)
    block = encode_line_params(*args, **kwargs)
    assert block == encode_pairs(expected.items())
    assert decode_pairs(block) == expected
