"""Servers set at run time (drain, down, up, weight, add, remove), over the cluster file.

Sans-IO: ``ServerStates`` holds what control commands set and applies it to a
``ClusterConfig``, giving the configuration the front-end then serves (as a
reload would: requests in flight finish under the one they began with). It
is kept apart from the file, so a SIGHUP that re-reads the file keeps it,
as HAProxy's server-state file keeps servers set from its stats socket.

Commands, one line of words (``execute``):

* ``drain UPSTREAM ADDRESS``: no new request goes to the server; those in
  flight finish, connections and health checks go on. What a rolling
  deploy does before it stops a worker.
* ``down UPSTREAM ADDRESS``: the server is out: no request, and its
  connections close as their requests end; no health check.
* ``up UPSTREAM ADDRESS``: back to what the file says, weight kept.
* ``weight UPSTREAM ADDRESS N``: its share, 1 to ``MAX_WEIGHT``.
* ``add UPSTREAM ADDRESS [WEIGHT]``: a server the file does not list.
* ``remove UPSTREAM ADDRESS``: leave the server out entirely.

A state naming a server the file no longer lists is kept but has no effect.
"""

from __future__ import annotations

import dataclasses
import json
import time
import typing

from ._balancer import MAX_WEIGHT, Balancer, ServerSpec

__all__ = ["ControlError", "ServerStates", "STATES"]

#: The states a server can be set to.
STATES = ("up", "drain", "down")


