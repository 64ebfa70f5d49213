"""Tests of the static-file planner and reader, on real files in a temporary tree.

* Content types, validators and conditional requests (304, 412).
* Ranges in every form, 416, ignored Ranges, If-Range.
* HEAD, 405, directories (301, index, 404), files that vanish or shrink.
* Traversal: a table of hostile paths, a property test over composed ones,
  and the defences against a symlink swapped in after the realpath check.
* read_file_range: chunking, ranges, closing.
"""

from __future__ import annotations

import contextlib
import os
import pathlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fcgi_cluster.frontend import _static
from fcgi_cluster.frontend._static import (
    DEFAULT_CHUNK_SIZE,
    FileTruncatedError,
    StaticResponse,
    plan_static,
    read_file_range,
)

MTIME = 1_700_000_000  # Tue, 14 Nov 2023 22:13:20 GMT
LAST_MODIFIED = b"Tue, 14 Nov 2023 22:13:20 GMT"
SECRET = b"TOP SECRET outside the root\n"
HELLO = b"hello world\n"
RANGE_DATA = bytes(range(100))
BIG = os.urandom(2 * DEFAULT_CHUNK_SIZE + 17)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A document root ``www`` with files of every kind, and secrets beside it."""
    base = tmp_path_factory.mktemp("static")
    (base / "secret.txt").write_bytes(SECRET)
    (base / "outside").mkdir()
    (base / "outside" / "secret.txt").write_bytes(SECRET)
    (base / "www-evil").mkdir()  # shares a prefix with www: commonpath must not be fooled
    (base / "www-evil" / "secret.txt").write_bytes(SECRET)

    www = base / "www"
    www.mkdir()
    files = {
        "hello.txt": HELLO,
        "index.html": b"<h1>root</h1>",
        "style.css": b"p{}",
        "app.js": b"1;",
        "data.json": b"{}",
        "image.png": b"\x89PNG",
        "font.woff2": b"wOF2",
        "README.MD": b"# hi",
        "archive.tar.gz": b"\x1f\x8b",
        "noext": b"?",
        "range.bin": RANGE_DATA,
        "big.bin": BIG,
        "empty": b"",
        "docs/index.html": b"<h1>docs</h1>",
        "docs/page.html": b"<p>page</p>",
        "nodex/file.txt": b"x",
        "sub/inner.txt": b"inner",
        "index-dir/index.html/keep": b"",
        ".git/config": SECRET,
        ".env": SECRET,
        "sub/.hidden": SECRET,
        ".well-known/security.txt": b"Contact: mailto:x@example.org\n",
        "ü dir/index.html": b"umlaut",
        "%2e%2e/literal.txt": b"literal",
    }
    for name, data in files.items():
        path = www / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (MTIME, MTIME))
    (www / "link_in").symlink_to("hello.txt")
    (www / "link_dir_in").symlink_to("sub")
    (www / "link_out").symlink_to("../secret.txt")
    (www / "link_out_dir").symlink_to("../outside")
    (www / "link_abs").symlink_to(base / "secret.txt")
    (www / "link_evil").symlink_to("../www-evil")
    (www / "link_hidden").symlink_to(".git/config")
    (www / "link_git_dir").symlink_to(".git")
    (www / ".alias").symlink_to("hello.txt")  # a hidden name for a public file
    (www / "link_loop").symlink_to("link_loop")
    os.mkfifo(www / "fifo")
    return www


@pytest.fixture
def plans():
    """Call plan_static and close every plan when the test ends."""
    made: list[StaticResponse] = []

    def plan(root, rel_path: bytes, method: bytes = b"GET", headers=(), **kwargs) -> StaticResponse:
        result = plan_static(root, rel_path, method, list(headers), **kwargs)
        made.append(result)
        return result

    yield plan
    for result in made:
        result.close()


def header(plan: StaticResponse, name: bytes) -> bytes | None:
    values = [value for key, value in plan.headers if key.lower() == name.lower()]
    assert len(values) <= 1, f"{name!r} sent twice"
    return values[0] if values else None


async def body_of(plan: StaticResponse, chunk_size: int = DEFAULT_CHUNK_SIZE) -> bytes:
    return plan.body + b"".join([chunk async for chunk in read_file_range(plan, chunk_size)])


# ---------------------------------------------------------------- plain GET


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("hello.txt", b"text/plain; charset=utf-8"),
        ("style.css", b"text/css; charset=utf-8"),
        ("app.js", b"text/javascript; charset=utf-8"),
        ("data.json", b"application/json; charset=utf-8"),
        ("image.png", b"image/png"),
        ("font.woff2", b"font/woff2"),
        ("README.MD", b"text/markdown; charset=utf-8"),
        # The last suffix decides: a .gz is sent as gzip data, not as a
        # tar with Content-Encoding, which would make browsers unpack it.
        ("archive.tar.gz", b"application/gzip"),
        ("noext", b"application/octet-stream"),
        ("docs/", b"text/html; charset=utf-8"),
    ],
)
def test_content_type(plans, tree, name, content_type):
    plan = plans(tree, b"/" + name.encode())
    assert plan.status == 200
    assert header(plan, b"Content-Type") == content_type


async def test_get_sends_the_file_with_validators(plans, tree):
    plan = plans(tree, b"/hello.txt")
    assert (plan.status, plan.content_length, plan.offset, plan.length) == (200, 12, 0, 12)
    assert plan.path == os.path.realpath(tree / "hello.txt")
    assert plan.file is not None and plan.body == b""
    # nginx's format: mtime and size in hex.
    assert header(plan, b"ETag") == b'"%x-%x"' % (MTIME, len(HELLO)) == b'"6553f100-c"'
    assert header(plan, b"Last-Modified") == LAST_MODIFIED
    assert header(plan, b"Accept-Ranges") == b"bytes"
    assert header(plan, b"Content-Length") is None  # the caller sends content_length
    assert header(plan, b"Cache-Control") is None
    assert await body_of(plan) == HELLO
    assert plan.file is None  # exhausting the reader closed it


def test_percent_encoded_names(plans, tree):
    plan = plans(tree, b"/%C3%BC%20dir/index.html")
    assert plan.status == 200 and plan.path == os.path.realpath(tree / "ü dir" / "index.html")
    # Decoded once: %252e%252e names the directory literally called "%2e%2e".
    plan = plans(tree, b"/%252e%252e/literal.txt")
    assert plan.status == 200 and plan.path == os.path.realpath(tree / "%2e%2e" / "literal.txt")


def test_cache_control_on_success_and_304_only(plans, tree):
    kwargs = {"cache_control": b"max-age=60"}
    assert header(plans(tree, b"/hello.txt", **kwargs), b"Cache-Control") == b"max-age=60"
    not_modified = plans(tree, b"/hello.txt", headers=[(b"If-None-Match", b'"6553f100-c"')], **kwargs)
    assert not_modified.status == 304
    assert header(not_modified, b"Cache-Control") == b"max-age=60"
    assert header(plans(tree, b"/missing", **kwargs), b"Cache-Control") is None


def test_empty_file(plans, tree):
    plan = plans(tree, b"/empty")
    assert (plan.status, plan.content_length, plan.length) == (200, 0, 0)
    assert plan.file is None and plan.path == os.path.realpath(tree / "empty")


# ------------------------------------------------------- conditional requests

ETAG = b'"6553f100-c"'


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([(b"If-None-Match", ETAG)], 304),
        ([(b"if-none-match", b"W/" + ETAG)], 304),  # weak comparison
        ([(b"If-None-Match", b'"other", ' + ETAG + b' , "x"')], 304),
        ([(b"If-None-Match", ETAG), (b"If-None-Match", b'"a"')], 304),  # repeated lines form one list
        ([(b"If-None-Match", b"*")], 304),
        ([(b"If-None-Match", b'"6553f100-d"')], 200),
        ([(b"If-None-Match", b"6553f100-c")], 200),  # unquoted: malformed, matches nothing
        # If-None-Match wins over If-Modified-Since, even when the date would match.
        ([(b"If-None-Match", b'"nope"'), (b"If-Modified-Since", LAST_MODIFIED)], 200),
        ([(b"If-Modified-Since", LAST_MODIFIED)], 304),
        ([(b"If-Modified-Since", b"Wed, 15 Nov 2023 00:00:00 GMT")], 304),
        ([(b"If-Modified-Since", b"Tue, 14 Nov 2023 22:13:19 GMT")], 200),
        ([(b"If-Modified-Since", b"Tuesday, 14-Nov-23 22:13:20 GMT")], 304),  # RFC 850
        ([(b"If-Modified-Since", b"Tue Nov 14 22:13:20 2023")], 304),  # asctime
        ([(b"If-Modified-Since", b"Tue, 31 Feb 2099 22:13:20 GMT")], 200),  # no such day
        ([(b"If-Modified-Since", b"yesterday")], 200),
        ([(b"If-Match", ETAG)], 200),
        ([(b"If-Match", b"*")], 200),
        ([(b"If-Match", b"W/" + ETAG)], 412),  # strong comparison
        ([(b"If-Match", b'"other"')], 412),
        ([(b"If-Unmodified-Since", b"Tue, 14 Nov 2023 22:13:19 GMT")], 412),
        ([(b"If-Unmodified-Since", LAST_MODIFIED)], 200),
    ],
)
def test_conditional_requests(plans, tree, headers, status):
    plan = plans(tree, b"/hello.txt", headers=headers)
    assert plan.status == status
    if status == 304:
        assert plan.content_length is None and plan.path is None and plan.file is None
        assert plan.body == b""
        assert header(plan, b"ETag") == ETAG
        assert header(plan, b"Last-Modified") == LAST_MODIFIED
    if status == 412:
        assert plan.path is None and plan.file is None and plan.body.startswith(b"412")


# --------------------------------------------------------------------- ranges


@pytest.mark.parametrize(
    ("range_value", "offset", "length"),
    [
        (b"bytes=0-9", 0, 10),
        (b"bytes=0-0", 0, 1),
        (b"bytes=90-", 90, 10),
        (b"bytes=-5", 95, 5),
        (b"bytes=-500", 0, 100),  # a suffix longer than the file is the whole file
        (b"bytes=95-200", 95, 5),  # a last-pos past the end is clipped
        (b"bytes=99-99", 99, 1),
        (b"BYTES=1-1", 1, 1),  # the unit is case-insensitive
        (b" bytes=3-4 ", 3, 2),
        (b"bytes= 3-4 ,", 3, 2),  # empty list elements count for nothing
    ],
)
async def test_satisfiable_range(plans, tree, range_value, offset, length):
    plan = plans(tree, b"/range.bin", headers=[(b"Range", range_value)])
    assert (plan.status, plan.offset, plan.length, plan.content_length) == (206, offset, length, length)
    end = offset + length - 1
    assert header(plan, b"Content-Range") == b"bytes %d-%d/100" % (offset, end)
    assert await body_of(plan) == RANGE_DATA[offset : offset + length]


@pytest.mark.parametrize("range_value", [b"bytes=100-", b"bytes=100-200", b"bytes=1000-1", b"bytes=-0"])
def test_unsatisfiable_range(plans, tree, range_value):
    plan = plans(tree, b"/range.bin", headers=[(b"Range", range_value)])
    if range_value == b"bytes=1000-1":  # last < first: malformed, so ignored
        assert plan.status == 200
        return
    assert plan.status == 416
    assert header(plan, b"Content-Range") == b"bytes */100"
    assert plan.path is None and plan.file is None
    assert plan.body == b"416 Range Not Satisfiable\n" and plan.content_length == len(plan.body)


def test_any_range_of_an_empty_file_is_unsatisfiable(plans, tree):
    for value in (b"bytes=0-", b"bytes=-1", b"bytes=0-0"):
        plan = plans(tree, b"/empty", headers=[(b"Range", value)])
        assert plan.status == 416 and header(plan, b"Content-Range") == b"bytes */0"


@pytest.mark.parametrize(
    "headers",
    [
        [(b"Range", b"bytes=a-b")],
        [(b"Range", b"bytes=5-4")],
        [(b"Range", b"bytes=-")],
        [(b"Range", b"bytes=--1")],
        [(b"Range", b"bytes=1-2-3")],
        [(b"Range", b"bytes 0-1")],
        [(b"Range", b"items=0-1")],
        [(b"Range", b"bytes=0-1,5-6")],  # several ranges: no multipart, the whole file
        [(b"Range", b"bytes=0-1"), (b"Range", b"bytes=5-6")],
        [(b"Range", b"bytes=" + b"9" * 5000 + b"-")],  # beyond int()'s digit limit
        [(b"Range", b"bytes=\xff-1")],
    ],
)
def test_malformed_range_is_ignored(plans, tree, headers):
    plan = plans(tree, b"/range.bin", headers=headers)
    assert (plan.status, plan.offset, plan.length) == (200, 0, 100)
    assert header(plan, b"Content-Range") is None


@pytest.mark.parametrize(
    ("if_range", "status"),
    [
        (b'"6553f100-64"', 206),
        (b'"6553f100-65"', 200),
        (b'W/"6553f100-64"', 200),  # If-Range compares strongly
        (LAST_MODIFIED, 206),
        (b"Tue, 14 Nov 2023 22:13:21 GMT", 200),  # only an exact date matches
        (b"not a date", 200),
    ],
)
def test_if_range(plans, tree, if_range, status):
    plan = plans(tree, b"/range.bin", headers=[(b"Range", b"bytes=10-19"), (b"If-Range", if_range)])
    assert plan.status == status
    assert plan.length == (10 if status == 206 else 100)


def test_if_range_without_range_or_repeated_is_ignored(plans, tree):
    plan = plans(tree, b"/range.bin", headers=[(b"If-Range", b'"6553f100-64"')])
    assert (plan.status, plan.length) == (200, 100)
    # If-Range holds one validator; two lines make it invalid, so no range.
    tag = (b"If-Range", b'"6553f100-64"')
    plan = plans(tree, b"/range.bin", headers=[(b"Range", b"bytes=1-2"), tag, tag])
    assert (plan.status, plan.length) == (200, 100)


# ------------------------------------------------------------- HEAD and 405


def test_head_has_the_headers_of_get_and_no_body(plans, tree):
    get = plans(tree, b"/hello.txt")
    head = plans(tree, b"/hello.txt", b"HEAD")
    assert (head.status, head.headers, head.content_length) == (200, get.headers, 12)
    assert head.path == get.path  # the file a GET would send
    assert head.file is None and head.body == b""  # but nothing to send

    ranged = plans(tree, b"/range.bin", b"HEAD", [(b"Range", b"bytes=1-2")])
    assert (ranged.status, ranged.content_length, ranged.file) == (206, 2, None)

    missing = plans(tree, b"/missing", b"HEAD")
    assert missing.status == 404 and missing.body == b""
    assert missing.content_length == len(b"404 Not Found\n")


async def test_head_reader_yields_nothing(plans, tree):
    assert await body_of(plans(tree, b"/hello.txt", b"HEAD")) == b""


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE", b"OPTIONS", b"get", b"BREW"])
def test_other_methods_are_405(plans, tree, method):
    for path in (b"/hello.txt", b"/missing"):
        plan = plans(tree, path, method)
        assert plan.status == 405
        assert header(plan, b"Allow") == b"GET, HEAD"
        assert plan.body == b"405 Method Not Allowed\n" and plan.file is None


# ---------------------------------------------------------------- directories


def test_directory_without_slash_redirects(plans, tree):
    plan = plans(tree, b"/docs")
    assert plan.status == 301 and plan.path is None
    # Relative to /static/docs, "./docs/" is /static/docs/, whatever the prefix.
    assert header(plan, b"Location") == b"./docs/"
    plan = plans(tree, b"/docs", prefix=b"/static")
    assert header(plan, b"Location") == b"/static/docs/"
    assert header(plans(tree, b"/%C3%BC%20dir"), b"Location") == b"./%C3%BC%20dir/"
    # Raw non-ASCII bytes are escaped, never echoed into a header as they came.
    assert header(plans(tree, b"/\xc3\xbc%20dir"), b"Location") == b"./%C3%BC%20dir/"
    assert header(plans(tree, b"/link_dir_in"), b"Location") == b"./link_dir_in/"
    assert plans(tree, b"/docs", b"HEAD").body == b""


@pytest.mark.parametrize("rel_path", [b"/docs/", b"//docs//", b"/docs/.", b"/docs/%2e", b"/docs%2F"])
async def test_directory_with_slash_serves_its_index(plans, tree, rel_path):
    plan = plans(tree, rel_path)
    assert plan.status == 200 and plan.path == os.path.realpath(tree / "docs" / "index.html")
    assert await body_of(plan) == b"<h1>docs</h1>"


@pytest.mark.parametrize("rel_path", [b"", b"/", b"/."])
def test_root_serves_its_index(plans, tree, rel_path):
    plan = plans(tree, rel_path)
    assert plan.status == 200 and plan.path == os.path.realpath(tree / "index.html")


def test_no_index_no_listing(plans, tree):
    assert plans(tree, b"/nodex/").status == 404
    assert plans(tree, b"/docs/", index=None).status == 404
    assert plans(tree, b"/index-dir/", index="index.html").status == 404  # index is a directory
    assert plans(tree, b"/docs/", index="page.html").status == 200
    assert plans(tree, b"/hello.txt/").status == 404  # a file asked for as a directory


@pytest.mark.parametrize("index", ["", "../secret.txt", "a/b", ".", "..", "x\0"])
def test_index_must_be_a_plain_name(tree, index):
    with pytest.raises(ValueError, match="index"):
        plan_static(tree, b"/", b"GET", [], index=index)


# ------------------------------------------------------------------ security

# (path, status). Every status here is an error: none of these may send a file.
EVIL_PATHS = [
    (b"/../secret.txt", 400),
    (b"/%2e%2e/secret.txt", 400),
    (b"/%2E%2E%2Fsecret.txt", 400),
    (b"/.%2e/secret.txt", 400),
    (b"/..%2fsecret.txt", 400),
    (b"/docs/../../secret.txt", 400),
    (b"/docs/%2e%2e/%2e%2e/secret.txt", 400),
    (b"/..%5csecret.txt", 400),
    (b"/%2e%2e%5c%2e%2e%5csecret.txt", 400),
    (b"/..\\secret.txt", 400),
    (b"/%5c..%5csecret.txt", 400),
    (b"/hello.txt%00.png", 400),
    (b"/%00", 400),
    (b"/..%00/secret.txt", 400),
    (b"/hello.txt\x00", 400),
    (b"/hello.txt%0a", 400),
    (b"/a b", 400),
    (b"/%c0%ae%c0%ae/secret.txt", 400),  # overlong "."
    (b"/%c0%af..%c0%afsecret.txt", 400),  # overlong "/"
    (b"/%e0%80%ae%e0%80%ae/secret.txt", 400),  # 3-byte overlong "."
    (b"/\xc0\xae\xc0\xae/secret.txt", 400),
    (b"/%252e%252e/secret.txt", 404),  # double-encoded: a literal name, not a climb
    (b"/%%32%65%%32%65/secret.txt", 404),
    (b"//etc/passwd", 404),  # joined below the root, never absolute
    (b"/%2fetc%2fpasswd", 404),
    (b"///" + os.fsencode(os.path.sep.join(["", "etc", "passwd"])), 404),
    (b"/docs/..;/secret.txt", 404),
    (b"/link_out", 404),
    (b"/link_out_dir/secret.txt", 404),
    (b"/link_abs", 404),
    (b"/link_evil/secret.txt", 404),  # "www-evil" starts with "www"
    (b"/link_hidden", 404),  # inside the root, but a hidden file
    (b"/link_git_dir/config", 404),
    (b"/link_loop", 404),
    (b"/.git/config", 404),
    (b"/.env", 404),
    (b"/.alias", 404),
    (b"/%2eenv", 404),
    (b"/sub/.hidden", 404),
    (b"/link_dir_in/.hidden", 404),
    (b"/fifo", 404),
    (b"/" + b"a" * 5000, 404),  # ENAMETOOLONG
    (b"/" + b"a/" * 3000 + b"x", 404),
]


@pytest.fixture(params=["proc", "no-proc"])
def proc(request, monkeypatch):
    """Run once with the /proc/self/fd check and once as on a host without /proc,
    so that each layer of the defence is shown to hold on its own."""
    if request.param == "no-proc":
        monkeypatch.setattr(_static, "_opened_path", lambda fd: None)


@pytest.mark.parametrize(("rel_path", "status"), EVIL_PATHS)
async def test_hostile_paths(plans, tree, proc, rel_path, status):
    for method in (b"GET", b"HEAD"):
        plan = plans(tree, rel_path, method)
        assert plan.status == status
        assert plan.path is None and plan.file is None
        assert SECRET not in await body_of(plan)


@pytest.mark.parametrize(
    ("path", "inside"),
    [
        ("/srv/www", True),
        ("/srv/www/a/b", True),
        ("/srv/www-evil/a", False),
        ("/srv/wwwx", False),
        ("/srv", False),
        ("/", False),
    ],
)
def test_inside_compares_whole_segments(path, inside):
    assert _static._is_inside("/srv/www", path) is inside
    assert _static._is_inside("/", path) is True


def test_symlinks_inside_the_root_are_followed(plans, tree):
    plan = plans(tree, b"/link_in")
    assert plan.status == 200 and plan.path == os.path.realpath(tree / "hello.txt")
    # The type follows the URL's name, as with nginx: "link_in" has no suffix.
    assert header(plan, b"Content-Type") == b"application/octet-stream"
    plan = plans(tree, b"/link_dir_in/inner.txt")
    assert plan.status == 200 and plan.path == os.path.realpath(tree / "sub" / "inner.txt")


def test_well_known_is_served(plans, tree):
    plan = plans(tree, b"/.well-known/security.txt")
    assert plan.status == 200 and plan.path.endswith("security.txt")


def test_root_given_through_a_symlink(plans, tree, tmp_path):
    (tmp_path / "root-link").symlink_to(tree)
    assert plans(tmp_path / "root-link", b"/hello.txt").status == 200
    assert plans(os.fsencode(tmp_path / "root-link"), b"/hello.txt").status == 200
    assert plans(tmp_path / "root-link", b"/link_out").status == 404


PIECES = [
    "..", ".", "", "%2e", "%2e%2e", "%2E", "%2f", "%2F", "%5c", "\\", "%00", "%252e", "%c0%ae",
    "%c0%af", "etc", "passwd", "secret.txt", "link_out", "link_out_dir", "link_abs", "link_evil",
    "link_dir_in", "docs", "hello.txt", ".git", "%2egit", "outside", "www-evil", "www", ";", "~",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.sampled_from(PIECES), min_size=1, max_size=3), max_size=6))
def test_no_composed_path_escapes(tree, segments):
    rel_path = "".join("/" + "".join(segment) for segment in segments).encode("latin-1")
    root = os.path.realpath(tree)
    with plan_static(tree, rel_path, b"GET", []) as plan:
        assert plan.status in (200, 301, 400, 404)
        if plan.path is not None:
            assert os.path.commonpath([root, plan.path]) == root
            assert not any(part.startswith(".") for part in os.path.relpath(plan.path, root).split("/"))
            with open(plan.path, "rb") as served:
                assert served.read() != SECRET


def test_symlink_swapped_in_after_the_check_is_not_followed(tree, monkeypatch):
    """The kernel's path for the opened file is checked, not only realpath's answer."""
    root = os.path.realpath(tree)
    # Pretend realpath ran before the symlinks appeared: it returns the path
    # unresolved, as it would have for the real directories they replaced.
    monkeypatch.setattr(_static.os.path, "realpath", os.path.normpath)
    # A directory on the way became a symlink out of the root.
    assert _static._open_inside(root, os.path.join(root, "link_out_dir", "secret.txt")) == 404
    # The file itself became a symlink, even one pointing inside: O_NOFOLLOW.
    assert _static._open_inside(root, os.path.join(root, "link_in")) == 404
    # A directory on the way became a symlink to a hidden directory inside.
    assert _static._open_inside(root, os.path.join(root, "link_git_dir", "config")) == 404
    fd, info, real = _static._open_inside(root, os.path.join(root, "hello.txt"))
    os.close(fd)
    assert info.st_size == len(HELLO)


def test_permission_denied_is_403(plans, tree, monkeypatch):
    # Tests may run as root, which no file mode stops: make open(2) say it.
    def refuse(path, flags, *args, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(_static.os, "open", refuse)
    plan = plans(tree, b"/hello.txt")
    assert plan.status == 403 and plan.body == b"403 Forbidden\n" and plan.file is None


# ------------------------------------------------------ files that change


async def test_file_deleted_before_planning_is_404(plans, tmp_path):
    (tmp_path / "gone.txt").write_bytes(b"soon gone")
    (tmp_path / "gone.txt").unlink()
    assert plans(tmp_path, b"/gone.txt").status == 404


async def test_file_deleted_after_planning_is_still_sent(plans, tmp_path):
    (tmp_path / "gone.txt").write_bytes(b"soon gone")
    plan = plans(tmp_path, b"/gone.txt")
    (tmp_path / "gone.txt").unlink()
    assert await body_of(plan) == b"soon gone"


async def test_file_replaced_after_planning_sends_the_planned_file(plans, tmp_path):
    (tmp_path / "a.txt").write_bytes(b"old contents")
    plan = plans(tmp_path, b"/a.txt")
    (tmp_path / "b.txt").write_bytes(b"new contents")
    os.replace(tmp_path / "b.txt", tmp_path / "a.txt")
    # The body matches the ETag and Content-Length that were planned.
    assert await body_of(plan) == b"old contents"


async def test_file_truncated_after_planning_raises(plans, tmp_path):
    (tmp_path / "shrink.bin").write_bytes(b"x" * 1000)
    plan = plans(tmp_path, b"/shrink.bin")
    os.truncate(tmp_path / "shrink.bin", 300)
    received = []
    with pytest.raises(FileTruncatedError, match="700 bytes before"):
        async for chunk in read_file_range(plan, 200):
            received.append(chunk)
    assert b"".join(received) == b"x" * 300
    assert plan.file is None


# -------------------------------------------------------------- the reader


async def test_read_whole_file_in_chunks(plans, tree):
    plan = plans(tree, b"/big.bin")
    chunks = [chunk async for chunk in read_file_range(plan)]
    assert [len(chunk) for chunk in chunks] == [DEFAULT_CHUNK_SIZE, DEFAULT_CHUNK_SIZE, 17]
    assert b"".join(chunks) == BIG
    assert plan.file is None


async def test_read_a_range_in_chunks(plans, tree):
    plan = plans(tree, b"/big.bin", headers=[(b"Range", b"bytes=1000-300999")])
    assert (plan.status, plan.offset, plan.length) == (206, 1000, 300_000)
    chunks = [chunk async for chunk in read_file_range(plan, 100_000)]
    assert [len(chunk) for chunk in chunks] == [100_000] * 3
    assert b"".join(chunks) == BIG[1000:301_000]


async def test_stopping_early_closes_the_file(plans, tree):
    plan = plans(tree, b"/big.bin")
    file = plan.file
    async with contextlib.aclosing(read_file_range(plan)) as chunks:
        async for _chunk in chunks:
            break
    assert plan.file is None and file.closed


async def test_reader_rejects_a_bad_chunk_size(plans, tree):
    plan = plans(tree, b"/hello.txt")
    with pytest.raises(ValueError, match="chunk_size"):
        async for _chunk in read_file_range(plan, 0):
            pass


def test_close_is_idempotent_and_a_context_manager(tree):
    with plan_static(tree, b"/hello.txt", b"GET", []) as plan:
        file = plan.file
        assert file is not None and not file.closed
    assert file.closed and plan.file is None
    plan.close()


def test_public_names():
    assert set(_static.__all__) == {
        "DEFAULT_CHUNK_SIZE",
        "DEFAULT_INDEX",
        "FileTruncatedError",
        "StaticResponse",
        "plan_static",
        "read_file_range",
        "send_static",
    }
    for name in _static.__all__:
        assert getattr(_static, name).__doc__ or name.startswith("DEFAULT_")
