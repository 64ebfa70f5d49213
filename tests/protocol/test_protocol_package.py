"""The protocol package's public face and its house rule: no I/O library."""

from __future__ import annotations

import inspect
import subprocess
import sys
import types
from pathlib import Path

import fcgi_cluster.protocol as protocol

REPO = Path(__file__).resolve().parents[2]
IO_LIBRARIES = {"trio", "socket", "asyncio", "selectors", "anyio", "ssl"}


def test_protocol_imports_no_io_library() -> None:
    code = (
        "import sys; import fcgi_cluster.protocol; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {IO_LIBRARIES!r}))"
    )
    # -I: ignore PYTHON* variables and user site-packages, which could import things
    # on their own; run from the repository root so the package is found.
    result = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(REPO)!r}); {code}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "[]", result.stdout


def test_all_matches_the_public_names() -> None:
    assert len(protocol.__all__) == len(set(protocol.__all__))
    public = {
        name
        for name, value in vars(protocol).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(protocol.__all__) == public


def test_every_exported_class_and_function_has_its_own_docstring() -> None:
    for name in protocol.__all__:
        value = getattr(protocol, name)
        if not (inspect.isclass(value) or inspect.isfunction(value)):
            continue
        doc = value.__dict__.get("__doc__") if inspect.isclass(value) else value.__doc__
        assert doc and doc.strip(), f"{name} has no docstring"
        # dataclasses invent "Name(field: type, ...)" when a class has none.
        assert not doc.startswith(f"{name}("), f"{name} has only the generated docstring"
