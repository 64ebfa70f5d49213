"""The pool master: php-fpm's process manager for Python apps.

One master serves a pool file. It binds every pool's ``listen`` once, then
forks children that inherit the socket and serve the app (``_pm_child``). It
keeps their number by the pool's ``pm`` rules, replaces those that die, and
answers php-fpm's signals:

- SIGINT / SIGTERM: stop now (children get SIGTERM, SIGKILL after
  ``process_control_timeout``);
- SIGQUIT: graceful stop (children finish their requests, then exit);
- SIGUSR2: graceful reload (re-read the file, start a new generation of children
  on the same sockets, then let the old one finish: the socket never closes, so
  no connection is refused and none dropped);
- SIGUSR1: reopen the log files (the master's, and the children's: signalled).

Under systemd (``_systemd``) it says READY=1 once its children are started,
RELOADING=1 then READY=1 around a SIGUSR2, STOPPING=1 on a stop, and takes a
pool's listening socket from socket activation when one matches it.

Why a plain ``selectors`` loop and not trio: the master forks, and forking out
of a running trio loop would copy its scheduler, wakeup pipe and threads into
every child. A selector over a few descriptors (signal wakeup pipe, children's
output pipes, ondemand listeners) and a 1/4 s tick is all a master needs, and a
child starts its own trio loop from a clean process.

The pm rules (static, dynamic, ondemand: how many children, which to stop)
are decided by a ``PoolPolicy`` per pool generation (``_pm_policy``), a pure
object: at every tick the master reads each child's figures from the
scoreboard, asks the policy, and carries out its actions (fork, SIGQUIT, log
lines, watching the listening socket for ondemand). The children as processes
(fork, output pipes, signals with a kill deadline, reaping) are
``_master_children``'s; this module decides what happens to them: start,
signals, reload, pm.

Error handling: problems found before anything runs (an address in use, an app
that does not import, a bad ``session.*`` value, a session store that does not
answer) raise ``PoolStartError`` or ``PoolConfigError`` naming file, line and
key, and nothing is left running. Once running, a child's death is logged and the child
replaced; ``emergency_restart_threshold`` abnormal deaths within
``emergency_restart_interval`` reload everything.
"""

from __future__ import annotations

import collections
import logging
import os
import selectors
import signal
import socket
import sys
import time
from typing import Callable

from .._address import parse_address
from .._limits import raise_open_file_limit
from .._systemd import close_unused, is_inherited, listen_sockets, notify, reloading, take_listener
from ._master_children import SIGNALS, Child, Children, PoolRun, waitpid_retrying
from ._pm_child import prepare_process, session_settings
from ._pm_policy import (Action, ChildFigures, MaxChildrenReached, PoolPolicy, SeemsBusy, Spawn, Stop, Unwatch,
                         Watch)
from ._pool_config import GlobalConfig, PoolConfig, PoolConfigError, PoolFile, load_pool_config
from ._scoreboard import FINISHING, STARTING, STUCK, Scoreboard, listen_queue
from ._server import ListenError, open_listener

__all__ = ["run_pools", "check_pools", "check_sessions", "PoolStartError", "setup_error_log"]

log = logging.getLogger("fcgi_cluster.pool")

#: Seconds between two looks at the children (replacing, finishing, deadlines, pm decisions).
TICK = 0.25
#: Seconds a new generation may take to start before the old one is told to finish anyway.
RELOAD_START_TIMEOUT = 10.0
#: Seconds an app import check may take (at start and reload).
APP_CHECK_TIMEOUT = 60.0
#: Seconds past request_terminate_timeout with no request finishing before a busy child is killed.
STUCK_GRACE = 2.0
_LEVELS = {"alert": logging.CRITICAL, "error": logging.ERROR, "warning": logging.WARNING,
           "notice": logging.INFO, "debug": logging.DEBUG}


class PoolStartError(Exception):
    """A pool cannot start (address in use, app import fails): ``file:line: key: reason``.

    Attributes:
        status: the exit status it calls for: 2 for what the file must fix (the
            app), 1 for the machine's state (an address in use, a file not writable).
    """

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


# --- logging ------------------------------------------------------------------


