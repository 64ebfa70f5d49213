"""X-Accel-Redirect / X-Sendfile targets: which are served, which are refused before any file is looked at."""

from __future__ import annotations

import pytest

from fcgi_cluster.frontend import parse_config
from fcgi_cluster.frontend._config_model import ConfigError
from fcgi_cluster.frontend.edge._accel import Accel, accel_uri, sendfile_path


def test_safe_uris_are_normalised() -> None:
    assert accel_uri(b"/protected/a%20b.pdf") == b"/protected/a b.pdf"
    assert accel_uri(b"/protected//x/./y?download=1") == b"/protected/x/y"


@pytest.mark.parametrize("value", [
    b"/protected/../secret", b"/protected/%2e%2e/secret", b"/protected/%2E%2e/secret", b"/p/..%2fsecret",
    b"/p/%2fetc", b"/p/%5c..", b"/p/a\\b", b"/p/a%00b", b"/p/a\0b", b"protected/x", b"", b"http://x/y",
])
def test_unsafe_uris_are_refused(value) -> None:
    assert accel_uri(value) is None


def test_sendfile_paths_below_the_root_only() -> None:
    assert sendfile_path(b"/srv/dl/a/b.iso", "/srv/dl") == b"/a/b.iso"
    for value in (b"/srv/dl", b"/srv/dlx/a", b"/srv/dl/../etc/passwd", b"/etc/passwd", b"/srv/dl/a\0b", b"srv/dl/a"):
        assert sendfile_path(value, "/srv/dl") is None


class Answer:
    def __init__(self, *headers: tuple[bytes, bytes]) -> None:
        self.raw_headers = list(headers)


def test_target_finds_the_header_and_x_sendfile_only_with_a_root() -> None:
    assert Accel("").target(Answer((b"X-Accel-Redirect", b"/p/x"))) == (b"x-accel-redirect", b"/p/x")
    assert Accel("").target(Answer((b"X-Sendfile", b"/srv/x"))) is None
    assert Accel("/srv").target(Answer((b"Content-Type", b"a/b"), (b"x-sendfile", b"/srv/x"))) == (b"x-sendfile", b"/srv/x")
    assert Accel("/srv").target(Answer((b"Content-Type", b"text/html"))) is None


def test_the_handling_is_on_only_when_asked(tmp_path) -> None:
    upstream = '[upstream.app]\nservers = ["127.0.0.1:9001"]\n'
    assert Accel.for_site(parse_config(upstream)) is None
    internal = f'[[route]]\nprefix = "/p/"\nstatic = "{tmp_path}"\ninternal = true\n[[route]]\nprefix = "/"\nupstream = "app"\n'
    assert Accel.for_site(parse_config(upstream + internal)) is not None
    config = parse_config(f'[frontend]\nsendfile_root = "{tmp_path}"\n' + upstream)
    assert Accel.for_site(config).sendfile_root == str(tmp_path)


def test_internal_is_for_static_routes(tmp_path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config('[upstream.app]\nservers = ["127.0.0.1:9001"]\n[[route]]\nprefix = "/"\nupstream = "app"\ninternal = true\n')
    assert "route[0].internal" in str(info.value) and ":6:" in str(info.value)
