"""The compression and limit keys of cluster.toml: errors name the file, line and key."""

from __future__ import annotations

import pytest

from fcgi_cluster.frontend import ConfigError, parse_config


def test_compression_keys_are_checked_with_file_line_and_key() -> None:
    base = '[upstream.app]\nservers = ["127.0.0.1:9001"]\n[[route]]\nprefix = "/"\nupstream = "app"\n'
    for extra, message in (
        ("gzip_comp_level = 10\n", "route[0].gzip_comp_level: must be an integer"),
        ('gzip_types = ["text"]\n', "route[0].gzip_types: bad media type"),
        ('gzip_proxied = "expired"\n', "route[0].gzip_proxied:"),
    ):
        with pytest.raises(ConfigError) as info:
            parse_config(base + extra)
        assert message in str(info.value) and ":6:" in str(info.value)


def test_limit_zones_and_route_tables_are_checked_with_file_line_and_key() -> None:
    base = '[upstream.app]\nservers = ["127.0.0.1:9001"]\n[limit_req_zone.one]\nkey = "$remote_addr"\nrate = "5r/s"\n'
    route = '[[route]]\nprefix = "/"\nupstream = "app"\n'
    for text, message in (
        (base + route + 'limit_req = { zone = "onr" }\n', '<config>:9: route[0].limit_req.zone: no such limit_req_zone; defined: one; did you mean "one"?'),
        (base + route + 'limit_req = { zone = "one", delay = 2, nodelay = true }\n', "<config>:9: route[0].limit_req.delay: give delay or nodelay, not both"),
        (base + route + 'limit_conn = { zone = "one", max = 1 }\n', "<config>:9: route[0].limit_conn.zone: no such limit_conn_zone"),
        (base + route + 'limit_req = { zone = "one", bursts = 1 }\n', '<config>:9: route[0].limit_req.bursts: unknown key; expected one of: zone, burst, delay, nodelay; did you mean "burst"?'),
        (base + route + 'limit_conn = { zone = "one" }\n', "<config>:9: route[0].limit_conn.max: required key is missing"),
        (base + route + 'limit_req = "one"\n', "<config>:9: route[0].limit_req: must be a table"),
        (base.replace('"5r/s"', '"5r/h"') + route, '<config>:5: limit_req_zone.one.rate: must be a rate like "10r/s"'),
        (base.replace('"$remote_addr"', '"$host"') + route, '<config>:4: limit_req_zone.one.key: must be "$remote_addr"'),
    ):
        with pytest.raises(ConfigError) as info:
            parse_config(text)
        assert str(info.value).startswith(message), str(info.value)