class _FpmFormatter(logging.Formatter):
    """php-fpm's error log lines: ``[25-Nov-2026 06:17:00] NOTICE: fpm is running, pid 123``."""

    _NAMES = {"INFO": "NOTICE", "CRITICAL": "ALERT"}

    def __init__(self) -> None:
        super().__init__("[%(asctime)s] %(levelname)s: %(message)s", "%d-%b-%Y %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        record.levelname = self._NAMES.get(record.levelname, record.levelname)
        return super().format(record)


def setup_error_log(global_: GlobalConfig, path: str = "") -> logging.Handler:
    """Send ``fcgi_cluster`` logs to ``[global] error_log`` (a file, or "-" for stderr) in php-fpm's format.

    Raises:
        PoolStartError: the file cannot be opened.
    """
    try:
        if global_.error_log in ("", "-"):
            handler: logging.Handler = logging.StreamHandler(sys.stderr)
        else:
            handler = logging.FileHandler(global_.error_log, "a")
    except OSError as exc:
        raise PoolStartError(f"{path or '<config>'}: error_log: cannot open {global_.error_log}: {exc.strerror}") from None
    handler.setFormatter(_FpmFormatter())
    root = logging.getLogger("fcgi_cluster")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(global_.log_level, logging.INFO))
    root.propagate = False
    return handler


# --- checks made before anything runs -------------------------------------------------


def _where(pool: PoolConfig, key: str) -> str:
    line = pool.lines.get(key, 0)
    path = pool.path or "<config>"
    return f"{path}:{line}" if line else path


