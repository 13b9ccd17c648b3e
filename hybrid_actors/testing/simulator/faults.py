"""Misbehaviour on command: every knob is a small counted rule consumed by the code it affects."""

from __future__ import annotations

import enum
from collections import deque
from typing import Any, Callable, Final, Protocol, TypeVar

import attrs

from .wire import PRIVATE, PUBLIC_KINDS

#: ``target`` of a fault: every socket, every public one, the private one, a category, or a conn_id
TARGET_GROUPS: Final = ("all", "public", PRIVATE, *PUBLIC_KINDS)


class DropMode(enum.Enum):
    """How the server ends a socket."""

    #: WebSocket close frame (code given), then TCP close
    CLOSE = "close"
    #: TCP FIN without a close frame: the client sees 1006 (like Bybit's idle cut)
    EOF = "eof"
    #: TCP RST (SO_LINGER 0): "connection reset by peer"
    RESET = "reset"
    #: stop sending, stop reading (no pongs of any kind), keep TCP open
    HALF_OPEN = "half_open"


class InjectKind(enum.Enum):
    """Garbage the server can push into a socket."""

    #: truncated JSON that starts like a ticker frame
    MALFORMED = "malformed"
    #: plain text, not JSON at all
    NON_JSON = "non_json"
    #: a valid JSON text frame larger than 1 MiB
    OVERSIZED = "oversized"
    #: a well-formed frame with a topic nobody subscribed to
    UNKNOWN_TOPIC = "unknown_topic"
    #: a binary (not text) WebSocket message
    BINARY = "binary"
    #: exactly the text given
    RAW = "raw"


class RestFaultKind(enum.Enum):
    RET_CODE = "ret_code"
    HTTP_STATUS = "http_status"
    HANG = "hang"


def target_matches(target: str, kind: str, conn_id: str) -> bool:
    if target == "all":
        return True
    if target == "public":
        return kind != PRIVATE
    if target in (PRIVATE, *PUBLIC_KINDS):
        return kind == target
    return target == conn_id


def check_target(target: str) -> str:
    if not isinstance(target, str) or not target:
        raise ValueError(f"target must be one of {', '.join(TARGET_GROUPS)} or a conn_id, got {target!r}")
    return target


@attrs.define
class Counted:
    """A rule that fires ``remaining`` more times (None: until cleared)."""

    remaining: int | None

    def take(self) -> bool:
        if self.remaining is None:
            return True
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True

    @property
    def spent(self) -> bool:
        return self.remaining is not None and self.remaining <= 0


def _count(count: int | None) -> Counted:
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError(f"count must be a positive integer or None (= until cleared), got {count!r}")
    return Counted(count)


@attrs.define
class SubscribeRejection:
    counter: Counted
    ret_msg: str


@attrs.define
class RestFault:
    kind: RestFaultKind
    counter: Counted
    path: str | None
    ret_code: int = 0
    ret_msg: str = ""
    status: int = 0
    seconds: float = 0.0
    #: only calls whose raw query string contains this (e.g. "settleCoin=USDC": one page)
    query: str | None = None


@attrs.define
class RecordFault:
    counter: Counted
    #: fields to overwrite in the record (None: leave the record out)
    garble: dict[str, Any] | None


@attrs.define
class HandshakeRejection:
    counter: Counted
    target: str
    status: int


@attrs.define
class PongRule:
    counter: Counted
    target: str


class _Rule(Protocol):
    """A rule that fires while its counter lasts."""

    @property
    def counter(self) -> Counted: ...


_R = TypeVar("_R", bound=_Rule)


