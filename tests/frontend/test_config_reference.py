"""README.md's "Configuration reference" is the schema of cluster.toml, key for key."""

from __future__ import annotations

import re
from pathlib import Path

from fcgi_cluster._settings import REQUIRED
from fcgi_cluster.frontend import parse_config
from fcgi_cluster.frontend._config_schema import SECTIONS, default_text

README = Path(__file__).resolve().parents[2] / "README.md"
_ROW = re.compile(r"\| `([^`]+)` \| (.+?) \| (.*) \|")


def _reference() -> dict[str, list[tuple[str, str, str]]]:
    """The tables of README's reference section: title -> [(key, default, meaning)]."""
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Configuration reference\n")
    end = text.find("\n## ", start + 1)
    tables: dict[str, list[tuple[str, str, str]]] = {}
    rows: list[tuple[str, str, str]] = []
    for line in text[start : end if end >= 0 else len(text)].splitlines():
        title = re.fullmatch(r"### `(.+)`", line)
        if title:
            rows = tables.setdefault(title.group(1), [])
        row = _ROW.fullmatch(line)
        if row and rows is not None and title is None:
            name, default, meaning = row.groups()
            rows.append((name, default.strip("`"), meaning.replace("\\|", "|")))
    return tables


def test_readme_lists_every_key_of_every_table_with_its_default_and_doc() -> None:
    expected = {
        title: [(key.name, default_text(key), key.doc) for key in keys] for title, keys in SECTIONS
    }
    assert _reference() == expected


def test_every_key_has_a_one_line_doc() -> None:
    for title, keys in SECTIONS:
        for key in keys:
            assert key.doc and "\n" not in key.doc, (title, key.name)


def test_the_documented_defaults_are_what_a_file_without_the_keys_gets() -> None:
    config = parse_config('[upstream.app]\nservers = ["127.0.0.1:9001"]\n[pool.a]\nlisten = "9001"\napp = "m:app"\n')
    built = {
        "[frontend]": config.frontend,
        "[upstream.NAME]": config.upstreams["app"],
        "[upstream.NAME] servers = [{ ... }]": config.upstreams["app"].servers[0],
        "[pool.NAME]": config.pools["a"],
    }
    for title, keys in SECTIONS:
        if title not in built:
            continue
        for key in keys:
            if key.default is not REQUIRED and hasattr(built[title], key.name):
                assert getattr(built[title], key.name) == key.default, (title, key.name)
