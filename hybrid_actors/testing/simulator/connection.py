"""One accepted WebSocket as the exchange sees it: state, a bounded outbox, a drop request.

No I/O here: ``server.py`` runs the reader and writer tasks around it. ``push`` never
blocks and never encodes: the same ``str`` goes to every subscriber.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

import attrs
import trio

from .faults import DropMode
from .observe import ConnectionInfo


@attrs.define(eq=False)
class Connection:
    conn_id: str
    kind: str
    path: str
    query: str
    peer: tuple[str, int]
    opened_at: float
    serial: int
    outbox_limit: int
    #: called once when the outbox overflows (the exchange cuts the connection)
    on_overflow: Callable[[Connection], None]
    max_active_time: float | None = None
    #: private: last ping received or push sent (trio time), for the idle cut
    last_activity: float = 0.0
    topics: dict[str, None] = attrs.Factory(dict)
    authenticated: bool = False
    half_open: bool = False
    closed_at: float | None = None
    close_cause: str | None = None
    #: the mode of the last drop request (None: none yet)
    drop_mode: DropMode | None = None
    drop_code: int = 1000
    drop_reason: str | None = None
    drop_cause: str | None = None
    #: the byte stream below the WebSocket (has ``freeze()``); set by the server
    transport: Any = None
    _drop_event: trio.Event = attrs.Factory(trio.Event)
    _outbox: deque[str | bytes] = attrs.Factory(deque)
    _wake: trio.Event = attrs.Factory(trio.Event)
    _writer_waiting: bool = False

    # --- outgoing -------------------------------------------------------------------------------
    def push(self, frame: str | bytes) -> None:
        """Queue a frame; dropped once a drop is requested or the socket is half-open."""
        if self.drop_mode is not None or self.closed_at is not None:
            return
        if len(self._outbox) >= self.outbox_limit:
            self.on_overflow(self)
            return
        self._outbox.append(frame)
        if self._writer_waiting:
            self._writer_waiting = False
            self._wake.set()

    async def next_frame(self) -> str | bytes:
        while not self._outbox:
            self._wake = trio.Event()
            self._writer_waiting = True
            await self._wake.wait()
        return self._outbox.popleft()

    @property
    def queued(self) -> int:
        return len(self._outbox)

    # --- lifecycle ------------------------------------------------------------------------------
    def request_drop(self, mode: DropMode, *, code: int = 1000, reason: str | None = None,
                     cause: str | None = None) -> None:
        """Ask the serving task to end (or freeze) this socket. Later requests override earlier ones,
        except that a half-open socket cannot be closed politely (nobody reads its close reply)."""
        if self.closed_at is not None:
            return
        if self.half_open and mode is DropMode.CLOSE:
            mode = DropMode.RESET
        self.drop_mode, self.drop_code, self.drop_reason = mode, code, reason
        self.drop_cause = cause or mode.value
        if mode is DropMode.HALF_OPEN:
            self.half_open = True
            if self.transport is not None:  # at once: not even a protocol-level pong may slip out
                self.transport.freeze()
        self._outbox.clear()
        self._drop_event.set()

    async def wait_drop(self) -> DropMode:
        await self._drop_event.wait()
        assert self.drop_mode is not None
        return self.drop_mode

    def rearm_drop(self) -> None:
        """After entering half-open: wait for the next request (e.g. a reset)."""
        self._drop_event = trio.Event()

    def info(self) -> ConnectionInfo:
        return ConnectionInfo(
            conn_id=self.conn_id, kind=self.kind, path=self.path, query=self.query, peer=self.peer,
            opened_at=self.opened_at, closed_at=self.closed_at, topics=frozenset(self.topics),
            authenticated=self.authenticated, half_open=self.half_open, max_active_time=self.max_active_time,
            close_cause=self.close_cause,
        )
