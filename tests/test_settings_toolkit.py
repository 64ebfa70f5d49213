"""The settings toolkit: one error wording for every format, converters written once."""

import pickle

import pytest

from fcgi_cluster._settings import SettingsError, boolean, choice, duration, integer
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