def check_app(pool: PoolConfig) -> str | None:
    """Import the pool's app in a throwaway forked process; None, or why it fails.

    The master itself never imports the app: children import it after the fork,
    so a reload runs new code.
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(read)
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)
            prepare_process(pool)
            from ._app import AppLoadError, load_app

            try:
                load_app(pool.app)
                status = 0
            except AppLoadError as exc:
                os.write(write, str(exc).encode("utf-8", "replace")[:4000])
        except BaseException as exc:
            try:
                os.write(write, f"{type(exc).__name__}: {exc}".encode("utf-8", "replace")[:4000])
            except BaseException:
                pass
        finally:
            os._exit(status)
    os.close(write)
    chunks = []
    deadline = time.monotonic() + APP_CHECK_TIMEOUT
    try:
        sel = selectors.DefaultSelector()
        sel.register(read, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                chunks = [b"importing it took longer than %d s" % APP_CHECK_TIMEOUT]
                break
            if sel.select(left):
                data = os.read(read, 4096)
                if not data:
                    break
                chunks.append(data)
        sel.close()
    finally:
        os.close(read)
        _, status = waitpid_retrying(pid)
    if os.waitstatus_to_exitcode(status) == 0:
        return None
    reason = b"".join(chunks).decode("utf-8", "replace").strip()
    return reason.splitlines()[0] if reason else f"importing it failed (status {os.waitstatus_to_exitcode(status)})"


def check_sessions(pool: PoolConfig, *, connect: bool) -> None:
    """Check the pool's ``session.*`` keys, and with ``connect`` its store.

    The master opens the store once, with one round trip per server, and
    closes it: a store that is down or a wrong password stops the pool at
    start. Children open their own store without that round trip.

    Raises:
        PoolConfigError: a bad key or value, or a save_path that does not
            parse (``file:line: session.KEY: reason``).
        PoolStartError: with ``connect``, the store cannot be used now
            (``file:line: session.save_path: reason``).
    """
    settings = session_settings(pool)
    if settings is None:
        return
    from ..sessions import SessionConfigError, StoreError, open_session_store

    key = "session.save_path" if "session.save_path" in pool.lines else "session.save_handler"
    try:
        store = open_session_store(settings, check=connect)
    except SessionConfigError as exc:
        raise pool.error(key, exc.reason) from None
    except StoreError as exc:
        raise PoolStartError(f"{_where(pool, key)}: {key}: {exc}") from None
    store.close()


def check_pools(pool_file: PoolFile, *, bind: bool = False) -> dict[str, socket.socket]:
    """Check every pool can start: listen parses (and binds, with ``bind``),
    ``session.*`` settings are valid (and the store answers, with ``bind``), app imports.

    Returns:
        With ``bind``, each pool's listening socket by pool name; else {}.

    Raises:
        PoolConfigError: a listen address or a ``session.*`` value that does not parse.
        PoolStartError: the app does not import, the session store cannot be
            used, or the address cannot be bound. No socket is left open.
    """
    for pool in pool_file.pools:
        try:
            parse_address(pool.listen)
        except ValueError as exc:
            raise PoolConfigError(pool.path or pool_file.path, pool.lines.get("listen", 0), "listen", str(exc)) from None
        session_settings(pool)
    for pool in pool_file.pools:
        check_sessions(pool, connect=bind)
    for pool in pool_file.pools:
        reason = check_app(pool)
        if reason is not None:
            raise PoolStartError(f"{_where(pool, 'app')}: app: {reason}", 2)
    return open_listeners(pool_file.pools, _from_systemd(pool_file.pools)) if bind else {}


def _from_systemd(pools: tuple[PoolConfig, ...]) -> dict[str, tuple[PoolConfig, socket.socket]]:
    """The sockets systemd passed (socket activation), by the pool whose listen they match."""
    inherited = listen_sockets()
    found = {}
    for pool in pools:
        sock = take_listener(inherited, pool.listen, (pool.name,))
        if sock is not None:
            log.info("[pool %s] listening on %s: socket from systemd", pool.name, pool.listen)
            found[pool.name] = (pool, sock)
    close_unused(inherited, "pool master")
    return found


def open_listeners(pools: tuple[PoolConfig, ...], reuse: dict[str, tuple[PoolConfig, socket.socket]]) -> dict[str, socket.socket]:
    """Listening sockets for ``pools``; a pool whose listen is unchanged keeps its socket from ``reuse``.

    Raises:
        PoolStartError: one cannot be bound; the ones opened here are closed again.
    """
    opened: dict[str, socket.socket] = {}
    result: dict[str, socket.socket] = {}
    try:
        for pool in pools:
            old = reuse.get(pool.name)
            if old is not None and _same_listen(old[0], pool):
                result[pool.name] = old[1]
                continue
            address = parse_address(pool.listen)
            try:
                sock = open_listener(address, pool.listen_backlog)
            except ListenError as exc:
                raise PoolStartError(f"{_where(pool, 'listen')}: listen: {exc}") from None
            opened[pool.name] = result[pool.name] = sock
            if address.is_unix:
                try:
                    os.chmod(address.path, pool.listen_mode)
                except OSError as exc:
                    raise PoolStartError(f"{_where(pool, 'listen.mode')}: listen.mode: {exc.strerror}") from None
    except BaseException:
        for sock in opened.values():
            _close_listener(sock)
        raise
    return result


def _same_listen(old: PoolConfig, new: PoolConfig) -> bool:
    return parse_address(old.listen) == parse_address(new.listen) and old.listen_backlog == new.listen_backlog


def _close_listener(sock: socket.socket) -> None:
    try:
        name = sock.getsockname() if sock.family == socket.AF_UNIX and not is_inherited(sock) else None
    except OSError:
        name = None
    sock.close()
    if name:
        try:
            os.unlink(name)
        except OSError:
            pass


# --- the master ---------------------------------------------------------------------


class _Master:
    """The running master: pool generations, signals, reload and the pm tick over ``Children``."""

    def __init__(self, pool_file: PoolFile, sockets: dict[str, socket.socket],
                 loader: Callable[[str], PoolFile], handler: logging.Handler) -> None:
        self.pool_file = pool_file
        self.loader = loader
        self.handler = handler
        self.sel = selectors.DefaultSelector()
        self.runs: list[PoolRun] = []  # the current generation
        self.old_runs: list[PoolRun] = []  # generations finishing
        self.kids = Children(self.sel, handler)
        self.signals: list[int] = []
        self.exiting = ""  # "", "quit" or "term"
        self.deaths: collections.deque[float] = collections.deque()
        #: A reload waiting for its new generation to start: (old runs, deadline).
        self.pending_retire: tuple[list[PoolRun], float] | None = None
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.sel.register(self.wake_r, selectors.EVENT_READ, self._drain_wakeups)
        for pool in pool_file.pools:
            self.runs.append(self._new_run(pool, sockets[pool.name]))

    def _new_run(self, pool: PoolConfig, sock: socket.socket) -> PoolRun:
        # Twice max_children slots: a child finishing (pm.max_requests, reload)
        # keeps its slot while its replacement takes another.
        return PoolRun(pool, sock, Scoreboard(2 * pool.pm_max_children), PoolPolicy(pool))

    # --- running ----------------------------------------------------------------

    def run(self) -> int:
        for signum in SIGNALS:
            signal.signal(signum, self._on_signal)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        log.info("fpm is running, pid %d", os.getpid())
        for run in self.runs:
            self._start_run(run)
        log.info("ready to handle connections")
        notify("READY=1", self._status())
        try:
            self._loop()
        except Exception:
            # A bug of the master's own: it must not leave orphans serving an
            # unmanaged pool. Stop every child, say why, exit non-zero.
            log.exception("the master failed; stopping every child")
            self.kids.kill_all()
            return 1
        for run in self.runs + self.old_runs:
            self._close_run(run)
        self.kids.last_words()
        log.info("exiting, bye-bye!")
        return 0

    def _status(self) -> str:
        return "STATUS=serving: " + ", ".join(f"[pool {run.config.name}] on {run.config.listen}" for run in self.runs)

    def _loop(self) -> None:
        next_tick = time.monotonic()
        while True:
            now = time.monotonic()
            for key, _ in self.sel.select(max(0.0, min(TICK, next_tick - now))):
                key.data(key.fd)
            self._handle_signals()
            self._reap()
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + TICK
                self._tick(now)
            if self.exiting and not self.kids:
                return

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signals.append(signum)

    def _drain_wakeups(self, fd: int) -> None:
        try:
            while os.read(fd, 4096):
                pass
        except BlockingIOError:
            pass

    def _handle_signals(self) -> None:
        while self.signals:
            signum = self.signals.pop(0)
            if signum == signal.SIGCHLD:
                continue  # _reap runs after every wakeup
            if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
                notify("STOPPING=1", "STATUS=stopping")
            if signum in (signal.SIGTERM, signal.SIGINT):
                log.info("Terminating ...")
                self._stop_all("term")
            elif signum == signal.SIGQUIT:
                if self.exiting:
                    log.info("Terminating ...")
                    self._stop_all("term")
                else:
                    log.info("Finishing ...")
                    self._stop_all("quit")
            elif signum == signal.SIGUSR1:
                self._reopen_logs()
                log.info("error log file re-opened")
            elif signum == signal.SIGUSR2 and not self.exiting:
                log.info("Reloading in progress ...")
                reloading()
                self._reload()
                notify("READY=1", self._status())

    # --- children ------------------------------------------------------------------

    def _start_run(self, run: PoolRun) -> None:
        self._carry_out(run, run.policy.start(time.monotonic()))

    def _spawn(self, run: PoolRun) -> bool:
        return self.kids.spawn(run, self.pool_file.global_, self._master_fds(run))

    def _master_fds(self, run: PoolRun) -> list[int]:
        fds = [self.wake_r, self.wake_w]
        try:
            fds.append(self.sel.fileno())  # type: ignore[attr-defined]
        except (AttributeError, OSError):
            pass
        pending = self.pending_retire[0] if self.pending_retire is not None else []
        for other in self.runs + self.old_runs + pending:
            if other.sock is not run.sock and other.sock.fileno() >= 0:
                fds.append(other.sock.fileno())
        return fds

    def _reap(self) -> None:
        self.kids.reap(self._child_exited)

    def _child_exited(self, child: Child, abnormal: bool) -> None:
        if abnormal:
            self._count_death()
        # A child that recycled (pm.max_requests: finishing, exit 0, not asked to
        # stop) is replaced here, as php-fpm does. Other replacements come from
        # the next tick: a child that dies at start (its app broke since the
        # check) is not forked again in a tight loop.
        run = child.run
        recycled = child.last_state == FINISHING and not child.stopping and not abnormal
        if not run.retiring and not self.exiting:
            self._carry_out(run, run.policy.exited(child.pid, recycled, self._figures(run)))
        if run.retiring and not run.children:
            self._close_run(run)

    def _count_death(self) -> None:
        glob = self.pool_file.global_
        if glob.emergency_restart_threshold <= 0 or glob.emergency_restart_interval <= 0 or self.exiting:
            return
        now = time.monotonic()
        self.deaths.append(now)
        while self.deaths and self.deaths[0] < now - glob.emergency_restart_interval:
            self.deaths.popleft()
        if len(self.deaths) >= glob.emergency_restart_threshold:
            log.warning("failed processes threshold (%d in %g sec) is reached, initiating reload",
                        glob.emergency_restart_threshold, glob.emergency_restart_interval)
            self.deaths.clear()
            self._reload()

    def _quit_timeout(self) -> float | None:
        control = self.pool_file.global_.process_control_timeout
        # The child's own graceful timeout is the same; SIGKILL only if it overruns.
        return control + 2.0 if control > 0 else None

    def _stop_all(self, how: str) -> None:
        if self.pending_retire is not None:
            self._retire(self.pending_retire[0])
            self.pending_retire = None
        self.exiting = how
        for run in self.runs + self.old_runs:
            self._mute(run)
        for child in self.kids.all():
            if how == "term":
                control = self.pool_file.global_.process_control_timeout
                self.kids.signal(child, signal.SIGTERM, "term", control if control > 0 else 1.0)
            else:
                self.kids.signal(child, signal.SIGQUIT, "quit", self._quit_timeout())

    def _reopen_logs(self) -> None:
        if isinstance(self.handler, logging.FileHandler):
            self.handler.acquire()
            try:
                if self.handler.stream is not None:
                    self.handler.stream.close()
                    self.handler.stream = None
            finally:
                self.handler.release()
        self.kids.signal_all(signal.SIGUSR1)

    # --- reload -----------------------------------------------------------------------

    def _reload(self) -> None:
        path = self.pool_file.path
        try:
            new_file = self.loader(path) if path else self.pool_file
            for pool in new_file.pools:
                # No round trip to the store: a reload must not wait on it (or
                # fail) while the running children answer 503 without it.
                check_sessions(pool, connect=False)
                reason = check_app(pool)
                if reason is not None:
                    raise PoolStartError(f"{_where(pool, 'app')}: app: {reason}")
            reuse = {run.config.name: (run.config, run.sock) for run in self.runs}
            sockets = open_listeners(new_file.pools, reuse)
        except (PoolConfigError, PoolStartError) as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            return
        except Exception as exc:  # a reader's own failure must not take the running pools down
            log.error("reload failed, keeping the running configuration: %s: %s", type(exc).__name__, exc)
            return
        if self.pending_retire is not None:
            # A reload during a reload: the previous old generation goes now.
            self._retire(self.pending_retire[0])
            self.pending_retire = None
        old = self.runs
        self.pool_file = new_file
        self.runs = [self._new_run(pool, sockets[pool.name]) for pool in new_file.pools]
        for run in old:
            self._mute(run)
        # Old children keep serving until the new ones accept: then they finish.
        # (Set before forking: new children must not inherit the old sockets.)
        self.pending_retire = (old, time.monotonic() + RELOAD_START_TIMEOUT)
        for run in self.runs:
            self._start_run(run)
        self._check_pending_retire()

    def _check_pending_retire(self) -> None:
        if self.pending_retire is None:
            return
        old, deadline = self.pending_retire
        starting = any(
            run.scoreboard.slot_state(child.slot)[1] == STARTING
            for run in self.runs for child in run.children.values()
        )
        if starting and time.monotonic() < deadline:
            return
        self.pending_retire = None
        self._retire(old)
        log.info("reload done: %s", ", ".join(f"[pool {run.config.name}] {len(run.children)} children" for run in self.runs))

    def _retire(self, old: list[PoolRun]) -> None:
        for run in old:
            run.retiring = True
            self.old_runs.append(run)
            for child in list(run.children.values()):
                self.kids.signal(child, signal.SIGQUIT, "quit", self._quit_timeout())
            if not run.children:
                self._close_run(run)

    def _watch(self, run: PoolRun) -> None:
        """ondemand: wake up when a connection waits in the listen queue (the socket is readable)."""
        if not run.watching:
            self.sel.register(run.sock, selectors.EVENT_READ, lambda fd, run=run: self._on_pending(run))
            run.watching = True

    def _mute(self, run: PoolRun) -> None:
        if run.watching:
            run.watching = False
            self.sel.unregister(run.sock)

    def _close_run(self, run: PoolRun) -> None:
        """Release a generation whose children are gone (retired, or at exit)."""
        self._mute(run)
        if run in self.old_runs:
            self.old_runs.remove(run)
        shared = any(other.sock is run.sock for other in self.runs if other is not run)
        if not shared and run.sock.fileno() >= 0:
            if self.exiting:
                _close_listener(run.sock)  # a unix socket's file goes too, as php-fpm's does
            else:
                run.sock.close()
        try:
            run.scoreboard.close()
        except BufferError:
            pass

    # --- pm -----------------------------------------------------------------------------

    def _figures(self, run: PoolRun) -> list[ChildFigures]:
        """What the scoreboard says of each child of ``run``, for its policy."""
        figures = []
        for child in run.children.values():
            _, state, in_flight, _, _, idle_since = run.scoreboard.slot_state(child.slot)
            figures.append(ChildFigures(child.pid, state, in_flight, idle_since, bool(child.stopping)))
        return figures

    def _tick(self, now: float) -> None:
        self._check_pending_retire()
        self.kids.kill_overdue(now)
        if self.exiting:
            return
        for run in self.runs:
            self._kill_stuck(run, now)
            queue, _ = listen_queue(run.sock, run.config.listen_backlog)
            figures = self._figures(run)
            run.scoreboard.note(active=sum(1 for c in figures if c.counts and c.in_flight > 0), queue=queue)
            self._carry_out(run, run.policy.decide(now, figures))

    def _kill_stuck(self, run: PoolRun, now: float) -> None:
        limit = run.config.request_terminate_timeout
        for child in list(run.children.values()):
            if child.stopping == "stuck":
                continue
            _, state, in_flight, req_start, progress, _ = run.scoreboard.slot_state(child.slot)
            # STUCK: the worker could not end a request at request_terminate_timeout.
            # Backstop: requests in flight and none has finished for longer than that.
            stuck = state == STUCK or (limit > 0 and in_flight > 0 and now - progress > limit + STUCK_GRACE)
            if stuck:
                log.warning("[pool %s] child %d, request running for %.1f s, execution timed out (%g sec), terminating",
                            run.config.name, child.pid, now - req_start, limit)
                self.kids.signal(child, signal.SIGKILL, "stuck", None)

    def _on_pending(self, run: PoolRun) -> None:
        """ondemand: a connection waits in the listen queue."""
        self._carry_out(run, run.policy.pending(time.monotonic(), self._figures(run)))

    def _carry_out(self, run: PoolRun, actions: list[Action]) -> None:
        """Do what ``run``'s policy decided: fork, stop, log, watch the socket."""
        pool = run.config
        for action in actions:
            match action:
                case Spawn(count):
                    for _ in range(count):
                        if not self._spawn(run):
                            break  # no free slot, or fork() failed (logged): the next decision tries again
                case Stop(pid):
                    child = run.children.get(pid)
                    if child is not None:
                        self.kids.signal(child, signal.SIGQUIT, "idle", self._quit_timeout())
                case MaxChildrenReached(max_children):
                    run.scoreboard.note(max_children_reached=True)
                    log.warning("[pool %s] server reached pm.max_children setting (%d), consider raising it",
                                pool.name, max_children)
                case SeemsBusy(spawning, idle, total):
                    log.warning("[pool %s] seems busy (you may need to increase pm.start_servers, or "
                                "pm.min/max_spare_servers), spawning %d children, there are %d idle, and %d total children",
                                pool.name, spawning, idle, total)
                case Watch():
                    if not self.exiting and not run.retiring:
                        self._watch(run)
                case Unwatch():
                    self._mute(run)