class ControlError(Exception):
    """A control command that cannot be carried out; ``status`` is its HTTP status (400 or 404)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ServerStates:
    """What control commands set, per upstream and server address."""

    def __init__(self) -> None:
        #: (upstream, address) -> "drain" or "down" (absent: as the file says).
        self.states: dict[tuple[str, str], str] = {}
        #: (upstream, address) -> weight set by ``weight``.
        self.weights: dict[tuple[str, str], int] = {}
        #: (upstream, address) -> weight, for servers the file does not list.
        self.added: dict[tuple[str, str], int] = {}
        self.removed: set[tuple[str, str]] = set()
        #: (upstream, address) -> when (time.time()) its state was set.
        self.since: dict[tuple[str, str], float] = {}

    # -- persistence ------------------------------------------------------------

    def to_json(self) -> str:
        """The states as a JSON document (the server-state file)."""
        def pairs(table: typing.Mapping[tuple[str, str], object]) -> list[list[object]]:
            return [[up, address, value] for (up, address), value in sorted(table.items())]

        return json.dumps({
            "states": pairs(self.states), "weights": pairs(self.weights), "added": pairs(self.added),
            "removed": sorted([up, address] for up, address in self.removed),
            "since": pairs(self.since),
        }, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ServerStates:
        """Read ``to_json``'s document back.

        Raises:
            ValueError: the text is not such a document.
        """
        data = json.loads(text)
        states = cls()
        try:
            states.states = {(str(u), str(a)): str(v) for u, a, v in data["states"] if v in STATES[1:]}
            states.weights = {(str(u), str(a)): int(v) for u, a, v in data["weights"]}
            states.added = {(str(u), str(a)): int(v) for u, a, v in data["added"]}
            states.removed = {(str(u), str(a)) for u, a in data["removed"]}
            states.since = {(str(u), str(a)): float(v) for u, a, v in data.get("since", ())}
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a server-state document: {exc!r}") from None
        return states

    def since_of(self, upstream: str, address: str) -> float | None:
        """When (``time.time()``) the server's state was last set by a command; None for never."""
        return self.since.get((upstream, address))

    def copy(self) -> ServerStates:
        return ServerStates.from_json(self.to_json())

    # -- commands ---------------------------------------------------------------

    def execute(self, line: str, config: typing.Any) -> str:
        """Carry out one command against the file's ``config``; returns what was done.

        Raises:
            ControlError: an unknown command (400), a bad argument (400), an
                unknown upstream or server (404), or a change the upstream
                cannot take (400: e.g. removing its last primary server).
        """
        words = line.split()
        if not words:
            raise ControlError(400, "empty command; expected one of: drain, down, up, weight, add, remove")
        verb, args = words[0].lower(), words[1:]
        arity = {"drain": (2,), "down": (2,), "up": (2,), "weight": (3,), "add": (2, 3), "remove": (2,)}
        if verb not in arity:
            raise ControlError(400, f"unknown command {verb!r}; expected one of: {', '.join(arity)}")
        if len(args) not in arity[verb]:
            usage = {"weight": " N", "add": " [WEIGHT]"}.get(verb, "")
            raise ControlError(400, f"usage: {verb} UPSTREAM ADDRESS{usage}")
        upstream, address = args[0], args[1]
        if upstream not in config.upstreams:
            raise ControlError(404, f"no upstream {upstream!r} (there are: {', '.join(sorted(config.upstreams))})")
        key = (upstream, address)
        listed = address in {spec.address for spec in config.upstreams[upstream].servers}
        known = (listed or key in self.added) and key not in self.removed
        trial = self.copy()
        if verb == "add":
            if known:
                raise ControlError(400, f"upstream {upstream!r} already has server {address}")
            trial.removed.discard(key)
            if not listed:
                trial.added[key] = _weight(args[2]) if len(args) == 3 else 1
        elif not known:
            raise ControlError(404, f"upstream {upstream!r} has no server {address}")
        elif verb == "remove":
            trial.added.pop(key, None)
            trial.states.pop(key, None)
            trial.weights.pop(key, None)
            if listed:
                trial.removed.add(key)
        elif verb == "weight":
            trial.weights[key] = _weight(args[2])
        elif verb == "up":
            trial.states.pop(key, None)
        else:
            trial.states[key] = verb
        if verb in STATES:
            trial.since[key] = time.time()
        elif verb == "remove":
            trial.since.pop(key, None)
        # Would the upstream still stand? (not every server removed, say)
        try:
            Balancer(trial.servers(upstream, config.upstreams[upstream]), config.upstreams[upstream].balance)
        except ValueError as exc:
            raise ControlError(400, f"upstream {upstream!r}: {exc}") from None
        self.__dict__.update(trial.__dict__)
        return f"{verb} {upstream} {address}: done"

    # -- applying ---------------------------------------------------------------

    def state_of(self, upstream: str, address: str) -> str:
        """The state set for a server: "up", "drain" or "down"."""
        return self.states.get((upstream, address), "up")

    def servers(self, name: str, upstream: typing.Any) -> tuple[ServerSpec, ...]:
        """An upstream's servers as the file lists them, with what was set applied."""
        out = []
        for spec in upstream.servers:
            key = (name, spec.address)
            if key in self.removed:
                continue
            out.append(self._applied(key, spec))
        for (up, address), weight in self.added.items():
            if up == name and address not in {spec.address for spec in upstream.servers}:
                out.append(self._applied((up, address), ServerSpec(address, weight=weight)))
        return tuple(out)

    def _applied(self, key: tuple[str, str], spec: ServerSpec) -> ServerSpec:
        changes: dict[str, object] = {}
        if key in self.weights:
            changes["weight"] = self.weights[key]
        if key in self.states:
            changes[self.states[key]] = True  # "drain" or "down"
        return dataclasses.replace(spec, **changes) if changes else spec

    def apply(self, config: typing.Any) -> typing.Any:
        """``config`` with every upstream's servers as set (the same object when nothing applies)."""
        upstreams = {}
        changed = False
        for name, upstream in config.upstreams.items():
            servers = self.servers(name, upstream)
            if servers != tuple(upstream.servers):
                changed = True
                upstream = dataclasses.replace(upstream, servers=servers)
            upstreams[name] = upstream
        return dataclasses.replace(config, upstreams=upstreams) if changed else config


def _weight(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_WEIGHT:
        raise ControlError(400, f"weight must be an integer from 1 to {MAX_WEIGHT}, got {text!r}")
    return int(text)
