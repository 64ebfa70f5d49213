"""The pool's process manager policy: how many children, which to stop, when.

A sans-IO object: the master gives it the clock and what the scoreboard says of
each child (``ChildFigures``), and it answers with actions (``Spawn``,
``Stop``, warnings as data ...) that the master carries out by forking,
signalling and logging. It keeps the state the rules need between two calls
(the spawn rate, "max children" warned, when the next decision is due, the
ondemand mute), so every rule is testable without a process.

The rules, as php-fpm applies them (``fpm_process_ctl.c``):

- Which children count: those not asked to stop and neither FINISHING
  (stopped accepting: ``pm.max_requests``, reload) nor STUCK; their
  replacements start while they finish. "Idle" = no request in flight and
  IDLE or STARTING (a child multiplexes; one starting will take work soon).
- static: at every call (the master's tick), spawn ``pm.max_children`` minus
  the children that count.
- A child that recycles on its own (``pm.max_requests``) is replaced at
  once, as php-fpm replaces the child it buries: when it is seen finishing
  (a tick), or at the latest when it exits (``exited``), once either way;
  not at the next dynamic decision, which would leave a pool whose children
  recycle together without one accepting for up to ``PM_INTERVAL``.
- dynamic: ``min(pm.start_servers, pm.max_children)`` at start; then once per
  ``PM_INTERVAL``:
    * more than ``pm.max_spare_servers`` idle: stop the one idle the longest;
      the spawn rate goes back to 1;
    * fewer than ``pm.min_spare_servers`` idle: at ``pm.max_children``, warn
      once (until a spawn happens again) and the rate goes back to 1; else
      spawn ``min(rate, min_spare - idle, max_children - counted)``, say the
      pool "seems busy" when the rate is 8 or more, and double the rate, up to
      ``MAX_SPAWN_RATE``;
    * otherwise the rate goes back to 1.
- ondemand: none at start, the listening socket is watched (``Watch``). A
  connection waiting in the accept queue (``pending``): spawn one child unless
  one is idle (or warn at ``pm.max_children``), and stop watching for
  ``PENDING_MUTE`` (the queue stays readable until a child accepts); the
  next decision comes no later than that. Once per ``PM_INTERVAL``: stop
  every IDLE child idle longer than ``pm.process_idle_timeout``, and watch the
  socket again once the mute is over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, Union

from ._pool_config import PoolConfig
from ._scoreboard import FINISHING, IDLE, STARTING, STUCK

__all__ = [
    "PoolPolicy", "ChildFigures", "Action", "Spawn", "Stop", "MaxChildrenReached", "SeemsBusy", "Watch", "Unwatch",
    "PM_INTERVAL", "MAX_SPAWN_RATE", "BUSY_SPAWN_RATE", "PENDING_MUTE",
]

#: Seconds between two decisions of dynamic/ondemand (php-fpm: one second).
PM_INTERVAL = 1.0
#: php-fpm's limit on children spawned per decision in dynamic mode.
MAX_SPAWN_RATE = 32
#: From this spawn rate on, a dynamic pool says it "seems busy" (php-fpm's threshold).
BUSY_SPAWN_RATE = 8
#: ondemand: seconds the listening socket is not watched after a pending
#: connection was handled; one master tick, the time a new child takes to accept.
PENDING_MUTE = 0.25


# --- figures in ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChildFigures:
    """What the master knows of one child when the policy decides.

    Attributes:
        key: the master's name for the child (its pid); ``Stop`` gives it back.
        state: its scoreboard state (``STARTING``, ``IDLE``, ``RUNNING``, ...).
        in_flight: requests it is answering now.
        idle_since: monotonic time its last request ended (or it started).
        stopping: the master asked it to stop; it no longer counts.
    """

    key: int
    state: int
    in_flight: int = 0
    idle_since: float = 0.0
    stopping: bool = False

    @property
    def counts(self) -> bool:
        """It counts for the pm: not asked to stop, neither finishing nor stuck."""
        return not self.stopping and self.state not in (FINISHING, STUCK)

    @property
    def idle(self) -> bool:
        """No request in flight, and idle or about to be (starting)."""
        return self.in_flight == 0 and self.state in (IDLE, STARTING)


# --- actions out --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spawn:
    """Start ``count`` children (stopping at the first that cannot start)."""

    count: int


@dataclass(frozen=True, slots=True)
class Stop:
    """Stop the child ``key`` gracefully: it is idle and not needed."""

    key: int


@dataclass(frozen=True, slots=True)
class MaxChildrenReached:
    """Warn: children are needed but the pool has ``max_children`` (said once until a spawn happens)."""

    max_children: int


@dataclass(frozen=True, slots=True)
class SeemsBusy:
    """Warn: a dynamic pool spawns at a high rate (``spawning`` now, with ``idle`` idle of ``total``)."""

    spawning: int
    idle: int
    total: int


@dataclass(frozen=True, slots=True)
class Watch:
    """ondemand: watch the listening socket; call ``pending`` when a connection waits."""


@dataclass(frozen=True, slots=True)
class Unwatch:
    """ondemand: stop watching the listening socket until a later ``Watch``."""


Action = Union[Spawn, Stop, MaxChildrenReached, SeemsBusy, Watch, Unwatch]


# --- the policy ---------------------------------------------------------------


class PoolPolicy:
    """The pm decisions of one pool generation (static, dynamic or ondemand).

    Args:
        pool: the pool's config; ``pm`` and the ``pm_*`` keys are read.

    Raises:
        ValueError: ``pool.pm`` is none of static, dynamic, ondemand.
    """

    def __init__(self, pool: PoolConfig) -> None:
        decide = self._DECIDERS.get(pool.pm)
        if decide is None:
            raise ValueError(f"pm: {pool.pm!r} is not static, dynamic or ondemand")
        self.pool = pool
        self._decide: Callable[[PoolPolicy, float, list[ChildFigures]], list[Action]] = decide
        self._spawn_rate = 1
        self._warned_max = False
        self._next_decision = 0.0
        self._muted_until = 0.0
        #: Children seen finishing on their own, replaced already (until they exit).
        self._replaced: set[int] = set()

    @property
    def spawn_rate(self) -> int:
        """dynamic: the most children the next decision may spawn."""
        return self._spawn_rate

    @property
    def next_decision(self) -> float:
        """Monotonic time from which ``decide`` decides again (static: every call)."""
        return self._next_decision

    def start(self, now: float) -> list[Action]:
        """The children to start with (and, for ondemand, the socket to watch)."""
        pool = self.pool
        self._next_decision = now + PM_INTERVAL
        if pool.pm == "ondemand":
            return [Watch()]
        count = pool.pm_max_children if pool.pm == "static" else min(pool.pm_start_servers, pool.pm_max_children)
        return [Spawn(count)] if count > 0 else []

    def decide(self, now: float, children: Sequence[ChildFigures]) -> list[Action]:
        """What to do at ``now``, given every child of the pool (asked to stop or not).

        Called at every master tick: static decides each time, dynamic and
        ondemand once ``next_decision`` is reached, and [] before.
        """
        live = [c for c in children if c.counts]
        if self.pool.pm != "ondemand":
            fresh = self._newly_finishing(children)
            if fresh and self.pool.pm == "dynamic":  # static refills below anyway
                count = min(fresh, self.pool.pm_max_children - len(live))
                if count > 0:
                    return [Spawn(count)]
        if self.pool.pm != "static":
            if now < self._next_decision:
                return []
            self._next_decision = now + PM_INTERVAL
        return self._decide(self, now, live)

    def pending(self, now: float, children: Sequence[ChildFigures]) -> list[Action]:
        """ondemand: a connection waits in the listen queue; spawn one unless a child is idle."""
        live = [c for c in children if c.counts]
        actions: list[Action] = []
        if not any(c.idle for c in live):
            actions += self._spawn_up_to(1, len(live))
        # The queue stays readable until a child accepts: look again after the mute.
        actions.append(Unwatch())
        self._muted_until = now + PENDING_MUTE
        self._next_decision = min(self._next_decision, self._muted_until)
        return actions

    # --- the rules of each pm ------------------------------------------------------

    def _static(self, now: float, live: list[ChildFigures]) -> list[Action]:
        missing = self.pool.pm_max_children - len(live)
        return [Spawn(missing)] if missing > 0 else []

    def _dynamic(self, now: float, live: list[ChildFigures]) -> list[Action]:
        pool = self.pool
        idle = [c for c in live if c.idle]
        if len(idle) > pool.pm_max_spare_servers:
            # The one idle the longest goes (php-fpm: one a decision).
            self._spawn_rate = 1
            return [Stop(min(idle, key=lambda c: c.idle_since).key)]
        if len(idle) >= pool.pm_min_spare_servers:
            self._spawn_rate = 1
            return []
        if len(live) >= pool.pm_max_children:
            self._spawn_rate = 1
            return self._spawn_up_to(0, len(live))
        count = min(self._spawn_rate, pool.pm_min_spare_servers - len(idle), pool.pm_max_children - len(live))
        actions: list[Action] = []
        if self._spawn_rate >= BUSY_SPAWN_RATE:
            actions.append(SeemsBusy(count, len(idle), len(live)))
        actions += self._spawn_up_to(count, len(live))
        self._spawn_rate = min(self._spawn_rate * 2, MAX_SPAWN_RATE)
        return actions

    def exited(self, key: int, recycled: bool, children: Sequence[ChildFigures]) -> list[Action]:
        """Child ``key`` has exited; ``recycled``: on its own, after ``pm.max_requests``.

        Args:
            children: the pool's children left.

        Returns:
            static and dynamic: its replacement, unless one started while it
            finished, or the pool is at ``pm.max_children``; ondemand: nothing
            (a waiting connection spawns).
        """
        replaced = key in self._replaced
        self._replaced.discard(key)
        if not recycled or replaced or self.pool.pm == "ondemand":
            return []
        live = sum(1 for c in children if c.counts)
        return [Spawn(1)] if live < self.pool.pm_max_children else []

    def _newly_finishing(self, children: Sequence[ChildFigures]) -> int:
        """Note the children finishing on their own (not asked to stop); how many are new."""
        fresh = 0
        for c in children:
            if c.state == FINISHING and not c.stopping and c.key not in self._replaced:
                self._replaced.add(c.key)
                fresh += 1
        return fresh

    def _ondemand(self, now: float, live: list[ChildFigures]) -> list[Action]:
        timeout = self.pool.pm_process_idle_timeout
        actions: list[Action] = [
            Stop(c.key) for c in live
            if c.state == IDLE and c.in_flight == 0 and now - c.idle_since > timeout
        ]
        if now >= self._muted_until:
            actions.append(Watch())
        return actions

    def _spawn_up_to(self, count: int, live: int) -> list[Action]:
        """Spawn ``count`` below max_children; at max_children, the warning (once until a spawn)."""
        if live >= self.pool.pm_max_children:
            if self._warned_max:
                return []
            self._warned_max = True
            return [MaxChildrenReached(self.pool.pm_max_children)]
        self._warned_max = False
        return [Spawn(count)] if count > 0 else []

    _DECIDERS: dict[str, Callable[[PoolPolicy, float, list[ChildFigures]], list[Action]]] = {
        "static": _static,
        "dynamic": _dynamic,
        "ondemand": _ondemand,
    }
