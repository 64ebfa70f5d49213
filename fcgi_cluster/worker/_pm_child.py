"""What a pool's child process runs after the master forks it.

The child inherits the pool's listening socket and scoreboard. It imports the
app itself (so a reload picks up new code), then serves it with ``serve`` in
its own ``trio.run`` until told to stop:

- SIGTERM / SIGINT: stop now (in-flight requests are cancelled);
- SIGQUIT: stop accepting, finish in-flight requests (within
  ``process_control_timeout``), exit; the same after ``pm.max_requests``;
- SIGUSR1: reopen the log files this process writes (error, access and slow logs).

It never returns: ``os._exit`` ends it, so nothing of the master's state (atexit
hooks, buffered files) runs twice.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._app import AppLoadError, load_app
from ._config import WorkerConfig
from ._pool_config import GlobalConfig, PoolConfig, PoolConfigError
from ._request_logs import reopen_logs
from ._scoreboard import ChildHooks, Scoreboard
from ._status import RequestHooks

if TYPE_CHECKING:
    from ..sessions import SessionSettings

__all__ = ["ChildSpec", "child_main", "prepare_process", "reopen_log_files", "session_settings", "worker_config",
           "EXIT_APP_LOAD"]

log = logging.getLogger("fcgi_cluster.worker")

#: Exit status of a child whose app does not import (EX_CONFIG).
EXIT_APP_LOAD = 78
#: Exit status of a child that failed otherwise (EX_SOFTWARE).
EXIT_FAILED = 70

#: linux/prctl.h: the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1

#: Signals the master handles; a child resets them before anything else.
MASTER_SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


@dataclass
class ChildSpec:
    """Everything a new child needs, prepared by the master before the fork.

    Attributes:
        pool: the pool's config.
        global_: the ``[global]`` config.
        sock: the pool's listening socket.
        scoreboard: the pool generation's scoreboard.
        slot: this child's slot in it.
        close_fds: the master's descriptors the child must not keep (its
            selector, signal pipe, other pools' sockets, other children's pipes).
        stdout / stderr: descriptors for the child's fd 1 and 2 (pipes to the
            master with catch_workers_output, else /dev/null).
        log_handler: the master's error log handler, kept by the child.
        master_pid: the master's pid (the child stops if it dies).
    """

    pool: PoolConfig
    global_: GlobalConfig
    sock: socket.socket
    scoreboard: Scoreboard
    slot: int
    close_fds: list[int]
    stdout: int
    stderr: int
    log_handler: logging.Handler | None
    master_pid: int = 0


def worker_config(pool: PoolConfig, global_: GlobalConfig, scoreboard: Scoreboard | None,
                  sock: socket.socket | None, hooks: RequestHooks | None = None,
                  session: SessionSettings | None = None) -> WorkerConfig:
    """The ``WorkerConfig`` of a pool's child.

    FCGI_MAX_REQS is per child connection (``fcgi.max_reqs``); FCGI_MAX_CONNS
    is the pool's (``fcgi.max_conns``), which also caps the connections one
    child holds, so that one child never takes more than the pool promises.

    Args:
        pool / global_: the pool and the file's ``[global]``.
        scoreboard / sock: the status page shows the whole pool from them
            (None: the child's own figures).
        hooks: the child's scoreboard hooks.
        session: the pool's checked ``session.*`` settings (None: no sessions).
            The child opens its own store client without a round trip to it
            (the master checked it at start), so a child started while the
            store is down serves 503s rather than failing in a loop.
    """
    control = global_.process_control_timeout
    extra: dict[str, Any] = {}
    if hooks is not None:
        extra["hooks"] = hooks
    if scoreboard is not None:
        extra["status_source"] = functools.partial(scoreboard.status, pool, sock)
    return pool.worker_config(
        global_,
        # 0 = php-fpm's "no limit": a day is as good as forever for a request.
        graceful_timeout=control if control > 0 else 86400.0,
        session=session,
        session_check=False,
        **extra,
    )


def session_settings(pool: PoolConfig) -> SessionSettings | None:
    """The pool's ``session.*`` keys checked (None when it has none: sessions off).

    Raises:
        PoolConfigError: a bad key or value, naming its file and line.
    """
    if not pool.session:
        return None
    from ..sessions import SessionConfigError, parse_session_settings

    try:
        return parse_session_settings(pool.session)
    except SessionConfigError as exc:
        # A reason about keys together (save_path missing for redis) names a
        # key that may not be in the file: point at the handler's line then.
        line = pool.lines.get(exc.key) or pool.lines.get("session.save_handler") \
            or min((pool.lines[k] for k in pool.session if k in pool.lines), default=0)
        raise PoolConfigError(pool.path, line, exc.key, exc.reason) from None


def prepare_process(pool: PoolConfig) -> None:
    """The pool's environment and working directory (``clear_env``, ``env[X]``, ``chdir``)."""
    if pool.clear_env:
        os.environ.clear()
    os.environ.update(pool.env)
    if pool.chdir:
        os.chdir(pool.chdir)


def reopen_log_files() -> None:
    """Close every logging file of this process; each reopens on its next line (SIGUSR1)."""
    handlers = [logging.getLogger().handlers]
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            handlers.append(logger.handlers)
    for group in handlers:
        for handler in group:
            if isinstance(handler, logging.FileHandler):
                handler.acquire()
                try:
                    if handler.stream is not None:
                        handler.stream.close()
                        handler.stream = None  # FileHandler.emit opens it again
                finally:
                    handler.release()


def child_main(spec: ChildSpec) -> None:
    """Run in the forked child: set the process up, import the app, serve. Never returns."""
    status = EXIT_FAILED
    try:
        status = _child(spec)
    except BaseException:  # the child's last word: never let it unwind into the master's code
        try:
            log.exception("[pool %s] child %d failed", spec.pool.name, os.getpid())
        except BaseException:
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            pass
        os._exit(status)


def _child(spec: ChildSpec) -> int:
    early: list[int] = []
    # Signals were blocked by the master around fork(): replace its handlers
    # before letting them in, and remember any that came early.
    signal.set_wakeup_fd(-1)
    for signum in MASTER_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1):
        signal.signal(signum, lambda s, f: early.append(s))
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    _die_with_master(spec.master_pid)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())

    for fd in spec.close_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    if spec.log_handler is not None and isinstance(spec.log_handler, logging.StreamHandler) \
            and not isinstance(spec.log_handler, logging.FileHandler):
        # error_log = "-": our log lines keep going to the master's stderr
        # even though fd 2 becomes the app's pipe (or /dev/null).
        spec.log_handler.setStream(open(os.dup(2), "w", buffering=1, closefd=True))
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(spec.stdout, 1)
    os.dup2(spec.stderr, 2)
    for fd in {null, spec.stdout, spec.stderr} - {0, 1, 2}:
        os.close(fd)
    # The app's print() lines reach the master line by line, not in 8 KiB blocks.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)
        except (AttributeError, ValueError):
            pass

    pool = spec.pool
    prepare_process(pool)
    try:
        app = load_app(pool.app)
    except AppLoadError as exc:
        log.error("[pool %s] child %d: %s", pool.name, os.getpid(), exc)
        return EXIT_APP_LOAD
    hooks = ChildHooks(spec.scoreboard, spec.slot, pool.pm_max_requests)
    # Checked by the master before this child was forked; parsed again here
    # (cheap) rather than carried, so a child only needs the pool's config.
    config = worker_config(pool, spec.global_, spec.scoreboard, spec.sock, hooks, session_settings(pool))
    return _serve(app, spec.sock, config, hooks, early)


