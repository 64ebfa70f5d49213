"""Running the front-end: listening sockets, processes, signals, shutdown.

``run_frontend(config)`` binds every listening address before anything else
(so a port in use fails at once, with one line), then serves:

* ``processes = 1``: in this process.
* ``processes = N``: N child processes, like nginx ``worker_processes``. Each
  child gets its own socket per address, all bound with SO_REUSEPORT, so the
  kernel spreads new connections evenly over them (one shared socket would
  let whichever process wakes first take most of them). The parent holds
  the sockets, restarts a child that dies, and forwards signals.

Signals: SIGTERM or SIGINT stops accepting, lets requests in flight finish for
up to ``SHUTDOWN_GRACE`` seconds, then closes everything. A second signal
stops at once.

SIGHUP reloads: ``reload_config()`` (the ``-c`` file read again) is checked
and swapped in for new requests (``FrontendServer.reload``); a file that fails
its checks is logged (file, line, key) and the running configuration stays.
With N processes the parent reads the file too (a child it restarts later
starts with the new one) and forwards the signal; every child reloads. A
SIGHUP that arrives while starting (before the serving loop listens for it)
is remembered and applied once serving.

systemd (``_systemd``): listeners passed by socket activation are used
instead of binding (one socket shared by the N processes), and READY=1,
RELOADING=1 and STOPPING=1 go to ``$NOTIFY_SOCKET`` from the process systemd
started (the parent with N processes).

The control listener (``[frontend] control``) is bound here too and served
by one process: the first child when there are N. A command it runs is
written to the server-state file (``server_state_file``, else a file of the
parent's own under $TMPDIR, removed at exit), and SIGUSR2 to the parent,
which forwards it, makes every child read that file: one process answers
commands, every process applies them, and a child restarted later starts
with them.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import signal
import socket
import sys
import tempfile
import time
import typing

import trio

from .._address import Address, bound_address, parse_address
from .._limits import keep_buffers_on_the_heap, raise_open_file_limit
from .._systemd import Inherited, close_unused, listen_sockets, notify, reloading, take_listener
from ._config import ConfigError
from ._server import serve_frontend
from ._status import status
from ._status_share import StatusShare

__all__ = ["run_frontend", "bind_listeners", "BindError", "SHUTDOWN_GRACE"]

log = logging.getLogger("fcgi_cluster.frontend")

#: Seconds requests in flight may run on after SIGTERM. nginx waits for them
#: without limit (worker_shutdown_timeout unset); a bound keeps a stuck
#: request from holding a deploy hostage.
SHUTDOWN_GRACE = 10.0

#: nginx's default listen backlog on Linux is 511.
BACKLOG = 511

#: A child that dies sooner than this after its start is not restarted
#: right away, so a crash at startup does not become a fork loop.
RESTART_DELAY = 1.0


class BindError(OSError):
    """A listening address cannot be bound; the message names it."""


def _bind_one(address: Address, *, reuse_port: bool, port: int | None = None) -> socket.socket:
    if address.path is not None:
        try:
            os.unlink(address.path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: object = address.path
    else:
        assert address.host is not None
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        target = (address.host, address.port if port is None else port)
    try:
        sock.bind(target)  # type: ignore[arg-type]
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise BindError(exc.errno, f"cannot listen on {address}: {reason}") from None
    return sock


def bind_listeners(addresses: list[str], copies: int = 1,
                   inherited: list[Inherited] | None = None) -> list[list[socket.socket]]:
    """Bind every address ``copies`` times; result[i] is the sockets of process i.

    With more than one copy, sockets use SO_REUSEPORT; a port 0 is resolved
    by the first copy and reused by the others. An address whose socket
    systemd passed (``inherited``, see ``_systemd.take_listener``) is not
    bound: that one socket is shared by every process, so that connections
    queue on it across a restart.

    Raises:
        BindError: an address cannot be bound (the sockets bound so far are closed).
        ValueError: an address is not an address.
    """
    per_process: list[list[socket.socket]] = [[] for _ in range(copies)]
    try:
        for text in addresses:
            address = parse_address(text)
            given = take_listener(inherited, text) if inherited else None
            if given is not None:
                log.info("listening on %s: socket from systemd", text)
                for group in per_process:
                    group.append(given)
                continue
            if address.path is not None and copies > 1:
                # Unix sockets have no SO_REUSEPORT balancing: share one.
                sock = _bind_one(address, reuse_port=False)
                for group in per_process:
                    group.append(sock)
                continue
            first = _bind_one(address, reuse_port=copies > 1)
            per_process[0].append(first)
            port = first.getsockname()[1]
            for group in per_process[1:]:
                group.append(_bind_one(address, reuse_port=True, port=port))
    except BaseException:
        for group in per_process:
            for sock in group:
                sock.close()
        raise
    return per_process


def load_new_config(reload_config: typing.Callable[[], object] | None) -> object | None:
    """The configuration a SIGHUP asks for, or None (logged) when there is none or it fails its checks."""
    if reload_config is None:
        log.warning("SIGHUP: no configuration file to reload (started without -c)")
        return None
    try:
        return reload_config()
    except ConfigError as exc:
        log.error("SIGHUP: %s; the running configuration stays", exc)
    except OSError as exc:
        log.error("SIGHUP: cannot read the configuration: %s; the running configuration stays", exc)
    return None


def _reload(server: typing.Any, reload_config: typing.Callable[[], object] | None) -> None:
    config = load_new_config(reload_config)
    if config is None:
        return
    kept = server.reload(config)
    if kept:
        log.warning("SIGHUP: %s changed: the front-end must be restarted for %s; the rest is applied",
                    ", ".join(kept), "them" if len(kept) > 1 else "it")
    log.info("SIGHUP: configuration reloaded (%d upstreams, %d routes)", len(server.upstreams), len(server.routes))


class _Control(typing.NamedTuple):
    """The control listener of the process that serves it, and where the states are shared."""

    sock: socket.socket | None
    state_file: str | None
    #: Tell the sibling processes that the states changed (None: there are none).
    tell: typing.Callable[[], None] | None = None


#: A SIGHUP that came while starting, taken once serving (``_remember_hup``).
_early_hup: list[int] = []


def _remember_hup(signum: int, _frame: object) -> None:
    _early_hup.append(signum)


def _status(server: typing.Any) -> str:
    return f"STATUS=serving: {len(server.upstreams)} upstreams, {len(server.routes)} routes"


async def _serve_until_signalled(config: object, sockets: list[socket.socket],
                                 reload_config: typing.Callable[[], object] | None = None,
                                 control: _Control = _Control(None, None)) -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            functools.partial(serve_frontend, control=control.sock, state_file=control.state_file), config, sockets)
        server.on_states_changed = control.tell
        if control.tell is not None:  # N processes: their status goes to the one with the listener
            server.status_share = StatusShare(control.state_file)
            if control.sock is None:
                nursery.start_soon(server.status_share.publish, lambda: status(server, server.states))
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2) as signals:
            notify("READY=1", _status(server))
            if _early_hup:
                _early_hup.clear()
                log.info("SIGHUP came while starting: reloading now")
                reloading()
                _reload(server, reload_config)
                notify("READY=1", _status(server))
            async for signum in signals:
                if signum == signal.SIGHUP:
                    reloading()
                    _reload(server, reload_config)
                    notify("READY=1", _status(server))
                    continue
                if signum == signal.SIGUSR2:
                    server.reload_states()
                    continue
                log.info("%s: stopping (requests in flight get %g s)", signal.Signals(signum).name, SHUTDOWN_GRACE)
                notify("STOPPING=1", "STATUS=stopping")
                break
            server.stop_accepting()
            with trio.move_on_after(SHUTDOWN_GRACE):
                async with trio.open_nursery() as waiters:
                    waiters.start_soon(server.wait_idle)

                    async def second_signal() -> None:
                        async for signum in signals:
                            if signum not in (signal.SIGHUP, signal.SIGUSR2):
                                waiters.cancel_scope.cancel()
                                return

                    waiters.start_soon(second_signal)
                    await server.wait_idle()
                    waiters.cancel_scope.cancel()
        nursery.cancel_scope.cancel()


def _child(config: object, sockets: list[socket.socket], reload_config: typing.Callable[[], object] | None,
           control: _Control = _Control(None, None)) -> int:
    try:
        trio.run(_serve_until_signalled, config, sockets, reload_config, control)
    except KeyboardInterrupt:
        pass
    except BaseException:
        log.exception("front-end process failed")
        return 1
    return 0


def run_frontend(config: object, *, ready: object = None,
                 reload_config: typing.Callable[[], object] | None = None, pid_file: str | None = None) -> int:
    """Serve a ``ClusterConfig``'s front-end until SIGTERM/SIGINT; returns the exit status.

    Args:
        config: the ``ClusterConfig``.
        ready: called with the list of bound addresses (text) once listening.
        reload_config: returns the configuration a SIGHUP switches to (raises
            ``ConfigError`` for a bad one); None: SIGHUP is logged and ignored.
        pid_file: where to write this (the parent) process's id, removed at exit.

    Raises:
        BindError: a listening address cannot be bound.
    """
    fe = config.frontend  # type: ignore[attr-defined]
    processes = fe.processes if isinstance(fe.processes, int) else (os.cpu_count() or 1)
    # Every client may hold an upstream connection too, in the worst case.
    raise_open_file_limit(2 * fe.max_connections, log=log)
    keep_buffers_on_the_heap()
    # Until the serving loop listens for it, a SIGHUP is remembered, not fatal.
    signal.signal(signal.SIGHUP, _remember_hup)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    inherited = listen_sockets()
    groups = bind_listeners(list(fe.listen), processes, inherited)
    close_unused(inherited, "front-end")
    parent_pid = os.getpid()
    control_sock = None
    if fe.control:
        try:
            control_sock = bind_listeners([fe.control])[0][0]
        except BaseException:
            for group in groups:
                for sock in group:
                    sock.close()
            raise
        log.info("control listener on %s", bound_address(control_sock))
    bound = [bound_address(sock) for sock in groups[0]]
    for text in bound:
        log.info("listening on %s (%d process%s)", text, processes, "" if processes == 1 else "es")
    if callable(ready):
        ready(bound)
    if pid_file:
        with open(pid_file, "w") as file:
            file.write(f"{os.getpid()}\n")
    try:
        if processes == 1:
            return _child(config, groups[0], reload_config, _Control(control_sock, None))
        state_file = fe.server_state_file or os.path.join(tempfile.gettempdir(), f"fcgi-cluster-{os.getpid()}.state")
        own_file = not fe.server_state_file
        parent = os.getpid()
        control = _Control(control_sock, state_file, lambda: os.kill(parent, signal.SIGUSR2))
        try:
            return _supervise(config, groups, reload_config, control)
        finally:
            if os.getpid() == parent:
                for pid in _reported(state_file):  # children killed before removing theirs
                    StatusShare(state_file).remove(pid)
                if own_file:
                    try:
                        os.unlink(state_file)
                    except OSError:
                        pass
    finally:
        if control_sock is not None:
            control_sock.close()
            path = parse_address(fe.control).path
            if path is not None and os.getpid() == parent_pid:
                try:
                    os.unlink(path)  # a socket nobody serves would only mislead ctl
                except OSError:
                    pass
        if pid_file:
            try:
                os.unlink(pid_file)
            except OSError:
                pass


def _reported(state_file: str) -> list[int]:
    """The pids whose status reports lie beside ``state_file``."""
    import glob

    pids = []
    for path in glob.glob(glob.escape(state_file) + ".status.*"):
        suffix = path.rsplit(".", 1)[1]
        if suffix.isdigit():
            pids.append(int(suffix))
    return pids


_FORWARDED = {signal.SIGHUP, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT}


def _supervise(config: object, groups: list[list[socket.socket]],
               reload_config: typing.Callable[[], object] | None, control: _Control) -> int:
    children: dict[int, int] = {}  # pid -> slot
    started: dict[int, float] = {}
    stopping = False

    def spawn(slot: int) -> None:
        # Blocked across the fork: a signal sent to the new child before it has
        # its own handler waits for it (not the parent's handler, copied), and
        # a SIGTERM to the parent is handled once the child is in ``children``.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            _early_hup.clear()
            signal.signal(signal.SIGHUP, _remember_hup)
            signal.signal(signal.SIGUSR2, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            # The parent speaks to systemd for the whole front-end.
            os.environ.pop("NOTIFY_SOCKET", None)
            status = 1
            try:
                # One child answers control commands; each reads the states.
                mine = control if slot == 0 else control._replace(sock=None)
                status = _child(config, groups[slot], reload_config, mine)
            finally:
                os._exit(status)
        children[pid] = slot
        started[slot] = time.monotonic()
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping, config
        if signum == signal.SIGUSR2:  # a child ran a control command: every child reads the states
            for pid in list(children):
                try:
                    os.kill(pid, signal.SIGUSR2)
                except ProcessLookupError:
                    pass
            return
        if signum == signal.SIGHUP:
            if stopping:
                return
            reloading()
            # Children restarted from now on start with the new file; a
            # bad one is logged here and by each child.
            config = load_new_config(reload_config) or config
            for pid in list(children):
                try:
                    os.kill(pid, signal.SIGHUP)
                except ProcessLookupError:
                    pass
            notify("READY=1", f"STATUS=serving: {len(children)} processes")
            return
        if not stopping:
            notify("STOPPING=1", "STATUS=stopping")
        for pid in list(children):
            try:
                os.kill(pid, signum if not stopping else signal.SIGKILL)
            except ProcessLookupError:
                pass
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    signal.signal(signal.SIGUSR2, on_signal)
    for slot in range(len(groups)):
        if stopping:  # a SIGTERM while starting: the rest are not started
            break
        spawn(slot)
    if _early_hup:
        _early_hup.clear()
        on_signal(signal.SIGHUP, None)  # came while starting: the children get it too
    # The sockets listen already: connections queue until a child accepts.
    notify("READY=1", f"STATUS=serving: {len(groups)} processes")
    status = 0
    while children:
        try:
            pid, wait_status = os.wait()
        except ChildProcessError:
            break
        slot = children.pop(pid, None)
        if slot is None or stopping:
            continue
        code = os.waitstatus_to_exitcode(wait_status)
        log.error("front-end process %d exited with status %d; starting another", pid, code)
        if time.monotonic() - started.get(slot, 0.0) < RESTART_DELAY:
            time.sleep(RESTART_DELAY)
        if not stopping:
            spawn(slot)
    for group in groups:
        for sock in group:
            sock.close()
    sys.stdout.flush()
    return status
