"""The live progress line of a benchmark run: step, elapsed time and time left."""

from __future__ import annotations

import sys
import time


class Progress:
    """Counts the steps of a run and prints each with the time spent and an estimate of what is left.

    Args:
        total: the steps planned; ``add`` raises it when a part plans more.
    """

    def __init__(self, total: int = 0, stream=sys.stdout) -> None:
        self.total = total
        self.done = 0
        self._start = time.monotonic()
        self._stream = stream

    def add(self, steps: int) -> None:
        """Plan ``steps`` more steps."""
        self.total += steps

    def step(self, text: str) -> None:
        """One step done: print it."""
        self.done += 1
        self.note(text)

    def skip(self, steps: int, text: str) -> None:
        """``steps`` planned steps will not run (a contender is not available): print why."""
        self.total = max(self.done, self.total - steps)
        self.note(text)

    def note(self, text: str) -> None:
        """Print ``text`` on a progress line (step count, elapsed time, time left), counting no step."""
        elapsed = time.monotonic() - self._start
        left = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        print(f"[{self.done}/{self.total} {_clock(elapsed)} elapsed, ~{_clock(left)} left] {text}",
              file=self._stream, flush=True)


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}:{seconds:02d}"
