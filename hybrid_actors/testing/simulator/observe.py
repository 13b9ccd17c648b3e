"""What happened: frozen records of connections, requests, pings, auth, REST calls and frames.

Every state change of the simulator calls :meth:`Observer.changed`, which sets the
current ``trio.Event`` and replaces it, so :meth:`Observer.wait_until` re-evaluates its
predicate exactly when something may have changed: no polling, no sleeps.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Callable, Iterable, TypeVar

import attrs
import orjson
import trio

from .positions import Position

if TYPE_CHECKING:
    from .connection import Connection
    from .exchange import Exchange

T = TypeVar("T")


@attrs.frozen
class ConnectionInfo:
    conn_id: str
    #: linear / inverse / spot / option / private
    kind: str
    path: str
    query: str
    peer: tuple[str, int]
    opened_at: float
    closed_at: float | None
    topics: frozenset[str]
    authenticated: bool
    half_open: bool
    max_active_time: float | None
    #: None while open; "peer" (client went away), "close", "eof", "reset", "half_open",
    #: "idle" (max_active_time), "overflow" (client too slow), "shutdown"
    close_cause: str | None

    @property
    def is_open(self) -> bool:
        return self.closed_at is None


@attrs.frozen
class HandshakeRecord:
    path: str
    peer: tuple[str, int]
    #: 101 accepted, else the HTTP status of the refusal
    status: int
    at: float


@attrs.frozen
class PingRecord:
    conn_id: str
    kind: str
    req_id: Any
    at: float
    #: False when the pong was withheld by a fault
    answered: bool


@attrs.frozen
class AuthAttempt:
    conn_id: str
    ok: bool
    #: "ok", "unknown key", "bad signature", "expired", "malformed", "forced failure"
    reason: str
    at: float


@attrs.frozen
class RequestRecord:
    """A subscribe / unsubscribe frame and the answer it got."""

    conn_id: str
    kind: str
    op: str
    args: tuple[str, ...]
    req_id: Any
    success: bool
    ret_msg: str
    at: float


@attrs.frozen
class RestCall:
    method: str
    path: str
    query: str
    status: int
    #: None when the answer was not a Bybit JSON envelope (5xx, hang cut short)
    ret_code: int | None
    at: float


@attrs.frozen
class SentFrame:
    conn_id: str
    kind: str
    text: str
    #: trio.current_time() and time.time_ns() when the socket's writer took the frame (its write
    #: follows once trio-websocket's send lock is taken, a yield later: other tasks may run
    #: first; :meth:`Observer.stamp_sends` stamps the write itself)
    at: float
    time_ns: int


@attrs.define(eq=False)
class Observer:
    """Read-only views plus ``wait_*`` helpers. Logs are bounded by ``history_limit``."""

    _exchange: Exchange
    history_limit: int
    _event: trio.Event = attrs.Factory(trio.Event)
    _handshakes: deque[HandshakeRecord] = attrs.field(init=False)
    _pings: deque[PingRecord] = attrs.field(init=False)
    _auth: deque[AuthAttempt] = attrs.field(init=False)
    _requests: deque[RequestRecord] = attrs.field(init=False)
    _rest: deque[RestCall] = attrs.field(init=False)
    _frames: deque[SentFrame] | None = None
    #: while stamping (see :meth:`stamp_sends`): (connection kind, frame, ``time.time_ns()``
    #: as the write of the frame to its socket starts), in send order; None when off
    send_stamps: list[tuple[str, str, int]] | None = None
    #: frames stamped at most (the log stops growing there: bounded memory; a write already
    #: under way on each other socket may still add its one)
    send_stamp_limit: int = 0
    _opened: Counter[str] = attrs.Factory(Counter)
    _internal_errors: deque[str] = attrs.Factory(lambda: deque(maxlen=100))
    #: bumped on every subscription change (public or private)
    subscription_version: int = 0

    def __attrs_post_init__(self) -> None:
        n = self.history_limit
        self._handshakes, self._pings, self._auth = deque(maxlen=n), deque(maxlen=n), deque(maxlen=n)
        self._requests, self._rest = deque(maxlen=n), deque(maxlen=n)

    # --- recording (called by the simulator) -------------------------------------------------
    def changed(self) -> None:
        self._event.set()
        self._event = trio.Event()

    def record_frames(self, limit: int) -> None:
        """Start (limit > 0, keeping the last ``limit`` frames) or stop (0) the sent-frame log."""
        self._frames = deque(maxlen=limit) if limit > 0 else None

    def stamp_sends(self, limit: int) -> int:
        """Start (limit > 0: at most ``limit`` frames, from now) or stop (0) stamping the frames
        the sockets send; how many frames (of any kind) the log this ends had stamped. Leaner
        than :meth:`record_frames` (one tuple per frame, nothing woken), so the send pace it
        measures stays the simulator's own; each entry keeps its frame's text until the next
        call."""
        stamped = len(self.send_stamps) if self.send_stamps is not None else 0
        self.send_stamps = [] if limit > 0 else None
        self.send_stamp_limit = limit
        return stamped

    def ticker_send_stamps(self, category: str) -> list[tuple[str, int, int]]:
        """``(symbol, frame ts, send time_ns)`` of each stamped ticker frame of ``category``'s
        public sockets, in send order (parsed here, after the fact, not as the frames go).
        Anything else is left out: acks, pongs, and injected garbage (not JSON, no ``ts``)."""
        stamped: list[tuple[str, int, int]] = []
        for kind, text, sent_ns in self.send_stamps or ():
            if kind != category:
                continue
            try:
                frame = orjson.loads(text)
            except orjson.JSONDecodeError:
                continue
            topic = frame.get("topic") if isinstance(frame, dict) else None
            ts = frame.get("ts") if isinstance(frame, dict) else None
            if isinstance(topic, str) and topic.startswith("tickers.") and type(ts) is int:
                stamped.append((topic[len("tickers."):], ts, sent_ns))
        return stamped

    @property
    def recording_frames(self) -> bool:
        return self._frames is not None

    def frame_sent(self, conn: Connection, text: str) -> None:
        if self._frames is not None:
            self._frames.append(SentFrame(conn.conn_id, conn.kind, text, trio.current_time(), time.time_ns()))
            self.changed()

    def handshake(self, path: str, peer: tuple[str, int], status: int) -> None:
        self._handshakes.append(HandshakeRecord(path, peer, status, trio.current_time()))
        self.changed()

    def opened(self, kind: str) -> None:
        self._opened[kind] += 1
        self.changed()

    def ping(self, conn: Connection, req_id: Any, answered: bool) -> None:
        self._pings.append(PingRecord(conn.conn_id, conn.kind, req_id, trio.current_time(), answered))
        self.changed()

    def auth(self, conn: Connection, ok: bool, reason: str) -> None:
        self._auth.append(AuthAttempt(conn.conn_id, ok, reason, trio.current_time()))
        self.changed()

    def request(self, conn: Connection, op: str, args: Iterable[Any], req_id: Any, success: bool,
                ret_msg: str) -> None:
        self._requests.append(RequestRecord(conn.conn_id, conn.kind, op, tuple(str(a) for a in args), req_id,
                                            success, ret_msg, trio.current_time()))
        self.changed()

    def subscriptions_changed(self) -> None:
        self.subscription_version += 1
        self.changed()

    def rest_call(self, method: str, path: str, query: str, status: int, ret_code: int | None) -> None:
        self._rest.append(RestCall(method, path, query, status, ret_code, trio.current_time()))
        self.changed()

    def internal_error(self, text: str) -> None:
        self._internal_errors.append(text)
        self.changed()

    # --- queries ---------------------------------------------------------------------------
    def connections(self, kind: str | None = None, *, open_only: bool = False) -> list[ConnectionInfo]:
        """Connections in the order they opened (open ones plus recent closed ones)."""
        infos = [c.info() for c in self._exchange.all_connections()]
        return [i for i in infos if (kind is None or i.kind == kind) and (i.is_open or not open_only)]

    def open_connections(self, kind: str | None = None) -> list[ConnectionInfo]:
        return self.connections(kind, open_only=True)

    def connection(self, conn_id: str) -> ConnectionInfo:
        for conn in self._exchange.all_connections():
            if conn.conn_id == conn_id:
                return conn.info()
        raise KeyError(f"no connection {conn_id!r} in the history")

    def opened_count(self, kind: str | None = None) -> int:
        """Connections ever opened (accepted handshakes) on that socket kind."""
        return sum(self._opened.values()) if kind is None else self._opened[kind]

    def subscriptions(self, conn_id: str) -> frozenset[str]:
        return self.connection(conn_id).topics

    def subscribed_topics(self, kind: str) -> frozenset[str]:
        """Union of the topics of every open connection of that kind."""
        return frozenset(t for c in self._exchange.all_connections()
                         if c.kind == kind and c.closed_at is None for t in c.topics)

    def subscribed_symbols(self, category: str) -> frozenset[str]:
        return frozenset(t[len("tickers."):] for t in self.subscribed_topics(category) if t.startswith("tickers."))

    def handshakes(self) -> list[HandshakeRecord]:
        return list(self._handshakes)

    def pings(self, kind: str | None = None, conn_id: str | None = None) -> list[PingRecord]:
        return [p for p in self._pings if (kind is None or p.kind == kind) and (conn_id is None or p.conn_id == conn_id)]

    def auth_attempts(self, *, ok: bool | None = None) -> list[AuthAttempt]:
        return [a for a in self._auth if ok is None or a.ok == ok]

    def requests(self, kind: str | None = None, *, op: str | None = None, topic: str | None = None) -> list[RequestRecord]:
        return [r for r in self._requests if (kind is None or r.kind == kind) and (op is None or r.op == op)
                and (topic is None or topic in r.args)]

    def rest_calls(self, path: str | None = None) -> list[RestCall]:
        return [r for r in self._rest if path is None or r.path == path]

    def frames_sent(self, conn_id: str | None = None) -> list[SentFrame]:
        if self._frames is None:
            return []
        return [f for f in self._frames if conn_id is None or f.conn_id == conn_id]

    def positions(self, category: str | None = None, *, open_only: bool = False) -> list[Position]:
        return self._exchange.book.all(category, open_only=open_only)

    def mark_price(self, category: str, symbol: str) -> Decimal:
        """The model's current mark price (what the stream shows; REST may diverge on purpose)."""
        return self._exchange.market.mark_price(category, symbol)

    def internal_errors(self) -> list[str]:
        """Tracebacks of simulator bugs hit while handling client input (should stay empty)."""
        return list(self._internal_errors)

    # --- waiting ---------------------------------------------------------------------------
    async def wait_until(self, predicate: Callable[[], T | None]) -> T:
        """Return ``predicate()``'s first truthy value, re-checking after every state change.

        Set the deadline with a cancel scope around the call (``trio.fail_after``).
        """
        while True:
            event = self._event
            value = predicate()
            if value:
                return value
            await event.wait()

    async def wait_changed(self) -> None:
        """Wait for the next state change of any kind."""
        await self._event.wait()

    async def wait_connection(self, kind: str, count: int = 1) -> ConnectionInfo:
        """Wait until ``count`` connections have ever opened on ``kind``; return the count-th."""
        await self.wait_until(lambda: self.opened_count(kind) >= count)
        kept = self.connections(kind)
        evicted = self.opened_count(kind) - len(kept)  # older ones fell out of the bounded history
        if count - 1 < evicted:
            raise LookupError(f"connection #{count} on {kind} is no longer in the history")
        return kept[count - 1 - evicted]

    async def next_connection(self, kind: str) -> ConnectionInfo:
        """The next connection to open on ``kind`` after this call."""
        return await self.wait_connection(kind, self.opened_count(kind) + 1)

    async def wait_closed(self, conn_id: str) -> ConnectionInfo:
        def closed() -> ConnectionInfo | None:
            info = self.connection(conn_id)
            return None if info.is_open else info

        return await self.wait_until(closed)

    async def wait_subscribed(self, category: str, symbols: Iterable[str]) -> None:
        """Until every symbol's ticker is subscribed on some open ``category`` socket."""
        wanted = frozenset(symbols)
        await self.wait_until(lambda: wanted <= self.subscribed_symbols(category))

    async def wait_unsubscribed(self, category: str, symbols: Iterable[str]) -> None:
        gone = frozenset(symbols)
        await self.wait_until(lambda: not gone & self.subscribed_symbols(category))

    async def wait_topics(self, kind: str, topics: Iterable[str]) -> None:
        """Until every topic is subscribed on some open socket of ``kind`` (e.g. "private", {"position"})."""
        wanted = frozenset(topics)
        await self.wait_until(lambda: wanted <= self.subscribed_topics(kind))

    async def wait_subscription_change(self, since: int | None = None) -> int:
        """Until :attr:`subscription_version` exceeds ``since`` (default: its value now); the new version."""
        base = self.subscription_version if since is None else since
        await self.wait_until(lambda: self.subscription_version > base)
        return self.subscription_version

    async def wait_auth(self, count: int = 1, *, ok: bool | None = True) -> AuthAttempt:
        """Until ``count`` auth attempts (of that outcome) happened; the count-th."""
        await self.wait_until(lambda: len(self.auth_attempts(ok=ok)) >= count)
        return self.auth_attempts(ok=ok)[count - 1]

    async def wait_pings(self, count: int, *, kind: str | None = None, conn_id: str | None = None) -> PingRecord:
        await self.wait_until(lambda: len(self.pings(kind, conn_id)) >= count)
        return self.pings(kind, conn_id)[count - 1]

    async def wait_rest_calls(self, count: int, path: str | None = None) -> RestCall:
        await self.wait_until(lambda: len(self.rest_calls(path)) >= count)
        return self.rest_calls(path)[count - 1]
