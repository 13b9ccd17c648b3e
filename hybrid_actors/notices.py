"""Stream notices: what the stream says about itself, on the same event stream as positions.

Pure: attrs records, no trio, no clock (``ts`` is an argument, epoch ms).

- :class:`StreamState`    ``stream.state``: starting, live, degraded, recovered, failed
- :class:`StreamAlert`    ``stream.alert``: a watched figure crossed (or came back under) a threshold
- :class:`StreamRollback` ``stream.rollback``: the rollout fell back to REST polling
- :class:`StreamReturn`   ``stream.return``: the rollout went back to the hybrid stream

Every notice is *lifecycle*: the stream's :class:`~hybrid_actors.actors.mailboxes.EventQueue`
never drops or conflates one and keeps it in order with the position events around it
(producers call ``hub.emit_notice(notice)``). A notice looks like a position event to its
consumers: ``.event`` is the event name (as on position events; ``StreamAlert.name`` is the
alert's own name), ``.as_dict()`` is what the bridge passes to the handler and
``.to_json()`` the JSON line; both carry ``"event"``. All notices
share one lane key (:data:`NOTICE_KEY`), so the bridge delivers them to the handler in order.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Any, ClassVar, Final, Literal, get_args

import attrs

from .state import Key, PositionClosed, PositionUpdate

__all__ = ["StreamState", "StreamAlert", "StreamRollback", "StreamReturn", "Notice", "StreamEvent",
           "StateName", "NOTICE_KEY", "STATE_NAMES", "StateTracker"]

StateName = Literal["starting", "live", "degraded", "recovered", "failed"]
STATE_NAMES: Final[tuple[str, ...]] = get_args(StateName)
AlertLevel = Literal["warning", "critical"]
AlertState = Literal["firing", "resolved"]
#: the bridge's delivery lane (and the event queue's key) of every notice: one lane, in order
NOTICE_KEY: Final[Key] = ("", "stream", 0)


def _frozen_sockets(value: Mapping[str, bool]) -> Mapping[str, bool]:
    return MappingProxyType({str(name): bool(up) for name, up in value.items()})


def _one_of(*allowed: str) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value not in allowed:
            raise ValueError(f"{type(instance).__name__}.{attribute.name} must be one of "
                             f"{', '.join(allowed)}; got {value!r}")
    return check


def _number(value: Decimal) -> str:
    """A Decimal for JSON: a string without exponent, like prices."""
    return format(value, "f")


class _Notice:
    """What every notice shares (not a record itself)."""

    __slots__ = ()
    event: ClassVar[str]
    key: ClassVar[Key] = NOTICE_KEY
    #: never dropped, never conflated
    is_lifecycle: ClassVar[bool] = True

    def as_dict(self) -> dict[str, Any]:
        """The notice for Python consumers (the bridge's handler): ``{"event": ..., **fields}``."""
        fields: tuple[attrs.Attribute[Any], ...] = attrs.fields(type(self))  # type: ignore[arg-type]  # every subclass is a record
        return {"event": self.event, **{a.name: getattr(self, a.name) for a in fields}}

    def to_json(self) -> dict[str, Any]:
        """The JSON line: like :meth:`as_dict`, in JSON types (Decimals as strings)."""
        return {name: _number(value) if isinstance(value, Decimal) else value
                for name, value in self.as_dict().items()}


@attrs.frozen
class StreamState(_Notice):
    """``stream.state``: the stream's health changed.

    ``starting`` (connecting), ``live`` (the private socket and every public one are up),
    ``degraded`` (one dropped; ``reason`` names it), ``recovered`` (all back), ``failed``
    (the stream has ended: rejected credentials or a crash loop; nothing follows it).
    ``sockets`` maps each socket (``private``, ``public:linear``...) to whether it is up.
    """

    event: ClassVar[str] = "stream.state"

    state: StateName = attrs.field(validator=_one_of(*STATE_NAMES))
    reason: str
    sockets: Mapping[str, bool] = attrs.field(converter=_frozen_sockets, hash=False)
    ts: int

    def as_dict(self) -> dict[str, Any]:
        return {"event": self.event, "state": self.state, "reason": self.reason, "sockets": dict(self.sockets),
                "ts": self.ts}


@attrs.frozen
class StreamAlert(_Notice):
    """``stream.alert``: figure ``name`` crossed ``threshold`` (``state="firing"``) or is back
    under it (``"resolved"``)."""

    event: ClassVar[str] = "stream.alert"

    level: AlertLevel = attrs.field(validator=_one_of("warning", "critical"))
    #: the alert's own name (the event name is ``event``)
    name: str
    message: str
    value: float | int | Decimal | None
    threshold: float | int | Decimal | None
    state: AlertState = attrs.field(validator=_one_of("firing", "resolved"))
    ts: int


@attrs.frozen
class StreamRollback(_Notice):
    """``stream.rollback``: the rollout stopped trusting the hybrid stream and fell back to REST."""

    event: ClassVar[str] = "stream.rollback"

    reason: str
    ts: int


@attrs.frozen
class StreamReturn(_Notice):
    """``stream.return``: the rollout went back to the hybrid stream after a rollback."""

    event: ClassVar[str] = "stream.return"

    reason: str
    ts: int


Notice = StreamState | StreamAlert | StreamRollback | StreamReturn
#: everything the stream's event queue carries, in order
StreamEvent = PositionUpdate | PositionClosed | Notice


@attrs.define(eq=False)
class StateTracker:
    """Derives ``stream.state`` from the sockets' health; its owner (the supervisor) is the
    one writer. Each method returns the notice to emit, or None when nothing observable
    changed.

    ``starting`` until the stream is :meth:`ready` (every child started, the first REST
    snapshot applied); then ``live`` if every socket is up, else ``degraded``. Afterwards a
    socket going down gives ``degraded`` (again, whenever the set of sockets down changes),
    and all of them up again ``recovered``. ``failed`` is final: nothing follows it.
    """

    sockets: dict[str, bool]
    current: StreamState | None = None
    ready_seen: bool = False
    _why_down: dict[str, str] = attrs.Factory(dict)

    @classmethod
    def for_sockets(cls, names: tuple[str, ...] | list[str]) -> StateTracker:
        return cls({name: False for name in names})

    @property
    def state(self) -> StateName | None:
        return None if self.current is None else self.current.state

    def start(self, ts: int) -> StreamState | None:
        if self.current is not None:
            return None
        names = ", ".join(self.sockets) or "no sockets"
        return self._to("starting", f"connecting {names}", ts)

    def socket(self, name: str, up: bool, ts: int, why: str = "") -> StreamState | None:
        """Socket ``name`` is up (its actor is running) or down (``why``: the error)."""
        if self.state == "failed":
            return None
        if not up and why:
            self._why_down[name] = why  # also for a socket that never came up (refused from the start)
        if self.sockets.get(name) is up:
            return None
        self.sockets[name] = up
        if up:
            self._why_down.pop(name, None)
        return self._derive(ts) if self.ready_seen else None

    def waiting(self, name: str, why: str, ts: int) -> StreamState | None:
        """Socket ``name``, down, is connected but waits for ``why`` (a new reason, at most
        once per connection: the caller's rule)."""
        if self.state == "failed" or self.sockets.get(name) is not False:
            return None
        self._why_down[name] = why
        return self._derive(ts) if self.ready_seen else None

    def ready(self, ts: int) -> StreamState | None:
        """The stream finished starting: every child started once, the first snapshot applied."""
        if self.ready_seen or self.state == "failed":
            return None
        self.ready_seen = True
        return self._derive(ts)

    def fail(self, reason: str, ts: int) -> StreamState | None:
        if self.state == "failed":
            return None
        return self._to("failed", reason, ts)

    def _derive(self, ts: int) -> StreamState | None:
        down = [name for name, up in self.sockets.items() if not up]
        if down:
            reason = "; ".join(f"{name} is down" + (f": {self._why_down[name]}" if self._why_down.get(name) else "")
                               for name in down)
            if self.state == "degraded" and self.current is not None and self.current.reason == reason:
                return None
            return self._to("degraded", reason, ts)
        names = ", ".join(self.sockets) or "no sockets"
        if self.state in (None, "starting"):
            return self._to("live", f"every socket is up: {names}", ts)
        if self.state == "degraded":
            return self._to("recovered", f"every socket is back up: {names}", ts)
        return None

    def _to(self, state: StateName, reason: str, ts: int) -> StreamState:
        self.current = StreamState(state, reason, self.sockets, ts)
        return self.current
