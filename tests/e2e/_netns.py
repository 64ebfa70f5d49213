"""Hosts for the multi-host tests: Linux network namespaces on one bridge.

``Hosts(names)`` makes a bridge ``fch-br`` with 10.231.0.1/24 in the test's own
namespace (so the test reaches every host directly), and for each name a
namespace ``fch-NAME`` joined to the bridge by a veth pair, with the address
10.231.0.(10 + index)/24 and its own loopback up. ``cut(name)`` sets the host
side of that host's veth down: its packets vanish, with no RST and no FIN, as
when a cable is pulled; ``mend(name)`` brings it back.

Everything is removed when the ``with`` block ends, on success or failure, and
the leftovers of an earlier run that crashed are removed before starting.
Traffic stays inside 10.231.0.0/24, on links this module creates.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

PREFIX = "fch-"
BRIDGE = f"{PREFIX}br"
NETWORK = "10.231.0"
GATEWAY = f"{NETWORK}.1"


class NamespaceError(RuntimeError):
    """Namespaces cannot be made here (not root, no ``ip``, no kernel support)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise NamespaceError(f"ip {' '.join(args)}: {result.stderr.strip() or result.returncode}")
    return result


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    probe = f"{PREFIX}probe"
    result = _ip("netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"ip netns add failed: {result.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def remove_leftovers() -> None:
    """Delete every namespace and link this module names (an earlier run's, if it crashed)."""
    listing = _ip("netns", "list", check=False).stdout.split("\n")
    for line in listing:
        name = line.split(" ")[0]
        if name.startswith(PREFIX):
            _ip("netns", "del", name, check=False)
    for line in _ip("-o", "link", "show", check=False).stdout.split("\n"):
        fields = line.split(": ")
        if len(fields) > 1 and fields[1].split("@")[0].startswith(PREFIX):
            _ip("link", "del", fields[1].split("@")[0], check=False)


class Hosts:
    """Namespaces ``fch-NAME`` on one bridge; ``address(name)`` is each one's IPv4 address."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self.addresses = {name: f"{NETWORK}.{10 + index}" for index, name in enumerate(self.names)}

    def namespace(self, name: str) -> str:
        return f"{PREFIX}{name}"

    def address(self, name: str) -> str:
        return self.addresses[name]

    def exec_argv(self, name: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside host ``name``'s namespace."""
        return ["ip", "netns", "exec", self.namespace(name), *argv]

    def pids(self, name: str) -> set[int]:
        """The processes running in host ``name``'s namespace (``ip netns pids``)."""
        return {int(pid) for pid in _ip("netns", "pids", self.namespace(name)).stdout.split()}

    def _veth(self, name: str) -> str:
        return f"{PREFIX}{self.names.index(name)}h"

    def cut(self, name: str) -> None:
        """Host ``name``'s link down: its packets are dropped silently."""
        _ip("link", "set", self._veth(name), "down")

    def mend(self, name: str) -> None:
        _ip("link", "set", self._veth(name), "up")

    def __enter__(self) -> Hosts:
        remove_leftovers()
        try:
            _ip("link", "add", BRIDGE, "type", "bridge")
            _ip("addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
            _ip("link", "set", BRIDGE, "up")
            for index, name in enumerate(self.names):
                ns, host_side, ns_side = self.namespace(name), self._veth(name), f"{PREFIX}{index}n"
                _ip("netns", "add", ns)
                _ip("link", "add", host_side, "type", "veth", "peer", "name", ns_side)
                _ip("link", "set", ns_side, "netns", ns)
                _ip("link", "set", host_side, "master", BRIDGE)
                _ip("link", "set", host_side, "up")
                _ip("-n", ns, "addr", "add", f"{self.addresses[name]}/24", "dev", ns_side)
                _ip("-n", ns, "link", "set", ns_side, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            remove_leftovers()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        remove_leftovers()
