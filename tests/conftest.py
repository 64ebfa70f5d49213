"""Shared test configuration: the ``e2e`` marker and fixtures that start real peers.

The helpers themselves live in tests/_peers.py, so that module-scoped fixtures and scratch
scripts can use them too.
"""

from __future__ import annotations

import contextlib
import pathlib
import shutil
import subprocess

import pytest

from tests._peers import Peers

_E2E_DIR = pathlib.Path(__file__).parent / "e2e"

# Shown in pytest's header, so a failure report says which peer versions it ran against.
_PEER_VERSION_COMMANDS = {
    "nginx": ["nginx", "-v"],
    "haproxy": ["haproxy", "-v"],
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e as ``e2e``, so ``-m 'not e2e'`` runs the fast ones."""
    for item in items:
        if _E2E_DIR in item.path.parents:
            item.add_marker(pytest.mark.e2e)


def pytest_report_header() -> list[str]:
    """One line naming the versions of the peer programs found on this machine."""
    found = []
    for name, argv in _PEER_VERSION_COMMANDS.items():
        binary = shutil.which(argv[0]) or shutil.which(argv[0], path="/usr/sbin:/sbin")
        if binary is None:
            found.append(f"{name} missing")
            continue
        result = subprocess.run([binary, *argv[1:]], capture_output=True, text=True)
        output = (result.stdout or result.stderr).strip().splitlines()
        found.append(output[0] if output else f"{name} ?")
    found.append("cgi-fcgi " + ("found" if shutil.which("cgi-fcgi") else "missing"))
    return ["peers: " + "; ".join(found)]


@pytest.fixture
def peers(tmp_path: pathlib.Path):
    """Start real peers (nginx, haproxy, flup, any process) for one test.

    Every peer started through it is stopped when the test ends, passed or failed; its
    files stay in the test's ``tmp_path``. See ``tests._peers.Peers``.
    """
    with contextlib.ExitStack() as stack:
        yield Peers(stack, tmp_path)
