"""The settings toolkit: one error wording for every format, converters written once."""

import pickle

import pytest

from fcgi_cluster._settings import (
    SettingsError,
    boolean,
    choice,
    duration,
    integer,
    parse_duration,
    parse_size,
    size,
    typed_boolean,
)
from fcgi_cluster.sessions import SessionConfigError


@pytest.mark.parametrize(
    "filename, line, key, text",
    [
        ("a.conf", 3, "pm", "a.conf:3: pm: bad"),
        ("a.conf", None, "pm", "a.conf: pm: bad"),
        ("a.conf", 0, "pm", "a.conf: pm: bad"),
        ("a.conf", 2, None, "a.conf:2: bad"),
        (None, None, "session.lock", "session.lock: bad"),
    ],
)
def test_error_names_file_line_and_key_leaving_out_the_unknown(filename, line, key, text):
    error = SettingsError(filename, line, key, "bad")
    assert str(error) == text
    again = pickle.loads(pickle.dumps(error))
    assert (again.filename, again.line, again.key, again.reason) == (filename, line, key, "bad")


def test_session_error_is_a_settings_error_and_pickles():
    error = SessionConfigError("session.lock", "bad")
    assert isinstance(error, SettingsError)
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is SessionConfigError and str(again) == "session.lock: bad"


@pytest.mark.parametrize("spelling", ["yes", "On", "TRUE", "1"])
def test_boolean_takes_php_fpm_spellings_of_on(spelling):
    assert boolean(spelling) is True


@pytest.mark.parametrize("spelling", ["no", "Off", "false", "0", ""])
def test_boolean_takes_php_fpm_spellings_of_off(spelling):
    assert boolean(spelling) is False


def test_converters_check_bounds_and_units():
    assert integer(1, 5)(" 3 ") == 3
    with pytest.raises(ValueError, match="from 1 to 5"):
        integer(1, 5)("6")
    assert duration(0.1)("5m") == 300.0
    assert duration(0.1)("250ms") == 0.25
    with pytest.raises(ValueError, match="at least 0.1 s"):
        duration(0.1)("0")
    assert choice(("Lax", "Strict"))("lax") == "Lax"
    with pytest.raises(ValueError, match="must be one of"):
        choice(("Lax",), fold=False)("lax")


def test_typed_converters_take_toml_values_and_refuse_quoted_numbers():
    assert integer(1, typed=True)(4) == 4
    with pytest.raises(ValueError, match=r'^must be an integer >= 1, got "4"$'):
        integer(1, typed=True)("4")
    with pytest.raises(ValueError, match=r"^must be an integer >= 1, got true$"):
        integer(1, typed=True)(True)
    assert typed_boolean(False) is False
    with pytest.raises(ValueError, match=r'^must be true or false, got "yes"$'):
        typed_boolean("yes")
    with pytest.raises(ValueError, match=r'did you mean "Strict"\?$'):
        choice(("Lax", "Strict"), typed=True)("Strikt")
    assert duration(above=0.0, typed=True)(2.5) == 2.5
    with pytest.raises(ValueError, match=r'^must be a duration above 0, got "0s"$'):
        duration(above=0.0, typed=True)("0s")


def test_untyped_converters_also_take_python_values():
    assert integer(0)(7) == 7
    assert boolean(True) is True
    assert duration()(1.5) == 1.5


@pytest.mark.parametrize(
    "spelling, seconds",
    [("2", 2.0), (".5", 0.5), ("5.", 5.0), ("5 m", 300.0), ("1h30m", 5400.0), ("1w", 604800.0), ("1h 30m 5s", 5405.0)],
)
def test_one_duration_grammar_for_ini_and_toml(spelling, seconds):
    assert duration()(spelling) == parse_duration(spelling) == seconds


@pytest.mark.parametrize("spelling", ["1m30", "30s1m", "1m1m", "-5s", "5 sec", ""])
def test_the_duration_grammar_refuses(spelling):
    with pytest.raises(ValueError, match="must be a time like 30s"):
        duration()(spelling)
    with pytest.raises(ValueError, match='must be a duration like "10s"'):
        parse_duration(spelling)


def test_sizes_are_powers_of_1024():
    assert parse_size("32k") == 32768 and size(1)("1M") == 1 << 20
    with pytest.raises(ValueError, match="at least 4096 bytes"):
        size(4096)("1k")
