"""What the benchmarks read off the OS: CPU seconds and memory of a process tree.

CPU time is the figure that stays honest on a shared machine: wrk, the front door and
the workers all run on the same two cores, so requests/s moves with whatever else
runs, while the CPU a stack spends on each request does not (much).
"""

from __future__ import annotations

import os
import pathlib

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # the process is gone
        return None
    # The command name, in parentheses, may hold spaces: split after its last ")".
    return text[text.rindex(")") + 2:].split()


def tree(roots: list[int]) -> list[int]:
    """``roots`` and every live descendant of them (nginx and php-fpm fork their workers)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                parents.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.append(pid)
            todo.extend(parents.get(pid, ()))
    return found


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """user+sys seconds each live process of ``pids`` and its reaped children have spent so far.

    A pool that recycles children (``pm.max_requests``) loses some during a run: a child's
    time moves to its parent's cutime/cstime when the parent reaps it, so counting those
    keeps it in the tree's total.
    """
    spent = {}
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            # utime, stime, cutime, cstime are fields 14-17 of /proc/PID/stat (11-14 after the name).
            spent[pid] = sum(int(fields[i]) for i in (11, 12, 13, 14)) / _TICKS
    return spent


def cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds a process tree spent between two ``cpu_seconds`` readings.

    ``after`` may be read from the tree as it is then (children started and reaped in
    between): a reaped child's time is in its parent's, a new child's starts at zero.
    """
    return sum(after.values()) - sum(before.values())


def rss_kib(pids: list[int]) -> int:
    """Resident memory of ``pids`` summed, in KiB (``VmRSS`` of /proc/PID/status)."""
    total = 0
    for pid in pids:
        try:
            for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total