def run_pools(pool_file: PoolFile, *, loader: Callable[[str], PoolFile] = load_pool_config) -> int:
    """Run the master of ``pool_file`` until SIGINT/SIGTERM/SIGQUIT; returns the exit status.

    Args:
        pool_file: the pools to serve.
        loader: reads the file again on SIGUSR2 (``load_pool_config``).

    Raises:
        PoolConfigError: a listen address that does not parse.
        PoolStartError: an app does not import, an address cannot be bound, the
            error log or pid file cannot be written. Raised before any child
            runs; nothing is left behind.
    """
    handler = setup_error_log(pool_file.global_, pool_file.path)
    # Children inherit the limit; each serves up to its pool's fcgi.max_conns.
    raise_open_file_limit(max(pool.fcgi_max_conns for pool in pool_file.pools), log=log)
    sockets = check_pools(pool_file, bind=True)
    pid_path = pool_file.global_.pid
    try:
        if pid_path:
            try:
                with open(pid_path, "w") as f:
                    f.write(f"{os.getpid()}\n")
            except OSError as exc:
                raise PoolStartError(f"{pool_file.path or '<config>'}: pid: cannot write {pid_path}: {exc.strerror}") from None
        try:
            master = _Master(pool_file, sockets, loader, handler)
            return master.run()
        finally:
            if pid_path:
                try:
                    os.unlink(pid_path)
                except OSError:
                    pass
    finally:
        for sock in sockets.values():
            if sock.fileno() >= 0:
                _close_listener(sock)

