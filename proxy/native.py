"""The native data plane: a C thread (proxy/_relay.c) that relays established sessions.

The asyncio server (proxy/server.py) is the control plane: it accepts, negotiates TLS, logs
clients in, runs engine calls. Once a session is between exchanges it hands the two sockets to
the relay thread, which moves bytes between them with epoll, frame by frame, and never enters
Python for ordinary SQL. When a frame needs the session (a Query or Parse naming an iasql
function, a use of a statement the proxy rewrote), or a socket ends, the thread stops relaying
that session and hands it back with the bytes it had not relayed; the asyncio side carries on
from there, and hands it over again at the next quiet moment.

Without a C compiler at install (or off Linux) `proxy._relay` is missing, AVAILABLE is False,
and every session stays on the asyncio relay.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Protocol

try:
    from proxy import _relay  # type: ignore[attr-defined]
except ImportError:  # built without a C compiler: the asyncio relay does everything
    _relay = None

log = logging.getLogger("iasql.proxy")
AVAILABLE = _relay is not None
BUFFER_SIZE: int = _relay.BUFFER_SIZE if _relay is not None else 0  # bytes, each way, per session
# Unanswered Describes of statements the thread can hold for a session (see Handback.describes)
MAX_DESCRIBES: int = _relay.MAX_DESCRIBES if _relay is not None else 0
MODES = ("auto", "native", "python")  # iasql serve --relay


@dataclass(frozen=True, slots=True)
class Handback:
    """A session the relay thread no longer relays, and what the asyncio side needs to go on."""

    ended: bool  # a socket ended or failed: never adopted again; the transports find the end
    to_server: bytes  # relayed by the walk, not yet sent: to be sent first
    to_client: bytes
    client_rest: bytes  # read, not walked: the session's to look at
    server_rest: bytes
    client_skip: int  # bytes of a frame half relayed, still to come
    server_skip: int
    syncs: int  # Queries and Syncs awaiting a ReadyForQuery
    # Describes of statements awaiting their answer, oldest first: how many of `syncs` were
    # sent before each (Session.native_state)
    describes: tuple[int, ...]
    status: bytes  # the last ReadyForQuery's


class Owner(Protocol):
    def native_returned(self, handback: Handback) -> None: ...

    def close(self) -> None: ...


def Walk(
    needles: tuple[bytes, ...],
    names: tuple[bytes, ...],
    max_message: int,
    capacity: int,
    syncs: int,
    describes: tuple[int, ...],
    status: bytes,
) -> Any:
    """The relay thread's walk over Python bytes, for tests: .client(data) and .server(data)
    return (bytes that may be relayed, stop), .state() (client_skip, server_skip, syncs,
    describes, status)."""
    assert _relay is not None
    return _relay.Walk(needles, names, max_message, capacity, syncs, describes, status)


class NativePlane:
    """The relay thread, and which connection owns each session it relays."""

    def __init__(self, needles: tuple[bytes, ...], max_message: int) -> None:
        assert _relay is not None, "proxy._relay is not built"
        self._relay = _relay.Relay(needles, max_message)
        self._owners: dict[int, Owner] = {}
        self.handbacks = 0  # sessions the thread handed back so far
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._relay.notify_fd, self._returned)

    @property
    def sessions(self) -> int:
        """How many sessions the thread relays now."""
        return len(self._owners)

    def adopt(
        self,
        owner: Owner,
        client_fd: int,
        server_fd: int,
        names: tuple[bytes, ...],
        syncs: int,
        describes: tuple[int, ...],
        status: bytes,
    ) -> int:
        """The thread relays these sockets from now on; the caller must neither read nor write
        them until it is handed back (Owner.native_returned) or calls release(). OSError: not
        adopted."""
        handle: int = self._relay.adopt(client_fd, server_fd, names, syncs, describes, status)
        self._owners[handle] = owner
        return handle

    def release(self, handle: int) -> Handback | None:
        """Takes a session back at once (its connection closes); None if it was already."""
        self._owners.pop(handle, None)
        state = self._relay.release(handle)
        return None if state is None else Handback(*state)

    def _returned(self) -> None:
        # Every owner first: a callback may adopt a session again, into a slot freed here.
        returned = [(self._owners.pop(handle, None), state) for handle, state in self._relay.take()]
        self.handbacks += len(returned)
        for owner, state in returned:
            if owner is None:
                continue
            try:
                owner.native_returned(Handback(*state))
            except Exception:  # one connection's bug must not strand the others in the list
                log.exception("a session handed back by the native relay failed")
                owner.close()

    def close(self) -> None:
        """Stops the thread; call after every session was released."""
        self._loop.remove_reader(self._relay.notify_fd)
        self._relay.close()
