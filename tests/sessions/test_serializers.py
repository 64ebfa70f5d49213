"""Session data formats: PHP's serialize() and session formats, and json; checked against real PHP."""

from __future__ import annotations

import base64
import json
import math
import shutil
import subprocess
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fcgi_cluster.sessions import SerializationError, get_serializer, php_serialize, php_unserialize

# --- known encodings (written by PHP 8.2's serialize()) ----------------------------


@pytest.mark.parametrize(
    "value, encoded",
    [
        (None, b"N;"),
        (True, b"b:1;"),
        (False, b"b:0;"),
        (0, b"i:0;"),
        (-42, b"i:-42;"),
        (2**63 - 1, b"i:9223372036854775807;"),
        (0.5, b"d:0.5;"),
        (math.inf, b"d:INF;"),
        (-math.inf, b"d:-INF;"),
        ("", b's:0:"";'),
        ("héllo", b's:6:"h\xc3\xa9llo";'),
        ('a"b;c}', b's:6:"a"b;c}";'),
        (b"\xff\x00", b's:2:"\xff\x00";'),
        ([], b"a:0:{}"),
        (["x", 1], b'a:2:{i:0;s:1:"x";i:1;i:1;}'),
        ({"k": None, 7: [True]}, b'a:2:{s:1:"k";N;i:7;a:1:{i:0;b:1;}}'),
    ],
)
def test_php_serialize_known_values(value, encoded):
    assert php_serialize(value) == encoded
    decoded = php_unserialize(encoded)
    assert decoded == value or (value == [] and decoded == [])


def test_php_float_forms_from_php_are_read():
    assert php_unserialize(b"d:1;") == 1.0
    assert php_unserialize(b"d:1.0E+25;") == 1e25
    assert php_unserialize(b"d:-0.1;") == -0.1
    assert math.isnan(php_unserialize(b"d:NAN;"))


def test_array_with_gaps_or_string_keys_is_a_dict_and_in_order_ints_a_list():
    assert php_unserialize(b"a:2:{i:0;i:5;i:2;i:6;}") == {0: 5, 2: 6}
    assert php_unserialize(b"a:2:{i:1;i:5;i:0;i:6;}") == {1: 5, 0: 6}
    assert php_unserialize(b"a:2:{i:0;i:5;i:1;i:6;}") == [5, 6]


def test_non_utf8_string_stays_bytes():
    assert php_unserialize(b's:2:"\xc3\x28";') == b"\xc3\x28"


@pytest.mark.parametrize(
    "bad, reason",
    [
        (b"", "ends"),
        (b"i:12", "unterminated"),
        (b"i:1x;", "bad int"),
        (b"i:99999999999999999999;", "int"),
        (b"b:2;", "bool"),
        (b"d:1e5x;", "float"),
        (b'd:"1";', "float"),
        (b's:5:"abc";', "declared"),
        (b's:3:"abcd";', "expected"),
        (b's:-1:"";', "string length"),
        (b"a:1:{i:0;i:1;", "expected '}'"),
        (b"a:3:{i:0;i:1;}", "data too short"),
        (b"a:1:{i:0;i:1;};", "trailing"),
        (b"a:1:{d:0.5;i:1;}", "keys"),
        (b"a:1:{N;i:1;}", "keys"),
        (b'O:8:"stdClass":1:{s:1:"a";i:1;}', "objects"),
        (b'C:3:"Foo":0:{}', "objects"),
        (b'E:7:"Foo:Bar";', "enums"),
        (b"a:2:{i:0;i:1;i:1;r:2;}", "references"),
        (b"a:1:{i:0;R:1;}", "references"),
        (b"x:1;", "unknown type"),
        (b"N;N;", "trailing"),
    ],
)
def test_bad_php_data_is_refused_with_a_reason(bad, reason):
    with pytest.raises(SerializationError, match=reason):
        php_unserialize(bad)


def test_huge_declared_lengths_fail_fast_without_allocating():
    started = time.monotonic()
    for bad in (b's:9999999999:"x";', b"a:9999999999:{}", b"a:1000000:{i:0;N;}", b's:4000000000:"' + b"x" * 100):
        with pytest.raises(SerializationError):
            php_unserialize(bad)
    # Generous bound: a decoder that allocated or looped per declared element would
    # take seconds here, not milliseconds.
    assert time.monotonic() - started < 2


def test_nesting_is_capped_both_ways():
    deep = b"a:1:{i:0;" * 100 + b"N;" + b"}" * 100
    with pytest.raises(SerializationError, match="nested"):
        php_unserialize(deep)
    value: list = []
    for _ in range(100):
        value = [value]
    with pytest.raises(SerializationError, match="nested"):
        php_serialize(value)


@pytest.mark.parametrize("value", [object(), {1.5: 1}, {(1,): 2}, 2**64, {True: 1}, "\ud800"])
def test_values_php_cannot_hold_are_refused(value):
    with pytest.raises(SerializationError):
        php_serialize(value)


# --- session formats -----------------------------------------------------------------


def test_php_session_format():
    php = get_serializer("php")
    raw = b'user|s:5:"alice";n|i:10;cart|a:1:{i:0;s:3:"pen";}'
    assert php.loads(raw) == {"user": "alice", "n": 10, "cart": ["pen"]}
    assert php.dumps({"user": "alice", "n": 10, "cart": ["pen"]}) == raw
    assert php.loads(b"") == {}
    assert php.dumps({}) == b""