@attrs.define(eq=False)
class Faults:
    """All armed faults. Rules are consumed first-armed first."""

    max_connections: int
    connection_window: float
    connection_limit_status: int
    auth_failures: Counted = attrs.Factory(lambda: Counted(0))
    #: the ``ret_msg`` of a forced auth failure (Bybit's documented text by default)
    auth_failure_msg: str = "Params Error"
    #: a refused auth gets no answer: the socket is closed (1008) instead (some gateways)
    failed_auth_closes: bool = False
    subscribe_rejections: dict[tuple[str, str], SubscribeRejection] = attrs.Factory(dict)
    #: (category, symbol) -> what position lists do to its record: leave it out (a REST replica
    #: lagging behind) or garble it
    rest_records: dict[tuple[str, str], RecordFault] = attrs.Factory(dict)
    rest: list[RestFault] = attrs.Factory(list)
    handshakes: list[HandshakeRejection] = attrs.Factory(list)
    pongs: list[PongRule] = attrs.Factory(list)
    _accepted: dict[str, deque[float]] = attrs.Factory(dict)

    # --- arming -------------------------------------------------------------------------------
    def fail_auth(self, count: int | None, ret_msg: str = "Params Error") -> None:
        self.auth_failures = _count(count)
        self.auth_failure_msg = ret_msg

    def clear_auth_failures(self) -> None:
        self.auth_failures = Counted(0)
        self.auth_failure_msg = "Params Error"

    def reject_subscribes(self, category: str, symbol: str, count: int | None, ret_msg: str) -> None:
        self.subscribe_rejections[(category, symbol)] = SubscribeRejection(_count(count), ret_msg)

    def fault_rest_record(self, category: str, symbol: str, count: int | None,
                          garble: dict[str, Any] | None) -> None:
        self.rest_records[(category, symbol)] = RecordFault(_count(count), garble)

    def add_rest(self, kind: RestFaultKind, count: int | None, path: str | None, **values: Any) -> None:
        self.rest.append(RestFault(kind, _count(count), path, **values))

    def reject_handshakes(self, target: str, count: int | None, status: int) -> None:
        self.handshakes.append(HandshakeRejection(_count(count), check_target(target), status))

    def withhold_pongs(self, target: str, count: int | None) -> None:
        self.pongs.append(PongRule(_count(count), check_target(target)))

    def clear(self) -> None:
        self.auth_failures = Counted(0)
        self.auth_failure_msg = "Params Error"
        self.failed_auth_closes = False
        self.subscribe_rejections.clear()
        self.rest_records.clear()
        self.rest.clear()
        self.handshakes.clear()
        self.pongs.clear()

    # --- consuming ----------------------------------------------------------------------------
    def take_auth_failure(self) -> bool:
        return self.auth_failures.take()

    def take_subscribe_rejection(self, category: str, symbol: str) -> str | None:
        rule = _take_keyed(self.subscribe_rejections, (category, symbol))
        return None if rule is None else rule.ret_msg

    def _take(self, rules: list[_R], predicate: Callable[[_R], bool]) -> _R | None:
        for rule in rules:
            if predicate(rule) and rule.counter.take():
                if rule.counter.spent:
                    rules.remove(rule)
                return rule
        return None

    def take_rest_record_fault(self, category: str, symbol: str) -> RecordFault | None:
        """What this position list does to ``symbol``'s record (one use of the rule), if anything."""
        return _take_keyed(self.rest_records, (category, symbol))

    def take_rest(self, path: str, query: str = "") -> RestFault | None:
        return self._take(self.rest, lambda r: (r.path is None or r.path == path)
                          and (r.query is None or r.query in query))

    def take_handshake_rejection(self, kind: str) -> int | None:
        rule = self._take(self.handshakes, lambda r: target_matches(r.target, kind, ""))
        return None if rule is None else rule.status

    def take_pong_withheld(self, kind: str, conn_id: str) -> bool:
        return self._take(self.pongs, lambda r: target_matches(r.target, kind, conn_id)) is not None

    def admit_connection(self, ip: str, now: float) -> bool:
        """Count a new connection from ``ip``; False past the per-window limit."""
        times = self._accepted.setdefault(ip, deque())
        while times and times[0] <= now - self.connection_window:
            times.popleft()
        if len(times) >= self.max_connections:
            return False
        times.append(now)
        return True


_K = TypeVar("_K")


def _take_keyed(rules: dict[_K, _R], key: _K) -> _R | None:
    """One use of the rule armed for ``key`` (dropped once spent), or None."""
    rule = rules.get(key)
    if rule is None or not rule.counter.take():
        return None
    if rule.counter.spent:
        del rules[key]
    return rule
