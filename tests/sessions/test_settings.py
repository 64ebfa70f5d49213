"""session.* settings: PHP's names, checked values, errors naming the key."""

from __future__ import annotations

import tempfile

import pytest

from fcgi_cluster.sessions import SessionConfigError, SessionSettings, parse_session_settings


def test_defaults():
    settings = parse_session_settings({})
    assert settings.save_handler == "files"
    assert settings.save_path == tempfile.gettempdir()
    assert settings.name == "PHPSESSID"
    assert settings.gc_maxlifetime == 1440
    assert settings.serialize_handler == "json"
    assert settings.lock and settings.use_strict_mode and settings.lazy_write
    assert settings.sid_length * settings.sid_bits_per_character >= 128
    assert settings.lock_retry_interval <= 0.01
    assert settings.on_store_error == "fail"


def test_php_names_with_or_without_prefix():
    settings = parse_session_settings({
        "session.save_handler": "redis",
        "session.save_path": "tcp://127.0.0.1:6379?auth=secret",
        "gc_maxlifetime": "600",
        "session.cookie_secure": "On",
        "session.cookie_samesite": "strict",
        "session.lock_wait": "250ms",
        "session.lock_retry_interval": "0.002",
        "session.serialize_handler": "php",
        "session.sid_bits_per_character": "6",
        "session.sid_length": "22",
        "session.on_store_error": "proceed",
        "session.store_timeout": "1.5",
    })
    assert settings == SessionSettings(
        save_handler="redis", save_path="tcp://127.0.0.1:6379?auth=secret", gc_maxlifetime=600,
        cookie_secure=True, cookie_samesite="Strict", lock_wait=0.25, lock_retry_interval=0.002,
        serialize_handler="php", sid_bits_per_character=6, sid_length=22, on_store_error="proceed",
        store_timeout=1.5,
    )


@pytest.mark.parametrize(
    "key, value, reason",
    [
        ("session.save_hander", "redis", "unknown session setting"),
        ("session.save_handler", "mysql", "must be one of"),
        ("session.gc_maxlifetime", "0", "1 or more"),
        ("session.gc_maxlifetime", "1e9", "must be an integer"),
        ("session.lock", "maybe", "on/off"),
        ("session.lock_wait", "soon", "seconds"),
        ("session.sid_length", "300", "from 22 to 256"),
        ("session.sid_bits_per_character", "7", "from 4 to 6"),
        ("session.sid_length", "22", "at least 128"),
        ("session.name", "my cookie", "cookie name"),
        ("session.name", "123", "cookie name"),
        ("session.cookie_path", "/a;b", "semicolons"),
        ("session.cookie_samesite", "None", "cookie_secure"),
        ("session.serialize_handler", "igbinary", "must be one of"),
        ("session.on_store_error", "ignore", "must be one of"),
    ],
)
def test_bad_settings_name_their_key(key, value, reason):
    with pytest.raises(SessionConfigError, match=reason) as caught:
        parse_session_settings({key: value})
    assert caught.value.key == key
    assert str(caught.value).startswith(f"{key}: ")


def test_network_store_needs_a_save_path():
    with pytest.raises(SessionConfigError) as caught:
        parse_session_settings({"session.save_handler": "redis"})
    assert caught.value.key == "session.save_path"