@pytest.mark.parametrize("bad", [b"user", b'user|s:5:"ali";', b"n|i:1;x", b"\xff|N;"])
def test_bad_php_session_data_is_refused(bad):
    with pytest.raises(SerializationError):
        get_serializer("php").loads(bad)


@pytest.mark.parametrize("key", ["a|b", "a!b", 5])
def test_php_session_keys_php_would_refuse(key):
    with pytest.raises(SerializationError):
        get_serializer("php").dumps({key: 1})


def test_php_serialize_session_format():
    handler = get_serializer("php_serialize")
    assert handler.dumps({"n": 1}) == b'a:1:{s:1:"n";i:1;}'
    assert handler.loads(b'a:1:{s:1:"n";i:1;}') == {"n": 1}
    with pytest.raises(SerializationError, match="array"):
        handler.loads(b"i:1;")


def test_json_session_format():
    handler = get_serializer("json")
    assert handler.loads(handler.dumps({"n": 1, "u": "é"})) == {"n": 1, "u": "é"}
    for bad in (b"[1]", b"{", b"\xff"):
        with pytest.raises(SerializationError):
            handler.loads(bad)
    for value in ({"x": object()}, {"x": math.nan}):
        with pytest.raises(SerializationError):
            handler.dumps(value)


# --- round trips (hypothesis) ---------------------------------------------------------

_ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_leaves = st.none() | st.booleans() | _ints | st.floats(allow_nan=False) | st.text() | st.binary()
_php_values = st.recursive(
    _leaves,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(_ints | st.text(max_size=8), children, max_size=5),
    max_leaves=25,
)


def php_normal(value):
    """What a value reads back as: arrays 0..n-1 become lists, UTF-8 bytes str."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    if isinstance(value, (list, tuple)):
        return [php_normal(v) for v in value]
    if isinstance(value, dict):
        if list(value) == list(range(len(value))):
            return [php_normal(v) for v in value.values()]
        return {k: php_normal(v) for k, v in value.items()}
    return value


@given(_php_values)
@settings(max_examples=200, deadline=None)
def test_php_serialize_round_trip(value):
    assert php_unserialize(php_serialize(value)) == php_normal(value)


_session_keys = st.text(min_size=1, max_size=10).filter(lambda k: "|" not in k and "!" not in k)


@given(st.dictionaries(_session_keys, _php_values, max_size=6))
@settings(max_examples=100, deadline=None)
def test_php_session_round_trip(data):
    handler = get_serializer("php")
    assert handler.loads(handler.dumps(data)) == {k: php_normal(v) for k, v in data.items()}


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=25,
)


@given(st.dictionaries(st.text(max_size=10), _json_values, max_size=6))
@settings(max_examples=100, deadline=None)
def test_json_session_round_trip(data):
    handler = get_serializer("json")
    assert handler.loads(handler.dumps(data)) == data


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_garbage_never_raises_anything_but_serialization_error(raw):
    for name in ("php", "php_serialize", "json"):
        try:
            get_serializer(name).loads(raw)
        except SerializationError:
            pass


# --- against real PHP -------------------------------------------------------------------

_PHP_CHECK = r"""
$out = [];
foreach (file('php://stdin', FILE_IGNORE_NEW_LINES) as $line) {
    $value = unserialize(base64_decode($line), ['allowed_classes' => false]);
    $out[] = base64_encode(serialize($value));
}
session_start();
$_SESSION['user'] = 'alice';
$_SESSION['n'] = 10;
$_SESSION['cart'] = ['pen', 'ink' => 2.5];
$out[] = base64_encode(session_encode());
$_SESSION = [];
session_decode(base64_decode(getenv('OUR_SESSION')));
$out[] = base64_encode(json_encode($_SESSION));
echo implode("\n", $out);
"""


@pytest.mark.skipif(shutil.which("php") is None, reason="php CLI not installed (make deps)")
def test_real_php_reads_what_we_write_and_we_read_what_it_writes(tmp_path):
    samples = [None, True, -7, 2**62, 0.25, "héllo", b"\x00\xff", [], ["a", [1, 2]], {"k": {"x": None}, 3: "z"}]
    ours = [php_serialize(v) for v in samples]
    session = get_serializer("php").dumps({"user": "bob", "n": 3, "list": [1, "two"]})
    result = subprocess.run(
        ["php", "-d", f"session.save_path={tmp_path}", "-d", "session.serialize_handler=php", "-r", _PHP_CHECK],
        input="\n".join(base64.b64encode(o).decode() for o in ours),
        capture_output=True, text=True, timeout=30,
        env={"OUR_SESSION": base64.b64encode(session).decode(), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    # PHP re-serializes each of our values byte for byte.
    assert [base64.b64decode(line) for line in lines[: len(ours)]] == ours
    php_session = base64.b64decode(lines[len(ours)])
    assert get_serializer("php").loads(php_session) == {"user": "alice", "n": 10, "cart": {0: "pen", "ink": 2.5}}
    assert json.loads(base64.b64decode(lines[len(ours) + 1])) == {"user": "bob", "n": 3, "list": [1, "two"]}