def _die_with_master(master_pid: int) -> None:
    """Get SIGTERM if the master dies without stopping us (SIGKILL, a crash): no orphan keeps serving."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return  # not Linux: a master killed outright leaves its children, as php-fpm's does
    if os.getppid() != master_pid:  # it died before the prctl
        os.kill(os.getpid(), signal.SIGTERM)


def _serve(app: Any, sock: socket.socket, config: WorkerConfig, hooks: ChildHooks, early: list[int]) -> int:
    import trio

    from ._server import serve

    async def main() -> None:
        stop = trio.Event()

        def retire() -> None:
            hooks.finishing()
            stop.set()

        # The worker calls the hooks in this trio thread (never an app thread).
        hooks.on_retire = retire
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1) as signals:
            async with trio.open_nursery() as nursery:

                async def serving(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                    await serve(app, sock, config, stop=stop, task_status=task_status)
                    nursery.cancel_scope.cancel()

                await nursery.start(serving)
                hooks.ready()

                def handle(signum: int) -> None:
                    if signum in (signal.SIGTERM, signal.SIGINT):
                        nursery.cancel_scope.cancel()
                    elif signum == signal.SIGQUIT:
                        retire()
                    elif signum == signal.SIGUSR1:
                        reopen_log_files()
                        reopen_logs()  # the access and slow logs

                for signum in early:
                    handle(signum)
                async for signum in signals:
                    handle(signum)

    trio.run(main)
    return 0
