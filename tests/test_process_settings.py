"""What a server process sets for itself at start (fcgi_cluster/_limits.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests._peers import REPO_ROOT

PROBE = (
    "import ctypes\n"
    "from fcgi_cluster._limits import keep_buffers_on_the_heap\n"
    "print(keep_buffers_on_the_heap())\n"
    # glibc's count of chunks that have a mapping of their own (mallinfo2().hblks),
    # around 256 KiB buffers, the size of a front-end's socket reads.
    "class Info(ctypes.Structure):\n"
    "    _fields_ = [(n, ctypes.c_size_t) for n in ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd',\n"
    "                'usmblks', 'fsmblks', 'uordblks', 'fordblks', 'keepcost')]\n"
    "mallinfo2 = ctypes.CDLL(None).mallinfo2\n"
    "mallinfo2.restype = Info\n"
    "before = mallinfo2().hblks\n"
    "kept = [bytes(256 * 1024) for _ in range(8)]\n"
    "print(mallinfo2().hblks - before)\n"
)


def _probe(**env: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO_ROOT, capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT), **env), timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_large_buffers_come_from_the_heap_once_set() -> None:
    assert _probe() == ["True", "0"]


def test_an_allocator_setting_from_the_environment_is_left_alone() -> None:
    # glibc reads MALLOC_MMAP_THRESHOLD_ itself; a high one keeps the buffers on the heap too.
    assert _probe(MALLOC_MMAP_THRESHOLD_="4194304") == ["False", "0"]
    # A low one leaves each 256 KiB buffer a mapping of its own, as glibc does by default.
    assert _probe(MALLOC_MMAP_THRESHOLD_="131072") == ["False", "8"]
