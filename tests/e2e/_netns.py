"""Hosts for the multi-host tests: Linux network namespaces on one bridge.

``Hosts(names)`` makes a bridge ``fch<pid>b`` with 10.231.N.1/24 in the test's own
namespace (so the test reaches every host directly), and for each name a
namespace ``fch<pid>-NAME`` joined to the bridge by a veth pair, with the address
10.231.N.(10 + index)/24 and its own loopback up. ``cut(name)`` sets the host
side of that host's veth down: its packets vanish, with no RST and no FIN, as
when a cable is pulled; ``mend(name)`` brings it back.

The names carry the test process's pid and N is a /24 no link here uses yet, so
test runs on one machine at the same time keep out of each other's way.
Everything is removed when the ``with`` block ends, on success or failure, and
the leftovers of an earlier run that crashed (its pid gone) are removed before
starting. Traffic stays inside 10.231.N.0/24, on links this module creates.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence

PREFIX = "fch"
#: A name of ours: the prefix, the pid of the run that made it, then "b" (the
#: bridge), "_<index>h"/"_<index>n" (a veth pair) or "-NAME" (a namespace).
_OURS = re.compile(rf"^{PREFIX}(\d+)[b_-]")
NETWORKS = "10.231"


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
    probe = f"{PREFIX}{os.getpid()}-probe"
    result = _ip("netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"ip netns add failed: {result.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def remove_leftovers(owner: int | None = None) -> None:
    """Delete the namespaces and links of ``owner`` (a pid), or of every run of ours whose process is gone."""
    def doomed(name: str) -> bool:
        match = _OURS.match(name)
        if match is None:
            return False
        pid = int(match.group(1))
        return pid == owner if owner is not None else not _alive(pid)

    for line in _ip("netns", "list", check=False).stdout.split("\n"):
        name = line.split(" ")[0]
        if doomed(name):
            _ip("netns", "del", name, check=False)
    for line in _ip("-o", "link", "show", check=False).stdout.split("\n"):
        fields = line.split(": ")
        if len(fields) > 1 and doomed(fields[1].split("@")[0]):
            _ip("link", "del", fields[1].split("@")[0], check=False)


def _free_network() -> str:
    """``10.231.N`` for an N that no address of this machine's own namespace is in."""
    used = _ip("-o", "addr", "show", check=False).stdout
    start = os.getpid() % 250
    for step in range(250):
        network = f"{NETWORKS}.{(start + step) % 250 + 1}"
        if f" {network}." not in used:
            return network
    raise NamespaceError(f"every {NETWORKS}.N.0/24 is in use here")


class Hosts:
    """Namespaces ``fch<pid>-NAME`` on one bridge; ``address(name)`` is each one's IPv4 address."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self.tag = f"{PREFIX}{os.getpid()}"
        self.network = ""
        self.addresses: dict[str, str] = {}

    @property
    def gateway(self) -> str:
        """The test's own address on the bridge."""
        return f"{self.network}.1"

    def namespace(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def address(self, name: str) -> str:
        return self.addresses[name]

    def exec_argv(self, name: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside host ``name``'s namespace."""
        return ["ip", "netns", "exec", self.namespace(name), *argv]

    def pids(self, name: str) -> set[int]:
        """The processes running in host ``name``'s namespace (``ip netns pids``)."""
        return {int(pid) for pid in _ip("netns", "pids", self.namespace(name)).stdout.split()}

    def _veth(self, name: str) -> str:
        return f"{self.tag}_{self.names.index(name)}h"

    def cut(self, name: str) -> None:
        """Host ``name``'s link down: its packets are dropped silently."""
        _ip("link", "set", self._veth(name), "down")

    def mend(self, name: str) -> None:
        _ip("link", "set", self._veth(name), "up")

    def __enter__(self) -> Hosts:
        remove_leftovers()
        bridge = f"{self.tag}b"
        try:
            self.network = _free_network()
            self.addresses = {name: f"{self.network}.{10 + index}" for index, name in enumerate(self.names)}
            _ip("link", "add", bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/24", "dev", bridge)
            _ip("link", "set", bridge, "up")
            for index, name in enumerate(self.names):
                ns, host_side, ns_side = self.namespace(name), self._veth(name), f"{self.tag}_{index}n"
                _ip("netns", "add", ns)
                _ip("link", "add", host_side, "type", "veth", "peer", "name", ns_side)
                _ip("link", "set", ns_side, "netns", ns)
                _ip("link", "set", host_side, "master", bridge)
                _ip("link", "set", host_side, "up")
                _ip("-n", ns, "addr", "add", f"{self.addresses[name]}/24", "dev", ns_side)
                _ip("-n", ns, "link", "set", ns_side, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            remove_leftovers(os.getpid())
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        remove_leftovers(os.getpid())
