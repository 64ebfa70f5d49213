"""``ServerStates``: control commands applied over the cluster file (sans-IO)."""

from __future__ import annotations

import pytest

from fcgi_cluster.frontend import parse_config
from fcgi_cluster.frontend._server_states import ControlError, ServerStates

FILE = ('[upstream.app]\nservers = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 2 }]\n'
        '[upstream.other]\nservers = ["127.0.0.1:9101"]\n[[route]]\nprefix = "/"\nupstream = "app"\n')


def servers(states: ServerStates, config, name: str = "app") -> list[tuple[str, int, str]]:
    return [(s.address, s.weight, "down" if s.down else "drain" if s.drain else "up")
            for s in states.apply(config).upstreams[name].servers]


def test_commands_change_the_servers_new_requests_get() -> None:
    config = parse_config(FILE)
    states = ServerStates()
    assert states.apply(config) is config  # nothing set: the file's own configuration
    states.execute("drain app 127.0.0.1:9002", config)
    assert servers(states, config) == [("127.0.0.1:9001", 1, "up"), ("127.0.0.1:9002", 2, "drain")]
    assert states.state_of("app", "127.0.0.1:9002") == "drain"
    states.execute("weight app 127.0.0.1:9002 5", config)
    states.execute("up app 127.0.0.1:9002", config)
    assert servers(states, config) == [("127.0.0.1:9001", 1, "up"), ("127.0.0.1:9002", 5, "up")]
    states.execute("add app 127.0.0.1:9003 3", config)
    states.execute("remove app 127.0.0.1:9001", config)
    assert servers(states, config) == [("127.0.0.1:9002", 5, "up"), ("127.0.0.1:9003", 3, "up")]
    states.execute("add app 127.0.0.1:9001", config)  # back, as the file has it
    assert servers(states, config)[0] == ("127.0.0.1:9001", 1, "up")
    assert servers(states, config, "other") == [("127.0.0.1:9101", 1, "up")]


def test_the_states_survive_a_new_file_and_their_document() -> None:
    config = parse_config(FILE)
    states = ServerStates()
    states.execute("down app 127.0.0.1:9001", config)
    states.execute("remove app 127.0.0.1:9002", config)
    states.execute("add app 127.0.0.1:9004", config)
    again = ServerStates.from_json(states.to_json())
    # A reloaded file with one more server: the states still apply, the new server as written.
    newer = parse_config(FILE.replace('weight = 2 }', 'weight = 2 }, "127.0.0.1:9005"'))
    assert servers(again, newer) == [("127.0.0.1:9001", 1, "down"), ("127.0.0.1:9005", 1, "up"), ("127.0.0.1:9004", 1, "up")]
    with pytest.raises(ValueError, match="not a server-state document"):
        ServerStates.from_json('{"states": 3}')


@pytest.mark.parametrize(("line", "status", "message"), [
    ("", 400, "empty command"),
    ("reboot app 127.0.0.1:9001", 400, "unknown command 'reboot'"),
    ("drain app", 400, "usage: drain UPSTREAM ADDRESS"),
    ("weight app 127.0.0.1:9001", 400, "usage: weight UPSTREAM ADDRESS N"),
    ("weight app 127.0.0.1:9001 0", 400, "weight must be an integer from 1 to 100"),
    ("drain nope 127.0.0.1:9001", 404, "no upstream 'nope' (there are: app, other)"),
    ("up app 127.0.0.1:1", 404, "upstream 'app' has no server 127.0.0.1:1"),
    ("add app 127.0.0.1:9001", 400, "already has server 127.0.0.1:9001"),
    ("remove other 127.0.0.1:9101", 400, "an upstream needs at least one server"),
])
def test_a_bad_command_is_refused_and_changes_nothing(line: str, status: int, message: str) -> None:
    config = parse_config(FILE)
    states = ServerStates()
    states.execute("drain app 127.0.0.1:9001", config)
    before = states.to_json()
    with pytest.raises(ControlError) as caught:
        states.execute(line, config)
    assert caught.value.status == status
    assert message in str(caught.value)
    assert states.to_json() == before
