"""The pool master's children as processes: fork, output pipes, signals, reaping.

``Children`` holds every child the master has forked, whatever its pool or
generation: it forks one into a ``PoolRun`` (a generation of one pool), reads
what children write (``catch_workers_output``) into the error log, signals them
with a deadline after which they are killed, and reaps them, logging how each
ended. What to fork and when to stop whom is the master's (``_master``) and its
pm policy's; this module only carries it out on the processes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Callable

from ._pm_child import EXIT_APP_LOAD, ChildSpec, child_main
from ._pm_policy import PoolPolicy
from ._pool_config import GlobalConfig, PoolConfig
from ._scoreboard import Scoreboard

__all__ = ["Child", "PoolRun", "Children", "SIGNALS", "OUTPUT_LINE_LIMIT", "waitpid_retrying"]

log = logging.getLogger("fcgi_cluster.pool")

#: Characters of one line of a child's output kept in the log (php-fpm's log_limit).
OUTPUT_LINE_LIMIT = 1024

#: The signals the master handles; blocked around fork() so a child never runs the master's handlers.
SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


@dataclass(eq=False)
class Child:
    """One forked child."""

    pid: int
    run: "PoolRun"
    slot: int
    started: float  # monotonic
    #: Why the master asked it to stop ("" = it was not asked): its exit is then not abnormal.
    stopping: str = ""
    kill_at: float | None = None
    #: Its scoreboard state when it exited (FINISHING: it recycled on its own).
    last_state: int = 0


@dataclass(eq=False)
class PoolRun:
    """One generation of one pool: its config, socket, scoreboard, pm policy and children."""

    config: PoolConfig
    sock: socket.socket
    scoreboard: Scoreboard
    policy: PoolPolicy
    children: dict[int, Child] = field(default_factory=dict)
    retiring: bool = False
    #: ondemand: the socket is in the master's selector (a reload's new run
    #: may register the same socket, so each run unregisters only its own).
    watching: bool = False


def waitpid_retrying(pid: int) -> tuple[int, int]:
    """``os.waitpid(pid, 0)``, again when a signal interrupts it."""
    while True:
        try:
            return os.waitpid(pid, 0)
        except InterruptedError:
            continue


class Children:
    """Every child of the master, with their output pipes in the master's selector.

    Args:
        sel: the master's selector (output pipes are registered in it).
        handler: the master's error log handler, kept by each child.
    """

    def __init__(self, sel: selectors.BaseSelector, handler: logging.Handler | None) -> None:
        self.sel = sel
        self.handler = handler
        self.by_pid: dict[int, Child] = {}
        #: Output pipe -> (pool name, pid, "stdout"/"stderr", the line so far).
        self.outputs: dict[int, tuple[str, int, str, bytearray]] = {}

    def __bool__(self) -> bool:
        return bool(self.by_pid)

    def all(self) -> list[Child]:
        """The live children, in a list the caller may change the table under."""
        return list(self.by_pid.values())

    def spawn(self, run: PoolRun, global_: GlobalConfig, close_fds: list[int]) -> bool:
        """Fork a child of ``run``; False when no slot is free or fork() failed (logged).

        Args:
            run: the generation the child joins.
            global_: the pool file's ``[global]``.
            close_fds: the master's descriptors the child must not keep (its
                output pipes are added here).
        """
        pool = run.config
        slot = run.scoreboard.free_slot()
        if slot is None:
            return False
        catch = pool.catch_workers_output
        if catch:
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
        else:
            out_w = err_w = os.open(os.devnull, os.O_WRONLY)
        spec = ChildSpec(
            pool=pool, global_=global_, sock=run.sock, scoreboard=run.scoreboard, slot=slot,
            close_fds=close_fds + list(self.outputs) + ([out_r, err_r] if catch else []),
            stdout=out_w, stderr=err_w, log_handler=self.handler, master_pid=os.getpid(),
        )
        run.scoreboard.reserve(slot)
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            run.scoreboard.release(slot)
            log.error("[pool %s] fork() failed: %s", pool.name, exc.strerror)
            for fd in {out_w, err_w} | ({out_r, err_r} if catch else set()):
                os.close(fd)
            return False
        if pid == 0:
            child_main(spec)  # never returns
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        run.scoreboard.set_pid(slot, pid)
        child = Child(pid, run, slot, time.monotonic())
        run.children[pid] = child
        self.by_pid[pid] = child
        for fd in {out_w, err_w}:
            os.close(fd)
        if catch:
            for fd, name in ((out_r, "stdout"), (err_r, "stderr")):
                os.set_blocking(fd, False)
                self.outputs[fd] = (pool.name, pid, name, bytearray())
                self.sel.register(fd, selectors.EVENT_READ, self.read_output)
        log.info("[pool %s] child %d started", pool.name, pid)
        return True

    # --- output -------------------------------------------------------------------

    def read_output(self, fd: int, final: bool = False) -> None:
        """Log the complete lines a child wrote to ``fd``; at its EOF (or ``final``) the rest, and close it."""
        pool, pid, name, pending = self.outputs[fd]
        eof = False
        try:
            while True:
                data = os.read(fd, 65536)
                if not data:
                    eof = True
                    break
                pending += data
        except BlockingIOError:
            pass
        *lines, rest = pending.split(b"\n")
        if eof or final:
            if rest:
                lines.append(rest)
            rest = b""
        pending[:] = rest
        for line in lines:
            text = line.decode("utf-8", "replace").rstrip("\r")
            if len(text) > OUTPUT_LINE_LIMIT:
                text = text[:OUTPUT_LINE_LIMIT] + "..."
            log.warning('[pool %s] child %d said into %s: "%s"', pool, pid, name, text)
        if eof or final:
            self.sel.unregister(fd)
            os.close(fd)
            del self.outputs[fd]

    def last_words(self) -> None:
        """Log what is left in every output pipe and close them (at exit)."""
        for fd in list(self.outputs):
            self.read_output(fd, final=True)

    # --- signals ------------------------------------------------------------------

    def signal(self, child: Child, signum: int, why: str, timeout: float | None) -> None:
        """Send ``signum``, noting why; SIGKILL follows ``timeout`` seconds on (``kill_overdue``)."""
        if not child.stopping or why == "term" or why == "stuck":
            child.stopping = why
        if timeout is not None:
            deadline = time.monotonic() + timeout
            child.kill_at = deadline if child.kill_at is None else min(child.kill_at, deadline)
        try:
            os.kill(child.pid, signum)
        except ProcessLookupError:
            pass

    def signal_all(self, signum: int) -> None:
        """Send ``signum`` to every child, noting nothing (SIGUSR1: reopen the logs)."""
        for child in self.all():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)

    def kill_overdue(self, now: float) -> None:
        """SIGKILL the children still alive past the deadline of the signal they were sent."""
        for child in self.all():
            if child.kill_at is not None and now >= child.kill_at:
                log.warning("[pool %s] child %d, still alive after %s: sending SIGKILL",
                            child.run.config.name, child.pid, "stop" if child.stopping != "stuck" else "timeout")
                child.kill_at = None
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)

    def kill_all(self) -> None:
        """SIGKILL every child and wait for each (the master's own failure)."""
        for pid in list(self.by_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in list(self.by_pid):
            with contextlib.suppress(ChildProcessError):
                waitpid_retrying(pid)
        self.by_pid.clear()

    # --- reaping --------------------------------------------------------------------

    def reap(self, ended: Callable[[Child, bool], None]) -> None:
        """Collect the children that exited, each logged, then ``ended(child, abnormal)``.

        A child's exit is abnormal when it was not asked to stop and it died
        of a signal or exited non-zero. The child is out of its run and its
        slot is free when ``ended`` is called.
        """
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            child = self.by_pid.pop(pid, None)
            if child is not None:
                ended(child, self._exited(child, status))

    def _exited(self, child: Child, status: int) -> bool:
        run = child.run
        run.children.pop(child.pid, None)
        child.last_state = run.scoreboard.slot_state(child.slot)[1]
        run.scoreboard.release(child.slot)
        lived = time.monotonic() - child.started
        pool = run.config.name
        if os.WIFSIGNALED(status):
            signum = os.WTERMSIG(status)
            try:
                name = signal.Signals(signum).name
            except ValueError:
                name = str(signum)
            abnormal = not child.stopping
            level = logging.WARNING if abnormal or signum == signal.SIGKILL else logging.INFO
            log.log(level, "[pool %s] child %d exited on signal %d (%s) after %.6f seconds from start",
                    pool, child.pid, signum, name, lived)
        else:
            code = os.WEXITSTATUS(status)
            abnormal = code != 0 and not child.stopping
            if code == EXIT_APP_LOAD:
                log.error("[pool %s] child %d could not import the app (%s)", pool, child.pid, run.config.app)
            log.log(logging.WARNING if abnormal else logging.INFO,
                    "[pool %s] child %d exited with code %d after %.6f seconds from start", pool, child.pid, code, lived)
        return abnormal
